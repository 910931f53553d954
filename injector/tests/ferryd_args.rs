//! The injected `daprd` container runs `/ferryd` with the arguments the injector wrote: every
//! such argument list must be one ferryd accepts, both its flag parser (clap) and its start-up
//! validation (`SidecarArgs::settings`), or the pod's sidecar never starts.
//!
//! Checked for every golden fixture's expected patch, and for a pod that sets every annotation
//! that adds a flag.

use std::{collections::BTreeMap, fs, path::Path};

use clap::Parser;
use ferry_injector::{Decision, Injection, InjectorConfig, plan};
use ferry_sidecar::{ConfigError, SidecarArgs};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// ferryd's command line, as `sidecar/src/main.rs` defines it.
#[derive(Parser, Debug)]
#[command(name = "ferryd")]
struct Ferryd {
    #[command(flatten)]
    sidecar: SidecarArgs,
}

/// What the downward API gives the container as `POD_IP`.
const POD_IP: &str = "10.244.1.17";

/// The `daprd` container's command and args in a JSON patch, if it adds one.
fn daprd_container(patch: &Value) -> Option<(Vec<String>, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    patch.as_array()?.iter().find_map(|op| {
        let c = &op["value"];
        (c["name"] == "daprd").then(|| (strings(&c["command"]), strings(&c["args"])))
    })
}

/// Parses and validates `args` as ferryd would at start-up.
fn ferryd_accepts(args: &[String]) -> Result<(), String> {
    let cli =
        Ferryd::try_parse_from(std::iter::once("ferryd".to_owned()).chain(args.iter().cloned()))
            .map_err(|e| e.to_string())?;
    cli.sidecar
        .settings_with(Some(POD_IP.to_owned()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn every_fixtures_daprd_arguments_start_ferryd() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let text = fs::read_to_string(dir.join("expected.patch.json")).unwrap();
        let patch: Value = serde_json::from_str(&text).unwrap();
        let Some((command, args)) = daprd_container(&patch) else {
            continue; // skipped or denied
        };
        checked += 1;
        assert_eq!(command, ["/ferryd"], "{name}");
        if let Err(e) = ferryd_accepts(&args) {
            failures.push(format!("{name}: ferryd refuses {args:?}: {e}"));
        }
    }
    assert!(checked >= 20, "only {checked} fixtures inject a sidecar");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn pod(annotations: &[(&str, &str)]) -> Pod {
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "shop/orders:1"}]},
    }))
    .unwrap()
}

/// The daprd args for a pod with these annotations; `None` when the injector denies it.
fn try_injected_args(annotations: &[(&str, &str)]) -> Option<Vec<String>> {
    match plan(&pod(annotations), &InjectorConfig::default(), None) {
        Decision::Inject(Injection { patch, .. }) => Some(
            daprd_container(&serde_json::to_value(&patch).unwrap())
                .expect("a daprd container")
                .1,
        ),
        Decision::Deny(_) => None,
        other => panic!("{annotations:?}: neither injected nor denied: {other:?}"),
    }
}

fn injected_args(annotations: &[(&str, &str)]) -> Vec<String> {
    try_injected_args(annotations)
        .unwrap_or_else(|| panic!("{annotations:?}: the injector denied the pod"))
}

