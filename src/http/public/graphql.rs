//! GraphQL over HTTP: `POST /api/public/{endpoint}/graphql` (the same key, extractor and
//! scoped read path as REST), a GraphiQL page on `GET` of the same path, and the SDL at
//! `/api/public/graphql/schema.graphql`. The schema itself lives in the `graphql` crate.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clientapi_graphql::async_graphql;
use clientapi_graphql::{Scope, WriteFailure, WriteOp};
use clientapi_schema::model::Resource;

use super::auth::EndpointAuth;
use crate::error::{ApiError, ErrorCode, FieldError};
use crate::startup::AppState;
use crate::writes::Operation;

/// Most operations in one batched request; each beyond the first spends a request of quota.
pub const MAX_BATCH: usize = 10;
const MAX_BODY: usize = 256 * 1024;

/// Routes behind the public middleware (authenticated and logged).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/public/{endpoint}/graphql", get(graphiql).post(execute))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// The SDL: public, like the OpenAPI document.
pub fn schema_router() -> Router<AppState> {
    Router::new()
        .route("/api/public/graphql/schema.graphql", get(sdl))
        .route("/api/public/graphql/introspection.json", get(introspection))
        .route("/api/public/graphiql/3.8.3/{file}", get(graphiql_asset))
}

async fn sdl(State(state): State<AppState>) -> Response {
    let mut response = state.graphql.sdl().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The schema as introspection answers it, public like the SDL (GraphiQL starts from it).
async fn introspection(State(state): State<AppState>) -> Response {
    // The schema never changes while the process runs: executed once, served as bytes after.
    static ANSWER: tokio::sync::OnceCell<Bytes> = tokio::sync::OnceCell::const_new();
    let body = ANSWER
        .get_or_init(|| async {
            Bytes::from(serde_json::to_vec(&state.graphql.introspection().await).unwrap_or_default())
        })
        .await
        .clone();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// GraphiQL, posting to this endpoint; the key goes in its headers pane. Everything it loads is
/// served from this binary (React and GraphiQL embedded at build time), under a
/// Content-Security-Policy that allows nothing else.
async fn graphiql(
    axum::extract::Path(params): axum::extract::Path<std::collections::HashMap<String, String>>,
) -> Response {
    let endpoint = params.get("endpoint").map(String::as_str).unwrap_or_default();
    let endpoint: String = endpoint.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
    let (status, body) = match GRAPHIQL_ASSETS {
        Some(_) => (
            StatusCode::OK,
            format!(
                r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Client API — GraphiQL</title>
<link rel="stylesheet" href="{base}/graphiql.min.css">
<link rel="stylesheet" href="{base}/page.css">
</head>
<body>
<div id="graphiql" data-endpoint="/api/public/{endpoint}/graphql">Loading GraphiQL…</div>
<script src="{base}/react.production.min.js"></script>
<script src="{base}/react-dom.production.min.js"></script>
<script src="{base}/graphiql.min.js"></script>
<script src="{base}/start.js"></script>
</body>
</html>"#,
                base = GRAPHIQL_BASE
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Client API — GraphiQL</title>
<link rel="stylesheet" href="{GRAPHIQL_BASE}/page.css"></head>
<body><main class="missing"><h1>GraphiQL is not installed in this build</h1>
<p>Its assets come from the npm registry and are embedded when the binary is built. Run
<code>npm ci --prefix web/graphiql</code>, build again, and reload. The API itself works: POST your
queries to <code>/api/public/{endpoint}/graphql</code>.</p></main></body></html>"#
            ),
        ),
    };
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(GRAPHIQL_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

// GraphiQL's assets, found by build.rs (`None` when they were not installed at build time).
include!(concat!(env!("OUT_DIR"), "/graphiql_assets.rs"));

/// Where GraphiQL's files are served, under the pinned version (so they may be cached forever).
const GRAPHIQL_BASE: &str = "/api/public/graphiql/3.8.3";
/// Scripts and styles from this server only; GraphiQL's editors set style attributes from
/// script, which `'unsafe-inline'` for styles allows (no inline script is allowed).
const GRAPHIQL_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";
const START_JS: &str = include_str!("graphiql/start.js");
const PAGE_CSS: &str = include_str!("graphiql/page.css");

async fn graphiql_asset(axum::extract::Path(file): axum::extract::Path<String>) -> Result<Response, ApiError> {
    // Ours may change within a GraphiQL version; the vendor's files may not.
    let (body, content_type, cache): (&[u8], &str, &str) = match file.as_str() {
        "start.js" => (START_JS.as_bytes(), "text/javascript; charset=utf-8", "no-cache"),
        "page.css" => (PAGE_CSS.as_bytes(), "text/css; charset=utf-8", "no-cache"),
        name => {
            let (_, bytes) =
                GRAPHIQL_ASSETS.unwrap_or_default().iter().find(|(n, _)| *n == name).ok_or(ApiError::NotFound)?;
            let content_type =
                if name.ends_with(".css") { "text/css; charset=utf-8" } else { "text/javascript; charset=utf-8" };
            (*bytes, content_type, "public, max-age=31536000, immutable")
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(cache).map_err(|e| ApiError::Internal(e.into()))?);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}

async fn execute(State(state): State<AppState>, auth: EndpointAuth, body: Bytes) -> Result<Response, ApiError> {
    let shape = |e: String| {
        ApiError::Invalid(vec![FieldError::new(
            "body",
            format!("a GraphQL request ({{\"query\": …, \"variables\": …}}) or a list of them: {e}"),
        )])
    };
    // An object is one request, an array a batch; serde alone would read `[]` as a request.
    let requests: Vec<async_graphql::Request> = match serde_json::from_slice(&body).map_err(|e| shape(e.to_string()))? {
        object @ serde_json::Value::Object(_) => {
            vec![serde_json::from_value(object).map_err(|e| shape(e.to_string()))?]
        }
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::Object(_) => serde_json::from_value(item).map_err(|e| shape(e.to_string())),
                _ => Err(shape("each item of a batch is an object".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(shape("neither an object nor a list".into())),
    };
    if requests.is_empty() || requests.len() > MAX_BATCH {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "body",
            format!("a batch holds 1 to {MAX_BATCH} operations"),
        )]));
    }
    let p = auth.principal.clone();
    // The request itself paid for one operation; a batch pays for the rest up front.
    let extra = (requests.len() - 1) as u32;
    if let Err(retry_after_secs) = state.rate_limits.charge(p.endpoint_id, p.rate_limit_per_minute, extra) {
        return Err(ApiError::RateLimited { retry_after_secs });
    }
    let single = requests.len() == 1;
    let mut responses = Vec::with_capacity(requests.len());
    let (mut items, mut operations, mut retry_after) = (0, Vec::new(), None);
    for request in requests {
        let outcome = state.graphql.execute(scope(&state, &auth), request).await;
        items += outcome.items;
        operations.extend(outcome.operation);
        retry_after = retry_after.or(outcome.retry_after);
        responses.push(outcome.response);
    }
    auth.set_item_count(items);
    auth.set_operation((!operations.is_empty()).then(|| operations.join(",")));
    let first_code = responses.iter().flat_map(|r| r.errors()).find_map(|e| {
        e.extensions.as_ref().and_then(|x| x.get("code")).and_then(|c| match c {
            async_graphql::Value::String(s) => Some(s.clone()),
            _ => None,
        })
    });
    let answers: Vec<String> =
        responses.into_iter().map(|r| r.into_json()).collect::<Result<_, _>>().map_err(anyhow::Error::from)?;
    let body = if single { answers.concat() } else { format!("[{}]", answers.join(",")) };
    let status = if retry_after.is_some() { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::OK };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(code) = first_code {
        let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        response.extensions_mut().insert(ErrorCode(code.into()));
    }
    Ok(response)
}

/// The endpoint's scope for one operation.
fn scope(state: &AppState, auth: &EndpointAuth) -> Scope {
    let p = auth.principal.clone();
    let readable = Resource::ALL.into_iter().filter(|r| p.scopes.contains(&r.read_scope())).collect();
    let (me_state, me_principal) = (state.clone(), p.clone());
    let write_state = state.clone();
    let limits = Arc::clone(&state.rate_limits);
    let (endpoint_id, per_minute) = (p.endpoint_id, p.rate_limit_per_minute);
    Scope {
        reader: state.reads.route(p.endpoint_id).reader,
        company: p.read_scope(),
        endpoint: p.public_id.clone(),
        readable,
        cursors: state.cursors.clone(),
        me: Box::new(move || {
            let (state, principal) = (me_state.clone(), me_principal.clone());
            Box::pin(async move { super::me::me(&state, &principal).await.map_err(|e| e.to_string()) })
        }),
        charge: Box::new(move |n| limits.charge(endpoint_id, per_minute, n)),
        write: Box::new(move |resource, op, fields| {
            let (state, principal) = (write_state.clone(), p.clone());
            Box::pin(async move {
                let result = async {
                    super::auth::write_permission(&principal, resource)?;
                    let op = match op {
                        WriteOp::Create => Operation::Create,
                        WriteOp::Update(id) => Operation::Update(id),
                        WriteOp::Delete(id) => Operation::Delete(id),
                    };
                    crate::writes::perform(&state, &principal, resource, op, &fields, None).await
                }
                .await;
                result.map(|written| written.record).map_err(write_failure)
            })
        }),
    }
}

/// A write's refusal as GraphQL reports it: the REST problem's code, detail and fields.
fn write_failure(error: ApiError) -> WriteFailure {
    let (status, code) = error.status_and_code();
    if status.is_server_error() {
        tracing::error!(error = ?error, "GraphQL write failed");
    }
    let fields = match &error {
        ApiError::Invalid(errors) => errors.iter().map(|e| (e.field.clone(), e.message.clone())).collect(),
        _ => Vec::new(),
    };
    WriteFailure { code: code.to_owned(), message: error.detail(), fields }
}
