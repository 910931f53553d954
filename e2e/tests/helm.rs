//! The Helm chart, `charts/ferry`.
//!
//! Tier 0 (plain `cargo test`, no cluster): `helm lint` in every TLS mode, the values the schema
//! or the templates refuse (each message names the value), the rendered RBAC equal to
//! `deploy/rbac/*.yaml`, the names in the components' flags equal to the objects they name, the
//! standard labels, the webhook configuration, the TLS modes' wiring, the image values, and
//! `deploy/ferry.yaml` up to date (`UPDATE_MANIFESTS=1`, or `make manifests`, rewrites it).
//!
//! Tier 1 (`make e2e`, `#[ignore]`d): the real API server accepts every rendering (server-side
//! dry run, under the `restricted` Pod Security Standard); `helm install` runs the operator and
//! the injector from their pod specs, the invocation scenario of flow.rs passes against them, a
//! `helm upgrade` rolls them under load without a failed call, and `helm uninstall` leaves only
//! what README says; an install with an existing certificate Secret serves it.
//!
//! helm and kubectl are the ones `e2e/controlplane/build.sh` builds into the cache; the Tier-0
//! tests run that script first when helm is missing (it needs Go and the module proxy, once).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::{cache_dir, kubectl};
use ferry_e2e::{ClusterEnv, eventually, http_get, repo_root};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The release and namespace of the documented install (and of `deploy/ferry.yaml`).
const RELEASE: &str = "ferry";
const NAMESPACE: &str = "ferry-system";

// === helm and kubectl ===

/// A version pinned in `e2e/controlplane/versions.env`.
fn pinned(key: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("e2e/controlplane/versions.env"))
        .expect("e2e/controlplane/versions.env is in the repository");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("versions.env sets no {key}"))
        .trim()
        .to_owned()
}

/// The cached helm, built by `e2e/controlplane/build.sh` when it is not there yet (once per test
/// binary; the script skips what is cached).
fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let path = cache_dir()
            .join("helm")
            .join(pinned("HELM_VERSION"))
            .join("bin/helm");
        if !path.is_file() {
            eprintln!(
                "{} is missing: running e2e/controlplane/build.sh",
                path.display()
            );
            let status = Command::new("bash")
                .arg(repo_root().join("e2e/controlplane/build.sh"))
                .stdout(Stdio::inherit())
                .status()
                .expect("cannot run bash");
            assert!(
                status.success() && path.is_file(),
                "e2e/controlplane/build.sh did not build {}",
                path.display()
            );
        }
        path
    })
}

/// Runs `helm args...` in the repository; stdout, or stderr and stdout on failure.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("cannot run helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `helm template <release> charts/ferry -n <namespace> <values...>`.
fn template(release: &str, namespace: &str, values: &[String]) -> Result<String, String> {
    let mut args = vec!["template", release, "charts/ferry", "-n", namespace];
    args.extend(values.iter().map(String::as_str));
    helm(&args)
}

/// The documented release's objects with `values`.
fn render(values: &[String]) -> Vec<Value> {
    documents(&template(RELEASE, NAMESPACE, values).unwrap_or_else(|e| panic!("{e}")))
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("helm rendered YAML that does not parse: {e}\n{yaml}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

fn set(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_owned(), (*p).to_owned()])
        .collect()
}

/// Every way the chart can be set up: the TLS modes and the optional objects.
fn modes() -> Vec<(&'static str, Vec<String>)> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(test_ca().0);
    let mut everything = set(&[
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prometheus",
        "networkPolicy.enabled=true",
        "webhook.failurePolicy=Fail",
        "webhook.excludeNamespaces={legacy}",
        "injector.allowedServiceAccounts={ci-*:deployer}",
        "injector.logFormat=json",
        "operator.logFormat=json",
    ]);
    everything.extend([
        "--set-json".to_owned(),
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#.to_owned(),
        "--set-json".to_owned(),
        r#"webhook.namespaceSelector={"matchLabels":{"mesh":"on"}}"#.to_owned(),
    ]);
    vec![
        ("bootstrap (the defaults)", vec![]),
        ("certManager", set(&["webhook.tls.mode=certManager"])),
        (
            "certManager with a ClusterIssuer",
            set(&[
                "webhook.tls.mode=certManager",
                "webhook.tls.certManager.issuerRef.name=corp-ca",
                "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
            ]),
        ),
        (
            "secret, CA from its ca.crt",
            set(&["webhook.tls.mode=secret", "webhook.tls.secret.name=my-tls"]),
        ),
        (
            "secret, CA as a value",
            set(&[
                "webhook.tls.mode=secret",
                "webhook.tls.secret.name=my-tls",
                &format!("webhook.tls.secret.caBundle={ca_bundle}"),
            ]),
        ),
        ("every optional object", everything),
    ]
}

/// A CA (PEM certificate, key pair) for tests that need real certificates.
fn test_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "ferry-e2e-webhook-ca");
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

// === looking into rendered objects ===

fn kind(d: &Value) -> &str {
    d["kind"].as_str().unwrap_or_default()
}

fn name(d: &Value) -> &str {
    d["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| {
            let have: Vec<String> = docs
                .iter()
                .map(|d| format!("{} {}", kind(d), name(d)))
                .collect();
            panic!("no {k} {n:?} rendered; have {have:?}")
        })
}

fn component<'a>(docs: &'a [Value], k: &str, component: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            kind(d) == k && d["metadata"]["labels"]["app.kubernetes.io/component"] == component
        })
        .unwrap_or_else(|| panic!("no {k} of component {component} rendered"))
}

/// The first container's `--flag=value` arguments.
fn flags(deployment: &Value) -> BTreeMap<String, String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the container has args")
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (a.to_owned(), String::new()),
            }
        })
        .collect()
}

fn flag<'a>(flags: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    flags
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {flags:?}"))
}

/// The `resourceNames` of the rule of `role` that covers `resource`.
fn resource_names(role: &Value, resource: &str) -> Vec<String> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == resource)
        })
        .flat_map(|r| r["resourceNames"].as_array().cloned().unwrap_or_default())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

// === Tier 0 ===

