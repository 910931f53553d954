//! Tier-1 test support: a client for the harness cluster, a temporary namespace per test, and
//! waits that fail with a message saying what was expected and what was last seen.
//!
//! Tests that use this run inside the cluster's network namespace (`make e2e` does that) and are
//! `#[ignore]`d, so that a plain `cargo test` never needs a cluster.
#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    fmt::Debug,
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

/// The repository root (this crate lives in `<root>/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the repository")
        .to_owned()
}

/// What `e2e/controlplane/up.sh` wrote to `e2e/.run/cluster.env`.
#[derive(Debug, Clone)]
pub struct ClusterEnv {
    vars: HashMap<String, String>,
}

impl ClusterEnv {
    /// Reads the cluster's env file; fails with the command to run when the cluster is not up.
    pub fn load() -> anyhow::Result<Self> {
        let path = repo_root().join("e2e/.run/cluster.env");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (start the cluster with: make cluster-up)",
                path.display()
            )
        })?;
        let vars = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        Ok(Self { vars })
    }

    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("e2e/.run/cluster.env has no {key}"))
    }

    pub fn kubeconfig(&self) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(self.get("FERRY_E2E_KUBECONFIG")?))
    }

    pub fn bridge_ip(&self) -> anyhow::Result<IpAddr> {
        self.get("FERRY_E2E_BRIDGE_IP")?
            .parse()
            .context("FERRY_E2E_BRIDGE_IP is not an IP address")
    }

    pub fn netns(&self) -> anyhow::Result<&str> {
        self.get("FERRY_E2E_NETNS")
    }
}

/// The pinned Kubernetes version (from `e2e/controlplane/versions.env`).
pub fn k8s_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("e2e/controlplane/versions.env"))
        .expect("e2e/controlplane/versions.env is in the repository");
    text.lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("versions.env sets K8S_VERSION")
        .trim()
        .to_owned()
}

/// A client for the harness cluster, as its administrator.
pub async fn client() -> anyhow::Result<Client> {
    let env = ClusterEnv::load()?;
    let path = env.kubeconfig()?;
    let kc =
        Kubeconfig::read_from(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs `test` with a fresh namespace (named `<prefix>-<random>`) that is deleted afterwards,
/// whether the test passed or panicked. The panic, if any, is passed on.
pub async fn with_temp_ns<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = client().await.expect("cannot reach the Tier-1 cluster");
    let name = format!("{prefix}-{:08x}", fastrand_u32());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"ferry.dev/e2e": "true"}}
    }))
    .expect("a namespace literal");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    let outcome = tokio::spawn(test(client.clone(), name.clone())).await;
    if let Err(e) = namespaces.delete(&name, &DeleteParams::default()).await {
        eprintln!("warning: cannot delete namespace {name}: {e}");
    }
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task for {name} was cancelled: {e}");
    }
}

