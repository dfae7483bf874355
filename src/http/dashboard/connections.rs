//! A connection's pages: its sync health per stream with live progress, run history, Sync now
//! and Full reconciliation, the schedule, Disconnect, and its companies with search; plus the
//! browser's side of the OAuth flow (connect, the callback's page).

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use clientapi_schema::ConnectionId;
use clientapi_sync::connections::{self, Connection};
use clientapi_sync::provider::ProviderKind;
use clientapi_sync::status::{self, SyncRun};
use serde::Deserialize;

use super::view::{self, Badge, Chrome};
use super::{ConfirmPage, PageError, Posted, Session, render, see_other};
use crate::http::admin::auth::{self, AdminAuth};
use crate::http::admin::connections as api;
use crate::http::extract::parse_id;
use crate::schedule::{self, INTERVALS, ScheduleChange};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections/connect", axum::routing::post(connect))
        .route("/connections/{id}", get(connection_page))
        .route("/connections/{id}/sync", axum::routing::post(sync_now))
        .route("/connections/{id}/schedule", axum::routing::post(save_schedule))
        .route("/connections/{id}/webhooks", axum::routing::post(repair_webhooks))
        .route("/connections/{id}/disconnect", get(confirm_disconnect).post(disconnect))
        .route("/connections/{id}/companies", get(companies_page))
}

/// A stream as the pages show it.
pub struct StreamView {
    pub label: String,
    pub rating: Badge,
    pub watermark: String,
    pub last_success: String,
    pub age: String,
    /// The last run's counts on this stream.
    pub counts: Option<Counts>,
    /// The provider's words, when the last run failed on this stream.
    pub last_error: Option<String>,
}

pub struct Counts {
    pub fetched: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
}

impl Counts {
    fn of(value: &serde_json::Value) -> Self {
        let n = |k: &str| value.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
        Self {
            fetched: n("fetched"),
            inserted: n("inserted"),
            updated: n("updated"),
            unchanged: n("unchanged"),
            deleted: n("deleted"),
        }
    }
}

/// A run as the history and the live progress show it.
pub struct RunView {
    pub kind: String,
    pub status: Badge,
    pub started: String,
    pub duration: String,
    pub progress: String,
    pub counts: Counts,
    pub error: Option<String>,
}

impl RunView {
    fn of(run: &SyncRun) -> Self {
        let status = match run.status.as_str() {
            "running" => Badge::new("info", "Running"),
            "succeeded" => Badge::new("good", "Succeeded"),
            _ => Badge::new("bad", "Failed"),
        };
        let stream = run.stream.as_deref().unwrap_or("starting");
        let progress = if run.status == "running" {
            format!("{stream}: {} pages, {} records so far", view::number(run.pages), view::number(run.fetched))
        } else {
            format!("{} pages, {} records", view::number(run.pages), view::number(run.fetched))
        };
        Self {
            kind: if run.kind == "full" { "Full reconciliation".into() } else { "Incremental".into() },
            status,
            started: view::time(Some(run.started_at)),
            duration: run.lag_seconds.map_or_else(
                || view::span((chrono::Utc::now() - run.started_at).num_milliseconds() as f64 / 1000.0),
                view::span,
            ),
            progress,
            counts: Counts {
                fetched: run.fetched,
                inserted: run.inserted,
                updated: run.updated,
                unchanged: run.unchanged,
                deleted: run.deleted,
            },
            error: run.error.clone(),
        }
    }
}

/// A connection's health, for the overview and its own page.
pub struct ConnectionSummary {
    pub id: ConnectionId,
    pub name: String,
    pub provider: String,
    pub provider_label: &'static str,
    pub environment: Badge,
    pub environment_value: String,
    pub status: Badge,
    pub needs_reauth: bool,
    pub active: bool,
    pub paused: bool,
    pub last_error: Option<String>,
    pub last_success: String,
    pub last_success_ago: String,
    pub streams: Vec<StreamView>,
    pub records: String,
    pub running: Option<RunView>,
    pub runs: Vec<RunView>,
    pub schedule: schedule::Schedule,
    pub webhooks: WebhooksView,
}

/// The connection's provider webhooks, for its page.
pub struct WebhooksView {
    pub status: Badge,
    pub error: Option<String>,
    pub objects: usize,
    pub last_callback: String,
    pub last_callback_ago: String,
    pub lag: String,
    pub queued: String,
}

