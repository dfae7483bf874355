//! The loop every Postgres-fed worker runs (provider callbacks in, webhooks out): take a batch,
//! and again at once while batches come back full; otherwise wait for a notification on the
//! queue's channel (from any process: `pg_notify` in the transaction that queued the work) or
//! for an idle interval (work that came due by time, a notification missed), until shutdown.
//! Housekeeping runs every so often between batches.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How a queue is worked.
pub struct Queue {
    /// For the logs.
    pub name: &'static str,
    pub channel: &'static str,
    /// A batch this big means more is probably waiting.
    pub batch: usize,
    pub idle: Duration,
    pub housekeeping_every: Duration,
}

impl Queue {
    pub async fn run<T, H>(
        &self,
        db: &PgPool,
        shutdown: CancellationToken,
        mut tick: impl FnMut() -> T,
        mut housekeeping: impl FnMut() -> H,
    ) where
        T: Future<Output = Result<usize, sqlx::Error>>,
        H: Future<Output = Result<(), sqlx::Error>>,
    {
        let mut listener = match sqlx::postgres::PgListener::connect_with(db).await {
            Ok(mut l) => l.listen(self.channel).await.ok().map(|()| l),
            Err(_) => None,
        };
        let mut kept = Instant::now().checked_sub(self.housekeeping_every).unwrap_or_else(Instant::now);
        while !shutdown.is_cancelled() {
            if kept.elapsed() >= self.housekeeping_every {
                if let Err(e) = housekeeping().await {
                    tracing::warn!(queue = self.name, error = %e, "queue housekeeping failed");
                }
                kept = Instant::now();
            }
            match tick().await {
                Ok(n) if n >= self.batch => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(queue = self.name, error = %e, "working the queue failed; retrying"),
            }
            let notified = async {
                match listener.as_mut() {
                    Some(l) => {
                        let _ = l.try_recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(self.idle) => {}
            }
        }
    }
}
