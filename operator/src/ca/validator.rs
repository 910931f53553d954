//! Who a certificate request comes from, as Dapr's Sentry checks it on Kubernetes
//! (`pkg/sentry/server/validator/kubernetes`), plus two checks of our own:
//!
//! 1. the token is a service-account token the API server accepts (TokenReview) for the CA's
//!    audience (its SPIFFE ID, as Dapr's injector projects it; Dapr's legacy `dapr.io/sentry`
//!    too);
//! 2. the token is bound to a pod (`authentication.kubernetes.io/pod-name` and `pod-uid` in the
//!    review's extra), that pod exists **with that UID** (a token of a deleted pod whose name was
//!    reused is refused; Dapr checks only the name), in the namespace the request names, and
//!    runs as the token's service account;
//! 3. the app ID asked for is the pod's `dapr.io/app-id` (its name when it has none), as Dapr;
//! 4. **beyond Dapr**, when the namespace binds that app ID to service accounts (annotation
//!    [`APP_SERVICE_ACCOUNTS`]), the pod runs as one of them;
//! 5. the trust domain is `spec.accessControl.trustDomain` of the Configuration the pod's
//!    `dapr.io/config` names, `public` otherwise; the request's own `trust_domain` is ignored,
//!    as in Dapr.

use std::collections::BTreeMap;

use ferry_api::{Configuration, TrustDomain, annotations::keys};
use ferry_identity::sentry::{
    Refusal, SignCertificateRequest, TokenValidator, Validated, Validator,
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::{Namespace, Pod},
};
use kube::{Api, Client, api::PostParams};

/// The Namespace annotation that binds app IDs to service accounts:
/// `"<app-id>=<service-account>[,<app-id>=<service-account>...]"`; an app ID may be listed
/// more than once to allow several. App IDs not listed are not bound.
pub const APP_SERVICE_ACCOUNTS: &str = "ferry.dev/app-service-accounts";

/// The audience older daprd sidecars ask their token for.
pub const LEGACY_AUDIENCE: &str = "dapr.io/sentry";

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

#[derive(Clone)]
pub struct KubernetesValidator {
    client: Client,
    /// The CA's SPIFFE ID, the audience tokens must carry.
    audience: String,
}

impl KubernetesValidator {
    pub fn new(client: Client, audience: String) -> Self {
        Self { client, audience }
    }

