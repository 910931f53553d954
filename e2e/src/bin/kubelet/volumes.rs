//! Volumes as files: each of a pod's volumes becomes a directory under
//! `<pod dir>/volumes/<name>/` (secret, configMap, downwardAPI, projected with service-account
//! tokens from the TokenRequest API, emptyDir), or the host path itself (hostPath). Which files
//! a volume holds is decided by [`plan`], a pure function; [`PodVolumes::sync`] writes them and
//! is run again periodically so tokens are refreshed and ConfigMap edits show up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::downward::{self, DownwardError, NodeFacts};
use crate::env;
use crate::process::Mount;
use crate::refs::{Kind, Referenced};

/// 0644, the API's default for files in secret, configMap, downwardAPI and projected volumes.
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {kind} {name:?} not found")]
    NotFound {
        volume: String,
        kind: Kind,
        name: String,
    },
    #[error("volume {volume:?}: {kind} {name:?} has no key {key:?}")]
    MissingKey {
        volume: String,
        kind: Kind,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: path {path:?} must be relative and must not contain '..'")]
    BadPath { volume: String, path: String },
    #[error("volume {volume:?}: {source}")]
    Downward {
        volume: String,
        #[source]
        source: DownwardError,
    },
    #[error(
        "volume {volume:?}: this volume type is not supported by the process kubelet \
         (supported: emptyDir, hostPath, secret, configMap, downwardAPI, projected)"
    )]
    Unsupported { volume: String },
    #[error("volumeMount {mount_path:?} names volume {volume:?}, which the pod does not have")]
    NoSuchVolume { volume: String, mount_path: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot get a token for service account {namespace}/{account}: {source}")]
    Token {
        namespace: String,
        account: String,
        #[source]
        source: kube::Error,
    },
    #[error("the TokenRequest for service account {namespace}/{account} came back without a token")]
    EmptyToken { namespace: String, account: String },
}

/// What one file of a volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A service-account token, requested when the files are written.
    Token {
        audience: Option<String>,
        expiration_seconds: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub path: PathBuf,
    pub content: Content,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    /// An empty directory (emptyDir, whatever its medium).
    EmptyDir,
    /// The host's own path (hostPath); created when the type asks for it.
    HostPath { path: PathBuf, create: bool },
    /// Files written by the kubelet, mounted read-only.
    Files(Vec<PlannedFile>),
}

