//! Ferry's shared vocabulary: pure types with no I/O (besides `usage::exit_on_clap_error`,
//! behind the `clap` feature, which reports a bad command line and exits).
//!
//! Everything here is used by more than one part (sidecar, CLI, operator, and later the
//! injector): validated app IDs, the well-known header names and ports of Dapr's wire contract,
//! and the custom resources: `HTTPEndpoint` as Dapr users write it, and Ferry's `RoutingTable`.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod app_id;
pub mod configuration;
pub mod crd;
pub mod headers;
pub mod http_endpoint;
pub mod ports;
pub mod routing_table;
pub mod size;
pub mod spiffe;
pub mod usage;

pub use annotations::{AnnotationError, AppProtocol, LogLevel, SidecarConfig};
pub use app_id::{AppId, AppIdError, Namespace};
pub use configuration::{Configuration, ConfigurationSpec};
pub use http_endpoint::{HttpEndpoint, HttpEndpointSpec, HttpEndpointStatus};
pub use routing_table::{RoutingTable, RoutingTableSpec, RoutingTableStatus};
pub use spiffe::{SpiffeId, TrustDomain};
