//! Load balancing over an app's instances: the less loaded of two random choices ("power of two
//! choices"), by requests in flight.
//!
//! Two random choices avoid both round robin's blindness (a slow instance keeps getting its
//! share) and least-loaded's herding (every caller piles onto the one instance that looked idle
//! a moment ago). A request counts against its instance from the moment it is sent until its
//! response body has ended or been dropped ([`InFlight`], held by the body), so a long stream
//! counts for as long as it lasts.
//!
//! Both resolvers build [`Instances`] into immutable snapshots. A rebuild keeps the counter of
//! every instance that stays ([`Instances::rebuilt`]), so a snapshot swap does not forget the
//! requests still in flight.

use http::HeaderValue;
use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

/// One instance (a peer sidecar's internal address) and its requests in flight.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests sent to this instance whose response has not ended yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request counted against a [`Backend`] for as long as this value lives.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn start(backend: Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The live instances of one app in one namespace.
#[derive(Debug)]
pub struct Instances {
    /// The namespace the instances were found in (the callee checks it).
    pub namespace: String,
    /// Sorted by address, without duplicates.
    backends: Vec<Arc<Backend>>,
    /// The app these instances were resolved for, with its `dapr-callee-app-id` and
    /// `ferry-callee` values: made on the first call, not on every one.
    callee: OnceLock<(String, CalleeHeaders)>,
}

/// What a caller tells the callee about whom the request is for.
#[derive(Debug, Clone)]
pub struct CalleeHeaders {
    /// `dapr-callee-app-id`: the app ID.
    pub app_id: HeaderValue,
    /// `ferry-callee`: `<app-id>.<namespace>`, checked by the callee.
    pub tag: HeaderValue,
}

impl Instances {
    pub fn new(namespace: String, addrs: Vec<SocketAddr>) -> Self {
        Self::rebuilt(namespace, addrs, None)
    }

    /// Instances at `addrs`, keeping the in-flight counters of those `previous` already had.
    pub fn rebuilt(
        namespace: String,
        mut addrs: Vec<SocketAddr>,
        previous: Option<&Instances>,
    ) -> Self {
        addrs.sort_unstable();
        addrs.dedup();
        let backends = addrs
            .into_iter()
            .map(|addr| {
                previous
                    .and_then(|p| p.get(addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(addr)))
            })
            .collect();
        Self {
            namespace,
            backends,
            callee: OnceLock::new(),
        }
    }

    /// The callee headers for `app` in these instances' namespace.
    pub fn callee_headers(&self, app: &str) -> CalleeHeaders {
        let make = || {
            let hv = |s: &str| {
                HeaderValue::from_str(s).expect("validated IDs and namespaces are header values")
            };
            CalleeHeaders {
                app_id: hv(app),
                tag: hv(&format!("{app}.{}", self.namespace)),
            }
        };
        let (cached_for, headers) = self.callee.get_or_init(|| (app.to_owned(), make()));
        // Instances are resolved for one app; should another ever ask, it gets its own.
        if cached_for == app {
            headers.clone()
        } else {
            make()
        }
    }

    fn get(&self, addr: SocketAddr) -> Option<&Arc<Backend>> {
        self.backends
            .binary_search_by(|b| b.addr.cmp(&addr))
            .ok()
            .map(|i| &self.backends[i])
    }

    /// The addresses, sorted.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    /// Whether these are exactly the instances at `addrs` (in any order, duplicates ignored).
    pub fn same_addrs(&self, addrs: &[SocketAddr]) -> bool {
        let mut sorted = addrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.len() == self.backends.len()
            && sorted.iter().zip(&self.backends).all(|(a, b)| *a == b.addr)
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// How many instances are not in `tried`.
    pub fn untried(&self, tried: &[SocketAddr]) -> usize {
        self.backends
            .iter()
            .filter(|b| !tried.contains(&b.addr))
            .count()
    }

    /// The less loaded of two instances chosen at random among those not in `tried`; `None`
    /// when every instance has been tried (or there is none).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<&Arc<Backend>> {
        self.pick_with(tried, &mut fastrand::Rng::new())
    }

