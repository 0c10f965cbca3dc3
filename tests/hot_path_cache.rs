//! The key-use hot path answers from cached rows (tokens, tenants, keys, versions), and each use's
//! audit commit re-checks the state it decided on. These tests change state on one node and use
//! keys on another whose cache still holds the old rows: every answer must be what an uncached
//! service would give, and no audit entry may record a use that was not released.

mod common;

use common::{Backend, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call_at(
    s: &TestServer,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s
        .http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Audit entries of one operation, oldest first.
async fn entries(s: &TestServer, operation: &str) -> Vec<Value> {
    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/audit?operation={operation}&limit=1000"),
            Some(&s.operator),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn changes_on_another_node_apply_at_the_next_use() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let (app, app_id) = s.token("acme", &["encrypt", "decrypt"], None).await;
        let node_b = s.start_node().await;
        let b = format!("http://{}", node_b.addr);
        let key = "/v1/tenants/acme/keys/default";
        let ctx = json!({ "context": { "table": "customers" } });
        let mut released = 0;

        // Warm node A's caches: token, tenant, key, versions.
        let (st, first) = s
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&app),
                Some(ctx.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{first}");
        assert_eq!(first["version"], 1);
        released += 1;
        let wrapped_v1 = first["wrapped_key"].as_str().unwrap().to_owned();
        let (st, pk) = s
            .call(Method::GET, &format!("{key}/public-key"), Some(&app), None)
            .await;
        assert_eq!((st, pk["version"].as_i64()), (StatusCode::OK, Some(1)));

        // Rotation on node B: node A wraps new data keys to version 2 at once.
        let (st, v) = call_at(
            &s,
            &b,
            Method::POST,
            &format!("{key}/rotate"),
            &t.admin,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&app),
                Some(ctx.clone()),
            )
            .await;
        assert_eq!(
            (st, v["version"].as_i64()),
            (StatusCode::OK, Some(2)),
            "{v}"
        );
        released += 1;
        let (st, pk) = s
            .call(Method::GET, &format!("{key}/public-key"), Some(&app), None)
            .await;
        assert_eq!((st, pk["version"].as_i64()), (StatusCode::OK, Some(2)));

        // Retirement on node B: node A refuses version 1 at once.
        let (st, v) = call_at(
            &s,
            &b,
            Method::POST,
            &format!("{key}/config"),
            &t.admin,
            Some(json!({ "min_decryption_version": 2 })),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let open_v1 = json!({ "wrapped_key": wrapped_v1, "context": { "table": "customers" } });
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&app),
                Some(open_v1.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "version_retired");
        // ... and opens it again once node B lowers the floor.
        let (st, _) = call_at(
            &s,
            &b,
            Method::POST,
            &format!("{key}/config"),
            &t.admin,
            Some(json!({ "min_decryption_version": 1 })),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&app),
                Some(open_v1.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["plaintext"], first["plaintext"]);

        // Disable on node B: node A stops wrapping and unwrapping at once.
        let (st, _) = call_at(
            &s,
            &b,
            Method::POST,
            &format!("{key}/disable"),
            &t.admin,
            Some(json!({})),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&app),
                Some(ctx.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "key_disabled");
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&app),
                Some(open_v1.clone()),
            )
            .await;
        assert_eq!(
            (st, &v["error"]["code"]),
            (StatusCode::CONFLICT, &json!("key_disabled"))
        );
        // Enable on node B: node A serves again.
        let (st, _) = call_at(
            &s,
            &b,
            Method::POST,
            &format!("{key}/enable"),
            &t.admin,
            Some(json!({})),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&app),
                Some(ctx.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        released += 1;

        // Revocation on node B: node A's cached token stops working at once.
        let (st, _) = call_at(
            &s,
            &b,
            Method::DELETE,
            &format!("/v1/tenants/acme/tokens/{app_id}"),
            &t.admin,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        for (method, path, body) in [
            // A name that does not exist: still 401 (not 404) for the revoked token.
            (
                Method::POST,
                "/v1/tenants/acme/keys/no-such-key/data-key".to_owned(),
                Some(ctx.clone()),
            ),
            (Method::POST, format!("{key}/data-key"), Some(ctx.clone())),
            (
                Method::POST,
                format!("{key}/decrypt"),
                Some(open_v1.clone()),
            ),
            (Method::GET, format!("{key}/public-key"), None),
        ] {
            let (st, v) = s.call(method, &path, Some(&app), body).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}: {v}");
        }

        // The chain records exactly the data keys that were released, and verifies.
        let generated = entries(&s, "data_key.generate").await;
        assert_eq!(generated.len(), released, "{generated:?}");
        assert!(generated.iter().all(|e| e["outcome"] == "ok"));
        let versions: Vec<i64> = generated
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, vec![1, 2, 2]);
        let decrypts = entries(&s, "data_key.decrypt").await;
        let outcomes: Vec<&str> = decrypts
            .iter()
            .map(|e| e["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, vec!["refused", "ok", "refused"], "{decrypts:?}");
        let (st, v) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
            .await;
        assert_eq!((st, &v["ok"]), (StatusCode::OK, &json!(true)), "{v}");

        node_b.stop().await.unwrap();
        s.stop().await;
    }
}

