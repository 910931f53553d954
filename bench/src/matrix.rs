//! What is measured: the paths, the processes on them, and the matrix of cells.
//!
//! The full cross product (4 bodies x 3 connection counts x 3 loads x 4 paths x 5 rounds) would
//! take hours on 2 cores, so the matrix varies one dimension at a time around the headline cell
//! (1000 rps, 16 connections, 1 KiB POST), which is measured longest.

use std::fmt;

use serde::Serialize;

/// The ways a request reaches the app. Every cell measures all of them, interleaved per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// load generator → app
    Direct,
    /// load generator → ferryd → its own app (`/v1.0/invoke/<own id>/method/...`)
    SelfInvoke,
    /// load generator → ferryd → ferryd → app (the Dapr-equivalent path)
    Remote,
    /// load generator → ferryd → (mTLS) → ferryd → app: the same pair with `--enable-mtls`
    RemoteMtls,
    /// load generator → nginx → nginx → app (keep-alive upstreams): the reference pair
    Nginx,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::Direct,
        Path::SelfInvoke,
        Path::Remote,
        Path::RemoteMtls,
        Path::Nginx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::SelfInvoke => "ferryd self",
            Path::Remote => "ferryd pair",
            Path::RemoteMtls => "ferryd mTLS pair",
            Path::Nginx => "nginx pair",
        }
    }

    pub fn chain(self) -> &'static str {
        match self {
            Path::Direct => "load → app",
            Path::SelfInvoke => "load → ferryd → app",
            Path::Remote => "load → ferryd → ferryd → app",
            Path::RemoteMtls => "load → ferryd → mTLS → ferryd → app",
            Path::Nginx => "load → nginx → nginx → app",
        }
    }

    /// The proxies a request of this path passes through, in order.
    pub fn proxies(self) -> &'static [Role] {
        match self {
            Path::Direct => &[],
            Path::SelfInvoke => &[Role::FerrydSelf],
            Path::Remote => &[Role::FerrydCaller, Role::FerrydCallee],
            Path::RemoteMtls => &[Role::FerrydMtlsCaller, Role::FerrydMtlsCallee],
            Path::Nginx => &[Role::NginxFront, Role::NginxBack],
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The long-lived processes under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    App,
    /// ferryd with the app, called with its own app ID
    FerrydSelf,
    /// ferryd without an app, calling the callee's app ID
    FerrydCaller,
    /// ferryd in front of the app, called by the caller
    FerrydCallee,
    /// the caller with `--enable-mtls`
    FerrydMtlsCaller,
    /// the callee with `--enable-mtls`
    FerrydMtlsCallee,
    /// nginx the load generator talks to
    NginxFront,
    /// nginx in front of the app
    NginxBack,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::App,
        Role::FerrydSelf,
        Role::FerrydCaller,
        Role::FerrydCallee,
        Role::FerrydMtlsCaller,
        Role::FerrydMtlsCallee,
        Role::NginxFront,
        Role::NginxBack,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::FerrydSelf => "ferryd (self)",
            Role::FerrydCaller => "ferryd caller",
            Role::FerrydCallee => "ferryd callee",
            Role::FerrydMtlsCaller => "ferryd mTLS caller",
            Role::FerrydMtlsCallee => "ferryd mTLS callee",
            Role::NginxFront => "nginx front",
            Role::NginxBack => "nginx back",
        }
    }

    pub fn is_ferryd(self) -> bool {
        matches!(
            self,
            Role::FerrydSelf
                | Role::FerrydCaller
                | Role::FerrydCallee
                | Role::FerrydMtlsCaller
                | Role::FerrydMtlsCallee
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// oha at a fixed rate, latency corrected for coordinated omission.
    Open { rate: u32 },
    /// wrk, closed loop: as many requests as the path can take.
    Max,
    /// Long-lived event streams, one event per stream every `interval_ms`.
    Sse { interval_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub name: &'static str,
    /// POST body in bytes; the app answers with as many.
    pub body: usize,
    /// Connections (streams for SSE).
    pub conns: u32,
    pub load: Load,
    /// Measured seconds per run.
    pub secs: f64,
    /// What this cell changes against the headline.
    pub varies: &'static str,
}

pub const HEADLINE: &str = "headline";
pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

impl Cell {
    pub fn title(&self) -> String {
        let load = match self.load {
            Load::Open { rate } => format!("{rate} rps"),
            Load::Max => "max throughput".into(),
            Load::Sse { interval_ms } => {
                format!("SSE, {} events/s per stream", 1000 / interval_ms.max(1))
            }
        };
        let unit = match (matches!(self.load, Load::Sse { .. }), self.conns == 1) {
            (true, false) => "streams",
            (true, true) => "stream",
            (false, false) => "connections",
            (false, true) => "connection",
        };
        let body = if matches!(self.load, Load::Sse { .. }) {
            String::new()
        } else {
            format!(", {} POST", size(self.body))
        };
        format!("{load}, {} {unit}{body}", self.conns)
    }

    /// Requests (or events) one run is expected to carry, for oha's `-n`.
    pub fn requests(&self) -> u64 {
        match self.load {
            Load::Open { rate } => ((rate as f64 * self.secs).round() as u64).max(1),
            Load::Max => 0,
            Load::Sse { .. } => self.conns as u64 * self.events_per_stream() as u64,
        }
    }

    pub fn events_per_stream(&self) -> u32 {
        match self.load {
            Load::Sse { interval_ms } => {
                ((self.secs * 1000.0 / interval_ms.max(1) as f64).round() as u32).max(1)
            }
            _ => 0,
        }
    }
}

/// `0 B`, `1 KiB`, `64 KiB`, `1 MiB`.
pub fn size(bytes: usize) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// Every cell, the headline first. `headline_secs` for the headline, `secs` for the others.
pub fn matrix(headline_secs: f64, secs: f64) -> Vec<Cell> {
    let cell = |name, body, conns, load, varies| Cell {
        name,
        body,
        conns,
        load,
        secs,
        varies,
    };
    let open = |rate| Load::Open { rate };
    vec![
        Cell {
            secs: headline_secs,
            ..cell(HEADLINE, KIB, 16, open(1000), "the headline")
        },
        cell("body-0", 0, 16, open(1000), "empty body"),
        cell("body-64k", 64 * KIB, 16, open(1000), "64 KiB body"),
        // 1 MiB each way at 1000 rps is 2 GB/s through three hops on one core: beyond what any of
        // the paths can carry here, so this cell runs at 100 rps.
        cell("body-1m", MIB, 16, open(100), "1 MiB body, at 100 rps"),
        cell("conns-1", KIB, 1, open(1000), "1 connection"),
        cell("conns-64", KIB, 64, open(1000), "64 connections"),
        cell("rate-5000", KIB, 16, open(5000), "5000 rps"),
        cell("max-c16", KIB, 16, Load::Max, "closed loop (wrk)"),
        cell(
            "max-c64",
            KIB,
            64,
            Load::Max,
            "closed loop (wrk), 64 connections",
        ),
        cell(
            "sse",
            0,
            16,
            Load::Sse { interval_ms: 20 },
            "event streams instead of requests",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_covers_every_dimension_around_the_headline() {
        let m = matrix(20.0, 6.0);
        assert_eq!(m[0].name, HEADLINE);
        assert_eq!(m[0].title(), "1000 rps, 16 connections, 1 KiB POST");
        assert_eq!(m[0].secs, 20.0);
        let bodies: Vec<usize> = m.iter().map(|c| c.body).collect();
        for b in [0, KIB, 64 * KIB, MIB] {
            assert!(bodies.contains(&b), "body {b}");
        }
        for c in [1, 16, 64] {
            assert!(m.iter().any(|cell| cell.conns == c), "conns {c}");
        }
        for l in [
            Load::Open { rate: 1000 },
            Load::Open { rate: 5000 },
            Load::Max,
        ] {
            assert!(m.iter().any(|cell| cell.load == l), "{l:?}");
        }
        assert!(m.iter().any(|c| matches!(c.load, Load::Sse { .. })));
        let mut names: Vec<_> = m.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), m.len(), "cell names are unique");
    }

    #[test]
    fn requests_per_run() {
        let m = matrix(20.0, 6.0);
        assert_eq!(m[0].requests(), 20_000);
        let sse = m.iter().find(|c| c.name == "sse").unwrap();
        assert_eq!(sse.events_per_stream(), 300);
        assert_eq!(sse.requests(), 16 * 300);
        assert_eq!(sse.title(), "SSE, 50 events/s per stream, 16 streams");
        let one = m.iter().find(|c| c.name == "conns-1").unwrap();
        assert_eq!(one.title(), "1000 rps, 1 connection, 1 KiB POST");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1024), "1 KiB");
        assert_eq!(size(65536), "64 KiB");
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(1000), "1000 B");
    }
}
