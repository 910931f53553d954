//! `ferry-bench`: what ferryd costs next to a direct call and next to a pair of nginx reverse
//! proxies, measured in the same run (`make bench`, results in BENCHMARKS.md).
//!
//! Pure parts (statistics, `/proc` parsing, load-generator outputs, drop rules, the report) are
//! unit-tested; the runner and the system under test are the thin edges that spawn processes.
#![forbid(unsafe_code)]

pub mod app;
pub mod gate;
pub mod loadgen;
pub mod machine;
pub mod matrix;
pub mod probe;
pub mod procfs;
pub mod report;
pub mod resolver;
pub mod resolver_report;
pub mod runner;
pub mod sse;
pub mod stats;
pub mod summary;
pub mod sut;

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: io::Error },
    #[error("{what} stopped: {detail}")]
    Died { what: String, detail: String },
    #[error("{what} was not ready after {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("the {path} path does not work: {detail}")]
    Check { path: &'static str, detail: String },
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
}

impl Error {
    /// `map_err(Error::io("what was being done"))`.
    pub fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}