#[test]
fn chart_lints_clean_in_every_mode() {
    for (mode, values) in modes() {
        let mut args = vec!["lint", "--strict", "charts/ferry"];
        args.extend(values.iter().map(String::as_str));
        let out = helm(&args).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(
            out.contains("0 chart(s) failed") && !out.contains("[WARNING]"),
            "{mode}: {out}"
        );
    }
}

/// A wrong value fails rendering (and so `helm install`) with a message naming it.
#[test]
fn wrong_values_fail_naming_the_value() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["webhook.failurePolicy=Sometimes"],
            &["/webhook/failurePolicy", "'Ignore', 'Fail'"],
        ),
        (
            &["webhook.failurPolicy=Fail"],
            &["/webhook", "'failurPolicy' not allowed"],
        ),
        (&["webhook.tls.mode=selfSigned"], &["/webhook/tls/mode"]),
        (
            &["webhook.tls.mode=secret"],
            &["webhook.tls.secret.name: required"],
        ),
        (&["webhook.timeoutSeconds=60"], &["/webhook/timeoutSeconds"]),
        (
            &["injector.logLevel=trace"],
            &["/injector/logLevel", "'debug', 'info', 'warn', 'error'"],
        ),
        (&["operator.replicas=two"], &["/operator/replicas"]),
        (&["operator.logFormat=xml"], &["/operator/logFormat"]),
        (&["image.pullPolicy=Sometimes"], &["/image/pullPolicy"]),
        (
            &["injector.allowedServiceAccounts={nocolon}"],
            &["/injector/allowedServiceAccounts/0"],
        ),
        (
            &["injector.pdb.minAvailable=2"],
            &["injector.pdb.minAvailable (2) must be below injector.replicas (2)"],
        ),
        (
            &["webhook.tls.certManager.issuerRef.kind=Vault"],
            &["/webhook/tls/certManager/issuerRef/kind"],
        ),
    ];
    for (values, want) in cases {
        let Err(err) = template(RELEASE, NAMESPACE, &set(values)) else {
            panic!("{values:?} must be refused, but the chart rendered")
        };
        for w in *want {
            assert!(err.contains(w), "{values:?}: {w:?} not in: {err}");
        }
    }
}

/// The RBAC objects of a rendering, without labels and annotations, by (kind, namespace, name).
fn rbac(docs: &[Value]) -> BTreeMap<(String, String, String), Value> {
    docs.iter()
        .filter(|d| {
            matches!(
                kind(d),
                "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
            )
        })
        .map(|d| {
            let ns = d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut o = serde_json::Map::new();
            for key in ["apiVersion", "kind", "rules", "roleRef", "subjects"] {
                if !d[key].is_null() {
                    o.insert(key.to_owned(), d[key].clone());
                }
            }
            (
                (kind(d).to_owned(), ns, name(d).to_owned()),
                Value::Object(o),
            )
        })
        .collect()
}

fn deploy_rbac() -> BTreeMap<(String, String, String), Value> {
    let mut docs = Vec::new();
    for file in ["ferry-operator", "ferry-injector", "ferry-sidecar"] {
        let path = repo_root().join(format!("deploy/rbac/{file}.yaml"));
        docs.extend(documents(&std::fs::read_to_string(&path).unwrap()));
    }
    rbac(&docs)
}

/// For the documented release, the chart's RBAC is deploy/rbac/*.yaml (which the Tier-1 tests
/// prove is enough), minus the injector's objects a TLS mode does not use.
#[test]
fn chart_rbac_is_deploy_rbac() {
    let all = deploy_rbac();
    let injector = |k: &str| {
        let key = (
            k.to_owned(),
            if k.starts_with("Cluster") {
                String::new()
            } else {
                NAMESPACE.to_owned()
            },
            "ferry-injector".to_owned(),
        );
        assert!(all.contains_key(&key), "deploy/rbac has {key:?}");
        key
    };
    let secret_rbac = [injector("Role"), injector("RoleBinding")];
    let webhook_rbac = [injector("ClusterRole"), injector("ClusterRoleBinding")];
    for (mode, values) in modes() {
        let unused: Vec<&(String, String, String)> = if mode.starts_with("bootstrap") {
            vec![]
        } else if mode == "secret, CA from its ca.crt" {
            secret_rbac.iter().collect()
        } else if mode == "every optional object" {
            vec![]
        } else {
            secret_rbac.iter().chain(&webhook_rbac).collect()
        };
        let want: BTreeMap<_, _> = all
            .iter()
            .filter(|(k, _)| !unused.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let have = rbac(&render(&values));
        for key in want.keys().chain(have.keys()).collect::<BTreeSet<_>>() {
            assert_eq!(
                have.get(key),
                want.get(key),
                "{mode}: {key:?} differs between the chart (left) and deploy/rbac (right)"
            );
        }
    }
}

/// Whatever the release is called, every name a flag passes is the name of the object the chart
/// makes and the RBAC grants.
#[test]
fn names_in_flags_match_the_objects_they_name() {
    for (release, ns, prefix) in [
        (RELEASE, NAMESPACE, "ferry-"),
        ("prod", "mesh", "prod-ferry-"),
    ] {
        let docs = documents(&template(release, ns, &[]).unwrap());
        let operator = component(&docs, "Deployment", "operator");
        let injector = component(&docs, "Deployment", "injector");
        let (of, inf) = (flags(operator), flags(injector));
        for v in [
            flag(&of, "--lease-name"),
            flag(&of, "--sidecar-cluster-role"),
            flag(&of, "--sidecar-binding-name"),
            flag(&of, "--sidecar-secrets-role"),
            flag(&inf, "--webhook-config-name"),
            flag(&inf, "--tls-secret-name"),
            flag(&inf, "--service-name"),
        ] {
            assert!(v.starts_with(prefix), "{release}: {v}");
        }

        let operator_role = component(&docs, "ClusterRole", "operator");
        let sidecar_role = flag(&of, "--sidecar-cluster-role");
        find(&docs, "ClusterRole", sidecar_role);
        assert_eq!(
            resource_names(operator_role, "clusterroles"),
            [sidecar_role]
        );
        assert_eq!(
            resource_names(operator_role, "clusterrolebindings"),
            [flag(&of, "--sidecar-binding-name")]
        );
        for r in ["roles", "rolebindings"] {
            assert_eq!(
                resource_names(operator_role, r),
                [flag(&of, "--sidecar-secrets-role")]
            );
        }
        let lease_role = component(&docs, "Role", "operator");
        assert_eq!(lease_role["metadata"]["namespace"], ns);
        assert_eq!(
            resource_names(lease_role, "leases"),
            [flag(&of, "--lease-name")]
        );

        let webhook_name = flag(&inf, "--webhook-config-name");
        let webhook = find(&docs, "MutatingWebhookConfiguration", webhook_name);
        assert_eq!(
            resource_names(
                component(&docs, "ClusterRole", "injector"),
                "mutatingwebhookconfigurations"
            ),
            [webhook_name]
        );
        assert_eq!(
            resource_names(component(&docs, "Role", "injector"), "secrets"),
            [flag(&inf, "--tls-secret-name")]
        );
        // The API server calls <service>.<ns>.svc:443, which reaches the injector's --listen
        // port, and the bootstrap certificate is made for --service-name.
        let service = find(&docs, "Service", flag(&inf, "--service-name"));
        let client_config = &webhook["webhooks"][0]["clientConfig"]["service"];
        assert_eq!(client_config["name"], name(service));
        assert_eq!(client_config["namespace"], ns);
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == client_config["port"])
            .expect("the Service has the webhook's port");
        let container = &injector["spec"]["template"]["spec"]["containers"][0];
        let target = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port["targetPort"])
            .expect("the Service's targetPort is a named container port");
        assert!(
            flag(&inf, "--listen").ends_with(&format!(":{}", target["containerPort"])),
            "{inf:?}"
        );

        // Each component runs as the ServiceAccount its bindings name.
        for (deployment, c) in [(operator, "operator"), (injector, "injector")] {
            let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap();
            assert_eq!(name(component(&docs, "ServiceAccount", c)), sa);
            for binding in docs.iter().filter(|d| {
                kind(d).ends_with("Binding")
                    && d["metadata"]["labels"]["app.kubernetes.io/component"] == c
            }) {
                assert_eq!(
                    binding["subjects"],
                    json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]),
                    "{}",
                    name(binding)
                );
            }
        }
    }
}

