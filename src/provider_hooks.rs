//! Provider webhooks in (DESIGN.md §8): on connect (and on `clientapi webhooks repair`) the
//! service subscribes the provider's webhooks for every mirrored object at
//! `{CLIENTAPI_PUBLIC_URL}/hooks/{provider}/{token}`, the token random per connection (only its
//! SHA-256 is looked up; it is kept sealed to subscribe again at the same URL). A callback is
//! acknowledged at once and queued in Postgres, one row per record named (duplicates collapse);
//! the [`CallbackWorker`] fetches each named record by id within the connection's request budget
//! and applies it like a sync page. Nothing in a callback but the ids is trusted, so a forged,
//! replayed, duplicated, reordered or late callback can only cause a fetch of what the
//! provider holds now, and a snapshot older than the mirror's is never applied (see
//! `clientapi_schema::mirror`). The poll stays as the safety net.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::{DateTime, Utc};
use clientapi_schema::ConnectionId;
use clientapi_schema::mirror;
use clientapi_schema::model::Record;
use clientapi_schema::secret::Secret;
use clientapi_sync::connections::TokenError;
use clientapi_sync::crypto::token_aad;
use clientapi_sync::provider::{Callback, ProviderError, ProviderKind};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::startup::AppState;

/// Where callbacks arrive: `/hooks/{provider}/{token}`.
pub const PATH_PREFIX: &str = "/hooks";
/// The channel a queued callback notifies, so a worker wakes at once.
pub const NOTIFY_CHANNEL: &str = "clientapi_callbacks";
/// Queued records claimed at once: fetched within the connection's budget (ServiceM8's 180 a
/// minute take about 33 s for a full batch), then applied together.
const BATCH: i64 = 100;
/// Fetches in flight at once per connection (each still waits for the request budget).
const FETCHES: usize = 8;
/// Longer than a full batch's fetches at the documented budget.
const LEASE: Duration = Duration::from_secs(300);
const IDLE: Duration = Duration::from_secs(1);
/// Failed fetches of a record before it is left to the poll.
const MAX_ATTEMPTS: i32 = 8;
/// Queued records older than this (a connection long inactive) are left to the poll.
const KEEP_QUEUED: &str = "1 day";
const PRUNE_EVERY: Duration = Duration::from_secs(600);

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The connection's callback token, created on first use.
async fn callback_token(state: &AppState, connection: ConnectionId) -> anyhow::Result<Secret<String>> {
    let aad = token_aad(connection.0, "webhook_token");
    let sealed: Option<Vec<u8>> = sqlx::query_scalar("select webhook_token_enc from connections where id = $1")
        .bind(connection)
        .fetch_optional(&state.db)
        .await?
        .flatten();
    if let Some(token) = sealed.and_then(|s| state.tokens.cipher().decrypt(&s, &aad).ok()) {
        return Ok(token);
    }
    let bytes: [u8; 32] = rand::random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    // Two first subscriptions at once keep whichever token was stored first.
    sqlx::query(
        "update connections set webhook_token_enc = $2, webhook_token_hash = $3
         where id = $1 and webhook_token_enc is null",
    )
    .bind(connection)
    .bind(state.tokens.cipher().encrypt(&token, &aad))
    .bind(token_hash(&token))
    .execute(&state.db)
    .await?;
    let sealed: Vec<u8> = sqlx::query_scalar("select webhook_token_enc from connections where id = $1")
        .bind(connection)
        .fetch_one(&state.db)
        .await?;
    // Whichever token was stored first (ours, or a concurrent caller's) is the connection's.
    state.tokens.cipher().decrypt(&sealed, &aad).map_err(|_| anyhow::anyhow!("the callback token cannot be opened"))
}

/// The URL the provider posts to for `connection` (it holds the connection's secret token).
pub async fn callback_url(state: &AppState, connection: ConnectionId, kind: ProviderKind) -> anyhow::Result<url::Url> {
    let token = callback_token(state, connection).await?;
    let base = state.config.public_url.as_str().trim_end_matches('/');
    Ok(url::Url::parse(&format!("{base}{PATH_PREFIX}/{}/{}", kind.as_str(), token.expose()))?)
}

