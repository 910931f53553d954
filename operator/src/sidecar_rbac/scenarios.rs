//! Scenarios against a stand-in API server (`crate::fixtures`): the exact writes of one
//! reconcile, and what it makes of answers a real API server gives only under races.

use std::{sync::Arc, time::Duration};

use ferry_api::{HttpEndpoint, RoutingTable};
use http::StatusCode;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    CLUSTER, Error, Names, SECRETS, State, reconcile, reconcile_cluster_binding,
    run_cluster_binding,
};
use crate::{
    context::{Context, RESYNC, error_policy},
    fixtures::{self, ApiServerVerifier, Caches, Call, Reply, conflict, counter, fill, not_found},
};

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

fn context() -> (Arc<Context<State>>, Caches, ApiServerVerifier) {
    fixtures::context(|_| State {
        names: Names::default(),
    })
}

fn shop() -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
}

fn pod(ns: &str, name: &str, account: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"dapr.io/app-id": name}},
        "spec": {"serviceAccountName": account, "containers": []},
    }))
    .unwrap()
}

/// The caches of a namespace `shop` whose app runs as `cart` and whose HTTPEndpoint names the
/// Secret `api-key`, with its RoutingTable.
fn shop_caches(caches: &mut Caches) {
    fill(&mut caches.pods, [pod("shop", "cart-1", "cart")]);
    let ep: HttpEndpoint = serde_json::from_value(json!({
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"baseUrl": "https://x", "headers": [
            {"name": "A", "secretKeyRef": {"name": "api-key", "key": "k"}}]}
    }))
    .unwrap();
    fill(&mut caches.endpoints, [ep]);
    let table: RoutingTable = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": "shop", "uid": "rt-1"},
        "spec": {}
    }))
    .unwrap();
    fill(&mut caches.tables, [table]);
}

/// The metadata of the namespace's Role and RoleBinding: ours, owned by the RoutingTable.
fn meta() -> Value {
    json!({
        "name": "ferry-sidecar-secrets", "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "ferry-operator"},
        "ownerReferences": [{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
            "name": "ferry", "uid": "rt-1", "controller": true,
        }],
    })
}

/// The Role applied: `get` on exactly the Secret the HTTPEndpoint names.
fn role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(),
        "rules": [{
            "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["api-key"],
            "verbs": ["get"],
        }],
    })
}

/// The RoleBinding applied: the Role, to the namespace's sidecar ServiceAccount.
fn role_binding() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
            "name": "ferry-sidecar-secrets",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "cart", "namespace": "shop"}],
    })
}

fn errors(controller: &str, reason: &str) -> String {
    format!(
        r#"ferry_operator_reconcile_errors_total{{controller="{controller}",reason="{reason}"}}"#
    )
}

/// A RoleBinding of the name that binds another role cannot be changed (`roleRef` is fixed):
/// it is deleted by uid and applied anew, after the Role. A 409 on the delete (someone made it
/// anew meanwhile) is not an error: the apply takes it over.
#[tokio::test]
async fn scenario_a_binding_to_another_role_is_replaced_even_when_its_delete_meets_a_409() {
    let (ctx, mut caches, mut api) = context();
    shop_caches(&mut caches);
    let theirs: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "ferry-sidecar-secrets", "namespace": "shop", "uid": "uid-rb"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "cart", "namespace": "shop"}],
    }))
    .unwrap();
    fill(&mut caches.sidecar_role_bindings, [theirs]);

    let roles = format!("{RBAC}/namespaces/shop/roles");
    let bindings = format!("{RBAC}/namespaces/shop/rolebindings");
    let calls = vec![
        Call::apply(&format!("{roles}/ferry-sidecar-secrets"), role()),
        Call::delete(&format!("{bindings}/ferry-sidecar-secrets"), "uid-rb").answer(conflict()),
        Call::apply(&format!("{bindings}/ferry-sidecar-secrets"), role_binding()),
    ];
    let action = api.run(calls, reconcile(shop(), ctx.clone())).await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
}

