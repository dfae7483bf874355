//! One error type for every HTTP handler, rendered as `application/problem+json`
//! (DESIGN.md §5): `type, title, status, detail, instance` (the request id) and a machine `code`.
//! Causes of 5xx answers are logged with their chain and the request id, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::request_context::{current_request_id, docs_url};

/// A field that failed validation, for 422 answers.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound,
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {detail}")]
    Forbidden { code: &'static str, detail: String },
    #[error("bad request: {detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("conflict: {detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// Too many unverified keys from one client or for one endpoint.
    #[error("too many authentication attempts")]
    TooManyAuthAttempts,
    #[error("bad gateway: {detail}")]
    BadGateway { detail: String },
    #[error("service unavailable: {detail}")]
    Unavailable { detail: String, retry_after_secs: Option<u64> },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // The database went away under the request (a restart, a failover, a killed backend), or
        // no connection to it could be had in time:
        // not our fault to report as one, and worth a retry (a write's Idempotency-Key makes it
        // safe). Logged like a 5xx cause all the same.
        if clientapi_schema::read::connection_lost(&e) || matches!(e, sqlx::Error::PoolTimedOut) {
            tracing::warn!(error = %e, "the database connection was lost under a request");
            return ApiError::Unavailable {
                detail: "The database connection was lost; retry shortly.".into(),
                retry_after_secs: Some(1),
            };
        }
        ApiError::Internal(anyhow::Error::new(e).context("database error"))
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    code: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

impl ApiError {
    /// The status and the stable machine code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TooManyAuthAttempts => (StatusCode::TOO_MANY_REQUESTS, "too_many_auth_attempts"),
            ApiError::BadGateway { .. } => (StatusCode::BAD_GATEWAY, "provider_error"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn problem(&self, request_id: Option<String>) -> Problem<'static> {
        let (status, code) = self.status_and_code();
        let errors = match self {
            ApiError::Invalid(errors) => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            kind: format!("{}#problem-{code}", docs_url()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            instance: request_id,
            code,
            errors,
        }
    }

    /// The problem+json body this error answers with (kept to replay an idempotent request).
    pub fn problem_body(&self) -> String {
        serde_json::to_string(&self.problem(current_request_id())).unwrap_or_default()
    }

    /// The human explanation (for 5xx: a generic one; the cause is only logged).
    pub fn detail(&self) -> String {
        match self {
            ApiError::NotFound => "The resource does not exist.".into(),
            // One body for every authentication failure: no hint which part was wrong.
            ApiError::Unauthorized => "A valid API key is required.".into(),
            ApiError::Forbidden { detail, .. }
            | ApiError::BadRequest { detail, .. }
            | ApiError::Conflict { detail, .. }
            | ApiError::BadGateway { detail }
            | ApiError::Unavailable { detail, .. } => detail.clone(),
            ApiError::Invalid(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("Invalid input: {}.", fields.join(", "))
            }
            ApiError::MethodNotAllowed => "The method is not allowed on this resource.".into(),
            ApiError::RateLimited { retry_after_secs } => {
                format!("Rate limit exceeded; retry after {retry_after_secs} s.")
            }
            ApiError::TooManyAuthAttempts => "Too many unverified keys; retry shortly.".into(),
            ApiError::Internal(_) => "An internal error occurred; it has been logged with the request id.".into(),
        }
    }
}

/// One machine `code` as the docs page explains it: every problem's `type` links here.
pub struct ProblemDoc {
    pub code: &'static str,
    pub status: u16,
    /// Markdown: what happened and what to do.
    pub explanation: &'static str,
}

const fn doc(code: &'static str, status: u16, explanation: &'static str) -> ProblemDoc {
    ProblemDoc { code, status, explanation }
}

/// Every code any route answers with (a test holds this list to the source).
pub const PROBLEMS: &[ProblemDoc] = &[
    doc(
        "malformed_body",
        400,
        "The body is not JSON, or not JSON of the expected shape (for example an array where an object belongs). `detail` quotes the parser.",
    ),
    doc("unsupported_media_type", 400, "A body was sent without `Content-Type: application/json`."),
    doc(
        "invalid_cursor",
        400,
        "The `cursor` (or `since`) was not issued for this endpoint, resource, sort and filters, or is damaged. Start again without it; cursors of the changes feed never expire.",
    ),
    doc(
        "invalid_state",
        400,
        "Operator OAuth only: the `state` of the provider's callback is unknown, used or older than ten minutes. Start the connection again from the dashboard.",
    ),
    doc(
        "access_denied",
        400,
        "Operator OAuth only: the provider's consent screen was declined; its own words are in `detail`.",
    ),
    doc(
        "invalid_grant",
        400,
        "Operator OAuth only: the provider refused the authorization code or refresh token. Reconnect the provider.",
    ),
    doc(
        "unauthorized",
        401,
        "No key, or a key that is not valid for this endpoint: send it as `Authorization: Bearer sk_…` or `X-API-Key`. One answer for every cause, so a guess learns nothing. A deactivated key or one replaced past its overlap window answers this too.",
    ),
    doc(
        "missing_scope",
        403,
        "The key is valid but lacks the scope `detail` names (for example `jobs:read`, or `jobs:write` for a write). Ask the operator to reissue the key with it.",
    ),
    doc("read_only_endpoint", 403, "A write to a read-only endpoint. The operator decides an endpoint's access."),
    doc(
        "endpoint_inactive",
        403,
        "The operator deactivated this endpoint; every key of it answers this until it is reactivated.",
    ),
    doc("ip_not_allowed", 403, "The endpoint accepts requests only from the addresses the operator listed."),
    doc(
        "not_deletable",
        403,
        "Clients cannot be deleted through this API (over REST, `DELETE` on a client is a 405 whose `Allow` says so); ask the operator.",
    ),
    doc(
        "csrf_token_invalid",
        403,
        "Dashboard only: the form was stale or came from another site. Reload the page and submit again.",
    ),
    doc(
        "not_found",
        404,
        "No such route, or no such record in your company's scope: another company's id answers exactly like a missing one.",
    ),
    doc(
        "method_not_allowed",
        405,
        "The method is not served on this path; the `Allow` header lists what is (payments and invoices are read-only).",
    ),
    doc(
        "provider_conflict",
        409,
        "The provider refused the write as conflicting with its own state; its words are in `detail`.",
    ),
    doc(
        "too_many_subscriptions",
        409,
        "An endpoint holds at most 20 webhook subscriptions: delete one before creating another.",
    ),
    doc(
        "invalid_callback",
        400,
        "Provider webhooks only: the callback's body is not the provider's webhook shape; `detail` says what is wrong.",
    ),
    doc(
        "idempotency_in_flight",
        409,
        "A request with the same `Idempotency-Key` is still running. Retry shortly: you will get its answer.",
    ),
    doc(
        "sync_running",
        409,
        "Admin only: a sync of this connection is already running; watch it instead of starting another.",
    ),
    doc(
        "connection_inactive",
        409,
        "Admin only: the connection is disconnected or needs reauthorization; reconnect it first.",
    ),
    doc(
        "provider_not_configured",
        409,
        "Admin only: the provider's OAuth client is not configured on this service (`CLIENTAPI_SERVICEM8_CLIENT_ID` and secret).",
    ),
    doc(
        "invalid_input",
        422,
        "A parameter or body field is not acceptable; `errors[]` names each `field` with a `message`. Also used when a write would place a record outside your company, and when the provider refuses a write's content (its words in the message).",
    ),
    doc(
        "rate_limited",
        429,
        "Your endpoint's per-minute budget is spent. Wait the `Retry-After` seconds; `RateLimit` headers on every answer show the budget.",
    ),
    doc(
        "too_many_auth_attempts",
        429,
        "Too many requests with unverified keys from your address or for this endpoint. Wait a second and send the right key.",
    ),
    doc(
        "internal",
        500,
        "A fault on our side. It is logged with the request id in `instance`; quote it to the operator.",
    ),
    doc(
        "provider_error",
        502,
        "The provider failed or answered something unusable. Nothing was changed on your side; retrying later is safe with an `Idempotency-Key`.",
    ),
    doc(
        "unavailable",
        503,
        "The provider cannot be reached right now: its request budget is spent, it answered 429, or the connection needs the operator. Retry after the `Retry-After` seconds. (One condition, one status: a spent provider budget is always a 503, on reads of attachment content and on writes alike.) Also when the database connection is lost under a request (a restart or failover) and a read's one retry on a fresh connection failed too: retry after `Retry-After`; a write's `Idempotency-Key` makes its retry safe.",
    ),
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let request_id = current_request_id();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(
                request_id = request_id.as_deref().unwrap_or("-"),
                error = format!("{cause:#}"),
                "internal error"
            );
        }
        let mut response = (status, axum::Json(self.problem(request_id))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            ApiError::TooManyAuthAttempts => Some(1),
            ApiError::Unavailable { retry_after_secs, .. } => *retry_after_secs,
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorCode(code.into()));
        response
    }
}

