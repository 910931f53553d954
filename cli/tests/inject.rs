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
    // The Deployment's name is the app ID; the namespace is the Deployment's.
    assert!(
        args.windows(2).any(|w| w == ["--app-id", "orders"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--app-port", "8080"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--namespace", "shop"]),
        "{args:?}"
    );
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
