//! Edge cases of request handling: every error is the JSON error shape, bodies must be objects,
//! role lists are exact, the bearer scheme is case-insensitive.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn is_error_shape(v: &serde_json::Value) -> bool {
    v["error"]["code"].is_string() && v["error"]["message"].is_string()
}

#[tokio::test]
async fn request_edge_cases_answer_with_json_errors() {
    let server = TestServer::start(Backend::Sqlite).await;
    let op = server.operator.clone();

    // A struct written as a JSON array is not accepted (serde would otherwise take it).
    let (s, v) = server
        .call(
            Method::POST,
            "/v1/tenants",
            Some(&op),
            Some(json!(["acme"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(is_error_shape(&v));
    let (s, _) = server
        .call(Method::GET, "/v1/tenants/acme/keys", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    server.tenant("acme").await;
    // Roles are exact names; a comma-joined string is not two roles; duplicates collapse.
    for roles in [
        json!(["encrypt,decrypt"]),
        json!([]),
        json!(["operator"]),
        json!(["Encrypt"]),
    ] {
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/tokens",
                Some(&op),
                Some(json!({ "roles": roles })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{roles}: {v}");
    }
    let (s, v) = server
        .call(
            Method::POST,
            "/v1/tenants/acme/tokens",
            Some(&op),
            Some(json!({ "roles": ["encrypt", "encrypt"] })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["roles"], json!(["encrypt"]));

    // Unknown routes, wrong methods, bad query and path parameters: JSON errors.
    let (s, v) = server.call(Method::GET, "/v1/nope", Some(&op), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(is_error_shape(&v), "{v}");
    let (s, v) = server
        .call(Method::PUT, "/v1/tenants", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert!(is_error_shape(&v), "{v}");
    let (s, v) = server
        .call(Method::GET, "/v1/audit?limit=ten", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(is_error_shape(&v), "{v}");
    let (s, v) = server
        .call(Method::GET, "/v1/audit?colour=blue", Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(is_error_shape(&v), "{v}");

    // "bearer" in lower case is the same scheme; "Basic" is not.
    let resp = server
        .http
        .get(format!("{}/v1/audit/verify", server.base))
        .header("authorization", format!("bearer {op}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = server
        .http
        .get(format!("{}/v1/audit/verify", server.base))
        .header("authorization", format!("Basic {op}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}
