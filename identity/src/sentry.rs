//! Dapr Sentry's `dapr.proto.sentry.v1.CA/SignCertificate`, both ways.
//!
//! - [`SentryClient`]: what ferryd calls to get its SVID, from Ferry's CA or from Dapr's own
//!   Sentry (a cluster migrating keeps one mesh). As daprd does, it dials per request over TLS
//!   that trusts only the trust anchors and accepts only the CA's SPIFFE ID
//!   (`spiffe://<control-plane-trust-domain>/ns/<control-plane-namespace>/dapr-sentry`).
//! - [`SentryService`]: Ferry's CA over the signing core ([`crate::ca::Authority`]), with the
//!   proof of identity checked by a [`Validator`] (Kubernetes TokenReview in the operator; the
//!   tests use their own).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use ferry_api::{AppId, Namespace, SpiffeId, TrustDomain};
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::{Request, Response, Status};

use crate::{
    ca::Authority,
    svid::{PendingKey, Svid},
    tls::{self, Credentials},
    trust::TrustBundle,
};

/// The generated messages, client and server.
pub mod proto {
    tonic::include_proto!("dapr.proto.sentry.v1");
}

pub use proto::{
    SignCertificateRequest, SignCertificateResponse, sign_certificate_request::TokenValidator,
};

/// The app ID in the CA's own SPIFFE ID, as Dapr names its Sentry.
pub const SENTRY_APP_ID: &str = "dapr-sentry";

/// The CA's SPIFFE ID, which its serving certificate carries.
pub fn sentry_id(trust_domain: &TrustDomain, namespace: &Namespace) -> SpiffeId {
    SpiffeId::new(
        trust_domain.clone(),
        namespace.clone(),
        AppId::new(SENTRY_APP_ID).expect("a valid app ID"),
    )
}

/// What a workload sends as proof of who it is.
#[derive(Clone)]
pub struct Proof {
    pub token: String,
    pub validator: TokenValidator,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("validator", &self.validator)
            .finish_non_exhaustive()
    }
}

/// A client of any server of Sentry's contract.
#[derive(Clone)]
pub struct SentryClient {
    /// `host:port`.
    address: String,
    sentry: SpiffeId,
    credentials: Arc<Credentials>,
    timeout: Duration,
}

impl SentryClient {
    /// `credentials` holds the trust anchors the CA's certificate must chain to (no SVID is
    /// presented: the proof is the token).
    pub fn new(
        address: impl Into<String>,
        sentry: SpiffeId,
        credentials: Arc<Credentials>,
    ) -> Self {
        Self {
            address: address.into(),
            sentry,
            credentials,
            timeout: Duration::from_secs(3),
        }
    }

    /// The trust anchors the CA's certificate is checked against (swapped on rotation).
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks for an SVID for `app_id` in `namespace`, with a fresh key.
    pub async fn request(
        &self,
        app_id: &AppId,
        namespace: &Namespace,
        proof: &Proof,
    ) -> Result<Svid, SentryError> {
        // The CA decides the trust domain; the key's CSR names the one we know of.
        let asked = SpiffeId::new(TrustDomain::default(), namespace.clone(), app_id.clone());
        let key = PendingKey::generate(&asked).map_err(|e| SentryError::Answer(e.to_string()))?;
        let req = SignCertificateRequest {
            id: app_id.to_string(),
            token: proof.token.clone(),
            trust_domain: String::new(),
            namespace: namespace.to_string(),
            certificate_signing_request: key.csr_pem().as_bytes().to_vec(),
            token_validator: proof.validator as i32,
            jwt_audiences: Vec::new(),
        };
        let resp = tokio::time::timeout(self.timeout, self.call(req))
            .await
            .map_err(|_| SentryError::Connect {
                address: self.address.clone(),
                error: format!("no answer within {:?}", self.timeout),
            })??;
        let chain = String::from_utf8(resp.workload_certificate)
            .map_err(|_| SentryError::Answer("the certificate is not PEM text".into()))?;
        // The anchors in the answer are informational: trust stays what this sidecar was given.
        let bundle = self.credentials.bundle();
        key.complete(&chain, &asked, &bundle)
            .map_err(|e| SentryError::Answer(e.to_string()))
    }

    async fn call(
        &self,
        req: SignCertificateRequest,
    ) -> Result<SignCertificateResponse, SentryError> {
        let connect_error = |error: String| SentryError::Connect {
            address: self.address.clone(),
            error,
        };
        let config = tls::sentry_client_config(&self.credentials);
        let (address, sentry) = (self.address.clone(), self.sentry.clone());
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let (config, address, sentry) = (config.clone(), address.clone(), sentry.clone());
            async move { connect_sentry(&address, &sentry, config).await }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| connect_error(e.to_string()))?
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(error_chain(&e)))?;
        let mut client = proto::ca_client::CaClient::new(channel);
        let resp = client
            .sign_certificate(Request::new(req))
            .await
            .map_err(|status| {
                // A status tonic made from a failed connection is not the CA's answer.
                let transport = matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
                );
                if let (true, Some(cause)) = (transport, std::error::Error::source(&status)) {
                    connect_error(error_chain(cause))
                } else {
                    SentryError::Refused {
                        code: status.code(),
                        message: status.message().to_owned(),
                    }
                }
            })?;
        Ok(resp.into_inner())
    }
}

