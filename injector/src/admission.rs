//! One AdmissionReview in, one AdmissionReview out: the webhook's protocol around
//! [`inject::plan`](crate::inject::plan). Pure: no I/O, so every malformed review can be tested
//! directly.

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject, Status,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};

use crate::inject::{
    self, Decision, INJECTION_WARNINGS, Injection, InjectorConfig, SkipReason, UserInfo,
};

/// The most warning text one answer carries. The API server keeps 4096 characters of warnings
/// for a whole request, from every webhook and its own checks, and past that drops the rest
/// without a word: ours stay well inside, the rest counted in a last line.
pub const MAX_WARNINGS_BYTES: usize = 2048;

/// The review versions the API server may send (`admissionReviewVersions`).
pub const SUPPORTED_VERSIONS: [&str; 2] = ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"];

/// Why a body is not a review this webhook can answer. The HTTP edge answers 400 with the
/// message: without a readable request there is no uid to answer to.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("kind {0:?} is not AdmissionReview")]
    WrongKind(String),
    #[error(
        "apiVersion {0:?} is not supported (use admission.k8s.io/v1 or admission.k8s.io/v1beta1)"
    )]
    UnsupportedVersion(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

impl ReviewError {
    /// A fixed name for the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_review",
            Self::WrongKind(_) => "wrong_kind",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::NoRequest => "no_request",
        }
    }
}

/// What was answered, for the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// `inject`, `skip`, `deny` or `error`.
    pub decision: &'static str,
    pub reason: &'static str,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    pub review: AdmissionReview<DynamicObject>,
    pub verdict: Verdict,
    /// The denial message, when the pod was refused.
    pub message: Option<String>,
}

impl Answer {
    /// The answer as the API server expects it. kube serializes the patch as an array of bytes;
    /// the API's own encoding of `[]byte` is a base64 string, which is what is sent here.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        use base64::Engine as _;
        let mut value = serde_json::to_value(&self.review)?;
        if let Some(patch) = value.pointer_mut("/response/patch")
            && let Some(bytes) = patch.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Vec<u8>>()
            })
        {
            *patch =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        serde_json::to_vec(&value)
    }
}

/// Reads `body` as an AdmissionReview and answers it, in the same apiVersion, for the same uid.
pub fn review(body: &[u8], cfg: &InjectorConfig) -> Result<Answer, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    if review.types.kind != "AdmissionReview" {
        return Err(ReviewError::WrongKind(review.types.kind));
    }
    if !SUPPORTED_VERSIONS.contains(&review.types.api_version.as_str()) {
        return Err(ReviewError::UnsupportedVersion(review.types.api_version));
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    Ok(answer(&request, cfg))
}

fn answer(req: &AdmissionRequest<DynamicObject>, cfg: &InjectorConfig) -> Answer {
    let allowed = AdmissionResponse::from(req);
    let skip = |reason: SkipReason| Answer {
        review: AdmissionResponse::from(req).into_review(),
        verdict: Verdict {
            decision: "skip",
            reason: reason.as_str(),
        },
        message: None,
    };
    if !req.kind.group.is_empty() || req.kind.kind != "Pod" {
        return skip(SkipReason::NotAPod);
    }
    if req.operation != Operation::Create {
        return skip(SkipReason::NotCreate);
    }
    let pod = match req.object.as_ref().map(pod_of) {
        Some(Ok(pod)) => pod,
        Some(Err(e)) => return refuse(allowed, "error", "unreadable_pod", e),
        None => {
            return refuse(
                allowed,
                "error",
                "no_object",
                "the review of a Pod CREATE carries no object".into(),
            );
        }
    };
    let user = UserInfo {
        username: req.user_info.username.clone().unwrap_or_default(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
    };
    match inject::plan(&pod, cfg, Some(&user)) {
        Decision::Skip(reason) => skip(reason),
        Decision::Deny(message) => refuse(allowed, "deny", "invalid_annotation", message),
        Decision::Inject(Injection { patch, warnings }) => match allowed.with_patch(patch) {
            Ok(mut response) => {
                // kubectl prints these to whoever created the pod; a controller's pods show
                // them to nobody, which the annotation and the operator's Event are for.
                if !warnings.is_empty() {
                    response.warnings = Some(response_warnings(&warnings));
                }
                Answer {
                    review: response.into_review(),
                    verdict: Verdict {
                        decision: "inject",
                        reason: "patched",
                    },
                    message: None,
                }
            }
            Err(e) => refuse(
                AdmissionResponse::from(req),
                "error",
                "patch_not_serializable",
                format!("cannot serialize the sidecar patch: {e}"),
            ),
        },
    }
}

/// The warnings of an answer, within [`MAX_WARNINGS_BYTES`].
fn response_warnings(warnings: &[String]) -> Vec<String> {
    inject::fit_warnings(
        warnings,
        MAX_WARNINGS_BYTES,
        &format!("more warnings: see the pod's annotation {INJECTION_WARNINGS}"),
    )
}

fn pod_of(object: &DynamicObject) -> Result<Pod, String> {
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("the object is not a readable Pod: {e}"))
}

