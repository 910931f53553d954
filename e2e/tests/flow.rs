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

mod common;

use std::time::Duration;

use common::mesh::with_mesh;
use common::{
    Load, TESTAPP_IMAGE, WAIT, call_until, client_app, create_deployment, deployment, http_client,
    kubectl, pod_ip, pod_log, ready_pods, samples_across_namespaces, scale,
};
use ferry_e2e::{eventually, http_get, run};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::json;

// === the tests ===

/// The seeds' samples as annotated Deployments in two namespaces, called by app ID in the
/// same namespace and across namespaces, in the URL, header and basic-auth forms; an unknown
/// app gets a fast error; an HTTPEndpoint with a secret header and mutual TLS; a URL.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn samples_call_each_other_by_app_id_across_namespaces() {
    with_mesh(2, |client, _mesh, ns| async move {
        samples_across_namespaces(&client, &ns[0], &ns[1]).await;
    })
    .await;
}

/// The Deployment of the oldest Dapr docs, with Dapr's pre-1.0 annotation names, as a user
/// applies it: `kubectl apply -n <ns>` of a manifest that names no namespace, and the seeds'
/// Flask cart app.
const OLD_DAPR_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
  labels:
    app: cart
spec:
  replicas: 1
  selector:
    matchLabels:
      app: cart
  template:
    metadata:
      labels:
        app: cart
      annotations:
        dapr.io/enabled: "true"
        dapr.io/id: "cart"
        dapr.io/port: "5000"
    spec:
      containers:
      - name: cart
        image: ferry.test/cart:dev
        ports:
        - containerPort: 5000
"#;

/// A pod with the same annotations, which kubectl creates itself (stored only: the scheduling
/// gate keeps the process kubelet from running it).
const OLD_DAPR_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: cart-bare
  annotations:
    dapr.io/enabled: "true"
    dapr.io/id: "cart"
    dapr.io/port: "5000"
spec:
  schedulingGates:
  - name: ferry.dev/e2e-stored-only
  containers:
  - name: cart
    image: ferry.test/cart:dev
"#;

/// What the injector says about [`OLD_DAPR_DEPLOYMENT`]'s annotations.
const OLD_NAME_WARNINGS: [&str; 2] = [
    "annotation dapr.io/id is Dapr's pre-1.0 name of dapr.io/app-id: read as dapr.io/app-id; rename it",
    "annotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it",
];

/// Dapr's pre-1.0 annotations work as typed: the pod of [`OLD_DAPR_DEPLOYMENT`] runs as app
/// `cart` on port 5000 in the namespace kubectl named (its sidecar answers for cart and reaches
/// the app), and the warnings reach the user where they look: `kubectl describe pod` shows them
/// as an Event (the ReplicaSet controller, which created the pod, shows admission warnings to
/// nobody), and kubectl prints them on stderr for a pod it creates itself.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_old_dapr_deployment_runs_as_typed_and_its_warnings_are_shown() {
    with_mesh(1, |client, _mesh, ns| async move {
        let a = &ns[0];
        let (_, stderr) = kubectl(&["apply", "-n", a, "-f", "-"], OLD_DAPR_DEPLOYMENT).unwrap();
        assert!(
            !stderr.contains("dapr.io/id"),
            "kubectl created a Deployment, not the pod: it sees no pod warning: {stderr}"
        );
        let pod = ready_pods(&client, a, "cart", 1).await.remove(0);
        let name = pod.name_any();

        // `kubectl describe pod` shows the warnings as one Warning Event of the pod.
        let described = eventually("kubectl describe pod to show the warnings", WAIT, || {
            let name = name.clone();
            async move {
                let (out, _) = kubectl(&["describe", "pod", "-n", a, &name], "")?;
                let events = out.split("\nEvents:").nth(1).unwrap_or_default().to_owned();
                let line = events
                    .lines()
                    .find(|l| l.contains("InjectionWarnings"))
                    .ok_or_else(|| format!("no InjectionWarnings Event yet:\n{out}"))?;
                Ok(line.to_owned())
            }
        })
        .await;
        assert!(described.trim_start().starts_with("Warning"), "{described}");
        assert!(
            described.contains("ferry-operator")
                && described.contains(&OLD_NAME_WARNINGS.join("; ")),
            "{described}"
        );
        // Exactly one, regarding this pod by its UID.
        let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), a)
            .list(&ListParams::default().fields(&format!(
                "involvedObject.uid={},reason=InjectionWarnings",
                pod.uid().unwrap()
            )))
            .await
            .unwrap()
            .items;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].type_.as_deref(), Some("Warning"));
        assert_eq!(
            events[0].involved_object.name.as_deref(),
            Some(name.as_str())
        );

        // The pod runs as app cart on port 5000, in the namespace kubectl named: its sidecar
        // says so, and answers for cart by reaching the app.
        let ip = pod_ip(&pod);
        let (code, body) = http_get(&format!("http://{ip}:3501/v1.0/metadata"), WAIT)
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(metadata["id"], "cart", "{body}");
        assert_eq!(metadata["appConnectionProperties"]["port"], 5000, "{body}");
        assert_eq!(metadata["extended"]["namespace"], a.as_str(), "{body}");
        let sidecar = client_app(&client, a).await;
        let added = call_until(
            &http_client(),
            "POST",
            &format!("{sidecar}/v1.0/invoke/cart/method/add"),
            &[],
            "{}",
            200,
        )
        .await;
        assert_eq!(added, "Added!");

        // A pod kubectl creates itself: kubectl prints the admission warnings.
        let (_, stderr) = kubectl(&["create", "-n", a, "-f", "-"], OLD_DAPR_POD).unwrap();
        for w in OLD_NAME_WARNINGS {
            assert!(stderr.contains(&format!("Warning: {w}")), "{stderr}");
        }
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
