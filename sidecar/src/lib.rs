//! Ferry's sidecar: Dapr-compatible service invocation.
//!
//! The pure core lives in [`invoke`] (targets, methods, headers, errors). The call path is two
//! stacks of tower services: [`outbound`] (an app's requests to wherever they name) and
//! [`inbound`] (peers' requests for the app), built by [`stacks`] over what is injected: the
//! resolver, the peer connector, the app channel ([`upstream`]). Only [`server`] binds sockets.
#![forbid(unsafe_code)]

pub mod acl;
pub mod api;
pub mod apphealth;
pub mod auth;
pub mod body;
pub mod config;
pub mod configuration;
pub mod conn;
pub mod endpoints;
pub mod grpc;
pub mod identity;
pub mod inbound;
pub mod invoke;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod respond;
pub mod server;
pub mod stacks;
pub mod upstream;

pub use config::{ConfigError, Settings, SidecarArgs};
pub use server::{RunInfo, Running, StartError, start, start_with};

pub use ferry_api::usage::{EX_USAGE, exit_on_clap_error};
