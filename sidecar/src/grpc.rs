//! Dapr's gRPC API on `--dapr-grpc-port` (`dapr.proto.runtime.v1.Dapr`): `InvokeService` and
//! `GetMetadata`. Every other method of Dapr's service answers `UNIMPLEMENTED`, naming it.
//!
//! `InvokeService` is the HTTP API's invocation with another framing: the request becomes the
//! HTTP request an app would send to `/v1.0/invoke/<id>/method/<method>` and goes down the same
//! caller stack (targets, method normalization, header rules, identity, retries, errors). What
//! comes back is turned into Dapr's gRPC answer (`dapr/pkg/api/grpc/grpc.go`, InvokeService):
//! the body and content type in `InvokeResponse`, the app's headers as metadata with
//! `dapr-http-status`, a non-2xx status as the gRPC status Dapr maps it to (with its
//! `ErrorInfo`), and the sidecar's own failures as `INTERNAL` with Dapr's message.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};
use tower::Service;

use crate::{
    api::Api,
    body::{self, Body},
    outbound::{peers::Connect, resolve::Resolve},
};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    pub mod dapr {
        pub mod proto {
            pub mod common {
                pub mod v1 {
                    tonic::include_proto!("dapr.proto.common.v1");
                }
            }
            pub mod runtime {
                pub mod v1 {
                    tonic::include_proto!("dapr.proto.runtime.v1");
                }
            }
        }
    }
    pub use dapr::proto::{common::v1 as common, runtime::v1 as runtime};
}

use proto::{
    common::{InvokeResponse, http_extension::Verb},
    runtime::{
        AppConnectionHealthProperties, AppConnectionProperties, GetMetadataRequest,
        GetMetadataResponse, InvokeServiceRequest, MetadataHttpEndpoint,
        dapr_server::{Dapr, DaprServer},
    },
};

/// The service's full name, the prefix of every method path.
pub const SERVICE: &str = "dapr.proto.runtime.v1.Dapr";

/// The methods served; any other path answers `UNIMPLEMENTED`.
const SERVED: [&str; 2] = [
    "/dapr.proto.runtime.v1.Dapr/InvokeService",
    "/dapr.proto.runtime.v1.Dapr/GetMetadata",
];

/// Dapr's truncation of an app's error body in `ErrorInfo` metadata.
const MAX_DETAIL: usize = 63;

/// The gRPC API over the sidecar's HTTP API.
pub struct GrpcApi<R, C> {
    api: Arc<Api<R, C>>,
}

impl<R, C> GrpcApi<R, C> {
    pub fn new(api: Arc<Api<R, C>>) -> Self {
        Self { api }
    }
}

/// The tower service the gRPC port serves: the API token first, then the generated server for
/// the methods Ferry has, `UNIMPLEMENTED` for the rest.
pub struct GrpcService<R, C> {
    api: Arc<Api<R, C>>,
    server: DaprServer<GrpcApi<R, C>>,
}

impl<R, C> Clone for GrpcService<R, C> {
    fn clone(&self) -> Self {
        Self {
            api: self.api.clone(),
            server: self.server.clone(),
        }
    }
}