/// The machine code of an error response, left in its extensions for the request log.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub std::borrow::Cow<'static, str>);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code literal written anywhere in the service, and every fixed code, is explained.
    #[test]
    fn every_code_is_documented() {
        let mut codes: Vec<String> = Vec::new();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for piece in text.split("code: \"").skip(1) {
                        codes.push(piece.split('"').next().unwrap().to_owned());
                    }
                }
            }
        }
        let fixed = [
            ApiError::NotFound,
            ApiError::Unauthorized,
            ApiError::Invalid(Vec::new()),
            ApiError::MethodNotAllowed,
            ApiError::RateLimited { retry_after_secs: 1 },
            ApiError::TooManyAuthAttempts,
            ApiError::BadGateway { detail: String::new() },
            ApiError::Unavailable { detail: String::new(), retry_after_secs: None },
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        codes.extend(fixed.iter().map(|e| e.status_and_code().1.to_owned()));
        assert!(codes.len() > 20, "the scan found too little: {codes:?}");
        for code in codes {
            let doc = PROBLEMS.iter().find(|d| d.code == code);
            assert!(doc.is_some(), "{code} has no entry in PROBLEMS");
        }
        for (i, d) in PROBLEMS.iter().enumerate() {
            assert!(PROBLEMS[..i].iter().all(|o| o.code != d.code), "{} twice", d.code);
        }
    }

    #[test]
    fn problem_types_point_at_the_docs_page() {
        let problem = ApiError::NotFound.problem(None);
        assert_eq!(problem.kind, "/api/public/docs#problem-not_found");
        assert_eq!(PROBLEMS.iter().find(|d| d.code == "not_found").unwrap().status, 404);
    }
}
