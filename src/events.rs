//! Admin events (the dashboard's live updates): Postgres triggers and the request-log writer
//! `NOTIFY` one channel with a JSON payload naming the account it belongs to; each process
//! listens once and fans the events out to its open event streams, which keep only their own
//! account's. Because the events travel through Postgres, a sync running in a worker process
//! reaches a dashboard served by an API process.

use std::sync::Arc;
use std::time::Duration;

use clientapi_schema::AccountId;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub const CHANNEL: &str = "clientapi_admin_events";
/// Events a slow stream may fall behind by before it is told to reload.
const BACKLOG: usize = 1024;
/// The request log names at most this many endpoints in one event; past it, "any".
pub const MAX_NAMED_ENDPOINTS: usize = 400;

/// One event, parsed once for every stream.
#[derive(Debug, Clone)]
pub struct AdminEvent {
    /// `sync_run`, `connection`, `endpoint`, `requests`, or `reload` (events were lost).
    pub kind: String,
    /// Whose it is; `None` for request-log batches (matched by endpoint instead) and reloads.
    pub account_id: Option<AccountId>,
    /// For `requests`: the internal ids of the endpoints with new rows (`None`: any).
    pub endpoint_ids: Option<Vec<i64>>,
    /// The JSON as sent (already free of secrets: triggers choose the fields).
    pub payload: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    account_id: Option<i64>,
    endpoint_ids: Option<Vec<i64>>,
}

impl AdminEvent {
    fn parse(payload: &str) -> Option<Self> {
        let envelope: Envelope = serde_json::from_str(payload).ok()?;
        Some(Self {
            kind: envelope.kind,
            account_id: envelope.account_id.map(AccountId),
            endpoint_ids: envelope.endpoint_ids,
            payload: payload.to_owned(),
        })
    }

    fn reload() -> Self {
        Self { kind: "reload".into(), account_id: None, endpoint_ids: None, payload: r#"{"type":"reload"}"#.into() }
    }
}

/// The process's hub. Cheap to clone.
#[derive(Clone)]
pub struct AdminEvents {
    tx: broadcast::Sender<Arc<AdminEvent>>,
}

impl Default for AdminEvents {
    fn default() -> Self {
        Self { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl AdminEvents {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AdminEvent>> {
        self.tx.subscribe()
    }

    /// Listens until `shutdown`, reconnecting as needed; after a gap, streams are told to reload.
    pub async fn run(self, db: PgPool, shutdown: CancellationToken) {
        loop {
            let mut listener = match PgListener::connect_with(&db).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "admin event listener could not connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN for admin events failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            loop {
                tokio::select! {
                    notification = listener.try_recv() => match notification {
                        Ok(Some(n)) => match AdminEvent::parse(n.payload()) {
                            Some(event) => { let _ = self.tx.send(Arc::new(event)); }
                            None => tracing::debug!("an admin event that does not parse"),
                        },
                        Ok(None) => { let _ = self.tx.send(Arc::new(AdminEvent::reload())); }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin event listener lost its connection; reconnecting");
                            let _ = self.tx.send(Arc::new(AdminEvent::reload()));
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Tells every process's streams that `endpoint_ids` have new request-log rows (one NOTIFY per
/// written batch).
pub async fn notify_requests(db: &PgPool, endpoint_ids: &[i64]) -> Result<(), sqlx::Error> {
    let ids = (endpoint_ids.len() <= MAX_NAMED_ENDPOINTS).then_some(endpoint_ids);
    let payload = serde_json::json!({ "type": "requests", "endpoint_ids": ids }).to_string();
    sqlx::query("select pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(db).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_with_their_account_and_unparseable_ones_are_dropped() {
        let e = AdminEvent::parse(r#"{"type":"sync_run","account_id":7,"pages":3}"#).unwrap();
        assert_eq!((e.kind.as_str(), e.account_id), ("sync_run", Some(AccountId(7))));
        let r = AdminEvent::parse(r#"{"type":"requests","endpoint_ids":[1,2]}"#).unwrap();
        assert_eq!((r.account_id, r.endpoint_ids), (None, Some(vec![1, 2])));
        assert!(AdminEvent::parse("not json").is_none());
    }
}
