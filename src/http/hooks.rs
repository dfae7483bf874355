//! `POST /hooks/{provider}/{token}`: provider webhooks in (see `crate::provider_hooks`). Not a
//! public API request: no key, no request-log row; the token in the path is the credential.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;

use crate::error::ApiError;
use crate::startup::AppState;

/// Callbacks are small (ids only); anything bigger is not one.
const MAX_BODY: usize = 256 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/hooks/{provider}/{token}", post(receive_callback))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

async fn receive_callback(
    State(state): State<AppState>,
    Path((provider, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::provider_hooks::receive(&state, &provider, &token, &headers, &body).await
}
