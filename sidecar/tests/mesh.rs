//! Sidecar to sidecar: load sharing between instances (by requests in flight), crashed
//! instances, a callee killed mid-request, the callee's own-app-ID check on the internal port,
//! and namespaces.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_load_and_survive_a_crash() {
    let mesh = Mesh::new("instances");
    let app1 = TestApp::start("b-one").await;
    let app2 = TestApp::start("b-two").await;
    let mut b1 = mesh.sidecar("b").app_port(app1.port).start().await;
    let _b2 = mesh.sidecar("b").app_port(app2.port).start().await;
    let a = mesh.sidecar("a").start().await;

    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let e = call(
            "POST",
            &a.url("/v1.0/invoke/b/method/who"),
            &[],
            &format!("{i}"),
        )
        .await
        .echo();
        *seen.entry(e.app().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both instances should serve: {seen:?}");
    assert!(seen.values().all(|n| *n >= 3), "uneven: {seen:?}");

    // A crash: no clean-up, the registry file stays behind without its lock.
    b1.kill();
    for i in 0..10 {
        let r = call(
            "POST",
            &a.url("/v1.0/invoke/b/method/who"),
            &[],
            &format!("{i}"),
        )
        .await;
        assert_eq!(r.echo().app(), "b-two", "call {i} after the crash");
        let r = get(&a.url("/v1.0/invoke/b/method/who")).await;
        assert_eq!(r.echo().app(), "b-two");
    }
    // The dead entry is recognised (its lock is gone) and removed by a live sidecar's scan.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b1.entry_path.exists() {
        assert!(
            Instant::now() < deadline,
            "the crashed sidecar's registry entry is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_killed_mid_request() {
    let mesh = Mesh::new("kill-mid");
    let app = TestApp::start("b-app").await;
    let mut b = mesh.sidecar("b").app_port(app.port).start().await;
    let other = TestApp::start("c-app").await;
    let _c = mesh.sidecar("c").app_port(other.port).start().await;
    let a = mesh.sidecar("a").start().await;

    let pending = tokio::spawn(send(get_req(&a.url("/v1.0/invoke/b/method/slow/8000"))));
    step(
        "the app receives the request",
        app.state.slow_started.notified(),
    )
    .await;
    let t = Instant::now();
    b.kill();
    let r = step("the caller's answer", pending).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let msg = r.invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: b, err: "), "{msg}");

    // The caller keeps serving, for other apps and with a clear error for the dead one.
    let e = get(&a.url("/v1.0/invoke/c/method/after")).await.echo();
    assert_eq!(e.app(), "c-app");
    let msg = get(&a.url("/v1.0/invoke/b/method/again"))
        .await
        .invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: b, err: "), "{msg}");
    a.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_port_serves_only_its_own_app_id() {
    let mesh = Mesh::new("wrong-callee");
    let app = TestApp::start("b-app").await;
    let b = mesh.sidecar("b").app_port(app.port).start().await;
    let url = format!("http://{}/x", b.internal);

    // Peers speak HTTP/1.1 there; HTTP/2 serves sidecars of earlier versions. Both are checked.
    for protocol in ["--http1.1", "--http2-prior-knowledge"] {
        for extra in [
            &["-H", "ferry-callee: other.default"][..],
            &["-H", "ferry-callee: b.prod"],
            &[],
        ] {
            let mut args = vec![protocol];
            args.extend_from_slice(extra);
            args.push(&url);
            let out = curl(&args).await;
            assert_eq!(out.status, 500, "{protocol} {extra:?}: {out:?}");
            assert!(out.header("ferry-error").is_some(), "{out:?}");
            assert_eq!(out.header("content-type"), Some("application/json"));
            let v: serde_json::Value = serde_json::from_str(&out.body).unwrap();
            assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE");
            assert!(v["message"].as_str().unwrap().contains("b.default"), "{v}");
        }
    }
    assert_eq!(
        app.request_count(),
        0,
        "a request for another app reached b"
    );

    // The same request, meant for b, is delivered: the refusal was about the app ID.
    for (n, protocol) in ["--http1.1", "--http2-prior-knowledge"]
        .into_iter()
        .enumerate()
    {
        let out = curl(&[protocol, "-H", "ferry-callee: b.default", &url]).await;
        assert_eq!(out.status, 200, "{protocol}: {out:?}");
        assert_eq!(app.request_count(), n + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_separate_apps() {
    let mesh = Mesh::new("namespaces");
    let app = TestApp::start("c-prod").await;
    let c = mesh
        .sidecar("c")
        .app_port(app.port)
        .env("NAMESPACE", "prod")
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;

    let e = get(&a.url("/v1.0/invoke/c.prod/method/x")).await.echo();
    assert_eq!(
        e.header("dapr-caller-namespace").as_deref(),
        Some("default")
    );
    assert_eq!(e.header("dapr-callee-app-id").as_deref(), Some("c"));
    // `c.default` names the caller's namespace, where there is no c.
    let msg = get(&a.url("/v1.0/invoke/c.default/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.contains("'default'"), "{msg}");
    // `c` alone prefers the caller's namespace, and (as Dapr's standalone mode, which ignores
    // namespaces) falls back to another one when the app runs only there.
    let e = get(&a.url("/v1.0/invoke/c/method/x")).await.echo();
    assert_eq!(e.app(), "c-prod");
    assert_eq!(e.header("dapr-callee-app-id").as_deref(), Some("c"));
    // From inside prod, `c` is self and `c.prod` too.
    let e = get(&c.url("/v1.0/invoke/c/method/x")).await.echo();
    assert_eq!(e.header("dapr-caller-namespace").as_deref(), Some("prod"));
    assert!(!e.has("forwarded"), "self-invocation is local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_killed_mid_response_breaks_the_body_not_the_caller() {
    use http_body_util::BodyExt;

    let mesh = Mesh::new("kill-mid-body");
    let app = TestApp::start("b-app").await;
    let mut b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").start().await;

    let resp = step(
        "SSE head",
        client().request(get_req(&a.url("/v1.0/invoke/b/method/sse"))),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first event is through: the response has started. Now the callee dies.
    let first = step("first event", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data: 0\n\n");
    b.kill();
    let ended = step("the rest of the body", async {
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_err(),
        "a body cut short by a dead callee must not look complete"
    );
    let msg = get(&a.url("/v1.0/invoke/b/method/x"))
        .await
        .invoke_error(500);
    assert!(msg.starts_with("failed to invoke, id: b, err: "), "{msg}");
    a.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_counts_against_its_instance_until_its_body_ends() {
    use http_body_util::BodyExt;

    let mesh = Mesh::new("in-flight");
    let one = TestApp::start("b-one").await;
    let two = TestApp::start("b-two").await;
    let _b1 = mesh.sidecar("b").app_port(one.port).start().await;
    let _b2 = mesh.sidecar("b").app_port(two.port).start().await;
    let a = mesh.sidecar("a").start().await;

    // An event stream: its head and first event are through, its body stays open for 2 s.
    let resp = step(
        "SSE head",
        client().request(get_req(&a.url("/v1.0/invoke/b/method/sse"))),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    step("first event", body.frame()).await.unwrap().unwrap();
    let (busy, idle) = if one.state.sse_sent.lock().unwrap().is_empty() {
        ("b-two", "b-one")
    } else {
        ("b-one", "b-two")
    };

    // While the stream lasts its instance has one request in flight and the other none: with
    // two instances, the less loaded of two choices is always the idle one (round robin would
    // alternate).
    for i in 0..10 {
        let e = get(&a.url(&format!("/v1.0/invoke/b/method/during/{i}")))
            .await
            .echo();
        assert_eq!(
            e.app(),
            idle,
            "call {i} went to the instance busy streaming"
        );
    }

    // Dropping the body ends the count: both instances serve again.
    drop(body);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        let e = get(&a.url(&format!("/v1.0/invoke/b/method/after/{i}")))
            .await
            .echo();
        *seen.entry(e.app().to_owned()).or_default() += 1;
    }
    assert!(
        seen.get(busy).is_some_and(|n| *n > 0),
        "the stream's instance still looks busy after its body was dropped: {seen:?}"
    );
}
