//! What sidecars may read: a pure function of the labelled pods and the HTTPEndpoints.
//!
//! Two grants, both to the ServiceAccounts that run pods labelled `dapr.io/app-id`:
//!
//! - cluster-wide, one ClusterRoleBinding to the static ClusterRole of `ferry-sidecar.yaml`
//!   (get/list/watch RoutingTables and EndpointSlices: a sidecar may call `app.otherns`);
//! - per namespace, a Role and a RoleBinding for the ServiceAccounts of that namespace only:
//!   `get` on exactly the Secrets its HTTPEndpoints name, and `get` on exactly the HTTPEndpoints
//!   whose client private key is inline (the RoutingTable carries no key material, so the sidecar
//!   reads the key from the HTTPEndpoint itself).
//!
//! A rule with an empty `resourceNames` grants every object of its kind, so an empty list is
//! never written: a rule with no names is left out, a Role with no rule is not made at all.

use std::collections::BTreeSet;

use ferry_api::http_endpoint::{self, HttpEndpoint};
use k8s_openapi::{
    api::{
        core::v1::Pod,
        rbac::v1::{ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::{FIELD_MANAGER, apps::LABEL_APP_ID, services::desired::LABEL_MANAGED_BY};

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
pub const DEFAULT_CLUSTER_ROLE: &str = "ferry-sidecar";
pub const DEFAULT_BINDING: &str = "ferry-sidecar";
pub const DEFAULT_SECRETS_ROLE: &str = "ferry-sidecar-secrets";

/// The names of what the operator grants sidecars (flags, so that two installations, or a test's
/// operator, never write each other's objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The static ClusterRole sidecars are bound to (`deploy/rbac/ferry-sidecar.yaml`).
    pub cluster_role: String,
    /// The ClusterRoleBinding to it that the operator keeps.
    pub binding: String,
    /// The Role and the RoleBinding the operator keeps in each namespace.
    pub secrets_role: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            cluster_role: DEFAULT_CLUSTER_ROLE.to_owned(),
            binding: DEFAULT_BINDING.to_owned(),
            secrets_role: DEFAULT_SECRETS_ROLE.to_owned(),
        }
    }
}

/// A ServiceAccount, ordered by namespace then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    fn subject(&self) -> Subject {
        Subject {
            api_group: None,
            kind: "ServiceAccount".to_owned(),
            name: self.name.clone(),
            namespace: Some(self.namespace.clone()),
        }
    }
}

/// The ServiceAccount a pod's sidecar runs as, when the pod is labelled `dapr.io/app-id` and its
/// containers may still run. A terminating pod counts until it is gone: its sidecar drains
/// requests during the grace period and may still need what it reads.
pub fn service_account(pod: &Pod) -> Option<ServiceAccount> {
    pod.metadata.labels.as_ref()?.get(LABEL_APP_ID)?;
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if finished {
        return None;
    }
    let namespace = pod.metadata.namespace.clone()?;
    // Empty means `default`, as the ServiceAccount admission plugin fills it in.
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Some(ServiceAccount { namespace, name })
}

/// The ServiceAccounts of `pods` that run sidecars, sorted, each once.
pub fn service_accounts<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<ServiceAccount> {
    pods.into_iter()
        .filter_map(service_account)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What the sidecars of one namespace read besides RoutingTables and EndpointSlices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretAccess {
    /// Secrets named by a `secretKeyRef` of an HTTPEndpoint.
    pub secrets: BTreeSet<String>,
    /// HTTPEndpoints whose client private key is given inline.
    pub inline_keys: BTreeSet<String>,
}

impl SecretAccess {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.inline_keys.is_empty()
    }
}

