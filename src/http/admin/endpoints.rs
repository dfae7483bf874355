//! Managing customer endpoints and keys (DESIGN.md §7). A key is in the response exactly
//! twice in its life: on create and on reissue.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::AdminAuth;
use crate::endpoints::{self, Created, Endpoint};
use crate::error::{ApiError, FieldError};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/endpoints", post(create_endpoint).get(list_endpoints))
        .route("/api/admin/endpoints/{id}", get(get_endpoint).patch(update_endpoint).delete(delete_endpoint))
        .route("/api/admin/endpoints/{id}/reissue", post(reissue_key))
        .route("/api/admin/endpoints/{id}/deactivate", post(deactivate_endpoint))
        .route("/api/admin/endpoints/{id}/activate", post(activate_endpoint))
        .route("/api/admin/endpoints/{id}/logs", get(list_logs))
        .route("/api/admin/endpoints/{id}/usage", get(get_usage))
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
    let body: ReissueBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReissueBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::Invalid(vec![FieldError::new("body", e.to_string())]))?
    };
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
async fn owned_endpoint(state: &AppState, admin: &AdminAuth, public_id: &str) -> Result<i64, ApiError> {
    sqlx::query_scalar("select id from endpoints where account_id = $1 and public_id = $2")
        .bind(admin.account_id)
        .bind(public_id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFilter {
    /// An exact status (`404`) or a class (`4xx`).
    status: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    limit: Option<i64>,
}

#[derive(serde::Serialize, sqlx::FromRow)]
struct LogEntry {
    created_at: DateTime<Utc>,
    request_id: String,
    method: String,
    path: String,
    resource: Option<String>,
    status: i16,
    item_count: Option<i32>,
    duration_ms: f32,
    query: Option<Value>,
    error_code: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    operation: Option<String>,
}

async fn list_logs(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(filter): ApiQuery<LogFilter>,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    let endpoint = owned_endpoint(&state, &admin, &id).await?;
    let (low, high) = match filter.status.as_deref() {
        None => (0, 999),
        Some(class) if class.len() == 3 && class.ends_with("xx") => match class[..1].parse::<i16>() {
            Ok(d) if (1..=5).contains(&d) => (d * 100, d * 100 + 99),
            _ => {
                return Err(ApiError::Invalid(vec![FieldError::new(
                    "status",
                    "a status like 404 or a class like 4xx",
                )]));
            }
        },
        Some(exact) => match exact.parse::<i16>() {
            Ok(s) if (100..=599).contains(&s) => (s, s),
            _ => {
                return Err(ApiError::Invalid(vec![FieldError::new(
                    "status",
                    "a status like 404 or a class like 4xx",
                )]));
            }
        },
    };
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid(vec![FieldError::new("limit", "from 1 to 1000")]));
    }
    let rows = sqlx::query_as(
        "select created_at, request_id, method, path, resource, status, item_count, duration_ms, query, error_code,
                host(client_ip) as client_ip, user_agent, operation
         from request_logs where endpoint_id = $1 and status between $2 and $3
           and ($4::timestamptz is null or created_at >= $4) and ($5::timestamptz is null or created_at < $5)
         order by created_at desc limit $6",
    )
    .bind(endpoint)
    .bind(low)
    .bind(high)
    .bind(filter.since)
    .bind(filter.until)
    .bind(limit)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// `hour` (default) or `day`.
    bucket: Option<String>,
    since: Option<DateTime<Utc>>,
}

#[derive(serde::Serialize, sqlx::FromRow)]
struct UsageBucket {
    bucket: DateTime<Utc>,
    requests: i64,
    errors: i64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
}

async fn get_usage(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Vec<UsageBucket>>, ApiError> {
    let endpoint = owned_endpoint(&state, &admin, &id).await?;
    let bucket = match query.bucket.as_deref().unwrap_or("hour") {
        b @ ("hour" | "day") => b,
        _ => return Err(ApiError::Invalid(vec![FieldError::new("bucket", "hour or day")])),
    };
    let since = query.since.unwrap_or_else(|| Utc::now() - chrono::Duration::days(7));
    let rows = sqlx::query_as(
        "select date_trunc($2, created_at) as bucket, count(*) as requests, count(*) filter (where status >= 400) as errors,
                percentile_cont(0.5) within group (order by duration_ms) as p50_ms,
                percentile_cont(0.95) within group (order by duration_ms) as p95_ms
         from request_logs where endpoint_id = $1 and created_at >= $3
         group by 1 order by 1",
    )
    .bind(endpoint)
    .bind(bucket)
    .bind(since)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows))
}
