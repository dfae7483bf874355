//! Connecting provider accounts (the OAuth flow) and managing connections.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clientapi_schema::ConnectionId;
use clientapi_sync::connections::{self, Connection};
use clientapi_sync::oauth::{self, OAuthError};
use clientapi_sync::provider::{ProviderError, ProviderKind};
use clientapi_sync::status;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::auth::AdminAuth;
use crate::error::ApiError;
use crate::error::FieldError;
use crate::http::extract::{ApiJson, ApiQuery, parse_id};
use crate::schedule;
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/connections/{provider}/authorize", post(authorize_connection))
        .route("/api/admin/oauth/{provider}/callback", get(oauth_callback))
        .route("/api/admin/connections", get(list_connections))
        .route("/api/admin/connections/{id}", get(get_connection).delete(delete_connection))
        .route("/api/admin/connections/{id}/sync", post(sync_connection))
        .route("/api/admin/connections/{id}/companies", get(list_companies))
        .route("/api/admin/connections/{id}/schedule", get(get_schedule).patch(update_schedule))
        .route("/api/admin/connections/{id}/pause", post(pause_connection))
        .route("/api/admin/connections/{id}/resume", post(resume_connection))
        .route("/api/admin/sync-runs", get(list_sync_runs))
}

fn provider_kind(name: &str) -> Result<ProviderKind, ApiError> {
    ProviderKind::parse(name).ok_or(ApiError::NotFound)
}

/// Where the provider sends the admin back to.
pub fn redirect_uri(state: &AppState, kind: ProviderKind) -> Url {
    let base = state.config.public_url.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/api/admin/oauth/{}/callback", kind.as_str())).expect("public URL is valid")
}

pub fn provider_error(e: ProviderError) -> ApiError {
    match e {
        ProviderError::NotConfigured(detail) => ApiError::Conflict { code: "provider_not_configured", detail },
        ProviderError::InvalidGrant => ApiError::BadRequest {
            code: "invalid_grant",
            detail: "The provider refused the authorization code; start the connection again.".into(),
        },
        other => ApiError::BadGateway { detail: format!("The provider failed: {other}") },
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthorizeBody {
    /// `live` (default) or `sandbox`.
    environment: Option<String>,
}

/// Parses an optional JSON body: none (or whitespace) means the defaults.
pub fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid(vec![FieldError::new("body", e.to_string())]))
}

/// A connection environment as asked for: `live` unless `sandbox` is named.
pub fn connection_environment(raw: Option<&str>) -> Result<&'static str, ApiError> {
    match raw {
        None | Some("live") => Ok("live"),
        Some("sandbox") => Ok("sandbox"),
        Some(_) => Err(ApiError::Invalid(vec![FieldError::new("environment", "must be live or sandbox")])),
    }
}

/// The provider's authorize URL for a new connection of `admin`'s account.
pub async fn begin_connection(
    state: &AppState,
    admin: &AdminAuth,
    kind: ProviderKind,
    environment: &str,
) -> Result<Url, ApiError> {
    let adapter = state.providers.get(kind);
    oauth::begin(
        &state.db,
        state.tokens.cipher(),
        adapter.as_ref(),
        admin.account_id,
        admin.user_id,
        &redirect_uri(state, kind),
        environment,
    )
    .await
    .map_err(oauth_error)
}

async fn authorize_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let kind = provider_kind(&provider)?;
    let body: AuthorizeBody = optional_body(&body)?;
    let environment = connection_environment(body.environment.as_deref())?;
    let url = begin_connection(&state, &admin, kind, environment).await?;
    Ok(Json(json!({
        "authorize_url": url.as_str(),
        "expires_in": oauth::STATE_TTL_MINUTES * 60,
        "environment": environment,
    })))
}

#[derive(Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// Set by the dashboard's page that follows the callback again from this site.
    pub bounced: Option<String>,
}

impl CallbackParams {
    /// This callback's URL (path and query) rebuilt from what it carried, marked as followed
    /// again from this site: never the raw request line, so nothing else rides along.
    pub fn bounced_path(&self, kind: ProviderKind) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("code", &self.code), ("state", &self.state), ("error", &self.error)] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.append_pair("bounced", "1");
        format!("/api/admin/oauth/{}/callback?{}", kind.as_str(), query.finish())
    }
}

fn oauth_error(e: OAuthError) -> ApiError {
    match e {
        OAuthError::InvalidState => ApiError::BadRequest { code: "invalid_state", detail: e.to_string() },
        OAuthError::Denied(why) => {
            ApiError::BadRequest { code: "access_denied", detail: format!("Access was denied: {why}") }
        }
        OAuthError::Provider(p) => provider_error(p),
        OAuthError::Database(d) => ApiError::from(d),
    }
}

/// Whether a request is a browser's navigation (it prefers HTML).
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// The provider sends the admin back here. Automation (a bearer token, or no HTML wanted) gets
/// the connection as JSON; a browser gets the dashboard's pages.
async fn oauth_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(provider): Path<String>,
    ApiQuery(params): ApiQuery<CallbackParams>,
) -> Result<Response, ApiError> {
    let kind = provider_kind(&provider)?;
    if !headers.contains_key(header::AUTHORIZATION) && wants_html(&headers) {
        return Ok(match crate::http::dashboard::oauth_callback_page(&state, &headers, kind, params).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        });
    }
    let admin = AdminAuth::authenticate(&state, &Method::GET, &headers).await?;
    let connection = finish_connection(&state, &admin, kind, params).await?;
    Ok((StatusCode::CREATED, Json(connection)).into_response())
}

