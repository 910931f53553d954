//! `ferry-bench`: `run` measures and writes BENCHMARKS.md; `resolver` measures kubernetes-mode
//! resolution at scale on the Tier-1 cluster (bench/resolver.sh); `app` and `sse-client` are the
//! harness's own app and streaming client, started by `run`.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path as FsPath, PathBuf},
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use ferry_bench::{
    Error, app,
    gate::Limits,
    loadgen::OHA_VERSION,
    machine,
    matrix::{self, Cell, HEADLINE, Load, Path, Role},
    procfs,
    report::{self, CellResult, Meta},
    resolver, resolver_report,
    runner::{self, Options, Run},
    sse,
    summary::{self, Memory},
    sut::{self, Sut},
};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    about = "Ferry's benchmark harness: ferryd next to a direct call and an nginx pair"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark and write BENCHMARKS.md (what `make bench` does).
    Run(Box<RunArgs>),
    /// Resolver scale on the Tier-1 cluster: memory per watched endpoint and endpoint-change
    /// propagation; updates the "Resolver scale" section of BENCHMARKS.md. Runs inside the
    /// cluster's network namespace: use `make bench-resolver` (bench/resolver.sh).
    Resolver(ResolverArgs),
    /// The app under test (started by `run`).
    App {
        #[arg(long)]
        port: u16,
    },
    /// The streaming client (started by `run`): prints its measurements as JSON.
    SseClient {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 16)]
        streams: u32,
        #[arg(long, default_value_t = 100)]
        events: u32,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A smoke run of a couple of minutes: every cell, 2 rounds, 1 s runs; writes
    /// bench/results/BENCHMARKS.quick.md instead of BENCHMARKS.md.
    #[arg(long, env = "FERRY_BENCH_QUICK")]
    quick: bool,
    /// Rounds per cell [default: 5, quick: 2].
    #[arg(long, env = "FERRY_BENCH_ROUNDS")]
    rounds: Option<u32>,
    /// Rounds added at most when runs were dropped [default: 3, quick: 0].
    #[arg(long, env = "FERRY_BENCH_EXTRA_ROUNDS")]
    extra_rounds: Option<u32>,
    /// Seconds per run of the headline cell [default: 20, quick: 3].
    #[arg(long, env = "FERRY_BENCH_HEADLINE_SECS")]
    headline_secs: Option<f64>,
    /// Seconds per run of every other cell [default: 5, quick: 1].
    #[arg(long, env = "FERRY_BENCH_SECS")]
    secs: Option<f64>,
    /// Unmeasured warm-up per path at the start of each cell, seconds [default: 1, quick: 0.5].
    #[arg(long, env = "FERRY_BENCH_WARMUP_SECS")]
    warmup_secs: Option<f64>,
    /// Only these cells (comma-separated names; `headline` is always kept first when listed).
    #[arg(long, env = "FERRY_BENCH_CELLS", value_delimiter = ',')]
    cells: Vec<String>,
    /// Where to write the report [default: BENCHMARKS.md, quick: bench/results/BENCHMARKS.quick.md].
    #[arg(long, env = "FERRY_BENCH_OUT")]
    out: Option<PathBuf>,
    /// Raw results (JSON), logs and scratch files.
    #[arg(long, env = "FERRY_BENCH_RESULTS_DIR", default_value = "bench/results")]
    results_dir: PathBuf,
    /// The ferryd to measure [default: next to this binary].
    #[arg(long, env = "FERRY_BENCH_FERRYD")]
    ferryd: Option<PathBuf>,
    /// oha binary [default: installed by the harness into ${FERRY_CACHE:-~/.cache/ferry}/oha].
    #[arg(long, env = "FERRY_BENCH_OHA")]
    oha: Option<PathBuf>,
    #[arg(long, env = "FERRY_BENCH_WRK", default_value = "wrk")]
    wrk: PathBuf,
    #[arg(long, env = "FERRY_BENCH_NGINX", default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// CPU of the load generator (and of this harness).
    #[arg(long, env = "FERRY_BENCH_LOADGEN_CPU", default_value_t = 0)]
    loadgen_cpu: usize,
    /// CPU of everything under test: app, sidecars, nginx.
    #[arg(long, env = "FERRY_BENCH_SUT_CPU", default_value_t = 1)]
    sut_cpu: usize,
    /// Drop a run when hypervisor steal exceeds this percentage.
    #[arg(long, env = "FERRY_BENCH_MAX_STEAL_PCT", default_value_t = 2.0)]
    max_steal_pct: f64,
    /// Drop a run when other processes used more than this percentage of the CPU under test or
    /// of the load generator's CPU.
    #[arg(long, env = "FERRY_BENCH_MAX_FOREIGN_PCT", default_value_t = 10.0)]
    max_foreign_pct: f64,
    /// Drop an open-loop run that achieved less than this percentage of its target rate.
    #[arg(long, env = "FERRY_BENCH_MIN_RATE_PCT", default_value_t = 99.0)]
    min_rate_pct: f64,
    /// Longest wait, before one run, for other processes to leave the CPU under test, seconds
    /// [default: 30, quick: 5].
    #[arg(long, env = "FERRY_BENCH_QUIET_WAIT_SECS")]
    quiet_wait_secs: Option<f64>,
    /// Total time the whole benchmark may spend waiting for quiet, seconds [default: 300,
    /// quick: 30].
    #[arg(long, env = "FERRY_BENCH_QUIET_BUDGET_SECS")]
    quiet_budget_secs: Option<f64>,
}