/// What the HTTPEndpoints of one namespace make its sidecars read.
///
/// References are counted whether or not the endpoint is valid (a sidecar may read them to say
/// what is wrong), except under a secret store other than Kubernetes: there a `secretKeyRef`
/// names something in that store, and a Kubernetes Secret of the same name may be unrelated.
pub fn secret_access<'a>(endpoints: impl IntoIterator<Item = &'a HttpEndpoint>) -> SecretAccess {
    let mut access = SecretAccess::default();
    for ep in endpoints {
        if ep.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tls = ep.spec.client_tls.as_ref();
        if tls
            .and_then(|t| t.private_key.as_ref())
            .is_some_and(|k| k.value.is_some())
            && !ep.name().is_empty()
        {
            access.inline_keys.insert(ep.name().to_owned());
        }
        if !kubernetes_store(ep) {
            continue;
        }
        let headers = ep.spec.headers.iter().map(|h| h.secret_key_ref.as_ref());
        let documents = tls
            .into_iter()
            .flat_map(|t| [&t.root_ca, &t.certificate, &t.private_key])
            .map(|d| d.as_ref().and_then(|d| d.secret_key_ref.as_ref()));
        access.secrets.extend(
            headers
                .chain(documents)
                .flatten()
                .map(|r| r.name.trim())
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    access
}

/// Whether the endpoint's `secretKeyRef`s name Kubernetes Secrets (`auth.secretStore` empty or
/// `kubernetes`, as the endpoint validation reads it).
fn kubernetes_store(ep: &HttpEndpoint) -> bool {
    ep.auth
        .as_ref()
        .map(|a| a.secret_store.trim())
        .is_none_or(|s| s.is_empty() || s == "kubernetes")
}

fn ours() -> Option<std::collections::BTreeMap<String, String>> {
    Some([(LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned())].into())
}

/// The cluster-wide grant, or `None` when no ServiceAccount runs a sidecar (then the binding
/// goes: a binding without subjects only adds noise).
pub fn cluster_role_binding(
    names: &Names,
    accounts: &[ServiceAccount],
) -> Option<ClusterRoleBinding> {
    if accounts.is_empty() {
        return None;
    }
    Some(ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(names.binding.clone()),
            labels: ours(),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.to_owned()),
            kind: "ClusterRole".to_owned(),
            name: names.cluster_role.clone(),
        },
        subjects: Some(accounts.iter().map(ServiceAccount::subject).collect()),
    })
}

/// A rule granting `get` on exactly `names`, or `None` when there are none: an empty
/// `resourceNames` would grant every object of the kind.
fn get_only(group: &str, resource: &str, names: &BTreeSet<String>) -> Option<PolicyRule> {
    (!names.is_empty()).then(|| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: Some(names.iter().cloned().collect()),
        verbs: vec!["get".to_owned()],
        non_resource_urls: None,
    })
}

/// A namespace's Role and RoleBinding.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceGrant {
    pub role: Role,
    pub binding: RoleBinding,
}

/// The grant for `namespace`: `None` when its HTTPEndpoints name nothing to read or no
/// ServiceAccount there runs a sidecar. `accounts` must be the namespace's own (a RoleBinding
/// could bind others, but Secrets are for the namespace's sidecars only).
pub fn namespace_grant(
    namespace: &str,
    names: &Names,
    accounts: &[ServiceAccount],
    access: &SecretAccess,
    owner: Option<OwnerReference>,
) -> Option<NamespaceGrant> {
    let accounts: Vec<&ServiceAccount> = accounts
        .iter()
        .filter(|a| a.namespace == namespace)
        .collect();
    if accounts.is_empty() {
        return None;
    }
    let rules: Vec<PolicyRule> = [
        get_only("", "secrets", &access.secrets),
        get_only(
            http_endpoint::GROUP,
            http_endpoint::PLURAL,
            &access.inline_keys,
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if rules.is_empty() {
        return None;
    }
    let meta = ObjectMeta {
        name: Some(names.secrets_role.clone()),
        namespace: Some(namespace.to_owned()),
        labels: ours(),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    Some(NamespaceGrant {
        role: Role {
            metadata: meta.clone(),
            rules: Some(rules),
        },
        binding: RoleBinding {
            metadata: meta,
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.to_owned()),
                kind: "Role".to_owned(),
                name: names.secrets_role.clone(),
            },
            subjects: Some(accounts.iter().map(|a| a.subject()).collect()),
        },
    })
}

/// Whether the operator made `meta`'s object (it carries the managed-by label).
pub fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == FIELD_MANAGER)
}

/// The objects the operator grants with, compared as the API server returns them.
pub trait Grant: kube::Resource {
    /// Whether the live object already grants what `want` grants, and is marked as ours.
    fn up_to_date(&self, want: &Self) -> bool;
    /// Whether a binding's `roleRef`, which cannot change, differs (it must be made anew).
    fn other_role(&self, _want: &Self) -> bool {
        false
    }
}

