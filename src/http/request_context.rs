//! Per-request context: the `X-Request-Id` (echoed when the caller's is sane, generated
//! otherwise), a tracing span with method, matched route, request id, status and latency,
//! and the Prometheus request counters.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static REQUEST: Current;
}

/// What errors rendered on this task need to know about the request being served.
#[derive(Clone)]
struct Current {
    id: String,
    docs_url: Arc<str>,
}

/// The id of the request being served on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// The absolute URL of the public API's docs page (problem `type`s point into it); a
/// path-absolute reference outside a request.
pub fn docs_url() -> Arc<str> {
    REQUEST.try_with(|r| r.docs_url.clone()).unwrap_or_else(|_| Arc::from(DOCS_PATH))
}

pub const DOCS_PATH: &str = "/api/public/docs";

/// The request id, also available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A caller's id is kept only if it is short and plain, so it is safe in logs and headers.
fn accept_request_id(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_REQUEST_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

/// `docs_url` is the docs page under the service's public URL.
pub async fn request_context(State(docs_url): State<Arc<str>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(accept_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(request_id.clone()));

    let span = tracing::info_span!(
        "request",
        %method,
        route = %route,
        request_id = %request_id,
        endpoint_id = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let mut response =
        REQUEST.scope(Current { id: request_id.clone(), docs_url }, next.run(request).instrument(span.clone())).await;

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::info!("served"));

    let labels = [("method", method.to_string()), ("route", route), ("status", status.to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