/// The API server refuses a Role that grants what the operator does not hold itself (403,
/// privilege escalation): the reconcile stops there, so no binding points at a Role that is
/// not what it should be, and the error is retried with backoff.
#[tokio::test]
async fn scenario_a_refused_role_stops_before_the_binding() {
    let (ctx, mut caches, mut api) = context();
    shop_caches(&mut caches);

    let forbidden = Reply::Failure(StatusCode::FORBIDDEN, "Forbidden");
    let calls = vec![
        Call::apply(
            &format!("{RBAC}/namespaces/shop/roles/ferry-sidecar-secrets"),
            role(),
        )
        .answer(forbidden),
    ];
    let error = api
        .run(calls, reconcile(shop(), ctx.clone()))
        .await
        .unwrap_err();

    assert!(
        matches!(
            &error,
            Error::Apply { kind: "Role", name, .. } if name == "shop/ferry-sidecar-secrets"
        ),
        "{error}"
    );
    assert_eq!(
        error_policy(SECRETS)(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        counter(&ctx.metrics, &errors("sidecar_secrets", "apply")),
        1
    );
}

/// With nothing left to grant, the RoleBinding goes before the Role, so that no binding is
/// ever left pointing at nothing; each delete is by uid, and a 404 (gone already) is done.
#[tokio::test]
async fn scenario_nothing_left_to_grant_deletes_the_binding_then_the_role() {
    let (ctx, mut caches, mut api) = context();
    fill(&mut caches.pods, [pod("shop", "cart-1", "cart")]);
    let mut role: Role = serde_json::from_value(role()).unwrap();
    role.metadata.uid = Some("uid-role".into());
    let mut binding: RoleBinding = serde_json::from_value(role_binding()).unwrap();
    binding.metadata.uid = Some("uid-rb".into());
    fill(&mut caches.sidecar_roles, [role.clone()]);
    fill(&mut caches.sidecar_role_bindings, [binding]);

    let calls = vec![
        Call::delete(
            &format!("{RBAC}/namespaces/shop/rolebindings/ferry-sidecar-secrets"),
            "uid-rb",
        )
        .answer(not_found()),
        Call::delete(
            &format!("{RBAC}/namespaces/shop/roles/ferry-sidecar-secrets"),
            "uid-role",
        )
        .answer(Reply::Object(serde_json::to_value(role).unwrap())),
    ];
    let action = api.run(calls, reconcile(shop(), ctx.clone())).await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
}

/// The ClusterRoleBinding's loop: an apply refused by the API server is counted and tried again
/// after the backoff (1 s), and a wake-up from the caches reconciles again at once.
#[tokio::test(start_paused = true)]
async fn scenario_the_cluster_binding_is_retried_after_a_failure_and_on_a_wake_up() {
    let (ctx, mut caches, mut api) = context();
    fill(
        &mut caches.pods,
        [
            pod("shop", "cart-1", "cart"),
            pod("bank", "orders-1", "orders"),
        ],
    );
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {
            "name": "ferry-sidecar",
            "labels": {"app.kubernetes.io/managed-by": "ferry-operator"},
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "ferry-sidecar",
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "orders", "namespace": "bank"},
            {"kind": "ServiceAccount", "name": "cart", "namespace": "shop"},
        ],
    });
    let path = format!("{RBAC}/clusterrolebindings/ferry-sidecar");
    let refused = Reply::Failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    // A change in a cache while the loop is busy: it wakes the loop once it waits again.
    let wake = Arc::new(Notify::new());
    wake.notify_one();

    let calls = vec![
        Call::apply(&path, binding.clone()).answer(refused),
        Call::apply(&path, binding.clone()),
        Call::apply(&path, binding),
    ];
    let quiet = Duration::from_secs(10);
    let at = api
        .run_forever(calls, run_cluster_binding(ctx.clone(), wake), quiet)
        .await;

    assert_eq!(at[1] - at[0], Duration::from_secs(1), "the backoff");
    assert_eq!(at[2] - at[1], Duration::ZERO, "the wake-up");
    let errors = errors("sidecar_cluster_binding", "apply");
    assert_eq!(counter(&ctx.metrics, &errors), 1);
    assert_eq!(
        ctx.backoff.next(CLUSTER, "ferry-sidecar"),
        Duration::from_secs(1),
        "reset"
    );
}

/// No pod runs a sidecar any more: the ClusterRoleBinding of ours goes, by uid; a 404 (gone
/// already) is done.
#[tokio::test]
async fn scenario_the_cluster_binding_goes_with_the_last_sidecar() {
    let (ctx, mut caches, mut api) = context();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {
            "name": "ferry-sidecar", "uid": "uid-crb",
            "labels": {"app.kubernetes.io/managed-by": "ferry-operator"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ferry-sidecar"},
        "subjects": [{"kind": "ServiceAccount", "name": "cart", "namespace": "shop"}],
    }))
    .unwrap();
    fill(&mut caches.sidecar_binding, [binding]);

    let calls = vec![
        Call::delete(
            &format!("{RBAC}/clusterrolebindings/ferry-sidecar"),
            "uid-crb",
        )
        .answer(not_found()),
    ];
    let done = api.run(calls, reconcile_cluster_binding(&ctx)).await;

    assert!(done.is_ok(), "{done:?}");
}
