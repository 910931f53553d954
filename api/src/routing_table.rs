//! The `RoutingTable` resource (`ferry.dev/v1alpha1`): the operator's view of one meshed
//! namespace, one object per namespace, for people (`kubectl get rt`) and for sidecars.
//!
//! It lists secret *references* only, never secret values: a header's plain `value` is copied
//! (Dapr treats it as plaintext), but a TLS private key given inline is recorded as
//! `inline: true` and its PEM is left behind in the HTTPEndpoint.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::http_endpoint::SecretKeyRef;

pub const GROUP: &str = "ferry.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "ferry.dev/v1alpha1";
pub const KIND: &str = "RoutingTable";
pub const CRD_NAME: &str = "routingtables.ferry.dev";
/// The one RoutingTable of a namespace (written by ferry-operator, read by the sidecars).
pub const TABLE_NAME: &str = "ferry";

/// The condition type that says whether the table reflects the namespace.
pub const CONDITION_SYNCED: &str = "Synced";

/// The apps and HTTPEndpoints of one namespace, and where to reach them.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "RoutingTable",
    namespaced,
    status = "RoutingTableStatus",
    shortname = "rt",
    derive = "PartialEq",
    derive = "Default",
    doc = "The apps and HTTPEndpoints of one namespace, as the Ferry operator sees them.",
    printcolumn = r#"{"name":"Apps","type":"integer","jsonPath":".status.apps"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.httpEndpoints"}"#,
    printcolumn = r#"{"name":"Synced","type":"date","jsonPath":".status.syncedAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTableSpec {
    /// The app IDs with pods in the namespace.
    #[serde(default)]
    pub apps: Vec<AppRoute>,
    /// The namespace's HTTPEndpoints.
    #[serde(default)]
    pub http_endpoints: Vec<EndpointRoute>,
}

/// An app ID and the headless Service (`<id>-dapr`) that reaches its sidecars.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRoute {
    /// The app ID (`dapr.io/app-id`).
    pub id: String,
    /// The name of the app's Service, `<id>-dapr`.
    pub service: String,
    /// The Service's ports.
    pub ports: AppPorts,
}

/// The ports of an app's Service, by Dapr's port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPorts {
    /// `dapr-http` (80).
    pub http: i32,
    /// `dapr-grpc` (50001).
    pub grpc: i32,
    /// `dapr-internal` (50002): sidecar to sidecar.
    pub internal: i32,
    /// `dapr-metrics` (9090).
    pub metrics: i32,
}

/// An HTTPEndpoint as the sidecars will use it, with secret references only.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRoute {
    /// The HTTPEndpoint's name (what apps invoke).
    pub name: String,
    /// spec.baseUrl of the HTTPEndpoint.
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRoute>,
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<TlsRoute>,
    /// Whether the HTTPEndpoint passed validation.
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The HTTPEndpoint's `scopes`: the app IDs that may use it (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

impl EndpointRoute {
    /// Whether the app `app_id` may use this endpoint, as Dapr scopes resources.
    pub fn in_scope(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
    }
}

/// A header with its value source: a plain value, or a reference.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoute {
    pub name: String,
    /// The plain value, rendered to text as Dapr does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Name of an environment variable of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

/// TLS settings, with secret references only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default, rename = "rootCA", skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<PemRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PemRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeyRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renegotiation: Option<String>,
}

/// A certificate: its PEM (certificates are not secret) or a reference to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PemRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// Where a private key is. There is deliberately no field for the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// The key is given inline in the HTTPEndpoint (and not copied here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
}

/// How current the table is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTableStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the operator last wrote the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<Time>,
    /// How many apps spec.apps lists.
    #[serde(default)]
    pub apps: i32,
    /// How many HTTPEndpoints spec.httpEndpoints lists.
    #[serde(default)]
    pub http_endpoints: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut rt = RoutingTable::new(
            "ferry",
            RoutingTableSpec {
                apps: vec![AppRoute {
                    id: "cart".into(),
                    service: "cart-dapr".into(),
                    ports: AppPorts {
                        http: 80,
                        grpc: 50001,
                        internal: 50002,
                        metrics: 9090,
                    },
                }],
                http_endpoints: vec![EndpointRoute {
                    name: "ext".into(),
                    base_url: "https://api.example.com".into(),
                    headers: vec![
                        HeaderRoute {
                            name: "Accept-Language".into(),
                            value: Some("en-US".into()),
                            ..HeaderRoute::default()
                        },
                        HeaderRoute {
                            name: "Authorization".into(),
                            secret_key_ref: Some(SecretKeyRef {
                                name: "tok".into(),
                                key: "token".into(),
                            }),
                            ..HeaderRoute::default()
                        },
                    ],
                    client_tls: Some(TlsRoute {
                        private_key: Some(PrivateKeyRoute {
                            inline: true,
                            ..PrivateKeyRoute::default()
                        }),
                        ..TlsRoute::default()
                    }),
                    ready: true,
                    reason: None,
                    scopes: vec!["checkout".into()],
                }],
            },
        );
        rt.metadata.namespace = Some("shop".into());
        rt.status = Some(RoutingTableStatus {
            observed_generation: Some(3),
            apps: 1,
            http_endpoints: 1,
            ..RoutingTableStatus::default()
        });
        let v = serde_json::to_value(&rt).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], KIND);
        assert_eq!(v["spec"]["apps"][0]["ports"]["internal"], 50002);
        assert_eq!(
            v["spec"]["httpEndpoints"][0]["baseUrl"],
            "https://api.example.com"
        );
        assert_eq!(
            v["spec"]["httpEndpoints"][0]["clientTLS"]["privateKey"],
            serde_json::json!({"inline": true})
        );
        assert_eq!(v["status"]["httpEndpoints"], 1);
        assert_eq!(
            v["spec"]["httpEndpoints"][0]["scopes"],
            serde_json::json!(["checkout"])
        );
        let route = &rt.spec.http_endpoints[0];
        assert!(route.in_scope("checkout") && !route.in_scope("cart"));
        let yaml = serde_saphyr::to_string(&rt).unwrap();
        let back: RoutingTable = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, rt);
    }
}