impl<R: Resolve, C: Connect> GrpcService<R, C> {
    pub fn new(api: Arc<Api<R, C>>) -> Self {
        let max = api.settings.max_body.try_into().unwrap_or(usize::MAX);
        let server = DaprServer::new(GrpcApi::new(api.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX);
        Self { api, server }
    }

    /// Answers one request of the gRPC port.
    pub async fn serve<B>(mut self, mut req: Request<B>) -> Result<Response<Body>, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<body::BoxError> + Send + 'static,
    {
        let path = req.uri().path().to_owned();
        if !crate::auth::admit(
            self.api.settings.api_token.as_ref(),
            &Method::POST,
            &path,
            req.headers_mut(),
        ) {
            let missing = !req
                .headers()
                .contains_key(ferry_api::headers::DAPR_API_TOKEN);
            let detail = if missing {
                "missing api token in request metadata"
            } else {
                "authentication error: api token mismatch"
            };
            return Ok(status_response(http_status_error(
                StatusCode::UNAUTHORIZED,
                detail,
                MetadataMap::new(),
            )));
        }
        if !SERVED.contains(&path.as_str()) {
            return Ok(status_response(unimplemented(&path)));
        }
        let resp = match self.server.call(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        Ok(resp.map(body::boxed))
    }
}

/// What a method Ferry does not serve answers.
fn unimplemented(path: &str) -> Status {
    let method = path.trim_start_matches('/');
    let msg = if method.starts_with(SERVICE) {
        format!(
            "{method} is not implemented by Ferry: it serves service invocation only (InvokeService, GetMetadata)"
        )
    } else {
        format!("unknown method {method}: Ferry's gRPC API serves {SERVICE}")
    };
    Status::unimplemented(msg)
}

/// A status as a complete gRPC response (trailers-only).
fn status_response(status: Status) -> Response<Body> {
    let resp = status.into_http::<tonic::body::Body>();
    resp.map(body::boxed)
}

/// Dapr's `ErrorFromHTTPResponseCode`: the gRPC code for an HTTP status, the status text as the
/// message, and an `ErrorInfo` with the HTTP code and (the start of) the error body.
fn http_status_error(status: StatusCode, detail: &str, metadata: MetadataMap) -> Status {
    let code = code_from_http(status);
    let text = status.canonical_reason().unwrap_or("");
    let mut cut = detail.len().min(MAX_DETAIL);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let details = ErrorDetails::with_error_info(
        text,
        "dapr.io",
        [
            ("http.code".to_owned(), status.as_u16().to_string()),
            ("http.error_message".to_owned(), detail[..cut].to_owned()),
        ],
    );
    Status::with_error_details_and_metadata(code, text, details, metadata)
}

/// Dapr's `CodeFromHTTPStatus`.
pub fn code_from_http(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::Ok,
        408 => Code::Cancelled,
        500 => Code::Unknown,
        400 => Code::Internal,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Characters of a method that cannot stand in a URI path as they are. `?` stays: as in Dapr,
/// a method with a query carries it to the app.
const NOT_IN_PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Metadata that describes the gRPC call itself, not the invocation.
fn is_grpc_transport(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "te" | "user-agent" | "content-length"
    ) || (name.starts_with("grpc-") && name != "grpc-trace-bin")
}

/// HTTP headers Dapr renames with a `dapr-` prefix when it turns an HTTP app's answer into gRPC
/// metadata (`isPermanentHTTPHeader`).
fn is_permanent_http_header(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-charset"
            | "accept-language"
            | "accept-ranges"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "cache-control"
            | "content-type"
            | "content-length"
            | "cookie"
            | "date"
            | "expect"
            | "from"
            | "host"
            | "if-match"
            | "if-modified-since"
            | "if-none-match"
            | "if-schedule-tag-match"
            | "if-unmodified-since"
            | "max-forwards"
            | "origin"
            | "pragma"
            | "referer"
            | "via"
            | "warning"
    )
}

/// The HTTP request an app would have sent its sidecar for this invocation.
fn http_request(
    req: InvokeServiceRequest,
    metadata: &MetadataMap,
) -> Result<Request<Body>, Status> {
    let message = req.message.unwrap_or_default();
    let ext = message.http_extension.unwrap_or_default();
    // As daprd: the verb's name is the HTTP method, NONE included.
    let verb = Verb::try_from(ext.verb).unwrap_or(Verb::None).as_str_name();
    let method = Method::from_bytes(verb.as_bytes())
        .map_err(|_| Status::invalid_argument(format!("invalid HTTP verb {verb}")))?;
    let id = percent_encoding::utf8_percent_encode(&req.id, NOT_IN_PATH).to_string();
    let path = message.method.trim_start_matches('/');
    let mut uri = format!(
        "/v1.0/invoke/{id}/method/{}",
        percent_encoding::utf8_percent_encode(path, NOT_IN_PATH)
    );
    if !ext.querystring.is_empty() {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str(&ext.querystring);
    }
    let data = message.data.map(|any| any.value).unwrap_or_default();
    let mut http = Request::builder()
        .method(method)
        .uri(&uri)
        .body(body::full(data))
        .map_err(|e| {
            Status::invalid_argument(format!(
                "the invocation of '{}' method '{}' is not a valid request: {e}",
                req.id, message.method
            ))
        })?;
    let headers = http.headers_mut();
    for kv in metadata.clone().into_headers().iter() {
        let (name, value) = kv;
        if is_grpc_transport(name.as_str()) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if !message.content_type.is_empty() {
        let ct = HeaderValue::from_str(&message.content_type).map_err(|_| {
            Status::invalid_argument(format!(
                "content_type '{}' cannot be sent as a header",
                message.content_type
            ))
        })?;
        headers.insert(http::header::CONTENT_TYPE, ct);
    }
    Ok(http)
}

/// The app's headers as gRPC metadata, as Dapr converts them.
fn response_metadata(headers: &HeaderMap, status: StatusCode) -> MetadataMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if name.ends_with("-bin") || name == "traceparent" || name == "tracestate" {
            continue;
        }
        let key = if is_permanent_http_header(name) {
            format!("dapr-{name}")
        } else {
            name.to_owned()
        };
        if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
            out.append(key, value.clone());
        }
    }
    out.insert(
        "dapr-http-status",
        HeaderValue::from(status.as_u16() as u32),
    );
    MetadataMap::from_headers(out)
}

