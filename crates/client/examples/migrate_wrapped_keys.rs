//! Move every wrapped data key stored in a database table to the key's newest version, with
//! progress, after a rotation — the "re-wrap" step of docs/API.md, "A rotation, start to finish".
//!
//! The table is the one `customer_record` writes, plus a `dek_version` column (the version the
//! row's wrapped key names, written with the row), so that a run only selects rows still below the
//! newest version: an interrupted migration resumes where it stopped, and a finished one finds
//! nothing to do. Each page is re-wrapped with one `rewrap-batch` request (the data keys never
//! leave the service) and written back in one transaction, each row only if its wrapped key is
//! still the one read (a row rewritten meanwhile is left alone). At the end a random sample of
//! rows is decrypted to check the result.
//!
//! ```sh
//! pqkms serve &
//! export PQKMS_TOKEN=...        # decrypt role (and encrypt, for --seed)
//! export PQKMS_ADMIN_TOKEN=...  # tenant-admin, only for --rotate
//! cargo run -p pqkms-client --example migrate_wrapped_keys -- --seed 500 --rotate
//! cargo run -p pqkms-client --example migrate_wrapped_keys     # again: nothing left to do
//! ```
//!
//! Options: `--db <sqlx url>` (default `sqlite:customers.db?mode=rwc`), `--tenant` (`acme`),
//! `--key` (`default`), `--page <rows per request>` (25), `--seed <n>` (first create the table and
//! `n` encrypted rows), `--rotate` (first rotate the key, with `PQKMS_ADMIN_TOKEN`),
//! `--sample <n>` (rows decrypted at the end, 5). `PQKMS_ADDR` defaults to
//! `http://127.0.0.1:8650`.

use std::time::{Duration, Instant};

use pqkms_client::{
    CacheLimits, Client, EncryptedColumn, EncryptionContext, Error, MAX_REWRAP_BATCH,
    WrappedDataKey,
};
use sqlx::{Row, SqlitePool};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// What to migrate and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub tenant: String,
    pub key: String,
    /// Rows per `rewrap-batch` request. A wrapped key is 1672 base64 characters: with the
    /// service's default 64 KiB body limit, about 35 fit.
    pub page: usize,
}

/// The encryption context of the `customers` table (what its data keys are bound to).
pub fn context() -> EncryptionContext {
    EncryptionContext::from_iter([("table", "customers")])
}

/// Where a migration stands, after each page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Rows moved to the target version so far (this run).
    pub done: u64,
    /// Rows the service could not re-wrap (left as they are; see [`Report::failed`]).
    pub failed: u64,
    /// Rows below the target version when the run started.
    pub total: u64,
    /// Rows per second so far.
    pub rate: f64,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The version every migrated row's wrapped key names now (`None`: nothing to migrate).
    pub target: Option<u32>,
    /// Rows moved.
    pub moved: u64,
    /// Rows skipped because they changed while being migrated.
    pub changed_meanwhile: u64,
    /// Rows the service refused, with why (a destroyed or disabled version, a key that does not
    /// open with the table's context, ...).
    pub failed: Vec<(i64, Error)>,
}

