//! The audit hash chain on every backend: concurrent load keeps one unbroken chain; editing,
//! deleting or reordering rows directly in the database makes verify fail at that row; and when
//! the audit entry cannot be written the operation fails closed (no key, nothing changed).

mod common;

use std::sync::Arc;

use common::{Backend, TestServer, backends};
use pqkms::audit::{AuditEntry, GENESIS_HASH};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};

/// A direct connection to the server's database, for inspection and tampering.
async fn db(server: &TestServer) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&server.database_url())
        .await
        .expect("connect to the test database");
    if server.backend == Backend::Sqlite {
        sqlx::raw_sql("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn
}

async fn exec(conn: &mut AnyConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(conn: &mut AnyConnection, sql: &'static str) -> i64 {
    sqlx::query(sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<i64, _>(0)
}

/// The whole log via `GET /v1/audit`, following the pager with a small page size.
async fn all_entries(server: &TestServer, query: &str, page: usize) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        let (s, v) = server
            .call(
                Method::GET,
                &format!("/v1/audit?after={cursor}&limit={page}{query}"),
                Some(&server.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let entries: Vec<AuditEntry> =
            serde_json::from_value(v["entries"].clone()).expect("audit entries");
        assert!(entries.len() <= page, "page larger than the limit");
        out.extend(entries);
        pages += 1;
        match v["next_after"].as_i64() {
            Some(n) => cursor = n,
            None => break,
        }
        assert!(pages < 10_000, "pager does not terminate");
    }
    out
}

async fn verify(server: &TestServer) -> Value {
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit/verify",
            Some(&server.operator),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// POST with a cloned client (usable from spawned tasks).
async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const TASKS: usize = 8;
const CALLS_PER_TASK: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_load_keeps_one_unbroken_chain() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let tenants = [server.tenant("acme").await, server.tenant("globex").await];
        // bootstrap + 2 x (tenant + 3 tokens)
        let baseline = 1 + 2 * 4;
        assert_eq!(verify(&server).await["entries"], baseline);

        // A second node on the same database (as several stateless nodes would run): the
        // chain must be serialized by the database, not by anything inside one process.
        let mut node2_config = server.config.clone();
        node2_config.bind = "127.0.0.1:0".parse().unwrap();
        let node2 = pqkms::server::start(&node2_config)
            .await
            .expect("second node starts");
        let bases = [server.base.clone(), format!("http://{}", node2.addr)];

        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let t = tenants[task % 2].clone();
            let http = server.http.clone();
            // Generate on one node, decrypt on the other (whose cache has never seen the key).
            let gen_base = bases[(task / 2) % 2].clone();
            let dec_base = bases[(task / 2 + 1) % 2].clone();
            let barrier = barrier.clone();
            handles.push(tokio::spawn(async move {
                let key = format!("k-{task}");
                let key_path = format!("/v1/tenants/{}/keys/{key}", t.name);
                barrier.wait().await;
                // A state change (its own transaction) racing with the key uses.
                let (s, v) = post(
                    &http,
                    format!("{gen_base}/v1/tenants/{}/keys", t.name),
                    &t.admin,
                    json!({ "name": key }),
                )
                .await;
                assert_eq!(s, StatusCode::CREATED, "task {task}: {v}");
                let mut last: Option<(Value, Value)> = None;
                let (mut generated, mut decrypted) = (0, 0);
                for i in 0..CALLS_PER_TASK {
                    let ctx = json!({ "task": task.to_string(), "i": i.to_string() });
                    if i % 2 == 0 {
                        let (s, v) = post(
                            &http,
                            format!("{gen_base}{key_path}/data-key"),
                            &t.encrypt,
                            json!({ "context": ctx }),
                        )
                        .await;
                        assert_eq!(s, StatusCode::OK, "task {task} call {i}: {v}");
                        last = Some((
                            json!({ "wrapped_key": v["wrapped_key"], "context": ctx }),
                            v["plaintext"].clone(),
                        ));
                        generated += 1;
                    } else {
                        let (req, plaintext) = last.clone().unwrap();
                        let (s, v) = post(
                            &http,
                            format!("{dec_base}{key_path}/decrypt"),
                            &t.decrypt,
                            req,
                        )
                        .await;
                        assert_eq!(s, StatusCode::OK, "task {task} call {i}: {v}");
                        assert_eq!(v["plaintext"], plaintext, "task {task} call {i}");
                        decrypted += 1;
                    }
                }
                (generated, decrypted)
            }));
        }
        let (mut generated, mut decrypted) = (0, 0);
        for h in handles {
            let (g, d) = h.await.expect("task panicked");
            generated += g;
            decrypted += d;
        }
        assert_eq!(generated + decrypted, TASKS * CALLS_PER_TASK);
        node2.stop().await.expect("second node stops");
        let expected = baseline + (TASKS * (1 + CALLS_PER_TASK)) as i64;

        let v = verify(&server).await;
        assert_eq!(v["ok"], true, "{backend:?} {v}");
        assert_eq!(v["entries"], expected, "{backend:?} {v}");
        assert!(v.get("first_bad_seq").is_none(), "{backend:?} {v}");

        // Read it back page by page (37 does not divide the total) and check every link ourselves.
        let entries = all_entries(&server, "", 37).await;
        assert_eq!(entries.len() as i64, expected, "{backend:?}");
        let mut prev = GENESIS_HASH.to_owned();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.seq,
                i as i64 + 1,
                "{backend:?}: gap or duplicate at position {i}"
            );
            assert_eq!(
                e.prev_hash,
                prev,
                "{backend:?}: entry {} does not link to {}",
                e.seq,
                e.seq - 1
            );
            assert_eq!(
                e.compute_hash(),
                e.hash,
                "{backend:?}: entry {} hash",
                e.seq
            );
            prev = e.hash.clone();
        }
        assert_eq!(
            v["head"],
            prev.as_str(),
            "{backend:?}: head is not the last entry's hash"
        );
        // One entry per request, none lost or doubled.
        let mut ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            entries.len(),
            "{backend:?}: a request id appears twice"
        );
        let count = |op: &str| {
            entries
                .iter()
                .filter(|e| e.operation == op && e.outcome == "ok")
                .count()
        };
        assert_eq!(count("data_key.generate"), generated, "{backend:?}");
        assert_eq!(count("data_key.decrypt"), decrypted, "{backend:?}");
        assert_eq!(count("key.create"), TASKS, "{backend:?}");
        // The tenant filter pages over the same chain.
        let acme = all_entries(&server, "&tenant=acme", 10).await;
        assert_eq!(
            acme.len(),
            4 + (TASKS / 2) * (1 + CALLS_PER_TASK),
            "{backend:?}"
        );
        assert!(
            acme.iter().all(|e| e.tenant.as_deref() == Some("acme")),
            "{backend:?}"
        );
        assert!(acme.windows(2).all(|w| w[0].seq < w[1].seq), "{backend:?}");

        // The database agrees: head row and row count.
        let mut conn = db(&server).await;
        assert_eq!(
            scalar(&mut conn, "SELECT COUNT(*) FROM audit_log").await,
            expected,
            "{backend:?}"
        );
        assert_eq!(
            scalar(&mut conn, "SELECT seq FROM audit_head WHERE id = 1").await,
            expected,
            "{backend:?}"
        );
        conn.close().await.unwrap();
        server.stop().await;
    }
}

