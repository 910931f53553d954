//! `ferry invoke`: call a method of a running app through a sidecar.

use std::{io::Write as _, path::PathBuf};

use bytes::Bytes;
use clap::Args;
use ferry_sidecar::{config::ferry_home, registry};
use http::{HeaderName, HeaderValue, Method, Request, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The app to call: an app ID, `app.namespace`, or an HTTPEndpoint name.
    #[arg(long, short = 'a')]
    pub app_id: String,

    /// The method (path) to call, for example `add` or `orders/1?expand=true`.
    #[arg(long, short = 'm')]
    pub method: String,

    /// The HTTP verb.
    #[arg(long, short = 'v', default_value = "POST", value_parser = parse_verb)]
    pub verb: Method,

    /// The request body.
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,

    /// A file whose content is the request body.
    #[arg(long, short = 'f')]
    pub data_file: Option<PathBuf>,

    /// The body's Content-Type; by default `application/json` when the body is JSON, else none.
    #[arg(long)]
    pub content_type: Option<String>,

    /// An extra header, `Name: value`; may be repeated.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,

    /// The sidecar to go through; by default the target app's own (or any running one).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub dapr_http_port: Option<u16>,

    /// Where running sidecars register (`<dir>/registry`); default `~/.ferry`.
    #[arg(long, env = "FERRY_HOME")]
    pub ferry_home: Option<PathBuf>,
}

fn parse_verb(s: &str) -> Result<Method, String> {
    let m = Method::from_bytes(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP method (for example GET, POST, PUT, DELETE)"))?;
    if m == Method::CONNECT {
        return Err("CONNECT cannot be invoked".into());
    }
    Ok(m)
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header: write it as \"Name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} has characters a header cannot carry"))?;
    Ok((name, value))
}

pub fn main(args: InvokeArgs) -> i32 {
    match crate::runtime(false).block_on(invoke(args)) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("ferry: {msg}");
            1
        }
    }
}

async fn invoke(args: InvokeArgs) -> Result<i32, String> {
    let port = match args.dapr_http_port {
        Some(p) => p,
        None => pick_sidecar(&args)?,
    };
    let body: Bytes = match (&args.data, &args.data_file) {
        (Some(d), _) => Bytes::from(d.clone()),
        (None, Some(f)) => std::fs::read(f)
            .map_err(|e| format!("cannot read --data-file {}: {e}", f.display()))?
            .into(),
        (None, None) => Bytes::new(),
    };
    let method = args.method.trim_start_matches('/');
    let url = format!(
        "http://127.0.0.1:{port}/v1.0/invoke/{}/method/{method}",
        args.app_id
    );
    let mut req = Request::builder()
        .method(args.verb.clone())
        .uri(&url)
        .body(Full::new(body.clone()))
        .map_err(|e| format!("cannot build a request for {url:?}: {e}"))?;
    let content_type = match &args.content_type {
        Some(ct) => Some(
            HeaderValue::from_str(ct)
                .map_err(|_| format!("--content-type {ct:?} is not a valid header value"))?,
        ),
        None if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_ok() => {
            Some(HeaderValue::from_static("application/json"))
        }
        None => None,
    };
    if let Some(ct) = content_type {
        req.headers_mut().insert(CONTENT_TYPE, ct);
    }
    for (name, value) in &args.headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
    // As an SDK does: the sidecar on this machine wants DAPR_API_TOKEN when it was started
    // with one. It goes only to that loopback port, and the sidecar removes it once checked.
    if let Some(token) = std::env::var("DAPR_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        && !req.headers().contains_key("dapr-api-token")
    {
        let value = HeaderValue::from_str(&token)
            .map_err(|_| "DAPR_API_TOKEN holds characters a header cannot carry".to_owned())?;
        req.headers_mut().insert("dapr-api-token", value);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client.request(req).await.map_err(|e| {
        format!("cannot reach the sidecar on port {port}: {e} (is it running? see ferry list)")
    })?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?
        .to_bytes();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&bytes);
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    if status.is_success() {
        Ok(0)
    } else {
        eprintln!("ferry: {} answered {status}", args.app_id);
        Ok(1)
    }
}

/// The target's own sidecar when it runs here (the call then stays local), else any sidecar.
fn pick_sidecar(args: &InvokeArgs) -> Result<u16, String> {
    let dir = ferry_home(args.ferry_home.clone()).join("registry");
    let entries =
        registry::scan(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let (app, ns) = match args.app_id.split_once('.') {
        Some((a, n)) => (a, Some(n)),
        None => (args.app_id.as_str(), None),
    };
    entries
        .iter()
        .find(|e| e.app_id == app && ns.is_none_or(|n| n == e.namespace))
        .or_else(|| entries.first())
        .map(|e| e.http_port)
        .ok_or_else(|| {
            format!(
                "no sidecar is running (none registered in {}): start one with ferry run, or pass --dapr-http-port",
                dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_verbs() {
        let (n, v) = parse_header("X-Thing:  a b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-thing", "a b"));
        assert!(parse_header("nocolon").is_err());
        assert_eq!(parse_verb("get").unwrap(), Method::GET);
        assert!(parse_verb("CONNECT").is_err());
        assert!(parse_verb("BAD VERB").is_err());
    }
}
