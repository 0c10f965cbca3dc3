//! Fresh databases for the store's unit tests.

use sqlx::AnyPool;

/// A PostgreSQL database of its own on the server at `PQKMS_TEST_POSTGRES_URL`, dropped when this
/// value is — also when the test fails with a panic.
pub(super) struct TestPostgres {
    admin_url: String,
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
        admin.close().await;
        let (head, query) = admin_url
            .split_once('?')
            .map_or((admin_url.as_str(), None), |(h, q)| (h, Some(q)));
        let base = &head[..head.rfind('/').expect("database in URL")];
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        Some(TestPostgres {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestPostgres {
    /// Drop the database (closing whatever is still connected to it) from a thread with its own
    /// runtime: `Drop` cannot await, and it also runs while a failed test unwinds.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let admin = AnyPool::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                admin.close().await;
                done
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("WARNING: test database {} was not dropped", self.name);
        }
    }
}
