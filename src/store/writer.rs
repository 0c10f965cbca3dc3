//! The audit group-commit writer: one per store.
//!
//! Requests that use a key queue their audit entries here; the writer takes everything queued (up
//! to [`MAX_GROUP`]), checks the entries' guards and appends them in one transaction, and only
//! once that transaction is durable tells each request its entry is written — so a key still
//! never leaves before its entry is on disk, but a burst of requests shares one commit instead of
//! queueing for one each. A failed commit fails every request of the group (fail closed); a failed
//! guard fails only its own request, with nothing written for it.
//!
//! The writer holds its own connection (outside the pool) and runs its transactions by hand:
//!
//! - SQLite: a thread of its own with its own connection, one transaction per group without a
//!   hand-off to another thread, and the WAL synced by a second thread before any answer leaves
//!   ([`sqlite`]).
//! - PostgreSQL (this module's async task): one autocommit statement while this writer is the only
//!   one taking the head lock ([`append_in_one_statement`]); otherwise, and whenever that statement
//!   writes nothing, four round trips: `BEGIN` + head lock (one simple-protocol script), the guard
//!   check, the insert with the head move (a data-modifying CTE), `COMMIT` (durable when it
//!   returns).

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, PgConnection, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

use super::sql::{
    POSTGRES_SESSION, bind_entries, chain_entries, db_err, insert_entries_sql, placeholders,
};
use super::{Backend, StoreError, StoreResult, UseGuard};
use crate::audit::{AuditEntry, NewAuditEntry};

mod sqlite;
pub(super) use sqlite::{check_url as check_sqlite_url, start as start_sqlite};

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
    /// WAL syncs done by [`sqlite`]'s sync thread (each covers one or more commits).
    pub(super) syncs: AtomicU64,
    /// Of `commits`, those made in one statement ([`append_in_one_statement`], PostgreSQL).
    pub(super) one_statement: AtomicU64,
    /// A WAL sync failed: the writer has stopped appending (see [`sqlite`]).
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

/// The PostgreSQL writer's connection and what it knows of the head.
struct WriterConn {
    /// A PostgreSQL connection of its own, not the pool's `Any` one: the one statement binds the
    /// entries as arrays, which the `Any` driver cannot.
    conn: PgConnection,
    /// The head row as this writer last left it (the one-statement path).
    head: Option<Head>,
    /// Groups still to go the long way after the one-statement path missed.
    skip_fast: u32,
}

impl WriterConn {
    /// Open a connection to the pool's database, with the pool's session settings, outside the
    /// pool. A closed pool opens none.
    async fn open(pool: &AnyPool) -> StoreResult<WriterConn> {
        if pool.is_closed() {
            return Err(StoreError::Database("the store is closed".into()));
        }
        let options =
            PgConnectOptions::from_url(&pool.connect_options().database_url).map_err(db_err)?;
        let mut conn = PgConnection::connect_with(&options).await.map_err(db_err)?;
        conn.execute(POSTGRES_SESSION).await.map_err(db_err)?;
        Ok(WriterConn {
            conn,
            head: None,
            skip_fast: 0,
        })
    }
}

/// The audit-head row: the newest entry's seq and hash, and how many transactions have taken the
/// head lock (migrations/*/0004_head_lock_epoch.sql).
struct Head {
    seq: i64,
    hash: String,
    epoch: i64,
}

/// A group whose transaction committed: the entries written and who waits for each.
struct Committed {
    waiters: Vec<Waiter>,
    entries: Vec<AuditEntry>,
    /// Written by [`append_in_one_statement`].
    one_statement: bool,
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
            Err(e) => fail_waiters(self.waiters, e),
        }
    }
}

/// PostgreSQL's writer loop; see the module documentation. `holds_connection` says whether the
/// writer has a connection open, so that closing the store can wait until it is closed (it is
/// outside the pool).
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
        let Some(batch) = take_batch(&mut group, &stats) else {
            continue;
        };
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
        held = Some(writer);
        if count_commit(&stats, &committed) {
            committed.answer(&Ok(()));
        }
    }
}