impl WebhooksView {
    fn of(w: crate::provider_hooks::WebhookStatus) -> Self {
        let status = match w.status.as_str() {
            "subscribed" => Badge::new("good", "Subscribed"),
            "failed" => Badge::new("bad", "Subscription failed"),
            "not_configured" => Badge::new("warn", "Not offered"),
            _ => Badge::new("muted", "Not subscribed"),
        };
        Self {
            status,
            error: w.error,
            objects: w.objects.len(),
            last_callback: view::time(w.last_callback_at),
            last_callback_ago: view::ago(w.last_callback_at),
            lag: view::ms(w.last_callback_lag_ms.map(f64::from)),
            queued: view::number(w.queued),
        }
    }
}

fn provider_label(provider: &str) -> &'static str {
    match provider {
        "servicem8" => "ServiceM8",
        "jobber" => "Jobber",
        _ => "Provider",
    }
}

/// Reads a connection's streams and recent runs and rates them.
pub async fn summarize(state: &AppState, connection: Connection) -> Result<ConnectionSummary, PageError> {
    let id = connection.id;
    let statuses = status::streams(&state.db, id).await?;
    let runs = status::runs(&state.db, connection.account_id, Some(id), 10).await?;
    let (leased, records): (bool, i64) = sqlx::query_as(
        "select coalesce(c.sync_lease_until > now(), false),
                coalesce((select sum(inserted) - sum(deleted) from sync_runs r where r.connection_id = c.id), 0)::bigint
         from connections c where c.id = $1",
    )
    .bind(id)
    .fetch_one(&state.db)
    .await?;
    let running = runs.first().filter(|r| r.status == "running" && leased);
    let last_finished = runs.iter().find(|r| r.status != "running");
    let schedule = schedule::Schedule::from_cron(
        connection.sync_schedule.clone(),
        connection.reconcile_schedule.clone(),
        connection.sync_paused,
    );
    let interval = schedule.expected_interval_minutes();
    let provider_streams = ProviderKind::parse(&connection.provider)
        .map(|kind| state.providers.get(kind).streams().to_vec())
        .unwrap_or_default();
    let latest = runs.first();
    let streams = provider_streams
        .iter()
        .map(|stream| {
            let status = statuses.iter().find(|s| s.stream == stream.name);
            let last_error = last_finished
                .filter(|r| r.status == "failed" && r.stream.as_deref() == Some(stream.name))
                .and_then(|r| r.error.clone());
            StreamView {
                label: view::stream_label(stream),
                rating: view::rate_stream(
                    stream.name,
                    status,
                    interval,
                    running,
                    last_finished,
                    connection.sync_paused,
                ),
                watermark: status.and_then(|s| s.watermark.clone()).unwrap_or_else(|| "—".into()),
                last_success: view::time(status.and_then(|s| s.last_success_at)),
                age: view::ago(status.and_then(|s| s.last_success_at)),
                counts: latest.and_then(|r| r.streams.get(stream.name)).map(Counts::of),
                last_error,
            }
        })
        .collect();
    let last_success = statuses.iter().filter_map(|s| s.last_success_at).max();
    let last_failed = last_finished.is_some_and(|r| r.status == "failed");
    Ok(ConnectionSummary {
        id,
        provider_label: provider_label(&connection.provider),
        environment: view::environment_badge(&connection.environment),
        environment_value: connection.environment.clone(),
        status: view::connection_badge(&connection.status, connection.sync_paused, running.is_some(), last_failed),
        needs_reauth: connection.status == "needs_reauth",
        active: connection.status == "active",
        paused: connection.sync_paused,
        last_error: connection.last_error.clone().or_else(|| last_finished.and_then(|r| r.error.clone())),
        last_success: view::time(last_success),
        last_success_ago: view::ago(last_success),
        streams,
        records: format!("≈ {}", view::number(records.max(0))),
        running: running.map(RunView::of),
        runs: runs.iter().map(RunView::of).collect(),
        schedule,
        webhooks: WebhooksView::of(crate::provider_hooks::status(&state.db, id).await?),
        name: connection.display_name().to_owned(),
        provider: connection.provider,
    })
}

async fn owned(state: &AppState, session: &Session, raw: &str) -> Result<Connection, PageError> {
    let id = ConnectionId(parse_id(raw)?);
    connections::get(&state.db, session.account(), id).await?.ok_or(PageError::NotFound)
}

