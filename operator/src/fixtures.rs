//! Scenario tests' stand-in for the API server, after kube-rs controller-rs's `src/fixtures.rs`:
//! a reconcile runs against a client whose every request goes to an [`ApiServerVerifier`], which
//! expects the scenario's [`Call`]s in order (method, path and query, content type, the exact
//! JSON body) and gives each its answer, including the errors (409, 404, 403, 500) that a real
//! API server gives only under races the Tier-1 tests cannot set up cheaply. A request the
//! scenario does not expect, one it expects that never comes, and one made after the last call
//! all fail the test.

use std::{fmt::Debug, pin::pin, sync::Arc, time::Duration};

use ferry_api::{http_endpoint::HttpEndpoint, routing_table::RoutingTable};
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Client, Resource,
    client::Body,
    runtime::{
        events::{Recorder, Reporter as EventReporter},
        reflector::{self, store::Writer},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    REPORTER,
    context::{Context, Stores},
    metrics::{ControllerName, Metrics},
    reports::Reporter,
};

/// The query of every server-side apply: our field manager, taking over conflicting fields.
pub const APPLY: &str = "?&force=true&fieldManager=ferry-operator";

/// The `reportingInstance` of the scenarios' Events.
pub const INSTANCE: &str = "ferry-operator-test";

/// How long a scenario may take before it is a hang.
const DEADLINE: Duration = Duration::from_secs(5);

/// What stands for a time the operator took from the clock, once checked to be recent.
pub const NOW: &str = "<now>";

/// One request a scenario expects, and its answer.
#[derive(Debug)]
pub struct Call {
    method: Method,
    /// Path and query.
    uri: String,
    content_type: &'static str,
    /// The exact body (`Value::Null`: none), after [`NOW`] and generated names are put in.
    body: Value,
    /// JSON pointers to times the operator took from the clock.
    now: Vec<&'static str>,
    /// JSON pointers to names the client generated, with their fixed prefix.
    generated: Vec<(&'static str, String)>,
    reply: Reply,
}

/// The API server's answer to a [`Call`].
#[derive(Debug)]
pub enum Reply {
    /// 200 with this object.
    Object(Value),
    /// 200 with the request's own body (as an apply or create that changed nothing else).
    Echo,
    /// A failure `Status` with this code and reason.
    Failure(StatusCode, &'static str),
}

impl Call {
    /// A server-side apply of `body` at `path` (the object's URL), as `ferry-operator`.
    pub fn apply(path: &str, body: Value) -> Self {
        Self::new(
            Method::PATCH,
            format!("{path}{APPLY}"),
            "application/apply-patch+yaml",
            body,
        )
    }

    /// A delete of the object at `path` that only deletes the object with this uid.
    pub fn delete(path: &str, uid: &str) -> Self {
        Self::new(
            Method::DELETE,
            format!("{path}?"),
            "application/json",
            json!({"preconditions": {"uid": uid}}),
        )
    }

    /// A create of `body` in the collection at `path`.
    pub fn create(path: &str, body: Value) -> Self {
        Self::new(Method::POST, format!("{path}?"), "application/json", body)
    }

    fn new(method: Method, uri: String, content_type: &'static str, body: Value) -> Self {
        Self {
            method,
            uri,
            content_type,
            body,
            now: Vec::new(),
            generated: Vec::new(),
            reply: Reply::Echo,
        }
    }

    /// The API server's answer (by default [`Reply::Echo`]).
    pub fn answer(mut self, reply: Reply) -> Self {
        self.reply = reply;
        self
    }

    /// Marks the JSON pointers of the body that hold the current time (written [`NOW`] in the
    /// expected body).
    pub fn now_at(mut self, pointers: &[&'static str]) -> Self {
        self.now.extend(pointers);
        self
    }

    /// Marks a name the client generates as `prefix` and something unique (written
    /// `prefix<generated>` in the expected body).
    pub fn generated_at(mut self, pointer: &'static str, prefix: &str) -> Self {
        self.generated.push((pointer, prefix.to_owned()));
        self
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }

    /// Checks `request` against this call, and answers it.
    async fn verify(
        self,
        request: Request<Body>,
        send: tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let what = self.describe();
        assert_eq!(
            (request.method(), request.uri().to_string()),
            (&self.method, self.uri.clone()),
            "the request after the previous call"
        );
        let content_type = request.headers().get(CONTENT_TYPE).map(|v| v.to_str());
        assert_eq!(
            content_type.and_then(Result::ok),
            Some(self.content_type),
            "{what}: Content-Type"
        );
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let mut body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: body: {e}"))
        };
        for pointer in &self.now {
            let at = body
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{what}: no {pointer} in {bytes:?}"));
            let time: Timestamp = at
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: {pointer} is not a time: {at}"));
            let age = Timestamp::now().duration_since(time);
            assert!(
                age >= SignedDuration::ZERO && age < SignedDuration::from_secs(60),
                "{what}: {pointer} is not now: {time}"
            );
            *at = NOW.into();
        }
        for (pointer, prefix) in &self.generated {
            let at = body
                .pointer_mut(pointer)
                .unwrap_or_else(|| panic!("{what}: no {pointer}"));
            let name = at.as_str().unwrap_or_default();
            assert!(
                name.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| !rest.is_empty()),
                "{what}: {pointer} is {name:?}, not {prefix}..."
            );
            *at = format!("{prefix}<generated>").into();
        }
        assert!(
            body == self.body,
            "{what}: the body\n    sent: {}\nexpected: {}",
            serde_json::to_string(&body).unwrap(),
            serde_json::to_string(&self.body).unwrap()
        );