/// Exchanges the callback's code and stores the connection for `admin`'s account.
pub async fn finish_connection(
    state: &AppState,
    admin: &AdminAuth,
    kind: ProviderKind,
    params: CallbackParams,
) -> Result<Connection, ApiError> {
    if let Some(error) = params.error {
        return Err(oauth_error(OAuthError::Denied(error.chars().take(100).collect())));
    }
    let (Some(code), Some(oauth_state)) = (params.code, params.state) else {
        return Err(oauth_error(OAuthError::InvalidState));
    };
    let adapter = state.providers.get(kind);
    oauth::complete(
        &state.db,
        state.tokens.cipher(),
        adapter.as_ref(),
        admin.user_id,
        &oauth_state,
        &code,
        &redirect_uri(state, kind),
    )
    .await
    .map_err(oauth_error)
    .inspect(|connection| crate::provider_hooks::subscribe_in_background(state, connection.id))
}

async fn list_connections(State(state): State<AppState>, admin: AdminAuth) -> Result<Json<Vec<Connection>>, ApiError> {
    Ok(Json(connections::list(&state.db, admin.account_id).await?))
}

/// The connection with its sync status per stream and its latest runs.
async fn get_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = ConnectionId(parse_id(&id)?);
    let connection = connections::get(&state.db, admin.account_id, id).await?.ok_or(ApiError::NotFound)?;
    let streams = status::streams(&state.db, id).await?;
    let runs = status::runs(&state.db, admin.account_id, Some(id), 5).await?;
    let webhooks = crate::provider_hooks::status(&state.db, id).await?;
    Ok(Json(json!({
        "connection": connection,
        "sync": { "streams": streams, "recent_runs": runs },
        "webhooks": webhooks,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    #[serde(default)]
    full: bool,
}

/// Starts a sync in the background: 202 with where to watch it, 409 if one is running.
async fn sync_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // The body is optional: none means an incremental sync.
    let body: SyncBody = optional_body(&body)?;
    let id = ConnectionId(parse_id(&id)?);
    start_sync(&state, &admin, id, body.full).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "started", "full": body.full, "watch": format!("/api/admin/connections/{id}") })),
    ))
}

/// Starts a sync of one of `admin`'s connections in the background; 409 if one is running or
/// the connection is not active.
pub async fn start_sync(state: &AppState, admin: &AdminAuth, id: ConnectionId, full: bool) -> Result<(), ApiError> {
    let connection = connections::get(&state.db, admin.account_id, id).await?.ok_or(ApiError::NotFound)?;
    if connection.status != "active" {
        return Err(ApiError::Conflict {
            code: "connection_inactive",
            detail: format!("The connection is {}; authorise it again first.", connection.status),
        });
    }
    let busy: bool =
        sqlx::query_scalar("select coalesce(sync_lease_until > now(), false) from connections where id = $1")
            .bind(id)
            .fetch_one(&state.db)
            .await?;
    if busy {
        return Err(ApiError::Conflict {
            code: "sync_running",
            detail: "A sync of this connection is already running.".into(),
        });
    }
    let engine = state.engine.clone();
    tokio::spawn(async move {
        match engine.sync_connection(id, full, None).await {
            Ok(run) => tracing::info!(connection_id = %id, run_id = run.run_id, "manual sync finished"),
            Err(e) => tracing::warn!(connection_id = %id, error = %e, "manual sync failed"),
        }
    });
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompanyQuery {
    /// Part of the company's name.
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list_companies(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<CompanyQuery>,
) -> Result<Json<crate::companies::CompanyPage>, ApiError> {
    let id = ConnectionId(parse_id(&id)?);
    let page = crate::companies::list(
        &state.db,
        admin.account_id,
        id,
        query.q.as_deref(),
        query.cursor.as_deref(),
        query.limit,
    )
    .await?;
    Ok(Json(page))
}

async fn get_schedule(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<schedule::Schedule>, ApiError> {
    Ok(Json(schedule::get(&state.db, admin.account_id, ConnectionId(parse_id(&id)?)).await?))
}

async fn update_schedule(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<schedule::ScheduleChange>,
) -> Result<Json<schedule::Schedule>, ApiError> {
    Ok(Json(schedule::update(&state.db, admin.account_id, ConnectionId(parse_id(&id)?), &change).await?))
}

async fn pause_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<schedule::Schedule>, ApiError> {
    let change = schedule::ScheduleChange { paused: Some(true), ..Default::default() };
    Ok(Json(schedule::update(&state.db, admin.account_id, ConnectionId(parse_id(&id)?), &change).await?))
}

async fn resume_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<schedule::Schedule>, ApiError> {
    let change = schedule::ScheduleChange { paused: Some(false), ..Default::default() };
    Ok(Json(schedule::update(&state.db, admin.account_id, ConnectionId(parse_id(&id)?), &change).await?))
}

async fn list_sync_runs(
    State(state): State<AppState>,
    admin: AdminAuth,
) -> Result<Json<Vec<status::SyncRun>>, ApiError> {
    Ok(Json(status::runs(&state.db, admin.account_id, None, 100).await?))
}

async fn delete_connection(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ConnectionId(parse_id(&id)?);
    if connections::disconnect(&state.db, admin.account_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
