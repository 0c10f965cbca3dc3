//! `POST /v1/tenants/{tenant}/keys/{key}/blind-index-key` over real HTTP on every backend: a
//! field's key is stable across calls, restarts, key rotation (with the old version retired,
//! disabled or destroyed) and root-key rotation; it differs per field, key and tenant; it goes to
//! the `encrypt` and `decrypt` roles of the own tenant only; it dies with the key's destruction;
//! every derivation is audited.

mod common;

use std::collections::BTreeSet;

use common::{Tenant, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn path(tenant: &str, key: &str) -> String {
    format!("/v1/tenants/{tenant}/keys/{key}/blind-index-key")
}

async fn derive(
    s: &TestServer,
    token: &str,
    tenant: &str,
    key: &str,
    field: &str,
) -> (StatusCode, Value) {
    s.call(
        Method::POST,
        &path(tenant, key),
        Some(token),
        Some(json!({ "field": field })),
    )
    .await
}

/// The field key, asserting a 200 with exactly `{"key": <base64 of 32 bytes>}`.
async fn field_key(s: &TestServer, token: &str, tenant: &str, key: &str, field: &str) -> String {
    use base64::Engine;
    let (st, v) = derive(s, token, tenant, key, field).await;
    assert_eq!(st, StatusCode::OK, "{tenant}/{key}/{field}: {v}");
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 1, "only `key`: {v}");
    let k = v["key"].as_str().expect("key").to_owned();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&k)
        .expect("standard base64");
    assert_eq!(raw.len(), 32, "{v}");
    k
}

async fn admin_post(s: &TestServer, t: &Tenant, key: &str, op: &str, body: Value) -> Value {
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/v1/tenants/{}/keys/{key}/{op}", t.name),
            Some(&t.admin),
            Some(body),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{op}: {v}");
    v
}

/// `(version)` of the key's stored index secret, read from the database.
async fn secret_version(s: &TestServer, tenant: &str, key: &str) -> Option<i64> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(&s.database_url())
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT b.version FROM blind_index_secrets b JOIN keys k ON k.id = b.key_id \
         JOIN tenants t ON t.id = k.tenant_id WHERE t.name = $1 AND k.name = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    row.map(|r| r.try_get::<i64, _>("version").unwrap())
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn field_keys_are_stable_across_calls_restarts_and_rotations() {
    for backend in backends() {
        let mut s = TestServer::start_with(backend, |c| {
            c.min_destroy_waiting_secs = 0;
            c.lifecycle_interval_ms = 3_600_000;
        })
        .await;
        let old_root = s
            .config
            .root_key_file
            .clone()
            .unwrap_or_else(|| s.data_dir().join("root.key"));
        let t = s.tenant("acme").await;
        assert_eq!(secret_version(&s, "acme", "default").await, None);

        // Lazily created on the first request; the same key for every later call, either role.
        let email = field_key(&s, &t.encrypt, "acme", "default", "email").await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(1));
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );
        assert_eq!(
            field_key(&s, &t.decrypt, "acme", "default", "email").await,
            email
        );
        let ssn = field_key(&s, &t.decrypt, "acme", "default", "ssn").await;
        assert_ne!(ssn, email);

        // A restart (empty key caches) changes nothing.
        s.restart().await;
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );

        // Key rotation: the secret moves to the new version on use, the field key stays.
        admin_post(&s, &t, "default", "rotate", json!({})).await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(1));
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );
        assert_eq!(secret_version(&s, "acme", "default").await, Some(2));
        // ... then retire, disable and destroy version 1: nothing depends on it any more.
        admin_post(
            &s,
            &t,
            "default",
            "config",
            json!({ "min_decryption_version": 2 }),
        )
        .await;
        admin_post(&s, &t, "default", "disable", json!({ "version": 1 })).await;
        admin_post(
            &s,
            &t,
            "default",
            "destroy",
            json!({ "version": 1, "waiting_period": "0s" }),
        )
        .await;
        pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state)
            .await
            .unwrap();
        assert_eq!(
            field_key(&s, &t.decrypt, "acme", "default", "email").await,
            email
        );

        // Rotated, and the old version destroyed before any blind-index request moved the secret:
        // scheduling the destruction moves it first.
        admin_post(&s, &t, "default", "rotate", json!({})).await;
        admin_post(
            &s,
            &t,
            "default",
            "destroy",
            json!({ "version": 2, "waiting_period": "0s" }),
        )
        .await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(3));
        pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state)
            .await
            .unwrap();
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );
        // The same for disabling the version that holds it.
        admin_post(&s, &t, "default", "rotate", json!({})).await;
        admin_post(&s, &t, "default", "disable", json!({ "version": 3 })).await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(4));
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "ssn").await,
            ssn
        );

        // Root-key rotation: re-seal every tenant key under root key 2, then run on it alone.
        let new_root = s.data_dir().join("root-v2.key");
        pqkms::server::generate_root_key_file(&new_root, 2).unwrap();
        s.config.root_key_file = Some(new_root);
        s.config.previous_root_key_files = vec![old_root];
        s.restart().await;
        let (st, r) = s
            .call(Method::POST, "/v1/root-key/reseal", Some(&s.operator), None)
            .await;
        assert_eq!(
            (st, r["remaining"].as_i64()),
            (StatusCode::OK, Some(0)),
            "{r}"
        );
        s.config.previous_root_key_files.clear();
        s.restart().await;
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );
        assert_eq!(
            field_key(&s, &t.decrypt, "acme", "default", "ssn").await,
            ssn
        );

        let (_, verify) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
            .await;
        assert_eq!(verify["ok"], true, "{verify}");
        s.stop().await;
    }
}

