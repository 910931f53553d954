//! The RBAC ferry-operator grants sidecars, against the real API server's authorizer.
//!
//! The operator runs as a pod under `deploy/rbac/ferry-operator.yaml` (so the test also proves
//! it may grant what it grants: Kubernetes refuses privilege escalation), the sidecars' ClusterRole
//! comes from `deploy/rbac/ferry-sidecar.yaml`, and every access is checked by a real request
//! made as the sidecar's ServiceAccount (impersonated with the groups a token would carry), not
//! by reading the Role. Run with `make e2e`.
//!
//! Another operator (operator.rs, flow.rs) may be running: the names this test's operator writes
//! (ClusterRole, ClusterRoleBinding, Role) are suffixed with its namespace, its pods carry a label
//! of their own, and nothing asserted here can be changed by another operator (one computing the
//! same grants under the default names would only grant the same, never more).

use std::{
    collections::BTreeSet,
    fmt,
    time::{Duration, Instant},
};

use ferry_api::{HttpEndpoint, RoutingTable};
use ferry_e2e::{
    ClusterEnv, eventually, http_get, install_rbac, repo_root, wait_for, with_temp_ns,
};
use k8s_openapi::api::{
    core::v1::{Pod, Secret, ServiceAccount},
    discovery::v1::EndpointSlice,
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

const OPERATOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-operator:dev";
/// App pods only need to exist: a shell sleeping stands in for the app and its sidecar.
const APP_IMAGE: &str = "busybox:1.36";
const WAIT: Duration = Duration::from_secs(60);
/// Marks the operator pods these tests start (not operator.rs's label: its clean-up must not
/// stop ours).
const OPERATOR_LABEL: &str = "ferry.dev/e2e-sidecar-rbac-operator";

/// One operator of ours at a time.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === the operator under test ===

/// The names this test's operator grants with: the defaults suffixed with its namespace.
struct Names {
    cluster_role: String,
    binding: String,
    secrets_role: String,
}

impl Names {
    fn for_ns(ns: &str) -> Self {
        Self {
            cluster_role: format!("ferry-sidecar-{ns}"),
            binding: format!("ferry-sidecar-{ns}"),
            secrets_role: format!("ferry-sidecar-secrets-{ns}"),
        }
    }
}

/// An operator pod; the tail of its log is printed when the test panics (or when
/// FERRY_E2E_OPERATOR_LOGS is set).
struct Operator {
    ns: String,
    name: String,
    ip: String,
}

impl Operator {
    fn log(&self) -> String {
        let dir = repo_root().join("e2e/.run/kubelet/pods");
        let prefix = format!("{}_{}_", self.ns, self.name);
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| std::fs::read_to_string(e.path().join("operator.log")).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn metrics(&self) -> String {
        let (code, body) = http_get(
            &format!("http://{}:8080/metrics", self.ip),
            Duration::from_secs(2),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read the metrics of {}: {e:#}", self.name));
        assert_eq!(code, 200, "{body}");
        body
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FERRY_E2E_OPERATOR_LOGS").is_some() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- last lines of operator {}/{} ---", self.ns, self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Installs the operator's and the sidecars' RBAC for an operator in `ns` (cluster-scoped
/// objects and the names the operator is given suffixed with `ns`), starts it and waits until
/// it is ready. Returns the guard that keeps our other tests' operators away.
async fn start_operator(
    client: &Client,
    ns: &str,
) -> (Operator, tokio::sync::MutexGuard<'static, ()>) {
    let guard = ONE_OPERATOR.lock().await;
    stop_operators(client).await;
    ferry_e2e::install_crds(client).await;
    let names = Names::for_ns(ns);
    let rbac = repo_root().join("deploy/rbac");
    let renamed = [
        ("ferry-sidecar", names.cluster_role.as_str()),
        ("ferry-sidecar-secrets", names.secrets_role.as_str()),
    ];
    install_rbac(client, &rbac.join("ferry-operator.yaml"), ns, &renamed)
        .await
        .unwrap();
    install_rbac(client, &rbac.join("ferry-sidecar.yaml"), ns, &[])
        .await
        .unwrap();
    assert_eq!(names.cluster_role, names.binding, "one rename covers both");

    let name = "operator";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {OPERATOR_LABEL: "true"}},
        "spec": {
            "serviceAccountName": "ferry-operator",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "operator",
                "image": OPERATOR_IMAGE,
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "FERRY_LOG", "value": "info,ferry_operator=debug"},
                    {"name": "FERRY_LEASE_RENEW_MILLIS", "value": "500"},
                    {"name": "FERRY_SIDECAR_CLUSTER_ROLE", "value": names.cluster_role},
                    {"name": "FERRY_SIDECAR_BINDING_NAME", "value": names.binding},
                    {"name": "FERRY_SIDECAR_SECRETS_ROLE", "value": names.secrets_role},
                ],
                "ports": [{"name": "admin", "containerPort": 8080}],
            }]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = wait_for(&pods, name, "the operator pod to run", WAIT, |p| {
        p.and_then(|p| p.status.as_ref())
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    })
    .await
    .unwrap();
    let op = Operator {
        ns: ns.to_owned(),
        name: name.to_owned(),
        ip: pod.status.and_then(|s| s.pod_ip).unwrap(),
    };
    eventually("the operator to be ready", WAIT, || async {
        match http_get(
            &format!("http://{}:8080/readyz", op.ip),
            Duration::from_secs(2),
        )
        .await
        {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await;
    (op, guard)
}

/// Stops every operator these tests started, anywhere, and waits until they are gone.
async fn stop_operators(client: &Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().labels(OPERATOR_LABEL);
    for pod in pods.list(&lp).await.unwrap().items {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
        let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
    }
    eventually("our operators to stop", WAIT, || async {
        let left = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} still there", left.len()))
        }
    })
    .await;
}

// === the cluster's objects ===

async fn create_account(client: &Client, ns: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
}

/// A pod running as `account`, labelled `dapr.io/app-id: <app>` when `app` is given.
async fn create_pod(client: &Client, ns: &str, name: &str, account: &str, app: Option<&str>) {
    let labels = app.map_or_else(|| json!({}), |a| json!({"dapr.io/app-id": a}));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "serviceAccountName": account,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": APP_IMAGE, "command": ["sleep", "3600"]}]
        }
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

async fn delete_pod_now(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(&pods, name, "the pod to be gone", WAIT, |p| p.is_none()).await;
}

async fn create_secret(client: &Client, ns: &str, name: &str) {
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"token": format!("{name}-value"), "tls.crt": "C", "tls.key": "K"}
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn apply_endpoint(client: &Client, ns: &str, name: &str, spec: Value) {
    let ep: HttpEndpoint = serde_json::from_value(json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<HttpEndpoint>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&ep),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply HTTPEndpoint {ns}/{name}: {e}"));
}

/// The endpoints every app namespace gets: a header from `api-key`, mutual TLS from
/// `tls-client`, and (with `inline`) an endpoint whose private key is inline.
async fn apply_endpoints(client: &Client, ns: &str, inline: bool) {
    apply_endpoint(
        client,
        ns,
        "api",
        json!({"baseUrl": "https://api.example.com",
               "headers": [
                   {"name": "Accept", "value": "application/json"},
                   {"name": "Authorization", "secretKeyRef": {"name": "api-key", "key": "token"}}]}),
    )
    .await;
    apply_endpoint(
        client,
        ns,
        "mtls",
        json!({"baseUrl": "https://mtls.example.com",
               "clientTLS": {
                   "rootCA": {"value": "-----BEGIN CERTIFICATE-----\nCA"},
                   "certificate": {"secretKeyRef": {"name": "tls-client", "key": "tls.crt"}},
                   "privateKey": {"secretKeyRef": {"name": "tls-client", "key": "tls.key"}}}}),
    )
    .await;
    if inline {
        apply_endpoint(
            client,
            ns,
            "inline",
            json!({"baseUrl": "https://inline.example.com",
                   "clientTLS": {
                       "certificate": {"value": "-----BEGIN CERTIFICATE-----\nC"},
                       "privateKey": {"value": "-----BEGIN PRIVATE KEY-----\nK"}}}),
        )
        .await;
    }
}

// === access, as a ServiceAccount ===

/// A client acting as ServiceAccount `ns/name`, with the groups its token would carry.
async fn client_as_account(ns: &str, name: &str) -> Client {
    let env = ClusterEnv::load().unwrap();
    let kc = Kubeconfig::read_from(env.kubeconfig().unwrap()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_owned(),
    ]);
    Client::try_from(config).unwrap()
}

/// A request, made for real.
#[derive(Debug, Clone)]
enum Op {
    GetSecret(String, &'static str),
    ListSecrets(Option<String>),
    WatchSecrets(String),
    GetEndpoint(String, &'static str),
    ListEndpoints(String),
    ListTables(Option<String>),
    WatchTables(String),
    ListSlices(Option<String>),
    WatchSlices(String),
    ListPods(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "(all)".into());
        match self {
            Op::GetSecret(n, s) => write!(f, "get secret {n}/{s}"),
            Op::ListSecrets(n) => write!(f, "list secrets in {}", ns(n)),
            Op::WatchSecrets(n) => write!(f, "watch secrets in {n}"),
            Op::GetEndpoint(n, e) => write!(f, "get httpendpoint {n}/{e}"),
            Op::ListEndpoints(n) => write!(f, "list httpendpoints in {n}"),
            Op::ListTables(n) => write!(f, "list routingtables in {}", ns(n)),
            Op::WatchTables(n) => write!(f, "watch routingtables in {n}"),
            Op::ListSlices(n) => write!(f, "list endpointslices in {}", ns(n)),
            Op::WatchSlices(n) => write!(f, "watch endpointslices in {n}"),
            Op::ListPods(n) => write!(f, "list pods in {n}"),
        }
    }
}

fn api<K>(c: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(c.clone(), ns),
        None => Api::all(c.clone()),
    }
}

/// Whether the API server lets `c` do `op` (403 is a refusal; anything else got past
/// authorization).
async fn allowed(c: &Client, op: &Op) -> Result<bool, String> {
    let lp = ListParams::default().limit(1);
    let wp = WatchParams::default().timeout(1);
    let some = |n: &String| Some(n.clone());
    let r: kube::Result<()> = match op {
        Op::GetSecret(n, s) => api::<Secret>(c, &some(n)).get(s).await.map(drop),
        Op::ListSecrets(n) => api::<Secret>(c, n).list(&lp).await.map(drop),
        Op::WatchSecrets(n) => api::<Secret>(c, &some(n)).watch(&wp, "0").await.map(drop),
        Op::GetEndpoint(n, e) => api::<HttpEndpoint>(c, &some(n)).get(e).await.map(drop),
        Op::ListEndpoints(n) => api::<HttpEndpoint>(c, &some(n)).list(&lp).await.map(drop),
        Op::ListTables(n) => api::<RoutingTable>(c, n).list(&lp).await.map(drop),
        Op::WatchTables(n) => api::<RoutingTable>(c, &some(n))
            .watch(&wp, "0")
            .await
            .map(drop),
        Op::ListSlices(n) => api::<EndpointSlice>(c, n).list(&lp).await.map(drop),
        Op::WatchSlices(n) => api::<EndpointSlice>(c, &some(n))
            .watch(&wp, "0")
            .await
            .map(drop),
        Op::ListPods(n) => api::<Pod>(c, &some(n)).list(&lp).await.map(drop),
    };
    match r {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(e) => Err(format!("{op}: {e}")),
    }
}

/// Polls until `who` may do exactly the `(op, allowed)` pairs; returns how long that took.
/// (The authorizer works from caches: a grant takes effect a moment after it is written.)
async fn expect_access(who: &str, c: &Client, want: &[(Op, bool)]) -> Duration {
    let start = Instant::now();
    eventually(&format!("the access of {who}"), WAIT, || async {
        let mut wrong = Vec::new();
        for (op, expected) in want {
            let got = allowed(c, op).await?;
            if got != *expected {
                wrong.push(format!("{op}: {}", if got { "allowed" } else { "refused" }));
            }
        }
        if wrong.is_empty() {
            Ok(start.elapsed())
        } else {
            Err(wrong.join("; "))
        }
    })
    .await
}

// === the operator's objects ===

fn subjects(subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>) -> BTreeSet<String> {
    subjects
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}:{}/{}",
                s.kind,
                s.namespace.as_deref().unwrap_or_default(),
                s.name
            )
        })
        .collect()
}

