//! A whole Ferry installed by hand, as flow.rs and mtls.rs run it: ferry-operator and
//! ferry-injector as pods from their images under `deploy/rbac/*.yaml`, the webhook registered
//! by Service (the API server reaches it at its pod's address).
//!
//! With [`MeshOptions::mtls`], the operator also serves the CA (`--ca`) and the injector gives
//! sidecars mTLS. The process kubelet has no Service routing for pods (no kube-proxy, no
//! cluster DNS), so the injector names the CA by the operator pod's IP instead of the chart's
//! `ferry-ca.<ns>.svc:443`; sidecars check the CA by its SPIFFE ID either way.

use std::time::{Duration, Instant};

use ferry_e2e::{install_crds, install_rbac, repo_root, with_temp_ns};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Namespace, Pod, Service},
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use serde_json::json;

use super::{
    MESH_LABEL, WAIT, create_app_namespaces, delete_namespaces, pod_ip, pod_log, pod_ready,
};

pub const OPERATOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-operator:dev";
pub const INJECTOR_IMAGE: &str = "ghcr.io/ferry-dev/ferry-injector:dev";
pub const SIDECAR_IMAGE: &str = "ghcr.io/ferry-dev/ferryd:dev";

static ONE_MESH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === namespaces ===

/// Runs `test` with a control-plane namespace and `apps` app namespaces (labelled into the
/// mesh), all deleted afterwards whatever the outcome.
pub async fn with_mesh<F, Fut>(apps: usize, test: F)
where
    F: FnOnce(Client, Mesh, Vec<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    with_mesh_options(apps, MeshOptions::default(), test).await;
}

/// How the mesh is installed.
#[derive(Debug, Clone, Default)]
pub struct MeshOptions {
    /// The operator serves the CA and the injector turns on mTLS.
    pub mtls: bool,
    /// More environment for the operator (e.g. `FERRY_WORKLOAD_CERT_TTL`).
    pub operator_env: Vec<(String, String)>,
}

/// [`with_mesh`], installed as `options` say.
pub async fn with_mesh_options<F, Fut>(apps: usize, options: MeshOptions, test: F)
where
    F: FnOnce(Client, Mesh, Vec<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _one = ONE_MESH.lock().await;
    with_temp_ns("flow-cp", move |client, cp| async move {
        let mesh = Mesh::install(&client, &cp, &options).await;
        let names = create_app_namespaces(&client, &cp, apps).await;
        let outcome = tokio::spawn(test(client.clone(), mesh.clone(), names.clone())).await;
        if outcome.is_err() {
            mesh.print_logs();
        }
        delete_namespaces(&client, &names).await;
        if mesh.ca.is_some() {
            mesh.stop_operator(&client).await;
            super::remove_trust_bundles(&client).await;
        }
        if let Err(e) = outcome {
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
pub struct Mesh {
    /// The control plane's namespace.
    pub cp: String,
    /// Where sidecars reach the CA (`ip:50001`), with mTLS.
    pub ca: Option<String>,
}

impl Mesh {
    /// Installs CRDs, RBAC, the webhook configuration, the injector's Service, and the
    /// operator and injector pods; returns once both are ready (the injector's readiness
    /// includes its CA being in the webhook configuration).
    async fn install(client: &Client, cp: &str, options: &MeshOptions) -> Self {
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
                        {"name": "FERRY_CA", "value": options.mtls.to_string()},
                    ],
                    "ports": [{"name": "admin", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                }]
            }
        }))
        .unwrap();
        let mut operator = operator;
        let env = operator.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap();
        for (name, value) in &options.operator_env {
            env.push(serde_json::from_value(json!({"name": name, "value": value})).unwrap());
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), cp);
        let mut mesh = Self {
            cp: cp.to_owned(),
            ca: None,
        };
        pods.create(&PostParams::default(), &operator)
            .await
            .unwrap();
        let operator = mesh.wait_ready(&pods, "ferry-operator").await;
        let mut mtls_args: Vec<String> = Vec::new();
        if options.mtls {
            let ca = format!("{}:50001", pod_ip(&operator));
            mtls_args = vec!["--mtls".into(), "--sentry-address".into(), ca.clone()];
            mesh.ca = Some(ca);
        }
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
        let mut injector = injector;
        injector.spec.as_mut().unwrap().containers[0]
            .args
            .as_mut()
            .unwrap()
            .extend(mtls_args);
        pods.create(&PostParams::default(), &injector)
            .await
            .unwrap();
        mesh.wait_ready(&pods, "ferry-injector").await;
        mesh
    }

    /// Deletes the operator pod and waits until it is gone (so it writes nothing more).
    pub async fn stop_operator(&self, client: &Client) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.cp);
        let _ = pods.delete("ferry-operator", &Default::default()).await;
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if matches!(pods.get_opt("ferry-operator").await, Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_ready(&self, pods: &Api<Pod>, name: &str) -> Pod {
        let started = Instant::now();
        loop {
            let pod = pods.get_opt(name).await.ok().flatten();
            if let Some(p) = pod.as_ref().filter(|p| pod_ready(p)) {
                return p.clone();
            }
            if started.elapsed() > WAIT {
                self.print_logs();
                panic!(
                    "{name} did not become ready; last seen: {:?}",
                    pod.and_then(|p| p.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn print_logs(&self) {
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
