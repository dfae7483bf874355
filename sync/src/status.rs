//! What admins see of syncing: per stream the cursor, last success and freshness, and the runs.

use chrono::{DateTime, Utc};
use clientapi_schema::{AccountId, ConnectionId};
use sqlx::PgPool;

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct StreamStatus {
    pub stream: String,
    pub watermark: Option<String>,
    pub scan_in_progress: bool,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_full_at: Option<DateTime<Utc>>,
    /// Seconds since the last completed scan of this stream.
    pub freshness_seconds: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SyncRun {
    pub id: i64,
    pub connection_id: ConnectionId,
    pub kind: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub pages: i64,
    pub fetched: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    pub unowned: i64,
    pub record_errors: serde_json::Value,
    pub error: Option<String>,
    pub lag_seconds: Option<f64>,
    /// The stream the run is on (or ended on).
    pub stream: Option<String>,
    /// Counts per stream: `{"job": {"pages", "fetched", "inserted", …}}`.
    pub streams: serde_json::Value,
    /// What the provider said that needs acting on though the run went well (Jobber: the pinned
    /// API version is going away).
    pub notices: Vec<String>,
}

pub async fn streams(db: &PgPool, id: ConnectionId) -> Result<Vec<StreamStatus>, sqlx::Error> {
    sqlx::query_as(
        "select stream, watermark, scan_page is not null as scan_in_progress, last_success_at, last_full_at,
                extract(epoch from now() - last_success_at)::float8 as freshness_seconds
         from sync_state where connection_id = $1 order by stream",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// The newest runs of `account`'s connections (optionally one connection).
pub async fn runs(
    db: &PgPool,
    account: AccountId,
    connection: Option<ConnectionId>,
    limit: i64,
) -> Result<Vec<SyncRun>, sqlx::Error> {
    sqlx::query_as(
        "select r.id, r.connection_id, r.kind, r.status, r.started_at, r.finished_at, r.pages, r.fetched, r.inserted,
                r.updated, r.unchanged, r.deleted, r.unowned, r.record_errors, r.error, r.lag_seconds, r.stream, r.streams,
                r.notices
         from sync_runs r join connections c on c.id = r.connection_id
         where c.account_id = $1 and ($2::bigint is null or r.connection_id = $2)
         order by r.id desc limit $3",
    )
    .bind(account)
    .bind(connection)
    .bind(limit)
    .fetch_all(db)
    .await
}
