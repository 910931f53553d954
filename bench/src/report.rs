//! BENCHMARKS.md, rendered from the summaries (pure: the runner writes the file).

use std::fmt::Write;

use serde::Serialize;

use crate::{
    gate::Limits,
    loadgen::Latency,
    machine::Machine,
    matrix::{Cell, HEADLINE, Load, Path, Role},
    summary::{Memory, PathSummary, Target, find},
};

/// The command, date and commit lines of a report, naming uncommitted changes.
pub fn provenance(o: &mut String, command: &str, date: &str, commit: &str, dirty: &[String]) {
    writeln!(o, "- **Command:** `{command}`").unwrap();
    let dirty = if dirty.is_empty() {
        String::new()
    } else {
        let files: Vec<_> = dirty.iter().map(|l| format!("`{l}`")).collect();
        format!(" **with uncommitted changes** in: {}", files.join(", "))
    };
    writeln!(o, "- **Date:** {date}; **commit** `{commit}`{dirty}").unwrap();
}

/// "Where ferryd's time goes, and what was changed" (bench/profile.md).
const PROFILE: &str = include_str!("../profile.md");

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub command: String,
    pub date: String,
    pub commit: String,
    /// `git status --porcelain` lines of what ferryd and the harness are built from.
    pub dirty: Vec<String>,
    pub machine: Machine,
    pub tools: Vec<(String, String)>,
    pub wall_secs: f64,
    /// Of `wall_secs`, the time spent waiting for other processes to leave the CPU under test.
    pub waited_secs: f64,
    /// Processes under test that stopped during the run (and were restarted), and when.
    pub restarts: Vec<String>,
    pub rounds: u32,
    pub extra_rounds: u32,
    pub warmup_secs: f64,
    pub loadgen_cpu: usize,
    pub sut_cpu: usize,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub cell: Cell,
    pub summaries: Vec<PathSummary>,
}

