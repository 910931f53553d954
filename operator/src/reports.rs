//! Problems found in users' objects, reported as Events once per occurrence rather than on every
//! reconcile.
//!
//! A reconcile hands over the complete list of problems it sees in its scope (say, the app
//! Services of one namespace). Problems not reported before are published; the list then
//! replaces the remembered one, so a problem that goes away and comes back is reported again.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::{debug, warn};

use crate::metrics::{ControllerName, Metrics};

/// Event notes are limited to 1 kB by the API server.
const MAX_NOTE: usize = 1000;
/// At most this many new Events per reconcile; the rest wait for the next one.
const MAX_EVENTS_PER_CALL: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub regarding: ObjectReference,
    pub warning: bool,
    /// A fixed vocabulary (`InvalidAppID`, `ServiceConflict`, ...): also a metric label.
    pub reason: &'static str,
    pub note: String,
}

/// What makes two reports the same: the object, the reason and the note.
type Key = (String, &'static str, String);

impl Report {
    fn key(&self) -> Key {
        let r = &self.regarding;
        let who = r.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}/{}",
                r.kind.as_deref().unwrap_or_default(),
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            )
        });
        (who, self.reason, self.note.clone())
    }

    pub fn warning(regarding: ObjectReference, reason: &'static str, note: String) -> Self {
        Self {
            regarding,
            warning: true,
            reason,
            note: clip_note(note),
        }
    }
}

pub struct Reporter {
    recorder: Recorder,
    controller: ControllerName,
    seen: Mutex<HashMap<String, HashSet<Key>>>,
}

impl Reporter {
    pub fn new(recorder: Recorder, controller: ControllerName) -> Self {
        Self {
            recorder,
            controller,
            seen: Mutex::default(),
        }
    }

    /// Publishes the problems of `scope` not reported before. Failures to publish are logged
    /// and retried on the next call; they never fail a reconcile.
    pub async fn sync(&self, scope: &str, current: Vec<Report>, metrics: &Metrics) {
        let fresh: Vec<Report> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let before = seen.get(scope);
            current
                .iter()
                .filter(|r| before.is_none_or(|b| !b.contains(&r.key())))
                .take(MAX_EVENTS_PER_CALL)
                .cloned()
                .collect()
        };
        let mut failed = HashSet::new();
        for r in fresh {
            metrics.report(self.controller, r.reason);
            let event = Event {
                type_: if r.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: r.reason.to_owned(),
                note: Some(r.note.clone()),
                action: "Reconcile".to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &r.regarding).await {
                log_failure(&e, r.reason);
                failed.insert(r.key());
            }
        }
        let mut keep: HashSet<Key> = current.iter().map(Report::key).collect();
        keep.retain(|r| !failed.contains(r));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if keep.is_empty() {
            seen.remove(scope);
        } else {
            seen.insert(scope.to_owned(), keep);
        }
    }

    /// Publishes one Event now (for changes the caller detected itself).
    pub async fn publish(&self, report: Report, metrics: &Metrics) {
        metrics.report(self.controller, report.reason);
        let event = Event {
            type_: if report.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: report.reason.to_owned(),
            note: Some(report.note),
            action: "Validate".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &report.regarding).await {
            log_failure(&e, report.reason);
        }
    }
}

fn log_failure(e: &kube::Error, reason: &str) {
    match e {
        // Nothing is created in a namespace being deleted, and nobody will read it there.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("being terminated") => {
            debug!(reason, "no Event: the namespace is being deleted");
        }
        _ => warn!(error = %e, reason, "cannot publish an Event"),
    }
}

pub fn clip_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_in_an_event() {
        let n = clip_note("é".repeat(2000));
        assert!(n.len() <= MAX_NOTE);
        assert!(n.ends_with('…'));
        assert_eq!(clip_note("short".into()), "short");
    }
}
