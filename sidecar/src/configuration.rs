//! Where the access-control policy comes from, and how a change reaches the running sidecar.
//!
//! - Standalone: `--config FILE` is a Configuration YAML, read at start (a bad file refuses
//!   the start, naming the file and the field) and polled every [`POLL`] afterwards; a change
//!   is applied within a second. A file that turns bad keeps the last good policy in force and
//!   says why in the log.
//! - Kubernetes: `--config NAME` is the Configuration resource of that name in the sidecar's
//!   namespace, watched through the API. Its policy is swapped in when it changes; while the
//!   API server is away the last policy stays; an invalid one is reported (the operator also
//!   marks it) and the last good policy stays.
//!
//! [`policy_of`] is the pure step: a Configuration's spec becomes the policy it means.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use ferry_api::{Configuration, ConfigurationSpec, Namespace, configuration::AccessControlErrors};
use futures_util::StreamExt;
use kube::runtime::{
    utils::Backoff,
    watcher::{self, DefaultBackoff, Event},
};

use crate::{acl::Acl, inbound::access::Policy};

/// How often a `--config` file is looked at.
pub const POLL: Duration = Duration::from_millis(500);

/// Why a Configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error("--config {}: cannot read the file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--config {}: not a Configuration: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("--config {}: kind is {kind:?}; the file must hold a Configuration (apiVersion: dapr.io/v1alpha1)", path.display())]
    Kind { path: PathBuf, kind: String },
    #[error("--config {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: AccessControlErrors,
    },
    #[error("--config names {0} Configurations; a sidecar applies one, as daprd does (name one)")]
    Several(usize),
}

/// The policy a Configuration's spec means (`None`: no access control).
pub fn policy_of(spec: &ConfigurationSpec) -> Result<Option<Acl>, AccessControlErrors> {
    match &spec.access_control {
        // Every app Ferry calls speaks HTTP: case-insensitive paths, verbs matched.
        Some(ac) => Acl::compile(ac, true),
        None => Ok(None),
    }
}

/// Reads the policy of a Configuration file.
pub fn read_file(path: &Path) -> Result<Option<Acl>, ConfigurationError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigurationError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

/// [`read_file`] on text already read.
pub fn parse_file(path: &Path, text: &str) -> Result<Option<Acl>, ConfigurationError> {
    let mut doc: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ConfigurationError::Parse {
            path: path.to_owned(),
            reason: one_line(&e.to_string()),
        })?;
    if let Some(kind) = doc.get("kind").and_then(|k| k.as_str())
        && kind != ferry_api::configuration::KIND
    {
        return Err(ConfigurationError::Kind {
            path: path.to_owned(),
            kind: kind.to_owned(),
        });
    }
    // Dapr's standalone loader needs no metadata; the resource type does.
    if let Some(map) = doc.as_object_mut() {
        map.entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
    }
    let config: Configuration =
        serde_json::from_value(doc).map_err(|e| ConfigurationError::Parse {
            path: path.to_owned(),
            reason: one_line(&e.to_string()),
        })?;
    policy_of(&config.spec).map_err(|source| ConfigurationError::Invalid {
        path: path.to_owned(),
        source,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a file looks like from outside: a change of either means it is read again.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Follows a `--config` file forever: each change is read and, when good, swapped in.
pub async fn follow_file(path: PathBuf, policy: Policy) {
    let mut seen = stamp(&path);
    let mut last_text = std::fs::read_to_string(&path).ok();
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the Configuration file; the last policy stays in force");
                continue;
            }
        };
        // A touch without a change (or an editor's rewrite of the same text) is nothing new.
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        match parse_file(&path, &text) {
            Ok(acl) => {
                tracing::info!(file = %path.display(), access_control = acl.is_some(), "Configuration changed; policy applied");
                policy.store(acl.map(Arc::new));
                last_text = Some(text);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the Configuration file changed but cannot be used; the last policy stays in force");
            }
        }
    }
}

/// Follows the Configuration `name` of `namespace` through the Kubernetes API forever: each
/// version is applied when valid; deleted, there is no access control (as daprd without its
/// Configuration); while the API server is away the last policy stays.
pub async fn follow_resource(
    client: kube::Client,
    namespace: Namespace,
    name: String,
    policy: Policy,
) {
    let api = kube::Api::<Configuration>::namespaced(client, namespace.as_str());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut backoff = DefaultBackoff::default();
    // Whether the last list saw the object (an empty list means it does not exist).
    let mut seen_in_list = false;
    loop {
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config.clone()));
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Init) => seen_in_list = false,
                Ok(Event::InitApply(c) | Event::Apply(c)) => {
                    seen_in_list = true;
                    apply_resource(&namespace, &name, &c, &policy);
                }
                Ok(Event::InitDone) => {
                    backoff.reset();
                    if !seen_in_list && policy.load().is_some() {
                        tracing::warn!(namespace = %namespace, configuration = %name, "the Configuration is gone; no access control applies");
                        policy.store(None);
                    } else if !seen_in_list {
                        tracing::warn!(namespace = %namespace, configuration = %name, "the Configuration named by --config (dapr.io/config) does not exist; no access control applies until it does");
                    }
                }
                Ok(Event::Delete(_)) => {
                    tracing::warn!(namespace = %namespace, configuration = %name, "the Configuration was deleted; no access control applies");
                    policy.store(None);
                }
                Err(e) => {
                    tracing::warn!(namespace = %namespace, configuration = %name, error = %crate::kubernetes::watch::describe(&e), "watch failed; the last policy stays in force");
                    break;
                }
            }
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::time::sleep(pause).await;
    }
}

fn apply_resource(namespace: &Namespace, name: &str, c: &Configuration, policy: &Policy) {
    match policy_of(&c.spec) {
        Ok(acl) => {
            tracing::info!(namespace = %namespace, configuration = %name, access_control = acl.is_some(), "Configuration applied");
            policy.store(acl.map(Arc::new));
        }
        Err(e) => {
            tracing::warn!(namespace = %namespace, configuration = %name, error = %e, "the Configuration cannot be used; the last policy stays in force (kubectl describe configuration {name} -n {namespace})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_with_the_field() {
        let p = Path::new("/etc/ferry/config.yaml");
        let e = parse_file(
            p,
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  accessControl:\n    defaultAction: deny\n    policies:\n    - appId: app1\n      namespace: default\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            r#"--config /etc/ferry/config.yaml: invalid access control spec: spec.accessControl.policies[0] (appId "app1"): trustDomain is missing; set it to the calling app's trust domain (public unless its Configuration names another)"#
        );
        let e = parse_file(p, "kind: Resiliency\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind is \"Resiliency\""), "{e}");
        let e = parse_file(
            p,
            "kind: Configuration\nspec:\n  accessControl:\n    policies:\n    - namespace: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--config /etc/ferry/config.yaml: not a Configuration:")
                && e.contains("appId"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn a_file_without_access_control_means_none() {
        let p = Path::new("c.yaml");
        assert!(parse_file(p, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  tracing: {samplingRate: '1'}\n").unwrap().is_none());
        let acl = parse_file(p, "kind: Configuration\nmetadata: {name: c}\nspec:\n  accessControl:\n    defaultAction: deny\n").unwrap().unwrap();
        assert!(!acl.check(None, "x", Some("GET")).allowed);
    }
}