/// One way of tampering with the stored chain, and the seq verify must name.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// UPDATE one column of one row.
    Edit(i64, &'static str, &'static str),
    /// DELETE one row.
    Delete(i64),
    /// Swap every column except seq between this row and the next.
    SwapWithNext(i64),
    /// DELETE the newest row (only the head row can tell).
    DeleteLast,
    /// Edit a row's outcome and store its recomputed hash: the row is self-consistent, so the
    /// break shows at the next row's link.
    EditRehash(i64),
    /// Edit a row and re-chain every later row (hashes and links), leaving the head row: only
    /// the head can tell.
    RewriteTail(i64),
}

/// Store `e`'s prev_hash, outcome and hash.
async fn store_rehashed(conn: &mut AnyConnection, e: &AuditEntry) {
    sqlx::query("UPDATE audit_log SET outcome = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
        .bind(&e.outcome)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .bind(e.seq)
        .execute(&mut *conn)
        .await
        .expect("rewrite row");
}

/// Entries after setup: bootstrap + tenant + 3 tokens + 6 data keys.
const SETUP_ENTRIES: i64 = 11;

async fn tampered_server(backend: Backend) -> TestServer {
    let server = TestServer::start(backend).await;
    let acme = server.tenant("acme").await;
    for i in 0..6 {
        let ctx = if i % 2 == 0 {
            json!({ "i": i.to_string() })
        } else {
            Value::Null
        };
        let body = if ctx.is_null() {
            json!({})
        } else {
            json!({ "context": ctx })
        };
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/keys/default/data-key",
                Some(&acme.encrypt),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let v = verify(&server).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], SETUP_ENTRIES, "{v}");
    server
}

