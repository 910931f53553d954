//! Header rules, both ways: hop-by-hop removal, identity headers, forwarding headers,
//! multi-values, trace context, Content-Type and Content-Length.

mod common;

use common::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Hop-by-hop names (plus the one listed in Connection) that must never cross a proxy.
const HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
    "x-hop",
];

fn assert_no_hop(what: &str, has: impl Fn(&str) -> bool) {
    for h in HOP {
        assert!(!has(h), "{what}: {h} crossed the proxy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_do_not_reach_the_app() {
    let p = Pair::start("hop-req").await;
    for sc in [&p.a, &p.b] {
        // Raw bytes, so that every header is sent exactly as written.
        let req = "POST /v1.0/invoke/b/method/hop HTTP/1.1\r\nHost: a\r\n\
            Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
            Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: foo/1\r\n\
            HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nProxy-Authorization: Basic eDp5\r\n\
            Proxy-Authenticate: Basic\r\nX-Kept: yes\r\nContent-Length: 4\r\n\r\nbody";
        let out = raw_exchange(sc.http, req.as_bytes().to_vec()).await;
        assert_eq!(out.status, Some(200), "{out:?}");
        let e = Echo(serde_json::from_slice(&out.body).unwrap());
        assert_no_hop("request", |h| e.has(h));
        assert_eq!(e.header("x-kept").as_deref(), Some("yes"));
        assert_eq!(e.body(), "body");
        // A fixed-length body stays fixed-length.
        assert_eq!(e.header("content-length").as_deref(), Some("4"));
        assert!(!e.has("transfer-encoding"), "{:?}", e.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let mesh = Mesh::new("hop-resp");
    let app = RawApp::start(|_| RawReply {
        bytes: b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\n\
            Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
            Trailer: X-T\r\nTE: trailers\r\nProxy-Authenticate: Basic\r\n\
            HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nProxy-Authorization: Basic eDp5\r\n\
            X-Kept-Resp: yes\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
        reset: false,
    })
    .await;
    let b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").start().await;
    for sc in [&a, &b] {
        let r = get(&sc.url("/v1.0/invoke/b/method/hop")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        assert_no_hop("response", |h| r.headers.contains_key(h));
        assert_eq!(r.header("x-kept-resp"), Some("yes"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_replaced() {
    let p = Pair::start("spoof").await;
    for (sc, caller) in [(&p.a, "a"), (&p.b, "b")] {
        // Any casing: raw bytes keep the case as sent.
        let req = "GET /v1.0/invoke/b/method/who HTTP/1.1\r\nHost: a\r\n\
            DAPR-CALLER-APP-ID: evil\r\nDapr-Caller-Namespace: evil\r\n\
            dapr-callee-app-id: evil\r\ndApR-cAlLeR-aPp-Id: evil2\r\n\
            Ferry-Callee: evil.default\r\nConnection: close\r\n\r\n";
        let out = raw_exchange(sc.http, req.as_bytes().to_vec()).await;
        assert_eq!(out.status, Some(200), "{out:?}");
        let e = Echo(serde_json::from_slice(&out.body).unwrap());
        assert_eq!(e.header_all("dapr-caller-app-id"), [caller]);
        assert_eq!(e.header_all("dapr-caller-namespace"), ["default"]);
        assert_eq!(e.header_all("dapr-callee-app-id"), ["b"]);
        assert!(!e.has("ferry-callee"), "{:?}", e.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_on_remote_calls() {
    let p = Pair::start("forwarded").await;
    let host = hostname();
    let ours = format!("for=127.0.0.1;by=127.0.0.1;host={host}");

    let e = get(&p.a.url("/v1.0/invoke/b/method/fwd")).await.echo();
    assert_eq!(e.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(e.header_all("x-forwarded-host"), [host.as_str()]);
    assert_eq!(e.header_all("forwarded"), [ours.as_str()]);

    // Values already present come first; ours are appended.
    let e = call(
        "GET",
        &p.a.url("/v1.0/invoke/b/method/fwd"),
        &[
            ("x-forwarded-for", "10.0.0.9"),
            ("x-forwarded-host", "front.example"),
            ("forwarded", "for=10.0.0.9;proto=https"),
        ],
        "",
    )
    .await
    .echo();
    let joined = |n: &str| e.header_all(n).join(", ");
    assert_eq!(joined("x-forwarded-for"), "10.0.0.9, 127.0.0.1");
    assert_eq!(joined("x-forwarded-host"), format!("front.example, {host}"));
    assert_eq!(
        joined("forwarded"),
        format!("for=10.0.0.9;proto=https, {ours}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_value_headers_keep_their_order() {
    let p = Pair::start("multi").await;
    for sc in [&p.a, &p.b] {
        let e = call(
            "GET",
            &sc.url("/v1.0/invoke/b/method/multi"),
            &[
                ("x-multi", "3"),
                ("accept", "text/html, application/json;q=0.9"),
                ("x-multi", "1"),
                ("x-multi", "2, two"),
            ],
            "",
        )
        .await
        .echo();
        assert_eq!(e.header_all("x-multi"), ["3", "1", "2, two"]);
        assert_eq!(
            e.header("accept").as_deref(),
            Some("text/html, application/json;q=0.9")
        );
    }
}

fn parse_tp(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(hex(parts[1], 32) && parts[1] != "0".repeat(32), "{v}");
    assert!(hex(parts[2], 16) && parts[2] != "0".repeat(16), "{v}");
    assert!(hex(parts[3], 2), "{v}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_propagated() {
    let p = Pair::start("trace").await;
    for sc in [&p.a, &p.b] {
        let e = call(
            "GET",
            &sc.url("/v1.0/invoke/b/method/trace"),
            &[
                ("traceparent", TP),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
                ("baggage", "userId=alice,isProduction=false"),
            ],
            "",
        )
        .await
        .echo();
        let tp = e.header("traceparent").expect("traceparent delivered");
        let (trace, span, flags) = parse_tp(&tp);
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span, "00f067aa0ba902b7", "a new span for this hop");
        assert_eq!(flags, "01");
        assert_eq!(
            e.header("tracestate").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            e.header("baggage").as_deref(),
            Some("userId=alice,isProduction=false")
        );

        // Absent (or invalid): the app still gets a valid one, a new trace each time.
        let e1 = get(&sc.url("/v1.0/invoke/b/method/trace")).await.echo();
        let e2 = call(
            "GET",
            &sc.url("/v1.0/invoke/b/method/trace"),
            &[("traceparent", "garbage")],
            "",
        )
        .await
        .echo();
        let (t1, _, _) = parse_tp(&e1.header("traceparent").unwrap());
        let (t2, _, _) = parse_tp(&e2.header("traceparent").unwrap());
        assert_ne!(t1, t2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_traceparent_comes_back_unchanged() {
    let p = Pair::start("trace-back").await;
    for sc in [&p.a, &p.b] {
        let r = call(
            "GET",
            &sc.url("/v1.0/invoke/b/method/traceparent"),
            &[("traceparent", TP)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("traceparent"), [APP_TRACEPARENT]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_type_is_added() {
    let p = Pair::start("no-ct").await;
    for sc in [&p.a, &p.b] {
        let e = call("POST", &sc.url("/v1.0/invoke/b/method/ct"), &[], "raw")
            .await
            .echo();
        assert!(!e.has("content-type"), "{:?}", e.0);
        assert_eq!(e.body(), "raw");
        // A Content-Type the client sent arrives as sent.
        let e = call(
            "POST",
            &sc.url("/v1.0/invoke/b/method/ct"),
            &[("content-type", "text/x-odd; charset=latin1")],
            "raw",
        )
        .await
        .echo();
        assert_eq!(
            e.header("content-type").as_deref(),
            Some("text/x-odd; charset=latin1")
        );
        // And none appears on a response that had none.
        let r = get(&sc.url("/v1.0/invoke/b/method/no-ct")).await;
        assert_eq!(r.text(), "plain");
        assert!(r.header("content-type").is_none(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_content_length_from_the_app_never_reaches_the_client() {
    let mesh = Mesh::new("stale-cl");
    // Declares 999 bytes, sends 2, and closes; `/stale-big` declares 200000 and sends 100000
    // (large enough to be streamed rather than read whole).
    let app = RawApp::start(|head| {
        let bytes = if head.starts_with("GET /stale-big ") {
            let mut b = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
            b.extend_from_slice(&pattern(0, 100_000));
            b
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 999\r\n\r\nok".to_vec()
        };
        RawReply {
            bytes,
            reset: false,
        }
    })
    .await;
    let b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").start().await;
    for sc in [&a, &b] {
        for _ in 0..3 {
            // hyper would fail the read if the length it was given did not match the body.
            let r = get(&sc.url("/v1.0/invoke/b/method/stale")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "ok");
            if let Some(cl) = r.header("content-length") {
                assert_eq!(cl, "2");
            }
            assert_eq!(r.header("content-type"), Some("text/plain"));
        }
        // The raw bytes agree.
        let out = raw_exchange(
            sc.http,
            b"GET /v1.0/invoke/b/method/stale HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                .to_vec(),
        )
        .await;
        assert_eq!(out.body, b"ok", "{out:?}");
        assert!(
            !out.head
                .to_ascii_lowercase()
                .contains("content-length: 999")
        );

        // The truncated body counts as complete (as in Dapr), with an honest length.
        let r = get(&sc.url("/v1.0/invoke/b/method/stale-big")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 100_000);
        assert_eq!(hash(&r.body), hash(&pattern(0, 100_000)));
        if let Some(cl) = r.header("content-length") {
            assert_eq!(cl, "100000");
        }
    }
}

/// Baggage reaches the app as sent, comes back on the response (unless the app sets its own),
/// and a malformed one is a 400 naming the header, on the remote and on the self path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_is_checked_passed_on_and_returned() {
    let p = Pair::start("baggage").await;
    for sc in [&p.a, &p.b] {
        let r = call(
            "POST",
            &sc.url("/v1.0/invoke/b/method/test"),
            &[("baggage", "key1=value1,key2=value2")],
            "{}",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("baggage"), Some("key1=value1,key2=value2"));
        assert_eq!(
            r.echo().header("baggage").as_deref(),
            Some("key1=value1,key2=value2")
        );

        let none = call("POST", &sc.url("/v1.0/invoke/b/method/test"), &[], "{}").await;
        assert_eq!(none.header("baggage"), None);
        assert!(!none.echo().has("baggage"));

        let bad = call(
            "POST",
            &sc.url("/v1.0/invoke/b/method/test"),
            &[("baggage", "invalid-baggage")],
            "{}",
        )
        .await;
        assert_eq!(bad.status, 400);
        assert!(
            bad.text().contains("invalid baggage header"),
            "{}",
            bad.text()
        );
        assert_eq!(bad.json()["errorCode"], "ERR_MALFORMED_REQUEST");
    }
    let before = p.app.request_count();
    let _ = call(
        "POST",
        &p.a.url("/v1.0/invoke/b/method/test"),
        &[("baggage", "k=a b")],
        "",
    )
    .await;
    assert_eq!(
        p.app.request_count(),
        before,
        "a refused request never reaches the app"
    );
}
