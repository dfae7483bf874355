//! Admins see and manage every webhook subscription of their account's endpoints (the same
//! functions the endpoints' own routes call), and re-subscribe a connection's provider
//! webhooks. They never see a secret but the one a create or rotation shows.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clientapi_schema::ConnectionId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::AdminAuth;
use crate::error::{ApiError, FieldError};
use crate::http::extract::{ApiJson, ApiQuery, OptionalJson, parse_id};
use crate::http::public::webhooks::{LogPage, Rotation, with_notice};
use crate::startup::AppState;
use crate::webhooks::{self, Manager, NewSubscription, Owner, Replay, SubscriptionChange};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/webhooks", post(create_webhook).get(list_webhooks))
        .route("/api/admin/webhooks/{id}", get(get_webhook).patch(update_webhook).delete(delete_webhook))
        .route("/api/admin/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/api/admin/webhooks/{id}/deliveries", get(list_deliveries))
        .route("/api/admin/webhooks/{id}/replay", post(replay))
        .route("/api/admin/connections/{id}/webhooks/repair", post(repair_provider_webhooks))
}

async fn create_webhook(
    State(state): State<AppState>,
    admin: AdminAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let body: NewSubscription = webhooks::parse_body(body, &["resources"])?;
    let Some(endpoint) = body.endpoint.as_deref() else {
        return Err(ApiError::Invalid(vec![FieldError::new("endpoint", "is required: the endpoint's id (ep_…)")]));
    };
    let owner = Owner::of_endpoint(&state.db, admin.account_id, endpoint)
        .await?
        .ok_or_else(|| ApiError::Invalid(vec![FieldError::new("endpoint", "no such endpoint in this account")]))?;
    let created = webhooks::create(&state, &owner, body).await?;
    Ok((StatusCode::CREATED, Json(with_notice(created))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFilter {
    endpoint: Option<String>,
}

async fn list_webhooks(
    State(state): State<AppState>,
    admin: AdminAuth,
    ApiQuery(filter): ApiQuery<ListFilter>,
) -> Result<Json<Value>, ApiError> {
    let list = webhooks::list(&state.db, Manager::Account(admin.account_id), filter.endpoint.as_deref()).await?;
    Ok(Json(json!({ "data": list })))
}

async fn get_webhook(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    Ok(Json(webhooks::get(&state.db, Manager::Account(admin.account_id), &id).await?.ok_or(ApiError::NotFound)?))
}

async fn update_webhook(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiJson(change): ApiJson<Value>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    let change: SubscriptionChange = webhooks::parse_body(change, &["resources"])?;
    Ok(Json(webhooks::update(&state, Manager::Account(admin.account_id), &id, change).await?))
}

async fn delete_webhook(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    webhooks::delete(&state.db, Manager::Account(admin.account_id), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_secret(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let overlap = Rotation::parse(body)?.overlap_seconds;
    let rotated = webhooks::rotate_secret(&state, Manager::Account(admin.account_id), &id, overlap).await?;
    Ok(Json(with_notice(rotated)))
}

async fn list_deliveries(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<LogPage>,
) -> Result<Json<Value>, ApiError> {
    let (before, limit) = page.parse()?;
    Ok(Json(webhooks::deliveries(&state.db, Manager::Account(admin.account_id), &id, before, limit).await?))
}

async fn replay(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: Replay = webhooks::parse_body(body, &[])?;
    let queued = webhooks::replay(&state, Manager::Account(admin.account_id), &id, body).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))))
}

/// Subscribes the connection's provider webhooks again (after the provider dropped them, or
/// the public URL changed), and answers with the outcome.
async fn repair_provider_webhooks(
    State(state): State<AppState>,
    admin: AdminAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = ConnectionId(parse_id(&id)?);
    clientapi_sync::connections::get(&state.db, admin.account_id, id).await?.ok_or(ApiError::NotFound)?;
    let outcome = crate::provider_hooks::subscribe(&state, id).await;
    let status = crate::provider_hooks::status(&state.db, id).await?;
    match outcome {
        Ok(_) => Ok(Json(serde_json::to_value(status).unwrap_or_default())),
        Err(_) => Err(ApiError::BadGateway {
            detail: format!(
                "Subscribing the provider's webhooks failed: {}",
                status.error.as_deref().unwrap_or("unknown error")
            ),
        }),
    }
}
