//! [`SqlStore`]: the [`Store`] over sqlx's `Any` driver, for SQLite and PostgreSQL.

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};

use super::writer::{
    GroupStats, MAX_GROUP, PendingAppend, check_sqlite_url, group_commit, start_sqlite,
};
use super::{
    DueDestruction, KeyRow, Store, StoreError, StoreResult, TenantRow, TokenRow, UseGuard,
    VersionRow, Versions,
};
use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, one file, WAL.
    Sqlite,
    /// Shared by several nodes.
    Postgres,
}

impl Backend {
    /// Which backend a connection talks to, from its driver's name.
    pub(super) fn of_connection(backend_name: &str) -> Backend {
        if backend_name == <sqlx::Sqlite as sqlx::Database>::NAME {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }

    /// Detect from a connection URL.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The SQL store.
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Key-use audit entries go to the group-commit writer ([`super::writer`]).
    appender: mpsc::Sender<PendingAppend>,
    /// Group commits, entries in them and WAL syncs, counted by the writer.
    groups: Arc<GroupStats>,
    /// Whether the writer has its connection open (see [`SqlStore::close`]).
    writer_connected: watch::Receiver<bool>,
}

pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(ref d) = e
        && d.is_unique_violation()
    {
        return StoreError::Conflict;
    }
    StoreError::Database(e.to_string())
}

/// SQLite settings applied to every pooled connection and to the audit writer's own (which then
/// sets `synchronous = NORMAL` and syncs the WAL itself: src/store/writer/sqlite.rs): WAL for
/// concurrent readers, FULL sync so a committed audit entry survives power loss, `secure_delete` so deleted key material is
/// overwritten in the file, foreign keys on, and a busy timeout instead of instant lock errors.
pub(super) const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 10000;";

/// PostgreSQL settings applied to every pooled connection, whatever the cluster's defaults:
/// - READ COMMITTED. The store's transactions are written for it — they serialize on the
///   audit-head row lock and read what committed before it — and at REPEATABLE READ or
///   SERIALIZABLE the second of two concurrent writers of the head fails with a serialization
///   error instead of waiting (tests/multi_node.rs).
/// - `synchronous_commit` never `off`: a key leaves only after its audit entry is durable, and an
///   asynchronous commit could lose it in a crash. `off` becomes `on`; every other level (`local`,
///   `remote_write`, `on`, `remote_apply`) flushes locally and is kept as configured.
pub(super) const POSTGRES_SESSION: &str = "SELECT \
     set_config('default_transaction_isolation', 'read committed', false), \
     set_config('synchronous_commit', CASE current_setting('synchronous_commit') \
         WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, false)";

