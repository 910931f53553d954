//! The sidecar injector webhook (`ferry-injector`) against the real API server. Run with
//! `make e2e` (inside the cluster's network namespace).
//!
//! Each test runs its own injector as a child process on 127.0.0.1 (free ports; the API server
//! lives in the same network namespace, so a webhook `url` of `https://127.0.0.1:<port>/mutate`
//! reaches it; the rotation tests listen on every address, see [`LOOPBACKS`]) and registers it
//! in a MutatingWebhookConfiguration of its own whose webhooks only match the test's namespace,
//! so tests running side by side (and the other test files) never see each other's webhooks. Configurations are owned by the namespace (the garbage collector
//! removes them with it when a test fails half-way) and deleted explicitly at the end.
//!
//! Pods that only need to be stored, not run, carry a scheduling gate: the process kubelet never
//! binds them, and they go at once when their namespace does. When a test fails, the tail of its
//! injector's log is printed (FERRY_E2E_INJECTOR_LOGS=1 prints it always).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_e2e::{
    ClusterEnv, client_as, eventually, free_port, http_get, repo_root, run, with_temp_ns,
    workspace_bin,
};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        core::v1::{Container, Event, Namespace, Pod, Secret},
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

/// What the injector puts into pods; `e2e/images.yaml` maps it to target/debug/ferryd.
const SIDECAR_IMAGE: &str = "ghcr.io/ferry-dev/ferryd:dev";
const TESTAPP: &str = "ferry.test/testapp:dev";
/// The app of pods that are only stored, never run.
const APP_IMAGE: &str = "busybox:1.36";
/// Keeps a pod away from the process kubelet (it does not bind gated pods).
const NEVER_SCHEDULED: &str = "ferry.dev/e2e-stored-only";
const WAIT: Duration = Duration::from_secs(60);
/// The sidecar container's name, as in Dapr.
const DAPRD: &str = "daprd";
/// PEM armour around bytes that are no certificate.
const NOT_A_CERTIFICATE: &str =
    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";

// === certificates ===

/// A CA made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A serving certificate and its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A new key and a leaf for 127.0.0.1, signed by this CA.
    fn leaf(&self, cn: &str) -> Leaf {
        self.leaf_for(cn, &["127.0.0.1"])
    }

    /// A new key and a leaf for `sans`, signed by this CA.
    fn leaf_for(&self, cn: &str, sans: &[&str]) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf signed by the CA");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Connects to 127.0.0.1:`port` with TLS, trusting only `ca` and checking the certificate
/// against `server_name`; answers the DER of the leaf the server presented.
async fn served_leaf(
    port: u16,
    ca: &CertificateDer<'static>,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| format!("bad CA: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = connector.connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        Ok::<_, std::io::Error>(
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok(Some(der))) => Ok(der),
        Ok(Ok(None)) => Err("the server presented no certificate".into()),
        Ok(Err(e)) => Err(format!("TLS handshake as {server_name}: {e}")),
        Err(_) => Err(format!("TLS handshake as {server_name} timed out")),
    }
}

// === files ===

/// A scratch directory, removed when the test passes and kept (and named) when it fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(ns: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-e2e-injector-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for a look)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A directory laid out as the kubelet projects a Secret volume: the files live in a
/// timestamped directory, `..data` links to it and each file name links to `..data/<name>`. An
/// update writes a new directory and renames a new `..data` link over the old one, as the
/// kubelet's AtomicWriter does, so a reader never sees half an update.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self { dir, generation: 0 }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn update(&mut self, files: &[(&str, &[u8])]) {
        use std::os::unix::fs::symlink;
        self.generation += 1;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let ts_name = format!("..{stamp}.{}", self.generation);
        let ts_dir = self.dir.join(&ts_name);
        std::fs::create_dir(&ts_dir).unwrap();
        for (name, data) in files {
            write(&ts_dir.join(name), data);
        }
        let data_link = self.dir.join("..data");
        let old = std::fs::read_link(&data_link).ok();
        let tmp_link = self.dir.join("..data_tmp");
        symlink(&ts_name, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, &data_link).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

// === the injector under test ===

/// A `ferry-injector` child process, killed when dropped. When the test panics (or
/// FERRY_E2E_INJECTOR_LOGS is set) the tail of its log is printed.
struct Injector {
    child: tokio::process::Child,
    name: String,
    port: u16,
    admin: u16,
    log: PathBuf,
}

impl Injector {
    /// Starts the injector with `args` (plus listen addresses on free ports, the test sidecar
    /// image and debug logs), writing its output to `<dir>/<name>.log`.
    fn start(name: &str, dir: &Path, args: &[String], env: &[(&str, &Path)]) -> Self {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        Self::start_on(listen, name, dir, args, env)
    }