async fn connect_sentry(
    address: &str,
    sentry: &SpiffeId,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(address).await?;
    let _ = tcp.set_nodelay(true);
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    match tls::peer_identity(tls.get_ref().1.peer_certificates()) {
        Some(id) if &id == sentry => Ok(hyper_util::rt::TokioIo::new(tls)),
        other => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the CA at {address} is {}, not {sentry}",
                other.map_or_else(|| "without a SPIFFE ID".to_owned(), |id| id.to_string())
            ),
        )),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[derive(Debug, Error, Clone)]
pub enum SentryError {
    #[error("cannot reach the CA at {address}: {error}")]
    Connect { address: String, error: String },
    #[error("the CA refused the certificate request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the CA's answer is unusable: {0}")]
    Answer(String),
}

/// Who a validated request is: the CA signs `spiffe://<trust_domain>/ns/<namespace>/<id>`.
#[derive(Debug, Clone)]
pub struct Validated {
    pub trust_domain: TrustDomain,
}

/// Why a request was refused: sent to the workload as `PermissionDenied` and logged by the CA.
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Checks a request's proof of identity.
pub trait Validator: Send + Sync + 'static {
    /// Which `token_validator` this one is.
    fn kind(&self) -> TokenValidator;
    fn validate(
        &self,
        req: &SignCertificateRequest,
    ) -> impl Future<Output = Result<Validated, Refusal>> + Send;
}

/// Ferry's CA on Sentry's contract.
pub struct SentryService<V> {
    authority: Arc<ArcSwap<Authority>>,
    validator: V,
    metrics: Option<Arc<dyn Fn(Outcome) + Send + Sync>>,
}

/// What became of a request, for the CA's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Signed,
    Refused,
    Invalid,
}

impl<V: Validator> SentryService<V> {
    pub fn new(authority: Arc<ArcSwap<Authority>>, validator: V) -> Self {
        Self {
            authority,
            validator,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, record: Arc<dyn Fn(Outcome) + Send + Sync>) -> Self {
        self.metrics = Some(record);
        self
    }

    fn record(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m(outcome);
        }
    }

    async fn sign(&self, req: SignCertificateRequest) -> Result<SignCertificateResponse, Status> {
        let who = format!("{}/{}", req.namespace, req.id);
        let validator =
            TokenValidator::try_from(req.token_validator).unwrap_or(TokenValidator::Unknown);
        if validator != TokenValidator::Unknown && validator != self.validator.kind() {
            self.record(Outcome::Invalid);
            tracing::info!(%who, ?validator, "refused a certificate request: the requested validator is not enabled");
            return Err(Status::invalid_argument(
                "the requested validator is not enabled",
            ));
        }
        let app_id = AppId::new(req.id.clone()).map_err(|e| {
            self.record(Outcome::Invalid);
            Status::invalid_argument(format!("id {:?}: {e}", req.id))
        })?;
        let namespace = Namespace::new(req.namespace.clone()).map_err(|e| {
            self.record(Outcome::Invalid);
            Status::invalid_argument(format!("namespace {:?}: {e}", req.namespace))
        })?;
        let validated = match self.validator.validate(&req).await {
            Ok(v) => v,
            Err(refusal) => {
                self.record(Outcome::Refused);
                tracing::warn!(%who, reason = %refusal, "refused a certificate request");
                return Err(Status::permission_denied(refusal.0));
            }
        };
        let id = SpiffeId::new(validated.trust_domain, namespace, app_id);
        let authority = self.authority.load();
        let signed = authority
            .sign(&req.certificate_signing_request, &id)
            .map_err(|e| {
                self.record(Outcome::Invalid);
                tracing::info!(%who, error = %e, "refused a certificate request");
                match e {
                    crate::ca::CaError::Csr(_) => Status::invalid_argument(e.to_string()),
                    _ => Status::internal("failed to sign certificate"),
                }
            })?;
        self.record(Outcome::Signed);
        tracing::debug!(%id, "signed a workload certificate");
        let valid_until = signed
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(SignCertificateResponse {
            workload_certificate: signed.chain_pem.into_bytes(),
            trust_chain_certificates: vec![signed.trust_anchors_pem.into_bytes()],
            valid_until: Some(prost_types::Timestamp {
                seconds: valid_until.as_secs() as i64,
                nanos: 0,
            }),
            jwt: None,
            per_audience_jwts: Default::default(),
        })
    }
}

#[tonic::async_trait]
impl<V: Validator> proto::ca_server::Ca for SentryService<V> {
    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        self.sign(request.into_inner()).await.map(Response::new)
    }
}

/// Serves `service` on `listener` over TLS with `config` (the CA's serving certificate) until
/// `shutdown` resolves.
pub async fn serve<V: Validator>(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    service: SentryService<V>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<TlsIo>>(64);
    let accept = async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsIo { inner: tls, peer })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "a TLS handshake with the CA failed")
                    }
                    Err(_) => tracing::debug!(%peer, "a TLS handshake with the CA timed out"),
                }
            });
        }
    };
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    tokio::select! {
        served = tonic::transport::Server::builder()
            .add_service(proto::ca_server::CaServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown) => served,
        () = accept => Ok(()),
    }
}

/// A TLS connection the CA accepted.
pub struct TlsIo {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sanity for callers that build a bundle from a Sentry answer.
pub fn bundle_of(resp: &SignCertificateResponse) -> Result<TrustBundle, crate::TrustError> {
    let pem: String = resp
        .trust_chain_certificates
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    TrustBundle::from_pem(&pem)
}