/// Count a committed group; `false` when every guard failed and nothing was written (nothing to
/// sync or answer).
fn count_commit(stats: &GroupStats, committed: &Committed) -> bool {
    if committed.entries.is_empty() {
        return false;
    }
    stats.commits.fetch_add(1, Ordering::Relaxed);
    if committed.one_statement {
        stats.one_statement.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .entries
        .fetch_add(committed.entries.len() as u64, Ordering::Relaxed);
    true
}

/// Take what was received as the next group: without requests that are gone (timed out, client
/// hung up: they released nothing, so no entry for them), and `None` when nothing is left or the
/// writer has stopped after a failed sync (then every request is answered with that error).
fn take_batch(group: &mut Vec<PendingAppend>, stats: &GroupStats) -> Option<Vec<PendingAppend>> {
    let batch: Vec<PendingAppend> = std::mem::take(group)
        .into_iter()
        .filter(|p| !p.done.is_closed())
        .collect();
    if batch.is_empty() {
        return None;
    }
    if let Some(e) = stats.halted() {
        fail_all(batch, &e);
        return None;
    }
    Some(batch)
}

fn fail_all(batch: Vec<PendingAppend>, e: &StoreError) {
    fail_waiters(batch.into_iter().map(|p| p.done), e);
}

fn fail_waiters(waiters: impl IntoIterator<Item = Waiter>, e: &StoreError) {
    for waiter in waiters {
        let _ = waiter.send(Err(e.clone()));
    }
}

/// Where a request waits to hear that its entry is durable.
type Waiter = oneshot::Sender<StoreResult<AuditEntry>>;

/// Answer the entries whose guard failed with [`StoreError::Stale`] (nothing is written for them);
/// return the others, and who waits for each.
fn split_by_guards(
    batch: Vec<PendingAppend>,
    holds: Vec<bool>,
) -> (Vec<NewAuditEntry>, Vec<Waiter>) {
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
    (entries, waiters)
}

/// Write the group: in one statement when that path applies and every guard holds
/// ([`append_in_one_statement`]); otherwise lock the head, check guards, write the entries that
/// pass and commit. Stale guards are answered here; the written entries are returned to be
/// answered once durable. On an error every request of the group is answered with it, and the
/// caller drops the connection (ending its transaction).
async fn commit_group(
    writer: &mut WriterConn,
    batch: Vec<PendingAppend>,
) -> StoreResult<Committed> {
    let batch = match append_in_one_statement(writer, batch).await? {
        OneStatement::Committed(committed) => return Ok(committed),
        OneStatement::Missed(batch) => batch,
    };
    let (head, holds) = match lock_head_and_check(writer, &batch).await {
        Ok(checked) => checked,
        Err(e) => {
            fail_all(batch, &e);
            return Err(e);
        }
    };
    let (entries, waiters) = split_by_guards(batch, holds);
    let chained = chain_entries(head.seq, &head.hash, entries);
    match append_and_commit(writer, &chained).await {
        Ok(()) => {
            writer.head = Some(match chained.last() {
                Some(last) => Head {
                    seq: last.seq,
                    hash: last.hash.clone(),
                    epoch: head.epoch,
                },
                // Rolled back (every guard failed), and the lock's epoch bump with it.
                None => Head {
                    epoch: head.epoch - 1,
                    ..head
                },
            });
            Ok(Committed {
                waiters,
                entries: chained,
                one_statement: false,
            })
        }
        Err(e) => {
            fail_waiters(waiters, &e);
            Err(e)
        }
    }
}

/// After the one-statement path found another epoch in its snapshot (another writer takes the head
/// lock too: another node), this many groups go the long way before it is tried again, so nodes
/// that share a chain pay for about one missed statement in this many groups, not one in each.
const FAST_PATH_BACKOFF: u32 = 16;

/// What [`append_in_one_statement`] did with a group.
enum OneStatement {
    /// Appended and committed.
    Committed(Committed),
    /// Nothing written (not tried, the head moved, or a guard failed): the long way decides.
    Missed(Vec<PendingAppend>),
}

/// PostgreSQL, when this writer knows the head: one autocommit statement that moves the head from
/// where this writer left it, checks every guard of the group, and appends the entries chained
/// after it — all or nothing, durable when it returns. One round trip instead of four.
///
/// Why it decides as the long way does: the head update takes the head's row lock, and requires the
/// row to be exactly as this writer left it — seq, hash and `epoch`, which every other taker of the
/// lock bumps ([`super::sql::lock_head`], [`LOCK_HEAD`]) whether it appends or not. Any transaction
/// that changes tokens or keys takes that lock first. So it either committed before this
/// statement's snapshot (the guards see its changes — and the epoch differs, so nothing is written
/// anyway), or it committed while this statement waited for the lock — PostgreSQL then re-checks
/// the update against the newest head row, whose epoch is no longer the expected one, and nothing
/// is written — or it waits until this statement has committed (these entries come first). Any
/// failed guard also writes nothing; the long way then decides per entry.
async fn append_in_one_statement(
    writer: &mut WriterConn,
    batch: Vec<PendingAppend>,
) -> StoreResult<OneStatement> {
    if writer.skip_fast > 0 {
        writer.skip_fast -= 1;
        return Ok(OneStatement::Missed(batch));
    }
    let Some(head) = writer.head.take() else {
        return Ok(OneStatement::Missed(batch));
    };
    let guards = guard_arrays(&batch);
    let count = batch.len();
    let mut entries = Vec::with_capacity(count);
    let mut rest = Vec::with_capacity(count);
    for p in batch {
        entries.push(p.entry);
        rest.push((p.guard, p.done));
    }
    let chained = chain_entries(head.seq, &head.hash, entries);
    match run_one_statement(writer, &head, &guards, &chained).await {
        Ok(done) if done.appended == count as i64 => {
            writer.head = chained.last().map(|last| Head {
                seq: last.seq,
                hash: last.hash.clone(),
                epoch: head.epoch + 1,
            });
            Ok(OneStatement::Committed(Committed {
                waiters: rest.into_iter().map(|(_, done)| done).collect(),
                entries: chained,
                one_statement: true,
            }))
        }
        Ok(done) if done.appended == 0 => {
            // The head in the statement's snapshot as this writer left it: a guard failed (a use
            // decided on rows that have changed) or another transaction took the lock while the
            // statement waited for it; the next group tries one statement again. Otherwise
            // another writer (node) is taking the lock too: back off.
            if done.snapshot_epoch != head.epoch {
                writer.skip_fast = FAST_PATH_BACKOFF;
            }
            let batch = chained
                .into_iter()
                .zip(rest)
                .map(|(entry, (guard, done))| PendingAppend {
                    entry: entry.unchained(),
                    guard,
                    done,
                })
                .collect();
            Ok(OneStatement::Missed(batch))
        }
        other => {
            let e = match other {
                Err(e) => e,
                Ok(done) => StoreError::Database(format!(
                    "audit append wrote {} of {count} entries in one statement",
                    done.appended
                )),
            };
            for (_, done) in rest {
                let _ = done.send(Err(e.clone()));
            }
            Err(e)
        }
    }
}

/// The one statement of [`append_in_one_statement`]. Its text never changes (every parameter is a
/// scalar or a typed array), so the connection prepares it once. `$6`: the tokens that must be live
/// at `$7`; `$8`..`$10`: per guarded key, its id, the retirement floor and the version list the uses
/// were decided on ([`GuardArrays`]); `$11`..`$23`: the entries' columns ([`bind_rows`]). Answers
/// how many entries it appended and the head's epoch in its snapshot.
///
/// Each guard is checked by a scalar subquery on a primary key, one per token and key named, so the
/// cost follows the group, not the tables: a token check written as a join let PostgreSQL's planner
/// scan every token and re-parse the group's JSON per row (data-key throughput fell by a third from
/// 1,000 to 100,000 tenants; docs/PERFORMANCE.md). `one_statement_plan_reads_rows_by_key` holds
/// the plan to index lookups.
const ONE_STATEMENT_APPEND: &str = "\
WITH head AS ( \
    UPDATE audit_head SET seq = $1, hash = $2, epoch = epoch + 1 \
    WHERE id = 1 AND seq = $3 AND hash = $4 AND epoch = $5 \
    AND NOT EXISTS (SELECT 1 FROM UNNEST($6::text[]) AS t(id) \
        WHERE (SELECT tk.revoked_at IS NULL AND (tk.expires_at IS NULL OR tk.expires_at > $7) \
               FROM tokens tk WHERE tk.id = t.id) IS NOT TRUE) \
    AND NOT EXISTS (SELECT 1 FROM UNNEST($8::text[], $9::bigint[], $10::text[]) AS g(id, floor, versions) \
        WHERE (SELECT k.min_decryption_version FROM keys k WHERE k.id = g.id) IS DISTINCT FROM g.floor \
        OR (SELECT string_agg(v.version::text || ':' || v.state, ',' ORDER BY v.version) \
            FROM key_versions v WHERE v.key_id = g.id) IS DISTINCT FROM g.versions) \
    RETURNING 1), \
appended AS ( \
    INSERT INTO audit_log (seq, time_ms, principal, tenant, key_name, key_version, operation, \
        outcome, request_id, context_hash, detail, prev_hash, hash) \
    SELECT e.seq, e.time_ms, e.principal, e.tenant, e.key_name, e.key_version, e.operation, \
        e.outcome, e.request_id, e.context_hash, e.detail, e.prev_hash, e.hash \
    FROM UNNEST($11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], \
        $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], \
        $22::text[], $23::text[]) AS e(seq, time_ms, principal, tenant, key_name, key_version, \
        operation, outcome, request_id, context_hash, detail, prev_hash, hash) \
    WHERE EXISTS (SELECT 1 FROM head) \
    RETURNING 1) \
SELECT (SELECT COUNT(*) FROM appended) AS appended, \
    (SELECT epoch FROM audit_head WHERE id = 1) AS snapshot_epoch";

/// Bind the entries as `$11`..`$23`, one array per `audit_log` column: binary arrays leave
/// PostgreSQL nothing to lex (a JSON parameter was ~15 % of its CPU per append).
fn bind_rows<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, OneStatementDone, sqlx::postgres::PgArguments>,
    chained: &'q [AuditEntry],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, OneStatementDone, sqlx::postgres::PgArguments> {
    fn column<'q, T>(chained: &'q [AuditEntry], field: impl Fn(&'q AuditEntry) -> T) -> Vec<T> {
        chained.iter().map(field).collect()
    }
    query
        .bind(column(chained, |e| e.seq))
        .bind(column(chained, |e| e.time_ms))
        .bind(column(chained, |e| e.principal.as_str()))
        .bind(column(chained, |e| e.tenant.as_deref()))
        .bind(column(chained, |e| e.key.as_deref()))
        .bind(column(chained, |e| e.version))
        .bind(column(chained, |e| e.operation.as_str()))
        .bind(column(chained, |e| e.outcome.as_str()))
        .bind(column(chained, |e| e.request_id.as_str()))
        .bind(column(chained, |e| e.context_hash.as_deref()))
        .bind(column(chained, |e| e.detail.as_deref()))
        .bind(column(chained, |e| e.prev_hash.as_str()))
        .bind(column(chained, |e| e.hash.as_str()))
}

