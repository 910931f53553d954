//! The `HTTPEndpoint` resource (`dapr.io/v1alpha1`), as Dapr users write it.
//!
//! Manifests written for Dapr parse unchanged: unknown fields (such as the `spec.version` some
//! of Dapr's test manifests carry) are tolerated.

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "dapr.io/v1alpha1";
pub const KIND: &str = "HTTPEndpoint";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpoint {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: HttpEndpointSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// App IDs that may use this endpoint; empty means every app in the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpEndpointSpec {
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValuePair>,
    #[serde(default, rename = "clientTLS", skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

/// A header to set on every request to the endpoint. Exactly one value source is allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameValuePair {
    pub name: String,
    /// Plain value. Dapr stores it as schemaless JSON: a YAML number or boolean is rendered as
    /// text, a string without quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// Name of an environment variable of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    #[serde(default, rename = "rootCA", skip_serializing_if = "Option::is_none")]
    pub root_ca: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<TlsDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renegotiation: Option<String>,
}

/// A PEM document given inline (`value`) or by reference to a Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    #[serde(default)]
    pub secret_store: String,
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
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Whether the app `app_id` may use this endpoint (`scopes` empty or naming it).
    pub fn in_scope(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
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
}
