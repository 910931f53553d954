//! ferry-operator against the real API server. The operator runs as a pod (the process kubelet
//! maps its image to target/debug/ferry-operator) under the ServiceAccount and the ClusterRole of
//! `deploy/rbac/ferry-operator.yaml`, so every test also proves that RBAC is enough. Run with
//! `make e2e`.
//!
//! The operator acts on every namespace, so these tests take turns (one operator at a time),
//! whatever `--test-threads` says.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ferry_api::{HttpEndpoint, RoutingTable, http_endpoint::CONDITION_READY};
use ferry_e2e::{eventually, http_get, repo_root, run, wait_for, with_temp_ns};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Pod, Secret, Service, ServiceAccount},
    events::v1::Event,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const OPERATOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-operator:dev";
/// App pods only need to exist: a shell sleeping stands in for the app.
const APP_IMAGE: &str = "busybox:1.36";
const WAIT: Duration = Duration::from_secs(60);
const TABLE: &str = "ferry";
/// Marks the operator pods these tests start.
const OPERATOR_LABEL: &str = "ferry.dev/e2e-operator";
/// The grace period the tests give app Services after their last pod.
const GRACE_SECONDS: u64 = 3;

/// One operator at a time: each watches every namespace.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === cluster set-up ===

/// Creates the objects of `deploy/rbac/ferry-operator.yaml` for an operator in `ns`: the
/// namespaced ones in `ns`, the cluster-scoped ones named `<name>-<ns>` and owned by the
/// namespace, so they go with it.
async fn install_rbac(client: &Client, ns: &str) {
    let path = repo_root().join("deploy/rbac/ferry-operator.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    let namespace: Namespace = Api::all(client.clone()).get(ns).await.unwrap();
    let owner = json!([{
        "apiVersion": "v1", "kind": "Namespace",
        "name": ns, "uid": namespace.uid().unwrap(),
    }]);
    let pp = PostParams::default();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            for s in subjects {
                s["namespace"] = json!(ns);
            }
        }
        match kind.as_str() {
            "ClusterRole" | "ClusterRoleBinding" => {
                let name = format!("{}-{ns}", doc["metadata"]["name"].as_str().unwrap());
                doc["metadata"]["name"] = json!(name);
                doc["metadata"]["ownerReferences"] = owner.clone();
                if kind == "ClusterRoleBinding" {
                    let role = format!("{}-{ns}", doc["roleRef"]["name"].as_str().unwrap());
                    doc["roleRef"]["name"] = json!(role);
                    let crb: ClusterRoleBinding = serde_json::from_value(doc).unwrap();
                    Api::all(client.clone()).create(&pp, &crb).await.unwrap();
                } else {
                    let cr: ClusterRole = serde_json::from_value(doc).unwrap();
                    Api::all(client.clone()).create(&pp, &cr).await.unwrap();
                }
            }
            "ServiceAccount" | "Role" | "RoleBinding" => {
                doc["metadata"]["namespace"] = json!(ns);
                match kind.as_str() {
                    "ServiceAccount" => {
                        let sa: ServiceAccount = serde_json::from_value(doc).unwrap();
                        Api::namespaced(client.clone(), ns)
                            .create(&pp, &sa)
                            .await
                            .unwrap();
                    }
                    "Role" => {
                        let r: Role = serde_json::from_value(doc).unwrap();
                        Api::namespaced(client.clone(), ns)
                            .create(&pp, &r)
                            .await
                            .unwrap();
                    }
                    _ => {
                        let rb: RoleBinding = serde_json::from_value(doc).unwrap();
                        Api::namespaced(client.clone(), ns)
                            .create(&pp, &rb)
                            .await
                            .unwrap();
                    }
                }
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        }
    }
}

// === the operator under test ===

/// An operator pod. When the test panics (or FERRY_E2E_OPERATOR_LOGS is set), the tail of its
/// log is printed.
struct Operator {
    ns: String,
    name: String,
    ip: String,
}