/// The group's guards as the statement's array parameters: distinct token ids, and distinct
/// (key, floor, versions) expectations — two uses of one key decided on different rows both go
/// in, and one of them fails.
struct GuardArrays {
    tokens: Vec<String>,
    key_ids: Vec<String>,
    floors: Vec<i64>,
    versions: Vec<String>,
}

fn guard_arrays(batch: &[PendingAppend]) -> GuardArrays {
    let mut tokens: Vec<&str> = Vec::new();
    let mut keys: Vec<&UseGuard> = Vec::new();
    for g in batch.iter().filter_map(|p| p.guard.as_ref()) {
        if !tokens.contains(&g.token_id.as_str()) {
            tokens.push(&g.token_id);
        }
        let same = |k: &&UseGuard| {
            k.key_id == g.key_id
                && k.min_decryption_version == g.min_decryption_version
                && k.versions == g.versions
        };
        if !keys.iter().any(same) {
            keys.push(g);
        }
    }
    GuardArrays {
        tokens: tokens.into_iter().map(str::to_owned).collect(),
        key_ids: keys.iter().map(|g| g.key_id.clone()).collect(),
        floors: keys.iter().map(|g| g.min_decryption_version).collect(),
        versions: keys.iter().map(|g| versions_text(&g.versions)).collect(),
    }
}