/// Subscribes (again) the provider's webhooks for `connection` and records the outcome on it.
/// Returns the objects subscribed.
pub async fn subscribe(state: &AppState, connection: ConnectionId) -> anyhow::Result<Vec<String>> {
    let row = clientapi_sync::connections::get_any(&state.db, connection)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no connection {connection}"))?;
    let kind =
        ProviderKind::parse(&row.provider).ok_or_else(|| anyhow::anyhow!("unknown provider {}", row.provider))?;
    let provider = state.providers.get(kind);
    let url = callback_url(state, connection, kind).await?;
    let result = async {
        let token = state.tokens.access_token(provider.as_ref(), connection).await.map_err(|e| match e {
            TokenError::Provider(p) => p,
            other => ProviderError::NotConfigured(other.to_string()),
        })?;
        // One request per object, inside the connection's shared budget.
        let limiter = state.engine.limiter(connection, provider.as_ref());
        for _ in provider.streams() {
            limiter.until_ready().await;
        }
        provider.subscribe_webhooks(&token, &url).await
    }
    .await;
    let (status, error, objects) = match &result {
        Ok(objects) => ("subscribed", None, objects.clone()),
        Err(ProviderError::NotConfigured(why)) => ("not_configured", Some(why.clone()), Vec::new()),
        Err(e) => ("failed", Some(e.to_string()), Vec::new()),
    };
    sqlx::query(
        "update connections set webhook_status = $2, webhook_error = $3, webhook_objects = $4,
             webhook_subscribed_at = case when $2 = 'subscribed' then now() else webhook_subscribed_at end
         where id = $1",
    )
    .bind(connection)
    .bind(status)
    .bind(error)
    .bind(&objects)
    .execute(&state.db)
    .await?;
    match result {
        Ok(objects) => {
            tracing::info!(connection_id = %connection, objects = objects.len(), "provider webhooks subscribed");
            Ok(objects)
        }
        Err(e) => {
            tracing::warn!(connection_id = %connection, error = %e, "subscribing provider webhooks failed");
            Err(e.into())
        }
    }
}

/// [`subscribe`] without waiting for it (the provider calls back to check the URL meanwhile).
pub fn subscribe_in_background(state: &AppState, connection: ConnectionId) {
    let state = state.clone();
    tokio::spawn(async move {
        let _ = subscribe(&state, connection).await;
    });
}

/// Handles one callback: the handshake, or records to queue. An unknown token is a 404 after one
/// index probe and nothing else.
pub async fn receive(
    state: &AppState,
    provider: &str,
    token: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let kind = ProviderKind::parse(provider).ok_or(ApiError::NotFound)?;
    if token.is_empty()
        || token.len() > 100
        || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        metrics::counter!("provider_callbacks_total", "result" => "unknown").increment(1);
        return Err(ApiError::NotFound);
    }
    let connection: Option<ConnectionId> = sqlx::query_scalar(
        "select id from connections where webhook_token_hash = $1 and provider = $2 and status <> 'disconnected'",
    )
    .bind(token_hash(token))
    .bind(kind.as_str())
    .fetch_optional(&state.db)
    .await?;
    let Some(connection) = connection else {
        metrics::counter!("provider_callbacks_total", "result" => "unknown").increment(1);
        return Err(ApiError::NotFound);
    };
    let callback = state.providers.get(kind).parse_callback(headers, body).map_err(|detail| {
        metrics::counter!("provider_callbacks_total", "result" => "malformed").increment(1);
        ApiError::BadRequest { code: "invalid_callback", detail }
    })?;
    match callback {
        Callback::Challenge(challenge) => {
            metrics::counter!("provider_callbacks_total", "result" => "challenge").increment(1);
            Ok((StatusCode::OK, [("content-type", "text/plain; charset=utf-8")], challenge).into_response())
        }
        Callback::Changed(records) => {
            let (streams, ids): (Vec<&str>, Vec<String>) = records.into_iter().unzip();
            let queued = sqlx::query(
                "with c as (update connections set last_callback_at = now() where id = $1)
                 insert into provider_callbacks (connection_id, stream, external_id)
                 select distinct $1, s, x from unnest($2::text[], $3::text[]) as u(s, x)
                 on conflict (connection_id, stream, external_id) do update
                     set generation = provider_callbacks.generation + 1, next_attempt_at = now(), attempts = 0",
            )
            .bind(connection)
            .bind(&streams)
            .bind(&ids)
            .execute(&state.db)
            .await?
            .rows_affected();
            let _ = sqlx::query("select pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&state.db).await;
            metrics::counter!("provider_callbacks_total", "result" => "queued").increment(1);
            metrics::counter!("provider_callback_records_total").increment(queued);
            Ok((StatusCode::OK, axum::Json(serde_json::json!({ "queued": queued }))).into_response())
        }
    }
}

