//! The OpenAPI document of the admin API (openapi/callgate-admin.yaml) and the router agree:
//! the committed JSON is the YAML, callgate serves it without auth, every (method, path) the
//! document describes is routed (or listed in NOT_YET_ROUTED) and every routed one is described.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use callgate::admin::{OPENAPI_JSON, ROUTES};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::*;

/// Endpoints the document describes that other branches are building. The lead removes each
/// entry (and adds it to `callgate::admin::ROUTES`) when its branch merges; the test below
/// fails while an entry here is routed, so the list cannot go stale.
/// .ci/schemathesis reads this list too, to leave these out of the fuzzing run.
const NOT_YET_ROUTED: &[(&str, &str)] = &[];

const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH"];

const YAML_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/callgate-admin.yaml");
const JSON_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/callgate-admin.json");

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("the embedded document is JSON")
}

/// Every (METHOD, path template) the document describes.
fn described() -> BTreeSet<(String, String)> {
    let doc = document();
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options", "trace"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn set(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect()
}

#[test]
fn the_committed_json_is_the_yaml() {
    let yaml = std::fs::read_to_string(YAML_PATH).unwrap();
    let from_yaml: Value = serde_norway::from_str(&yaml).expect("the YAML parses");
    if std::env::var_os("CALLGATE_BLESS_OPENAPI").is_some() {
        let mut text = serde_json::to_string_pretty(&from_yaml).unwrap();
        text.push('\n');
        std::fs::write(JSON_PATH, text).unwrap();
        return;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(JSON_PATH).unwrap()).unwrap();
    assert!(
        committed == from_yaml,
        "openapi/callgate-admin.json is not openapi/callgate-admin.yaml: regenerate it with \
         CALLGATE_BLESS_OPENAPI=1 cargo test --test openapi the_committed_json_is_the_yaml (then rebuild)"
    );
    assert!(document() == from_yaml, "the binary embeds a stale document: rebuild");
}

#[test]
fn the_document_is_openapi_3_1_with_the_bearer_scheme() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let scheme = &doc["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(doc["security"], serde_json::json!([{ "apiKey": [] }]));
    // The probes, /metrics and the document itself need no key; everything else does.
    for (method, path) in described() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let open = ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"].contains(&path.as_str());
        assert_eq!(op.get("security") == Some(&serde_json::json!([])), open, "{method} {path}: security");
        if !open {
            assert!(op["responses"]["401"].is_object(), "{method} {path} documents its 401");
        }
    }
}

/// Every `$ref` points at something in the document, so a generator never stops half way.
#[test]
fn every_reference_resolves() {
    fn walk(doc: &Value, v: &Value, at: &str) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{at}: external $ref {r}"));
                    assert!(doc.pointer(pointer).is_some(), "{at}: $ref {r} resolves to nothing");
                }
                for (k, v) in map {
                    walk(doc, v, &format!("{at}/{k}"));
                }
            }
            Value::Array(items) => {
                items.iter().enumerate().for_each(|(i, v)| walk(doc, v, &format!("{at}/{i}")))
            }
            _ => {}
        }
    }
    let doc = document();
    walk(&doc, &doc, "");
}

#[test]
fn the_document_describes_what_is_routed_and_what_is_coming() {
    let routed = set(ROUTES);
    let coming = set(NOT_YET_ROUTED);
    assert_eq!(routed.len(), ROUTES.len(), "ROUTES lists an endpoint twice");
    assert!(
        routed.is_disjoint(&coming),
        "in both ROUTES and NOT_YET_ROUTED: {:?}",
        routed.intersection(&coming)
    );
    let described = described();
    let listed: BTreeSet<_> = routed.union(&coming).cloned().collect();
    assert!(
        described.difference(&listed).next().is_none(),
        "described but neither routed nor in NOT_YET_ROUTED: {:?}",
        described.difference(&listed).collect::<Vec<_>>()
    );
    assert!(
        listed.difference(&described).next().is_none(),
        "routed (or coming) but not described: {:?}",
        listed.difference(&described).collect::<Vec<_>>()
    );
}

