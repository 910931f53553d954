//! Scenarios against a stand-in API server (`crate::fixtures`): the exact writes of one
//! reconcile, and what it makes of answers a real API server gives only under races.

use std::{sync::Arc, time::Duration};

use ferry_api::RoutingTable;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{CONTROLLER, Error, State, reconcile, tests::ours};
use crate::{
    apps::fixtures::pod,
    context::{Context, RESYNC, error_policy},
    fixtures::{self, ApiServerVerifier, Caches, Call, Reply, conflict, counter, fill, not_found},
};

const SERVICES: &str = "/api/v1/namespaces/shop/services";

fn shop() -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
}

fn context(grace: Duration) -> (Arc<Context<State>>, Caches, ApiServerVerifier) {
    fixtures::context(|client| State::new(grace, fixtures::reporter(client, CONTROLLER)))
}

/// The namespace's RoutingTable, as the cache holds it.
fn table() -> RoutingTable {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": "shop", "uid": "rt-1"},
        "spec": {}
    }))
    .unwrap()
}

/// The Service applied for `app`: headless, Dapr's four ports, selector and annotations, our
/// label, and (with a table) owned by the RoutingTable.
fn applied(app: &str, owned: bool) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": format!("{app}-dapr"), "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "ferry-operator", "dapr.io/enabled": "true"},
            "annotations": {
                "dapr.io/app-id": app,
                "prometheus.io/path": "/", "prometheus.io/port": "9090",
                "prometheus.io/probe": "true", "prometheus.io/scrape": "true",
            },
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"dapr.io/app-id": app},
            "ports": [
                {"name": "dapr-http", "port": 80, "targetPort": 3500, "protocol": "TCP", "appProtocol": "http"},
                {"name": "dapr-grpc", "port": 50001, "targetPort": 50001, "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "dapr-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    });
    if owned {
        s["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
            "name": "ferry", "uid": "rt-1", "controller": true,
        }]);
    }
    s
}

fn errors(reason: &str) -> String {
    format!(
        r#"ferry_operator_reconcile_errors_total{{controller="app_service",reason="{reason}"}}"#
    )
}

/// A Service of ours deleted after its grace period may meanwhile have been replaced by another
/// of the name (the uid precondition fails: 409) or be gone already (404): neither is an error.
#[tokio::test]
async fn scenario_an_orphan_replaced_or_gone_meanwhile_is_not_an_error() {
    let (ctx, mut caches, mut api) = context(Duration::ZERO);
    fill(&mut caches.pods, [pod("shop", "cart-1", "cart", 1)]);
    fill(&mut caches.services, [ours("pay"), ours("ship")]);
    fill(&mut caches.tables, [table()]);

    let calls = vec![
        Call::apply(&format!("{SERVICES}/cart-dapr"), applied("cart", true)),
        Call::delete(&format!("{SERVICES}/pay-dapr"), "uid-pay").answer(conflict()),
        Call::delete(&format!("{SERVICES}/ship-dapr"), "uid-ship").answer(not_found()),
    ];
    let action = api.run(calls, reconcile(shop(), ctx.clone())).await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &errors("delete")), 0);
}

/// A refused write does not stop the others; the reconcile fails with the first, which is
/// counted by its step and retried with the namespace's backoff until a reconcile succeeds.
#[tokio::test]
async fn scenario_a_refused_write_leaves_the_others_done_and_is_retried_with_backoff() {
    let (ctx, mut caches, mut api) = context(Duration::ZERO);
    fill(
        &mut caches.pods,
        [
            pod("shop", "cart-1", "cart", 1),
            pod("shop", "pay-1", "pay", 1),
        ],
    );
    fill(&mut caches.services, [ours("ship")]);
    let refused = || Reply::Failure(http::StatusCode::INTERNAL_SERVER_ERROR, "InternalError");

    let calls = vec![
        Call::apply(&format!("{SERVICES}/cart-dapr"), applied("cart", false)).answer(refused()),
        Call::apply(&format!("{SERVICES}/pay-dapr"), applied("pay", false)),
        Call::delete(&format!("{SERVICES}/ship-dapr"), "uid-ship").answer(refused()),
    ];
    let error = api
        .run(calls, reconcile(shop(), ctx.clone()))
        .await
        .unwrap_err();

    assert!(
        matches!(
            &error,
            Error::Apply { namespace, name, .. } if namespace == "shop" && name == "cart-dapr"
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("cannot apply Service shop/cart-dapr: "),
        "{error}"
    );
    let policy = error_policy(CONTROLLER);
    assert_eq!(
        policy(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        policy(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(counter(&ctx.metrics, &errors("apply")), 2);
    assert_eq!(counter(&ctx.metrics, &errors("delete")), 0);

    // The retry: every write goes through, and the backoff starts again from 1 s.
    let calls = vec![
        Call::apply(&format!("{SERVICES}/cart-dapr"), applied("cart", false)),
        Call::apply(&format!("{SERVICES}/pay-dapr"), applied("pay", false)),
        Call::delete(&format!("{SERVICES}/ship-dapr"), "uid-ship")
            .answer(Reply::Object(serde_json::to_value(ours("ship")).unwrap())),
    ];
    let action = api.run(calls, reconcile(shop(), ctx.clone())).await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(
        policy(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
}
