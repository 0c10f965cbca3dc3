//! Test harness: the real pqkms service (`pqkms::server::start`, as the binary runs it) on SQLite
//! in a temp dir, and clients of it built with this crate.

#![allow(dead_code)]

use std::time::Duration;

use pqkms::config::Config;
use pqkms::server::{Running, start};
use pqkms_client::{CacheLimits, Client, ExposeSecret, RetryPolicy, Role};

pub struct Server {
    pub base: String,
    pub operator: Client,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

/// Tokens of one tenant, one per use.
pub struct Tenant {
    pub name: String,
    pub admin: String,
    /// `encrypt` + `decrypt`: what an application holds.
    pub app: String,
    pub encrypt_only: String,
    pub decrypt_only: String,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// Start with a config tweak (e.g. no minimum destruction waiting period).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        tweak(&mut config);
        let running = start(&config).await.expect("server starts");
        let token = std::fs::read_to_string(config.data_dir.join("operator.token"))
            .expect("operator token written");
        let base = format!("http://{}", running.addr);
        let operator = Client::new(&base, token.trim()).expect("client");
        Server {
            base,
            operator,
            running: Some(running),
            _dir: dir,
        }
    }

    /// One pass of the service's lifecycle worker now (due destructions, scheduled rotations).
    pub async fn tick(&self) {
        let state = &self.running.as_ref().expect("running").state;
        pqkms::http::lifecycle_tick(state)
            .await
            .expect("lifecycle pass");
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    /// A client with `token` and the given cache limits (no retries: a test server either
    /// answers or the test is broken).
    pub fn client(&self, token: &str, cache: CacheLimits) -> Client {
        Client::builder(&self.base, token)
            .cache_limits(cache)
            .retry(RetryPolicy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client")
    }

    /// Create a tenant and its tokens through this crate's client.
    pub async fn tenant(&self, name: &str) -> Tenant {
        self.operator.create_tenant(name).await.expect("tenant");
        let token = |roles: &'static [Role]| async move {
            let t = self
                .operator
                .create_token(name, roles, None)
                .await
                .expect("token");
            t.token.expose_secret().to_owned()
        };
        Tenant {
            name: name.to_owned(),
            admin: token(&[Role::TenantAdmin]).await,
            app: token(&[Role::Encrypt, Role::Decrypt]).await,
            encrypt_only: token(&[Role::Encrypt]).await,
            decrypt_only: token(&[Role::Decrypt]).await,
        }
    }
}

pub fn context(pairs: &[(&str, &str)]) -> pqkms_client::EncryptionContext {
    pairs.iter().map(|&(k, v)| (k, v)).collect()
}
