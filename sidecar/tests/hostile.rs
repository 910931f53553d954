//! Method normalization and hostile input. Every case checks the expected answer and that the
//! sidecar still serves a normal request afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A normal call through `sc` still works.
async fn still_serves(sc: &Sidecar) {
    let e = get(&sc.url("/v1.0/invoke/b/method/still-ok")).await.echo();
    assert_eq!(e.path(), "/still-ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_normalized_once_and_delivered_as_normalized() {
    let p = Pair::start("normalize").await;
    let cases = [
        ("admin/../public", "/public"),
        ("../../etc/passwd", "/etc/passwd"),
        // The trailing slash stays (dapr#7686: apps may tell /c from /c/).
        ("a/./b//c/", "/a/b/c/"),
        ("admin/../public/", "/public/"),
        // %2F decodes to a real separator, as in Dapr.
        ("a%2Fb", "/a/b"),
        // Encoded twice: the app gets the once-decoded %2F, still encoded.
        ("a%252Fb", "/a%2Fb"),
        // Encoded dots are decoded, then cleaned: they can never climb above the root.
        ("%2E%2E/%2E%2E/etc/passwd", "/etc/passwd"),
        ("public/%2e%2e/admin", "/admin"),
        ("a%20b", "/a%20b"),
        ("caf%C3%A9", "/caf%C3%A9"),
    ];
    // Remote (both sidecars check the method) and local.
    for sc in [&p.a, &p.b] {
        for (method, want) in cases {
            let r = get(&sc.url(&format!("/v1.0/invoke/b/method/{method}"))).await;
            assert_eq!(r.status, 200, "{method}: {}", r.text());
            let path = r.echo().path().to_owned();
            assert_eq!(path, want, "{method}");
            assert!(!path.split('/').any(|s| s == ".."), "{path}");
        }
        // The header form normalizes the same way.
        let e = call(
            "GET",
            &sc.url("/x/../y/%2E%2E/z"),
            &[("dapr-app-id", "b")],
            "",
        )
        .await
        .echo();
        assert_eq!(e.path(), "/z");
        still_serves(sc).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_characters_in_the_method_are_refused() {
    let p = Pair::start("forbidden").await;
    for sc in [&p.a, &p.b] {
        for enc in ["%23", "%3F", "%00", "%0A", "%0D", "%1F", "%7F", "%09"] {
            let before = p.app.request_count();
            let r = get(&sc.url(&format!("/v1.0/invoke/b/method/x{enc}y"))).await;
            let msg = r.invoke_error(500);
            assert!(
                msg.starts_with("failed to invoke, id: b, err: "),
                "{enc}: {msg}"
            );
            assert!(msg.contains("invalid method"), "{enc}: {msg}");
            assert_eq!(p.app.request_count(), before, "{enc} reached the app");
        }
        still_serves(sc).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_encoded_dots_and_bare_percent_are_refused() {
    let p = Pair::start("double-enc").await;
    for sc in [&p.a, &p.b] {
        for method in [
            "public/%252E%252E/admin",
            "%252e%252e/x",
            "x%5C..%5Cy",
            // Dapr-pinned: a '%' without two hex digits after decoding is a 500.
            "test%25stream",
            "end%25",
        ] {
            let r = get(&sc.url(&format!("/v1.0/invoke/b/method/{method}"))).await;
            let msg = r.invoke_error(500);
            assert!(msg.contains("invalid method"), "{method}: {msg}");
        }
        still_serves(sc).await;
    }
    assert_eq!(
        p.app.request_count(),
        2,
        "only the two normal calls arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_header_values_get_400() {
    let p = Pair::start("crlf").await;
    let bad: [&[u8]; 4] = [
        b"X-Evil: a\rInjected: yes\r\n",
        b"X-Evil: a\0b\r\n",
        b"X-Evil: a\r\n folded: yes\r\n",
        b"X\rEvil: a\r\n",
    ];
    for line in bad {
        let mut req = b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\n".to_vec();
        req.extend_from_slice(line);
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        let out = raw_exchange(p.a.http, req).await;
        assert_eq!(
            out.status,
            Some(400),
            "{:?}: {out:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(p.app.request_count(), 0, "a bad request reached the app");
    still_serves(&p.a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let p = Pair::start("big-headers").await;
    let mut req = b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'x', 64 * 1024));
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let out = raw_exchange(p.a.http, req).await;
    assert!(
        matches!(out.status, Some(431) | None),
        "expected 431 or a closed connection: {:?}",
        out.status
    );
    // The same over many headers.
    let mut req = b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..2000 {
        req.extend_from_slice(format!("X-H{i}: {i:0>20}\r\n").as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    let out = raw_exchange(p.a.http, req).await;
    assert!(matches!(out.status, Some(431) | None), "{:?}", out.status);
    assert_eq!(p.app.request_count(), 0);
    still_serves(&p.a).await;
}

/// Reads until the server closes the connection; returns how long that took and what came.
async fn wait_closed(s: &mut TcpStream) -> (Duration, Vec<u8>) {
    let t = Instant::now();
    let mut got = Vec::new();
    step("the server closing a stalled connection", async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (t.elapsed(), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off_while_others_are_served() {
    let p = Pair::start_with("slowloris", &["--read-header-timeout-seconds", "1"]).await;
    let mut slow = TcpStream::connect(("127.0.0.1", p.a.http)).await.unwrap();
    let t = Instant::now();
    slow.write_all(b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\nX-Half: ")
        .await
        .unwrap();
    // Others are served while the slow one stalls.
    for _ in 0..3 {
        still_serves(&p.a).await;
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "normal calls were held up"
    );
    let (_, got) = wait_closed(&mut slow).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text}"
    );
    still_serves(&p.a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stalls_before_the_request_line_is_cut_off() {
    // HTTP/1 and HTTP/2 share the port: a connection that has sent fewer bytes than the HTTP/2
    // preface is still being sniffed, and must be timed out all the same.
    let p = Pair::start_with("stall-early", &["--read-header-timeout-seconds", "1"]).await;
    for sent in [
        &b""[..],
        b"GE",
        b"PRI * HTTP/2.0\r\n",
        // The whole HTTP/2 preface and an empty SETTINGS frame, then no request.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", p.a.http)).await.unwrap();
        s.write_all(sent).await.unwrap();
        let (waited, _) = wait_closed(&mut s).await;
        assert!(
            waited < Duration::from_secs(5),
            "{:?}: closed after {waited:?}",
            String::from_utf8_lossy(sent)
        );
    }
    still_serves(&p.a).await;
}

/// Sends one healthz request on `s` and reads its head (204: no body follows).
async fn healthz_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    step("a healthz answer on a kept-alive connection", async {
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_stay_open_and_the_next_head_is_still_timed() {
    // Like daprd (Go's ReadHeaderTimeout): the head is timed from its first byte, not while a
    // pooled connection idles between requests, so a client reusing it never races a close.
    let p = Pair::start_with("idle-keepalive", &["--read-header-timeout-seconds", "1"]).await;
    let mut s = TcpStream::connect(("127.0.0.1", p.a.http)).await.unwrap();
    let head = healthz_on(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let head = healthz_on(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 204"), "after 2.5 s idle: {head}");
    // A head that stalls on the same connection is still cut off, a second after its first byte.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (_, got) = wait_closed(&mut s).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}: {}",
        String::from_utf8_lossy(&got)
    );
    still_serves(&p.a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_connect_do_not_hurt() {
    let p = Pair::start("garbage").await;
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /v1.0/invoke/b/method/x HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhello",
        b"GET /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
    ] {
        let out = raw_exchange(p.a.http, junk.to_vec()).await;
        assert!(
            matches!(out.status, None | Some(400..=599)),
            "{:?} got {:?}",
            String::from_utf8_lossy(junk),
            out.status
        );
    }
    // CONNECT cannot be invoked.
    let out = raw_exchange(
        p.a.http,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\ndapr-app-id: b\r\nConnection: close\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert!(
        matches!(out.status, None | Some(400..=599)),
        "CONNECT got {:?}",
        out.status
    );
    assert_eq!(
        p.app.request_count(),
        0,
        "no malformed head reaches the app"
    );

    // A malformed chunk is only found while the body streams: by then the request may already
    // be on its way to the app (it then sees the body fail, never a complete body). The client
    // gets an error or a closed connection, and the sidecar keeps serving.
    let out = raw_exchange(
        p.a.http,
        b"POST /v1.0/invoke/b/method/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert!(
        matches!(out.status, None | Some(400..=599)),
        "malformed chunk got {:?}",
        out.status
    );
    assert!(
        p.app.requests().iter().all(|e| e.body().is_empty()),
        "the app never sees the malformed body as complete"
    );
    still_serves(&p.a).await;
}