/// A version list as the statement's `string_agg` writes it from the rows: `1:enabled,2:disabled`,
/// oldest first (a guard's list is in version order; states are words without `:` or `,`).
fn versions_text(versions: &[(i64, String)]) -> String {
    let pairs: Vec<String> = versions
        .iter()
        .map(|(version, state)| format!("{version}:{state}"))
        .collect();
    pairs.join(",")
}

/// What the one statement did.
#[derive(sqlx::FromRow)]
struct OneStatementDone {
    appended: i64,
    snapshot_epoch: i64,
}

async fn run_one_statement(
    writer: &mut WriterConn,
    head: &Head,
    guards: &GuardArrays,
    chained: &[AuditEntry],
) -> StoreResult<OneStatementDone> {
    let Some(last) = chained.last() else {
        return Ok(OneStatementDone {
            appended: 0,
            snapshot_epoch: head.epoch,
        });
    };
    // `fetch_all`, not `fetch_one`: the driver answers `fetch_one` from the first row, before the
    // server has confirmed the (implicit) commit; an error at commit — a failed WAL flush — would
    // then go unseen and the group be answered as durable. `fetch_all` reads to the end.
    let query = sqlx::query_as(ONE_STATEMENT_APPEND)
        .bind(last.seq)
        .bind(&last.hash)
        .bind(head.seq)
        .bind(&head.hash)
        .bind(head.epoch)
        .bind(&guards.tokens)
        .bind(crate::now_ms())
        .bind(&guards.key_ids)
        .bind(&guards.floors)
        .bind(&guards.versions);
    let mut done: Vec<OneStatementDone> = bind_rows(query, chained)
        .fetch_all(&mut writer.conn)
        .await
        .map_err(db_err)?;
    match (done.pop(), done.is_empty()) {
        (Some(one), true) => Ok(one),
        _ => Err(StoreError::Database(
            "the one-statement audit append answered no single row".into(),
        )),
    }
}

