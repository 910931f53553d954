//! The caller's namespace's HTTPEndpoints in kubernetes mode, from its RoutingTable.
//!
//! The table holds secret *references* only. This module reads what they name: each Secret with
//! a `get` by name (sidecars are granted `get` on exactly those Secrets: no list, no watch), and
//! for a private key given inline, the HTTPEndpoint object itself. Secrets are read again every
//! refresh period and whenever the table changes, so a rotated Secret is picked up.
//!
//! [`assemble`] is pure: a route and what was read become the HTTPEndpoint it describes, with
//! every reference replaced by its value; `endpoints::build` then validates it and builds its
//! client exactly as for a `--resources-path` file. An endpoint whose material did not change
//! keeps its client (and its pooled connections).
//!
//! When the API server cannot be reached, the last values read are kept; an answer of the API
//! server (not found, forbidden) replaces them, and the endpoints that need them say why.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use ferry_api::{
    AppId, HttpEndpoint, HttpEndpointSpec,
    http_endpoint::{ClientTls, NameValuePair, SecretKeyRef, TlsDocument, render_value},
    routing_table::{EndpointRoute, PemRoute},
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{ApiClient, watch::NamespaceWatch};
use crate::{
    endpoints::{self, Endpoint, Endpoints},
    invoke::{Unusable, error::chain},
};

/// A Secret's data as last read, or why it cannot be used.
pub type SecretData = Result<BTreeMap<String, Vec<u8>>, String>;

/// What the API said about the things the routes refer to.
#[derive(Debug, Default)]
pub struct Material {
    /// By Secret name.
    pub secrets: HashMap<String, SecretData>,
    /// The inline private key of each HTTPEndpoint that has one, by endpoint name.
    pub inline_keys: HashMap<String, Result<String, String>>,
}

/// The Secrets the routes need (ready routes only: the others are not called).
pub fn secrets_named(routes: &[EndpointRoute]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for r in routes.iter().filter(|r| r.ready) {
        for h in &r.headers {
            if let Some(s) = &h.secret_key_ref {
                names.insert(s.name.clone());
            }
        }
        if let Some(tls) = &r.client_tls {
            for s in [&tls.root_ca, &tls.certificate]
                .into_iter()
                .flatten()
                .filter_map(|p| p.secret_key_ref.as_ref())
            {
                names.insert(s.name.clone());
            }
            if let Some(s) = tls
                .private_key
                .as_ref()
                .and_then(|k| k.secret_key_ref.as_ref())
            {
                names.insert(s.name.clone());
            }
        }
    }
    names
}

/// The routes this app may use: an HTTPEndpoint whose `scopes` leave the app out is not loaded
/// (its name then resolves as an app ID), as in standalone mode and in Dapr.
pub fn in_scope(routes: &[EndpointRoute], app_id: &AppId) -> Vec<EndpointRoute> {
    routes
        .iter()
        .filter(|r| r.in_scope(app_id.as_str()))
        .cloned()
        .collect()
}

/// The HTTPEndpoints whose private key must be read from the object itself.
pub fn inline_keys_named(routes: &[EndpointRoute]) -> BTreeSet<String> {
    routes
        .iter()
        .filter(|r| r.ready)
        .filter(|r| {
            r.client_tls
                .as_ref()
                .and_then(|t| t.private_key.as_ref())
                .is_some_and(|k| k.inline)
        })
        .map(|r| r.name.clone())
        .collect()
}

