//! Scheduled syncs (tokio-cron-scheduler): for every active connection, an incremental sync on
//! its `sync_schedule` (default every 5 minutes) and a full reconciliation on its
//! `reconcile_schedule` (default nightly), both six-field cron expressions in UTC. The set of
//! jobs follows the connections table, re-read every `REFRESH`. Runs overlapping a running
//! sync (here or in another process) are skipped by the lease. A paused connection
//! (`sync_paused`) has no scheduled jobs; manual syncs still run.

use std::collections::HashMap;
use std::time::Duration;

use clientapi_schema::ConnectionId;
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::engine::{SyncEngine, SyncError};

/// How often the scheduler re-reads connections and their schedules.
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Cron(#[from] tokio_cron_scheduler::JobSchedulerError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// (connection, full) → (schedule, job id)
type Registered = HashMap<(ConnectionId, bool), (String, uuid::Uuid)>;

/// Runs until `shutdown`, keeping one cron job per connection and kind.
pub async fn run(
    engine: SyncEngine,
    db: PgPool,
    refresh: Duration,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    let mut scheduler = JobScheduler::new().await?;
    scheduler.start().await?;
    let mut registered: Registered = HashMap::new();
    loop {
        if let Err(e) = reconcile_jobs(&scheduler, &engine, &db, &mut registered).await {
            tracing::warn!(error = %e, "could not refresh sync schedules");
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    scheduler.shutdown().await?;
    Ok(())
}

async fn reconcile_jobs(
    scheduler: &JobScheduler,
    engine: &SyncEngine,
    db: &PgPool,
    registered: &mut Registered,
) -> Result<(), SchedulerError> {
    let rows: Vec<(ConnectionId, String, String)> = sqlx::query_as(
        "select id, sync_schedule, reconcile_schedule from connections where status = 'active' and not sync_paused",
    )
    .fetch_all(db)
    .await?;
    let mut wanted: HashMap<(ConnectionId, bool), String> = HashMap::new();
    for (id, incremental, full) in rows {
        wanted.insert((id, false), incremental);
        wanted.insert((id, true), full);
    }
    let stale: Vec<(ConnectionId, bool)> = registered
        .iter()
        .filter(|(key, (schedule, _))| wanted.get(*key) != Some(schedule))
        .map(|(key, _)| *key)
        .collect();
    for key in stale {
        if let Some((_, job)) = registered.remove(&key) {
            scheduler.remove(&job).await?;
        }
    }
    for (key, schedule) in wanted {
        if registered.contains_key(&key) {
            continue;
        }
        let (id, full) = key;
        let engine = engine.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let engine = engine.clone();
            Box::pin(async move {
                match engine.sync_connection(id, full, None).await {
                    Ok(run) => {
                        tracing::info!(connection_id = %id, run_id = run.run_id, full, "scheduled sync finished")
                    }
                    Err(SyncError::Busy) => {
                        tracing::debug!(connection_id = %id, "scheduled sync skipped: one is running")
                    }
                    Err(e) => tracing::warn!(connection_id = %id, error = %e, "scheduled sync failed"),
                }
            })
        });
        match job {
            Ok(job) => {
                let uuid = scheduler.add(job).await?;
                registered.insert(key, (schedule, uuid));
            }
            Err(e) => tracing::warn!(connection_id = %id, schedule, error = %e, "invalid sync schedule; not scheduled"),
        }
    }
    Ok(())
}
