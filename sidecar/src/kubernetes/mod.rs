//! Kubernetes mode: app IDs and HTTPEndpoints through the Kubernetes API.
//!
//! * [`index`]: the pure endpoint index of one namespace (RoutingTable + EndpointSlices →
//!   snapshots), fed watch events;
//! * [`watch`]: the watches of one namespace and the task that feeds its index;
//! * [`resolver`]: [`KubeResolver`], the lookups the proxy makes, and which namespaces are
//!   watched;
//! * [`httpendpoints`]: the caller's namespace's HTTPEndpoints, with their Secrets.
//!
//! The API client is built from the usual inference (in a pod: the service-account token and
//! `KUBERNETES_SERVICE_HOST`/`PORT`; elsewhere `$KUBECONFIG`), which reads files only: the
//! sidecar starts and serves whether or not the API server answers.

pub mod httpendpoints;
pub mod index;
pub mod resolver;
pub mod watch;

pub use resolver::KubeResolver;

use kube::Client;

/// A client for the Kubernetes API and where it points (for messages).
#[derive(Clone)]
pub struct ApiClient {
    pub client: Client,
    pub url: String,
}

/// Why kubernetes mode has no API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no Kubernetes API configuration (in a pod: the service-account token and KUBERNETES_SERVICE_HOST/PORT; elsewhere: $KUBECONFIG): {0}"
    )]
    Infer(String),
    #[error("cannot build a Kubernetes API client for {url}: {reason}")]
    Build { url: String, reason: String },
}

/// Builds the API client from the environment, without contacting the API server.
pub async fn connect() -> Result<ApiClient, ClientError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| ClientError::Infer(crate::invoke::error::chain(&e)))?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| ClientError::Build {
        url: url.clone(),
        reason: crate::invoke::error::chain(&e),
    })?;
    Ok(ApiClient { client, url })
}