#[derive(Args, Debug)]
struct ResolverArgs {
    /// Apps in the namespace (each with a Service and an EndpointSlice).
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Endpoints per app.
    #[arg(long, default_value_t = 10)]
    endpoints_per_app: usize,
    /// Endpoint changes to time (alternately not ready and ready).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Objects applied at once while filling the namespace.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The ferryd to measure [default: next to this binary].
    #[arg(long, env = "FERRY_BENCH_FERRYD")]
    ferryd: Option<PathBuf>,
    /// Raw results (resolver.json), the section (resolver.md) and the sidecars' logs.
    #[arg(long, env = "FERRY_BENCH_RESULTS_DIR", default_value = "bench/results")]
    results_dir: PathBuf,
    /// The report whose "Resolver scale" section is replaced in place [default: BENCHMARKS.md
    /// at the default scale; none otherwise].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Resolver(args) => match run_resolver(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench resolver: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::App { port } => match app::serve(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench app: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::SseClient {
            url,
            streams,
            events,
            interval_ms,
        } => match sse::run(&url, streams, events, interval_ms) {
            Ok(r) => {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-bench sse-client: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => match run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-bench: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Everything a run produced, for `bench/results/results.json`.
#[derive(Serialize)]
struct Raw<'a> {
    meta: &'a Meta,
    memory: &'a Memory,
    cells: &'a [CellResult],
    runs: &'a [Run],
    targets: &'a [summary::Target],
}

fn run(a: RunArgs) -> Result<(), Error> {
    let started = Instant::now();
    // What is measured is what is checked out now, before the build is used.
    let (commit, dirty) = machine::git_commit();
    let q = a.quick;
    let rounds = a.rounds.unwrap_or(if q { 2 } else { 5 });
    let extra_rounds = a.extra_rounds.unwrap_or(if q { 0 } else { 3 });
    let headline_secs = a.headline_secs.unwrap_or(if q { 3.0 } else { 20.0 });
    let secs = a.secs.unwrap_or(if q { 1.0 } else { 5.0 });
    let warmup_secs = a.warmup_secs.unwrap_or(if q { 0.5 } else { 1.0 });
    let out = a.out.clone().unwrap_or_else(|| {
        if q {
            a.results_dir.join("BENCHMARKS.quick.md")
        } else {
            PathBuf::from("BENCHMARKS.md")
        }
    });
    let cells: Vec<Cell> = matrix::matrix(headline_secs, secs)
        .into_iter()
        .filter(|c| a.cells.is_empty() || a.cells.iter().any(|n| n == c.name))
        .collect();
    if cells.is_empty() {
        let names: Vec<&str> = matrix::matrix(1.0, 1.0).iter().map(|c| c.name).collect();
        return Err(Error::Tool {
            tool: "ferry-bench",
            detail: format!("no cell matches --cells; cells are: {}", names.join(", ")),
        });
    }

    pin_self(a.loadgen_cpu);
    let bench_exe = std::env::current_exe().map_err(Error::io("find this binary"))?;
    let ferryd = a.ferryd.clone().unwrap_or_else(|| {
        bench_exe
            .parent()
            .unwrap_or(FsPath::new("."))
            .join("ferryd")
    });
    if !ferryd.exists() {
        return Err(Error::Tool {
            tool: "ferryd",
            detail: format!(
                "{} does not exist: build it with `cargo build --release -p ferry-sidecar` (make bench does)",
                ferryd.display()
            ),
        });
    }
    for (tool, p) in [("nginx", &a.nginx), ("wrk", &a.wrk)] {
        if machine::first_line(p, &["-v"]).is_none() {
            return Err(Error::Tool {
                tool,
                detail: format!(
                    "{} does not run; install Debian's {tool} (apt-get install {tool})",
                    p.display()
                ),
            });
        }
    }
    let oha = ensure_oha(a.oha.clone())?;

    let dir = a.results_dir.join("last");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(Error::io("create bench/results/last"))?;
    let dir = fs::canonicalize(&dir).map_err(Error::io("resolve bench/results/last"))?;

    let paths = Path::ALL.len() as f64;
    let estimate: f64 = cells
        .iter()
        .map(|c| paths * (rounds as f64) * (c.secs + 0.9) + paths * (warmup_secs + 0.4))
        .sum();
    eprintln!(
        "ferry-bench: {} cells × {paths} paths × {rounds} rounds, about {:.0} min (results in {}, logs in {})",
        cells.len(),
        (estimate / 60.0).ceil(),
        out.display(),
        dir.display()
    );

    let sut_config = sut::Config {
        ferryd: ferryd.clone(),
        nginx: a.nginx.clone(),
        bench_exe: bench_exe.clone(),
        cpu: a.sut_cpu,
        dir: dir.clone(),
    };
    let mut sut = start_checked(&sut_config)?;
    thread::sleep(Duration::from_secs(2));
    let mut memory = Memory {
        idle: sut
            .rss()
            .into_iter()
            .map(|(r, (rss, _))| (r, rss))
            .collect(),
        ..Memory::default()
    };

    let opts = Options {
        rounds,
        extra_rounds,
        warmup_secs,
        quiet_wait: Duration::from_secs_f64(a.quiet_wait_secs.unwrap_or(if q {
            5.0
        } else {
            30.0
        })),
        limits: Limits {
            max_steal_pct: a.max_steal_pct,
            max_foreign_pct: a.max_foreign_pct,
            min_rate_ratio: a.min_rate_pct / 100.0,
        },
        loadgen_cpu: a.loadgen_cpu,
        sut_cpu: a.sut_cpu,
        oha: oha.clone(),
        wrk: a.wrk.clone(),
        bench_exe,
        dir: dir.clone(),
        clock_ticks: procfs::clock_ticks(),
    };
    let mut budget = runner::Budget {
        wait_left: Duration::from_secs_f64(a.quiet_budget_secs.unwrap_or(if q {
            30.0
        } else {
            300.0
        })),
        waited: Duration::ZERO,
    };
    let mut all_runs = Vec::new();
    let mut results = Vec::new();
    // Processes under test that stop during a cell (a crash, or someone else's clean-up on a
    // shared machine) are restarted and the cell repeated, at most twice per benchmark.
    let mut restarts: Vec<String> = Vec::new();
    for cell in &cells {
        eprintln!("== {} ({})", cell.title(), cell.name);
        let runs = loop {
            let attempt = runner::run_cell(&mut sut, cell, &opts, &mut budget, |r| {
                eprintln!("{}", report::progress_line(cell.name, r))
            });
            match attempt {
                Ok(runs) => break runs,
                Err(e @ Error::Died { .. }) if restarts.len() < 2 => {
                    eprintln!("ferry-bench: {e}");
                    eprintln!(
                        "ferry-bench: restarting the processes under test, repeating `{}`",
                        cell.name
                    );
                    let what = e.to_string();
                    restarts.push(format!(
                        "during `{}`: {}",
                        cell.name,
                        what.lines().next().unwrap_or_default()
                    ));
                    sut.stop();
                    sut = start_checked(&sut_config)?;
                }
                Err(e) => return Err(e),
            }
        };
        if cell.name == HEADLINE {
            for r in &runs {
                for (role, kib) in &r.rss_max_kib {
                    let e = memory.headline_load.entry(*role).or_default();
                    *e = (*e).max(*kib);
                }
            }
        }
        results.push(CellResult {
            cell: cell.clone(),
            summaries: summary::summarize(&runs),
        });
        all_runs.extend(runs);
    }
    memory.peak = sut.rss().into_iter().map(|(r, (_, h))| (r, h)).collect();
    thread::sleep(Duration::from_secs(2));
    memory.end = sut
        .rss()
        .into_iter()
        .map(|(r, (rss, _))| (r, rss))
        .collect();
    let logs = sut.logs();
    sut.stop();

    let headline = results
        .iter()
        .find(|c| c.cell.name == HEADLINE)
        .map(|c| c.summaries.as_slice());
    let max: Vec<(String, Vec<_>)> = results
        .iter()
        .filter(|c| c.cell.load == Load::Max)
        .map(|c| (format!("{} connections", c.cell.conns), c.summaries.clone()))
        .collect();
    let targets = summary::targets(headline, &max, &memory);

    let args: Vec<String> = std::env::args().skip(2).collect();
    let meta = Meta {
        command: if args.is_empty() {
            "make bench".into()
        } else {
            format!("make bench BENCH_ARGS='{}'", args.join(" "))
        },
        date: machine::now_utc(),
        commit,
        dirty,
        machine: machine::read(),
        tools: vec![
            ("oha".into(), version(&oha, "--version")),
            ("wrk".into(), version(&a.wrk, "-v")),
            ("nginx".into(), version(&a.nginx, "-v")),
            ("ferryd".into(), version(&ferryd, "--version")),
            ("rustc".into(), version(FsPath::new("rustc"), "-V")),
        ],
        wall_secs: started.elapsed().as_secs_f64(),
        waited_secs: budget.waited.as_secs_f64(),
        restarts,
        rounds,
        extra_rounds,
        warmup_secs,
        loadgen_cpu: a.loadgen_cpu,
        sut_cpu: a.sut_cpu,
        limits: opts.limits,
    };
    let md = report::render(&meta, &results, &memory, &targets);
    // The resolver scale section comes from its own run (bench/resolver.sh): carried over.
    let md = resolver_report::carry_over(
        &md,
        fs::read_to_string(a.results_dir.join(RESOLVER_MD))
            .ok()
            .as_deref(),
        fs::read_to_string(&out).ok().as_deref(),
    );
    fs::write(&out, &md).map_err(Error::io("write the report"))?;
    let raw = Raw {
        meta: &meta,
        memory: &memory,
        cells: &results,
        runs: &all_runs,
        targets: &targets,
    };
    fs::write(
        a.results_dir.join("results.json"),
        serde_json::to_vec_pretty(&raw).expect("serializable"),
    )
    .map_err(Error::io("write results.json"))?;

    print_summary(&results, &targets, &memory);
    let warnings = log_warnings(&logs);
    if !warnings.is_empty() {
        eprintln!("\nwarnings and errors in the logs of the processes under test:");
        for w in warnings.iter().take(20) {
            eprintln!("  {w}");
        }
    }
    eprintln!(
        "\nferry-bench: wrote {} and {} in {:.1} min",
        out.display(),
        a.results_dir.join("results.json").display(),
        meta.wall_secs / 60.0
    );
    Ok(())
}

/// The resolver run's section, in the results directory.
const RESOLVER_MD: &str = "resolver.md";

fn run_resolver(a: ResolverArgs) -> anyhow::Result<()> {
    let (commit, dirty) = machine::git_commit();
    let full_scale = a.apps == 1000 && a.endpoints_per_app == 10;
    let ferryd = match a.ferryd.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .unwrap_or(FsPath::new("."))
            .join("ferryd"),
    };
    let args: Vec<String> = std::env::args().skip(2).collect();
    let meta = resolver_report::Meta {
        command: if args.is_empty() {
            "make bench-resolver".into()
        } else {
            format!("make bench-resolver ARGS='{}'", args.join(" "))
        },
        date: machine::now_utc(),
        commit,
        dirty,
        machine: machine::read(),
        kubernetes: ferry_e2e::k8s_version(),
        ferryd: version(&ferryd, "--version"),
    };
    let dir = a.results_dir.join("resolver");
    let _ = fs::remove_dir_all(&dir);
    let opts = resolver::Options {
        ferryd,
        apps: a.apps,
        endpoints_per_app: a.endpoints_per_app,
        changes: a.changes,
        concurrency: a.concurrency,
        dir: dir.clone(),
        meta,
    };
    eprintln!(
        "ferry-bench resolver: {} apps × {} endpoints, {} endpoint changes (logs in {})",
        a.apps,
        a.endpoints_per_app,
        a.changes,
        dir.display()
    );
    let figures = resolver::run(&opts)?;
    let section = resolver_report::render(&figures);
    // Another scale is a trial: kept apart, so that `make bench` does not carry it over.
    let name = if full_scale {
        RESOLVER_MD
    } else {
        "resolver.trial.md"
    };
    fs::write(a.results_dir.join(name), &section)?;
    fs::write(
        a.results_dir.join("resolver.json"),
        serde_json::to_vec_pretty(&figures)?,
    )?;
    let out = a
        .out
        .clone()
        .or_else(|| full_scale.then(|| PathBuf::from("BENCHMARKS.md")));
    if let Some(out) = &out {
        let doc = fs::read_to_string(out).unwrap_or_default();
        fs::write(out, resolver_report::splice(&doc, &section))?;
    }
    println!("{section}");
    eprintln!(
        "ferry-bench resolver: wrote {}{}",
        a.results_dir.join(name).display(),
        out.map(|o| format!(" and the section of {}", o.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn print_summary(results: &[CellResult], targets: &[summary::Target], mem: &Memory) {
    if let Some(h) = results.iter().find(|c| c.cell.name == HEADLINE) {
        println!("\n{}:", h.cell.title());
        for s in &h.summaries {
            let a = |i| s.added_at(i).map_or("".into(), |v| format!("{v:+.0}"));
            let cpu: Vec<String> = s
                .cpu_per_krps
                .iter()
                .filter(|(r, _)| **r != Role::App)
                .map(|(r, v)| format!("{} {v:.3}", r.label()))
                .collect();
            println!(
                "  {:<12} added p50 {:>6} µs  p99 {:>6} µs  vCPU/1000 rps: {}",
                s.path.label(),
                a(0),
                a(2),
                cpu.join(", ")
            );
        }
    }
    let rss: Vec<String> = mem
        .idle
        .iter()
        .filter(|(r, _)| r.is_ferryd())
        .map(|(r, k)| format!("{} {:.1} MiB", r.label(), *k as f64 / 1024.0))
        .collect();
    println!("  idle RSS: {}", rss.join(", "));
    println!("\ntargets:");
    for t in targets {
        let v = match t.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        println!(
            "  {:<60} {:>12} vs {:>12}  {v}",
            t.what, t.ferryd, t.reference
        );
    }
}

/// Starts everything under test and checks every path end to end (bodies of 0 B, 1 KiB and
/// 1 MiB, and an event stream) before anything is measured.
fn start_checked(cfg: &sut::Config) -> Result<Sut, Error> {
    let sut = Sut::start(cfg)?;
    for path in Path::ALL {
        for len in [0, 1024, matrix::MIB] {
            sut.check_path(path, len)?;
        }
        let s = sse::run(&sut.url(path, "/sse"), 1, 2, 5).map_err(|e| Error::Check {
            path: path.label(),
            detail: e,
        })?;
        if s.received != 2 || s.errors != 0 {
            return Err(Error::Check {
                path: path.label(),
                detail: format!("event stream: {} of 2 events", s.received),
            });
        }
    }
    Ok(sut)
}

/// Lines of the processes' logs that say WARN or ERROR (with their process), a quick look at
/// whether anything misbehaved during the run.
fn log_warnings(logs: &[(Role, PathBuf)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut counts: BTreeMap<Role, usize> = BTreeMap::new();
    for (role, path) in logs {
        let text = fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            if line.contains("WARN") || line.contains("ERROR") || line.contains("[error]") {
                *counts.entry(*role).or_default() += 1;
                if counts[role] <= 5 {
                    out.push(format!("{}: {}", role.label(), line.trim()));
                }
            }
        }
    }
    for (role, n) in counts {
        if n > 5 {
            out.push(format!("{}: {} such lines in all", role.label(), n));
        }
    }
    out
}

/// `oha 1.16.0`, `wrk debian/4.1.0-3+b2`, `nginx/1.22.1`: a tool's version line, trimmed.
fn version(program: &FsPath, flag: &str) -> String {
    let line = machine::first_line(program, &[flag]).unwrap_or_else(|| "unknown".into());
    let line = line.trim_start_matches("nginx version: ");
    line.split(" [").next().unwrap_or(line).to_owned()
}

/// Pins this harness to the load generator's CPU, so its /proc sampling never lands on the CPU
/// under test.
fn pin_self(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The pinned oha, installed from crates.io into the cache (outside the repository) on first use.
fn ensure_oha(explicit: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let cache = std::env::var_os("FERRY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferry")))
        .unwrap_or_else(|| PathBuf::from("/tmp/ferry-cache"));
    let root = cache.join("oha").join(OHA_VERSION);
    let bin = root.join("bin").join("oha");
    let version_ok = |b: &FsPath| {
        machine::first_line(b, &["--version"]).is_some_and(|v| v.contains(OHA_VERSION))
    };
    if !version_ok(&bin) {
        eprintln!(
            "ferry-bench: installing oha {OHA_VERSION} into {} (once; a few minutes on 2 cores)",
            root.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "install",
                "oha",
                "--version",
                OHA_VERSION,
                "--locked",
                "--root",
            ])
            .arg(&root)
            .status()
            .map_err(|e| Error::Spawn {
                what: "cargo install oha".into(),
                source: e,
            })?;
        if !status.success() || !version_ok(&bin) {
            return Err(Error::Tool {
                tool: "cargo install oha",
                detail: format!("{status}; oha {OHA_VERSION} is not at {}", bin.display()),
            });
        }
    }
    Ok(bin)
}
