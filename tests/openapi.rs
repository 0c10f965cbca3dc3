//! The served OpenAPI document (docs/openapi.json at `GET /v1/openapi.json`) against the router
//! and against real answers:
//!
//! - every route and method of `src/http/mod.rs` is documented, and nothing else is: a hand-written
//!   list, plus a scan of the source at test time so that a new route without documentation fails;
//! - every operation but healthz/readyz/metrics/openapi.json requires the bearer scheme, and the
//!   server agrees (401 without a token, 200 for the public ones);
//! - the roles each operation's description names are exactly the roles the server lets through;
//! - real answers (success and error) have the documented status and the documented shape
//!   (property names, required properties, no undocumented properties, JSON types, base64).

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The routes of `src/http/mod.rs`, written out by hand (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/tenants"),
    ("post", "/v1/tenants/{tenant}/tokens"),
    ("delete", "/v1/tenants/{tenant}/tokens/{id}"),
    ("post", "/v1/tenants/{tenant}/keys"),
    ("get", "/v1/tenants/{tenant}/keys"),
    ("get", "/v1/tenants/{tenant}/keys/{key}"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/data-key"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/decrypt"),
    ("get", "/v1/tenants/{tenant}/keys/{key}/public-key"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/blind-index-key"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/rotate"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/rewrap"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/rewrap-batch"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/config"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/disable"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/enable"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/destroy"),
    ("post", "/v1/tenants/{tenant}/keys/{key}/cancel-destroy"),
    ("post", "/v1/root-key/reseal"),
    ("get", "/v1/audit"),
    ("get", "/v1/audit/verify"),
    ("get", "/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// POST routes whose handler reads no body (any body sent is ignored).
const POST_WITHOUT_BODY: &[&str] = &[
    "/v1/tenants/{tenant}/keys/{key}/rotate",
    "/v1/root-key/reseal",
];

/// Routes that take no token.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

const ROLES: &[&str] = &["operator", "tenant-admin", "encrypt", "decrypt"];

const HTTP_METHODS: &[&str] = &[
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

// ------------------------------------------------------------------ scanning the router source

/// The text after an opening parenthesis up to its matching closing one (string literals skipped).
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after .route(");
}

/// Method-router calls (`get(`, `.post(`, ...) in a `.route(...)` handler expression.
fn methods_in(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    for name in HTTP_METHODS.iter().copied().chain(["any", "on"]) {
        let needle = format!("{name}(");
        let mut from = 0;
        while let Some(i) = expr[from..].find(&needle) {
            let at = from + i;
            from = at + needle.len();
            let before = at.checked_sub(1).map(|j| bytes[j]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue; // part of a longer name, e.g. handlers::get_key or my_get(
            }
            assert!(
                name != "any" && name != "on",
                "`{name}(` in {expr:?}: route by explicit methods so each one can be documented"
            );
            out.push(name.to_owned());
        }
    }
    out
}

/// Every (method, path) routed by `.route("...", get(..).post(..))` calls in Rust source text.
fn scan_routes(src: &str) -> BTreeSet<(String, String)> {
    for unsupported in [".nest(", ".nest_service(", ".merge(", ".route_service("] {
        assert!(
            !src.contains(unsupported),
            "src/http/mod.rs uses `{unsupported}`: teach scan_routes() in tests/openapi.rs to \
             follow it, so its routes are checked against docs/openapi.json"
        );
    }
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let args = balanced(rest);
        let open = args.find('"').expect(".route( without a string path");
        let len = args[open + 1..].find('"').expect("unterminated route path");
        let path = &args[open + 1..open + 1 + len];
        let methods = methods_in(&args[open + 1 + len + 1..]);
        assert!(!methods.is_empty(), "no method found for route {path}");
        for m in methods {
            assert!(
                out.insert((m.clone(), path.to_owned())),
                "{m} {path} routed twice"
            );
        }
    }
    out
}

/// Every (method, path) the router in `src/http/mod.rs` serves, read from the source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs");
    let source = std::fs::read_to_string(file).expect("read src/http/mod.rs");
    // The module's unit tests route stand-in paths of their own.
    let served = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    scan_routes(served)
}

#[test]
fn route_scanner_reads_method_chains_and_ignores_handler_names() {
    let src = r#"
        let api = Router::new()
            .route("/v1/a/{x}", post(handlers::get_thing).get(handlers::post_it))
            .route(
                "/v1/b",
                delete(h::delete).put(h::x(1, (2)))
            )
            .route_layer(layer)
            .route("/c", get(h::c));
    "#;
    let got: Vec<String> = scan_routes(src)
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        got,
        [
            "delete /v1/b",
            "get /c",
            "get /v1/a/{x}",
            "post /v1/a/{x}",
            "put /v1/b"
        ]
    );
}