/// Create the table (if needed) and add `n` encrypted rows.
pub async fn seed(
    client: &Client,
    db: &SqlitePool,
    opts: &Options,
    n: u64,
) -> Result<(), AnyError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, dek BLOB NOT NULL, \
         dek_version INTEGER NOT NULL, email BLOB NOT NULL)",
    )
    .execute(db)
    .await?;
    sqlx::query("CREATE INDEX IF NOT EXISTS customers_dek_version ON customers (dek_version, id)")
        .execute(db)
        .await?;
    let customers = client.encryptor(&opts.tenant, &opts.key, context());
    let first: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM customers")
        .fetch_one(db)
        .await?;
    let mut tx = db.begin().await?;
    for id in first..first + i64::try_from(n)? {
        let rec = customers.record(format!("customers/{id}")).await?;
        let wrapped = rec.wrapped_key();
        sqlx::query("INSERT INTO customers (id, dek, dek_version, email) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(wrapped.as_bytes())
            .bind(i64::from(wrapped.key_ref().version))
            .bind(rec.encrypt("email", &format!("customer{id}@example.com"))?)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Re-wrap every row below the key's newest version, a page at a time, calling `progress` after
/// each page. The newest version is learnt from the service's first answer (re-wrapping the oldest
/// row), so a `decrypt` token is all it needs. A row the service refuses is reported in
/// [`Report::failed`] and left as it is; a failure of the service or the database stops the run
/// (run it again: it resumes).
pub async fn migrate(
    client: &Client,
    db: &SqlitePool,
    opts: &Options,
    mut progress: impl FnMut(&Progress),
) -> Result<Report, AnyError> {
    let page = opts.page.clamp(1, MAX_REWRAP_BATCH);
    let ctx = context();
    let mut report = Report::default();
    // Rows that failed (reported once, not sent again).
    let mut failed_ids = std::collections::HashSet::new();

    // The oldest rows first, one at a time, until one re-wraps: its answer names the target (the
    // key's current version). A row that fails is reported and passed by.
    let mut probed = None;
    let mut after = (i64::MIN, i64::MIN);
    while probed.is_none() {
        let Some(row) = sqlx::query(
            "SELECT id, dek, dek_version FROM customers \
             WHERE dek_version > ? OR (dek_version = ? AND id > ?) ORDER BY dek_version, id LIMIT 1",
        )
        .bind(after.0)
        .bind(after.0)
        .bind(after.1)
        .fetch_optional(db)
        .await?
        else {
            // No rows at all, or none that the service can re-wrap.
            return Ok(report);
        };
        let (id, dek): (i64, Vec<u8>) = (row.get("id"), row.get("dek"));
        after = (row.get("dek_version"), id);
        match client.rewrap(&opts.tenant, &opts.key, &dek, &ctx).await {
            Ok(r) => probed = Some((id, dek, r)),
            Err(
                e @ (Error::Connect(_)
                | Error::Timeout(_)
                | Error::Unauthorized(_)
                | Error::Forbidden(_)
                | Error::NotFound(_)
                | Error::Internal(_)
                | Error::Unavailable(_)),
            ) => return Err(e.into()),
            Err(e) => {
                failed_ids.insert(id);
                report.failed.push((id, e));
            }
        }
    }
    let Some((id, dek, probe)) = probed else {
        return Ok(report);
    };
    let target = probe.version;
    report.target = Some(target);
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM customers WHERE dek_version < ?")
        .bind(i64::from(target))
        .fetch_one(db)
        .await?;
    let total = u64::try_from(total)?;
    let started = Instant::now();
    if probe.from_version < target {
        report.changed_meanwhile += store(db, &[(id, dek, probe.wrapped)]).await?;
        report.moved += 1;
    }
    progress(&Progress {
        done: report.moved,
        failed: u64::try_from(report.failed.len())?,
        total,
        rate: 0.0,
    });

    // Keyset pagination by id among the rows still below the target: failed rows are passed by,
    // and a second run starts again from the rows that are left.
    let mut after = i64::MIN;
    loop {
        let rows = sqlx::query(
            "SELECT id, dek FROM customers WHERE dek_version < ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(i64::from(target))
        .bind(after)
        .bind(i64::try_from(page)?)
        .fetch_all(db)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.get("id");
        let rows: Vec<(i64, Vec<u8>)> = rows
            .iter()
            .map(|r| (r.get("id"), r.get("dek")))
            .filter(|(id, _)| !failed_ids.contains(id))
            .collect();
        let items: Vec<(&[u8], &EncryptionContext)> =
            rows.iter().map(|(_, dek)| (dek.as_slice(), &ctx)).collect();
        if items.is_empty() {
            continue;
        }
        let results = client.rewrap_batch(&opts.tenant, &opts.key, &items).await?;
        let mut updates = Vec::with_capacity(rows.len());
        for ((id, dek), result) in rows.into_iter().zip(results) {
            match result {
                Ok(r) => updates.push((id, dek, r.wrapped)),
                Err(e) => report.failed.push((id, e)),
            }
        }
        report.moved += u64::try_from(updates.len())?;
        report.changed_meanwhile += store(db, &updates).await?;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        progress(&Progress {
            done: report.moved,
            failed: u64::try_from(report.failed.len())?,
            total,
            rate: report.moved as f64 / elapsed,
        });
    }
    report.moved -= report.changed_meanwhile;
    Ok(report)
}

/// Write re-wrapped keys back in one transaction, each only if the row still holds the key that
/// was read. Returns how many rows had changed meanwhile (and were left alone).
async fn store(
    db: &SqlitePool,
    updates: &[(i64, Vec<u8>, WrappedDataKey)],
) -> Result<u64, AnyError> {
    let mut tx = db.begin().await?;
    let mut skipped = 0;
    for (id, old, new) in updates {
        let done =
            sqlx::query("UPDATE customers SET dek = ?, dek_version = ? WHERE id = ? AND dek = ?")
                .bind(new.as_bytes())
                .bind(i64::from(new.key_ref().version))
                .bind(id)
                .bind(old)
                .execute(&mut *tx)
                .await?;
        skipped += u64::from(done.rows_affected() == 0);
    }
    tx.commit().await?;
    Ok(skipped)
}

/// Decrypt the `email` field of up to `n` random rows; returns how many were checked.
pub async fn verify_sample(
    client: &Client,
    db: &SqlitePool,
    opts: &Options,
    n: u32,
) -> Result<u32, AnyError> {
    let customers = client.encryptor(&opts.tenant, &opts.key, context());
    let rows = sqlx::query("SELECT id, dek, email FROM customers ORDER BY RANDOM() LIMIT ?")
        .bind(n)
        .fetch_all(db)
        .await?;
    for row in &rows {
        let id: i64 = row.get("id");
        let dek: Vec<u8> = row.get("dek");
        let opened = customers.open(format!("customers/{id}"), &dek).await?;
        let email: String = opened.decrypt("email", row.get::<EncryptedColumn, _>("email"))?;
        if email.is_empty() {
            return Err(format!("customer {id}: empty email").into());
        }
    }
    Ok(u32::try_from(rows.len())?)
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = std::env::var("PQKMS_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8650".into());
    let db_url = flag(&args, "--db").unwrap_or_else(|| "sqlite:customers.db?mode=rwc".into());
    let opts = Options {
        tenant: flag(&args, "--tenant").unwrap_or_else(|| "acme".into()),
        key: flag(&args, "--key").unwrap_or_else(|| "default".into()),
        page: flag(&args, "--page").map_or(Ok(25), |p| p.parse())?,
    };
    let sample: u32 = flag(&args, "--sample").map_or(Ok(5), |n| n.parse())?;
    // A migration reads each row once: caching its data keys would only hold them in memory.
    let client = Client::builder(&addr, std::env::var("PQKMS_TOKEN")?)
        .cache_limits(CacheLimits::disabled())
        .timeout(Duration::from_secs(60))
        .build()?;
    let db = SqlitePool::connect(&db_url).await?;

    if let Some(n) = flag(&args, "--seed") {
        seed(&client, &db, &opts, n.parse()?).await?;
        println!("seeded {n} rows");
    }
    if args.iter().any(|a| a == "--rotate") {
        let admin = Client::new(&addr, std::env::var("PQKMS_ADMIN_TOKEN")?)?;
        let rotated = admin.rotate_key(&opts.tenant, &opts.key).await?;
        println!(
            "rotated {}/{} to version {} (fingerprint {})",
            opts.tenant, opts.key, rotated.version, rotated.fingerprint
        );
    }

    let report = migrate(&client, &db, &opts, |p| {
        let pct = if p.total == 0 {
            100.0
        } else {
            (100.0 * (p.done + p.failed) as f64 / p.total as f64).min(100.0)
        };
        eprintln!(
            "re-wrapped {}/{} rows ({pct:.0}%), {} failed, {:.0} rows/s",
            p.done, p.total, p.failed, p.rate
        );
    })
    .await?;
    match report.target {
        None => println!("no rows"),
        Some(v) => println!(
            "version {v}: {} rows moved, {} changed meanwhile (left alone), {} failed",
            report.moved,
            report.changed_meanwhile,
            report.failed.len()
        ),
    }
    for (id, e) in &report.failed {
        eprintln!("customer {id}: {e}");
    }
    let checked = verify_sample(&client, &db, &opts, sample).await?;
    println!("verified: {checked} random rows decrypt");
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} rows could not be re-wrapped", report.failed.len()).into())
    }
}
