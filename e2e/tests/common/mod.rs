//! What the Tier-1 suites that install a whole Ferry share (flow.rs installs it by hand,
//! helm.rs with the chart): apps as annotated Deployments, an HTTP client that reaches sidecars
//! at their pod IPs, servers outside the cluster, a load loop, and the invocation scenario itself.
//!
//! Each test binary uses a part of this module, so the rest would be dead code there.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ferry_e2e::{ClusterEnv, eventually, k8s_version, repo_root, run};
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

pub mod mesh;

pub const WAIT: Duration = Duration::from_secs(90);
pub const TESTAPP_IMAGE: &str = "ferry.test/testapp:dev";
/// The label that puts a namespace under a test's injector (its namespaceSelector).
pub const MESH_LABEL: &str = "ferry.dev/e2e-mesh";

// === kubectl ===

/// Where `e2e/controlplane/build.sh` keeps what it builds (helm, kubectl, the control plane).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FERRY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/ferry")
        })
}

pub fn kubectl_bin() -> PathBuf {
    cache_dir()
        .join("kubernetes")
        .join(k8s_version())
        .join("bin/kubectl")
}

/// kubectl against the Tier-1 cluster, with `stdin`: (stdout, stderr), or why it failed.
pub fn kubectl(args: &[&str], stdin: &str) -> Result<(String, String), String> {
    use std::io::Write as _;
    let kubeconfig = ClusterEnv::load()
        .and_then(|e| e.kubeconfig())
        .expect("the Tier-1 cluster is up (make e2e)");
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if out.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(format!(
            "kubectl {} failed: {stderr}{stdout}",
            args.join(" ")
        ))
    }
}

// === namespaces ===

/// Creates `n` app namespaces `<cp>-app<i>`, labelled into the mesh of control plane `cp`.
pub async fn create_app_namespaces(client: &Client, cp: &str, n: usize) -> Vec<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{cp}-app{i}");
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"ferry.dev/e2e": "true", MESH_LABEL: cp}}
        }))
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        names.push(name);
    }
    names
}

/// Deletes namespaces (whatever their state), without waiting.
pub async fn delete_namespaces(client: &Client, names: &[String]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let _ = namespaces.delete(name, &Default::default()).await;
    }
}

/// Removes the trust bundle ConfigMaps a CA published in every namespace (README's uninstall
/// step); call it once the operators that write them are gone.
pub async fn remove_trust_bundles(client: &Client) {
    use k8s_openapi::api::core::v1::ConfigMap;
    let lp = ListParams::default()
        .fields("metadata.name=dapr-trust-bundle")
        .labels("app.kubernetes.io/managed-by=ferry-operator");
    let Ok(list) = Api::<ConfigMap>::all(client.clone())
        .list_metadata(&lp)
        .await
    else {
        return;
    };
    for cm in list.items {
        if let Some(ns) = cm.metadata.namespace.as_deref() {
            let _ = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .delete("dapr-trust-bundle", &Default::default())
                .await;
        }
    }
}

// === pods ===

/// The logs of every run of `container` in pods named `pod` (the kubelet's log files).
pub fn pod_log(ns: &str, pod: &str, container: &str) -> String {
    let dir = repo_root().join("e2e/.run/kubelet/pods");
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| std::fs::read_to_string(e.path().join(format!("{container}.log"))).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// === apps ===

/// An annotated Deployment of `image` with app ID `app_id`.
pub fn deployment(
    name: &str,
    image: &str,
    app_id: &str,
    app_port: u16,
    replicas: i32,
    env: Value,
    annotations: &[(&str, &str)],
) -> Deployment {
    let mut ann: BTreeMap<String, String> = BTreeMap::from([
        ("dapr.io/enabled".into(), "true".into()),
        ("dapr.io/app-id".into(), app_id.into()),
        ("dapr.io/app-port".into(), app_port.to_string()),
        // Fast enough for tests (Dapr's defaults are 180 s and 10 s).
        (
            "dapr.io/sidecar-liveness-probe-delay-seconds".into(),
            "3".into(),
        ),
        (
            "dapr.io/sidecar-liveness-probe-period-seconds".into(),
            "2".into(),
        ),
    ]);
    for (k, v) in annotations {
        ann.insert((*k).into(), (*v).into());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": ann},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{"name": "app", "image": image, "env": env}],
                }
            }
        }
    }))
    .unwrap()
}

