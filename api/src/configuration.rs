//! The `Configuration` resource (`dapr.io/v1alpha1`), as Dapr users write it.
//!
//! Only `spec.accessControl` is typed and applied today. Dapr's other sections (`tracing`,
//! `metric`/`metrics`, `logging`, `features`, `httpPipeline`, `nameResolution`, `mtls`,
//! `secrets`, `components`, `api`, ...) are fields of their own holding the value as given, so
//! Dapr manifests apply unchanged and the CRD keeps them; the observability issue types
//! `tracing`, `metrics` and `logging` in place. Unknown sections are preserved too.
//!
//! [`AccessControlSpec::validate`] is Dapr's `ParseAccessControlSpec` check (every policy
//! names its `appId`, `trustDomain` and `namespace`), plus the values Dapr would silently
//! never match (an action other than allow or deny, a verb not written as Dapr compares it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{crd, spiffe::DEFAULT_TRUST_DOMAIN};

pub const KIND: &str = "Configuration";
pub const PLURAL: &str = "configurations";
pub const CRD_NAME: &str = "configurations.dapr.io";

/// The condition type that says whether the Configuration is valid (shown as READY).
pub const CONDITION_READY: &str = "Ready";

/// The verbs Dapr's ACL knows (`HTTPExtension_Verb` names); `*` stands for any of them.
pub const HTTP_VERBS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Dapr's settings for the sidecars that name this Configuration (`dapr.io/config`,
/// `--config`).
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dapr.io",
    version = "v1alpha1",
    kind = "Configuration",
    namespaced,
    status = "ConfigurationStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Configuration describes a Dapr configuration setting.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
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
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ConfigurationSpec {
    /// Which callers may invoke which methods of the apps that use this Configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControlSpec>,
    /// Dapr's tracing settings (kept as given; not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub tracing: Option<Value>,
    /// Dapr's metrics settings (kept as given; not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub metric: Option<Value>,
    /// Dapr's metrics settings, newer spelling (kept as given; not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub metrics: Option<Value>,
    /// Dapr's logging settings (kept as given; not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub logging: Option<Value>,
    /// Dapr's preview features (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub features: Option<Value>,
    /// Dapr's middleware pipeline (kept as given; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub http_pipeline: Option<Value>,
    /// Dapr's app middleware pipeline (kept as given; not supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub app_http_pipeline: Option<Value>,
    /// Dapr's name resolution component (kept as given; Ferry resolves by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub name_resolution: Option<Value>,
    /// Dapr's mTLS settings (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub mtls: Option<Value>,
    /// Dapr's secret scopes (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub secrets: Option<Value>,
    /// Dapr's component deny list (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub components: Option<Value>,
    /// Dapr's API allow and deny lists (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub api: Option<Value>,
    /// Dapr's WASM settings (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub wasm: Option<Value>,
    /// Dapr's workflow settings (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::any_json")]
    pub workflow: Option<Value>,
}

/// `spec.accessControl`: Dapr's service invocation allow list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "AccessControlSpec is the spec object in ConfigurationSpec.")]
pub struct AccessControlSpec {
    /// allow or deny (case-insensitive): the action for callers no policy matches, and for
    /// every caller without a verified identity. Missing with policies: deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// This app's trust domain [default: public].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// One policy per calling app ID and namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AppPolicySpec>,
}

/// What one calling app may do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "AppPolicySpec defines the policy data structure for each app.")]
pub struct AppPolicySpec {
    /// The calling app's ID.
    pub app_id: String,
    /// allow or deny: this caller's action when no operation says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    /// The calling app's trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// The calling app's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Actions per method path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<AppOperation>,
}

/// The action for one method path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "AppOperationAction defines the data structure for each app operation.")]
pub struct AppOperation {
    /// The method path: `*` within a segment, a final `/*` for one more segment, `/**` for
    /// any depth; a path also covers what lies below it.
    pub name: String,
    /// The verbs the action applies to (upper-case, or `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_verb: Vec<String>,
    /// allow or deny.
    pub action: String,
}

