//! Resolving `app` and `app.ns` through the Kubernetes API.
//!
//! The caller's own namespace is watched from the start (its HTTPEndpoints come from its
//! RoutingTable); any other namespace from the first call to it, shared by all later calls,
//! and let go after [`IDLE_NAMESPACE`] without calls. A lookup reads the namespace's snapshot
//! without a lock. Only the first calls to a namespace wait, for its first list, and never
//! beyond `sync_timeout` after its watches started; later calls answer at once from what is
//! known, with the API's last error when nothing is.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use ferry_api::{AppId, Namespace};
use kube::Client;

use super::{
    ApiClient,
    index::{Lookup, Snapshot},
    watch::{NamespaceWatch, SyncState},
};
use crate::{
    invoke::{ResolveError, error::Listed},
    outbound::{balance::Instances, resolve::Resolve},
};

/// A namespace without calls for this long stops being watched (the caller's own never does).
pub const IDLE_NAMESPACE: Duration = Duration::from_secs(600);
/// At most this many namespaces are watched at once, so that calls to ever new namespaces
/// cannot make a sidecar open watches without end.
pub const MAX_NAMESPACES: usize = 256;

/// Kubernetes mode's [`Resolve`].
pub struct KubeResolver {
    /// The API client, or why there is none (then every lookup says so).
    api: Result<ApiClient, String>,
    /// The caller's app ID: HTTPEndpoints scoped away from it do not hide apps of their name.
    app_id: AppId,
    own: Namespace,
    sync_timeout: Duration,
    namespaces: ArcSwap<HashMap<Namespace, Arc<NamespaceWatch>>>,
    /// Taken only to start a namespace's watches.
    starting: std::sync::Mutex<()>,
    epoch: Instant,
}

impl KubeResolver {
    /// Starts watching `own` (when there is a client); needs a tokio runtime.
    pub fn new(
        api: Result<ApiClient, String>,
        app_id: AppId,
        own: Namespace,
        sync_timeout: Duration,
    ) -> Self {
        let r = Self {
            api,
            app_id,
            own,
            sync_timeout,
            namespaces: ArcSwap::default(),
            starting: std::sync::Mutex::new(()),
            epoch: Instant::now(),
        };
        if let Err(e) = r.watch(&r.own) {
            tracing::error!(error = %e, "kubernetes mode cannot reach the Kubernetes API: app IDs and cluster HTTPEndpoints will not resolve");
        }
        r
    }

    /// The API client, when there is one.
    pub fn client(&self) -> Option<&Client> {
        self.api.as_ref().ok().map(|a| &a.client)
    }

    pub fn own_namespace(&self) -> &Namespace {
        &self.own
    }

    /// The watches of `ns`, started on first use.
    pub fn watch(&self, ns: &Namespace) -> Result<Arc<NamespaceWatch>, ResolveError> {
        if let Some(w) = self.namespaces.load().get(ns) {
            return Ok(w.clone());
        }
        let api = self
            .api
            .as_ref()
            .map_err(|e| ResolveError::NoApi(e.clone()))?;
        let _g = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.namespaces.load_full();
        if let Some(w) = current.get(ns) {
            return Ok(w.clone());
        }
        if current.len() >= MAX_NAMESPACES {
            return Err(ResolveError::TooManyNamespaces {
                max: MAX_NAMESPACES,
                idle_minutes: IDLE_NAMESPACE.as_secs() / 60,
            });
        }
        let w = Arc::new(NamespaceWatch::start(&api.client, ns.clone(), self.epoch));
        let mut next = (*current).clone();
        next.insert(ns.clone(), w.clone());
        self.namespaces.store(Arc::new(next));
        tracing::info!(namespace = %ns, api = %api.url, "watching namespace");
        Ok(w)
    }

