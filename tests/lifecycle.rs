//! Key lifecycle over real HTTP on every backend: rotation and versions, re-wrap, retirement,
//! disable/enable, scheduled destruction with cancel, the 410 answer, receipts in a verified
//! chain, no sealed material left in the database, concurrency, and two nodes on one database.

mod common;

use std::time::{Duration, Instant};

use common::{Tenant, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "/v1/tenants/acme/keys/default";

async fn post(s: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    s.call(
        Method::POST,
        &format!("{KEY}{path}"),
        Some(token),
        Some(body),
    )
    .await
}

async fn data_key(s: &TestServer, t: &Tenant, ctx: &Value) -> (Value, Value, i64) {
    let (st, v) = post(s, &t.encrypt, "/data-key", json!({ "context": ctx })).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    (
        v["wrapped_key"].clone(),
        v["plaintext"].clone(),
        v["version"].as_i64().unwrap(),
    )
}

async fn decrypt(s: &TestServer, t: &Tenant, wrapped: &Value, ctx: &Value) -> (StatusCode, Value) {
    post(
        s,
        &t.decrypt,
        "/decrypt",
        json!({ "wrapped_key": wrapped, "context": ctx }),
    )
    .await
}

async fn verify_ok(s: &TestServer) -> Value {
    let (st, v) = s
        .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["ok"], true, "{v}");
    v
}

#[tokio::test]
async fn rotation_rewrap_and_retirement() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let ctx = json!({ "table": "users" });
        let (w1, p1, v1) = data_key(&s, &t, &ctx).await;
        assert_eq!(v1, 1);
        for expected in [2, 3] {
            let (st, v) = post(&s, &t.admin, "/rotate", json!({})).await;
            assert_eq!(
                (st, v["version"].as_i64()),
                (StatusCode::OK, Some(expected)),
                "{v}"
            );
        }
        let (_, _, v3) = data_key(&s, &t, &ctx).await;
        assert_eq!(v3, 3, "new data keys use the newest version");
        let (st, v) = decrypt(&s, &t, &w1, &ctx).await;
        assert_eq!(
            (st, &v["plaintext"], v["version"].as_i64()),
            (StatusCode::OK, &p1, Some(1))
        );

        // Re-wrap moves it to v3 without revealing the key.
        let (st, r) = post(
            &s,
            &t.decrypt,
            "/rewrap",
            json!({ "wrapped_key": w1, "context": ctx }),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(
            (r["version"].as_i64(), r["from_version"].as_i64()),
            (Some(3), Some(1))
        );
        assert!(r.get("plaintext").is_none() && r["wrapped_key"] != w1);
        let (st, v) = decrypt(&s, &t, &r["wrapped_key"], &ctx).await;
        assert_eq!(
            (st, &v["plaintext"], v["version"].as_i64()),
            (StatusCode::OK, &p1, Some(3))
        );
        // Encrypt-only tokens may not re-wrap; a wrong context does not re-wrap.
        let (st, _) = post(
            &s,
            &t.encrypt,
            "/rewrap",
            json!({ "wrapped_key": w1, "context": ctx }),
        )
        .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (st, _) = post(&s, &t.decrypt, "/rewrap", json!({ "wrapped_key": w1 })).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

        // Batch: each item has its own result, in order.
        let (w1b, p1b, _) = {
            let (st, v) = post(&s, &t.encrypt, "/data-key", json!({ "context": ctx })).await;
            assert_eq!(st, StatusCode::OK);
            (v["wrapped_key"].clone(), v["plaintext"].clone(), ())
        };
        let (st, b) = post(
            &s,
            &t.decrypt,
            "/rewrap-batch",
            json!({ "items": [ { "wrapped_key": w1, "context": ctx }, { "wrapped_key": "AAAA" },
                               { "wrapped_key": w1b, "context": ctx } ] }),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let results = b["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0]["version"], 3);
        assert_eq!(results[1]["error"]["code"], "decryption_failed");
        let (st, v) = decrypt(&s, &t, &results[2]["wrapped_key"], &ctx).await;
        assert_eq!((st, &v["plaintext"]), (StatusCode::OK, &p1b));

        // Retire v1 and v2: v1 blobs are refused with a clear code, v3 still opens.
        let (st, v) = post(
            &s,
            &t.admin,
            "/config",
            json!({ "min_decryption_version": 3 }),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (st, v) = decrypt(&s, &t, &w1, &ctx).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("version_retired"))
        );
        let (st, _) = decrypt(&s, &t, &r["wrapped_key"], &ctx).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = post(
            &s,
            &t.admin,
            "/config",
            json!({ "min_decryption_version": 4 }),
        )
        .await;
        assert_eq!(
            st,
            StatusCode::BAD_REQUEST,
            "cannot retire the newest version"
        );
        verify_ok(&s).await;
        s.stop().await;
    }
}

