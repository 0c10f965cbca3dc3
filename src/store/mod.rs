//! Persistence. [`Store`] is what the rest of the service sees; [`SqlStore`] implements it for
//! SQLite (embedded default) and PostgreSQL (several nodes).
//!
//! Both backends share one implementation through sqlx's `Any` driver: the schema and queries are
//! portable SQL, and the few differences (migrations, connection pragmas) live in [`Backend`].
//! Every state change runs in one transaction together with its audit entry, so a change without
//! its audit record (or the reverse) cannot be committed.

mod sql;

use async_trait::async_trait;

pub use sql::{Backend, SqlStore};

use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};

/// Why a store call failed.
#[derive(Debug)]
pub enum StoreError {
    /// A uniqueness constraint: the name or id is taken.
    Conflict,
    /// The row to change does not exist.
    NotFound,
    /// The database failed (unreachable, I/O, corrupt). The cause is for the log only.
    Database(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("conflict"),
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Database(cause) => write!(f, "database error: {cause}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// A tenant row.
#[derive(Debug, Clone)]
pub struct TenantRow {
    /// 32 hex digits.
    pub id: String,
    /// Unique name, `[a-z0-9-]{1,64}`.
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A key row.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// 32 hex digits.
    pub id: String,
    /// Owning tenant id.
    pub tenant_id: String,
    /// Unique within the tenant.
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// One version of a key. `sealed_private` is the `PQSK` blob (sealed under the root key).
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Key id.
    pub key_id: String,
    /// Version number, from 1.
    pub version: i64,
    /// `enabled` (the only state until lifecycle management lands).
    pub state: String,
    /// Sealed private half.
    pub sealed_private: Vec<u8>,
    /// Root key version that sealed it.
    pub root_version: i64,
    /// `PQPK` export of the public half.
    pub public_key: Vec<u8>,
    /// Public key fingerprint (hex).
    pub fingerprint: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A token row: only the SHA-256 of the token is stored.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Public id (shown to admins, used to revoke).
    pub id: String,
    /// Hex SHA-256 of the bearer token.
    pub token_hash: String,
    /// `None` for operator tokens.
    pub tenant_id: Option<String>,
    /// Name of that tenant (read through a join; ignored on insert).
    pub tenant_name: Option<String>,
    /// Comma-separated roles.
    pub roles: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds, if the token expires.
    pub expires_at: Option<i64>,
    /// Unix milliseconds, if revoked.
    pub revoked_at: Option<i64>,
}

/// The persistence the service needs. Methods that change state take the audit entry that
/// records the change and commit both or neither.
#[async_trait]
pub trait Store: Send + Sync {
    /// The database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// No tenant and no token exists yet (first start).
    async fn is_empty(&self) -> StoreResult<bool>;

    /// Create a tenant with its first key and version.
    async fn create_tenant(
        &self,
        tenant: &TenantRow,
        key: &KeyRow,
        version: &VersionRow,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Create a key with its first version.
    async fn create_key(
        &self,
        key: &KeyRow,
        version: &VersionRow,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Store a new token.
    async fn create_token(&self, token: &TokenRow, audit: NewAuditEntry)
    -> StoreResult<AuditEntry>;

    /// Revoke a token of `tenant_id` (`None`: an operator token). `NotFound` if there is none.
    async fn revoke_token(
        &self,
        tenant_id: Option<&str>,
        token_id: &str,
        now: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Append an audit entry on its own (key uses, refusals).
    async fn append_audit(&self, audit: NewAuditEntry) -> StoreResult<AuditEntry>;

    /// Look a tenant up by name.
    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRow>>;

    /// Look a key up by tenant and name.
    async fn key_by_name(&self, tenant_id: &str, name: &str) -> StoreResult<Option<KeyRow>>;

    /// The keys of a tenant, by name.
    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRow>>;

    /// All versions of a key, oldest first.
    async fn versions(&self, key_id: &str) -> StoreResult<Vec<VersionRow>>;

    /// One version of a key.
    async fn version(&self, key_id: &str, version: i64) -> StoreResult<Option<VersionRow>>;

    /// A token by the hash of its secret.
    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<TokenRow>>;

    /// Audit entries matching `query`, oldest first.
    async fn audit_entries(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;

    /// The head row: (newest sequence number, its hash).
    async fn audit_head(&self) -> StoreResult<(i64, String)>;

    /// Close the connection pool cleanly.
    async fn close(&self);
}
