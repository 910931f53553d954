//! The two watches of one namespace (its RoutingTable, its app Services' EndpointSlices) and
//! the task that feeds them into the namespace's [`NamespaceIndex`] and publishes snapshots.
//!
//! Each watch is a kube-runtime `watcher`. When it reports an error the round ends: after a
//! backoff (client-go's: 0.8 s doubling to 30 s, with jitter) a fresh watcher lists again. A
//! resumed watch would say nothing when the API server is back, whereas a completed list does,
//! so "connected" is always backed by something the API answered; a namespace's list is one
//! table and a handful of slices, cheap to repeat. Meanwhile the last snapshot keeps serving.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, Guard};
use ferry_api::{Namespace, RoutingTable};
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client, Resource,
    runtime::{
        utils::Backoff,
        watcher::{self, DefaultBackoff, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{mpsc, watch},
    task::AbortHandle,
};

use super::index::{NamespaceIndex, Snapshot, TABLE_NAME};
use crate::invoke::error::chain;

/// The labels ferry-operator puts on every app Service (`<app>-dapr`); the EndpointSlice
/// controller copies a Service's labels onto its slices, so one selected watch per namespace
/// sees exactly the slices of meshed apps.
pub const SLICE_SELECTOR: &str = "app.kubernetes.io/managed-by=ferry-operator,dapr.io/enabled=true";

/// How one of a namespace's two watches is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchHealth {
    /// A list has completed at least once: the index knows this kind of object.
    pub listed: bool,
    /// The last thing this watch heard from the API server was not an error.
    pub connected: bool,
    /// The last error, until the next completed list.
    pub last_error: Option<String>,
}

/// What a namespace's watches have achieved; published to whoever waits on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub table: WatchHealth,
    pub slices: WatchHealth,
    /// Counts changes of the namespace's RoutingTable (its HTTPEndpoints follow it).
    pub table_changes: u64,
}

impl SyncState {
    /// Both kinds have been listed: lookups can be answered.
    pub fn synced(&self) -> bool {
        self.table.listed && self.slices.listed
    }

    /// Synced, and both watches are connected now.
    pub fn healthy(&self) -> bool {
        self.synced() && self.table.connected && self.slices.connected
    }