/// Waits until exactly `n` pods of Deployment `app` are ready and none is terminating or
/// pending; returns them.
pub async fn ready_pods(client: &Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={app}"));
    eventually(&format!("{n} ready pods of {ns}/{app}"), WAIT, || {
        let (pods, lp) = (pods.clone(), lp.clone());
        async move {
            let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
            let ready = list.items.iter().filter(|p| pod_ready(p)).count();
            if ready == n && list.items.len() == n {
                Ok(list.items)
            } else {
                Err(format!(
                    "{ready} ready of {}: {:?}",
                    list.items.len(),
                    list.items
                        .iter()
                        .map(|p| (
                            p.name_any(),
                            p.status.as_ref().and_then(|s| s.phase.clone()),
                            p.metadata.deletion_timestamp.is_some()
                        ))
                        .collect::<Vec<_>>()
                ))
            }
        }
    })
    .await
}

pub fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a ready pod has an IP")
}

pub async fn create_deployment(client: &Client, ns: &str, d: &Deployment) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), d)
        .await
        .unwrap_or_else(|e| panic!("cannot create Deployment {ns}/{}: {e}", d.name_any()));
}

pub async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// The test's client app: the test app with its sidecar's API open on the pod IP.
pub async fn client_app(client: &Client, ns: &str) -> String {
    let d = deployment(
        "client",
        TESTAPP_IMAGE,
        "client",
        8080,
        1,
        json!([]),
        &[
            ("dapr.io/sidecar-listen-addresses", "0.0.0.0"),
            ("dapr.io/log-level", "debug"),
        ],
    );
    create_deployment(client, ns, &d).await;
    let pods = ready_pods(client, ns, "client", 1).await;
    let pod = &pods[0];
    let containers: Vec<&str> = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        containers,
        ["app", "daprd"],
        "the injector added the sidecar"
    );
    format!("http://{}:3500", pod_ip(pod))
}

// === HTTP ===

pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// The tests' client: hyper's defaults, pooled connections kept idle for 90 s, like most
/// clients. ferryd keeps idle keep-alive connections open as daprd does, so reusing one never
/// races a close.
pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{method} {url}: no answer within {timeout:?}"))?
}

/// Calls until the answer is `want_status` (apps and tables take a moment to meet).
pub async fn call_until(
    http: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    want_status: u16,
) -> String {
    eventually(
        &format!("{method} {url} to answer {want_status}"),
        WAIT,
        || async {
            let a = send(http, method, url, headers, body, Duration::from_secs(10)).await?;
            if a.status == want_status {
                Ok(a.body)
            } else {
                Err(format!("{}: {}", a.status, a.body))
            }
        },
    )
    .await
}

// === servers outside the cluster (on the bridge) ===

