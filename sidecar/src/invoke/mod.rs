//! The pure core of invocation: what a request names, how its method is normalized, which
//! headers pass, and how failures read. No sockets here.

pub mod call;
pub mod error;
pub mod headers;
pub mod method;
pub mod target;
pub mod trace;

pub use call::Invocation;
pub use error::{Cause, ErrorKind, InvokeError, ResolveError, SidecarFailure, Unusable, chain};
pub use method::{Method, MethodError};
