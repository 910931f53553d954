//! What the injector does through the Kubernetes API: keeps its CA and serving certificate in a
//! Secret (bootstrap mode) and its CA in the `caBundle` of its MutatingWebhookConfiguration.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use base64::Engine as _;
use futures_util::StreamExt as _;
use json_patch::{
    AddOperation, PatchOperation, TestOperation,
    jsonptr::{PointerBuf, Token},
};
use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{
    certs::{self, CaPem, Sans},
    tls::{CertStore, TlsMaterial, certified_key, provider},
};

/// The field manager of every write.
pub const MANAGER: &str = "ferry-injector";
pub const KEY_CA_CERT: &str = "ca.crt";
pub const KEY_CA_KEY: &str = "ca.key";
pub const KEY_TLS_CERT: &str = "tls.crt";
pub const KEY_TLS_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write Secret {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("Secret {namespace}/{name} kept changing under us; giving up for now")]
    Contended { namespace: String, name: String },
}

/// Where bootstrap mode keeps its certificates.
#[derive(Debug, Clone)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

/// Makes the Secret hold a fresh CA and a fresh serving certificate for `sans`, reusing what is
/// there when it is still good, and returns the serving material. Safe with several replicas:
/// creation and replacement are conditional, and a lost race re-reads.
pub async fn ensure_secret(
    client: &Client,
    at: &SecretRef,
    sans: &Sans,
) -> Result<TlsMaterial, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let write_err = |source| BootstrapError::Write {
        namespace: at.namespace.clone(),
        name: at.name.clone(),
        source,
    };
    for _ in 0..5 {
        let now = OffsetDateTime::now_utc();
        let existing = api
            .get_opt(&at.name)
            .await
            .map_err(|source| BootstrapError::Get {
                namespace: at.namespace.clone(),
                name: at.name.clone(),
                source,
            })?;
        let data = existing
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default();
        let (ca, ca_changed) = match (text(&data, KEY_CA_CERT), text(&data, KEY_CA_KEY)) {
            (Some(cert), Some(key)) if certs::ca_is_fresh(&cert, now) => {
                (CaPem { cert, key }, false)
            }
            _ => (certs::new_ca(now)?, true),
        };
        let current = match (text(&data, KEY_TLS_CERT), text(&data, KEY_TLS_KEY)) {
            (Some(cert_pem), Some(key_pem)) if !ca_changed => Some(TlsMaterial {
                cert_pem,
                key_pem,
                ca_pem: Some(ca.cert.clone()),
            }),
            _ => None,
        };
        if let Some(m) = current.filter(|m| {
            certs::leaf_is_fresh(&m.cert_pem, sans, now) && certified_key(&provider(), m).is_ok()
        }) {
            return Ok(m);
        }
        let leaf = certs::issue(&ca, sans, now)?;
        let secret = secret(at, &ca, &leaf, existing.as_ref());
        let result = match &existing {
            None => api.create(&pp, &secret).await,
            Some(_) => api.replace(&at.name, &pp, &secret).await,
        };
        match result {
            Ok(_) => {
                tracing::info!(secret = %format!("{}/{}", at.namespace, at.name),
                    new_ca = ca_changed, "stored a new serving certificate");
                return Ok(leaf);
            }
            // Another replica won the race: read what it wrote.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(write_err(e)),
        }
    }
    Err(BootstrapError::Contended {
        namespace: at.namespace.clone(),
        name: at.name.clone(),
    })
}

fn secret(at: &SecretRef, ca: &CaPem, leaf: &TlsMaterial, existing: Option<&Secret>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(at.name.clone()),
            namespace: Some(at.namespace.clone()),
            // Replacing is conditional on the version we read.
            resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                MANAGER.to_owned(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (KEY_CA_CERT.to_owned(), bytes(&ca.cert)),
            (KEY_CA_KEY.to_owned(), bytes(&ca.key)),
            (KEY_TLS_CERT.to_owned(), bytes(&leaf.cert_pem)),
            (KEY_TLS_KEY.to_owned(), bytes(&leaf.key_pem)),
        ])),
        ..Default::default()
    }
}

/// Re-checks the Secret every `every`: renews a certificate close to expiry and picks up what
/// another replica wrote. Errors are logged and retried; the served certificate stays.
pub async fn keep_secret(
    client: Client,
    at: SecretRef,
    sans: Sans,
    store: Arc<CertStore>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match ensure_secret(&client, &at, &sans).await {
            Ok(m) if store.subscribe().borrow().as_ref() != Some(&m) => {
                if let Err(e) = store.install(m, "secret") {
                    tracing::error!(error = %e, "the certificate in the Secret is not usable");
                } else {
                    tracing::info!("serving certificate replaced from the Secret");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the certificate Secret"),
        }
    }
}

/// Where the webhook configuration's caBundle stands, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleState {
    /// The injector does not manage a caBundle (files mode without a CA file, or no
    /// configuration name): nothing to wait for.
    NotManaged,
    /// Not there yet, and why.
    Pending(String),
    /// Every webhook of the configuration carries the CA.
    InPlace,
}