impl SqlStore {
    /// Connect, apply per-connection settings and run the backend's migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)
            .ok_or_else(|| StoreError::Database("unsupported database URL scheme".into()))?;
        if backend == Backend::Sqlite {
            check_sqlite_url(url)?;
        }
        let mut options = AnyPoolOptions::new().max_connections(max_connections);
        let settings = match backend {
            Backend::Sqlite => SQLITE_PRAGMAS,
            Backend::Postgres => POSTGRES_SESSION,
        };
        options = options.after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute(settings).await?;
                Ok(())
            })
        });
        let pool = options.connect(url).await.map_err(db_err)?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let (appender, queue) = mpsc::channel(4 * MAX_GROUP);
        let groups = Arc::new(GroupStats::default());
        let (connected, writer_connected) = watch::channel(false);
        match backend {
            Backend::Sqlite => start_sqlite(pool.clone(), queue, groups.clone(), connected).await?,
            Backend::Postgres => {
                tokio::spawn(group_commit(pool.clone(), queue, groups.clone(), connected));
            }
        }
        Ok(SqlStore {
            pool,
            backend,
            appender,
            groups,
            writer_connected,
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queue an entry for the group commit and wait until it is durable (or refused).
    async fn group_append(
        &self,
        entry: NewAuditEntry,
        guard: Option<UseGuard>,
    ) -> StoreResult<AuditEntry> {
        let stopped = || StoreError::Database("audit writer stopped".into());
        let (done, durable) = oneshot::channel();
        self.appender
            .send(PendingAppend { entry, guard, done })
            .await
            .map_err(|_| stopped())?;
        durable.await.map_err(|_| stopped())?
    }

    /// Start a transaction that will append audit entries; see [`begin_audited`].
    async fn begin_audited(&self) -> StoreResult<(Transaction<'static, Any>, i64, String)> {
        begin_audited(&self.pool).await
    }

    /// Append the entry, move the head, commit.
    async fn commit_audited(
        tx: Transaction<'static, Any>,
        prev_seq: i64,
        prev_hash: &str,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let mut entries = commit_audited(tx, prev_seq, prev_hash, vec![audit]).await?;
        entries
            .pop()
            .ok_or_else(|| StoreError::Database("audit append wrote nothing".into()))
    }
}

/// Start a transaction that will append audit entries. The first statement takes the audit-head
/// lock, so concurrent appenders (other requests' transactions, other nodes) queue here instead
/// of forking the chain, and a SQLite transaction never has to upgrade from a read lock.
async fn begin_audited(pool: &AnyPool) -> StoreResult<(Transaction<'static, Any>, i64, String)> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let (seq, hash) = lock_head(&mut tx).await?;
    Ok((tx, seq, hash))
}

/// Take the audit-head lock and read the head, in one statement: an update that returns it.
pub(super) async fn lock_head(tx: &mut Transaction<'_, Any>) -> StoreResult<(i64, String)> {
    // Bumping `epoch` marks that this transaction held the lock, appending or not (see
    // migrations/*/0004_head_lock_epoch.sql).
    let row =
        sqlx::query("UPDATE audit_head SET epoch = epoch + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut **tx)
            .await
            .map_err(db_err)?;
    let seq: i64 = row.try_get("seq").map_err(db_err)?;
    let hash: String = row.try_get("hash").map_err(db_err)?;
    Ok((seq, hash))
}

/// Seal `entries` into the chain after (`prev_seq`, `prev_hash`), in order.
pub(super) fn chain_entries(
    prev_seq: i64,
    prev_hash: &str,
    entries: Vec<NewAuditEntry>,
) -> Vec<AuditEntry> {
    let mut chained: Vec<AuditEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        let e = match chained.last() {
            Some(prev) => entry.chain(prev.seq, &prev.hash),
            None => entry.chain(prev_seq, prev_hash),
        };
        chained.push(e);
    }
    chained
}

/// The statement (SQLite: script) that inserts `count` chained entries and moves the head to the
/// last of them, in one round trip: two statements on SQLite (its driver binds `?` across them in
/// order), one with a data-modifying CTE on PostgreSQL. Bind with [`bind_entries`], then the new
/// head's seq and hash.
pub(super) fn insert_entries_sql(backend: Backend, count: usize) -> String {
    const COLUMNS: &str = "audit_log (seq, time_ms, principal, tenant, key_name, key_version, \
         operation, outcome, request_id, context_hash, detail, prev_hash, hash)";
    match backend {
        // SQLite binds `$N` by looking each name up in a list (quadratic in the parameter count,
        // a few percent of the CPU at large groups); anonymous `?` bind positionally.
        Backend::Sqlite => {
            let row = format!("({})", ["?"; 13].join(", "));
            format!(
                "INSERT INTO {COLUMNS} VALUES {}; UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
                vec![row; count].join(", ")
            )
        }
        Backend::Postgres => {
            let rows: Vec<String> = (0..count)
                .map(|i| format!("({})", placeholders(i * 13 + 1, 13)))
                .collect();
            let head = count * 13 + 1;
            format!(
                "WITH appended AS (INSERT INTO {COLUMNS} VALUES {} RETURNING 1) \
                 UPDATE audit_head SET seq = ${head}, hash = ${} WHERE id = 1",
                rows.join(", "),
                head + 1
            )
        }
    }
}

/// Bind the entries' 13 columns each, in [`insert_entries_sql`]'s order (through the `Any`
/// driver, or on the PostgreSQL writer's own connection).
pub(super) fn bind_entries<'q, DB>(
    mut insert: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    chained: &'q [AuditEntry],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for e in chained {
        insert = insert
            .bind(e.seq)
            .bind(e.time_ms)
            .bind(&e.principal)
            .bind(&e.tenant)
            .bind(&e.key)
            .bind(e.version)
            .bind(&e.operation)
            .bind(&e.outcome)
            .bind(&e.request_id)
            .bind(&e.context_hash)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.hash);
    }
    insert
}

