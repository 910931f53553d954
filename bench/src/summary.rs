//! From runs to figures: per path, the medians over kept rounds, the median of per-round
//! differences against the direct call, CPU per 1000 rps, memory; and the targets,
//! evaluated against the nginx pair of the same run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    gate::DropReason,
    matrix::{Path, Role},
    runner::Run,
    stats::{Spread, median, paired_differences, spread, vcpu_per_krps},
};

#[derive(Debug, Clone, Serialize)]
pub struct PathSummary {
    pub path: Path,
    pub runs: usize,
    pub kept: usize,
    /// `(round, reasons)` of every dropped run.
    pub dropped: Vec<(u32, Vec<DropReason>)>,
    /// Absolute percentiles (µs): median over kept runs, in `Latency::NAMES` order.
    pub latency: Option<[Spread; 4]>,
    /// Added over the direct call (µs): median of per-round differences. `None` for direct.
    pub added: Option<[Spread; 4]>,
    /// The mTLS pair only: latency over the plaintext pair of the same round (µs), the median
    /// of per-round differences, i.e. what mTLS costs a call.
    pub over_plain: Option<[Spread; 4]>,
    pub rps: Option<Spread>,
    /// vCPU per 1000 rps of each process on the path (proxies and app), median over kept runs.
    pub cpu_per_krps: BTreeMap<Role, f64>,
    /// Largest VmRSS (KiB) of each process on the path over all runs of the cell.
    pub rss_max_kib: BTreeMap<Role, u64>,
    pub loadgen_busy_pct: Option<f64>,
    pub sut_busy_pct: Option<f64>,
}

impl PathSummary {
    pub fn added_at(&self, i: usize) -> Option<f64> {
        self.added.map(|a| a[i].median)
    }
}

fn latency_series(runs: &[&Run], i: usize) -> Vec<(u32, f64)> {
    runs.iter()
        .filter_map(|r| Some((r.round, r.latency?.get(i))))
        .collect()
}

/// Summaries of one cell's runs, one per path, in `Path::ALL` order.
pub fn summarize(runs: &[Run]) -> Vec<PathSummary> {
    let kept_of =
        |p: Path| -> Vec<&Run> { runs.iter().filter(|r| r.path == p && r.kept()).collect() };
    let direct = kept_of(Path::Direct);
    let plain = kept_of(Path::Remote);
    Path::ALL
        .iter()
        .map(|&path| {
            let all: Vec<&Run> = runs.iter().filter(|r| r.path == path).collect();
            let kept = kept_of(path);
            let four = |f: &dyn Fn(usize) -> Option<Spread>| -> Option<[Spread; 4]> {
                Some([f(0)?, f(1)?, f(2)?, f(3)?])
            };
            let latency = four(&|i| {
                let v: Vec<f64> = latency_series(&kept, i).into_iter().map(|x| x.1).collect();
                spread(&v)
            });
            let added = (path != Path::Direct)
                .then(|| {
                    four(&|i| {
                        spread(&paired_differences(
                            &latency_series(&kept, i),
                            &latency_series(&direct, i),
                        ))
                    })
                })
                .flatten();
            let over_plain = (path == Path::RemoteMtls)
                .then(|| {
                    four(&|i| {
                        spread(&paired_differences(
                            &latency_series(&kept, i),
                            &latency_series(&plain, i),
                        ))
                    })
                })
                .flatten();
            let mut roles: Vec<Role> = path.proxies().to_vec();
            roles.push(Role::App);
            let cpu_per_krps = roles
                .iter()
                .filter_map(|role| {
                    let v: Vec<f64> = kept
                        .iter()
                        .filter_map(|r| vcpu_per_krps(*r.cpu_s.get(role)?, r.requests))
                        .collect();
                    Some((*role, median(&v)?))
                })
                .collect();
            let rss_max_kib = roles
                .iter()
                .filter_map(|role| {
                    let m = all.iter().filter_map(|r| r.rss_max_kib.get(role)).max()?;
                    Some((*role, *m))
                })
                .collect();
            let med =
                |f: &dyn Fn(&Run) -> f64| median(&kept.iter().map(|r| f(r)).collect::<Vec<_>>());
            PathSummary {
                path,
                runs: all.len(),
                kept: kept.len(),
                dropped: all
                    .iter()
                    .filter(|r| !r.kept())
                    .map(|r| (r.round, r.dropped.clone()))
                    .collect(),
                latency,
                added,
                over_plain,
                rps: spread(&kept.iter().map(|r| r.rps).collect::<Vec<_>>()),
                cpu_per_krps,
                rss_max_kib,
                loadgen_busy_pct: med(&|r| r.loadgen_busy_pct),
                sut_busy_pct: med(&|r| r.sut_busy_pct),
            }
        })
        .collect()
}

pub fn find(s: &[PathSummary], p: Path) -> Option<&PathSummary> {
    s.iter().find(|x| x.path == p)
}

