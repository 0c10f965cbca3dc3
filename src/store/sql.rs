//! [`SqlStore`]: the [`Store`] over sqlx's `Any` driver, for SQLite and PostgreSQL.

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row, Transaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

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
    /// Key-use audit entries go to the group-commit writer ([`group_commit`]).
    appender: mpsc::Sender<PendingAppend>,
    /// (group commits, entries in them), counted by the writer.
    groups: Arc<GroupStats>,
}

/// Counters of the group-commit writer.
#[derive(Default)]
struct GroupStats {
    commits: AtomicU64,
    entries: AtomicU64,
}

/// Most entries one group commit writes (13 bound parameters each: well under SQLite's and
/// PostgreSQL's limits).
const MAX_GROUP: usize = 256;

/// One request's audit entry waiting for the group commit, and where to say it is durable.
struct PendingAppend {
    entry: NewAuditEntry,
    guard: Option<UseGuard>,
    done: oneshot::Sender<StoreResult<AuditEntry>>,
}

fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(ref d) = e
        && d.is_unique_violation()
    {
        return StoreError::Conflict;
    }
    StoreError::Database(e.to_string())
}

/// SQLite settings applied to every pooled connection: WAL for concurrent readers, FULL sync so a
/// committed audit entry survives power loss, `secure_delete` so deleted key material is
/// overwritten in the file, foreign keys on, and a busy timeout instead of instant lock errors.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 10000;";

/// PostgreSQL settings applied to every pooled connection: READ COMMITTED whatever the cluster's
/// `default_transaction_isolation`. The store's transactions are written for it — they serialize on
/// the audit-head row lock and read what committed before it — and at REPEATABLE READ or
/// SERIALIZABLE the second of two concurrent writers of the head fails with a serialization error
/// instead of waiting (tests/multi_node.rs).
const POSTGRES_SESSION: &str =
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED";

