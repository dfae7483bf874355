//! The HTTP surface: one router per area, merged here, under the request-context middleware.

pub mod admin;
pub mod client_address;
pub mod dashboard;
pub mod extract;
pub mod health;
pub mod hooks;
pub mod public;
pub mod request_context;

use axum::Router;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::startup::AppState;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(hooks::router())
        .merge(admin::router())
        .merge(dashboard::router(&state))
        .merge(public::router(state.clone()))
        .merge(public::openapi::router())
        .merge(public::graphql::schema_router())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(docs_url(&state), request_context::request_context))
        .layer(axum::middleware::from_fn_with_state(
            client_address::TrustedProxies::from(state.config.trusted_proxies.clone()),
            client_address::client_address,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// A workers-only process's router: health and metrics, nothing else.
pub fn health_router(state: AppState) -> Router {
    Router::new().merge(health::router()).fallback(|| async { ApiError::NotFound }).with_state(state)
}

fn docs_url(state: &AppState) -> std::sync::Arc<str> {
    let base = state.config.public_url.as_str().trim_end_matches('/');
    format!("{base}{}", request_context::DOCS_PATH).into()
}

/// A handler panic still answers problem+json (and is logged); the connection survives.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("handler panicked");
    let mut response = axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!("panic")));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
