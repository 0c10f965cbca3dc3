//! The happy path end to end on every backend, and durability across a restart.

mod common;

use common::{TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn data_key_round_trip_survives_restart() {
    for backend in backends() {
        let mut server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let path = "/v1/tenants/acme/keys/default";
        let ctx = json!({ "table": "users", "column": "email" });
        let mut issued = Vec::new();
        for _ in 0..5 {
            let (s, v) = server
                .call(
                    Method::POST,
                    &format!("{path}/data-key"),
                    Some(&acme.encrypt),
                    Some(json!({ "context": ctx })),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
            assert_eq!(v["version"], 1);
            issued.push((v["wrapped_key"].clone(), v["plaintext"].clone()));
        }
        server.restart().await;
        assert_eq!(
            server
                .running
                .as_ref()
                .unwrap()
                .state
                .keys
                .cached_private_keys(),
            0
        );
        for (wrapped, plaintext) in &issued {
            let (s, v) = server
                .call(
                    Method::POST,
                    &format!("{path}/decrypt"),
                    Some(&acme.decrypt),
                    Some(json!({ "wrapped_key": wrapped, "context": ctx })),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
            assert_eq!(&v["plaintext"], plaintext);
        }
        let (s, v) = server
            .call(
                Method::GET,
                "/v1/audit/verify",
                Some(&server.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["ok"], true, "{v}");
        // bootstrap + tenant + 3 tokens + 5 generates + 5 decrypts
        assert_eq!(v["entries"], 15, "{v}");
        server.stop().await;
    }
}