    /// [`Injector::start`], serving admission on `listen`.
    fn start_on(
        listen: SocketAddr,
        name: &str,
        dir: &Path,
        args: &[String],
        env: &[(&str, &Path)],
    ) -> Self {
        let port = listen.port();
        let admin = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().unwrap();
        let mut cmd = tokio::process::Command::new(workspace_bin("ferry-injector"));
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--sidecar-image")
            .arg(SIDECAR_IMAGE)
            .arg("--log-level")
            .arg("debug")
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("cannot start ferry-injector");
        Self {
            child,
            name: name.to_owned(),
            port,
            admin,
            log,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    async fn readyz(&self) -> Result<(u16, String), String> {
        http_get(
            &format!("http://127.0.0.1:{}/readyz", self.admin),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| format!("{e:#}"))
    }

    /// Panics when the process has exited.
    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("injector {} exited: {status}", self.name);
        }
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            self.check_running();
            let last = match self.readyz().await {
                Ok((200, _)) => return,
                Ok((code, body)) => format!("{code} {body}"),
                Err(e) => e,
            };
            assert!(
                start.elapsed() < WAIT,
                "injector {} not ready after {WAIT:?}; /readyz: {last}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        let (code, body) = http_get(
            &format!("http://127.0.0.1:{}/metrics", self.admin),
            Duration::from_secs(2),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read the metrics of injector {}: {e:#}", self.name));
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// The counter `name` summed over the samples whose labels include `labels`.
    async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        counter(&self.metrics().await, name, labels)
    }

    async fn admissions(&self, decision: &str, reason: Option<&str>) -> f64 {
        self.counter(ADMISSIONS, &admission_labels(decision, reason))
            .await
    }

    /// Waits until counter `name` (summed as in [`Injector::counter`]) has passed `before`.
    async fn wait_counter_above(&self, name: &str, labels: &[(&str, &str)], before: f64) {
        let what = format!("{name}{labels:?} to pass {before}");
        eventually(&what, Duration::from_secs(10), || async {
            let metrics = self.metrics().await;
            let now = counter(&metrics, name, labels);
            if now > before {
                Ok(())
            } else {
                let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(name)).collect();
                Err(format!("{now}; samples:\n{}", lines.join("\n")))
            }
        })
        .await;
    }

    async fn wait_admissions_above(&self, decision: &str, reason: Option<&str>, before: f64) {
        self.wait_counter_above(ADMISSIONS, &admission_labels(decision, reason), before)
            .await;
    }

    /// Kills the process and waits for it.
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FERRY_E2E_INJECTOR_LOGS").is_some() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- last lines of injector {} ({}) ---",
                self.name,
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

const ADMISSIONS: &str = "ferry_injector_admissions_total";
const RELOADS: &str = "ferry_injector_certificate_reloads_total";

fn admission_labels<'a>(decision: &'a str, reason: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![("decision", decision)];
    labels.extend(reason.map(|r| ("reason", r)));
    labels
}

/// Sums the samples of counter `name` (in the Prometheus text format) whose labels include
/// every pair of `labels`.
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{')?.split_once("} "))
        .filter(|(have, _)| {
            let have: Vec<&str> = have.split(',').map(str::trim).collect();
            want.iter().all(|w| have.contains(&w.as_str()))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// The flags of files mode.
fn files_mode_args(cert: &Path, key: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--tls-cert-file".to_owned(),
        cert.display().to_string(),
        "--tls-key-file".to_owned(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

// === webhook configurations ===

/// One webhook aimed at `url`, for Pod CREATE. [`WebhookConfig::create`] adds the namespace
/// selector.
fn webhook(name: &str, url: &str, ca_pem: Option<&str>, failure_policy: &str) -> Value {
    let mut client_config = json!({ "url": url });
    if let Some(ca) = ca_pem {
        client_config["caBundle"] =
            serde_json::to_value(ByteString(ca.as_bytes().to_vec())).unwrap();
    }
    json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }],
        "failurePolicy": failure_policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "reinvocationPolicy": "Never",
    })
}

/// A MutatingWebhookConfiguration of one test: every webhook matches only its namespace.
struct WebhookConfig {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    ns: String,
}

impl WebhookConfig {
    /// Creates configuration `name`, owned by namespace `ns` and with each webhook limited to it.
    async fn create(client: &Client, ns: &str, name: &str, webhooks: Vec<Value>) -> Self {
        let namespace: Namespace = Api::all(client.clone()).get(ns).await.unwrap();
        let config = Self {
            api: Api::all(client.clone()),
            name: name.to_owned(),
            ns: ns.to_owned(),
        };
        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {"ferry.dev/e2e": "true"},
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Namespace",
                    "name": ns, "uid": namespace.uid().unwrap(),
                }],
            },
            "webhooks": config.scoped(webhooks),
        }))
        .expect("a webhook configuration literal");
        config
            .api
            .create(&PostParams::default(), &mwc)
            .await
            .unwrap_or_else(|e| panic!("cannot create MutatingWebhookConfiguration {name}: {e}"));
        config
    }

    fn scoped(&self, mut webhooks: Vec<Value>) -> Vec<Value> {
        for w in &mut webhooks {
            w["namespaceSelector"] =
                json!({"matchLabels": {"kubernetes.io/metadata.name": self.ns}});
        }
        webhooks
    }

    async fn get(&self) -> MutatingWebhookConfiguration {
        self.api.get(&self.name).await.unwrap()
    }

    /// Replaces the webhooks; answers the configuration as written.
    async fn set_webhooks(&self, webhooks: Vec<Value>) -> MutatingWebhookConfiguration {
        self.api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "webhooks": self.scoped(webhooks) })),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot update {}: {e}", self.name))
    }

    async fn delete(self) {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete {}: {e}", self.name));
    }
}

/// The caBundle of every webhook of `mwc` (`None` for a webhook without one).
fn ca_bundles(mwc: &MutatingWebhookConfiguration) -> Vec<Option<Vec<u8>>> {
    mwc.webhooks
        .iter()
        .flatten()
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .filter(|b| !b.is_empty())
        })
        .collect()
}

// === pods ===

/// The annotations of a Dapr app.
fn dapr(app_id: &str, app_port: &str) -> Value {
    json!({
        "dapr.io/enabled": "true",
        "dapr.io/app-id": app_id,
        "dapr.io/app-port": app_port,
    })
}

/// The spec of a pod that is stored but never runs (a scheduling gate keeps it unbound).
fn stored_spec() -> Value {
    json!({
        "schedulingGates": [{"name": NEVER_SCHEDULED}],
        "containers": [{
            "name": "app",
            "image": APP_IMAGE,
            "command": ["sleep", "3600"],
            "env": [{"name": "GREETING", "value": "hello"}],
        }],
    })
}

fn stored_pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": stored_spec(),
    }))
    .expect("a pod literal")
}

fn stored_deployment(name: &str, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": stored_spec(),
            },
        },
    }))
    .expect("a deployment literal")
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// The message of an API error (the Status the API server answered), else the error itself.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => format!("{other:#}"),
    }
}

/// Every `daprd` container of the pod, app containers and init containers alike.
fn sidecars(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().expect("a pod has a spec");
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name == DAPRD)
        .collect()
}

fn container<'p>(pod: &'p Pod, name: &str) -> &'p Container {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("pod {} has no container {name}", pod.name_any()))
}

/// The value following `flag` in the container's args.
fn arg<'c>(c: &'c Container, flag: &str) -> Option<&'c str> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn env<'c>(c: &'c Container, name: &str) -> Vec<&'c str> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .map(|e| e.value.as_deref().unwrap_or("<valueFrom>"))
        .collect()
}

/// The downward-API field of env var `name` of the container.
fn field_ref<'c>(c: &'c Container, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name && e.value.is_none())?
        .value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.as_str())
}

fn label<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn show(pod: &Pod) -> String {
    serde_json::to_string_pretty(pod).unwrap_or_default()
}

