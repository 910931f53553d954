//! Identity on the Tier-1 cluster: the operator's CA (TokenReview, the pod, the app-ID
//! binding, the trust domain of the pod's Configuration), mTLS between injected sidecars, and
//! Dapr's access control applied with kubectl, against the issue's attack.
//!
//! Apps (all the test app, `ferry-testapp`): `payments` (the target; its Configuration
//! `payments-acl` lets `checkout` POST /refund and GET /orders/**, nothing else), `checkout`
//! and `mallory` (callers whose sidecar API the test reaches at the pod IP, as the app itself
//! does on localhost), and `attacker`, a pod with no sidecar. The target's request counter
//! (`GET /requests` on the app's own port) shows what reached the app.

mod common;

use std::time::Duration;

use common::{
    HttpClient, Load, TESTAPP_IMAGE, WAIT, create_deployment, deployment, http_client, kubectl,
    mesh::{MeshOptions, with_mesh_options},
    pod_ip, ready_pods, send,
};
use ferry_api::{AppId, Namespace as NamespaceName};
use ferry_e2e::eventually;
use ferry_identity::{
    Credentials, TrustBundle,
    sentry::{Proof, SentryClient, TokenValidator, sentry_id},
};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Namespace, Pod, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const ACL: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: payments-acl
spec:
  accessControl:
    defaultAction: deny
    trustDomain: "public"
    policies:
    - appId: checkout
      defaultAction: deny
      trustDomain: "public"
      namespace: "NAMESPACE"
      operations:
      - name: /refund
        httpVerb: ["POST"]
        action: allow
      - name: /orders/**
        httpVerb: ["GET"]
        action: allow
"#;

/// [`ACL`] with GET /refund allowed too.
fn acl_with_get_refund(ns: &str) -> String {
    ACL.replace("NAMESPACE", ns)
        .replace(r#"httpVerb: ["POST"]"#, r#"httpVerb: ["POST", "GET"]"#)
}

async fn app_requests(http: &HttpClient, payments_ip: &str) -> u64 {
    let a = send(
        http,
        "GET",
        &format!("http://{payments_ip}:8080/requests"),
        &[],
        "",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    serde_json::from_str::<Value>(&a.body).unwrap()["count"]
        .as_u64()
        .unwrap()
}

/// Calls `method` `/v1.0/invoke/payments/method/<path>` through the sidecar at `sidecar`.
async fn invoke(
    http: &HttpClient,
    sidecar: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> common::Answer {
    send(
        http,
        method,
        &format!("{sidecar}/v1.0/invoke/payments/method/{path}"),
        headers,
        "",
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path} via {sidecar}: {e}"))
}

async fn caller(client: &Client, ns: &str, name: &str) -> String {
    let d = deployment(
        name,
        TESTAPP_IMAGE,
        name,
        8080,
        1,
        json!([]),
        &[("dapr.io/sidecar-listen-addresses", "0.0.0.0")],
    );
    create_deployment(client, ns, &d).await;
    let pods = ready_pods(client, ns, name, 1).await;
    format!("http://{}:3500", pod_ip(&pods[0]))
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn the_attack_fails_and_dapr_access_control_holds_on_verified_identities() {
    let options = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    with_mesh_options(1, options, |client, mesh, namespaces| async move {
        let ns = namespaces[0].clone();
        let http = http_client();
        kubectl(
            &["apply", "-n", &ns, "-f", "-"],
            &ACL.replace("NAMESPACE", &ns),
        )
        .unwrap();
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "payments"}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let mut payments = deployment(
            "payments",
            TESTAPP_IMAGE,
            "payments",
            8080,
            1,
            json!([]),
            &[("dapr.io/config", "payments-acl")],
        );
        payments
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .service_account_name = Some("payments".into());
        create_deployment(&client, &ns, &payments).await;
        let checkout = caller(&client, &ns, "checkout").await;
        let mallory = caller(&client, &ns, "mallory").await;
        let payments_pod = ready_pods(&client, &ns, "payments", 1).await.remove(0);
        let payments_ip = pod_ip(&payments_pod);

        // Each sidecar has its SPIFFE ID from the cluster's CA.
        let meta = send(
            &http,
            "GET",
            &format!("{checkout}/v1.0/metadata"),
            &[],
            "",
            WAIT,
        )
        .await
        .unwrap();
        let meta: Value = serde_json::from_str(&meta.body).unwrap();
        assert_eq!(
            meta["extended"]["spiffeID"],
            format!("spiffe://public/ns/{ns}/checkout"),
            "{meta}"
        );

        // The allowed call: the app sees the caller the certificate names.
        let body = common::call_until(
            &http,
            "POST",
            &format!("{checkout}/v1.0/invoke/payments/method/refund"),
            &[("dapr-caller-app-id", "forged")],
            "",
            200,
        )
        .await;
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["path"], "/refund");
        assert_eq!(seen["headers"]["dapr-caller-app-id"], "checkout", "{seen}");
        assert_eq!(
            seen["headers"]["dapr-caller-namespace"],
            ns.as_str(),
            "{seen}"
        );
        let a = invoke(&http, &checkout, "GET", "orders/17", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);

        // Denied, verb by verb and path by path, and never delivered.
        let before = app_requests(&http, &payments_ip).await;
        for (who, sidecar, method, path, headers) in [
            ("checkout", &checkout, "GET", "refund", &[][..]),
            ("checkout", &checkout, "DELETE", "refund", &[][..]),
            ("checkout", &checkout, "POST", "admin", &[][..]),
            ("checkout", &checkout, "POST", "refund/../admin", &[][..]),
            (
                "checkout",
                &checkout,
                "POST",
                "refund/%2e%2e/admin",
                &[][..],
            ),
            (
                "checkout",
                &checkout,
                "POST",
                "refund/%2E%2E/%2E%2E/admin",
                &[][..],
            ),
            ("checkout", &checkout, "GET", "orders/../admin", &[][..]),
            ("checkout", &checkout, "POST", "orders/17", &[][..]),
            // Another app's sidecar with forged caller headers: its own identity is judged.
            (
                "mallory",
                &mallory,
                "POST",
                "refund",
                &[
                    ("dapr-caller-app-id", "checkout"),
                    ("dapr-caller-namespace", ns.as_str()),
                ][..],
            ),
        ] {
            let a = invoke(&http, sidecar, method, path, headers).await;
            assert_eq!(a.status, 403, "{who} {method} {path}: {}", a.body);
            let err: Value = serde_json::from_str(&a.body)
                .unwrap_or_else(|e| panic!("{who} {method} {path}: {e}: {}", a.body));
            assert_eq!(err["errorCode"], "ERR_DIRECT_INVOKE", "{}", a.body);
            assert!(
                err["message"]
                    .as_str()
                    .unwrap()
                    .contains("access control policy has denied access"),
                "{}",
                a.body
            );
        }

        // The issue's attack, straight at the internal port: from a pod without a sidecar,
        // and from mallory's own app (beside its sidecar), with the forged headers.
        let attacker: Pod = serde_json::from_value(json!({
            "metadata": {"name": "attacker"},
            "spec": {"containers": [{"name": "app", "image": TESTAPP_IMAGE}]},
        }))
        .unwrap();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &attacker)
            .await
            .unwrap();
        let attacker_ip = eventually("the attacker pod to be ready", WAIT, || async {
            let p = Api::<Pod>::namespaced(client.clone(), &ns)
                .get("attacker")
                .await
                .map_err(|e| e.to_string())?;
            if common::pod_ready(&p) {
                Ok(pod_ip(&p))
            } else {
                Err("not ready".into())
            }
        })
        .await;
        let mallory_app = mallory.replace(":3500", ":8080");
        for from in [format!("http://{attacker_ip}:8080"), mallory_app] {
            for target in [
                format!("http://{payments_ip}:50002/refund"),
                format!("http://{payments_ip}:50002/v1.0/invoke/payments/method/refund"),
            ] {
                let url = format!(
                    "{from}/fetch?method=POST&header=dapr-caller-app-id:checkout&url={}",
                    percent(&target)
                );
                let a = send(&http, "GET", &url, &[], "", Duration::from_secs(15))
                    .await
                    .unwrap();
                let r: Value = serde_json::from_str(&a.body).unwrap();
                assert!(
                    a.status != 200 || r["status"] != 200,
                    "plaintext to {target} from {from} got through: {}",
                    a.body
                );
            }
        }
        assert_eq!(
            app_requests(&http, &payments_ip).await,
            before,
            "no refused call reached the app"
        );

        // A policy change applies to the running sidecar within a second or so, with calls
        // going on.
        let load = Load::start(
            http.clone(),
            format!("{checkout}/v1.0/invoke/payments/method/orders/1"),
            4,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        kubectl(&["apply", "-n", &ns, "-f", "-"], &acl_with_get_refund(&ns)).unwrap();
        let applied = std::time::Instant::now();
        eventually(
            "GET /refund to be allowed",
            Duration::from_secs(10),
            || async {
                let a = invoke(&http, &checkout, "GET", "refund", &[]).await;
                (a.status == 200)
                    .then_some(())
                    .ok_or(format!("{}: {}", a.status, a.body))
            },
        )
        .await;
        let took = applied.elapsed();
        let report = load.stop().await;
        assert_eq!(report.failed, 0, "{report}");
        assert!(report.ok > 0, "{report}");
        eprintln!("policy change applied in {took:?}; calls meanwhile: {report}");
        assert!(took < Duration::from_secs(3), "took {took:?}");

        ca_refusals(&client, &mesh.cp, mesh.ca.as_deref().unwrap(), &ns).await;
    })
    .await;
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A pod the process kubelet never runs (stored only), annotated as `annotations` say.
async fn stored_pod(client: &Client, ns: &str, name: &str, sa: &str, annotations: Value) -> Pod {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "schedulingGates": [{"name": "ferry.dev/e2e-stored-only"}],
            "containers": [{"name": "app", "image": TESTAPP_IMAGE}],
        },
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap()
}

/// A token of `pod`'s service account, bound to it, for `audience`.
async fn token(client: &Client, ns: &str, pod: &Pod, audience: &str) -> String {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

/// The CA refuses whoever is not who they claim, naming why.
async fn ca_refusals(client: &Client, cp: &str, ca: &str, ns: &str) {
    let bundle: ConfigMap = Api::namespaced(client.clone(), ns)
        .get("dapr-trust-bundle")
        .await
        .expect("the CA published the trust bundle in the app namespace");
    let pem = bundle.data.unwrap()["ca.crt"].clone();
    let sentry = sentry_id(
        &"cluster.local".parse().unwrap(),
        &NamespaceName::new(cp).unwrap(),
    );
    let audience = sentry.uri();
    let ca_client = SentryClient::new(
        ca,
        sentry,
        Credentials::new(TrustBundle::from_pem(&pem).unwrap()),
    );
    let ns_name = NamespaceName::new(ns).unwrap();
    let ask = |app: &str, token: String| {
        let (ca_client, ns_name, app) = (ca_client.clone(), ns_name.clone(), app.to_owned());
        async move {
            ca_client
                .request(
                    &AppId::new(app).unwrap(),
                    &ns_name,
                    &Proof {
                        token,
                        validator: TokenValidator::Kubernetes,
                    },
                )
                .await
        }
    };
    let refused = |r: Result<ferry_identity::Svid, ferry_identity::sentry::SentryError>,
                   want: &str| {
        let e = r
            .map(|s| s.id.to_string())
            .expect_err("refused")
            .to_string();
        assert!(e.contains(want), "want {want:?} in: {e}");
    };

    // A control: a pod of payments, running as its service account, with a Configuration
    // naming another trust domain, gets its certificate in that trust domain.
    kubectl(
        &["apply", "-n", ns, "-f", "-"],
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: other-td\nspec:\n  accessControl:\n    trustDomain: example.org\n",
    )
    .unwrap();
    let good = stored_pod(
        client,
        ns,
        "payments-extra",
        "payments",
        json!({"dapr.io/app-id": "payments", "dapr.io/config": "other-td"}),
    )
    .await;
    let svid = ask("payments", token(client, ns, &good, &audience).await)
        .await
        .expect("a pod that is who it says gets a certificate");
    assert_eq!(
        svid.id.to_string(),
        format!("spiffe://example.org/ns/{ns}/payments")
    );

    // Wrong audience.
    refused(
        ask(
            "payments",
            token(client, ns, &good, "https://kubernetes.default.svc").await,
        )
        .await,
        "the token is not valid for audience",
    );
    // A pod claiming another app ID.
    refused(
        ask("checkout", token(client, ns, &good, &audience).await).await,
        "app-id mismatch. expected: payments, received: checkout",
    );
    // A deleted pod's token.
    let ghost = stored_pod(
        client,
        ns,
        "ghost",
        "payments",
        json!({"dapr.io/app-id": "payments"}),
    )
    .await;
    let ghost_token = token(client, ns, &ghost, &audience).await;
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("ghost", &Default::default())
        .await
        .unwrap();
    eventually("the ghost pod to be gone", WAIT, || async {
        match Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt("ghost")
            .await
        {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.is_some()))),
        }
    })
    .await;
    refused(ask("payments", ghost_token).await, "not valid");
    // A service account the namespace does not bind to the app ID (Ferry's rule).
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "ferry.dev/app-service-accounts": "payments=payments"
            }}})),
        )
        .await
        .unwrap();
    let rogue = stored_pod(
        client,
        ns,
        "rogue",
        "default",
        json!({"dapr.io/app-id": "payments"}),
    )
    .await;
    refused(
        ask("payments", token(client, ns, &rogue, &audience).await).await,
        "app ID payments is bound to service account payments",
    );
    ask("payments", token(client, ns, &good, &audience).await)
        .await
        .expect("the bound service account still gets its certificate");
}

/// The first number on the line of `metric` in the sidecar's `/metrics` at `pod_ip:9090`.
async fn sidecar_metric(http: &HttpClient, pod_ip: &str, metric: &str) -> u64 {
    let a = send(
        http,
        "GET",
        &format!("http://{pod_ip}:9090/metrics"),
        &[],
        "",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    a.body
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Two `payments` pods and a `checkout` caller, with a call through between them: the
/// checkout sidecar's URL, the invoke URL of `orders/1`, and the payments pods.
async fn two_payments_and_checkout(
    client: &Client,
    http: &HttpClient,
    ns: &str,
) -> (String, String, Vec<Pod>) {
    let payments = deployment(
        "payments",
        TESTAPP_IMAGE,
        "payments",
        8080,
        2,
        json!([]),
        &[],
    );
    create_deployment(client, ns, &payments).await;
    let checkout = caller(client, ns, "checkout").await;
    let pods = ready_pods(client, ns, "payments", 2).await;
    let url = format!("{checkout}/v1.0/invoke/payments/method/orders/1");
    common::call_until(http, "GET", &url, &[], "", 200).await;
    (checkout, url, pods)
}

/// Certificates of a minute renew under load with no failed call (at 70 % of their life,
/// about every 42 s).
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn short_lived_certificates_renew_under_load() {
    let options = MeshOptions {
        mtls: true,
        operator_env: vec![("FERRY_WORKLOAD_CERT_TTL".into(), "1m".into())],
    };
    with_mesh_options(1, options, |client, mesh, namespaces| async move {
        let ns = namespaces[0].clone();
        let http = http_client();
        let (checkout, url, callees) = two_payments_and_checkout(&client, &http, &ns).await;

        let load = Load::start(http.clone(), url.clone(), 4);
        let checkout_ip = checkout
            .trim_start_matches("http://")
            .trim_end_matches(":3500")
            .to_owned();
        let rotated = "dapr_runtime_mtls_workload_cert_rotated_total";
        eventually(
            "every sidecar to renew its one-minute certificate",
            Duration::from_secs(120),
            || async {
                let mut counts = vec![sidecar_metric(&http, &checkout_ip, rotated).await];
                for p in &callees {
                    counts.push(sidecar_metric(&http, &pod_ip(p), rotated).await);
                }
                // The first certificate counts once; a renewal makes it two.
                counts
                    .iter()
                    .all(|c| *c >= 2)
                    .then_some(())
                    .ok_or(format!("renewals so far: {counts:?}"))
            },
        )
        .await;
        let report = load.stop().await;
        eprintln!("calls while certificates renewed: {report}");
        assert_eq!(report.failed, 0, "{report}");
        assert!(report.ok > 100, "{report}");
        drop(mesh);
    })
    .await;
}

/// With the CA gone for a minute, calls go on on the certificates the sidecars hold (a day's),
/// while a new pod waits, not Ready, saying why.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn calls_outlive_the_ca_and_a_new_pod_waits_saying_why() {
    let options = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    with_mesh_options(1, options, |client, mesh, namespaces| async move {
        let ns = namespaces[0].clone();
        let http = http_client();
        let (_, url, _) = two_payments_and_checkout(&client, &http, &ns).await;

        // The CA goes away for a minute.
        mesh.stop_operator(&client).await;
        let gone = std::time::Instant::now();
        let load = Load::start(http.clone(), url.clone(), 4);
        // A new pod cannot get a certificate: it waits, not Ready, and says why.
        let late = deployment(
            "late",
            TESTAPP_IMAGE,
            "late",
            8080,
            1,
            json!([]),
            &[("dapr.io/sidecar-listen-addresses", "0.0.0.0")],
        );
        create_deployment(&client, &ns, &late).await;
        let why = eventually(
            "the new pod's sidecar to say why it is not ready",
            WAIT,
            || async {
                let pods = Api::<Pod>::namespaced(client.clone(), &ns)
                    .list(&kube::api::ListParams::default().labels("app=late"))
                    .await
                    .map_err(|e| e.to_string())?;
                let p = pods.items.first().ok_or("no pod yet")?;
                if common::pod_ready(p) {
                    panic!("a pod without a certificate became Ready");
                }
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .ok_or("no IP yet")?;
                let a = send(
                    &http,
                    "GET",
                    &format!("http://{ip}:3500/v1.0/healthz"),
                    &[],
                    "",
                    Duration::from_secs(5),
                )
                .await?;
                (a.status == 500 && a.body.contains("cannot reach the CA"))
                    .then_some(a.body.clone())
                    .ok_or(format!("{}: {}", a.status, a.body))
            },
        )
        .await;
        eprintln!("a new sidecar while the CA is away: {why}");
        tokio::time::sleep(Duration::from_secs(60).saturating_sub(gone.elapsed())).await;
        let report = load.stop().await;
        eprintln!("calls while the CA was away: {report}");
        assert_eq!(report.failed, 0, "{report}");
        assert!(report.ok > 500, "{report}");
    })
    .await;
}

/// Dapr's API tokens from the Secrets the annotations name: the caller's sidecar API wants
/// `dapr-api-token` (401 `invalid api token` without it, health exempt), and the callee's
/// app gets its own app token, never the caller's API or app token.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn api_tokens_are_checked_and_never_forwarded() {
    let options = MeshOptions {
        mtls: true,
        ..Default::default()
    };
    with_mesh_options(1, options, |client, _mesh, namespaces| async move {
        let ns = namespaces[0].clone();
        let http = http_client();
        common::apply_secret(
            &client,
            &ns,
            "checkout-api",
            &[("token", "checkout-api-token")],
        )
        .await;
        common::apply_secret(
            &client,
            &ns,
            "checkout-app",
            &[("token", "checkout-app-token")],
        )
        .await;
        common::apply_secret(
            &client,
            &ns,
            "payments-app",
            &[("token", "payments-app-token")],
        )
        .await;
        let payments = deployment(
            "payments",
            TESTAPP_IMAGE,
            "payments",
            8080,
            1,
            json!([]),
            &[("dapr.io/app-token-secret", "payments-app")],
        );
        create_deployment(&client, &ns, &payments).await;
        let checkout = deployment(
            "checkout",
            TESTAPP_IMAGE,
            "checkout",
            8080,
            1,
            json!([]),
            &[
                ("dapr.io/sidecar-listen-addresses", "0.0.0.0"),
                ("dapr.io/api-token-secret", "checkout-api"),
                ("dapr.io/app-token-secret", "checkout-app"),
            ],
        );
        create_deployment(&client, &ns, &checkout).await;
        let sidecar = format!(
            "http://{}:3500",
            pod_ip(&ready_pods(&client, &ns, "checkout", 1).await[0])
        );
        ready_pods(&client, &ns, "payments", 1).await;
        let url = format!("{sidecar}/v1.0/invoke/payments/method/orders/1");

        let a = send(&http, "GET", &url, &[], "", WAIT).await.unwrap();
        assert_eq!((a.status, a.body.as_str()), (401, "invalid api token\n"));
        let a = send(&http, "GET", &url, &[("dapr-api-token", "wrong")], "", WAIT)
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{}", a.body);
        for health in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
            let a = send(&http, "GET", &format!("{sidecar}{health}"), &[], "", WAIT)
                .await
                .unwrap();
            assert_eq!(a.status, 204, "{health} is exempt: {}", a.body);
        }
        let body = common::call_until(
            &http,
            "GET",
            &url,
            &[("dapr-api-token", "checkout-api-token")],
            "",
            200,
        )
        .await;
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            seen["headers"]["dapr-api-token"], "payments-app-token",
            "the callee's app gets its own token, nothing of the caller's: {seen}"
        );
        assert!(
            !body.contains("checkout-api-token") && !body.contains("checkout-app-token"),
            "{body}"
        );
    })
    .await;
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every sidecar's log says it now trusts `roots` anchors (the kubelet refreshes the bundle
/// ConfigMap's volume about once a minute; the sidecar reads the file every second).
async fn wait_for_roots(ns: &str, pods: &[Pod], roots: usize) {
    let want = format!("roots={roots}");
    eventually(
        &format!("every sidecar to trust {roots} roots"),
        Duration::from_secs(150),
        || async {
            let behind: Vec<String> = pods
                .iter()
                .map(|p| p.name_any())
                .filter(|name| {
                    !strip_ansi(&common::pod_log(ns, name, "daprd"))
                        .lines()
                        .rfind(|l| l.contains("the trust anchors changed"))
                        .is_some_and(|l| l.contains(&want))
                })
                .collect();
            behind
                .is_empty()
                .then_some(())
                .ok_or(format!("not yet: {behind:?}"))
        },
    )
    .await;
}

/// Root rotation as README says it, under load, with one-minute certificates: add the new
/// root to the Secret's `ca.crt`, switch the issuer, remove the old root. No call fails.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn root_rotation_under_load_fails_no_call() {
    use base64::Engine as _;
    let options = MeshOptions {
        mtls: true,
        operator_env: vec![("FERRY_WORKLOAD_CERT_TTL".into(), "1m".into())],
    };
    with_mesh_options(1, options, |client, mesh, namespaces| async move {
        let ns = namespaces[0].clone();
        let http = http_client();
        let (_, url, mut pods) = two_payments_and_checkout(&client, &http, &ns).await;
        pods.extend(ready_pods(&client, &ns, "checkout", 1).await);

        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &mesh.cp);
        let old = secrets
            .get("dapr-trust-bundle")
            .await
            .unwrap()
            .data
            .unwrap();
        let old_root = String::from_utf8(old["ca.crt"].0.clone()).unwrap();
        let new = ferry_identity::CaMaterial::generate(
            "cluster.local",
            Duration::from_secs(365 * 24 * 3600),
        )
        .unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let patch = |data: Value| {
            let secrets = secrets.clone();
            async move {
                secrets
                    .patch(
                        "dapr-trust-bundle",
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "data": data })),
                    )
                    .await
                    .unwrap();
            }
        };
        let rotated = "dapr_runtime_mtls_workload_cert_rotated_total";
        let renewals = || async {
            let mut counts = Vec::new();
            for p in &pods {
                counts.push(sidecar_metric(&http, &pod_ip(p), rotated).await);
            }
            counts
        };

        let load = Load::start(http.clone(), url.clone(), 4);
        // 1. Trust both roots.
        let both = format!("{}{}", old_root, new.root_cert);
        patch(json!({ "ca.crt": b64(&both) })).await;
        wait_for_roots(&ns, &pods, 2).await;
        // 2. Switch the issuer; the CA reads the Secret within 5 s, then every sidecar renews.
        patch(json!({ "issuer.crt": b64(&new.issuer_cert), "issuer.key": b64(&new.issuer_key) }))
            .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let before = renewals().await;
        eventually(
            "every sidecar to renew from the new issuer",
            Duration::from_secs(120),
            || async {
                let now = renewals().await;
                now.iter()
                    .zip(&before)
                    .all(|(n, b)| n > b)
                    .then_some(())
                    .ok_or(format!("{before:?} -> {now:?}"))
            },
        )
        .await;
        // 3. Remove the old root.
        patch(json!({ "ca.crt": b64(&new.root_cert) })).await;
        wait_for_roots(&ns, &pods, 1).await;
        // New connections after the old root is gone still work: a new caller.
        let late = caller(&client, &ns, "late").await;
        let a = invoke(&http, &late, "GET", "orders/2", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let report = load.stop().await;
        eprintln!("calls during the root rotation: {report}");
        assert_eq!(report.failed, 0, "{report}");
        assert!(report.ok > 500, "{report}");
    })
    .await;
}
