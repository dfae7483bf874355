//! `GET /api/public/{endpoint}/me`: the endpoint itself, and how fresh its data is.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clientapi_schema::model::Resource;
use clientapi_sync::provider::ProviderKind;
use serde_json::{Value, json};

use super::auth::EndpointAuth;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/public/{endpoint}/me", get(get_me))
}

/// When `resource`'s stream last completed, and whether a scan is running (cached briefly), as
/// the server the data comes from (`replica`, else the primary) has it.
pub async fn resource_freshness(
    state: &AppState,
    p: &Principal,
    resource: Resource,
    replica: Option<usize>,
) -> (Value, &'static str) {
    let streams = state.freshness(p.connection_id, replica).await;
    let Some(kind) = ProviderKind::parse(&p.provider) else { return (Value::Null, "never_synced") };
    let stream = state.providers.get(kind).streams().iter().find(|s| s.resources.contains(&resource)).map(|s| s.name);
    match streams.iter().find(|s| Some(s.stream.as_str()) == stream) {
        None => (Value::Null, "never_synced"),
        Some(s) => (json!(s.last_success_at), if s.scan_in_progress { "syncing" } else { "synced" }),
    }
}

async fn get_me(State(state): State<AppState>, auth: EndpointAuth) -> Result<Json<Value>, ApiError> {
    Ok(Json(me(&state, &auth.principal).await?))
}

/// The endpoint itself and its freshness: REST's `/me` and GraphQL's `me`.
pub async fn me(state: &AppState, p: &Principal) -> Result<Value, ApiError> {
    let mut freshness = Vec::new();
    for resource in Resource::ALL {
        let (synced_at, sync_status) = resource_freshness(state, p, resource, None).await;
        freshness.push(json!({ "resource": resource.singular(), "synced_at": synced_at, "sync_status": sync_status }));
    }
    let company_name: Option<String> = sqlx::query_scalar("select name from companies where id = $1")
        .bind(p.company_id)
        .fetch_optional(&state.db)
        .await?
        .flatten();
    Ok(json!({
        "id": p.public_id,
        "name": p.name,
        "provider": p.provider,
        "company_external_id": p.company_external_id,
        "company_name": company_name,
        "access": p.access,
        "scopes": p.scopes,
        "environment": p.environment,
        "rate_limit": { "per_minute": p.rate_limit_per_minute },
        "expires_at": p.endpoint_expires_at,
        "key_expires_at": p.key_expires_at,
        "freshness": freshness,
    }))
}