/// Checks that `pod` (of app `app_id`, in `ns`) carries exactly one sidecar, set up as the
/// injector promises.
fn assert_injected(pod: &Pod, ns: &str, app_id: &str, app_port: &str) {
    let found = sidecars(pod);
    assert_eq!(
        found.len(),
        1,
        "pod {} must have exactly one {DAPRD} container:\n{}",
        pod.name_any(),
        show(pod)
    );
    let daprd = found[0];
    let ctx = || format!("the {DAPRD} container:\n{}", show(pod));
    assert_eq!(daprd.image.as_deref(), Some(SIDECAR_IMAGE), "{}", ctx());
    assert_eq!(arg(daprd, "--app-id"), Some(app_id), "{}", ctx());
    assert_eq!(arg(daprd, "--app-port"), Some(app_port), "{}", ctx());
    assert_eq!(arg(daprd, "--mode"), Some("kubernetes"), "{}", ctx());
    // The pod's own facts come from the downward API (a ReplicaSet's pods have no name yet).
    assert_eq!(arg(daprd, "--namespace"), None, "{}", ctx());
    for (name, path) in [
        ("NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
        ("POD_IP", "status.podIP"),
    ] {
        assert_eq!(field_ref(daprd, name), Some(path), "{name}: {}", ctx());
    }
    assert_eq!(pod.namespace().as_deref(), Some(ns), "{}", ctx());
    assert_eq!(label(pod, "dapr.io/app-id"), Some(app_id), "{}", ctx());
    assert_eq!(
        label(pod, "dapr.io/sidecar-injected"),
        Some("true"),
        "{}",
        ctx()
    );
    assert_eq!(
        label(pod, "dapr.io/metrics-enabled"),
        Some("true"),
        "{}",
        ctx()
    );
    let app = container(pod, "app");
    assert_eq!(env(app, "DAPR_HTTP_PORT"), ["3500"], "{}", ctx());
    assert_eq!(env(app, "DAPR_GRPC_PORT"), ["50001"], "{}", ctx());
    assert_eq!(env(app, "APP_ID"), [app_id], "{}", ctx());
    assert_eq!(env(app, "GREETING"), ["hello"], "the app's own env stays");
}

/// Waits until the API server calls the webhooks of a configuration just created or changed:
/// dry-run creates of an annotated pod until `check` accepts the outcome (webhooks with
/// `sideEffects: None` are called on dry runs too).
async fn until_webhooks<F>(pods: &Api<Pod>, what: &str, check: F)
where
    F: Fn(&Result<Pod, kube::Error>) -> Result<(), String>,
{
    let probe = stored_pod("webhook-probe", dapr("probe", "8080"));
    eventually(what, WAIT, || {
        let (pods, probe, check) = (pods.clone(), probe.clone(), &check);
        async move { check(&pods.create(&dry_run(), &probe).await) }
    })
    .await;
}

/// Accepts a dry run that came back with the sidecar.
fn injected(outcome: &Result<Pod, kube::Error>) -> Result<(), String> {
    match outcome {
        Ok(pod) if sidecars(pod).len() == 1 => Ok(()),
        Ok(pod) => Err(format!("admitted without one sidecar:\n{}", show(pod))),
        Err(e) => Err(api_message(e)),
    }
}

/// A files-mode injector with a fresh CA, registered (failurePolicy Fail) for the namespace
/// as webhook `sidecar.ferry.dev` of configuration `ferry-e2e-<ns>`.
struct FilesSetup {
    injector: Injector,
    config: WebhookConfig,
    _scratch: Scratch,
}

impl FilesSetup {
    const WEBHOOK: &str = "sidecar.ferry.dev";

    async fn start(client: &Client, ns: &str) -> Self {
        Self::start_with(client, ns, &[]).await
    }

    /// [`FilesSetup::start`] with more flags for the injector.
    async fn start_with(client: &Client, ns: &str, extra: &[&str]) -> Self {
        let scratch = Scratch::new(ns);
        let ca = Ca::new(&format!("ferry-e2e {ns}"));
        let leaf = ca.leaf("ferry-injector");
        let (cert, key) = (
            scratch.path().join("tls.crt"),
            scratch.path().join("tls.key"),
        );
        write(&cert, &leaf.cert_pem);
        write(&key, &leaf.key_pem);
        let mut injector = Injector::start(
            "files",
            scratch.path(),
            &files_mode_args(&cert, &key, extra),
            &[],
        );
        injector.wait_ready().await;
        let config = WebhookConfig::create(
            client,
            ns,
            &format!("ferry-e2e-{ns}"),
            vec![webhook(
                Self::WEBHOOK,
                &injector.url(),
                Some(&ca.pem),
                "Fail",
            )],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        until_webhooks(&pods, "the webhook to inject a dry-run pod", injected).await;
        Self {
            injector,
            config,
            _scratch: scratch,
        }
    }

    async fn finish(self) {
        self.config.delete().await;
        self.injector.stop().await;
    }
}

// === 1. failure policy ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn a_down_injector_refuses_pods_or_lets_them_through_by_failure_policy() {
    with_temp_ns("inj-down", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // Nothing listens there: the port was free a moment ago and nobody is told about it.
        let url = format!("https://127.0.0.1:{}/mutate", free_port());
        let ca = Ca::new("unused");
        let name = "down.ferry.dev";
        let config = WebhookConfig::create(
            &client,
            &ns,
            &format!("ferry-e2e-{ns}"),
            vec![webhook(name, &url, Some(&ca.pem), "Fail")],
        )
        .await;

        // failurePolicy Fail: the pod is refused, and the message says which webhook failed.
        until_webhooks(
            &pods,
            "the dead webhook to refuse a dry-run pod",
            |r| match r {
                Err(e) if api_message(e).contains("failed calling webhook") => Ok(()),
                Err(e) => Err(api_message(e)),
                Ok(_) => Err("admitted".into()),
            },
        )
        .await;
        let err = pods
            .create(
                &PostParams::default(),
                &stored_pod("refused", dapr("refused", "8080")),
            )
            .await
            .expect_err("a Fail webhook that cannot be called refuses the pod");
        let message = api_message(&err);
        assert!(
            message.contains(&format!("failed calling webhook \"{name}\"")),
            "the error names the webhook: {message}"
        );
        assert!(pods.get_opt("refused").await.unwrap().is_none());

        // failurePolicy Ignore: the same pod goes through, as it was written. Until the API
        // server has the new policy, dry runs keep failing, so success means Ignore applied.
        config
            .set_webhooks(vec![webhook(name, &url, Some(&ca.pem), "Ignore")])
            .await;
        until_webhooks(&pods, "the dead webhook to be ignored", |r| match r {
            Ok(_) => Ok(()),
            Err(e) => Err(api_message(e)),
        })
        .await;
        let admitted = pods
            .create(
                &PostParams::default(),
                &stored_pod("admitted", dapr("admitted", "8080")),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "an Ignore webhook must not block the pod: {}",
                    api_message(&e)
                )
            });
        assert!(sidecars(&admitted).is_empty(), "{}", show(&admitted));
        assert_eq!(label(&admitted, "dapr.io/sidecar-injected"), None);
        assert_eq!(
            config.get().await.webhooks.unwrap()[0]
                .failure_policy
                .as_deref(),
            Some("Ignore")
        );
        config.delete().await;
    })
    .await;
}