/// Take the audit-head lock (bumping its epoch, as [`super::sql::lock_head`] does) with an update
/// that returns the head as a row of kind 'h', in the guard rows' shape (see [`guards_holding`]).
const LOCK_HEAD: &str = "UPDATE audit_head SET epoch = epoch + 1 WHERE id = 1 \
     RETURNING 'h' AS kind, hash AS id, seq AS floor, epoch AS version, '' AS state";

/// Open the transaction, take the audit-head lock, and check the group's guards after it — so a
/// revocation or key change commits either wholly before the check (and is seen) or after these
/// entries (which then came first). Returns the head and, per pending entry, whether it may go in.
async fn lock_head_and_check(
    writer: &mut WriterConn,
    batch: &[PendingAppend],
) -> StoreResult<(Head, Vec<bool>)> {
    // PostgreSQL cannot prepare two statements as one; the first has no parameters, so it goes
    // with BEGIN over the simple protocol. The guard check must be its own statement: at READ
    // COMMITTED it then reads what committed before the head lock was granted.
    let mut rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {LOCK_HEAD}")))
        .fetch_all(&mut writer.conn)
        .await
        .map_err(db_err)?;
    if let Some(g) = GuardQuery::of(batch, Backend::Postgres) {
        let q = g.bind(sqlx::query(sqlx::AssertSqlSafe(g.sql.clone())));
        rows.extend(q.fetch_all(&mut writer.conn).await.map_err(db_err)?);
    }
    let rows = rows
        .iter()
        .map(guard_row)
        .collect::<StoreResult<Vec<_>>>()?;
    guards_holding(&rows, batch)
}

/// Insert the chained entries and move the head (a data-modifying CTE), then `COMMIT`.
async fn append_and_commit(writer: &mut WriterConn, chained: &[AuditEntry]) -> StoreResult<()> {
    let Some(last) = chained.last() else {
        // Every guard failed: nothing to write.
        return end(writer, "ROLLBACK").await;
    };
    let sql = insert_entries_sql(Backend::Postgres, chained.len());
    bind_entries(sqlx::query(sqlx::AssertSqlSafe(sql)), chained)
        .bind(last.seq)
        .bind(&last.hash)
        .execute(&mut writer.conn)
        .await
        .map_err(db_err)?;
    end(writer, "COMMIT").await
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
        mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q = q.bind(crate::now_ms());
        for id in self.token_ids.iter().chain(&self.key_ids) {
            q = q.bind((*id).to_owned());
        }
        q
    }
}

/// A row of the head lock ([`LOCK_HEAD`], kind 'h') or of the guard check ([`GuardQuery`]), read
/// alike from either backend.
struct GuardRow {
    kind: String,
    id: String,
    floor: i64,
    version: i64,
    state: String,
}

fn guard_row(r: &PgRow) -> StoreResult<GuardRow> {
    Ok(GuardRow {
        kind: r.try_get("kind").map_err(db_err)?,
        id: r.try_get("id").map_err(db_err)?,
        floor: r.try_get("floor").map_err(db_err)?,
        version: r.try_get("version").map_err(db_err)?,
        state: r.try_get("state").map_err(db_err)?,
    })
}

/// A guarded key's floor (`min_decryption_version`) and its `(version, state)` list, as read.
type KeyState = (i64, Vec<(i64, String)>);

/// Read the head row (kind 'h') and the guard rows, and decide each pending entry.
fn guards_holding(rows: &[GuardRow], batch: &[PendingAppend]) -> StoreResult<(Head, Vec<bool>)> {
    let mut head = None;
    let mut live: HashSet<&str> = HashSet::new();
    let mut state: HashMap<&str, KeyState> = HashMap::new();
    for r in rows {
        match r.kind.as_str() {
            "h" => {
                head = Some(Head {
                    seq: r.floor,
                    hash: r.id.clone(),
                    epoch: r.version,
                });
            }
            "t" => {
                live.insert(&r.id);
            }
            _ => {
                state
                    .entry(&r.id)
                    .or_insert_with(|| (r.floor, Vec::new()))
                    .1
                    .push((r.version, r.state.clone()));
            }
        }
    }
    let head = head.ok_or_else(|| StoreError::Database("audit head row missing".into()))?;
    let holds = batch
        .iter()
        .map(|p| match &p.guard {
            None => true,
            Some(g) => {
                live.contains(g.token_id.as_str())
                    && state
                        .get(g.key_id.as_str())
                        .is_some_and(|(floor, versions)| {
                            *floor == g.min_decryption_version && *versions == g.versions
                        })
            }
        })
        .collect();
    Ok((head, holds))
}

