//! One error type for every HTTP handler, rendered as `application/problem+json`
//! (DESIGN.md §5): `type, title, status, detail, instance` (the request id) and a machine `code`.
//! Causes of 5xx answers are logged with their chain and the request id, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::request_context::current_request_id;

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
            kind: format!("https://docs.clientapi.dev/problems/{code}"),
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
