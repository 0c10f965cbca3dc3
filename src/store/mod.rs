//! Persistence. [`Store`] is what the rest of the service sees; [`SqlStore`] implements it for
//! SQLite (embedded default) and PostgreSQL (several nodes).
//!
//! Both backends share one implementation through sqlx's `Any` driver: the schema and queries are
//! portable SQL, and the few differences (migrations, connection pragmas) live in [`Backend`].
//! Every state change runs in one transaction together with its audit entry, so a change without
//! its audit record (or the reverse) cannot be committed.

mod directory;
mod sql;
#[cfg(test)]
mod test_db;
mod writer;

use async_trait::async_trait;

pub use directory::{Directory, Read, guard};
pub use sql::{Backend, SqlStore};

use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};

/// Why a store call failed.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// A uniqueness constraint: the name or id is taken.
    Conflict,
    /// The row to change does not exist.
    NotFound,
    /// The database failed (unreachable, I/O, corrupt). The cause is for the log only.
    Database(String),
    /// A key use's [`UseGuard`] no longer holds: the token or key changed since it was read.
    /// Nothing was written; run the request again on fresh rows.
    Stale,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("conflict"),
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Database(cause) => write!(f, "database error: {cause}"),
            StoreError::Stale => f.write_str("token or key state changed during the request"),
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
    /// Versions below this refuse to decrypt (retired).
    pub min_decryption_version: i64,
    /// Automatic rotation period, seconds.
    pub rotation_period_secs: Option<i64>,
    /// When the next automatic rotation is due (Unix ms).
    pub next_rotation_at: Option<i64>,
}

/// One version of a key. `sealed_private` is the `PQSK` blob (sealed under the root key).
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Key id.
    pub key_id: String,
    /// Version number, from 1.
    pub version: i64,
    /// `enabled`, `disabled`, `pending_destruction` or `destroyed`.
    pub state: String,
    /// Sealed private half; `None` once destroyed.
    pub sealed_private: Option<Vec<u8>>,
    /// Root key version that sealed it.
    pub root_version: i64,
    /// `PQPK` export of the public half.
    pub public_key: Vec<u8>,
    /// Public key fingerprint (hex).
    pub fingerprint: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When a scheduled destruction happens (Unix ms).
    pub destroy_at: Option<i64>,
    /// When the material was destroyed (Unix ms).
    pub destroyed_at: Option<i64>,
}

/// A version whose destruction is due, with what its receipt records.
#[derive(Debug, Clone)]
pub struct DueDestruction {
    /// Tenant name.
    pub tenant: String,
    /// Key name.
    pub key_name: String,
    /// Key id.
    pub key_id: String,
    /// Version.
    pub version: i64,
    /// Public key fingerprint of the destroyed version.
    pub fingerprint: String,
    /// When destruction was requested (Unix ms).
    pub requested_at: i64,
    /// Token id that requested it.
    pub requested_by: String,
    /// When it was scheduled for (Unix ms).
    pub destroy_at: i64,
}

/// Which versions a lifecycle change applies to.
#[derive(Debug, Clone, Copy)]
pub enum Versions {
    /// Every version of the key.
    All,
    /// One version.
    One(i64),
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

/// The state a key use was decided on, checked again inside the transaction that commits its
/// audit entry (see [`Directory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseGuard {
    /// The caller's token id: must still exist and not be revoked.
    pub token_id: String,
    /// The key used.
    pub key_id: String,
    /// Its retirement floor as read.
    pub min_decryption_version: i64,
    /// (version, state) of every version as read, oldest first.
    pub versions: Vec<(i64, String)>,
}