/// A plain HTTP server on the bridge address that answers `hello from outside`.
pub async fn outside_http(bridge: IpAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((bridge, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let text = format!("hello from outside: {}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// PEM material for the "external" TLS service and its client.
pub struct ExternalPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub fn external_pki(server_ip: IpAddr) -> ExternalPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "external-ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |sans: Vec<SanType>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec![SanType::IpAddress(server_ip)], "billing");
    let (client_cert, client_key) = leaf(vec![], "ferry-client");
    ExternalPki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// An HTTPS server on the bridge address that requires a client certificate signed by the
/// PKI's CA and the header `x-api-key: <current key>`; it answers JSON with what it saw.
pub async fn external_tls(
    bridge: IpAddr,
    pki: &ExternalPki,
    key: Arc<std::sync::Mutex<String>>,
) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .map(Result::unwrap)
            .collect();
    let server_key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, server_key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((bridge, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, key) = (acceptor.clone(), key.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let want = key.lock().unwrap().clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let ok = h("x-api-key").as_deref() == Some(want.as_str());
                            let body = json!({
                                "path": req.uri().path(),
                                "query": req.uri().query(),
                                "x-static": h("x-static"),
                                "key-ok": ok,
                            })
                            .to_string();
                            let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                            if !ok {
                                *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

pub async fn apply_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name}, "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("ferry-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

pub async fn apply_http_endpoint(client: &Client, ns: &str, doc: Value) {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "dapr.io",
        "v1alpha1",
        "HTTPEndpoint",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
    let obj: DynamicObject = serde_json::from_value(doc).unwrap();
    api.patch(
        &name,
        &PatchParams::apply("ferry-e2e").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
}

// === the scenario ===

/// The seeds' samples as annotated Deployments in namespaces `a` (cart, and the test's client
/// app) and `b` (math), called by app ID in the same namespace and across namespaces, in the
/// URL, header and basic-auth forms; an unknown app gets a fast error; a URL outside the
/// cluster; an HTTPEndpoint with a header from a Secret and mutual TLS, whose Secret then
/// rotates. Returns the client app's sidecar URL.
pub async fn samples_across_namespaces(client: &Client, a: &str, b: &str) -> String {
    create_deployment(
        client,
        a,
        &deployment(
            "cart",
            "ferry.test/cart:dev",
            "cart",
            5000,
            1,
            json!([{"name": "APP_PORT", "value": "5000"}]),
            &[],
        ),
    )
    .await;
    create_deployment(
        client,
        b,
        &deployment(
            "math",
            "ferry.test/math-service:dev",
            "math",
            3000,
            1,
            json!([{"name": "APP_PORT", "value": "3000"}]),
            &[],
        ),
    )
    .await;
    let sidecar = client_app(client, a).await;
    ready_pods(client, a, "cart", 1).await;
    ready_pods(client, b, "math", 1).await;
    let http = http_client();

    // Same namespace, URL form.
    let body = call_until(
        &http,
        "POST",
        &format!("{sidecar}/v1.0/invoke/cart/method/add"),
        &[],
        "{}",
        200,
    )
    .await;
    assert_eq!(body, "Added!");
    // Across namespaces, URL form.
    let json_ct = [("content-type", "application/json")];
    let sum = call_until(
        &http,
        "POST",
        &format!("{sidecar}/v1.0/invoke/math.{b}/method/add"),
        &json_ct,
        r#"{"arg1": 2, "arg2": 3}"#,
        200,
    )
    .await;
    assert_eq!(sum, "5");
    // Header form.
    let target = format!("math.{b}");
    let a2 = send(
        &http,
        "POST",
        &format!("{sidecar}/add"),
        &[
            ("dapr-app-id", target.as_str()),
            ("content-type", "application/json"),
        ],
        r#"{"arg1": 40, "arg2": 2}"#,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!((a2.status, a2.body.as_str()), (200, "42"));
    // Basic-auth form, with a real client (curl turns the userinfo into the header).
    let host = sidecar.trim_start_matches("http://");
    let out = run(
        "curl",
        &[
            "-sS",
            "-X",
            "POST",
            &format!("http://dapr-app-id:cart@{host}/add"),
        ],
    )
    .unwrap();
    assert_eq!(out, "Added!");

    // An unknown app: a fast, clear error.
    let started = Instant::now();
    let miss = send(
        &http,
        "GET",
        &format!("{sidecar}/v1.0/invoke/nosuchapp/method/x"),
        &[],
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(miss.status, 500, "{}", miss.body);
    assert!(
        miss.body.contains("ERR_DIRECT_INVOKE")
            && miss.body.contains("nosuchapp")
            && miss.body.contains(a),
        "{}",
        miss.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // A URL outside the cluster.
    let bridge = ClusterEnv::load().unwrap().bridge_ip().unwrap();
    let outside = outside_http(bridge).await;
    let a3 = send(
        &http,
        "GET",
        &format!("{sidecar}/v1.0/invoke/http://{outside}/method/hello"),
        &[],
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        (a3.status, a3.body.as_str()),
        (200, "hello from outside: /hello")
    );

    // An HTTPEndpoint: a secret header from a Secret and mutual TLS from a Secret.
    let pki = external_pki(bridge);
    let key = Arc::new(std::sync::Mutex::new("key-1".to_owned()));
    let billing = external_tls(bridge, &pki, key.clone()).await;
    apply_secret(client, a, "billing-key", &[("token", "key-1")]).await;
    apply_secret(
        client,
        a,
        "billing-client",
        &[("tls.crt", &pki.client_cert), ("tls.key", &pki.client_key)],
    )
    .await;
    apply_http_endpoint(
        client,
        a,
        json!({
            "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
            "metadata": {"name": "billing", "namespace": a},
            "spec": {
                "baseUrl": format!("https://{billing}"),
                "headers": [
                    {"name": "x-api-key", "secretKeyRef": {"name": "billing-key", "key": "token"}},
                    {"name": "x-static", "value": "from-endpoint"},
                ],
                "clientTLS": {
                    "rootCA": {"value": pki.ca},
                    "certificate": {"secretKeyRef": {"name": "billing-client", "key": "tls.crt"}},
                    "privateKey": {"secretKeyRef": {"name": "billing-client", "key": "tls.key"}},
                },
            },
        }),
    )
    .await;
    let url = format!("{sidecar}/v1.0/invoke/billing/method/invoices?month=11");
    let seen: Value = serde_json::from_str(
        &call_until(&http, "GET", &url, &[("x-static", "from-caller")], "", 200).await,
    )
    .unwrap();
    assert_eq!(seen["path"], "/invoices");
    assert_eq!(seen["query"], "month=11");
    assert_eq!(
        seen["x-static"], "from-endpoint",
        "the endpoint's header wins"
    );
    // The Secret changes: the sidecar picks the new value up.
    *key.lock().unwrap() = "key-2".to_owned();
    apply_secret(client, a, "billing-key", &[("token", "key-2")]).await;
    let started = Instant::now();
    call_until(&http, "GET", &url, &[], "", 200).await;
    eprintln!(
        "a rotated Secret reached the sidecar in {:?}",
        started.elapsed()
    );
    sidecar
}

// === load ===

/// `workers` closed loops of GET `url`, counting outcomes and which pod answered.
pub struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
pub struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    pods: std::sync::Mutex<BTreeMap<String, u64>>,
    failures: std::sync::Mutex<Vec<String>>,
}

pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub pods: BTreeMap<String, u64>,
    pub failures: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} ok, {} failed ({} timed out); by pod {:?}; first failures {:?}",
            self.ok + self.failed,
            self.ok,
            self.failed,
            self.timed_out,
            self.pods,
            self.failures.iter().take(5).collect::<Vec<_>>()
        )
    }
}

impl Load {
    pub fn start(http: HttpClient, url: String, workers: usize) -> Self {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stats = Arc::new(Stats::default());
        let tasks = (0..workers)
            .map(|_| {
                let (http, url, rx, stats) = (http.clone(), url.clone(), rx.clone(), stats.clone());
                tokio::spawn(async move {
                    while !*rx.borrow() {
                        match send(&http, "GET", &url, &[], "", Duration::from_secs(10)).await {
                            Ok(a) if a.status == 200 => {
                                stats.ok.fetch_add(1, Ordering::Relaxed);
                                let pod = serde_json::from_str::<Value>(&a.body)
                                    .ok()
                                    .and_then(|v| v["pod"].as_str().map(str::to_owned))
                                    .unwrap_or_default();
                                *stats.pods.lock().unwrap().entry(pod).or_default() += 1;
                            }
                            Ok(a) => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                stats
                                    .failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{}: {}", a.status, a.body));
                            }
                            Err(e) => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                if e.contains("no answer within") {
                                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                                }
                                stats.failures.lock().unwrap().push(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Self { stop, tasks, stats }
    }

    pub fn pods(&self) -> BTreeMap<String, u64> {
        self.stats.pods.lock().unwrap().clone()
    }

    pub fn total(&self) -> u64 {
        self.stats.ok.load(Ordering::Relaxed) + self.stats.failed.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        Report {
            ok: self.stats.ok.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            timed_out: self.stats.timed_out.load(Ordering::Relaxed),
            pods: self.stats.pods.lock().unwrap().clone(),
            failures: self.stats.failures.lock().unwrap().clone(),
        }
    }
}