/// Chain `entries` after (`prev_seq`, `prev_hash`), insert them, move the head and commit: one
/// transaction for all of them. For state changes that run in their own transaction; key uses go
/// through the group-commit writer ([`super::writer`]).
async fn commit_audited(
    mut tx: Transaction<'_, Any>,
    prev_seq: i64,
    prev_hash: &str,
    entries: Vec<NewAuditEntry>,
) -> StoreResult<Vec<AuditEntry>> {
    let chained = chain_entries(prev_seq, prev_hash, entries);
    let Some(last) = chained.last() else {
        tx.rollback().await.map_err(db_err)?;
        return Ok(chained);
    };
    // Only placeholders are generated here; every value is bound.
    let sql = insert_entries_sql(Backend::of_connection(tx.backend_name()), chained.len());
    bind_entries(sqlx::query(sqlx::AssertSqlSafe(sql)), &chained)
        .bind(last.seq)
        .bind(&last.hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(chained)
}

/// `$first, $first+1, ...` (`count` of them).
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn insert_key(tx: &mut Transaction<'static, Any>, key: &KeyRow) -> StoreResult<()> {
    sqlx::query("INSERT INTO keys (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&key.id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(key.created_at)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn insert_version(tx: &mut Transaction<'static, Any>, v: &VersionRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO key_versions (key_id, version, state, sealed_private, root_version, \
         public_key, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&v.key_id)
    .bind(v.version)
    .bind(&v.state)
    .bind(&v.sealed_private)
    .bind(v.root_version)
    .bind(&v.public_key)
    .bind(&v.fingerprint)
    .bind(v.created_at)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn version_filter(v: Versions) -> Option<i64> {
    match v {
        Versions::All => None,
        Versions::One(n) => Some(n),
    }
}

/// Commit with the audit entry if the statement changed something; otherwise roll back and
/// report `NotFound` (nothing in the expected state), so a no-op is never audited as done.
async fn finish_if_changed(
    tx: Transaction<'static, Any>,
    rows_affected: u64,
    seq: i64,
    hash: &str,
    audit: NewAuditEntry,
) -> StoreResult<AuditEntry> {
    if rows_affected == 0 {
        tx.rollback().await.map_err(db_err)?;
        return Err(StoreError::NotFound);
    }
    SqlStore::commit_audited(tx, seq, hash, audit).await
}

/// Inside a state change that takes one version out of use: refuse (`Conflict`, rolled back by the
/// caller) if the key's blind-index secret is wrapped to that version while another enabled
/// version exists to hold it. The handler moves the secret first; this catches a concurrent move
/// back onto the version. Both run under the audit-head lock, so the check cannot miss one.
async fn blind_index_secret_leaving(
    tx: &mut Transaction<'static, Any>,
    key_id: &str,
    versions: Versions,
) -> StoreResult<bool> {
    let Versions::One(version) = versions else {
        // The whole key goes: its blind indexes go with it.
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT 1 AS held FROM blind_index_secrets b WHERE b.key_id = $1 AND b.version = $2 \
         AND EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = $1 AND v.version <> $2 \
         AND v.state = 'enabled')",
    )
    .bind(key_id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(row.is_some())
}

fn tenant_row(r: &AnyRow) -> StoreResult<TenantRow> {
    Ok(TenantRow {
        id: r.try_get("id").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
    })
}

fn key_row(r: &AnyRow) -> StoreResult<KeyRow> {
    Ok(KeyRow {
        id: r.try_get("id").map_err(db_err)?,
        tenant_id: r.try_get("tenant_id").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        min_decryption_version: r.try_get("min_decryption_version").map_err(db_err)?,
        rotation_period_secs: r.try_get("rotation_period_secs").map_err(db_err)?,
        next_rotation_at: r.try_get("next_rotation_at").map_err(db_err)?,
    })
}

fn version_row(r: &AnyRow) -> StoreResult<VersionRow> {
    Ok(VersionRow {
        key_id: r.try_get("key_id").map_err(db_err)?,
        version: r.try_get("version").map_err(db_err)?,
        state: r.try_get("state").map_err(db_err)?,
        sealed_private: r.try_get("sealed_private").map_err(db_err)?,
        root_version: r.try_get("root_version").map_err(db_err)?,
        public_key: r.try_get("public_key").map_err(db_err)?,
        fingerprint: r.try_get("fingerprint").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        destroy_at: r.try_get("destroy_at").map_err(db_err)?,
        destroyed_at: r.try_get("destroyed_at").map_err(db_err)?,
    })
}

fn token_row(r: &AnyRow) -> StoreResult<TokenRow> {
    Ok(TokenRow {
        id: r.try_get("id").map_err(db_err)?,
        token_hash: r.try_get("token_hash").map_err(db_err)?,
        tenant_id: r.try_get("tenant_id").map_err(db_err)?,
        tenant_name: r.try_get("tenant_name").map_err(db_err)?,
        roles: r.try_get("roles").map_err(db_err)?,
        created_at: r.try_get("created_at").map_err(db_err)?,
        expires_at: r.try_get("expires_at").map_err(db_err)?,
        revoked_at: r.try_get("revoked_at").map_err(db_err)?,
    })
}

fn audit_row(r: &AnyRow) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        seq: r.try_get("seq").map_err(db_err)?,
        time_ms: r.try_get("time_ms").map_err(db_err)?,
        principal: r.try_get("principal").map_err(db_err)?,
        tenant: r.try_get("tenant").map_err(db_err)?,
        key: r.try_get("key_name").map_err(db_err)?,
        version: r.try_get("key_version").map_err(db_err)?,
        operation: r.try_get("operation").map_err(db_err)?,
        outcome: r.try_get("outcome").map_err(db_err)?,
        request_id: r.try_get("request_id").map_err(db_err)?,
        context_hash: r.try_get("context_hash").map_err(db_err)?,
        detail: r.try_get("detail").map_err(db_err)?,
        prev_hash: r.try_get("prev_hash").map_err(db_err)?,
        hash: r.try_get("hash").map_err(db_err)?,
    })
}

