//! SQLite's group-commit writer: a thread of its own that owns its connection.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, and every statement is a round
//! trip from the async writer task to that thread and back. Under load those hand-offs, not
//! SQLite, were most of a group's commit time (docs/PERFORMANCE.md, fifth session): each waits for
//! a busy core twice. Here one thread takes the whole group from the queue and runs `BEGIN
//! IMMEDIATE`, the head lock, the guard check, the inserts, the head move and `COMMIT` with no
//! hand-off, through rusqlite on the same SQLite library as sqlx's (one `libsqlite3-sys`, so the
//! pool's connections and this one share SQLite's in-process locks). It then hands the group to the
//! WAL sync thread and takes the next one while the disk syncs.
//!
//! The connection commits with `synchronous = NORMAL`; the WAL file is `fdatasync`ed by
//! [`sync_loop`] before any answer of the group leaves: in WAL mode the same guarantee as `FULL`
//! (whose only difference is that sync at each commit), and one sync covers every group committed
//! before it started.

use rusqlite::types::Value;
use rusqlite::{Connection, TransactionBehavior};
use sqlx::AnyPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};

use super::{
    Committed, GroupStats, GuardQuery, GuardRow, MAX_GROUP, PendingAppend, count_commit, fail_all,
    fail_waiters, guards_holding, split_by_guards, take_batch,
};
use crate::store::sql::{SQLITE_PRAGMAS, chain_entries, db_err};
use crate::store::{Backend, StoreError, StoreResult};

/// The database file and, in WAL mode, the WAL file the sync thread syncs.
struct Files {
    db: PathBuf,
    /// `None` (not in WAL mode): the connection keeps `synchronous = FULL` and a commit is durable
    /// when it returns.
    wal: Option<PathBuf>,
}

/// Refuse SQLite URL options under which the writer's own connection (default VFS, read-write)
/// would not share the pool's file and locks: another `vfs`, `immutable`, or a `mode` other than
/// `rw`/`rwc` (`ro` would let the writer write what the pool may not; `memory` has no file).
/// Checked before connecting.
pub(in crate::store) fn check_url(url: &str) -> StoreResult<()> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(());
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let allowed = match name {
            "mode" => matches!(value, "rw" | "rwc"),
            "cache" => true,
            _ => false,
        };
        if !allowed {
            return Err(StoreError::Database(format!(
                "SQLite URL option `{name}` is not supported (allowed: mode=rw|rwc, cache)"
            )));
        }
    }
    Ok(())
}

/// Find the pool's database file and start the writer thread on it. A database without a file
/// (in memory) cannot be shared with a second connection: it is refused.
pub(in crate::store) async fn start(
    pool: AnyPool,
    queue: mpsc::Receiver<PendingAppend>,
    stats: Arc<GroupStats>,
    holds_connection: watch::Sender<bool>,
) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(db_err)?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err)?;
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
    drop(conn);
    if file.is_empty() {
        return Err(StoreError::Database(
            "the SQLite store needs a database file (not an in-memory database)".into(),
        ));
    }
    let files = Files {
        wal: mode
            .eq_ignore_ascii_case("wal")
            .then(|| PathBuf::from(format!("{file}-wal"))),
        db: PathBuf::from(file),
    };
    std::thread::Builder::new()
        .name("pqkms-audit-writer".into())
        .spawn(move || {
            // A current-thread runtime only to wait for the queue, the pool's closing and a
            // timer together; the commits themselves are plain blocking calls. Built here: a
            // runtime may not be dropped on the async caller's thread. Without it the queue is
            // dropped, so appends fail and /readyz reports the writer stopped.
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(waiter) => run(&waiter, &pool, queue, &files, &stats, &holds_connection),
                Err(e) => tracing::error!(error = %e, "cannot start the audit writer"),
            }
        })
        .map_err(|e| StoreError::Database(format!("cannot start the audit writer: {e}")))?;
    Ok(())
}

