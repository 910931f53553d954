//! What Ferry makes of every `dapr.io/*` annotation, not only the ones it supports: Dapr's
//! whole list (the `Key*` constants of `dapr/pkg/injector/annotations/annotations.go`), Dapr's
//! pre-1.0 names (renamed in dapr/dapr#1865, removed in dapr/dapr#2311), and for each Dapr
//! annotation Ferry does not implement, whether the pod is injected with a warning or refused.
//!
//! The rule for choosing: an annotation whose absence leaves the pod working as its author
//! expects, only without a Dapr feature Ferry does not have, is a warning. One whose absence
//! would break the app at run time, or change how its sidecar behaves in a way nothing else
//! tells the author (a port the app may also use, a socket the app waits for, a sidecar that
//! stops before the app has finished), refuses the pod with the fix. A value that asks for what
//! Ferry does anyway (`dapr.io/enable-profiling: "false"`) is not reported at all.

use std::collections::BTreeMap;

use super::{AnnotationError, keys, parse_bool};
use crate::ports;

/// Every annotation Dapr's injector reads, whether Ferry supports it or not.
pub const DAPR_ANNOTATIONS: &[&str] = &[
    "dapr.io/enabled",
    "dapr.io/app-port",
    "dapr.io/config",
    "dapr.io/app-protocol",
    "dapr.io/app-ssl",
    "dapr.io/app-id",
    "dapr.io/enable-profiling",
    "dapr.io/log-level",
    "dapr.io/api-token-secret",
    "dapr.io/app-token-secret",
    "dapr.io/log-as-json",
    "dapr.io/app-max-concurrency",
    "dapr.io/enable-metrics",
    "dapr.io/metrics-port",
    "dapr.io/enable-debug",
    "dapr.io/debug-port",
    "dapr.io/env",
    "dapr.io/env-from-secret",
    "dapr.io/grpc-port",
    "dapr.io/internal-grpc-port",
    "dapr.io/sidecar-cpu-request",
    "dapr.io/sidecar-cpu-limit",
    "dapr.io/sidecar-memory-request",
    "dapr.io/sidecar-memory-limit",
    "dapr.io/sidecar-listen-addresses",
    "dapr.io/sidecar-liveness-probe-delay-seconds",
    "dapr.io/sidecar-liveness-probe-timeout-seconds",
    "dapr.io/sidecar-liveness-probe-period-seconds",
    "dapr.io/sidecar-liveness-probe-threshold",
    "dapr.io/sidecar-readiness-probe-delay-seconds",
    "dapr.io/sidecar-readiness-probe-timeout-seconds",
    "dapr.io/sidecar-readiness-probe-period-seconds",
    "dapr.io/sidecar-readiness-probe-threshold",
    "dapr.io/sidecar-image",
    "dapr.io/sidecar-seccomp-profile-type",
    "dapr.io/http-max-request-size",
    "dapr.io/max-body-size",
    "dapr.io/http-read-buffer-size",
    "dapr.io/read-buffer-size",
    "dapr.io/graceful-shutdown-seconds",
    "dapr.io/block-shutdown-duration",
    "dapr.io/enable-api-logging",
    "dapr.io/unix-domain-socket-path",
    "dapr.io/volume-mounts",
    "dapr.io/volume-mounts-rw",
    "dapr.io/disable-builtin-k8s-secret-store",
    "dapr.io/enable-app-health-check",
    "dapr.io/app-health-check-path",
    "dapr.io/app-health-probe-interval",
    "dapr.io/app-health-probe-timeout",
    "dapr.io/app-health-threshold",
    "dapr.io/app-binding-options-timeout",
    "dapr.io/placement-host-address",
    "dapr.io/actors-disseminate-timeout",
    "dapr.io/scheduler-host-address",
    "dapr.io/pluggable-components",
    "dapr.io/pluggable-components-sockets-folder",
    "dapr.io/component-container",
    "dapr.io/inject-pluggable-components",
    "dapr.io/app-channel-address",
    "dapr.io/sentry-request-jwt-audiences",
    "dapr.io/sidecar-svc-annotations",
    "dapr.io/disable-init-endpoints",
    "dapr.io/enable-native-sidecar",
];

/// Dapr's pre-1.0 names that Ferry reads, each with the name that replaced it. The new name
/// wins when both are set.
pub const OLD_NAMES: &[(&str, &str)] = &[
    ("dapr.io/id", keys::APP_ID),
    ("dapr.io/port", keys::APP_PORT),
    ("dapr.io/protocol", keys::APP_PROTOCOL),
    ("dapr.io/max-concurrency", keys::APP_MAX_CONCURRENCY),
];