/// `ServiceAccount:<ns>/<name>` for every ServiceAccount in the cluster that runs a pod
/// labelled `dapr.io/app-id` that has not finished.
async fn sidecar_accounts(client: &Client) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default().labels("dapr.io/app-id"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| {
            let sa = p
                .spec
                .and_then(|s| s.service_account_name)
                .unwrap_or_else(|| "default".into());
            format!(
                "ServiceAccount:{}/{sa}",
                p.metadata.namespace.unwrap_or_default()
            )
        })
        .collect()
}

/// Waits until the ClusterRoleBinding lists exactly the ServiceAccounts that run sidecars in the
/// whole cluster (other tests' pods included), or is gone when there are none.
async fn expect_binding_follows_the_pods(client: &Client, names: &Names) {
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    eventually(
        "the ClusterRoleBinding to list every sidecar's account",
        WAIT,
        || async {
            let want = sidecar_accounts(client).await;
            let crb = crbs
                .get_opt(&names.binding)
                .await
                .map_err(|e| e.to_string())?;
            let have = crb.as_ref().map(|c| subjects(c.subjects.as_ref()));
            match (&have, want.is_empty()) {
                (None, true) => Ok(()),
                (Some(have), false) if *have == want => {
                    let crb = crb.as_ref().unwrap();
                    assert_eq!(crb.role_ref.kind, "ClusterRole");
                    assert_eq!(crb.role_ref.name, names.cluster_role);
                    Ok(())
                }
                _ => Err(format!("want {want:?}, have {have:?}")),
            }
        },
    )
    .await;
}