/// How often an idle writer that holds its connection looks whether the pool has closed, in case
/// it missed the pool's close event.
const CLOSE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a closing writer waits for the pool's connections to close before closing its own.
const POOL_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The thread's loop: take what is queued (up to [`MAX_GROUP`]), commit it as one group, hand it
/// to the sync thread; close the connection when the pool closes, so the database is left clean.
fn run(
    waiter: &tokio::runtime::Runtime,
    pool: &AnyPool,
    mut queue: mpsc::Receiver<PendingAppend>,
    files: &Files,
    stats: &Arc<GroupStats>,
    holds_connection: &watch::Sender<bool>,
) {
    // Kept across groups. After a failed or panicked group it is dropped (which rolls back any
    // open transaction) and the next group opens a fresh one.
    let mut held: Option<Connection> = None;
    let mut syncer: Option<Syncer> = None;
    let mut group: Vec<PendingAppend> = Vec::with_capacity(MAX_GROUP);
    loop {
        let received = waiter.block_on(async {
            loop {
                tokio::select! {
                    received = queue.recv_many(&mut group, MAX_GROUP) => return Some(received),
                    // `Pool::close` is under way: close ours too (SQLite checkpoints and removes
                    // the WAL when its last connection closes).
                    _ = pool.close_event(), if held.is_some() => return None,
                    _ = tokio::time::sleep(CLOSE_CHECK), if held.is_some() => {
                        if pool.is_closed() {
                            return None;
                        }
                    }
                }
            }
        });
        let Some(received) = received else {
            // Close ours only once every pool connection has closed: SQLite checkpoints and
            // removes the WAL when its last connection closes, and only if no other connection is
            // open at that moment — two closing together can each leave it to the other.
            // Bounded: a pool connection that never comes back must not hold the writer forever.
            waiter.block_on(async {
                let _ = tokio::time::timeout(POOL_CLOSE_WAIT, pool.close()).await;
            });
            close(&mut held, &mut syncer, holds_connection);
            continue;
        };
        if received == 0 {
            break;
        }
        let Some(batch) = take_batch(&mut group, stats) else {
            continue;
        };
        // Closed: no new connection (the pool's writers get `PoolClosed` alike).
        if held.is_none() && pool.is_closed() {
            fail_all(batch, &StoreError::Database("the store is closed".into()));
            continue;
        }
        let mut conn = match held.take() {
            Some(conn) => conn,
            None => match open(files) {
                Ok(conn) => {
                    holds_connection.send_replace(true);
                    conn
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit group commit cannot open its connection");
                    fail_all(batch, &e);
                    continue;
                }
            },
        };
        // A panic inside fails this group's requests (their answers are dropped, which they see
        // as an error), not the writer.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_group(&mut conn, batch)
        }));
        held = Some(conn);
        let committed = match written {
            Ok(Ok(committed)) => committed,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit group commit failed");
                close(&mut held, &mut syncer, holds_connection);
                continue;
            }
            Err(_) => {
                tracing::error!("audit group commit panicked");
                close(&mut held, &mut syncer, holds_connection);
                continue;
            }
        };
        if !count_commit(stats, &committed) {
            continue;
        }
        match &files.wal {
            None => committed.answer(&Ok(())),
            Some(wal) => hand_to_sync(&mut syncer, wal, committed, stats),
        }
    }
    close(&mut held, &mut syncer, holds_connection);
}

/// Close the writer's connection, after the sync thread has synced (and answered) every group
/// handed to it: if this was SQLite's last connection, closing checkpoints and removes the WAL, and
/// a sync still pending would then find no WAL and stop the writer for nothing.
fn close(
    held: &mut Option<Connection>,
    syncer: &mut Option<Syncer>,
    holds_connection: &watch::Sender<bool>,
) {
    if let Some(s) = syncer.take() {
        s.finish();
    }
    *held = None;
    holds_connection.send_replace(false);
}

/// Open the writer's connection with the pool's settings, but `synchronous = NORMAL` in WAL mode
/// (the sync thread syncs the WAL before any answer).
fn open(files: &Files) -> StoreResult<Connection> {
    let conn = Connection::open(&files.db).map_err(sqlite_err)?;
    conn.execute_batch(SQLITE_PRAGMAS).map_err(sqlite_err)?;
    if files.wal.is_some() {
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(sqlite_err)?;
    }
    Ok(conn)
}

