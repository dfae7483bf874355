//! `/api/public/{endpoint}/webhooks`: an endpoint's own webhook subscriptions, with
//! `webhooks:manage` (see `crate::webhooks`). A subscription's secret is in the answer twice in
//! its life: on create and on rotation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::EndpointAuth;
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::startup::AppState;
use crate::webhooks::{self, Manager, NewSubscription, Replay, SubscriptionChange};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/public/{endpoint}/webhooks", post(create_webhook).get(list_webhooks))
        .route("/api/public/{endpoint}/webhooks/{id}", get(get_webhook).patch(update_webhook).delete(delete_webhook))
        .route("/api/public/{endpoint}/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/api/public/{endpoint}/webhooks/{id}/deliveries", get(list_deliveries))
        .route("/api/public/{endpoint}/webhooks/{id}/replay", post(replay))
}

/// The notice that goes with a secret.
pub const SECRET_NOTICE: &str =
    "This is the only time the secret is shown. Store it now: deliveries are signed with it.";

pub fn with_notice(created: webhooks::WithSecret) -> Value {
    let mut value = serde_json::to_value(created).unwrap_or_default();
    value["secret_notice"] = json!(SECRET_NOTICE);
    value
}

async fn create_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    ApiJson(body): ApiJson<NewSubscription>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = auth.require_webhooks()?;
    if body.endpoint.is_some() {
        return Err(ApiError::Invalid(vec![crate::error::FieldError::new(
            "endpoint",
            "is set by the URL: a subscription belongs to the endpoint that creates it",
        )]));
    }
    let created = webhooks::create(&state, &owner, body).await?;
    Ok((StatusCode::CREATED, Json(with_notice(created))))
}

async fn list_webhooks(State(state): State<AppState>, auth: EndpointAuth) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let list = webhooks::list(&state.db, Manager::Endpoint(owner.endpoint_id), None).await?;
    auth.set_item_count(list.len());
    Ok(Json(json!({ "data": list })))
}

async fn get_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    let owner = auth.require_webhooks()?;
    Ok(Json(webhooks::get(&state.db, Manager::Endpoint(owner.endpoint_id), &id).await?.ok_or(ApiError::NotFound)?))
}

async fn update_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiJson(change): ApiJson<SubscriptionChange>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    let owner = auth.require_webhooks()?;
    Ok(Json(webhooks::update(&state, Manager::Endpoint(owner.endpoint_id), &id, change).await?))
}

async fn delete_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let owner = auth.require_webhooks()?;
    webhooks::delete(&state.db, Manager::Endpoint(owner.endpoint_id), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A rotation's options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the old secret keeps signing (default a day; 0 stops it at once).
    pub overlap_seconds: Option<u64>,
}

async fn rotate_secret(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<Rotation>,
) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let overlap = body.overlap_seconds;
    let rotated = webhooks::rotate_secret(&state, Manager::Endpoint(owner.endpoint_id), &id, overlap).await?;
    Ok(Json(with_notice(rotated)))
}

/// A page of the delivery log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPage {
    /// An event id (`evt_…`): the page starts just before it.
    pub before: Option<String>,
    pub limit: Option<i64>,
}

impl LogPage {
    pub fn parse(&self) -> Result<(Option<i64>, i64), ApiError> {
        let mut errors = Vec::new();
        let before = self.before.as_deref().and_then(|b| {
            let n = b.strip_prefix("evt_").and_then(|n| n.parse::<i64>().ok());
            if n.is_none() {
                errors.push(crate::error::FieldError::new("before", "must be an event id like evt_123"));
            }
            n
        });
        let limit = self.limit.unwrap_or(50);
        if !(1..=webhooks::MAX_LOG_PAGE).contains(&limit) {
            errors
                .push(crate::error::FieldError::new("limit", format!("must be from 1 to {}", webhooks::MAX_LOG_PAGE)));
        }
        if errors.is_empty() { Ok((before, limit)) } else { Err(ApiError::Invalid(errors)) }
    }
}

async fn list_deliveries(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiQuery(page): ApiQuery<LogPage>,
) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let (before, limit) = page.parse()?;
    Ok(Json(webhooks::deliveries(&state.db, Manager::Endpoint(owner.endpoint_id), &id, before, limit).await?))
}

async fn replay(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Replay>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let owner = auth.require_webhooks()?;
    let queued = webhooks::replay(&state, Manager::Endpoint(owner.endpoint_id), &id, body).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))))
}