fn lat(us: f64) -> String {
    if us.abs() >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn added(us: f64) -> String {
    let sign = if us < 0.0 { "−" } else { "+" };
    format!("{sign}{}", lat(us.abs()))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

fn kept(s: &PathSummary) -> String {
    format!("{}/{}", s.kept, s.runs)
}

fn latency_table(out: &mut String, sums: &[PathSummary], ranges: bool) {
    out.push_str(
        "| path | p50 | p90 | p99 | p99.9 | added p50 | added p90 | added p99 | added p99.9 | achieved rps | kept runs |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in sums {
        let mut row = format!("| {} ({}) ", s.path.label(), s.path.chain());
        for i in 0..4 {
            row += &format!("| {} ", opt(s.latency, |l| lat(l[i].median)));
        }
        for i in 0..4 {
            let cell = match s.added {
                None if s.path == Path::Direct => "".into(),
                None => "–".into(),
                Some(a) if ranges => format!(
                    "{} <sub>({}…{})</sub>",
                    added(a[i].median),
                    added(a[i].min),
                    added(a[i].max)
                ),
                Some(a) => added(a[i].median),
            };
            row += &format!("| {cell} ");
        }
        row += &format!(
            "| {} | {} |\n",
            opt(s.rps, |r| format!("{:.0}", r.median)),
            kept(s)
        );
        out.push_str(&row);
    }
}

fn cpu_cell(s: &PathSummary) -> String {
    let parts: Vec<String> = s
        .path
        .proxies()
        .iter()
        .filter_map(|r| Some(format!("{} {:.3}", r.label(), s.cpu_per_krps.get(r)?)))
        .collect();
    if parts.is_empty() {
        "".into()
    } else {
        parts.join(", ")
    }
}

fn throughput_table(out: &mut String, sums: &[PathSummary]) {
    let direct = find(sums, Path::Direct)
        .and_then(|d| d.rps)
        .map(|r| r.median);
    out.push_str(
        "| path | rps (median) | range | vs direct | vCPU per 1000 rps of each proxy | CPU under test busy | load-generator CPU busy | kept runs |\n\
         |---|--:|--:|--:|---|--:|--:|--:|\n",
    );
    for s in sums {
        let rps = s.rps.map(|r| r.median);
        writeln!(
            out,
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
            s.path.label(),
            s.path.chain(),
            opt(rps, |r| format!("{r:.0}")),
            opt(s.rps, |r| format!("{:.0}…{:.0}", r.min, r.max)),
            opt(rps.zip(direct), |(r, d)| format!("{:.0} %", 100.0 * r / d)),
            cpu_cell(s),
            opt(s.sut_busy_pct, |v| format!("{v:.0} %")),
            opt(s.loadgen_busy_pct, |v| format!("{v:.0} %")),
            kept(s)
        )
        .unwrap();
    }
}

fn resources_table(out: &mut String, headline: Option<&[PathSummary]>, mem: &Memory) {
    out.push_str(
        "| process | vCPU per 1000 rps (headline) | RSS idle | RSS under the headline load (max) | peak RSS (VmHWM, whole run) | RSS at the end |\n\
         |---|--:|--:|--:|--:|--:|\n",
    );
    for role in Role::ALL {
        let cpu = headline.and_then(|h| {
            h.iter()
                .filter(|s| {
                    s.path.proxies().contains(&role)
                        || (role == Role::App && s.path == Path::Direct)
                })
                .find_map(|s| s.cpu_per_krps.get(&role).copied())
        });
        let m = |map: &std::collections::BTreeMap<Role, u64>| opt(map.get(&role).copied(), mib);
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            role.label(),
            opt(cpu, |v| format!("{v:.3}")),
            m(&mem.idle),
            m(&mem.headline_load),
            m(&mem.peak),
            m(&mem.end)
        )
        .unwrap();
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b.abs() < 1e-12 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The plaintext pair and the mTLS pair of one cell.
fn pairs(sums: &[PathSummary]) -> Option<(&PathSummary, &PathSummary)> {
    Some((find(sums, Path::Remote)?, find(sums, Path::RemoteMtls)?))
}

/// "What mTLS costs a call": the plaintext pair against the mTLS pair of the same run, on warm
/// (pooled) connections.
fn mtls_section(o: &mut String, cells: &[CellResult], mem: &Memory) {
    let headline = cells.iter().find(|c| c.cell.name == HEADLINE);
    let pair = pairs;
    let Some((plain, mtls)) = headline.and_then(|h| pair(&h.summaries)) else {
        return;
    };
    let title = headline.map(|h| h.cell.title()).unwrap_or_default();
    writeln!(
        o,
        "## What mTLS costs a call (issue 14): {title}
"
    )
    .unwrap();
    o.push_str(
        "The plaintext ferryd pair (`bench-caller` → `bench-callee`) against the same pair started          with `--enable-mtls` (`bench-mtls-caller` → `bench-mtls-callee`, certificates from the          standalone local CA under the shared `FERRY_HOME`), measured in the same cells and rounds          as the other paths. Connections are warm: every cell starts with a warm-up of every path,          and a path idle for more than 30 s is warmed again before it is measured, so the pooled          peer connections (and their TLS sessions) exist before a measured run starts. The TLS          nginx reference pair (`proxy_ssl`) belongs to issue 19 and is not in this run.\n\n",
    );
    o.push_str(
        "| pair | added p50 | added p99 | vCPU per 1000 rps, caller | vCPU per 1000 rps, callee | RSS idle, caller / callee | RSS under the headline load, caller / callee |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
    );
    let rss = |map: &std::collections::BTreeMap<Role, u64>, a: Role, b: Role| {
        format!(
            "{} / {}",
            opt(map.get(&a).copied(), mib),
            opt(map.get(&b).copied(), mib)
        )
    };
    let row = |o: &mut String, s: &PathSummary, caller: Role, callee: Role| {
        writeln!(
            o,
            "| {} ({}) | {} | {} | {} | {} | {} | {} |",
            s.path.label(),
            s.path.chain(),
            opt(s.added_at(0), added),
            opt(s.added_at(2), added),
            opt(s.cpu_per_krps.get(&caller), |v| format!("{v:.3}")),
            opt(s.cpu_per_krps.get(&callee), |v| format!("{v:.3}")),
            rss(&mem.idle, caller, callee),
            rss(&mem.headline_load, caller, callee),
        )
        .unwrap();
    };
    row(o, plain, Role::FerrydCaller, Role::FerrydCallee);
    row(o, mtls, Role::FerrydMtlsCaller, Role::FerrydMtlsCallee);
    let cpu = |s: &PathSummary, r: Role| s.cpu_per_krps.get(&r).copied();
    let diff = |a: Option<f64>, b: Option<f64>, f: &dyn Fn(f64, f64) -> String| {
        a.zip(b).map_or_else(|| "–".into(), |(a, b)| f(a, b))
    };
    let lat_diff = |i: usize| diff(mtls.added_at(i), plain.added_at(i), &|a, b| added(a - b));
    let cpu_diff = |m: Role, p: Role| {
        diff(cpu(mtls, m), cpu(plain, p), &|a, b| {
            format!("{:+.3}", a - b)
        })
    };
    let rss_diff = |map: &std::collections::BTreeMap<Role, u64>| {
        let d = |m: Role, p: Role| {
            diff(
                map.get(&m).map(|&k| k as f64),
                map.get(&p).map(|&k| k as f64),
                &|a, b| format!("{:+.1} MiB", (a - b) / 1024.0),
            )
        };
        format!(
            "{} / {}",
            d(Role::FerrydMtlsCaller, Role::FerrydCaller),
            d(Role::FerrydMtlsCallee, Role::FerrydCallee)
        )
    };
    writeln!(
        o,
        "| mTLS − plaintext | {} | {} | {} | {} | {} | {} |",
        lat_diff(0),
        lat_diff(2),
        cpu_diff(Role::FerrydMtlsCaller, Role::FerrydCaller),
        cpu_diff(Role::FerrydMtlsCallee, Role::FerrydCallee),
        rss_diff(&mem.idle),
        rss_diff(&mem.headline_load),
    )
    .unwrap();
    let lat_ratio = |i: usize| diff(mtls.added_at(i), plain.added_at(i), &ratio);
    let cpu_ratio = |m: Role, p: Role| diff(cpu(mtls, m), cpu(plain, p), &ratio);
    writeln!(
        o,
        "| mTLS ÷ plaintext | {} | {} | {} | {} | | |\n",
        lat_ratio(0),
        lat_ratio(2),
        cpu_ratio(Role::FerrydMtlsCaller, Role::FerrydCaller),
        cpu_ratio(Role::FerrydMtlsCallee, Role::FerrydCallee),
    )
    .unwrap();

    o.push_str("Per call, on warm connections:\n\n");
    if let Some(over) = mtls.over_plain {
        for (i, name) in [(0, "p50"), (2, "p99")] {
            writeln!(
                o,
                "- latency at {name}: {} <sub>({}…{})</sub>, the median over {} rounds of (mTLS pair − plaintext pair of the same round)",
                added(over[i].median),
                added(over[i].min),
                added(over[i].max),
                over[i].n
            )
            .unwrap();
        }
    } else {
        o.push_str("- latency: no round in which both pairs' runs were kept\n");
    }
    let per_call = |m: Role, p: Role| {
        diff(cpu(mtls, m), cpu(plain, p), &|a, b| {
            // vCPU per 1000 rps = CPU-ms per call.
            format!(
                "{:+.0} µs ({:.0} → {:.0} µs)",
                (a - b) * 1000.0,
                b * 1000.0,
                a * 1000.0
            )
        })
    };
    writeln!(
        o,
        "- CPU time per call: caller sidecar {}, callee sidecar {}",
        per_call(Role::FerrydMtlsCaller, Role::FerrydCaller),
        per_call(Role::FerrydMtlsCallee, Role::FerrydCallee)
    )
    .unwrap();
    let max: Vec<String> = cells
        .iter()
        .filter(|c| c.cell.load == Load::Max)
        .filter_map(|c| {
            let (p, m) = pair(&c.summaries)?;
            let (p, m) = (p.rps?.median, m.rps?.median);
            Some(format!(
                "{} connections: {p:.0} rps plaintext, {m:.0} rps mTLS ({})",
                c.cell.conns,
                ratio(m, p)
            ))
        })
        .collect();
    if !max.is_empty() {
        writeln!(
            o,
            "- maximum throughput (wrk, closed loop): {}",
            max.join("; ")
        )
        .unwrap();
    }
    o.push('\n');
}

pub fn render(meta: &Meta, cells: &[CellResult], mem: &Memory, targets: &[Target]) -> String {
    let mut o = String::new();
    let headline = cells.iter().find(|c| c.cell.name == HEADLINE);
    o.push_str("# Benchmarks\n\n");
    o.push_str(
        "<!-- Written by `make bench` (bench/, the ferry-bench crate). Do not edit by hand: the next run rewrites this file. -->\n\n",
    );
    o.push_str(
        "What ferryd adds to a call, next to the same call made directly and through a pair of \
         nginx reverse proxies (the practical floor for two HTTP proxy hops), all measured in the \
         same run, interleaved, on the same machine. All traffic is on loopback.\n\n",
    );
    provenance(&mut o, &meta.command, &meta.date, &meta.commit, &meta.dirty);
    writeln!(
        o,
        "- **Machine:** {}, {} CPUs, {:.1} GiB, Linux {} (a shared virtual machine)",
        meta.machine.cpu_model, meta.machine.cpus, meta.machine.mem_gib, meta.machine.kernel
    )
    .unwrap();
    let tools: Vec<&str> = meta.tools.iter().map(|(_, v)| v.as_str()).collect();
    writeln!(o, "- **Tools:** {}", tools.join("; ")).unwrap();
    writeln!(
        o,
        "- **Pinning:** load generator on CPU {}, everything under test (app, sidecars, nginx) on CPU {}",
        meta.loadgen_cpu, meta.sut_cpu
    )
    .unwrap();
    writeln!(
        o,
        "- **Rounds:** {} per cell (up to {} more when runs were dropped); the whole run took {:.1} min, \
         {:.1} min of it waiting for other processes to leave the CPU under test\n",
        meta.rounds,
        meta.extra_rounds,
        meta.wall_secs / 60.0,
        meta.waited_secs / 60.0
    )
    .unwrap();

    if !meta.restarts.is_empty() {
        writeln!(
            o,
            "- **Restarts:** processes under test stopped and were restarted (the cell repeated, \
             peak and end memory are those of the restarted processes): {}\n",
            meta.restarts.join("; ")
        )
        .unwrap();
    }
    if let Some(h) = headline {
        writeln!(o, "## Headline: {}\n", h.cell.title()).unwrap();
        o.push_str(
            "Latency corrected for coordinated omission (oha, open loop). Each figure is the median \
             over kept rounds; *added* is the median of the per-round differences against the \
             direct call of the same round, with the range over rounds in small print.\n\n",
        );
        latency_table(&mut o, &h.summaries, true);
        o.push_str("\nCPU and memory of each process under test:\n\n");
        resources_table(&mut o, Some(&h.summaries), mem);
        o.push('\n');
    }

    o.push_str("## Targets (issue 8), against the nginx pair of the same run\n\n");
    o.push_str("| target | ferryd | reference | |\n|---|--:|--:|---|\n");
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured (runs dropped or not run)",
        };
        writeln!(
            o,
            "| {} | {} | {} | {verdict} |",
            t.what, t.ferryd, t.reference
        )
        .unwrap();
    }
    o.push('\n');

    mtls_section(&mut o, cells, mem);

    // What profiling found and what was changed: prose kept next to the harness, since a run
    // cannot measure it; bench/percall.sh reproduces its figures.
    o.push_str(PROFILE);

    o.push_str("## Every cell\n\nEach cell changes one thing against the headline.\n\n");
    for c in cells {
        if c.cell.name == HEADLINE {
            writeln!(o, "### {} (`{}`)\n", c.cell.title(), c.cell.name).unwrap();
        } else {
            writeln!(
                o,
                "### {} (`{}`: {})\n",
                c.cell.title(),
                c.cell.name,
                c.cell.varies
            )
            .unwrap();
        }
        match c.cell.load {
            Load::Open { .. } => {
                latency_table(&mut o, &c.summaries, false);
                o.push('\n');
                for s in &c.summaries {
                    let cpu = cpu_cell(s);
                    if !cpu.is_empty() {
                        writeln!(o, "- vCPU per 1000 rps, {}: {cpu}", s.path.label()).unwrap();
                    }
                }
            }
            Load::Max => {
                throughput_table(&mut o, &c.summaries);
                o.push('\n');
            }
            Load::Sse { .. } => {
                o.push_str(
                    "Per-event delivery latency (app send time to client receive time); *achieved \
                     rps* is events per second.\n\n",
                );
                latency_table(&mut o, &c.summaries, false);
                o.push('\n');
            }
        }
        let mem_line: Vec<String> = c
            .summaries
            .iter()
            .flat_map(|s| s.rss_max_kib.iter().filter(|(r, _)| **r != Role::App))
            .map(|(r, k)| format!("{} {}", r.label(), mib(*k)))
            .collect();
        if !mem_line.is_empty() {
            writeln!(o, "- largest RSS during this cell: {}", mem_line.join(", ")).unwrap();
        }
        o.push('\n');
    }

    o.push_str("## Dropped runs\n\n");
    let mut any = false;
    for c in cells {
        for s in &c.summaries {
            for (round, reasons) in &s.dropped {
                any = true;
                let r: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                writeln!(
                    o,
                    "- `{}` round {round}, {}: {}",
                    c.cell.name,
                    s.path.label(),
                    r.join("; ")
                )
                .unwrap();
            }
        }
    }
    if !any {
        o.push_str("None.\n");
    }
    o.push('\n');
    method(&mut o, meta);
    o
}

fn method(o: &mut String, meta: &Meta) {
    let l = &meta.limits;
    write!(
        o,
        "## Method

- **Paths**, measured in every cell and round, in an order rotated each round: *direct*
  (load generator → app); *ferryd self* (→ ferryd → its own app, `/v1.0/invoke/bench-self/method/echo`);
  *ferryd pair* (→ ferryd `bench-caller` → ferryd `bench-callee` → app, resolved through a
  private `FERRY_HOME` registry, sidecar to sidecar over plaintext HTTP/1.1 keep-alive, and HTTP/2
  for streamed bodies); *ferryd mTLS pair* (the same with `--enable-mtls`: → `bench-mtls-caller` →
  `bench-mtls-callee` → app, the same pooling inside TLS, SVIDs from the standalone local CA under
  the same `FERRY_HOME`); *nginx pair* (→ nginx → nginx → app).
- **Processes:** release builds. One app for every path (`ferry-bench app`, hyper, one thread):
  `POST /echo` reads the body and answers 200 with a body of the same size. ferryd runs with its
  defaults (log level info, metrics off). Each nginx: `worker_processes 1`, `access_log off`,
  upstream `keepalive 256` with `proxy_http_version 1.1` and `proxy_set_header Connection \"\"`,
  `proxy_request_buffering off` and `proxy_buffering off` (it streams as ferryd does, which server-sent
  events need), keep-alive request limits lifted on both sides.
- **Pinning:** the load generator on CPU {lg}, every process under test on CPU {sut}, identical
  for every path: each path crosses the same single CPU boundary (load generator ↔ first hop), and
  the processes under test never compete with the load generator. On one CPU, ferryd's runtime
  has one worker thread (tokio sizes its pool from the affinity mask), as has oha (`--worker-threads 1`)
  and wrk (`-t1`). Maximum throughput is therefore what one core carries for app + proxies.
- **Load:** fixed-rate cells use {oha} with `-q <rate> --latency-correction` and `-n = rate × seconds`
  (open loop: latency counts from each request's scheduled send time, so a stall is not hidden by
  coordinated omission). Closed-loop cells use wrk with a Lua POST body; only their throughput is
  reported. The streaming cell holds event streams open (`GET /sse`, `Accept: text/event-stream`)
  and measures each event's delivery latency (the app stamps each event with the wall-clock time
  it hands it to the socket; client and app share the clock). Per-event latency rather than time
  to first byte: a proxy goes wrong with streams by holding events back, which only per-event
  latency shows. Every cell starts with an unmeasured {warm:.0} s warm-up of every path.
- **Figures:** percentiles per run from oha (p50, p90, p99, p99.9); per path the median over kept
  runs, and *added* = the median over rounds of (path − direct of the same round). p99.9 of the
  shorter cells rests on few samples. CPU is `utime + stime` of `/proc/<pid>/stat` (nginx: master
  + worker) over the measured window, as vCPU per 1000 rps = CPU seconds × 1000 / requests. RSS is
  `VmRSS` of `/proc/<pid>/status` sampled about once a second (idle: after start-up, before any
  load); peak is `VmHWM` at the end of the whole run, so it includes the 1 MiB bodies.
- **Drop rules** (fixed in advance, `bench/src/gate.rs`): a run is dropped when hypervisor steal
  (`/proc/stat`, all CPUs) exceeds {steal} %, when other processes' task time on the CPU under test
  or on the load generator's CPU exceeds {foreign} % of the window (this machine is shared; a
  delayed load generator inflates the latency it records as much as a delayed proxy does), when an open-loop run achieved less
  than {rate:.0} % of its target rate (streams: events delivered), or on any error or non-2xx
  answer. A per-round difference needs both that path's run and the direct run of the round.
  Dropped runs are listed above; when a round loses a run, up to {extra} more rounds are added.
  Before each run the harness waits (up to a budget) for half a second in which both CPUs are
  that quiet; the time it waited is stated at the top.
- **Resolver scale** (Kubernetes mode: 10,000 endpoints across 1,000 apps, memory per watched
  endpoint, endpoint-change propagation) needs root and the Tier-1 cluster: `make bench-resolver`
  (which `make bench` runs after the tables above when it can) measures it and writes its own
  section, below; a run of `make bench` without it keeps the section of the last one.
- **Comparing with published figures:** Dapr (v1.17: p50 +1.06 ms, p90 +1.48 ms, p99 +2.90 ms at
  1000 rps, 16 connections, 1 KiB) and Istio (p90 +0.23 ms, p99 +0.30 ms) were measured across
  nodes on Kubernetes with mTLS; these figures are loopback on one machine (mTLS only on the ferryd mTLS pair), so compare
  them with the nginx pair of the same run, not in absolute terms.
",
        lg = meta.loadgen_cpu,
        sut = meta.sut_cpu,
        oha = meta
            .tools
            .iter()
            .find(|(k, _)| k == "oha")
            .map_or("", |(_, v)| v.as_str()),
        warm = meta.warmup_secs,
        steal = l.max_steal_pct,
        foreign = l.max_foreign_pct,
        rate = l.min_rate_ratio * 100.0,
        extra = meta.extra_rounds,
    )
    .unwrap();
}

