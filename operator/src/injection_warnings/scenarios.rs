//! Scenarios against a stand-in API server (`crate::fixtures`): the exact Event of one
//! reconcile, that a pod is reported once, and what a 409 or a 500 make of it.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::{controller::Action, reflector::store::Writer, watcher};
use serde_json::{Value, json};

use super::{CONTROLLER, Error, State, reconcile};
use crate::{
    apps::fixtures::{annotated, pod},
    context::{Context, RESYNC, error_policy},
    fixtures::{self, ApiServerVerifier, Caches, Call, NOW, Reply, conflict, counter, fill},
};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const WARNINGS: &str = "annotation dapr.io/id is Dapr's pre-1.0 name of dapr.io/app-id: read as dapr.io/app-id; rename it\nannotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it";

fn shop() -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
}

fn context() -> (Arc<Context<State>>, Caches, ApiServerVerifier) {
    fixtures::context(|_| State::new(fixtures::INSTANCE.to_owned()))
}

/// A pod of app cart that the injector warned about.
fn warned(name: &str) -> Pod {
    annotated(
        pod("shop", name, "cart", 1),
        &[
            ("dapr.io/id", "cart"),
            ("ferry.dev/injection-warnings", WARNINGS),
        ],
    )
}

/// The Event for [`warned`] pod `name`.
fn event(name: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": format!("{name}.uid-{name}"), "namespace": "shop"},
        "eventTime": NOW,
        "type": "Warning", "reason": "InjectionWarnings", "action": "Inject",
        "note": WARNINGS.replace('\n', "; "),
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "reportingController": "ferry-operator", "reportingInstance": fixtures::INSTANCE,
    })
}

fn create(name: &str) -> Call {
    Call::create(EVENTS, event(name)).now_at(&["/eventTime"])
}

fn reports() -> String {
    r#"ferry_operator_reports_total{controller="injection_warnings",reason="InjectionWarnings"}"#
        .to_owned()
}

fn delete(cache: &mut Writer<Pod>, pod: Pod) {
    cache.apply_watcher_event(&watcher::Event::Delete(pod));
}

/// One Event per warned pod, none for the others, and none again for a pod already reported.
#[tokio::test]
async fn scenario_a_warned_pod_gets_one_event_once() {
    let (ctx, mut caches, mut api) = context();
    fill(
        &mut caches.pods,
        [warned("cart-1"), pod("shop", "quiet-1", "quiet", 1)],
    );
    let action = api
        .run(vec![create("cart-1")], reconcile(shop(), ctx.clone()))
        .await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &reports()), 1);

    // The pod changes (its status, a label): nothing more to say.
    let action = api.run(vec![], reconcile(shop(), ctx.clone())).await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &reports()), 1);

    // The pod goes; another of the same name (a StatefulSet's) is another pod.
    delete(&mut caches.pods, warned("cart-1"));
    api.run(vec![], reconcile(shop(), ctx.clone()))
        .await
        .unwrap();
    assert!(
        ctx.state.reported.lock().unwrap().is_empty(),
        "a pod that is gone is forgotten"
    );
    let mut again = warned("cart-1");
    again.metadata.uid = Some("uid-cart-1b".into());
    fill(&mut caches.pods, [again]);
    let mut second = event("cart-1");
    second["metadata"]["name"] = json!("cart-1.uid-cart-1b");
    second["regarding"]["uid"] = json!("uid-cart-1b");
    api.run(
        vec![Call::create(EVENTS, second).now_at(&["/eventTime"])],
        reconcile(shop(), ctx.clone()),
    )
    .await
    .unwrap();
}

/// After a restart (or from another replica) the Event exists already: the create meets a 409,
/// which counts as reported, without a second Event and without an error.
#[tokio::test]
async fn scenario_an_event_that_exists_already_is_not_made_again() {
    let (ctx, mut caches, mut api) = context();
    fill(&mut caches.pods, [warned("cart-1")]);
    let action = api
        .run(
            vec![create("cart-1").answer(conflict())],
            reconcile(shop(), ctx.clone()),
        )
        .await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &reports()), 0, "not published by us");
    api.run(vec![], reconcile(shop(), ctx.clone()))
        .await
        .unwrap();
}

/// A failed create fails the reconcile, backs off by namespace, and is tried again; the other
/// pods are reported meanwhile.
#[tokio::test]
async fn scenario_a_failed_event_is_retried() {
    let (ctx, mut caches, mut api) = context();
    fill(&mut caches.pods, [warned("cart-1"), warned("cart-2")]);
    let calls = vec![
        create("cart-1").answer(Reply::Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
        )),
        create("cart-2"),
    ];
    let error = api
        .run(calls, reconcile(shop(), ctx.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Create { namespace, pod, .. } if namespace == "shop" && pod == "cart-1"),
        "{error}"
    );
    assert_eq!(
        error_policy(CONTROLLER)(shop(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    let errors = r#"ferry_operator_reconcile_errors_total{controller="injection_warnings",reason="create_event"}"#;
    assert_eq!(counter(&ctx.metrics, errors), 1);
    let action = api
        .run(vec![create("cart-1")], reconcile(shop(), ctx.clone()))
        .await;
    assert_eq!(action.unwrap(), Action::requeue(RESYNC));
    assert_eq!(counter(&ctx.metrics, &reports()), 2);
}
