//! Bodies: large requests and responses intact, the body size limit, streaming both ways (SSE
//! and chunked uploads), redirects passed through, and an app that breaks mid-body.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, BufReader};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_bodies_pass_intact() {
    let p = Pair::start("big-req").await;
    for size in [MIB, 3 * MIB] {
        let data = Bytes::from(pattern(7, size));
        let want = hash(&data);
        for chunked in [false, true] {
            let body = if chunked {
                chunked_body(data.clone())
            } else {
                full(data.clone())
            };
            let req = Request::post(p.a.url("/v1.0/invoke/b/method/upload"))
                .body(body)
                .unwrap();
            let e = send(req).await.echo();
            assert_eq!(e.body_len(), size as u64, "chunked={chunked}");
            assert_eq!(e.body_hash(), want, "chunked={chunked}");
        }
    }
}

/// Sends a body of `size` bytes by hand (fixed length or chunked) and reads the answer even if
/// the sidecar answers before the body is complete.
async fn raw_upload(port: u16, size: usize, chunked: bool) -> RawOutcome {
    let mut req =
        b"POST /v1.0/invoke/b/method/upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".to_vec();
    if chunked {
        req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for off in (0..size).step_by(64 * 1024) {
            let n = (size - off).min(64 * 1024);
            req.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            req.extend_from_slice(&pattern(off, n));
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
    } else {
        req.extend_from_slice(format!("Content-Length: {size}\r\n\r\n").as_bytes());
        req.extend_from_slice(&pattern(0, size));
    }
    raw_exchange(port, req).await
}

fn assert_too_large(out: &RawOutcome, what: &str) {
    assert_eq!(out.status, Some(500), "{what}: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", out.body_text()));
    assert_eq!(v["errorCode"], "ERR_DIRECT_INVOKE", "{what}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.starts_with("failed to invoke, id: b, err: "),
        "{what}: {msg}"
    );
    assert!(msg.contains("--max-body-size"), "{what}: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused() {
    let mesh = Mesh::new("too-large");
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--max-body-size", "1Mi"])
        .start()
        .await;
    let a = mesh
        .sidecar("a")
        .args(&["--max-body-size", "1Mi"])
        .start()
        .await;
    // Caller's limit (remote), own limit (local).
    for (sc, name) in [(&a, "remote"), (&b, "local")] {
        for chunked in [false, true] {
            let what = format!("{name}, chunked={chunked}");
            assert_too_large(&raw_upload(sc.http, 2 * MIB, chunked).await, &what);
            // Just under the limit still passes.
            let out = raw_upload(sc.http, MIB - 100, chunked).await;
            assert_eq!(out.status, Some(200), "{what}: {}", out.body_text());
        }
        sc.wait_healthy().await;
    }
    // The callee's own limit holds when the caller's is larger.
    let big = mesh.sidecar("big").start().await;
    assert_too_large(&raw_upload(big.http, 2 * MIB, false).await, "callee limit");
    assert_too_large(
        &raw_upload(big.http, 2 * MIB, true).await,
        "callee limit, chunked",
    );
    let e = call(
        "POST",
        &big.url("/v1.0/invoke/b/method/after"),
        &[],
        "small",
    )
    .await
    .echo();
    assert_eq!(e.body(), "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_refusing_a_small_body_is_heard_and_the_connection_pool_recovers() {
    // Bodies up to 64 KiB travel whole, over pooled HTTP/1.1 connections between sidecars.
    // A callee with a smaller limit refuses without reading the body; its answer must reach
    // the caller every time, and the calls after it must still work.
    let mesh = Mesh::new("small-refused");
    let app = TestApp::start("tiny-app").await;
    let tiny = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--max-body-size", "16Ki"])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    for round in 0..20 {
        for size in [16 * 1024 + 1, 32 * 1024, 64 * 1024] {
            let body = "x".repeat(size);
            let r = call(
                "POST",
                &a.url("/v1.0/invoke/b/method/up"),
                &[],
                body.as_str(),
            )
            .await;
            let text = r.text();
            assert_eq!(r.status, 500, "round {round}, {size} B: {text}");
            assert!(
                text.contains("--max-body-size"),
                "round {round}, {size} B: {text}"
            );
        }
        let e = call("POST", &a.url("/v1.0/invoke/b/method/ok"), &[], "small")
            .await
            .echo();
        assert_eq!(e.body(), "small", "round {round}");
    }
    assert_eq!(app.request_count(), 20);
    tiny.wait_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_pass_intact() {
    let p = Pair::start("big-resp").await;
    let n = 10 * MIB + 7;
    let want = hash(&pattern(0, n));
    for sc in [&p.a, &p.b] {
        for route in ["big", "bigchunked"] {
            let r = get(&sc.url(&format!("/v1.0/invoke/b/method/{route}/{n}"))).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), n, "{route}");
            assert_eq!(hash(&r.body), want, "{route}");
            if let Some(cl) = r.header("content-length") {
                assert_eq!(cl, n.to_string());
            }
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        }
    }
}