#[cfg(test)]
mod tests {
    use super::super::test_db::TestPostgres;
    use super::super::{KeyRow, SqlStore, Store, TenantRow, TokenRow, VersionRow};
    use super::*;

    fn entry(operation: &str) -> NewAuditEntry {
        NewAuditEntry {
            time_ms: crate::now_ms(),
            principal: "tok-live".into(),
            tenant: Some("acme".into()),
            key: Some("default".into()),
            version: Some(1),
            operation: operation.into(),
            outcome: "ok".into(),
            request_id: "req".into(),
            context_hash: None,
            detail: None,
        }
    }

    fn token(id: &str, expires_at: Option<i64>) -> TokenRow {
        TokenRow {
            id: id.into(),
            token_hash: format!("hash-of-{id}"),
            tenant_id: Some("t1".into()),
            tenant_name: None,
            roles: "encrypt".into(),
            created_at: 1,
            expires_at,
            revoked_at: None,
        }
    }

    fn guard(token_id: &str, floor: i64, versions: &[(i64, &str)]) -> UseGuard {
        UseGuard {
            token_id: token_id.into(),
            key_id: "k1".into(),
            min_decryption_version: floor,
            versions: versions
                .iter()
                .map(|(v, s)| (*v, (*s).to_owned()))
                .collect(),
        }
    }

    /// A store with tenant `acme` (key `k1`, version 1 enabled) and tokens `tok-live`, `tok-other`
    /// and `tok-expired`: four audit entries.
    async fn store_with_tenant_and_tokens(url: &str) -> SqlStore {
        let store = SqlStore::connect(url, 2).await.expect("connect");
        let audit = || entry("test.setup");
        store
            .create_tenant(
                &TenantRow {
                    id: "t1".into(),
                    name: "acme".into(),
                    created_at: 1,
                },
                &KeyRow {
                    id: "k1".into(),
                    tenant_id: "t1".into(),
                    name: "default".into(),
                    created_at: 1,
                    min_decryption_version: 1,
                    rotation_period_secs: None,
                    next_rotation_at: None,
                },
                &VersionRow {
                    key_id: "k1".into(),
                    version: 1,
                    state: "enabled".into(),
                    sealed_private: Some(vec![1, 2, 3]),
                    root_version: 1,
                    public_key: vec![4, 5, 6],
                    fingerprint: "fp".into(),
                    created_at: 1,
                    destroy_at: None,
                    destroyed_at: None,
                },
                audit(),
            )
            .await
            .expect("tenant");
        for t in [
            token("tok-live", None),
            token("tok-other", None),
            token("tok-expired", Some(crate::now_ms() - 1000)),
        ] {
            store.create_token(&t, audit()).await.expect("token");
        }
        store
    }

    /// Key uses whose guards hold are written, each stale guard is refused with nothing written,
    /// and the chain stays whole — on PostgreSQL through the one-statement path while this writer
    /// is the only appender, and the long way after another transaction moved the head. The
    /// outcomes are the same on SQLite, which always goes the long way.
    async fn guards_decide_alike_on_every_path(url: &str) -> GroupCommitCounts {
        let store = store_with_tenant_and_tokens(url).await;
        let audit = || entry("test.setup");
        let held = guard("tok-live", 1, &[(1, "enabled")]);
        let mut expect_written = 4; // tenant + three tokens
        let use_key = |g: UseGuard| store.append_key_use(entry("test.use"), g);

        // The first use learns the head the long way; the second goes in one statement.
        use_key(held.clone()).await.expect("first use");
        use_key(held.clone()).await.expect("second use");
        expect_written += 2;
        let refused = [
            ("another floor", guard("tok-live", 2, &[(1, "enabled")])),
            ("another state", guard("tok-live", 1, &[(1, "disabled")])),
            (
                "another version list",
                guard("tok-live", 1, &[(1, "enabled"), (2, "enabled")]),
            ),
            (
                "an expired token",
                guard("tok-expired", 1, &[(1, "enabled")]),
            ),
            ("an unknown token", guard("tok-none", 1, &[(1, "enabled")])),
            (
                "an unknown key",
                UseGuard {
                    key_id: "k-none".into(),
                    ..held.clone()
                },
            ),
        ];
        for (what, g) in refused {
            let got = use_key(g).await;
            assert!(
                matches!(got, Err(StoreError::Stale)),
                "a use decided on {what} must be refused, got {got:?}"
            );
        }
        // A refused guard leaves the head as this writer left it: one statement again.
        use_key(held.clone()).await.expect("use after refusals");
        expect_written += 1;

        // Another transaction moves the head (and revokes a token): the next use, whose guard
        // holds, must be chained after the new head, not after the one this writer left.
        store
            .revoke_token(Some("t1"), "tok-live", crate::now_ms(), audit())
            .await
            .expect("revoke");
        expect_written += 1;
        use_key(guard("tok-other", 1, &[(1, "enabled")]))
            .await
            .expect("use with another live token");
        expect_written += 1;
        let got = use_key(held.clone()).await;
        assert!(
            matches!(got, Err(StoreError::Stale)),
            "a use of a token revoked since must be refused, got {got:?}"
        );

        let verification = crate::audit::verify_chain(&store).await.expect("verify");
        assert!(verification.ok, "{verification:?}");
        assert_eq!(verification.entries, expect_written);
        let stats = store.group_commit_stats();
        store.close().await;
        GroupCommitCounts {
            commits: stats.commits,
            one_statement: stats.one_statement_commits,
        }
    }