impl SqlStore {
    /// Connect, apply per-connection settings and run the backend's migrations.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)
            .ok_or_else(|| StoreError::Database("unsupported database URL scheme".into()))?;
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
        tokio::spawn(group_commit(pool.clone(), queue, groups.clone()));
        Ok(SqlStore {
            pool,
            backend,
            appender,
            groups,
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

/// Take the audit-head lock and read the head, in one statement: a no-op update that returns it.
async fn lock_head(tx: &mut Transaction<'_, Any>) -> StoreResult<(i64, String)> {
    let row = sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err)?;
    let seq: i64 = row.try_get("seq").map_err(db_err)?;
    let hash: String = row.try_get("hash").map_err(db_err)?;
    Ok((seq, hash))
}

/// Chain `entries` after (`prev_seq`, `prev_hash`), insert them with one statement, move the head
/// and commit: one transaction (one fsync) for the whole group.
async fn commit_audited(
    mut tx: Transaction<'_, Any>,
    prev_seq: i64,
    prev_hash: &str,
    entries: Vec<NewAuditEntry>,
) -> StoreResult<Vec<AuditEntry>> {
    let mut chained = Vec::with_capacity(entries.len());
    let (mut seq, mut hash) = (prev_seq, prev_hash.to_owned());
    for entry in entries {
        let e = entry.chain(seq, &hash);
        seq = e.seq;
        hash.clone_from(&e.hash);
        chained.push(e);
    }
    if chained.is_empty() {
        tx.rollback().await.map_err(db_err)?;
        return Ok(chained);
    }
    // The rows and the new head go in one round trip: two statements in one query on SQLite
    // (its driver binds `?` across them in order), one statement with a data-modifying CTE on
    // PostgreSQL.
    const COLUMNS: &str = "audit_log (seq, time_ms, principal, tenant, key_name, key_version, \
         operation, outcome, request_id, context_hash, detail, prev_hash, hash)";
    // SQLite binds `$N` by looking each name up in a list (quadratic in the parameter count, a
    // few percent of the CPU at large groups); anonymous `?` bind positionally.
    let positional = tx.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME;
    let rows: Vec<String> = (0..chained.len())
        .map(|i| {
            if positional {
                format!("({})", ["?"; 13].join(", "))
            } else {
                format!("({})", placeholders(i * 13 + 1, 13))
            }
        })
        .collect();
    let sql = if positional {
        format!(
            "INSERT INTO {COLUMNS} VALUES {}; UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1",
            rows.join(", ")
        )
    } else {
        let head = chained.len() * 13 + 1;
        format!(
            "WITH appended AS (INSERT INTO {COLUMNS} VALUES {} RETURNING 1) \
             UPDATE audit_head SET seq = ${head}, hash = ${} WHERE id = 1",
            rows.join(", "),
            head + 1
        )
    };
    // Only placeholders are generated here; every value is bound.
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
    for e in &chained {
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
        .bind(seq)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(chained)
}

/// The group-commit writer: one per store. Requests that use a key queue their audit entries
/// here; the writer takes everything queued (up to [`MAX_GROUP`]), checks the entries' guards and
/// appends them in one transaction, and only then tells each request its entry is durable — so a
/// key still never leaves before its entry is committed, but a burst of requests shares one fsync
/// instead of queueing for one each. A failed commit fails every request of the group (fail
/// closed); a failed guard fails only its own request, with nothing written for it.
async fn group_commit(
    pool: AnyPool,
    mut queue: mpsc::Receiver<PendingAppend>,
    stats: Arc<GroupStats>,
) {
    // The writer keeps one connection across groups: no pool checkout (and its liveness ping)
    // per group. After a failed or panicked group it takes a fresh one from the pool.
    let mut held: Option<PoolConnection<Any>> = None;
    let mut group: Vec<PendingAppend> = Vec::with_capacity(MAX_GROUP);
    loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut group, MAX_GROUP) => received,
            // `Pool::close` waits for every connection to come back: give ours back.
            _ = pool.close_event(), if held.is_some() => {
                held = None;
                continue;
            }
        };
        if received == 0 {
            break;
        }
        // Requests that are gone (timed out, client hung up) released nothing: no entry for them.
        let batch: Vec<PendingAppend> = std::mem::take(&mut group)
            .into_iter()
            .filter(|p| !p.done.is_closed())
            .collect();
        if batch.is_empty() {
            continue;
        }
        let conn = match held.take() {
            Some(conn) => conn,
            None => match pool.acquire().await {
                Ok(conn) => conn,
                Err(e) => {
                    let e = db_err(e);
                    tracing::error!(error = %e, "audit group commit cannot get a connection");
                    for p in batch {
                        let _ = p.done.send(Err(e.clone()));
                    }
                    continue;
                }
            },
        };
        // Its own task: a panic inside fails this group's requests (their answers are dropped,
        // which they see as an error), not the writer.
        let task = tokio::spawn(async move {
            let mut conn = conn;
            let written = commit_group(&mut conn, batch).await;
            (conn, written)
        });
        match task.await {
            Ok((conn, Ok(written))) => {
                held = Some(conn);
                if written > 0 {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats.entries.fetch_add(written, Ordering::Relaxed);
                }
            }
            // The connection goes back to the pool, which checks it before its next use.
            Ok((_, Err(e))) => tracing::error!(error = %e, "audit group commit failed"),
            Err(e) => tracing::error!(error = %e, "audit group commit panicked"),
        }
    }
}

