//! API tokens with real sidecars: `DAPR_API_TOKEN` guards the HTTP API (Dapr's 401, the exact
//! health exemptions), `APP_API_TOKEN` reaches only the sidecar's own app, and no token ever
//! travels to another sidecar's app.

mod common;

use common::*;

const API: &str = "api-s3cret";

/// A verb, a URL and the request's headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

fn assert_401(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.text(), "invalid api token\n", "{what}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_form_needs_the_token_and_only_health_is_exempt() {
    let mesh = Mesh::new("api-token");
    let app = TestApp::start("b-app").await;
    let b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").env("DAPR_API_TOKEN", API).start().await;

    let invoke = a.url("/v1.0/invoke/b/method/orders");
    let basic = format!("http://dapr-app-id:b@127.0.0.1:{}/orders", a.http);
    let refused: Vec<Case> = vec![
        ("POST", invoke.clone(), vec![]),
        ("POST", invoke.clone(), vec![("dapr-api-token", "wrong")]),
        (
            "POST",
            invoke.clone(),
            vec![("dapr-api-token", "api-s3cre")],
        ),
        (
            "POST",
            invoke.clone(),
            vec![("dapr-api-token", "api-s3cret2")],
        ),
        ("POST", invoke.clone(), vec![("dapr-api-token", "")]),
        ("GET", a.url("/orders"), vec![("dapr-app-id", "b")]),
        ("GET", a.url("/v1.0/metadata"), vec![]),
        ("PUT", a.url("/v1.0/metadata/k"), vec![]),
        // Only GET of the exact health paths is exempt (CVE-2023-37918: no prefix matching).
        ("POST", a.url("/v1.0/healthz"), vec![]),
        ("GET", a.url("/v1.0/healthzz"), vec![]),
        ("GET", a.url("/v1.0/healthz/x"), vec![]),
        ("GET", a.url("/v1.0/healthz/outbound/x"), vec![]),
        (
            "GET",
            a.url("/v1.0/healthz/../invoke/b/method/orders"),
            vec![],
        ),
        (
            "GET",
            a.url("/v1.0/healthz/%2e%2e/invoke/b/method/orders"),
            vec![],
        ),
        ("GET", a.url("/v1.0/invoke/b/method/v1.0/healthz"), vec![]),
    ];
    for (verb, url, headers) in &refused {
        let r = call(verb, url, headers, "x").await;
        assert_401(&r, &format!("{verb} {url} {headers:?}"));
    }
    let out = curl(&[&basic]).await;
    assert_eq!(out.status, 401, "basic-auth form: {out:?}");
    assert_eq!(out.body, "invalid api token\n");
    assert_eq!(app.request_count(), 0, "no refused request reached the app");

    for path in [
        "/v1.0/healthz",
        "/v1.0/healthz/",
        "//v1.0/healthz//",
        "/v1.0/healthz/outbound",
    ] {
        let r = get(&a.url(path)).await;
        assert_eq!(r.status, 204, "GET {path} is exempt: {}", r.text());
    }

    // With the token: every form works, and the token never reaches the callee's app.
    let ok = [("dapr-api-token", API)];
    let e = call("POST", &invoke, &ok, "x").await.echo();
    assert_eq!(e.path(), "/orders");
    assert!(!e.has("dapr-api-token"), "{:?}", e.0);
    let e = call("GET", &a.url("/orders"), &[("dapr-app-id", "b"), ok[0]], "")
        .await
        .echo();
    assert!(!e.has("dapr-api-token"), "{:?}", e.0);
    let out = curl(&["-H", &format!("dapr-api-token: {API}"), &basic]).await;
    assert_eq!(out.status, 200, "{out:?}");
    let e = Echo(serde_json::from_str(&out.body).unwrap());
    assert!(!e.has("dapr-api-token"), "{:?}", e.0);
    let r = call("GET", &a.url("/v1.0/metadata"), &ok, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "a");
    assert_eq!(app.request_count(), 3);
    // The callee sidecar has no token of its own: its API stays open.
    assert_eq!(get(&b.url("/v1.0/metadata")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_tokens_reach_only_the_own_app() {
    let mesh = Mesh::new("app-token");
    let a_app = TestApp::start("a-app").await;
    let b_app = TestApp::start("b-app").await;
    let c_app = TestApp::start("c-app").await;
    let a = mesh
        .sidecar("a")
        .app_port(a_app.port)
        .env("APP_API_TOKEN", "a-app-token")
        .start()
        .await;
    let _b = mesh
        .sidecar("b")
        .app_port(b_app.port)
        .env("APP_API_TOKEN", "b-app-token")
        .start()
        .await;
    let _c = mesh.sidecar("c").app_port(c_app.port).start().await;

    // Remote: the callee's app sees the callee's token, never the caller's (CVE-2024-35223),
    // and never one the caller's app sent (a has no DAPR_API_TOKEN, so nothing checks it).
    let forged = [("dapr-api-token", "forged")];
    let e = call("POST", &a.url("/v1.0/invoke/b/method/x"), &forged, "")
        .await
        .echo();
    assert_eq!(e.app(), "b-app");
    assert_eq!(e.header_all("dapr-api-token"), ["b-app-token"]);
    // A callee without an app token: its app sees no token at all (Dapr's remotenotoken).
    let e = call("POST", &a.url("/v1.0/invoke/c/method/x"), &forged, "")
        .await
        .echo();
    assert_eq!(e.app(), "c-app");
    assert!(!e.has("dapr-api-token"), "{:?}", e.0);
    // Self-invocation: the app sees its own token.
    let e = call("GET", &a.url("/v1.0/invoke/a/method/me"), &forged, "")
        .await
        .echo();
    assert_eq!(e.app(), "a-app");
    assert_eq!(e.header_all("dapr-api-token"), ["a-app-token"]);
    assert_eq!(a_app.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_network_is_dropped_by_the_callee() {
    let mesh = Mesh::new("net-token");
    let app = TestApp::start("b-app").await;
    let b = mesh.sidecar("b").app_port(app.port).start().await;
    // Straight to the internal port, as a peer (or an attacker on the pod network) would.
    let r = call(
        "POST",
        &format!("http://{}/x", b.internal),
        &[
            ("ferry-callee", "b.default"),
            ("dapr-api-token", "from-the-network"),
        ],
        "",
    )
    .await;
    let e = r.echo();
    assert!(!e.has("dapr-api-token"), "{:?}", e.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_carry_the_app_token() {
    let mesh = Mesh::new("probe-token");
    let app = TestApp::start("b-app").await;
    let _b = mesh
        .sidecar("b")
        .app_port(app.port)
        .env("APP_API_TOKEN", "b-app-token")
        .args(&[
            "--enable-app-health-check",
            "--app-health-check-path",
            "/probe",
            "--app-health-probe-interval",
            "1",
        ])
        .start()
        .await;
    let probe = step("a health probe reaches the app", async {
        loop {
            if let Some(p) = app.requests().into_iter().find(|e| e.path() == "/probe") {
                return p;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(probe.header_all("dapr-api-token"), ["b-app-token"]);
}