    /// What is missing, as a sentence for health answers and error messages; `None` when
    /// [`Self::healthy`].
    pub fn problem(&self, ns: &str) -> Option<String> {
        let mut parts = Vec::new();
        for (what, h) in [
            (format!("RoutingTable {ns}/{TABLE_NAME}"), &self.table),
            (format!("EndpointSlices of namespace {ns}"), &self.slices),
        ] {
            let state = match (h.listed, h.connected) {
                (true, true) => continue,
                (false, _) => "not synced yet",
                (true, false) => "synced, but the watch is disconnected (serving from cache)",
            };
            let error = match (&h.last_error, h.listed) {
                (Some(e), _) => format!(" (last error: {e})"),
                (None, false) => " (no answer from the Kubernetes API yet)".to_owned(),
                (None, true) => String::new(),
            };
            parts.push(format!("{what}: {state}{error}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// One event or error from one of the watches.
#[derive(Debug)]
pub enum Feed {
    Table(Result<Event<RoutingTable>, String>),
    Slices(Result<Event<EndpointSlice>, String>),
}

/// Applies one feed to the index and the state; returns whether the snapshot must be rebuilt.
/// Pure, so the bookkeeping is tested without an API server.
pub fn apply(index: &mut NamespaceIndex, state: &mut SyncState, feed: Feed) -> bool {
    fn heard<K>(h: &mut WatchHealth, event: &Event<K>) {
        match event {
            // Init only means a list is about to be requested; nothing was heard yet.
            Event::Init => {}
            Event::InitDone => {
                h.listed = true;
                h.connected = true;
                h.last_error = None;
            }
            Event::InitApply(_) | Event::Apply(_) | Event::Delete(_) => h.connected = true,
        }
    }
    fn failed(h: &mut WatchHealth, error: String) {
        h.connected = false;
        h.last_error = Some(error);
    }
    match feed {
        Feed::Table(Ok(event)) => {
            heard(&mut state.table, &event);
            let changed = index.table_event(event);
            if changed {
                state.table_changes += 1;
            }
            changed
        }
        Feed::Slices(Ok(event)) => {
            heard(&mut state.slices, &event);
            index.slice_event(event)
        }
        Feed::Table(Err(e)) => {
            failed(&mut state.table, e);
            false
        }
        Feed::Slices(Err(e)) => {
            failed(&mut state.slices, e);
            false
        }
    }
}

/// What requests and the health check read, written only by the namespace's index task.
#[derive(Debug)]
struct Shared {
    snapshot: ArcSwap<Snapshot>,
    state: watch::Sender<SyncState>,
}

/// The running watches of one namespace. Dropping it stops them.
#[derive(Debug)]
pub struct NamespaceWatch {
    pub namespace: Namespace,
    shared: Arc<Shared>,
    started: Instant,
    /// Milliseconds after `epoch` (the resolver's start) of the last lookup.
    last_used: AtomicU64,
    epoch: Instant,
    tasks: Vec<AbortHandle>,
}

impl NamespaceWatch {
    /// Starts watching `namespace` (on the current tokio runtime).
    pub fn start(client: &Client, namespace: Namespace, epoch: Instant) -> Self {
        let ns = namespace.as_str();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            state: watch::Sender::new(SyncState::default()),
        });
        // A burst (a re-list) is applied as one batch; the watches wait when the index lags.
        let (tx, rx) = mpsc::channel(256);
        let tables = tokio::spawn(watch_forever(
            Api::<RoutingTable>::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={TABLE_NAME}")),
            tx.clone(),
            Feed::Table,
            namespace.clone(),
        ));
        let slices = tokio::spawn(watch_forever(
            Api::<EndpointSlice>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(SLICE_SELECTOR),
            tx,
            Feed::Slices,
            namespace.clone(),
        ));
        let index = tokio::spawn(index_forever(namespace.clone(), shared.clone(), rx));
        let now = Instant::now();
        Self {
            namespace,
            shared,
            started: now,
            last_used: AtomicU64::new(millis(epoch, now)),
            epoch,
            tasks: vec![
                tables.abort_handle(),
                slices.abort_handle(),
                index.abort_handle(),
            ],
        }
    }

    /// The current snapshot (no lock).
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// The watches' state, to read or to wait on.
    pub fn state(&self) -> watch::Receiver<SyncState> {
        self.shared.state.subscribe()
    }

    /// When the watches were started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Records a lookup (idle namespaces are let go).
    pub fn touch(&self) {
        self.last_used
            .store(millis(self.epoch, Instant::now()), Ordering::Relaxed);
    }

    /// How long ago the last lookup was.
    pub fn idle(&self, now: Instant) -> Duration {
        let last = self.last_used.load(Ordering::Relaxed);
        Duration::from_millis(millis(self.epoch, now).saturating_sub(last))
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn millis(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Feeds the index and publishes snapshots and state, until the watches are gone.
async fn index_forever(namespace: Namespace, shared: Arc<Shared>, mut rx: mpsc::Receiver<Feed>) {
    let mut index = NamespaceIndex::new(namespace.as_str());
    let mut state = SyncState::default();
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let mut changed = false;
        for feed in batch.drain(..) {
            changed |= apply(&mut index, &mut state, feed);
        }
        if changed {
            let snapshot = index.snapshot(&shared.snapshot.load());
            log_snapshot(&namespace, &snapshot);
            // The snapshot first: whoever wakes up on the state finds it in place.
            shared.snapshot.store(Arc::new(snapshot));
        }
        shared.state.send_if_modified(|s| {
            if *s == state {
                return false;
            }
            s.clone_from(&state);
            true
        });
    }
}

fn log_snapshot(namespace: &Namespace, snapshot: &Snapshot) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let apps: Vec<(&str, Vec<SocketAddr>)> = snapshot
            .app_ids()
            .into_iter()
            .take(20)
            .map(|id| {
                let addrs = match snapshot.lookup(id) {
                    super::index::Lookup::Found(i) => i.addrs(),
                    _ => Vec::new(),
                };
                (id, addrs)
            })
            .collect();
        tracing::debug!(namespace = %namespace, synced = snapshot.synced, ?apps, "endpoint snapshot");
    }
}

/// A watch error in one line: the step that failed, then the API server's answer (code,
/// reason, message) or why it could not be reached. (The errors' own text repeats itself and
/// dumps the whole Status.)
pub fn describe(e: &watcher::Error) -> String {
    let (step, source) = match e {
        watcher::Error::InitialListFailed(k) => ("cannot list", k),
        watcher::Error::WatchStartFailed(k) => ("cannot watch", k),
        watcher::Error::WatchFailed(k) => ("the watch failed", k),
        watcher::Error::WatchError(s) => {
            return format!(
                "the API server ended the watch: {} {}: {}",
                s.code, s.reason, s.message
            );
        }
        other => return chain(other),
    };
    match source {
        kube::Error::Api(s) => format!(
            "{step}: the API server answered {} {}: {}",
            s.code, s.reason, s.message
        ),
        other => format!("{step}: {}", chain(other)),
    }
}

/// Runs a watcher over `api` forever, sending what it reports. An error ends the round (see
/// the module's comment); the next round starts with a fresh list after a backoff.
async fn watch_forever<K>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<Feed>,
    wrap: fn(Result<Event<K>, String>) -> Feed,
    namespace: Namespace,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let mut backoff = DefaultBackoff::default();
    loop {
        let mut stream = std::pin::pin!(watcher::watcher(api.clone(), config.clone()));
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    let listed = matches!(event, Event::InitDone);
                    if tx.send(wrap(Ok(event))).await.is_err() {
                        return; // the index is gone: the namespace was let go
                    }
                    if listed {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    let error = describe(&e);
                    tracing::warn!(namespace = %namespace, kind = %kind, error = %error, "watch failed; serving from cache and retrying");
                    if tx.send(wrap(Err(error))).await.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::index::{
        Lookup,
        tests::{slice, table},
    };

    fn listed_table(ix: &mut NamespaceIndex, st: &mut SyncState) {
        apply(ix, st, Feed::Table(Ok(Event::Init)));
        apply(ix, st, Feed::Table(Ok(Event::InitApply(table(&["cart"])))));
        assert!(apply(ix, st, Feed::Table(Ok(Event::InitDone))));
    }

    fn listed_slices(ix: &mut NamespaceIndex, st: &mut SyncState) {
        apply(ix, st, Feed::Slices(Ok(Event::Init)));
        apply(
            ix,
            st,
            Feed::Slices(Ok(Event::InitApply(slice(
                "cart-dapr-1",
                "cart-dapr",
                &[("10.0.0.1", None)],
                &[("dapr-internal", 50002)],
            )))),
        );
        assert!(apply(ix, st, Feed::Slices(Ok(Event::InitDone))));
    }

    #[test]
    fn watch_errors_are_told_in_one_line() {
        let forbidden = kube::core::Status::failure(
            "routingtables.ferry.dev \"ferry\" is forbidden: User \"x\" cannot list",
            "Forbidden",
        )
        .with_code(403)
        .boxed();
        let e = watcher::Error::InitialListFailed(kube::Error::Api(forbidden));
        assert_eq!(
            describe(&e),
            "cannot list: the API server answered 403 Forbidden: routingtables.ferry.dev \"ferry\" is forbidden: User \"x\" cannot list"
        );
        let e = watcher::Error::WatchStartFailed(kube::Error::Service("connection refused".into()));
        assert!(
            describe(&e).starts_with("cannot watch: ")
                && describe(&e).contains("connection refused"),
            "{}",
            describe(&e)
        );
    }

    #[test]
    fn synced_and_healthy_follow_what_the_watches_heard() {
        let mut ix = NamespaceIndex::new("shop");
        let mut st = SyncState::default();
        assert!(!st.synced());
        let p = st.problem("shop").unwrap();
        assert!(
            p.contains(
                "RoutingTable shop/ferry: not synced yet (no answer from the Kubernetes API yet)"
            ),
            "{p}"
        );

        // The first list fails: not synced, and the error is told.
        apply(&mut ix, &mut st, Feed::Table(Ok(Event::Init)));
        apply(
            &mut ix,
            &mut st,
            Feed::Table(Err("connection refused".into())),
        );
        let p = st.problem("shop").unwrap();
        assert!(
            p.contains("RoutingTable shop/ferry: not synced yet (last error: connection refused)"),
            "{p}"
        );
        assert!(
            p.contains("EndpointSlices of namespace shop: not synced yet"),
            "{p}"
        );

        listed_table(&mut ix, &mut st);
        assert!(!st.synced(), "slices not listed yet");
        listed_slices(&mut ix, &mut st);
        assert!(st.synced() && st.healthy());
        assert_eq!(st.problem("shop"), None);
        assert_eq!(st.table_changes, 1);

        // The API server goes away: still synced (the cache serves), no longer healthy.
        apply(
            &mut ix,
            &mut st,
            Feed::Slices(Err("watch stream failed: connection reset".into())),
        );
        assert!(st.synced() && !st.healthy());
        let p = st.problem("shop").unwrap();
        assert!(
            p.contains("EndpointSlices of namespace shop: synced, but the watch is disconnected (serving from cache) (last error: watch stream failed: connection reset)"),
            "{p}"
        );
        assert!(!p.contains("RoutingTable"), "{p}");
        let snap = ix.snapshot(&Snapshot::default());
        assert!(matches!(snap.lookup("cart"), Lookup::Found(_)));

        // A new round: Init alone proves nothing, the completed list does.
        apply(&mut ix, &mut st, Feed::Slices(Ok(Event::Init)));
        assert!(!st.healthy());
        listed_slices(&mut ix, &mut st);
        assert!(st.healthy());
        assert_eq!(st.slices.last_error, None);
        assert_eq!(st.table_changes, 1, "the table did not change");
    }
}
