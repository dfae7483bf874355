//! Connecting to Postgres and migrating it: the one place the service's pool is made.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

/// The migrations in `migrations/`, embedded at build time: the one source of truth.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The database the service keeps its data in on the local cluster.
pub const SERVICE_DATABASE: &str = "clientapi";

/// Pool sizing: API processes are mostly waiting on Postgres, so a few connections per core.
const MAX_CONNECTIONS: u32 = 32;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the service's pool. Statement logging is quiet: SQL text is not a secret, but
/// parameters can be, so they never reach the log.
pub async fn connect(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.log_statements(tracing::log::LevelFilter::Trace))
        .await
}

/// Applies every pending migration. Idempotent: applied ones are skipped by checksum.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Creates `name` (optionally from a template) unless it exists. `options` points at any
/// database of the same cluster, usually `postgres`.
pub async fn ensure_database(
    options: &PgConnectOptions,
    name: &str,
    template: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let mut sql = format!("create database {}", quote_ident(name));
        if let Some(template) = template {
            sql.push_str(&format!(" template {}", quote_ident(template)));
        }
        conn.execute(sqlx::AssertSqlSafe(sql)).await?;
    }
    conn.close().await
}

/// Quotes an SQL identifier (for the few statements that cannot take parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
