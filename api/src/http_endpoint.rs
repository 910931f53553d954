//! The `HTTPEndpoint` resource (`dapr.io/v1alpha1`), as Dapr users write it.
//!
//! One type serves both worlds: the sidecar reads it from standalone YAML files, and in Kubernetes
//! it is a custom resource whose CRD comes from [`HttpEndpoint::crd`]. Manifests written for Dapr
//! parse and apply unchanged: unknown fields (such as the `spec.version` some of Dapr's manifests
//! carry) are tolerated here and preserved by the CRD.
//!
//! Dapr puts `auth` and `scopes` at the root of the object, beside `spec`. kube's
//! `CustomResource` derive cannot express extra root fields, so the root type, its
//! [`Resource`] implementation and its CRD are written out here.

use std::borrow::Cow;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
        CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
        CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta},
};
use kube_core::{
    NamespaceResourceScope, Resource,
    crd::v1::CustomResourceExt,
    dynamic::ApiResource,
    object::{HasSpec, HasStatus},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd;

pub const GROUP: &str = "dapr.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "dapr.io/v1alpha1";
pub const KIND: &str = "HTTPEndpoint";
pub const PLURAL: &str = "httpendpoints";
pub const SINGULAR: &str = "httpendpoint";
pub const CRD_NAME: &str = "httpendpoints.dapr.io";

/// The condition type that says whether the endpoint is usable (shown as READY by kubectl).
pub const CONDITION_READY: &str = "Ready";

/// An external HTTP service that apps invoke by name, as `/v1.0/invoke/<name>/method/...`.
///
/// `apiVersion` and `kind` are not fields: they are written from [`API_VERSION`] and [`KIND`]
/// and ignored when read, as kube's derived resources do.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    description = "HTTPEndpoint describes an external HTTP service that Dapr apps invoke by name."
)]
pub struct HttpEndpoint {
    /// The API server validates `metadata` itself; its schema is not repeated in the CRD.
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    pub spec: HttpEndpointSpec,
    /// Which secret store resolves the `secretKeyRef`s (empty or `kubernetes`: Kubernetes
    /// Secrets in the endpoint's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// App IDs that may use this endpoint; empty means every app in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Written by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HttpEndpointStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    description = "Where the endpoint is and how to call it.",
    // Dapr's manifests carry fields Dapr itself ignores (`spec.version`); keep them rather than
    // reject or prune them, so those manifests apply unchanged.
    extend("x-kubernetes-preserve-unknown-fields" = true)
)]
pub struct HttpEndpointSpec {
    /// Absolute http:// or https:// URL that method paths are appended to.
    pub base_url: String,
    /// Headers set on every request to the endpoint, overriding the caller's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValuePair>,
    /// TLS settings for calling the endpoint.
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

/// A header to set on every request to the endpoint. Exactly one value source is allowed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "A header name and exactly one of value, secretKeyRef or envRef.")]
pub struct NameValuePair {
    /// The header name.
    pub name: String,
    /// Plain value. Dapr stores it as schemaless JSON: a YAML number or boolean is rendered as
    /// text, a string without quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub value: Option<serde_json::Value>,
    /// A key of a Secret (or of the secret store named in auth.secretStore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Name of an environment variable of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

/// A reference to one key of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "A reference to one key of a secret.")]
pub struct SecretKeyRef {
    /// The secret's name.
    pub name: String,
    /// The key within the secret.
    #[serde(default)]
    #[schemars(transform = crd::no_default)]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "TLS settings for calling the endpoint.")]
pub struct ClientTls {
    /// The only CA trusted for the endpoint's certificate (default: the system roots).
    #[serde(default, rename = "rootCA", skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<TlsDocument>,
    /// Client certificate chain, for mutual TLS (needs privateKey).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<TlsDocument>,
    /// Client private key, for mutual TLS (needs certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<TlsDocument>,
    /// TLS renegotiation support; Ferry supports only Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "enum" = ["Never", "OnceAsClient", "FreelyAsClient"],
        "default" = "Never"
    ))]
    pub renegotiation: Option<String>,
}

/// A PEM document given inline (`value`) or by reference to a Secret.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "A PEM document: value or secretKeyRef.")]
pub struct TlsDocument {
    /// The PEM text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub value: Option<serde_json::Value>,
    /// A key of a Secret holding the PEM text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "Which secret store resolves secretKeyRefs.")]
pub struct Auth {
    /// The secret store's name; empty or `kubernetes` means Kubernetes Secrets.
    #[serde(default)]
    #[schemars(transform = crd::no_default)]
    pub secret_store: String,
}

/// What the operator found when it validated the endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "What the operator found when it validated the endpoint.")]
pub struct HttpEndpointStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (True, or False with the reason the endpoint is invalid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
}

/// Renders a schemaless JSON value the way Dapr does: strings without quotes, anything else as
/// its JSON text.
pub fn render_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl HttpEndpoint {
    pub fn new(name: &str, spec: HttpEndpointSpec) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            ..Self::default()
        }
    }

    /// `metadata.name`, or "" when it is missing.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Whether the app `app_id` may use this endpoint (`scopes` empty or naming it).
    pub fn in_scope(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
    }
}

