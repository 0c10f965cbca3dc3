//! Secrets never reach the log: a full request flow with tracing at TRACE for every target,
//! captured in memory, then searched for every token, data key, the root key and the sealed
//! private keys, in the encodings a careless log line would use. Also: `Debug` of the config.
//!
//! Only this test binary installs a global subscriber.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{
    STANDARD as B64, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
};
use common::{Backend, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};

/// The in-memory log.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn install_capture() -> Capture {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(true)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other global subscriber in this binary");
    capture
}

/// A request with its body and `x-request-id`.
async fn req(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut r = server
        .http
        .request(method, format!("{}{path}", server.base));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request sent");
    let status = resp.status();
    let rid = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        rid,
    )
}

/// A secret and the name to report if it shows up.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: impl Into<String>, needle: impl Into<String>) {
        let needle = needle.into();
        assert!(needle.len() >= 16, "needle too short to be meaningful");
        self.0.push((what.into(), needle));
    }

    fn token(&mut self, what: &str, token: &str) {
        self.add(format!("{what} token"), token);
        let bare = token
            .strip_prefix("pqkms_")
            .expect("tokens start with pqkms_");
        self.add(format!("{what} token without prefix"), bare);
        self.add(
            format!("{what} token (upper-case hex)"),
            bare.to_uppercase(),
        );
    }

    /// Raw secret bytes in every encoding a log line might use.
    fn bytes(&mut self, what: &str, b: &[u8]) {
        self.add(format!("{what} (hex)"), hex::encode(b));
        self.add(format!("{what} (HEX)"), hex::encode_upper(b));
        self.add(format!("{what} (base64)"), B64.encode(b));
        self.add(
            format!("{what} (base64, no padding)"),
            STANDARD_NO_PAD.encode(b),
        );
        self.add(format!("{what} (base64url)"), URL_SAFE.encode(b));
        self.add(
            format!("{what} (base64url, no padding)"),
            URL_SAFE_NO_PAD.encode(b),
        );
        // `{:?}` of a byte slice or array, any 16-byte window.
        for w in b.windows(16) {
            let list: Vec<String> = w.iter().map(u8::to_string).collect();
            self.add(format!("{what} (Debug bytes)"), list.join(", "));
        }
    }

    /// A longer blob: every 16-byte window in hex, every 18-byte window in base64 (covers any
    /// alignment of the blob inside a larger base64 string).
    fn blob(&mut self, what: &str, b: &[u8]) {
        self.bytes(what, b);
        for (i, w) in b.windows(16).enumerate() {
            self.add(
                format!("{what} bytes {i}..{} (hex)", i + 16),
                hex::encode(w),
            );
        }
        for (i, w) in b.windows(18).enumerate() {
            self.add(
                format!("{what} bytes {i}..{} (base64)", i + 18),
                B64.encode(w),
            );
        }
    }

    /// Each secret form found in `log`, with the line it is on.
    fn found(&self, log: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (what, needle) in &self.0 {
            if let Some(at) = log.find(needle.as_str()) {
                let start = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = log[at..].find('\n').map_or(log.len(), |i| at + i);
                found.push(format!("{what}: {}", &log[start..end]));
            }
        }
        found
    }

    fn assert_absent(&self, log: &str, backend: Backend) {
        let found = self.found(log);
        assert!(
            found.is_empty(),
            "{backend:?}: secrets in the log:\n{}",
            found.join("\n")
        );
    }
}

fn root_key_bytes(server: &TestServer) -> (String, Vec<u8>) {
    let path = server
        .config
        .root_key_file
        .clone()
        .unwrap_or_else(|| server.data_dir().join("root.key"));
    let text = std::fs::read_to_string(&path).expect("root key file");
    let hex_key = text
        .split_whitespace()
        .nth(2)
        .expect("root key format")
        .to_owned();
    let bytes = hex::decode(&hex_key).expect("root key hex");
    assert_eq!(bytes.len(), 32);
    (text.trim().to_owned(), bytes)
}

async fn sealed_private_keys(server: &TestServer) -> Vec<Vec<u8>> {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&server.database_url())
        .await
        .expect("connect");
    let rows = sqlx::query("SELECT sealed_private FROM key_versions")
        .fetch_all(&mut conn)
        .await
        .expect("select");
    conn.close().await.unwrap();
    rows.iter().map(|r| r.get::<Vec<u8>, _>(0)).collect()
}