#[test]
fn every_flag_the_injector_can_write_starts_ferryd() {
    let args = injected_args(&[
        ("dapr.io/enabled", "true"),
        ("dapr.io/app-id", "orders"),
        ("dapr.io/app-port", "8080"),
        ("dapr.io/app-protocol", "http"),
        ("dapr.io/app-ssl", "true"),
        ("dapr.io/config", "tracing"),
        ("dapr.io/log-level", "fatal"),
        ("dapr.io/log-as-json", "true"),
        ("dapr.io/enable-metrics", "true"),
        ("dapr.io/metrics-port", "9999"),
        ("dapr.io/sidecar-listen-addresses", "0.0.0.0,[::]"),
        ("dapr.io/max-body-size", "16Mi"),
        ("dapr.io/http-max-request-size", "8"),
        ("dapr.io/read-buffer-size", "64Ki"),
        ("dapr.io/http-read-buffer-size", "32"),
        ("dapr.io/app-channel-address", "10.1.2.3"),
        ("dapr.io/app-max-concurrency", "10"),
        ("dapr.io/graceful-shutdown-seconds", "30"),
        ("dapr.io/enable-app-health-check", "true"),
        ("dapr.io/app-health-check-path", "/ready"),
        ("dapr.io/app-health-probe-interval", "2"),
        ("dapr.io/app-health-probe-timeout", "2000"),
        ("dapr.io/app-health-threshold", "4"),
    ]);
    // Every flag sidecar_args can write is in this list.
    let flags: Vec<&str> = args.iter().filter_map(|a| a.strip_prefix("--")).collect();
    for flag in [
        "mode",
        "dapr-http-port",
        "dapr-grpc-port",
        "dapr-internal-grpc-port",
        "dapr-listen-addresses",
        "dapr-public-port",
        "app-id",
        "app-protocol",
        "log-level",
        "dapr-graceful-shutdown-seconds",
        "app-port",
        "app-ssl",
        "log-as-json",
        "enable-metrics",
        "metrics-port",
        "config",
        "max-body-size",
        "dapr-http-max-request-size",
        "read-buffer-size",
        "dapr-http-read-buffer-size",
        "app-channel-address",
        "app-max-concurrency",
        "enable-app-health-check",
        "app-health-check-path",
        "app-health-probe-interval",
        "app-health-probe-timeout",
        "app-health-threshold",
    ] {
        assert!(flags.contains(&flag), "--{flag} missing from {args:?}");
    }
    assert_eq!(ferryd_accepts(&args), Ok(()), "{args:?}");
    assert!(
        !flags.contains(&"namespace"),
        "the namespace comes from NAMESPACE (the downward API): {args:?}"
    );

    let cli =
        Ferryd::try_parse_from(std::iter::once("ferryd".to_owned()).chain(args.clone())).unwrap();
    let s = cli.sidecar.settings_with(Some(POD_IP.to_owned())).unwrap();
    assert_eq!(s.max_body, 16 << 20, "--max-body-size wins, as in daprd");
    assert_eq!(s.max_concurrency, Some(10));
    assert_eq!(s.metrics.map(|a| a.port()), Some(9999));
    assert_eq!(s.internal.port(), 50002);
    assert!(s.internal.ip().is_unspecified());
    assert_eq!(s.host_ip.to_string(), POD_IP);
    assert_eq!(s.app_health.unwrap().path, "/ready");
    assert_eq!(s.max_head, 64 << 10, "--read-buffer-size wins, as in daprd");
    assert_eq!(s.app.unwrap().address, "10.1.2.3");
}

type Annotations = &'static [(&'static str, &'static str)];

/// The same invariant for annotation combinations no fixture has: what the injector admits,
/// ferryd must start with; what ferryd would refuse (with the reason given), the injector
/// must refuse at admission.
#[test]
fn annotation_combinations_the_injector_admits() {
    let base = [("dapr.io/enabled", "true"), ("dapr.io/app-id", "orders")];
    let cases: &[(Annotations, Option<ConfigError>)] = &[
        (
            &[("dapr.io/app-port", "8080"), ("dapr.io/log-level", "fatal")],
            None,
        ),
        (&[("dapr.io/app-max-concurrency", "1")], None),
        (&[("dapr.io/http-max-request-size", "1")], None),
        (&[("dapr.io/enable-metrics", "false")], None),
        // The largest values the injector admits.
        (
            &[
                ("dapr.io/http-max-request-size", "1048576"),
                ("dapr.io/http-read-buffer-size", "1048576"),
                ("dapr.io/app-max-concurrency", "4294967295"),
            ],
            None,
        ),
        (
            &[
                ("dapr.io/app-port", "8080"),
                ("dapr.io/enable-app-health-check", "true"),
                ("dapr.io/app-health-probe-interval", "86400"),
                ("dapr.io/app-health-probe-timeout", "86400000"),
            ],
            None,
        ),
        // Read under Dapr's pre-1.0 names.
        (
            &[("dapr.io/port", "5000"), ("dapr.io/max-concurrency", "2")],
            None,
        ),
        (
            &[
                ("dapr.io/app-port", "8080"),
                ("dapr.io/enable-app-health-check", "true"),
                ("dapr.io/app-health-probe-interval", "1"),
                ("dapr.io/app-health-probe-timeout", "1000"),
            ],
            None,
        ),
        // Refused by the injector, naming the annotations, because ferryd could not start.
        (
            &[
                ("dapr.io/app-port", "8080"),
                ("dapr.io/enable-app-health-check", "true"),
                ("dapr.io/app-health-probe-interval", "1"),
                ("dapr.io/app-health-probe-timeout", "1500"),
            ],
            Some(ConfigError::ProbeTimeoutAboveInterval {
                timeout_ms: 1500,
                interval_s: 1,
            }),
        ),
        // Refused by the injector: there is no app port to probe.
        (
            &[("dapr.io/enable-app-health-check", "true")],
            Some(ConfigError::HealthCheckWithoutAppPort),
        ),
    ];
    for (extra, ferryd_would_refuse) in cases {
        let annotations: Vec<(&str, &str)> = base.iter().chain(extra.iter()).copied().collect();
        match (try_injected_args(&annotations), ferryd_would_refuse) {
            (Some(args), None) => assert_eq!(ferryd_accepts(&args), Ok(()), "{extra:?}: {args:?}"),
            (None, Some(_)) => {}
            (Some(args), Some(e)) => {
                panic!(
                    "{extra:?}: the injector admits a pod whose ferryd would refuse to start ({e}): {args:?}"
                )
            }
            (None, None) => panic!("{extra:?}: the injector denies a pod ferryd would start"),
        }
    }
}
