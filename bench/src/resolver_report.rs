//! The "Resolver scale" section of BENCHMARKS.md (pure: figures in, Markdown out), and how the
//! section travels between the resolver run and `make bench`.
//!
//! The section sits between [`BEGIN`] and [`END`]. `ferry-bench resolver` writes it to
//! `bench/results/resolver.md` and splices it into BENCHMARKS.md in place; `ferry-bench run`
//! rewrites BENCHMARKS.md and carries the section over ([`carry_over`]), from that file when
//! present, else from the BENCHMARKS.md it replaces.

use std::fmt::Write;

use serde::Serialize;

use crate::{machine::Machine, stats::nearest_rank};

pub const BEGIN: &str = "<!-- resolver-scale:begin -->";
pub const END: &str = "<!-- resolver-scale:end -->";

/// Where and from what the figures were made.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub command: String,
    pub date: String,
    pub commit: String,
    pub dirty: Vec<String>,
    pub machine: Machine,
    pub kubernetes: String,
    pub ferryd: String,
}

/// ferryd's memory, in KiB (medians of several `/proc/<pid>/status` samples).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// The ferryd watching the empty namespace, synced.
    pub empty_rss: u64,
    pub empty_hwm: u64,
    /// The same ferryd once every endpoint had reached it.
    pub grown_rss: u64,
    pub grown_hwm: u64,
    /// A second ferryd started on the full namespace, synced.
    pub fresh_rss: u64,
    pub fresh_hwm: u64,
    /// The first ferryd after the endpoint changes.
    pub after_changes_rss: u64,
}

/// Which way one endpoint change went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Change {
    /// All endpoints of the app became not ready: calls fail with "no ready instance".
    NotReady,
    /// They became ready again: calls reach the app's listener.
    Ready,
}

/// One endpoint change, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub change: Change,
    /// Apply request sent → its response received.
    pub write_us: u64,
    /// Apply response received → the first call answered by the new state.
    pub propagation_us: u64,
    /// Calls made until one showed the change.
    pub polls: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub meta: Meta,
    pub namespace: String,
    pub apps: usize,
    pub endpoints_per_app: usize,
    /// Services, EndpointSlices and the RoutingTable, applied `concurrency` at a time.
    pub setup_secs: f64,
    pub concurrency: usize,
    /// The fresh ferryd: process start → `/v1.0/healthz/outbound` answering 204.
    pub fresh_sync_ms: u64,
    pub memory: Memory,
    pub samples: Vec<Sample>,
    /// Median pause between a poll's answer and the next poll, microseconds.
    pub poll_gap_us: u64,
}

impl Figures {
    pub fn endpoints(&self) -> usize {
        self.apps * self.endpoints_per_app
    }

    /// (RSS difference in bytes) / endpoints.
    pub fn bytes_per_endpoint(&self, with_kib: u64) -> f64 {
        (with_kib as f64 - self.memory.empty_rss as f64) * 1024.0 / self.endpoints().max(1) as f64
    }
}

/// p50, p90, p99 and max of `values` (nearest rank).
pub fn percentiles(values: &[u64]) -> Option<[u64; 4]> {
    let mut v = values.to_vec();
    v.sort_unstable();
    Some([
        nearest_rank(&v, 0.50)?,
        nearest_rank(&v, 0.90)?,
        nearest_rank(&v, 0.99)?,
        *v.last()?,
    ])
}