/// Decides the contents of one volume.
pub fn plan(
    volume: &Volume,
    pod: &Pod,
    refs: &Referenced,
    node: &NodeFacts<'_>,
) -> Result<VolumePlan, VolumeError> {
    let name = volume.name.as_str();
    let mode = |m: Option<i32>| m.map(|m| (m as u32) & 0o7777);
    if volume.empty_dir.is_some() {
        return Ok(VolumePlan::EmptyDir);
    }
    if let Some(host) = &volume.host_path {
        let create = matches!(
            host.type_.as_deref(),
            Some("DirectoryOrCreate") | None | Some("")
        );
        return Ok(VolumePlan::HostPath {
            path: PathBuf::from(&host.path),
            create,
        });
    }
    let mut files = Vec::new();
    if let Some(s) = &volume.secret {
        let default = mode(s.default_mode).unwrap_or(DEFAULT_MODE);
        let secret = s.secret_name.clone().unwrap_or_default();
        let keys = KeySource {
            volume: name,
            kind: Kind::Secret,
            name: &secret,
            optional: s.optional == Some(true),
        };
        keys.files(refs, s.items.as_deref(), default, &mut files)?;
    } else if let Some(c) = &volume.config_map {
        let default = mode(c.default_mode).unwrap_or(DEFAULT_MODE);
        let keys = KeySource {
            volume: name,
            kind: Kind::ConfigMap,
            name: &c.name,
            optional: c.optional == Some(true),
        };
        keys.files(refs, c.items.as_deref(), default, &mut files)?;
    } else if let Some(d) = &volume.downward_api {
        let default = mode(d.default_mode).unwrap_or(DEFAULT_MODE);
        downward_files(
            name,
            pod,
            d.items.iter().flatten(),
            default,
            node,
            &mut files,
        )?;
    } else if let Some(p) = &volume.projected {
        let default = mode(p.default_mode).unwrap_or(DEFAULT_MODE);
        for source in p.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                let keys = KeySource {
                    volume: name,
                    kind: Kind::Secret,
                    name: &s.name,
                    optional: s.optional == Some(true),
                };
                keys.files(refs, s.items.as_deref(), default, &mut files)?;
            } else if let Some(c) = &source.config_map {
                let keys = KeySource {
                    volume: name,
                    kind: Kind::ConfigMap,
                    name: &c.name,
                    optional: c.optional == Some(true),
                };
                keys.files(refs, c.items.as_deref(), default, &mut files)?;
            } else if let Some(d) = &source.downward_api {
                downward_files(
                    name,
                    pod,
                    d.items.iter().flatten(),
                    default,
                    node,
                    &mut files,
                )?;
            } else if let Some(t) = &source.service_account_token {
                files.push(PlannedFile {
                    path: relative(name, &t.path)?,
                    content: Content::Token {
                        audience: t.audience.clone().filter(|a| !a.is_empty()),
                        expiration_seconds: t.expiration_seconds.unwrap_or(3600).max(600),
                    },
                    mode: default,
                });
            } else {
                return Err(VolumeError::Unsupported {
                    volume: name.to_owned(),
                });
            }
        }
    } else {
        return Err(VolumeError::Unsupported {
            volume: name.to_owned(),
        });
    }
    Ok(VolumePlan::Files(files))
}

/// The keys of one Secret or ConfigMap, as files.
struct KeySource<'a> {
    volume: &'a str,
    kind: Kind,
    name: &'a str,
    optional: bool,
}

impl KeySource<'_> {
    fn files(
        &self,
        refs: &Referenced,
        items: Option<&[KeyToPath]>,
        default_mode: u32,
        out: &mut Vec<PlannedFile>,
    ) -> Result<(), VolumeError> {
        let Some(data) = refs.get(self.kind, self.name) else {
            if self.optional {
                return Ok(());
            }
            return Err(VolumeError::NotFound {
                volume: self.volume.to_owned(),
                kind: self.kind,
                name: self.name.to_owned(),
            });
        };
        match items {
            None | Some([]) => {
                for (key, value) in data {
                    out.push(PlannedFile {
                        path: relative(self.volume, key)?,
                        content: Content::Bytes(value.clone()),
                        mode: default_mode,
                    });
                }
            }
            Some(items) => {
                for item in items {
                    let Some(value) = data.get(&item.key) else {
                        if self.optional {
                            continue;
                        }
                        return Err(VolumeError::MissingKey {
                            volume: self.volume.to_owned(),
                            kind: self.kind,
                            name: self.name.to_owned(),
                            key: item.key.clone(),
                        });
                    };
                    out.push(PlannedFile {
                        path: relative(self.volume, &item.path)?,
                        content: Content::Bytes(value.clone()),
                        mode: item.mode.map_or(default_mode, |m| (m as u32) & 0o7777),
                    });
                }
            }
        }
        Ok(())
    }
}

fn downward_files<'a>(
    volume: &str,
    pod: &Pod,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    default_mode: u32,
    node: &NodeFacts<'_>,
    out: &mut Vec<PlannedFile>,
) -> Result<(), VolumeError> {
    let err = |source| VolumeError::Downward {
        volume: volume.to_owned(),
        source,
    };
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            downward::field(pod, &f.field_path, node).map_err(err)?
        } else if let Some(r) = &item.resource_field_ref {
            let wanted = r.container_name.clone().unwrap_or_default();
            let container = all_containers(pod)
                .find(|c| c.name == wanted)
                .ok_or_else(|| err(DownwardError::NoSuchContainer(wanted.clone())))?;
            downward::resource(container, &r.resource, r.divisor.as_ref(), node).map_err(err)?
        } else {
            continue;
        };
        out.push(PlannedFile {
            path: relative(volume, &item.path)?,
            content: Content::Bytes(value.into_bytes()),
            mode: item.mode.map_or(default_mode, |m| (m as u32) & 0o7777),
        });
    }
    Ok(())
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
}

