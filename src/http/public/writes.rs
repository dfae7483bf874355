//! REST writes: `POST /{resources}`, `PATCH /{resources}/{id}`, `DELETE /{resources}/{id}`
//! for the writable resources, with `Idempotency-Key` on POST and PATCH. The work is
//! `crate::writes::perform`, which GraphQL's mutations share.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clientapi_schema::model::Resource;
use serde_json::{Map, Value, json};

use super::auth::EndpointAuth;
use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::idempotency::{self, Begin};
use crate::startup::AppState;
use crate::writes::{self, ChosenId, Operation};

fn resource(params: &HashMap<String, String>) -> Result<Resource, ApiError> {
    let name = params.get("resources").map(String::as_str).unwrap_or("");
    Resource::ALL.into_iter().find(|r| r.plural() == name).ok_or(ApiError::NotFound)
}

fn target_id(params: &HashMap<String, String>) -> Result<String, ApiError> {
    let id = params.get("id").map(String::as_str).unwrap_or("");
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::NotFound);
    }
    Ok(id.to_owned())
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::Invalid(vec![FieldError::new("body", "must be a JSON object")])),
        Err(e) => Err(ApiError::Invalid(vec![FieldError::new("body", format!("not valid JSON: {e}"))])),
    }
}

pub async fn create_record(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let resource = resource(&params)?;
    write(&state, &auth, resource, Operation::Create, &uri, &headers, &body).await
}

pub async fn update_record(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let resource = resource(&params)?;
    let id = target_id(&params)?;
    write(&state, &auth, resource, Operation::Update(id), &uri, &headers, &body).await
}

pub async fn delete_record(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resource = resource(&params)?;
    let id = target_id(&params)?;
    write(&state, &auth, resource, Operation::Delete(id), &uri, &headers, b"{}").await
}

async fn write(
    state: &AppState,
    auth: &EndpointAuth,
    resource: Resource,
    operation: Operation,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    // What a resource does not support is a 405 naming what it does, as the router's own are:
    // payments and invoices are read-only, and clients are never deleted through this API.
    let allowed = match (resource, &operation) {
        _ if clientapi_schema::write::write_fields(resource).is_empty() => Some("GET,HEAD"),
        (r, Operation::Delete(_)) if !r.is_deletable() => Some("GET,HEAD,PATCH"),
        _ => None,
    };
    if let Some(allowed) = allowed {
        let mut response = ApiError::MethodNotAllowed.into_response();
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
        return Ok(response);
    }
    auth.require_write(resource)?;
    let fields = json_object(body)?;
    let p = &auth.principal;
    let key = match (headers.get("idempotency-key"), &operation) {
        (None, _) | (Some(_), Operation::Delete(_)) => None,
        (Some(v), _) => Some(idempotency::parse_key(v.to_str().unwrap_or(""))?),
    };
    let mut chosen = None;
    if let Some(key) = &key {
        let method = if operation.create() { Method::POST } else { Method::PATCH };
        let hash = idempotency::fingerprint(method.as_str(), uri.path(), body);
        match idempotency::begin(&state.db, p.endpoint_id, key, &hash).await? {
            Begin::Replay { status, body } => {
                let content_type = if status >= 400 { "application/problem+json" } else { "application/json" };
                let mut response = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
            Begin::Run { preset_id: Some(id) } => chosen = Some(ChosenId { id, earlier_attempt: true }),
            Begin::Run { preset_id: None } => {
                // A create's id is chosen and kept with the key before the provider is called,
                // so a retry after a lost answer finds what this attempt made.
                if operation.create()
                    && let Some(id) = writes::new_id(state, p)
                {
                    idempotency::chose_id(&state.db, p.endpoint_id, key, &id).await?;
                    chosen = Some(ChosenId { id, earlier_attempt: false });
                }
            }
        }
    }
    // The write runs in its own task: a caller that hangs up mid-write does not cut it short
    // between the provider and the mirror, and its idempotency key is settled either way.
    let task = {
        let (state, p, key) = (state.clone(), p.clone(), key.clone());
        tokio::spawn(async move {
            let result = writes::perform(&state, &p, resource, operation, &fields, chosen).await;
            let Some(key) = key else { return (result, None) };
            let (status, body) = match &result {
                Ok(written) => {
                    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
                    (status, envelope(&p, resource, &written.record))
                }
                Err(error) => (error.status_and_code().0, error.problem_body()),
            };
            let settled = idempotency::finish(&state.db, p.endpoint_id, &key, status.as_u16(), &body).await;
            (result, settled.err())
        })
    };
    let (result, unsettled) = task.await.map_err(|e| anyhow::anyhow!("the write task failed: {e}"))?;
    if let Some(e) = unsettled {
        tracing::error!(error = %e, "could not record an idempotent write's answer");
    }
    let written = result?;
    auth.set_item_count(1);
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (status, envelope(p, resource, &written.record)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if written.created
        && let Ok(location) =
            HeaderValue::from_str(&format!("/api/public/{}/{}/{}", p.public_id, resource.plural(), written.id))
    {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A write's answer: the envelope of a single record.
fn envelope(p: &Principal, resource: Resource, record: &str) -> String {
    format!(
        "{{\"provider\":{},\"company_external_id\":{},\"resource\":\"{}\",\"data\":{record}}}",
        json!(p.provider),
        json!(p.company_external_id),
        resource.singular(),
    )
}