/// Many concurrent key uses share group commits: every one gets its own entry, in one unbroken
/// chain, and each answer is sent only after its entry is readable.
#[tokio::test]
async fn concurrent_uses_each_get_a_durable_entry() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let key = "/v1/tenants/acme/keys/default";
        let mut tasks = Vec::new();
        for i in 0..64 {
            let http = s.http.clone();
            let url = format!("{}{key}/data-key", s.base);
            let token = t.encrypt.clone();
            tasks.push(tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "context": { "n": i.to_string() } }))
                    .send()
                    .await
                    .unwrap();
                resp.status()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), StatusCode::OK);
        }
        let generated = entries(&s, "data_key.generate").await;
        assert_eq!(generated.len(), 64);
        // They shared transactions: fewer group commits than entries.
        let metrics = s
            .http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counter = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
        };
        let (commits, written, syncs) = (
            counter("pqkms_audit_group_commits_total"),
            counter("pqkms_audit_group_entries_total"),
            counter("pqkms_audit_wal_syncs_total"),
        );
        assert!(written >= 64, "{metrics}");
        assert!(
            commits < written,
            "no grouping: {commits} commits for {written} entries"
        );
        // SQLite: the writer's commits do not sync; its WAL syncs (one or more groups each) do.
        // PostgreSQL: each commit is durable itself.
        match backend {
            Backend::Sqlite => assert!((1..=commits).contains(&syncs), "{metrics}"),
            Backend::Postgres => assert_eq!(syncs, 0, "{metrics}"),
        }
        let (st, v) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
            .await;
        assert_eq!((st, &v["ok"]), (StatusCode::OK, &json!(true)), "{v}");
        s.stop().await;
    }
}

/// SQLite: the audit writer commits without syncing and answers only after its own `fdatasync` of
/// the WAL. When that sync cannot be done, the requests waiting on it fail and release nothing,
/// and the writer stops for good: a later sync could succeed without the lost pages. (The WAL file
/// is removed under the running server: SQLite keeps writing to its open descriptor, and the
/// writer's sync, which opens the file by name, fails.)
#[tokio::test]
async fn a_failed_wal_sync_releases_no_key() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("acme").await;
    let path = "/v1/tenants/acme/keys/default/data-key";
    let body = json!({ "context": { "table": "t" } });
    let (st, v) = s
        .call(Method::POST, path, Some(&t.encrypt), Some(body.clone()))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let wal = s.data_dir().join("pqkms.db-wal");
    std::fs::remove_file(&wal).expect("the WAL exists while the server runs");
    let (st, v) = s
        .call(Method::POST, path, Some(&t.encrypt), Some(body.clone()))
        .await;
    assert!(st.is_server_error(), "{st} {v}");
    assert!(v.get("plaintext").is_none(), "{v}");
    // Nothing internal in the answer: no path, no OS error.
    let text = v.to_string();
    assert!(
        !text.contains("wal") && !text.contains("No such file"),
        "{text}"
    );
    // A file at the WAL's path again, so a sync by name would now succeed: the writer still
    // refuses, and the node reports itself not ready.
    std::fs::write(&wal, b"").expect("recreate");
    let (st, v) = s
        .call(Method::POST, path, Some(&t.encrypt), Some(body))
        .await;
    assert!(st.is_server_error(), "{st} {v}");
    assert!(v.get("plaintext").is_none(), "{v}");
    let ready = s
        .http
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    s.stop().await;
}
