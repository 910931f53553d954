//! Ferry's sidecar injector.
//!
//! [`inject::plan`] is the whole decision, as a pure function: a pod and the injector's
//! configuration in; inject (with a JSON patch and the warnings for the pod's author), skip
//! (with a reason) or deny (with a message) out. [`admission`] wraps it in the AdmissionReview protocol, still without I/O;
//! [`server`] is the HTTP edge, [`tls`] the hot-reloaded certificate, [`bootstrap`] the
//! Kubernetes side of certificates (the Secret and the webhook's caBundle). `ferry inject`
//! calls [`inject::plan`] offline.
#![forbid(unsafe_code)]

pub mod admission;
pub mod args;
pub mod bootstrap;
pub mod certs;
pub mod glob;
pub mod inject;
pub mod metrics;
pub mod server;
pub mod tls;

pub use inject::{Decision, Injection, InjectorConfig, SkipReason, UserInfo, plan};