    /// `/v1.0/healthz/outbound`: whether the own namespace's watches are synced and connected,
    /// else what is not.
    pub fn outbound(&self) -> Result<(), String> {
        let own = self.watch(&self.own).map_err(|e| e.to_string())?;
        let state = own.state();
        match state.borrow().problem(self.own.as_str()) {
            None => Ok(()),
            Some(p) => Err(p),
        }
    }

    /// Stops watching namespaces (other than the own) that had no call for `idle`; returns how
    /// many were let go.
    pub fn let_go_idle(&self, idle: Duration) -> usize {
        let _g = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.namespaces.load_full();
        let now = Instant::now();
        let keep: HashMap<Namespace, Arc<NamespaceWatch>> = current
            .iter()
            .filter(|(ns, w)| **ns == self.own || w.idle(now) < idle)
            .map(|(ns, w)| (ns.clone(), w.clone()))
            .collect();
        let gone = current.len() - keep.len();
        if gone > 0 {
            self.namespaces.store(Arc::new(keep));
            tracing::info!(namespaces = gone, "stopped watching idle namespaces");
        }
        gone
    }

    /// Stops every watch (on shutdown).
    pub fn stop(&self) {
        self.namespaces.store(Arc::default());
    }

    /// Lets go of idle namespaces every minute, until the task is dropped.
    pub async fn let_go_idle_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            self.let_go_idle(IDLE_NAMESPACE);
        }
    }

    fn api_url(&self) -> &str {
        self.api.as_ref().map(|a| a.url.as_str()).unwrap_or("")
    }
}

impl Resolve for KubeResolver {
    async fn resolve(
        &self,
        app: &AppId,
        ns: &Namespace,
        // A namespace is always exact in kubernetes mode: `app` means the caller's.
        _explicit: bool,
    ) -> Result<Arc<Instances>, ResolveError> {
        let w = self.watch(ns)?;
        w.touch();
        let own = (*ns == self.own).then_some(&self.app_id);
        if let Some(answer) = answer(&w.snapshot(), app, ns, own) {
            return answer;
        }
        // Not listed yet: wait for the first list, but only within sync_timeout of the start
        // of the watches, so that a namespace the API cannot list fails fast afterwards.
        let left = (w.started() + self.sync_timeout).saturating_duration_since(Instant::now());
        if !left.is_zero() {
            let mut state = w.state();
            let _ = tokio::time::timeout(left, state.wait_for(SyncState::synced)).await;
        }
        if let Some(answer) = answer(&w.snapshot(), app, ns, own) {
            return answer;
        }
        let problem = w
            .state()
            .borrow()
            .problem(ns.as_str())
            .unwrap_or_else(|| "not synced".to_owned());
        Err(ResolveError::NotListed {
            api: self.api_url().to_owned(),
            namespace: ns.clone(),
            within: self.sync_timeout,
            problem,
        })
    }

    async fn unreachable(&self) {
        // Nothing to refresh: the watches push every change as it happens.
    }
}

