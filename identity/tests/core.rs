//! The identity core end to end in one process: a generated CA signs a sidecar's CSR, two
//! sidecars' configs complete a real mTLS handshake over TCP and see each other's SPIFFE IDs,
//! and Sentry's contract carries a request from `SentryClient` to `SentryService`.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use ferry_api::{AppId, Namespace, SpiffeId, TrustDomain};
use ferry_identity::{
    Authority, CaMaterial, Credentials, PendingKey, TrustBundle,
    sentry::{
        self, Proof, Refusal, SentryClient, SentryService, TokenValidator, Validated, Validator,
    },
    tls,
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn id(td: &str, ns: &str, app: &str) -> SpiffeId {
    SpiffeId::new(
        TrustDomain::new(td).unwrap(),
        Namespace::new(ns).unwrap(),
        AppId::new(app).unwrap(),
    )
}

fn ca() -> (CaMaterial, Authority) {
    let m = CaMaterial::generate("public", Duration::from_secs(3600)).unwrap();
    let a = Authority::from_material(&m, Duration::from_secs(600)).unwrap();
    (m, a)
}

fn sidecar(a: &Authority, who: &SpiffeId) -> Arc<Credentials> {
    let bundle = TrustBundle::from_pem(a.trust_anchors_pem()).unwrap();
    let key = PendingKey::generate(who).unwrap();
    let signed = a.sign(key.csr_pem().as_bytes(), who).unwrap();
    let svid = key.complete(&signed.chain_pem, who, &bundle).unwrap();
    assert_eq!(&svid.id, who);
    let creds = Credentials::new(bundle);
    creds.set_svid(svid);
    creds
}

#[test]
fn the_ca_signs_the_identity_it_is_told_not_the_one_the_csr_asks_for() {
    let (_, a) = ca();
    let asked = id("public", "prod", "payments");
    let told = id("public", "prod", "checkout");
    let key = PendingKey::generate(&asked).unwrap();
    let signed = a.sign(key.csr_pem().as_bytes(), &told).unwrap();
    let bundle = TrustBundle::from_pem(a.trust_anchors_pem()).unwrap();
    let err = key
        .complete(&signed.chain_pem, &asked, &bundle)
        .unwrap_err();
    assert!(
        err.to_string().contains("spiffe://public/ns/prod/checkout"),
        "{err}"
    );
    let left = signed
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
}

#[test]
fn a_certificate_from_another_ca_is_untrusted() {
    let (_, a) = ca();
    let (_, other) = ca();
    let who = id("public", "prod", "cart");
    let key = PendingKey::generate(&who).unwrap();
    let signed = other.sign(key.csr_pem().as_bytes(), &who).unwrap();
    let bundle = TrustBundle::from_pem(a.trust_anchors_pem()).unwrap();
    let err = key.complete(&signed.chain_pem, &who, &bundle).unwrap_err();
    assert!(
        matches!(err, ferry_identity::SvidError::Untrusted(_)),
        "{err}"
    );
}

async fn handshake(
    server: Arc<Credentials>,
    client: Arc<Credentials>,
) -> Result<(Option<SpiffeId>, Option<SpiffeId>), std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&server));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await?;
        let peer = tls::peer_identity(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(peer)
    });
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(tls::client_config(&client))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let seen = tls::peer_identity(tls.get_ref().1.peer_certificates());
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    let caller = served.await.unwrap()?;
    Ok((caller, seen))
}

#[tokio::test]
async fn two_sidecars_see_each_others_verified_identity() {
    let (_, a) = ca();
    let (checkout, payments) = (
        id("public", "prod", "checkout"),
        id("public", "prod", "payments"),
    );
    let (caller, callee) = handshake(sidecar(&a, &payments), sidecar(&a, &checkout))
        .await
        .unwrap();
    assert_eq!(caller, Some(checkout));
    assert_eq!(callee, Some(payments));
}