#[test]
fn every_object_carries_the_standard_labels() {
    for (mode, values) in modes() {
        for d in render(&values) {
            let mut label_sets = vec![(kind(&d).to_owned(), &d["metadata"]["labels"])];
            if kind(&d) == "Deployment" {
                label_sets.push((
                    "its pod template".into(),
                    &d["spec"]["template"]["metadata"]["labels"],
                ));
            }
            for (what, labels) in label_sets {
                for key in [
                    "app.kubernetes.io/name",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/part-of",
                    "helm.sh/chart",
                ] {
                    assert!(
                        labels[key].is_string(),
                        "{mode}: {what} of {} has no {key}: {labels}",
                        name(&d)
                    );
                }
                assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
            }
        }
    }
}

#[test]
fn webhook_configuration_selects_and_fails_as_configured() {
    let docs = render(&[]);
    let w = &find(&docs, "MutatingWebhookConfiguration", "ferry-injector")["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore", "Dapr's default");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["admissionReviewVersions"], json!(["v1", "v1beta1"]));
    assert_eq!(
        w["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                "operations": ["CREATE"], "scope": "Namespaced"}])
    );
    assert_eq!(
        w["clientConfig"]["service"],
        json!({"namespace": NAMESPACE, "name": "ferry-injector", "path": "/mutate", "port": 443})
    );
    assert_eq!(
        w["namespaceSelector"],
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                     "values": [NAMESPACE, "kube-system"]}]})
    );
    assert!(w["objectSelector"].is_null());
    assert!(
        w["clientConfig"]["caBundle"].is_null(),
        "the injector sets it"
    );

    let mut values = set(&[
        "webhook.failurePolicy=Fail",
        "webhook.timeoutSeconds=5",
        "webhook.excludeNamespaces={legacy,batch}",
    ]);
    values.extend([
        "--set-json".into(),
        r#"webhook.namespaceSelector={"matchLabels":{"mesh":"on"},"matchExpressions":[{"key":"tier","operator":"In","values":["web"]}]}"#.into(),
        "--set-json".into(),
        r#"webhook.objectSelector={"matchLabels":{"inject":"yes"}}"#.into(),
    ]);
    let docs = render(&values);
    let w = &find(&docs, "MutatingWebhookConfiguration", "ferry-injector")["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(
        w["namespaceSelector"],
        json!({
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": [NAMESPACE, "kube-system", "legacy", "batch"]},
                {"key": "tier", "operator": "In", "values": ["web"]},
            ],
            "matchLabels": {"mesh": "on"},
        })
    );
    assert_eq!(
        w["objectSelector"],
        json!({"matchLabels": {"inject": "yes"}})
    );
}