/// The pre-1.0 name of `dapr.io/enable-profiling`, which Ferry does not implement either.
const OLD_PROFILING: &str = "dapr.io/profiling";

/// The pre-1.0 name `key` replaced, if any.
pub fn old_name_of(key: &str) -> Option<&'static str> {
    OLD_NAMES
        .iter()
        .find(|(_, new)| *new == key)
        .map(|(old, _)| *old)
}

/// Something about a pod's annotations that does not stop the injection but that its author
/// should know. Every message names the annotation, stays on one line and within 256 bytes
/// (the API server's limit for an admission warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnotationWarning {
    /// A pre-1.0 name, read as the name that replaced it.
    OldName {
        key: &'static str,
        new: &'static str,
    },
    /// A pre-1.0 or legacy name, set together with the name that replaced it, which wins.
    Shadowed { key: &'static str, by: &'static str },
    /// A name Dapr deprecated and Ferry still reads.
    Deprecated {
        key: &'static str,
        instead: &'static str,
    },
    /// A Dapr annotation Ferry does not implement; the pod works without it.
    Ignored {
        key: &'static str,
        why: &'static str,
    },
    /// A supported annotation whose resource Ferry does not apply (yet).
    NotApplied {
        key: &'static str,
        what: &'static str,
    },
    /// Not an annotation of Dapr's, with the closest one (if any is close).
    Unknown {
        key: String,
        closest: Option<&'static str>,
    },
}

