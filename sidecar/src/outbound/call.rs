//! What the caller's stack carries: an [`Invocation`] and where it goes.

use std::sync::Arc;

use ferry_api::{AppId, Namespace};

use crate::{endpoints::Endpoint, invoke::Invocation};

/// An invocation whose destination is known (what [`super::target`] makes of a request, and
/// what the gRPC API will make of its own).
pub struct Call {
    pub dest: Destination,
    pub inv: Invocation,
}

/// Where a request goes.
pub enum Destination {
    /// This sidecar's own app.
    Local,
    /// An app ID, in a namespace.
    App(AppTarget),
    /// An HTTPEndpoint of the caller's namespace.
    Endpoint(Arc<Endpoint>),
    /// A full URL (no trailing slash).
    Url(String),
}

/// An app ID to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTarget {
    pub id: AppId,
    pub ns: Namespace,
    /// The target named the namespace (`app.ns`), rather than taking the caller's.
    pub explicit: bool,
}

/// An invocation and the one kind of destination a branch of the stack serves.
pub struct Routed<T> {
    pub target: T,
    pub inv: Invocation,
}