async fn apply(server: &TestServer, conn: &mut AnyConnection, tamper: Tamper) {
    match tamper {
        Tamper::Edit(seq, column, value) => {
            exec(
                conn,
                &format!("UPDATE audit_log SET {column} = {value} WHERE seq = {seq}"),
            )
            .await;
        }
        Tamper::Delete(seq) => {
            exec(conn, &format!("DELETE FROM audit_log WHERE seq = {seq}")).await
        }
        Tamper::DeleteLast => {
            exec(
                conn,
                &format!("DELETE FROM audit_log WHERE seq = {SETUP_ENTRIES}"),
            )
            .await
        }
        Tamper::EditRehash(seq) | Tamper::RewriteTail(seq) => {
            let entries = all_entries(server, "", 100).await;
            let mut prev_hash = entries[seq as usize - 1].prev_hash.clone();
            for e in &entries[seq as usize - 1..] {
                let mut e = e.clone();
                if e.seq == seq {
                    e.outcome = "failed".into();
                } else if let Tamper::EditRehash(_) = tamper {
                    break;
                }
                e.prev_hash = prev_hash;
                e.hash = e.compute_hash();
                prev_hash = e.hash.clone();
                store_rehashed(conn, &e).await;
            }
        }
        Tamper::SwapWithNext(seq) => {
            let entries = all_entries(server, "", 100).await;
            let a = entries[seq as usize - 1].clone();
            let b = entries[seq as usize].clone();
            assert_eq!((a.seq, b.seq), (seq, seq + 1));
            for (target, e) in [(seq, &b), (seq + 1, &a)] {
                sqlx::query(
                    "UPDATE audit_log SET time_ms = $1, principal = $2, tenant = $3, key_name = $4, \
                     key_version = $5, operation = $6, outcome = $7, request_id = $8, \
                     context_hash = $9, prev_hash = $10, hash = $11 WHERE seq = $12",
                )
                .bind(e.time_ms)
                .bind(&e.principal)
                .bind(&e.tenant)
                .bind(&e.key)
                .bind(e.version)
                .bind(&e.operation)
                .bind(&e.outcome)
                .bind(&e.request_id)
                .bind(&e.context_hash)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(target)
                .execute(&mut *conn)
                .await
                .expect("swap rows");
            }
            let after = all_entries(server, "", 100).await;
            assert_eq!(
                after[seq as usize - 1].request_id,
                b.request_id,
                "swap did not happen"
            );
        }
    }
}

#[tokio::test]
async fn tampering_in_the_database_is_located_by_verify() {
    let cases: &[(Tamper, i64)] = &[
        (Tamper::Edit(7, "outcome", "'failed'"), 7),
        (Tamper::Edit(1, "time_ms", "time_ms + 1"), 1),
        (Tamper::Edit(3, "context_hash", "''"), 3), // absent -> empty
        (
            Tamper::Edit(SETUP_ENTRIES, "principal", "'tok_0000000000000000'"),
            SETUP_ENTRIES,
        ),
        (Tamper::Edit(8, "prev_hash", "hash"), 8),
        (Tamper::Delete(7), 7),
        (Tamper::Delete(1), 1),
        (Tamper::SwapWithNext(7), 7),
        (Tamper::SwapWithNext(1), 1),
        (Tamper::DeleteLast, SETUP_ENTRIES),
        (Tamper::EditRehash(7), 8),
        (Tamper::EditRehash(SETUP_ENTRIES), SETUP_ENTRIES + 1), // head mismatch
        (Tamper::RewriteTail(7), SETUP_ENTRIES + 1),            // head mismatch
    ];
    for backend in backends() {
        for &(tamper, bad_seq) in cases {
            let server = tampered_server(backend).await;
            let mut conn = db(&server).await;
            apply(&server, &mut conn, tamper).await;
            conn.close().await.unwrap();

            let v = verify(&server).await;
            assert_eq!(
                v["ok"], false,
                "{backend:?} {tamper:?}: tampering not detected: {v}"
            );
            assert_eq!(v["first_bad_seq"], bad_seq, "{backend:?} {tamper:?}: {v}");
            let problem = v["problem"]
                .as_str()
                .unwrap_or_else(|| panic!("{backend:?} {tamper:?}: no problem: {v}"));
            if let Tamper::DeleteLast | Tamper::RewriteTail(_) | Tamper::EditRehash(SETUP_ENTRIES) =
                tamper
            {
                assert!(
                    problem.contains("head"),
                    "{backend:?} {tamper:?}: {problem}"
                );
            }

            // The library verifier on its own connection gives the same verdict.
            let store = pqkms::store::SqlStore::connect(&server.database_url(), 2)
                .await
                .expect("store");
            let lib = pqkms::audit::verify_chain(&store)
                .await
                .expect("verify_chain");
            pqkms::store::Store::close(&store).await;
            assert!(!lib.ok, "{backend:?} {tamper:?}");
            assert_eq!(
                lib.first_bad_seq,
                Some(bad_seq),
                "{backend:?} {tamper:?}: {lib:?}"
            );
            assert_eq!(v["entries"], lib.entries, "{backend:?} {tamper:?}");
            server.stop().await;
        }
    }
}