#[test]
fn source_scan_finds_every_route_of_the_hand_written_list() {
    let scanned = routes_in_source();
    for (m, p) in ROUTES {
        assert!(
            scanned.contains(&((*m).to_owned(), (*p).to_owned())),
            "{m} {p} is in ROUTES but the scan of src/http/mod.rs did not find it: the route was \
             removed (update ROUTES and docs/openapi.json) or the scanner is broken"
        );
    }
}

// ------------------------------------------------------------------ document helpers

/// Follow a local `$ref` (repeatedly).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            resolve(
                doc,
                doc.pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

fn all_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                out.push(r);
            }
            m.values().for_each(|x| all_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| all_refs(x, out)),
        _ => {}
    }
}

/// Every (method, path) the document describes.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for method in item.as_object().expect("path item").keys() {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.insert((method.clone(), path.clone()));
            }
        }
    }
    out
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Does `value` have the shape `schema` documents? Checks types, `const`, `enum`, required
/// properties, undocumented properties (`additionalProperties: false`), array items and base64
/// content, recursively. Not a full JSON Schema validator (no patterns, no bounds).
fn check_shape(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: bad `type` {other}"),
        };
        let actual = json_type(value);
        assert!(
            types
                .iter()
                .any(|t| *t == actual || (*t == "number" && actual == "integer")),
            "{at}: {actual} {value} where the document says {types:?}"
        );
    }
    if let Some(c) = schema.get("const") {
        assert_eq!(value, c, "{at}: documented const");
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        assert!(
            e.contains(value),
            "{at}: {value} is not one of the documented {e:?}"
        );
    }
    if schema.get("contentEncoding").and_then(Value::as_str) == Some("base64")
        && let Some(s) = value.as_str()
    {
        assert!(B64.decode(s).is_ok(), "{at}: not standard base64: {s:?}");
    }
    match value {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().expect("required names are strings");
                assert!(
                    obj.contains_key(r),
                    "{at}: documented required property `{r}` is missing"
                );
            }
            for (k, v) in obj {
                match (
                    props.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => check_shape(doc, s, v, &format!("{at}.{k}")),
                    (None, Some(Value::Bool(false))) => {
                        panic!("{at}: property `{k}` is not documented (answer: {value})")
                    }
                    (None, Some(s @ Value::Object(_))) => {
                        check_shape(doc, s, v, &format!("{at}.{k}"))
                    }
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check_shape(doc, s, v, &format!("{at}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

/// The answer's status must be documented for the operation, and its JSON body must have the
/// documented shape (a documented response without content means an empty body).
fn check_answer(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let op = operation(doc, method, path);
    let code = status.as_u16().to_string();
    let resp = op["responses"].get(&code).unwrap_or_else(|| {
        panic!("{method} {path} answered {status}, which is not documented: {body}")
    });
    let resp = resolve(doc, resp);
    let at = format!("{method} {path} {code}");
    match resp.get("content") {
        None => assert!(
            body.is_null(),
            "{at}: documented without a body, got {body}"
        ),
        Some(content) => {
            let schema = &content["application/json"]["schema"];
            assert!(schema.is_object(), "{at}: no application/json schema");
            check_shape(doc, schema, body, &at);
        }
    }
}

/// The documented roles of a secured operation: backticked role names in its `**Roles:**` line.
fn documented_roles(op: &Value) -> BTreeSet<&'static str> {
    let desc = op["description"].as_str().expect("description");
    let line = desc
        .lines()
        .find(|l| l.starts_with("**Roles:**"))
        .unwrap_or_else(|| panic!("description has no **Roles:** line: {desc}"));
    ROLES
        .iter()
        .copied()
        .filter(|r| line.contains(&format!("`{r}`")))
        .collect()
}

/// The documented example request body, if the operation takes one.
fn example_body(op: &Value) -> Option<Value> {
    let rb = op.get("requestBody")?;
    Some(rb["content"]["application/json"]["example"].clone())
}

/// A concrete URL path for a template.
fn concrete(path: &str, tenant: &str, token_id: &str) -> String {
    path.replace("{tenant}", tenant)
        .replace("{key}", "default")
        .replace("{id}", token_id)
}

fn method_of(m: &str) -> Method {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("HTTP method")
}

async fn fetch_doc(server: &TestServer) -> Value {
    let resp = server
        .http
        .get(format!("{}/v1/openapi.json", server.base))
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let text = resp.text().await.expect("body");
    let file = include_str!("../docs/openapi.json");
    assert_eq!(
        text, file,
        "GET /v1/openapi.json must serve docs/openapi.json verbatim"
    );
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn every_route_is_documented_and_nothing_else() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_doc(&server).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1"
    );

    let documented = documented_operations(&doc);
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let scanned = routes_in_source();
    for (m, p) in listed.iter().chain(&scanned) {
        assert!(
            documented.contains(&(m.clone(), p.clone())),
            "{} {p} is routed in src/http/mod.rs but not documented in docs/openapi.json",
            m.to_uppercase()
        );
    }
    for (m, p) in &documented {
        assert!(
            scanned.contains(&(m.clone(), p.clone())),
            "docs/openapi.json documents {} {p}, which src/http/mod.rs does not route",
            m.to_uppercase()
        );
    }

    // Every $ref resolves; operation ids are unique.
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        resolve(&doc, &json!({ "$ref": r }));
    }
    let mut ids = BTreeSet::new();
    for (m, p) in &documented {
        let id = operation(&doc, m, p)["operationId"]
            .as_str()
            .expect("operationId");
        assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
    }
    server.stop().await;
}

#[tokio::test]
async fn security_is_documented_and_enforced() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_doc(&server).await;
    assert!(
        doc.get("security").is_none(),
        "security is declared per operation, not globally"
    );
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");

    server.tenant("acme").await;
    let (_, token_id) = server.token("acme", &["encrypt"], None).await;
    let unknown = format!("pqkms_{}", "0".repeat(64));
    for (m, p) in documented_operations(&doc) {
        let op = operation(&doc, &m, &p);
        let security = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{m} {p}: no security"));
        let url = concrete(&p, "acme", &token_id);
        if PUBLIC.contains(&p.as_str()) {
            assert!(security.is_empty(), "{m} {p} is public: `security: []`");
            let (s, v) = server.call(method_of(&m), &url, None, None).await;
            assert_eq!(s, StatusCode::OK, "{m} {p} without a token: {v}");
            if p != "/metrics" && p != "/v1/openapi.json" {
                check_answer(&doc, &m, &p, s, &v);
            }
            continue;
        }
        assert!(!security.is_empty(), "{m} {p} needs a security requirement");
        for req in security {
            for scheme in req.as_object().expect("security requirement").keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{m} {p}: unknown scheme {scheme}"
                );
            }
        }
        assert!(
            security.iter().any(|r| r.get("bearerAuth").is_some()),
            "{m} {p}: bearerAuth"
        );
        for token in [None, Some(unknown.as_str())] {
            let (s, v) = server
                .call(method_of(&m), &url, token, example_body(op))
                .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} with {token:?}: {v}");
            check_answer(&doc, &m, &p, s, &v);
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        // Every secured operation documents the answers every secured operation can give.
        for code in ["401", "403", "500", "503"] {
            assert!(
                op["responses"].get(code).is_some(),
                "{m} {p}: {code} not documented"
            );
        }
        let desc = op["description"].as_str().unwrap_or("");
        assert!(!documented_roles(op).is_empty(), "{m} {p}: no roles named");
        if p.contains("{tenant}") {
            assert!(
                op["responses"].get("404").is_some(),
                "{m} {p}: 404 not documented"
            );
            assert!(
                desc.contains("whether or not that tenant exists"),
                "{m} {p}: the description must state the tenant-scope rule"
            );
        }
        if op.get("requestBody").is_some() {
            for code in ["400", "413"] {
                assert!(
                    op["responses"].get(code).is_some(),
                    "{m} {p}: {code} not documented"
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn documented_roles_and_scope_match_the_server() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_doc(&server).await;
    let acme = server.tenant("acme").await;
    server.tenant("globex").await;
    let mut cells = 0;
    for (m, p) in documented_operations(&doc) {
        if PUBLIC.contains(&p.as_str()) {
            continue;
        }
        let op = operation(&doc, &m, &p);
        let allowed = documented_roles(op);
        for role in ROLES {
            let token = match *role {
                "operator" => &server.operator,
                "tenant-admin" => &acme.admin,
                "encrypt" => &acme.encrypt,
                _ => &acme.decrypt,
            };
            // A fresh victim for each revocation, so the callers' own tokens stay valid.
            let (_, victim) = server.token("acme", &["encrypt"], None).await;
            let url = concrete(&p, "acme", &victim);
            let (s, v) = server
                .call(method_of(&m), &url, Some(token), example_body(op))
                .await;
            check_answer(&doc, &m, &p, s, &v);
            assert_eq!(
                s == StatusCode::FORBIDDEN,
                !allowed.contains(role),
                "{m} {p} as {role}: {s} {v}; documented roles {allowed:?}"
            );
            cells += 1;

            // Tenant scope: a tenant token naming another tenant gets one 403, the same whether
            // or not that tenant exists.
            if p.contains("{tenant}") && *role != "operator" {
                let mut answers = Vec::new();
                for other in ["globex", "no-such-tenant"] {
                    let url = concrete(&p, other, &victim);
                    let (s, v) = server
                        .call(method_of(&m), &url, Some(token), example_body(op))
                        .await;
                    assert_eq!(
                        s,
                        StatusCode::FORBIDDEN,
                        "{m} {p} as {role} on {other}: {v}"
                    );
                    check_answer(&doc, &m, &p, s, &v);
                    answers.push(v);
                    cells += 1;
                }
                assert_eq!(answers[0], answers[1], "{m} {p} as {role}");
            }
        }
    }
    eprintln!("documented roles vs server: {cells} calls");
    server.stop().await;
}

#[tokio::test]
async fn request_bodies_are_as_documented() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_doc(&server).await;
    server.tenant("acme").await;
    let (_, token_id) = server.token("acme", &["encrypt"], None).await;
    let mut seen = 0;
    for (m, p) in documented_operations(&doc) {
        let op = operation(&doc, &m, &p);
        let Some(rb) = op.get("requestBody") else {
            assert!(
                m != "post" || POST_WITHOUT_BODY.contains(&p.as_str()),
                "POST {p} documents no request body"
            );
            continue;
        };
        assert!(
            !POST_WITHOUT_BODY.contains(&p.as_str()),
            "{m} {p} is listed in POST_WITHOUT_BODY but documents a request body"
        );
        seen += 1;
        assert_eq!(
            rb["required"], true,
            "{m} {p}: the server needs a JSON body"
        );
        let schema = resolve(&doc, &rb["content"]["application/json"]["schema"]);
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "{m} {p}: request bodies use deny_unknown_fields"
        );
        let example = example_body(op).expect("example");
        check_shape(&doc, schema, &example, &format!("{m} {p} example"));
        let url = concrete(&p, "acme", &token_id);
        // Bodies are parsed before the role check, so the operator token shows what the parser
        // accepts on every route.
        let (s, v) = server
            .call(
                method_of(&m),
                &url,
                Some(&server.operator),
                Some(example.clone()),
            )
            .await;
        assert_ne!(
            s,
            StatusCode::BAD_REQUEST,
            "{m} {p}: the documented example is refused: {v}"
        );
        check_answer(&doc, &m, &p, s, &v);

        let mut extra = example.clone();
        extra["not_documented"] = json!(1);
        let (s, v) = server
            .call(method_of(&m), &url, Some(&server.operator), Some(extra))
            .await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{m} {p}: an unknown field must be refused: {v}"
        );
        check_answer(&doc, &m, &p, s, &v);

        let required = schema["required"].as_array().cloned().unwrap_or_default();
        let (s, v) = server
            .call(method_of(&m), &url, Some(&server.operator), Some(json!({})))
            .await;
        assert_eq!(
            s == StatusCode::BAD_REQUEST,
            !required.is_empty(),
            "{m} {p} with {{}}: documented required {required:?}, got {s} {v}"
        );
        check_answer(&doc, &m, &p, s, &v);
    }
    assert_eq!(seen, 13, "POST routes with a JSON body");
    server.stop().await;
}

