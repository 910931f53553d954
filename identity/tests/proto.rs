//! Our `sentry.proto` against Dapr's wire contract: the service path and every field number, as
//! Dapr publishes them (`dapr/proto/sentry/v1/sentry.proto`). A drift here breaks daprd talking
//! to Ferry's CA, or ferryd to Dapr's Sentry.

use ferry_identity::sentry::{
    SignCertificateRequest, SignCertificateResponse, TokenValidator, proto::ca_server::SERVICE_NAME,
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

#[test]
fn the_service_is_daprs() {
    assert_eq!(SERVICE_NAME, "dapr.proto.sentry.v1.CA");
    // tonic builds the path from the service and the method name as written in the .proto.
    let proto = include_str!("../../api/proto/dapr/proto/sentry/v1/sentry.proto");
    assert!(proto.contains("package dapr.proto.sentry.v1;"));
    assert!(
        proto.contains(
            "rpc SignCertificate(SignCertificateRequest) returns (SignCertificateResponse)"
        )
    );
}

#[test]
fn request_fields_have_daprs_numbers() {
    let req = SignCertificateRequest {
        id: "a".into(),
        token: "t".into(),
        trust_domain: "d".into(),
        namespace: "n".into(),
        certificate_signing_request: b"c".to_vec(),
        token_validator: TokenValidator::Kubernetes as i32,
        jwt_audiences: vec!["x".into()],
    };
    assert_eq!(tags(&req.encode_to_vec()), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(TokenValidator::Unknown as i32, 0);
    assert_eq!(TokenValidator::Insecure as i32, 1);
    assert_eq!(TokenValidator::Kubernetes as i32, 2);
    assert_eq!(TokenValidator::Jwks as i32, 3);
}

#[test]
fn response_fields_have_daprs_numbers() {
    let resp = SignCertificateResponse {
        workload_certificate: b"w".to_vec(),
        trust_chain_certificates: vec![b"t".to_vec()],
        valid_until: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        jwt: Some("j".into()),
        per_audience_jwts: [("a".to_owned(), "b".to_owned())].into(),
    };
    assert_eq!(tags(&resp.encode_to_vec()), [1, 2, 3, 4, 5]);
}
