//! Default ports of Dapr's wire contract (Dapr's `SidecarHTTPPort` and its siblings in
//! `dapr/pkg/injector/patcher/sidecar.go`).

/// The HTTP API apps call (`DAPR_HTTP_PORT`).
pub const HTTP_API: u16 = 3500;
/// The public health port (`/v1.0/healthz`, `/v1.0/healthz/outbound`, `/v1.0/metadata`).
pub const PUBLIC: u16 = 3501;
/// The gRPC API (`DAPR_GRPC_PORT`); reserved, not served yet.
pub const GRPC_API: u16 = 50001;
/// Sidecar to sidecar, on Kubernetes.
pub const INTERNAL: u16 = 50002;
/// Prometheus metrics.
pub const METRICS: u16 = 9090;