#[tokio::test]
async fn field_keys_differ_per_field_key_and_tenant() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let acme = s.tenant("acme").await;
        let globex = s.tenant("globex").await;
        let (st, v) = s
            .call(
                Method::POST,
                "/v1/tenants/acme/keys",
                Some(&acme.admin),
                Some(json!({ "name": "billing" })),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let mut seen = BTreeSet::new();
        for (t, key) in [(&acme, "default"), (&acme, "billing"), (&globex, "default")] {
            for field in ["email", "Email", "email ", "phone", "e"] {
                let k = field_key(&s, &t.encrypt, &t.name, key, field).await;
                assert!(seen.insert(k), "{} {key} {field}: repeated key", t.name);
            }
        }
        assert_eq!(seen.len(), 15);
        s.stop().await;
    }
}

#[tokio::test]
async fn concurrent_first_requests_agree() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let calls = (0..12).map(|i| {
            let token = if i % 2 == 0 { &t.encrypt } else { &t.decrypt };
            field_key(&s, token, "acme", "default", "email")
        });
        let keys: BTreeSet<String> = futures_join_all(calls).await.into_iter().collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        // Exactly one request created the secret.
        let (_, audit) = s
            .call(
                Method::GET,
                "/v1/audit?tenant=acme&operation=blind_index_key.derive",
                Some(&t.admin),
                None,
            )
            .await;
        let entries = audit["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 12, "{audit}");
        let created = entries
            .iter()
            .filter(|e| e["detail"].as_str().unwrap().contains("secret_created"))
            .count();
        assert_eq!(created, 1, "{audit}");
        s.stop().await;
    }
}

/// Run futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test]
async fn roles_scope_and_field_validation() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let acme = s.tenant("acme").await;
        s.tenant("globex").await;
        let both = s.token("acme", &["encrypt", "decrypt"], None).await.0;
        let reference = field_key(&s, &acme.encrypt, "acme", "default", "email").await;
        assert_eq!(
            field_key(&s, &both, "acme", "default", "email").await,
            reference
        );

        // Tenant admin and operator: 403 (neither writes nor looks up indexed fields).
        for token in [&acme.admin, &s.operator] {
            let (st, v) = derive(&s, token, "acme", "default", "email").await;
            assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        }
        // Another tenant, existing or not: the same 403, before any lookup.
        let mut answers = Vec::new();
        for other in ["globex", "no-such-tenant"] {
            let (st, v) = derive(&s, &acme.encrypt, other, "default", "email").await;
            assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
            answers.push(v);
        }
        assert_eq!(answers[0], answers[1]);
        // No token, or a bad one: 401.
        let (st, _) = s
            .call(
                Method::POST,
                &path("acme", "default"),
                None,
                Some(json!({ "field": "email" })),
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);

        // Field validation (after the role check), and a missing key (after that).
        for bad in [json!({ "field": "" }), json!({ "field": "x".repeat(129) })] {
            let (st, v) = s
                .call(
                    Method::POST,
                    &path("acme", "default"),
                    Some(&acme.encrypt),
                    Some(bad),
                )
                .await;
            assert_eq!(
                (st, code(&v)),
                (StatusCode::BAD_REQUEST, "bad_request"),
                "{v}"
            );
        }
        for bad in [
            json!({}),
            json!({ "field": 1 }),
            json!({ "field": "a", "x": 1 }),
        ] {
            let (st, v) = s
                .call(
                    Method::POST,
                    &path("acme", "default"),
                    Some(&acme.encrypt),
                    Some(bad),
                )
                .await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        }
        field_key(&s, &acme.encrypt, "acme", "default", &"x".repeat(128)).await;
        field_key(&s, &acme.encrypt, "acme", "default", "адрес").await;
        let (st, v) = derive(&s, &acme.encrypt, "acme", "nope", "email").await;
        assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");

        // Audited: who, which key and version, which field; never the key.
        let (_, audit) = s
            .call(
                Method::GET,
                "/v1/audit?tenant=acme&operation=blind_index_key.derive",
                Some(&acme.admin),
                None,
            )
            .await;
        let entries = audit["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 4, "{audit}");
        let first = &entries[0];
        assert_eq!(
            (
                first["key"].as_str(),
                first["version"].as_i64(),
                first["outcome"].as_str()
            ),
            (Some("default"), Some(1), Some("ok"))
        );
        let detail: Value = serde_json::from_str(first["detail"].as_str().unwrap()).unwrap();
        assert_eq!(detail, json!({ "field": "email", "secret_created": true }));
        let detail: Value = serde_json::from_str(entries[1]["detail"].as_str().unwrap()).unwrap();
        assert_eq!(detail, json!({ "field": "email" }));
        assert!(!audit.to_string().contains(&reference), "{audit}");
        s.stop().await;
    }
}