    #[derive(Debug, PartialEq)]
    struct GroupCommitCounts {
        commits: u64,
        one_statement: u64,
    }

    #[tokio::test]
    async fn sqlite_guards_decide_the_long_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let counts = guards_decide_alike_on_every_path(&url).await;
        assert_eq!(
            counts,
            GroupCommitCounts {
                commits: 4,
                one_statement: 0
            }
        );
    }

    /// Closing the store closes the SQLite writer's own connection after its last group is
    /// synced (so SQLite, closing its last connection, checkpoints and removes the WAL), and a
    /// closed store opens no new writer connection: a later use fails and writes nothing.
    #[tokio::test]
    async fn sqlite_close_leaves_no_wal_and_refuses_later_uses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let store = store_with_tenant_and_tokens(&url).await;
        let held = guard("tok-live", 1, &[(1, "enabled")]);
        for _ in 0..3 {
            store
                .append_key_use(entry("test.use"), held.clone())
                .await
                .expect("use");
        }
        let wal = dir.path().join("t.db-wal");
        assert!(wal.exists(), "the WAL is in use while the store is open");
        tokio::time::timeout(std::time::Duration::from_secs(10), store.close())
            .await
            .expect("close returns");
        assert!(
            !wal.exists(),
            "closing must leave the database checkpointed, without a WAL"
        );
        let late = store.append_key_use(entry("test.use"), held).await;
        assert!(
            late.is_err(),
            "a closed store must refuse a use, got {late:?}"
        );
        assert!(!wal.exists(), "a refused use must not reopen the database");
    }

    /// Needs `PQKMS_TEST_POSTGRES_URL` (CI sets it); skipped with a warning without it.
    #[tokio::test]
    async fn postgres_guards_decide_alike_in_one_statement_and_the_long_way() {
        let Some(db) = TestPostgres::create(&[]).await else {
            return;
        };
        let counts = guards_decide_alike_on_every_path(&db.url).await;
        drop(db);
        // The second use and the use after the refusals in one statement; the first (head
        // unknown) and the one after the revocation (head moved) the long way.
        assert_eq!(
            counts,
            GroupCommitCounts {
                commits: 4,
                one_statement: 2
            }
        );
    }

    /// [`store_with_tenant_and_tokens`], then `sql` run on a connection of the test's own (kept
    /// open for more).
    async fn store_then_sql(url: &str, sql: &'static str) -> (SqlStore, PgConnection) {
        let store = store_with_tenant_and_tokens(url).await;
        let mut conn = PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .expect("test rows");
        (store, conn)
    }

    /// Two uses of `held`: the first learns the head the long way, the second goes in one
    /// statement (the writer now knows the head).
    async fn use_twice_second_in_one_statement(store: &SqlStore, held: &UseGuard) {
        for _ in 0..2 {
            store
                .append_key_use(entry("test.use"), held.clone())
                .await
                .expect("use");
        }
        assert_eq!(store.group_commit_stats().one_statement_commits, 1);
    }

    /// The one statement's plan, generic as a prepared statement's becomes: every guard read is
    /// an index lookup by key, however many tokens and keys there are (the JSON form it replaced
    /// scanned every token, re-parsing the list per row). Tables of thousands of rows and no
    /// statistics (as before autovacuum has run), where a scan is a real option for the planner.
    #[tokio::test]
    async fn postgres_one_statement_plan_reads_rows_by_key() {
        let Some(db) = TestPostgres::create(&[]).await else {
            return;
        };
        let (store, mut conn) = store_then_sql(
            &db.url,
            "INSERT INTO tenants SELECT 'tn' || i, 'name' || i, 1 FROM generate_series(1, 5000) i; \
             INSERT INTO keys (id, tenant_id, name, created_at) \
                 SELECT 'key' || i, 'tn' || i, 'default', 1 FROM generate_series(1, 5000) i; \
             INSERT INTO key_versions (key_id, version, state, root_version, public_key, \
                 fingerprint, created_at) \
                 SELECT 'key' || i, 1, 'enabled', 1, '\\x00', 'fp', 1 FROM generate_series(1, 5000) i; \
             INSERT INTO tokens (id, token_hash, tenant_id, roles, created_at) \
                 SELECT 'tk' || i, 'th' || i, 'tn' || i, 'encrypt', 1 FROM generate_series(1, 5000) i; \
             SET plan_cache_mode = force_generic_plan",
        )
        .await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE one_statement AS {ONE_STATEMENT_APPEND}"
        )))
        .execute(&mut conn)
        .await
        .expect("prepare");
        let nulls = vec!["NULL"; 23].join(", ");
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (COSTS OFF) EXECUTE one_statement({nulls})"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("explain");
        let plan = plan.join("\n");
        for table in ["tokens", "keys", "key_versions"] {
            assert!(
                !plan.contains(&format!("Seq Scan on {table}")),
                "the one statement scans {table}:\n{plan}"
            );
        }
        for index in ["tokens_pkey", "keys_pkey", "key_versions_pkey"] {
            assert!(plan.contains(index), "no lookup by {index}:\n{plan}");
        }
        conn.close().await.expect("close");
        store.close().await;
        drop(db);
    }

    /// A key with several versions: the guard's version list, as [`versions_text`] writes it,
    /// must equal what the statement builds from the rows (numeric order: 10 after 2), or every
    /// use of a rotated key would miss the one statement and go the long way.
    #[tokio::test]
    async fn postgres_a_rotated_key_goes_in_one_statement() {
        let Some(db) = TestPostgres::create(&[]).await else {
            return;
        };
        let (store, conn) = store_then_sql(
            &db.url,
            "INSERT INTO key_versions (key_id, version, state, root_version, public_key, \
                 fingerprint, created_at) \
             VALUES ('k1', 10, 'enabled', 1, '\\x00', 'fp', 1), \
                    ('k1', 2, 'disabled', 1, '\\x00', 'fp', 1)",
        )
        .await;
        let held = guard(
            "tok-live",
            1,
            &[(1, "enabled"), (2, "disabled"), (10, "enabled")],
        );
        use_twice_second_in_one_statement(&store, &held).await;
        let stale = guard(
            "tok-live",
            1,
            &[(1, "enabled"), (2, "enabled"), (10, "enabled")],
        );
        let got = store.append_key_use(entry("test.use"), stale).await;
        assert!(
            matches!(got, Err(StoreError::Stale)),
            "a use decided on another version state must be refused, got {got:?}"
        );
        conn.close().await.expect("close");
        store.close().await;
        drop(db);
    }

    /// The hardest interleaving for the one statement: another transaction takes the head lock
    /// first, revokes the token a use relies on — without appending, so the head's seq and hash do
    /// not move — and commits while the use's statement waits for the lock. The statement's
    /// snapshot predates the revocation; the use must still be refused.
    #[tokio::test]
    async fn postgres_a_revocation_committed_while_the_statement_waits_is_seen() {
        let Some(db) = TestPostgres::create(&[]).await else {
            return;
        };
        let store = std::sync::Arc::new(store_with_tenant_and_tokens(&db.url).await);
        let held = guard("tok-live", 1, &[(1, "enabled")]);
        use_twice_second_in_one_statement(&store, &held).await;

        let other = sqlx::AnyPool::connect(&db.url).await.expect("connect");
        let mut tx = other.begin().await.expect("begin");
        super::super::sql::lock_head(&mut tx).await.expect("lock");
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = 'tok-live'")
            .bind(crate::now_ms())
            .execute(&mut *tx)
            .await
            .expect("revoke");
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { store.append_key_use(entry("test.use"), held).await })
        };
        let started = std::time::Instant::now();
        loop {
            let blocked: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&other)
            .await
            .expect("pg_stat_activity");
            if blocked > 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the use never waited for the head lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tx.commit().await.expect("commit");
        let got = waiting.await.expect("join");
        assert!(
            matches!(got, Err(StoreError::Stale)),
            "a use of a token revoked while it waited must be refused, got {got:?}"
        );
        let verification = crate::audit::verify_chain(&*store).await.expect("verify");
        assert!(verification.ok, "{verification:?}");
        assert_eq!(verification.entries, 6);
        store.close().await;
        other.close().await;
        drop(db);
    }
}