        let response = match self.reply {
            Reply::Object(o) => Response::new(Body::from(serde_json::to_vec(&o).unwrap())),
            Reply::Echo => Response::new(Body::from(bytes.to_vec())),
            Reply::Failure(code, reason) => {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("{reason} (scenario)"),
                    "reason": reason, "code": code.as_u16(),
                });
                let mut r = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
                *r.status_mut() = code;
                r
            }
        };
        send.send_response(response);
    }
}

/// A failure `Status` reply: 409 `Conflict` (a uid precondition that no longer holds, or an
/// object changed under us).
pub fn conflict() -> Reply {
    Reply::Failure(StatusCode::CONFLICT, "Conflict")
}

/// A failure `Status` reply: 404 `NotFound` (the object is gone).
pub fn not_found() -> Reply {
    Reply::Failure(StatusCode::NOT_FOUND, "NotFound")
}

/// Stands in for the API server: see the module doc.
pub struct ApiServerVerifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// Drives `work` to its end while answering `calls`, in order, and returns its output.
    /// Panics on a request other than the next call, when `work` ends with calls left, or when
    /// it makes a request after the last one.
    pub async fn run<F>(&mut self, calls: Vec<Call>, work: F) -> F::Output
    where
        F: Future,
        F::Output: Debug,
    {
        let scenario = async {
            let mut work = pin!(work);
            for call in calls {
                let what = call.describe();
                tokio::select! {
                    request = self.0.next_request() => {
                        let (request, send) = request.expect("the client is gone");
                        call.verify(request, send).await;
                    }
                    out = &mut work => panic!("finished ({out:?}) without making {what}"),
                }
            }
            tokio::select! {
                out = &mut work => out,
                request = self.0.next_request() => {
                    let (request, _) = request.expect("the client is gone");
                    panic!("a request after the last call: {} {}", request.method(), request.uri())
                }
            }
        };
        tokio::time::timeout(DEADLINE, scenario)
            .await
            .expect("the scenario hung")
    }

    /// Polls `work`, which never ends, while answering `calls` in order, then for `quiet` more;
    /// returns when each request came. Panics on a request other than the next call or after
    /// the last one.
    pub async fn run_forever<F>(
        &mut self,
        calls: Vec<Call>,
        work: F,
        quiet: Duration,
    ) -> Vec<Instant>
    where
        F: Future<Output = ()>,
    {
        let mut work = pin!(work);
        let mut times = Vec::new();
        for call in calls {
            let what = call.describe();
            tokio::select! {
                request = tokio::time::timeout(DEADLINE, self.0.next_request()) => {
                    let (request, send) = request
                        .unwrap_or_else(|_| panic!("no {what}"))
                        .expect("the client is gone");
                    times.push(Instant::now());
                    call.verify(request, send).await;
                }
                () = &mut work => panic!("finished without making {what}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(quiet) => {}
            () = &mut work => panic!("finished"),
            request = self.0.next_request() => {
                let (request, _) = request.expect("the client is gone");
                panic!("a request after the last call: {} {}", request.method(), request.uri())
            }
        }
        times
    }
}

/// Empty caches, and the writers that fill them as the reflectors do.
pub struct Caches {
    pub pods: Writer<Pod>,
    pub services: Writer<Service>,
    pub endpoints: Writer<HttpEndpoint>,
    pub tables: Writer<RoutingTable>,
    pub sidecar_roles: Writer<Role>,
    pub sidecar_role_bindings: Writer<RoleBinding>,
    pub sidecar_binding: Writer<ClusterRoleBinding>,
}

impl Caches {
    fn new() -> (Self, Stores) {
        let (pods, pods_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (endpoints, endpoints_w) = reflector::store();
        let (tables, tables_w) = reflector::store();
        let (roles, roles_w) = reflector::store();
        let (role_bindings, role_bindings_w) = reflector::store();
        let (binding, binding_w) = reflector::store();
        let writers = Self {
            pods: pods_w,
            services: services_w,
            endpoints: endpoints_w,
            tables: tables_w,
            sidecar_roles: roles_w,
            sidecar_role_bindings: role_bindings_w,
            sidecar_binding: binding_w,
        };
        let stores = Stores {
            pods,
            services,
            endpoints,
            tables,
            sidecar_roles: roles,
            sidecar_role_bindings: role_bindings,
            sidecar_binding: binding,
        };
        (writers, stores)
    }
}

/// Puts `objects` into a cache, as watch events do.
pub fn fill<K>(cache: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: Resource + Clone,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    for o in objects {
        cache.apply_watcher_event(&watcher::Event::Apply(o));
    }
}

/// A context whose client talks to the returned verifier, with empty caches and fresh metrics;
/// `state` makes the controller's own state (it may need the client, for Events).
pub fn context<S>(
    state: impl FnOnce(&Client) -> S,
) -> (Arc<Context<S>>, Caches, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (caches, stores) = Caches::new();
    let state = state(&client);
    let ctx = Context::new(client, stores, Arc::new(Metrics::default()), state);
    (Arc::new(ctx), caches, ApiServerVerifier(handle))
}

/// An Event reporter for `controller`, as the runtime makes it.
pub fn reporter(client: &Client, controller: ControllerName) -> Reporter {
    let recorder = Recorder::new(
        client.clone(),
        EventReporter {
            controller: REPORTER.to_owned(),
            instance: Some(INSTANCE.to_owned()),
        },
    );
    Reporter::new(recorder, controller)
}

/// Reads a counter of the metrics (0 when absent), as `/metrics` shows it.
pub fn counter(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}