/// Counters of the audit group-commit writer since start.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupCommitStats {
    /// Group transactions committed.
    pub commits: u64,
    /// Entries in them (divided by `commits`: the mean group size).
    pub entries: u64,
    /// WAL syncs (SQLite only; one covers every group committed before it started).
    pub wal_syncs: u64,
    /// Of `commits`, those made in one statement (PostgreSQL, while this node's writer is the only
    /// one appending; docs/OPERATIONS.md).
    pub one_statement_commits: u64,
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

    /// Append an audit entry on its own (refusals, reads). Durable when this returns.
    async fn append_audit(&self, audit: NewAuditEntry) -> StoreResult<AuditEntry>;

    /// Append the audit entry of a key use decided on cached rows: it is written only if `guard`
    /// still holds in the committing transaction, else `Stale` and nothing is written. Durable
    /// when this returns.
    async fn append_key_use(
        &self,
        audit: NewAuditEntry,
        guard: UseGuard,
    ) -> StoreResult<AuditEntry>;

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

    /// Add version `max + 1`, built by `make` inside the transaction (so concurrent rotations
    /// queue instead of colliding). With `due_at = Some(now)` it only rotates if the key's
    /// scheduled rotation is due, so several nodes cannot rotate the same key twice.
    async fn rotate_key(
        &self,
        key_id: &str,
        due_at: Option<i64>,
        make: &(dyn Fn(i64) -> Result<VersionRow, String> + Send + Sync),
        audit: NewAuditEntry,
    ) -> StoreResult<(VersionRow, AuditEntry)>;

    /// Move versions in state `from` to `to` (disable / enable). `NotFound` if none matched.
    async fn set_state(
        &self,
        key_id: &str,
        versions: Versions,
        from: &str,
        to: &str,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Schedule destruction of enabled or disabled versions. `NotFound` if none matched.
    async fn schedule_destroy(
        &self,
        key_id: &str,
        versions: Versions,
        destroy_at: i64,
        requested_by: &str,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Cancel a scheduled destruction: versions go back to their previous state.
    async fn cancel_destroy(
        &self,
        key_id: &str,
        versions: Versions,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Set the retirement floor and the rotation policy of a key.
    /// `rotation`: `None` leaves the rotation policy as it is in the database (so a concurrent
    /// scheduled rotation or shred is never overwritten with stale values); `Some((period,
    /// next))` replaces it.
    async fn set_policy(
        &self,
        key_id: &str,
        min_decryption_version: i64,
        rotation: Option<(Option<i64>, Option<i64>)>,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Versions whose destruction time has come.
    async fn due_destructions(&self, now: i64) -> StoreResult<Vec<DueDestruction>>;

    /// Delete the sealed material of one due version and append its receipt, in one transaction.
    /// `NotFound` if it is no longer due (cancelled, or another node did it).
    async fn destroy_version(
        &self,
        key_id: &str,
        version: i64,
        now: i64,
        receipt: NewAuditEntry,
    ) -> StoreResult<AuditEntry>;

    /// Keys whose scheduled rotation is due: (tenant id, tenant name, key).
    async fn due_rotations(&self, now: i64) -> StoreResult<Vec<(String, String, KeyRow)>>;

    /// (key id, version) of every version that is not enabled: the key caches drop these.
    async fn unusable_versions(&self) -> StoreResult<Vec<(String, i64)>>;

    /// Versions still holding material sealed under another root key version than `root_version`:
    /// (tenant id, row).
    async fn sealed_under_other_roots(
        &self,
        root_version: i64,
    ) -> StoreResult<Vec<(String, VersionRow)>>;

    /// Replace sealed material after a root-key rotation, all rows in one transaction with one
    /// audit entry. Each update is (key id, version, expected old root version, new sealed
    /// blob); a row that changed meanwhile (destroyed, already re-sealed) is skipped. Returns how
    /// many rows were re-sealed.
    async fn reseal(
        &self,
        updates: &[(String, i64, i64, Vec<u8>)],
        new_root_version: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<u64>;

    /// What the audit group-commit writer has done so far, for `/metrics`.
    fn group_commit_stats(&self) -> GroupCommitStats;

    /// Close the connection pool cleanly.
    async fn close(&self);

    /// The blind-index secret of a key, if it has one yet.
    async fn blind_index_secret(&self, key_id: &str) -> StoreResult<Option<BlindIndexSecretRow>>;

    /// Store a key's blind-index secret unless it already has one: the first writer wins, and
    /// every caller re-reads what was stored (so concurrent first requests agree).
    async fn insert_blind_index_secret(&self, row: &BlindIndexSecretRow) -> StoreResult<()>;

    /// Re-wrap a key's blind-index secret to another version, only if it is still wrapped to
    /// `from_version` (compare-and-swap). `Ok(false)`: it changed meanwhile, nothing written.
    async fn move_blind_index_secret(
        &self,
        key_id: &str,
        from_version: i64,
        to_version: i64,
        wrapped: &[u8],
    ) -> StoreResult<bool>;
}

/// A key's blind-index secret: 32 random bytes, stored only wrapped (a `PQWK` blob) to one
/// version of that key, under the context `{"pqkms:purpose": "blind-index"}`.
#[derive(Debug, Clone)]
pub struct BlindIndexSecretRow {
    /// Key id.
    pub key_id: String,
    /// The version the secret is wrapped to.
    pub version: i64,
    /// The wrapped secret.
    pub wrapped: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
}
