//! The Tier-1 harness itself, against the real control plane and the process kubelet: pods get
//! their own network and localhost, reach each other and the API, and the cluster cannot reach
//! out. Run with `make e2e` (inside the cluster's network namespace).

use std::time::Duration;

use ferry_e2e::{
    ClusterEnv, client, eventually, http_get, k8s_version, run, wait_for, with_temp_ns,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const TESTAPP: &str = "ferry.test/testapp:latest";
const WAIT: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: i32, extra_args: &[&str]) -> Deployment {
    let args: Vec<&str> = ["--port", "8080"]
        .iter()
        .chain(extra_args)
        .copied()
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "app",
                        "image": TESTAPP,
                        "args": args,
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                        ],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))
    .expect("a deployment literal")
}

/// The ready pods of `app`, with their IPs.
async fn ready_pods(pods: &Api<Pod>, app: &str) -> Vec<(String, String)> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods");
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect()
}

async fn wait_ready_pods(pods: &Api<Pod>, app: &str, n: usize) -> Vec<(String, String)> {
    eventually(&format!("{n} ready pods of {app}"), WAIT, || async {
        let ready = ready_pods(pods, app).await;
        if ready.len() == n {
            Ok(ready)
        } else {
            Err(format!("{} ready: {ready:?}", ready.len()))
        }
    })
    .await
}

async fn scale(client: &Client, ns: &str, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scale");
}

/// The addresses in the EndpointSlices of Service `svc` that are ready.
async fn ready_endpoints(client: &Client, ns: &str, svc: &str) -> Vec<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .expect("list endpointslices");
    let mut out: Vec<String> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn version_is_the_one_built() {
    let client = client().await.unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.git_version, k8s_version());
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn the_cluster_has_no_route_out() {
    let env = ClusterEnv::load().unwrap();
    let routes = run("ip", &["route", "show"]).unwrap();
    assert!(
        !routes.lines().any(|l| l.starts_with("default")),
        "a default route leaves the namespace:\n{routes}"
    );
    // This process runs inside the cluster's namespace; nothing outside is reachable.
    let err = std::net::TcpStream::connect_timeout(
        &"1.1.1.1:80".parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        err.is_err(),
        "connected to 1.1.1.1 from {}",
        env.netns().unwrap()
    );
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn pods_get_their_own_network_and_reach_each_other_and_the_api() {
    with_temp_ns("smoke-net", |client, ns| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment("web", 2, &[]))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let ready = wait_ready_pods(&pods, "web", 2).await;
        assert_ne!(ready[0].1, ready[1].1, "each pod has its own IP");

        for (name, ip) in &ready {
            // From the test, at the pod IP.
            let (status, body) = http_get(&format!("http://{ip}:8080/"), WAIT).await.unwrap();
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["pod"], name.as_str(), "{body}");
        }
        // From one pod to the other, at its pod IP; and each pod's localhost is its own, though
        // both bind port 8080.
        let (a, a_ip) = &ready[0];
        let (b, b_ip) = &ready[1];
        let (_, via) = http_get(
            &format!("http://{a_ip}:8080/fetch?url=http://{b_ip}:8080/"),
            WAIT,
        )
        .await
        .unwrap();
        assert!(via.contains(b.as_str()), "{a} fetching {b}: {via}");
        for (name, ip) in &ready {
            let (_, own) = http_get(
                &format!("http://{ip}:8080/fetch?url=http://127.0.0.1:8080/"),
                WAIT,
            )
            .await
            .unwrap();
            assert!(own.contains(name.as_str()), "{name}'s localhost: {own}");
        }
        // An in-cluster client in the pod (its service-account token, KUBERNETES_SERVICE_HOST).
        let (status, version) = http_get(&format!("http://{a_ip}:8080/kube-version"), WAIT)
            .await
            .unwrap();
        assert_eq!(status, 200, "{version}");
        assert!(version.contains(&k8s_version()), "{version}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn endpoint_slices_follow_ready_pods_through_scaling() {
    with_temp_ns("smoke-eps", |client, ns| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &deployment("svcapp", 1, &[]))
            .await
            .unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "svcapp"},
            "spec": {"clusterIP": "None", "selector": {"app": "svcapp"}, "ports": [{"name": "http", "port": 8080}]}
        }))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

        for replicas in [1usize, 3, 1] {
            scale(&client, &ns, "svcapp", replicas as i32).await;
            let ready = wait_ready_pods(&pods, "svcapp", replicas).await;
            let mut ips: Vec<String> = ready.into_iter().map(|(_, ip)| ip).collect();
            ips.sort();
            eventually(&format!("the EndpointSlice to list exactly {ips:?}"), WAIT, || {
                let (client, ns, ips) = (client.clone(), ns.clone(), ips.clone());
                async move {
                    let eps = ready_endpoints(&client, &ns, "svcapp").await;
                    if eps == ips { Ok(()) } else { Err(format!("{eps:?}")) }
                }
            })
            .await;
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn deleting_a_pod_stops_its_process() {
    with_temp_ns("smoke-del", |client, ns| async move {
        let marker = format!("ferry-marker-{ns}");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(
                &PostParams::default(),
                &deployment("gone", 1, &["--marker", &marker]),
            )
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let ready = wait_ready_pods(&pods, "gone", 1).await;
        let (name, ip) = &ready[0];
        assert!(!pgrep(&marker).is_empty(), "the app's process runs");
        // Scale to zero so that no replacement starts, then delete the pod.
        scale(&client, &ns, "gone", 0).await;
        let _ = pods.delete(name, &DeleteParams::default()).await;
        wait_for(&pods, name, "the pod to be gone", WAIT, |p| p.is_none()).await;
        eventually("the app's process to stop", WAIT, || {
            let marker = marker.clone();
            async move {
                let left = pgrep(&marker);
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still running: {left:?}"))
                }
            }
        })
        .await;
        assert!(
            http_get(&format!("http://{ip}:8080/"), Duration::from_secs(2))
                .await
                .is_err(),
            "{ip} still answers"
        );
    })
    .await;
}

/// PIDs whose command line contains `marker`.
fn pgrep(marker: &str) -> Vec<String> {
    run("pgrep", &["-f", marker])
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn an_unknown_image_stays_pending_with_a_reason() {
    with_temp_ns("smoke-img", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "nowhere"},
            "spec": {"containers": [{"name": "c", "image": "registry.invalid/nothing:1"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let pod = wait_for(
            &pods,
            "nowhere",
            "a waiting reason on the container",
            WAIT,
            |p| {
                p.and_then(|p| p.status.as_ref())
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_ref())
                    .is_some()
            },
        )
        .await
        .unwrap();
        let status = pod.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let waiting = status.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert!(
            waiting
                .message
                .unwrap_or_default()
                .contains("registry.invalid/nothing:1"),
            "the message names the image"
        );
        // Still pending a little later: never faked as running.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = pods.get("nowhere").await.unwrap();
        assert_eq!(again.status.unwrap().phase.as_deref(), Some("Pending"));
    })
    .await;
}
