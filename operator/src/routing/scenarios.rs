//! Scenarios against a stand-in API server (`crate::fixtures`): the exact writes of one
//! reconcile, and what it makes of answers a real API server gives only under races.

use std::{sync::Arc, time::Duration};

use ferry_api::{HttpEndpoint, RoutingTable};
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{CONTROLLER, Error, desired_for, reconcile, status, table_object};
use crate::{
    apps::fixtures::pod,
    context::{RESYNC, error_policy},
    fixtures::{self, Call, NOW, Reply, conflict, counter, fill, not_found},
};

const TABLE: &str = "/apis/ferry.dev/v1alpha1/namespaces/shop/routingtables/ferry";

fn shop() -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
}

fn endpoint() -> HttpEndpoint {
    serde_json::from_value(json!({
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {"baseUrl": "https://api.example.com", "headers": [
            {"name": "Authorization", "secretKeyRef": {"name": "api-key", "key": "token"}}]}
    }))
    .unwrap()
}

/// The spec for app `cart` and HTTPEndpoint `ext`: the Secret only as a reference.
fn spec() -> Value {
    json!({
        "apps": [{
            "id": "cart", "service": "cart-dapr",
            "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090},
        }],
        "httpEndpoints": [{
            "name": "ext", "baseUrl": "https://api.example.com", "ready": true,
            "headers": [{"name": "Authorization", "secretKeyRef": {"name": "api-key", "key": "token"}}],
        }],
    })
}

fn errors(reason: &str) -> String {
    format!(
        r#"ferry_operator_reconcile_errors_total{{controller="routing_table",reason="{reason}"}}"#
    )
}

/// The table is applied, then deleted (by a user, or its namespace going) before its status is
/// written: the status write meets a 404, which fails the reconcile as a `status` error, retried
/// after the backoff (when the table is made anew).
#[tokio::test]
async fn scenario_a_table_deleted_mid_reconcile_fails_the_status_write() {
    let (ctx, mut caches, mut api) = fixtures::context(|_| ());
    fill(&mut caches.pods, [pod("shop", "cart-1", "cart", 1)]);
    fill(&mut caches.endpoints, [endpoint()]);

    let applied = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": "shop",
                     "labels": {"app.kubernetes.io/managed-by": "ferry-operator"}},
        "spec": spec(),
    });
    let mut stored = applied.clone();
    stored["metadata"]["uid"] = json!("rt-1");
    stored["metadata"]["generation"] = json!(1);
    // For the generation the apply answered with.
    let status = json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry"},
        "status": {
            "observedGeneration": 1, "syncedAt": NOW, "apps": 1, "httpEndpoints": 1,
            "conditions": [
                {"type": "Synced", "status": "True", "reason": "Synced",
                 "message": "1 apps, 1 HTTPEndpoints (0 not ready)",
                 "observedGeneration": 1, "lastTransitionTime": NOW},
                {"type": "AppServices", "status": "True", "reason": "Managed",
                 "message": "every app has its Service",
                 "observedGeneration": 1, "lastTransitionTime": NOW},
            ],
        },
    });
    let calls = vec![
        Call::apply(TABLE, applied).answer(Reply::Object(stored)),
        Call::apply(&format!("{TABLE}/status"), status)
            .now_at(&[
                "/status/syncedAt",
                "/status/conditions/0/lastTransitionTime",
                "/status/conditions/1/lastTransitionTime",
            ])
            .answer(not_found()),
    ];
    let error = api
        .run(calls, reconcile(shop(), ctx.clone()))
        .await
        .unwrap_err();

    assert!(
        matches!(&error, Error::Status { namespace, .. } if namespace == "shop"),
        "{error}"
    );
    assert_eq!(
        error_policy(CONTROLLER)(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(counter(&ctx.metrics, &errors("status")), 1);
    assert_eq!(counter(&ctx.metrics, &errors("apply")), 0);
}

/// With nothing left in the namespace the table is deleted, only the one the cache holds (uid
/// precondition): a 409 says another table of the name replaced it meanwhile, which the next
/// trigger reconciles; not an error.
#[tokio::test]
async fn scenario_a_table_with_nothing_left_is_deleted_by_uid_and_a_409_is_done() {
    let (ctx, mut caches, mut api) = fixtures::context(|_| ());
    let table: RoutingTable = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
        "metadata": {"name": "ferry", "namespace": "shop", "uid": "rt-1",
                     "labels": {"app.kubernetes.io/managed-by": "ferry-operator"}},
        "spec": {}
    }))
    .unwrap();
    fill(&mut caches.tables, [table]);

    let calls = vec![Call::delete(TABLE, "rt-1").answer(conflict())];
    let action = api.run(calls, reconcile(shop(), ctx.clone())).await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &errors("delete")), 0);
}

/// A table whose spec and status already say what they should is not written at all.
#[tokio::test]
async fn scenario_a_current_table_is_not_written() {
    let (ctx, mut caches, mut api) = fixtures::context(|_| ());
    fill(&mut caches.pods, [pod("shop", "cart-1", "cart", 1)]);
    fill(&mut caches.endpoints, [endpoint()]);
    let want = desired_for(&ctx.stores, "shop").unwrap();
    let mut current = table_object("shop", &want);
    current.metadata.generation = Some(3);
    current.status = Some(status(&want, Some(3), None, Timestamp::now()));
    fill(&mut caches.tables, [current]);

    let action = api.run(vec![], reconcile(shop(), ctx.clone())).await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
}