/// Check guards, write the entries that pass, answer every waiter. Returns how many were written.
async fn commit_group(conn: &mut AnyConnection, batch: Vec<PendingAppend>) -> StoreResult<u64> {
    let fail_all = |batch: Vec<PendingAppend>, e: &StoreError| {
        for p in batch {
            let _ = p.done.send(Err(e.clone()));
        }
    };
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            let e = db_err(e);
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let (seq, hash) = match lock_head(&mut tx).await {
        Ok(head) => head,
        Err(e) => {
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let holds = match guards_holding(&mut tx, &batch).await {
        Ok(h) => h,
        Err(e) => {
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let mut entries = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for (p, ok) in batch.into_iter().zip(holds) {
        if ok {
            entries.push(p.entry);
            waiters.push(p.done);
        } else {
            let _ = p.done.send(Err(StoreError::Stale));
        }
    }
    match commit_audited(tx, seq, &hash, entries).await {
        Ok(written) => {
            let count = written.len() as u64;
            for (waiter, entry) in waiters.into_iter().zip(written) {
                // The request may have gone (client hung up): its entry is written anyway.
                let _ = waiter.send(Ok(entry));
            }
            Ok(count)
        }
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(e.clone()));
            }
            Err(e)
        }
    }
}

/// For each pending entry: does its guard (if any) still hold? One query for the whole group
/// (live tokens and the keys' floors and version states), run inside the audit transaction, after
/// the head lock — so a revocation or key change commits either wholly before this check (and is
/// seen) or after these entries (which then came first).
async fn guards_holding(
    tx: &mut Transaction<'_, Any>,
    batch: &[PendingAppend],
) -> StoreResult<Vec<bool>> {
    let guards: Vec<&UseGuard> = batch.iter().filter_map(|p| p.guard.as_ref()).collect();
    if guards.is_empty() {
        return Ok(vec![true; batch.len()]);
    }
    let mut token_ids: Vec<&str> = guards.iter().map(|g| g.token_id.as_str()).collect();
    let mut key_ids: Vec<&str> = guards.iter().map(|g| g.key_id.as_str()).collect();
    token_ids.sort_unstable();
    token_ids.dedup();
    key_ids.sort_unstable();
    key_ids.dedup();

    // Rows of kind 't': a live token (expiry at commit time: an entry that waited past its
    // token's expiry releases nothing). Rows of kind 'v': one per version of a guarded key, with
    // the key's floor, in version order.
    let sql = format!(
        "SELECT 't' AS kind, id, 0 AS floor, 0 AS version, '' AS state FROM tokens \
         WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) AND id IN ({}) \
         UNION ALL \
         SELECT 'v' AS kind, k.id, k.min_decryption_version, v.version, v.state FROM keys k \
         JOIN key_versions v ON v.key_id = k.id WHERE k.id IN ({}) \
         ORDER BY 1, 2, 4",
        placeholders(2, token_ids.len()),
        placeholders(2 + token_ids.len(), key_ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(crate::now_ms());
    for id in token_ids.iter().chain(&key_ids) {
        q = q.bind(*id);
    }
    let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut state: std::collections::HashMap<String, (i64, Vec<(i64, String)>)> =
        std::collections::HashMap::new();
    for r in q.fetch_all(&mut **tx).await.map_err(db_err)? {
        let kind: String = r.try_get("kind").map_err(db_err)?;
        let id: String = r.try_get("id").map_err(db_err)?;
        if kind == "t" {
            live.insert(id);
            continue;
        }
        let floor: i64 = r.try_get("floor").map_err(db_err)?;
        let version: i64 = r.try_get("version").map_err(db_err)?;
        let st: String = r.try_get("state").map_err(db_err)?;
        state
            .entry(id)
            .or_insert_with(|| (floor, Vec::new()))
            .1
            .push((version, st));
    }
    Ok(batch
        .iter()
        .map(|p| match &p.guard {
            None => true,
            Some(g) => {
                live.contains(&g.token_id)
                    && state.get(&g.key_id).is_some_and(|(floor, versions)| {
                        *floor == g.min_decryption_version && *versions == g.versions
                    })
            }
        })
        .collect())
}

/// `$first, $first+1, ...` (`count` of them).
fn placeholders(first: usize, count: usize) -> String {
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
        // Not ready without a writer: every key use would fail.
        if self.appender.is_closed() {
            return Err(StoreError::Database("audit writer stopped".into()));
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

    fn group_commit_stats(&self) -> (u64, u64) {
        (
            self.groups.commits.load(Ordering::Relaxed),
            self.groups.entries.load(Ordering::Relaxed),
        )
    }

    async fn close(&self) {
        self.pool.close().await;
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
