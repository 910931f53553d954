//! Golden fixtures: `tests/fixtures/<case>/pod.yaml` (plus optional `config.yaml` with an
//! `InjectorConfig`, and `user.yaml` with the requesting `UserInfo`) → `expected.patch.json`.
//! An injected pod's file holds the JSON patch (its warnings, if any, are in the patch: the
//! `ferry.dev/injection-warnings` annotation); a skipped one holds `{"skip": "<reason>"}` and a
//! denied one `{"deny": "<message>"}`.
//!
//! `BLESS=1 cargo test -p ferry-injector` rewrites the expected files.

use std::{fs, path::Path};

use ferry_injector::{
    Decision, Injection, InjectorConfig, SkipReason, UserInfo,
    inject::{INJECTION_WARNINGS, record_warnings},
    plan,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = fs::read_to_string(path).ok()?;
    Some(serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

struct Case {
    pod: Pod,
    cfg: InjectorConfig,
    user: Option<UserInfo>,
}

fn load(dir: &Path) -> Case {
    let pod: Pod = read_yaml(&dir.join("pod.yaml"))
        .unwrap_or_else(|| panic!("{}: no pod.yaml", dir.display()));
    let cfg: InjectorConfig = read_yaml(&dir.join("config.yaml")).unwrap_or_default();
    let user: Option<UserInfo> = read_yaml(&dir.join("user.yaml"));
    Case { pod, cfg, user }
}

fn fixture_dirs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() > 10, "fixtures missing under {}", root.display());
    dirs
}

fn run_case(dir: &Path) -> Result<(), String> {
    let Case { pod, cfg, user } = load(dir);
    let decision = plan(&pod, &cfg, user.as_ref());
    let actual = match &decision {
        Decision::Inject(Injection { patch, warnings }) => {
            // The patch applies, and planning the patched pod again changes nothing.
            let mut doc = serde_json::to_value(&pod).unwrap();
            json_patch::patch(&mut doc, patch).map_err(|e| format!("patch does not apply: {e}"))?;
            let patched: Pod = serde_json::from_value(doc).map_err(|e| e.to_string())?;
            let again = plan(&patched, &cfg, user.as_ref());
            if again != Decision::Skip(SkipReason::AlreadyInjected) {
                return Err(format!("reinvocation is not idempotent: {again:?}"));
            }
            // What the webhook answers as warnings is what the pod records.
            let recorded = patched
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INJECTION_WARNINGS));
            let want = (!warnings.is_empty()).then(|| record_warnings(warnings));
            if recorded != want.as_ref() {
                return Err(format!(
                    "the pod records {recorded:?}, the webhook warns {warnings:?}"
                ));
            }
            serde_json::to_value(patch).unwrap()
        }
        Decision::Skip(reason) => json!({ "skip": reason.as_str() }),
        Decision::Deny(message) => json!({ "deny": message }),
    };
    let actual = serde_json::to_string_pretty(&actual).unwrap() + "\n";
    let expected_path = dir.join("expected.patch.json");
    if std::env::var_os("BLESS").is_some() {
        fs::write(&expected_path, &actual).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let expected = fs::read_to_string(&expected_path)
        .map_err(|e| format!("{}: {e} (run with BLESS=1)", expected_path.display()))?;
    if expected != actual {
        return Err(format!(
            "differs from expected.patch.json (BLESS=1 to accept):\n{actual}"
        ));
    }
    Ok(())
}

#[test]
fn golden_fixtures() {
    let failures: Vec<String> = fixture_dirs()
        .iter()
        .filter_map(|d| run_case(d).err().map(|e| format!("{}: {e}", d.display())))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_skip_reason_but_not_a_pod_has_a_fixture() {
    let skips: Vec<SkipReason> = fixture_dirs()
        .iter()
        .map(|d| {
            let c = load(d);
            plan(&c.pod, &c.cfg, c.user.as_ref())
        })
        .filter_map(|d| match d {
            Decision::Skip(r) => Some(r),
            _ => None,
        })
        .collect();
    for reason in [
        SkipReason::NotEnabled,
        SkipReason::UnauthorizedServiceAccount,
        SkipReason::HostNetwork,
        SkipReason::AlreadyInjected,
    ] {
        assert!(
            skips.contains(&reason),
            "no fixture for {}",
            reason.as_str()
        );
    }
}