/// The match arms of `admin::api` name their paths as slices of segments: each must be a path
/// of ROUTES, so a route added to the router without ROUTES (and so without the document)
/// fails here.
#[test]
fn every_path_the_router_matches_is_in_routes() {
    let source = include_str!("../src/admin.rs");
    let arm = |line: &str| -> Option<String> {
        let inner = line.trim().strip_prefix("[\"v1\"")?.split_once("] =>")?.0;
        let mut path = String::from("/v1");
        for segment in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            path.push('/');
            match segment.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(literal) => path.push_str(literal),
                None => path.push_str("{}"),
            }
        }
        Some(path)
    };
    let arms: BTreeSet<String> = source.lines().filter_map(arm).collect();
    assert!(arms.len() >= 5, "the router's arms were not found in src/admin.rs: {arms:?}");
    let shape = |template: &str| -> String {
        template.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect::<Vec<_>>().join("/")
    };
    let routed: BTreeSet<String> = ROUTES.iter().map(|(_, p)| shape(p)).collect();
    for path in &arms {
        assert!(
            routed.contains(path),
            "src/admin.rs routes {path}, which ROUTES (and so the document) lacks"
        );
    }
}

/// A concrete path for a template: every `{param}` filled with a value valid for it.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{agent_id}" => "agent_fuzz",
            "{phone_number}" => "+447700900123",
            "{name}" => "screening",
            "{call_sid}" => "CA00000000000000000000000000000000",
            s if s.starts_with('{') => panic!("no example value for {s} in {template}"),
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What the router does with (method, path): routed, 405 (path routed, method not), or 404
/// (no such endpoint).
#[derive(Debug, PartialEq)]
enum Routing {
    Routed,
    MethodNotAllowed(String),
    NoSuchEndpoint,
}

async fn routing(cg: &Callgate, method: &str, path: &str) -> Routing {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}{}", cg.admin, concrete(path)))
        .header("authorization", ADMIN_AUTH)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(request).await.unwrap();
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    match answer.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {path}");
            Routing::MethodNotAllowed(answer.header("allow").unwrap_or_default().to_owned())
        }
        StatusCode::NOT_FOUND if body["error"]["message"] == "no such endpoint" => Routing::NoSuchEndpoint,
        _ => Routing::Routed,
    }
}

/// Asked over a real socket, the router takes exactly the methods ROUTES gives on every path the
/// document describes (a 405 naming them in `Allow` for any other), and routes none of
/// NOT_YET_ROUTED.
#[tokio::test]
async fn the_router_takes_exactly_the_routes_described() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let paths: BTreeSet<String> = described().into_iter().map(|(_, p)| p).collect();
    for path in &paths {
        let expected: Vec<&str> = ROUTES.iter().filter(|(_, p)| p == path).map(|(m, _)| *m).collect();
        let mut allow: Vec<&str> = expected.clone();
        if allow.contains(&"GET") {
            allow.push("HEAD");
        }
        for method in METHODS {
            let got = routing(&cg, method, path).await;
            if expected.contains(method) {
                assert_eq!(got, Routing::Routed, "{method} {path} is in ROUTES");
            } else if NOT_YET_ROUTED.contains(&(*method, path.as_str())) {
                assert_ne!(
                    got,
                    Routing::Routed,
                    "{method} {path} is routed now: move it from NOT_YET_ROUTED (tests/openapi.rs) to ROUTES"
                );
            } else if expected.is_empty() {
                assert_eq!(got, Routing::NoSuchEndpoint, "{method} {path}: nothing routed there");
            } else {
                assert_eq!(got, Routing::MethodNotAllowed(allow.join(", ")), "{method} {path}");
            }
        }
    }
    cg.stop().await;
}

#[tokio::test]
async fn the_document_is_served_without_a_key() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let answer = get(&format!("http://{}/v1/openapi.json", cg.admin)).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let served: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(served, document());

    let request =
        Request::post(format!("http://{}/v1/openapi.json", cg.admin)).body(Full::new(Bytes::new())).unwrap();
    let answer = send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.header("allow"), Some("GET, HEAD"));
    cg.stop().await;
}

/// Every call in a README table (`| `PUT /v1/...` |`, `| `PUT/GET/DELETE /v1/...` |`, and
/// `| `GET` same |` for the row above's path) is one the document describes: the document is
/// the one source the README's API tables are checked against.
#[test]
fn every_call_in_the_readme_tables_is_described() {
    let readme = include_str!("../README.md");
    let described = described();
    let mut last_path: Option<String> = None;
    let mut checked = 0;
    for line in readme.lines() {
        let Some(cell) = line.strip_prefix("| `").and_then(|rest| rest.split_once('`')).map(|(cell, _)| cell)
        else {
            continue;
        };
        let rest = line.strip_prefix("| `").unwrap().split_once('`').unwrap().1;
        let (methods, path) = match cell.split_once(' ') {
            Some((methods, path)) if path.starts_with('/') => (methods, path.to_owned()),
            None if rest.trim_start().starts_with("same") => match &last_path {
                Some(path) => (cell, path.clone()),
                None => continue,
            },
            _ => continue,
        };
        if !methods.split('/').all(|m| METHODS.contains(&m)) {
            continue;
        }
        for method in methods.split('/') {
            assert!(
                described.contains(&(method.to_owned(), path.clone())),
                "README.md lists `{method} {path}`, which openapi/callgate-admin.yaml does not describe"
            );
            checked += 1;
        }
        last_path = Some(path);
    }
    assert!(checked >= 10, "the README's API table was not found (checked {checked} calls)");
}