    fn pick_with(&self, tried: &[SocketAddr], rng: &mut fastrand::Rng) -> Option<&Arc<Backend>> {
        if tried.is_empty() {
            // The common case: no allocation.
            return two_choices(&self.backends, |b| b.in_flight(), rng);
        }
        let left: Vec<&Arc<Backend>> = self
            .backends
            .iter()
            .filter(|b| !tried.contains(&b.addr))
            .collect();
        two_choices(&left, |b| b.in_flight(), rng).copied()
    }
}

fn two_choices<'a, T>(
    items: &'a [T],
    load: impl Fn(&T) -> usize,
    rng: &mut fastrand::Rng,
) -> Option<&'a T> {
    match items.len() {
        0 => None,
        1 => Some(&items[0]),
        n => {
            let a = rng.usize(..n);
            // A second index, different from the first.
            let mut b = rng.usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (la, lb) = (load(&items[a]), load(&items[b]));
            Some(if lb < la { &items[b] } else { &items[a] })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn loaded(inst: &Instances, port: u16, n: usize) -> Vec<InFlight> {
        let b = inst.get(addr(port)).unwrap().clone();
        (0..n).map(|_| InFlight::start(b.clone())).collect()
    }

    #[test]
    fn two_instances_the_less_loaded_always_wins() {
        let inst = Instances::new("ns".into(), vec![addr(1), addr(2)]);
        let _busy = loaded(&inst, 1, 3);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            assert_eq!(inst.pick_with(&[], &mut rng).unwrap().addr, addr(2));
        }
    }

    #[test]
    fn the_most_loaded_of_many_is_never_picked_and_the_rest_share() {
        let inst = Instances::new("ns".into(), (1..=4).map(addr).collect());
        let _busy = loaded(&inst, 3, 5);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = [0usize; 5];
        for _ in 0..4000 {
            counts[inst.pick_with(&[], &mut rng).unwrap().addr.port() as usize] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        for p in [1, 2, 4] {
            // Each idle instance gets about a third.
            assert!(counts[p] > 1000, "{counts:?}");
        }
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let inst = Instances::new("ns".into(), (1..=3).map(addr).collect());
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = [0usize; 4];
        for _ in 0..3000 {
            counts[inst.pick_with(&[], &mut rng).unwrap().addr.port() as usize] += 1;
        }
        for p in 1..=3 {
            assert!((800..1200).contains(&counts[p]), "{counts:?}");
        }
    }

    #[test]
    fn the_count_lasts_as_long_as_the_guard() {
        let inst = Instances::new("ns".into(), vec![addr(1)]);
        let b = inst.pick(&[]).unwrap().clone();
        let g1 = InFlight::start(b.clone());
        let g2 = InFlight::start(b.clone());
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        assert_eq!(b.in_flight(), 1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn tried_instances_are_skipped_until_none_is_left() {
        let inst = Instances::new("ns".into(), vec![addr(1), addr(2), addr(3)]);
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..100 {
            let p = inst.pick_with(&[addr(1), addr(3)], &mut rng).unwrap();
            assert_eq!(p.addr, addr(2));
        }
        assert_eq!(inst.untried(&[addr(1), addr(3)]), 1);
        assert!(inst.pick(&[addr(1), addr(2), addr(3)]).is_none());
        assert!(Instances::new("ns".into(), vec![]).pick(&[]).is_none());
    }

    #[test]
    fn a_rebuild_keeps_the_counts_of_instances_that_stay_and_drops_the_removed() {
        let old = Instances::new("ns".into(), vec![addr(1), addr(2)]);
        let _busy = loaded(&old, 2, 4);
        let new = Instances::rebuilt("ns".into(), vec![addr(3), addr(2), addr(2)], Some(&old));
        assert_eq!(new.addrs(), vec![addr(2), addr(3)]);
        assert_eq!(
            new.get(addr(2)).unwrap().in_flight(),
            4,
            "the count carried over"
        );
        assert!(new.same_addrs(&[addr(3), addr(2)]));
        assert!(!new.same_addrs(&[addr(1), addr(2)]));
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..500 {
            let p = inst_pick(&new, &mut rng);
            assert_ne!(p, addr(1), "a removed instance is never picked");
            assert_eq!(p, addr(3), "the idle one wins over the busy one");
        }
    }

    fn inst_pick(inst: &Instances, rng: &mut fastrand::Rng) -> SocketAddr {
        inst.pick_with(&[], rng).unwrap().addr
    }
}
