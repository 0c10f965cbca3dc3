//! The examples' code against the real service: `migrate_wrapped_keys` (compiled in here as a
//! module, so the test runs exactly what `cargo run --example` runs, minus argument parsing).

mod common;

#[allow(dead_code)]
#[path = "../examples/migrate_wrapped_keys.rs"]
mod migrate_wrapped_keys;

use common::Server;
use migrate_wrapped_keys::{Options, Progress, context, migrate, seed, verify_sample};
use pqkms_client::{CacheLimits, Error, WrappedDataKey};
use sqlx::Row;

async fn versions(db: &sqlx::SqlitePool) -> Vec<(i64, i64, u32)> {
    sqlx::query("SELECT id, dek, dek_version FROM customers ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let dek: Vec<u8> = r.get("dek");
            let named = WrappedDataKey::parse(&dek).unwrap().key_ref().version;
            (r.get("id"), r.get("dek_version"), named)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_wrapped_keys_moves_every_row_and_resumes() {
    let server = Server::start().await;
    let acme = server.tenant("acme").await;
    let admin = server.client(&acme.admin, CacheLimits::default());
    // A fresh data key per record, as a long-running writer would have over time.
    let app = server.client(&acme.app, CacheLimits::disabled());
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite:{}?mode=rwc",
        dir.path().join("customers.db").display()
    );
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let opts = Options {
        tenant: "acme".into(),
        key: "default".into(),
        page: 7,
    };

    // 40 rows on version 1, then a rotation, then 5 rows on version 2.
    seed(&app, &db, &opts, 40).await.unwrap();
    assert_eq!(
        admin.rotate_key("acme", "default").await.unwrap().version,
        2
    );
    seed(&app, &db, &opts, 5).await.unwrap();
    // One row whose wrapped key was made for another table: the service refuses to re-wrap it
    // with this table's context, and the migration reports it and goes on.
    let foreign = app
        .generate_data_key(
            "acme",
            "default",
            &pqkms_client::EncryptionContext::from_iter([("table", "orders")]),
            false,
        )
        .await
        .unwrap();
    // Wrapped to version 2 already: make it look like a version-1 row that was never migrated.
    sqlx::query("INSERT INTO customers (id, dek, dek_version, email) VALUES (1000, ?, 1, x'00')")
        .bind(foreign.wrapped.as_bytes())
        .execute(&db)
        .await
        .unwrap();
    let before = versions(&db).await;
    assert_eq!(before.iter().filter(|r| r.1 == 1).count(), 41);

    let mut seen: Vec<Progress> = Vec::new();
    let report = migrate(&app, &db, &opts, |p| seen.push(*p)).await.unwrap();
    assert_eq!(report.target, Some(2));
    assert_eq!(report.moved, 40);
    assert_eq!(report.changed_meanwhile, 0);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, 1000);
    assert!(
        matches!(report.failed[0].1, Error::DecryptionFailed(_)),
        "{:?}",
        report.failed[0].1
    );
    // Progress after the probe and after each page of 7, monotonic, ending at the total.
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.failed, last.total), (40, 1, 41));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(
        seen.len() > 40 / 7,
        "one call after the probe and one per page: {seen:?}"
    );
    for (id, column, named) in versions(&db).await {
        if id == 1000 {
            assert_eq!(column, 1);
        } else {
            assert_eq!((column, named), (2, 2), "customer {id}");
        }
    }

    // Resumable: a second run finds nothing left but the row it cannot move.
    let report = migrate(&app, &db, &opts, |_| {}).await.unwrap();
    assert_eq!(
        (report.target, report.moved, report.failed.len()),
        (Some(2), 0, 1)
    );

    // Every other row decrypts with its new wrapped key, under the table's context.
    sqlx::query("DELETE FROM customers WHERE id = 1000")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(verify_sample(&app, &db, &opts, 100).await.unwrap(), 45);
    // The old version can now be retired without breaking a row.
    admin
        .configure_key(
            "acme",
            "default",
            &pqkms_client::KeyConfig {
                min_decryption_version: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(verify_sample(&app, &db, &opts, 100).await.unwrap(), 45);
    assert_eq!(
        context(),
        pqkms_client::EncryptionContext::from_iter([("table", "customers")])
    );

    // An empty table: nothing to do.
    sqlx::query("DELETE FROM customers")
        .execute(&db)
        .await
        .unwrap();
    let report = migrate(&app, &db, &opts, |_| {}).await.unwrap();
    assert_eq!((report.target, report.moved), (None, 0));
    db.close().await;
    server.stop().await;
}
