//! Runs the matrix: per cell a short warm-up of every path, then rounds in which every path is
//! measured once, in an order rotated each round, with CPU, steal and memory read from `/proc`
//! around each run.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    Error,
    gate::{self, DropReason, Facts, Limits},
    loadgen::{self, Latency},
    matrix::{Cell, Load, Path, Role},
    procfs,
    sse::SseRun,
    sut::Sut,
};

pub struct Options {
    pub rounds: u32,
    /// Rounds added (at most) when some were dropped, until `rounds` complete ones are kept.
    pub extra_rounds: u32,
    pub warmup_secs: f64,
    pub limits: Limits,
    pub loadgen_cpu: usize,
    pub sut_cpu: usize,
    pub oha: PathBuf,
    pub wrk: PathBuf,
    pub bench_exe: PathBuf,
    /// Scratch directory for bodies, scripts and outputs.
    pub dir: PathBuf,
    pub clock_ticks: u64,
    /// The longest wait for a quiet CPU before one run (see [`wait_for_quiet`]).
    pub quiet_wait: Duration,
}

/// What carries over between runs: the time left for waiting for quiet.
pub struct Budget {
    pub wait_left: Duration,
    pub waited: Duration,
}

/// One measured run of one path in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub cell: String,
    pub path: Path,
    pub round: u32,
    pub latency: Option<Latency>,
    /// Requests (events for SSE) per second achieved.
    pub rps: f64,
    pub target_rps: Option<f64>,
    /// Requests answered (events received for SSE).
    pub requests: u64,
    pub errors: u64,
    /// Wall time of the measured window.
    pub secs: f64,
    /// CPU seconds each process used in the window.
    pub cpu_s: BTreeMap<Role, f64>,
    /// Largest VmRSS (KiB) seen in the window, sampled about once a second.
    pub rss_max_kib: BTreeMap<Role, u64>,
    pub steal_pct: f64,
    pub foreign_pct: f64,
    pub loadgen_foreign_pct: f64,
    pub loadgen_busy_pct: f64,
    pub sut_busy_pct: f64,
    pub dropped: Vec<DropReason>,
    /// How long the run waited for other processes to leave the CPU under test.
    pub waited_secs: f64,
}

impl Run {
    pub fn kept(&self) -> bool {
        self.dropped.is_empty()
    }
}

/// What a load generator reported.
struct Outcome {
    latency: Option<Latency>,
    rps: f64,
    requests: u64,
    errors: u64,
}

/// Paths in the order of round `round`: rotated, so no path always runs first or after the same
/// neighbour.
pub fn order(round: u32) -> [Path; Path::ALL.len()] {
    let mut p = Path::ALL;
    p.rotate_left(round as usize % Path::ALL.len());
    p
}

/// A path whose last load ended longer ago than this is warmed up again before it is measured:
/// a third of ferryd's idle timeout for pooled peer connections (90 s), so a measured run never
/// starts on a pool that was closed while the other paths ran (the headline's 20 s runs of five
/// paths leave each path idle for more than a minute).
pub const REWARM_AFTER: Duration = Duration::from_secs(30);

/// Whether a path last loaded at `last` needs a warm-up again at `now`.
pub fn needs_rewarm(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) > REWARM_AFTER)
}

