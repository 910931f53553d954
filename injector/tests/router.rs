//! The webhook and admin routers, called without sockets: every bad request gets its status
//! and a message, good reviews get their answer, and the metrics count both.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use ferry_injector::{
    InjectorConfig,
    bootstrap::BundleState,
    certs::{self, Sans},
    metrics::Metrics,
    server::{self, Admin, MAX_REVIEW_BYTES, Webhook},
    tls::CertStore,
};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn webhook(metrics: &Arc<Metrics>) -> Router {
    server::webhook_router(Arc::new(Webhook {
        config: InjectorConfig::default(),
        metrics: metrics.clone(),
        body_timeout: Duration::from_millis(300),
    }))
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
    let mut b = Request::post("/mutate");
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

fn review(api_version: &str, annotations: Value) -> String {
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "cart", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "cart:1"}]},
            },
        }
    })
    .to_string()
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_message() {
    let metrics = Arc::new(Metrics::default());
    let router = webhook(&metrics);
    let json = Some("application/json");

    let (s, m) = call(&router, post("", json)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("empty"), "{m}");

    let (s, m) = call(
        &router,
        post(review("admission.k8s.io/v1", json!({})), None),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(m.contains("application/json"), "{m}");
    let (s, _) = call(
        &router,
        post(review("admission.k8s.io/v1", json!({})), Some("text/plain")),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Parameters and case do not matter.
    let (s, _) = call(
        &router,
        post(
            review("admission.k8s.io/v1", json!({})),
            Some("Application/JSON; charset=utf-8"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let (s, m) = call(&router, post("{\"apiVersion\":", json)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("not an AdmissionReview"), "{m}");
    let (s, m) = call(
        &router,
        post(review("admission.k8s.io/v2", json!({})), json),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(m.contains("admission.k8s.io/v2"), "{m}");

    let big = vec![b' '; MAX_REVIEW_BYTES + 1];
    let (s, _) = call(&router, post(big, json)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    // A body that never finishes is cut off.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let (s, m) = call(&router, post(Body::from_stream(never), json)).await;
    assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{m}");

    let (s, _) = call(
        &router,
        Request::get("/mutate").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = call(
        &router,
        Request::post("/validate").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let text = metrics.encode();
    for reason in [
        "empty_body",
        "unsupported_media_type",
        "malformed_review",
        "unsupported_version",
        "too_large",
        "body_timeout",
    ] {
        assert!(
            text.contains(&format!(
                "ferry_injector_admissions_total{{decision=\"error\",reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{text}"
        );
    }
}

#[tokio::test]
async fn reviews_are_answered_in_their_own_version() {
    let metrics = Arc::new(Metrics::default());
    let router = webhook(&metrics);
    for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
        let (s, body) = call(
            &router,
            post(
                review(
                    version,
                    json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart"}),
                ),
                Some("application/json"),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let out: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(out["apiVersion"], version);
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "e911857d-c318-11e8-bbad-025000000001"
        );
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert!(
            out["response"]["patch"].is_string(),
            "base64, as the API encodes []byte"
        );
    }
    let (s, body) = call(
        &router,
        post(
            review(
                "admission.k8s.io/v1",
                json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart",
                       "dapr.io/app-protocol": "smtp"}),
            ),
            Some("application/json"),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a denial is an answer, not an HTTP error"
    );
    let out: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(out["response"]["allowed"], false);
    let message = out["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("dapr.io/app-protocol") && message.contains("smtp"),
        "{message}"
    );
    let (_, body) = call(
        &router,
        post(
            review("admission.k8s.io/v1", json!({})),
            Some("application/json"),
        ),
    )
    .await;
    let out: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());

    let text = metrics.encode();
    for line in [
        "ferry_injector_admissions_total{decision=\"inject\",reason=\"patched\"} 2",
        "ferry_injector_admissions_total{decision=\"deny\",reason=\"invalid_annotation\"} 1",
        "ferry_injector_admissions_total{decision=\"skip\",reason=\"not_enabled\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[tokio::test]
async fn readiness_follows_the_certificate_and_the_ca_bundle() {
    let metrics = Arc::new(Metrics::default());
    let store = CertStore::new(metrics.clone());
    let bundle = Arc::new(ArcSwap::from_pointee(BundleState::Pending(
        "MutatingWebhookConfiguration ferry-injector does not exist".into(),
    )));
    let admin = server::admin_router(Admin {
        store: store.clone(),
        bundle: bundle.clone(),
        metrics: metrics.clone(),
    });
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();

    assert_eq!(call(&admin, get("/livez")).await.0, StatusCode::OK);
    let (s, m) = call(&admin, get("/readyz")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(m.contains("no serving certificate"), "{m}");

    let now = time::OffsetDateTime::now_utc();
    let ca = certs::new_ca(now).unwrap();
    let leaf = certs::issue(&ca, &Sans::for_service("inj", "ns", vec![]), now).unwrap();
    store.install(leaf, "files").unwrap();
    let (s, m) = call(&admin, get("/readyz")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(m.contains("does not exist"), "{m}");

    assert_eq!(
        call(&admin, get("/healthz")).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "Dapr's /healthz is readiness"
    );
    bundle.store(Arc::new(BundleState::InPlace));
    assert_eq!(call(&admin, get("/readyz")).await.0, StatusCode::OK);
    assert_eq!(call(&admin, get("/healthz")).await.0, StatusCode::OK);
    let (s, text) = call(&admin, get("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("ferry_injector_ready 1"), "{text}");
    assert!(
        text.contains("ferry_injector_certificate_reloads_total{source=\"files\",result=\"ok\"} 1"),
        "{text}"
    );
}