/// Checks that every event arrived before the app sent the next one.
fn assert_event_by_event(arrived: &[Instant], sent: &[Instant], how: &str) {
    assert_eq!(arrived.len(), 10, "{how}: events");
    assert_eq!(sent.len(), 10, "{how}: the app sent");
    for i in 0..9 {
        assert!(
            arrived[i] < sent[i + 1],
            "{how}: event {i} arrived {:?} after event {} was sent: held back",
            arrived[i] - sent[i + 1],
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one() {
    let p = Pair::start("sse").await;
    for sc in [&p.a, &p.b] {
        // hyper: time each event as its bytes arrive.
        p.app.state.sse_sent.lock().unwrap().clear();
        let req = Request::get(sc.url("/v1.0/invoke/b/method/sse"))
            .header("accept", "text/event-stream")
            .body(empty())
            .unwrap();
        let resp = step("SSE response head", client().request(req))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let (mut text, mut arrived) = (String::new(), Vec::new());
        step("SSE body", async {
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.unwrap().data_ref() {
                    text.push_str(std::str::from_utf8(d).unwrap());
                    while arrived.len() < text.matches("\n\n").count() {
                        arrived.push(Instant::now());
                    }
                }
            }
        })
        .await;
        let want: String = (0..10).map(|i| format!("data: {i}\n\n")).collect();
        assert_eq!(text, want);
        let sent = p.app.state.sse_sent.lock().unwrap().clone();
        assert_event_by_event(&arrived, &sent, "hyper");

        // curl --no-buffer, reading its output line by line.
        p.app.state.sse_sent.lock().unwrap().clear();
        let mut child = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-N",
                "--max-time",
                "10",
                "-H",
                "Accept: text/event-stream",
            ])
            .arg(sc.url("/v1.0/invoke/b/method/sse"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut arrived = Vec::new();
        step("curl SSE", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.starts_with("data: ") {
                    arrived.push(Instant::now());
                }
            }
        })
        .await;
        assert!(child.wait().await.unwrap().success());
        let sent = p.app.state.sse_sent.lock().unwrap().clone();
        assert_event_by_event(&arrived, &sent, "curl");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_is_streamed_to_the_app() {
    let p = Pair::start("stream-req").await;
    for sc in [&p.a, &p.b] {
        let (tx, body) = channel_body();
        let req = Request::post(sc.url("/v1.0/invoke/b/method/stream-echo"))
            .body(body)
            .unwrap();
        let pending = tokio::spawn(send(req));
        tx.send(Bytes::from_static(b"first chunk;")).await.unwrap();
        // If any hop buffered the body, the app would not see this chunk until the end.
        tokio::time::timeout(Duration::from_secs(5), p.app.state.first_chunk.notified())
            .await
            .expect("the app saw the first chunk before the client sent the last");
        tx.send(Bytes::from_static(b"second chunk")).await.unwrap();
        drop(tx);
        let v = pending.await.unwrap().json();
        assert_eq!(v["body_len"], 24);
        assert_eq!(v["body_hash"], hash(b"first chunk;second chunk"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_pass_through_unfollowed() {
    let p = Pair::start("redirect").await;
    for sc in [&p.a, &p.b] {
        let r = get(&sc.url("/v1.0/invoke/b/method/redirect")).await;
        assert_eq!(r.status, 301);
        assert_eq!(r.header("location"), Some("http://127.0.0.1:9/elsewhere"));
        assert_eq!(r.text(), "moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_breaking_mid_body_does_not_break_the_sidecar() {
    let mesh = Mesh::new("reset");
    let raw = RawApp::start(|head| {
        let first = head.lines().next().unwrap_or_default().to_owned();
        let mut bytes = Vec::new();
        let reset = !first.contains("/ok ");
        if first.contains("/reset-big ") {
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n");
            bytes.extend_from_slice(&[b'x'; 1000]);
        } else if first.contains("/reset-small ") {
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n");
            bytes.extend_from_slice(&[b'x'; 1000]);
        } else if first.contains("/reset-chunked ") {
            bytes
                .extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n");
            bytes.extend_from_slice(&[b'x'; 1000]);
            bytes.extend_from_slice(b"\r\n100\r\nxx");
        } else if first.contains("/reset-head ") {
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Le");
        } else {
            bytes.extend_from_slice(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
        }
        RawReply { bytes, reset }
    })
    .await;
    let b = mesh.sidecar("b").app_port(raw.port).start().await;
    let a = mesh.sidecar("a").start().await;
    for sc in [&a, &b] {
        for (route, declared) in [
            ("reset-big", 200_000),
            ("reset-small", 50_000),
            ("reset-chunked", 1256),
        ] {
            let url = sc.url(&format!("/v1.0/invoke/b/method/{route}"));
            match step(route, try_send(get_req(&url))).await {
                // An error (the body broke) is the honest answer...
                Err(_) => {}
                // ...and so is a sidecar error made before any header was sent.
                Ok(r) if r.status == 500 => {
                    r.invoke_error(500);
                }
                Ok(r) => panic!(
                    "{route}: a broken body looked complete: {} with {} of {declared} bytes",
                    r.status,
                    r.body.len()
                ),
            }
            let r = get(&sc.url("/v1.0/invoke/b/method/ok")).await;
            assert_eq!(r.text(), "ok", "after {route}");
        }
        // Reset before the head was complete: a clear 500.
        let msg = get(&sc.url("/v1.0/invoke/b/method/reset-head"))
            .await
            .invoke_error(500);
        assert!(msg.contains("error invoking app channel"), "{msg}");
        assert_eq!(get(&sc.url("/v1.0/invoke/b/method/ok")).await.text(), "ok");
    }

    // The same with a hyper app that fails its chunked body.
    let app = TestApp::start("c-app").await;
    let c = mesh.sidecar("c").app_port(app.port).start().await;
    for sc in [&a, &c] {
        let url = sc.url("/v1.0/invoke/c/method/abort");
        if let Ok(r) = step("abort", try_send(get_req(&url))).await {
            assert_eq!(r.status, 500, "a broken body looked complete: {r:?}");
        }
        let e = get(&sc.url("/v1.0/invoke/c/method/after")).await.echo();
        assert_eq!(e.path(), "/after");
    }
}
