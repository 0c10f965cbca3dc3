//! The audit group-commit writer: one per store.
//!
//! Requests that use a key queue their audit entries here; the writer takes everything queued (up
//! to [`MAX_GROUP`]), checks the entries' guards and appends them in one transaction, and only
//! once that transaction is durable tells each request its entry is written — so a key still
//! never leaves before its entry is on disk, but a burst of requests shares one commit instead of
//! queueing for one each. A failed commit fails every request of the group (fail closed); a failed
//! guard fails only its own request, with nothing written for it.
//!
//! The writer holds its own connection (detached from the pool) and runs its transactions by hand,
//! so each group costs two round trips to SQLite and four to PostgreSQL:
//!
//! - SQLite: `BEGIN IMMEDIATE` + head lock + guard check in one script, then insert + head move +
//!   `COMMIT` in another. In WAL mode the writer's connection runs `synchronous = NORMAL` and the
//!   WAL file is `fdatasync`ed by the [`sync_loop`] thread before any answer of the group leaves:
//!   the same guarantee as `synchronous = FULL` (whose only difference in WAL mode is that sync, at
//!   each commit), but the writer already writes the next group while the disk syncs this one, and
//!   one sync covers every group committed before it started.
//! - PostgreSQL: `BEGIN` + head lock (one simple-protocol script), the guard check, the insert with
//!   the head move (a data-modifying CTE), `COMMIT` (durable when it returns).

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

use super::sql::{bind_entries, chain_entries, db_err, insert_entries_sql, placeholders};
use super::{Backend, StoreError, StoreResult, UseGuard};
use crate::audit::{AuditEntry, NewAuditEntry};

/// Most entries one group commit writes (13 bound parameters each: well under SQLite's and
/// PostgreSQL's limits).
pub(super) const MAX_GROUP: usize = 256;

/// One request's audit entry waiting for the group commit, and where to say it is durable.
pub(super) struct PendingAppend {
    pub(super) entry: NewAuditEntry,
    pub(super) guard: Option<UseGuard>,
    pub(super) done: oneshot::Sender<StoreResult<AuditEntry>>,
}

/// Counters of the group-commit writer.
#[derive(Default)]
pub(super) struct GroupStats {
    /// Group transactions committed.
    pub(super) commits: AtomicU64,
    /// Entries in them.
    pub(super) entries: AtomicU64,
    /// WAL syncs done by [`sync_loop`] (SQLite only; each covers one or more commits).
    pub(super) syncs: AtomicU64,
    /// A WAL sync failed: the writer has stopped appending (see [`sync_loop`]).
    pub(super) sync_failed: AtomicBool,
}

impl GroupStats {
    /// The error every append gets once a WAL sync has failed.
    pub(super) fn halted(&self) -> Option<StoreError> {
        self.sync_failed.load(Ordering::Acquire).then(|| {
            StoreError::Database(
                "audit WAL sync failed earlier: appends stopped until the node restarts".into(),
            )
        })
    }
}

/// The writer's connection and how its commits become durable.
struct WriterConn {
    conn: AnyConnection,
    backend: Backend,
    /// SQLite in WAL mode on a file: the connection commits without syncing and this WAL file must
    /// be synced before the group is answered. `None`: a commit is durable when it returns.
    wal: Option<PathBuf>,
}

impl WriterConn {
    /// Take a connection out of the pool for good (the pool may open a replacement) and set it up.
    async fn open(pool: &AnyPool) -> StoreResult<WriterConn> {
        let mut conn = pool.acquire().await.map_err(db_err)?.detach();
        let backend = Backend::of_connection(conn.backend_name());
        if backend == Backend::Postgres {
            return Ok(WriterConn {
                conn,
                backend,
                wal: None,
            });
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .map_err(db_err)?;
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&mut conn)
                .await
                .map_err(db_err)?;
        // An in-memory or temporary database has no file to sync: keep the pool's FULL setting.
        let wal = if mode.eq_ignore_ascii_case("wal") && !file.is_empty() {
            conn.execute("PRAGMA synchronous = NORMAL")
                .await
                .map_err(db_err)?;
            Some(PathBuf::from(format!("{file}-wal")))
        } else {
            None
        };
        Ok(WriterConn { conn, backend, wal })
    }
}

/// A group whose transaction committed: the entries written and who waits for each.
struct Committed {
    waiters: Vec<oneshot::Sender<StoreResult<AuditEntry>>>,
    entries: Vec<AuditEntry>,
}