pub fn run_cell(
    sut: &mut Sut,
    cell: &Cell,
    opts: &Options,
    budget: &mut Budget,
    mut progress: impl FnMut(&Run),
) -> Result<Vec<Run>, Error> {
    // Warm-up: every path's pools (the load generator's connections to the first hop, the
    // caller's pooled peer connections, TLS sessions included, and the callee's connections to
    // its app) are established before anything is measured.
    let warm = Cell {
        secs: opts.warmup_secs,
        ..cell.clone()
    };
    let mut last_load: BTreeMap<Path, Instant> = BTreeMap::new();
    for path in Path::ALL {
        generate(sut, &warm, path, opts, "warmup")?;
        last_load.insert(path, Instant::now());
    }
    let mut runs = Vec::new();
    let mut complete = 0;
    for round in 0..opts.rounds + opts.extra_rounds {
        if round >= opts.rounds && complete >= opts.rounds {
            break;
        }
        let mut all_kept = true;
        for path in order(round) {
            if needs_rewarm(last_load.get(&path).copied(), Instant::now()) {
                generate(sut, &warm, path, opts, &format!("rewarm{round}"))?;
            }
            let limit = opts.quiet_wait.min(budget.wait_left);
            let waited = wait_for_quiet(sut, opts, limit)?;
            budget.wait_left = budget.wait_left.saturating_sub(waited);
            budget.waited += waited;
            let mut run = measure(sut, cell, path, round, opts)?;
            last_load.insert(path, Instant::now());
            run.waited_secs = waited.as_secs_f64();
            all_kept &= run.kept();
            progress(&run);
            runs.push(run);
        }
        complete += u32::from(all_kept);
    }
    Ok(runs)
}

fn measure(
    sut: &mut Sut,
    cell: &Cell,
    path: Path,
    round: u32,
    opts: &Options,
) -> Result<Run, Error> {
    let sys0 = procfs::read_system_stat().map_err(Error::io("read /proc/stat"))?;
    let ticks0 = sut.cpu_ticks();
    let loadgen0 = loadgen_side_ticks(opts.clock_ticks)?;
    let t0 = Instant::now();
    let (outcome, rss_max_kib) = {
        let mut rss_max: BTreeMap<Role, u64> = BTreeMap::new();
        let out = generate_sampling(sut, cell, path, opts, &format!("r{round}"), &mut |sut| {
            for (role, (rss, _)) in sut.rss() {
                let e = rss_max.entry(role).or_default();
                *e = (*e).max(rss);
            }
        })?;
        (out, rss_max)
    };
    let secs = t0.elapsed().as_secs_f64();
    let sys1 = procfs::read_system_stat().map_err(Error::io("read /proc/stat"))?;
    let ticks1 = sut.cpu_ticks();
    let loadgen_ticks = loadgen_side_ticks(opts.clock_ticks)?.saturating_sub(loadgen0);
    sut.check_all_alive()?;

    let hz = opts.clock_ticks as f64;
    let mut ours = 0;
    let cpu_s = ticks1
        .iter()
        .map(|(&role, &t)| {
            let d = t.saturating_sub(ticks0.get(&role).copied().unwrap_or(t));
            ours += d;
            (role, d as f64 / hz)
        })
        .collect();
    let target_rps = match cell.load {
        Load::Open { rate } => Some(rate as f64),
        Load::Sse { interval_ms } => Some(cell.conns as f64 * 1000.0 / interval_ms as f64),
        Load::Max => None,
    };
    let steal_pct = procfs::steal_pct(&sys0, &sys1);
    let foreign_pct = procfs::foreign_pct(&sys0, &sys1, opts.sut_cpu, ours);
    let loadgen_foreign_pct = procfs::foreign_pct(&sys0, &sys1, opts.loadgen_cpu, loadgen_ticks);
    // Event streams are judged on events delivered, not on a rate: their window also holds the
    // connection set-up and the stagger.
    let (target_rate, achieved_rate) = match cell.load {
        Load::Sse { .. } => (Some(cell.requests() as f64), outcome.requests as f64),
        _ => (target_rps, outcome.rps),
    };
    let facts = Facts {
        steal_pct,
        foreign_pct,
        loadgen_foreign_pct,
        target_rate,
        achieved_rate,
        errors: outcome.errors,
    };
    Ok(Run {
        cell: cell.name.to_owned(),
        path,
        round,
        latency: outcome.latency,
        rps: outcome.rps,
        target_rps,
        requests: outcome.requests,
        errors: outcome.errors,
        secs,
        cpu_s,
        rss_max_kib,
        steal_pct,
        foreign_pct,
        loadgen_foreign_pct,
        loadgen_busy_pct: procfs::busy_pct(&sys0, &sys1, opts.loadgen_cpu),
        sut_busy_pct: procfs::busy_pct(&sys0, &sys1, opts.sut_cpu),
        dropped: gate::judge(&facts, &opts.limits),
        waited_secs: 0.0,
    })
}