impl Operator {
    async fn readyz(&self) -> Result<(u16, String), String> {
        http_get(
            &format!("http://{}:8080/readyz", self.ip),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| format!("{e:#}"))
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

    /// The value of an unlabelled gauge or counter line `name value`.
    async fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

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

    /// Whether the Lease holder `identity` is this pod (identities are `<pod>_<random>`).
    fn holds(&self, identity: &str) -> bool {
        identity.starts_with(&format!("{}_", self.name))
    }

    /// SIGKILL to the operator's process: no Lease release, no clean-up. The process is the
    /// ferry-operator whose environment names this pod.
    fn kill_hard(&self) {
        let want = [
            format!("POD_NAME={}", self.name),
            format!("POD_NAMESPACE={}", self.ns),
        ];
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
                    .is_ok_and(|x| x.file_name().is_some_and(|n| n == "ferry-operator"))
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
        assert_eq!(
            pids.len(),
            1,
            "the process of operator {}: {pids:?}",
            self.name
        );
        run("kill", &["-KILL", &pids[0]]).unwrap();
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

/// Starts operator pod `name` in `ns` (its Lease lives there too) and waits until it is ready.
async fn start_operator(client: &Client, ns: &str, name: &str, env: &[(&str, &str)]) -> Operator {
    start_operator_with(client, ns, name, env, "Always").await
}

async fn start_operator_with(
    client: &Client,
    ns: &str,
    name: &str,
    env: &[(&str, &str)],
    restart_policy: &str,
) -> Operator {
    let mut vars = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "FERRY_LOG", "value": "info,ferry_operator=debug"}),
        json!({"name": "FERRY_LEASE_RENEW_MILLIS", "value": "500"}),
        json!({"name": "FERRY_SERVICE_GRACE_SECONDS", "value": GRACE_SECONDS.to_string()}),
    ];
    for (k, v) in env {
        vars.push(json!({"name": k, "value": v}));
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {OPERATOR_LABEL: "true"}},
        "spec": {
            "serviceAccountName": "ferry-operator",
            "terminationGracePeriodSeconds": 5,
            "restartPolicy": restart_policy,
            "containers": [{
                "name": "operator",
                "image": OPERATOR_IMAGE,
                "env": vars,
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
    eprintln!(
        "operator {name} runs at {}",
        pod.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
    );
    let op = Operator {
        ns: ns.to_owned(),
        name: name.to_owned(),
        ip: pod.status.unwrap().pod_ip.unwrap(),
    };
    eventually(&format!("operator {name} to be ready"), WAIT, || async {
        match op.readyz().await {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e),
        }
    })
    .await;
    op
}

/// Stops every operator these tests started, anywhere (a namespace being deleted keeps its pods
/// for a while), and waits until their processes are gone.
async fn stop_operators(client: &Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().labels(OPERATOR_LABEL);
    for pod in pods.list(&lp).await.unwrap().items {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
        let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
    }
    eventually("the operators to stop", WAIT, || async {
        let left: Vec<String> = pods
            .list(&lp)
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;
}

/// Prepares a namespace for an operator: no other operator left running, CRDs, RBAC. Returns
/// the guard that keeps other tests' operators away.
async fn prepare(client: &Client, ns: &str) -> tokio::sync::MutexGuard<'static, ()> {
    let guard = ONE_OPERATOR.lock().await;
    stop_operators(client).await;
    ferry_e2e::install_crds(client).await;
    install_rbac(client, ns).await;
    guard
}

// === objects ===

fn app_pod(name: &str, app_id: &str, annotations: &[(&str, &str)]) -> Pod {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"dapr.io/app-id": app_id}, "annotations": annotations},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": APP_IMAGE, "command": ["sleep", "3600"]}]
        }
    }))
    .unwrap()
}

