//! Crash safety: `kill -9` the real server while rotations and destructions are in flight, start
//! it again, and check the state is whole: versions contiguous, every rotation has exactly its
//! audit entry, every version is either pending (sealed material present) or destroyed (material
//! gone, exactly one receipt), and the audit chain verifies.

#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_pqkms");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, port: u16) -> Child {
    let config = dir.join("pqkms.toml");
    std::fs::write(
        &config,
        "min_destroy_waiting_secs = 1\nlifecycle_interval_ms = 20\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&config)
        .current_dir(dir)
        .env_remove("PQKMS_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("serve starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn kill9(child: &mut Child) {
    assert!(
        Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = child.wait();
}

async fn call(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let st = r.status().as_u16();
            (st, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null), // the server died under us
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_during_rotation_and_destruction_leaves_whole_state() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let op = std::fs::read_to_string(dir.path().join("pqkms-data/operator.token"))
        .unwrap()
        .trim()
        .to_owned();
    use reqwest::Method as M;
    assert_eq!(
        call(
            &http,
            port,
            &op,
            M::POST,
            "/v1/tenants",
            Some(json!({ "name": "acme" }))
        )
        .await
        .0,
        201
    );
    let (_, t) = call(
        &http,
        port,
        &op,
        M::POST,
        "/v1/tenants/acme/tokens",
        Some(json!({ "roles": ["tenant-admin"] })),
    )
    .await;
    let admin = t["token"].as_str().unwrap().to_owned();
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_eq!(
            call(
                &http,
                port,
                &admin,
                M::POST,
                "/v1/tenants/acme/keys",
                Some(json!({ "name": k }))
            )
            .await
            .0,
            201
        );
    }

    for round in 0..3 {
        // Rotations hammering one key, destructions of the others coming due, then kill -9.
        let (h, a) = (http.clone(), admin.clone());
        let rotator = tokio::spawn(async move {
            loop {
                let (st, _) = call(
                    &h,
                    port,
                    &a,
                    M::POST,
                    "/v1/tenants/acme/keys/default/rotate",
                    Some(json!({})),
                )
                .await;
                if st == 0 {
                    break;
                }
            }
        });
        if round == 0 {
            for k in &keys {
                call(
                    &http,
                    port,
                    &admin,
                    M::POST,
                    &format!("/v1/tenants/acme/keys/{k}/destroy"),
                    Some(json!({ "waiting_period": "1s" })),
                )
                .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(if round == 0 { 1010 } else { 300 })).await;
        kill9(&mut server);
        rotator.await.unwrap();
        server = serve(dir.path(), port);
    }
    // Let the restarted worker finish any destruction that was due at the crash.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (_, meta) = call(
        &http,
        port,
        &admin,
        M::GET,
        "/v1/tenants/acme/keys/default",
        None,
    )
    .await;
    let versions: Vec<i64> = meta["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert!(versions.len() > 1, "some rotations happened: {versions:?}");
    assert_eq!(
        versions,
        (1..=versions.len() as i64).collect::<Vec<_>>(),
        "contiguous versions"
    );

    let (st, verify) = call(&http, port, &op, M::GET, "/v1/audit/verify", None).await;
    assert_eq!((st, &verify["ok"]), (200, &json!(true)), "{verify}");
    let entries = |operation: &'static str| {
        let (http, op) = (http.clone(), op.clone());
        async move {
            // Every page: rotations are fast enough to pass one page's limit in a round.
            let (mut all, mut after) = (Vec::new(), 0);
            loop {
                let (_, v) = call(
                    &http,
                    port,
                    &op,
                    M::GET,
                    &format!("/v1/audit?operation={operation}&limit=1000&after={after}"),
                    None,
                )
                .await;
                all.extend(v["entries"].as_array().unwrap().iter().cloned());
                match v["next_after"].as_i64() {
                    Some(next) => after = next,
                    None => return all,
                }
            }
        }
    };
    let rotations = entries("key.rotate").await;
    assert_eq!(
        rotations.len(),
        versions.len() - 1,
        "one audit entry per committed rotation"
    );

    let receipts = entries("key.destroyed").await;
    use sqlx::{Connection, Row};
    let url = format!(
        "sqlite://{}",
        dir.path().join("pqkms-data/pqkms.db").display()
    );
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    for k in &keys {
        let row = sqlx::query("SELECT v.state, v.sealed_private FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = $1")
            .bind(k)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let state: String = row.try_get("state").unwrap();
        let sealed: Option<Vec<u8>> = row.try_get("sealed_private").unwrap();
        let n_receipts = receipts.iter().filter(|e| e["key"] == json!(k)).count();
        assert_eq!(
            state, "destroyed",
            "{k}: due before the last restart, so done by now"
        );
        assert!(sealed.is_none(), "{k}: material gone");
        assert_eq!(n_receipts, 1, "{k}: exactly one receipt");
    }
    conn.close().await.unwrap();
    server.kill().unwrap();
    let _ = server.wait();
}