impl Committed {
    /// Tell every waiter: its entry, once durable; the error otherwise.
    fn answer(self, durable: &StoreResult<()>) {
        match durable {
            Ok(()) => {
                for (waiter, entry) in self.waiters.into_iter().zip(self.entries) {
                    // The request may have gone (client hung up): its entry is written anyway.
                    let _ = waiter.send(Ok(entry));
                }
            }
            Err(e) => {
                for waiter in self.waiters {
                    let _ = waiter.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The thread that syncs the WAL for committed groups, and which WAL it syncs.
struct Syncer {
    wal: PathBuf,
    committed: std::sync::mpsc::Sender<Committed>,
}

impl Syncer {
    fn start(wal: PathBuf, stats: Arc<GroupStats>) -> StoreResult<Syncer> {
        let (committed, queue) = std::sync::mpsc::channel();
        let path = wal.clone();
        std::thread::Builder::new()
            .name("pqkms-wal-sync".into())
            .spawn(move || sync_loop(&path, &queue, &stats))
            .map_err(|e| StoreError::Database(format!("cannot start the WAL sync thread: {e}")))?;
        Ok(Syncer { wal, committed })
    }
}

/// Sync the WAL for every group committed so far, answer them, repeat. A sync that starts after a
/// group's `COMMIT` returned covers it; all groups queued by then share it.
///
/// A failed sync stops the writer for good (fail-stop, as PostgreSQL does on a failed fsync): after
/// one, the kernel may have dropped the unwritten pages and a later sync can succeed without them,
/// and SQLite's recovery discards every WAL frame after a missing one — so no later answer could
/// promise durability. Every waiting and later append fails, `/readyz` fails, and a restart
/// recovers from what is on disk.
fn sync_loop(wal: &Path, queue: &std::sync::mpsc::Receiver<Committed>, stats: &GroupStats) {
    while let Ok(first) = queue.recv() {
        let mut ready = vec![first];
        ready.extend(queue.try_iter());
        let durable = match stats.halted() {
            Some(e) => Err(e),
            None => sync_wal(wal),
        };
        match &durable {
            Ok(()) => {
                stats.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if !stats.sync_failed.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "audit WAL sync failed: no more appends until restart");
                }
            }
        }
        for group in ready {
            group.answer(&durable);
        }
    }
}

/// `fdatasync` the WAL file. It is opened afresh each time: SQLite can remove and recreate it (when
/// the last connection closes), and an old descriptor would sync a file nobody reads any more. A
/// missing WAL is an error (fail closed), though it only goes missing after a checkpoint.
fn sync_wal(wal: &Path) -> StoreResult<()> {
    let io = |e: std::io::Error| StoreError::Database(format!("audit WAL sync: {e}"));
    std::fs::File::open(wal)
        .map_err(io)?
        .sync_data()
        .map_err(io)
}

/// The writer's loop; see the module documentation. `holds_connection` says whether the writer has
/// a connection open, so that closing the store can wait until it is closed: it is outside the
/// pool, and SQLite checkpoints and removes the WAL only when its last connection closes.
pub(super) async fn group_commit(
    pool: AnyPool,
    mut queue: mpsc::Receiver<PendingAppend>,
    stats: Arc<GroupStats>,
    holds_connection: watch::Sender<bool>,
) {
    // Kept across groups: no pool checkout (and its liveness ping) per group. After a failed or
    // panicked group the connection is dropped (which also ends any transaction it had open) and
    // the next group opens a fresh one.
    let mut held: Option<WriterConn> = None;
    let mut syncer: Option<Syncer> = None;
    let mut group: Vec<PendingAppend> = Vec::with_capacity(MAX_GROUP);
    loop {
        let received = tokio::select! {
            received = queue.recv_many(&mut group, MAX_GROUP) => received,
            // `Pool::close` is under way: close ours too, so the database is left clean.
            _ = pool.close_event(), if held.is_some() => {
                if let Some(writer) = held.take() {
                    let _ = writer.conn.close().await;
                }
                holds_connection.send_replace(false);
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
        if let Some(e) = stats.halted() {
            fail_all(batch, &e);
            continue;
        }
        let writer = match held.take() {
            Some(writer) => writer,
            None => match WriterConn::open(&pool).await {
                Ok(writer) => {
                    holds_connection.send_replace(true);
                    writer
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit group commit cannot get a connection");
                    fail_all(batch, &e);
                    continue;
                }
            },
        };
        // Its own task: a panic inside fails this group's requests (their answers are dropped,
        // which they see as an error), not the writer.
        let task = tokio::spawn(async move {
            let mut writer = writer;
            let written = commit_group(&mut writer, batch).await;
            (writer, written)
        });
        let (writer, committed) = match task.await {
            Ok((writer, Ok(committed))) => (writer, committed),
            Ok((_, Err(e))) => {
                tracing::error!(error = %e, "audit group commit failed");
                holds_connection.send_replace(false);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit group commit panicked");
                holds_connection.send_replace(false);
                continue;
            }
        };
        if committed.entries.is_empty() {
            // Every guard failed: nothing was written, nothing to sync or answer.
            held = Some(writer);
            continue;
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .entries
            .fetch_add(committed.entries.len() as u64, Ordering::Relaxed);
        match &writer.wal {
            None => committed.answer(&Ok(())),
            Some(wal) => {
                if syncer.as_ref().is_none_or(|s| &s.wal != wal) {
                    match Syncer::start(wal.clone(), stats.clone()) {
                        Ok(s) => syncer = Some(s),
                        Err(e) => {
                            tracing::error!(error = %e, "audit group commit cannot sync");
                            committed.answer(&Err(e));
                            held = Some(writer);
                            continue;
                        }
                    }
                }
                if let Some(s) = &syncer
                    && let Err(std::sync::mpsc::SendError(committed)) = s.committed.send(committed)
                {
                    // The thread died with groups unsynced: as after a failed sync, stop.
                    syncer = None;
                    stats.sync_failed.store(true, Ordering::Release);
                    committed.answer(&Err(StoreError::Database(
                        "audit WAL sync thread stopped".into(),
                    )));
                }
            }
        }
        held = Some(writer);
    }
}

fn fail_all(batch: Vec<PendingAppend>, e: &StoreError) {
    for p in batch {
        let _ = p.done.send(Err(e.clone()));
    }
}

/// Lock the head, check guards, write the entries that pass and commit. Stale guards are answered
/// here; the written entries are returned to be answered once durable. On an error every request
/// of the group is answered with it, and the caller drops the connection (ending its transaction).
async fn commit_group(
    writer: &mut WriterConn,
    batch: Vec<PendingAppend>,
) -> StoreResult<Committed> {
    let (head, holds) = match lock_head_and_check(writer, &batch).await {
        Ok(checked) => checked,
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
    let chained = chain_entries(head.0, &head.1, entries);
    match append_and_commit(writer, &chained).await {
        Ok(()) => Ok(Committed {
            waiters,
            entries: chained,
        }),
        Err(e) => {
            for waiter in waiters {
                let _ = waiter.send(Err(e.clone()));
            }
            Err(e)
        }
    }
}

/// Take the audit-head lock with a no-op update that returns the head as a row of kind 'h', in the
/// guard rows' shape (see [`guards_holding`]).
const LOCK_HEAD: &str = "UPDATE audit_head SET seq = seq WHERE id = 1 \
     RETURNING 'h' AS kind, hash AS id, seq AS floor, 0 AS version, '' AS state";

/// Open the transaction, take the audit-head lock, and check the group's guards after it — so a
/// revocation or key change commits either wholly before the check (and is seen) or after these
/// entries (which then came first). Returns the head and, per pending entry, whether it may go in.
async fn lock_head_and_check(
    writer: &mut WriterConn,
    batch: &[PendingAppend],
) -> StoreResult<((i64, String), Vec<bool>)> {
    let guards = GuardQuery::of(batch, writer.backend);
    let rows = if writer.backend == Backend::Sqlite {
        // One script: BEGIN IMMEDIATE takes the write lock at once, so the reads after it see
        // everything committed before and nothing can commit until we do.
        let mut sql = format!("BEGIN IMMEDIATE; {LOCK_HEAD}");
        if let Some(g) = &guards {
            sql.push_str("; ");
            sql.push_str(&g.sql);
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(g) = &guards {
            q = g.bind(q);
        }
        q.fetch_all(&mut writer.conn).await.map_err(db_err)?
    } else {
        // PostgreSQL cannot prepare two statements as one; the first has no parameters, so it
        // goes with BEGIN over the simple protocol. The guard check must be its own statement:
        // at READ COMMITTED it then reads what committed before the head lock was granted.
        let mut rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {LOCK_HEAD}")))
            .fetch_all(&mut writer.conn)
            .await
            .map_err(db_err)?;
        if let Some(g) = &guards {
            let q = g.bind(sqlx::query(sqlx::AssertSqlSafe(g.sql.clone())));
            rows.extend(q.fetch_all(&mut writer.conn).await.map_err(db_err)?);
        }
        rows
    };
    guards_holding(&rows, batch)
}

/// Insert the chained entries, move the head and commit, in one round trip on SQLite (one script)
/// and two on PostgreSQL (a data-modifying CTE, then `COMMIT`).
async fn append_and_commit(writer: &mut WriterConn, chained: &[AuditEntry]) -> StoreResult<()> {
    let Some(last) = chained.last() else {
        // Every guard failed: nothing to write.
        return end(writer, "ROLLBACK").await;
    };
    let sqlite = writer.backend == Backend::Sqlite;
    let mut sql = insert_entries_sql(writer.backend, chained.len());
    if sqlite {
        sql.push_str("; COMMIT");
    }
    bind_entries(sqlx::query(sqlx::AssertSqlSafe(sql)), chained)
        .bind(last.seq)
        .bind(&last.hash)
        .execute(&mut writer.conn)
        .await
        .map_err(db_err)?;
    if sqlite {
        Ok(())
    } else {
        end(writer, "COMMIT").await
    }
}

async fn end(writer: &mut WriterConn, statement: &'static str) -> StoreResult<()> {
    sqlx::raw_sql(statement)
        .execute(&mut writer.conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The guard check for a group: one query (live tokens, and the keys' floors and version states).
struct GuardQuery<'a> {
    sql: String,
    token_ids: Vec<&'a str>,
    key_ids: Vec<&'a str>,
}

impl<'a> GuardQuery<'a> {
    /// `None` when no entry of the group carries a guard.
    fn of(batch: &'a [PendingAppend], backend: Backend) -> Option<GuardQuery<'a>> {
        let guards: Vec<&UseGuard> = batch.iter().filter_map(|p| p.guard.as_ref()).collect();
        if guards.is_empty() {
            return None;
        }
        let mut token_ids: Vec<&str> = guards.iter().map(|g| g.token_id.as_str()).collect();
        let mut key_ids: Vec<&str> = guards.iter().map(|g| g.key_id.as_str()).collect();
        token_ids.sort_unstable();
        token_ids.dedup();
        key_ids.sort_unstable();
        key_ids.dedup();
        // `?` on SQLite (it binds `$N` by looking each name up in a list), `$N` on PostgreSQL.
        let params = |first: usize, count: usize| -> String {
            match backend {
                Backend::Sqlite => vec!["?"; count].join(", "),
                Backend::Postgres => placeholders(first, count),
            }
        };
        // Rows of kind 't': a live token (expiry at commit time: an entry that waited past its
        // token's expiry releases nothing). Rows of kind 'v': one per version of a guarded key,
        // with the key's floor, in version order.
        let sql = format!(
            "SELECT 't' AS kind, id, 0 AS floor, 0 AS version, '' AS state FROM tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {}) AND id IN ({}) \
             UNION ALL \
             SELECT 'v' AS kind, k.id, k.min_decryption_version, v.version, v.state FROM keys k \
             JOIN key_versions v ON v.key_id = k.id WHERE k.id IN ({}) \
             ORDER BY 1, 2, 4",
            params(1, 1),
            params(2, token_ids.len()),
            params(2 + token_ids.len(), key_ids.len())
        );
        Some(GuardQuery {
            sql,
            token_ids,
            key_ids,
        })
    }

    fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        q = q.bind(crate::now_ms());
        for id in self.token_ids.iter().chain(&self.key_ids) {
            q = q.bind((*id).to_owned());
        }
        q
    }
}

/// Read the head row (kind 'h') and the guard rows, and decide each pending entry.
fn guards_holding(
    rows: &[AnyRow],
    batch: &[PendingAppend],
) -> StoreResult<((i64, String), Vec<bool>)> {
    let mut head = None;
    let mut live: HashSet<String> = HashSet::new();
    let mut state: HashMap<String, (i64, Vec<(i64, String)>)> = HashMap::new();
    for r in rows {
        let kind: String = r.try_get("kind").map_err(db_err)?;
        let id: String = r.try_get("id").map_err(db_err)?;
        let floor: i64 = r.try_get("floor").map_err(db_err)?;
        match kind.as_str() {
            "h" => head = Some((floor, id)),
            "t" => {
                live.insert(id);
            }
            _ => {
                let version: i64 = r.try_get("version").map_err(db_err)?;
                let st: String = r.try_get("state").map_err(db_err)?;
                state
                    .entry(id)
                    .or_insert_with(|| (floor, Vec::new()))
                    .1
                    .push((version, st));
            }
        }
    }
    let head = head.ok_or_else(|| StoreError::Database("audit head row missing".into()))?;
    let holds = batch
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
        .collect();
    Ok((head, holds))
}
