//! The endpoint index of one namespace: what its RoutingTable and its app Services'
//! EndpointSlices say, fed watch events directly, turned into immutable [`Snapshot`]s.
//!
//! Pure: no I/O, no clock. The watch tasks (`watch.rs`) feed it and swap the snapshots in;
//! requests only read snapshots.
//!
//! Event semantics are kube-runtime's `watcher::Event`: `Apply`/`Delete` change one object;
//! `Init` starts a re-list whose `InitApply` objects are buffered, and `InitDone` replaces the
//! whole store with them, so anything not re-listed is gone (a slice deleted while the watch was
//! down) and the old state keeps serving until the new list is complete.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ferry_api::{RoutingTable, RoutingTableSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{ResourceExt, runtime::watcher::Event};

use crate::outbound::balance::Instances;

pub use ferry_api::routing_table::TABLE_NAME;
/// The port of an app's Service that reaches its sidecars.
pub const INTERNAL_PORT_NAME: &str = "dapr-internal";
/// Set on every EndpointSlice by the EndpointSlice controller: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What one EndpointSlice contributes: the ready addresses of its Service's internal port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceAddrs {
    pub service: String,
    pub addrs: Vec<SocketAddr>,
}

/// Reads a slice: ready endpoints only (`conditions.ready` true or absent, as the API defines
/// it), on the port named `dapr-internal`. `None` for a slice without a Service label.
pub fn slice_addrs(slice: &EndpointSlice) -> Option<SliceAddrs> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(INTERNAL_PORT_NAME))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Some(SliceAddrs {
            service,
            addrs: Vec::new(),
        });
    };
    // FQDN slices name hosts, not addresses; sidecars are always reached by pod IP.
    let ip_slice = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
    let addrs = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|_| ip_slice)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    Some(SliceAddrs { service, addrs })
}

/// The objects of one watch by name, with a re-list in progress buffered aside.
#[derive(Debug)]
struct Store<T> {
    items: BTreeMap<String, T>,
    relisting: Option<BTreeMap<String, T>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            items: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<T: PartialEq> Store<T> {
    /// Applies one event; `read` turns an object into what is kept (`None`: not kept). Returns
    /// whether what the store serves changed.
    fn apply<K: ResourceExt>(&mut self, event: Event<K>, read: impl Fn(&K) -> Option<T>) -> bool {
        match event {
            Event::Apply(obj) => {
                let name = obj.name_any();
                match read(&obj) {
                    Some(v) => self.items.insert(name, v).is_none_or(|old| {
                        // Unchanged content (a status update, a relabel) is no change.
                        self.items.get(&obj.name_any()) != Some(&old)
                    }),
                    None => self.items.remove(&name).is_some(),
                }
            }
            Event::Delete(obj) => self.items.remove(&obj.name_any()).is_some(),
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let Some(v) = read(&obj) {
                    self.relisting
                        .get_or_insert_with(BTreeMap::new)
                        .insert(obj.name_any(), v);
                }
                false
            }
            Event::InitDone => {
                self.items = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
        }
    }
}

/// The state of one namespace, as its two watches have reported it.
#[derive(Debug)]
pub struct NamespaceIndex {
    namespace: String,
    table: Store<Arc<RoutingTableSpec>>,
    slices: Store<SliceAddrs>,
}

impl NamespaceIndex {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            table: Store::default(),
            slices: Store::default(),
        }
    }

    /// A RoutingTable watch event; whether the snapshot must be rebuilt.
    pub fn table_event(&mut self, event: Event<RoutingTable>) -> bool {
        self.table.apply(event, |t| {
            // The watch selects the name already; another name would not be the operator's.
            (t.name_any() == TABLE_NAME).then(|| Arc::new(t.spec.clone()))
        })
    }

    /// An EndpointSlice watch event; whether the snapshot must be rebuilt.
    pub fn slice_event(&mut self, event: Event<EndpointSlice>) -> bool {
        self.slices.apply(event, slice_addrs)
    }

    pub fn table_synced(&self) -> bool {
        self.table.synced
    }

    pub fn slices_synced(&self) -> bool {
        self.slices.synced
    }

    /// The snapshot of what the index holds now. Instances that did not change are taken from
    /// `previous` as they are, and those that did keep the load counts of the addresses that
    /// stay.
    pub fn snapshot(&self, previous: &Snapshot) -> Snapshot {
        let table = self.table.items.get(TABLE_NAME).cloned();
        let mut by_service: HashMap<&str, Vec<SocketAddr>> = HashMap::new();
        for s in self.slices.items.values() {
            by_service
                .entry(s.service.as_str())
                .or_default()
                .extend_from_slice(&s.addrs);
        }
        let mut apps = HashMap::new();
        for route in table.iter().flat_map(|t| t.apps.iter()) {
            if apps.contains_key(&route.id) {
                continue; // the operator never lists an app twice; keep the first if it did
            }
            let addrs = by_service
                .get(route.service.as_str())
                .cloned()
                .unwrap_or_default();
            let prev = previous
                .apps
                .get(&route.id)
                .filter(|p| p.service == route.service)
                .map(|p| &p.instances);
            let instances = match prev {
                Some(p) if p.same_addrs(&addrs) => p.clone(),
                _ => Arc::new(Instances::rebuilt(
                    self.namespace.clone(),
                    addrs,
                    prev.map(|p| &**p),
                )),
            };
            apps.insert(
                route.id.clone(),
                App {
                    service: route.service.clone(),
                    instances,
                },
            );
        }
        Snapshot {
            synced: self.table.synced && self.slices.synced,
            table,
            apps,
        }
    }
}

