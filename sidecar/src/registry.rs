//! Standalone name resolution: a registry directory shared by the sidecars of one machine.
//!
//! Every running sidecar writes one JSON file into `$FERRY_HOME/registry` and holds an exclusive
//! lock on it for as long as it lives. The lock is what says "alive": a reader that can take a
//! shared lock on a file knows its owner is gone (crashed or killed), skips the entry and removes
//! the file. A clean exit removes the file too. No daemon, no network, no root.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use ferry_api::{AppId, Namespace};
use serde::{Deserialize, Serialize};

use crate::invoke::ResolveError;
pub use crate::outbound::balance::Instances;

/// What a sidecar tells the others (and `ferry list`) about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub app_id: String,
    pub namespace: String,
    /// Where other sidecars reach this one.
    pub internal_address: SocketAddr,
    pub http_port: u16,
    pub grpc_port: u16,
    #[serde(default)]
    pub app_port: Option<u16>,
    #[serde(default)]
    pub app_protocol: String,
    /// The process that runs the sidecar (`ferry run` or `ferryd`).
    pub pid: u32,
    /// The app's process, when `ferry run` started one.
    #[serde(default)]
    pub app_pid: Option<u32>,
    /// The app's command line, when `ferry run` started one.
    #[serde(default)]
    pub command: Vec<String>,
    /// The run file the app was started from (`ferry run -f`), as an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_file: Option<String>,
    /// The `ferry run -f` process that started the app (`ferry stop -f` stops it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli_pid: Option<u32>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
}

impl Entry {
    pub fn age(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(now.saturating_sub(self.started_at))
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A live registration: the file stays locked while this value lives and is removed on drop.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
    file: File,
}

impl Registration {
    /// Writes and locks the entry. The file only appears under its final name once it is
    /// complete and locked, so readers never see half an entry or an unlocked live one.
    pub fn create(dir: &Path, entry: &Entry) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let stem = format!(
            "{}.{}.{}-{}",
            entry.app_id,
            entry.namespace,
            entry.pid,
            entry.internal_address.port()
        );
        let tmp = dir.join(format!(".{stem}.tmp"));
        let path = dir.join(format!("{stem}.json"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        file.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => {
                io::Error::other(format!("{} is locked by another process", tmp.display()))
            }
        })?;
        file.write_all(&serde_json::to_vec_pretty(entry).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(Self { path, file })
    }

    /// Rewrites the entry in place (for example once `ferry run` knows its app's pid).
    pub fn update(&mut self, entry: &Entry) -> io::Result<()> {
        use std::io::Seek as _;
        self.file.set_len(0)?;
        self.file.seek(io::SeekFrom::Start(0))?;
        self.file
            .write_all(&serde_json::to_vec_pretty(entry).map_err(io::Error::other)?)?;
        self.file.sync_all()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads every live entry; entries whose owner is gone are removed on the way.
pub fn scan(dir: &Path) -> io::Result<Vec<Entry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for de in rd {
        let Ok(de) = de else { continue };
        let path = de.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(file) = File::open(&path) else {
            continue;
        };
        match file.try_lock_shared() {
            Ok(()) => {
                // Nobody holds the exclusive lock: the sidecar that wrote this is gone.
                tracing::debug!(path = %path.display(), "removing the entry of a sidecar that is gone");
                let _ = fs::remove_file(&path);
                continue;
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(_)) => continue,
        }
        let Ok(bytes) = fs::read(&path) else { continue };
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(entry) => out.push(entry),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable registry entry")
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.app_id, &a.namespace, a.started_at).cmp(&(&b.app_id, &b.namespace, b.started_at))
    });
    Ok(out)
}

#[derive(Debug, Default)]
struct Snapshot {
    apps: HashMap<(String, String), Arc<Instances>>,
}

/// Resolves app IDs from the registry directory. Lookups read an immutable snapshot (no lock on
/// the request path); the snapshot is rebuilt by a background refresh, on a miss, and after a
/// failure to connect.
#[derive(Debug)]
pub struct RegistryResolver {
    dir: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    scanned_at: ArcSwap<Instant>,
    refresh: tokio::sync::Mutex<()>,
}