impl Serialize for HttpEndpoint {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Repr<'a> {
            api_version: &'a str,
            kind: &'a str,
            metadata: &'a ObjectMeta,
            spec: &'a HttpEndpointSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            auth: Option<&'a Auth>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            scopes: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'a HttpEndpointStatus>,
        }
        Repr {
            api_version: API_VERSION,
            kind: KIND,
            metadata: &self.metadata,
            spec: &self.spec,
            auth: self.auth.as_ref(),
            scopes: &self.scopes,
            status: self.status.as_ref(),
        }
        .serialize(ser)
    }
}

impl Resource for HttpEndpoint {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        API_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasSpec for HttpEndpoint {
    type Spec = HttpEndpointSpec;
    fn spec(&self) -> &HttpEndpointSpec {
        &self.spec
    }
    fn spec_mut(&mut self) -> &mut HttpEndpointSpec {
        &mut self.spec
    }
}

impl HasStatus for HttpEndpoint {
    type Status = HttpEndpointStatus;
    fn status(&self) -> Option<&HttpEndpointStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<HttpEndpointStatus> {
        &mut self.status
    }
}

impl CustomResourceExt for HttpEndpoint {
    fn crd() -> CustomResourceDefinition {
        let column = |name: &str, type_: &str, json_path: &str| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            ..CustomResourceColumnDefinition::default()
        };
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(CRD_NAME.into()),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: GROUP.into(),
                names: CustomResourceDefinitionNames {
                    kind: KIND.into(),
                    list_kind: Some(format!("{KIND}List")),
                    plural: PLURAL.into(),
                    singular: Some(SINGULAR.into()),
                    ..CustomResourceDefinitionNames::default()
                },
                scope: "Namespaced".into(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: VERSION.into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(crd::schema_for::<Self>()),
                    }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                        scale: None,
                    }),
                    additional_printer_columns: Some(vec![
                        column("Base URL", "string", ".spec.baseUrl"),
                        column(
                            "Ready",
                            "string",
                            r#".status.conditions[?(@.type=="Ready")].status"#,
                        ),
                        column("Age", "date", ".metadata.creationTimestamp"),
                    ]),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        }
    }

    fn crd_name() -> &'static str {
        CRD_NAME
    }

    fn api_resource() -> ApiResource {
        ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_values() {
        assert_eq!(render_value(&serde_json::json!("en-US")), "en-US");
        assert_eq!(render_value(&serde_json::json!(42)), "42");
        assert_eq!(render_value(&serde_json::json!(true)), "true");
    }

    #[test]
    fn parses_dapr_docs_manifest_json() {
        let ep: HttpEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "HTTPEndpoint",
            "metadata": {"name": "external-api"},
            "spec": {
                "version": "v1alpha1",
                "baseUrl": "https://api.example.com",
                "headers": [
                    {"name": "Accept-Language", "value": "en-US"},
                    {"name": "Authorization", "secretKeyRef": {"name": "my-secret", "key": "token"}}
                ],
                "clientTLS": {"rootCA": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}}
            },
            "auth": {"secretStore": "kubernetes"},
            "scopes": ["app1"]
        }))
        .unwrap();
        assert_eq!(ep.name(), "external-api");
        assert_eq!(ep.spec.headers.len(), 2);
        assert!(ep.in_scope("app1"));
        let tls = ep.spec.client_tls.as_ref().unwrap();
        assert_eq!(
            tls.root_ca
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .key,
            "ca.crt"
        );
        assert!(!ep.in_scope("app2"));
    }

    #[test]
    fn serializes_with_type_meta_and_root_fields() {
        let mut ep = HttpEndpoint::new(
            "ext",
            HttpEndpointSpec {
                base_url: "https://api.example.com".into(),
                ..HttpEndpointSpec::default()
            },
        );
        ep.scopes = vec!["app1".into()];
        let v = serde_json::to_value(&ep).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], KIND);
        assert_eq!(v["scopes"], serde_json::json!(["app1"]));
        assert!(v.get("auth").is_none() && v.get("status").is_none());
        let back: HttpEndpoint = serde_json::from_value(v).unwrap();
        assert_eq!(back, ep);
    }
}
