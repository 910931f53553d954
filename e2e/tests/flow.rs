//! The whole flow on the Tier-1 cluster, as a user runs it: ferry-operator and ferry-injector
//! run as pods from their images under `deploy/rbac/*.yaml`, the webhook is registered by
//! Service (the API server reaches it at its pod's address), apps are annotated Deployments
//! that the injector gives a `daprd` sidecar and the process kubelet runs, and calls go app →
//! sidecar → sidecar → app by app ID, across namespaces, to an HTTPEndpoint and to a URL.
//!
//! The test reaches a "client" app's sidecar at its pod IP (the client pod asks for
//! `dapr.io/sidecar-listen-addresses: 0.0.0.0`), which is what that app itself does on
//! `localhost:3500`.
//!
//! One mesh (operator + injector) at a time: the operator acts on every namespace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ferry_e2e::{ClusterEnv, eventually, install_crds, install_rbac, repo_root, run, with_temp_ns};
use http_body_util::{BodyExt as _, Full};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Secret, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const OPERATOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-operator:dev";
const INJECTOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-injector:dev";
const SIDECAR_IMAGE: &str = "ghcr.io/ferry-dev/ferryd:dev";
const TESTAPP_IMAGE: &str = "ferry.test/testapp:dev";
/// The label that puts a namespace under a test's injector (its namespaceSelector).
const MESH_LABEL: &str = "ferry.dev/e2e-mesh";

static ONE_MESH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === namespaces ===

/// Runs `test` with a control-plane namespace and `apps` app namespaces (labelled into the
/// mesh), all deleted afterwards whatever the outcome.
async fn with_mesh<F, Fut>(apps: usize, test: F)
where
    F: FnOnce(Client, Mesh, Vec<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _one = ONE_MESH.lock().await;
    with_temp_ns("flow-cp", move |client, cp| async move {
        let mesh = Mesh::install(&client, &cp).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut names = Vec::new();
        for i in 0..apps {
            let name = format!("{cp}-app{i}");
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"ferry.dev/e2e": "true", MESH_LABEL: cp}}
            }))
            .unwrap();
            namespaces
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            names.push(name);
        }
        let outcome = tokio::spawn(test(client.clone(), mesh.clone(), names.clone())).await;
        for name in &names {
            let _ = namespaces.delete(name, &Default::default()).await;
        }
        if let Err(e) = outcome {
            mesh.print_logs();
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("the test was cancelled: {e}");
        }
    })
    .await;
}

// === the control plane under test ===

#[derive(Clone)]
struct Mesh {
    cp: String,
}

