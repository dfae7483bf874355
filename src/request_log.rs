//! The request log: one row per public request, queued in memory and written in batches off the
//! request path (one INSERT per batch), flushed on shutdown. Daily partitions are created ahead
//! and dropped past the retention.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 50_000;
const BATCH: usize = 1_000;
/// How long a batch that is not yet full waits for more rows. Short, so each insert is small: the
/// same rows written every 250 ms took 2.1–4.3 ms an insert (up to 20 ms) on one of the two cores
/// beside the read path's statements; every 50 ms, 0.5 ms (at most 3.5), the same time in all.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often rows held through a database outage are tried again, and how many are held.
const RETRY_HELD: Duration = Duration::from_secs(1);
const HELD_MAX: usize = 100_000;
/// Query parameters whose values never reach the log.
const SECRET_PARAMS: [&str; 6] = ["key", "api_key", "apikey", "token", "password", "secret"];

#[derive(Debug, Clone)]
pub struct LogRow {
    pub created_at: DateTime<Utc>,
    pub request_id: String,
    pub endpoint_id: Option<i64>,
    pub key_id: Option<i64>,
    pub method: String,
    pub path: String,
    pub resource: Option<String>,
    pub status: i16,
    pub item_count: Option<i32>,
    pub duration_ms: f32,
    pub query: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub operation: Option<String>,
}

/// The query string as a JSON object, with secret-looking parameters' values removed.
pub fn redacted_query(query: Option<&str>) -> Option<serde_json::Value> {
    let query = query.filter(|q| !q.is_empty())?;
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let lower = k.to_lowercase();
        let value = if SECRET_PARAMS.iter().any(|s| lower.contains(s)) {
            "[redacted]".to_owned()
        } else {
            v.chars().take(500).collect()
        };
        map.insert(k.chars().take(100).collect(), serde_json::Value::String(value));
    }
    Some(serde_json::Value::Object(map))
}

/// The sending side, cheap to clone. A full queue drops the row (and counts it): logging never
/// blocks a request.
#[derive(Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<LogRow>,
}

impl RequestLog {
    pub fn record(&self, row: LogRow) {
        if self.tx.try_send(row).is_err() {
            metrics::counter!("request_log_dropped_total").increment(1);
        }
    }
}

/// Starts the writer; it drains and flushes what is queued when `shutdown` fires.
pub fn spawn(
    db: PgPool,
    retention_days: u32,
    shutdown: CancellationToken,
) -> (RequestLog, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = tokio::spawn(writer(db, rx, retention_days, shutdown));
    (RequestLog { tx }, handle)
}

async fn writer(db: PgPool, mut rx: mpsc::Receiver<LogRow>, retention_days: u32, shutdown: CancellationToken) {
    if let Err(e) = maintain_partitions(&db, retention_days).await {
        tracing::warn!(error = %e, "request log partition maintenance failed");
    }
    let mut maintenance = tokio::time::interval(Duration::from_secs(3600));
    maintenance.tick().await;
    let mut buffer = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut buffer, BATCH) => {
                if received == 0 { break; }
                gather(&mut rx, &mut buffer).await;
                write(&db, &mut buffer).await;
            }
            // Rows held while the database was unreachable are tried again.
            _ = tokio::time::sleep(RETRY_HELD), if !buffer.is_empty() => write(&db, &mut buffer).await,
            _ = maintenance.tick() => {
                if let Err(e) = maintain_partitions(&db, retention_days).await {
                    tracing::warn!(error = %e, "request log partition maintenance failed");
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    while let Ok(row) = rx.try_recv() {
        buffer.push(row);
        if buffer.len() >= BATCH {
            write(&db, &mut buffer).await;
        }
    }
    write(&db, &mut buffer).await;
}

/// Tops up a batch that is not yet full: waits [`FLUSH_EVERY`] and takes what arrived, so a
/// trickle of requests becomes one statement. A full batch is written at once: waiting for every
/// batch would cap the writer at [`BATCH`] rows per [`FLUSH_EVERY`] (20,000 a second, less the
/// insert's own time), past which the queue grows until rows are dropped.
async fn gather(rx: &mut mpsc::Receiver<LogRow>, buffer: &mut Vec<LogRow>) {
    if buffer.len() >= BATCH {
        return;
    }
    tokio::time::sleep(FLUSH_EVERY).await;
    while buffer.len() < BATCH
        && let Ok(row) = rx.try_recv()
    {
        buffer.push(row);
    }
}

async fn write(db: &PgPool, rows: &mut Vec<LogRow>) {
    if rows.is_empty() {
        return;
    }
    let batch: Vec<LogRow> = std::mem::take(rows);
    let result = sqlx::query(
        "insert into request_logs (created_at, request_id, endpoint_id, key_id, method, path, resource, status,
             item_count, duration_ms, query, error_code, client_ip, user_agent, operation)
         select created_at, request_id, endpoint_id, key_id, method, path, resource, status, item_count, duration_ms,
                query, error_code, client_ip::inet, user_agent, operation
         from unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                     $8::smallint[], $9::int[], $10::real[], $11::jsonb[], $12::text[], $13::text[], $14::text[],
                     $15::text[])
              as t(created_at, request_id, endpoint_id, key_id, method, path, resource, status, item_count,
                   duration_ms, query, error_code, client_ip, user_agent, operation)",
    )
    .bind(batch.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.endpoint_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.key_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.method.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.path.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.resource.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.item_count).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.query.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.error_code.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.client_ip.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.user_agent.clone()).collect::<Vec<_>>())
    .bind(batch.iter().map(|r| r.operation.clone()).collect::<Vec<_>>())
    .execute(db)
    .await;
    match result {
        Ok(_) => {
            metrics::counter!("request_log_rows_total").increment(batch.len() as u64);
            // Live tails on every process learn which endpoints have new rows.
            let mut endpoints: Vec<i64> = batch.iter().filter_map(|r| r.endpoint_id).collect();
            endpoints.sort_unstable();
            endpoints.dedup();
            if !endpoints.is_empty()
                && let Err(e) = crate::events::notify_requests(db, &endpoints).await
            {
                tracing::debug!(error = %e, "request log event not sent");
            }
        }
        // The database is away (a restart, a failover): the rows wait for it, up to a bound.
        Err(e) if clientapi_schema::read::connection_lost(&e) || matches!(e, sqlx::Error::PoolTimedOut) => {
            tracing::warn!(error = %e, rows = batch.len(), "request logs held until the database answers again");
            *rows = batch;
            if rows.len() > HELD_MAX {
                let dropped = rows.len() - HELD_MAX;
                rows.drain(..dropped);
                metrics::counter!("request_log_dropped_total").increment(dropped as u64);
            }
        }
        Err(e) => tracing::error!(error = %e, rows = batch.len(), "writing request logs failed"),
    }
}