/// CPU ticks used so far on the load generator's side: by this harness (pinned there) and by
/// its finished children (each load generator run, reaped before this is read again).
fn loadgen_side_ticks(hz: u64) -> Result<u64, Error> {
    use nix::sys::resource::{UsageWho, getrusage};
    let own = procfs::read_task(std::process::id())
        .map_err(Error::io("read /proc/self/stat"))?
        .cpu_ticks;
    let children =
        getrusage(UsageWho::RUSAGE_CHILDREN).map_err(|e| Error::io("getrusage")(e.into()))?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    let child_us = micros(children.user_time()) + micros(children.system_time());
    Ok(own + child_us * hz / 1_000_000)
}

/// On a shared machine, other people's builds come and go. Before a run, waits (at most
/// `limit`) until half a second passes in which other processes' load on the CPU under test and
/// on the load generator's CPU is within the drop limit, so that runs are not measured into a burst only to be dropped. The
/// half second is also the pause between runs, so one run's tail never falls into the next one.
fn wait_for_quiet(sut: &Sut, opts: &Options, limit: Duration) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        let sys0 = procfs::read_system_stat().map_err(Error::io("read /proc/stat"))?;
        let ticks0: u64 = sut.cpu_ticks().values().sum();
        let own0 = loadgen_side_ticks(opts.clock_ticks)?;
        thread::sleep(Duration::from_millis(500));
        let sys1 = procfs::read_system_stat().map_err(Error::io("read /proc/stat"))?;
        let ours = sut.cpu_ticks().values().sum::<u64>().saturating_sub(ticks0);
        let own = loadgen_side_ticks(opts.clock_ticks)?.saturating_sub(own0);
        let foreign = procfs::foreign_pct(&sys0, &sys1, opts.sut_cpu, ours)
            .max(procfs::foreign_pct(&sys0, &sys1, opts.loadgen_cpu, own));
        if foreign <= opts.limits.max_foreign_pct || started.elapsed() >= limit {
            return Ok(started.elapsed().saturating_sub(Duration::from_millis(500)));
        }
    }
}

fn generate(
    sut: &mut Sut,
    cell: &Cell,
    path: Path,
    opts: &Options,
    tag: &str,
) -> Result<Outcome, Error> {
    generate_sampling(sut, cell, path, opts, tag, &mut |_| {})
}

