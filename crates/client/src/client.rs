//! The HTTP client for the v1 API: configuration, retries, error mapping, and one method per route.

use core::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pqkms_envelope::{DataKey, EncryptionContext, TenantPublicKey, WrappedDataKey};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use crate::cache::{CacheLimits, KeyCache};
use crate::error::{Error, Result, ServiceError};

/// When and how often a failed request is tried again.
///
/// Only failures where the service certainly did not act, or asked to be retried, are retried:
/// a connection that could not be established, and `503 unavailable`. A timeout is **not**
/// retried (the service may have generated and audited a key already), nor is any other status.
/// Note that `503` can also mean the server's request time limit struck mid-operation; a retried
/// `create_*` may then answer `409 conflict` for the object the first attempt created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = never retry).
    pub max_retries: u32,
    /// Delay before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Upper bound of one delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three retries: about 0.1 s, 0.2 s and 0.4 s apart (with jitter), at most 2 s each.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The delay before retry number `retry` (0-based): exponential, capped, with "equal jitter"
    /// (uniform in [d/2, d]) so that many clients failing together do not retry in lockstep.
    fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX);
        let full = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let half = full / 2;
        let jitter = getrandom::u32().unwrap_or(0);
        half + half.mul_f64(f64::from(jitter) / f64::from(u32::MAX))
    }
}

/// The roles a tenant token can carry (`operator` cannot be granted through the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manage the tenant's keys and tokens, read its audit entries and public keys.
    TenantAdmin,
    /// Generate data keys, read public keys.
    Encrypt,
    /// Decrypt data keys.
    Decrypt,
}

/// Answer of [`Client::create_tenant`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TenantCreated {
    /// The tenant's name.
    pub tenant: String,
    /// Its 32-hex-digit id (bound into every wrapped key).
    pub id: String,
    /// The key created with it (`"default"`).
    pub default_key: String,
}

/// Answer of [`Client::create_token`]: the only time the token is ever shown.
#[derive(Debug)]
pub struct CreatedToken {
    /// The bearer token. Store it in your secret store; it is never shown again.
    pub token: SecretString,
    /// The token id (`tok_…`), not secret: what the audit log records and revocation takes.
    pub id: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Expiry, Unix milliseconds, if any.
    pub expires_at: Option<i64>,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyVersion {
    /// Version number, from 1.
    pub version: u32,
    /// `enabled`, `disabled`, `pending_destruction` or `destroyed`.
    pub state: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Fingerprint of the version's public key (32 hex digits).
    pub fingerprint: String,
    /// When a scheduled destruction happens (Unix ms), while `pending_destruction`.
    #[serde(default)]
    pub destroy_at: Option<i64>,
    /// When the material was destroyed (Unix ms), once `destroyed`.
    #[serde(default)]
    pub destroyed_at: Option<i64>,
}

/// Metadata of one key (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    /// The key's name within its tenant.
    pub name: String,
    /// Its 32-hex-digit id (bound into every wrapped key).
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// The newest enabled version: the one new data keys are wrapped to.
    pub current_version: Option<u32>,
    /// Versions below this are retired: their data keys no longer decrypt (they still re-wrap).
    #[serde(default = "first_version")]
    pub min_decryption_version: u32,
    /// Scheduled rotation period, seconds (`None`: no scheduled rotation).
    #[serde(default)]
    pub rotation_period_secs: Option<u64>,
    /// When the next scheduled rotation is due (Unix ms).
    #[serde(default)]
    pub next_rotation_at: Option<i64>,
    /// All versions, oldest first.
    pub versions: Vec<KeyVersion>,
}

fn first_version() -> u32 {
    1
}

/// Answer of [`Client::audit_verify`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuditVerification {
    /// Every entry and link checks out.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// Hash of the newest entry: anchor it somewhere the database's writers cannot reach.
    pub head: String,
    /// First entry that does not fit, if any.
    #[serde(default)]
    pub first_bad_seq: Option<u64>,
    /// What is wrong with it.
    #[serde(default)]
    pub problem: Option<String>,
}

