//! The trust bundle, published as Dapr does: a ConfigMap `dapr-trust-bundle` with key `ca.crt`
//! in every namespace (like `kube-root-ca.crt`, so a namespace's first meshed pod never waits
//! for it). The injector mounts it into sidecars, which re-read it: a root rotation reaches
//! running pods without a restart.
//!
//! Every CA replica publishes what its Secret says (server-side apply, one field manager), so
//! replicas agree once they have read the same Secret; a pass lists Namespaces and these
//! ConfigMaps and writes only what differs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams},
};

pub const CONFIG_MAP: &str = "dapr-trust-bundle";
pub const KEY: &str = "ca.crt";
const FIELD_MANAGER: &str = "ferry-ca";

/// One pass: every namespace gets `pem`. Returns how many ConfigMaps were written.
pub async fn publish(client: &Client, pem: &str) -> Result<usize, kube::Error> {
    let namespaces: BTreeSet<String> = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| n.name_any())
        .collect();
    let current: BTreeMap<String, Option<String>> = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={CONFIG_MAP}")))
        .await?
        .items
        .into_iter()
        .map(|c| {
            let ns = c.namespace().unwrap_or_default();
            (ns, c.data.and_then(|mut d| d.remove(KEY)))
        })
        .collect();
    let mut written = 0;
    for ns in namespaces {
        if current.get(&ns).and_then(Option::as_deref) == Some(pem) {
            continue;
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(CONFIG_MAP.to_owned()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ferry-operator".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(KEY.to_owned(), pem.to_owned())])),
            ..Default::default()
        };
        let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        match api
            .patch(
                CONFIG_MAP,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await
        {
            Ok(_) => written += 1,
            // The namespace went away (or is terminating) since the list.
            Err(kube::Error::Api(e))
                if e.code == 404
                    || e.code == 403
                        && e.reason == "Forbidden"
                        && e.message.contains("terminat") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