fn endpoint(name: &str, spec: Value) -> HttpEndpoint {
    serde_json::from_value(json!({
        "apiVersion": "dapr.io/v1alpha1", "kind": "HTTPEndpoint",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

async fn apply_endpoint(client: &Client, ns: &str, ep: &HttpEndpoint) {
    let api: Api<HttpEndpoint> = Api::namespaced(client.clone(), ns);
    api.patch(
        ep.name(),
        &PatchParams::apply("e2e-user").force(),
        &Patch::Apply(ep),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot apply HTTPEndpoint {}: {e}", ep.name()));
}

async fn delete_pod_now(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// Events in `ns` about object `name` with `reason`.
async fn events(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> Event {
    eventually(&format!("an Event {reason} on {name}"), WAIT, || async {
        events(client, ns, name, reason)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
}

/// Polls the RoutingTable every 20 ms until `cond` holds; returns how long it took.
async fn time_until_table(
    client: &Client,
    ns: &str,
    what: &str,
    cond: impl Fn(Option<&RoutingTable>) -> bool,
) -> Duration {
    let api: Api<RoutingTable> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        let rt = api.get_opt(TABLE).await.unwrap();
        if cond(rt.as_ref()) {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!(
                "the RoutingTable never showed {what}; last seen:\n{}",
                serde_json::to_string_pretty(&rt).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ready_condition(ep: Option<&HttpEndpoint>) -> Option<(String, String, String)> {
    let ep = ep?;
    let status = ep.status.as_ref()?;
    if status.observed_generation != ep.metadata.generation {
        return None;
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

// === tests ===

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn app_pods_get_their_dapr_service_which_goes_after_the_last_pod() {
    with_temp_ns("op-svc", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        let _op = start_operator(&client, &ns, "operator", &[]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams::default();
        pods.create(
            &pp,
            &app_pod(
                "cart-1",
                "cart",
                &[(
                    "dapr.io/sidecar-svc-annotations",
                    "team=payments, prometheus.io/port=1, broken",
                )],
            ),
        )
        .await
        .unwrap();

        let rts: Api<RoutingTable> = Api::namespaced(client.clone(), &ns);
        wait_for(&svcs, "cart-dapr", "the app's Service, owned by the RoutingTable", WAIT, |s| {
            s.is_some_and(|s| s.owner_references().len() == 1)
        })
        .await;
        let rt = rts.get(TABLE).await.unwrap();
        let svc = svcs.get("cart-dapr").await.unwrap();
        let v = serde_json::to_value(&svc).unwrap();
        assert_eq!(
            v["metadata"]["labels"],
            json!({"dapr.io/enabled": "true", "app.kubernetes.io/managed-by": "ferry-operator"})
        );
        assert_eq!(
            v["metadata"]["annotations"],
            json!({
                "dapr.io/app-id": "cart",
                "prometheus.io/probe": "true",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "prometheus.io/path": "/",
                "team": "payments"
            })
        );
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{
                "apiVersion": "ferry.dev/v1alpha1", "kind": "RoutingTable",
                "name": "ferry", "uid": rt.uid().unwrap(), "controller": true
            }])
        );
        assert_eq!(v["spec"]["clusterIP"], "None");
        assert_eq!(v["spec"]["selector"], json!({"dapr.io/app-id": "cart"}));
        assert_eq!(
            v["spec"]["ports"],
            json!([
                {"name": "dapr-http", "port": 80, "targetPort": 3500, "protocol": "TCP", "appProtocol": "http"},
                {"name": "dapr-grpc", "port": 50001, "targetPort": 50001, "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "dapr-internal", "port": 50002, "targetPort": 50002, "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "dapr-metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"}
            ])
        );
        let managers: Vec<String> = svc
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert_eq!(managers, ["ferry-operator"], "written by server-side apply only");

        // The bad pair and the reserved key are reported on the pod, not applied.
        let ev = wait_event(&client, &ns, "cart-1", "InvalidServiceAnnotations").await;
        let note = ev.note.unwrap_or_default();
        assert!(note.contains("\"broken\" is not key=value"), "{note}");
        assert!(note.contains("prometheus.io/port"), "{note}");
        assert_eq!(ev.type_.as_deref(), Some("Warning"));

        // A second pod keeps the Service when the first goes.
        pods.create(&pp, &app_pod("cart-2", "cart", &[])).await.unwrap();
        delete_pod_now(&client, &ns, "cart-1").await;
        tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 2)).await;
        assert!(svcs.get_opt("cart-dapr").await.unwrap().is_some(), "cart-2 still runs");

        // After the last pod, the Service stays for the grace period, then goes, and the
        // RoutingTable with it once nothing is left.
        delete_pod_now(&client, &ns, "cart-2").await;
        let gone_at = eventually("the last pod to be gone", WAIT, || async {
            match pods.get_opt("cart-2").await.unwrap() {
                None => Ok(Instant::now()),
                Some(_) => Err("still there".into()),
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            svcs.get_opt("cart-dapr").await.unwrap().is_some(),
            "the Service must outlive its last pod by the grace period"
        );
        wait_for(&svcs, "cart-dapr", "the Service to be deleted", WAIT, |s| s.is_none()).await;
        let kept = gone_at.elapsed();
        assert!(
            kept >= Duration::from_secs(GRACE_SECONDS - 1),
            "deleted after {kept:?}, before the grace period"
        );
        wait_for(&rts, TABLE, "the RoutingTable to go", WAIT, |r| r.is_none()).await;
        stop_operators(&client).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn a_service_the_operator_does_not_own_is_left_alone_and_the_clash_reported() {
    with_temp_ns("op-clash", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        let theirs: Service = serde_json::from_value(json!({
            "metadata": {"name": "clash-dapr", "annotations": {"mine": "yes"}},
            "spec": {"selector": {"app": "something-else"}, "ports": [{"port": 1234}]}
        }))
        .unwrap();
        let theirs = svcs.create(&PostParams::default(), &theirs).await.unwrap();
        let _op = start_operator(&client, &ns, "operator", &[]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams::default();
        pods.create(&pp, &app_pod("clash-1", "clash", &[]))
            .await
            .unwrap();
        pods.create(&pp, &app_pod("fine-1", "fine", &[]))
            .await
            .unwrap();

        let ev = wait_event(&client, &ns, "clash-1", "ServiceConflict").await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(ev.note.unwrap_or_default().contains("clash-dapr"));

        let rts: Api<RoutingTable> = Api::namespaced(client.clone(), &ns);
        // The two pods may be seen in separate reconciles: wait for the state that follows
        // both, the clash reported and the other app listed.
        let listed = |r: &RoutingTable| -> Vec<String> {
            r.spec.apps.iter().map(|a| a.id.clone()).collect()
        };
        let rt = wait_for(
            &rts,
            TABLE,
            "the clash in the RoutingTable's status, and the other app listed",
            WAIT,
            |r| {
                r.is_some_and(|r| {
                    listed(r).contains(&"fine".to_owned())
                        && r.status.as_ref().is_some_and(|s| {
                            s.conditions.iter().any(|c| {
                                c.type_ == "AppServices"
                                    && c.status == "False"
                                    && c.reason == "ServiceConflict"
                                    && c.message.contains("clash-dapr (app clash)")
                            })
                        })
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(
            listed(&rt),
            ["fine"],
            "an app without its own Service is not listed"
        );
        wait_for(&svcs, "fine-dapr", "the other app's Service", WAIT, |s| {
            s.is_some()
        })
        .await;

        // Untouched: same resourceVersion, no field of ours.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = svcs.get("clash-dapr").await.unwrap();
        assert_eq!(now.resource_version(), theirs.resource_version());
        assert!(
            now.managed_fields()
                .iter()
                .all(|m| m.manager.as_deref() != Some("ferry-operator"))
        );

        // Once the clash is resolved, the app gets its Service.
        svcs.delete("clash-dapr", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            &svcs,
            "clash-dapr",
            "the operator's Service in its place",
            WAIT,
            |s| {
                s.is_some_and(|s| {
                    s.labels()
                        .get("app.kubernetes.io/managed-by")
                        .map(String::as_str)
                        == Some("ferry-operator")
                })
            },
        )
        .await;
        wait_for(&rts, TABLE, "the conflict to clear", WAIT, |r| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "AppServices" && c.status == "True")
            })
        })
        .await;
        stop_operators(&client).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_invalid_http_endpoint_is_not_ready_with_a_reason_and_fixing_it_makes_it_ready() {
    with_temp_ns("op-ep", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        let _op = start_operator(&client, &ns, "operator", &[]).await;
        let eps: Api<HttpEndpoint> = Api::namespaced(client.clone(), &ns);

        let cases = [
            (json!({"baseUrl": "ftp://files.example.com"}), "InvalidBaseURL"),
            (json!({"baseUrl": "https://user:pw@api.example.com"}), "InvalidBaseURL"),
            (
                json!({"baseUrl": "https://api.example.com", "headers": [{"name": "Bad Header", "value": "x"}]}),
                "InvalidHeader",
            ),
            (
                json!({"baseUrl": "https://api.example.com", "headers": [{"name": "X-A", "value": "x", "envRef": "E"}]}),
                "InvalidHeader",
            ),
            (
                json!({"baseUrl": "https://api.example.com",
                       "clientTLS": {"certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}}}}),
                "IncompleteTLS",
            ),
        ];
        for (spec, reason) in cases {
            apply_endpoint(&client, &ns, &endpoint("ext", spec.clone())).await;
            let ep = wait_for(&eps, "ext", &format!("Ready=False {reason}"), WAIT, |e| {
                ready_condition(e).is_some_and(|(s, r, _)| s == "False" && r == reason)
            })
            .await
            .unwrap();
            let (_, _, message) = ready_condition(Some(&ep)).unwrap();
            assert!(!message.is_empty(), "{spec}");
            wait_event(&client, &ns, "ext", reason).await;
        }

        apply_endpoint(
            &client,
            &ns,
            &endpoint(
                "ext",
                json!({"baseUrl": "https://api.example.com",
                       "headers": [{"name": "Authorization", "secretKeyRef": {"name": "tok", "key": "token"}}],
                       "clientTLS": {
                           "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                           "privateKey": {"secretKeyRef": {"name": "tls", "key": "tls.key"}}}}),
            ),
        )
        .await;
        wait_for(&eps, "ext", "Ready=True Valid", WAIT, |e| {
            ready_condition(e).is_some_and(|(s, r, _)| s == "True" && r == "Valid")
        })
        .await;
        let ev = wait_event(&client, &ns, "ext", "Valid").await;
        assert_eq!(ev.type_.as_deref(), Some("Normal"));

        // Dapr's docs manifest, as written for Dapr.
        let docs = std::fs::read_to_string(
            repo_root().join("api/tests/fixtures/httpendpoint-dapr-docs.yaml"),
        )
        .unwrap();
        let dapr: HttpEndpoint = serde_saphyr::from_str(&docs).unwrap();
        apply_endpoint(&client, &ns, &dapr).await;
        wait_for(&eps, dapr.name(), "Dapr's example to be Ready", WAIT, |e| {
            ready_condition(e).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        stop_operators(&client).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn the_routing_table_follows_the_namespace_within_a_second() {
    with_temp_ns("op-rt", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        let _op = start_operator(&client, &ns, "operator", &[]).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "tok"},
            "stringData": {"token": "s3cr3t-value-never-copied"}
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nPRIVATE-KEY-BODY\n-----END PRIVATE KEY-----";

        let mut took = Vec::new();
        // Addition.
        apply_endpoint(&client, &ns, &endpoint("ext", json!({"baseUrl": "https://a.example.com"}))).await;
        took.push((
            "HTTPEndpoint added",
            time_until_table(&client, &ns, "the endpoint", |rt| {
                rt.is_some_and(|rt| {
                    rt.spec.http_endpoints.iter().any(|e| e.name == "ext" && e.ready)
                })
            })
            .await,
        ));
        // Change, with references.
        apply_endpoint(
            &client,
            &ns,
            &endpoint(
                "ext",
                json!({"baseUrl": "https://b.example.com",
                       "headers": [
                           {"name": "Accept-Language", "value": "en-US"},
                           {"name": "Authorization", "secretKeyRef": {"name": "tok", "key": "token"}}],
                       "clientTLS": {
                           "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                           "privateKey": {"value": KEY_PEM}}}),
            ),
        )
        .await;
        took.push((
            "HTTPEndpoint changed",
            time_until_table(&client, &ns, "the new base URL", |rt| {
                rt.is_some_and(|rt| {
                    rt.spec
                        .http_endpoints
                        .iter()
                        .any(|e| e.base_url == "https://b.example.com")
                })
            })
            .await,
        ));
        // An app.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.create(&PostParams::default(), &app_pod("cart-1", "cart", &[]))
            .await
            .unwrap();
        took.push((
            "app added",
            time_until_table(&client, &ns, "the app", |rt| {
                rt.is_some_and(|rt| rt.spec.apps.iter().any(|a| a.id == "cart"))
            })
            .await,
        ));

        let rts: Api<RoutingTable> = Api::namespaced(client.clone(), &ns);
        let rt = rts.get(TABLE).await.unwrap();
        let text = serde_json::to_string(&rt).unwrap();
        assert!(!text.contains("s3cr3t-value-never-copied"), "{text}");
        assert!(!text.contains("PRIVATE-KEY-BODY"), "{text}");
        let v = serde_json::to_value(&rt.spec).unwrap();
        assert_eq!(
            v,
            json!({
                "apps": [{"id": "cart", "service": "cart-dapr",
                          "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090}}],
                "httpEndpoints": [{
                    "name": "ext",
                    "baseUrl": "https://b.example.com",
                    "headers": [
                        {"name": "Accept-Language", "value": "en-US"},
                        {"name": "Authorization", "secretKeyRef": {"name": "tok", "key": "token"}}
                    ],
                    "clientTLS": {
                        "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                        "privateKey": {"inline": true},
                        "renegotiation": "Never"
                    },
                    "ready": true
                }]
            })
        );
        let status = wait_for(&rts, TABLE, "the status to catch up", WAIT, |r| {
            r.is_some_and(|r| {
                r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation
            })
        })
        .await
        .unwrap()
        .status
        .unwrap();
        assert!(status.synced_at.is_some());
        assert_eq!((status.apps, status.http_endpoints), (1, 1));

        // Deletions.
        delete_pod_now(&client, &ns, "cart-1").await;
        took.push((
            "app removed",
            time_until_table(&client, &ns, "the app gone", |rt| {
                rt.is_some_and(|rt| rt.spec.apps.is_empty())
            })
            .await,
        ));
        let eps: Api<HttpEndpoint> = Api::namespaced(client.clone(), &ns);
        eps.delete("ext", &DeleteParams::default()).await.unwrap();
        took.push((
            "HTTPEndpoint removed",
            time_until_table(&client, &ns, "the endpoint gone", |rt| {
                rt.is_none_or(|rt| rt.spec.http_endpoints.is_empty())
            })
            .await,
        ));
        eprintln!("RoutingTable latencies: {took:?}");
        for (what, d) in &took {
            assert!(*d < Duration::from_secs(1), "{what}: the table took {d:?}");
        }
        // Nothing left (after the app Service's grace period): the table goes.
        wait_for(&rts, TABLE, "the RoutingTable to go", WAIT, |r| r.is_none()).await;
        stop_operators(&client).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn two_operators_elect_one_leader_and_hand_over_when_it_dies() {
    with_temp_ns("op-lease", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        const LEASE_SECONDS: u64 = 4;
        let env = [
            ("FERRY_LEASE_DURATION_SECONDS", "4"),
            ("FERRY_LOG", "info,ferry_operator::lease=trace"),
        ];
        // Not restarted once killed: a restarted process would be one more candidate.
        let a = start_operator_with(&client, &ns, "operator-a", &env, "Never").await;
        let b = start_operator_with(&client, &ns, "operator-b", &env, "Never").await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = || async {
            leases
                .get_opt("ferry-operator")
                .await
                .unwrap()
                .and_then(|l| l.spec?.holder_identity)
                .unwrap_or_default()
        };

        // Exactly one leads, and keeps leading.
        let first = holder().await;
        assert!(a.holds(&first) || b.holds(&first), "holder {first:?}");
        for _ in 0..6 {
            let (la, lb) = (
                a.metric("ferry_operator_leader").await,
                b.metric("ferry_operator_leader").await,
            );
            assert_eq!(
                (la, lb),
                if a.holds(&first) {
                    (Some(1.0), Some(0.0))
                } else {
                    (Some(0.0), Some(1.0))
                }
            );
            assert_eq!(holder().await, first);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (leader, follower) = if a.holds(&first) { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            follower.readyz().await.unwrap().0,
            200,
            "a follower is ready"
        );

        // SIGKILL: no release; the follower takes over once the lease has run out.
        leader.kill_hard();
        let killed = Instant::now();
        let took = eventually("the follower to take the Lease", WAIT, || async {
            let h = holder().await;
            if follower.holds(&h) {
                Ok(killed.elapsed())
            } else {
                Err(h)
            }
        })
        .await;
        eprintln!("hand-over after SIGKILL took {took:?}");
        assert!(
            took <= Duration::from_secs(LEASE_SECONDS) + Duration::from_millis(2500),
            "hand-over took {took:?} with a {LEASE_SECONDS} s lease"
        );
        eventually("the new leader to say so", WAIT, || async {
            match follower.metric("ferry_operator_leader").await {
                Some(1.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;

        // The new leader does the work.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.create(&PostParams::default(), &app_pod("after-1", "after", &[]))
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        wait_for(
            &svcs,
            "after-dapr",
            "the new leader to make the Service",
            WAIT,
            |s| s.is_some(),
        )
        .await;

        // A graceful stop of the leader (SIGTERM) releases the Lease: a third replica takes it
        // at its next look, not after the lease duration.
        let c = start_operator_with(&client, &ns, "operator-c", &env, "Never").await;
        assert!(c.readyz().await.unwrap().1.contains("follower"));
        pods.delete(&follower.name, &DeleteParams::default())
            .await
            .unwrap();
        let stopped = Instant::now();
        let took = eventually("the third operator to take the Lease", WAIT, || async {
            let h = holder().await;
            if c.holds(&h) {
                Ok(stopped.elapsed())
            } else {
                Err(h)
            }
        })
        .await;
        eprintln!("hand-over after SIGTERM took {took:?}");
        assert!(
            took < Duration::from_secs(LEASE_SECONDS),
            "a released Lease is taken at once, not after {took:?}"
        );
        stop_operators(&client).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn bad_input_never_crashes_the_operator() {
    with_temp_ns("op-bad", |client, ns| async move {
        let _turn = prepare(&client, &ns).await;
        let op = start_operator(&client, &ns, "operator", &[]).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams::default();

        // App IDs that cannot name a Service (valid label values all the same).
        let weird = ["Upper", "under_score", &"x".repeat(63), "a.b"];
        for (i, id) in weird.iter().enumerate() {
            pods.create(&pp, &app_pod(&format!("weird-{i}"), id, &[]))
                .await
                .unwrap();
        }
        // Annotations: 200 kB of nonsense, bad ports, a port clash.
        let huge = "no-equals-sign,".repeat(13_000);
        pods.create(
            &pp,
            &app_pod(
                "huge-1",
                "huge",
                &[
                    ("dapr.io/sidecar-svc-annotations", &huge),
                    ("dapr.io/grpc-port", "not-a-port"),
                    ("dapr.io/metrics-port", "80"),
                ],
            ),
        )
        .await
        .unwrap();
        // HTTPEndpoints: 10,000 headers, valid and not; an empty base URL.
        let many = |valid: bool| -> Vec<Value> {
            (0..10_000)
                .map(|i| {
                    if valid {
                        json!({"name": format!("X-H-{i}"), "value": "v"})
                    } else {
                        json!({"name": format!("bad header {i}")})
                    }
                })
                .collect()
        };
        apply_endpoint(
            &client,
            &ns,
            &endpoint(
                "many",
                json!({"baseUrl": "https://x.example.com", "headers": many(true)}),
            ),
        )
        .await;
        apply_endpoint(
            &client,
            &ns,
            &endpoint(
                "many-bad",
                json!({"baseUrl": "https://x.example.com", "headers": many(false)}),
            ),
        )
        .await;
        apply_endpoint(&client, &ns, &endpoint("empty", json!({"baseUrl": ""}))).await;

        // Each is reported...
        for i in 0..weird.len() {
            wait_event(&client, &ns, &format!("weird-{i}"), "InvalidAppID").await;
        }
        let ev = wait_event(&client, &ns, "huge-1", "InvalidPortAnnotation").await;
        assert!(ev.note.as_deref().unwrap_or_default().len() <= 1024);
        let eps: Api<HttpEndpoint> = Api::namespaced(client.clone(), &ns);
        let bad = wait_for(&eps, "many-bad", "Ready=False", WAIT, |e| {
            ready_condition(e).is_some_and(|(s, r, _)| s == "False" && r == "InvalidHeader")
        })
        .await;
        let (_, _, message) = ready_condition(bad.as_ref()).unwrap();
        assert!(message.len() < 1024, "{} bytes", message.len());
        wait_for(&eps, "empty", "Ready=False", WAIT, |e| {
            ready_condition(e).is_some_and(|(s, r, _)| s == "False" && r == "InvalidBaseURL")
        })
        .await;
        wait_for(&eps, "many", "Ready=True", WAIT, |e| {
            ready_condition(e).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        // ...the rest goes on: the app with bad annotations gets a Service with the defaults,
        // the table lists the 10,000 headers.
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc = wait_for(
            &svcs,
            "huge-dapr",
            "the Service despite the annotations",
            WAIT,
            |s| s.is_some(),
        )
        .await
        .unwrap();
        let ports: Vec<i32> = svc
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [80, 50001, 50002, 9090]);
        let rts: Api<RoutingTable> = Api::namespaced(client.clone(), &ns);
        wait_for(&rts, TABLE, "the table with every endpoint", WAIT, |r| {
            r.is_some_and(|r| {
                r.spec.apps.iter().map(|a| a.id.as_str()).eq(["huge"])
                    && r.spec
                        .http_endpoints
                        .iter()
                        .any(|e| e.name == "many" && e.headers.len() == 10_000)
            })
        })
        .await;

        // And the operator is still the same process, alive and ready.
        let pod = pods.get(&op.name).await.unwrap();
        let restarts: i32 = pod
            .status
            .and_then(|s| s.container_statuses)
            .into_iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "the operator restarted");
        assert_eq!(op.readyz().await.unwrap().0, 200);
        let metrics = op.metrics().await;
        assert!(
            metrics.contains(
                "ferry_operator_reports_total{controller=\"app_service\",reason=\"InvalidAppID\"}"
            ),
            "{metrics}"
        );
        stop_operators(&client).await;
    })
    .await;
}
