//! Ferry's operator: keeps the cluster's view of "which app IDs and HTTPEndpoints exist, and
//! where" true.
//!
//! - [`services`]: a headless Service `<app-id>-dapr` for every app ID with pods, removed a grace
//!   period after its last pod;
//! - [`endpoints`]: validates each `HTTPEndpoint` and reports a `Ready` condition and Events;
//! - [`routing`]: one `RoutingTable` per namespace with apps or HTTPEndpoints;
//! - [`sidecar_rbac`]: every sidecar's ServiceAccount may read RoutingTables, EndpointSlices and
//!   exactly the Secrets its namespace's HTTPEndpoints name, nothing more;
//! - [`injection_warnings`]: the injector's warnings about a pod's annotations, recorded in the
//!   pod, become one Warning Event on it;
//! - [`ca`] (`--ca`, on every replica): Ferry's CA on Dapr Sentry's contract, and the trust
//!   bundle in every namespace.
//!
//! Decisions are pure functions (`services::desired`, `endpoints::validate`,
//! `routing::desired`, `sidecar_rbac::desired`); the reconcilers around them only read caches
//! and write by server-side apply. What a reconcile is given (client, caches, metrics, backoff
//! and its controller's own state) is a [`context::Context`]. Only the holder of the [`lease`]
//! runs the controllers ([`runtime`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod apps;
pub mod args;
pub mod ca;
pub mod configurations;
pub mod context;
pub mod endpoints;
pub mod injection_warnings;
pub mod lease;
pub mod metrics;
pub mod reports;
pub mod routing;
pub mod runtime;
pub mod services;
pub mod sidecar_rbac;

/// The field manager of every write, and the value of the `app.kubernetes.io/managed-by` label
/// on what the operator owns.
pub const FIELD_MANAGER: &str = "ferry-operator";

/// The Events' reporting controller.
pub const REPORTER: &str = "ferry-operator";

#[cfg(test)]
mod fixtures;
