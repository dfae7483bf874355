//! Extractors whose rejections are problem+json like every other error.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// `axum::Json`, rejecting with a 400/422 problem that says what was wrong with the body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::Invalid(vec![FieldError::new("body", e.body_text())]))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest {
                code: "unsupported_media_type",
                detail: "Send the body as JSON with Content-Type: application/json.".into(),
            }),
            Err(e) => Err(ApiError::BadRequest { code: "malformed_body", detail: e.body_text() }),
        }
    }
}

/// A JSON body that may be left out entirely (no body: `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let empty = req.headers().get(axum::http::header::CONTENT_LENGTH).is_some_and(|v| v == "0")
            || (!req.headers().contains_key(axum::http::header::CONTENT_TYPE)
                && !req.headers().contains_key(axum::http::header::TRANSFER_ENCODING)
                && !req.headers().contains_key(axum::http::header::CONTENT_LENGTH));
        if empty {
            return Ok(Self(T::default()));
        }
        ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| Self(v))
    }
}

/// `axum::extract::Query`, rejecting with a 422 problem.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::Invalid(vec![FieldError::new("query", e.body_text())]))
            }
            Err(e) => Err(ApiError::Invalid(vec![FieldError::new("query", e.body_text())])),
        }
    }
}

/// A numeric id from the path; anything else is simply not found.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or(ApiError::NotFound)
}

/// The client's address (from the connection), for per-address budgets.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}