impl Grant for Role {
    fn up_to_date(&self, want: &Self) -> bool {
        meta_up_to_date(&self.metadata, &want.metadata) && self.rules == want.rules
    }
}

impl Grant for RoleBinding {
    fn up_to_date(&self, want: &Self) -> bool {
        meta_up_to_date(&self.metadata, &want.metadata)
            && !self.other_role(want)
            && subject_keys(self.subjects.as_ref()) == subject_keys(want.subjects.as_ref())
    }

    fn other_role(&self, want: &Self) -> bool {
        self.role_ref != want.role_ref
    }
}

impl Grant for ClusterRoleBinding {
    fn up_to_date(&self, want: &Self) -> bool {
        meta_up_to_date(&self.metadata, &want.metadata)
            && !self.other_role(want)
            && subject_keys(self.subjects.as_ref()) == subject_keys(want.subjects.as_ref())
    }

    fn other_role(&self, want: &Self) -> bool {
        self.role_ref != want.role_ref
    }
}

/// What to do about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: it says what it should, or it is absent and should be, or it is not ours and
    /// nothing is to be granted.
    Keep,
    Apply,
    /// Delete it and apply anew (its `roleRef` is not ours).
    Replace,
    Delete,
    /// It is being deleted (by the garbage collector, after its RoutingTable): apply it anew
    /// once it is gone.
    Wait,
}

/// Decides about the live object (from the cache) given what should exist. An object of the
/// name that is not ours is never deleted; it is taken over when there is something to grant,
/// since the operator owns the names it is configured with.
pub fn step<K: Grant>(live: Option<&K>, want: Option<&K>) -> Step {
    let deleting = live.is_some_and(|l| l.meta().deletion_timestamp.is_some());
    match (live, want) {
        (_, Some(_)) if deleting => Step::Wait,
        (_, None) if deleting => Step::Keep,
        (None, None) => Step::Keep,
        (Some(l), None) if is_ours(l.meta()) => Step::Delete,
        (Some(_), None) => Step::Keep,
        (None, Some(_)) => Step::Apply,
        (Some(l), Some(w)) if l.other_role(w) => Step::Replace,
        (Some(l), Some(w)) if l.up_to_date(w) => Step::Keep,
        (Some(_), Some(_)) => Step::Apply,
    }
}

/// Whether the live object's metadata already says what ours says: our label, and our owner
/// reference when we have one (others may add labels and owners of their own).
fn meta_up_to_date(live: &ObjectMeta, want: &ObjectMeta) -> bool {
    let owners_ok = want.owner_references.iter().flatten().all(|w| {
        live.owner_references
            .iter()
            .flatten()
            .any(|h| h.uid == w.uid && h.controller == w.controller)
    });
    is_ours(live) && owners_ok
}

