//! Scenarios against a stand-in API server (`crate::fixtures`): the exact writes of one
//! reconcile, and what it makes of answers a real API server gives only under races.

use std::{sync::Arc, time::Duration};

use ferry_api::HttpEndpoint;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{CONTROLLER, Error, State, reconcile};
use crate::{
    context::{Context, RESYNC, error_policy},
    fixtures::{self, ApiServerVerifier, Caches, Call, NOW, Reply, counter, not_found},
};

const ENDPOINT: &str = "/apis/dapr.io/v1alpha1/namespaces/shop/httpendpoints/ext";
const MESSAGE: &str =
    "spec.baseUrl \"ftp://api.example.com\" must be an absolute http:// or https:// URL";

fn context() -> (Arc<Context<State>>, Caches, ApiServerVerifier) {
    fixtures::context(|client| State {
        reporter: fixtures::reporter(client, CONTROLLER),
    })
}

/// An HTTPEndpoint at generation 2 whose base URL is not http(s), as the controller's cache
/// holds it.
fn invalid() -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
        "metadata": {"name": "ext", "namespace": "shop", "uid": "uid-ext", "generation": 2},
        "spec": {"baseUrl": "ftp://api.example.com"}
    })
}

fn endpoint(v: Value) -> Arc<HttpEndpoint> {
    Arc::new(serde_json::from_value(v).unwrap())
}

/// The status applied for [`invalid`]: `Ready` False for generation 2.
fn status() -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
        "metadata": {"name": "ext"},
        "status": {
            "observedGeneration": 2,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidBaseURL",
                "message": MESSAGE, "observedGeneration": 2, "lastTransitionTime": NOW,
            }],
        },
    })
}

fn errors(reason: &str) -> String {
    format!(
        r#"ferry_operator_reconcile_errors_total{{controller="http_endpoint",reason="{reason}"}}"#
    )
}

/// A new verdict: the status first, then one Event on the HTTPEndpoint saying the same.
#[tokio::test]
async fn scenario_an_invalid_endpoint_gets_its_status_then_one_warning() {
    let (ctx, _, mut api) = context();
    let mut stored = invalid();
    stored["status"] = status()["status"].clone();
    stored["status"]["conditions"][0]["lastTransitionTime"] = json!("2025-01-01T00:00:00Z");
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "ext.<generated>", "namespace": "shop"},
        "eventTime": NOW,
        "type": "Warning", "reason": "InvalidBaseURL", "note": MESSAGE, "action": "Validate",
        "regarding": {
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "name": "ext", "namespace": "shop", "uid": "uid-ext",
        },
        "reportingController": "ferry-operator", "reportingInstance": fixtures::INSTANCE,
    });
    let calls = vec![
        Call::apply(&format!("{ENDPOINT}/status"), status())
            .now_at(&["/status/conditions/0/lastTransitionTime"])
            .answer(Reply::Object(stored)),
        Call::create("/apis/events.k8s.io/v1/namespaces/shop/events", event)
            .now_at(&["/eventTime"])
            .generated_at("/metadata/name", "ext."),
    ];
    let action = api
        .run(calls, reconcile(endpoint(invalid()), ctx.clone()))
        .await;

    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    let reports =
        r#"ferry_operator_reports_total{controller="http_endpoint",reason="InvalidBaseURL"}"#;
    assert_eq!(counter(&ctx.metrics, reports), 1);
}

/// The HTTPEndpoint is deleted before its status is written: the write meets a 404, the
/// reconcile fails as a `status` error, no Event is published, and the retry backs off by the
/// endpoint's `namespace/name`.
#[tokio::test]
async fn scenario_an_endpoint_deleted_mid_reconcile_gets_no_event() {
    let (ctx, _, mut api) = context();
    let calls = vec![
        Call::apply(&format!("{ENDPOINT}/status"), status())
            .now_at(&["/status/conditions/0/lastTransitionTime"])
            .answer(not_found()),
    ];
    let ep = endpoint(invalid());
    let error = api
        .run(calls, reconcile(ep.clone(), ctx.clone()))
        .await
        .unwrap_err();

    assert!(
        matches!(
            &error,
            Error::Status { namespace, name, .. } if namespace == "shop" && name == "ext"
        ),
        "{error}"
    );
    assert_eq!(
        error_policy(CONTROLLER)(ep, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(counter(&ctx.metrics, &errors("status")), 1);
    assert_eq!(
        ctx.backoff.next(CONTROLLER, "shop/ext"),
        Duration::from_secs(2),
        "the backoff key"
    );
}
