//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Every replica looks at the Lease every `renew_every`. The holder renews it; the others follow
//! and take it over once it was released (empty holder) or has not changed for its
//! `leaseDurationSeconds`, measured on their own clock from when they first saw that version
//! (as client-go does, so clock skew between nodes does not matter). Every write carries the
//! `resourceVersion` it was decided on, so of two replicas racing for the Lease exactly one wins.
//! A leader that cannot renew for two thirds of the lease duration steps down before anyone can
//! take over. On shutdown the leader releases the Lease, so a successor starts at once.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{FIELD_MANAGER, admin::Health};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read Lease {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot write Lease {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// What to do with the Lease as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease yet.
    Create,
    /// It is free (released, or expired): take it over.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Decides, from the Lease as read and how long that version has been seen unchanged.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() {
        return Step::Acquire;
    }
    if holder == identity {
        return Step::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(default_duration, Duration::from_secs);
    if unchanged_for >= duration {
        Step::Acquire
    } else {
        Step::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// The Lease as `identity` writes it on `step` (`Acquire` or `Renew`), from the one read.
pub fn desired(
    cfg: &LeaseConfig,
    read: Option<&Lease>,
    step: &Step,
    now: Timestamp,
    holding: bool,
) -> Lease {
    let old = read.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = old.lease_transitions.unwrap_or(0);
    let spec = if !holding {
        // Released: an empty holder and a one-second duration, as client-go writes it.
        LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: old.acquire_time,
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    } else {
        let acquiring = matches!(step, Step::Create | Step::Acquire);
        LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: if acquiring {
                Some(MicroTime(now))
            } else {
                old.acquire_time.or(Some(MicroTime(now)))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(match step {
                Step::Acquire => transitions + 1,
                _ => transitions,
            }),
            ..LeaseSpec::default()
        }
    };
    Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            resource_version: read.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

pub struct Elector {
    cfg: LeaseConfig,
    api: Api<Lease>,
    /// The version of the Lease last read, and since when it has been seen unchanged.
    observed: Option<(String, Instant)>,
    leader: bool,
    last_renewal: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &cfg.namespace);
        Self {
            cfg,
            api,
            observed: None,
            leader: false,
            last_renewal: None,
        }
    }

    /// How long a leader that cannot renew keeps acting: two thirds of the lease duration, so
    /// it stops before a follower can take over.
    fn renew_deadline(&self) -> Duration {
        self.cfg.duration * 2 / 3
    }

    /// How long one look at the Lease may take: two renewal periods, at most a third of the
    /// lease duration.
    fn request_timeout(&self) -> Duration {
        (self.cfg.renew_every * 2).min(self.cfg.duration / 3)
    }

    /// Runs until `shutdown` turns true, publishing leadership on `leader_tx`; then releases
    /// the Lease if it holds it.
    pub async fn run(
        mut self,
        leader_tx: watch::Sender<bool>,
        health: Health,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(self.cfg.renew_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            // A request that hangs (a dead connection) must not hold the loop: a leader has
            // to notice in time that it cannot renew.
            let tick = tokio::time::timeout(self.request_timeout(), self.tick()).await;
            match tick.unwrap_or(Err(Error::Timeout(self.request_timeout()))) {
                Ok(leading) => {
                    health.set_lease_reachable(true);
                    if leading {
                        self.last_renewal = Some(Instant::now());
                    }
                    self.set_leader(leading, &leader_tx, &health);
                }
                Err(e) => {
                    health.set_lease_reachable(false);
                    warn!(error = %e, "leader election");
                    let expired = self
                        .last_renewal
                        .is_none_or(|t| t.elapsed() > self.renew_deadline());
                    if self.leader && expired {
                        warn!("could not renew the Lease in time: stepping down");
                        self.set_leader(false, &leader_tx, &health);
                    }
                }
            }
        }
        if self.leader {
            // Whoever runs the controllers stops them first (they watch the same channel).
            self.set_leader(false, &leader_tx, &health);
            let timeout = self.request_timeout();
            match tokio::time::timeout(timeout, self.release()).await {
                Ok(Ok(())) => info!(lease = %self.cfg.name, "released the Lease"),
                Ok(Err(e)) => warn!(error = %e, "could not release the Lease"),
                Err(_) => warn!("could not release the Lease within {timeout:?}"),
            }
        }
    }

    fn set_leader(&mut self, leading: bool, tx: &watch::Sender<bool>, health: &Health) {
        if leading != self.leader {
            if leading {
                info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became the leader");
            } else {
                info!(identity = %self.cfg.identity, "no longer the leader");
            }
        }
        self.leader = leading;
        health.set_leader(leading);
        tx.send_replace(leading);
    }

    /// One look at the Lease: returns whether this replica holds it afterwards.
    async fn tick(&mut self) -> Result<bool, Error> {
        let read = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|source| Error::Read {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.name.clone(),
                source,
            })?;
        let version = read
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let since = match &self.observed {
            Some((v, since)) if *v == version => *since,
            _ => {
                let now = Instant::now();
                self.observed = Some((version.clone(), now));
                now
            }
        };
        let step = decide(
            read.as_ref(),
            &self.cfg.identity,
            since.elapsed(),
            self.cfg.duration,
        );
        tracing::trace!(?step, unchanged_for = ?since.elapsed(), %version, "lease");
        let now = Timestamp::now();
        match step {
            Step::Follow { .. } => Ok(false),
            Step::Create => {
                let lease = desired(&self.cfg, None, &step, now, true);
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match self.api.create(&pp, &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(source) => Err(self.write_error(source)),
                }
            }
            Step::Acquire => match self.apply(read.as_ref(), &step, now, true).await {
                Ok(()) => Ok(true),
                // Someone else was faster.
                Err(Error::Write { source, .. }) if is_conflict(&source) => {
                    debug!(error = %source, "lost the race for the Lease");
                    Ok(false)
                }
                Err(e) => Err(e),
            },
            // A conflict on renewal is an error, not a loss: the next look decides.
            Step::Renew => self
                .apply(read.as_ref(), &step, now, true)
                .await
                .map(|()| true),
        }
    }

    async fn apply(
        &self,
        read: Option<&Lease>,
        step: &Step,
        now: Timestamp,
        holding: bool,
    ) -> Result<(), Error> {
        let lease = desired(&self.cfg, read, step, now, holding);
        // The resourceVersion in the body is a precondition: a stale decision fails with 409.
        self.api
            .patch(
                &self.cfg.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(drop)
            .map_err(|source| self.write_error(source))
    }

    async fn release(&self) -> Result<(), Error> {
        let read = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|source| Error::Read {
                namespace: self.cfg.namespace.clone(),
                name: self.cfg.name.clone(),
                source,
            })?;
        let ours = read
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !ours {
            return Ok(());
        }
        self.apply(read.as_ref(), &Step::Renew, Timestamp::now(), false)
            .await
    }

    fn write_error(&self, source: kube::Error) -> Error {
        Error::Write {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn lease(holder: Option<&str>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("ferry-operator".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: duration,
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            name: "ferry-operator".into(),
            namespace: "ferry-system".into(),
            identity: "me".into(),
            duration: TEN,
            renew_every: Duration::from_secs(2),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", Duration::ZERO, TEN), Step::Create);
        assert_eq!(
            decide(
                Some(&lease(Some("me"), Some(10))),
                "me",
                Duration::ZERO,
                TEN
            ),
            Step::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some(""), Some(1))), "me", Duration::ZERO, TEN),
            Step::Acquire
        );
        assert_eq!(
            decide(Some(&lease(None, None)), "me", Duration::ZERO, TEN),
            Step::Acquire
        );
        assert_eq!(
            decide(
                Some(&lease(Some("other"), Some(10))),
                "me",
                Duration::from_secs(9),
                TEN
            ),
            Step::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), Some(10))), "me", TEN, TEN),
            Step::Acquire
        );
        // The Lease's own duration wins over ours.
        assert_eq!(
            decide(
                Some(&lease(Some("other"), Some(30))),
                "me",
                Duration::from_secs(20),
                TEN
            ),
            Step::Follow {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn writes_carry_the_version_read_and_count_transitions() {
        let now = Timestamp::now();
        let read = lease(Some("other"), Some(10));
        let l = desired(&cfg(), Some(&read), &Step::Acquire, now, true);
        assert_eq!(l.metadata.resource_version.as_deref(), Some("7"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(10));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));

        let mine = lease(Some("me"), Some(10));
        let renewed = desired(&cfg(), Some(&mine), &Step::Renew, now, true);
        assert_eq!(renewed.spec.unwrap().lease_transitions, Some(3));

        let released = desired(&cfg(), Some(&mine), &Step::Renew, now, false);
        let spec = released.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
    }
}