// === 2. files mode ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn files_mode_injects_annotated_pods_and_deployments() {
    with_temp_ns("inj-files", |client, ns| async move {
        let setup = FilesSetup::start(&client, &ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        // A pod created directly, by a system:masters user.
        let before = setup.injector.admissions("inject", None).await;
        let pod = pods
            .create(
                &PostParams::default(),
                &stored_pod("cart", dapr("cart", "5000")),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create an annotated pod: {}", api_message(&e)));
        // What the API server stored, not only what it answered.
        let stored = pods.get("cart").await.unwrap();
        assert_eq!(stored.spec, pod.spec);
        assert_injected(&stored, &ns, "cart", "5000");
        setup
            .injector
            .wait_admissions_above("inject", None, before)
            .await;

        // A Deployment: the ReplicaSet controller creates the pod, without a namespace in the
        // object, as system:serviceaccount:kube-system:replicaset-controller.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(
                &PostParams::default(),
                &stored_deployment("orders", dapr("orders", "6000")),
            )
            .await
            .unwrap();
        let pod = eventually("a pod of Deployment orders", WAIT, || async {
            let list = pods
                .list(&ListParams::default().labels("app=orders"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .next()
                .ok_or_else(|| "no pod yet".to_owned())
        })
        .await;
        assert_injected(&pod, &ns, "orders", "6000");
        setup.finish().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn files_mode_leaves_pods_without_the_annotation_untouched() {
    with_temp_ns("inj-skip", |client, ns| async move {
        let setup = FilesSetup::start(&client, &ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut plain = stored_pod("plain", json!({"example.com/owner": "team-a"}));
        // No token volume: the ServiceAccount admission plugin would mount one with a random
        // name, and the containers are compared below.
        plain.spec.as_mut().unwrap().automount_service_account_token = Some(false);

        // The same pod as the API server stores it where no webhook applies (a dry run in
        // `default`; this test's webhook only matches its own namespace).
        let reference = Api::<Pod>::namespaced(client.clone(), "default")
            .create(&dry_run(), &plain)
            .await
            .unwrap();

        let before = setup.injector.admissions("skip", Some("not_enabled")).await;
        pods.create(&PostParams::default(), &plain).await.unwrap();
        let stored = pods.get("plain").await.unwrap();
        let (got, want) = (
            stored.spec.as_ref().unwrap(),
            reference.spec.as_ref().unwrap(),
        );
        assert_eq!(
            serde_json::to_string(&got.containers).unwrap(),
            serde_json::to_string(&want.containers).unwrap(),
            "the containers must stay byte for byte as written"
        );
        assert_eq!(got.init_containers, want.init_containers);
        assert_eq!(got.volumes, want.volumes);
        assert_eq!(stored.metadata.labels, reference.metadata.labels);
        assert_eq!(stored.metadata.annotations, reference.metadata.annotations);
        // And the injector was asked (else this test proves nothing).
        setup
            .injector
            .wait_admissions_above("skip", Some("not_enabled"), before)
            .await;
        setup.finish().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_invalid_annotation_refuses_the_pod_with_the_reason() {
    with_temp_ns("inj-deny", |client, ns| async move {
        let setup = FilesSetup::start(&client, &ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let says_why = |message: &str| {
            message.contains("dapr.io/app-port")
                && message.contains("\"70000\"")
                && message.contains("1-65535")
        };

        let before = setup.injector.admissions("deny", None).await;
        let err = pods
            .create(
                &PostParams::default(),
                &stored_pod("bad", dapr("bad", "70000")),
            )
            .await
            .expect_err("a pod with dapr.io/app-port 70000 must be refused");
        let message = api_message(&err);
        assert!(
            says_why(&message),
            "the message names the annotation, the value and the range: {message}"
        );
        assert!(pods.get_opt("bad").await.unwrap().is_none());
        setup
            .injector
            .wait_admissions_above("deny", None, before)
            .await;

        // Through a Deployment the refusal lands in the ReplicaSet's events.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(
                &PostParams::default(),
                &stored_deployment("badapp", dapr("badapp", "70000")),
            )
            .await
            .unwrap();
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        eventually(
            "a FailedCreate event on the ReplicaSet naming the bad annotation",
            WAIT,
            || async {
                let list = events
                    .list(&ListParams::default().fields("involvedObject.kind=ReplicaSet"))
                    .await
                    .map_err(|e| e.to_string())?;
                let seen: Vec<String> = list
                    .items
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.reason.as_deref().unwrap_or_default(),
                            e.message.as_deref().unwrap_or_default()
                        )
                    })
                    .collect();
                if list.items.iter().any(|e| {
                    e.reason.as_deref() == Some("FailedCreate")
                        && says_why(e.message.as_deref().unwrap_or_default())
                }) {
                    Ok(())
                } else {
                    Err(format!("events: {seen:?}"))
                }
            },
        )
        .await;
        let list = pods
            .list(&ListParams::default().labels("app=badapp"))
            .await
            .unwrap();
        assert!(list.items.is_empty(), "no pod of badapp may exist");
        setup.finish().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_injector_called_twice_injects_once() {
    with_temp_ns("inj-twice", |client, ns| async move {
        let scratch = Scratch::new(&ns);
        let ca = Ca::new(&format!("ferry-e2e {ns}"));
        let leaf = ca.leaf("ferry-injector");
        let (cert, key) = (
            scratch.path().join("tls.crt"),
            scratch.path().join("tls.key"),
        );
        write(&cert, &leaf.cert_pem);
        write(&key, &leaf.key_pem);
        let mut injector = Injector::start(
            "twice",
            scratch.path(),
            &files_mode_args(&cert, &key, &[]),
            &[],
        );
        injector.wait_ready().await;
        // The same injector twice in one configuration. The first webhook speaks
        // AdmissionReview v1beta1 (the API server uses the first version listed), may be
        // reinvoked, and injects; the second (v1) sees the sidecar already there.
        let mut first = webhook("first.ferry.dev", &injector.url(), Some(&ca.pem), "Fail");
        first["admissionReviewVersions"] = json!(["v1beta1"]);
        first["reinvocationPolicy"] = json!("IfNeeded");
        let second = webhook("second.ferry.dev", &injector.url(), Some(&ca.pem), "Fail");
        let config = WebhookConfig::create(
            &client,
            &ns,
            &format!("ferry-e2e-{ns}"),
            vec![first, second],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        until_webhooks(&pods, "the webhooks to inject a dry-run pod", injected).await;

        let skipped = injector.admissions("skip", Some("already_injected")).await;
        let pod = pods
            .create(
                &PostParams::default(),
                &stored_pod("twice", dapr("twice", "7000")),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create an annotated pod: {}", api_message(&e)));
        assert_injected(&pod, &ns, "twice", "7000");
        injector
            .wait_admissions_above("skip", Some("already_injected"), skipped)
            .await;
        config.delete().await;
        injector.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn only_allowed_service_accounts_get_a_sidecar() {
    with_temp_ns("inj-authz", |client, ns| async move {
        // Two service accounts that may both create pods here; only `deploy*` is allowed a
        // sidecar (besides Dapr's built-in controllers and system:masters).
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "pod-creator"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get"]}],
        }))
        .unwrap();
        Api::<Role>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "pod-creators"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-creator"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "deployer", "namespace": ns},
                {"kind": "ServiceAccount", "name": "intruder", "namespace": ns},
            ],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        let allowed = format!("{ns}:deploy*");
        let setup =
            FilesSetup::start_with(&client, &ns, &["--allowed-service-accounts", &allowed]).await;
        let as_sa = async |name: &str| {
            let user = format!("system:serviceaccount:{ns}:{name}");
            let c = client_as(&user).await.unwrap();
            Api::<Pod>::namespaced(c, &ns)
        };

        let before = setup
            .injector
            .admissions("skip", Some("unauthorized_service_account"))
            .await;
        let pod = as_sa("intruder")
            .await
            .create(&PostParams::default(), &stored_pod("intruder", dapr("intruder", "8080")))
            .await
            .unwrap_or_else(|e| panic!("the intruder may still create pods: {}", api_message(&e)));
        assert!(sidecars(&pod).is_empty(), "no sidecar for intruder:\n{}", show(&pod));
        assert_eq!(label(&pod, "dapr.io/sidecar-injected"), None);
        setup
            .injector
            .wait_admissions_above("skip", Some("unauthorized_service_account"), before)
            .await;

        let pod = as_sa("deployer")
            .await
            .create(&PostParams::default(), &stored_pod("deployer", dapr("deployer", "8080")))
            .await
            .unwrap_or_else(|e| panic!("as deployer: {}", api_message(&e)));
        assert_injected(&pod, &ns, "deployer", "8080");
        setup.finish().await;
    })
    .await;
}

// === 3. certificate rotation ===

/// Creates annotated pods one after another until told to stop; counts those admitted with
/// their sidecar and keeps what went wrong with the others.
struct PodCreator {
    stop: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodCreator {
    fn start(pods: Api<Pod>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, created, failures) = (stop.clone(), created.clone(), failures.clone());
            async move {
                let mut pod = stored_pod("unused", dapr("rotating", "8080"));
                pod.metadata.name = None;
                pod.metadata.generate_name = Some("rotating-".into());
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    match pods.create(&PostParams::default(), &pod).await {
                        Ok(p) if sidecars(&p).len() == 1 => {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(p) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!(
                                "{:?}: {} admitted without one sidecar",
                                start.elapsed(),
                                p.name_any()
                            )),
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{:?}: {}", start.elapsed(), api_message(&e))),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self {
            stop,
            created,
            failures,
            task,
        }
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    fn assert_no_failures(&self) {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert!(
            failures.is_empty(),
            "{} pod creations failed (of {} admitted):\n{}",
            failures.len(),
            self.created(),
            failures.join("\n")
        );
    }

    /// Waits until `n` more pods than `since` were admitted.
    async fn wait_more(&self, since: usize, n: usize, what: &str) {
        eventually(what, WAIT, || async {
            self.assert_no_failures();
            let now = self.created();
            if now >= since + n {
                Ok(())
            } else {
                Err(format!("{} admitted since", now - since))
            }
        })
        .await;
    }

    async fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.expect("the pod creator panicked");
        self.assert_no_failures();
        self.created()
    }
}

/// The loopback addresses the rotation test aims its webhook at in turn (Linux routes all of
/// 127.0.0.0/8 to `lo`); every leaf carries them all.
const LOOPBACKS: [&str; 6] = [
    "127.0.0.1",
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
];

/// Aims the rotation test's webhook at `host` and waits until the API server has connected there
/// (a fresh connection, so a handshake that verified the certificate served now) and admitted
/// pods through it.
async fn reconnect(config: &WebhookConfig, ca: &Ca, port: u16, host: &str, creator: &PodCreator) {
    let url = format!("https://{host}:{port}/mutate");
    config
        .set_webhooks(vec![webhook(
            "rotate.ferry.dev",
            &url,
            Some(&ca.pem),
            "Fail",
        )])
        .await;
    let dst = format!("{host}:{port}");
    eventually(
        &format!("the API server to connect to {dst}"),
        WAIT,
        || async {
            creator.assert_no_failures();
            let conns = run("ss", &["-tnH", "state", "established", "dst", &dst])
                .map_err(|e| format!("{e:#}"))?;
            if conns.trim().is_empty() {
                Err("no connection yet".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let since = creator.created();
    creator
        .wait_more(since, 5, &format!("pods admitted through {dst}"))
        .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn certificate_rotation_fails_no_admission() {
    with_temp_ns("inj-rotate", |client, ns| async move {
        let scratch = Scratch::new(&ns);
        let ca = Ca::new(&format!("ferry-e2e {ns}"));
        let new_leaf = |generation: u32| {
            ca.leaf_for(
                &format!("ferry-injector generation {generation}"),
                &LOOPBACKS,
            )
        };
        let mut volume = SecretVolume::new(scratch.path().join("tls"));
        let mut leaf = new_leaf(0);
        volume.update(&[
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
        ]);
        // On every address (of the cluster's network namespace), so that each loopback address
        // reaches it.
        let port = free_port();
        let mut injector = Injector::start_on(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            "rotate",
            scratch.path(),
            &files_mode_args(
                &volume.file("tls.crt"),
                &volume.file("tls.key"),
                &["--tls-reload-interval-ms", "200"],
            ),
            &[],
        );
        injector.wait_ready().await;
        let served = |want: Vec<u8>, what: String| {
            let ca = ca.der.clone();
            async move {
                eventually(&what, Duration::from_secs(15), || async {
                    let got = served_leaf(port, &ca, "127.0.0.1").await?;
                    if got == want {
                        Ok(())
                    } else {
                        Err("another certificate is served".to_owned())
                    }
                })
                .await
            }
        };
        served(leaf.der.clone(), "the first certificate".into()).await;
        let config = WebhookConfig::create(
            &client,
            &ns,
            &format!("ferry-e2e-{ns}"),
            vec![webhook(
                "rotate.ferry.dev",
                &injector.url(),
                Some(&ca.pem),
                "Fail",
            )],
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        until_webhooks(&pods, "the webhook to inject a dry-run pod", injected).await;

        let creator = PodCreator::start(pods.clone());
        creator
            .wait_more(0, 5, "pods admitted before any rotation")
            .await;
        // The API server keeps its connection to a webhook open, so a rotation alone would
        // never make it verify a new certificate: after each one the webhook is aimed at
        // another loopback address of the same listener, which it connects to afresh.
        for generation in 1..=3 {
            leaf = new_leaf(generation);
            let since = creator.created();
            volume.update(&[
                ("tls.crt", leaf.cert_pem.as_bytes()),
                ("tls.key", leaf.key_pem.as_bytes()),
            ]);
            served(
                leaf.der.clone(),
                format!("the certificate of rotation {generation} to be served"),
            )
            .await;
            creator
                .wait_more(
                    since,
                    5,
                    &format!("pods admitted across rotation {generation}"),
                )
                .await;
            reconnect(&config, &ca, port, LOOPBACKS[generation as usize], &creator).await;
            injector.check_running();
        }

        // Broken files keep the last good pair in service, and admission goes on: first PEM
        // armour around bytes that are no certificate, then a good certificate (of the same
        // CA) with a key that is not its own.
        let stranger = new_leaf(99);
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        let broken = [
            (
                "PEM that holds no certificate",
                NOT_A_CERTIFICATE,
                other_key.as_str(),
            ),
            (
                "a certificate with a key not its own",
                stranger.cert_pem.as_str(),
                other_key.as_str(),
            ),
        ];
        let failed = [("source", "files"), ("result", "failed")];
        for (what, cert, key) in broken {
            let failures = injector.counter(RELOADS, &failed).await;
            let since = creator.created();
            volume.update(&[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())]);
            // The injector has tried the new files and refused them...
            injector
                .wait_counter_above(RELOADS, &failed, failures)
                .await;
            // ...and still presents the good certificate, across further reload intervals.
            for _ in 0..5 {
                let got = served_leaf(port, &ca.der, "127.0.0.1")
                    .await
                    .unwrap_or_else(|e| panic!("after writing {what}: {e}"));
                assert!(got == leaf.der, "{what} replaced the served certificate");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            injector.check_running();
            creator
                .wait_more(
                    since,
                    5,
                    &format!("pods admitted while the files hold {what}"),
                )
                .await;
        }
        // A new connection now still gets the last good certificate.
        reconnect(&config, &ca, port, LOOPBACKS[4], &creator).await;

        // And the reloader still works afterwards.
        leaf = new_leaf(4);
        volume.update(&[
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
        ]);
        served(
            leaf.der.clone(),
            "a good certificate after the broken ones".into(),
        )
        .await;
        reconnect(&config, &ca, port, LOOPBACKS[5], &creator).await;
        let total = creator.finish().await;
        eprintln!("{total} pods admitted across 4 rotations and 2 broken certificates");
        config.delete().await;
        injector.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn files_mode_with_a_ca_file_keeps_the_ca_bundle_in_step() {
    with_temp_ns("inj-cafile", |client, ns| async move {
        let kubeconfig = ClusterEnv::load().unwrap().kubeconfig().unwrap();
        let scratch = Scratch::new(&ns);
        // cert-manager's layout: tls.crt, tls.key and ca.crt in one Secret volume.
        let mut volume = SecretVolume::new(scratch.path().join("tls"));
        let old_ca = Ca::new(&format!("ferry-e2e {ns} old"));
        let leaf = old_ca.leaf_for("ferry-injector", &LOOPBACKS);
        volume.update(&[
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", old_ca.pem.as_bytes()),
        ]);
        let port = free_port();
        let url = |host: &str| format!("https://{host}:{port}/mutate");
        let config_name = format!("ferry-e2e-{ns}");
        let config = WebhookConfig::create(
            &client,
            &ns,
            &config_name,
            vec![webhook("cafile.ferry.dev", &url("127.0.0.1"), None, "Fail")],
        )
        .await;
        let ca_file = volume.file("ca.crt").display().to_string();
        let mut injector = Injector::start_on(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            "cafile",
            scratch.path(),
            &files_mode_args(
                &volume.file("tls.crt"),
                &volume.file("tls.key"),
                &[
                    "--tls-ca-file",
                    &ca_file,
                    "--webhook-config-name",
                    &config_name,
                    "--tls-reload-interval-ms",
                    "200",
                ],
            ),
            &[("KUBECONFIG", &kubeconfig)],
        );
        injector.wait_ready().await;
        assert_eq!(
            ca_bundles(&config.get().await),
            [Some(old_ca.pem.clone().into_bytes())],
            "ready means the caBundle is the CA file"
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        until_webhooks(&pods, "the webhook to inject a dry-run pod", injected).await;

        // CA rotation, step 1: the CA file becomes old + new CA; the caBundle follows.
        let new_ca = Ca::new(&format!("ferry-e2e {ns} new"));
        let both = format!("{}{}", old_ca.pem, new_ca.pem);
        volume.update(&[
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
            ("ca.crt", both.as_bytes()),
        ]);
        eventually("the caBundle to follow the CA file", WAIT, || async {
            let now = ca_bundles(&config.get().await);
            if now == [Some(both.clone().into_bytes())] {
                Ok(())
            } else {
                Err(format!(
                    "caBundle lengths {:?}, want {}",
                    now.iter()
                        .map(|b| b.as_ref().map(Vec::len))
                        .collect::<Vec<_>>(),
                    both.len()
                ))
            }
        })
        .await;
        // Step 2: a leaf of the new CA. A fresh connection of the API server (another
        // loopback address of the listener) verifies it against the bundle.
        let new_leaf = new_ca.leaf_for("ferry-injector", &LOOPBACKS);
        volume.update(&[
            ("tls.crt", new_leaf.cert_pem.as_bytes()),
            ("tls.key", new_leaf.key_pem.as_bytes()),
            ("ca.crt", both.as_bytes()),
        ]);
        eventually("the new CA's leaf to be served", WAIT, || async {
            let got = served_leaf(port, &new_ca.der, "127.0.0.1").await?;
            if got == new_leaf.der {
                Ok(())
            } else {
                Err("another certificate is served".to_owned())
            }
        })
        .await;
        config
            .set_webhooks(vec![webhook(
                "cafile.ferry.dev",
                &url("127.0.0.2"),
                Some(&both),
                "Fail",
            )])
            .await;
        until_webhooks(&pods, "the webhook at 127.0.0.2 to inject", |r| {
            injected(r)?;
            let conns = run(
                "ss",
                &[
                    "-tnH",
                    "state",
                    "established",
                    "dst",
                    &format!("127.0.0.2:{port}"),
                ],
            )
            .map_err(|e| format!("{e:#}"))?;
            if conns.trim().is_empty() {
                Err("the API server has not connected to 127.0.0.2 yet".into())
            } else {
                Ok(())
            }
        })
        .await;
        let pod = pods
            .create(
                &PostParams::default(),
                &stored_pod("rotated", dapr("rotated", "8080")),
            )
            .await
            .unwrap_or_else(|e| panic!("after the CA rotation: {}", api_message(&e)));
        assert_injected(&pod, &ns, "rotated", "8080");
        config.delete().await;
        injector.stop().await;
    })
    .await;
}

// === 4. bootstrap mode ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn bootstrap_mode_issues_its_certificate_and_patches_the_ca_bundle() {
    with_temp_ns("inj-boot", |client, ns| async move {
        let kubeconfig = ClusterEnv::load().unwrap().kubeconfig().unwrap();
        let scratch = Scratch::new(&ns);
        let config_name = format!("ferry-e2e-{ns}");
        // The port is decided before the injector starts: the configuration names it.
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}/mutate");
        let config = WebhookConfig::create(
            &client,
            &ns,
            &config_name,
            vec![webhook("boot.ferry.dev", &url, None, "Fail")],
        )
        .await;
        assert_eq!(ca_bundles(&config.get().await), [None]);
        let args: Vec<String> = [
            "--namespace",
            &ns,
            "--ip-sans",
            "127.0.0.1",
            "--webhook-config-name",
            &config_name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let start = |name: &str| {
            Injector::start_on(
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                name,
                scratch.path(),
                &args,
                &[("KUBECONFIG", &kubeconfig)],
            )
        };
        let mut injector = start("bootstrap");

        // /readyz: never 200 while the configuration lacks the CA; 503 with a reason before.
        let mut seen_503 = Vec::new();
        let deadline = Instant::now() + WAIT;
        loop {
            injector.check_running();
            match injector.readyz().await {
                Ok((200, _)) => break,
                Ok((503, reason)) => {
                    assert!(
                        !reason.trim().is_empty(),
                        "a 503 from /readyz gives a reason"
                    );
                    seen_503.push(reason);
                }
                Ok((code, body)) => panic!("/readyz answered {code}: {body}"),
                Err(_) => {} // not listening yet
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {WAIT:?}: {seen_503:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mwc = config.get().await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = secrets
            .get_opt("ferry-injector-tls")
            .await
            .unwrap()
            .expect("the injector's Secret ferry-injector-tls exists once it is ready");
        let data = secret.data.clone().unwrap_or_default();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
        let ca_crt = data["ca.crt"].0.clone();
        assert_eq!(
            ca_bundles(&mwc),
            [Some(ca_crt.clone())],
            "once /readyz says ready, every webhook carries the CA of the Secret"
        );
        eprintln!(
            "/readyz said 503 {} time(s) before 200: {:?}",
            seen_503.len(),
            seen_503.first()
        );

        // The serving certificate chains to that CA for each name of the Service and 127.0.0.1.
        let ca_der = CertificateDer::from_pem_slice(&ca_crt)
            .unwrap_or_else(|e| panic!("ca.crt of the Secret is not a PEM certificate: {e}"));
        for name in [
            "127.0.0.1".to_owned(),
            "ferry-injector".to_owned(),
            format!("ferry-injector.{ns}"),
            format!("ferry-injector.{ns}.svc"),
            format!("ferry-injector.{ns}.svc.cluster.local"),
        ] {
            served_leaf(port, &ca_der, &name)
                .await
                .unwrap_or_else(|e| panic!("the bootstrap certificate for {name}: {e}"));
        }

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        until_webhooks(
            &pods,
            "the webhook (with its new caBundle) to inject",
            injected,
        )
        .await;
        let pod = pods
            .create(
                &PostParams::default(),
                &stored_pod("boot", dapr("boot", "8080")),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot create an annotated pod: {}", api_message(&e)));
        assert_injected(&pod, &ns, "boot", "8080");

        // Re-applying the manifests (a `helm upgrade`) drops the caBundle: the injector puts it
        // back.
        let reset = config
            .set_webhooks(vec![webhook("boot.ferry.dev", &url, None, "Fail")])
            .await;
        assert_eq!(ca_bundles(&reset), [None], "the reset removed the caBundle");
        eventually("the injector to restore the caBundle", WAIT, || async {
            let now = ca_bundles(&config.get().await);
            if now == [Some(ca_crt.clone())] {
                Ok(())
            } else {
                Err(format!(
                    "{} webhook(s), caBundle set: {:?}",
                    now.len(),
                    now.iter().map(Option::is_some).collect::<Vec<_>>()
                ))
            }
        })
        .await;
        until_webhooks(&pods, "the webhook to inject again", injected).await;

        // A restart reuses the Secret: same CA, caBundle unchanged, admission keeps working.
        injector.stop().await;
        let mut injector = start("bootstrap-again");
        injector.wait_ready().await;
        let again = secrets.get("ferry-injector-tls").await.unwrap();
        let again_data = again.data.unwrap_or_default();
        assert_eq!(
            again_data["ca.crt"].0, ca_crt,
            "the restarted injector keeps the CA"
        );
        assert_eq!(ca_bundles(&config.get().await), [Some(ca_crt.clone())]);
        eprintln!(
            "after the restart the serving certificate was {}",
            if again_data["tls.crt"] == data["tls.crt"] {
                "reused"
            } else {
                "renewed"
            }
        );
        let pod = pods
            .create(
                &PostParams::default(),
                &stored_pod("boot-again", dapr("boot-again", "8080")),
            )
            .await
            .unwrap_or_else(|e| panic!("after the restart: {}", api_message(&e)));
        assert_injected(&pod, &ns, "boot-again", "8080");
        config.delete().await;
        injector.stop().await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn bootstrap_mode_is_not_ready_until_its_webhook_configuration_carries_the_ca() {
    with_temp_ns("inj-wait", |client, ns| async move {
        let kubeconfig = ClusterEnv::load().unwrap().kubeconfig().unwrap();
        let scratch = Scratch::new(&ns);
        let config_name = format!("ferry-e2e-{ns}");
        let args: Vec<String> = [
            "--namespace",
            &ns,
            "--ip-sans",
            "127.0.0.1",
            "--webhook-config-name",
            &config_name,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // The configuration does not exist yet (Helm, for one, creates it after Deployments).
        let mut injector = Injector::start(
            "bootstrap",
            scratch.path(),
            &args,
            &[("KUBECONFIG", &kubeconfig)],
        );
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        eventually("the injector's Secret", WAIT, || async {
            match secrets.get_opt("ferry-injector-tls").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("absent".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        // Certificate in hand, still not ready: 503, and the reason names the configuration.
        for _ in 0..5 {
            injector.check_running();
            let answer = injector.readyz().await;
            assert!(
                matches!(&answer, Ok((503, reason)) if reason.contains(&config_name)),
                "/readyz without MutatingWebhookConfiguration {config_name}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let config = WebhookConfig::create(
            &client,
            &ns,
            &config_name,
            vec![webhook("late.ferry.dev", &injector.url(), None, "Fail")],
        )
        .await;
        injector.wait_ready().await;
        let ca_crt = secrets
            .get("ferry-injector-tls")
            .await
            .unwrap()
            .data
            .unwrap()["ca.crt"]
            .0
            .clone();
        assert_eq!(ca_bundles(&config.get().await), [Some(ca_crt)]);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        until_webhooks(&pods, "the webhook to inject a dry-run pod", injected).await;
        config.delete().await;
        injector.stop().await;
    })
    .await;
}

// === 5. an injected pod runs ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_injected_pod_runs_its_sidecar_and_becomes_ready() {
    with_temp_ns("inj-run", |client, ns| async move {
        let setup = FilesSetup::start(&client, &ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "runner", "annotations": dapr("runner", "8080")},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "app",
                    "image": TESTAPP,
                    "args": ["--port", "8080"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    ],
                    "ports": [{"containerPort": 8080, "name": "http"}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                }],
            },
        }))
        .unwrap();
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        assert_eq!(sidecars(&created).len(), 1, "{}", show(&created));

        let ip = eventually("pod runner Ready with both containers ready", WAIT, || async {
            let pod = pods.get("runner").await.map_err(|e| e.to_string())?;
            let status = pod.status.clone().unwrap_or_default();
            let statuses = status.container_statuses.clone().unwrap_or_default();
            let ready = |name: &str| statuses.iter().any(|c| c.name == name && c.ready);
            let pod_ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            match (&status.pod_ip, pod_ready && ready("app") && ready(DAPRD)) {
                (Some(ip), true) => Ok(ip.clone()),
                _ => Err(format!(
                    "container statuses: {}\n--- {DAPRD} log ---\n{}",
                    serde_json::to_string(&statuses).unwrap_or_default(),
                    container_log(&pod, DAPRD)
                )),
            }
        })
        .await;

        let (code, body) = http_get(&format!("http://{ip}:3501/v1.0/healthz"), WAIT)
            .await
            .unwrap();
        assert_eq!(code, 204, "GET /v1.0/healthz on the public port: {body}");
        let (code, body) = http_get(&format!("http://{ip}:3501/v1.0/metadata"), WAIT)
            .await
            .unwrap();
        assert_eq!(code, 200, "GET /v1.0/metadata: {body}");
        let metadata: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(metadata["id"], "runner", "{body}");
        // ferryd has its namespace from the downward API (the patch names none).
        assert_eq!(metadata["extended"]["namespace"], ns.as_str(), "{body}");

        // The app sees where its sidecar is, and reaches it there (its own localhost), and
        // through it, itself.
        let (_, body) = http_get(&format!("http://{ip}:8080/env"), WAIT).await.unwrap();
        let app_env: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(app_env["DAPR_HTTP_PORT"], "3500", "{body}");
        assert_eq!(app_env["APP_ID"], "runner", "{body}");
        let (code, body) = http_get(
            &format!(
                "http://{ip}:8080/fetch?url=http://127.0.0.1:3500/v1.0/invoke/runner/method/healthz"
            ),
            WAIT,
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let fetched: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(fetched["status"], 200, "the app calling itself through its sidecar: {body}");
        assert_eq!(fetched["body"].as_str().map(str::trim), Some("ok"), "{body}");
        setup.finish().await;
    })
    .await;
}

/// The log of one container of `pod`, as the process kubelet keeps it.
fn container_log(pod: &Pod, container: &str) -> String {
    let dir = repo_root().join("e2e/.run/kubelet/pods").join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    let path = dir.join(format!("{container}.log"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