/// Written by the operator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// `Ready`: whether the Configuration is valid, and if not, why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    /// allow or deny, case-insensitively (as Dapr compares them).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("allow") {
            Some(Action::Allow)
        } else if s.eq_ignore_ascii_case("deny") {
            Some(Action::Deny)
        } else {
            None
        }
    }
}

/// One thing wrong in `spec.accessControl`; the text names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessControlError {
    #[error(
        "spec.accessControl.policies[{index}]: appId is missing; set it to the ID of the calling app"
    )]
    MissingAppId { index: usize },
    #[error(
        "spec.accessControl.policies[{index}] (appId {app_id:?}): {field} is missing; set it to the calling app's {what}"
    )]
    MissingField {
        index: usize,
        app_id: String,
        field: &'static str,
        what: &'static str,
    },
    #[error("{field}: {value:?} is not an action; use allow or deny")]
    Action { field: String, value: String },
    #[error(
        "{field}: {value:?} is not a verb Dapr matches; use one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (upper-case) or *"
    )]
    Verb { field: String, value: String },
    #[error("{field}: the operation name is empty; name a method path such as /orders/*")]
    EmptyOperation { field: String },
}

/// Every problem of a spec, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid access control spec: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct AccessControlErrors(pub Vec<AccessControlError>);

impl AccessControlSpec {
    /// Whether it says anything at all: Dapr treats an empty section (no trust domain, no
    /// default action, no policies) as no access control.
    pub fn is_empty(&self) -> bool {
        self.trust_domain.as_deref().unwrap_or("").is_empty()
            && self.default_action.as_deref().unwrap_or("").is_empty()
            && self.policies.is_empty()
    }

    /// This app's trust domain, Dapr's default when none is given.
    pub fn trust_domain(&self) -> &str {
        match self.trust_domain.as_deref() {
            Some(td) if !td.is_empty() => td,
            _ => DEFAULT_TRUST_DOMAIN,
        }
    }

