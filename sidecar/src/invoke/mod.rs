//! The pure core of invocation: what a request names, how its method is normalized, which
//! headers pass, and how failures read. No sockets here.

pub mod error;
pub mod headers;
pub mod method;
pub mod target;
pub mod trace;

pub use error::{Cause, InvokeError};
pub use method::{Method, MethodError};