/// Where each TLS mode gets the serving certificate and the caBundle from.
#[test]
fn tls_modes_wire_certificate_and_ca_bundle() {
    let pod = |docs: &[Value]| {
        component(docs, "Deployment", "injector")["spec"]["template"]["spec"].clone()
    };
    let webhook =
        |docs: &[Value]| find(docs, "MutatingWebhookConfiguration", "ferry-injector").clone();
    let mounted = |pod: &Value| {
        pod["volumes"][0]["secret"]["secretName"]
            .as_str()
            .map(str::to_owned)
    };
    let files = |f: &BTreeMap<String, String>| {
        f.get("--tls-cert-file")
            .cloned()
            .zip(f.get("--tls-key-file").cloned())
    };

    // bootstrap: the injector's own Secret, no files, a token for the API.
    let docs = render(&[]);
    let f = flags(component(&docs, "Deployment", "injector"));
    assert_eq!(flag(&f, "--tls-secret-name"), "ferry-injector-tls");
    assert!(files(&f).is_none());
    assert!(pod(&docs)["volumes"].is_null());
    assert!(pod(&docs)["automountServiceAccountToken"].is_null());

    // certManager: the Certificate's Secret mounted, the CA injected by cert-manager.
    let docs = render(&set(&["webhook.tls.mode=certManager"]));
    let f = flags(component(&docs, "Deployment", "injector"));
    let cert = find(&docs, "Certificate", "ferry-injector");
    assert_eq!(
        files(&f),
        Some((
            "/etc/ferry/tls/tls.crt".into(),
            "/etc/ferry/tls/tls.key".into()
        ))
    );
    assert!(
        !f.contains_key("--tls-ca-file"),
        "cert-manager keeps the caBundle"
    );
    assert_eq!(
        mounted(&pod(&docs)).as_deref(),
        cert["spec"]["secretName"].as_str()
    );
    assert_eq!(
        pod(&docs)["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/ferry/tls"
    );
    assert_eq!(pod(&docs)["automountServiceAccountToken"], false);
    assert_eq!(
        webhook(&docs)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/ferry-injector")
    );
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        format!("ferry-injector.{NAMESPACE}.svc"),
        "the name the API server asks for"
    );
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        name(find(&docs, "Issuer", "ferry-injector-selfsigned"))
    );
    let docs = render(&set(&[
        "webhook.tls.mode=certManager",
        "webhook.tls.certManager.issuerRef.name=corp-ca",
        "webhook.tls.certManager.issuerRef.kind=ClusterIssuer",
    ]));
    assert!(
        !docs.iter().any(|d| kind(d) == "Issuer"),
        "no Issuer of our own"
    );
    assert_eq!(
        find(&docs, "Certificate", "ferry-injector")["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );

    // secret: the given Secret mounted; its ca.crt kept in the caBundle by the injector, or the
    // caBundle given as a value.
    let docs = render(&set(&[
        "webhook.tls.mode=secret",
        "webhook.tls.secret.name=my-tls",
    ]));
    let f = flags(component(&docs, "Deployment", "injector"));
    assert_eq!(mounted(&pod(&docs)).as_deref(), Some("my-tls"));
    assert!(files(&f).is_some());
    assert_eq!(flag(&f, "--tls-ca-file"), "/etc/ferry/tls/ca.crt");
    assert!(
        pod(&docs)["automountServiceAccountToken"].is_null(),
        "it patches the caBundle"
    );
    assert!(webhook(&docs)["webhooks"][0]["clientConfig"]["caBundle"].is_null());
    assert!(!docs.iter().any(|d| kind(d) == "Certificate"));
    let docs = render(&set(&[
        "webhook.tls.mode=secret",
        "webhook.tls.secret.name=my-tls",
        "webhook.tls.secret.caBundle=Q0E=",
    ]));
    let f = flags(component(&docs, "Deployment", "injector"));
    assert!(!f.contains_key("--tls-ca-file"));
    assert_eq!(
        webhook(&docs)["webhooks"][0]["clientConfig"]["caBundle"],
        "Q0E="
    );
    assert_eq!(pod(&docs)["automountServiceAccountToken"], false);
}

#[test]
fn images_are_values_and_the_injector_gets_the_sidecar_image() {
    let image = |docs: &[Value], c: &str| {
        component(docs, "Deployment", c)["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let docs = render(&[]);
    let app_version = pinned_app_version();
    assert_eq!(
        image(&docs, "operator"),
        format!("ghcr.io/ferry-dev/ferry-operator:{app_version}")
    );
    assert_eq!(
        image(&docs, "injector"),
        format!("ghcr.io/ferry-dev/ferry-injector:{app_version}")
    );
    let f = flags(component(&docs, "Deployment", "injector"));
    assert_eq!(
        flag(&f, "--sidecar-image"),
        format!("ghcr.io/ferry-dev/ferryd:{app_version}")
    );
    assert_eq!(flag(&f, "--image-pull-policy"), "IfNotPresent");

    let docs = render(&set(&[
        "image.registry=registry.example.com",
        "image.tag=dev",
        "image.pullPolicy=Always",
        "sidecar.image.tag=sc-1",
        "sidecar.image.pullPolicy=Never",
        "operator.image.registry=other.example.com",
        "injector.image.repository=mirror/injector",
    ]));
    assert_eq!(
        image(&docs, "operator"),
        "other.example.com/ferry-dev/ferry-operator:dev"
    );
    assert_eq!(
        image(&docs, "injector"),
        "registry.example.com/mirror/injector:dev"
    );
    let deployment = component(&docs, "Deployment", "operator");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    let f = flags(component(&docs, "Deployment", "injector"));
    assert_eq!(
        flag(&f, "--sidecar-image"),
        "registry.example.com/ferry-dev/ferryd:sc-1"
    );
    assert_eq!(flag(&f, "--image-pull-policy"), "Never");
}

/// The chart's appVersion, which is Ferry's version (the workspace's).
fn pinned_app_version() -> String {
    let chart = std::fs::read_to_string(repo_root().join("charts/ferry/Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("Chart.yaml has an appVersion")
        .trim()
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        app_version,
        env!("CARGO_PKG_VERSION"),
        "charts/ferry/Chart.yaml appVersion must be the workspace version"
    );
    app_version
}

// === deploy/ferry.yaml ===

/// deploy/ferry.yaml: the Namespace, then `helm template ferry charts/ferry -n ferry-system`.
fn rendered_snapshot() -> String {
    let rendered = template(RELEASE, NAMESPACE, &[]).unwrap_or_else(|e| panic!("{e}"));
    format!(
        "# Ferry for clusters without Helm: `helm template {RELEASE} charts/ferry -n {NAMESPACE}`\n\
         # (the chart's defaults), after the namespace, which the control plane's pods share with\n\
         # nothing else and which enforces the restricted Pod Security Standard they meet.\n\
         # Generated by `make manifests`; do not edit (e2e/tests/helm.rs fails when it is stale).\n\
         #\n\
         #   kubectl apply --server-side -f deploy/ferry.yaml\n\
         ---\n\
         apiVersion: v1\n\
         kind: Namespace\n\
         metadata:\n  \
           name: {NAMESPACE}\n  \
           labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n\
         {rendered}"
    )
}

#[test]
fn rendered_snapshot_is_up_to_date() {
    let path = repo_root().join("deploy/ferry.yaml");
    let want = rendered_snapshot();
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/ferry.yaml is stale: run `make manifests` (first difference at line {})",
        have.lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(have.lines().count().min(want.lines().count()))
            + 1
    );
    let docs = documents(&have);
    assert_eq!((kind(&docs[0]), name(&docs[0])), ("Namespace", NAMESPACE));
}

// === Tier 1 ===

/// One release at a time: its cluster-scoped objects have fixed names, and its operator acts on
/// every namespace.
static ONE_RELEASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kubeconfig() -> String {
    ClusterEnv::load()
        .and_then(|e| e.kubeconfig())
        .expect("the Tier-1 cluster is up (make e2e)")
        .to_string_lossy()
        .into_owned()
}

/// helm against the Tier-1 cluster.
fn helm_cluster(args: &[&str]) -> Result<String, String> {
    let kubeconfig = kubeconfig();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend(args);
    helm(&all)
}

fn names(kubectl_output: &str) -> BTreeSet<String> {
    kubectl_output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:08x}", h.finish() as u32)
}

/// A namespace for a release, enforcing the `restricted` Pod Security Standard (the API server
/// refuses any pod of the chart that does not meet it).
async fn release_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", random_suffix());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "ferry.dev/e2e": "true",
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    name
}

/// The values file a test installs with: the webhook takes only the namespaces labelled into
/// this release's mesh, so that no other test's pods go through it.
fn test_values(ns: &str, more: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ferry-helm-values-{ns}.yaml"));
    std::fs::write(
        &path,
        format!(
            "webhook:\n  namespaceSelector:\n    matchLabels:\n      {}: {ns}\n{more}",
            common::MESH_LABEL
        ),
    )
    .unwrap();
    path
}

/// Whatever happened: the release uninstalled, the webhook configuration and other
/// cluster-scoped objects of the chart gone (other tests' pods must not meet a webhook whose
/// injector is gone), and the namespaces deleted.
async fn tear_down(client: &Client, ns: &str, namespaces: &[String]) {
    use k8s_openapi::api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    use kube::api::ListParams;
    if let Err(e) = helm_cluster(&["uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m"])
        && !e.contains("not found")
    {
        eprintln!("tear-down: {e}");
    }
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/part-of=ferry"
    ));
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = webhooks.delete_collection(&Default::default(), &lp).await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let _ = roles.delete_collection(&Default::default(), &lp).await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let _ = bindings.delete_collection(&Default::default(), &lp).await;
    // The operator's own binding, if it had no time to remove it.
    let _ = bindings.delete("ferry-sidecar", &Default::default()).await;
    common::remove_trust_bundles(client).await;
    let mut all = namespaces.to_vec();
    all.push(ns.to_owned());
    common::delete_namespaces(client, &all).await;
}