#[tokio::test]
async fn field_keys_die_with_the_key() {
    for backend in backends() {
        let s = TestServer::start_with(backend, |c| {
            c.min_destroy_waiting_secs = 0;
            c.lifecycle_interval_ms = 3_600_000;
        })
        .await;
        let t = s.tenant("acme").await;
        let email = field_key(&s, &t.encrypt, "acme", "default", "email").await;

        // Disabled: 409, and back on enable.
        admin_post(&s, &t, "default", "disable", json!({})).await;
        let (st, v) = derive(&s, &t.encrypt, "acme", "default", "email").await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::CONFLICT, "key_disabled"),
            "{v}"
        );
        admin_post(&s, &t, "default", "enable", json!({})).await;
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            email
        );

        // Pending destruction: 409; destroyed: 410 for good (a shredded key cannot rotate either).
        admin_post(
            &s,
            &t,
            "default",
            "destroy",
            json!({ "waiting_period": "0s" }),
        )
        .await;
        let (st, v) = derive(&s, &t.encrypt, "acme", "default", "email").await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::CONFLICT, "key_disabled"),
            "{v}"
        );
        pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state)
            .await
            .unwrap();
        for field in ["email", "never-asked-before"] {
            let (st, v) = derive(&s, &t.decrypt, "acme", "default", field).await;
            assert_eq!((st, code(&v)), (StatusCode::GONE, "key_destroyed"), "{v}");
            assert!(v["error"]["destroyed_at"].is_i64(), "{v}");
        }

        // A key destroyed before it ever had a secret: 410 too (like data-key).
        let (st, _) = s
            .call(
                Method::POST,
                "/v1/tenants/acme/keys",
                Some(&t.admin),
                Some(json!({ "name": "fresh" })),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
        admin_post(
            &s,
            &t,
            "fresh",
            "destroy",
            json!({ "waiting_period": "0s" }),
        )
        .await;
        pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state)
            .await
            .unwrap();
        let (st, v) = derive(&s, &t.encrypt, "acme", "fresh", "email").await;
        assert_eq!((st, code(&v)), (StatusCode::GONE, "key_destroyed"), "{v}");

        // Refusals are audited as such.
        let (_, audit) = s
            .call(
                Method::GET,
                "/v1/audit?tenant=acme&operation=blind_index_key.derive",
                Some(&t.admin),
                None,
            )
            .await;
        let outcomes: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(
            outcomes,
            ["ok", "refused", "ok", "refused", "refused", "refused"],
            "{audit}"
        );
        let (_, verify) = s
            .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
            .await;
        assert_eq!(verify["ok"], true, "{verify}");
        s.stop().await;
    }
}

/// A version that holds the index secret is never destroyed with it while another enabled version
/// could hold it: a disabled holder (whose secret cannot be opened to move) is refused until it is
/// enabled, and then the secret moves and every field key stays the same.
#[tokio::test]
async fn a_disabled_holder_is_not_destroyed_with_the_secret() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let before = field_key(&s, &t.encrypt, "acme", "default", "email").await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(1));
        // Only version: disabling it cannot move the secret anywhere, so it stays on v1.
        admin_post(&s, &t, "default", "disable", json!({ "version": 1 })).await;
        admin_post(&s, &t, "default", "rotate", json!({})).await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(1));
        let (st, v) = s
            .call(
                Method::POST,
                "/v1/tenants/acme/keys/default/destroy",
                Some(&t.admin),
                Some(json!({ "version": 1, "waiting_period": "7d" })),
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
        assert_eq!(code(&v), "invalid_state", "{v}");
        // Nothing changed: v1 is still disabled, not pending destruction.
        let (_, meta) = s
            .call(
                Method::GET,
                "/v1/tenants/acme/keys/default",
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(meta["versions"][0]["state"], "disabled", "{meta}");
        // Enable v1, destroy it: the secret moves to v2 first, field keys unchanged.
        admin_post(&s, &t, "default", "enable", json!({ "version": 1 })).await;
        admin_post(
            &s,
            &t,
            "default",
            "destroy",
            json!({ "version": 1, "waiting_period": "7d" }),
        )
        .await;
        assert_eq!(secret_version(&s, "acme", "default").await, Some(2));
        assert_eq!(
            field_key(&s, &t.encrypt, "acme", "default", "email").await,
            before
        );
        s.stop().await;
    }
}