#[derive(sqlx::FromRow)]
struct Queued {
    connection_id: ConnectionId,
    stream: String,
    external_id: String,
    generation: i32,
    received_at: DateTime<Utc>,
    attempts: i32,
}

/// Turns queued callbacks into targeted fetches applied to the mirror.
#[derive(Clone)]
pub struct CallbackWorker {
    state: AppState,
}

impl CallbackWorker {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let queue = crate::queue_worker::Queue {
            name: "provider callbacks",
            channel: NOTIFY_CHANNEL,
            batch: BATCH as usize,
            idle: IDLE,
            housekeeping_every: PRUNE_EVERY,
        };
        queue.run(&self.state.db, shutdown, || self.tick(), || self.prune()).await;
    }

    /// Forgets records queued so long ago (a connection long inactive) that the poll has them.
    async fn prune(&self) -> Result<(), sqlx::Error> {
        sqlx::query("delete from provider_callbacks where received_at < now() - $1::interval")
            .bind(KEEP_QUEUED)
            .execute(&self.state.db)
            .await?;
        Ok(())
    }

    /// Claims a batch of queued records, fetches and applies them; returns how many it claimed.
    pub async fn tick(&self) -> Result<usize, sqlx::Error> {
        let claimed: Vec<Queued> = sqlx::query_as(
            "with due as (select connection_id, stream, external_id from provider_callbacks
                          where next_attempt_at <= now() and (leased_until is null or leased_until < now())
                          order by received_at limit $1 for update skip locked)
             update provider_callbacks p set leased_until = now() + make_interval(secs => $2), attempts = p.attempts + 1
             from due where (p.connection_id, p.stream, p.external_id) = (due.connection_id, due.stream, due.external_id)
             returning p.connection_id, p.stream, p.external_id, p.generation, p.received_at, p.attempts",
        )
        .bind(BATCH)
        .bind(LEASE.as_secs_f64())
        .fetch_all(&self.state.db)
        .await?;
        let n = claimed.len();
        let mut by_connection: BTreeMap<ConnectionId, Vec<Queued>> = BTreeMap::new();
        for q in claimed {
            by_connection.entry(q.connection_id).or_default().push(q);
        }
        for (connection, queued) in by_connection {
            if let Err(e) = self.apply(connection, queued).await {
                tracing::warn!(connection_id = %connection, error = %e, "applying provider callbacks failed");
            }
        }
        Ok(n)
    }

    async fn apply(&self, connection: ConnectionId, queued: Vec<Queued>) -> Result<(), sqlx::Error> {
        let state = &self.state;
        let Some(row) = clientapi_sync::connections::get_any(&state.db, connection).await? else { return Ok(()) };
        let Some(kind) = ProviderKind::parse(&row.provider) else { return Ok(()) };
        let provider = state.providers.get(kind);
        if row.status != "active" {
            // Kept for when the connection is authorised again.
            return self.release(&queued, Duration::from_secs(300), Some("the connection is not active")).await;
        }
        let token = match state.tokens.access_token(provider.as_ref(), connection).await {
            Ok(t) => t,
            Err(e) => return self.release(&queued, Duration::from_secs(60), Some(&e.to_string())).await,
        };
        let limiter = state.engine.limiter(connection, provider.as_ref());
        let fetches: Vec<_> = queued
            .iter()
            .map(|q| {
                let (provider, token, limiter) = (provider.clone(), token.clone(), limiter.clone());
                async move {
                    let Some(stream) = provider.streams().iter().copied().find(|s| s.name == q.stream) else {
                        return Ok(None);
                    };
                    limiter.until_ready().await;
                    match provider.get(&token, stream, &q.external_id).await {
                        Err(ProviderError::Unauthorized) => {
                            let fresh = state
                                .tokens
                                .refresh_after_rejection(provider.as_ref(), connection, &token)
                                .await
                                .map_err(|_| ProviderError::Unauthorized)?;
                            limiter.until_ready().await;
                            provider.get(&fresh, stream, &q.external_id).await
                        }
                        other => other,
                    }
                }
            })
            .collect();
        let fetched: Vec<Result<Option<Vec<Record>>, ProviderError>> =
            futures::stream::iter(fetches).buffered(FETCHES).collect().await;

        let (mut records, mut done, mut retry) = (Vec::new(), Vec::new(), Vec::new());
        // Named by a callback and no longer at a provider whose deletes arrive only that way.
        let mut gone: Vec<&Queued> = Vec::new();
        // Each fetched record named by a callback (not what derives from it), to check it found
        // its company: (its queued row, resource, id).
        let mut named: Vec<(&Queued, &'static str, String)> = Vec::new();
        for (q, result) in queued.iter().zip(fetched) {
            match result {
                Ok(found) => {
                    // Not found: deleted outright, or never this account's (a forged id). The
                    // reconciliation tombstones a hard delete.
                    metrics::counter!("provider_callback_fetches_total", "result" => if found.is_some() { "found" } else { "not_found" })
                        .increment(1);
                    if found.is_none() && provider.missing_means_deleted() {
                        gone.push(q);
                    }
                    let found = found.unwrap_or_default();
                    if let Some(own) = found.iter().find(|r| r.external_id == q.external_id && !r.deleted) {
                        named.push((q, own.resource().singular(), own.external_id.clone()));
                    }
                    records.extend(found);
                    done.push(q);
                }
                Err(e)
                    if q.attempts < MAX_ATTEMPTS && (e.is_transient() || matches!(e, ProviderError::Unauthorized)) =>
                {
                    metrics::counter!("provider_callback_fetches_total", "result" => "retry").increment(1);
                    retry.push((q, e.to_string()));
                }
                Err(e) => {
                    metrics::counter!("provider_callback_fetches_total", "result" => "failed").increment(1);
                    tracing::warn!(connection_id = %connection, stream = q.stream, error = %e,
                                   "a callback's record could not be fetched; the poll will bring it");
                    done.push(q);
                }
            }
        }

        let mut tx = state.db.begin().await?;
        mirror::lock_connection(&mut tx, connection).await?;
        let applied =
            mirror::apply(&mut tx, connection, &mirror::stage(records), &mut mirror::Expectation::default()).await?;
        for q in &gone {
            if let Some(stream) = provider.streams().iter().find(|s| s.name == q.stream) {
                let deleted = mirror::tombstone_named(&mut tx, connection, stream.resources, &q.external_id).await?;
                metrics::counter!("provider_callback_deletes_total").increment(deleted);
            }
        }
        // A record whose owner the mirror does not know yet (a job whose new client's callback is
        // behind it) was left out: it is fetched again shortly, when its owner may be there.
        if applied.unowned > 0 && !named.is_empty() {
            let (resources, ids): (Vec<&str>, Vec<&str>) = named.iter().map(|(_, r, id)| (*r, id.as_str())).unzip();
            let present: Vec<(String, String)> = sqlx::query_as(
                "select k.resource, k.external_id from mirror_keys k join unnest($2::text[], $3::text[]) as n(r, x)
                   on k.resource = n.r and k.external_id = n.x
                 where k.connection_id = $1",
            )
            .bind(connection)
            .bind(&resources)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            for (q, resource, id) in &named {
                let mirrored = present.iter().any(|(r, x)| r == resource && x == id);
                if !mirrored && q.attempts < MAX_ATTEMPTS {
                    done.retain(|d| !std::ptr::eq(*d, *q));
                    retry.push((*q, "its owner is not mirrored yet".to_owned()));
                }
            }
        }
        // Done at the generation fetched: a callback that came in meanwhile stays queued.
        let (streams, ids, generations): (Vec<&str>, Vec<&str>, Vec<i32>) =
            done.iter().map(|q| (q.stream.as_str(), q.external_id.as_str(), q.generation)).collect();
        sqlx::query(
            "delete from provider_callbacks p using unnest($2::text[], $3::text[], $4::int[]) as d(s, x, g)
             where p.connection_id = $1 and p.stream = d.s and p.external_id = d.x and p.generation = d.g",
        )
        .bind(connection)
        .bind(&streams)
        .bind(&ids)
        .bind(&generations)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update provider_callbacks p set leased_until = null from unnest($2::text[], $3::text[]) as d(s, x)
             where p.connection_id = $1 and p.stream = d.s and p.external_id = d.x",
        )
        .bind(connection)
        .bind(&streams)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        if let Some(oldest) = done.iter().map(|q| q.received_at).min() {
            let lag = (Utc::now() - oldest).num_milliseconds().max(0);
            sqlx::query("update connections set last_callback_lag_ms = $2 where id = $1")
                .bind(connection)
                .bind(lag.min(i32::MAX as i64) as i32)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        for q in &done {
            let lag = (Utc::now() - q.received_at).to_std().unwrap_or_default().as_secs_f64();
            metrics::histogram!("provider_callback_lag_seconds").record(lag);
        }
        for (q, error) in retry {
            let wait = clientapi_sync::engine::backoff(q.attempts as u32, None);
            self.release(std::slice::from_ref(q), wait, Some(&error)).await?;
        }
        Ok(())
    }

    /// Puts claimed records back, to be tried after `wait`.
    async fn release(&self, queued: &[Queued], wait: Duration, error: Option<&str>) -> Result<(), sqlx::Error> {
        for q in queued {
            sqlx::query(
                "update provider_callbacks set leased_until = null, last_error = $4,
                     next_attempt_at = now() + make_interval(secs => $5)
                 where connection_id = $1 and stream = $2 and external_id = $3",
            )
            .bind(q.connection_id)
            .bind(&q.stream)
            .bind(&q.external_id)
            .bind(error)
            .bind(wait.as_secs_f64())
            .execute(&self.state.db)
            .await?;
        }
        Ok(())
    }
}

