//! Several `pqkms serve` processes on one PostgreSQL database (the deployment shape for more than
//! one node), and scheduled rotation that happens exactly once however many nodes run it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_pqkms");

/// Make every key's scheduled rotation due now (instead of waiting a minute).
async fn make_rotation_due(s: &TestServer) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&s.database_url())
        .await
        .unwrap();
    sqlx::query("UPDATE keys SET next_rotation_at = $1")
        .bind(pqkms::now_ms() - 1)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Scheduled rotation: make the key due, run the worker pass on two nodes at once, and see one
/// new version and one `scheduler` audit entry.
#[tokio::test]
async fn scheduled_rotation_happens_once_across_nodes() {
    for backend in backends() {
        let s = TestServer::start(backend).await;
        let t = s.tenant("acme").await;
        let key = "/v1/tenants/acme/keys/default";
        let (st, v) = s
            .call(
                Method::POST,
                &format!("{key}/config"),
                Some(&t.admin),
                Some(json!({ "rotation_period": "1m" })),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let node_b = s.start_node().await;
        for round in 1..=2 {
            // Make it due now (instead of waiting a minute).
            make_rotation_due(&s).await;
            let a = pqkms::http::lifecycle_tick(&s.running.as_ref().unwrap().state);
            let b = pqkms::http::lifecycle_tick(&node_b.state);
            let (ra, rb) = tokio::join!(a, b);
            ra.unwrap();
            rb.unwrap();
            let (_, meta) = s.call(Method::GET, key, Some(&t.admin), None).await;
            assert_eq!(meta["current_version"].as_i64(), Some(1 + round), "{meta}");
            assert!(meta["next_rotation_at"].as_i64().unwrap() > pqkms::now_ms() + 50_000);
        }
        // A disabled key is never rotated by the schedule (that would silently re-enable it).
        let (st, _) = s
            .call(
                Method::POST,
                &format!("{key}/disable"),
                Some(&t.admin),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        make_rotation_due(&s).await;
        pqkms::http::lifecycle_tick(&node_b.state).await.unwrap();
        let (_, meta) = s.call(Method::GET, key, Some(&t.admin), None).await;
        assert_eq!(meta["versions"].as_array().unwrap().len(), 3, "{meta}");
        assert!(meta["current_version"].is_null(), "{meta}");
        let (_, a) = s
            .call(
                Method::GET,
                "/v1/audit?operation=key.rotate",
                Some(&s.operator),
                None,
            )
            .await;
        let entries = a["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{a}");
        assert!(entries.iter().all(|e| e["principal"] == "scheduler"));
        node_b.stop().await.unwrap();
        s.stop().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_node(dir: &std::path::Path, url: &str, key_file: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "min_destroy_waiting_secs = 1\nlifecycle_interval_ms = 100\n",
    )
    .unwrap();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            url,
            "--root-key-file",
        ])
        .arg(key_file)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join(format!("node-{port}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// Two real server processes on PostgreSQL: rotation on one is used by the other at once;
/// destruction scheduled on one is carried out once and refused by the other.
#[tokio::test]
async fn two_server_processes_on_postgres() {
    if !backends().contains(&Backend::Postgres) {
        return; // warned by backends(); CI sets PQKMS_TEST_POSTGRES_URL
    }
    // The harness makes the database, the root key file and the tenant; the processes serve it.
    let s = TestServer::start(Backend::Postgres).await;
    let t = s.tenant("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = s.config.root_key_file.clone().unwrap();
    let url = s.database_url();
    let (mut a, pa) = spawn_node(dir.path(), &url, &key_file);
    let (mut b, pb) = spawn_node(dir.path(), &url, &key_file);
    let http = reqwest::Client::new();
    let post = |port: u16, token: &str, path: &str, body: Value| {
        let req = http
            .post(format!(
                "http://127.0.0.1:{port}/v1/tenants/acme/keys/default{path}"
            ))
            .bearer_auth(token)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, dk) = post(pa, &t.encrypt, "/data-key", json!({})).await;
    let (st, v) = post(
        pb,
        &t.decrypt,
        "/decrypt",
        json!({ "wrapped_key": dk["wrapped_key"] }),
    )
    .await;
    assert_eq!((st, &v["plaintext"]), (StatusCode::OK, &dk["plaintext"]));

    let (_, r) = post(pa, &t.admin, "/rotate", json!({})).await;
    assert_eq!(r["version"], 2);
    let (_, v) = post(pb, &t.encrypt, "/data-key", json!({})).await;
    assert_eq!(
        v["version"], 2,
        "node B wraps to the version node A just created"
    );

    let (st, _) = post(
        pa,
        &t.admin,
        "/destroy",
        json!({ "version": 1, "waiting_period": "1s" }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = post(
        pb,
        &t.decrypt,
        "/decrypt",
        json!({ "wrapped_key": dk["wrapped_key"] }),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "pending on node B at once");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, _) = post(
            pb,
            &t.decrypt,
            "/decrypt",
            json!({ "wrapped_key": dk["wrapped_key"] }),
        )
        .await;
        assert_ne!(st, StatusCode::OK);
        if st == StatusCode::GONE {
            break;
        }
        assert!(Instant::now() < deadline, "not destroyed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, audit) = s
        .call(
            Method::GET,
            "/v1/audit?operation=key.destroyed",
            Some(&s.operator),
            None,
        )
        .await;
    assert_eq!(
        audit["entries"].as_array().unwrap().len(),
        1,
        "one receipt from two workers"
    );
    let (_, verify) = s
        .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
        .await;
    assert_eq!(verify["ok"], true, "{verify}");
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        let _ = child.wait();
    }
    s.stop().await;
}

/// A PostgreSQL cluster whose default isolation is SERIALIZABLE (some operators set it) must not
/// break the service: every pqkms transaction runs at READ COMMITTED, which its locking is
/// written for. Two nodes append audit entries concurrently (key uses and rotations); at
/// SERIALIZABLE the second writer of the audit head would fail with a serialization error.
#[tokio::test]
async fn serializable_cluster_default_does_not_fail_requests() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let mut s = TestServer::start(Backend::Postgres).await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&s.database_url())
            .await
            .unwrap();
        sqlx::raw_sql(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation \
             = %L', current_database(), 'serializable'); END $$;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    // New connections (both nodes' pools) now default to SERIALIZABLE.
    s.restart().await;
    let t = s.tenant("acme").await;
    let (app, _) = s.token("acme", &["encrypt", "decrypt"], None).await;
    let node_b = s.start_node().await;
    let bases = [s.base.clone(), format!("http://{}", node_b.addr)];
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (http, base, app, admin) = (
            s.http.clone(),
            bases[i % 2].clone(),
            app.clone(),
            t.admin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // POST `{}` to an operation of the key; (status, body).
            let post = |op: &'static str, token: String| {
                let (http, base) = (http.clone(), base.clone());
                async move {
                    let resp = http
                        .post(format!("{base}/v1/tenants/acme/keys/default/{op}"))
                        .bearer_auth(token)
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    (
                        resp.status(),
                        resp.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
            };
            let mut answers = Vec::new();
            for _ in 0..8 {
                answers.push(post("data-key", app.clone()).await);
            }
            if i % 8 == 0 {
                answers.push(post("rotate", admin).await);
            }
            answers
        }));
    }
    let mut ok = 0;
    for task in tasks {
        for (status, body) in task.await.unwrap() {
            // A use that raced a rotation on the other node twice may be told to retry (503
            // `retry`, by design); a database error (a serialization failure) would be a 500.
            if status.is_success() {
                ok += 1;
            } else {
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (StatusCode::SERVICE_UNAVAILABLE, &json!("retry")),
                    "{body}"
                );
            }
        }
    }
    assert!(ok >= 200, "only {ok} of 260 requests succeeded");
    let (_, verify) = s
        .call(Method::GET, "/v1/audit/verify", Some(&s.operator), None)
        .await;
    assert_eq!(verify["ok"], true, "{verify}");
    node_b.stop().await.unwrap();
    s.stop().await;
}