impl std::fmt::Display for AnnotationWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OldName { key, new } => write!(
                f,
                "annotation {key} is Dapr's pre-1.0 name of {new}: read as {new}; rename it"
            ),
            Self::Shadowed { key, by } => write!(
                f,
                "annotation {key} is ignored: {by} is set too and wins; remove {key}"
            ),
            Self::Deprecated { key, instead } => {
                write!(
                    f,
                    "annotation {key} is deprecated, as in Dapr: use {instead}"
                )
            }
            Self::Ignored { key, why } => {
                write!(f, "annotation {key} is Dapr's, ignored by Ferry: {why}")
            }
            Self::NotApplied { key, what } => write!(f, "annotation {key}: {what}"),
            Self::Unknown { key, closest } => {
                // Keys that did not pass the API server's validation (offline, `ferry
                // inject`) may hold anything: no control character reaches the message.
                let key: String = key
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                write!(f, "annotation {key} is not a Dapr annotation, ignored")?;
                match closest {
                    Some(c) => write!(f, "; did you mean {c}?"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What Ferry does with a Dapr annotation it does not implement, given its value.
enum DaprOnly {
    /// The value asks for what Ferry does anyway: nothing to say.
    AsAsked,
    Ignored(&'static str),
    /// Refused, with why and the fix.
    Refused(&'static str),
}

/// The verdict on `key`, a Dapr annotation Ferry does not implement (`None`: not one of those).
fn dapr_only(key: &str, value: &str, annotations: &BTreeMap<String, String>) -> Option<DaprOnly> {
    use DaprOnly::{AsAsked, Ignored, Refused};
    let is = |want: bool| parse_bool(value) == Some(want);
    let port_is = |want: u16| value.parse::<u16>() == Ok(want);
    let native_sidecar = annotations
        .get(keys::ENABLE_NATIVE_SIDECAR)
        .and_then(|v| parse_bool(v.trim()))
        == Some(true);
    Some(match key {
        "dapr.io/enable-profiling" | OLD_PROFILING if is(false) => AsAsked,
        "dapr.io/enable-profiling" | OLD_PROFILING => Ignored("ferryd has no profiling endpoint"),
        "dapr.io/enable-debug" if is(false) => AsAsked,
        "dapr.io/enable-debug" | "dapr.io/debug-port" => {
            Ignored("ferryd is not a Go program and does not run under a debugger")
        }
        "dapr.io/grpc-port" if port_is(ports::GRPC_API) => AsAsked,
        "dapr.io/grpc-port" => Ignored("Ferry has no gRPC API yet; apps get DAPR_GRPC_PORT=50001"),
        "dapr.io/internal-grpc-port" if port_is(ports::INTERNAL) => AsAsked,
        // The app may have moved Dapr's port to take 50002 itself: ferryd listens there anyway.
        "dapr.io/internal-grpc-port" => Refused(
            "sidecars reach each other on port 50002 only; remove it and keep the app off 50002",
        ),
        // Kubernetes stops a native sidecar only after the app's containers have exited, which
        // is what Dapr's flag is for.
        "dapr.io/block-shutdown-duration" if native_sidecar => {
            Ignored("a native sidecar already stops only after the app's containers")
        }
        // Without it the sidecar closes its listeners on SIGTERM, while the app may still be
        // calling out as it shuts down.
        "dapr.io/block-shutdown-duration" => Refused(
            "ferryd cannot wait for the app to shut down; set dapr.io/enable-native-sidecar: \"true\" (Kubernetes then stops the sidecar after the app) instead",
        ),
        "dapr.io/enable-api-logging" if is(false) => AsAsked,
        "dapr.io/enable-api-logging" => Ignored("ferryd has no per-call API log"),
        // The app would wait for a socket that never appears.
        "dapr.io/unix-domain-socket-path" => Refused(
            "ferryd listens on TCP only; remove it and have the app call localhost:$DAPR_HTTP_PORT",
        ),
        "dapr.io/disable-builtin-k8s-secret-store" if is(true) => AsAsked,
        "dapr.io/disable-builtin-k8s-secret-store" => Ignored("Ferry has no secrets API"),
        "dapr.io/app-binding-options-timeout" => Ignored("Ferry has no bindings"),
        "dapr.io/placement-host-address" | "dapr.io/actors-disseminate-timeout" => {
            Ignored("Ferry has no actors")
        }
        "dapr.io/scheduler-host-address" => Ignored("Ferry has no scheduler (jobs, reminders)"),
        "dapr.io/inject-pluggable-components" if is(false) => AsAsked,
        "dapr.io/pluggable-components"
        | "dapr.io/pluggable-components-sockets-folder"
        | "dapr.io/component-container"
        | "dapr.io/inject-pluggable-components" => Ignored("Ferry loads no components"),
        "dapr.io/sentry-request-jwt-audiences" => {
            Ignored("Ferry's sidecars get no JWT from Sentry")
        }
        // Ferry never calls the app's /dapr/config or /dapr/subscribe.
        "dapr.io/disable-init-endpoints" => AsAsked,
        _ => return None,
    })
}

/// What Ferry says about the annotations it supports.
fn supported(
    key: &'static str,
    value: &str,
    set: &dyn Fn(&str) -> bool,
) -> Option<AnnotationWarning> {
    use AnnotationWarning::{Deprecated, NotApplied, Shadowed};
    match key {
        keys::APP_SSL if parse_bool(value) == Some(true) => Some(Deprecated {
            key,
            instead: "dapr.io/app-protocol: https",
        }),
        keys::HTTP_MAX_REQUEST_SIZE if set(keys::MAX_BODY_SIZE) => Some(Shadowed {
            key,
            by: keys::MAX_BODY_SIZE,
        }),
        keys::HTTP_MAX_REQUEST_SIZE => Some(Deprecated {
            key,
            instead: "dapr.io/max-body-size, such as 16Mi",
        }),
        keys::HTTP_READ_BUFFER_SIZE if set(keys::READ_BUFFER_SIZE) => Some(Shadowed {
            key,
            by: keys::READ_BUFFER_SIZE,
        }),
        keys::HTTP_READ_BUFFER_SIZE => Some(Deprecated {
            key,
            instead: "dapr.io/read-buffer-size, such as 16Ki",
        }),
        // The sidecar applies the Configuration's access control only, and without verified
        // identities only its defaultAction: the author must hear what is not applied.
        keys::CONFIG => Some(NotApplied {
            key,
            what: "Ferry applies only the Configuration's access control (only its defaultAction until mTLS between sidecars lands), not its tracing, metrics or logging",
        }),
        _ => None,
    }
}

/// Looks at every `dapr.io/*` annotation: the warnings for the pod's author, in the order of
/// the keys, or the refusal of the first annotation Ferry cannot honour. Empty values count as
/// absent, as everywhere.
pub fn review(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<AnnotationWarning>, AnnotationError> {
    let set = |key: &str| annotations.get(key).is_some_and(|v| !v.trim().is_empty());
    let mut warnings = Vec::new();
    for (key, value) in annotations {
        let value = value.trim();
        if !key.starts_with("dapr.io/") || value.is_empty() {
            continue;
        }
        if let Some(key) = keys::ALL.iter().copied().find(|k| k == key) {
            warnings.extend(supported(key, value, &set));
        } else if let Some(&(old, new)) = OLD_NAMES.iter().find(|(old, _)| old == key) {
            warnings.push(if set(new) {
                AnnotationWarning::Shadowed { key: old, by: new }
            } else {
                AnnotationWarning::OldName { key: old, new }
            });
        } else if let Some(verdict) = dapr_only(key, value, annotations) {
            // A `&'static str` for the messages: the key is one of the match arms.
            let key = DAPR_ANNOTATIONS
                .iter()
                .chain(std::iter::once(&OLD_PROFILING))
                .copied()
                .find(|k| k == key)
                .unwrap_or("dapr.io/?");
            match verdict {
                DaprOnly::AsAsked => {}
                DaprOnly::Ignored(why) => warnings.push(AnnotationWarning::Ignored { key, why }),
                DaprOnly::Refused(why) => return Err(AnnotationError::NotImplemented { key, why }),
            }
        } else {
            warnings.push(AnnotationWarning::Unknown {
                key: key.clone(),
                closest: closest_annotation(key),
            });
        }
    }
    Ok(warnings)
}

/// The Dapr annotation closest to `key` by edit distance (case aside), when it is close enough
/// to be what was meant: at most two edits, or a third of the name's length for long names. A
/// pre-1.0 name stands for the name that replaced it.
pub fn closest_annotation(key: &str) -> Option<&'static str> {
    let name = key.strip_prefix("dapr.io/").unwrap_or(key).to_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    DAPR_ANNOTATIONS
        .iter()
        .map(|k| (*k, *k))
        .chain(OLD_NAMES.iter().copied())
        .map(|(candidate, meant)| {
            let candidate = candidate.strip_prefix("dapr.io/").unwrap_or(candidate);
            (edit_distance(&name, candidate), meant)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, meant)| meant)
}

/// The optimal-string-alignment distance between `a` and `b`: insertions, deletions,
/// substitutions and transpositions of neighbours (`prot` → `port` is one edit), in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows of the distance matrix: the one two back (for transpositions), the last one
    // and the current one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    let mut row: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j] + 1).min(row[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut last);
        std::mem::swap(&mut last, &mut row);
    }
    last[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn messages(pairs: &[(&str, &str)]) -> Result<Vec<String>, String> {
        review(&annotations(pairs))
            .map(|w| w.iter().map(ToString::to_string).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn edit_distances() {
        for (a, b, d) in [
            ("", "", 0),
            ("app-id", "app-id", 0),
            ("", "abc", 3),
            ("abc", "", 3),
            ("app-prot", "app-port", 1),
            ("ab", "ba", 1),
            ("appid", "app-id", 1),
            ("app_port", "app-port", 1),
            ("log-levl", "log-level", 1),
            ("kitten", "sitting", 3),
            ("ca", "abc", 3),
            ("héllo", "hello", 1),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a:?} → {b:?}");
            assert_eq!(edit_distance(b, a), d, "{b:?} → {a:?}");
        }
    }

    #[test]
    fn the_closest_annotation_is_the_one_meant() {
        for (typed, meant) in [
            ("dapr.io/app-prot", Some("dapr.io/app-port")),
            ("dapr.io/appid", Some("dapr.io/app-id")),
            ("dapr.io/App-Port", Some("dapr.io/app-port")),
            ("dapr.io/enable-metric", Some("dapr.io/enable-metrics")),
            (
                "dapr.io/sidecar-cpu-limits",
                Some("dapr.io/sidecar-cpu-limit"),
            ),
            (
                "dapr.io/sidecar-liveness-probe-delay",
                Some("dapr.io/sidecar-liveness-probe-delay-seconds"),
            ),
            ("dapr.io/log-levl", Some("dapr.io/log-level")),
            // A misspelt pre-1.0 name points at today's name.
            ("dapr.io/ids", Some("dapr.io/app-id")),
            (
                "dapr.io/max-concurency",
                Some("dapr.io/app-max-concurrency"),
            ),
            // Nothing close: no guess.
            ("dapr.io/foo", None),
            ("dapr.io/replicas", None),
        ] {
            assert_eq!(closest_annotation(typed), meant, "{typed}");
        }
    }

    #[test]
    fn old_names_are_read_and_say_so() {
        assert_eq!(
            messages(&[("dapr.io/id", "cart"), ("dapr.io/port", "5000")]),
            Ok(vec![
                "annotation dapr.io/id is Dapr's pre-1.0 name of dapr.io/app-id: read as dapr.io/app-id; rename it".to_owned(),
                "annotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it".to_owned(),
            ])
        );
        assert_eq!(
            messages(&[("dapr.io/id", "cart"), ("dapr.io/app-id", "orders")]),
            Ok(vec![
                "annotation dapr.io/id is ignored: dapr.io/app-id is set too and wins; remove dapr.io/id".to_owned()
            ])
        );
        // An empty new name does not count as set.
        assert_eq!(
            messages(&[("dapr.io/port", "5000"), ("dapr.io/app-port", " ")]).unwrap()[0],
            "annotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it"
        );
        assert_eq!(old_name_of(keys::APP_ID), Some("dapr.io/id"));
        assert_eq!(old_name_of(keys::LOG_LEVEL), None);
    }

    #[test]
    fn unknown_annotations_name_the_closest_known_one() {
        assert_eq!(
            messages(&[
                ("dapr.io/app-prot", "5000"),
                ("dapr.io/foo", "x"),
                ("example.com/app-prot", "not ours"),
                ("dapr.io/emptyone", ""),
            ]),
            Ok(vec![
                "annotation dapr.io/app-prot is not a Dapr annotation, ignored; did you mean dapr.io/app-port?".to_owned(),
                "annotation dapr.io/foo is not a Dapr annotation, ignored".to_owned(),
            ])
        );
    }

    #[test]
    fn dapr_annotations_ferry_does_not_implement_are_never_unknown() {
        for key in DAPR_ANNOTATIONS {
            let verdict = review(&annotations(&[(key, "x")]));
            if let Ok(warnings) = &verdict {
                assert!(
                    !warnings
                        .iter()
                        .any(|w| matches!(w, AnnotationWarning::Unknown { .. })),
                    "{key}: {warnings:?}"
                );
            }
        }
        // And every annotation Ferry supports is Dapr's.
        for key in keys::ALL {
            assert!(DAPR_ANNOTATIONS.contains(key), "{key} is not Dapr's");
        }
    }

    #[test]
    fn unimplemented_annotations_are_ignored_or_refused() {
        let ignored = [
            (
                "dapr.io/enable-profiling",
                "true",
                "ferryd has no profiling endpoint",
            ),
            (
                "dapr.io/profiling",
                "true",
                "ferryd has no profiling endpoint",
            ),
            ("dapr.io/enable-debug", "true", "debugger"),
            ("dapr.io/debug-port", "40000", "debugger"),
            ("dapr.io/grpc-port", "50011", "DAPR_GRPC_PORT=50001"),
            ("dapr.io/enable-api-logging", "true", "per-call API log"),
            (
                "dapr.io/disable-builtin-k8s-secret-store",
                "false",
                "no secrets API",
            ),
            ("dapr.io/app-binding-options-timeout", "5s", "no bindings"),
            ("dapr.io/placement-host-address", "p:50005", "no actors"),
            ("dapr.io/actors-disseminate-timeout", "1s", "no actors"),
            ("dapr.io/scheduler-host-address", "s:50006", "no scheduler"),
            ("dapr.io/pluggable-components", "redis", "no components"),
            (
                "dapr.io/pluggable-components-sockets-folder",
                "/s",
                "no components",
            ),
            ("dapr.io/component-container", "{}", "no components"),
            (
                "dapr.io/inject-pluggable-components",
                "true",
                "no components",
            ),
            ("dapr.io/sentry-request-jwt-audiences", "a", "no JWT"),
        ];
        for (key, value, why) in ignored {
            let m = messages(&[(key, value)]).unwrap();
            assert_eq!(m.len(), 1, "{key}: {m:?}");
            assert!(
                m[0].starts_with(&format!("annotation {key} is Dapr's, ignored by Ferry: "))
                    && m[0].contains(why),
                "{key}: {m:?}"
            );
        }
        // Values that ask for what Ferry does anyway.
        for (key, value) in [
            ("dapr.io/enable-profiling", "false"),
            ("dapr.io/enable-debug", "0"),
            ("dapr.io/grpc-port", "50001"),
            ("dapr.io/internal-grpc-port", "50002"),
            ("dapr.io/enable-api-logging", "false"),
            ("dapr.io/disable-builtin-k8s-secret-store", "true"),
            ("dapr.io/inject-pluggable-components", "false"),
            ("dapr.io/disable-init-endpoints", "config,subscribe"),
        ] {
            assert_eq!(messages(&[(key, value)]), Ok(vec![]), "{key}: {value}");
        }
        let refused = [
            (
                vec![("dapr.io/internal-grpc-port", "50012")],
                "port 50002 only",
            ),
            (
                vec![("dapr.io/unix-domain-socket-path", "/tmp")],
                "ferryd listens on TCP only",
            ),
            (
                vec![("dapr.io/block-shutdown-duration", "10s")],
                "set dapr.io/enable-native-sidecar: \"true\"",
            ),
        ];
        for (pairs, why) in refused {
            let e = messages(&pairs).unwrap_err();
            let key = pairs[0].0;
            assert!(
                e.starts_with(&format!("annotation {key} is not supported by Ferry: "))
                    && e.contains(why),
                "{e}"
            );
        }
        // With a native sidecar, Kubernetes already does what block-shutdown-duration asks.
        assert_eq!(
            messages(&[
                ("dapr.io/block-shutdown-duration", "10s"),
                (keys::ENABLE_NATIVE_SIDECAR, "true"),
            ]),
            Ok(vec!["annotation dapr.io/block-shutdown-duration is Dapr's, ignored by Ferry: a native sidecar already stops only after the app's containers".to_owned()])
        );
    }

    #[test]
    fn supported_annotations_warn_when_deprecated_shadowed_or_not_applied() {
        assert_eq!(
            messages(&[(keys::APP_SSL, "true")]),
            Ok(vec![
                "annotation dapr.io/app-ssl is deprecated, as in Dapr: use dapr.io/app-protocol: https".to_owned()
            ])
        );
        assert_eq!(messages(&[(keys::APP_SSL, "false")]), Ok(vec![]));
        assert_eq!(
            messages(&[(keys::HTTP_MAX_REQUEST_SIZE, "8"), (keys::MAX_BODY_SIZE, "16Mi")]),
            Ok(vec![
                "annotation dapr.io/http-max-request-size is ignored: dapr.io/max-body-size is set too and wins; remove dapr.io/http-max-request-size".to_owned()
            ])
        );
        assert_eq!(
            messages(&[(keys::HTTP_READ_BUFFER_SIZE, "8")]),
            Ok(vec![
                "annotation dapr.io/http-read-buffer-size is deprecated, as in Dapr: use dapr.io/read-buffer-size, such as 16Ki".to_owned()
            ])
        );
        assert!(
            messages(&[(keys::CONFIG, "appconfig")]).unwrap()[0].contains(
                "only its defaultAction until mTLS between sidecars lands), not its tracing"
            )
        );
        assert_eq!(
            messages(&[(keys::ENABLED, "true"), (keys::APP_ID, "cart")]),
            Ok(vec![])
        );
    }

    #[test]
    fn every_message_fits_an_admission_warning() {
        // The longest key the API server admits under dapr.io/ (a 63-character name).
        let longest = format!(
            "dapr.io/{}",
            "sidecar-readiness-probe-timeout-seconds-x".repeat(2)
        );
        let longest = &longest[..8 + 63];
        let mut pairs: Vec<(&str, &str)> = DAPR_ANNOTATIONS
            .iter()
            .chain(OLD_NAMES.iter().map(|(old, _)| old))
            .map(|k| (*k, "x"))
            .filter(|(k, _)| {
                !matches!(
                    *k,
                    "dapr.io/internal-grpc-port"
                        | "dapr.io/unix-domain-socket-path"
                        | "dapr.io/block-shutdown-duration"
                )
            })
            .collect();
        pairs.push((longest, "x"));
        pairs.push(("dapr.io/sidecar-readiness-probe-timeout-secondz", "x"));
        pairs.push((keys::APP_SSL, "true"));
        let all = messages(&pairs).unwrap();
        assert!(all.len() > 20, "{all:?}");
        for m in all {
            assert!(m.len() <= 256, "{} bytes: {m}", m.len());
            assert!(!m.contains('\n'), "{m}");
        }
        for key in [
            "dapr.io/unix-domain-socket-path",
            "dapr.io/internal-grpc-port",
        ] {
            let refusal = messages(&[(key, "1")]).unwrap_err();
            assert!(refusal.len() <= 256, "{refusal}");
        }
    }
}