/// A connection's provider webhooks as admins see them: subscribed or why not, the last
/// callback, how long the last one took to reach the mirror, and what is still queued.
#[derive(Debug, Clone, Default, sqlx::FromRow, serde::Serialize)]
pub struct WebhookStatus {
    pub status: String,
    pub error: Option<String>,
    pub objects: Vec<String>,
    pub subscribed_at: Option<DateTime<Utc>>,
    pub last_callback_at: Option<DateTime<Utc>>,
    pub last_callback_lag_ms: Option<i32>,
    pub queued: i64,
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

pub async fn status(db: &sqlx::PgPool, connection: ConnectionId) -> Result<WebhookStatus, sqlx::Error> {
    let status: Option<WebhookStatus> = sqlx::query_as(
        "select c.webhook_status as status, c.webhook_error as error, c.webhook_objects as objects,
                c.webhook_subscribed_at as subscribed_at, c.last_callback_at, c.last_callback_lag_ms,
                (select count(*) from provider_callbacks p where p.connection_id = c.id) as queued,
                (select min(received_at) from provider_callbacks p where p.connection_id = c.id) as oldest_queued_at
         from connections c where c.id = $1",
    )
    .bind(connection)
    .fetch_optional(db)
    .await?;
    Ok(status.unwrap_or_default())
}
