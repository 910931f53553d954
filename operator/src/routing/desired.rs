//! The RoutingTable a namespace should have: a pure function of the namespace's pods, Services
//! and HTTPEndpoints.
//!
//! Secret values never enter it: header `secretKeyRef`s are copied as references, a plain header
//! `value` is copied (Dapr treats it as plaintext), certificates given inline are copied (they
//! are public), and a private key given inline is recorded as `inline: true` only.

use std::collections::BTreeMap;

use ferry_api::{
    http_endpoint::{ClientTls, HttpEndpoint, TlsDocument, render_value},
    routing_table::{
        AppPorts, AppRoute, EndpointRoute, HeaderRoute, PemRoute, PrivateKeyRoute,
        RoutingTableSpec, TlsRoute,
    },
};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::{
    apps::Apps,
    endpoints::validate,
    services::desired::{self as svc, HTTP_PORT},
};

pub use ferry_api::routing_table::TABLE_NAME;

/// A namespace's table, and what the status should say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub spec: RoutingTableSpec,
    /// Apps left out because `<id>-dapr` exists and is not ours, as `(app, service)`.
    pub conflicts: Vec<(String, String)>,
}

/// The table for a namespace, or `None` when it has nothing left to list or keep: no app with
/// pods, no HTTPEndpoint, and no Service of ours (the Services are owned by the table, so it
/// stays until the last one is gone).
pub fn table<'a>(
    apps: &Apps,
    services: impl IntoIterator<Item = &'a Service>,
    endpoints: impl IntoIterator<Item = &'a HttpEndpoint>,
) -> Option<Table> {
    let services: BTreeMap<String, &Service> =
        services.into_iter().map(|s| (s.name_any(), s)).collect();
    let mut spec = RoutingTableSpec::default();
    let mut conflicts = Vec::new();
    for app in apps.apps.values() {
        let name = svc::service_name(&app.id);
        if services.get(&name).is_some_and(|s| !svc::is_ours(s)) {
            conflicts.push((app.id.to_string(), name));
            continue;
        }
        let ports = svc::app_service("", &app.id, &app.annotations, None).ports;
        spec.apps.push(AppRoute {
            id: app.id.to_string(),
            service: name,
            ports: AppPorts {
                http: i32::from(HTTP_PORT),
                grpc: i32::from(ports.grpc),
                internal: i32::from(ports.internal),
                metrics: i32::from(ports.metrics),
            },
        });
    }
    let mut endpoints: Vec<&HttpEndpoint> = endpoints
        .into_iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .collect();
    endpoints.sort_by(|a, b| a.name().cmp(b.name()));
    spec.http_endpoints = endpoints.into_iter().map(endpoint_route).collect();

    let ours_left = services.values().any(|s| svc::is_ours(s));
    let empty = apps.apps.is_empty() && spec.http_endpoints.is_empty();
    (!empty || ours_left).then_some(Table { spec, conflicts })
}

/// An HTTPEndpoint as the table lists it.
pub fn endpoint_route(ep: &HttpEndpoint) -> EndpointRoute {
    let verdict = validate::validate(ep);
    EndpointRoute {
        name: ep.name().to_owned(),
        base_url: ep.spec.base_url.clone(),
        headers: ep
            .spec
            .headers
            .iter()
            .map(|h| HeaderRoute {
                name: h.name.clone(),
                value: h.value.as_ref().map(render_value),
                secret_key_ref: h.secret_key_ref.clone(),
                env_ref: h.env_ref.clone(),
            })
            .collect(),
        client_tls: ep.spec.client_tls.as_ref().map(tls_route),
        ready: verdict.ready(),
        reason: (!verdict.ready()).then(|| verdict.reason.as_str().to_owned()),
        scopes: ep.scopes.clone(),
    }
}

