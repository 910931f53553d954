//! `ferry-testapp`: the small HTTP app the Tier-1 tests run in pods (image
//! `ferry.test/testapp:*` in `e2e/images.yaml`).
//!
//! - `GET /` (and any path not below): `{"pod", "namespace", "ip", "port", "path", "method"}`,
//!   from `POD_NAME` (else `HOSTNAME`), `POD_NAMESPACE`, `POD_IP`;
//! - `GET /healthz`: 200 `ok`;
//! - `GET /kube-version`: `{"gitVersion": …}` read from the API server with an in-cluster
//!   client (`kube::Client::try_default`: the service-account token mount and
//!   `KUBERNETES_SERVICE_HOST`/`PORT`); 500 `{"error": …}` when that fails;
//!   plus `"headers"`: the request's `dapr-*` headers (who the sidecar says the caller is);
//!   each such request is counted;
//! - `GET /requests`: `{"count": n}`, how many requests the line above served;
//! - `GET /fetch?url=http://…[&method=POST][&header=name:value]`: fetches the URL and answers
//!   `{"status", "body"}`, or 502 `{"error": …}`, so one pod can call another (or try to);
//! - `GET /env`: the process environment as a JSON object;
//! - `GET /file?path=…`: the file's contents (404 when it cannot be read).
//!
//! Listens on `--port`, else `$PORT`, else 8080, on every address; exits 0 on SIGTERM, after
//! `--drain-seconds` (`$DRAIN_SECONDS`, default 0) of serving on as usual: a well-behaved app
//! that gives its endpoints time to leave the load balancers before it stops.
//! `--marker <text>` is accepted and ignored (it tags the command line for `pgrep -f`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-testapp",
    version,
    about = "Ferry's Tier-1 test HTTP app"
)]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Seconds to keep serving after SIGTERM.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 0)]
    drain_seconds: u64,
    /// Ignored: a tag on the command line, so that a test can find the process (`pgrep -f`).
    #[arg(long)]
    marker: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-testapp: cannot listen on port {}: {e}", args.port);
            std::process::exit(1);
        }
    };
    eprintln!("ferry-testapp: listening on port {}", args.port);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot listen for SIGTERM");
    let port = args.port;
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, port));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if args.drain_seconds > 0 {
        eprintln!("ferry-testapp: draining for {}s", args.drain_seconds);
        let _ = tokio::time::timeout(Duration::from_secs(args.drain_seconds), &mut serve).await;
    }
    eprintln!("ferry-testapp: stopping");
}

async fn handle(req: Request<Incoming>, port: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = query(req.uri().query().unwrap_or_default());
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/kube-version") => kube_version().await,
        (&Method::GET, "/requests") => json_response(
            StatusCode::OK,
            json!({"count": SERVED.load(std::sync::atomic::Ordering::SeqCst)}),
        ),
        (&Method::GET, "/fetch") => match query.get("url") {
            Some(url) => {
                fetch(
                    url,
                    query.get("method").map(String::as_str).unwrap_or("GET"),
                    query.get("header").map(String::as_str),
                )
                .await
            }
            None => json_response(StatusCode::BAD_REQUEST, json!({"error": "missing ?url="})),
        },
        (&Method::GET, "/env") => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            json_response(StatusCode::OK, json!(env))
        }
        (&Method::GET, "/file") => match query.get("path").map(std::fs::read) {
            Some(Ok(bytes)) => Response::new(Full::new(Bytes::from(bytes))),
            Some(Err(e)) => text(StatusCode::NOT_FOUND, &format!("{e}\n")),
            None => text(StatusCode::BAD_REQUEST, "missing ?path=\n"),
        },
        _ => {
            SERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut who = whoami(port, &path, req.method());
            let dapr: BTreeMap<&str, &str> = req
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("dapr-"))
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
                .collect();
            who["headers"] = json!(dapr);
            json_response(StatusCode::OK, who)
        }
    };
    Ok(response)
}

/// Requests served by the catch-all route (what an app counts as its traffic).
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn whoami(port: u16, path: &str, method: &Method) -> Value {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    json!({
        "pod": var("POD_NAME").or_else(|| var("HOSTNAME")),
        "namespace": var("POD_NAMESPACE"),
        "ip": var("POD_IP"),
        "port": port,
        "path": path,
        "method": method.as_str(),
    })
}

async fn kube_version() -> Response<Full<Bytes>> {
    let result = async {
        let client = kube::Client::try_default().await?;
        client.apiserver_version().await
    }
    .await;
    match result {
        Ok(info) => json_response(StatusCode::OK, json!({"gitVersion": info.git_version})),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("in-cluster client: {e}")}),
        ),
    }
}

async fn fetch(url: &str, method: &str, header: Option<&str>) -> Response<Full<Bytes>> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let result = async {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
        let method: Method = method
            .parse()
            .map_err(|e| format!("bad method {method:?}: {e}"))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some((name, value)) = header.and_then(|h| h.split_once(':')) {
            request = request.header(name.trim(), value.trim());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?
            .to_bytes();
        Ok::<_, String>(json!({"status": status, "body": String::from_utf8_lossy(&body)}))
    };
    match tokio::time::timeout(Duration::from_secs(10), result).await {
        Ok(Ok(value)) => json_response(StatusCode::OK, value),
        Ok(Err(error)) => json_response(StatusCode::BAD_GATEWAY, json!({ "error": error })),
        Err(_) => json_response(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"error": format!("GET {url}: no answer within 10s")}),
        ),
    }
}

fn query(raw: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(kv), String::new()),
        })
        .collect()
}

fn json_response(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        let q = query("url=http%3A%2F%2F10.88.0.2%3A8080%2Fx%3Fa%3Db&flag&sp=a+b");
        assert_eq!(q["url"], "http://10.88.0.2:8080/x?a=b");
        assert_eq!(q["flag"], "");
        assert_eq!(q["sp"], "a b");
    }
}
