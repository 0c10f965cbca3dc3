//! Shared harness for the integration tests: start the real service (the same `server::start`
//! the binary runs) on SQLite in a temp dir or on a fresh PostgreSQL database, and talk to it over
//! real HTTP.
//!
//! PostgreSQL: set `PQKMS_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
//! `.ci/run` sets it, and then an unreachable server fails the tests. Without it the PostgreSQL
//! half of each test is skipped with a warning on stderr.

#![allow(dead_code)]

use std::path::PathBuf;

use pqkms::config::Config;
use pqkms::server::{Running, start};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends to run on: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match std::env::var("PQKMS_TEST_POSTGRES_URL") {
        Ok(_) => out.push(Backend::Postgres),
        Err(_) => eprintln!(
            "WARNING: PQKMS_TEST_POSTGRES_URL is not set: PostgreSQL tests skipped (CI sets it)"
        ),
    }
    out
}

/// A running service plus what a test needs to drive it.
pub struct TestServer {
    pub backend: Backend,
    pub base: String,
    pub operator: String,
    pub config: Config,
    pub running: Option<Running>,
    pub http: reqwest::Client,
    dir: tempfile::TempDir,
    db_name: Option<String>,
}

fn admin_pg_url() -> String {
    std::env::var("PQKMS_TEST_POSTGRES_URL").expect("PQKMS_TEST_POSTGRES_URL")
}

/// Replace the database name in a postgres URL.
fn pg_url_for(db: &str) -> String {
    let base = admin_pg_url();
    let (head, query) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(h, q)| (h, Some(q)));
    let slash = head
        .rfind('/')
        .filter(|&i| i > "postgres://".len())
        .unwrap_or(head.len());
    let mut url = format!("{}/{db}", &head[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

async fn pg_admin(sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin_pg_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at PQKMS_TEST_POSTGRES_URL is unreachable: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// Start with a config tweak (body limit, cache size...).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let mut db_name = None;
        if backend == Backend::Postgres {
            let mut id = [0u8; 6];
            getrandom::fill(&mut id).unwrap();
            let name = format!("pqkms_test_{}", hex::encode(id));
            pg_admin(&format!("CREATE DATABASE {name}")).await;
            config.database_url = Some(pg_url_for(&name));
            let key_file = dir.path().join("root.key");
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).unwrap();
            std::fs::write(
                &key_file,
                format!("pqkms-root-key-v1 1 {}\n", hex::encode(key)),
            )
            .unwrap();
            config.root_key_file = Some(key_file);
            db_name = Some(name);
        }
        tweak(&mut config);
        let running = start(&config).await.expect("server starts");
        let operator = std::fs::read_to_string(config.data_dir.join("operator.token"))
            .expect("bootstrap token written")
            .trim()
            .to_owned();
        TestServer {
            backend,
            base: format!("http://{}", running.addr),
            operator,
            config,
            running: Some(running),
            http: reqwest::Client::new(),
            dir,
            db_name,
        }
    }

    /// Stop gracefully and start again on the same data (new port, empty key cache).
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
        self.config.bind = "127.0.0.1:0".parse().unwrap();
        let running = start(&self.config).await.expect("server restarts");
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// Another node on the same database and root key (another port, its own key cache).
    pub async fn start_node(&self) -> Running {
        let mut config = self.config.clone();
        config.bind = "127.0.0.1:0".parse().unwrap();
        start(&config).await.expect("second node starts")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The database URL (for tests that inspect or tamper with rows).
    pub fn database_url(&self) -> String {
        pqkms::server::database_url(&self.config)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
        if let Some(name) = self.db_name.take() {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }

    /// One request; returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Raw body request (malformed JSON, oversized bodies).
    pub async fn call_raw(&self, path: &str, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Create a tenant and a token per role.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&self.operator),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let mut tokens = Vec::new();
        for role in ["tenant-admin", "encrypt", "decrypt"] {
            tokens.push(self.token(name, &[role], None).await.0);
        }
        Tenant {
            name: name.to_owned(),
            admin: tokens[0].clone(),
            encrypt: tokens[1].clone(),
            decrypt: tokens[2].clone(),
        }
    }

    /// Create a token (as operator); returns (token, id).
    pub async fn token(&self, tenant: &str, roles: &[&str], ttl: Option<i64>) -> (String, String) {
        let mut body = json!({ "roles": roles });
        if let Some(t) = ttl {
            body["ttl_seconds"] = t.into();
        }
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/tokens"),
                Some(&self.operator),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["token"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }
}

/// A tenant with one token per tenant role.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub admin: String,
    pub encrypt: String,
    pub decrypt: String,
}