/// Runs the cell's load generator against `path`, pinned to the load generator's CPU, calling
/// `sample` about once a second while it runs.
fn generate_sampling(
    sut: &mut Sut,
    cell: &Cell,
    path: Path,
    opts: &Options,
    tag: &str,
    sample: &mut dyn FnMut(&Sut),
) -> Result<Outcome, Error> {
    let base = opts.dir.join(format!("{}-{:?}-{tag}", cell.name, path));
    let (tool, program, args): (&'static str, PathBuf, Vec<String>) = match cell.load {
        Load::Open { rate } => {
            let body = opts.dir.join(format!("body-{}", cell.body));
            if !body.exists() {
                fs::write(&body, vec![b'x'; cell.body]).map_err(Error::io("write a body file"))?;
            }
            let args = loadgen::oha_args(
                &sut.url(path, "/echo"),
                rate,
                cell.requests(),
                cell.conns,
                &body,
                "POST",
            );
            ("oha", opts.oha.clone(), args)
        }
        Load::Max => {
            let script = opts.dir.join(format!("post-{}.lua", cell.body));
            fs::write(&script, loadgen::wrk_script(cell.body))
                .map_err(Error::io("write a wrk script"))?;
            let args = loadgen::wrk_args(&sut.url(path, "/echo"), cell.conns, cell.secs, &script);
            ("wrk", opts.wrk.clone(), args)
        }
        Load::Sse { interval_ms } => {
            let args = vec![
                "sse-client".into(),
                "--url".into(),
                sut.url(path, "/sse"),
                "--streams".into(),
                cell.conns.to_string(),
                "--events".into(),
                cell.events_per_stream().to_string(),
                "--interval-ms".into(),
                interval_ms.to_string(),
            ];
            ("sse-client", opts.bench_exe.clone(), args)
        }
    };
    let out_path = base.with_extension("out");
    let err_path = base.with_extension("err");
    let out = fs::File::create(&out_path).map_err(Error::io("create an output file"))?;
    let err = fs::File::create(&err_path).map_err(Error::io("create an output file"))?;
    let mut child = Command::new("taskset")
        .args(["-c", &opts.loadgen_cpu.to_string()])
        .arg(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Spawn {
            what: format!("{tool} ({})", program.display()),
            source: e,
        })?;
    let limit = Duration::from_secs_f64(cell.secs * 3.0 + 30.0);
    let started = Instant::now();
    let mut next_sample = started;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Error::io("wait for the load"))? {
            break status;
        }
        if Instant::now() >= next_sample {
            sample(sut);
            next_sample += Duration::from_secs(1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Tool {
                tool,
                detail: format!("still running after {} s ({})", limit.as_secs(), path),
            });
        }
        thread::sleep(Duration::from_millis(25));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let tool_err = |detail: String| {
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        Error::Tool {
            tool,
            detail: format!(
                "{detail} ({path}, {status}); stderr: {}",
                stderr.chars().take(500).collect::<String>()
            ),
        }
    };
    if !status.success() {
        return Err(tool_err("exited with an error".into()));
    }
    match cell.load {
        Load::Open { .. } => {
            let r = loadgen::parse_oha(&stdout).map_err(|e| tool_err(e.to_string()))?;
            Ok(Outcome {
                latency: r.latency,
                rps: r.rps,
                requests: r.requests,
                errors: r.errors + r.non_2xx,
            })
        }
        Load::Max => {
            let r = loadgen::parse_wrk(&stdout).map_err(|e| tool_err(e.to_string()))?;
            Ok(Outcome {
                latency: None,
                rps: r.rps,
                requests: r.requests,
                errors: r.socket_errors + r.non_2xx,
            })
        }
        Load::Sse { .. } => {
            let r: SseRun = serde_json::from_str(&stdout)
                .map_err(|e| tool_err(format!("unreadable output: {e}")))?;
            Ok(Outcome {
                latency: r.latency,
                rps: r.received as f64 / r.secs.max(1e-9),
                requests: r.received,
                errors: r.errors,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(order(0), Path::ALL);
        assert_eq!(
            order(1),
            [
                Path::SelfInvoke,
                Path::Remote,
                Path::RemoteMtls,
                Path::Nginx,
                Path::Direct
            ]
        );
        assert_eq!(order(5), Path::ALL);
        // Over five rounds every path runs once in every position.
        for pos in 0..5 {
            let mut seen: Vec<Path> = (0..5).map(|r| order(r)[pos]).collect();
            seen.sort();
            assert_eq!(seen, Path::ALL);
        }
    }

    #[test]
    fn a_path_idle_too_long_is_warmed_again() {
        let now = Instant::now() + Duration::from_secs(120);
        assert!(needs_rewarm(None, now));
        assert!(!needs_rewarm(Some(now - Duration::from_secs(5)), now));
        assert!(needs_rewarm(Some(now - Duration::from_secs(31)), now));
        // Well inside ferryd's 90 s idle timeout of pooled peer connections.
        assert!(REWARM_AFTER < Duration::from_secs(90) / 2);
    }
}
