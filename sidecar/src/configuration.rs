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

/// What one event of the Configuration's watch means for the policy (pure; the watch loop
/// below does the I/O).
#[derive(Debug, Default)]
pub struct ResourceWatch {
    /// The current list (since `Init`) has seen the object.
    listed: bool,
}

/// A step of [`ResourceWatch`].
#[derive(Debug)]
pub enum Change {
    /// Swap this policy in (`None`: no access control).
    Set(Option<Acl>),
    /// The Configuration cannot be used: the last policy stays, for this reason.
    Keep(AccessControlErrors),
    /// The list ended without the object: there is none.
    Absent,
    Nothing,
}

impl ResourceWatch {
    pub fn on(&mut self, event: Event<Configuration>) -> Change {
        match event {
            Event::Init => {
                self.listed = false;
                Change::Nothing
            }
            Event::InitApply(c) | Event::Apply(c) => {
                self.listed = true;
                match policy_of(&c.spec) {
                    Ok(acl) => Change::Set(acl),
                    Err(e) => Change::Keep(e),
                }
            }
            Event::InitDone if !self.listed => Change::Absent,
            Event::InitDone => Change::Nothing,
            Event::Delete(_) => Change::Absent,
        }
    }
}

/// Follows the Configuration `name` of `namespace` through the Kubernetes API forever: each
/// version is applied when valid; deleted or absent, there is no access control (as daprd
/// without its Configuration); while the API server is away the last policy stays.
pub async fn follow_resource(
    client: kube::Client,
    namespace: Namespace,
    name: String,
    policy: Policy,
) {
    let api = kube::Api::<Configuration>::namespaced(client, namespace.as_str());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut backoff = DefaultBackoff::default();
    let mut watch = ResourceWatch::default();
    loop {
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config.clone()));
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(namespace = %namespace, configuration = %name, error = %crate::kubernetes::watch::describe(&e), "watch failed; the last policy stays in force");
                    break;
                }
            };
            if matches!(event, Event::InitDone) {
                backoff.reset();
            }
            match watch.on(event) {
                Change::Set(acl) => {
                    tracing::info!(namespace = %namespace, configuration = %name, access_control = acl.is_some(), "Configuration applied");
                    policy.store(acl.map(Arc::new));
                }
                Change::Keep(e) => {
                    tracing::warn!(namespace = %namespace, configuration = %name, error = %e, "the Configuration cannot be used; the last policy stays in force (kubectl describe configuration {name} -n {namespace})");
                }
                Change::Absent => {
                    tracing::warn!(namespace = %namespace, configuration = %name, "the Configuration named by --config (dapr.io/config) does not exist; no access control applies until it does");
                    policy.store(None);
                }
                Change::Nothing => {}
            }
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::time::sleep(pause).await;
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

    fn resource(default_action: &str) -> Configuration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "appconfig", "namespace": "shop"},
            "spec": {"accessControl": {"defaultAction": default_action}},
        }))
        .unwrap()
    }

    fn allows(c: &Change) -> Option<bool> {
        match c {
            Change::Set(Some(acl)) => Some(acl.check(None, "x", Some("GET")).allowed),
            _ => None,
        }
    }

    #[test]
    fn the_watch_swaps_valid_versions_keeps_the_last_on_bad_ones_and_drops_a_deleted_one() {
        let mut w = ResourceWatch::default();
        assert!(matches!(w.on(Event::Init), Change::Nothing));
        assert_eq!(
            allows(&w.on(Event::InitApply(resource("deny")))),
            Some(false)
        );
        assert!(matches!(w.on(Event::InitDone), Change::Nothing));
        assert_eq!(allows(&w.on(Event::Apply(resource("allow")))), Some(true));
        match w.on(Event::Apply(resource("sometimes"))) {
            Change::Keep(e) => assert!(
                e.to_string().contains("\"sometimes\" is not an action"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            w.on(Event::Delete(resource("allow"))),
            Change::Absent
        ));
        // A re-list (after the API server was away) that does not find it: there is none.
        assert!(matches!(w.on(Event::Init), Change::Nothing));
        assert!(matches!(w.on(Event::InitDone), Change::Absent));
        // Found again on the next list.
        assert!(matches!(w.on(Event::Init), Change::Nothing));
        assert_eq!(
            allows(&w.on(Event::InitApply(resource("deny")))),
            Some(false)
        );
        assert!(matches!(w.on(Event::InitDone), Change::Nothing));
        let tracing_only: Configuration = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "appconfig"}, "spec": {"tracing": {"samplingRate": "1"}},
        }))
        .unwrap();
        assert!(matches!(
            w.on(Event::Apply(tracing_only)),
            Change::Set(None)
        ));
    }

    #[test]
    fn a_file_without_access_control_means_none() {
        let p = Path::new("c.yaml");
        assert!(parse_file(p, "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  tracing: {samplingRate: '1'}\n").unwrap().is_none());
        let acl = parse_file(p, "kind: Configuration\nmetadata: {name: c}\nspec:\n  accessControl:\n    defaultAction: deny\n").unwrap().unwrap();
        assert!(!acl.check(None, "x", Some("GET")).allowed);
    }
}