    /// Checks the spec as Dapr's parser does, and more: every problem, not just the first.
    pub fn validate(&self) -> Result<(), AccessControlErrors> {
        let mut errors = Vec::new();
        let action = |errors: &mut Vec<_>, field: String, value: &Option<String>| {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty())
                && Action::parse(v).is_none()
            {
                errors.push(AccessControlError::Action {
                    field,
                    value: v.to_owned(),
                });
            }
        };
        action(
            &mut errors,
            "spec.accessControl.defaultAction".into(),
            &self.default_action,
        );
        for (index, p) in self.policies.iter().enumerate() {
            let at = format!("spec.accessControl.policies[{index}]");
            if p.app_id.is_empty() {
                errors.push(AccessControlError::MissingAppId { index });
            }
            for (field, value, what) in [
                (
                    "trustDomain",
                    &p.trust_domain,
                    "trust domain (public unless its Configuration names another)",
                ),
                (
                    "namespace",
                    &p.namespace,
                    "namespace (default in standalone mode)",
                ),
            ] {
                if value.as_deref().unwrap_or("").is_empty() {
                    errors.push(AccessControlError::MissingField {
                        index,
                        app_id: p.app_id.clone(),
                        field,
                        what,
                    });
                }
            }
            action(
                &mut errors,
                format!("{at}.defaultAction"),
                &p.default_action,
            );
            for (i, op) in p.operations.iter().enumerate() {
                let at = format!("{at}.operations[{i}]");
                if op.name.is_empty() {
                    errors.push(AccessControlError::EmptyOperation {
                        field: format!("{at}.name"),
                    });
                }
                if Action::parse(&op.action).is_none() {
                    errors.push(AccessControlError::Action {
                        field: format!("{at}.action"),
                        value: op.action.clone(),
                    });
                }
                for (j, verb) in op.http_verb.iter().enumerate() {
                    if verb != "*" && !HTTP_VERBS.contains(&verb.as_str()) {
                        errors.push(AccessControlError::Verb {
                            field: format!("{at}.httpVerb[{j}]"),
                            value: verb.clone(),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AccessControlErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Configuration {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// Dapr's docs (operations/configuration/invoke-allowlist.md), scenario 1 and the full
    /// example, with the other sections a real Configuration carries.
    const DOCS: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
spec:
  tracing:
    samplingRate: "1"
  features:
    - name: SomeFeature
      enabled: true
  mtls:
    enabled: true
  accessControl:
    defaultAction: deny
    trustDomain: "public"
    policies:
    - appId: app1
      defaultAction: deny
      trustDomain: 'public'
      namespace: "default"
      operations:
      - name: /op1
        httpVerb: ['POST', 'GET']
        action: deny
      - name: /op2/*
        httpVerb: ["*"]
        action: allow
    - appId: app2
      defaultAction: allow
      trustDomain: 'public'
      namespace: "default"
      operations:
      - name: /op3
        httpVerb: ['POST', 'PUT']
        action: deny
"#;

    #[test]
    fn daprs_docs_manifest_parses_and_is_valid() {
        let c = parse(DOCS);
        assert_eq!(c.metadata.name.as_deref(), Some("appconfig"));
        let ac = c.spec.access_control.as_ref().unwrap();
        assert_eq!(ac.default_action.as_deref(), Some("deny"));
        assert_eq!(ac.policies.len(), 2);
        assert_eq!(ac.policies[0].operations[1].name, "/op2/*");
        assert_eq!(ac.policies[0].operations[0].http_verb, ["POST", "GET"]);
        assert!(c.spec.tracing.is_some() && c.spec.features.is_some() && c.spec.mtls.is_some());
        ac.validate().unwrap();
        assert_eq!(ac.trust_domain(), "public");
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let spec = AccessControlSpec {
            default_action: Some("Reject".into()),
            trust_domain: None,
            policies: vec![
                AppPolicySpec {
                    app_id: "app1".into(),
                    namespace: Some("ns1".into()),
                    ..Default::default()
                },
                AppPolicySpec {
                    app_id: "app2".into(),
                    trust_domain: Some("domain1".into()),
                    default_action: Some("DENY".into()),
                    operations: vec![AppOperation {
                        name: "/op".into(),
                        http_verb: vec!["get".into(), "POST".into(), "*".into()],
                        action: "permit".into(),
                    }],
                    ..Default::default()
                },
                AppPolicySpec {
                    trust_domain: Some("domain1".into()),
                    namespace: Some("ns1".into()),
                    ..Default::default()
                },
            ],
        };
        let errs = spec.validate().unwrap_err();
        let texts: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                r#"spec.accessControl.defaultAction: "Reject" is not an action; use allow or deny"#,
                r#"spec.accessControl.policies[0] (appId "app1"): trustDomain is missing; set it to the calling app's trust domain (public unless its Configuration names another)"#,
                r#"spec.accessControl.policies[1] (appId "app2"): namespace is missing; set it to the calling app's namespace (default in standalone mode)"#,
                r#"spec.accessControl.policies[1].operations[0].action: "permit" is not an action; use allow or deny"#,
                r#"spec.accessControl.policies[1].operations[0].httpVerb[0]: "get" is not a verb Dapr matches; use one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (upper-case) or *"#,
                "spec.accessControl.policies[2]: appId is missing; set it to the ID of the calling app",
            ]
        );
        assert!(
            errs.to_string()
                .starts_with("invalid access control spec: ")
        );
        assert!(!errs.to_string().contains('\n'), "one line");
    }

    #[test]
    fn actions_are_case_insensitive_and_empty_sections_are_none() {
        assert_eq!(Action::parse("ALLOW"), Some(Action::Allow));
        assert_eq!(Action::parse("Deny"), Some(Action::Deny));
        assert_eq!(Action::parse("allowed"), None);
        assert!(AccessControlSpec::default().is_empty());
        let td_only = AccessControlSpec {
            trust_domain: Some("helloworld".into()),
            ..Default::default()
        };
        assert!(!td_only.is_empty());
        td_only.validate().unwrap();
        assert_eq!(td_only.trust_domain(), "helloworld");
    }

    #[test]
    fn unknown_sections_are_tolerated() {
        let c = parse(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: x}\nspec:\n  someFutureSection: {a: 1}\n  apiLogging: {enabled: true}\n",
        );
        assert_eq!(c.spec.access_control, None);
    }
}