async fn exec(server: &TestServer, sql: &'static str) {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&server.database_url())
        .await
        .expect("connect");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let capture = install_capture();
    tracing::info!("log capture installed");
    for backend in backends() {
        let log_start = capture.text().len();
        let mut secrets = Secrets(Vec::new());
        let mut request_ids = Vec::new();
        // On PostgreSQL, a password in the database URL (trust auth ignores it) must not be
        // logged either.
        let mut server = TestServer::start_with(backend, |c| {
            if let Some(url) = &c.database_url {
                c.database_url = Some(with_password(url));
            }
        })
        .await;
        let db_password = server.config.database_url.as_deref().and_then(password_of);
        assert_eq!(
            db_password.is_some(),
            backend == Backend::Postgres,
            "{backend:?}"
        );
        if let Some(pw) = db_password {
            secrets.0.push(("database password".into(), pw));
        }
        secrets.token("operator", &server.operator);

        // Tenant, tokens (one with a TTL), a second key.
        let acme = server.tenant("acme").await;
        for (what, t) in [
            ("admin", &acme.admin),
            ("encrypt", &acme.encrypt),
            ("decrypt", &acme.decrypt),
        ] {
            secrets.token(what, t);
        }
        let (both, both_id) = server
            .token("acme", &["encrypt", "decrypt"], Some(3600))
            .await;
        secrets.token("ttl", &both);
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/tokens",
                Some(&acme.admin),
                Some(json!({ "roles": ["decrypt"] })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        secrets.token("admin-created", v["token"].as_str().unwrap());
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/keys",
                Some(&acme.admin),
                Some(json!({ "name": "k2" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        // Data keys, with and without plaintext and context, and their decryption.
        let ctx = json!({ "table": "users", "column": "email" });
        let mut wrapped = Vec::new();
        let mut first_data_key: Option<Vec<u8>> = None;
        for (key, body) in [
            ("default", json!({ "context": ctx })),
            ("default", json!({})),
            ("k2", json!({ "context": ctx })),
            (
                "default",
                json!({ "context": ctx, "include_plaintext": false }),
            ),
        ] {
            let path = format!("/v1/tenants/acme/keys/{key}/data-key");
            let (s, v, rid) = req(
                &server,
                Method::POST,
                &path,
                Some(&both),
                Some(body.clone()),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            request_ids.push(rid);
            if let Some(p) = v["plaintext"].as_str() {
                let bytes = B64.decode(p).unwrap();
                secrets.bytes("data key", &bytes);
                first_data_key.get_or_insert(bytes);
            }
            let mut dec = json!({ "wrapped_key": v["wrapped_key"] });
            if let Some(c) = body.get("context") {
                dec["context"] = c.clone();
            }
            let path = format!("/v1/tenants/acme/keys/{key}/decrypt");
            let (s, d, rid) = req(
                &server,
                Method::POST,
                &path,
                Some(&acme.decrypt),
                Some(dec.clone()),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{d}");
            request_ids.push(rid);
            if let Some(p) = v["plaintext"].as_str() {
                assert_eq!(d["plaintext"], p);
            }
            secrets.bytes(
                "decrypted data key",
                &B64.decode(d["plaintext"].as_str().unwrap()).unwrap(),
            );
            wrapped.push((path, dec));
        }
        let (dec_path, good) = wrapped[0].clone();

        // Failures: wrong context, tampered blob, bad base64, malformed JSON.
        let mut wrong = good.clone();
        wrong["context"] = json!({ "table": "users", "column": "phone" });
        let (s, _, _) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&acme.decrypt),
            Some(wrong),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let mut blob = B64.decode(good["wrapped_key"].as_str().unwrap()).unwrap();
        blob[1240] ^= 1;
        let mut tampered = good.clone();
        tampered["wrapped_key"] = json!(B64.encode(&blob));
        let (s, _, _) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&acme.decrypt),
            Some(tampered),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, _, _) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&acme.decrypt),
            Some(json!({ "wrapped_key": "!!" })),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = server
            .call_raw(&dec_path, &acme.decrypt, br#"{"wrapped_key":"#.to_vec())
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Reads: public key, metadata, audit, verify, metrics.
        let (s, v, rid) = req(
            &server,
            Method::GET,
            "/v1/tenants/acme/keys/default/public-key",
            Some(&both),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        request_ids.push(rid);
        for path in ["/v1/tenants/acme/keys", "/v1/tenants/acme/keys/k2"] {
            let (s, v, _) = req(&server, Method::GET, path, Some(&acme.admin), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        let (s, v, _) = req(
            &server,
            Method::GET,
            "/v1/audit?limit=5",
            Some(&server.operator),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v, _) = req(
            &server,
            Method::GET,
            "/v1/audit/verify",
            Some(&server.operator),
            None,
        )
        .await;
        assert_eq!((s, v["ok"].clone()), (StatusCode::OK, json!(true)), "{v}");
        let (s, _, _) = req(&server, Method::GET, "/metrics", None, None).await;
        assert_eq!(s, StatusCode::OK);

        // Authentication failures: revoked, unknown and missing tokens.
        let (s, _, _) = req(
            &server,
            Method::DELETE,
            &format!("/v1/tenants/acme/tokens/{both_id}"),
            Some(&acme.admin),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _, _) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&both),
            Some(good.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let bogus = format!("pqkms_{}", "5a".repeat(32));
        secrets.token("unknown", &bogus);
        let (s, _, _) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&bogus),
            Some(good.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = req(&server, Method::POST, &dec_path, None, Some(good.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // A restart: root key loaded again, private keys unsealed from the database.
        server.restart().await;
        let (s, d, rid) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&acme.decrypt),
            Some(good.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        request_ids.push(rid);

        // An internal error on the decrypt path (audit append blocked): the data key was opened
        // in the server, and the cause is logged; the key must not be.
        let (block, unblock) = match backend {
            Backend::Sqlite => (
                "CREATE TRIGGER block_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'blocked'); END;",
                "DROP TRIGGER block_audit;",
            ),
            Backend::Postgres => (
                "CREATE FUNCTION block_audit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'blocked'; END $$; \
                 CREATE TRIGGER block_audit BEFORE INSERT ON audit_log \
                 FOR EACH ROW EXECUTE FUNCTION block_audit();",
                "DROP TRIGGER block_audit ON audit_log; DROP FUNCTION block_audit();",
            ),
        };
        exec(&server, block).await;
        let (s, v, failed_rid) = req(
            &server,
            Method::POST,
            &dec_path,
            Some(&acme.decrypt),
            Some(good.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        exec(&server, unblock).await;

        // Root key and sealed private keys.
        let (root_line, root) = root_key_bytes(&server);
        secrets.add("root key file line", root_line);
        secrets.bytes("root key", &root);
        let sealed = sealed_private_keys(&server).await;
        assert_eq!(sealed.len(), 2, "one version per key");
        for (i, s) in sealed.iter().enumerate() {
            assert!(s.len() > 64, "sealed key {i} is {} bytes", s.len());
            secrets.blob(&format!("sealed private key {i}"), s);
        }

        // The matcher itself finds secrets the way a careless log line would carry them.
        let data_key = first_data_key.expect("a data key was returned");
        let mut embedded = vec![7u8];
        embedded.extend_from_slice(&sealed[1]);
        for careless in [
            format!("DEBUG auth: header=\"Bearer {}\"", acme.decrypt),
            format!("DEBUG x: token_hex={}", &acme.encrypt["pqkms_".len()..]),
            format!("TRACE keys: dk={data_key:?}"),
            format!("TRACE keys: dk={}", hex::encode(&data_key)),
            format!(
                "TRACE keys: body={{\"plaintext\":\"{}\"}}",
                B64.encode(&data_key)
            ),
            format!("DEBUG root: {}", hex::encode(&root)),
            format!("DEBUG row: sealed={:?}", &sealed[0][30..60]),
            format!("DEBUG row: sealed={}", hex::encode(&sealed[0][40..])),
            format!("DEBUG row: blob={}", B64.encode(&embedded)),
        ] {
            assert!(
                !secrets.found(&careless).is_empty(),
                "matcher misses: {careless}"
            );
        }

        // `Debug` of the config shows neither the root key nor a database password.
        let shown = format!("{:?}", server.config);
        assert!(shown.contains("max_body_bytes"), "{shown}");
        secrets.assert_absent(&shown, backend);
        let mut with_secrets = server.config.clone();
        with_secrets.database_url = Some(
            "postgres://kms:Sup3r-S3cret-pw@db.internal:5432/kms?password=Sup3r-S3cret-pw".into(),
        );
        with_secrets.root_key_inline = Some(root_line_secret(&root));
        let shown = format!("{with_secrets:?}");
        assert!(
            !shown.contains("Sup3r-S3cret-pw"),
            "{backend:?}: database password in Debug: {shown}"
        );
        assert!(shown.contains("db.internal"), "{shown}");
        secrets.assert_absent(&shown, backend);

        server.stop().await;

        // The capture works and saw this run: startup, request ids, the logged 500 cause...
        let log = capture.text()[log_start..].to_owned();
        assert!(
            log.contains("pqkms listening"),
            "{backend:?}: startup line not captured"
        );
        if backend == Backend::Postgres {
            assert!(
                log.contains(":***@"),
                "{backend:?}: the database URL is not logged redacted"
            );
        }
        assert!(
            log.lines().any(|l| l.contains(&failed_rid)
                && l.contains("internal error")
                && l.contains("blocked")),
            "{backend:?}: the 500's cause was not logged with its request id {failed_rid}"
        );
        for rid in &request_ids {
            assert!(rid.starts_with("req_"), "{rid}");
            assert!(
                log.contains(rid.as_str()),
                "{backend:?}: request {rid} not in the log"
            );
        }
        // ... and no secret.
        eprintln!(
            "{backend:?}: {} log bytes, {} secret forms checked",
            log.len(),
            secrets.0.len()
        );
        secrets.assert_absent(&log, backend);
        // Nothing earlier either (the whole capture).
        secrets.assert_absent(&capture.text(), backend);
    }
}

fn root_line_secret(root: &[u8]) -> secrecy::SecretString {
    format!("pqkms-root-key-v1 1 {}", hex::encode(root)).into()
}

const DB_PASSWORD: &str = "pqkms-test-db-password-7f3a9c";

/// `postgres://user@host/db` -> `postgres://user:<DB_PASSWORD>@host/db`; a URL that already has a
/// password is left alone.
fn with_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if !rest[..at].contains(':') => {
            format!("{scheme}://{}:{DB_PASSWORD}{}", &rest[..at], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// The password in a database URL, if any.
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let (_, pw) = rest[..at].split_once(':')?;
    (!pw.is_empty()).then(|| pw.to_owned())
}