/// Found by schemathesis: a gate URL whose host no resolver can find was taken, and GET
/// /v1/routes then answered a URL its own schema refuses. Now a 400 `invalid_url`, nothing changed.
#[tokio::test]
async fn a_gate_url_with_a_host_that_is_no_name_is_refused() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let before = cg.table().await;
    for url in ["https://api.example.com*/precall", "https:api.example.com/precall"] {
        let (status, body) = cg
            .admin("PUT", "/v1/integrations/precall/agent/agent_a", Some(serde_json::json!({ "url": url })))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(body["error"]["code"], "invalid_url", "{url}");
        assert!(!body["error"]["message"].as_str().unwrap().contains("example"), "the URL is not echoed");
    }
    assert_eq!(cg.table().await, before);
    cg.stop().await;
}

/// Found by schemathesis: a check given `"closed_dates": null` (read as not given) was answered
/// back with the `null`, which the document's schema refuses. A member that is `null` is now
/// left out of what is kept and answered; `null`s inside a request `body` are data and stay.
#[tokio::test]
async fn a_null_member_of_a_check_is_not_given_and_not_answered() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let cg = Callgate::spawn("{}", &engine.url("")).await;
    let checks = serde_json::json!([
        {"type": "schedule", "name": "Hours", "timezone": "Europe/London", "open": [], "closed_dates": null,
         "default_on_failure": null},
        {"type": "external_api", "name": "Api", "credential_id": null,
         "http_request": {"url": "https://api.example.com/c", "method": "POST", "headers": null, "body": {"keep": null}},
         "response_config": {"response_field": "ok", "response_field_value": true}}
    ]);
    let (status, body) = cg.admin("PUT", "/v1/check-sets/hours", Some(checks)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, got) = cg.admin("GET", "/v1/check-sets/hours", None).await;
    assert_eq!(status, StatusCode::OK);
    let want = serde_json::json!({"name": "hours", "checks": [
        {"type": "schedule", "name": "Hours", "timezone": "Europe/London", "open": []},
        {"type": "external_api", "name": "Api",
         "http_request": {"url": "https://api.example.com/c", "method": "POST", "body": {"keep": null}},
         "response_config": {"response_field": "ok", "response_field_value": true}}
    ]});
    assert_eq!(got, want);
    assert_eq!(body, want, "the PUT answers what GET does");
    cg.stop().await;
}

/// Found by schemathesis: GET of a chain gate answered `checks` (or `check_set`), which the
/// document's gate-state schemas did not list (they refuse other properties). Every key such an
/// answer carries is now a property of its schema.
#[tokio::test]
async fn a_chain_gates_state_is_described_by_its_schema() {
    let engine = Stub::start(Reply::json("<Response/>")).await;
    let routes = serde_json::json!({"check_sets": {"hours": [
        {"type": "schedule", "name": "Hours", "timezone": "Europe/London", "open": []}]}});
    let cg = Callgate::spawn(&routes.to_string(), &engine.url("")).await;
    let checks =
        serde_json::json!({"checks": [{"type": "caller_list", "name": "Blocklist", "deny": ["+4487*"]}]});
    let cases = [
        ("/v1/integrations/precall/agent/agent_a", checks, "AgentGateState"),
        (
            "/v1/integrations/precall/number/+447700900123",
            serde_json::json!({"check_set": "hours"}),
            "NumberGateState",
        ),
    ];
    let schemas = &document()["components"]["schemas"];
    for (path, gate, schema) in cases {
        let (status, body) = cg.admin("PUT", path, Some(gate)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let (status, state) = cg.admin("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let properties = schemas[schema]["properties"].as_object().expect("properties");
        for key in state.as_object().expect("an object").keys() {
            assert!(properties.contains_key(key), "{schema} lacks `{key}` that GET {path} answers: {state}");
        }
        assert!(state.get("checks").or(state.get("check_set")).is_some(), "{state}");
    }
    cg.stop().await;
}
