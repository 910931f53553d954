//! The generated CRDs (`crds/`) against the real API server: they install, Dapr's docs manifest
//! for an HTTPEndpoint applies unchanged (strict field validation, nothing pruned), statuses go
//! through the status subresource, and the printer columns show what they promise. Run with
//! `make e2e`.

use ferry_api::{
    HttpEndpoint, RoutingTable, RoutingTableSpec, RoutingTableStatus,
    http_endpoint::{self, HttpEndpointStatus},
    routing_table::{AppPorts, AppRoute, EndpointRoute, HeaderRoute, SecretKeyRef},
};
use ferry_e2e::with_temp_ns;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const DAPR_DOCS: &str = include_str!("../../api/tests/fixtures/httpendpoint-dapr-docs.yaml");

/// What `kubectl get` shows: the server-side Table of `path`, as (column names, rows of cells).
async fn table(client: &Client, path: &str) -> (Vec<String>, Vec<Vec<Value>>) {
    let req = http::Request::get(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;g=meta.k8s.io;v=v1",
        )
        .body(Vec::new())
        .unwrap();
    let t: Value = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("cannot get the table of {path}: {e}"));
    let names = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let rows = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"].as_array().unwrap().clone())
        .collect();
    (names, rows)
}

/// Now, to the second: the API server stores metav1.Time without fractions.
fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap())
}

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: now(),
        observed_generation: Some(1),
    }
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn dapr_docs_http_endpoint_applies_unchanged() {
    ferry_e2e::install_crds(&ferry_e2e::client().await.unwrap()).await;
    with_temp_ns("crds", |client, ns| async move {
        // As kubectl would send it: the manifest's own JSON, every field checked strictly.
        let manifest: Value = serde_saphyr::from_str(DAPR_DOCS).unwrap();
        let obj: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
        let ar = ApiResource::erase::<HttpEndpoint>(&());
        let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        dynamic
            .patch(
                "external-api",
                &PatchParams::apply("ferry-e2e").validation_strict(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("Dapr's docs manifest does not apply: {e}"));

        // Nothing was pruned: the stored object holds every field the manifest gave...
        let stored = dynamic.get("external-api").await.unwrap();
        let stored = serde_json::to_value(&stored).unwrap();
        // ... plus the one default the schema sets, as Dapr's own CRD does.
        let mut want = manifest["spec"].clone();
        want["clientTLS"]["renegotiation"] = json!("Never");
        assert_eq!(stored["spec"], want, "spec as stored");
        assert_eq!(stored["spec"]["version"], "v1alpha1");
        assert_eq!(
            stored["spec"]["headers"][1]["value"], 3,
            "a number stays a number"
        );
        assert_eq!(stored["auth"], manifest["auth"]);
        assert_eq!(stored["scopes"], manifest["scopes"]);

        // The typed API reads it.
        let typed: Api<HttpEndpoint> = Api::namespaced(client.clone(), &ns);
        let ep = typed.get("external-api").await.unwrap();
        assert_eq!(ep.spec.base_url, "https://api.example.com");
        assert_eq!(ep.spec.headers.len(), 3);
        assert_eq!(ep.auth.unwrap().secret_store, "kubernetes");
        assert_eq!(ep.scopes, ["checkout", "cart"]);

        // The status subresource takes a Ready condition, and kubectl shows it.
        let status = HttpEndpointStatus {
            observed_generation: Some(1),
            conditions: vec![condition(http_endpoint::CONDITION_READY, "True", "Valid")],
        };
        typed
            .patch_status(
                "external-api",
                &PatchParams::apply("ferry-e2e-status").force(),
                &Patch::Apply(json!({
                    "apiVersion": http_endpoint::API_VERSION,
                    "kind": http_endpoint::KIND,
                    "status": status,
                })),
            )
            .await
            .unwrap();
        assert_eq!(
            typed.get("external-api").await.unwrap().status,
            Some(status)
        );
        let (columns, rows) = table(
            &client,
            &format!("/apis/dapr.io/v1alpha1/namespaces/{ns}/httpendpoints"),
        )
        .await;
        assert_eq!(columns, ["Name", "Base URL", "Ready", "Age"]);
        assert_eq!(
            rows[0][..3],
            [
                json!("external-api"),
                json!("https://api.example.com"),
                json!("True")
            ]
        );

        // And the schema still refuses what Dapr's refuses.
        let mut no_url = manifest.clone();
        no_url["metadata"]["name"] = json!("no-url");
        no_url["spec"].as_object_mut().unwrap().remove("baseUrl");
        let err = dynamic
            .create(
                &PostParams::default(),
                &serde_json::from_value(no_url).unwrap(),
            )
            .await
            .expect_err("an HTTPEndpoint without spec.baseUrl is refused");
        assert!(err.to_string().contains("baseUrl"), "{err}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the Tier-1 cluster: make e2e"]
async fn routing_table_round_trips_through_the_api_server() {
    ferry_e2e::install_crds(&ferry_e2e::client().await.unwrap()).await;
    with_temp_ns("crds", |client, ns| async move {
        let tables: Api<RoutingTable> = Api::namespaced(client.clone(), &ns);
        let rt = RoutingTable::new(
            "ferry",
            RoutingTableSpec {
                apps: vec![AppRoute {
                    id: "cart".into(),
                    service: "cart-dapr".into(),
                    ports: AppPorts {
                        http: 80,
                        grpc: 50001,
                        internal: 50002,
                        metrics: 9090,
                    },
                }],
                http_endpoints: vec![EndpointRoute {
                    name: "external-api".into(),
                    base_url: "https://api.example.com".into(),
                    headers: vec![HeaderRoute {
                        name: "Authorization".into(),
                        secret_key_ref: Some(SecretKeyRef {
                            name: "external-api-token".into(),
                            key: "token".into(),
                        }),
                        ..HeaderRoute::default()
                    }],
                    client_tls: None,
                    ready: true,
                    reason: None,
                    scopes: Vec::new(),
                }],
            },
        );
        let created = tables
            .patch(
                "ferry",
                &PatchParams::apply("ferry-e2e").validation_strict(),
                &Patch::Apply(&rt),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot apply a RoutingTable: {e}"));
        assert_eq!(created.spec, rt.spec);

        let status = RoutingTableStatus {
            observed_generation: created.metadata.generation,
            synced_at: Some(now()),
            apps: 1,
            http_endpoints: 1,
            conditions: Vec::new(),
        };
        tables
            .patch_status(
                "ferry",
                &PatchParams::apply("ferry-e2e").force(),
                &Patch::Apply(json!({
                    "apiVersion": ferry_api::routing_table::API_VERSION,
                    "kind": ferry_api::routing_table::KIND,
                    "status": status,
                })),
            )
            .await
            .unwrap();
        let got = tables.get("ferry").await.unwrap();
        assert_eq!(got.spec, rt.spec);
        let got_status = got.status.unwrap();
        assert_eq!((got_status.apps, got_status.http_endpoints), (1, 1));
        assert_eq!(got_status.observed_generation, Some(1));

        // `kubectl get rt` shows the counts.
        let (columns, rows) = table(
            &client,
            &format!("/apis/ferry.dev/v1alpha1/namespaces/{ns}/routingtables"),
        )
        .await;
        assert_eq!(columns, ["Name", "Apps", "Endpoints", "Synced", "Age"]);
        assert_eq!(rows[0][..3], [json!("ferry"), json!(1), json!(1)]);
    })
    .await;
}
