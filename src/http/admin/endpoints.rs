//! Managing customer endpoints and keys (DESIGN.md §7). A key is in the response exactly
//! twice in its life: on create and on reissue.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::AdminAuth;
use crate::endpoints::{self, Created, Endpoint};
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::startup::AppState;
use crate::usage::{self, LogFilter, Range, Usage};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/endpoints", post(create_endpoint).get(list_endpoints))
        .route("/api/admin/endpoints/{id}", get(get_endpoint).patch(update_endpoint).delete(delete_endpoint))
        .route("/api/admin/endpoints/{id}/reissue", post(reissue_key))
        .route("/api/admin/endpoints/{id}/deactivate", post(deactivate_endpoint))
        .route("/api/admin/endpoints/{id}/activate", post(activate_endpoint))
        .route("/api/admin/endpoints/{id}/logs", get(list_logs))
        .route("/api/admin/endpoints/{id}/usage", get(get_usage))
        .route("/api/admin/usage", get(get_account_usage))
}

/// The customer-facing base URL of an endpoint.
pub fn endpoint_url(state: &AppState, endpoint: &Endpoint) -> String {
    format!("{}/api/public/{}", state.config.public_url.as_str().trim_end_matches('/'), endpoint.public_id)
}

fn with_key(state: &AppState, created: Created) -> Json<Value> {
    Json(json!({
        "endpoint": created.endpoint,
        "url": endpoint_url(state, &created.endpoint),
        "key": created.key,
        "key_notice": "This is the only time the key is shown. Store it now.",
    }))
}

async fn create_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let created = endpoints::create(&state.db, admin.account_id, &body).await?;
    Ok((StatusCode::CREATED, with_key(&state, created)))
}

async fn list_endpoints(State(state): State<AppState>, admin: AdminAuth) -> Result<Json<Vec<Endpoint>>, ApiError> {
    Ok(Json(endpoints::list(&state.db, admin.account_id).await?))
}

async fn get_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = endpoints::get(&state.db, admin.account_id, &id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(json!({ "endpoint": endpoint, "url": endpoint_url(&state, &endpoint) })))
}

async fn update_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::update(&state.db, admin.account_id, &id, &body).await?))
}

async fn delete_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    endpoints::delete(&state.db, admin.account_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReissueBody {
    #[serde(default)]
    grace_seconds: i64,
}

async fn reissue_key(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ReissueBody = super::connections::optional_body(&body)?;
    let created = endpoints::reissue(&state.db, admin.account_id, &id, body.grace_seconds).await?;
    Ok(with_key(&state, created))
}

async fn deactivate_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::set_status(&state.db, admin.account_id, &id, false).await?))
}

async fn activate_endpoint(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::set_status(&state.db, admin.account_id, &id, true).await?))
}

/// The internal id of one of the caller's endpoints.
pub async fn owned_endpoint(state: &AppState, admin: &AdminAuth, public_id: &str) -> Result<i64, ApiError> {
    sqlx::query_scalar("select id from endpoints where account_id = $1 and public_id = $2")
        .bind(admin.account_id)
        .bind(public_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    /// An exact status (`404`) or a class (`4xx`).
    status: Option<String>,
    resource: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// The `X-Next-Cursor` of the page before.
    before: Option<String>,
    limit: Option<i64>,
}

/// The endpoint's request log, newest first; `X-Next-Cursor` (pass as `before`) while more.
async fn list_logs(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let endpoint = owned_endpoint(&state, &admin, &id).await?;
    let filter = LogFilter {
        status: q.status,
        resource: q.resource,
        since: q.since,
        until: q.until,
        before: q.before,
        limit: q.limit,
    };
    let (rows, next) = usage::logs(&state.db, endpoint, &filter).await?;
    let mut response = Json(rows).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-next-cursor", next);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// `1h`, `24h` (default), `7d` or `30d`.
    range: Option<String>,
}

/// One endpoint's usage over a range, bucket by bucket.
async fn get_usage(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Usage>, ApiError> {
    owned_endpoint(&state, &admin, &id).await?;
    let range = Range::from_param(query.range.as_deref())?;
    Ok(Json(usage::usage(&state.db, admin.account_id, range, Some(&id)).await?))
}

/// The account's usage over a range: every endpoint and the totals, bucket by bucket.
async fn get_account_usage(
    State(state): State<AppState>,
    admin: AdminAuth,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Usage>, ApiError> {
    let range = Range::from_param(query.range.as_deref())?;
    Ok(Json(usage::usage(&state.db, admin.account_id, range, None).await?))
}