fn partition_name(day: NaiveDate) -> String {
    format!("request_logs_{}", day.format("%Y%m%d"))
}

/// Today's and the next two days' partitions exist; those past the retention are dropped.
pub async fn maintain_partitions(db: &PgPool, retention_days: u32) -> Result<(), sqlx::Error> {
    let today = Utc::now().date_naive();
    for ahead in 0..3 {
        let day = today + chrono::Days::new(ahead);
        let next = day + chrono::Days::new(1);
        let sql = format!(
            "create table if not exists {} partition of request_logs for values from ('{day}') to ('{next}')",
            partition_name(day)
        );
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db).await {
            // Rows for that day already sit in the default partition: keep using it.
            tracing::debug!(error = %e, %day, "request log partition not created");
        }
    }
    let oldest_kept = partition_name(today - chrono::Days::new(u64::from(retention_days)));
    let old: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
         join pg_class p on p.oid = i.inhparent
         where p.relname = 'request_logs' and c.relname ~ '^request_logs_[0-9]{8}$' and c.relname < $1",
    )
    .bind(&oldest_kept)
    .fetch_all(db)
    .await?;
    for table in old {
        sqlx::query(sqlx::AssertSqlSafe(format!("drop table if exists {}", clientapi_schema::db::quote_ident(&table))))
            .execute(db)
            .await?;
    }
    sqlx::query("delete from request_logs_default where created_at < now() - make_interval(days => $1)")
        .bind(retention_days as i32)
        .execute(db)
        .await?;
    // Idempotency keys are kept 24 hours; expired ones are also ignored when looked up.
    sqlx::query("delete from idempotency_keys where created_at < now() - interval '24 hours'").execute(db).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_parameters_are_redacted() {
        let q = redacted_query(Some("resource=job&api_key=sk_live_x&Token=abc&page_size=5")).unwrap();
        assert_eq!(q["resource"], "job");
        assert_eq!(q["api_key"], "[redacted]");
        assert_eq!(q["Token"], "[redacted]");
        assert_eq!(q["page_size"], "5");
        assert!(redacted_query(Some("")).is_none());
    }

    fn row() -> LogRow {
        LogRow {
            created_at: Utc::now(),
            request_id: "r".to_owned(),
            endpoint_id: Some(1),
            key_id: Some(1),
            method: "GET".to_owned(),
            path: "/api/public/e/jobs".to_owned(),
            resource: Some("jobs".to_owned()),
            status: 200,
            item_count: Some(50),
            duration_ms: 1.0,
            query: None,
            error_code: None,
            client_ip: None,
            user_agent: None,
            operation: None,
        }
    }

    #[tokio::test]
    async fn a_full_batch_is_written_at_once_and_a_partial_one_waits_for_more() {
        use futures::FutureExt;
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for _ in 0..BATCH * 2 + 500 {
            tx.try_send(row()).unwrap();
        }
        let mut buffer = Vec::new();
        // A backlog goes out in full batches back to back: gathering a full one is ready at
        // once, with no wait for more rows.
        for _ in 0..2 {
            rx.recv_many(&mut buffer, BATCH).await;
            assert!(gather(&mut rx, &mut buffer).now_or_never().is_some(), "a full batch waited for more rows");
            assert_eq!(buffer.len(), BATCH);
            buffer.clear();
        }
        // The rest is not a full batch: it waits FLUSH_EVERY and takes the rows that came meanwhile.
        rx.recv_many(&mut buffer, BATCH).await;
        let mut waiting = Box::pin(gather(&mut rx, &mut buffer));
        assert!((&mut waiting).now_or_never().is_none(), "a partial batch was written without waiting");
        tx.send(row()).await.unwrap();
        waiting.await;
        assert_eq!(buffer.len(), 501);
    }
}