fn fastrand_u32() -> u32 {
    // Good enough for unique names: time and pid, mixed.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let x = t ^ (u64::from(std::process::id()) << 32);
    (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32
}

/// Waits until `cond` holds for the object `name` (absent objects are `None`), polling. On
/// timeout it fails naming `what` and showing the object as last seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let start = Instant::now();
    loop {
        let obj = api
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("cannot read {name}: {e}"));
        if cond(obj.as_ref()) {
            return obj;
        }
        if start.elapsed() > timeout {
            let shown = obj
                .map(|o| serde_json::to_string_pretty(&o).unwrap_or_default())
                .unwrap_or_else(|| "(absent)".into());
            panic!("timed out after {timeout:?} waiting for {what} ({name}); last seen:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `f` until it returns `Some`, failing after `timeout` with `what` and the last note `f`
/// gave (through `Err`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A plain HTTP GET with a timeout: status and body, or why it failed.
pub async fn http_get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let fut = async {
        let resp = client.get(uri).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.with_context(|| format!("GET {url}")),
        Err(_) => bail!("GET {url} timed out after {timeout:?}"),
    }
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies every CRD in `crds/` (server-side, field manager `ferry-crds`) and waits until the API
/// server serves each one.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {} (run make crds): {e}", dir.display()))
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no CRDs", dir.display());
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
        let name = crd.metadata.name.clone().expect("a CRD has a name");
        crds.patch(
            &name,
            &PatchParams::apply("ferry-crds").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply {}: {e}", path.display()));
        wait_for(
            &crds,
            &name,
            "the CRD to be Established",
            Duration::from_secs(60),
            |c| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
        )
        .await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process the test starts. (Another
/// process may take it in between; the kernel hands out ephemeral ports round-robin, so that is
/// rare.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
        .port()
}

/// A binary of this workspace as `cargo build --workspace --bins` left it (under
/// `$CARGO_TARGET_DIR`, else `<root>/target`), failing with the command to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing (build it with: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A client for the harness cluster acting as `user` (the administrator impersonates it), e.g.
/// `system:serviceaccount:<ns>:<name>`: the API server's authorization and admission see that
/// user.
pub async fn client_as(user: &str) -> anyhow::Result<Client> {
    let env = ClusterEnv::load()?;
    let path = env.kubeconfig()?;
    let kc =
        Kubeconfig::read_from(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(Client::try_from(config)?)
}

/// Creates the objects of an RBAC manifest such as `deploy/rbac/ferry-injector.yaml` for a
/// component installed in namespace `ns`, so that tests run components under exactly the
/// permissions users install:
/// - ServiceAccounts, Roles and RoleBindings go into `ns` (subjects too);
/// - ClusterRoles and ClusterRoleBindings are renamed `<name>-<ns>` (and a binding's roleRef
///   with them) and owned by the namespace, so they are deleted with it;
/// - `resource_names` renames entries of rules' `resourceNames`, for objects that the test
///   names differently (e.g. `ferry-injector` → the test's webhook configuration).
pub async fn install_rbac(
    client: &Client,
    file: &Path,
    ns: &str,
    resource_names: &[(&str, &str)],
) -> anyhow::Result<()> {
    use kube::{
        ResourceExt as _,
        api::{ApiResource, DynamicObject, GroupVersionKind},
    };
    use serde_json::{Value, json};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("{} is not YAML", file.display()))?;
    let namespace: Namespace = Api::all(client.clone()).get(ns).await?;
    let owner = json!([{
        "apiVersion": "v1", "kind": "Namespace", "name": ns, "uid": namespace.uid(),
    }]);
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let (group, version) = match doc["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap_or("v1").to_owned(),
            ),
        };
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            for s in subjects
                .iter_mut()
                .filter(|s| s["kind"] == "ServiceAccount")
            {
                s["namespace"] = json!(ns);
            }
        }
        if let Some(rules) = doc["rules"].as_array_mut() {
            for names in rules
                .iter_mut()
                .filter_map(|r| r["resourceNames"].as_array_mut())
            {
                for n in names.iter_mut() {
                    if let Some((_, to)) = resource_names.iter().find(|(from, _)| n == from) {
                        *n = json!(to);
                    }
                }
            }
        }
        let cluster_scoped = matches!(kind.as_str(), "ClusterRole" | "ClusterRoleBinding");
        if cluster_scoped {
            let name = format!(
                "{}-{ns}",
                doc["metadata"]["name"].as_str().unwrap_or_default()
            );
            doc["metadata"]["name"] = json!(name);
            doc["metadata"]["ownerReferences"] = owner.clone();
            if kind == "ClusterRoleBinding" && doc["roleRef"]["kind"] == "ClusterRole" {
                let role = format!(
                    "{}-{ns}",
                    doc["roleRef"]["name"].as_str().unwrap_or_default()
                );
                doc["roleRef"]["name"] = json!(role);
            }
        } else {
            doc["metadata"]["namespace"] = json!(ns);
        }
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
        let api: Api<DynamicObject> = if cluster_scoped {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), ns, &resource)
        };
        let object: DynamicObject = serde_json::from_value(doc)
            .with_context(|| format!("{}: a {kind} is not an object", file.display()))?;
        api.create(&PostParams::default(), &object)
            .await
            .with_context(|| {
                format!(
                    "{}: cannot create {kind} {}",
                    file.display(),
                    object.name_any()
                )
            })?;
    }
    Ok(())
}
