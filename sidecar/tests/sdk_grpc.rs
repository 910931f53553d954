//! The Dapr SDK for Python on its gRPC transport (`DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc`)
//! against ferryd, unchanged: `DaprClient().invoke_method` reaches an HTTP app through both
//! sidecars with `InvokeService`, and gets the app's body, content type and status; an app's
//! error reaches it as the SDK reports Dapr's. `#[ignore]`d for a plain `cargo test`: it needs
//! `FERRY_PYTHON`, a python3 with the SDK (`make interop` makes one with
//! e2e/clients/python.sh).

mod common;

use common::*;

fn python() -> String {
    std::env::var("FERRY_PYTHON").expect(
        "FERRY_PYTHON must name a python3 with the Dapr SDK: `make interop` makes one \
         (e2e/clients/python.sh) and sets it",
    )
}

const SCRIPT: &str = r#"
import json
import grpc
from dapr.clients import DaprClient

with DaprClient() as d:
    r = d.invoke_method("b", "orders/7", data=b"hello", content_type="text/plain",
                        http_verb="PUT", http_querystring=(("x", "1"),))
    out = {"content_type": r.content_type, "status": r.status_code, "body": json.loads(r.data)}
    try:
        d.invoke_method("b", "status/404", data=b"", http_verb="GET")
        out["error"] = None
    except grpc.RpcError as e:
        out["error"] = {"code": e.code().name, "message": e.details()}
    print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Dapr SDK for Python: make interop"]
async fn the_python_sdk_invokes_over_grpc() {
    let mesh = Mesh::new("sdk-python-grpc");
    let app = TestApp::start("b-app").await;
    let _b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").start().await;

    let out = tokio::process::Command::new(python())
        .args(["-c", SCRIPT])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")
        .env("DAPR_GRPC_PORT", a.grpc.to_string())
        .env("DAPR_HTTP_PORT", a.http.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", a.log_text());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["content_type"], "application/json", "{v}");
    let echo = Echo(v["body"].clone());
    assert_eq!(echo.method(), "PUT");
    assert_eq!(echo.path(), "/orders/7?x=1");
    assert_eq!(echo.body(), "hello");
    assert_eq!(echo.header("dapr-caller-app-id").as_deref(), Some("a"));
    assert_eq!(v["error"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["error"]["message"], "Not Found", "{v}");
}
