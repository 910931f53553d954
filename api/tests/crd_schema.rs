//! The CRD invariants we rely on, asserted path by path (the full documents are pinned by the
//! staleness test in cli/tests/crds.rs), and Dapr's docs manifest parsing into our type.

use ferry_api::{
    HttpEndpoint, RoutingTable, crd,
    http_endpoint::{self, render_value},
    routing_table,
};
use kube_core::{CustomResourceExt, Resource};
use serde_json::{Value, json};

const DAPR_DOCS: &str = include_str!("fixtures/httpendpoint-dapr-docs.yaml");

/// The CRD's single version, as JSON.
fn version_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    assert_eq!(crd.spec.versions.len(), 1);
    serde_json::to_value(&crd.spec.versions[0]).unwrap()
}

fn columns(version: &Value) -> Vec<(String, String)> {
    version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_uppercase(),
                c["jsonPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn http_endpoint_crd() {
    let crd = HttpEndpoint::crd();
    assert_eq!(HttpEndpoint::crd_name(), "httpendpoints.dapr.io");
    assert_eq!(crd.metadata.name.as_deref(), Some("httpendpoints.dapr.io"));
    assert_eq!(crd.spec.group, "dapr.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "HTTPEndpoint");
    assert_eq!(crd.spec.names.plural, "httpendpoints");
    assert_eq!(crd.spec.names.singular.as_deref(), Some("httpendpoint"));
    assert_eq!(HttpEndpoint::api_version(&()), "dapr.io/v1alpha1");

    let v = version_of(&crd);
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(
        (v["served"].clone(), v["storage"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(v["subresources"], json!({"status": {}}));
    assert_eq!(
        columns(&v),
        [
            ("BASE URL".into(), ".spec.baseUrl".into()),
            (
                "READY".into(),
                r#".status.conditions[?(@.type=="Ready")].status"#.into()
            ),
            ("AGE".into(), ".metadata.creationTimestamp".into()),
        ]
    );

    let root = &v["schema"]["openAPIV3Schema"];
    let props = &root["properties"];
    // Dapr keeps auth and scopes beside spec, at the root.
    assert_eq!(props["auth"]["properties"]["secretStore"]["type"], "string");
    assert_eq!(props["scopes"]["items"]["type"], "string");
    let spec = &props["spec"];
    assert_eq!(spec["required"], json!(["baseUrl"]));
    assert_eq!(
        spec["x-kubernetes-preserve-unknown-fields"], true,
        "spec.version must survive"
    );
    let header = &spec["properties"]["headers"]["items"];
    assert_eq!(header["required"], json!(["name"]));
    assert_eq!(
        header["properties"]["value"],
        json!({
            "description": header["properties"]["value"]["description"],
            "x-kubernetes-preserve-unknown-fields": true
        }),
        "a header value is any JSON, as in Dapr"
    );
    assert_eq!(
        header["properties"]["secretKeyRef"]["required"],
        json!(["name"])
    );
    assert!(
        header["properties"]["secretKeyRef"]["properties"]["key"]
            .get("default")
            .is_none()
    );
    assert_eq!(header["properties"]["envRef"]["type"], "string");
    let tls = &spec["properties"]["clientTLS"]["properties"];
    for doc in ["rootCA", "certificate", "privateKey"] {
        assert_eq!(
            tls[doc]["properties"]["value"]["x-kubernetes-preserve-unknown-fields"], true,
            "{doc}"
        );
        assert_eq!(
            tls[doc]["properties"]["secretKeyRef"]["required"],
            json!(["name"]),
            "{doc}"
        );
    }
    assert_eq!(tls["renegotiation"]["default"], "Never");
    let conditions = &props["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["items"]["properties"]["type"]["type"], "string");
    assert_eq!(
        props["status"]["properties"]["observedGeneration"]["type"],
        "integer"
    );
}

#[test]
fn routing_table_crd() {
    let crd = RoutingTable::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("routingtables.ferry.dev")
    );
    assert_eq!(crd.spec.group, "ferry.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.plural, "routingtables");
    assert_eq!(crd.spec.names.short_names, Some(vec!["rt".to_owned()]));
    assert_eq!(RoutingTable::api_version(&()), routing_table::API_VERSION);

    let v = version_of(&crd);
    assert_eq!(v["subresources"], json!({"status": {}}));
    assert_eq!(
        columns(&v),
        [
            ("APPS".into(), ".status.apps".into()),
            ("ENDPOINTS".into(), ".status.httpEndpoints".into()),
            ("SYNCED".into(), ".status.syncedAt".into()),
            ("AGE".into(), ".metadata.creationTimestamp".into()),
        ]
    );
    let props = &v["schema"]["openAPIV3Schema"]["properties"];
    let app = &props["spec"]["properties"]["apps"]["items"];
    assert_eq!(app["required"], json!(["id", "ports", "service"]));
    let endpoint = &props["spec"]["properties"]["httpEndpoints"]["items"]["properties"];
    assert_eq!(endpoint["ready"]["type"], "boolean");
    // No field can carry a private key.
    let key = &endpoint["clientTLS"]["properties"]["privateKey"]["properties"];
    let mut fields: Vec<&str> = key
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(fields, ["inline", "secretKeyRef"]);
    let status = &props["status"]["properties"];
    assert_eq!(status["syncedAt"]["format"], "date-time");
    assert_eq!(status["observedGeneration"]["type"], "integer");
}

#[test]
fn all_crds_render_deterministically() {
    let names: Vec<String> = crd::all().iter().map(crd::file_name).collect();
    assert_eq!(
        names,
        [
            "configurations.dapr.io.yaml",
            "httpendpoints.dapr.io.yaml",
            "routingtables.ferry.dev.yaml"
        ]
    );
    let once = crd::rendered().unwrap();
    assert_eq!(once, crd::rendered().unwrap());
    for (name, text) in &once {
        assert!(text.starts_with(crd::HEADER), "{name}");
        assert!(text.ends_with("\n") && !text.ends_with("\n\n"), "{name}");
        assert!(!text.contains("title:"), "{name}");
        // What we wrote reads back as the same CRD.
        let back: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_saphyr::from_str(text).unwrap();
        let original = crd::all()
            .into_iter()
            .find(|c| crd::file_name(c) == *name)
            .unwrap();
        assert_eq!(back, original, "{name}");
    }
}

#[test]
fn dapr_docs_manifest_parses() {
    let ep: HttpEndpoint = serde_saphyr::from_str(DAPR_DOCS).unwrap();
    assert_eq!(ep.name(), "external-api");
    assert_eq!(ep.spec.base_url, "https://api.example.com");
    let headers: Vec<(&str, Option<String>)> = ep
        .spec
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_ref().map(render_value)))
        .collect();
    assert_eq!(
        headers,
        [
            ("Accept-Language", Some("en-US".into())),
            ("X-Retries", Some("3".into())),
            ("Authorization", None),
        ]
    );
    let token = ep.spec.headers[2].secret_key_ref.as_ref().unwrap();
    assert_eq!(
        (token.name.as_str(), token.key.as_str()),
        ("external-api-token", "token")
    );
    let tls = ep.spec.client_tls.as_ref().unwrap();
    for (doc, key) in [
        (&tls.root_ca, "ca.crt"),
        (&tls.certificate, "tls.crt"),
        (&tls.private_key, "tls.key"),
    ] {
        assert_eq!(
            doc.as_ref().unwrap().secret_key_ref.as_ref().unwrap().key,
            key
        );
    }
    assert_eq!(ep.auth.as_ref().unwrap().secret_store, "kubernetes");
    assert_eq!(ep.scopes, ["checkout", "cart"]);
    assert!(ep.in_scope("cart") && !ep.in_scope("other"));

    // Written back, it keeps Dapr's shape: auth and scopes at the root, the type meta filled in.
    let v = serde_json::to_value(&ep).unwrap();
    assert_eq!(v["apiVersion"], http_endpoint::API_VERSION);
    assert_eq!(v["kind"], http_endpoint::KIND);
    assert_eq!(v["auth"], json!({"secretStore": "kubernetes"}));
    assert_eq!(v["scopes"], json!(["checkout", "cart"]));
    assert!(v["spec"].get("auth").is_none());
}

#[test]
fn configuration_crd_keeps_daprs_other_sections() {
    use ferry_api::{Configuration, configuration};
    let crd = Configuration::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some(configuration::CRD_NAME));
    assert_eq!(crd.spec.group, "dapr.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "Configuration");
    assert_eq!(Configuration::api_version(&()), "dapr.io/v1alpha1");
    let v = version_of(&crd);
    assert_eq!(v["subresources"], json!({"status": {}}));
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true);
    for section in [
        "tracing", "metric", "metrics", "logging", "features", "mtls",
    ] {
        assert_eq!(
            spec["properties"][section]["x-kubernetes-preserve-unknown-fields"], true,
            "{section}"
        );
    }
    let policy = &spec["properties"]["accessControl"]["properties"]["policies"]["items"];
    assert_eq!(policy["required"], json!(["appId"]));
    let op = &policy["properties"]["operations"]["items"];
    assert_eq!(op["required"], json!(["action", "name"]));
    assert_eq!(op["properties"]["httpVerb"]["items"]["type"], "string");
}
