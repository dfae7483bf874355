//! `GET /api/admin/events`: the live event stream (server-sent events) of the caller's account:
//! sync progress per run and stream, runs finished, connection status, endpoint changes, and,
//! with `?endpoint=<id>` naming one of the caller's endpoints, its new request-log rows (read at
//! most every 2 seconds, the newest 50 of them, so a busy endpoint's tail stays cheap). Each
//! event's `event:` is its type (`sync_run`, `connection`, `endpoint`, `request`, `reload`)
//! and its data is JSON. Nothing of another account is ever sent: events carry their account
//! and are kept only when it is the caller's; request rows are read for the watched endpoint
//! only after it was checked to be the caller's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use clientapi_schema::AccountId;
use futures::Stream;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::auth::AdminAuth;
use crate::error::ApiError;
use crate::events::AdminEvent;
use crate::http::extract::ApiQuery;
use crate::startup::AppState;
use crate::usage;

const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream reads its endpoint's new log rows at most this often: a busy endpoint logs four
/// batches a second, and a person reads a live tail a glance at a time.
const TAIL_EVERY: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/events", get(stream_events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// One of the caller's endpoints, whose request log is tailed.
    pub endpoint: Option<String>,
}

/// What one stream needs between events.
struct Tail {
    rx: broadcast::Receiver<Arc<AdminEvent>>,
    db: PgPool,
    account: AccountId,
    /// The watched endpoint's internal id and the newest row sent.
    watched: Option<(i64, Option<String>)>,
    /// New rows were announced but not read yet (the last read was under [`TAIL_EVERY`] ago).
    rows_pending: bool,
    next_read: tokio::time::Instant,
    queue: VecDeque<Event>,
    closing: CancellationToken,
}

async fn stream_events(
    State(state): State<AppState>,
    admin: AdminAuth,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    Ok(Sse::new(event_stream(&state, &admin, query.endpoint.as_deref()).await?)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The stream itself, shared with the dashboard's route.
pub async fn event_stream(
    state: &AppState,
    admin: &AdminAuth,
    endpoint: Option<&str>,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, ApiError> {
    // Subscribe first, so nothing committed after the newest row we read is missed.
    let rx = state.events.subscribe();
    let watched = match endpoint.filter(|e| !e.is_empty()) {
        None => None,
        Some(public_id) => {
            let id = super::endpoints::owned_endpoint(state, admin, public_id).await?;
            let newest = usage::logs(&state.db, id, &usage::LogFilter { limit: Some(1), ..Default::default() })
                .await?
                .0
                .first()
                .map(usage::LogEntry::cursor);
            Some((id, newest))
        }
    };
    let ready = Event::default().event("ready").data(r#"{"type":"ready"}"#);
    let tail = Tail {
        rx,
        db: state.db.clone(),
        account: admin.account_id,
        watched,
        rows_pending: false,
        next_read: tokio::time::Instant::now(),
        queue: VecDeque::from([ready]),
        closing: state.streams_closing.clone(),
    };
    Ok(futures::stream::unfold(tail, |mut tail| async move {
        loop {
            if let Some(event) = tail.queue.pop_front() {
                return Some((Ok(event), tail));
            }
            let received = tokio::select! {
                received = tail.rx.recv() => received,
                _ = tokio::time::sleep_until(tail.next_read), if tail.rows_pending => {
                    tail.read_rows().await;
                    continue;
                }
                _ = tail.closing.cancelled() => return None,
            };
            match received {
                Ok(event) => tail.take(&event).await,
                // Fell behind: the page should read its state afresh.
                Err(RecvError::Lagged(_)) => tail.queue.push_back(Event::default().event("reload").data("{}")),
                Err(RecvError::Closed) => return None,
            }
        }
    }))
}

impl Tail {
    /// Queues the watched endpoint's rows logged since the last one sent (the newest
    /// [`usage::TAIL_ROWS`] of them, oldest first).
    async fn read_rows(&mut self) {
        self.rows_pending = false;
        self.next_read = tokio::time::Instant::now() + TAIL_EVERY;
        let Some((id, last)) = &mut self.watched else { return };
        match usage::logs_after(&self.db, *id, last.as_deref()).await {
            Ok(rows) => {
                for row in rows {
                    *last = Some(row.cursor());
                    if let Ok(json) = serde_json::to_string(&row) {
                        self.queue.push_back(Event::default().event("request").data(json));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "live tail read failed"),
        }
    }

    /// Queues what of `event` this stream may see.
    async fn take(&mut self, event: &AdminEvent) {
        match event.kind.as_str() {
            "reload" => self.queue.push_back(Event::default().event("reload").data("{}")),
            "requests" => {
                let Some((id, _)) = &self.watched else { return };
                if event.endpoint_ids.as_ref().is_some_and(|ids| !ids.contains(id)) {
                    return;
                }
                if tokio::time::Instant::now() >= self.next_read {
                    self.read_rows().await;
                } else {
                    self.rows_pending = true;
                }
            }
            kind if event.account_id == Some(self.account) => {
                self.queue.push_back(Event::default().event(kind).data(event.payload.clone()));
            }
            _ => {}
        }
    }
}