/// Answer of [`Client::generate_data_key`].
pub struct GeneratedDataKey {
    /// The data key wrapped to the key's current version and bound to the context: store it.
    pub wrapped: WrappedDataKey,
    /// The plaintext data key (zeroized on drop), unless `include_plaintext` was false.
    pub plaintext: Option<DataKey>,
    /// The key version it is wrapped to.
    pub version: u32,
}

impl fmt::Debug for GeneratedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedDataKey")
            .field("wrapped", &self.wrapped)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "[REDACTED]"))
            .field("version", &self.version)
            .finish()
    }
}

/// Answer of [`Client::rotate_key`]: the new version, current from now on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RotatedKey {
    /// The new version number.
    pub version: u32,
    /// Fingerprint of its public key (32 hex digits): pin it for offline wrapping.
    pub fingerprint: String,
}

/// A stored wrapped data key moved to the key's current version (answer of [`Client::rewrap`]).
/// Replace the stored wrapped key with [`RewrappedKey::wrapped`]; the data it protects does not
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrappedKey {
    /// The same data key, wrapped to `version` under the same context.
    pub wrapped: WrappedDataKey,
    /// The version it is wrapped to now (the key's current version).
    pub version: u32,
    /// The version it was wrapped to before (equal to `version` if it already was current).
    pub from_version: u32,
}

/// Largest number of items [`Client::rewrap_batch`] takes per call (the service's limit). The
/// service's request body limit also applies: a wrapped key is 1672 base64 characters, so with
/// the default 64 KiB limit about 35 items (with a short context) fit in one request; more
/// answer [`Error::BodyTooLarge`].
pub const MAX_REWRAP_BATCH: usize = 100;

/// A scheduled-rotation setting for [`KeyConfig::rotation_period`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPeriod {
    /// Rotate this often (whole seconds, rounded up; at least one minute).
    Every(Duration),
    /// No scheduled rotation.
    Off,
}

/// What [`Client::configure_key`] changes. `None` leaves a setting as it is, so
/// `KeyConfig::default()` changes nothing and only reads the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyConfig {
    /// Retire every version below this one (their data keys stop decrypting; they still
    /// re-wrap). Between 1 and the newest version.
    pub min_decryption_version: Option<u32>,
    /// Scheduled rotation.
    pub rotation_period: Option<RotationPeriod>,
}

/// A key's retirement floor and rotation policy (answer of [`Client::configure_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyPolicy {
    /// The key's name.
    pub key: String,
    /// Versions below this are retired.
    pub min_decryption_version: u32,
    /// Scheduled rotation period, seconds (`None`: off).
    pub rotation_period_secs: Option<u64>,
    /// When the next scheduled rotation is due (Unix ms).
    pub next_rotation_at: Option<i64>,
}

/// Answer of [`Client::disable_key`] and [`Client::enable_key`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyStateChange {
    /// The key's name.
    pub key: String,
    /// The version changed, or `None` for every version the change applied to.
    pub version: Option<u32>,
    /// The state it is in now: `disabled` or `enabled`.
    pub state: String,
}

/// Answer of [`Client::destroy_key`]: when the material will be destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DestroyScheduled {
    /// The key's name.
    pub key: String,
    /// The version scheduled, or `None` for every enabled or disabled version.
    pub version: Option<u32>,
    /// When the service's worker destroys it (Unix ms); [`Client::cancel_destroy_key`] until then.
    pub destroy_at: i64,
}

/// Answer of [`Client::cancel_destroy_key`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DestroyCancelled {
    /// The key's name.
    pub key: String,
    /// The version whose destruction was cancelled, or `None` for every pending version.
    pub version: Option<u32>,
    /// Always `true` on success.
    pub cancelled: bool,
}

/// Answer of [`Client::reseal_root`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResealResult {
    /// The root key version everything is sealed under now.
    pub root_version: u32,
    /// Key versions re-sealed by this call.
    pub resealed: u64,
    /// Key versions still sealed under another root key (call again until 0).
    pub remaining: u64,
}

