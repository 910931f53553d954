//! Ferry's workload identity.
//!
//! - [`svid`]: a sidecar's key (generated here, never sent anywhere) and its SPIFFE X.509 SVID.
//! - [`ca`]: the CA's signing core, with no transport: verified identity + public key → chain.
//! - [`sentry`]: Dapr Sentry's `SignCertificate` contract, generated from our `.proto`, with the
//!   client ferryd uses (against Ferry's CA or Dapr's own Sentry) and a server over [`ca`].
//! - [`tls`]: rustls configs and verifiers of mTLS between sidecars.
//! - [`trust`]: trust anchors.
#![forbid(unsafe_code)]

pub mod ca;
pub mod local;
pub mod sentry;
pub mod svid;
pub mod tls;
pub mod trust;

pub use ca::{Authority, CaError, CaMaterial};
pub use svid::{PendingKey, Svid, SvidError};
pub use tls::Credentials;
pub use trust::{TrustBundle, TrustError};