fn dur(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `10,000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The section, markers included.
pub fn render(f: &Figures) -> String {
    let mut o = String::new();
    let m = &f.meta;
    let n = thousands(f.endpoints());
    let apps = thousands(f.apps);
    writeln!(o, "{BEGIN}").unwrap();
    o.push_str("## Resolver scale (Kubernetes mode)\n\n");
    o.push_str(
        "<!-- Written by `make bench-resolver` (bench/resolver.sh, `ferry-bench resolver`); `make bench` carries it over. -->\n\n",
    );
    writeln!(
        o,
        "`ferryd --mode kubernetes` in a namespace of the Tier-1 cluster (real etcd, kube-apiserver \
         and kube-controller-manager on this machine) that holds {apps} apps with {} endpoints \
         each, {n} endpoints in all: {apps} Services `<app>-dapr`, one EndpointSlice each \
         (ready endpoints on the port `dapr-internal`) and the RoutingTable `ferry` listing the \
         {apps} apps, as ferry-operator writes them. It is the namespace ferryd runs in, which it \
         watches from the start.\n",
        f.endpoints_per_app
    )
    .unwrap();
    crate::report::provenance(&mut o, &m.command, &m.date, &m.commit, &m.dirty);
    writeln!(
        o,
        "- **Machine:** {}, {} CPUs, {:.1} GiB, Linux {} (a shared virtual machine); the control \
         plane, ferryd and the harness share it",
        m.machine.cpu_model, m.machine.cpus, m.machine.mem_gib, m.machine.kernel
    )
    .unwrap();
    writeln!(
        o,
        "- **Versions:** Kubernetes {} (Tier-1 control plane); {} (release build)",
        m.kubernetes, m.ferryd
    )
    .unwrap();
    writeln!(
        o,
        "- **Setup:** {} objects applied server-side, {} at a time, in {:.1} s\n",
        thousands(2 * f.apps + 1),
        f.concurrency,
        f.setup_secs
    )
    .unwrap();

    let mem = &f.memory;
    o.push_str("### Memory per watched endpoint\n\n");
    o.push_str("| ferryd | RSS | peak RSS (VmHWM) | per endpoint |\n|---|--:|--:|--:|\n");
    writeln!(
        o,
        "| watching the empty namespace (synced) | {} | {} | |",
        mib(mem.empty_rss),
        mib(mem.empty_hwm)
    )
    .unwrap();
    writeln!(
        o,
        "| started on the full namespace ({n} endpoints, synced {}) | {} | {} | **{:.0} B** |",
        dur(f.fresh_sync_ms * 1000),
        mib(mem.fresh_rss),
        mib(mem.fresh_hwm),
        f.bytes_per_endpoint(mem.fresh_rss)
    )
    .unwrap();
    writeln!(
        o,
        "| the first one, after the {n} endpoints arrived by watch events | {} | {} | {:.0} B |",
        mib(mem.grown_rss),
        mib(mem.grown_hwm),
        f.bytes_per_endpoint(mem.grown_rss)
    )
    .unwrap();
    writeln!(
        o,
        "| the first one, after calls to every app and the {} endpoint changes below | {} | | {:.0} B |\n",
        f.samples.len(),
        mib(mem.after_changes_rss),
        f.bytes_per_endpoint(mem.after_changes_rss)
    )
    .unwrap();
    writeln!(
        o,
        "*Per endpoint* is (RSS − RSS of the empty namespace) / {n}: everything the watched \
         objects cost, the {apps} apps of the table included. The ferryd started on the full \
         namespace read them in its initial list; the first one received them as {} watch \
         events. Both hold the same index: what the one started on the full namespace holds \
         beyond the other is memory the allocator kept after decoding the initial list \
         (kube-runtime lists 500 EndpointSlices a page, managedFields included, on several \
         threads), so the first one shows what the index itself costs.\n",
        thousands(2 * f.apps + 1)
    )
    .unwrap();

    o.push_str("### Endpoint change → sidecar\n\n");
    writeln!(
        o,
        "{} changes of one app's EndpointSlice (its {} endpoints become not ready, then ready \
         again, alternately) while the other {} endpoints stay in place. Time from the response \
         to the apply request until a call through ferryd shows the change:\n",
        f.samples.len(),
        f.endpoints_per_app,
        thousands(f.endpoints().saturating_sub(f.endpoints_per_app))
    )
    .unwrap();
    o.push_str("| change | samples | p50 | p90 | p99 | max |\n|---|--:|--:|--:|--:|--:|\n");
    let rows: [(&str, Option<Change>); 3] = [
        ("**every change**", None),
        ("endpoints become not ready", Some(Change::NotReady)),
        ("endpoints become ready", Some(Change::Ready)),
    ];
    for (label, which) in rows {
        let v: Vec<u64> = f
            .samples
            .iter()
            .filter(|s| which.is_none_or(|w| s.change == w))
            .map(|s| s.propagation_us)
            .collect();
        row(&mut o, label, &v);
    }
    let writes: Vec<u64> = f.samples.iter().map(|s| s.write_us).collect();
    row(
        &mut o,
        "*for comparison: the apply request itself*",
        &writes,
    );
    let first = f.samples.iter().filter(|s| s.polls == 1).count();
    writeln!(
        o,
        "\nThe first call after the apply's response already showed {first} of the {} changes \
         (the watch event had reached ferryd before the response reached the harness).\n",
        f.samples.len()
    )
    .unwrap();

    o.push_str("### Method\n\n");
    writeln!(
        o,
        "- **Objects:** app `app-NNNN` has a headless Service `app-NNNN-dapr` without selector \
         and one EndpointSlice `app-NNNN-dapr-1` labelled as the EndpointSlice controller labels \
         the slices of the operator's Services, with {} IPv4 endpoints on port `dapr-internal`. \
         The endpoints are addresses in 10.100.0.0–10.199.255.255, to which the cluster's \
         network namespace has no route: a connection to one fails at once, so a call proves that \
         an app resolves without waiting for a timeout (the API server refuses loopback \
         addresses). The exception is the first endpoint of `app-0000`: the pod bridge's \
         address (what a pod IP is on this node), where a listener of the harness answers \
         200 over HTTP/1.1 and HTTP/2, as a sidecar's internal port. All are written with kube-rs server-side apply.",
        f.endpoints_per_app
    )
    .unwrap();
    o.push_str(
        "- **Memory:** `VmRSS` (and `VmHWM`) of `/proc/<pid>/status`, the median of 5 samples \
         0.5 s apart, taken 3 s after the figure's condition holds: for the empty namespace, \
         `/v1.0/healthz/outbound` answers 204 (both watches listed); for the full namespace, a \
         call to an unknown app names the table's apps (`it lists … and 990 more`) and calls to \
         the apps whose objects were written last resolve. Only then does the harness call every \
         one of the apps through each ferryd and check that each resolves to its endpoints (an \
         answer of the listener or a failed connection to an endpoint, never `not found` or `no \
         ready instance`): those calls leave connection state behind, so they come after the \
         samples. ferryd runs with its defaults (log level info), \
         not pinned.\n",
    );
    writeln!(
        o,
        "- **Change propagation:** each change is one server-side apply of `app-0000-dapr-1`; the \
         clock starts when the API server's response has arrived. The harness then calls \
         `/v1.0/invoke/app-0000/method/probe` through ferryd, one call at a time on a kept-alive \
         connection with about 1 ms between calls (median gap {}), until the answer shows the new \
         state: 500 `has no ready instance` after the endpoints became not ready; after they became \
         ready, an answer that went to an endpoint (200 from the listener, or ferryd's error \
         naming a failed connection to one: ferryd tries up to three of the ten). The figure is when that answer arrived, so it includes \
         up to one gap and one call; the watch event may even reach ferryd before the apply's \
         response does. Changes are 20–80 ms apart. The path measured is the API server's watch \
         → ferryd's EndpointSlice watch → the namespace index → a new snapshot of its {apps} apps.",
        dur(f.poll_gap_us)
    )
    .unwrap();
    writeln!(o, "{END}").unwrap();
    o
}

fn row(o: &mut String, label: &str, values: &[u64]) {
    match percentiles(values) {
        Some([p50, p90, p99, max]) => writeln!(
            o,
            "| {label} | {} | {} | {} | {} | {} |",
            values.len(),
            dur(p50),
            dur(p90),
            dur(p99),
            dur(max)
        )
        .unwrap(),
        None => writeln!(o, "| {label} | 0 | – | – | – | – |").unwrap(),
    }
}

/// The section of `doc`, markers included, when it has a complete one.
pub fn section_of(doc: &str) -> Option<&str> {
    let start = doc.find(BEGIN)?;
    let end = start + doc[start..].find(END)? + END.len();
    Some(&doc[start..end])
}

/// `doc` with its section replaced by `section` (markers included), or with `section` appended
/// when it has none.
pub fn splice(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    if let Some(old) = section_of(doc) {
        let start = doc.find(old).unwrap_or(0);
        return format!("{}{section}{}", &doc[..start], &doc[start + old.len()..]);
    }
    let mut out = doc.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(section);
    out.push('\n');
    out
}

/// What `make bench` writes: its freshly rendered report `md`, with the resolver section taken
/// from the resolver run's own file (`from_results`) or else from the report it replaces
/// (`previous`), when either has one.
pub fn carry_over(md: &str, from_results: Option<&str>, previous: Option<&str>) -> String {
    match from_results
        .and_then(section_of)
        .or_else(|| previous.and_then(section_of))
    {
        Some(section) => splice(md, section),
        None => md.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        let samples = (0..200)
            .map(|i| Sample {
                change: if i % 2 == 0 {
                    Change::NotReady
                } else {
                    Change::Ready
                },
                write_us: 4000 + i,
                propagation_us: 1000 + 10 * i,
                polls: 2,
            })
            .collect();
        Figures {
            meta: Meta {
                command: "make bench-resolver".into(),
                date: "2026-11-22 05:00 UTC".into(),
                commit: "abc".into(),
                dirty: vec![],
                machine: Machine {
                    cpu_model: "CPU".into(),
                    cpus: 2,
                    kernel: "6.1".into(),
                    mem_gib: 4.0,
                },
                kubernetes: "v1.36.3".into(),
                ferryd: "ferryd 0.1.0".into(),
            },
            namespace: "scale".into(),
            apps: 1000,
            endpoints_per_app: 10,
            setup_secs: 12.5,
            concurrency: 32,
            fresh_sync_ms: 800,
            memory: Memory {
                empty_rss: 10 * 1024,
                empty_hwm: 11 * 1024,
                grown_rss: 14 * 1024,
                grown_hwm: 15 * 1024,
                fresh_rss: 12 * 1024,
                fresh_hwm: 16 * 1024,
                after_changes_rss: 14 * 1024,
            },
            samples,
            poll_gap_us: 1100,
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentiles(&v), Some([50, 90, 99, 100]));
        assert_eq!(percentiles(&[]), None);
        assert_eq!(percentiles(&[7]), Some([7, 7, 7, 7]));
    }

    #[test]
    fn the_section_has_the_figures_between_its_markers() {
        let f = figures();
        assert_eq!(
            f.bytes_per_endpoint(f.memory.fresh_rss),
            2.0 * 1024.0 * 1024.0 / 10_000.0
        );
        let s = render(&f);
        assert!(s.starts_with(BEGIN) && s.trim_end().ends_with(END), "{s}");
        assert!(s.contains("**210 B**"), "{s}");
        assert!(s.contains("| endpoints become not ready | 100 |"), "{s}");
        // every change: 1000..2990 µs in steps of 10; p50 = the 100th = 1990 µs.
        assert!(
            s.contains("| **every change** | 200 | 2.0 ms | 2.8 ms | 3.0 ms | 3.0 ms |"),
            "{s}"
        );
        assert!(s.contains("10,000 endpoints"), "{s}");
        assert_eq!(section_of(&s), Some(s.trim_end()));
    }

    #[test]
    fn splice_replaces_in_place_or_appends() {
        let section = format!("{BEGIN}\nnew\n{END}\n");
        let doc = format!("# B\n\nbefore\n\n{BEGIN}\nold\n{END}\n\n## after\n");
        assert_eq!(
            splice(&doc, &section),
            format!("# B\n\nbefore\n\n{BEGIN}\nnew\n{END}\n\n## after\n")
        );
        assert_eq!(
            splice("# B\n\ntext\n", &section),
            format!("# B\n\ntext\n\n{BEGIN}\nnew\n{END}\n")
        );
        // An unterminated section is not one: append.
        let broken = format!("# B\n{BEGIN}\nhalf\n");
        assert!(splice(&broken, &section).ends_with(&format!("half\n\n{BEGIN}\nnew\n{END}\n")));
    }

    #[test]
    fn carry_over_prefers_the_results_file_then_the_previous_report() {
        let fresh = "# Benchmarks\n\nnew tables\n";
        let results = format!("{BEGIN}\nfrom results\n{END}\n");
        let previous = format!("# Benchmarks\n\nold tables\n\n{BEGIN}\nfrom previous\n{END}\n");
        let out = carry_over(fresh, Some(&results), Some(&previous));
        assert!(
            out.contains("new tables") && out.contains("from results"),
            "{out}"
        );
        assert!(!out.contains("old tables"), "{out}");
        let out = carry_over(fresh, None, Some(&previous));
        assert!(
            out.contains("from previous") && !out.contains("old tables"),
            "{out}"
        );
        assert_eq!(carry_over(fresh, None, Some("# no section")), fresh);
        assert_eq!(carry_over(fresh, Some("garbage"), None), fresh);
    }
}
