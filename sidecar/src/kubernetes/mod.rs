//! Kubernetes mode's name resolution, for now: none.
//!
//! Resolving app IDs through the Kubernetes API (RoutingTables and EndpointSlices, DESIGN §4)
//! is a later issue. Until it lands, [`UnavailableResolver`] stands in for it so that an
//! injected sidecar starts and serves everything that needs no lookup: self-invocation,
//! full-URL calls and HTTPEndpoints from `--resources-path`. A call to another app fails at
//! once with a 500 that says why. Replace this type; do not extend it.

pub mod index;

use std::sync::Arc;

use ferry_api::{AppId, Namespace};

use crate::{proxy::Resolve, registry::Instances};

/// Fails every lookup of another app, fast and with a clear message.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnavailableResolver;

/// Why the lookup failed (the caller's message adds the app and namespace).
pub const UNAVAILABLE: &str = "resolving app IDs through the Kubernetes API is not available in this version of ferryd; in kubernetes mode only self-invocation, full-URL calls and HTTPEndpoints from --resources-path work";

impl Resolve for UnavailableResolver {
    async fn resolve(
        &self,
        _app: &AppId,
        _ns: &Namespace,
        _explicit: bool,
    ) -> Result<Arc<Instances>, String> {
        Err(UNAVAILABLE.to_owned())
    }

    async fn unreachable(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoke::{Cause, InvokeError};

    #[tokio::test]
    async fn every_lookup_fails_with_a_message_naming_app_and_namespace() {
        let app = AppId::new("orders").unwrap();
        let ns = Namespace::new("shop").unwrap();
        let reason = UnavailableResolver
            .resolve(&app, &ns, false)
            .await
            .unwrap_err();
        // What the proxy makes of it (proxy.rs call_remote).
        let e = InvokeError::new(
            "orders",
            Cause::Resolve {
                app: app.to_string(),
                namespace: ns.to_string(),
                reason,
            },
        );
        assert_eq!(e.status(), 500);
        let msg = e.message();
        assert!(msg.contains("'orders'") && msg.contains("'shop'"), "{msg}");
        assert!(msg.contains("Kubernetes API is not available"), "{msg}");
    }
}