/// Subjects compared as the API server keeps them (it fills in `apiGroup: ""`).
fn subject_keys(subjects: Option<&Vec<Subject>>) -> Vec<(&str, &str, Option<&str>)> {
    subjects
        .into_iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::apps::fixtures::{phase, pod};

    fn sa(namespace: &str, name: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn run_as(mut pod: Pod, account: &str) -> Pod {
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some(account.into()),
            ..Default::default()
        });
        pod
    }

    fn endpoint(name: &str, body: Value) -> HttpEndpoint {
        let mut v = json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "metadata": {"name": name, "namespace": "shop"},
        });
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "ferry.dev/v1alpha1".into(),
            kind: "RoutingTable".into(),
            name: "ferry".into(),
            uid: "rt-1".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn accounts_come_from_labelled_pods_with_default_for_none() {
        let mut unlabelled = run_as(pod("shop", "db-1", "db", 1), "db");
        unlabelled.metadata.labels = None;
        let mut terminating = run_as(pod("shop", "old-1", "old", 1), "old");
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let pods = [
            run_as(pod("shop", "cart-2", "cart", 1), "cart"),
            run_as(pod("shop", "cart-1", "cart", 1), "cart"),
            pod("shop", "pay-1", "pay", 1),
            run_as(pod("shop", "empty-1", "empty", 1), ""),
            run_as(pod("bank", "orders-1", "orders", 1), "orders"),
            run_as(pod("bank", "cart-1", "cart", 1), "cart"),
            unlabelled,
            phase(run_as(pod("shop", "job-1", "job", 1), "batch"), "Succeeded"),
            phase(run_as(pod("shop", "bad-1", "bad", 1), "broken"), "Failed"),
            terminating,
        ];
        assert_eq!(
            service_accounts(&pods),
            [
                sa("bank", "cart"),
                sa("bank", "orders"),
                sa("shop", "cart"),
                sa("shop", "default"),
                sa("shop", "old"),
            ]
        );
        assert_eq!(service_accounts(&[]), []);
    }

    #[test]
    fn references_come_from_headers_and_every_tls_document() {
        let eps = [
            endpoint(
                "api",
                json!({"spec": {
                    "baseUrl": "https://api.example.com",
                    "headers": [
                        {"name": "X-Plain", "value": "v"},
                        {"name": "X-Env", "envRef": "E"},
                        {"name": "Authorization", "secretKeyRef": {"name": "api-key", "key": "k"}},
                        {"name": "X-Again", "secretKeyRef": {"name": "api-key", "key": "other"}},
                        {"name": "X-Empty", "secretKeyRef": {"name": " ", "key": "k"}}
                    ]
                }}),
            ),
            endpoint(
                "mtls",
                json!({"spec": {
                    "baseUrl": "https://b.example.com",
                    "clientTLS": {
                        "rootCA": {"secretKeyRef": {"name": "ca", "key": "ca.crt"}},
                        "certificate": {"secretKeyRef": {"name": "tls-client", "key": "tls.crt"}},
                        "privateKey": {"secretKeyRef": {"name": "tls-key", "key": "tls.key"}}
                    }
                }}),
            ),
        ];
        let access = secret_access(&eps);
        assert_eq!(
            access.secrets,
            names(&["api-key", "ca", "tls-client", "tls-key"])
        );
        assert!(access.inline_keys.is_empty());

        // Each TLS document on its own is enough.
        for field in ["rootCA", "certificate", "privateKey"] {
            let ep = endpoint(
                "one",
                json!({"spec": {"baseUrl": "https://x", "clientTLS": {
                    field: {"secretKeyRef": {"name": format!("s-{field}"), "key": "k"}}
                }}}),
            );
            assert_eq!(
                secret_access([&ep]).secrets,
                names(&[&format!("s-{field}")]),
                "{field}"
            );
        }
    }

    #[test]
    fn inline_keys_need_the_endpoint_and_inline_certificates_need_nothing() {
        let eps = [
            endpoint(
                "inline",
                json!({"spec": {"baseUrl": "https://x", "clientTLS": {
                    "rootCA": {"value": "-----BEGIN CERTIFICATE-----"},
                    "certificate": {"value": "-----BEGIN CERTIFICATE-----"},
                    "privateKey": {"value": "-----BEGIN PRIVATE KEY-----"}
                }}}),
            ),
            endpoint(
                "public-only",
                json!({"spec": {"baseUrl": "https://x", "clientTLS": {
                    "rootCA": {"value": "-----BEGIN CERTIFICATE-----"}
                }}}),
            ),
        ];
        let access = secret_access(&eps);
        assert!(access.secrets.is_empty());
        assert_eq!(access.inline_keys, names(&["inline"]));
    }

    #[test]
    fn other_secret_stores_and_deleted_endpoints_grant_no_secret() {
        let vault = endpoint(
            "vault",
            json!({"auth": {"secretStore": "vault"}, "spec": {"baseUrl": "https://x",
                "headers": [{"name": "A", "secretKeyRef": {"name": "in-vault", "key": "k"}}],
                "clientTLS": {"privateKey": {"value": "KEY"}, "certificate": {"value": "C"}}}}),
        );
        let k8s = endpoint(
            "k8s",
            json!({"auth": {"secretStore": " kubernetes "}, "spec": {"baseUrl": "https://x",
                "headers": [{"name": "A", "secretKeyRef": {"name": "tok", "key": "k"}}]}}),
        );
        let mut gone = endpoint(
            "gone",
            json!({"spec": {"baseUrl": "https://x",
                "headers": [{"name": "A", "secretKeyRef": {"name": "old", "key": "k"}}]}}),
        );
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let access = secret_access([&vault, &k8s, &gone]);
        assert_eq!(access.secrets, names(&["tok"]));
        // An inline key is read from the HTTPEndpoint whatever the store.
        assert_eq!(access.inline_keys, names(&["vault"]));
    }

    #[test]
    fn the_role_grants_get_on_exactly_the_names() {
        let access = SecretAccess {
            secrets: names(&["tls-client", "api-key"]),
            inline_keys: names(&["inline"]),
        };
        let accounts = [
            sa("bank", "orders"),
            sa("shop", "cart"),
            sa("shop", "default"),
        ];
        let g =
            namespace_grant("shop", &Names::default(), &accounts, &access, Some(owner())).unwrap();
        assert_eq!(
            serde_json::to_value(&g.role).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {
                    "name": "ferry-sidecar-secrets", "namespace": "shop",
                    "labels": {"app.kubernetes.io/managed-by": "ferry-operator"},
                    "ownerReferences": [{"apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
                        "name": "ferry", "uid": "rt-1", "controller": true}]
                },
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"],
                     "resourceNames": ["api-key", "tls-client"], "verbs": ["get"]},
                    {"apiGroups": ["dapr.io"], "resources": ["httpendpoints"],
                     "resourceNames": ["inline"], "verbs": ["get"]}
                ]
            })
        );
        let b = serde_json::to_value(&g.binding).unwrap();
        assert_eq!(
            b["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-sidecar-secrets"})
        );
        assert_eq!(
            b["subjects"],
            json!([
                {"kind": "ServiceAccount", "name": "cart", "namespace": "shop"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "shop"}
            ]),
            "only the namespace's own accounts"
        );
        assert_eq!(
            b["metadata"],
            serde_json::to_value(&g.role).unwrap()["metadata"]
        );
    }

    /// Every rule of every Role the function can make names what it grants.
    #[test]
    fn no_rule_ever_has_empty_resource_names() {
        let accounts = [sa("shop", "cart")];
        let n = Names::default();
        for (secrets, inline) in [
            (&[][..], &[][..]),
            (&["a"][..], &[][..]),
            (&[][..], &["e"][..]),
            (&["a", "b"][..], &["e"][..]),
        ] {
            let access = SecretAccess {
                secrets: names(secrets),
                inline_keys: names(inline),
            };
            let Some(g) = namespace_grant("shop", &n, &accounts, &access, None) else {
                assert!(access.is_empty());
                continue;
            };
            let rules = g.role.rules.unwrap();
            assert_eq!(
                rules.len(),
                usize::from(!secrets.is_empty()) + usize::from(!inline.is_empty())
            );
            for r in rules {
                let listed = r.resource_names.unwrap_or_default();
                assert!(!listed.is_empty(), "a rule without names grants everything");
                assert_eq!(r.verbs, ["get"]);
            }
        }
    }

    #[test]
    fn nothing_to_read_or_nobody_to_read_it_means_no_role() {
        let n = Names::default();
        let some = SecretAccess {
            secrets: names(&["a"]),
            inline_keys: BTreeSet::new(),
        };
        assert_eq!(
            namespace_grant(
                "shop",
                &n,
                &[sa("shop", "cart")],
                &SecretAccess::default(),
                None
            ),
            None
        );
        assert_eq!(namespace_grant("shop", &n, &[], &some, None), None);
        assert_eq!(
            namespace_grant("shop", &n, &[sa("bank", "cart")], &some, None),
            None,
            "another namespace's accounts do not count"
        );
    }

    #[test]
    fn the_cluster_binding_lists_every_account_or_goes() {
        let n = Names {
            cluster_role: "role-x".into(),
            binding: "binding-x".into(),
            secrets_role: "unused".into(),
        };
        assert_eq!(cluster_role_binding(&n, &[]), None);
        let crb = cluster_role_binding(&n, &[sa("bank", "orders"), sa("shop", "default")]).unwrap();
        assert_eq!(
            serde_json::to_value(&crb).unwrap(),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "binding-x",
                             "labels": {"app.kubernetes.io/managed-by": "ferry-operator"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "role-x"},
                "subjects": [
                    {"kind": "ServiceAccount", "name": "orders", "namespace": "bank"},
                    {"kind": "ServiceAccount", "name": "default", "namespace": "shop"}
                ]
            })
        );
    }

    #[test]
    fn up_to_date_reads_what_matters() {
        let n = Names::default();
        let access = SecretAccess {
            secrets: names(&["a"]),
            inline_keys: BTreeSet::new(),
        };
        let g = namespace_grant("shop", &n, &[sa("shop", "cart")], &access, Some(owner())).unwrap();
        // As the API server returns it: apiGroup filled in, metadata of its own.
        let mut live = g.clone();
        live.binding.subjects.as_mut().unwrap()[0].api_group = Some(String::new());
        live.binding.metadata.resource_version = Some("7".into());
        live.role
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        assert!(live.role.up_to_date(&g.role));
        assert!(live.binding.up_to_date(&g.binding));

        // A secret more, an account more, no owner yet, not ours, another role: all stale.
        let more = SecretAccess {
            secrets: names(&["a", "b"]),
            inline_keys: BTreeSet::new(),
        };
        let g2 = namespace_grant("shop", &n, &[sa("shop", "cart")], &more, Some(owner())).unwrap();
        assert!(!live.role.up_to_date(&g2.role));
        let g3 = namespace_grant(
            "shop",
            &n,
            &[sa("shop", "cart"), sa("shop", "pay")],
            &access,
            Some(owner()),
        )
        .unwrap();
        assert!(!live.binding.up_to_date(&g3.binding));
        let mut orphan = live.clone();
        orphan.role.metadata.owner_references = None;
        assert!(!orphan.role.up_to_date(&g.role));
        let mut theirs = live.clone();
        theirs.role.metadata.labels = None;
        assert!(!theirs.role.up_to_date(&g.role));
        assert!(!is_ours(&theirs.role.metadata));
        let mut elsewhere = live.binding.clone();
        elsewhere.role_ref.name = "admin".into();
        assert!(!elsewhere.up_to_date(&g.binding));
        assert!(elsewhere.other_role(&g.binding));

        let crb = cluster_role_binding(&n, &[sa("shop", "cart")]).unwrap();
        let mut live_crb = crb.clone();
        live_crb.subjects.as_mut().unwrap()[0].api_group = Some(String::new());
        assert!(live_crb.up_to_date(&crb));
        let bigger = cluster_role_binding(&n, &[sa("shop", "cart"), sa("x", "y")]).unwrap();
        assert!(!live_crb.up_to_date(&bigger));
    }

    #[test]
    fn steps_apply_replace_delete_and_leave_others_alone() {
        let n = Names::default();
        let want = cluster_role_binding(&n, &[sa("shop", "cart")]).unwrap();
        let stale = cluster_role_binding(&n, &[sa("shop", "old")]).unwrap();
        let mut theirs = want.clone();
        theirs.metadata.labels = None;
        let mut other_role = want.clone();
        other_role.role_ref.name = "cluster-admin".into();
        let mut going = want.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));

        assert_eq!(step(None, Some(&want)), Step::Apply);
        assert_eq!(step(Some(&want), Some(&want)), Step::Keep);
        assert_eq!(step(Some(&stale), Some(&want)), Step::Apply);
        assert_eq!(step(Some(&theirs), Some(&want)), Step::Apply, "taken over");
        assert_eq!(step(Some(&other_role), Some(&want)), Step::Replace);
        assert_eq!(step(Some(&going), Some(&want)), Step::Wait);

        // Nothing to grant: ours goes, someone else's stays.
        assert_eq!(step(Some(&stale), None), Step::Delete);
        assert_eq!(step(Some(&theirs), None), Step::Keep);
        assert_eq!(step(Some(&going), None), Step::Keep);
        assert_eq!(step::<ClusterRoleBinding>(None, None), Step::Keep);

        // A Role has no roleRef to differ.
        let g = namespace_grant(
            "shop",
            &n,
            &[sa("shop", "cart")],
            &SecretAccess {
                secrets: names(&["a"]),
                inline_keys: BTreeSet::new(),
            },
            None,
        )
        .unwrap();
        assert_eq!(step(Some(&g.role), Some(&g.role)), Step::Keep);
        assert_eq!(step(Some(&g.role), None), Step::Delete);
    }
}
