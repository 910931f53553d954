//! Container probes as the kubelet runs them: httpGet (HTTP, or HTTPS without certificate
//! checks) and tcpSocket against the pod IP, exec inside the container's namespaces; gRPC
//! probes are approximated by a TCP connect. One task per probe honours initialDelaySeconds,
//! periodSeconds, timeoutSeconds and the success and failure thresholds, and reports only
//! changes of the result.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

/// Where a probe goes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The pod IP (the node IP for hostNetwork pods).
    pub host: IpAddr,
    /// The container's named ports.
    pub ports: BTreeMap<String, u16>,
    /// The container's PID, whose namespaces exec probes enter.
    pub pid: u32,
    pub env: BTreeMap<String, String>,
    pub nsenter: PathBuf,
}

/// The timing of a probe, with the API's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe, kind: ProbeKind) -> Self {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            // Liveness and startup probes must have a success threshold of 1.
            success_threshold: match kind {
                ProbeKind::Readiness => count(probe.success_threshold, 1),
                _ => 1,
            },
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Counts consecutive results and says when the reported state flips.
#[derive(Debug, Default)]
pub struct Thresholds {
    successes: u32,
    failures: u32,
    reported: Option<bool>,
}

impl Thresholds {
    /// The new state to report, if this result changes it.
    pub fn record(&mut self, ok: bool, timing: &Timing) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let state = if self.successes >= timing.success_threshold {
            true
        } else if self.failures >= timing.failure_threshold {
            false
        } else {
            return None;
        };
        (self.reported != Some(state)).then(|| {
            self.reported = Some(state);
            state
        })
    }
}

/// Runs the probe until the task is aborted, calling `report(ok, message)` on every change.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    target: ProbeTarget,
    report: impl Fn(bool, Option<String>) + Send,
) {
    let timing = Timing::of(&probe, kind);
    tokio::time::sleep(timing.initial_delay).await;
    let mut thresholds = Thresholds::default();
    loop {
        let result = match tokio::time::timeout(timing.timeout, once(&probe, &target)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", timing.timeout)),
        };
        if let Err(message) = &result {
            tracing::debug!(probe = kind.as_str(), %message, "probe failed");
        }
        if let Some(state) = thresholds.record(result.is_ok(), &timing) {
            report(state, result.err());
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// One probe attempt; the error is the message the kubelet would record.
pub async fn once(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    if let Some(http) = &probe.http_get {
        return http_get(http, target).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .as_deref()
            .and_then(|h| h.parse().ok())
            .unwrap_or(target.host);
        let port = port(&tcp.port, target)?;
        return TcpStream::connect((host, port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("bad port {}", grpc.port))?;
        return TcpStream::connect((target.host, port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {}:{port}: {e}", target.host));
    }
    if let Some(exec) = &probe.exec {
        return exec_probe(exec.command.as_deref().unwrap_or_default(), target).await;
    }
    Err("the probe has no handler".to_owned())
}

fn port(port: &IntOrString, target: &ProbeTarget) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("bad port {n}")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => target
                .ports
                .get(name)
                .copied()
                .ok_or_else(|| format!("the container has no port named {name:?}")),
        },
    }
}

async fn http_get(action: &HTTPGetAction, target: &ProbeTarget) -> Result<(), String> {
    let host: IpAddr = action
        .host
        .as_deref()
        .and_then(|h| h.parse().ok())
        .unwrap_or(target.host);
    let port = port(&action.port, target)?;
    let path = action
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let https = action.scheme.as_deref() == Some("HTTPS");
    let url = format!(
        "{}://{}/{}",
        if https { "https" } else { "http" },
        std::net::SocketAddr::new(host, port),
        path.trim_start_matches('/')
    );
    let mut request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::USER_AGENT, "kube-probe/1.36")
        .header(http::header::ACCEPT, "*/*");
    for h in action.http_headers.iter().flatten() {
        request = request.header(h.name.as_str(), h.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get {url:?}: dial tcp: {e}"))?;
    let status = if https {
        let connector = tokio_rustls::TlsConnector::from(insecure_tls());
        let name = rustls::pki_types::ServerName::IpAddress(host.into());
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("Get {url:?}: tls: {e}"))?;
        send(tls, request).await
    } else {
        send(stream, request).await
    }
    .map_err(|e| format!("Get {url:?}: {e}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn send<S>(io: S, request: http::Request<Empty<Bytes>>) -> Result<u16, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let response = sender.send_request(request).await;
    conn.abort();
    Ok(response?.status().as_u16())
}

async fn exec_probe(command: &[String], target: &ProbeTarget) -> Result<(), String> {
    if command.is_empty() {
        return Err("the exec probe has no command".to_owned());
    }
    let pid = target.pid.to_string();
    let output = tokio::process::Command::new(&target.nsenter)
        .args(["--target", &pid, "--mount", "--uts", "--net", "--"])
        .args(command)
        .env_clear()
        .envs(&target.env)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(format!(
            "command {command:?} exited with {}: {}",
            output.status,
            text.trim()
        ))
    }
}

/// Probes do not check certificates, as the kubelet's do not.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_report_only_changes() {
        let t = timing(2, 3);
        let mut th = Thresholds::default();
        assert_eq!(th.record(true, &t), None);
        assert_eq!(th.record(true, &t), Some(true));
        assert_eq!(th.record(true, &t), None);
        assert_eq!(th.record(false, &t), None);
        assert_eq!(th.record(false, &t), None);
        assert_eq!(th.record(false, &t), Some(false));
        assert_eq!(th.record(false, &t), None);
        assert_eq!(th.record(true, &t), None);
        assert_eq!(th.record(true, &t), Some(true));
    }

    #[test]
    fn timing_defaults_match_the_api() {
        let probe = Probe::default();
        assert_eq!(
            Timing::of(&probe, ProbeKind::Readiness),
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3
            }
        );
        let probe = Probe {
            success_threshold: Some(3),
            ..Default::default()
        };
        assert_eq!(Timing::of(&probe, ProbeKind::Liveness).success_threshold, 1);
    }

    fn target(ports: &[(&str, u16)]) -> ProbeTarget {
        ProbeTarget {
            host: "127.0.0.1".parse().unwrap(),
            ports: ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            pid: 0,
            env: BTreeMap::new(),
            nsenter: "/usr/bin/nsenter".into(),
        }
    }

    /// A one-shot HTTP server answering with `status`; returns its port and the request seen.
    async fn server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, task)
    }

    fn http_probe(port: IntOrString, path: &str) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port,
                http_headers: Some(vec![k8s_openapi::api::core::v1::HTTPHeader {
                    name: "X-Probe".into(),
                    value: "yes".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_probes_succeed_below_400_and_use_named_ports() {
        let (port, seen) = server(204).await;
        let probe = http_probe(IntOrString::String("http".into()), "/healthz");
        once(&probe, &target(&[("http", port)])).await.unwrap();
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.to_ascii_lowercase().contains("x-probe: yes"),
            "{request}"
        );
        assert!(request.contains("kube-probe/"), "{request}");

        let (port, _) = server(503).await;
        let probe = http_probe(IntOrString::Int(port.into()), "/");
        let err = once(&probe, &target(&[])).await.unwrap_err();
        assert!(err.contains("statuscode: 503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probes_connect() {
        let tcp = |port: u16| Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(port.into()),
                host: None,
            }),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        once(&tcp(open), &target(&[])).await.unwrap();
        // Bound but not listening: refused, and no other test can take the port meanwhile.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = closed.local_addr().unwrap().port();
        let err = once(&tcp(closed), &target(&[])).await.unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{closed}")), "{err}");
    }
}