/// Memory of the processes under test, KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// After start-up, before any load.
    pub idle: BTreeMap<Role, u64>,
    /// Largest VmRSS sampled during the headline cell (the load the target names).
    pub headline_load: BTreeMap<Role, u64>,
    /// VmHWM at the end of the whole benchmark (bodies up to 1 MiB included).
    pub peak: BTreeMap<Role, u64>,
    /// VmRSS at the end, idle again after all the load.
    pub end: BTreeMap<Role, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub what: String,
    pub ferryd: String,
    pub reference: String,
    /// `None` when the runs needed for it were dropped or not run.
    pub met: Option<bool>,
}

const MIB: f64 = 1024.0;
/// The RSS limits for one sidecar, KiB.
pub const RSS_IDLE_LIMIT_KIB: u64 = 15 * 1024;
pub const RSS_LOAD_LIMIT_KIB: u64 = 25 * 1024;

fn us(v: f64) -> String {
    format!("{:+.0} µs", v)
}

/// The targets of issue 8. `headline` is the headline cell's summaries, `max` the
/// closed-loop cells' (name, summaries).
pub fn targets(
    headline: Option<&[PathSummary]>,
    max: &[(String, Vec<PathSummary>)],
    mem: &Memory,
) -> Vec<Target> {
    let mut out = Vec::new();
    let pair = headline.and_then(|h| find(h, Path::Remote));
    let nginx = headline.and_then(|h| find(h, Path::Nginx));
    for (i, name) in [(0, "p50"), (2, "p99")] {
        let f = pair.and_then(|p| p.added_at(i));
        let n = nginx.and_then(|p| p.added_at(i));
        out.push(Target {
            what: format!("latency added at {name}: ferryd pair ≤ nginx pair"),
            ferryd: f.map_or("n/a".into(), us),
            reference: n.map_or("n/a".into(), us),
            met: f.zip(n).map(|(f, n)| f <= n),
        });
    }
    for (sidecar, proxy) in [
        (Role::FerrydCaller, Role::NginxFront),
        (Role::FerrydCallee, Role::NginxBack),
    ] {
        let f = pair.and_then(|p| p.cpu_per_krps.get(&sidecar).copied());
        let n = nginx.and_then(|p| p.cpu_per_krps.get(&proxy).copied());
        out.push(Target {
            what: format!("CPU per 1000 rps: {} ≤ {}", sidecar.label(), proxy.label()),
            ferryd: f.map_or("n/a".into(), |v| format!("{v:.3} vCPU")),
            reference: n.map_or("n/a".into(), |v| format!("{v:.3} vCPU")),
            met: f.zip(n).map(|(f, n)| f <= n),
        });
    }
    let sidecars = [Role::FerrydCaller, Role::FerrydCallee];
    for (label, map, limit) in [
        (
            "RSS idle, each sidecar ≤ 15 MiB",
            &mem.idle,
            RSS_IDLE_LIMIT_KIB,
        ),
        (
            "RSS under the headline load, each sidecar ≤ 25 MiB",
            &mem.headline_load,
            RSS_LOAD_LIMIT_KIB,
        ),
    ] {
        let worst = sidecars.iter().filter_map(|r| map.get(r)).max().copied();
        out.push(Target {
            what: label.into(),
            ferryd: worst.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / MIB)),
            reference: format!("{} MiB", limit / 1024),
            met: worst.map(|k| k <= limit),
        });
    }
    for (name, s) in max {
        let f = find(s, Path::Remote).and_then(|p| p.rps).map(|r| r.median);
        let n = find(s, Path::Nginx).and_then(|p| p.rps).map(|r| r.median);
        out.push(Target {
            what: format!("max throughput ({name}): ferryd pair ≥ nginx pair"),
            ferryd: f.map_or("n/a".into(), |v| format!("{v:.0} rps")),
            reference: n.map_or("n/a".into(), |v| format!("{v:.0} rps")),
            met: f.zip(n).map(|(f, n)| f >= n),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{gate::DropReason, loadgen::Latency};

    fn run(path: Path, round: u32, p50: f64, p99: f64, dropped: bool) -> Run {
        let mut cpu_s = BTreeMap::new();
        cpu_s.insert(Role::App, 0.2);
        cpu_s.insert(Role::FerrydCaller, 0.5);
        cpu_s.insert(Role::FerrydCallee, 0.6);
        cpu_s.insert(Role::FerrydMtlsCaller, 0.7);
        cpu_s.insert(Role::FerrydMtlsCallee, 0.8);
        cpu_s.insert(Role::NginxFront, 0.4);
        cpu_s.insert(Role::NginxBack, 0.4);
        let mut rss = BTreeMap::new();
        rss.insert(Role::FerrydCaller, 9000 + round as u64);
        Run {
            cell: "headline".into(),
            path,
            round,
            latency: Some(Latency {
                p50,
                p90: p50 * 1.5,
                p99,
                p999: p99 * 2.0,
            }),
            rps: 1000.0,
            target_rps: Some(1000.0),
            requests: 10_000,
            errors: 0,
            secs: 10.0,
            cpu_s,
            rss_max_kib: rss,
            steal_pct: 0.0,
            foreign_pct: 0.0,
            loadgen_foreign_pct: 0.0,
            loadgen_busy_pct: 30.0,
            sut_busy_pct: 40.0,
            dropped: if dropped {
                vec![DropReason::Steal { pct: 9.0 }]
            } else {
                vec![]
            },
            waited_secs: 0.0,
        }
    }

    fn cell() -> Vec<Run> {
        let mut v = Vec::new();
        for r in 0..5 {
            // Round 2 is noisy for everyone; round 3's direct run was dropped.
            let noise = if r == 2 { 500.0 } else { 0.0 };
            v.push(run(Path::Direct, r, 100.0 + noise, 200.0 + noise, r == 3));
            v.push(run(
                Path::SelfInvoke,
                r,
                200.0 + noise,
                400.0 + noise,
                false,
            ));
            v.push(run(
                Path::Remote,
                r,
                300.0 + noise + r as f64,
                500.0 + noise,
                false,
            ));
            v.push(run(
                Path::RemoteMtls,
                r,
                340.0 + noise + 2.0 * r as f64,
                600.0 + noise,
                r == 4,
            ));
            v.push(run(Path::Nginx, r, 280.0 + noise, 520.0 + noise, false));
        }
        v
    }

    #[test]
    fn summaries_pair_rounds_and_report_drops() {
        let s = summarize(&cell());
        let direct = find(&s, Path::Direct).unwrap();
        assert_eq!((direct.runs, direct.kept), (5, 4));
        assert_eq!(direct.dropped.len(), 1);
        assert_eq!(direct.dropped[0].0, 3);
        assert!(direct.added.is_none());
        let remote = find(&s, Path::Remote).unwrap();
        // Differences over rounds 0, 1, 2, 4 (round 3 has no direct run): 200, 201, 202, 204.
        let added = remote.added.unwrap();
        assert_eq!(added[0].n, 4);
        assert_eq!(added[0].median, 201.5);
        assert_eq!(added[2].median, 300.0);
        // 0.5 CPU-s for 10,000 requests: 0.05 vCPU per 1000 rps.
        assert!((remote.cpu_per_krps[&Role::FerrydCaller] - 0.05).abs() < 1e-12);
        assert!(!remote.cpu_per_krps.contains_key(&Role::NginxFront));
        assert_eq!(remote.rss_max_kib[&Role::FerrydCaller], 9004);
        assert!(remote.over_plain.is_none());
    }

    #[test]
    fn the_mtls_pair_is_paired_with_the_plaintext_pair_of_each_round() {
        let s = summarize(&cell());
        let m = find(&s, Path::RemoteMtls).unwrap();
        assert_eq!((m.runs, m.kept), (5, 4));
        // Over the plaintext pair, rounds 0..=3 (round 4's mTLS run was dropped):
        // 40 + r each round: 40, 41, 42, 43.
        let over = m.over_plain.unwrap();
        assert_eq!(over[0].n, 4);
        assert_eq!(over[0].median, 41.5);
        assert_eq!(over[2].median, 100.0);
        // Over direct: rounds 0, 1, 2 (round 3 has no direct run, round 4 no mTLS run).
        assert_eq!(m.added.unwrap()[0].median, 242.0);
        assert!((m.cpu_per_krps[&Role::FerrydMtlsCaller] - 0.07).abs() < 1e-12);
        assert!((m.cpu_per_krps[&Role::FerrydMtlsCallee] - 0.08).abs() < 1e-12);
        assert!(!m.cpu_per_krps.contains_key(&Role::FerrydCaller));
    }

    #[test]
    fn targets_against_the_nginx_pair() {
        let s = summarize(&cell());
        let mut mem = Memory::default();
        mem.idle.insert(Role::FerrydCaller, 8 * 1024);
        mem.idle.insert(Role::FerrydCallee, 16 * 1024);
        mem.headline_load.insert(Role::FerrydCaller, 20 * 1024);
        let t = targets(Some(&s), &[], &mem);
        let met: Vec<(String, Option<bool>)> = t.iter().map(|t| (t.what.clone(), t.met)).collect();
        // p50: pair +201.5 vs nginx +180: not met. p99: +300 vs +320: met.
        assert_eq!(met[0].1, Some(false));
        assert_eq!(met[1].1, Some(true));
        assert_eq!(t[0].ferryd, "+202 µs");
        // CPU: caller 0.05 vs front 0.04 (not met), callee 0.06 vs back 0.04 (not met).
        assert_eq!(met[2].1, Some(false));
        assert_eq!(met[3].1, Some(false));
        // RSS idle: the worse sidecar (16 MiB) decides.
        assert_eq!(met[4].1, Some(false));
        assert_eq!(t[4].ferryd, "16.0 MiB");
        assert_eq!(met[5].1, Some(true));
    }

    #[test]
    fn targets_without_data_are_unknown_not_met() {
        let t = targets(None, &[], &Memory::default());
        assert!(t.iter().all(|t| t.met.is_none()));
    }
}