/// One progress line for the terminal.
pub fn progress_line(cell: &str, r: &crate::runner::Run) -> String {
    let l = r
        .latency
        .map(|l: Latency| format!("p50 {} p99 {}", lat(l.p50), lat(l.p99)))
        .unwrap_or_default();
    let status = if r.kept() {
        "kept".to_owned()
    } else {
        let d: Vec<String> = r.dropped.iter().map(|d| d.to_string()).collect();
        format!("DROPPED: {}", d.join("; "))
    };
    let waited = if r.waited_secs >= 0.1 {
        format!(" (waited {:.1} s for quiet)", r.waited_secs)
    } else {
        String::new()
    };
    format!(
        "{cell:>10} r{} {:<12} {l:<28} {:>8.0}/s  steal {:.1}% other {:.0}%/{:.0}%  {status}{waited}",
        r.round,
        r.path.label(),
        r.rps,
        r.steal_pct,
        r.foreign_pct,
        r.loadgen_foreign_pct
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{matrix::matrix, stats::Spread};

    fn spread(v: f64) -> Spread {
        Spread {
            median: v,
            min: v - 5.0,
            max: v + 5.0,
            n: 5,
        }
    }

    fn sums() -> Vec<PathSummary> {
        Path::ALL
            .iter()
            .enumerate()
            .map(|(i, &path)| PathSummary {
                path,
                runs: 5,
                kept: 5 - (path == Path::Nginx) as usize,
                dropped: if path == Path::Nginx {
                    vec![(2, vec![crate::gate::DropReason::Errors { count: 2 }])]
                } else {
                    vec![]
                },
                latency: Some([spread(100.0 * (i + 1) as f64); 4]),
                added: (i > 0).then(|| [spread(100.0 * i as f64); 4]),
                over_plain: (path == Path::RemoteMtls).then(|| [spread(100.0); 4]),
                rps: Some(spread(1000.0)),
                cpu_per_krps: path.proxies().iter().map(|&r| (r, 0.071)).collect(),
                rss_max_kib: path.proxies().iter().map(|&r| (r, 10 * 1024)).collect(),
                loadgen_busy_pct: Some(20.0),
                sut_busy_pct: Some(30.0),
            })
            .collect()
    }

    #[test]
    fn renders_headline_targets_drops_and_method() {
        let m = matrix(20.0, 6.0);
        let cells: Vec<CellResult> = m
            .iter()
            .map(|c| CellResult {
                cell: c.clone(),
                summaries: sums(),
            })
            .collect();
        let meta = Meta {
            command: "make bench".into(),
            date: "2026-11-22 03:00 UTC".into(),
            commit: "abc123".into(),
            dirty: vec![],
            machine: Machine {
                cpu_model: "Test CPU".into(),
                cpus: 2,
                kernel: "6.18".into(),
                mem_gib: 24.0,
            },
            tools: vec![("oha".into(), "oha 1.16.0".into())],
            wall_secs: 1500.0,
            waited_secs: 60.0,
            restarts: vec![],
            rounds: 5,
            extra_rounds: 2,
            warmup_secs: 1.0,
            loadgen_cpu: 0,
            sut_cpu: 1,
            limits: Limits::default(),
        };
        let targets = vec![Target {
            what: "latency added at p50: ferryd pair ≤ nginx pair".into(),
            ferryd: "+200 µs".into(),
            reference: "+300 µs".into(),
            met: Some(true),
        }];
        let md = render(&meta, &cells, &Memory::default(), &targets);
        assert!(md.contains("## Headline: 1000 rps, 16 connections, 1 KiB POST"));
        assert!(md.contains("## Where ferryd's time goes, and what was changed"));
        assert!(md.contains(
            "| ferryd pair (load → ferryd → ferryd → app) | 300 µs | 300 µs | 300 µs | 300 µs | +200 µs <sub>(+195 µs…+205 µs)</sub>"
        ));
        assert!(md.contains(
            "| latency added at p50: ferryd pair ≤ nginx pair | +200 µs | +300 µs | met |"
        ));
        assert!(md.contains("- `headline` round 2, nginx pair: 2 errors"));
        assert!(md.contains("### max throughput, 64 connections, 1 KiB POST"));
        assert!(md.contains("ferryd caller 0.071, ferryd callee 0.071"));
        assert!(md.contains("Resolver scale") || md.contains("resolver scale"));
        assert!(md.contains("commit** `abc123`\n"));
        // The mTLS pair, next to the plaintext pair of the same run.
        assert!(md.contains("## What mTLS costs a call (issue 14): 1000 rps, 16 connections"));
        assert!(md.contains(
            "| ferryd mTLS pair (load → ferryd → mTLS → ferryd → app) | +300 µs | +300 µs | 0.071 | 0.071 |"
        ));
        assert!(md.contains("| mTLS − plaintext | +100 µs | +100 µs | +0.000 | +0.000 |"));
        assert!(md.contains("| mTLS ÷ plaintext | 1.50× | 1.50× | 1.00× | 1.00× |"));
        assert!(md.contains("- latency at p50: +100 µs <sub>(+95 µs…+105 µs)</sub>"));
        assert!(md.contains("caller sidecar +0 µs (71 → 71 µs)"));
        assert!(md.contains("64 connections: 1000 rps plaintext, 1000 rps mTLS (1.00×)"));
    }

    #[test]
    fn latency_formatting() {
        assert_eq!(lat(412.4), "412 µs");
        assert_eq!(lat(12_345.0), "12.3 ms");
        assert_eq!(added(-20.0), "−20 µs");
        assert_eq!(added(250.0), "+250 µs");
    }
}