fn rules(role: &Role) -> Value {
    serde_json::to_value(&role.rules).unwrap()
}

// === the test ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn sidecars_read_exactly_their_namespaces_secrets_and_lose_them_with_the_reference_or_pod() {
    with_temp_ns("sbac-op", |_, op_ns| async move {
        with_temp_ns("sbac-shop", move |_, shop| async move {
            with_temp_ns("sbac-bank", move |client, bank| async move {
                the_grants(client, op_ns, shop, bank).await;
            })
            .await;
        })
        .await;
    })
    .await;
}

async fn the_grants(client: Client, op_ns: String, shop: String, bank: String) {
    let (op, _turn) = start_operator(&client, &op_ns).await;
    let names = Names::for_ns(&op_ns);

    // Two namespaces: `cart` runs in shop, `orders` in bank; `idle` (shop) runs a pod without
    // the label. Each namespace has the referenced Secrets and one nobody references.
    for (ns, account) in [(&shop, "cart"), (&bank, "orders"), (&shop, "idle")] {
        create_account(&client, ns, account).await;
    }
    for ns in [&shop, &bank] {
        for secret in ["api-key", "tls-client", "db-password"] {
            create_secret(&client, ns, secret).await;
        }
    }
    let started = Instant::now();
    create_pod(&client, &shop, "cart-1", "cart", Some("cart")).await;
    create_pod(&client, &shop, "cart-2", "cart", Some("cart")).await;
    create_pod(&client, &bank, "orders-1", "orders", Some("orders")).await;
    create_pod(&client, &shop, "idle-1", "idle", None).await;
    apply_endpoints(&client, &shop, true).await;
    apply_endpoints(&client, &bank, false).await;

    let cart = client_as_account(&shop, "cart").await;
    let orders = client_as_account(&bank, "orders").await;
    let idle = client_as_account(&shop, "idle").await;
    let s = |n: &String| Some(n.clone());
    // What a sidecar of `own` may do, and what it may not.
    let sidecar = |own: &String, other: &String, inline: bool| {
        vec![
            (Op::GetSecret(own.clone(), "api-key"), true),
            (Op::GetSecret(own.clone(), "tls-client"), true),
            (Op::GetSecret(own.clone(), "db-password"), false),
            (Op::ListSecrets(s(own)), false),
            (Op::WatchSecrets(own.clone()), false),
            (Op::ListSecrets(None), false),
            (Op::GetSecret(other.clone(), "api-key"), false),
            (Op::GetSecret(other.clone(), "tls-client"), false),
            (Op::GetEndpoint(own.clone(), "inline"), inline),
            (Op::GetEndpoint(own.clone(), "api"), false),
            (Op::ListEndpoints(own.clone()), false),
            (Op::GetEndpoint(other.clone(), "inline"), false),
            (Op::ListTables(s(own)), true),
            (Op::ListTables(s(other)), true),
            (Op::ListTables(None), true),
            (Op::WatchTables(other.clone()), true),
            (Op::ListSlices(s(own)), true),
            (Op::ListSlices(s(other)), true),
            (Op::WatchSlices(other.clone()), true),
            (Op::ListPods(own.clone()), false),
        ]
    };
    let nothing = |own: &String, other: &String| -> Vec<(Op, bool)> {
        sidecar(own, other, true)
            .into_iter()
            .map(|(op, _)| (op, false))
            .collect()
    };
    let granted = expect_access("cart", &cart, &sidecar(&shop, &bank, true)).await;
    expect_access("orders", &orders, &sidecar(&bank, &shop, false)).await;
    expect_access("idle (no labelled pod)", &idle, &nothing(&shop, &bank)).await;
    let took = started.elapsed();
    eprintln!(
        "sidecar access granted {took:?} after the pods and endpoints were created (the last check itself {granted:?})"
    );

    // The objects say exactly that, owned by the namespace's RoutingTable.
    let roles = |ns: &String| Api::<Role>::namespaced(client.clone(), ns);
    let bindings = |ns: &String| Api::<RoleBinding>::namespaced(client.clone(), ns);
    let shop_role = roles(&shop).get(&names.secrets_role).await.unwrap();
    let want_shop_rules = json!([
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": ["api-key", "tls-client"], "verbs": ["get"]},
        {"apiGroups": ["dapr.io"], "resources": ["httpendpoints"],
         "resourceNames": ["inline"], "verbs": ["get"]}
    ]);
    assert_eq!(rules(&shop_role), want_shop_rules);
    let table = Api::<RoutingTable>::namespaced(client.clone(), &shop)
        .get("ferry")
        .await
        .unwrap();
    let owners = shop_role.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("RoutingTable", table.uid().unwrap().as_str())
    );
    let bank_role = roles(&bank).get(&names.secrets_role).await.unwrap();
    assert_eq!(
        rules(&bank_role),
        json!([{"apiGroups": [""], "resources": ["secrets"],
                "resourceNames": ["api-key", "tls-client"], "verbs": ["get"]}]),
        "no inline key in bank: no rule for HTTPEndpoints at all"
    );
    let shop_binding = bindings(&shop).get(&names.secrets_role).await.unwrap();
    assert_eq!(
        subjects(shop_binding.subjects.as_ref()),
        BTreeSet::from([format!("ServiceAccount:{shop}/cart")])
    );
    expect_binding_follows_the_pods(&client, &names).await;
    let managers: Vec<String> = shop_role
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(
        managers,
        ["ferry-operator"],
        "written by server-side apply only"
    );

    // Someone widens the Role: the operator puts it back.
    let mut widened = want_shop_rules.clone();
    widened[0]["resourceNames"] = json!(["api-key", "tls-client", "db-password"]);
    roles(&shop)
        .patch(
            &names.secrets_role,
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": widened})),
        )
        .await
        .unwrap();
    wait_for(
        &roles(&shop),
        &names.secrets_role,
        "the Role to be put back",
        WAIT,
        |r| r.is_some_and(|r| rules(r) == want_shop_rules),
    )
    .await;
    expect_access("cart", &cart, &sidecar(&shop, &bank, true)).await;

    // The header's reference goes: so does `get` on its Secret, and only that.
    let removed = Instant::now();
    apply_endpoint(
        &client,
        &shop,
        "api",
        json!({"baseUrl": "https://api.example.com",
               "headers": [{"name": "Accept", "value": "application/json"}]}),
    )
    .await;
    let mut after = sidecar(&shop, &bank, true);
    after[0].1 = false;
    expect_access("cart", &cart, &after).await;
    let revoked = removed.elapsed();
    eprintln!("get on api-key revoked {revoked:?} after the reference was removed");

    // One of cart's two pods goes: nothing changes. The last goes: cart loses everything, and
    // shop, with no sidecar left, keeps no Role or RoleBinding. orders keeps its access.
    delete_pod_now(&client, &shop, "cart-2").await;
    expect_binding_follows_the_pods(&client, &names).await;
    expect_access("cart", &cart, &after).await;
    let deleted = Instant::now();
    delete_pod_now(&client, &shop, "cart-1").await;
    expect_access("cart (no pod left)", &cart, &nothing(&shop, &bank)).await;
    let lost = deleted.elapsed();
    eprintln!("cart lost its access {lost:?} after its last pod was deleted");
    let crb = Api::<ClusterRoleBinding>::all(client.clone())
        .get_opt(&names.binding)
        .await
        .unwrap();
    assert!(
        !subjects(crb.as_ref().and_then(|c| c.subjects.as_ref()))
            .contains(&format!("ServiceAccount:{shop}/cart")),
        "{crb:?}"
    );
    wait_for(
        &roles(&shop),
        &names.secrets_role,
        "shop's Role to go",
        WAIT,
        |r| r.is_none(),
    )
    .await;
    wait_for(
        &bindings(&shop),
        &names.secrets_role,
        "shop's RoleBinding to go",
        WAIT,
        |r| r.is_none(),
    )
    .await;
    expect_access("orders", &orders, &sidecar(&bank, &shop, false)).await;
    expect_binding_follows_the_pods(&client, &names).await;

    // The last sidecar of ours goes.
    delete_pod_now(&client, &bank, "orders-1").await;
    expect_access("orders (no pod left)", &orders, &nothing(&bank, &shop)).await;
    expect_binding_follows_the_pods(&client, &names).await;

    let metrics = op.metrics().await;
    for controller in ["sidecar_cluster_binding", "sidecar_secrets"] {
        assert!(
            metrics.contains(&format!(
                "ferry_operator_reconciles_total{{controller=\"{controller}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(
        !metrics.contains("ferry_operator_reconcile_errors_total{controller=\"sidecar"),
        "the operator's RBAC must be enough:\n{metrics}"
    );
    stop_operators(&client).await;
}
