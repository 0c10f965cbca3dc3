//! Root-key rotation: start nodes with the new root key plus the old one, re-seal every tenant
//! key, then run with the new key alone; wrapped keys issued before keep opening, and nothing in
//! the database is sealed under the old key any more.

mod common;

use common::{TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn root_key_rotation_reseals_every_tenant_key() {
    for backend in backends() {
        let mut s = TestServer::start(backend).await;
        let old_key = s
            .config
            .root_key_file
            .clone()
            .unwrap_or_else(|| s.data_dir().join("root.key"));
        let t = s.tenant("acme").await;
        let key = "/v1/tenants/acme/keys/default";
        let (_, v) = s
            .call(
                Method::POST,
                &format!("{key}/rotate"),
                Some(&t.admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(v["version"], 2);
        let (_, dk) = s
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&t.encrypt),
                Some(json!({})),
            )
            .await;
        // Keys sealed under root v1: two versions of `default`.

        let new_key = s.data_dir().join("root-v2.key");
        pqkms::server::generate_root_key_file(&new_key, 2).unwrap();
        s.config.root_key_file = Some(new_key.clone());
        s.config.previous_root_key_files = vec![old_key.clone()];
        s.restart().await;

        // Operator only.
        let (st, _) = s
            .call(
                Method::POST,
                "/v1/root-key/reseal",
                Some(&t.admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, r) = s
            .call(
                Method::POST,
                "/v1/root-key/reseal",
                Some(&s.operator),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(
            (
                r["resealed"].as_i64(),
                r["remaining"].as_i64(),
                r["root_version"].as_i64()
            ),
            (Some(2), Some(0), Some(2))
        );
        let (_, again) = s
            .call(
                Method::POST,
                "/v1/root-key/reseal",
                Some(&s.operator),
                Some(json!({})),
            )
            .await;
        assert_eq!(again["resealed"], 0, "idempotent");

        // New key alone: old wrapped keys open, new versions are sealed under v2.
        s.config.previous_root_key_files.clear();
        s.restart().await;
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&t.decrypt),
                Some(json!({ "wrapped_key": dk["wrapped_key"] })),
            )
            .await;
        assert_eq!((st, &v["plaintext"]), (StatusCode::OK, &dk["plaintext"]));
        let (st, _) = s
            .call(
                Method::POST,
                &format!("{key}/rotate"),
                Some(&t.admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);

        use sqlx::{Connection, Row};
        let mut conn = sqlx::AnyConnection::connect(&s.database_url())
            .await
            .unwrap();
        let row = sqlx::query("SELECT COUNT(*) AS n FROM key_versions WHERE root_version <> 2")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 0);
        conn.close().await.unwrap();

        // The old key alone can no longer open anything: a 500 that says nothing internal.
        s.config.root_key_file = Some(old_key);
        s.restart().await;
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&t.decrypt),
                Some(json!({ "wrapped_key": dk["wrapped_key"] })),
            )
            .await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("internal"))
        );
        assert!(!v.to_string().contains("root"), "{v}");

        let (_, audit) = s
            .call(
                Method::GET,
                "/v1/audit?operation=root_key.reseal",
                Some(&s.operator),
                None,
            )
            .await;
        assert_eq!(audit["entries"].as_array().unwrap().len(), 2);
        let (_, verify) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
            .await;
        assert_eq!(verify["ok"], true);
        s.stop().await;
    }
}