/// The HTTPEndpoint `route` describes, with every reference replaced by its value (an `envRef`
/// stays: `endpoints::build` reads the sidecar's environment). The error names the field.
pub fn assemble(route: &EndpointRoute, material: &Material) -> Result<HttpEndpoint, String> {
    let mut headers = Vec::with_capacity(route.headers.len());
    for (i, h) in route.headers.iter().enumerate() {
        let at = || format!("spec.headers[{i}] ({:?})", h.name);
        let value = match &h.secret_key_ref {
            Some(r) => Some(text(secret_value(material, r)?, &at())?),
            None => h.value.clone(),
        };
        headers.push(NameValuePair {
            name: h.name.clone(),
            value: value.map(serde_json::Value::String),
            secret_key_ref: None,
            env_ref: h.env_ref.clone(),
        });
    }
    let client_tls = match &route.client_tls {
        None => None,
        Some(tls) => {
            let pem = |p: &Option<PemRoute>, at: &str| -> Result<Option<TlsDocument>, String> {
                let Some(p) = p else { return Ok(None) };
                let value = match (&p.value, &p.secret_key_ref) {
                    (Some(v), _) => v.clone(),
                    (None, Some(r)) => text(secret_value(material, r)?, at)?,
                    (None, None) => return Err(format!("{at}: give value or secretKeyRef")),
                };
                Ok(Some(document(value)))
            };
            let private_key = match &tls.private_key {
                None => None,
                Some(k) if k.inline => {
                    let key = material
                        .inline_keys
                        .get(&route.name)
                        .ok_or_else(|| {
                            "spec.clientTLS.privateKey: the inline key has not been read yet"
                                .to_owned()
                        })?
                        .clone()
                        .map_err(|e| format!("spec.clientTLS.privateKey (inline): {e}"))?;
                    Some(document(key))
                }
                Some(k) => match &k.secret_key_ref {
                    Some(r) => Some(document(text(
                        secret_value(material, r)?,
                        "spec.clientTLS.privateKey",
                    )?)),
                    None => {
                        return Err(
                            "spec.clientTLS.privateKey: give secretKeyRef or an inline value"
                                .into(),
                        );
                    }
                },
            };
            Some(ClientTls {
                root_ca: pem(&tls.root_ca, "spec.clientTLS.rootCA")?,
                certificate: pem(&tls.certificate, "spec.clientTLS.certificate")?,
                private_key,
                renegotiation: tls.renegotiation.clone(),
            })
        }
    };
    Ok(HttpEndpoint::new(
        &route.name,
        HttpEndpointSpec {
            base_url: route.base_url.clone(),
            headers,
            client_tls,
        },
    ))
}

fn document(pem: String) -> TlsDocument {
    TlsDocument {
        value: Some(serde_json::Value::String(pem)),
        secret_key_ref: None,
    }
}

fn secret_value<'a>(material: &'a Material, r: &SecretKeyRef) -> Result<&'a [u8], String> {
    let data = material
        .secrets
        .get(&r.name)
        .ok_or_else(|| format!("Secret {:?} has not been read yet", r.name))?
        .as_ref()
        .map_err(|e| format!("Secret {:?}: {e}", r.name))?;
    data.get(&r.key)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("Secret {:?} has no key {:?}", r.name, r.key))
}

fn text(bytes: &[u8], at: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{at}: the Secret's value is not UTF-8"))
}

