//! `GET /api/public/{endpoint}/me`: the endpoint itself, and how fresh its data is.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use clientapi_sync::provider::ProviderKind;
use serde_json::{Value, json};

use super::auth::EndpointAuth;
use crate::error::ApiError;
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/public/{endpoint}/me", get(get_me))
}

/// Per unified resource: when its stream last completed, and whether a scan is running.
pub async fn freshness(state: &AppState, auth: &EndpointAuth) -> Result<Vec<Value>, ApiError> {
    let p = &auth.principal;
    let streams = clientapi_sync::status::streams(&state.db, p.connection_id).await?;
    let Some(kind) = ProviderKind::parse(&p.provider) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for stream in state.providers.get(kind).streams() {
        let status = streams.iter().find(|s| s.stream == stream.name);
        for resource in stream.resources {
            out.push(json!({
                "resource": resource.singular(),
                "synced_at": status.and_then(|s| s.last_success_at),
                "sync_status": match status {
                    None => "never_synced",
                    Some(s) if s.scan_in_progress => "syncing",
                    Some(_) => "synced",
                },
            }));
        }
    }
    Ok(out)
}

async fn get_me(State(state): State<AppState>, auth: EndpointAuth) -> Result<Json<Value>, ApiError> {
    let p = &auth.principal;
    let company_name: Option<String> = sqlx::query_scalar("select name from companies where id = $1")
        .bind(p.company_id)
        .fetch_optional(&state.db)
        .await?
        .flatten();
    Ok(Json(json!({
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
        "freshness": freshness(&state, &auth).await?,
    })))
}
