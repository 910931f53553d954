//! `ferry inject -f manifest.yaml`: the injector's decision applied offline, like `linkerd inject`.
//!
//! Every Pod, and the pod template of every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job
//! and CronJob, goes through the same [`ferry_injector::plan`] as the webhook, without an
//! authorization check. Other objects, and skipped pods, pass unchanged (a skip is noted on
//! stderr). The webhook's warnings (an old or misspelt annotation, a Dapr feature Ferry
//! ignores) go to stderr, one line each naming the object; the injected template records them
//! too, so every pod made from it carries them to the operator, which shows them as an Event.
//! A denied pod prints its message and exits 1, with nothing on stdout.
//!
//! The output names no namespace that the input did not: the sidecar reads its namespace from
//! the downward API, so `ferry inject -f x.yaml | kubectl apply -n prod -f -` runs in `prod`.

use std::io::Read;

use clap::Args;
use ferry_injector::{Decision, Injection, InjectorConfig, inject::DEFAULT_SIDECAR_IMAGE, plan};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// Manifest files (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// The sidecar image, unless a pod's `dapr.io/sidecar-image` names one.
    #[arg(long, env = "FERRY_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not YAML: {source}")]
    Parse {
        file: String,
        source: Box<serde_saphyr::Error>,
    },
    #[error("{object}: the pod template is not a valid pod: {source}")]
    BadTemplate {
        object: String,
        source: serde_json::Error,
    },
    #[error("{object}: {message}")]
    Denied { object: String, message: String },
    #[error("{object}: the patch does not apply: {source}")]
    Patch {
        object: String,
        source: json_patch::PatchError,
    },
    #[error("cannot write YAML: {0}")]
    Write(#[from] serde_saphyr::SerializeError),
}

pub fn main(args: InjectArgs) -> i32 {
    let mut inputs = Vec::new();
    for file in &args.files {
        match read(file) {
            Ok(text) => inputs.push((file.clone(), text)),
            Err(e) => {
                eprintln!("ferry inject: {e}");
                return 1;
            }
        }
    }
    let cfg = InjectorConfig {
        sidecar_image: args.sidecar_image.clone(),
        ..Default::default()
    };
    match inject_all(&inputs, &cfg) {
        Ok((yaml, notes)) => {
            for note in notes {
                eprintln!("ferry inject: {note}");
            }
            print!("{yaml}");
            0
        }
        Err(errors) => {
            for e in errors {
                eprintln!("ferry inject: {e}");
            }
            1
        }
    }
}

fn read(file: &str) -> Result<String, InjectError> {
    let mut text = String::new();
    let result = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    result.map(|()| text).map_err(|source| InjectError::Read {
        file: file.into(),
        source,
    })
}

/// Injects every document of every input; returns the YAML and the notes (skipped pods, and
/// the warnings, one per line), or every error.
pub fn inject_all(
    inputs: &[(String, String)],
    cfg: &InjectorConfig,
) -> Result<(String, Vec<String>), Vec<InjectError>> {
    let mut docs = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in inputs {
        let parsed: Vec<Value> = match serde_saphyr::from_multiple(text) {
            Ok(d) => d,
            Err(source) => {
                errors.push(InjectError::Parse {
                    file: file.clone(),
                    source: Box::new(source),
                });
                continue;
            }
        };
        for mut doc in parsed.into_iter().filter(|d| !d.is_null()) {
            match inject_object(&mut doc, cfg) {
                Ok(more) => notes.extend(more),
                Err(e) => errors.push(e),
            }
            docs.push(doc);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(doc).map_err(|e| vec![e.into()])?);
    }
    Ok((out, notes))
}

/// The JSON pointer of an object's pod template, by kind.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects one object in place; returns its notes: that its pod was skipped, or the warnings.
fn inject_object(doc: &mut Value, cfg: &InjectorConfig) -> Result<Vec<String>, InjectError> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(Vec::new());
    };
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let object = format!("{kind}/{name}");
    let Some(template) = doc.pointer_mut(pointer).filter(|t| t.is_object()) else {
        return Ok(Vec::new());
    };
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    // A template usually has no name: the object's name stands in for it (the app ID default).
    let mut pod_value = template.clone();
    if pod_value["metadata"]["name"].is_null() && !name.is_empty() {
        pod_value["metadata"]["name"] = json!(name);
    }
    let pod: Pod =
        serde_json::from_value(pod_value).map_err(|source| InjectError::BadTemplate {
            object: object.clone(),
            source,
        })?;
    match plan(&pod, cfg, None) {
        Decision::Inject(Injection { patch, warnings }) => {
            json_patch::patch(template, &patch).map_err(|source| InjectError::Patch {
                object: object.clone(),
                source,
            })?;
            Ok(warnings
                .iter()
                .map(|w| format!("{object}: warning: {w}"))
                .collect())
        }
        Decision::Skip(reason) => Ok(vec![format!("{object}: skipped ({})", reason.as_str())]),
        Decision::Deny(message) => Err(InjectError::Denied { object, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_pointers() {
        assert_eq!(template_pointer("Pod"), Some(""));
        assert_eq!(
            template_pointer("CronJob"),
            Some("/spec/jobTemplate/spec/template")
        );
        for kind in [
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "Job",
        ] {
            assert_eq!(template_pointer(kind), Some("/spec/template"), "{kind}");
        }
        assert_eq!(template_pointer("Service"), None);
    }
}