fn relative(volume: &str, path: &str) -> Result<PathBuf, VolumeError> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(VolumeError::BadPath {
            volume: volume.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// The bind mounts for one container: each volumeMount with its subPath, API-data volumes
/// always read-only (as the kubelet mounts them), parents before children.
pub fn container_mounts(
    container: &Container,
    volumes: &BTreeMap<String, MaterializedVolume>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(&vm.name)
            .ok_or_else(|| VolumeError::NoSuchVolume {
                volume: vm.name.clone(),
                mount_path: vm.mount_path.clone(),
            })?;
        let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(expr)) if !expr.is_empty() => {
                Some(env::expand(expr, |name| env.get(name).cloned()))
            }
            _ => None,
        };
        let source = match sub_path {
            Some(p) => volume.dir.join(relative(&vm.name, &p)?),
            None => volume.dir.clone(),
        };
        mounts.push(Mount {
            source,
            target: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only == Some(true) || volume.read_only,
        });
    }
    mounts.sort_by_key(|m| m.target.components().count());
    Ok(mounts)
}

/// A volume on disk: where it is and whether containers may write to it.
#[derive(Debug, Clone)]
pub struct MaterializedVolume {
    pub dir: PathBuf,
    pub read_only: bool,
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

/// The pod's volumes on disk, and the tokens behind them.
pub struct PodVolumes {
    root: PathBuf,
    tokens: HashMap<(Option<String>, i64), CachedToken>,
    written: HashMap<String, BTreeSet<PathBuf>>,
}

impl PodVolumes {
    pub fn new(pod_dir: &Path) -> Self {
        Self {
            root: pod_dir.join("volumes"),
            tokens: HashMap::new(),
            written: HashMap::new(),
        }
    }

    /// Writes every volume's files (only those that changed), removes files no longer wanted,
    /// and returns where each volume is.
    pub async fn sync(
        &mut self,
        client: &Client,
        pod: &Pod,
        refs: &Referenced,
        node: &NodeFacts<'_>,
    ) -> Result<BTreeMap<String, MaterializedVolume>, VolumeError> {
        let mut out = BTreeMap::new();
        let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
        for volume in volumes {
            let dir = self.root.join(&volume.name);
            let materialized = match plan(volume, pod, refs, node)? {
                VolumePlan::EmptyDir => {
                    create_dir(&dir)?;
                    MaterializedVolume {
                        dir,
                        read_only: false,
                    }
                }
                VolumePlan::HostPath { path, create } => {
                    if create {
                        create_dir(&path)?;
                    }
                    MaterializedVolume {
                        dir: path,
                        read_only: false,
                    }
                }
                VolumePlan::Files(files) => {
                    create_dir(&dir)?;
                    let mut now_written = BTreeSet::new();
                    for file in files {
                        let bytes = match &file.content {
                            Content::Bytes(b) => b.clone(),
                            Content::Token {
                                audience,
                                expiration_seconds,
                            } => self
                                .token(client, pod, audience.clone(), *expiration_seconds)
                                .await?
                                .into_bytes(),
                        };
                        write_if_changed(&dir.join(&file.path), &bytes, file.mode)?;
                        now_written.insert(file.path);
                    }
                    let before = self.written.remove(&volume.name).unwrap_or_default();
                    for stale in before.difference(&now_written) {
                        let _ = std::fs::remove_file(dir.join(stale));
                    }
                    self.written.insert(volume.name.clone(), now_written);
                    MaterializedVolume {
                        dir,
                        read_only: true,
                    }
                }
            };
            out.insert(volume.name.clone(), materialized);
        }
        Ok(out)
    }