#[tokio::test]
async fn disable_enable_and_destruction_with_receipt() {
    for backend in backends() {
        let s = TestServer::start_with(backend, |c| {
            c.min_destroy_waiting_secs = 1;
            c.lifecycle_interval_ms = 100;
        })
        .await;
        let t = s.tenant("acme").await;
        let ctx = json!({});
        let (w1, p1, _) = data_key(&s, &t, &ctx).await;
        post(&s, &t.admin, "/rotate", json!({})).await;
        let (w2, _, v2) = data_key(&s, &t, &ctx).await;
        assert_eq!(v2, 2);

        // Disable v2: new data keys fall back to v1; v2 blobs are refused until enabled.
        let (st, _) = post(&s, &t.admin, "/disable", json!({ "version": 2 })).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(data_key(&s, &t, &ctx).await.2, 1);
        let (st, v) = decrypt(&s, &t, &w2, &ctx).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("key_disabled"))
        );
        let (st, _) = post(&s, &t.admin, "/enable", json!({ "version": 2 })).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(decrypt(&s, &t, &w2, &ctx).await.0, StatusCode::OK);

        // The configured minimum waiting period is enforced.
        let (st, _) = post(
            &s,
            &t.admin,
            "/destroy",
            json!({ "version": 1, "waiting_period": "0s" }),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        // Schedule, observe "unusable but recoverable", cancel, observe usable.
        let (st, v) = post(
            &s,
            &t.admin,
            "/destroy",
            json!({ "version": 1, "waiting_period": "1h" }),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert!(v["destroy_at"].as_i64().unwrap() > pqkms::now_ms() + 3_500_000);
        assert_eq!(decrypt(&s, &t, &w1, &ctx).await.0, StatusCode::CONFLICT);
        let (st, _) = post(&s, &t.admin, "/cancel-destroy", json!({ "version": 1 })).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(decrypt(&s, &t, &w1, &ctx).await.1["plaintext"], p1);
        let (st, _) = post(&s, &t.admin, "/cancel-destroy", json!({ "version": 1 })).await;
        assert_eq!(st, StatusCode::CONFLICT, "nothing scheduled any more");

        // Now for real, with a 1 s waiting period: the worker destroys it.
        let (st, _) = post(
            &s,
            &t.admin,
            "/destroy",
            json!({ "version": 1, "waiting_period": "1s" }),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let deadline = Instant::now() + Duration::from_secs(15);
        let gone = loop {
            let (st, v) = decrypt(&s, &t, &w1, &ctx).await;
            if st == StatusCode::GONE {
                break v;
            }
            assert!(Instant::now() < deadline, "not destroyed in time: {st} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(gone["error"]["code"], "key_destroyed");
        assert!(gone["error"]["destroyed_at"].as_i64().unwrap() > 0);
        // v2 is unaffected.
        assert_eq!(decrypt(&s, &t, &w2, &ctx).await.0, StatusCode::OK);

        // The receipt is in the verified chain and names what was destroyed.
        let (_, a) = s
            .call(
                Method::GET,
                "/v1/audit?operation=key.destroyed",
                Some(&s.operator),
                None,
            )
            .await;
        let entries = a["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{a}");
        let receipt: Value = serde_json::from_str(entries[0]["detail"].as_str().unwrap()).unwrap();
        let (_, meta) = s.call(Method::GET, KEY, Some(&t.admin), None).await;
        let v1_meta = &meta["versions"][0];
        assert_eq!(v1_meta["state"], "destroyed");
        assert_eq!(receipt["fingerprint"], v1_meta["fingerprint"]);
        assert_eq!(receipt["waiting_period_secs"], 1);
        assert!(
            receipt["requested_by"]
                .as_str()
                .unwrap()
                .starts_with("tok_")
        );
        assert_eq!(
            (
                entries[0]["tenant"].as_str(),
                entries[0]["version"].as_i64()
            ),
            (Some("acme"), Some(1))
        );
        verify_ok(&s).await;

        // No sealed material left in the row.
        use sqlx::{Connection, Row};
        let mut conn = sqlx::AnyConnection::connect(&s.database_url())
            .await
            .unwrap();
        let row = sqlx::query("SELECT sealed_private FROM key_versions WHERE version = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let sealed: Option<Vec<u8>> = row.try_get("sealed_private").unwrap();
        assert!(sealed.is_none());
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM key_versions WHERE sealed_private IS NOT NULL")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            row.try_get::<i64, _>("n").unwrap(),
            1,
            "only v2 keeps sealed material"
        );
        conn.close().await.unwrap();
        s.stop().await;
    }
}

#[tokio::test]
async fn destroying_every_version_makes_the_key_gone() {
    for backend in backends() {
        let s = TestServer::start_with(backend, |c| {
            c.min_destroy_waiting_secs = 1;
            c.lifecycle_interval_ms = 50;
        })
        .await;
        let t = s.tenant("acme").await;
        let (w, _, _) = data_key(&s, &t, &json!({})).await;
        let (st, _) = post(&s, &t.admin, "/destroy", json!({ "waiting_period": "1s" })).await;
        assert_eq!(st, StatusCode::OK);
        // Pending: no new data keys (409), and the key comes back on cancel.
        let (st, v) = post(&s, &t.encrypt, "/data-key", json!({})).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("key_disabled"))
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state)
            .await
            .unwrap();
        let (st, v) = post(&s, &t.encrypt, "/data-key", json!({})).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::GONE, Some("key_destroyed"))
        );
        assert_eq!(decrypt(&s, &t, &w, &json!({})).await.0, StatusCode::GONE);
        let (st, _) = post(&s, &t.admin, "/cancel-destroy", json!({})).await;
        assert_eq!(st, StatusCode::CONFLICT, "destruction is final");
        verify_ok(&s).await;
        s.stop().await;
    }
}