/// What a read of an object leaves: the API server's answer replaces what was known (found,
/// not found, forbidden); failing to reach it keeps the last good value, so that the endpoint
/// keeps working while the API server is away.
pub fn after_read<T: Clone>(
    previous: Option<&Result<T, String>>,
    read: Result<Option<T>, kube::Error>,
    not_found: impl FnOnce() -> String,
) -> Result<T, String> {
    match read {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(not_found()),
        Err(kube::Error::Api(status)) => Err(format!(
            "the Kubernetes API answered {} {}: {}",
            status.code, status.reason, status.message
        )),
        Err(e) => match previous {
            Some(Ok(v)) => {
                tracing::debug!(error = %chain(&e), "cannot reach the Kubernetes API; keeping the last value read");
                Ok(v.clone())
            }
            _ => Err(format!("cannot reach the Kubernetes API: {}", chain(&e))),
        },
    }
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Keeps the namespace's HTTPEndpoints built and current.
pub struct ClusterEndpoints {
    secrets: Api<Secret>,
    objects: Api<HttpEndpoint>,
    namespace: String,
    material: Material,
    /// What each endpoint was built from, and the result, so unchanged ones are not rebuilt.
    built: HashMap<String, (HttpEndpoint, Arc<Endpoint>)>,
}

impl ClusterEndpoints {
    pub fn new(api: &ApiClient, namespace: &str) -> Self {
        Self {
            secrets: Api::namespaced(api.client.clone(), namespace),
            objects: Api::namespaced(api.client.clone(), namespace),
            namespace: namespace.to_owned(),
            material: Material::default(),
            built: HashMap::new(),
        }
    }

    /// Reads what `routes` refer to again.
    pub async fn read(&mut self, routes: &[EndpointRoute]) {
        let ns = self.namespace.clone();
        let mut secrets = HashMap::new();
        for name in secrets_named(routes) {
            let read = self
                .secrets
                .get_opt(&name)
                .await
                .map(|s| s.map(secret_data));
            let prev = self.material.secrets.get(&name);
            let data = after_read(prev, read, || {
                format!("Secret {name:?} does not exist in namespace {ns:?}")
            });
            secrets.insert(name, data);
        }
        let mut inline_keys = HashMap::new();
        for name in inline_keys_named(routes) {
            let read = self.objects.get_opt(&name).await.map(|o| {
                o.map(|ep| {
                    ep.spec
                        .client_tls
                        .and_then(|t| t.private_key)
                        .and_then(|k| k.value)
                        .map(|v| render_value(&v))
                })
            });
            let prev = self
                .material
                .inline_keys
                .get(&name)
                .map(|r| r.clone().map(Some));
            let key = after_read(prev.as_ref(), read, || {
                format!("HTTPEndpoint {name:?} does not exist in namespace {ns:?}")
            })
            .and_then(|k| {
                k.ok_or_else(|| {
                    "the HTTPEndpoint has no inline spec.clientTLS.privateKey.value".into()
                })
            });
            inline_keys.insert(name, key);
        }
        self.material = Material {
            secrets,
            inline_keys,
        };
    }

    /// The endpoints `routes` describe, from the material last read. Endpoints whose material
    /// did not change keep their client.
    pub fn build(&mut self, routes: &[EndpointRoute]) -> Endpoints {
        let mut usable = Vec::new();
        let mut unusable = Vec::new();
        let mut built = HashMap::new();
        for route in routes {
            if !route.ready {
                let reason = route.reason.as_deref().unwrap_or("no reason given");
                unusable.push((
                    route.name.clone(),
                    Unusable::NotReady {
                        name: route.name.clone(),
                        namespace: self.namespace.clone(),
                        reason: reason.to_owned(),
                    },
                ));
                continue;
            }
            let assembled = match assemble(route, &self.material) {
                Ok(ep) => ep,
                Err(e) => {
                    unusable.push((route.name.clone(), Unusable::Material(e)));
                    continue;
                }
            };
            if let Some((prev, ep)) = self.built.get(&route.name)
                && *prev == assembled
            {
                usable.push(ep.clone());
                built.insert(route.name.clone(), (assembled, ep.clone()));
                continue;
            }
            match endpoints::build(&assembled) {
                Ok(ep) => {
                    let ep = Arc::new(ep);
                    usable.push(ep.clone());
                    built.insert(route.name.clone(), (assembled, ep));
                }
                Err(e) => unusable.push((route.name.clone(), Unusable::Invalid(e))),
            }
        }
        self.built = built;
        Endpoints::new(usable, unusable)
    }
}

/// Follows the own namespace's RoutingTable: rebuilds its HTTPEndpoints when the table changes
/// and every `refresh` (Secrets rotate), merges them under the `--resources-path` ones, and
/// hands each changed result to `store`. Ends when the namespace's watches stop.
pub async fn follow_forever(
    api: ApiClient,
    own: Arc<NamespaceWatch>,
    app_id: AppId,
    files: Endpoints,
    refresh: Duration,
    store: impl Fn(Endpoints) + Send,
) {
    let mut cluster = ClusterEndpoints::new(&api, own.namespace.as_str());
    let mut state = own.state();
    let mut seen_changes = None;
    let mut current = files.clone();
    let mut clashes_logged = Vec::new();
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return; // the watches were stopped
                }
                false
            }
            _ = tick.tick() => true,
        };
        let (synced, changes) = {
            let s = state.borrow_and_update();
            (s.table.listed, s.table_changes)
        };
        if !synced || (!ticked && seen_changes == Some(changes)) {
            continue;
        }
        seen_changes = Some(changes);
        let routes = own
            .snapshot()
            .table
            .as_ref()
            .map(|t| in_scope(&t.http_endpoints, &app_id))
            .unwrap_or_default();
        cluster.read(&routes).await;
        let (merged, clashes) = files.over(&cluster.build(&routes));
        if clashes != clashes_logged {
            if !clashes.is_empty() {
                tracing::warn!(endpoints = ?clashes, "HTTPEndpoints defined both in --resources-path and in the cluster; the --resources-path ones are used");
            }
            clashes_logged = clashes;
        }
        if !merged.same_as(&current) {
            tracing::info!(
                endpoints = ?merged.names(),
                unusable = ?merged.unusable().iter().map(|(n, _)| *n).collect::<Vec<_>>(),
                "HTTPEndpoints changed"
            );
            for (name, reason) in merged.unusable() {
                tracing::warn!(endpoint = name, %reason, "HTTPEndpoint cannot be used");
            }
            current = merged.clone();
            store(merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::routing_table::{HeaderRoute, PrivateKeyRoute, TlsRoute};

    fn sref(name: &str, key: &str) -> Option<SecretKeyRef> {
        Some(SecretKeyRef {
            name: name.into(),
            key: key.into(),
        })
    }

    fn route() -> EndpointRoute {
        EndpointRoute {
            name: "ext".into(),
            base_url: "https://127.0.0.1:8443/api".into(),
            headers: vec![
                HeaderRoute {
                    name: "X-Plain".into(),
                    value: Some("42".into()),
                    ..HeaderRoute::default()
                },
                HeaderRoute {
                    name: "Authorization".into(),
                    secret_key_ref: sref("tok", "token"),
                    ..HeaderRoute::default()
                },
                HeaderRoute {
                    name: "X-Env".into(),
                    env_ref: Some("FERRY_TEST_HEADER".into()),
                    ..HeaderRoute::default()
                },
            ],
            client_tls: Some(TlsRoute {
                root_ca: Some(PemRoute {
                    secret_key_ref: sref("tls", "ca.crt"),
                    ..PemRoute::default()
                }),
                certificate: Some(PemRoute {
                    value: Some("CERT PEM".into()),
                    ..PemRoute::default()
                }),
                private_key: Some(PrivateKeyRoute {
                    secret_key_ref: sref("tls", "tls.key"),
                    inline: false,
                }),
                renegotiation: None,
            }),
            ready: true,
            reason: None,
            scopes: Vec::new(),
        }
    }

    fn material() -> Material {
        let mut m = Material::default();
        m.secrets.insert(
            "tok".into(),
            Ok(BTreeMap::from([(
                "token".into(),
                b"Bearer s3cret".to_vec(),
            )])),
        );
        m.secrets.insert(
            "tls".into(),
            Ok(BTreeMap::from([
                ("ca.crt".into(), b"CA PEM".to_vec()),
                ("tls.key".into(), b"KEY PEM".to_vec()),
            ])),
        );
        m
    }

    fn value(d: &Option<TlsDocument>) -> Option<String> {
        d.as_ref().and_then(|d| d.value.as_ref()).map(render_value)
    }

    #[test]
    fn references_become_values() {
        let ep = assemble(&route(), &material()).unwrap();
        assert_eq!(ep.name(), "ext");
        assert_eq!(ep.spec.base_url, "https://127.0.0.1:8443/api");
        let h = &ep.spec.headers;
        assert_eq!(h[0].value, Some("42".into()));
        assert_eq!(h[1].value, Some("Bearer s3cret".into()));
        assert!(h[1].secret_key_ref.is_none());
        assert_eq!(
            (h[2].value.as_ref(), h[2].env_ref.as_deref()),
            (None, Some("FERRY_TEST_HEADER"))
        );
        let tls = ep.spec.client_tls.unwrap();
        assert_eq!(value(&tls.root_ca).as_deref(), Some("CA PEM"));
        assert_eq!(value(&tls.certificate).as_deref(), Some("CERT PEM"));
        assert_eq!(value(&tls.private_key).as_deref(), Some("KEY PEM"));
    }

    #[test]
    fn an_inline_key_comes_from_the_object() {
        let mut r = route();
        r.client_tls.as_mut().unwrap().private_key = Some(PrivateKeyRoute {
            secret_key_ref: None,
            inline: true,
        });
        let mut m = material();
        let err = assemble(&r, &m).unwrap_err();
        assert!(err.contains("not been read yet"), "{err}");
        m.inline_keys.insert("ext".into(), Ok("INLINE KEY".into()));
        let ep = assemble(&r, &m).unwrap();
        assert_eq!(
            value(&ep.spec.client_tls.unwrap().private_key).as_deref(),
            Some("INLINE KEY")
        );
        m.inline_keys.insert(
            "ext".into(),
            Err("the Kubernetes API answered 403 Forbidden: no".into()),
        );
        let err = assemble(&r, &m).unwrap_err();
        assert!(
            err.starts_with("spec.clientTLS.privateKey (inline): the Kubernetes API answered 403"),
            "{err}"
        );
        assert_eq!(inline_keys_named(&[r]), BTreeSet::from(["ext".to_owned()]));
    }

    #[test]
    fn missing_material_names_the_secret_and_the_field() {
        let mut m = material();
        m.secrets.insert(
            "tok".into(),
            Ok(BTreeMap::from([("other".into(), b"x".to_vec())])),
        );
        assert_eq!(
            assemble(&route(), &m).unwrap_err(),
            "Secret \"tok\" has no key \"token\""
        );
        m.secrets.insert(
            "tok".into(),
            Err("the Kubernetes API answered 403 Forbidden: secrets \"tok\" is forbidden".into()),
        );
        let err = assemble(&route(), &m).unwrap_err();
        assert!(
            err.starts_with("Secret \"tok\": the Kubernetes API answered 403"),
            "{err}"
        );
        m.secrets.insert(
            "tok".into(),
            Ok(BTreeMap::from([("token".into(), vec![0xff, 0xfe])])),
        );
        let err = assemble(&route(), &m).unwrap_err();
        assert!(
            err.contains("spec.headers[1] (\"Authorization\")") && err.contains("UTF-8"),
            "{err}"
        );
        let mut m = material();
        m.secrets.remove("tls");
        assert_eq!(
            assemble(&route(), &m).unwrap_err(),
            "Secret \"tls\" has not been read yet"
        );
    }

    #[test]
    fn only_ready_routes_are_read_for() {
        let mut not_ready = route();
        not_ready.name = "broken".into();
        not_ready.ready = false;
        not_ready.headers[1].secret_key_ref = sref("other", "k");
        assert_eq!(
            secrets_named(&[route(), not_ready]),
            BTreeSet::from(["tls".to_owned(), "tok".to_owned()])
        );
    }

    #[tokio::test]
    async fn endpoints_are_built_once_per_material_and_not_ready_ones_say_why() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let api = ApiClient {
            client,
            url: "http://127.0.0.1:1".into(),
        };
        let mut cluster = ClusterEndpoints::new(&api, "shop");
        let mut plain = route();
        plain.base_url = "http://127.0.0.1:8080".into();
        plain.client_tls = None;
        plain.headers.truncate(2);
        let mut down = route();
        down.name = "down".into();
        down.ready = false;
        down.reason = Some("InvalidBaseURL".into());
        let routes = vec![plain, down];
        cluster.material = material();

        let first = cluster.build(&routes);
        let ext = first.get("ext").expect("ext is usable").clone();
        assert_eq!(ext.headers[1].1, "Bearer s3cret");
        let unusable: Vec<(&str, String)> = first
            .unusable()
            .into_iter()
            .map(|(n, r)| (n, r.to_string()))
            .collect();
        assert_eq!(
            unusable,
            vec![(
                "down",
                "it is not ready (InvalidBaseURL); see kubectl describe httpendpoint down -n shop"
                    .to_owned()
            )]
        );
        // The same material: the same endpoint, client and all.
        let again = cluster.build(&routes);
        assert!(Arc::ptr_eq(again.get("ext").unwrap(), &ext));
        assert!(again.same_as(&first));
        // A rotated Secret: a new endpoint with the new value.
        cluster.material.secrets.insert(
            "tok".into(),
            Ok(BTreeMap::from([(
                "token".into(),
                b"Bearer rotated".to_vec(),
            )])),
        );
        let rotated = cluster.build(&routes);
        assert!(!Arc::ptr_eq(rotated.get("ext").unwrap(), &ext));
        assert_eq!(rotated.get("ext").unwrap().headers[1].1, "Bearer rotated");
        // A Secret that is gone makes the endpoint unusable, with the reason.
        cluster
            .material
            .secrets
            .insert("tok".into(), Err("Secret \"tok\" does not exist".into()));
        let gone = cluster.build(&routes);
        assert!(gone.get("ext").is_none());
        assert!(matches!(
            gone.find("ext"),
            Some(crate::endpoints::Found::Unusable(r)) if r.to_string().contains("does not exist")
        ));
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("secrets \"tok\" is forbidden", "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn the_api_servers_answers_replace_values_and_its_absence_keeps_them() {
        let good: Result<u32, String> = Ok(1);
        // A new value.
        assert_eq!(
            after_read(Some(&good), Ok(Some(2)), || "gone".into()),
            Ok(2)
        );
        // Deleted, forbidden: the API server said so.
        assert_eq!(
            after_read(Some(&good), Ok(None), || "gone".into()),
            Err("gone".into())
        );
        let e = after_read(Some(&good), Err(api_error(403)), || "gone".into()).unwrap_err();
        assert!(
            e.starts_with("the Kubernetes API answered 403 Forbidden"),
            "{e}"
        );
        // Unreachable: the last good value stays; without one, the reason.
        let unreachable = || kube::Error::Service("connection refused".into());
        assert_eq!(
            after_read(Some(&good), Err(unreachable()), || "gone".into()),
            Ok(1)
        );
        let e = after_read::<u32>(None, Err(unreachable()), || "gone".into()).unwrap_err();
        assert!(e.starts_with("cannot reach the Kubernetes API"), "{e}");
    }
}