fn tls_route(tls: &ClientTls) -> TlsRoute {
    let pem = |d: &TlsDocument| PemRoute {
        value: d.value.as_ref().map(render_value),
        secret_key_ref: d.secret_key_ref.clone(),
    };
    TlsRoute {
        root_ca: tls.root_ca.as_ref().map(pem),
        certificate: tls.certificate.as_ref().map(pem),
        private_key: tls.private_key.as_ref().map(|d| PrivateKeyRoute {
            secret_key_ref: d.secret_key_ref.clone(),
            inline: d.value.is_some(),
        }),
        renegotiation: tls.renegotiation.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::{self, fixtures::*};
    use serde_json::json;

    fn endpoint(name: &str, spec: serde_json::Value) -> HttpEndpoint {
        serde_json::from_value(json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn ours(app: &str) -> Service {
        svc::app_service(
            "shop",
            &ferry_api::AppId::new(app).unwrap(),
            &BTreeMap::new(),
            None,
        )
        .service
    }

    #[test]
    fn lists_apps_with_their_service_and_ports() {
        let pods = [
            pod("shop", "cart-1", "cart", 1),
            annotated(
                pod("shop", "pay-1", "pay", 1),
                &[("dapr.io/internal-grpc-port", "6002")],
            ),
        ];
        let t = table(&apps::in_namespace("shop", &pods), [], []).unwrap();
        assert_eq!(
            serde_json::to_value(&t.spec.apps).unwrap(),
            json!([
                {"id": "cart", "service": "cart-dapr",
                 "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090}},
                {"id": "pay", "service": "pay-dapr",
                 "ports": {"http": 80, "grpc": 50001, "internal": 6002, "metrics": 9090}}
            ])
        );
        assert!(t.conflicts.is_empty());
    }

    #[test]
    fn a_clashing_service_leaves_the_app_out_and_is_reported() {
        let pods = [pod("shop", "cart-1", "cart", 1)];
        let mut theirs = ours("cart");
        theirs.metadata.labels = None;
        let t = table(&apps::in_namespace("shop", &pods), [&theirs], []).unwrap();
        assert!(t.spec.apps.is_empty());
        assert_eq!(
            t.conflicts,
            vec![("cart".to_owned(), "cart-dapr".to_owned())]
        );
    }

    #[test]
    fn endpoints_carry_references_never_secrets() {
        let ep = endpoint(
            "ext",
            json!({
                "baseUrl": "https://api.example.com",
                "headers": [
                    {"name": "Accept-Language", "value": "en-US"},
                    {"name": "X-Num", "value": 7},
                    {"name": "Authorization", "secretKeyRef": {"name": "tok", "key": "token"}},
                    {"name": "X-Env", "envRef": "E"}
                ],
                "clientTLS": {
                    "rootCA": {"value": "-----BEGIN CERTIFICATE-----\nCA"},
                    "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                    "privateKey": {"value": "-----BEGIN PRIVATE KEY-----\nSECRET"}
                }
            }),
        );
        let t = table(&Apps::default(), [], [&ep]).unwrap();
        let v = serde_json::to_value(&t.spec.http_endpoints).unwrap();
        assert_eq!(
            v,
            json!([{
                "name": "ext",
                "baseUrl": "https://api.example.com",
                "headers": [
                    {"name": "Accept-Language", "value": "en-US"},
                    {"name": "X-Num", "value": "7"},
                    {"name": "Authorization", "secretKeyRef": {"name": "tok", "key": "token"}},
                    {"name": "X-Env", "envRef": "E"}
                ],
                "clientTLS": {
                    "rootCA": {"value": "-----BEGIN CERTIFICATE-----\nCA"},
                    "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                    "privateKey": {"inline": true}
                },
                "ready": true
            }])
        );
        assert!(!v.to_string().contains("SECRET"));
    }

    #[test]
    fn endpoints_carry_their_scopes() {
        let mut ep = endpoint("ext", json!({"baseUrl": "http://x"}));
        assert!(endpoint_route(&ep).scopes.is_empty());
        ep.scopes = vec!["checkout".into(), "billing".into()];
        assert_eq!(endpoint_route(&ep).scopes, ["checkout", "billing"]);
    }

    #[test]
    fn invalid_endpoints_are_listed_not_ready_with_the_reason() {
        let bad = endpoint("bad", json!({"baseUrl": "ftp://x"}));
        let good = endpoint("a-good", json!({"baseUrl": "http://x"}));
        let t = table(&Apps::default(), [], [&bad, &good]).unwrap();
        let names: Vec<_> = t
            .spec
            .http_endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["a-good", "bad"]);
        assert!(!t.spec.http_endpoints[1].ready);
        assert_eq!(
            t.spec.http_endpoints[1].reason.as_deref(),
            Some("InvalidBaseURL")
        );
    }

    #[test]
    fn the_table_goes_when_nothing_is_left() {
        assert_eq!(table(&Apps::default(), [], []), None);
        // A Service of ours in its grace period keeps the table (it owns the Service).
        let s = ours("cart");
        let t = table(&Apps::default(), [&s], []).unwrap();
        assert!(t.spec.apps.is_empty());
        // Someone else's Service alone does not.
        let mut theirs = ours("cart");
        theirs.metadata.labels = None;
        assert_eq!(table(&Apps::default(), [&theirs], []), None);
    }
}