/// Counters of what a [`Client`] (and every clone of it) did, for tests and metrics.
/// Operation counters count logical calls; `requests` counts HTTP attempts, retries included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Of those, retries.
    pub retries: u64,
    /// `generate_data_key` calls to the service.
    pub data_keys_generated: u64,
    /// `decrypt_data_key` calls to the service.
    pub data_keys_decrypted: u64,
    /// `public_key` calls to the service.
    pub public_key_reads: u64,
    /// `blind-index-key` calls to the service.
    pub blind_index_keys: u64,
    /// Data keys generated and wrapped locally with a pinned public key (no service call).
    pub data_keys_wrapped_offline: u64,
    /// Records that reused a cached data key for encryption.
    pub encrypt_cache_hits: u64,
    /// Records that reused a cached data key for decryption.
    pub decrypt_cache_hits: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) data_keys_generated: AtomicU64,
    pub(crate) data_keys_decrypted: AtomicU64,
    pub(crate) public_key_reads: AtomicU64,
    pub(crate) blind_index_keys: AtomicU64,
    pub(crate) data_keys_wrapped_offline: AtomicU64,
    pub(crate) encrypt_cache_hits: AtomicU64,
    pub(crate) decrypt_cache_hits: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            requests: get(&self.requests),
            retries: get(&self.retries),
            data_keys_generated: get(&self.data_keys_generated),
            data_keys_decrypted: get(&self.data_keys_decrypted),
            public_key_reads: get(&self.public_key_reads),
            blind_index_keys: get(&self.blind_index_keys),
            data_keys_wrapped_offline: get(&self.data_keys_wrapped_offline),
            encrypt_cache_hits: get(&self.encrypt_cache_hits),
            decrypt_cache_hits: get(&self.decrypt_cache_hits),
        }
    }
}

/// Configures a [`Client`]. Start with [`Client::builder`].
pub struct ClientBuilder {
    base: String,
    token: SecretString,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    cache: CacheLimits,
    root_certificates: Vec<reqwest::Certificate>,
    allow_insecure_http: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base", &self.base)
            .field("token", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("cache", &self.cache)
            .field("root_certificates", &self.root_certificates.len())
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

impl ClientBuilder {
    /// Whole-request timeout (default 30 s, the service's own request limit).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connection timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Limits of the data-key cache (default [`CacheLimits::default`];
    /// [`CacheLimits::disabled`] for one service call per record).
    pub fn cache_limits(mut self, limits: CacheLimits) -> Self {
        self.cache = limits;
        self
    }

    /// Trust this CA in addition to the platform's roots (a private PKI in front of pqkms).
    pub fn add_root_certificate(mut self, certificate: reqwest::Certificate) -> Self {
        self.root_certificates.push(certificate);
        self
    }

    /// Allow `http://` to a host other than the loopback interface. Off by default: the bearer
    /// token and plaintext data keys would cross the network in the clear. Use only behind a
    /// TLS-terminating sidecar on the same host or network namespace.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Build the client.
    pub fn build(self) -> Result<Client> {
        let base = Url::parse(&self.base)
            .map_err(|e| Error::Config(format!("base URL {:?}: {e}", self.base)))?;
        match base.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http || is_loopback(&base) => {}
            "http" => {
                return Err(Error::Config(
                    "plain http to a non-loopback host sends the token and data keys in the \
                     clear; use https (or allow_insecure_http)"
                        .into(),
                ));
            }
            other => return Err(Error::Config(format!("unsupported URL scheme {other:?}"))),
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config(
                "base URL must be scheme://host[:port][/path]".into(),
            ));
        }
        self.cache.validate()?;
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("pqkms-client/", env!("CARGO_PKG_VERSION")));
        if !self.root_certificates.is_empty() {
            http = http.tls_certs_merge(self.root_certificates);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token: self.token,
                retry: self.retry,
                counters: Counters::default(),
                cache: KeyCache::new(self.cache),
            }),
        })
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// A client of one pqkms service with one bearer token. Cheap to clone (an `Arc`); clones share
/// the connection pool, the data-key cache and the [`ClientStats`] counters.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
    retry: RetryPolicy,
    pub(crate) counters: Counters,
    pub(crate) cache: KeyCache,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .field("token", &"[REDACTED]")
            .field("retry", &self.inner.retry)
            .field("cache", &self.inner.cache.limits())
            .finish()
    }
}