fn sqlite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// One group in one transaction: `BEGIN IMMEDIATE` takes the write lock at once, so the head lock
/// and guard check read everything committed before and nothing can commit until this does.
/// Stale guards are answered here; the written entries are returned to be answered once durable.
/// On an error every request of the group is answered with it, the transaction is rolled back
/// (rusqlite does on drop) and the caller drops the connection.
fn commit_group(conn: &mut Connection, batch: Vec<PendingAppend>) -> StoreResult<Committed> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = sqlite_err(e);
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let (head, holds) = match lock_head_and_check(&tx, &batch) {
        Ok(checked) => checked,
        Err(e) => {
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let (entries, waiters) = split_by_guards(batch, holds);
    let chained = chain_entries(head.seq, &head.hash, entries);
    let written = match chained.last() {
        // Every guard failed: nothing to write; roll the epoch bump back. Explicitly, so that a
        // failed rollback drops the connection instead of leaving it holding the write lock.
        None => tx.rollback().map_err(sqlite_err),
        Some(last) => (|| {
            let mut insert = tx.prepare_cached(INSERT_ENTRY)?;
            for e in &chained {
                insert.execute(rusqlite::params![
                    e.seq,
                    e.time_ms,
                    e.principal,
                    e.tenant,
                    e.key,
                    e.version,
                    e.operation,
                    e.outcome,
                    e.request_id,
                    e.context_hash,
                    e.detail,
                    e.prev_hash,
                    e.hash
                ])?;
            }
            drop(insert);
            tx.prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")?
                .execute(rusqlite::params![last.seq, last.hash])?;
            tx.commit()
        })()
        .map_err(sqlite_err),
    };
    match written {
        Ok(()) => Ok(Committed {
            waiters,
            entries: chained,
            one_statement: false,
        }),
        Err(e) => {
            fail_waiters(waiters, &e);
            Err(e)
        }
    }
}

const INSERT_ENTRY: &str = "INSERT INTO audit_log (seq, time_ms, principal, tenant, key_name, \
     key_version, operation, outcome, request_id, context_hash, detail, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Take the head lock (bumping its epoch) and read the group's guards after it.
fn lock_head_and_check(
    tx: &rusqlite::Transaction<'_>,
    batch: &[PendingAppend],
) -> StoreResult<(super::Head, Vec<bool>)> {
    let read = || -> rusqlite::Result<Vec<GuardRow>> {
        let mut rows: Vec<GuardRow> = tx
            .prepare_cached(super::LOCK_HEAD)?
            .query_map([], guard_row)?
            .collect::<rusqlite::Result<_>>()?;
        if let Some(g) = GuardQuery::of(batch, Backend::Sqlite) {
            let params = std::iter::once(Value::Integer(crate::now_ms())).chain(
                g.token_ids
                    .iter()
                    .chain(&g.key_ids)
                    .map(|id| Value::Text((*id).to_owned())),
            );
            let mut guards = tx.prepare_cached(&g.sql)?;
            let found = guards.query_map(rusqlite::params_from_iter(params), guard_row)?;
            for row in found {
                rows.push(row?);
            }
        }
        Ok(rows)
    };
    guards_holding(&read().map_err(sqlite_err)?, batch)
}

fn guard_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GuardRow> {
    Ok(GuardRow {
        kind: r.get("kind")?,
        id: r.get("id")?,
        floor: r.get("floor")?,
        version: r.get("version")?,
        state: r.get("state")?,
    })
}

/// The thread that syncs the WAL for committed groups: started with the writer's connection,
/// finished before it closes.
struct Syncer {
    committed: std::sync::mpsc::Sender<Committed>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn start(wal: PathBuf, stats: Arc<GroupStats>) -> StoreResult<Syncer> {
        let (committed, queue) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pqkms-wal-sync".into())
            .spawn(move || sync_loop(&wal, &queue, &stats))
            .map_err(|e| StoreError::Database(format!("cannot start the WAL sync thread: {e}")))?;
        Ok(Syncer { committed, thread })
    }

    /// Let the thread sync and answer what it was handed, and wait for it to end.
    fn finish(self) {
        drop(self.committed);
        let _ = self.thread.join();
    }
}

/// Queue a committed group for the sync thread (started on first use after the connection opens).
fn hand_to_sync(
    syncer: &mut Option<Syncer>,
    wal: &Path,
    committed: Committed,
    stats: &Arc<GroupStats>,
) {
    if syncer.is_none() {
        match Syncer::start(wal.to_path_buf(), stats.clone()) {
            Ok(s) => *syncer = Some(s),
            Err(e) => {
                tracing::error!(error = %e, "audit group commit cannot sync");
                committed.answer(&Err(e));
                return;
            }
        }
    }
    if let Some(s) = syncer
        && let Err(std::sync::mpsc::SendError(committed)) = s.committed.send(committed)
    {
        // The thread died with groups unsynced: as after a failed sync, stop.
        *syncer = None;
        stats.sync_failed.store(true, Ordering::Release);
        committed.answer(&Err(StoreError::Database(
            "audit WAL sync thread stopped".into(),
        )));
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
