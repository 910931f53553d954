//! Dapr's gRPC API on `--dapr-grpc-port`, with real ferryd processes and a tonic client built
//! from our `.proto`: `InvokeService` through two sidecars to an HTTP app, an app's non-2xx
//! answer as Dapr's gRPC status, the sidecar's own failures, `GetMetadata`, the API token, and
//! `UNIMPLEMENTED` naming a method Ferry does not serve. The field numbers are checked against
//! Dapr's in `grpc_proto.rs`; the Dapr SDKs' own calls are in `make interop`.

mod common;

use common::*;
use ferry_sidecar::grpc::proto::{
    common::{HttpExtension, InvokeRequest, http_extension::Verb},
    runtime::{GetMetadataRequest, InvokeServiceRequest, dapr_client::DaprClient},
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

async fn client(sc: &Sidecar) -> DaprClient<Channel> {
    let port = sc.grpc;
    DaprClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to the gRPC API")
}

fn invoke(id: &str, method: &str, verb: Verb, query: &str, body: &str) -> InvokeServiceRequest {
    InvokeServiceRequest {
        id: id.into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: body.as_bytes().to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(HttpExtension {
                verb: verb as i32,
                querystring: query.into(),
            }),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_service_reaches_an_http_app_through_both_sidecars() {
    let mesh = Mesh::new("grpc-invoke");
    let app = TestApp::start("b-app").await;
    let _b = mesh.sidecar("b").app_port(app.port).start().await;
    let a = mesh.sidecar("a").start().await;
    let mut c = client(&a).await;

    let mut req = tonic::Request::new(invoke("b", "orders/7", Verb::Put, "x=1&y=2", "hello"));
    req.metadata_mut()
        .insert("x-custom", "from-grpc".parse().unwrap());
    let resp = c.invoke_service(req).await.expect("InvokeService");
    assert_eq!(resp.metadata().get("dapr-http-status").unwrap(), "200");
    let msg = resp.into_inner();
    assert_eq!(msg.content_type, "application/json");
    let echo = Echo(serde_json::from_slice(&msg.data.unwrap().value).unwrap());
    assert_eq!(echo.method(), "PUT");
    assert_eq!(echo.path(), "/orders/7?x=1&y=2");
    assert_eq!(echo.body(), "hello");
    assert_eq!(echo.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(echo.header("x-custom").as_deref(), Some("from-grpc"));
    assert_eq!(echo.header("dapr-caller-app-id").as_deref(), Some("a"));
    // gRPC's own headers are not the invocation's.
    assert!(!echo.has("te") && !echo.has("grpc-timeout"));

    // An app's non-2xx answer is Dapr's gRPC status for it, with the HTTP code in ErrorInfo.
    let err = c
        .invoke_service(invoke("b", "status/404", Verb::Get, "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), "Not Found");
    assert_eq!(err.metadata().get("dapr-http-status").unwrap(), "404");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "dapr.io");
    assert_eq!(info.reason, "Not Found");
    assert_eq!(info.metadata["http.code"], "404");
    let err = c
        .invoke_service(invoke("b", "status/500", Verb::Post, "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");

    // The sidecar's own failure: INTERNAL with Dapr's message.
    let err = c
        .invoke_service(invoke("nobody", "x", Verb::Get, "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        err.message()
            .starts_with("failed to invoke, id: nobody, err: "),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metadata_unimplemented_methods_and_the_api_token() {
    let mesh = Mesh::new("grpc-meta");
    let app = TestApp::start("b-app").await;
    let b = mesh
        .sidecar("b")
        .app_port(app.port)
        .env("DAPR_API_TOKEN", "s3cret")
        .start()
        .await;
    let mut c = client(&b).await;

    // Without the token: Dapr's Unauthenticated.
    let err = c.get_metadata(GetMetadataRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata["http.error_message"],
        "missing api token in request metadata"
    );
    let mut req = tonic::Request::new(GetMetadataRequest {});
    req.metadata_mut()
        .insert("dapr-api-token", "wrong".parse().unwrap());
    let err = c.get_metadata(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut req = tonic::Request::new(GetMetadataRequest {});
    req.metadata_mut()
        .insert("dapr-api-token", "s3cret".parse().unwrap());
    let meta = c.get_metadata(req).await.expect("GetMetadata").into_inner();
    assert_eq!(meta.id, "b");
    assert_eq!(meta.extended_metadata["runtime"], "ferry");
    let props = meta.app_connection_properties.expect("app properties");
    assert_eq!(props.port, i32::from(app.port));
    assert_eq!(props.protocol, "http");

    // The token never reaches the app.
    let mut req = tonic::Request::new(invoke("b", "echo", Verb::Post, "", "x"));
    req.metadata_mut()
        .insert("dapr-api-token", "s3cret".parse().unwrap());
    let msg = c
        .invoke_service(req)
        .await
        .expect("InvokeService")
        .into_inner();
    let echo = Echo(serde_json::from_slice(&msg.data.unwrap().value).unwrap());
    assert!(!echo.has("dapr-api-token"));

    // A method of Dapr's service that Ferry does not serve says so, by name.
    let port = b.grpc;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge", "-X", "POST"])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "dapr-api-token: s3cret",
        ])
        .arg(format!(
            "http://127.0.0.1:{port}/dapr.proto.runtime.v1.Dapr/GetState"
        ))
        .output()
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    // grpc-message is percent-encoded on the wire.
    let text = percent_encoding::percent_decode_str(&raw).decode_utf8_lossy();
    assert!(text.contains("grpc-status: 12"), "{text}");
    assert!(
        text.contains("dapr.proto.runtime.v1.Dapr/GetState is not implemented by Ferry"),
        "{text}"
    );
}
