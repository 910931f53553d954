//! Access control with real sidecars (standalone, no mTLS yet: callers have no verified
//! identity, so only the global `defaultAction` applies, as in Dapr). The policy comes from
//! the callee's `--config` file and changes without a restart. Identity-based policies (which
//! need the caller's verified SPIFFE ID) are pinned in memory by tests/stack.rs, and verb by
//! verb by the matcher's tables in src/acl/tests.rs.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn configuration(default_action: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: appconfig\nspec:\n  tracing:\n    samplingRate: \"1\"\n  accessControl:\n    defaultAction: {default_action}\n    trustDomain: public\n    policies:\n    - appId: a\n      defaultAction: allow\n      trustDomain: public\n      namespace: default\n      operations:\n      - name: /open/*\n        httpVerb: ['*']\n        action: allow\n"
    )
}

fn denial(op: &str, verb: &str) -> String {
    serde_json::json!({
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": format!("failed to invoke, id: b, err: rpc error: code = PermissionDenied desc = access control policy has denied access to id:  operation: {op} verb: {verb}"),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_is_daprs_403_and_the_app_is_not_called() {
    let mesh = Mesh::new("acl-deny");
    let config = mesh.write("appconfig.yaml", &configuration("deny"));
    let app = TestApp::start("b-app").await;
    let _b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--config", config.to_str().unwrap()])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;

    let r = call("POST", &a.url("/v1.0/invoke/b/method/orders/7"), &[], "x").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), denial("orders/7", "POST"));
    assert!(
        r.header("ferry-error").is_none(),
        "the mark stays between sidecars"
    );
    // Every route the policy would open for an identity is closed without one, and paths
    // that normalize elsewhere are judged as what they normalize to.
    for (verb, path, op) in [
        ("GET", "/v1.0/invoke/b/method/open/x", "open/x"),
        ("GET", "/v1.0/invoke/b/method/open/../admin", "admin"),
        ("GET", "/v1.0/invoke/b/method/open/%2e%2e/admin", "admin"),
        (
            "GET",
            "/v1.0/invoke/b/method/open/%2E%2E/%2e%2e/admin",
            "admin",
        ),
        ("DELETE", "/v1.0/invoke/b/method/Orders//7/", "Orders/7/"),
    ] {
        let r = call(verb, &a.url(path), &[], "").await;
        assert_eq!(r.status, 403, "{verb} {path}: {}", r.text());
        assert_eq!(r.text(), denial(op, verb), "{verb} {path}");
    }
    // The header form and the basic-auth form reach the same check.
    let r = call("GET", &a.url("/orders"), &[("dapr-app-id", "b")], "").await;
    assert_eq!(r.text(), denial("orders", "GET"));
    let out = curl(&[&format!("http://dapr-app-id:b@127.0.0.1:{}/orders", a.http)]).await;
    assert_eq!(out.status, 403, "{out:?}");
    assert_eq!(app.request_count(), 0, "no denied request reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_in_the_file_applies_within_a_second_while_calls_run() {
    let mesh = Mesh::new("acl-reload");
    let config = mesh.write("appconfig.yaml", &configuration("allow"));
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .args(&["--config", config.to_str().unwrap()])
        .start()
        .await;
    let a = mesh.sidecar("a").start().await;
    let url = a.url("/v1.0/invoke/b/method/orders");
    assert_eq!(call("GET", &url, &[], "").await.status, 200);

    // Calls run on; the file changes under them.
    async fn until(url: &str, want: u16) -> (Duration, usize) {
        let start = Instant::now();
        let mut calls = 0;
        loop {
            let r = call("GET", url, &[], "").await;
            calls += 1;
            assert!(
                r.status == 200 || r.status == 403,
                "only the app's answer or the denial: {} {}",
                r.status,
                r.text()
            );
            if r.status == want {
                return (start.elapsed(), calls);
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the change never applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    std::fs::write(&config, configuration("deny")).unwrap();
    let (took, calls) = until(&url, 403).await;
    assert!(took < Duration::from_secs(1), "deny applied after {took:?}");
    assert!(calls > 1, "calls ran while the policy changed");
    let before = app.request_count();
    assert_eq!(call("GET", &url, &[], "").await.status, 403);
    assert_eq!(app.request_count(), before);

    // A bad edit keeps the last good policy (and says why in the log).
    std::fs::write(
        &config,
        "kind: Configuration\nspec:\n  accessControl:\n    defaultAction: maybe\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call("GET", &url, &[], "").await.status, 403);
    assert!(
        b.log_text()
            .contains(r#"spec.accessControl.defaultAction: "maybe" is not an action"#),
        "{}",
        b.log_text()
    );

    std::fs::write(&config, configuration("allow")).unwrap();
    let (took, _) = until(&url, 200).await;
    assert!(
        took < Duration::from_secs(1),
        "allow applied after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_refuses_the_start_naming_file_and_field() {
    let mesh = Mesh::new("acl-bad");
    for (name, text, field) in [
        (
            "no-td.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: app1\n      namespace: default\n",
            "spec.accessControl.policies[0] (appId \"app1\"): trustDomain is missing",
        ),
        (
            "verb.yaml",
            "kind: Configuration\nmetadata: {name: c}\nspec:\n  accessControl:\n    policies:\n    - appId: app1\n      trustDomain: public\n      namespace: default\n      operations:\n      - name: /x\n        httpVerb: [get]\n        action: allow\n",
            "spec.accessControl.policies[0].operations[0].httpVerb[0]: \"get\" is not a verb",
        ),
        (
            "kind.yaml",
            "kind: Component\nspec: {}\n",
            "kind is \"Component\"",
        ),
    ] {
        let path = mesh.write(name, text);
        let out = tokio::process::Command::new(ferryd())
            .env_clear()
            .env("FERRY_HOME", &mesh.home)
            .args(["--app-id", "b", "--dapr-http-port", "0", "--config"])
            .arg(&path)
            .kill_on_drop(true)
            .output();
        let out = step("ferryd refusing a bad --config", out).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.contains(path.to_str().unwrap()),
            "{name}: names the file: {stderr}"
        );
        assert!(line.contains(field), "{name}: names the field: {stderr}");
    }
    let missing = mesh.home.join("nope.yaml");
    let out = tokio::process::Command::new(ferryd())
        .env_clear()
        .env("FERRY_HOME", &mesh.home)
        .args(["--app-id", "b", "--dapr-http-port", "0", "--config"])
        .arg(&missing)
        .kill_on_drop(true)
        .output();
    let out = step("ferryd refusing a missing --config", out)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}
