//! Ferry's sidecar injector.
//!
//! [`inject::plan`] is the whole decision, as a pure function: a pod, its namespace and the
//! injector's configuration in; inject (with a JSON patch), skip (with a reason) or deny (with a
//! message) out. The admission webhook and `ferry inject` are thin edges around it.
#![forbid(unsafe_code)]

pub mod glob;
pub mod inject;

pub use inject::{Decision, InjectorConfig, NamespaceInfo, SkipReason, UserInfo, plan};
