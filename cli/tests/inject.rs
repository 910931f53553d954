//! `ferry inject` as a user runs it: manifests in, injected manifests out.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  namespace: shop
spec:
  selector:
    matchLabels: {app: orders}
  template:
    metadata:
      labels: {app: orders}
      annotations:
        dapr.io/enabled: "true"
        dapr.io/app-port: "8080"
    spec:
      containers:
        - name: app
          image: shop/orders:1
---
apiVersion: v1
kind: Service
metadata:
  name: orders
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
spec:
  containers:
    - name: app
      image: busybox
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
        metadata:
          annotations:
            dapr.io/enabled: "TRUE"
            dapr.io/app-id: reporter
        spec:
          restartPolicy: Never
          containers:
            - name: job
              image: shop/report:1
"#;

fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn containers(doc: &Value, pointer: &str) -> Vec<String> {
    doc.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn injects_workloads_and_passes_the_rest_unchanged() {
    let out = inject(&["-f", "-"], MANIFEST);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(docs.len(), 4);

    let deployment = &docs[0];
    assert_eq!(
        containers(deployment, "/spec/template/spec/containers"),
        ["app", "daprd"]
    );
    let daprd = &deployment["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(daprd["command"][0], "/ferryd");
    let args: Vec<&str> = daprd["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The Deployment's name is the app ID; the namespace is the pod's, at run time.
    assert!(
        args.windows(2).any(|w| w == ["--app-id", "orders"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--app-port", "8080"]),
        "{args:?}"
    );
    assert!(!args.contains(&"--namespace"), "{args:?}");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["dapr.io/sidecar-injected"], "true");
    assert_eq!(labels["app"], "orders");

    let original: Vec<Value> = serde_saphyr::from_multiple(MANIFEST).unwrap();
    assert_eq!(docs[1], original[1], "the Service is unchanged");
    assert_eq!(docs[2], original[2], "the plain Pod is unchanged");
    assert!(
        stderr.contains("Pod/plain: skipped (not_enabled)"),
        "{stderr}"
    );

    let cronjob = &docs[3];
    assert_eq!(
        containers(cronjob, "/spec/jobTemplate/spec/template/spec/containers"),
        ["job", "daprd"]
    );
}

#[test]
fn reads_files_and_is_idempotent() {
    let dir = std::env::temp_dir().join(format!("ferry-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let once = inject(&["-f", file.to_str().unwrap()], "");
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let twice = inject(
        &["-f", "-"],
        &String::from_utf8(once.stdout.clone()).unwrap(),
    );
    assert!(twice.status.success());
    assert_eq!(once.stdout, twice.stdout);
    assert!(
        String::from_utf8_lossy(&twice.stderr)
            .contains("Deployment/orders: skipped (already_injected)")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_annotation_exits_1_with_the_message() {
    let manifest = MANIFEST.replace(
        r#"dapr.io/app-port: "8080""#,
        r#"dapr.io/app-port: "70000""#,
    );
    let out = inject(&["-f", "-"], &manifest);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            r#"Deployment/orders: annotation dapr.io/app-port: "70000" is not a port (1-65535)"#
        ),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out = inject(&["-f", "/nonexistent/ferry.yaml"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/ferry.yaml"));
}

#[test]
fn injects_every_workload_kind() {
    let template = r#"
  template:
    metadata:
      annotations: {dapr.io/enabled: "true"}
    spec:
      containers: [{name: app, image: x}]"#;
    let manifest: String = ["StatefulSet", "DaemonSet", "ReplicaSet", "Job"]
        .iter()
        .map(|kind| {
            format!(
                "kind: {kind}\napiVersion: apps/v1\nmetadata: {{name: w-{}}}\nspec:{template}\n",
                kind.to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n");
    let out = inject(&["-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(docs.len(), 4);
    for doc in &docs {
        assert_eq!(
            containers(doc, "/spec/template/spec/containers"),
            ["app", "daprd"],
            "{doc}"
        );
        let app_id = &doc["spec"]["template"]["metadata"]["labels"]["dapr.io/app-id"];
        assert_eq!(app_id, &doc["metadata"]["name"]);
    }
}

/// The oldest Dapr docs' Deployment: pre-1.0 annotation names, no namespace.
const OLD_DAPR_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cart
spec:
  selector:
    matchLabels: {app: cart}
  template:
    metadata:
      labels: {app: cart}
      annotations:
        dapr.io/enabled: "true"
        dapr.io/id: "cart"
        dapr.io/port: "5000"
        dapr.io/app-prot: "5000"
    spec:
      containers:
        - name: cart
          image: shop/cart:1
          ports: [{containerPort: 5000}]
"#;

#[test]
fn warnings_go_to_stderr_one_line_each_naming_the_object_and_the_annotation() {
    let out = inject(&["-f", "-"], OLD_DAPR_DEPLOYMENT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = [
        "ferry inject: Deployment/cart: warning: annotation dapr.io/app-prot is not a Dapr annotation, ignored; did you mean dapr.io/app-port?",
        "ferry inject: Deployment/cart: warning: annotation dapr.io/id is Dapr's pre-1.0 name of dapr.io/app-id: read as dapr.io/app-id; rename it",
        "ferry inject: Deployment/cart: warning: annotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it",
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), want, "{stderr}");

    // The old names are read: the sidecar is app cart on port 5000.
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let template = &docs[0]["spec"]["template"];
    let args: Vec<&str> = template["spec"]["containers"][1]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--app-id", "cart"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--app-port", "5000"]),
        "{args:?}"
    );
    // Each pod made from the template carries the warnings to the operator's Event.
    let recorded = template["metadata"]["annotations"]["ferry.dev/injection-warnings"]
        .as_str()
        .unwrap();
    let lines: Vec<String> = want
        .iter()
        .map(|l| l.split_once("warning: ").unwrap().1.to_owned())
        .collect();
    assert_eq!(recorded, lines.join("\n"));
}

/// Every string in a YAML document, keys and values.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

#[test]
fn the_output_bakes_in_no_namespace() {
    let out = inject(&["-f", "-"], OLD_DAPR_DEPLOYMENT);
    assert!(out.status.success());
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    // `kubectl apply -n prod` decides: no object, no flag, no value names a namespace.
    let mut all = Vec::new();
    strings(&docs[0], &mut all);
    for banned in ["namespace", "--namespace", "default"] {
        assert!(!all.iter().any(|s| s == banned), "{banned:?} in {all:?}");
    }
    let daprd = &docs[0]["spec"]["template"]["spec"]["containers"][1];
    let env = daprd["env"].as_array().unwrap();
    for (name, path) in [
        ("NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
        ("POD_IP", "status.podIP"),
    ] {
        let var = env.iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path, "{var}");
        assert!(var.get("value").is_none(), "{var}");
    }
}