/// A successful answer's body. Wiped on drop: data-key answers carry plaintext keys. (The HTTP
/// stack's own receive buffers are outside this crate's reach.)
type Body = Zeroizing<Vec<u8>>;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    destroyed_at: Option<i64>,
}

impl ErrorDetail {
    fn into_error(self, status: u16, request_id: Option<String>) -> Error {
        Error::from_service(ServiceError {
            status,
            code: self.code,
            message: self.message,
            request_id,
            destroyed_at: self.destroyed_at,
        })
    }
}

impl Client {
    /// A client with default settings for the service at `base_url` (e.g.
    /// `https://pqkms.internal:8650`) authenticating with `token`.
    pub fn new(base_url: &str, token: impl Into<SecretString>) -> Result<Client> {
        Client::builder(base_url, token).build()
    }

    /// Configure a client.
    pub fn builder(base_url: &str, token: impl Into<SecretString>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.to_owned(),
            token: token.into(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            cache: CacheLimits::default(),
            root_certificates: Vec::new(),
            allow_insecure_http: false,
        }
    }

    /// What this client (and its clones) did so far.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot()
    }

    /// Drop every cached data key now (they are zeroized as the last record using each ends).
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| Error::Config("base URL cannot take a path".into()))?;
            path.pop_if_empty();
            // Each segment is percent-encoded: a name cannot smuggle `/`, `?` or `..` into the path.
            path.extend(segments);
        }
        Ok(url)
    }

    /// Send one request (with retries) and return the body of a 2xx answer.
    async fn call(&self, method: Method, url: Url, body: Option<Vec<u8>>) -> Result<Body> {
        self.call_with_id(method, url, body).await.map(|(b, _)| b)
    }

    /// [`Client::call`], also returning the answer's `X-Request-Id`.
    async fn call_with_id(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<(Body, Option<String>)> {
        let inner = &self.inner;
        let mut retry = 0u32;
        loop {
            let mut auth = Zeroizing::new(String::with_capacity(7 + 70));
            auth.push_str("Bearer ");
            auth.push_str(inner.token.expose_secret());
            let mut auth = HeaderValue::from_str(&auth)
                .map_err(|_| Error::Config("the token contains invalid characters".into()))?;
            auth.set_sensitive(true);
            let mut req = inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, auth);
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            bump(&inner.counters.requests);
            let can_retry = retry < inner.retry.max_retries;
            let outcome = req.send().await;
            match outcome {
                Err(e) if e.is_connect() && can_retry => {}
                Err(e) => return Err(Error::from_transport(e)),
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && can_retry => {}
                Ok(resp) => return read_answer(resp).await,
            }
            tokio::time::sleep(inner.retry.delay(retry)).await;
            retry += 1;
            bump(&inner.counters.retries);
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let url = self.url(segments)?;
        let body = body
            .map(|b| serde_json::to_vec(&b))
            .transpose()
            .map_err(|e| Error::Config(format!("cannot encode the request: {e}")))?;
        let answer = self.call(method, url, body).await?;
        parse(&answer)
    }

    // ------------------------------------------------------------------ operator

    /// `POST /v1/tenants` (operator): create a tenant and its `default` key.
    pub async fn create_tenant(&self, name: &str) -> Result<TenantCreated> {
        self.call_json(
            Method::POST,
            &["v1", "tenants"],
            Some(json!({ "name": name })),
        )
        .await
    }

    /// `GET /v1/audit/verify` (operator): recompute the audit hash chain.
    pub async fn audit_verify(&self) -> Result<AuditVerification> {
        self.call_json(Method::GET, &["v1", "audit", "verify"], None)
            .await
    }

    // ------------------------------------------------------------------ tokens

    /// `POST /v1/tenants/{tenant}/tokens` (operator; tenant-admin): a new token with `roles`,
    /// expiring after `ttl` (rounded up to whole seconds) if given.
    pub async fn create_token(
        &self,
        tenant: &str,
        roles: &[Role],
        ttl: Option<Duration>,
    ) -> Result<CreatedToken> {
        #[derive(Deserialize)]
        struct Raw {
            token: String,
            id: String,
            roles: Vec<Role>,
            expires_at: Option<i64>,
        }
        let ttl_seconds = ttl.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let raw: Raw = self
            .call_json(
                Method::POST,
                &["v1", "tenants", tenant, "tokens"],
                Some(json!({ "roles": roles, "ttl_seconds": ttl_seconds })),
            )
            .await?;
        Ok(CreatedToken {
            token: SecretString::from(raw.token),
            id: raw.id,
            roles: raw.roles,
            expires_at: raw.expires_at,
        })
    }

    /// `DELETE /v1/tenants/{tenant}/tokens/{id}` (operator; tenant-admin).
    pub async fn revoke_token(&self, tenant: &str, token_id: &str) -> Result<()> {
        let url = self.url(&["v1", "tenants", tenant, "tokens", token_id])?;
        self.call(Method::DELETE, url, None).await.map(drop)
    }

    // ------------------------------------------------------------------ keys

    /// `POST /v1/tenants/{tenant}/keys` (tenant-admin).
    pub async fn create_key(&self, tenant: &str, name: &str) -> Result<KeyInfo> {
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys"],
            Some(json!({ "name": name })),
        )
        .await
    }

    /// `GET /v1/tenants/{tenant}/keys` (tenant-admin).
    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyInfo>> {
        #[derive(Deserialize)]
        struct Raw {
            keys: Vec<KeyInfo>,
        }
        let raw: Raw = self
            .call_json(Method::GET, &["v1", "tenants", tenant, "keys"], None)
            .await?;
        Ok(raw.keys)
    }

    /// `GET /v1/tenants/{tenant}/keys/{key}` (tenant-admin).
    pub async fn get_key(&self, tenant: &str, key: &str) -> Result<KeyInfo> {
        self.call_json(Method::GET, &["v1", "tenants", tenant, "keys", key], None)
            .await
    }

    /// `GET /v1/tenants/{tenant}/keys/{key}/public-key` (encrypt; tenant-admin): the current
    /// version's public key, parsed and validated. This does **not** authenticate the key: the
    /// answer is only as trustworthy as the connection. For offline wrapping use
    /// [`Client::pinned_public_key`](crate::Client::pinned_public_key), which checks a fingerprint
    /// you obtained through a channel you trust.
    pub async fn public_key(&self, tenant: &str, key: &str) -> Result<TenantPublicKey> {
        #[derive(Deserialize)]
        struct Raw {
            version: u32,
            public_key: String,
            fingerprint: String,
        }
        bump(&self.inner.counters.public_key_reads);
        let raw: Raw = self
            .call_json(
                Method::GET,
                &["v1", "tenants", tenant, "keys", key, "public-key"],
                None,
            )
            .await?;
        let bytes = B64
            .decode(raw.public_key.as_bytes())
            .map_err(|_| Error::InvalidResponse("public_key is not base64".into()))?;
        let public = TenantPublicKey::from_bytes(&bytes)
            .map_err(|e| Error::InvalidResponse(format!("public_key: {e}")))?;
        if public.key_ref().version != raw.version
            || !public
                .fingerprint()
                .to_string()
                .eq_ignore_ascii_case(&raw.fingerprint)
        {
            return Err(Error::InvalidResponse(
                "public key does not match its stated version or fingerprint".into(),
            ));
        }
        Ok(public)
    }

    // ------------------------------------------------------------------ data keys

    /// `POST /v1/tenants/{tenant}/keys/{key}/data-key` (encrypt): a fresh data key wrapped to the
    /// key's current version under `context`, with its plaintext if `include_plaintext`.
    ///
    /// Most applications use an [`Encryptor`](crate::Encryptor) instead, which calls this once
    /// per record (or less, with the cache) and never exposes the key.
    pub async fn generate_data_key(
        &self,
        tenant: &str,
        key: &str,
        context: &EncryptionContext,
        include_plaintext: bool,
    ) -> Result<GeneratedDataKey> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            wrapped_key: &'a str,
            #[serde(borrow, default)]
            plaintext: Option<&'a str>,
            version: u32,
        }
        bump(&self.inner.counters.data_keys_generated);
        let url = self.url(&["v1", "tenants", tenant, "keys", key, "data-key"])?;
        let body = request_body(&json!({
            "context": context_json(context),
            "include_plaintext": include_plaintext,
        }))?;
        let answer = self.call(Method::POST, url, Some(body)).await?;
        let raw: Raw<'_> = parse(&answer)?;
        let wrapped = decode_wrapped(raw.wrapped_key)?;
        if wrapped.context_digest() != &context.digest() {
            return Err(Error::InvalidResponse(
                "wrapped key is bound to another context".into(),
            ));
        }
        let plaintext = match (raw.plaintext, include_plaintext) {
            (Some(p), true) => Some(decode_data_key(p)?),
            (None, false) => None,
            _ => {
                return Err(Error::InvalidResponse(
                    "plaintext present or missing against include_plaintext".into(),
                ));
            }
        };
        Ok(GeneratedDataKey {
            wrapped,
            plaintext,
            version: raw.version,
        })
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/decrypt` (decrypt): unwrap a stored data key. A key
    /// that does not open with this tenant, key and context is [`Error::DecryptionFailed`].
    pub async fn decrypt_data_key(
        &self,
        tenant: &str,
        key: &str,
        wrapped_key: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            plaintext: &'a str,
        }
        bump(&self.inner.counters.data_keys_decrypted);
        let url = self.url(&["v1", "tenants", tenant, "keys", key, "decrypt"])?;
        let body = request_body(&json!({
            "wrapped_key": B64.encode(wrapped_key),
            "context": context_json(context),
        }))?;
        let answer = self.call(Method::POST, url, Some(body)).await?;
        let raw: Raw<'_> = parse(&answer)?;
        decode_data_key(raw.plaintext)
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/blind-index-key` (encrypt or decrypt): the 32-byte
    /// blind-index key of `field`, derived by the service from material it holds (never a data
    /// key). Most applications use [`Client::blind_index`](crate::Client::blind_index).
    pub(crate) async fn blind_index_key(
        &self,
        tenant: &str,
        key: &str,
        field: &str,
    ) -> Result<Zeroizing<[u8; 32]>> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            key: &'a str,
        }
        bump(&self.inner.counters.blind_index_keys);
        let url = self.url(&["v1", "tenants", tenant, "keys", key, "blind-index-key"])?;
        let body = request_body(&json!({ "field": field }))?;
        let answer = self.call(Method::POST, url, Some(body)).await?;
        let raw: Raw<'_> = parse(&answer)?;
        decode_32(raw.key, "key")
    }

    // ------------------------------------------------------------------ key lifecycle

    /// `POST /v1/tenants/{tenant}/keys/{key}/rotate` (tenant-admin): add a version and make it
    /// current. Existing wrapped keys keep their version until re-wrapped.
    pub async fn rotate_key(&self, tenant: &str, key: &str) -> Result<RotatedKey> {
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys", key, "rotate"],
            None,
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/rewrap` (decrypt): move a stored wrapped data key to
    /// the key's current version without the data key leaving the service. The `context` must be
    /// the one it was generated with; the new wrapped key is bound to it too. A retired version
    /// re-wraps (that is the way off it); a disabled one is [`Error::KeyDisabled`], a destroyed
    /// one [`Error::KeyDestroyed`], one that does not open [`Error::DecryptionFailed`].
    pub async fn rewrap(
        &self,
        tenant: &str,
        key: &str,
        wrapped_key: &[u8],
        context: &EncryptionContext,
    ) -> Result<RewrappedKey> {
        let url = self.url(&["v1", "tenants", tenant, "keys", key, "rewrap"])?;
        let body = request_body(&rewrap_item(wrapped_key, context))?;
        let answer = self.call(Method::POST, url, Some(body)).await?;
        let raw: RawRewrapped<'_> = parse(&answer)?;
        raw.check(context)
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/rewrap-batch` (decrypt): [`Client::rewrap`] for up
    /// to [`MAX_REWRAP_BATCH`] wrapped keys (each with its context) in one request — within the
    /// service's body limit, about 35 by default (see [`MAX_REWRAP_BATCH`]). The outer `Result`
    /// is the request's (a server-side failure fails the whole batch: send it again); the inner
    /// ones are each item's, in order — check every one. Each item is audited by the service.
    pub async fn rewrap_batch(
        &self,
        tenant: &str,
        key: &str,
        items: &[(&[u8], &EncryptionContext)],
    ) -> Result<Vec<Result<RewrappedKey>>> {
        #[derive(Deserialize)]
        struct Raw {
            results: Vec<serde_json::Value>,
        }
        if items.len() > MAX_REWRAP_BATCH {
            return Err(Error::Config(format!(
                "at most {MAX_REWRAP_BATCH} items per re-wrap batch"
            )));
        }
        let url = self.url(&["v1", "tenants", tenant, "keys", key, "rewrap-batch"])?;
        let body: Vec<serde_json::Value> = items
            .iter()
            .map(|(wrapped, context)| rewrap_item(wrapped, context))
            .collect();
        let body = request_body(&json!({ "items": body }))?;
        let (answer, request_id) = self.call_with_id(Method::POST, url, Some(body)).await?;
        let raw: Raw = parse(&answer)?;
        if raw.results.len() != items.len() {
            return Err(Error::InvalidResponse(format!(
                "{} results for {} items",
                raw.results.len(),
                items.len()
            )));
        }
        raw.results
            .iter()
            .zip(items)
            .map(|(result, (_, context))| {
                if let Some(error) = result.get("error") {
                    let detail = ErrorDetail::deserialize(error)
                        .map_err(|e| Error::InvalidResponse(format!("batch item error: {e}")))?;
                    let status = crate::error::status_of_code(&detail.code);
                    return Ok(Err(detail.into_error(status, request_id.clone())));
                }
                let raw = RawRewrapped::deserialize(result)
                    .map_err(|e| Error::InvalidResponse(format!("batch item: {e}")))?;
                Ok(raw.check(context))
            })
            .collect()
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/config` (tenant-admin): set the retirement floor
    /// and the scheduled rotation; answers the key's policy.
    pub async fn configure_key(
        &self,
        tenant: &str,
        key: &str,
        config: &KeyConfig,
    ) -> Result<KeyPolicy> {
        let mut body = serde_json::Map::new();
        if let Some(min) = config.min_decryption_version {
            body.insert("min_decryption_version".into(), json!(min));
        }
        match config.rotation_period {
            None => {}
            Some(RotationPeriod::Off) => {
                body.insert("rotation_period".into(), json!("off"));
            }
            Some(RotationPeriod::Every(period)) => {
                body.insert("rotation_period".into(), json!(seconds(period)));
            }
        }
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys", key, "config"],
            Some(serde_json::Value::Object(body)),
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/disable` (tenant-admin): suspend one version, or
    /// (`None`) every enabled version. Its data keys answer [`Error::KeyDisabled`] until enabled.
    pub async fn disable_key(
        &self,
        tenant: &str,
        key: &str,
        version: Option<u32>,
    ) -> Result<KeyStateChange> {
        self.set_key_state(tenant, key, version, "disable").await
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/enable` (tenant-admin): undo [`Client::disable_key`].
    pub async fn enable_key(
        &self,
        tenant: &str,
        key: &str,
        version: Option<u32>,
    ) -> Result<KeyStateChange> {
        self.set_key_state(tenant, key, version, "enable").await
    }

    /// `disable` / `enable`: the same request shape on two routes.
    async fn set_key_state(
        &self,
        tenant: &str,
        key: &str,
        version: Option<u32>,
        action: &str,
    ) -> Result<KeyStateChange> {
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys", key, action],
            Some(json!({ "version": version })),
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/destroy` (tenant-admin): schedule the
    /// crypto-shredding of one version, or (`None`) the whole key, after `waiting_period` (whole
    /// seconds, rounded up; default 30 days; at least the service's minimum). Once done, every
    /// data key wrapped to it — and the data under them — is gone: [`Error::KeyDestroyed`].
    pub async fn destroy_key(
        &self,
        tenant: &str,
        key: &str,
        version: Option<u32>,
        waiting_period: Option<Duration>,
    ) -> Result<DestroyScheduled> {
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys", key, "destroy"],
            Some(json!({ "version": version, "waiting_period": waiting_period.map(seconds) })),
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/keys/{key}/cancel-destroy` (tenant-admin): cancel a scheduled
    /// destruction (one version, or every pending one); versions return to their earlier state.
    pub async fn cancel_destroy_key(
        &self,
        tenant: &str,
        key: &str,
        version: Option<u32>,
    ) -> Result<DestroyCancelled> {
        self.call_json(
            Method::POST,
            &["v1", "tenants", tenant, "keys", key, "cancel-destroy"],
            Some(json!({ "version": version })),
        )
        .await
    }

    /// `POST /v1/root-key/reseal` (operator): re-seal key versions under the service's current
    /// root key (step 3 of a root-key rotation). Idempotent: repeat until `remaining` is 0.
    pub async fn reseal_root(&self) -> Result<ResealResult> {
        self.call_json(Method::POST, &["v1", "root-key", "reseal"], None)
            .await
    }
}

/// One re-wrap request item.
fn rewrap_item(wrapped_key: &[u8], context: &EncryptionContext) -> serde_json::Value {
    json!({ "wrapped_key": B64.encode(wrapped_key), "context": context_json(context) })
}

/// A duration as the service's `"<seconds>s"`, rounded up to whole seconds.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

#[derive(Deserialize)]
struct RawRewrapped<'a> {
    wrapped_key: &'a str,
    version: u32,
    from_version: u32,
}

impl RawRewrapped<'_> {
    /// Parse, and check the answer is what was asked for: wrapped to the stated version, under
    /// the same context.
    fn check(self, context: &EncryptionContext) -> Result<RewrappedKey> {
        let wrapped = decode_wrapped(self.wrapped_key)?;
        if wrapped.context_digest() != &context.digest()
            || wrapped.key_ref().version != self.version
        {
            return Err(Error::InvalidResponse(
                "re-wrapped key does not match its stated version or the context".into(),
            ));
        }
        Ok(RewrappedKey {
            wrapped,
            version: self.version,
            from_version: self.from_version,
        })
    }
}

fn request_body(value: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Config(format!("cannot encode the request: {e}")))
}

fn context_json(context: &EncryptionContext) -> serde_json::Map<String, serde_json::Value> {
    context
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect()
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidResponse(e.to_string()))
}

fn decode_wrapped(b64: &str) -> Result<WrappedDataKey> {
    let bytes = B64
        .decode(b64.as_bytes())
        .map_err(|_| Error::InvalidResponse("wrapped_key is not base64".into()))?;
    WrappedDataKey::parse(&bytes).map_err(|e| Error::InvalidResponse(format!("wrapped_key: {e}")))
}

fn decode_32(b64: &str, what: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut bytes = Zeroizing::new([0u8; 33]);
    match B64.decode_slice(b64.as_bytes(), &mut bytes[..]) {
        Ok(32) => {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(&bytes[..32]);
            Ok(out)
        }
        _ => Err(Error::InvalidResponse(format!(
            "{what} is not 32 bytes of base64"
        ))),
    }
}

fn decode_data_key(b64: &str) -> Result<DataKey> {
    let mut bytes = decode_32(b64, "plaintext")?;
    let key = DataKey::from_bytes(&bytes);
    bytes.zeroize();
    Ok(key)
}

async fn read_answer(mut resp: reqwest::Response) -> Result<(Body, Option<String>)> {
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body: Body = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp.chunk().await.map_err(Error::from_transport)? {
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok((body, request_id));
    }
    let detail = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => e.error,
        Err(_) => ErrorDetail {
            code: String::new(),
            message: status.canonical_reason().unwrap_or("error").to_owned(),
            destroyed_at: None,
        },
    };
    Err(detail.into_error(status.as_u16(), request_id))
}