    async fn check(&self, req: &SignCertificateRequest) -> Result<Validated, Refusal> {
        let refuse = |why: String| Err(Refusal(why));
        if req.token.is_empty() {
            return refuse(format!(
                "no token: send the pod's projected service-account token with audience {}",
                self.audience
            ));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: req.token.clone(),
                audiences: Some(vec![self.audience.clone(), LEGACY_AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal(format!("cannot review the token with the API server: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into());
            return refuse(format!(
                "the token is not valid for audience {}: {why}",
                self.audience
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((sa_namespace, service_account)) = service_account_of(&username) else {
            return refuse(format!(
                "the token is not a service-account token (user {username:?})"
            ));
        };
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let (Some(pod_name), pod_uid) = (first(POD_NAME_EXTRA), first(POD_UID_EXTRA)) else {
            return refuse(
                "the token is not bound to a pod: mount a projected service-account token".into(),
            );
        };
        if sa_namespace != req.namespace {
            return refuse(format!(
                "namespace mismatch: the token is of namespace {sa_namespace}, the request names {:?}",
                req.namespace
            ));
        }
        let pod = Api::<Pod>::namespaced(self.client.clone(), sa_namespace)
            .get_opt(&pod_name)
            .await
            .map_err(|e| Refusal(format!("cannot read pod {sa_namespace}/{pod_name}: {e}")))?;
        let Some(pod) = pod else {
            return refuse(format!(
                "pod {sa_namespace}/{pod_name} of the token does not exist"
            ));
        };
        if pod_uid.is_some() && pod.metadata.uid != pod_uid {
            return refuse(format!(
                "pod {sa_namespace}/{pod_name} of the token was deleted (a new pod has its name)"
            ));
        }
        let pod_sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if pod_sa != service_account {
            return refuse(format!(
                "pod {sa_namespace}/{pod_name} runs as service account {pod_sa}, the token is of {service_account}"
            ));
        }
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if annotations.contains_key("dapr.io/control-plane") {
            return refuse(format!(
                "pod {sa_namespace}/{pod_name} is a Dapr control-plane service; Ferry's CA signs only for apps"
            ));
        }
        let expected = annotations
            .get(keys::APP_ID)
            .cloned()
            .unwrap_or_else(|| pod_name.clone());
        if expected != req.id {
            return refuse(format!(
                "app-id mismatch. expected: {expected}, received: {}",
                req.id
            ));
        }
        self.check_binding(sa_namespace, &req.id, service_account)
            .await?;
        let trust_domain = match annotations.get(keys::CONFIG).filter(|c| !c.is_empty()) {
            None => TrustDomain::default(),
            Some(name) => {
                let config = Api::<Configuration>::namespaced(self.client.clone(), sa_namespace)
                    .get_opt(name)
                    .await
                    .map_err(|e| {
                        Refusal(format!("cannot read Configuration {sa_namespace}/{name}: {e}"))
                    })?
                    .ok_or_else(|| {
                        Refusal(format!(
                            "Configuration {sa_namespace}/{name} (dapr.io/config of the pod) does not exist"
                        ))
                    })?;
                let td = config
                    .spec
                    .access_control
                    .as_ref()
                    .and_then(|a| a.trust_domain.as_deref())
                    .filter(|t| !t.is_empty());
                match td {
                    None => TrustDomain::default(),
                    Some(t) => t.parse().map_err(|e| {
                        Refusal(format!(
                            "Configuration {sa_namespace}/{name}: spec.accessControl.trustDomain {t:?}: {e}"
                        ))
                    })?,
                }
            }
        };
        Ok(Validated { trust_domain })
    }

    async fn check_binding(&self, namespace: &str, app_id: &str, sa: &str) -> Result<(), Refusal> {
        let ns = Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await
            .map_err(|e| Refusal(format!("cannot read namespace {namespace}: {e}")))?;
        let Some(value) = ns
            .and_then(|n| n.metadata.annotations)
            .and_then(|mut a| a.remove(APP_SERVICE_ACCOUNTS))
        else {
            return Ok(());
        };
        let bindings = parse_bindings(&value).map_err(|why| {
            Refusal(format!(
                "namespace {namespace}: annotation {APP_SERVICE_ACCOUNTS}: {why}; no certificate is signed in this namespace until it is fixed"
            ))
        })?;
        match bindings.get(app_id) {
            Some(allowed) if !allowed.iter().any(|a| a == sa) => Err(Refusal(format!(
                "app ID {app_id} is bound to service account {} in namespace {namespace} ({APP_SERVICE_ACCOUNTS}); this pod runs as {sa}",
                allowed.join(" or ")
            ))),
            _ => Ok(()),
        }
    }
}

impl Validator for KubernetesValidator {
    fn kind(&self) -> TokenValidator {
        TokenValidator::Kubernetes
    }

    fn validate(
        &self,
        req: &SignCertificateRequest,
    ) -> impl std::future::Future<Output = Result<Validated, Refusal>> + Send {
        self.check(req)
    }
}

/// `system:serviceaccount:<namespace>:<name>`.
fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The value of [`APP_SERVICE_ACCOUNTS`]: app ID → the service accounts allowed to be it.
pub fn parse_bindings(value: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let Some((app, sa)) = item.split_once('=') else {
            return Err(format!("{item:?} is not <app-id>=<service-account>"));
        };
        let (app, sa) = (app.trim(), sa.trim());
        ferry_api::AppId::new(app).map_err(|e| format!("{item:?}: app ID {app:?}: {e}"))?;
        if !is_subdomain(sa) {
            return Err(format!(
                "{item:?}: service account {sa:?} is not a name (lowercase letters, digits, '-' and '.')"
            ));
        }
        out.entry(app.to_owned()).or_default().push(sa.to_owned());
    }
    Ok(out)
}

fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            !p.is_empty()
                && !p.starts_with('-')
                && !p.ends_with('-')
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:prod:cart"),
            Some(("prod", "cart"))
        );
        for bad in [
            "system:node:n1",
            "system:serviceaccount:prod",
            "system:serviceaccount::x",
            "alice",
        ] {
            assert_eq!(service_account_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn bindings_parse_and_refuse_naming_the_item() {
        let b = parse_bindings("cart=cart-sa, orders=orders,\norders=batch").unwrap();
        assert_eq!(b["cart"], ["cart-sa"]);
        assert_eq!(b["orders"], ["orders", "batch"]);
        assert!(parse_bindings("").unwrap().is_empty());
        let e = parse_bindings("cart").unwrap_err();
        assert!(
            e.contains("\"cart\" is not <app-id>=<service-account>"),
            "{e}"
        );
        let e = parse_bindings("cart=Bad_SA").unwrap_err();
        assert!(e.contains("service account \"Bad_SA\""), "{e}");
    }
}