pub type SharedBundleState = Arc<ArcSwap<BundleState>>;

/// The JSON patch that sets `ca` on every webhook of `config` that lacks it; `None` when all
/// carry it. Each change is guarded by a test of the webhook's name, so a concurrent edit that
/// reorders the list makes the patch fail instead of touching the wrong webhook.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    ca: &str,
) -> Option<json_patch::Patch> {
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            == Some(ca.as_bytes())
        {
            continue;
        }
        let index = i.to_string();
        let at = |tail: &[&str]| {
            PointerBuf::from_tokens(
                ["webhooks", index.as_str()]
                    .iter()
                    .chain(tail)
                    .map(|t| Token::new(*t)),
            )
        };
        ops.push(PatchOperation::Test(TestOperation {
            path: at(&["name"]),
            value: json!(hook.name),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: at(&["clientConfig", "caBundle"]),
            value: json!(base64::engine::general_purpose::STANDARD.encode(ca)),
        }));
    }
    (!ops.is_empty()).then_some(json_patch::Patch(ops))
}

/// Keeps the CA of the served material in the caBundle of every webhook of the
/// MutatingWebhookConfiguration `name`, re-applying it whenever the configuration changes (a
/// `helm upgrade` that resets it) or the CA does. `state` follows for `/readyz`.
pub async fn keep_ca_bundle(
    client: Client,
    name: String,
    mut material: watch::Receiver<Option<TlsMaterial>>,
    state: SharedBundleState,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api.clone(), cfg).default_backoff().boxed();
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        let ca = material
            .borrow_and_update()
            .as_ref()
            .and_then(|m| m.ca_pem.clone());
        let next = match ca {
            None => BundleState::Pending("no CA certificate loaded yet".into()),
            Some(ca) => apply_ca_bundle(&api, &name, &ca).await,
        };
        if **state.load() != next {
            match &next {
                BundleState::Pending(why) => {
                    tracing::warn!(config = %name, "caBundle not in place: {why}")
                }
                BundleState::InPlace => tracing::info!(config = %name, "caBundle in place"),
                BundleState::NotManaged => {}
            }
            state.store(Arc::new(next));
        }
        tokio::select! {
            _ = changes.next() => {}
            r = material.changed() => if r.is_err() { return },
            _ = resync.tick() => {}
        }
    }
}

async fn apply_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    ca: &str,
) -> BundleState {
    let config = match api.get_opt(name).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return BundleState::Pending(format!(
                "MutatingWebhookConfiguration {name} does not exist"
            ));
        }
        Err(e) => {
            return BundleState::Pending(format!(
                "cannot read MutatingWebhookConfiguration {name}: {e}"
            ));
        }
    };
    if config.webhooks.as_ref().is_none_or(Vec::is_empty) {
        return BundleState::Pending(format!(
            "MutatingWebhookConfiguration {name} has no webhooks"
        ));
    }
    let Some(patch) = ca_bundle_patch(&config, ca) else {
        return BundleState::InPlace;
    };
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.patch(name, &pp, &Patch::Json::<()>(patch)).await {
        Ok(_) => BundleState::InPlace,
        Err(e) => BundleState::Pending(format!(
            "cannot set the caBundle of MutatingWebhookConfiguration {name}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn hook(name: &str, ca: Option<&str>) -> MutatingWebhook {
        MutatingWebhook {
            name: name.into(),
            client_config: WebhookClientConfig {
                ca_bundle: ca.map(|c| ByteString(c.as_bytes().to_vec())),
                url: Some("https://127.0.0.1:4000/mutate".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn patches_only_webhooks_without_the_ca() {
        let config = MutatingWebhookConfiguration {
            webhooks: Some(vec![
                hook("a.ferry.dev", Some("CA")),
                hook("b.ferry.dev", None),
            ]),
            ..Default::default()
        };
        let patch = serde_json::to_value(ca_bundle_patch(&config, "CA").unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b.ferry.dev"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "Q0E="},
            ])
        );
        let mut done = config.clone();
        done.webhooks = Some(vec![
            hook("a.ferry.dev", Some("CA")),
            hook("b.ferry.dev", Some("CA")),
        ]);
        assert!(ca_bundle_patch(&done, "CA").is_none());
        assert!(ca_bundle_patch(&done, "NEW CA").is_some());
    }
}
