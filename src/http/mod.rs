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
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

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
        .layer(axum::middleware::from_fn(read_small_body))
        .layer(axum::middleware::from_fn_with_state(docs_url(&state), request_context::request_context))
        .layer(axum::middleware::from_fn_with_state(
            client_address::TrustedProxies::from(state.config.trusted_proxies.clone()),
            client_address::client_address,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Bodies up to this size are read before the request is routed.
const SMALL_BODY: usize = 64 * 1024;

/// An answer given before the request's body has arrived (405, 401, 404, a refused filter)
/// makes hyper close the connection once it is written, without `Connection: close`: a client
/// that reuses the connection then sees it dropped without an answer (schemathesis did). A body
/// of a declared size up to [`SMALL_BODY`] is therefore read first, so every answer keeps the
/// connection; larger and chunked bodies (attachment uploads) stream to their handlers as sent.
async fn read_small_body(request: Request, next: Next) -> Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    match declared.and_then(|v| v.parse::<usize>().ok()) {
        Some(length) if length > 0 && length <= SMALL_BODY => {
            let (parts, body) = request.into_parts();
            match axum::body::to_bytes(body, SMALL_BODY).await {
                Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
                Err(_) => ApiError::BadRequest {
                    code: "malformed_body",
                    detail: "The body ended before the length its Content-Length declared.".into(),
                }
                .into_response(),
            }
        }
        _ => next.run(request).await,
    }
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
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    let mut response = ApiError::Internal(anyhow::anyhow!("panic")).into_response();
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