/// The last lines of every container log of the pods in `ns`.
fn print_logs(ns: &str) {
    let dir = repo_root().join("e2e/.run/kubelet/pods");
    for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if !pod
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{ns}_"))
        {
            continue;
        }
        for log in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if log.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- last lines of {} ---", log.path().display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Runs `test` in its own task; then tears the release down whatever the outcome, and passes a
/// panic on.
async fn with_release<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _one = ONE_RELEASE.lock().await;
    let client = ferry_e2e::client()
        .await
        .expect("cannot reach the Tier-1 cluster");
    let ns = release_namespace(&client, prefix).await;
    let outcome = tokio::spawn(test(client.clone(), ns.clone())).await;
    if outcome.is_err() {
        let _ =
            kubectl(&["get", "pods", "-A", "-o", "wide"], "").map(|(out, _)| eprintln!("{out}"));
        print_logs(&ns);
    }
    let namespaces: Vec<String> = ["app0", "app1", "other"]
        .iter()
        .map(|s| format!("{ns}-{s}"))
        .collect();
    tear_down(&client, &ns, &namespaces).await;
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test was cancelled: {e}");
    }
}

/// Stand-ins for the CRDs of the optional kinds (cert-manager's Certificate and Issuer, the
/// Prometheus Operator's ServiceMonitor), when the cluster lacks them: they accept any spec, so
/// the dry run checks these objects' group, version, kind, scope and metadata, not their spec.
/// Owned by `ns`, so they go with it.
async fn stand_in_crds(client: &Client, ns: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt as _;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let owner: Namespace = Api::all(client.clone()).get(ns).await.unwrap();
    for (group, kind, plural) in [
        ("cert-manager.io", "Certificate", "certificates"),
        ("cert-manager.io", "Issuer", "issuers"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ] {
        let name = format!("{plural}.{group}");
        if crds.get_opt(&name).await.unwrap().is_some() {
            continue;
        }
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Namespace", "name": ns, "uid": owner.uid(),
            }]},
            "spec": {
                "group": group, "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }}],
            },
        }))
        .unwrap();
        crds.create(&Default::default(), &crd).await.unwrap();
        ferry_e2e::wait_for(
            &crds,
            &name,
            "the stand-in CRD to be served",
            common::WAIT,
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

/// Every rendering of the chart, applied with `kubectl apply --dry-run=server` in a namespace
/// that enforces the `restricted` Pod Security Standard: the API server validates every object
/// (schemas, field names, webhook configuration rules) and PodSecurity admission checks the pod
/// templates.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn api_server_accepts_every_rendering() {
    with_release("helm-dry", |client, ns| async move {
        stand_in_crds(&client, &ns).await;
        for (mode, values) in modes() {
            let yaml = template(RELEASE, &ns, &values).unwrap();
            let (out, err) = kubectl(&["apply", "--dry-run=server", "-f", "-"], &yaml)
                .unwrap_or_else(|e| panic!("{mode}: the API server refused the chart: {e}"));
            assert!(!err.contains("PodSecurity"), "{mode}: {err}");
            assert_eq!(
                out.lines()
                    .filter(|l| l.contains("(server dry run)"))
                    .count(),
                documents(&yaml).len(),
                "{mode}: every object is accepted: {out}"
            );
        }
        // The Pod Security check is live: a container that may gain privileges is reported.
        let yaml = template(
            RELEASE,
            &ns,
            &set(&["containerSecurityContext.allowPrivilegeEscalation=true"]),
        )
        .unwrap();
        let (_, err) = kubectl(&["apply", "--dry-run=server", "-f", "-"], &yaml).unwrap();
        assert!(
            err.contains("would violate PodSecurity \"restricted:latest\"")
                && err.contains("allowPrivilegeEscalation"),
            "{err}"
        );
    })
    .await;
}