#[derive(Debug)]
struct App {
    service: String,
    instances: Arc<Instances>,
}

/// What requests read: one namespace's apps and instances at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Both watches have completed a list at least once.
    pub synced: bool,
    /// The namespace's RoutingTable, when it has one.
    pub table: Option<Arc<RoutingTableSpec>>,
    apps: HashMap<String, App>,
}

/// The answer to "where is app X in this namespace?".
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(Arc<Instances>),
    /// The watches have not listed the namespace yet: nothing is known.
    NotSynced,
    /// The namespace has no RoutingTable: no app of it is meshed (or the operator is not running).
    NoTable,
    /// The RoutingTable does not list the app.
    UnknownApp,
    /// The app is listed, but its Service has no ready endpoint on the internal port.
    NoReadyInstance {
        service: &'a str,
    },
}

impl Snapshot {
    pub fn lookup(&self, app: &str) -> Lookup<'_> {
        if !self.synced {
            return Lookup::NotSynced;
        }
        if self.table.is_none() {
            return Lookup::NoTable;
        }
        match self.apps.get(app) {
            None => Lookup::UnknownApp,
            Some(a) if a.instances.is_empty() => Lookup::NoReadyInstance {
                service: &a.service,
            },
            Some(a) => Lookup::Found(a.instances.clone()),
        }
    }

    /// The app IDs the table lists (sorted), for messages.
    pub fn app_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.apps.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outbound::balance::InFlight;
    use serde_json::json;

    pub(crate) fn table(apps: &[&str]) -> RoutingTable {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "RoutingTable",
            "metadata": {"name": TABLE_NAME, "namespace": "shop", "resourceVersion": "1"},
            "spec": {"apps": apps.iter().map(|a| json!({
                "id": a, "service": format!("{a}-dapr"),
                "ports": {"http": 80, "grpc": 50001, "internal": 50002, "metrics": 9090}
            })).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    /// A slice of `service` with endpoints `(ip, ready)` (`None`: no ready condition) and the
    /// given ports `(name, port)`.
    pub(crate) fn slice(
        name: &str,
        service: &str,
        endpoints: &[(&str, Option<bool>)],
        ports: &[(&str, i32)],
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": "shop", "resourceVersion": "1",
                "labels": {SERVICE_NAME_LABEL: service, "dapr.io/enabled": "true"}
            },
            "addressType": "IPv4",
            "endpoints": endpoints.iter().map(|(ip, ready)| {
                let mut e = json!({"addresses": [ip]});
                if let Some(r) = ready {
                    e["conditions"] = json!({"ready": r});
                }
                e
            }).collect::<Vec<_>>(),
            "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn internal(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<(&str, Option<bool>)> = ips.iter().map(|ip| (*ip, Some(true))).collect();
        slice(
            name,
            service,
            &eps,
            &[("dapr-http", 3500), (INTERNAL_PORT_NAME, 50002)],
        )
    }

    fn a(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    /// An index whose watches have both listed: the table, then the slices.
    fn synced(t: RoutingTable, slices: Vec<EndpointSlice>) -> NamespaceIndex {
        let mut ix = NamespaceIndex::new("shop");
        ix.table_event(Event::Init);
        ix.table_event(Event::InitApply(t));
        ix.table_event(Event::InitDone);
        ix.slice_event(Event::Init);
        for s in slices {
            ix.slice_event(Event::InitApply(s));
        }
        ix.slice_event(Event::InitDone);
        ix
    }

    fn found(snap: &Snapshot, app: &str) -> Vec<SocketAddr> {
        match snap.lookup(app) {
            Lookup::Found(i) => i.addrs(),
            other => panic!("{app}: {other:?}"),
        }
    }

    #[test]
    fn ready_endpoints_on_the_internal_port_by_name() {
        let s = slice(
            "cart-dapr-abc",
            "cart-dapr",
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", None),
                ("10.0.0.3", Some(false)),
            ],
            // The internal port is found by name, wherever it is and whatever its number.
            &[
                ("dapr-http", 3500),
                ("dapr-internal", 6000),
                ("dapr-grpc", 50001),
            ],
        );
        let ix = synced(table(&["cart"]), vec![s]);
        let snap = ix.snapshot(&Snapshot::default());
        assert_eq!(
            found(&snap, "cart"),
            vec![a("10.0.0.1", 6000), a("10.0.0.2", 6000)],
            "ready true or absent; not-ready left out"
        );
    }

    #[test]
    fn a_slice_without_the_internal_port_or_the_service_label_gives_nothing() {
        let no_port = slice(
            "cart-dapr-x",
            "cart-dapr",
            &[("10.0.0.1", None)],
            &[("dapr-http", 3500)],
        );
        assert_eq!(slice_addrs(&no_port).unwrap().addrs, vec![]);
        let mut unlabelled = internal("stray", "cart-dapr", &["10.0.0.9"]);
        unlabelled.metadata.labels = None;
        assert_eq!(slice_addrs(&unlabelled), None);
        let mut fqdn = internal("fq", "cart-dapr", &["cart.example.com"]);
        fqdn.address_type = "FQDN".into();
        assert_eq!(slice_addrs(&fqdn).unwrap().addrs, vec![]);

        let ix = synced(table(&["cart"]), vec![no_port, unlabelled, fqdn]);
        let snap = ix.snapshot(&Snapshot::default());
        assert!(matches!(
            snap.lookup("cart"),
            Lookup::NoReadyInstance {
                service: "cart-dapr"
            }
        ));
    }

    #[test]
    fn a_service_split_across_slices_is_one_app_and_other_services_stay_apart() {
        let ix = synced(
            table(&["cart", "orders"]),
            vec![
                internal("cart-dapr-1", "cart-dapr", &["10.0.0.1", "10.0.0.2"]),
                internal("cart-dapr-2", "cart-dapr", &["10.0.0.3", "10.0.0.2"]),
                internal("orders-dapr-1", "orders-dapr", &["10.0.1.1"]),
            ],
        );
        let snap = ix.snapshot(&Snapshot::default());
        assert_eq!(
            found(&snap, "cart"),
            vec![
                a("10.0.0.1", 50002),
                a("10.0.0.2", 50002),
                a("10.0.0.3", 50002)
            ],
            "the union, each address once"
        );
        assert_eq!(found(&snap, "orders"), vec![a("10.0.1.1", 50002)]);
        assert_eq!(snap.app_ids(), vec!["cart", "orders"]);
    }

    #[test]
    fn applies_and_deletes_change_the_snapshot_and_removed_endpoints_are_never_picked() {
        let mut ix = synced(
            table(&["cart"]),
            vec![
                internal("cart-dapr-1", "cart-dapr", &["10.0.0.1"]),
                internal("cart-dapr-2", "cart-dapr", &["10.0.0.2"]),
            ],
        );
        let first = ix.snapshot(&Snapshot::default());
        let one = match first.lookup("cart") {
            Lookup::Found(i) => i,
            other => panic!("{other:?}"),
        };
        // A request in flight on 10.0.0.2 survives the rebuild.
        let two = one.pick(&[a("10.0.0.1", 50002)]).expect("10.0.0.2").clone();
        let _busy = InFlight::start(two.clone());

        // 10.0.0.1 becomes not ready, then its slice goes; 10.0.0.3 joins.
        let not_ready = slice(
            "cart-dapr-1",
            "cart-dapr",
            &[("10.0.0.1", Some(false))],
            &[(INTERNAL_PORT_NAME, 50002)],
        );
        assert!(ix.slice_event(Event::Apply(not_ready)));
        let snap = ix.snapshot(&first);
        assert_eq!(found(&snap, "cart"), vec![a("10.0.0.2", 50002)]);
        assert!(ix.slice_event(Event::Delete(internal("cart-dapr-1", "cart-dapr", &[]))));
        assert!(ix.slice_event(Event::Apply(internal(
            "cart-dapr-3",
            "cart-dapr",
            &["10.0.0.3"]
        ))));
        let snap = ix.snapshot(&snap);
        let inst = match snap.lookup("cart") {
            Lookup::Found(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            inst.addrs(),
            vec![a("10.0.0.2", 50002), a("10.0.0.3", 50002)]
        );
        for _ in 0..200 {
            let p = inst.pick(&[]).unwrap();
            assert_ne!(
                p.addr,
                a("10.0.0.1", 50002),
                "a removed endpoint was picked"
            );
            // 10.0.0.2 is still busy with the request started before the rebuild.
            assert_eq!(p.addr, a("10.0.0.3", 50002));
        }

        // The last slice goes: the app is known, with no ready instance.
        ix.slice_event(Event::Delete(internal("cart-dapr-2", "cart-dapr", &[])));
        ix.slice_event(Event::Delete(internal("cart-dapr-3", "cart-dapr", &[])));
        let snap = ix.snapshot(&snap);
        assert!(matches!(
            snap.lookup("cart"),
            Lookup::NoReadyInstance { .. }
        ));
    }

    #[test]
    fn an_unchanged_apply_or_an_unknown_delete_is_no_change() {
        let s = internal("cart-dapr-1", "cart-dapr", &["10.0.0.1"]);
        let mut ix = synced(table(&["cart"]), vec![s.clone()]);
        let before = ix.snapshot(&Snapshot::default());
        let mut relabelled = s;
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert!(!ix.slice_event(Event::Apply(relabelled)));
        assert!(!ix.slice_event(Event::Delete(internal("nope", "cart-dapr", &[]))));
        // A rebuild with the same addresses keeps the very same instances (and their counts).
        let after = ix.snapshot(&before);
        match (before.lookup("cart"), after.lookup("cart")) {
            (Lookup::Found(x), Lookup::Found(y)) => assert!(Arc::ptr_eq(&x, &y)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_relist_drops_vanished_slices_only_when_it_is_complete() {
        let mut ix = synced(
            table(&["cart"]),
            vec![
                internal("cart-dapr-1", "cart-dapr", &["10.0.0.1"]),
                internal("cart-dapr-2", "cart-dapr", &["10.0.0.2"]),
            ],
        );
        let before = ix.snapshot(&Snapshot::default());
        // The watch restarts (the API server was away): while the new list comes in, the old
        // state serves.
        assert!(!ix.slice_event(Event::Init));
        assert!(!ix.slice_event(Event::InitApply(internal(
            "cart-dapr-2",
            "cart-dapr",
            &["10.0.0.2"]
        ))));
        let during = ix.snapshot(&before);
        assert!(during.synced);
        assert_eq!(
            found(&during, "cart"),
            vec![a("10.0.0.1", 50002), a("10.0.0.2", 50002)]
        );
        // The list is complete: cart-dapr-1 was deleted meanwhile.
        assert!(ix.slice_event(Event::InitDone));
        let after = ix.snapshot(&during);
        assert_eq!(found(&after, "cart"), vec![a("10.0.0.2", 50002)]);
    }

    #[test]
    fn a_table_without_the_app_or_no_table_at_all() {
        let mut ix = synced(
            table(&["orders"]),
            vec![internal("cart-dapr-1", "cart-dapr", &["10.0.0.1"])],
        );
        let snap = ix.snapshot(&Snapshot::default());
        // Slices of a Service the table does not list do not make an app.
        assert!(matches!(snap.lookup("cart"), Lookup::UnknownApp));
        assert!(ix.table_event(Event::Apply(table(&["orders", "cart"]))));
        let snap = ix.snapshot(&snap);
        assert_eq!(found(&snap, "cart"), vec![a("10.0.0.1", 50002)]);
        // The operator removes the table (the namespace has no app left).
        assert!(ix.table_event(Event::Delete(table(&[]))));
        let snap = ix.snapshot(&snap);
        assert!(matches!(snap.lookup("cart"), Lookup::NoTable));
        assert!(snap.table.is_none());
        // A table of another name is not the operator's.
        let mut other = table(&["cart"]);
        other.metadata.name = Some("mine".into());
        ix.table_event(Event::Apply(other));
        assert!(matches!(ix.snapshot(&snap).lookup("cart"), Lookup::NoTable));
    }

    #[test]
    fn a_namespace_never_synced_knows_nothing() {
        let mut ix = NamespaceIndex::new("shop");
        assert!(matches!(
            ix.snapshot(&Snapshot::default()).lookup("cart"),
            Lookup::NotSynced
        ));
        // Objects seen during a list that never completed do not count.
        ix.table_event(Event::Init);
        ix.table_event(Event::InitApply(table(&["cart"])));
        ix.slice_event(Event::Init);
        ix.slice_event(Event::InitApply(internal(
            "cart-dapr-1",
            "cart-dapr",
            &["10.0.0.1"],
        )));
        assert!(matches!(
            ix.snapshot(&Snapshot::default()).lookup("cart"),
            Lookup::NotSynced
        ));
        // One watch done is not enough: both must have listed.
        ix.table_event(Event::InitDone);
        assert!(ix.table_synced() && !ix.slices_synced());
        assert!(!ix.snapshot(&Snapshot::default()).synced);
        ix.slice_event(Event::InitDone);
        assert_eq!(
            found(&ix.snapshot(&Snapshot::default()), "cart"),
            vec![a("10.0.0.1", 50002)]
        );
    }
}