#[tonic::async_trait]
impl<R: Resolve, C: Connect> Dapr for GrpcApi<R, C> {
    async fn invoke_service(
        &self,
        request: tonic::Request<InvokeServiceRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let http = http_request(req, &metadata)?;
        let resp = match self.api.outbound.clone().call(http).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        if let Some(failed) = parts.extensions.get::<crate::invoke::SidecarFailure>() {
            return Err(Status::internal(failed.message.clone()));
        }
        let data = body
            .collect()
            .await
            .map_err(|e| {
                Status::internal(format!(
                    "failed to read the answer: {}",
                    crate::invoke::chain(e.as_ref())
                ))
            })?
            .to_bytes();
        let metadata = response_metadata(&parts.headers, parts.status);
        if !parts.status.is_success() {
            let detail = String::from_utf8_lossy(&data);
            return Err(http_status_error(parts.status, &detail, metadata));
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut resp = tonic::Response::new(InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type,
        });
        *resp.metadata_mut() = metadata;
        Ok(resp)
    }

    async fn get_metadata(
        &self,
        _request: tonic::Request<GetMetadataRequest>,
    ) -> Result<tonic::Response<GetMetadataResponse>, Status> {
        let doc = self.api.metadata_doc();
        Ok(tonic::Response::new(metadata_message(&doc)))
    }
}

/// The HTTP API's metadata document as Dapr's message.
fn metadata_message(doc: &serde_json::Value) -> GetMetadataResponse {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let i = |v: &serde_json::Value| v.as_i64().unwrap_or_default() as i32;
    let app = &doc["appConnectionProperties"];
    GetMetadataResponse {
        id: s(&doc["id"]),
        registered_components: Vec::new(),
        extended_metadata: doc["extended"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default(),
        http_endpoints: doc["httpEndpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| MetadataHttpEndpoint {
                        name: s(&e["name"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        app_connection_properties: app.is_object().then(|| AppConnectionProperties {
            port: i(&app["port"]),
            protocol: s(&app["protocol"]),
            channel_address: s(&app["channelAddress"]),
            max_concurrency: i(&app["maxConcurrency"]),
            health: app["health"]
                .is_object()
                .then(|| AppConnectionHealthProperties {
                    health_check_path: s(&app["health"]["healthCheckPath"]),
                    health_probe_interval: s(&app["health"]["healthProbeInterval"]),
                    health_probe_timeout: s(&app["health"]["healthProbeTimeout"]),
                    health_threshold: i(&app["health"]["healthThreshold"]),
                }),
        }),
        runtime_version: s(&doc["runtimeVersion"]),
        enabled_features: Vec::new(),
    }
}

impl<R, C> std::fmt::Debug for GrpcService<R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcService")
    }
}
