//! mTLS between sidecars with rustls: each side presents its SVID and accepts only a peer whose
//! certificate chains to the current trust anchors and carries one SPIFFE ID. Both the SVID and
//! the anchors are swapped in place ([`Credentials`]), so renewal and root rotation take effect
//! on the next handshake and never touch an established connection.
//!
//! The verifiers check the chain and the SPIFFE shape; *which* identity is acceptable is the
//! caller's business after the handshake: the callee reads the caller's app ID and namespace
//! from [`peer_identity`], the caller compares the callee's with the app it meant to call. One
//! client config serves every peer that way, so TLS sessions resume across connections.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use ferry_api::SpiffeId;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{svid::Svid, trust::TrustBundle};

/// The SVID this sidecar presents and the anchors it trusts, both replaceable at any time.
#[derive(Debug)]
pub struct Credentials {
    svid: ArcSwapOption<Svid>,
    bundle: ArcSwap<TrustBundle>,
}

impl Credentials {
    pub fn new(bundle: TrustBundle) -> Arc<Self> {
        Arc::new(Self {
            svid: ArcSwapOption::empty(),
            bundle: ArcSwap::from_pointee(bundle),
        })
    }

    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.load_full()
    }

    pub fn set_svid(&self, svid: Svid) {
        self.svid.store(Some(Arc::new(svid)));
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.load_full()
    }

    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Checks `chain` (leaf first) against `bundle` for `usage`, now, and returns the leaf's
/// SPIFFE ID.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verify(leaf, intermediates, bundle, usage, UnixTime::now())
}

fn verify(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    usage: webpki::KeyUsage,
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
    cert.verify_for_usage(
        algorithms().all,
        bundle.trust_anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(pki_error)?;
    leaf_identity(leaf).map_err(|e| {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(e),
        )))
    })
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => C::BadEncoding,
        E::CertExpired { .. } | E::InvalidCertValidity => C::Expired,
        E::CertNotValidYet { .. } => C::NotValidYet,
        E::UnknownIssuer => C::UnknownIssuer,
        E::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// The SPIFFE ID of a certificate (its leaf).
pub fn leaf_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, crate::svid::SvidError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| crate::svid::SvidError::Chain(format!("not an X.509 certificate: {e}")))?;
    crate::svid::spiffe_id(&x509)
}

/// The verified identity of a TLS peer, from the certificates the handshake accepted.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    leaf_identity(certs?.first()?).ok()
}

#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.svid().map(|s| s.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct PeerVerifier {
    credentials: Arc<Credentials>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = self.credentials.bundle();
        verify(
            end_entity,
            intermediates,
            &bundle,
            webpki::KeyUsage::server_auth(),
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.credentials.bundle();
        verify(
            end_entity,
            intermediates,
            &bundle,
            webpki::KeyUsage::client_auth(),
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn verifier(credentials: &Arc<Credentials>) -> Arc<PeerVerifier> {
    Arc::new(PeerVerifier {
        credentials: credentials.clone(),
        algorithms: algorithms(),
    })
}

/// Every TLS connection here carries HTTP/2 (gRPC to the CA, calls between sidecars), and says so
/// with ALPN `h2`, as RFC 9113 asks: gRPC-Go (Dapr's Sentry and daprd) refuses a TLS peer that
/// negotiates no protocol.
const ALPN_H2: &[u8] = b"h2";

fn h2_server(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

fn h2_client(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

/// The internal port's config: a client certificate is required.
pub fn server_config(credentials: &Arc<Credentials>) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_client_cert_verifier(verifier(credentials))
        .with_cert_resolver(Arc::new(Resolver(credentials.clone())));
    Arc::new(h2_server(config))
}

/// The config for connections to peer sidecars.
pub fn client_config(credentials: &Arc<Credentials>) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier(credentials))
        .with_client_cert_resolver(Arc::new(Resolver(credentials.clone())));
    Arc::new(h2_client(config))
}

/// The config for the CA's clients: the CA's certificate must chain to the anchors; no client
/// certificate (the proof is the token).
pub fn sentry_client_config(credentials: &Arc<Credentials>) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier(credentials))
        .with_no_client_auth();
    Arc::new(h2_client(config))
}

/// A server certificate that can be replaced while serving (the CA's own, renewed before it
/// expires and re-issued when the issuer changes).
#[derive(Debug)]
pub struct ServingCert(ArcSwap<CertifiedKey>);

impl ServingCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self(ArcSwap::from_pointee(certified(
            chain, key,
        )?))))
    }

    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        self.0.store(Arc::new(certified(chain, key)?));
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    Ok(CertifiedKey::new(
        chain,
        rustls::crypto::ring::sign::any_supported_type(key)?,
    ))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A serving config over a replaceable certificate, no client certificate asked.
pub fn serving_config(cert: &Arc<ServingCert>) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    Arc::new(h2_server(config))
}

/// A serving config with a fixed certificate (the CA's own), no client certificate asked.
pub fn fixed_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(h2_server(config)))
}