/// Refuses the pod. The API server shows `message` to whoever created it (for a Deployment, in
/// its ReplicaSet's FailedCreate events).
fn refuse(
    response: AdmissionResponse,
    decision: &'static str,
    reason: &'static str,
    message: String,
) -> Answer {
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, "BadRequest").with_code(400);
    Answer {
        review: response.into_review(),
        verdict: Verdict { decision, reason },
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn review_body(api_version: &str, pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "cart-", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "cart:1"}]},
        })
    }

    fn answer_json(body: &[u8]) -> Value {
        let a = review(body, &InjectorConfig::default()).unwrap();
        serde_json::from_slice(&a.to_json().unwrap()).unwrap()
    }

    #[test]
    fn injects_and_echoes_uid_and_version() {
        for version in SUPPORTED_VERSIONS {
            let out = answer_json(&review_body(
                version,
                pod(json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart"})),
            ));
            assert_eq!(out["apiVersion"], version);
            assert_eq!(out["kind"], "AdmissionReview");
            let resp = &out["response"];
            assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
            assert_eq!(resp["allowed"], true);
            assert_eq!(resp["patchType"], "JSONPatch");
            let patch: Value = {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(resp["patch"].as_str().unwrap())
                    .unwrap();
                serde_json::from_slice(&raw).unwrap()
            };
            let sidecar = patch
                .as_array()
                .unwrap()
                .iter()
                .find(|op| op["path"] == "/spec/containers/-")
                .expect("the sidecar is added");
            // The namespace is the pod's, from the downward API, not the request's.
            let args = sidecar["value"]["args"].as_array().unwrap();
            assert!(!args.iter().any(|a| a == "--namespace"), "{args:?}");
            let env = sidecar["value"]["env"].as_array().unwrap();
            assert_eq!(
                env.iter().find(|e| e["name"] == "NAMESPACE").unwrap(),
                &json!({"name": "NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}})
            );
            assert!(resp.get("warnings").is_none(), "{resp}");
        }
    }

    fn patch_of(resp: &Value) -> Value {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(resp["patch"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn warnings_are_answered_and_recorded_in_the_pod() {
        let out = answer_json(&review_body(
            "admission.k8s.io/v1",
            pod(json!({"dapr.io/enabled": "true", "dapr.io/id": "cart", "dapr.io/port": "5000"})),
        ));
        let resp = &out["response"];
        assert_eq!(resp["allowed"], true);
        let want = [
            "annotation dapr.io/id is Dapr's pre-1.0 name of dapr.io/app-id: read as dapr.io/app-id; rename it",
            "annotation dapr.io/port is Dapr's pre-1.0 name of dapr.io/app-port: read as dapr.io/app-port; rename it",
        ];
        assert_eq!(resp["warnings"], json!(want));
        let patch = patch_of(resp);
        let recorded = patch
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/metadata/annotations/ferry.dev~1injection-warnings")
            .expect("the warnings are recorded in the pod");
        assert_eq!(recorded["value"], want.join("\n"));
    }

    #[test]
    fn many_warnings_stay_within_the_api_servers_limits_and_are_counted() {
        let mut annotations = json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart"});
        for i in 0..100 {
            annotations[format!("dapr.io/unknown-annotation-number-{i:03}")] = json!("x");
        }
        let out = answer_json(&review_body("admission.k8s.io/v1", pod(annotations)));
        let warnings: Vec<String> =
            serde_json::from_value(out["response"]["warnings"].clone()).unwrap();
        let total: usize = warnings.iter().map(String::len).sum();
        assert!(total <= MAX_WARNINGS_BYTES, "{total} bytes");
        assert!(warnings.iter().all(|w| w.len() <= 256));
        let shown = warnings.len() - 1;
        assert!(shown > 10, "{warnings:?}");
        assert_eq!(
            warnings.last().unwrap(),
            &format!(
                "and {} more warnings: see the pod's annotation ferry.dev/injection-warnings",
                100 - shown
            )
        );
        // The annotation keeps them all.
        let patch = patch_of(&out["response"]);
        let recorded = patch
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/metadata/annotations/ferry.dev~1injection-warnings")
            .unwrap();
        assert_eq!(recorded["value"].as_str().unwrap().lines().count(), 100);
    }

    #[test]
    fn skips_without_patch() {
        let a = review(
            &review_body("admission.k8s.io/v1", pod(json!({}))),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(a.verdict.decision, "skip");
        assert_eq!(a.verdict.reason, "not_enabled");
        let out = serde_json::to_value(&a.review).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn invalid_annotation_is_refused_with_the_message() {
        let a = review(
            &review_body(
                "admission.k8s.io/v1",
                pod(json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart",
                           "dapr.io/app-port": "70000"})),
            ),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(a.verdict.decision, "deny");
        let out = serde_json::to_value(&a.review).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 400);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("dapr.io/app-port") && message.contains("70000"),
            "{message}"
        );
    }

    #[test]
    fn other_kinds_and_operations_are_skipped() {
        let mut body: Value = serde_json::from_slice(&review_body(
            "admission.k8s.io/v1",
            pod(json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart"})),
        ))
        .unwrap();
        body["request"]["operation"] = json!("UPDATE");
        let a = review(&serde_json::to_vec(&body).unwrap(), &Default::default()).unwrap();
        assert_eq!(a.verdict.reason, "not_create");
        body["request"]["operation"] = json!("CREATE");
        body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let a = review(&serde_json::to_vec(&body).unwrap(), &Default::default()).unwrap();
        assert_eq!(a.verdict.reason, "not_a_pod");
    }

    #[test]
    fn unreadable_pod_and_missing_object_are_refused_not_crashed() {
        let mut body: Value = serde_json::from_slice(&review_body(
            "admission.k8s.io/v1",
            pod(json!({"dapr.io/enabled": "true"})),
        ))
        .unwrap();
        body["request"]["object"]["spec"]["containers"] = json!("not a list");
        let a = review(&serde_json::to_vec(&body).unwrap(), &Default::default()).unwrap();
        assert_eq!(
            a.verdict,
            Verdict {
                decision: "error",
                reason: "unreadable_pod"
            }
        );
        body["request"].as_object_mut().unwrap().remove("object");
        let a = review(&serde_json::to_vec(&body).unwrap(), &Default::default()).unwrap();
        assert_eq!(
            a.verdict,
            Verdict {
                decision: "error",
                reason: "no_object"
            }
        );
        let out = serde_json::to_value(&a.review).unwrap();
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
    }

    #[test]
    fn bad_reviews_are_errors() {
        let cfg = InjectorConfig::default();
        let cases: [(&[u8], &str); 5] = [
            (b"{", "malformed_review"),
            (b"[]", "malformed_review"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#,
                "wrong_kind",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview"}"#,
                "unsupported_version",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no_request",
            ),
        ];
        for (body, reason) in cases {
            let e = review(body, &cfg).unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
        }
        let e = review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{}}}"#,
            &cfg,
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
