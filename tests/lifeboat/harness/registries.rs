//! Registries for tests: a SQLite file, or a fresh PostgreSQL database.
//!
//! PostgreSQL is expected at 127.0.0.1:5432 (or LIFEBOAT_TEST_POSTGRES_URL).
//! If it is not there the tests fail: a skipped backend proves nothing.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

pub fn postgres_admin_url() -> String {
    std::env::var("LIFEBOAT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database that exists for one test.
pub enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl TestDatabase {
    pub fn sqlite() -> TestDatabase {
        TestDatabase::Sqlite(tempfile::Builder::new().prefix("lifeboat-registry-").tempdir().unwrap())
    }

    pub async fn postgres() -> TestDatabase {
        let name = format!("lifeboat_test_{:08x}", rand::random::<u32>());
        let mut admin = PgConnection::connect(&postgres_admin_url()).await.unwrap_or_else(|err| {
            panic!("PostgreSQL is required for the registry tests (at {}): {err}", postgres_admin_url())
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
        TestDatabase::Postgres(name)
    }

    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite(dir) => {
                format!("sqlite://{}", dir.path().join("registry.db").display())
            }
            TestDatabase::Postgres(name) => {
                let mut url = url::Url::parse(&postgres_admin_url()).unwrap();
                url.set_path(name);
                url.to_string()
            }
        }
    }

    /// Drops a PostgreSQL database (SQLite folders go with the TempDir).
    pub async fn drop_database(self) {
        if let TestDatabase::Postgres(name) = self
            && let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await
        {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut admin)
                .await;
        }
    }
}