/// The answer a snapshot gives for `app`, or `None` when it has not been listed yet.
/// `caller`: the caller's app ID when the namespace is the caller's, whose HTTPEndpoints (those
/// in the caller's scope) win over app IDs.
pub fn answer(
    snapshot: &Snapshot,
    app: &AppId,
    ns: &Namespace,
    caller: Option<&AppId>,
) -> Option<Result<Arc<Instances>, ResolveError>> {
    // The proxy asks for an app only when no HTTPEndpoint of that name is loaded; one the table
    // lists is still being loaded (its Secrets read), and must not be shadowed by an app.
    if let Some(caller) = caller
        && let Some(table) = &snapshot.table
        && table
            .http_endpoints
            .iter()
            .any(|e| e.name == app.as_str() && e.in_scope(caller.as_str()))
    {
        return Some(Err(ResolveError::EndpointLoading {
            app: app.clone(),
            namespace: ns.clone(),
        }));
    }
    Some(match snapshot.lookup(app.as_str()) {
        Lookup::NotSynced => return None,
        Lookup::Found(instances) => Ok(instances),
        Lookup::NoTable => Err(ResolveError::NoTable {
            app: app.clone(),
            namespace: ns.clone(),
        }),
        Lookup::UnknownApp => Err(ResolveError::UnknownApp {
            app: app.clone(),
            namespace: ns.clone(),
            listed: Listed::of(&snapshot.app_ids()),
        }),
        Lookup::NoReadyInstance { service } => Err(ResolveError::NoReadyInstance {
            app: app.clone(),
            namespace: ns.clone(),
            service: service.to_string(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::index::{
        INTERNAL_PORT_NAME, NamespaceIndex,
        tests::{slice, table},
    };
    use kube::runtime::watcher::Event;

    fn snapshot(apps: &[&str], ready: Option<bool>) -> Snapshot {
        let mut ix = NamespaceIndex::new("shop");
        ix.table_event(Event::Init);
        if !apps.is_empty() {
            ix.table_event(Event::InitApply(table(apps)));
        }
        ix.table_event(Event::InitDone);
        ix.slice_event(Event::Init);
        ix.slice_event(Event::InitApply(slice(
            "cart-dapr-1",
            "cart-dapr",
            &[("10.0.0.1", ready)],
            &[(INTERNAL_PORT_NAME, 50002)],
        )));
        ix.slice_event(Event::InitDone);
        ix.snapshot(&Snapshot::default())
    }

    fn err(s: &Snapshot, app: &str) -> String {
        let app = AppId::new(app).unwrap();
        let ns = Namespace::new("shop").unwrap();
        answer(s, &app, &ns, None).unwrap().unwrap_err().to_string()
    }

    #[test]
    fn every_failure_names_the_app_and_the_namespace_and_says_why() {
        let s = snapshot(&["cart", "orders"], Some(true));
        assert_eq!(
            err(&s, "nope"),
            "app 'nope' not found in namespace 'shop': the RoutingTable 'ferry' has no such app (it lists cart, orders)"
        );
        let app = AppId::new("cart").unwrap();
        let ns = Namespace::new("shop").unwrap();
        let found = answer(&s, &app, &ns, Some(&caller())).unwrap().unwrap();
        assert_eq!(found.namespace, "shop");

        let s = snapshot(&["cart"], Some(false));
        assert_eq!(
            err(&s, "cart"),
            "app 'cart' in namespace 'shop' has no ready instance: Service cart-dapr has no ready endpoint with a port named dapr-internal"
        );

        let s = snapshot(&[], None);
        assert!(
            err(&s, "cart").starts_with(
                "app 'cart' not found in namespace 'shop': the namespace has no RoutingTable 'ferry'"
            ),
            "{}",
            err(&s, "cart")
        );

        assert!(answer(&Snapshot::default(), &app, &ns, Some(&caller())).is_none());
    }

    #[test]
    fn an_httpendpoint_being_loaded_is_not_shadowed_by_an_app_of_its_name() {
        let mut t = table(&["cart"]);
        t.spec.http_endpoints = vec![ferry_api::routing_table::EndpointRoute {
            name: "cart".into(),
            base_url: "https://example.com".into(),
            ready: true,
            ..Default::default()
        }];
        let mut ix = NamespaceIndex::new("shop");
        for e in [Event::Init, Event::InitApply(t), Event::InitDone] {
            ix.table_event(e);
        }
        ix.slice_event(Event::Init);
        ix.slice_event(Event::InitApply(slice(
            "cart-dapr-1",
            "cart-dapr",
            &[("10.0.0.1", None)],
            &[(INTERNAL_PORT_NAME, 50002)],
        )));
        ix.slice_event(Event::InitDone);
        let s = ix.snapshot(&Snapshot::default());
        let app = AppId::new("cart").unwrap();
        let ns = Namespace::new("shop").unwrap();
        let e = answer(&s, &app, &ns, Some(&caller()))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HTTPEndpoint 'cart' of namespace 'shop' is still being loaded"),
            "{e}"
        );
        // From another namespace, `cart.shop` is the app.
        assert!(answer(&s, &app, &ns, None).unwrap().is_ok());
    }

    #[test]
    fn an_httpendpoint_scoped_away_from_the_caller_does_not_hide_the_app() {
        let mut t = table(&["cart"]);
        t.spec.http_endpoints = vec![ferry_api::routing_table::EndpointRoute {
            name: "cart".into(),
            base_url: "https://example.com".into(),
            ready: true,
            scopes: vec!["billing".into()],
            ..Default::default()
        }];
        let mut ix = NamespaceIndex::new("shop");
        for e in [Event::Init, Event::InitApply(t), Event::InitDone] {
            ix.table_event(e);
        }
        ix.slice_event(Event::Init);
        ix.slice_event(Event::InitApply(slice(
            "cart-dapr-1",
            "cart-dapr",
            &[("10.0.0.1", None)],
            &[(INTERNAL_PORT_NAME, 50002)],
        )));
        ix.slice_event(Event::InitDone);
        let s = ix.snapshot(&Snapshot::default());
        let (app, ns) = (AppId::new("cart").unwrap(), Namespace::new("shop").unwrap());
        // The caller (`checkout`) is not in the endpoint's scopes: `cart` is the app.
        assert!(answer(&s, &app, &ns, Some(&caller())).unwrap().is_ok());
        // `billing` is: the endpoint (still loading) wins.
        let billing = AppId::new("billing").unwrap();
        assert!(answer(&s, &app, &ns, Some(&billing)).unwrap().is_err());
    }

    fn caller() -> AppId {
        AppId::new("checkout").unwrap()
    }

    #[test]
    fn a_long_table_is_cut_short_in_messages() {
        let ids: Vec<String> = (0..15).map(|i| format!("app{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let msg = err(&snapshot(&refs, None), "nope");
        assert!(msg.ends_with("app09 and 5 more)"), "{msg}");
    }

    #[tokio::test]
    async fn namespaces_are_watched_once_and_idle_ones_let_go_but_never_the_own() {
        // An API server where nothing listens: the watches start and fail, which is enough.
        let url = "http://127.0.0.1:1";
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let r = KubeResolver::new(
            Ok(ApiClient {
                client,
                url: url.into(),
            }),
            caller(),
            Namespace::new("shop").unwrap(),
            Duration::from_secs(1),
        );
        let billing = Namespace::new("billing").unwrap();
        let first = r.watch(&billing).unwrap();
        assert!(
            Arc::ptr_eq(&first, &r.watch(&billing).unwrap()),
            "one watch per namespace"
        );
        assert_eq!(r.namespaces.load().len(), 2);
        assert_eq!(r.let_go_idle(Duration::from_secs(60)), 0, "not idle yet");
        assert_eq!(r.let_go_idle(Duration::ZERO), 1);
        let left: Vec<String> = r.namespaces.load().keys().map(|n| n.to_string()).collect();
        assert_eq!(left, vec!["shop"]);
        // Called again, it is watched again.
        assert!(!Arc::ptr_eq(&first, &r.watch(&billing).unwrap()));
        r.stop();
        assert!(r.namespaces.load().is_empty());
    }

    #[tokio::test]
    async fn without_a_client_every_lookup_fails_at_once_with_the_reason() {
        let r = KubeResolver::new(
            Err("no Kubernetes API configuration: nothing found".into()),
            caller(),
            Namespace::new("shop").unwrap(),
            Duration::from_secs(3),
        );
        let started = Instant::now();
        let e = r
            .resolve(
                &AppId::new("cart").unwrap(),
                &Namespace::new("other").unwrap(),
                true,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(e.contains("no Kubernetes API configuration"), "{e}");
        assert!(r.outbound().unwrap_err().contains("no Kubernetes API"));
    }
}