#[tokio::test]
async fn a_client_without_a_trusted_certificate_is_refused() {
    let (_, a) = ca();
    let (_, b) = ca();
    let payments = sidecar(&a, &id("public", "prod", "payments"));
    let stranger = sidecar(&b, &id("public", "prod", "checkout"));
    assert!(handshake(payments.clone(), stranger).await.is_err());
    // No certificate at all.
    let bare = Credentials::new(TrustBundle::from_pem(a.trust_anchors_pem()).unwrap());
    assert!(handshake(payments, bare).await.is_err());
}

#[tokio::test]
async fn a_rotated_bundle_takes_effect_on_the_next_handshake() {
    let (m1, a1) = ca();
    let (m2, a2) = ca();
    let both = format!("{}{}", m1.root_cert, m2.root_cert);
    let server = sidecar(&a1, &id("public", "prod", "payments"));
    let client = sidecar(&a2, &id("public", "prod", "checkout"));
    assert!(handshake(server.clone(), client.clone()).await.is_err());
    // Both sides trust both roots (the first step of a rotation).
    server.set_bundle(TrustBundle::from_pem(&both).unwrap());
    client.set_bundle(TrustBundle::from_pem(&both).unwrap());
    let _ = a1;
    handshake(server, client).await.unwrap();
}

struct Fixed(Result<TrustDomain, String>);

impl Validator for Fixed {
    fn kind(&self) -> TokenValidator {
        TokenValidator::Insecure
    }
    async fn validate(&self, req: &sentry::SignCertificateRequest) -> Result<Validated, Refusal> {
        assert_eq!(req.token, "the-token");
        self.0
            .clone()
            .map(|trust_domain| Validated { trust_domain })
            .map_err(Refusal)
    }
}

async fn ca_server(validator: Fixed, sentry_id: &SpiffeId) -> (String, Arc<Credentials>) {
    let (_, a) = ca();
    let (chain, key) = a
        .serving_certificate(sentry_id, &["localhost".into()])
        .unwrap();
    let creds = Credentials::new(TrustBundle::from_pem(a.trust_anchors_pem()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = SentryService::new(Arc::new(ArcSwap::from_pointee(a)), validator);
    let config = tls::fixed_server_config(chain, key).unwrap();
    tokio::spawn(sentry::serve(
        listener,
        config,
        service,
        std::future::pending(),
    ));
    (addr, creds)
}

fn sentry_id() -> SpiffeId {
    id("cluster.local", "ferry-system", "dapr-sentry")
}

#[tokio::test]
async fn sentrys_contract_carries_a_request_and_its_refusal() {
    let proof = Proof {
        token: "the-token".into(),
        validator: TokenValidator::Insecure,
    };
    let (app, ns) = (AppId::new("cart").unwrap(), Namespace::new("shop").unwrap());

    let (addr, creds) = ca_server(
        Fixed(Ok(TrustDomain::new("example.org").unwrap())),
        &sentry_id(),
    )
    .await;
    let svid = SentryClient::new(&addr, sentry_id(), creds)
        .request(&app, &ns, &proof)
        .await
        .unwrap();
    assert_eq!(svid.id.to_string(), "spiffe://example.org/ns/shop/cart");

    let (addr, creds) = ca_server(
        Fixed(Err("pod service account mismatch".into())),
        &sentry_id(),
    )
    .await;
    let err = SentryClient::new(&addr, sentry_id(), creds)
        .request(&app, &ns, &proof)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, sentry::SentryError::Refused { code: tonic::Code::PermissionDenied, message } if message == "pod service account mismatch"),
        "{err}"
    );
}

#[tokio::test]
async fn a_ca_with_another_spiffe_id_is_not_trusted() {
    let proof = Proof {
        token: "the-token".into(),
        validator: TokenValidator::Insecure,
    };
    let impostor = id("cluster.local", "default", "dapr-sentry");
    let (addr, creds) = ca_server(Fixed(Ok(TrustDomain::default())), &impostor).await;
    let err = SentryClient::new(&addr, sentry_id(), creds)
        .request(
            &AppId::new("cart").unwrap(),
            &Namespace::new("shop").unwrap(),
            &proof,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not spiffe://cluster.local/ns/ferry-system/dapr-sentry"),
        "{err}"
    );
}
