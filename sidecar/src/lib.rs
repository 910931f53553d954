//! Ferry's sidecar: Dapr-compatible service invocation.
//!
//! The pure core lives in [`invoke`] (targets, methods, headers, errors); [`proxy`] holds the
//! caller and callee paths over injected resolution and connections; only [`server`] binds
//! sockets.
#![forbid(unsafe_code)]

pub mod api;
pub mod body;
pub mod config;
pub mod endpoints;
pub mod invoke;
pub mod logging;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod upstream;

pub use config::SidecarArgs;
pub use server::{RunInfo, Running, StartError, start};

/// Exit code for bad flags or configuration (BSD `EX_USAGE`).
pub const EX_USAGE: i32 = 64;