    async fn token(
        &mut self,
        client: &Client,
        pod: &Pod,
        audience: Option<String>,
        expiration_seconds: i64,
    ) -> Result<String, VolumeError> {
        let key = (audience.clone(), expiration_seconds);
        if let Some(cached) = self.tokens.get(&key)
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audience.into_iter().collect()),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        let response = api
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(|source| VolumeError::Token {
                namespace: namespace.clone(),
                account: account.clone(),
                source,
            })?;
        let status = response.status.unwrap_or_default();
        let token =
            status
                .token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| VolumeError::EmptyToken {
                    namespace: namespace.clone(),
                    account: account.clone(),
                })?;
        // Refresh at 80% of the lifetime the API server granted (at most a day), as the
        // kubelet does.
        let granted = status
            .expiration_timestamp
            .map(|t| {
                let left = t.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
                left.max(0) as u64
            })
            .unwrap_or(expiration_seconds as u64);
        let refresh = Duration::from_secs((granted * 4 / 5).min(24 * 3600));
        tracing::debug!(%namespace, %account, ?refresh, "service-account token issued");
        self.tokens.insert(
            key,
            CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + refresh,
            },
        );
        Ok(token)
    }
}

fn create_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Replaces the file atomically (write aside, rename) when its bytes or mode differ, so a
/// reader never sees half a token.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let (Ok(existing), Ok(meta)) = (std::fs::read(path), std::fs::metadata(path))
        && existing == bytes
        && meta.permissions().mode() & 0o7777 == mode
    {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let aside = path.with_file_name(format!("..{name}.tmp"));
    std::fs::write(&aside, bytes).map_err(io)?;
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}], "volumes": volumes}
        }))
        .unwrap()
    }

    fn plan_of(pod: &Pod, refs: &Referenced) -> Result<VolumePlan, VolumeError> {
        let alloc: BTreeMap<String, Quantity> = BTreeMap::new();
        let node = NodeFacts {
            pod_ip: Some("10.88.0.2"),
            host_ip: "10.88.0.1",
            allocatable: &alloc,
        };
        plan(
            &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0],
            pod,
            refs,
            &node,
        )
    }

    fn file(path: &str, content: &str, mode: u32) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            content: Content::Bytes(content.as_bytes().to_vec()),
            mode,
        }
    }

    #[test]
    fn the_service_account_volume_the_api_server_adds() {
        let pod = pod(
            serde_json::json!([{"name": "kube-api-access-x", "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}]),
        );
        let mut refs = Referenced::default();
        refs.insert(Kind::ConfigMap, "kube-root-ca.crt", &[("ca.crt", "PEM")]);
        let VolumePlan::Files(files) = plan_of(&pod, &refs).unwrap() else {
            panic!("files expected");
        };
        assert_eq!(
            files,
            [
                PlannedFile {
                    path: "token".into(),
                    content: Content::Token {
                        audience: None,
                        expiration_seconds: 3607
                    },
                    mode: 0o644
                },
                file("ca.crt", "PEM", 0o644),
                file("namespace", "shop", 0o644),
            ]
        );
        let missing = plan_of(&pod, &Referenced::default()).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "volume \"kube-api-access-x\": configmap \"kube-root-ca.crt\" not found"
        );
    }

    #[test]
    fn secret_items_and_modes() {
        let pod = pod(serde_json::json!([{"name": "creds", "secret": {
            "secretName": "db", "defaultMode": 256,
            "items": [{"key": "user", "path": "u/name"}, {"key": "pass", "path": "p", "mode": 384}]
        }}]));
        let mut refs = Referenced::default();
        refs.insert(
            Kind::Secret,
            "db",
            &[("user", "me"), ("pass", "pw"), ("extra", "x")],
        );
        assert_eq!(
            plan_of(&pod, &refs).unwrap(),
            VolumePlan::Files(vec![file("u/name", "me", 0o400), file("p", "pw", 0o600)])
        );
        let mut partial = Referenced::default();
        partial.insert(Kind::Secret, "db", &[("user", "me")]);
        assert!(matches!(
            plan_of(&pod, &partial),
            Err(VolumeError::MissingKey { .. })
        ));
    }

    #[test]
    fn optional_config_map_may_be_absent_and_all_keys_by_default() {
        let optional =
            pod(serde_json::json!([{"name": "c", "configMap": {"name": "cfg", "optional": true}}]));
        assert_eq!(
            plan_of(&optional, &Referenced::default()).unwrap(),
            VolumePlan::Files(vec![])
        );
        let mut refs = Referenced::default();
        refs.insert(Kind::ConfigMap, "cfg", &[("a.conf", "1"), ("b.conf", "2")]);
        assert_eq!(
            plan_of(&optional, &refs).unwrap(),
            VolumePlan::Files(vec![file("a.conf", "1", 0o644), file("b.conf", "2", 0o644)])
        );
    }

    #[test]
    fn downward_volume_and_other_kinds() {
        let pod1 = pod(serde_json::json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}
        ]}}]));
        assert_eq!(
            plan_of(&pod1, &Referenced::default()).unwrap(),
            VolumePlan::Files(vec![
                file("name", "web-1", 0o644),
                file("mem", "128", 0o644)
            ])
        );
        let empty = pod(serde_json::json!([{"name": "e", "emptyDir": {"medium": "Memory"}}]));
        assert_eq!(
            plan_of(&empty, &Referenced::default()).unwrap(),
            VolumePlan::EmptyDir
        );
        let pvc =
            pod(serde_json::json!([{"name": "p", "persistentVolumeClaim": {"claimName": "x"}}]));
        assert!(matches!(
            plan_of(&pvc, &Referenced::default()),
            Err(VolumeError::Unsupported { .. })
        ));
        let escape = pod(serde_json::json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]}}]));
        assert!(matches!(
            plan_of(&escape, &Referenced::default()),
            Err(VolumeError::BadPath { .. })
        ));
    }

    #[test]
    fn mounts_honour_sub_paths_read_only_and_order() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "volumeMounts": [
                {"name": "data", "mountPath": "/data/cache/x", "subPathExpr": "$(POD_NAME)"},
                {"name": "data", "mountPath": "/data", "readOnly": true},
                {"name": "sa", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
            ]
        }))
        .unwrap();
        let volumes: BTreeMap<String, MaterializedVolume> = [
            (
                "data".to_owned(),
                MaterializedVolume {
                    dir: "/v/data".into(),
                    read_only: false,
                },
            ),
            (
                "sa".to_owned(),
                MaterializedVolume {
                    dir: "/v/sa".into(),
                    read_only: true,
                },
            ),
        ]
        .into();
        let env: BTreeMap<String, String> = [("POD_NAME".to_owned(), "web-1".to_owned())].into();
        let mounts = container_mounts(&container, &volumes, &env).unwrap();
        let summary: Vec<(String, String, bool)> = mounts
            .iter()
            .map(|m| {
                (
                    m.source.display().to_string(),
                    m.target.display().to_string(),
                    m.read_only,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("/v/data".into(), "/data".into(), true),
                ("/v/data/web-1".into(), "/data/cache/x".into(), false),
                (
                    "/v/sa".into(),
                    "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                    true
                ),
            ]
        );
    }

    #[test]
    fn writes_atomically_with_modes() {
        let dir = std::env::temp_dir().join(format!("ferry-vol-test-{}", std::process::id()));
        let path = dir.join("sub/token");
        write_if_changed(&path, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_if_changed(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
