//! Fresh databases for the store's unit tests.

use sqlx::AnyPool;

/// A PostgreSQL database of its own on the server at `PQKMS_TEST_POSTGRES_URL`, dropped by
/// [`TestPostgres::drop_database`].
pub(super) struct TestPostgres {
    admin: AnyPool,
    name: String,
    /// Its URL.
    pub(super) url: String,
}

impl TestPostgres {
    /// `None` (with a warning) when `PQKMS_TEST_POSTGRES_URL` is unset; CI sets it, and an
    /// unreachable server there fails the test. `settings` run on the new database's admin
    /// connection, with `{db}` replaced by its name.
    pub(super) async fn create(settings: &[&str]) -> Option<TestPostgres> {
        let Ok(admin_url) = std::env::var("PQKMS_TEST_POSTGRES_URL") else {
            eprintln!("WARNING: PQKMS_TEST_POSTGRES_URL is not set: PostgreSQL test skipped");
            return None;
        };
        sqlx::any::install_default_drivers();
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).expect("random");
        let name = format!("pqkms_unit_{}", hex::encode(id));
        let admin = AnyPool::connect(&admin_url)
            .await
            .expect("PostgreSQL at PQKMS_TEST_POSTGRES_URL is unreachable");
        let create = format!("CREATE DATABASE {name}");
        for sql in std::iter::once(create.as_str()).chain(settings.iter().copied()) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.replace("{db}", &name)))
                .execute(&admin)
                .await
                .expect("set up database");
        }
        let (head, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(h, q)| (h, Some(q)));
        let base = &head[..head.rfind('/').expect("database in URL")];
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        Some(TestPostgres { admin, name, url })
    }

    /// Drop the database (closing whatever is still connected to it).
    pub(super) async fn drop_database(self) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .expect("drop database");
    }
}