/// The pods of one component of the release: (name, uid, ready, terminating).
async fn control_plane_pods(client: &Client, ns: &str, component: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
    ));
    pods.list(&lp).await.unwrap().items
}

/// Waits until `component` has exactly `n` pods, all ready (none terminating); returns them.
async fn settled(client: &Client, ns: &str, component: &str, n: usize) -> Vec<Pod> {
    eventually(
        &format!("{n} ready {component} pods"),
        common::WAIT,
        || async {
            let pods = control_plane_pods(client, ns, component).await;
            if pods.len() == n && pods.iter().all(common::pod_ready) {
                Ok(pods)
            } else {
                Err(format!(
                    "{:?}",
                    pods.iter()
                        .map(|p| (
                            p.metadata.name.clone(),
                            common::pod_ready(p),
                            p.metadata.deletion_timestamp.is_some()
                        ))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// The containers a pod created (as a dry run) in `ns` gets from admission.
async fn admitted_containers(client: &Client, ns: &str) -> Vec<String> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "annotations": {
            "dapr.io/enabled": "true", "dapr.io/app-id": "probe",
        }},
        "spec": {"containers": [{"name": "app", "image": common::TESTAPP_IMAGE}]},
    }))
    .unwrap();
    let pp = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, &pod)
        .await
        .unwrap_or_else(|e| panic!("cannot create a pod in {ns} (dry run): {e}"));
    created
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// The CRDs that exist, of those the chart installs.
fn existing_crds() -> Vec<String> {
    ferry_api::crd::all()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| {
            kubectl(&["get", "crd", n, "--ignore-not-found", "-o", "name"], "")
                .is_ok_and(|(out, _)| !out.trim().is_empty())
        })
        .collect()
}

/// README's install, on the Tier-1 cluster: `helm install` runs the operator and the injector
/// from their pod specs (2 + 2 replicas, Ready, in a namespace enforcing the restricted Pod
/// Security Standard); flow.rs's scenario passes against them; the webhook leaves namespaces
/// outside its selector alone; `helm upgrade` with a changed value rolls every control-plane pod
/// while calls go on, without a failed call, and the new pods serve a new app; `helm uninstall`
/// leaves no pod and nothing of the release but the CRDs and what README lists.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn helm_install_serves_the_scenario_upgrades_under_load_and_uninstalls_cleanly() {
    with_release("helm", |client, ns| async move {
        // Plaintext between sidecars here: the upgrade replaces every operator pod, and the
        // process kubelet routes no Service (no kube-proxy, no cluster DNS), so new pods could
        // not reach the CA at `ferry-ca.<ns>.svc`. The chart's mTLS is the next test's.
        let values = test_values(&ns, "mtls:\n  enabled: false\n");
        install_as_readme_says(&client, &ns, &values).await;

        let apps = common::create_app_namespaces(&client, &ns, 2).await;
        let started = Instant::now();
        let sidecar = common::samples_across_namespaces(&client, &apps[0], &apps[1]).await;
        eprintln!("the invocation scenario: {:?}", started.elapsed());

        // Only the selected namespaces go through the webhook.
        let other = format!("{ns}-other");
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": other, "labels": {"ferry.dev/e2e": "true"}}
        }))
        .unwrap();
        Api::all(client.clone())
            .create(&Default::default(), &namespace)
            .await
            .unwrap();
        assert_eq!(admitted_containers(&client, &other).await, ["app"]);
        assert_eq!(
            admitted_containers(&client, &apps[0]).await,
            ["app", "daprd"]
        );

        upgrade_under_load(&client, &ns, &values, &apps[0], &sidecar).await;

        let mut gone = apps.clone();
        gone.push(other);
        uninstall_leaves_only_the_crds(&client, &ns, &gone).await;
    })
    .await;
}