const BLOCK_SQLITE: &str = "CREATE TRIGGER block_audit BEFORE INSERT ON audit_log \
                            BEGIN SELECT RAISE(ABORT, 'blocked'); END;";
const BLOCK_POSTGRES: &str = "CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS \
                              $$ BEGIN RAISE EXCEPTION 'blocked'; END $$; \
                              CREATE TRIGGER block_audit BEFORE INSERT ON audit_log \
                              FOR EACH ROW EXECUTE FUNCTION block_audit();";
const UNBLOCK_SQLITE: &str = "DROP TRIGGER block_audit;";
const UNBLOCK_POSTGRES: &str =
    "DROP TRIGGER block_audit ON audit_log; DROP FUNCTION block_audit();";

/// A request returning the raw body text.
async fn raw(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = server
        .http
        .request(method, format!("{}{path}", server.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    (resp.status(), resp.text().await.unwrap_or_default())
}

fn assert_opaque_500(status: StatusCode, text: &str, what: &str) {
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {text}");
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{what}: {text}");
    assert_eq!(v["error"]["code"], "internal", "{what}: {text}");
    assert!(v["error"]["message"].is_string(), "{what}: {text}");
    let lower = text.to_lowercase();
    for leak in [
        "blocked",
        "audit_log",
        "insert",
        "trigger",
        "raise",
        "sqlite",
        "postgres",
        "sql",
        "database",
        "plaintext",
        "wrapped",
        "token\"",
    ] {
        assert!(
            !lower.contains(leak),
            "{what}: the 500 body says {leak:?}: {text}"
        );
    }
}

#[tokio::test]
async fn audit_write_failure_fails_closed() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let key = "/v1/tenants/acme/keys/default";
        let (s, v) = server
            .call(
                Method::POST,
                &format!("{key}/data-key"),
                Some(&acme.encrypt),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let decrypt_req = json!({ "wrapped_key": v["wrapped_key"] });
        let (spare, spare_id) = server.token("acme", &["decrypt"], None).await;
        let n = verify(&server).await["entries"].as_i64().unwrap();
        assert_eq!(n, 1 + 1 + 3 + 1 + 1);

        let mut conn = db(&server).await;
        let (block, unblock) = match backend {
            Backend::Sqlite => (BLOCK_SQLITE, UNBLOCK_SQLITE),
            Backend::Postgres => (BLOCK_POSTGRES, UNBLOCK_POSTGRES),
        };
        exec(&mut conn, block).await;

        // Key uses: no key leaves without its audit entry.
        let (s, text) = raw(
            &server,
            Method::POST,
            &format!("{key}/data-key"),
            &acme.encrypt,
            Some(json!({})),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} data-key"));
        let (s, text) = raw(
            &server,
            Method::POST,
            &format!("{key}/data-key"),
            &acme.encrypt,
            Some(json!({ "context": { "a": "b" }, "include_plaintext": true })),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} data-key with context"));
        let (s, text) = raw(
            &server,
            Method::POST,
            &format!("{key}/decrypt"),
            &acme.decrypt,
            Some(decrypt_req.clone()),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} decrypt"));
        let (s, text) = raw(
            &server,
            Method::GET,
            &format!("{key}/public-key"),
            &acme.encrypt,
            None,
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} public-key"));
        // State changes roll back with their entry.
        let (s, text) = raw(
            &server,
            Method::POST,
            "/v1/tenants",
            &server.operator,
            Some(json!({ "name": "newco" })),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} create tenant"));
        let (s, text) = raw(
            &server,
            Method::POST,
            "/v1/tenants/acme/keys",
            &acme.admin,
            Some(json!({ "name": "blocked-key" })),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} create key"));
        let (s, text) = raw(
            &server,
            Method::POST,
            "/v1/tenants/acme/tokens",
            &server.operator,
            Some(json!({ "roles": ["decrypt"] })),
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} create token"));
        let (s, text) = raw(
            &server,
            Method::DELETE,
            &format!("/v1/tenants/acme/tokens/{spare_id}"),
            &server.operator,
            None,
        )
        .await;
        assert_opaque_500(s, &text, &format!("{backend:?} revoke token"));

        // Reading and verifying still work, and nothing was appended.
        let v = verify(&server).await;
        assert_eq!(
            (v["ok"].clone(), v["entries"].clone()),
            (json!(true), json!(n)),
            "{backend:?} {v}"
        );
        assert_eq!(
            scalar(&mut conn, "SELECT COUNT(*) FROM audit_log").await,
            n,
            "{backend:?}"
        );
        assert_eq!(
            scalar(&mut conn, "SELECT seq FROM audit_head WHERE id = 1").await,
            n,
            "{backend:?}"
        );
        assert_eq!(
            scalar(
                &mut conn,
                "SELECT COUNT(*) FROM tenants WHERE name = 'newco'"
            )
            .await,
            0,
            "{backend:?}"
        );
        assert_eq!(
            scalar(
                &mut conn,
                "SELECT COUNT(*) FROM keys WHERE name = 'blocked-key'"
            )
            .await,
            0,
            "{backend:?}"
        );
        assert_eq!(
            scalar(&mut conn, "SELECT COUNT(*) FROM tokens").await,
            1 + 3 + 1,
            "{backend:?}"
        );
        assert_eq!(
            scalar(
                &mut conn,
                "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NOT NULL"
            )
            .await,
            0,
            "{backend:?}"
        );

        exec(&mut conn, unblock).await;
        conn.close().await.unwrap();
        let v = verify(&server).await;
        assert_eq!(v["ok"], true, "{backend:?} {v}");
        assert_eq!(v["entries"], n, "{backend:?} {v}");
        // Everything works again; the failed changes did not half-happen.
        let (s, v) = server
            .call(
                Method::POST,
                &format!("{key}/decrypt"),
                Some(&spare),
                Some(decrypt_req),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} the un-revoked token: {v}");
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&server.operator),
                Some(json!({ "name": "newco" })),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::CREATED,
            "{backend:?} newco was half-created: {v}"
        );
        let (s, v) = server
            .call(
                Method::GET,
                "/v1/tenants/acme/keys/blocked-key",
                Some(&acme.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend:?} {v}");
        let v = verify(&server).await;
        assert_eq!(v["ok"], true, "{backend:?} {v}");
        assert_eq!(v["entries"], n + 2, "{backend:?} {v}");
        server.stop().await;
    }
}

/// Every error answer uses `{"error": {"code", "message"}}` — including a malformed query string
/// on `GET /v1/audit` (axum's own rejection would answer `text/plain`).
#[tokio::test]
async fn audit_query_errors_use_the_error_shape() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        for query in ["limit=abc", "since_ms=yesterday", "after=-x", "bogus=1"] {
            let resp = server
                .http
                .get(format!("{}/v1/audit?{query}", server.base))
                .bearer_auth(&server.operator)
                .send()
                .await
                .expect("request sent");
            assert_eq!(
                resp.status(),
                StatusCode::BAD_REQUEST,
                "{backend:?} {query}"
            );
            let text = resp.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{backend:?} ?{query}: not JSON: {text}"));
            assert_eq!(
                v["error"]["code"], "bad_request",
                "{backend:?} ?{query}: {text}"
            );
            assert!(
                v["error"]["message"].is_string(),
                "{backend:?} ?{query}: {text}"
            );
        }
        server.stop().await;
    }
}