/// `SELECT <every key_versions column> FROM key_versions <tail>`, as one static string.
macro_rules! select_versions {
    ($tail:literal) => {
        concat!(
            "SELECT key_id, version, state, sealed_private, root_version, public_key, ",
            "fingerprint, created_at, destroy_at, destroyed_at FROM key_versions ",
            $tail
        )
    };
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        // Not ready without a writer, or with one that stopped after a failed WAL sync: every
        // key use would fail.
        if self.appender.is_closed() {
            return Err(StoreError::Database("audit writer stopped".into()));
        }
        if let Some(e) = self.groups.halted() {
            return Err(e);
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn is_empty(&self) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tenants) + (SELECT COUNT(*) FROM tokens) AS n",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let n: i64 = row.try_get("n").map_err(db_err)?;
        Ok(n == 0)
    }

    async fn create_tenant(
        &self,
        tenant: &TenantRow,
        key: &KeyRow,
        version: &VersionRow,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        insert_key(&mut tx, key).await?;
        insert_version(&mut tx, version).await?;
        Self::commit_audited(tx, seq, &hash, audit).await
    }

    async fn create_key(
        &self,
        key: &KeyRow,
        version: &VersionRow,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        insert_key(&mut tx, key).await?;
        insert_version(&mut tx, version).await?;
        Self::commit_audited(tx, seq, &hash, audit).await
    }

    async fn create_token(
        &self,
        token: &TokenRow,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        sqlx::query(
            "INSERT INTO tokens (id, token_hash, tenant_id, roles, created_at, expires_at, \
             revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&token.id)
        .bind(&token.token_hash)
        .bind(&token.tenant_id)
        .bind(&token.roles)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        Self::commit_audited(tx, seq, &hash, audit).await
    }

    async fn revoke_token(
        &self,
        tenant_id: Option<&str>,
        token_id: &str,
        now: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        // One statement decides: no separate existence check to race with.
        let sql = match tenant_id {
            Some(_) => {
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND tenant_id = $3 \
                 AND revoked_at IS NULL"
            }
            None => {
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND tenant_id IS NULL \
                 AND revoked_at IS NULL"
            }
        };
        let mut q = sqlx::query(sql).bind(now).bind(token_id);
        if let Some(t) = tenant_id {
            q = q.bind(t);
        }
        let done = q.execute(&mut *tx).await.map_err(db_err)?;
        finish_if_changed(tx, done.rows_affected(), seq, &hash, audit).await
    }

    async fn append_audit(&self, audit: NewAuditEntry) -> StoreResult<AuditEntry> {
        self.group_append(audit, None).await
    }

    async fn append_key_use(
        &self,
        audit: NewAuditEntry,
        guard: UseGuard,
    ) -> StoreResult<AuditEntry> {
        self.group_append(audit, Some(guard)).await
    }

    async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantRow>> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(tenant_row).transpose()
    }

    async fn key_by_name(&self, tenant_id: &str, name: &str) -> StoreResult<Option<KeyRow>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, name, created_at, min_decryption_version, rotation_period_secs, \
             next_rotation_at FROM keys WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(key_row).transpose()
    }

    async fn list_keys(&self, tenant_id: &str) -> StoreResult<Vec<KeyRow>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, created_at, min_decryption_version, rotation_period_secs, \
             next_rotation_at FROM keys WHERE tenant_id = $1 ORDER BY name",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(key_row).collect()
    }

    async fn versions(&self, key_id: &str) -> StoreResult<Vec<VersionRow>> {
        let rows = sqlx::query(select_versions!("WHERE key_id = $1 ORDER BY version"))
            .bind(key_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(version_row).collect()
    }

    async fn version(&self, key_id: &str, version: i64) -> StoreResult<Option<VersionRow>> {
        let row = sqlx::query(select_versions!("WHERE key_id = $1 AND version = $2"))
            .bind(key_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(version_row).transpose()
    }

    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT t.id, t.token_hash, t.tenant_id, n.name AS tenant_name, t.roles, \
             t.created_at, t.expires_at, t.revoked_at \
             FROM tokens t LEFT JOIN tenants n ON n.id = t.tenant_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(token_row).transpose()
    }

    async fn audit_entries(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        // Optional filters as "$n IS NULL OR column = $n" keep one static statement.
        let rows = sqlx::query(
            "SELECT seq, time_ms, principal, tenant, key_name, key_version, operation, outcome, \
             request_id, context_hash, detail, prev_hash, hash FROM audit_log \
             WHERE seq > $1 \
             AND ($2 IS NULL OR tenant = $2) \
             AND ($3 IS NULL OR operation = $3) \
             AND ($4 IS NULL OR time_ms >= $4) \
             AND ($5 IS NULL OR time_ms < $5) \
             ORDER BY seq LIMIT $6",
        )
        .bind(q.after_seq)
        .bind(&q.tenant)
        .bind(&q.operation)
        .bind(q.since_ms)
        .bind(q.until_ms)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(audit_row).collect()
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok((
            row.try_get("seq").map_err(db_err)?,
            row.try_get("hash").map_err(db_err)?,
        ))
    }

    async fn rotate_key(
        &self,
        key_id: &str,
        due_at: Option<i64>,
        make: &(dyn Fn(i64) -> Result<VersionRow, String> + Send + Sync),
        audit: NewAuditEntry,
    ) -> StoreResult<(VersionRow, AuditEntry)> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let row = sqlx::query(
            "SELECT k.rotation_period_secs, k.next_rotation_at, \
             (SELECT MAX(version) FROM key_versions v WHERE v.key_id = k.id) AS max_version, \
             (SELECT COUNT(*) FROM key_versions v WHERE v.key_id = k.id \
              AND v.state IN ('enabled', 'disabled')) AS live, \
             (SELECT COUNT(*) FROM key_versions v WHERE v.key_id = k.id \
              AND v.state = 'enabled') AS enabled \
             FROM keys k WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .ok_or(StoreError::NotFound)?;
        let period: Option<i64> = row.try_get("rotation_period_secs").map_err(db_err)?;
        let next: Option<i64> = row.try_get("next_rotation_at").map_err(db_err)?;
        let max_version: Option<i64> = row.try_get("max_version").map_err(db_err)?;
        let live: i64 = row.try_get("live").map_err(db_err)?;
        let enabled: i64 = row.try_get("enabled").map_err(db_err)?;
        // A key being shredded (every version pending destruction or destroyed) never gets a
        // new version. A disabled key is rotated only by hand (an admin replacing a suspect
        // key), never by the schedule, which would silently re-enable it.
        let not_due = due_at.is_some_and(|now| next.is_none_or(|n| n > now));
        let scheduled_but_disabled = due_at.is_some() && enabled == 0;
        if live == 0 || not_due || scheduled_but_disabled {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::NotFound);
        }
        let version = make(max_version.unwrap_or(0) + 1).map_err(StoreError::Database)?;
        insert_version(&mut tx, &version).await?;
        let next_rotation =
            period.and_then(|p| version.created_at.checked_add(p.checked_mul(1000)?));
        sqlx::query("UPDATE keys SET next_rotation_at = $1 WHERE id = $2")
            .bind(next_rotation)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut audit = audit;
        audit.version = Some(version.version);
        let entry = Self::commit_audited(tx, seq, &hash, audit).await?;
        Ok((version, entry))
    }

    async fn set_state(
        &self,
        key_id: &str,
        versions: Versions,
        from: &str,
        to: &str,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET state = $1 \
             WHERE key_id = $2 AND ($3 IS NULL OR version = $3) AND state = $4",
        )
        .bind(to)
        .bind(key_id)
        .bind(version_filter(versions))
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if to != "enabled" && blind_index_secret_leaving(&mut tx, key_id, versions).await? {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::Conflict);
        }
        finish_if_changed(tx, done.rows_affected(), seq, &hash, audit).await
    }

    async fn schedule_destroy(
        &self,
        key_id: &str,
        versions: Versions,
        destroy_at: i64,
        requested_by: &str,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET state_before_destroy = state, state = 'pending_destruction', \
             destroy_at = $1, destroy_requested_at = $2, destroy_requested_by = $3 \
             WHERE key_id = $4 AND ($5 IS NULL OR version = $5) \
             AND state IN ('enabled', 'disabled')",
        )
        .bind(destroy_at)
        .bind(audit.time_ms)
        .bind(requested_by)
        .bind(key_id)
        .bind(version_filter(versions))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if matches!(versions, Versions::All) {
            // Shredding the whole key: scheduled rotation must not bring it back.
            sqlx::query(
                "UPDATE keys SET rotation_period_secs = NULL, next_rotation_at = NULL WHERE id = $1",
            )
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        if blind_index_secret_leaving(&mut tx, key_id, versions).await? {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::Conflict);
        }
        finish_if_changed(tx, done.rows_affected(), seq, &hash, audit).await
    }

    async fn cancel_destroy(
        &self,
        key_id: &str,
        versions: Versions,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET state = state_before_destroy, state_before_destroy = NULL, \
             destroy_at = NULL, destroy_requested_at = NULL, destroy_requested_by = NULL \
             WHERE key_id = $1 AND ($2 IS NULL OR version = $2) \
             AND state = 'pending_destruction'",
        )
        .bind(key_id)
        .bind(version_filter(versions))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        finish_if_changed(tx, done.rows_affected(), seq, &hash, audit).await
    }

    async fn set_policy(
        &self,
        key_id: &str,
        min_decryption_version: i64,
        rotation: Option<(Option<i64>, Option<i64>)>,
        audit: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let done = match rotation {
            None => sqlx::query("UPDATE keys SET min_decryption_version = $1 WHERE id = $2")
                .bind(min_decryption_version)
                .bind(key_id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?,
            Some((period, next)) => sqlx::query(
                "UPDATE keys SET min_decryption_version = $1, rotation_period_secs = $2, \
                 next_rotation_at = $3 WHERE id = $4",
            )
            .bind(min_decryption_version)
            .bind(period)
            .bind(next)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?,
        };
        finish_if_changed(tx, done.rows_affected(), seq, &hash, audit).await
    }

    async fn due_destructions(&self, now: i64) -> StoreResult<Vec<DueDestruction>> {
        let rows = sqlx::query(
            "SELECT t.name AS tenant, k.name AS key_name, k.id AS key_id, v.version, \
             v.fingerprint, v.destroy_requested_at, v.destroy_requested_by, v.destroy_at \
             FROM key_versions v JOIN keys k ON k.id = v.key_id JOIN tenants t ON t.id = k.tenant_id \
             WHERE v.state = 'pending_destruction' AND v.destroy_at <= $1 ORDER BY v.destroy_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(DueDestruction {
                    tenant: r.try_get("tenant").map_err(db_err)?,
                    key_name: r.try_get("key_name").map_err(db_err)?,
                    key_id: r.try_get("key_id").map_err(db_err)?,
                    version: r.try_get("version").map_err(db_err)?,
                    fingerprint: r.try_get("fingerprint").map_err(db_err)?,
                    requested_at: r.try_get("destroy_requested_at").map_err(db_err)?,
                    requested_by: r.try_get("destroy_requested_by").map_err(db_err)?,
                    destroy_at: r.try_get("destroy_at").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn destroy_version(
        &self,
        key_id: &str,
        version: i64,
        now: i64,
        receipt: NewAuditEntry,
    ) -> StoreResult<AuditEntry> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        // Overwrite, then drop the sealed material. (SQLite runs with secure_delete, so freed
        // pages are zeroed too.)
        let done = sqlx::query(
            "UPDATE key_versions SET sealed_private = NULL, state = 'destroyed', destroyed_at = $1, \
             state_before_destroy = NULL \
             WHERE key_id = $2 AND version = $3 AND state = 'pending_destruction' AND destroy_at <= $1",
        )
        .bind(now)
        .bind(key_id)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        finish_if_changed(tx, done.rows_affected(), seq, &hash, receipt).await
    }

    async fn due_rotations(&self, now: i64) -> StoreResult<Vec<(String, String, KeyRow)>> {
        let rows = sqlx::query(
            "SELECT k.id, k.tenant_id, t.name AS tenant_name, k.name, k.created_at, \
             k.min_decryption_version, k.rotation_period_secs, k.next_rotation_at \
             FROM keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.next_rotation_at IS NOT NULL AND k.next_rotation_at <= $1 \
             AND EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = k.id AND v.state = 'enabled')",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let key = key_row(r)?;
                let tenant_name: String = r.try_get("tenant_name").map_err(db_err)?;
                Ok((key.tenant_id.clone(), tenant_name, key))
            })
            .collect()
    }

    async fn unusable_versions(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT key_id, version FROM key_versions WHERE state <> 'enabled'")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("key_id").map_err(db_err)?,
                    r.try_get("version").map_err(db_err)?,
                ))
            })
            .collect()
    }

    async fn sealed_under_other_roots(
        &self,
        root_version: i64,
    ) -> StoreResult<Vec<(String, VersionRow)>> {
        let rows = sqlx::query(
            "SELECT k.tenant_id, v.key_id, v.version, v.state, v.sealed_private, v.root_version, \
             v.public_key, v.fingerprint, v.created_at, v.destroy_at, v.destroyed_at \
             FROM key_versions v JOIN keys k ON k.id = v.key_id \
             WHERE v.sealed_private IS NOT NULL AND v.root_version <> $1",
        )
        .bind(root_version)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((r.try_get("tenant_id").map_err(db_err)?, version_row(r)?)))
            .collect()
    }

    async fn reseal(
        &self,
        updates: &[(String, i64, i64, Vec<u8>)],
        new_root_version: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<u64> {
        let (mut tx, seq, hash) = self.begin_audited().await?;
        let mut changed = 0;
        for (key_id, version, old_root, sealed) in updates {
            changed += sqlx::query(
                "UPDATE key_versions SET sealed_private = $1, root_version = $2 \
                 WHERE key_id = $3 AND version = $4 AND root_version = $5 \
                 AND sealed_private IS NOT NULL",
            )
            .bind(sealed)
            .bind(new_root_version)
            .bind(key_id)
            .bind(version)
            .bind(old_root)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        }
        let mut audit = audit;
        audit.detail = Some(
            serde_json::json!({ "resealed": changed, "root_version": new_root_version })
                .to_string(),
        );
        Self::commit_audited(tx, seq, &hash, audit).await?;
        Ok(changed)
    }

    fn group_commit_stats(&self) -> super::GroupCommitStats {
        super::GroupCommitStats {
            commits: self.groups.commits.load(Ordering::Relaxed),
            entries: self.groups.entries.load(Ordering::Relaxed),
            wal_syncs: self.groups.syncs.load(Ordering::Relaxed),
            one_statement_commits: self.groups.one_statement.load(Ordering::Relaxed),
        }
    }

    async fn close(&self) {
        // Closing the pool signals the writer, whose connection is outside the pool, to close its
        // own; wait for both, so SQLite's last connection closes (checkpointing the WAL) before we
        // return.
        let mut connected = self.writer_connected.clone();
        let writer_closed = async move {
            // An error means the writer has ended, and with it its connection.
            let _ = connected.wait_for(|open| !*open).await;
        };
        tokio::join!(self.pool.close(), writer_closed);
    }

    async fn blind_index_secret(
        &self,
        key_id: &str,
    ) -> StoreResult<Option<super::BlindIndexSecretRow>> {
        let row = sqlx::query(
            "SELECT key_id, version, wrapped, created_at FROM blind_index_secrets \
             WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(super::BlindIndexSecretRow {
                key_id: r.try_get("key_id").map_err(db_err)?,
                version: r.try_get("version").map_err(db_err)?,
                wrapped: r.try_get("wrapped").map_err(db_err)?,
                created_at: r.try_get("created_at").map_err(db_err)?,
            })
        })
        .transpose()
    }

    async fn insert_blind_index_secret(&self, row: &super::BlindIndexSecretRow) -> StoreResult<()> {
        // One statement decides which of several concurrent first requests wins.
        // Under the audit-head lock, like every state change: the target version is enabled at
        // commit, and a concurrent disable or destruction of it is ordered before or after.
        let (mut tx, _, _) = self.begin_audited().await?;
        sqlx::query(
            "INSERT INTO blind_index_secrets (key_id, version, wrapped, created_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM key_versions \
             WHERE key_id = $1 AND version = $2 AND state = 'enabled') \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&row.key_id)
        .bind(row.version)
        .bind(&row.wrapped)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn move_blind_index_secret(
        &self,
        key_id: &str,
        from_version: i64,
        to_version: i64,
        wrapped: &[u8],
    ) -> StoreResult<bool> {
        // Under the audit-head lock, and only onto a version still enabled at commit: a move can
        // never land on a version that a concurrent disable or destruction takes out of use.
        let (mut tx, _, _) = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE blind_index_secrets SET version = $1, wrapped = $2 \
             WHERE key_id = $3 AND version = $4 AND EXISTS (SELECT 1 FROM key_versions \
             WHERE key_id = $3 AND version = $1 AND state = 'enabled')",
        )
        .bind(to_version)
        .bind(wrapped)
        .bind(key_id)
        .bind(from_version)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::TestPostgres;
    use super::*;

    /// The SQLite audit writer opens the database file a second time (its own thread and
    /// connection): an in-memory database, which a second connection would not see, is refused
    /// with a clear error instead of a writer that writes elsewhere.
    /// URL options under which the writer's own connection would not share the pool's file and
    /// locks are refused before anything is opened; the server's own URL passes.
    #[tokio::test]
    async fn sqlite_url_options_the_writer_cannot_follow_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = format!("sqlite://{}", dir.path().join("t.db").display());
        for query in [
            "vfs=unix-dotfile",
            "mode=rwc&immutable=true",
            "mode=ro",
            "mode=memory",
        ] {
            let name = query.rsplit('&').next().and_then(|p| p.split('=').next());
            match SqlStore::connect(&format!("{base}?{query}"), 2).await {
                Err(StoreError::Database(m)) => {
                    assert!(
                        m.contains(&format!("`{}`", name.unwrap_or(""))),
                        "{query}: {m}"
                    )
                }
                Err(e) => panic!("{query}: unexpected error {e:?}"),
                Ok(_) => panic!("{query}: must be refused"),
            }
        }
        assert!(
            !dir.path().join("t.db").exists(),
            "a refused URL opens nothing"
        );
        let store = SqlStore::connect(&format!("{base}?mode=rwc"), 2)
            .await
            .expect("the server's own URL form");
        store.close().await;
    }

    #[tokio::test]
    async fn an_in_memory_sqlite_database_is_refused() {
        let refused = SqlStore::connect("sqlite::memory:", 2).await;
        match refused {
            Err(StoreError::Database(m)) => assert!(m.contains("needs a database file"), "{m}"),
            Err(e) => panic!("unexpected error: {e:?}"),
            Ok(_) => panic!("an in-memory SQLite store must be refused"),
        }
    }

    /// On a PostgreSQL database whose defaults are SERIALIZABLE and `synchronous_commit = off`,
    /// every connection of the store still runs READ COMMITTED with synchronous commits. Needs
    /// `PQKMS_TEST_POSTGRES_URL` (CI sets it); skipped with a warning without it.
    #[tokio::test]
    async fn postgres_sessions_are_read_committed_and_durable_whatever_the_defaults() {
        let Some(db) = TestPostgres::create(&[
            "ALTER DATABASE {db} SET default_transaction_isolation = 'serializable'",
            "ALTER DATABASE {db} SET synchronous_commit = 'off'",
        ])
        .await
        else {
            return;
        };
        let url = db.url.clone();
        let store = SqlStore::connect(&url, 2).await.expect("connect");
        let mut conn = store.pool.acquire().await.expect("connection");
        let isolation: String = sqlx::query_scalar("SHOW transaction_isolation")
            .fetch_one(&mut *conn)
            .await
            .expect("show");
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *conn)
            .await
            .expect("show");
        drop(conn);
        store.pool.close().await;
        drop(db);
        assert_eq!(
            (isolation.as_str(), sync.as_str()),
            ("read committed", "on")
        );
    }
}