#[tokio::test]
async fn concurrent_rotation_data_keys_and_decrypts_stay_consistent() {
    for backend in backends() {
        let s = std::sync::Arc::new(TestServer::start(backend).await);
        let t = s.tenant("acme").await;
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (s, t) = (s.clone(), t.clone());
            tasks.push(tokio::spawn(async move {
                let ctx = json!({ "worker": i.to_string() });
                for j in 0..12 {
                    if i == 0 && j % 3 == 0 {
                        let (st, v) = post(&s, &t.admin, "/rotate", json!({})).await;
                        assert_eq!(st, StatusCode::OK, "{v}");
                        continue;
                    }
                    let (w, p, _) = data_key(&s, &t, &ctx).await;
                    let (st, v) = decrypt(&s, &t, &w, &ctx).await;
                    assert_eq!((st, &v["plaintext"]), (StatusCode::OK, &p), "{v}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (_, meta) = s.call(Method::GET, KEY, Some(&t.admin), None).await;
        let versions: Vec<i64> = meta["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=5).collect::<Vec<_>>(),
            "no lost or doubled versions"
        );
        verify_ok(&s).await;
        match std::sync::Arc::try_unwrap(s) {
            Ok(s) => s.stop().await,
            Err(_) => panic!("server still shared"),
        }
    }
}

/// Two nodes on one database: a rotation on one is used by the other for the next data key, and
/// a disable or destruction on one stops the other at its next request (every use re-reads the
/// version's state; the bound is one request, not the worker interval).
#[tokio::test]
async fn two_nodes_see_rotation_disable_and_destruction_immediately() {
    for backend in backends() {
        let s = TestServer::start_with(backend, |c| {
            c.min_destroy_waiting_secs = 1;
            c.lifecycle_interval_ms = 100;
        })
        .await;
        let t = s.tenant("acme").await;
        let node_b = s.start_node().await;
        let b = format!("http://{}", node_b.addr);
        let call_b = |token: String, path: &'static str, body: Value| {
            let http = s.http.clone();
            let url = format!("{b}{KEY}{path}");
            async move {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                (st, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let ctx = json!({});
        let (w1, p1, _) = data_key(&s, &t, &ctx).await;
        // Node B opens it (and caches the unsealed v1).
        let (st, v) = call_b(t.decrypt.clone(), "/decrypt", json!({ "wrapped_key": w1 })).await;
        assert_eq!((st, &v["plaintext"]), (StatusCode::OK, &p1));

        post(&s, &t.admin, "/rotate", json!({})).await;
        let (st, v) = call_b(t.encrypt.clone(), "/data-key", json!({})).await;
        assert_eq!(
            (st, v["version"].as_i64()),
            (StatusCode::OK, Some(2)),
            "{v}"
        );

        post(&s, &t.admin, "/disable", json!({ "version": 1 })).await;
        let (st, _) = call_b(t.decrypt.clone(), "/decrypt", json!({ "wrapped_key": w1 })).await;
        assert_eq!(
            st,
            StatusCode::CONFLICT,
            "node B refuses right after node A disabled v1"
        );
        post(&s, &t.admin, "/enable", json!({ "version": 1 })).await;
        let (st, _) = call_b(t.decrypt.clone(), "/decrypt", json!({ "wrapped_key": w1 })).await;
        assert_eq!(st, StatusCode::OK);

        post(
            &s,
            &t.admin,
            "/destroy",
            json!({ "version": 1, "waiting_period": "1s" }),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (st, _) = call_b(t.decrypt.clone(), "/decrypt", json!({ "wrapped_key": w1 })).await;
            assert_ne!(st, StatusCode::OK, "a scheduled version must never open");
            if st == StatusCode::GONE {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Node B's worker drops the unusable key from its memory within its interval.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(node_b.state.keys.cached_private_keys(), 0);
        // Exactly one receipt although two workers ran.
        let (_, a) = s
            .call(
                Method::GET,
                "/v1/audit?operation=key.destroyed",
                Some(&s.operator),
                None,
            )
            .await;
        assert_eq!(a["entries"].as_array().unwrap().len(), 1, "{a}");
        node_b.stop().await.unwrap();
        verify_ok(&s).await;
        s.stop().await;
    }
}

/// Regressions found in review: overflowing durations, new keys wrapped to retired versions,
/// retired versions that could not be re-wrapped, shredded keys revived by rotation, and rotation
/// audit entries recording a guessed version.
#[tokio::test]
async fn lifecycle_edge_cases() {
    for backend in backends() {
        let s = std::sync::Arc::new(TestServer::start(backend).await);
        let t = s.tenant("acme").await;
        for body in [
            json!({ "waiting_period": "106751991167d" }),
            json!({ "waiting_period": "36501d" }),
        ] {
            let (st, v) = post(&s, &t.admin, "/destroy", body).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        }
        let (st, _) = post(
            &s,
            &t.admin,
            "/config",
            json!({ "rotation_period": "106751991167d" }),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        let ctx = json!({});
        let (w1, p1, _) = data_key(&s, &t, &ctx).await;
        // Concurrent rotations: each audit entry records the version it created.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (s, admin) = (s.clone(), t.admin.clone());
            tasks.push(tokio::spawn(async move {
                post(&s, &admin, "/rotate", json!({})).await.1["version"]
                    .as_i64()
                    .unwrap()
            }));
        }
        let mut made = Vec::new();
        for task in tasks {
            made.push(task.await.unwrap());
        }
        made.sort();
        assert_eq!(made, vec![2, 3, 4, 5]);
        let (_, a) = s
            .call(
                Method::GET,
                "/v1/audit?operation=key.rotate",
                Some(&s.operator),
                None,
            )
            .await;
        let mut audited: Vec<i64> = a["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect();
        audited.sort();
        assert_eq!(audited, made);

        // Retire below 5 and disable 5: no version may wrap new keys (not a retired one).
        post(
            &s,
            &t.admin,
            "/config",
            json!({ "min_decryption_version": 5 }),
        )
        .await;
        post(&s, &t.admin, "/disable", json!({ "version": 5 })).await;
        let (st, v) = post(&s, &t.encrypt, "/data-key", json!({})).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("key_disabled")),
            "{v}"
        );
        post(&s, &t.admin, "/enable", json!({ "version": 5 })).await;
        // A retired v1 key cannot be decrypted but can be re-wrapped forward.
        assert_eq!(decrypt(&s, &t, &w1, &ctx).await.0, StatusCode::CONFLICT);
        let (st, r) = post(&s, &t.decrypt, "/rewrap", json!({ "wrapped_key": w1 })).await;
        assert_eq!(
            (st, r["version"].as_i64()),
            (StatusCode::OK, Some(5)),
            "{r}"
        );
        assert_eq!(
            decrypt(&s, &t, &r["wrapped_key"], &ctx).await.1["plaintext"],
            p1
        );
        let (_, meta) = s.call(Method::GET, KEY, Some(&t.admin), None).await;
        assert_eq!(
            (
                meta["min_decryption_version"].as_i64(),
                meta["current_version"].as_i64()
            ),
            (Some(5), Some(5))
        );

        // Shredding the whole key stops scheduled rotation and refuses manual rotation.
        post(&s, &t.admin, "/config", json!({ "rotation_period": "1m" })).await;
        let (st, _) = post(&s, &t.admin, "/destroy", json!({ "waiting_period": "30d" })).await;
        assert_eq!(st, StatusCode::OK);
        let (_, meta) = s.call(Method::GET, KEY, Some(&t.admin), None).await;
        assert!(
            meta["rotation_period_secs"].is_null() && meta["next_rotation_at"].is_null(),
            "{meta}"
        );
        let (st, v) = post(&s, &t.admin, "/rotate", json!({})).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("invalid_state"))
        );
        verify_ok(&s).await;
        match std::sync::Arc::try_unwrap(s) {
            Ok(s) => s.stop().await,
            Err(_) => panic!("server still shared"),
        }
    }
}