#[tokio::test]
async fn real_answers_have_the_documented_shape() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_doc(&server).await;
    let op = server.operator.clone();
    let tenants = "/v1/tenants";
    let keys = "/v1/tenants/{tenant}/keys";
    let key = "/v1/tenants/{tenant}/keys/{key}";
    let data_key = "/v1/tenants/{tenant}/keys/{key}/data-key";
    let decrypt = "/v1/tenants/{tenant}/keys/{key}/decrypt";
    let public_key = "/v1/tenants/{tenant}/keys/{key}/public-key";
    let url = |p: &str| concrete(p, "acme", "");

    let (s, v) = server
        .call(
            Method::POST,
            tenants,
            Some(&op),
            Some(json!({ "name": "acme" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    check_answer(&doc, "post", tenants, s, &v);
    let (s, v) = server
        .call(
            Method::POST,
            tenants,
            Some(&op),
            Some(json!({ "name": "acme" })),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    check_answer(&doc, "post", tenants, s, &v);
    let (s, v) = server
        .call(
            Method::POST,
            tenants,
            Some(&op),
            Some(json!({ "name": "Not_Valid" })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    check_answer(&doc, "post", tenants, s, &v);

    let tokens = "/v1/tenants/{tenant}/tokens";
    let body = json!({ "roles": ["tenant-admin", "encrypt", "decrypt"], "ttl_seconds": 3600 });
    let (s, v) = server
        .call(Method::POST, &url(tokens), Some(&op), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    check_answer(&doc, "post", tokens, s, &v);
    let all = v["token"].as_str().unwrap().to_owned();
    let (s, v) = server
        .call(
            Method::POST,
            "/v1/tenants/nope/tokens",
            Some(&op),
            Some(json!({ "roles": ["encrypt"] })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    check_answer(&doc, "post", tokens, s, &v);
    let (_, victim) = server.token("acme", &["decrypt"], None).await;
    let revoke = "/v1/tenants/{tenant}/tokens/{id}";
    for expected in [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND] {
        let (s, v) = server
            .call(
                Method::DELETE,
                &concrete(revoke, "acme", &victim),
                Some(&all),
                None,
            )
            .await;
        assert_eq!(s, expected, "{v}");
        check_answer(&doc, "delete", revoke, s, &v);
    }

    let (s, v) = server
        .call(
            Method::POST,
            &url(keys),
            Some(&all),
            Some(json!({ "name": "billing" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    check_answer(&doc, "post", keys, s, &v);
    let (s, v) = server.call(Method::GET, &url(keys), Some(&all), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", keys, s, &v);
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(2), "{v}");
    let (s, v) = server.call(Method::GET, &url(key), Some(&all), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", key, s, &v);
    let (s, v) = server
        .call(Method::GET, "/v1/tenants/acme/keys/nope", Some(&all), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    check_answer(&doc, "get", key, s, &v);
    let (s, v) = server
        .call(Method::GET, &url(public_key), Some(&all), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", public_key, s, &v);

    // The data-key answer has exactly the documented properties, with and without plaintext.
    let props =
        |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let documented: BTreeSet<String> =
        resolve(&doc, &json!({ "$ref": "#/components/schemas/DataKey" }))["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
    let ctx = json!({ "table": "users", "column": "email" });
    let (s, v) = server
        .call(
            Method::POST,
            &url(data_key),
            Some(&all),
            Some(json!({ "context": ctx })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "post", data_key, s, &v);
    assert_eq!(
        props(&v),
        documented,
        "data-key answer vs components.schemas.DataKey"
    );
    let wrapped = v["wrapped_key"].clone();
    let plaintext = v["plaintext"].clone();
    let body = json!({ "context": ctx, "include_plaintext": false });
    let (s, v) = server
        .call(Method::POST, &url(data_key), Some(&all), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "post", data_key, s, &v);
    let mut without = documented.clone();
    without.remove("plaintext");
    assert_eq!(props(&v), without);
    let (s, v) = server
        .call(Method::POST, &url(data_key), Some(&all), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "post", data_key, s, &v);

    let body = json!({ "wrapped_key": wrapped, "context": ctx });
    let (s, v) = server
        .call(Method::POST, &url(decrypt), Some(&all), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "post", decrypt, s, &v);
    assert_eq!(v["plaintext"], plaintext);
    let body = json!({ "wrapped_key": wrapped, "context": { "table": "orders" } });
    let (s, v) = server
        .call(Method::POST, &url(decrypt), Some(&all), Some(body))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    check_answer(&doc, "post", decrypt, s, &v);
    let (s, v) = server
        .call(
            Method::POST,
            &url(decrypt),
            Some(&all),
            Some(json!({ "wrapped_key": "%%%" })),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    check_answer(&doc, "post", decrypt, s, &v);

    let big = format!(
        "{{\"name\": \"{}\"}}",
        "a".repeat(server.config.max_body_bytes + 1)
    );
    let (s, v) = server.call_raw(tenants, &op, big.into_bytes()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    check_answer(&doc, "post", tenants, s, &v);

    for (token, query) in [
        (&op, ""),
        (&op, "?tenant=acme&limit=2"),
        (&all, "?operation=data_key.generate"),
    ] {
        let (s, v) = server
            .call(Method::GET, &format!("/v1/audit{query}"), Some(token), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        check_answer(&doc, "get", "/v1/audit", s, &v);
        assert!(!v["entries"].as_array().unwrap().is_empty(), "{query}: {v}");
    }
    let (s, v) = server
        .call(Method::GET, "/v1/audit?tenant=globex", Some(&all), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    check_answer(&doc, "get", "/v1/audit", s, &v);
    let (s, v) = server
        .call(Method::GET, "/v1/audit/verify", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", "/v1/audit/verify", s, &v);
    assert_eq!(v["ok"], true, "{v}");

    for p in ["/healthz", "/readyz"] {
        let (s, v) = server.call(Method::GET, p, None, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        check_answer(&doc, "get", p, s, &v);
    }
    let resp = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let documented_ct: Vec<&String> =
        operation(&doc, "get", "/metrics")["responses"]["200"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
    assert_eq!(documented_ct, [&ct], "/metrics content type");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("pqkms_http_requests_total")
    );
    server.stop().await;
}

#[tokio::test]
async fn lifecycle_answers_have_the_documented_shape() {
    // No minimum waiting period, and a worker that never runs on its own: the test runs its passes.
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.min_destroy_waiting_secs = 0;
        c.lifecycle_interval_ms = 3_600_000;
    })
    .await;
    let doc = fetch_doc(&server).await;
    let acme = server.tenant("acme").await;
    let tick = || async {
        let state = &server.running.as_ref().expect("running").state;
        pqkms::http::lifecycle_tick(state)
            .await
            .expect("lifecycle pass");
    };
    let p = |op: &str| format!("/v1/tenants/{{tenant}}/keys/{{key}}/{op}");
    // One call, checked against the document; returns the status and body.
    let call = |method: &'static str,
                op: String,
                key: &'static str,
                token: String,
                body: Option<Value>| {
        let doc = &doc;
        let server = &server;
        async move {
            let url = op.replace("{tenant}", "acme").replace("{key}", key);
            let (s, v) = server
                .call(method_of(method), &url, Some(&token), body)
                .await;
            check_answer(doc, method, &op, s, &v);
            (s, v)
        }
    };
    let (admin, enc, dec) = (
        acme.admin.clone(),
        acme.encrypt.clone(),
        acme.decrypt.clone(),
    );
    let ctx = json!({ "table": "users", "column": "email" });
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    let (s, v) = call(
        "post",
        p("data-key"),
        "default",
        enc.clone(),
        Some(json!({ "context": ctx })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let w1 = v["wrapped_key"].clone();

    // Rotate; re-wrap single and batch.
    let (s, v) = call("post", p("rotate"), "default", admin.clone(), None).await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    let good = json!({ "wrapped_key": w1, "context": ctx });
    let (s, v) = call(
        "post",
        p("rewrap"),
        "default",
        dec.clone(),
        Some(good.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["from_version"].as_i64()),
        (Some(2), Some(1))
    );
    let wrong = json!({ "wrapped_key": w1, "context": { "table": "orders" } });
    let (s, v) = call(
        "post",
        p("rewrap"),
        "default",
        dec.clone(),
        Some(wrong.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let bad = json!({ "wrapped_key": "%%%" });
    let (s, v) = call(
        "post",
        p("rewrap"),
        "default",
        dec.clone(),
        Some(bad.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let body = json!({ "items": [good, wrong, bad] });
    let (s, v) = call(
        "post",
        p("rewrap-batch"),
        "default",
        dec.clone(),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let results = v["results"].as_array().expect("results");
    let codes: Vec<String> = results.iter().map(code).collect();
    assert_eq!(codes, ["", "decryption_failed", "bad_request"], "{v}");
    // check_shape does not follow oneOf: check each item against its branch.
    for r in results {
        let branch = if r.get("error").is_some() {
            "Error"
        } else {
            "RewrappedKey"
        };
        let schema = json!({ "$ref": format!("#/components/schemas/{branch}") });
        check_shape(&doc, &schema, r, "rewrap-batch result");
    }
    let many = json!({ "items": vec![json!({ "wrapped_key": "AAAA" }); 101] });
    let (s, v) = call(
        "post",
        p("rewrap-batch"),
        "default",
        dec.clone(),
        Some(many),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(
        "post",
        p("rewrap-batch"),
        "default",
        dec.clone(),
        Some(json!({ "items": [] })),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({ "results": [] })));

    // Retirement and the rotation policy.
    let body = json!({ "min_decryption_version": 2, "rotation_period": "90d" });
    let (s, v) = call("post", p("config"), "default", admin.clone(), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rotation_period_secs"], 90 * 86_400, "{v}");
    let (s, v) = call(
        "post",
        p("decrypt"),
        "default",
        dec.clone(),
        Some(json!({ "wrapped_key": w1, "context": ctx })),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "version_retired".into()),
        "{v}"
    );
    // A retired version can still be re-wrapped forward (nothing is revealed).
    let (s, v) = call(
        "post",
        p("rewrap"),
        "default",
        dec.clone(),
        Some(json!({ "wrapped_key": w1, "context": ctx })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for bad in [
        json!({ "min_decryption_version": 3 }),
        json!({ "rotation_period": "30s" }),
    ] {
        let (s, v) = call("post", p("config"), "default", admin.clone(), Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let body = json!({ "min_decryption_version": 1, "rotation_period": "off" });
    let (s, v) = call("post", p("config"), "default", admin.clone(), Some(body)).await;
    assert_eq!(
        (s, v["next_rotation_at"].clone()),
        (StatusCode::OK, Value::Null),
        "{v}"
    );

    // Disable / enable: one version, then the whole key.
    let one = json!({ "version": 1 });
    let (s, v) = call(
        "post",
        p("disable"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        "post",
        p("disable"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "invalid_state".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("decrypt"),
        "default",
        dec.clone(),
        Some(json!({ "wrapped_key": w1, "context": ctx })),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "key_disabled".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("enable"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        "post",
        p("enable"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "invalid_state".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("disable"),
        "default",
        admin.clone(),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, v["version"].clone()),
        (StatusCode::OK, Value::Null),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("data-key"),
        "default",
        enc.clone(),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "key_disabled".into()),
        "{v}"
    );
    let (s, v) = call("get", p("public-key"), "default", enc.clone(), None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "key_disabled".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("enable"),
        "default",
        admin.clone(),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Destruction: schedule, cancel, schedule, carried out by a worker pass.
    let body = json!({ "version": 1, "waiting_period": "0s" });
    let (s, v) = call(
        "post",
        p("destroy"),
        "default",
        admin.clone(),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        "post",
        p("destroy"),
        "default",
        admin.clone(),
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "invalid_state".into()),
        "{v}"
    );
    let (s, v) = call(
        "get",
        "/v1/tenants/{tenant}/keys/{key}".into(),
        "default",
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(
        (s, v["versions"][0]["state"].clone()),
        (StatusCode::OK, json!("pending_destruction")),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("cancel-destroy"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(
        (s, v["cancelled"].clone()),
        (StatusCode::OK, json!(true)),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("cancel-destroy"),
        "default",
        admin.clone(),
        Some(one.clone()),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "invalid_state".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("destroy"),
        "default",
        admin.clone(),
        Some(json!({ "waiting_period": "soon" })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call("post", p("destroy"), "default", admin.clone(), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tick().await;
    let (s, v) = call(
        "post",
        p("decrypt"),
        "default",
        dec.clone(),
        Some(json!({ "wrapped_key": w1, "context": ctx })),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::GONE, "key_destroyed".into()),
        "{v}"
    );
    assert!(v["error"]["destroyed_at"].is_i64(), "{v}");
    let (s, v) = call(
        "post",
        p("rewrap"),
        "default",
        dec.clone(),
        Some(json!({ "wrapped_key": w1, "context": ctx })),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::GONE, "key_destroyed".into()),
        "{v}"
    );
    let (s, v) = call(
        "post",
        p("cancel-destroy"),
        "default",
        admin.clone(),
        Some(one),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "invalid_state".into()),
        "{v}"
    );
    let (s, v) = call(
        "get",
        "/v1/tenants/{tenant}/keys/{key}".into(),
        "default",
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(
        (s, v["versions"][0]["state"].clone()),
        (StatusCode::OK, json!("destroyed")),
        "{v}"
    );

    // A key whose every version is destroyed: 410 for data-key and public-key.
    let (s, v) = call(
        "post",
        "/v1/tenants/{tenant}/keys".into(),
        "-",
        admin.clone(),
        Some(json!({ "name": "old" })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(
        "post",
        p("destroy"),
        "old",
        admin.clone(),
        Some(json!({ "waiting_period": "0s" })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    tick().await;
    let (s, v) = call("post", p("data-key"), "old", enc.clone(), Some(json!({}))).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::GONE, "key_destroyed".into()),
        "{v}"
    );
    let (s, v) = call("get", p("public-key"), "old", enc.clone(), None).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::GONE, "key_destroyed".into()),
        "{v}"
    );

    // Destruction receipts: documented entries whose detail is the documented JSON.
    let (s, v) = call("get", "/v1/audit".into(), "-", admin.clone(), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit?operation=key.destroyed",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", "/v1/audit", s, &v);
    let receipts = v["entries"].as_array().expect("entries");
    assert_eq!(receipts.len(), 2, "{v}");
    for r in receipts {
        assert_eq!(
            (r["principal"].as_str(), r["request_id"].as_str()),
            (Some("scheduler"), Some("scheduled"))
        );
        let detail: Value =
            serde_json::from_str(r["detail"].as_str().expect("detail")).expect("JSON");
        let keys: BTreeSet<&str> = detail
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "receipt",
                "fingerprint",
                "requested_by",
                "requested_at",
                "destroy_at",
                "waiting_period_secs",
                "destroyed_at"
            ]),
            "{detail}"
        );
    }
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit/verify",
            Some(&server.operator),
            None,
        )
        .await;
    assert_eq!((s, v["ok"].clone()), (StatusCode::OK, json!(true)), "{v}");
    server.stop().await;
}

#[tokio::test]
async fn blind_index_answers_have_the_documented_shape() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.min_destroy_waiting_secs = 0;
        c.lifecycle_interval_ms = 3_600_000;
    })
    .await;
    let doc = fetch_doc(&server).await;
    let acme = server.tenant("acme").await;
    let op = "/v1/tenants/{tenant}/keys/{key}/blind-index-key";
    let url = concrete(op, "acme", "");
    let call = |token: String, body: Value| {
        let (doc, server, url) = (&doc, &server, &url);
        async move {
            let (s, v) = server
                .call(Method::POST, url, Some(&token), Some(body))
                .await;
            check_answer(doc, "post", op, s, &v);
            (s, v)
        }
    };
    let admin_post = |what: &'static str, body: Value| {
        let (server, admin) = (&server, &acme.admin);
        async move {
            let (s, v) = server
                .call(
                    Method::POST,
                    &format!("/v1/tenants/acme/keys/default/{what}"),
                    Some(admin),
                    Some(body),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{what}: {v}");
        }
    };
    let email = json!({ "field": "email" });
    let (s, v) = call(acme.encrypt.clone(), email.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(acme.decrypt.clone(), json!({ "field": "" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = server
        .call(
            Method::POST,
            &concrete(op, "acme", "").replace("default", "nope"),
            Some(&acme.encrypt),
            Some(email.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    check_answer(&doc, "post", op, s, &v);
    admin_post("disable", json!({})).await;
    let (s, v) = call(acme.decrypt.clone(), email.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    admin_post("enable", json!({})).await;
    admin_post("destroy", json!({ "waiting_period": "0s" })).await;
    pqkms::http::lifecycle_tick(&server.running.as_ref().expect("running").state)
        .await
        .expect("lifecycle pass");
    let (s, v) = call(acme.encrypt.clone(), email).await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit?operation=blind_index_key.derive",
            Some(&acme.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check_answer(&doc, "get", "/v1/audit", s, &v);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(3), "{v}");
    server.stop().await;
}