/// "Connect" and "Reconnect": off to the provider's consent page.
async fn connect(State(state): State<AppState>, Posted { session, form }: Posted) -> Result<Response, PageError> {
    let kind = ProviderKind::parse(form.get("provider").unwrap_or_default()).ok_or(PageError::NotFound)?;
    let environment = api::connection_environment(form.filled("environment"))?;
    let url = api::begin_connection(&state, &session.admin, kind, environment).await?;
    Ok(Redirect::to(url.as_str()).into_response())
}

#[derive(Template)]
#[template(path = "connection.html")]
struct ConnectionPage {
    chrome: Chrome,
    c: ConnectionSummary,
    intervals: Vec<(u32, String, bool)>,
    reconcile_at: String,
    flash: Option<&'static str>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Flash {
    done: Option<String>,
}

fn flash_text(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "connected" => Some("Connected. The first sync has started; this page follows it live."),
        "sync" => Some("Sync started."),
        "full" => Some("Full reconciliation started."),
        "schedule" => Some("Schedule saved."),
        "webhooks" => Some("The provider's webhooks are subscribed again."),
        _ => None,
    }
}

fn interval_label(minutes: u32) -> String {
    match minutes {
        1 => "Every minute".into(),
        m if m < 60 => format!("Every {m} minutes"),
        60 => "Every hour".into(),
        1440 => "Once a day".into(),
        m => format!("Every {} hours", m / 60),
    }
}

async fn render_connection(
    state: &AppState,
    session: &Session,
    connection: Connection,
    flash: Option<&'static str>,
    error: Option<String>,
) -> Result<Response, PageError> {
    let c = summarize(state, connection).await?;
    let current = c.schedule.incremental_every_minutes;
    let mut intervals: Vec<(u32, String, bool)> =
        INTERVALS.iter().map(|m| (*m, interval_label(*m), current == Some(*m))).collect();
    if current.is_none() {
        intervals.insert(0, (0, format!("Custom: {}", c.schedule.sync_schedule), true));
    }
    let page = ConnectionPage {
        chrome: Chrome::page(session, "overview", c.name.clone()).live("/api/admin/events"),
        reconcile_at: c.schedule.reconcile_at.clone().unwrap_or_default(),
        intervals,
        c,
        flash,
        error,
    };
    Ok(render(&page))
}

async fn connection_page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    render_connection(&state, &session, connection, flash_text(flash.done.as_deref()), None).await
}