/// How often the background task rescans.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl RegistryResolver {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            // "Long ago", so the first lookup scans (checked: a young machine's clock starts near 0).
            scanned_at: ArcSwap::from_pointee(
                Instant::now()
                    .checked_sub(Duration::from_secs(3600))
                    .unwrap_or_else(Instant::now),
            ),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live instances of `app` in `ns`; `Err` says why there are none.
    ///
    /// When the target did not name a namespace (`explicit` is false) and the app runs in none
    /// of the caller's, any other namespace's instances are used: Dapr's standalone mode ignores
    /// namespaces, and apps started with different `NAMESPACE` values still reach each other.
    pub async fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        explicit: bool,
    ) -> Result<Arc<Instances>, ResolveError> {
        if let Some(found) = self.lookup(app, ns, explicit) {
            return Ok(found);
        }
        // A miss looks at the directory again (an app may have just started). Concurrent misses
        // share one scan, so a flood of calls to an unknown app costs one scan at a time.
        self.rescan().await;
        if let Some(found) = self.lookup(app, ns, explicit) {
            return Ok(found);
        }
        Err(ResolveError::NotRegistered {
            app: app.clone(),
            namespace: ns.clone(),
            dir: self.dir.clone(),
        })
    }

    fn lookup(&self, app: &AppId, ns: &Namespace, explicit: bool) -> Option<Arc<Instances>> {
        let snapshot = self.snapshot.load();
        if let Some(found) = snapshot
            .apps
            .get(&(ns.as_str().to_owned(), app.as_str().to_owned()))
        {
            return Some(found.clone());
        }
        if explicit {
            return None;
        }
        // The first namespace in name order, so the choice is stable.
        snapshot
            .apps
            .iter()
            .filter(|((_, id), _)| id == app.as_str())
            .min_by(|a, b| a.0.0.cmp(&b.0.0))
            .map(|(_, inst)| inst.clone())
    }

    /// Rebuilds the snapshot from the directory (once at a time; concurrent callers wait for it).
    pub async fn rescan(&self) {
        let started = Instant::now();
        let _guard = self.refresh.lock().await;
        if **self.scanned_at.load() > started {
            return; // someone else rescanned while we waited
        }
        let dir = self.dir.clone();
        let entries = tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match entries {
            Ok(entries) => {
                let mut grouped: HashMap<(String, String), Vec<SocketAddr>> = HashMap::new();
                for e in entries {
                    grouped
                        .entry((e.namespace, e.app_id))
                        .or_default()
                        .push(e.internal_address);
                }
                let old = self.snapshot.load();
                let apps = grouped
                    .into_iter()
                    .map(|(k, addrs)| {
                        // Keep what did not change, and the load counts of instances that stay.
                        let prev = old.apps.get(&k);
                        let inst = match prev {
                            Some(prev) if prev.same_addrs(&addrs) => prev.clone(),
                            _ => {
                                Arc::new(Instances::rebuilt(k.0.clone(), addrs, prev.map(|p| &**p)))
                            }
                        };
                        (k, inst)
                    })
                    .collect();
                self.snapshot.store(Arc::new(Snapshot { apps }));
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the registry")
            }
        }
        self.scanned_at.store(Arc::new(Instant::now()));
    }

    /// Keeps the snapshot fresh until the task is dropped.
    pub async fn refresh_forever(self: Arc<Self>) {
        loop {
            self.rescan().await;
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, port: u16) -> Entry {
        Entry {
            app_id: app.into(),
            namespace: "default".into(),
            internal_address: SocketAddr::from(([127, 0, 0, 1], port)),
            http_port: 3500,
            grpc_port: 50001,
            app_port: Some(5000),
            app_protocol: "http".into(),
            pid: std::process::id(),
            app_pid: None,
            command: vec![],
            run_file: None,
            cli_pid: None,
            started_at: now_unix(),
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferry-reg-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn live_entries_are_listed_and_removed_on_drop() {
        let dir = tempdir("live");
        let a = Registration::create(&dir, &entry("cart", 40001)).unwrap();
        let b = Registration::create(&dir, &entry("cart", 40002)).unwrap();
        let found = scan(&dir).unwrap();
        assert_eq!(found.len(), 2);
        drop(a);
        let found = scan(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].internal_address.port(), 40002);
        drop(b);
        assert!(scan(&dir).unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unlocked_entries_are_stale_and_removed() {
        let dir = tempdir("stale");
        fs::create_dir_all(&dir).unwrap();
        // What a crashed sidecar leaves behind: the file, without anyone holding its lock.
        let path = dir.join("cart.default.1-40003.json");
        fs::write(&path, serde_json::to_vec(&entry("cart", 40003)).unwrap()).unwrap();
        assert!(scan(&dir).unwrap().is_empty());
        assert!(!path.exists(), "the stale entry is removed");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn resolver_finds_new_entries_on_a_miss() {
        let dir = tempdir("resolve");
        let r = RegistryResolver::new(dir.clone());
        let cart = AppId::new("cart").unwrap();
        let ns = Namespace::default();
        let err = r.resolve(&cart, &ns, true).await.unwrap_err().to_string();
        assert!(err.contains("cart") && err.contains("default"), "{err}");
        let _reg = Registration::create(&dir, &entry("cart", 40004)).unwrap();
        let found = r.resolve(&cart, &ns, true).await.unwrap();
        assert_eq!(
            found.addrs(),
            vec![SocketAddr::from(([127, 0, 0, 1], 40004))]
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    #[tokio::test]
    async fn unqualified_names_fall_back_to_other_namespaces() {
        let dir = std::env::temp_dir().join(format!(
            "ferry-reg-ns-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let mut e = tests_entry("cart", 40011);
        e.namespace = "prod".into();
        let _reg = Registration::create(&dir, &e).unwrap();
        let r = RegistryResolver::new(dir.clone());
        let cart = AppId::new("cart").unwrap();
        let default = Namespace::default();
        let prod = Namespace::new("prod").unwrap();
        let found = r.resolve(&cart, &default, false).await.unwrap();
        assert_eq!(found.namespace, "prod");
        assert!(
            r.resolve(&cart, &default, true).await.is_err(),
            "cart.default names a namespace"
        );
        assert_eq!(
            r.resolve(&cart, &prod, true).await.unwrap().namespace,
            "prod"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    fn tests_entry(app: &str, port: u16) -> Entry {
        Entry {
            app_id: app.into(),
            namespace: "default".into(),
            internal_address: SocketAddr::from(([127, 0, 0, 1], port)),
            http_port: 3500,
            grpc_port: 50001,
            app_port: None,
            app_protocol: "http".into(),
            pid: std::process::id(),
            app_pid: None,
            command: vec![],
            run_file: None,
            cli_pid: None,
            started_at: now_unix(),
        }
    }
}
