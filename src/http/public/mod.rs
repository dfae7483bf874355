//! The public API under `/api/public/{endpoint}` (DESIGN.md §5): every route takes an
//! `EndpointAuth`, and every request leaves exactly one row in the request log.

pub mod auth;
pub mod docs;
pub mod graphql;
pub mod me;
pub mod openapi;
pub mod rest;
pub mod webhooks;
pub mod writes;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorCode;
use crate::http::request_context::RequestId;
use crate::rate_limit::RateInfo;
use crate::request_log::{LogRow, redacted_query};
use crate::startup::AppState;

/// What a public request learned about itself, for the log and the headers.
#[derive(Debug, Default)]
pub struct PublicContext {
    pub endpoint_id: Option<i64>,
    pub key_id: Option<i64>,
    pub resource: Option<String>,
    pub item_count: Option<i32>,
    pub operation: Option<String>,
    pub rate: Option<RateInfo>,
}

pub type ContextSlot = Arc<Mutex<PublicContext>>;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(me::router())
        .merge(rest::router())
        .merge(graphql::router())
        .merge(webhooks::router())
        // Unknown paths under an endpoint are public requests too: authenticated, logged, 404.
        // (`/{resources}` and `/{resources}/{id}` answer 404 for unknown resources themselves.)
        .route("/api/public/{endpoint}/{resources}/{id}/{*rest}", axum::routing::any(unknown_route))
        .layer(axum::middleware::from_fn_with_state(state, public_context))
}

async fn unknown_route(_auth: auth::EndpointAuth) -> crate::error::ApiError {
    crate::error::ApiError::NotFound
}

async fn public_context(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let slot: ContextSlot = Arc::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().to_string();
    let path: String = request.uri().path().chars().take(1000).collect();
    let query = redacted_query(request.uri().query());
    let user_agent =
        request.headers().get("user-agent").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(300).collect());
    let client_ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();

    let mut response = next.run(request).await;

    let context = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(rate) = context.rate {
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&rate.policy_header()) {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&rate.header()) {
            headers.insert("ratelimit", v);
        }
    }
    state.request_log.record(LogRow {
        created_at: chrono::Utc::now(),
        request_id,
        endpoint_id: context.endpoint_id,
        key_id: context.key_id,
        method,
        path,
        resource: context.resource,
        status: response.status().as_u16() as i16,
        item_count: context.item_count,
        duration_ms: started.elapsed().as_secs_f32() * 1000.0,
        query,
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0.to_string()),
        client_ip,
        user_agent,
        operation: context.operation,
    });
    response
}
