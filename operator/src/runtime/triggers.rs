//! How a cache change reaches the controllers that read that cache: a namespace to reconcile, a
//! re-list (reconcile every namespace), or a wake-up for a controller without a namespace.

use std::{
    pin::Pin,
    sync::Arc,
    task::{self, Poll},
};

use futures_util::Stream;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, mpsc};

/// One namespace-keyed controller's inputs: a namespace to reconcile, or all of them.
#[derive(Clone)]
pub struct NsTrigger {
    namespace: mpsc::UnboundedSender<ObjectRef<Namespace>>,
    relist: mpsc::UnboundedSender<()>,
}

/// What a namespace-keyed controller is fed by (`reconcile_on`, `reconcile_all_on`).
pub struct NsInput {
    pub namespaces: Receiver<ObjectRef<Namespace>>,
    pub relists: Receiver<()>,
}

/// A namespace-keyed controller's trigger and the streams it feeds.
pub fn ns_trigger() -> (NsTrigger, NsInput) {
    let (namespace, namespaces) = mpsc::unbounded_channel();
    let (relist, relists) = mpsc::unbounded_channel();
    (
        NsTrigger { namespace, relist },
        NsInput {
            namespaces: Receiver(namespaces),
            relists: Receiver(relists),
        },
    )
}

/// The receiving end of a trigger channel, as the stream a controller takes.
pub struct Receiver<T>(mpsc::UnboundedReceiver<T>);

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Fans a change out to the controllers that read the cache it changed.
#[derive(Clone, Default)]
pub struct Triggers {
    namespaced: Vec<NsTrigger>,
    /// Controllers without a namespace: woken on every change (wake-ups coalesce).
    wake: Vec<Arc<Notify>>,
}

impl Triggers {
    pub fn new(namespaced: &[&NsTrigger], wake: &[&Arc<Notify>]) -> Self {
        Self {
            namespaced: namespaced.iter().map(|t| (*t).clone()).collect(),
            wake: wake.iter().map(|w| Arc::clone(w)).collect(),
        }
    }

    pub fn changed(&self, ns: Option<String>) {
        if let Some(ns) = ns {
            for t in &self.namespaced {
                let _ = t.namespace.send(ObjectRef::new(&ns));
            }
        }
        self.wake();
    }

    pub fn relist(&self) {
        for t in &self.namespaced {
            let _ = t.relist.send(());
        }
        self.wake();
    }

    fn wake(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn next<T>(r: &mut Receiver<T>) -> Option<T> {
        r.0.try_recv().ok()
    }

    #[test]
    fn a_change_reaches_every_controller_of_its_cache_and_a_relist_all_namespaces() {
        let (a, mut a_in) = ns_trigger();
        let (b, mut b_in) = ns_trigger();
        let (_other, mut other_in) = ns_trigger();
        let wake = Arc::new(Notify::new());
        let triggers = Triggers::new(&[&a, &b], &[&wake]);

        triggers.changed(Some("shop".into()));
        for input in [&mut a_in, &mut b_in] {
            assert_eq!(next(&mut input.namespaces), Some(ObjectRef::new("shop")));
            assert_eq!(next(&mut input.namespaces), None);
            assert_eq!(next(&mut input.relists), None);
        }
        assert!(wake.notified().now_or_never().is_some(), "woken");

        // A cluster-scoped change has no namespace to send: it only wakes.
        triggers.changed(None);
        assert_eq!(next(&mut a_in.namespaces), None);
        assert!(wake.notified().now_or_never().is_some(), "woken");

        triggers.relist();
        assert_eq!(next(&mut a_in.relists), Some(()));
        assert_eq!(next(&mut b_in.relists), Some(()));
        assert!(wake.notified().now_or_never().is_some(), "woken");
        assert_eq!(next(&mut other_in.namespaces), None, "not its cache");
        assert_eq!(next(&mut other_in.relists), None);
    }
}
