//! Our `dapr.proto` and `common.proto` against Dapr's wire contract: the service and method
//! paths, and every field and enum number of what Ferry serves, as Dapr publishes them
//! (`dapr/proto/runtime/v1/dapr.proto`, `dapr/proto/common/v1/common.proto`). A drift here
//! breaks every Dapr SDK on its gRPC transport.

use ferry_sidecar::grpc::proto::{
    common::{HttpExtension, InvokeRequest, InvokeResponse, http_extension::Verb},
    runtime::{
        AppConnectionHealthProperties, AppConnectionProperties, GetMetadataResponse,
        InvokeServiceRequest, MetadataHttpEndpoint, RegisteredComponents,
        dapr_server::SERVICE_NAME,
    },
};
use prost::Message;

/// The field numbers in an encoding, in order.
fn tags(bytes: &[u8]) -> Vec<u64> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (tag, wire) = (key >> 3, key & 7);
        out.push(tag);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut buf).unwrap();
            }
            2 => {
                let n = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[n..];
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    out
}

fn any(b: &[u8]) -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: "t".into(),
        value: b.to_vec(),
    })
}

#[test]
fn the_service_and_methods_are_daprs() {
    assert_eq!(SERVICE_NAME, "dapr.proto.runtime.v1.Dapr");
    assert_eq!(ferry_sidecar::grpc::SERVICE, SERVICE_NAME);
    let proto = include_str!("../../api/proto/dapr/proto/runtime/v1/dapr.proto");
    assert!(proto.contains("package dapr.proto.runtime.v1;"));
    assert!(
        proto.contains(
            "rpc InvokeService(InvokeServiceRequest) returns (common.v1.InvokeResponse) {}"
        )
    );
    assert!(proto.contains("rpc GetMetadata(GetMetadataRequest) returns (GetMetadataResponse) {}"));
    let common = include_str!("../../api/proto/dapr/proto/common/v1/common.proto");
    assert!(common.contains("package dapr.proto.common.v1;"));
}

#[test]
fn invocation_fields_have_daprs_numbers() {
    let req = InvokeServiceRequest {
        id: "a".into(),
        message: Some(InvokeRequest {
            method: "m".into(),
            data: any(b"d"),
            content_type: "c".into(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post as i32,
                querystring: "q".into(),
            }),
        }),
    };
    assert_eq!(tags(&req.encode_to_vec()), [1, 3]);
    let msg = req.message.unwrap();
    assert_eq!(tags(&msg.encode_to_vec()), [1, 2, 3, 4]);
    assert_eq!(tags(&msg.http_extension.unwrap().encode_to_vec()), [1, 2]);
    let resp = InvokeResponse {
        data: any(b"d"),
        content_type: "c".into(),
    };
    assert_eq!(tags(&resp.encode_to_vec()), [1, 2]);
    let verbs = [
        (Verb::None, 0, "NONE"),
        (Verb::Get, 1, "GET"),
        (Verb::Head, 2, "HEAD"),
        (Verb::Post, 3, "POST"),
        (Verb::Put, 4, "PUT"),
        (Verb::Delete, 5, "DELETE"),
        (Verb::Connect, 6, "CONNECT"),
        (Verb::Options, 7, "OPTIONS"),
        (Verb::Trace, 8, "TRACE"),
        (Verb::Patch, 9, "PATCH"),
    ];
    for (verb, n, name) in verbs {
        assert_eq!((verb as i32, verb.as_str_name()), (n, name));
    }
}

#[test]
fn metadata_fields_have_daprs_numbers() {
    let m = GetMetadataResponse {
        id: "a".into(),
        registered_components: vec![RegisteredComponents {
            name: "n".into(),
            r#type: "t".into(),
            version: "v".into(),
            capabilities: vec!["c".into()],
        }],
        extended_metadata: [("k".to_owned(), "v".to_owned())].into(),
        http_endpoints: vec![MetadataHttpEndpoint { name: "e".into() }],
        app_connection_properties: Some(AppConnectionProperties {
            port: 1,
            protocol: "p".into(),
            channel_address: "c".into(),
            max_concurrency: 2,
            health: Some(AppConnectionHealthProperties {
                health_check_path: "h".into(),
                health_probe_interval: "i".into(),
                health_probe_timeout: "t".into(),
                health_threshold: 3,
            }),
        }),
        runtime_version: "r".into(),
        enabled_features: vec!["f".into()],
    };
    assert_eq!(tags(&m.encode_to_vec()), [1, 3, 4, 6, 7, 8, 9]);
    assert_eq!(
        tags(&m.registered_components[0].encode_to_vec()),
        [1, 2, 3, 4]
    );
    let props = m.app_connection_properties.unwrap();
    assert_eq!(tags(&props.encode_to_vec()), [1, 2, 3, 4, 5]);
    assert_eq!(tags(&props.health.unwrap().encode_to_vec()), [1, 2, 3, 4]);
}
