//! Ferry's shared vocabulary: pure types with no I/O.
//!
//! Everything here is used by more than one part (sidecar, CLI, and later the operator and the
//! injector): validated app IDs, the well-known header names and ports of Dapr's wire contract,
//! and the `HTTPEndpoint` resource as Dapr users write it.
#![forbid(unsafe_code)]

pub mod app_id;
pub mod headers;
pub mod http_endpoint;
pub mod ports;

pub use app_id::{AppId, AppIdError, Namespace};
pub use http_endpoint::HttpEndpoint;
