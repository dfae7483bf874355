//! The sync engine (DESIGN.md §8): per connection and stream, fetch pages changed since the
//! stored watermark, apply each page to the mirror, then advance the scan cursor, so a crash at
//! any instant resumes from the last committed page and the cursor never runs ahead of
//! committed data. A page is dealt by company into lanes written beside each other, each in its
//! own transaction on its own backend (one Postgres backend is one core: a single transaction
//! cannot use two), so the cursor commits just after the page's lanes rather than with them:
//! re-applying a page writes nothing that is already there. The watermark itself moves only
//! when a scan completes.
//!
//! A full run (reconciliation) scans everything and, only when its scan completed, tombstones
//! what the provider no longer has. 429/5xx/timeouts/truncated bodies back off with full jitter
//! (honouring `Retry-After`); a 401 refreshes the token once; the provider's per-minute budget
//! is kept by a GCRA limiter per connection. A lease in Postgres keeps one sync per connection.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientapi_schema::ConnectionId;
use clientapi_schema::mirror::{self, ApplyStats};
use clientapi_schema::secret::Secret;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sqlx::PgPool;
use tokio_util::task::AbortOnDropHandle;

use crate::Providers;
use crate::connections::{self, TokenError, TokenManager};
use crate::provider::{Page, Provider, ProviderError, ProviderKind, RecordError, Stream};

/// How long a claimed lease lasts without renewal (renewed on every page).
pub const LEASE: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: u32 = 8;
/// Record errors kept on a run (the rest are counted).
const MAX_RECORDED_ERRORS: usize = 100;
/// Writers a page is split across by default (see [`SyncEngine::with_writers`]).
pub const DEFAULT_WRITERS: usize = 2;
/// Times a page is dealt again because jobs moved under it before it gives up.
const MAX_DEALS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("another worker is syncing this connection")]
    Busy,
    #[error("no such connection")]
    NotFound,
    #[error("unknown provider {0}")]
    UnknownProvider(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the provider kept failing: {0}")]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cancelled")]
    Cancelled,
    #[error("jobs kept moving while a page was written; the next run resumes it")]
    Contended,
}

/// Progress reports, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress {
    pub stream: &'static str,
    pub pages: u64,
    pub fetched: u64,
}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: i64,
    pub pages: u64,
    pub fetched: u64,
    pub stats: ApplyStats,
    pub record_errors: Vec<RecordError>,
    pub error_count: u64,
    /// The same counts per stream, for the dashboard's per-resource view.
    pub streams: std::collections::BTreeMap<&'static str, StreamCounts>,
}

/// What a run did on one stream.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StreamCounts {
    pub pages: u64,
    pub fetched: u64,
    #[serde(flatten)]
    pub stats: ApplyStats,
    /// Why a supplementary stream was skipped: the provider does not offer it to this connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A provider answer that says a stream is not available to this connection (missing scope, no
