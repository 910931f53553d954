//! Health, metadata, start-up errors, clean exit, the public port, and HTTP/2 clients.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_waits_for_the_app_port() {
    let mesh = Mesh::new("healthz");
    // Bound but not listening: the app "has not started yet".
    let (socket, port) = reserve_port();
    let b = mesh.sidecar("b").app_port(port).start_unready().await;

    let r = get(&b.url("/v1.0/healthz")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_HEALTH_NOT_READY");
    assert_eq!(get(&b.url("/v1.0/healthz/outbound")).await.status, 204);

    // The app starts listening: healthz turns 204 without restarting anything.
    let app = TestApp::serve("b-app", socket.listen(64).unwrap(), None);
    b.wait_healthy().await;
    assert_eq!(
        get(&b.url("/v1.0//healthz/")).await.status,
        204,
        "path cleaning"
    );
    let r = get(&b.url("/v1.0/healthz?appid=b")).await;
    assert_eq!(r.status, 204);
    let r = get(&b.url("/v1.0/healthz?appid=other")).await;
    assert_eq!(r.status, 500);

    let meta = get(&b.url("/v1.0/metadata")).await;
    assert_eq!(meta.header("content-type"), Some("application/json"));
    let meta = meta.json();
    assert_eq!(meta["id"], "b");
    assert_eq!(meta["httpEndpoints"], serde_json::json!([]));
    assert!(
        meta["runtimeVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    assert_eq!(meta["appConnectionProperties"]["port"], port);
    assert_eq!(meta["appConnectionProperties"]["protocol"], "http");
    assert_eq!(
        get(&b.url("/v1.0/invoke/b/method/up")).await.echo().path(),
        "/up"
    );
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_64_with_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["--app-id", "x", "--app-port", "70000"][..], "--app-port"),
        (&["--app-id", "x", "--app-port", "0"], "--app-port"),
        (&["--app-id", "a.b"], "--app-id"),
        (
            &["--app-id", "x", "--app-protocol", "grpc"],
            "--app-protocol",
        ),
        (
            &["--app-id", "x", "--max-body-size", "4MB"],
            "--max-body-size",
        ),
        (
            &["--app-id", "x", "--read-header-timeout-seconds", "0"],
            "--read-header-timeout-seconds",
        ),
    ] {
        let out = tokio::process::Command::new(ferryd())
            .env_clear()
            .args(args)
            .kill_on_drop(true)
            .output();
        let out = step("ferryd refusing a flag", out).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_port_is_a_clear_start_error() {
    let mesh = Mesh::new("busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = tokio::process::Command::new(ferryd())
        .env_clear()
        .env("FERRY_HOME", &mesh.home)
        .args([
            "--app-id",
            "x",
            "--dapr-http-port",
            &port,
            "--dapr-grpc-port",
            "0",
        ])
        .args(["--dapr-listen-addresses", "127.0.0.1"])
        .kill_on_drop(true)
        .output();
    let out = step("ferryd on a busy port", out).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--dapr-http-port"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_deregisters() {
    let mesh = Mesh::new("sigterm");
    let mut a = mesh.sidecar("a").start().await;
    assert!(a.entry_path.exists());
    let status = a.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", a.log_text());
    assert!(
        !a.entry_path.exists(),
        "the registry entry outlived the sidecar"
    );
}

/// A peer that took a kept-alive connection from its pool just as this sidecar began to shut
/// down (its tables do not know yet) has its request answered, and told to close, rather than
/// cut unanswered: a POST could not be retried safely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_answers_a_request_on_a_kept_alive_peer_connection() {
    let mesh = Mesh::new("linger");
    let app = TestApp::start("b-app").await;
    let mut b = mesh.sidecar("b").app_port(app.port).start().await;
    let tcp = TcpStream::connect(b.internal).await.unwrap();
    let (mut peer, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |method: Method| {
        Request::builder()
            .method(method)
            .uri("/orders")
            .header("host", b.internal.to_string())
            .header("ferry-callee", "b.default")
            .body(full("order"))
            .unwrap()
    };
    let first = peer.send_request(request(Method::POST)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers().get("connection"), None);
    first.into_body().collect().await.unwrap();

    b.sigterm();
    // New connections are refused at once (a peer tries another instance)...
    let refused = step("the listener to close", async {
        while TcpStream::connect(b.internal).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    refused.await;
    // ...while the kept-alive one still carries a request, answered with `Connection: close`.
    peer.ready().await.unwrap();
    let last = step(
        "the request on the kept-alive connection",
        peer.send_request(request(Method::POST)),
    )
    .await
    .expect("the request was cut unanswered");
    assert_eq!(last.status(), 200);
    assert_eq!(last.headers().get("connection").unwrap(), "close");
    let body = last.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("order"));
    assert_eq!(app.request_count(), 2);
    step("the connection to close", async {
        while !peer.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let status = b.exited().await;
    assert_eq!(status.code(), Some(0), "{}", b.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_serves_health_and_metadata_only() {
    let mesh = Mesh::new("public");
    let public = {
        // A free port for the flag (which does not take 0).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--dapr-public-port", &public.to_string()])
        .start()
        .await;
    let url = |p: &str| format!("http://127.0.0.1:{public}{p}");
    assert_eq!(get(&url("/v1.0/healthz")).await.status, 204);
    assert_eq!(get(&url("/v1.0/healthz/outbound")).await.status, 204);
    assert_eq!(get(&url("/v1.0/metadata")).await.json()["id"], "b");
    let r = get(&url("/v1.0/invoke/b/method/x")).await;
    assert_eq!(r.status, 404);
    let r = call("GET", &url("/x"), &[("dapr-app-id", "b")], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(app.request_count(), 0, "the public port must not invoke");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let p = Pair::start("h2-client").await;
    let url = p.a.url("/v1.0/invoke/b/method/over-h2?x=1");
    let out = curl(&["--http2-prior-knowledge", "-d", "h2 body", &url]).await;
    assert_eq!(out.status_line, "HTTP/2 200", "{out:?}");
    let e = Echo(serde_json::from_str(&out.body).unwrap());
    assert_eq!(e.path(), "/over-h2?x=1");
    assert_eq!(e.method(), "POST");
    assert_eq!(e.body(), "h2 body");
    // The header form over HTTP/2 too.
    let out = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "dapr-app-id: b",
        &p.a.url("/h2/header-form"),
    ])
    .await;
    assert_eq!(out.status, 200, "{out:?}");
    let e = Echo(serde_json::from_str(&out.body).unwrap());
    assert_eq!(e.path(), "/h2/header-form");
    assert!(!e.has("dapr-app-id"));
    let out = curl(&["--http2-prior-knowledge", &p.a.url("/v1.0/healthz")]).await;
    assert_eq!(out.status_line, "HTTP/2 204");
    // Errors are the same JSON.
    let out = curl(&["--http2-prior-knowledge", &p.a.url("/v1.0/invoke/b")]).await;
    assert_eq!(out.status, 404);
    assert_eq!(
        out.body,
        no_target_body(
            "the path names no method after the app ID; call /v1.0/invoke/b/method/<method>"
        )
    );
}