/// The chart's default, mTLS: the operator's replicas serve the CA behind the `ferry-ca`
/// Service, generate its Secret and publish the trust bundle; injected sidecars get their
/// SPIFFE certificates and call each other over mTLS.
///
/// The process kubelet routes no Service, so after the install the injector is told the CA's
/// address as an operator pod's IP (`mtls.sentryAddress`, as a user would to use another CA);
/// sidecars check the CA by its SPIFFE ID, not by its address.
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn helm_install_with_mtls_issues_certificates_to_injected_sidecars() {
    with_release("helm-mtls", |client, ns| async move {
        let values = test_values(&ns, "");
        install_as_readme_says(&client, &ns, &values).await;
        let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(client.clone(), &ns)
            .get("dapr-trust-bundle")
            .await
            .unwrap();
        let data = secret.data.unwrap();
        for key in ["ca.crt", "issuer.crt", "issuer.key"] {
            assert!(data.contains_key(key), "the generated Secret has {key}");
        }
        let svc: Service = Api::namespaced(client.clone(), &ns)
            .get("ferry-ca")
            .await
            .unwrap();
        let port = &svc.spec.unwrap().ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (
                443,
                Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("ca".into())
                )
            )
        );
        let operators = settled(&client, &ns, "operator", 2).await;
        let ca = format!("{}:50001", common::pod_ip(&operators[0]));
        helm_cluster(&[
            "upgrade",
            RELEASE,
            "charts/ferry",
            "-n",
            &ns,
            "-f",
            values.to_str().unwrap(),
            "--set",
            &format!("mtls.sentryAddress={ca}"),
            "--wait",
            "--timeout",
            "3m",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        settled(&client, &ns, "injector", 2).await;

        let apps = common::create_app_namespaces(&client, &ns, 1).await;
        let anchors = String::from_utf8(data["ca.crt"].0.clone()).unwrap();
        eventually(
            "the trust bundle in the app namespace",
            common::WAIT,
            || async {
                let cm: Option<k8s_openapi::api::core::v1::ConfigMap> =
                    Api::namespaced(client.clone(), &apps[0])
                        .get_opt("dapr-trust-bundle")
                        .await
                        .map_err(|e| e.to_string())?;
                let got = cm.and_then(|c| c.data).and_then(|mut d| d.remove("ca.crt"));
                (got.as_deref() == Some(anchors.as_str()))
                    .then_some(())
                    .ok_or(format!("{got:?}"))
            },
        )
        .await;
        let sidecar = common::client_app(&client, &apps[0]).await;
        let echo = common::deployment(
            "echo",
            common::TESTAPP_IMAGE,
            "echo",
            8080,
            1,
            json!([]),
            &[],
        );
        common::create_deployment(&client, &apps[0], &echo).await;
        common::ready_pods(&client, &apps[0], "echo", 1).await;
        let body = common::call_until(
            &common::http_client(),
            "GET",
            &format!("{sidecar}/v1.0/invoke/echo/method/whoami"),
            &[],
            "",
            200,
        )
        .await;
        let seen: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["headers"]["dapr-caller-app-id"], "client", "{seen}");
        let (_, meta) = http_get(&format!("{sidecar}/v1.0/metadata"), common::WAIT)
            .await
            .unwrap();
        let meta: Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(
            meta["extended"]["spiffeID"],
            format!("spiffe://public/ns/{}/client", apps[0]),
            "{meta}"
        );
        // The CA's own metrics, with Dapr Sentry's names, summed over the replicas.
        let mut signed = 0;
        for op in &operators {
            let (_, text) = http_get(
                &format!("http://{}:8080/metrics", common::pod_ip(op)),
                common::WAIT,
            )
            .await
            .unwrap();
            signed += text
                .lines()
                .find_map(|l| l.strip_prefix("dapr_sentry_cert_sign_success_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        assert!(
            signed >= 2,
            "both sidecars' certificates were signed: {signed}"
        );
    })
    .await;
}

/// Lets the release in `ns` adopt the CRDs that exist without belonging to it (other suites
/// apply crds/ directly), with README's commands for that case.
fn adopt_crds(ns: &str) {
    let crds = existing_crds();
    if !crds.is_empty() {
        let crds: Vec<&str> = crds.iter().map(String::as_str).collect();
        let managed = "app.kubernetes.io/managed-by=Helm";
        kubectl(
            &[&["label", "crd"], &crds[..], &[managed, "--overwrite"]].concat(),
            "",
        )
        .unwrap();
        let (release, namespace) = (
            format!("meta.helm.sh/release-name={RELEASE}"),
            format!("meta.helm.sh/release-namespace={ns}"),
        );
        let annotations = [release.as_str(), namespace.as_str(), "--overwrite"];
        kubectl(
            &[&["annotate", "crd"], &crds[..], &annotations].concat(),
            "",
        )
        .unwrap();
    }
}

/// `helm install ferry charts/ferry -n <ns> --create-namespace`, after adopting the CRDs that
/// other suites applied from crds/ (README's commands for that case); checks what it made.
async fn install_as_readme_says(client: &Client, ns: &str, values: &Path) {
    use k8s_openapi::{
        api::admissionregistration::v1::MutatingWebhookConfiguration,
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    use kube::ResourceExt as _;
    adopt_crds(ns);
    let started = Instant::now();
    let values = values.to_str().unwrap();
    helm_cluster(&[
        "install",
        RELEASE,
        "charts/ferry",
        "-n",
        ns,
        "--create-namespace",
        "-f",
        values,
        "--wait",
        "--timeout",
        "3m",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "helm install: {:?} until both Deployments were available",
        started.elapsed()
    );

    let app_version = pinned_app_version();
    for (c, image) in [
        ("operator", "ferry-operator"),
        ("injector", "ferry-injector"),
    ] {
        for pod in settled(client, ns, c, 2).await {
            assert_eq!(
                pod.spec.unwrap().containers[0].image,
                Some(format!("ghcr.io/ferry-dev/{image}:{app_version}")),
                "the chart's default image, which e2e/images.yaml maps to the workspace's binary"
            );
        }
    }
    let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("ferry-injector")
        .await
        .unwrap();
    assert!(
        webhook.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| !b.0.is_empty()),
        "the injector put its CA into the caBundle"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ferry_api::crd::all()
        .into_iter()
        .filter_map(|c| c.metadata.name)
    {
        let crd = crds.get(&name).await.unwrap();
        let annotations = crd.annotations();
        assert_eq!(
            annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep"),
            "{name}"
        );
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-namespace")
                .map(String::as_str),
            Some(ns),
            "{name} belongs to the release"
        );
    }
}

/// `helm upgrade` with changed log levels, which rolls every operator and injector pod, while
/// 4 loops call an app through `sidecar`: no call fails, every control-plane pod is replaced and
/// runs with the new value, and the new pods serve a new app (its sidecar from the new injector,
/// its place in the RoutingTable from the new operator).
async fn upgrade_under_load(client: &Client, ns: &str, values: &Path, app_ns: &str, sidecar: &str) {
    use kube::ResourceExt as _;
    let env =
        json!([{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    let echo = |name: &str| {
        common::deployment(name, common::TESTAPP_IMAGE, name, 8080, 1, env.clone(), &[])
    };
    common::create_deployment(client, app_ns, &echo("echo")).await;
    common::ready_pods(client, app_ns, "echo", 1).await;
    let http = common::http_client();
    let url = format!("{sidecar}/v1.0/invoke/echo/method/whoami");
    common::call_until(&http, "GET", &url, &[], "", 200).await;
    let mut before = BTreeSet::new();
    for c in ["operator", "injector"] {
        let pods = control_plane_pods(client, ns, c).await;
        before.extend(pods.iter().filter_map(|p| p.uid()));
    }

    let load = common::Load::start(common::http_client(), url, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    helm_cluster(&[
        "upgrade",
        RELEASE,
        "charts/ferry",
        "-n",
        ns,
        "-f",
        values.to_str().unwrap(),
        "--set",
        "operator.logLevel=debug",
        "--set",
        "injector.logLevel=debug",
        "--wait",
        "--timeout",
        "3m",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("helm upgrade: {:?}", started.elapsed());
    for c in ["operator", "injector"] {
        for pod in settled(client, ns, c, 2).await {
            let name = pod.name_any();
            assert!(
                !before.contains(&pod.uid().unwrap()),
                "{c} pod {name} was not replaced"
            );
            let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
            assert!(
                args.iter()
                    .any(|a| a == "--log=debug" || a == "--log-level=debug"),
                "{name}: {args:?}"
            );
        }
    }

    common::create_deployment(client, app_ns, &echo("echo2")).await;
    let pods = common::ready_pods(client, app_ns, "echo2", 1).await;
    let containers = &pods[0].spec.as_ref().unwrap().containers;
    assert!(
        containers.iter().any(|c| c.name == "daprd"),
        "a new pod is injected"
    );
    let url = format!("{sidecar}/v1.0/invoke/echo2/method/whoami");
    common::call_until(&http, "GET", &url, &[], "", 200).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    eprintln!("calls during the upgrade: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.ok > 100, "{report}");
}

/// Deletes the apps' namespaces (so the operator removes the sidecars' ClusterRoleBinding, as
/// README's uninstall says), then `helm uninstall`: no pod is left, every object of the release
/// is gone but the CRDs, nothing of it is left cluster-wide, and the release namespace holds only
/// what the components wrote as they ran.
async fn uninstall_leaves_only_the_crds(client: &Client, ns: &str, app_namespaces: &[String]) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let manifest = helm_cluster(&["get", "manifest", RELEASE, "-n", ns]).unwrap();
    common::delete_namespaces(client, app_namespaces).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in app_namespaces {
        let deleted = Duration::from_secs(120);
        ferry_e2e::wait_for(&namespaces, name, "the app namespace to go", deleted, |n| {
            n.is_none()
        })
        .await;
    }
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let what = "the operator to remove the sidecars' binding";
    ferry_e2e::wait_for(&bindings, "ferry-sidecar", what, common::WAIT, |b| {
        b.is_none()
    })
    .await;

    let started = Instant::now();
    helm_cluster(&["uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m"])
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("helm uninstall: {:?}", started.elapsed());

    eventually(
        "no pod left in the release namespace",
        common::WAIT,
        || async {
            let (out, _) = kubectl(&["get", "pods", "-n", ns, "-o", "name"], "")?;
            if out.trim().is_empty() {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    for d in documents(&manifest) {
        let object = format!("{}/{}", kind(&d), name(&d));
        let args = ["get", &object, "-n", ns, "--ignore-not-found", "-o", "name"];
        let (out, _) = kubectl(&args, "").unwrap();
        if kind(&d) == "CustomResourceDefinition" {
            assert!(!out.trim().is_empty(), "{object} is kept");
        } else {
            assert!(out.trim().is_empty(), "{object} is left: {out}");
        }
    }
    let kinds = "clusterroles,clusterrolebindings,mutatingwebhookconfigurations";
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let (out, _) = kubectl(&["get", kinds, "-l", &selector, "-o", "name"], "").unwrap();
    assert!(out.trim().is_empty(), "left cluster-wide: {out}");
    // What the injector (bootstrap mode) and the operator wrote, and what Kubernetes puts into
    // every namespace.
    let want: BTreeSet<String> = [
        "secret/ferry-injector-tls",
        "lease.coordination.k8s.io/ferry-operator",
        "configmap/kube-root-ca.crt",
        "serviceaccount/default",
    ]
    .map(str::to_owned)
    .into();
    let kinds = "all,secrets,configmaps,serviceaccounts,roles,rolebindings,leases,\
                 poddisruptionbudgets,endpointslices,networkpolicies";
    eventually(
        "only README's leftovers in the namespace",
        common::WAIT,
        || async {
            let (out, _) = kubectl(&["get", kinds, "-n", ns, "-o", "name"], "")?;
            let have = names(&out);
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    )
    .await;
}

/// The `secret` TLS mode with a certificate of the user's own: the injector serves the mounted
/// Secret and keeps its ca.crt in the caBundle, so the API server's calls to the webhook succeed
/// (with failurePolicy Ignore a failed TLS handshake would only show as a pod without `daprd`).
#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn existing_secret_mode_serves_the_given_certificate() {
    use k8s_openapi::api::{
        admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret,
    };
    with_release("helm-tls", |client, ns| async move {
        let (ca, issuer) = test_ca();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![format!("ferry-injector.{ns}.svc")])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "webhook-tls"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": leaf.pem(), "tls.key": key.serialize_pem(), "ca.crt": ca},
        }))
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets.create(&Default::default(), &secret).await.unwrap();

        let values = test_values(
            &ns,
            "  tls:\n    mode: secret\n    secret:\n      name: webhook-tls\n",
        );
        adopt_crds(&ns);
        let started = Instant::now();
        helm_cluster(&[
            "install",
            RELEASE,
            "charts/ferry",
            "-n",
            &ns,
            "-f",
            values.to_str().unwrap(),
            "--wait",
            "--timeout",
            "3m",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("helm install (secret mode): {:?}", started.elapsed());
        settled(&client, &ns, "injector", 2).await;
        let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get("ferry-injector")
            .await
            .unwrap();
        assert_eq!(
            webhook.webhooks.unwrap()[0]
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone()),
            Some(ca.clone().into_bytes()),
            "the Secret's ca.crt"
        );
        let apps = common::create_app_namespaces(&client, &ns, 1).await;
        assert_eq!(
            admitted_containers(&client, &apps[0]).await,
            ["app", "daprd"]
        );

        helm_cluster(&["uninstall", RELEASE, "-n", &ns, "--wait", "--timeout", "2m"]).unwrap();
        assert!(
            secrets.get_opt("webhook-tls").await.unwrap().is_some(),
            "the user's Secret is not the chart's to delete"
        );
    })
    .await;
}