/// such endpoint), as opposed to a failure worth failing the run for.
fn not_offered(e: &ProviderError) -> bool {
    matches!(e, ProviderError::NotFound | ProviderError::Rejected { status: 401 | 403 | 404, .. })
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What a run carries from stream to stream.
struct Run {
    summary: RunSummary,
    known: mirror::Known,
}

/// A provider page; its records, taken out of it, staged for the mirror.
struct Fetched {
    page: Page,
    records: Vec<mirror::Staged>,
}

/// Runs syncs. Cheap to clone; one per process.
#[derive(Clone)]
pub struct SyncEngine {
    db: PgPool,
    tokens: TokenManager,
    providers: Providers,
    worker: uuid::Uuid,
    limiters: Arc<Mutex<HashMap<ConnectionId, Arc<DefaultDirectRateLimiter>>>>,
    shutdown: tokio_util::sync::CancellationToken,
    writers: usize,
}

impl SyncEngine {
    pub fn new(
        db: PgPool,
        tokens: TokenManager,
        providers: Providers,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            db,
            tokens,
            providers,
            worker: uuid::Uuid::new_v4(),
            limiters: Arc::default(),
            shutdown,
            writers: DEFAULT_WRITERS,
        }
    }

    /// How many transactions, each on its own Postgres backend, may write one page beside each
    /// other (1 to [`mirror::MAX_LANES`]): a page's companies are dealt among them.
    pub fn with_writers(mut self, writers: usize) -> Self {
        self.writers = writers.clamp(1, mirror::MAX_LANES);
        self
    }

    /// The connection's provider request budget, shared by its syncs and its customers' writes.
    pub fn limiter(&self, id: ConnectionId, provider: &dyn Provider) -> Arc<DefaultDirectRateLimiter> {
        let per_minute = NonZeroU32::new(provider.rate_limits().per_minute).unwrap_or(NonZeroU32::MIN);
        self.limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_minute(per_minute))))
            .clone()
    }

    async fn claim(&self, id: ConnectionId) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(
            "update connections set sync_lease_owner = $2, sync_lease_until = now() + make_interval(secs => $3)
             where id = $1 and status = 'active'
               and (sync_lease_until is null or sync_lease_until < now() or sync_lease_owner = $2)",
        )
        .bind(id)
        .bind(self.worker)
        .bind(LEASE.as_secs_f64())
        .execute(&self.db)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn release(&self, id: ConnectionId) {
        let _ = sqlx::query(
            "update connections set sync_lease_owner = null, sync_lease_until = null where id = $1 and sync_lease_owner = $2",
        )
        .bind(id)
        .bind(self.worker)
        .execute(&self.db)
        .await;
    }

    /// Syncs one connection: every stream, incrementally, or in full (`full`) with a
    /// reconciliation of hard deletes.
    pub async fn sync_connection(
        &self,
        id: ConnectionId,
        full: bool,
        progress: Option<ProgressFn>,
    ) -> Result<RunSummary, SyncError> {
        let connection = connections::get_any(&self.db, id).await?.ok_or(SyncError::NotFound)?;
        let kind = ProviderKind::parse(&connection.provider)
            .ok_or_else(|| SyncError::UnknownProvider(connection.provider.clone()))?;
        let provider = self.providers.get(kind);
        if connection.status != "active" {
            return Err(SyncError::Token(if connection.status == "needs_reauth" {
                TokenError::NeedsReauth
            } else {
                TokenError::Disconnected
            }));
        }
        if !self.claim(id).await? {
            return Err(SyncError::Busy);
        }
        let run_id: i64 =
            match sqlx::query_scalar("insert into sync_runs (connection_id, kind) values ($1, $2) returning id")
                .bind(id)
                .bind(if full { "full" } else { "incremental" })
                .fetch_one(&self.db)
                .await
            {
                Ok(run_id) => run_id,
                Err(e) => {
                    self.release(id).await;
                    return Err(e.into());
                }
            };
        let span = tracing::info_span!("sync_run", connection_id = %id, run_id, full);
        let _entered = span.enter();
        let mut run = Run { summary: RunSummary { run_id, ..RunSummary::default() }, known: Default::default() };
        let mut result = Ok(());
        for stream in provider.streams() {
            // A scan interrupted earlier (a crash, a kill) resumes from its last committed page;
            // records changed meanwhile on pages it had passed are behind it, so a resumed scan is
            // followed by one this run starts itself.
            let mut scanned = self.scan_stream(id, &provider, *stream, full, &mut run, progress.as_ref()).await;
            if matches!(scanned, Ok(true)) {
                scanned = self.scan_stream(id, &provider, *stream, full, &mut run, progress.as_ref()).await;
            }
            match scanned {
                // Visits, staff and lookups are supplementary: a connection made before they were
                // mirrored lacks their OAuth scopes, and an account may not offer one. That stream
                // is skipped and said so; the customer data still syncs.
                Err(SyncError::Provider(e)) if stream.is_supplementary() && not_offered(&e) => {
                    tracing::warn!(stream = stream.name, error = %e, "stream not offered to this connection; skipped");
                    run.summary.streams.entry(stream.name).or_default().unavailable = Some(e.to_string());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
                Ok(_) => {}
            }
        }
        let summary = run.summary;
        let (status, error) = match &result {
            Ok(()) => ("succeeded", None),
            Err(e) => ("failed", Some(e.to_string())),
        };
        let finished = sqlx::query(
            "update sync_runs set status = $2, finished_at = now(), pages = $3, fetched = $4, inserted = $5, updated = $6,
             unchanged = $7, deleted = $8, unowned = $9, record_errors = $10, error = $11,
             lag_seconds = extract(epoch from now() - started_at), streams = $12, notices = $13 where id = $1",
        )
        .bind(run_id)
        .bind(status)
        .bind(summary.pages as i64)
        .bind(summary.fetched as i64)
        .bind(summary.stats.inserted as i64)
        .bind(summary.stats.updated as i64)
        .bind(summary.stats.unchanged as i64)
        .bind(summary.stats.deleted as i64)
        .bind(summary.stats.unowned as i64)
        .bind(serde_json::to_value(&summary.record_errors).unwrap_or_default())
        .bind(error)
        .bind(serde_json::to_value(&summary.streams).unwrap_or_default())
        .bind(provider.notices())
        .execute(&self.db)
        .await;
        self.release(id).await;
        metrics::counter!("sync_runs_total", "status" => status).increment(1);
        finished?;
        // Subscribers hear that their data is as fresh as this run made it: the run's own facts,
        // never its counts (they span every company of the connection).
        let event = serde_json::json!({
            "run_id": run_id, "kind": if full { "full" } else { "incremental" }, "status": status,
            "finished_at": chrono::Utc::now(),
        });
        if let Err(e) = clientapi_schema::outbox::sync_completed(&mut *self.db.acquire().await?, id, &event).await {
            tracing::warn!(error = %e, "recording the sync.completed event failed");
        }
        result.map(|()| summary)
    }

    /// One scan of a stream, from the watermark (or the interrupted scan's page) to its end.
    /// Returns whether it resumed an interrupted scan.
    async fn scan_stream(
        &self,
        id: ConnectionId,
        provider: &Arc<dyn Provider>,
        stream: Stream,
        full: bool,
        run: &mut Run,
        progress: Option<&ProgressFn>,
    ) -> Result<bool, SyncError> {
        let state: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("select watermark, scan_page from sync_state where connection_id = $1 and stream = $2")
                .bind(id)
                .bind(stream.name)
                .fetch_optional(&self.db)
                .await?;
        let (watermark, resume) = state.unwrap_or_default();
        // A full scan starts over (its id set must be complete); an incremental one resumes.
        let since = if full { None } else { watermark };
        let page_cursor = if full { None } else { resume };
        let mut seen_ids: Vec<String> = Vec::new();
        let mut expect = vec![mirror::Expectation::default(); mirror::MAX_LANES];
        let mut pages = 0;
        let mut fetched = 0;
        let mut page = self.fetch(id, provider.as_ref(), stream, since.as_deref(), page_cursor.as_deref()).await?;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(SyncError::Cancelled);
            }
            // While this page commits, the next one is already on its way, in a task of its
            // own: the provider's latency, the page's parsing and its staging run beside our
            // writes, on another core. The next page's position is committed only with the next
            // page, so the cursor still never runs ahead of committed data. (A failed commit
            // drops the handle, which stops the fetch.)
            let prefetch = page.page.next_page.clone().map(|cursor| {
                let (engine, provider, since) = (self.clone(), provider.clone(), since.clone());
                AbortOnDropHandle::new(tokio::spawn(async move {
                    engine.fetch(id, provider.as_ref(), stream, since.as_deref(), Some(&cursor)).await
                }))
            });
            let started = std::time::Instant::now();
            let stats = self.commit_page(id, stream, &page, &mut expect, &mut run.known).await?;
            let committed = started.elapsed();
            let next = match prefetch {
                Some(handle) => Some(match handle.await {
                    Ok(fetched) => fetched,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(SyncError::Cancelled),
                }),
                None => None,
            };
            tracing::debug!(
                stream = stream.name,
                records = page.records.len(),
                commit_ms = committed.as_millis() as u64,
                waited_for_next_ms = (started.elapsed() - committed).as_millis() as u64,
                "page committed"
            );

            pages += 1;
            fetched += page.page.seen_ids.len() as u64;
            run.summary.pages += 1;
            run.summary.fetched += page.page.seen_ids.len() as u64;
            run.summary.stats += stats;
            let counts = run.summary.streams.entry(stream.name).or_default();
            counts.pages += 1;
            counts.fetched += page.page.seen_ids.len() as u64;
            counts.stats += stats;
            run.summary.error_count += page.page.bad_records.len() as u64;
            for error in std::mem::take(&mut page.page.bad_records) {
                tracing::warn!(%error, "a provider record could not be mapped");
                if run.summary.record_errors.len() < MAX_RECORDED_ERRORS {
                    run.summary.record_errors.push(error);
                }
            }
            for resource in stream.resources {
                metrics::counter!("sync_records_total", "resource" => resource.singular())
                    .increment(page.records.len() as u64);
            }
            if full {
                seen_ids.append(&mut page.page.seen_ids);
            }
            if let Some(report) = progress {
                report(Progress { stream: stream.name, pages, fetched });
            }
            self.record_progress(run, stream).await;
            match next {
                Some(next) => {
                    // Freeing a page's records runs beside the next page's commit, not before it.
                    let done = std::mem::replace(&mut page, next?);
                    tokio::task::spawn_blocking(move || drop(done));
                }
                None => break,
            }
        }

        let mut tx = self.db.begin().await?;
        mirror::lock_connection(&mut tx, id).await?;
        if full {
            // Only a scan that reached its last page may conclude anything is gone.
            for resource in stream.resources {
                // Every resource of the stream, derived ones too: a ServiceM8 invoice has its job's
                // id, so a job gone from the complete scan takes its invoice with it.
                let deleted = mirror::tombstone_missing(&mut tx, id, *resource, &seen_ids).await?;
                run.summary.stats.deleted += deleted;
                run.summary.streams.entry(stream.name).or_default().stats.deleted += deleted;
            }
        }
        sqlx::query(
            "update sync_state set watermark = case when scan_max is null then watermark
                                                    when watermark is null then scan_max
                                                    else greatest(watermark, scan_max) end,
                scan_page = null, scan_max = null, last_success_at = now(),
                last_full_at = case when $3 then now() else last_full_at end, updated_at = now()
             where connection_id = $1 and stream = $2",
        )
        .bind(id)
        .bind(stream.name)
        .bind(full)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(page_cursor.is_some())
    }

    /// Writes the run's counters so far and the stream it is on: the dashboard's live progress
    /// (a trigger turns the update into an admin event). One small statement per page; a
    /// failure only costs the live view, never the sync.
    async fn record_progress(&self, run: &Run, stream: Stream) {
        let s = &run.summary;
        let recorded = sqlx::query(
            "update sync_runs set stream = $2, pages = $3, fetched = $4, inserted = $5, updated = $6, unchanged = $7,
                 deleted = $8, unowned = $9, streams = $10
             where id = $1",
        )
        .bind(s.run_id)
        .bind(stream.name)
        .bind(s.pages as i64)
        .bind(s.fetched as i64)
        .bind(s.stats.inserted as i64)
        .bind(s.stats.updated as i64)
        .bind(s.stats.unchanged as i64)
        .bind(s.stats.deleted as i64)
        .bind(s.stats.unowned as i64)
        .bind(serde_json::to_value(&s.streams).unwrap_or_default())
        .execute(&self.db)
        .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "sync progress not recorded");
        }
    }

    /// Applies one page to the mirror, its lanes beside each other, then records the scan
    /// position. A crash between the lanes' commits and the position's leaves the position
    /// behind the data, never ahead: the resumed scan fetches the page again, and what was
    /// written already is unchanged, so it writes nothing twice.
    async fn commit_page(
        &self,
        id: ConnectionId,
        stream: Stream,
        fetched: &Fetched,
        expect: &mut [mirror::Expectation],
        known: &mut mirror::Known,
    ) -> Result<ApplyStats, SyncError> {
        let (page, records) = (&fetched.page, &fetched.records);
        let mut deals = 0;
        let stats = loop {
            let started = std::time::Instant::now();
            let prepared = mirror::prepare(&mut *self.db.acquire().await?, id, records, self.writers, known).await?;
            let (prepared, lanes_started) = (&prepared, std::time::Instant::now());
            let lanes =
                expect.iter_mut().enumerate().take(prepared.lanes()).filter(|(lane, _)| !prepared.is_empty(*lane)).map(
                    |(lane, expect)| async move {
                        let written = self.commit_lane(id, prepared, lane, expect).await?;
                        Ok::<_, SyncError>((written, lanes_started.elapsed().as_millis() as u64))
                    },
                );
            let (written, lane_ms): (Vec<_>, Vec<_>) = futures::future::try_join_all(lanes).await?.into_iter().unzip();
            // How long dealing took, and when each lane finished: lanes that finish far apart
            // leave a writer idle (see CLIENTAPI_SYNC_WRITERS).
            tracing::debug!(
                stream = stream.name,
                prepare_ms = (lanes_started - started).as_millis() as u64,
                ?lane_ms,
                "page dealt and written"
            );
            if let Some(written) = written.into_iter().collect::<Option<Vec<ApplyStats>>>() {
                let mut stats = ApplyStats { unowned: prepared.unowned(), ..ApplyStats::default() };
                written.into_iter().for_each(|s| stats += s);
                known.learn(prepared);
                break stats;
            }
            // Lanes that committed are dealt again with the rest and write nothing twice (their
            // records then count as unchanged).
            deals += 1;
            if deals == MAX_DEALS {
                return Err(SyncError::Contended);
            }
            tracing::debug!(stream = stream.name, "jobs moved under a page; dealing it again");
        };
        let mut tx = self.db.begin().await?;
        sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
        // The scan position, once the page's data has committed: never ahead of it.
        sqlx::query(
            "insert into sync_state (connection_id, stream, scan_page, scan_max, updated_at) values ($1, $2, $3, $4, now())
             on conflict (connection_id, stream) do update set scan_page = excluded.scan_page,
               scan_max = greatest(sync_state.scan_max, excluded.scan_max), updated_at = now()",
        )
        .bind(id)
        .bind(stream.name)
        .bind(&page.next_page)
        .bind(&page.max_updated)
        .execute(&mut *tx)
        .await?;
        sqlx::query("update connections set sync_lease_until = now() + make_interval(secs => $2) where id = $1 and sync_lease_owner = $3")
            .bind(id)
            .bind(LEASE.as_secs_f64())
            .bind(self.worker)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stats)
    }

    /// One lane of a page in its own transaction (`None`: jobs moved under it, nothing written).
    async fn commit_lane(
        &self,
        id: ConnectionId,
        prepared: &mirror::Prepared<'_>,
        lane: usize,
        expect: &mut mirror::Expectation,
    ) -> Result<Option<ApplyStats>, SyncError> {
        let mut tx = self.db.begin().await?;
        // The commit does not wait for its WAL to reach disk (the next page's work overlaps the
        // flush). A crash can lose the last moments of commits, in commit order, never part of
        // one: a lane's lost commit takes the later scan position with it.
        sqlx::query("set local synchronous_commit = off").execute(&mut *tx).await?;
        // The lane's lock: page commits and writes' read-backs of one connection take turns.
        let written = mirror::apply_lane(&mut tx, id, prepared, lane, expect).await?;
        if written.is_some() {
            tx.commit().await?;
        }
        Ok(written)
    }

    /// One page, with the provider's budget, token refresh and retries; its records staged for
    /// the mirror.
    async fn fetch(
        &self,
        id: ConnectionId,
        provider: &dyn Provider,
        stream: Stream,
        since: Option<&str>,
        page: Option<&str>,
    ) -> Result<Fetched, SyncError> {
        let limiter = self.limiter(id, provider);
        let mut token: Secret<String> = self.tokens.access_token(provider, id).await?;
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            limiter.until_ready().await;
            let error = match provider.list_page(&token, stream, since, page).await {
                Ok(mut page) => {
                    let records = mirror::stage(std::mem::take(&mut page.records));
                    return Ok(Fetched { page, records });
                }
                Err(e) => e,
            };
            attempt += 1;
            match error {
                ProviderError::Unauthorized if !refreshed => {
                    token = self.tokens.refresh_after_rejection(provider, id, &token).await?;
                    refreshed = true;
                    continue;
                }
                e if e.is_transient() && attempt < MAX_ATTEMPTS => {
                    let wait = backoff(attempt, retry_after(&e));
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "provider call failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return Err(SyncError::Cancelled),
                    }
                }
                e => return Err(e.into()),
            }
        }
    }
}

fn retry_after(e: &ProviderError) -> Option<Duration> {
    match e {
        ProviderError::RateLimited { retry_after, .. } => *retry_after,
        _ => None,
    }
}

/// Full jitter: a random wait up to the exponential cap, never shorter than `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let cap = FIRST_BACKOFF.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
    let jittered = Duration::from_millis(rand::rng().random_range(0..=cap.as_millis() as u64));
    match retry_after {
        Some(at_least) => at_least.max(jittered).min(MAX_BACKOFF.max(at_least)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_the_cap_and_honours_retry_after() {
        for attempt in 1..10 {
            let wait = backoff(attempt, None);
            assert!(wait <= MAX_BACKOFF);
            assert!(backoff(attempt, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        }
    }
}
