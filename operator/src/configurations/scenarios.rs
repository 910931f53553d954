//! Scenarios against a stand-in API server (`crate::fixtures`): the exact writes of one
//! reconcile of a Configuration.

use std::sync::Arc;

use ferry_api::Configuration;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{CONTROLLER, State, reconcile};
use crate::{
    context::{Context, RESYNC},
    fixtures::{self, ApiServerVerifier, Caches, Call, NOW, Reply, counter},
};

const CONFIG: &str = "/apis/dapr.io/v1alpha1/namespaces/shop/configurations/appconfig";
const MESSAGE: &str = r#"invalid access control spec: spec.accessControl.policies[0] (appId "checkout"): namespace is missing; set it to the calling app's namespace (default in standalone mode); spec.accessControl.policies[0].operations[0].httpVerb[0]: "get" is not a verb Dapr matches; use one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (upper-case) or *; sidecars that name this Configuration keep their last good policy"#;

fn context() -> (Arc<Context<State>>, Caches, ApiServerVerifier) {
    fixtures::context(|client| State {
        reporter: fixtures::reporter(client, CONTROLLER),
    })
}

fn invalid() -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
        "metadata": {"name": "appconfig", "namespace": "shop", "uid": "uid-c", "generation": 3},
        "spec": {
            "tracing": {"samplingRate": "1"},
            "accessControl": {
                "defaultAction": "deny",
                "policies": [{
                    "appId": "checkout", "trustDomain": "public",
                    "operations": [{"name": "/orders", "httpVerb": ["get"], "action": "allow"}],
                }],
            },
        },
    })
}

fn status() -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
        "metadata": {"name": "appconfig"},
        "status": {
            "observedGeneration": 3,
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidAccessControl",
                "message": MESSAGE, "observedGeneration": 3, "lastTransitionTime": NOW,
            }],
        },
    })
}

/// A new verdict: the status first, then one Warning Event on the Configuration saying the same.
#[tokio::test]
async fn scenario_an_invalid_configuration_gets_its_status_then_one_warning() {
    let (ctx, _, mut api) = context();
    let mut stored = invalid();
    stored["status"] = status()["status"].clone();
    stored["status"]["conditions"][0]["lastTransitionTime"] = json!("2025-01-01T00:00:00Z");
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "appconfig.<generated>", "namespace": "shop"},
        "eventTime": NOW,
        "type": "Warning", "reason": "InvalidAccessControl", "note": MESSAGE, "action": "Validate",
        "regarding": {
            "apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
            "name": "appconfig", "namespace": "shop", "uid": "uid-c",
        },
        "reportingController": "ferry-operator", "reportingInstance": fixtures::INSTANCE,
    });
    let calls = vec![
        Call::apply(&format!("{CONFIG}/status"), status())
            .now_at(&["/status/conditions/0/lastTransitionTime"])
            .answer(Reply::Object(stored)),
        Call::create("/apis/events.k8s.io/v1/namespaces/shop/events", event)
            .now_at(&["/eventTime"])
            .generated_at("/metadata/name", "appconfig."),
    ];
    let c: Arc<Configuration> = Arc::new(serde_json::from_value(invalid()).unwrap());
    let action = api.run(calls, reconcile(c, ctx.clone())).await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    let reports =
        r#"ferry_operator_reports_total{controller="configuration",reason="InvalidAccessControl"}"#;
    assert_eq!(counter(&ctx.metrics, reports), 1);
}

/// A status that already says the same for this generation: no write at all.
#[tokio::test]
async fn scenario_a_current_status_is_left_alone() {
    let (ctx, _, mut api) = context();
    let mut stored = invalid();
    stored["status"] = status()["status"].clone();
    stored["status"]["conditions"][0]["lastTransitionTime"] = json!("2025-01-01T00:00:00Z");
    let c: Arc<Configuration> = Arc::new(serde_json::from_value(stored).unwrap());
    let action = api.run(vec![], reconcile(c, ctx.clone())).await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
}