async fn sync_now(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    let full = form.get("full") == Some("1");
    match api::start_sync(&state, &session.admin, connection.id, full).await {
        Ok(()) => Ok(see_other(&format!("/connections/{}?done={}", connection.id, if full { "full" } else { "sync" }))),
        Err(crate::error::ApiError::Conflict { detail, .. }) => {
            render_connection(&state, &session, connection, None, Some(detail)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Subscribes the provider's webhooks again (the admin API's repair, from the page).
async fn repair_webhooks(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    match crate::provider_hooks::subscribe(&state, connection.id).await {
        Ok(_) => Ok(see_other(&format!("/connections/{}?done=webhooks", connection.id))),
        Err(e) => {
            let message = format!("Subscribing the provider's webhooks failed: {e}");
            render_connection(&state, &session, connection, None, Some(message)).await
        }
    }
}

async fn save_schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    let change = ScheduleChange {
        incremental_every_minutes: form
            .filled("incremental_every_minutes")
            .and_then(|m| m.parse().ok())
            .filter(|m| *m > 0),
        reconcile_at: form.filled("reconcile_at").map(|t| t.chars().take(5).collect()),
        paused: form.get("paused").map(|p| p == "1"),
    };
    match schedule::update(&state.db, session.account(), connection.id, &change).await {
        Ok(_) => Ok(see_other(&format!("/connections/{}?done=schedule", connection.id))),
        Err(crate::error::ApiError::Invalid(errors)) => {
            let message = super::field_messages(&errors).join(" ");
            render_connection(&state, &session, connection, None, Some(message)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn confirm_disconnect(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    let name = connection.display_name().to_owned();
    Ok(render(&ConfirmPage {
        chrome: Chrome::page(&session, "overview", format!("Disconnect {name}")),
        heading: format!("Disconnect {name}?"),
        body: "Its tokens are deleted and its syncs stop. The mirrored records stay, and its endpoints keep \
               answering from them until you deactivate them. You can connect the account again later."
            .into(),
        action: format!("/connections/{}/disconnect", connection.id),
        button: "Disconnect".into(),
        cancel: format!("/connections/{}", connection.id),
        danger: true,
    }))
}

async fn disconnect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    connections::disconnect(&state.db, session.account(), connection.id).await?;
    Ok(see_other(&format!("/connections/{}", connection.id)))
}

#[derive(Template)]
#[template(path = "companies.html")]
struct CompaniesPage {
    chrome: Chrome,
    connection_id: ConnectionId,
    connection_name: String,
    q: String,
    /// Column headings, in the order of each company's records (by name).
    resources: Vec<String>,
    companies: Vec<CompanyRow>,
    next: Option<String>,
    first_page: bool,
}

struct CompanyRow {
    external_id: String,
    name: String,
    records: Vec<String>,
    last_change: String,
    endpoints: Vec<(String, String, Badge)>,
    issue_href: String,
}

#[derive(Deserialize)]
struct CompanyQuery {
    q: Option<String>,
    cursor: Option<String>,
}

async fn companies_page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<CompanyQuery>,
) -> Result<Response, PageError> {
    let connection = owned(&state, &session, &id).await?;
    let q = query.q.unwrap_or_default();
    let page = crate::companies::list(
        &state.db,
        session.account(),
        connection.id,
        Some(q.as_str()),
        query.cursor.as_deref(),
        None,
    )
    .await?;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let companies = page
        .data
        .iter()
        .map(|c| CompanyRow {
            external_id: c.external_id.clone(),
            name: c.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "(no name)".into()),
            records: c.records.values().map(|n| view::number(*n)).collect(),
            last_change: view::time(c.last_change_at),
            endpoints: c
                .endpoints
                .iter()
                .map(|e| (e.id.clone(), e.name.clone(), view::environment_badge(&e.environment)))
                .collect(),
            issue_href: format!("/endpoints/new?connection={}&company={}", connection.id, encode(&c.external_id)),
        })
        .collect();
    let next = page
        .next_cursor
        .map(|cursor| format!("/connections/{}/companies?q={}&cursor={}", connection.id, encode(&q), encode(&cursor)));
    let name = connection.display_name().to_owned();
    Ok(render(&CompaniesPage {
        chrome: Chrome::page(&session, "overview", format!("Companies of {name}")),
        connection_id: connection.id,
        connection_name: name,
        // The columns of each company's counts (the map its records are counted into).
        resources: crate::companies::counted_resources()
            .map(|r| r.plural())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|plural| plural.replace('_', " "))
            .collect(),
        q,
        companies,
        next,
        first_page: query.cursor.is_none_or(|c| c.is_empty()),
    }))
}

/// The OAuth callback as a browser meets it. The session cookie is SameSite=Strict, so a
/// browser coming back from the provider's site does not send it: the first visit answers a
/// page of ours that follows the same URL again, now from this site, cookie and all. A signed-
/// out visitor is sent to sign in first.
pub async fn oauth_callback_page(
    state: &AppState,
    headers: &HeaderMap,
    kind: ProviderKind,
    params: api::CallbackParams,
) -> Result<Response, PageError> {
    let Some((admin, _)) = auth::session(state, headers).await? else {
        let again = params.bounced_path(kind);
        if params.bounced.is_none() {
            return Ok(render(&BouncePage { chrome: Chrome::bare("Finishing the connection"), again }));
        }
        let next = url::form_urlencoded::byte_serialize(again.as_bytes()).collect::<String>();
        return Ok(see_other(&format!("/login?next={next}")));
    };
    match api::finish_connection(state, &admin, kind, params).await {
        Ok(connection) => {
            start_first_sync(state, &admin, connection.id).await;
            Ok(see_other(&format!("/connections/{}?done=connected", connection.id)))
        }
        Err(e) => {
            let (status, _) = e.status_and_code();
            let message = match &e {
                crate::error::ApiError::BadRequest { detail, .. } | crate::error::ApiError::BadGateway { detail } => {
                    detail.clone()
                }
                other => other.to_string(),
            };
            let page = ConnectFailedPage { chrome: Chrome::bare("The connection failed"), message };
            Ok((status, render(&page)).into_response())
        }
    }
}

/// A new connection syncs at once, so its companies are there to pick.
async fn start_first_sync(state: &AppState, admin: &AdminAuth, id: ConnectionId) {
    if let Err(e) = api::start_sync(state, admin, id, false).await {
        tracing::debug!(connection_id = %id, error = %e, "first sync not started from the callback");
    }
}

#[derive(Template)]
#[template(path = "bounce.html")]
struct BouncePage {
    chrome: Chrome,
    again: String,
}

#[derive(Template)]
#[template(path = "connect_failed.html")]
struct ConnectFailedPage {
    chrome: Chrome,
    message: String,
}
