//! Liveness, readiness (the database answers) and Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(get_health))
        .route("/readyz", get(get_ready))
        .route("/metrics", get(get_metrics))
}

async fn get_health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn get_ready(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let check = sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.db);
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        // Read replicas are reported, not required: reads move to the primary without them.
        Ok(Ok(_)) => Ok(Json(json!({ "status": "ready", "database": "ok", "replicas": state.reads.status() }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::Unavailable { detail: "The database is not reachable.".into(), retry_after_secs: Some(1) })
        }
        Err(_) => Err(ApiError::Unavailable {
            detail: "The database did not answer in time.".into(),
            retry_after_secs: Some(1),
        }),
    }
}

async fn get_metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render_metrics())
}