impl Mesh {
    /// Installs CRDs, RBAC, the webhook configuration, the injector's Service, and the
    /// operator and injector pods; returns once both are ready (the injector's readiness
    /// includes its CA being in the webhook configuration).
    async fn install(client: &Client, cp: &str) -> Self {
        install_crds(client).await;
        let webhook = format!("ferry-injector-{cp}");
        let rbac = repo_root().join("deploy/rbac");
        // The sidecars' ClusterRole and its binding are cluster-scoped: this mesh's get its
        // namespace as a suffix, and the operator is told so.
        let sidecar_role = format!("ferry-sidecar-{cp}");
        install_rbac(
            client,
            &rbac.join("ferry-operator.yaml"),
            cp,
            &[("ferry-sidecar", &sidecar_role)],
        )
        .await
        .unwrap();
        install_rbac(
            client,
            &rbac.join("ferry-injector.yaml"),
            cp,
            &[("ferry-injector", &webhook)],
        )
        .await
        .unwrap();
        install_rbac(client, &rbac.join("ferry-sidecar.yaml"), cp, &[])
            .await
            .unwrap();

        let ns: Namespace = Api::all(client.clone()).get(cp).await.unwrap();
        let owner = json!([{"apiVersion": "v1", "kind": "Namespace", "name": cp, "uid": ns.uid()}]);
        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": webhook, "ownerReferences": owner},
            "webhooks": [{
                "name": "sidecar-injector.ferry.dev",
                "clientConfig": {
                    "service": {"namespace": cp, "name": "ferry-injector", "path": "/mutate", "port": 443},
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                    "operations": ["CREATE"], "scope": "Namespaced",
                }],
                "namespaceSelector": {"matchLabels": {MESH_LABEL: cp}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1", "v1beta1"],
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": 10,
            }],
        }))
        .unwrap();
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &mwc)
            .await
            .unwrap();

        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "ferry-injector"},
            "spec": {
                "selector": {"app": "ferry-injector"},
                "ports": [{"name": "https", "port": 443, "targetPort": "https", "appProtocol": "https"}],
            }
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), cp)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();

        let downward = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let operator: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ferry-operator", "labels": {"app": "ferry-operator"}},
            "spec": {
                "serviceAccountName": "ferry-operator",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "operator",
                    "image": OPERATOR_IMAGE,
                    "env": [
                        downward("POD_NAME", "metadata.name"),
                        downward("POD_NAMESPACE", "metadata.namespace"),
                        {"name": "FERRY_LOG", "value": "info,ferry_operator=debug"},
                        {"name": "FERRY_SERVICE_GRACE_SECONDS", "value": "5"},
                        {"name": "FERRY_SIDECAR_CLUSTER_ROLE", "value": sidecar_role},
                        {"name": "FERRY_SIDECAR_BINDING_NAME", "value": sidecar_role},
                    ],
                    "ports": [{"name": "admin", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                }]
            }
        }))
        .unwrap();
        let injector: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ferry-injector", "labels": {"app": "ferry-injector"}},
            "spec": {
                "serviceAccountName": "ferry-injector",
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "injector",
                    "image": INJECTOR_IMAGE,
                    "args": [
                        "--webhook-config-name", webhook,
                        "--sidecar-image", SIDECAR_IMAGE,
                        "--log-level", "debug",
                    ],
                    "env": [downward("POD_NAMESPACE", "metadata.namespace")],
                    "ports": [
                        {"name": "https", "containerPort": 4000},
                        {"name": "admin", "containerPort": 8080},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                }]
            }
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), cp);
        for pod in [operator, injector] {
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
        let mesh = Self { cp: cp.to_owned() };
        for name in ["ferry-operator", "ferry-injector"] {
            let started = Instant::now();
            loop {
                let pod = pods.get_opt(name).await.ok().flatten();
                if pod.as_ref().is_some_and(pod_ready) {
                    break;
                }
                if started.elapsed() > WAIT {
                    mesh.print_logs();
                    panic!(
                        "{name} did not become ready; last seen: {:?}",
                        pod.and_then(|p| p.status)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        mesh
    }

    fn print_logs(&self) {
        for (pod, container) in [
            ("ferry-operator", "operator"),
            ("ferry-injector", "injector"),
        ] {
            let log = pod_log(&self.cp, pod, container);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}/{pod} ---", self.cp);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The logs of every run of `container` in pods named `pod` (the kubelet's log files).
fn pod_log(ns: &str, pod: &str, container: &str) -> String {
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

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// === apps ===

/// An annotated Deployment of `image` with app ID `app_id`.
fn deployment(
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
async fn ready_pods(client: &Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
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

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a ready pod has an IP")
}

async fn create_deployment(client: &Client, ns: &str, d: &Deployment) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), d)
        .await
        .unwrap_or_else(|e| panic!("cannot create Deployment {ns}/{}: {e}", d.name_any()));
}

async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) {
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
async fn client_app(client: &Client, ns: &str) -> String {
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

struct Answer {
    status: u16,
    body: String,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

async fn send(
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
async fn call_until(
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
async fn outside_http(bridge: IpAddr) -> SocketAddr {
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
struct ExternalPki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn external_pki(server_ip: IpAddr) -> ExternalPki {
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
async fn external_tls(
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

async fn apply_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
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

async fn apply_http_endpoint(client: &Client, ns: &str, doc: Value) {
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

// === the tests ===

/// The seeds' samples as annotated Deployments in two namespaces, called by app ID in the
/// same namespace and across namespaces, in the URL, header and basic-auth forms; an unknown
/// app gets a fast error; an HTTPEndpoint with a secret header and mutual TLS; a URL.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn samples_call_each_other_by_app_id_across_namespaces() {
    with_mesh(2, |client, _mesh, ns| async move {
        let (a, b) = (&ns[0], &ns[1]);
        create_deployment(
            &client,
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
            &client,
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
        let sidecar = client_app(&client, a).await;
        ready_pods(&client, a, "cart", 1).await;
        ready_pods(&client, b, "math", 1).await;
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
                && miss.body.contains(a.as_str()),
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
        apply_secret(&client, a, "billing-key", &[("token", "key-1")]).await;
        apply_secret(
            &client,
            a,
            "billing-client",
            &[("tls.crt", &pki.client_cert), ("tls.key", &pki.client_key)],
        )
        .await;
        apply_http_endpoint(&client, a, json!({
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
        })).await;
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
        apply_secret(&client, a, "billing-key", &[("token", "key-2")]).await;
        let started = Instant::now();
        call_until(&http, "GET", &url, &[], "", 200).await;
        eprintln!(
            "a rotated Secret reached the sidecar in {:?}",
            started.elapsed()
        );
    })
    .await;
}

/// Steady load from the client app to a callee scaled 1 → 3 → 1: no idempotent request is
/// lost, and every replica takes traffic while it is there.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn scaling_the_callee_loses_no_request() {
    with_mesh(1, |client, _mesh, ns| async move {
        let a = &ns[0];
        // A well-behaved app: it serves on for 3 s after SIGTERM, so that its endpoint leaves
        // the tables before it stops.
        create_deployment(&client, a, &deployment("echo", TESTAPP_IMAGE, "echo", 8080, 1,
            json!([{"name": "DRAIN_SECONDS", "value": "3"},
                   {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]), &[])).await;
        let sidecar = client_app(&client, a).await;
        ready_pods(&client, a, "echo", 1).await;
        let http = http_client();
        let url = format!("{sidecar}/v1.0/invoke/echo/method/whoami");
        call_until(&http, "GET", &url, &[], "", 200).await;

        let load = Load::start(http.clone(), url.clone(), 4);
        scale(&client, a, "echo", 3).await;
        let three = ready_pods(&client, a, "echo", 3).await;
        let names: Vec<String> = three.iter().map(|p| p.name_any()).collect();
        eventually("all three replicas to take traffic", WAIT, || {
            let seen = load.pods();
            let names = names.clone();
            async move {
                let missing: Vec<&String> = names.iter().filter(|n| !seen.contains_key(*n)).collect();
                if missing.is_empty() { Ok(()) } else { Err(format!("no traffic yet to {missing:?}; seen {seen:?}")) }
            }
        })
        .await;
        scale(&client, a, "echo", 1).await;
        ready_pods(&client, a, "echo", 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = load.stop().await;
        eprintln!("scaling 1 → 3 → 1: {report}");
        assert!(report.ok > 100, "{report}");
        assert_eq!(report.failed, 0, "{report}");
    })
    .await;
}

/// SIGKILL to one callee pod's sidecar under load: requests that could not connect go to
/// another pod, none hangs, and only requests already in flight to the killed sidecar may fail.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn killing_a_callee_sidecar_retries_on_another_pod() {
    with_mesh(1, |client, _mesh, ns| async move {
        let a = &ns[0];
        create_deployment(&client, a, &deployment("echo", TESTAPP_IMAGE, "echo", 8080, 3,
            json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]), &[])).await;
        let sidecar = client_app(&client, a).await;
        let pods = ready_pods(&client, a, "echo", 3).await;
        let http = http_client();
        let url = format!("{sidecar}/v1.0/invoke/echo/method/whoami");
        call_until(&http, "GET", &url, &[], "", 200).await;
        let client_pod = Api::<Pod>::namespaced(client.clone(), a)
            .list(&ListParams::default().labels("app=client"))
            .await
            .unwrap()
            .items
            .remove(0)
            .name_any();
        let retries_before = retries_logged(a, &client_pod);

        let load = Load::start(http.clone(), url.clone(), 4);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = pods[0].name_any();
        kill_sidecar(a, &victim);
        let killed_at = load.total();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let report = load.stop().await;
        let retries = retries_logged(a, &client_pod) - retries_before;
        eprintln!("sidecar of {victim} killed after {killed_at} requests: {report}; connection retries logged by the caller: {retries}");
        assert_eq!(report.timed_out, 0, "no accepted request hangs: {report}");
        assert!(report.failed <= 4, "at most the requests in flight to the killed sidecar fail: {report}");
        assert!(report.ok > 100, "{report}");
    })
    .await;
}

fn retries_logged(ns: &str, pod: &str) -> usize {
    pod_log(ns, pod, "daprd")
        .matches("cannot reach a peer sidecar")
        .count()
}

/// SIGKILL to the ferryd process of pod `ns/pod` (found by the environment the injector gave
/// it).
fn kill_sidecar(ns: &str, pod: &str) {
    let want = [format!("POD_NAME={pod}"), format!("NAMESPACE={ns}")];
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_link(e.path().join("exe"))
                .is_ok_and(|x| x.file_name().is_some_and(|n| n == "ferryd"))
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                let vars: Vec<String> = env
                    .split(|b| *b == 0)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                want.iter().all(|w| vars.contains(w))
            })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(pids.len(), 1, "the ferryd of {ns}/{pod}: {pids:?}");
    run("kill", &["-KILL", &pids[0]]).unwrap();
}

// === load ===

/// `workers` closed loops of GET `url`, counting outcomes and which pod answered.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    pods: std::sync::Mutex<BTreeMap<String, u64>>,
    failures: std::sync::Mutex<Vec<String>>,
}

struct Report {
    ok: u64,
    failed: u64,
    timed_out: u64,
    pods: BTreeMap<String, u64>,
    failures: Vec<String>,
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
    fn start(http: HttpClient, url: String, workers: usize) -> Self {
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

    fn pods(&self) -> BTreeMap<String, u64> {
        self.stats.pods.lock().unwrap().clone()
    }

    fn total(&self) -> u64 {
        self.stats.ok.load(Ordering::Relaxed) + self.stats.failed.load(Ordering::Relaxed)
    }

    async fn stop(self) -> Report {
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
