//! The invoke API's forms and answers: URL form, header form, basic auth, targets, verbs,
//! query strings, the sidecar's own errors and the app's answers passing through.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_reaches_the_app() {
    let p = Pair::start("verbs").await;
    for verb in [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
    ] {
        let body = if matches!(verb, "POST" | "PUT" | "PATCH") {
            "payload"
        } else {
            ""
        };
        let r = call(verb, &p.a.url("/v1.0/invoke/b/method/verbs/x"), &[], body).await;
        assert_eq!(r.status, 200, "{verb}: {}", r.text());
        // HEAD has no body to echo: look at what the app recorded instead.
        let seen = p.app.requests().pop().expect("the app saw the request");
        assert_eq!(seen.method(), verb);
        assert_eq!(seen.path(), "/verbs/x");
        assert_eq!(seen.body(), body, "{verb}");
        if verb == "HEAD" {
            assert!(r.body.is_empty(), "HEAD answered with a body");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_form_paths_reach_the_right_method() {
    let p = Pair::start("paths").await;
    for (path, want) in [
        ("/v1.0/invoke/b/method/a/b/c", "/a/b/c"),
        ("/v1.0////invoke/b/method/foo", "/foo"),
        ("/v1.0//invoke//b/method//foo", "/foo"),
        ("/v1.0/invoke/b/method/", "/"),
        ("/v1.0/invoke/b/method/method/x", "/method/x"),
        ("/v1.0/invoke/b.default/method/namespaced", "/namespaced"),
    ] {
        let e = get(&p.a.url(path)).await.echo();
        assert_eq!(e.path(), want, "{path}");
        assert_eq!(e.app(), "b-app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_string_is_forwarded_verbatim() {
    let p = Pair::start("query").await;
    let q = "a=1&a=2&b=%20x+y&c=%2F%3F&empty=&flag";
    let e = get(&p.a.url(&format!("/v1.0/invoke/b/method/q?{q}")))
        .await
        .echo();
    assert_eq!(e.path(), format!("/q?{q}"));
    // Also on self-invocation.
    let e = get(&p.b.url(&format!("/v1.0/invoke/b/method/q?{q}")))
        .await
        .echo();
    assert_eq!(e.path(), format!("/q?{q}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_form_works_on_any_path_and_is_not_forwarded() {
    let p = Pair::start("header-form").await;
    let r = call(
        "POST",
        &p.a.url("/orders/42/items?x=1&x=2"),
        &[("Dapr-App-Id", "b")],
        "order",
    )
    .await;
    assert!(!r.headers.contains_key("dapr-app-id"), "echoed back: {r:?}");
    let e = r.echo();
    assert_eq!(e.path(), "/orders/42/items?x=1&x=2");
    assert_eq!(e.method(), "POST");
    assert_eq!(e.body(), "order");
    assert!(!e.has("dapr-app-id"), "delivered to the app: {:?}", e.0);
    assert_eq!(e.header("dapr-callee-app-id").as_deref(), Some("b"));
    // The header wins over the path: this goes to b's /v1.0/invoke/nope/method/x.
    let e = call(
        "GET",
        &p.a.url("/v1.0/invoke/nope/method/x"),
        &[("dapr-app-id", "b")],
        "",
    )
    .await
    .echo();
    assert_eq!(e.path(), "/v1.0/invoke/nope/method/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_form_forwards_the_authorization_header() {
    let p = Pair::start("basic-auth").await;
    let url = format!(
        "http://dapr-app-id:b@127.0.0.1:{}/cart/items?id=7",
        p.a.http
    );
    let out = curl(&[&url]).await;
    assert_eq!(out.status, 200, "{out:?}");
    let e = Echo(serde_json::from_str(&out.body).unwrap());
    assert_eq!(e.path(), "/cart/items?id=7");
    // Dapr's quirk, kept for parity: the credentials reach the app.
    let b64 = base64::engine::general_purpose::STANDARD.encode("dapr-app-id:b");
    assert_eq!(e.header("authorization"), Some(format!("Basic {b64}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_invocation_goes_to_the_own_app() {
    let p = Pair::start("self").await;
    let e = get(&p.b.url("/v1.0/invoke/b/method/me")).await.echo();
    assert_eq!(e.path(), "/me");
    assert_eq!(e.header("dapr-caller-app-id").as_deref(), Some("b"));
    assert_eq!(e.header("dapr-callee-app-id").as_deref(), Some("b"));
    assert_eq!(
        e.header("dapr-caller-namespace").as_deref(),
        Some("default")
    );
    for h in ["x-forwarded-for", "x-forwarded-host", "forwarded"] {
        assert!(!e.has(h), "{h} on a local call: {:?}", e.0);
    }
    // `b.default` is self too.
    let e = get(&p.b.url("/v1.0/invoke/b.default/method/me"))
        .await
        .echo();
    assert!(!e.has("forwarded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_target_is_404_with_daprs_exact_body() {
    let p = Pair::start("no-target").await;
    for (path, hint) in [
        (
            "/v1.0/invoke/b",
            "the path names no method after the app ID; call /v1.0/invoke/b/method/<method>",
        ),
        (
            "/v1.0/invoke/b/method",
            "the path names no method after /method/; call /v1.0/invoke/b/method/<method>",
        ),
        (
            "/v1.0/invoke/",
            "the path names no app ID; call /v1.0/invoke/<app-id>/method/<method>",
        ),
        (
            "/v1.0/invoke/b/add",
            "the path has no /method/ after the app ID; call /v1.0/invoke/b/method/add",
        ),
        (
            "/somewhere/else",
            "name the app in the path, /v1.0/invoke/<app-id>/method/somewhere/else, or in a dapr-app-id header",
        ),
    ] {
        let r = get(&p.a.url(path)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), no_target_body(hint), "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(p.app.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_fails_fast_naming_app_and_namespace() {
    let p = Pair::start("unknown").await;
    let t = Instant::now();
    let r = get(&p.a.url("/v1.0/invoke/nope/method/x")).await;
    let msg = r.invoke_error(500);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        msg.starts_with("failed to invoke, id: nope, err: "),
        "{msg}"
    );
    let err = &msg["failed to invoke, id: nope, err: ".len()..];
    assert!(err.contains("nope") && err.contains("default"), "{msg}");
    // In another namespace, the message names that one.
    let msg = get(&p.a.url("/v1.0/invoke/b.prod/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.contains("'prod'"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_id_with_two_dots_is_invalid() {
    let p = Pair::start("dots").await;
    let msg = get(&p.a.url("/v1.0/invoke/a.b.c/method/x"))
        .await
        .invoke_error(500);
    assert_eq!(
        msg,
        "failed to invoke, id: a.b.c, err: invalid app id a.b.c: a target is <app-id>, <app-id>.<namespace>, an HTTPEndpoint name or an http(s):// URL, with at most one '.'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_app_not_listening() {
    let mesh = Mesh::new("not-listening");
    let (_reserved, port) = reserve_port();
    let _b = mesh.sidecar("b").app_port(port).start_unready().await;
    let a = mesh.sidecar("a").start().await;
    let msg = call("POST", &a.url("/v1.0/invoke/b/method/x"), &[], "hi")
        .await
        .invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: b, err: "), "{msg}");
    assert!(msg.contains("error invoking app channel"), "{msg}");
    // Self-invocation on b says the same.
    let msg = get(&_b.url("/v1.0/invoke/b/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.contains("error invoking app channel"), "{msg}");
    a.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_without_app_port() {
    let mesh = Mesh::new("no-app-port");
    let _b = mesh.sidecar("b").start().await;
    let a = mesh.sidecar("a").start().await;
    let msg = get(&a.url("/v1.0/invoke/b/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: b, err: "), "{msg}");
    assert!(msg.contains("app channel is not initialized"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_invocation_without_app_port() {
    let mesh = Mesh::new("self-no-app");
    let a = mesh.sidecar("a").start().await;
    let msg = get(&a.url("/v1.0/invoke/a/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: a, err: "), "{msg}");
    assert!(msg.contains("cannot invoke local endpoint"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_errors_pass_through_unchanged() {
    let p = Pair::start("app-errors").await;
    for code in [400u16, 404, 409, 500, 503, 201, 202] {
        for sc in [&p.a, &p.b] {
            let r = get(&sc.url(&format!("/v1.0/invoke/b/method/status/{code}"))).await;
            assert_eq!(r.status, code);
            assert_eq!(r.text(), format!(r#"{{"app":"b-app","status":{code}}}"#));
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
            assert_eq!(r.header("x-custom"), Some("kept"));
            assert_eq!(
                r.header_all("set-cookie"),
                ["a=1; Path=/", "b=2; HttpOnly"],
                "cookies in order"
            );
            assert!(r.header("ferry-error").is_none(), "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_app_protocol() {
    let mesh = Mesh::new("h2c-app");
    let app = TestApp::start("h2-app").await;
    let _b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--app-protocol", "h2c"])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    let e = call("POST", &a.url("/v1.0/invoke/b/method/h2?x=1"), &[], "body")
        .await
        .echo();
    assert_eq!(e.0["version"], "HTTP/2.0");
    assert_eq!(e.path(), "/h2?x=1");
    assert_eq!(e.body(), "body");
}

/// `--app-protocol https` (and the deprecated `--app-ssl`) reach an app with a self-signed
/// certificate, which Dapr's app channel does not verify either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_app_protocol_accepts_a_self_signed_app() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TestApp::serve(
        "tls-app",
        listener,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
    );
    let mesh = Mesh::new("https-app");
    let _b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--app-protocol", "https"])
        .start()
        .await;
    let _c = mesh
        .sidecar("c")
        .app_port(app.port)
        .args(&["--app-ssl"])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    for target in ["b", "c"] {
        let resp = call(
            "POST",
            &a.url(&format!("/v1.0/invoke/{target}/method/secure?q=1")),
            &[],
            "body",
        )
        .await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let e = resp.echo();
        assert_eq!(e.path(), "/secure?q=1");
        assert_eq!(e.body(), "body");
    }
    // Plain HTTP to a TLS app fails with the app-channel error, not a hang or a crash.
    let _d = mesh.sidecar("d").app_port(app.port).start_unready().await;
    let resp = call("GET", &a.url("/v1.0/invoke/d/method/x"), &[], "").await;
    assert_eq!(resp.status, 500);
    assert!(
        resp.text().contains("error invoking app channel"),
        "{}",
        resp.text()
    );
}
