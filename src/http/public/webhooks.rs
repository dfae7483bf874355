//! `/api/public/{endpoint}/webhooks`: an endpoint's own webhook subscriptions, with
//! `webhooks:manage` (see `crate::webhooks`). A subscription's secret is in the answer twice in
//! its life: on create and on rotation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::EndpointAuth;
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::startup::AppState;
use crate::webhooks::{self, Manager, NewSubscription, Replay, SubscriptionChange};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/public/{endpoint}/webhooks", post(create_webhook).get(list_webhooks))
        .route("/api/public/{endpoint}/webhooks/{id}", get(get_webhook).patch(update_webhook).delete(delete_webhook))
        .route("/api/public/{endpoint}/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/api/public/{endpoint}/webhooks/{id}/deliveries", get(list_deliveries))
        .route("/api/public/{endpoint}/webhooks/{id}/replay", post(replay))
}

/// The notice that goes with a secret.
pub const SECRET_NOTICE: &str =
    "This is the only time the secret is shown. Store it now: deliveries are signed with it.";

pub fn with_notice(created: webhooks::WithSecret) -> Value {
    let mut value = serde_json::to_value(created).unwrap_or_default();
    value["secret_notice"] = json!(SECRET_NOTICE);
    value
}

async fn create_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = auth.require_webhooks()?;
    let body: NewSubscription = webhooks::parse_body(body, &["resources"])?;
    if body.endpoint.is_some() {
        return Err(ApiError::Invalid(vec![crate::error::FieldError::new(
            "endpoint",
            "is set by the URL: a subscription belongs to the endpoint that creates it",
        )]));
    }
    let created = webhooks::create(&state, &owner, body).await?;
    Ok((StatusCode::CREATED, Json(with_notice(created))))
}

async fn list_webhooks(State(state): State<AppState>, auth: EndpointAuth) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let list = webhooks::list(&state.db, Manager::Endpoint(owner.endpoint_id), None).await?;
    auth.set_item_count(list.len());
    Ok(Json(json!({ "data": list })))
}

async fn get_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    let owner = auth.require_webhooks()?;
    Ok(Json(webhooks::get(&state.db, Manager::Endpoint(owner.endpoint_id), &id).await?.ok_or(ApiError::NotFound)?))
}

async fn update_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiJson(change): ApiJson<Value>,
) -> Result<Json<webhooks::Subscription>, ApiError> {
    let owner = auth.require_webhooks()?;
    let change: SubscriptionChange = webhooks::parse_body(change, &["resources"])?;
    Ok(Json(webhooks::update(&state, Manager::Endpoint(owner.endpoint_id), &id, change).await?))
}

async fn delete_webhook(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let owner = auth.require_webhooks()?;
    webhooks::delete(&state.db, Manager::Endpoint(owner.endpoint_id), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A rotation's options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the old secret keeps signing (default a day; 0 stops it at once).
    pub overlap_seconds: Option<u64>,
}

impl Rotation {
    /// No body at all is the defaults.
    pub fn parse(body: Value) -> Result<Self, ApiError> {
        if body.is_null() { Ok(Self::default()) } else { webhooks::parse_body(body, &[]) }
    }
}

async fn rotate_secret(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let overlap = Rotation::parse(body)?.overlap_seconds;
    let rotated = webhooks::rotate_secret(&state, Manager::Endpoint(owner.endpoint_id), &id, overlap).await?;
    Ok(Json(with_notice(rotated)))
}

/// A page of the delivery log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPage {
    /// An event id (`evt_…`): the page starts just before it.
    pub before: Option<String>,
    pub limit: Option<i64>,
}

impl LogPage {
    pub fn parse(&self) -> Result<(Option<i64>, i64), ApiError> {
        let mut errors = Vec::new();
        let before = self.before.as_deref().and_then(|b| {
            let n = b.strip_prefix("evt_").and_then(|n| n.parse::<i64>().ok());
            if n.is_none() {
                errors.push(crate::error::FieldError::new("before", "must be an event id like evt_123"));
            }
            n
        });
        let limit = self.limit.unwrap_or(50);
        if !(1..=webhooks::MAX_LOG_PAGE).contains(&limit) {
            errors
                .push(crate::error::FieldError::new("limit", format!("must be from 1 to {}", webhooks::MAX_LOG_PAGE)));
        }
        if errors.is_empty() { Ok((before, limit)) } else { Err(ApiError::Invalid(errors)) }
    }
}

async fn list_deliveries(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiQuery(page): ApiQuery<LogPage>,
) -> Result<Json<Value>, ApiError> {
    let owner = auth.require_webhooks()?;
    let (before, limit) = page.parse()?;
    Ok(Json(webhooks::deliveries(&state.db, Manager::Endpoint(owner.endpoint_id), &id, before, limit).await?))
}

async fn replay(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path((_, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let owner = auth.require_webhooks()?;
    let body: Replay = webhooks::parse_body(body, &[])?;
    let queued = webhooks::replay(&state, Manager::Endpoint(owner.endpoint_id), &id, body).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))))
}

/// Every event type a subscription may name (singular and plural resource names).
fn event_types() -> Vec<String> {
    let mut types = vec!["*".to_owned(), "sync.*".to_owned(), "sync.completed".to_owned()];
    for resource in clientapi_schema::model::Resource::ALL.into_iter().filter(|r| webhooks::has_events(*r)) {
        for name in [resource.singular(), resource.plural()] {
            types.extend(["*"].iter().chain(webhooks::CHANGES.iter()).map(|c| format!("{name}.{c}")));
        }
    }
    types
}

/// The webhook routes in the public OpenAPI document.
pub fn openapi(paths: &mut serde_json::Map<String, Value>, schemas: &mut serde_json::Map<String, Value>) {
    use clientapi_schema::model::Resource;
    let problem = json!({"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let responses = |ok: &str, schema: Value| {
        let mut r = json!({
            "400": problem, "401": problem, "403": problem, "404": problem, "422": problem, "429": problem,
            "503": problem,
        });
        r[ok] = if ok == "204" {
            json!({"description": "Done"})
        } else {
            json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
        };
        r
    };
    let endpoint = json!({"name": "endpoint", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Your endpoint id (ep_…)"});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 64}, "description": "The subscription's id (whsub_…)"});
    let resources: Vec<&str> = Resource::ALL
        .into_iter()
        .filter(|r| webhooks::has_events(*r))
        .flat_map(|r| [r.singular(), r.plural()])
        .collect();
    let url = json!({"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": 2000,
        "description": "Where events are POSTed: http(s) on a public address (the operator may allow private ones), without credentials or a fragment"});
    let events = json!({"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string", "enum": event_types()},
        "description": "Event types: *, sync.completed, {resource}.created/.updated/.deleted, {resource}.* (default: *). A resource needs its read scope."});
    let resource_filter = json!({"type": ["array", "null"], "minItems": 1, "maxItems": 2 * Resource::ALL.len(),
        "items": {"type": "string", "enum": resources}, "description": "Only these resources' events (null: every one the key reads)"});
    let payload = json!({"type": "string", "enum": ["record", "id"],
        "description": "record: the record as the REST API renders it (default); id: its id and URL"});
    let description = json!({"type": "string", "maxLength": 500, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"});
    schemas.insert("Subscription".into(), json!({"type": "object", "properties": {
        "id": {"type": "string"}, "endpoint": {"type": "string"}, "url": {"type": "string"},
        "events": {"type": "array", "items": {"type": "string"}}, "resources": {"type": ["array", "null"], "items": {"type": "string"}},
        "payload": {"type": "string"}, "description": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "paused", "disabled"]},
        "disabled_reason": {"type": ["string", "null"]}, "failing_since": {"type": ["string", "null"], "format": "date-time"},
        "last_success_at": {"type": ["string", "null"], "format": "date-time"}, "last_failure_at": {"type": ["string", "null"], "format": "date-time"},
        "last_failure": {"type": ["string", "null"]}, "pending": {"type": "integer"},
        "oldest_pending_at": {"type": ["string", "null"], "format": "date-time"},
        "previous_secret_expires_at": {"type": ["string", "null"], "format": "date-time"},
        "secret": {"type": "string", "description": "Only in the answers to create and rotate-secret: whsec_…, shown once"},
        "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}}));
    let subscription = json!({"$ref": "#/components/schemas/Subscription"});
    let tags = json!(["webhooks"]);
    let mut create = responses("201", subscription.clone());
    create["409"] = problem.clone();
    paths.insert("/api/public/{endpoint}/webhooks".into(), json!({
        "post": {
            "operationId": "create_webhook", "tags": tags,
            "summary": "Subscribe a URL to this endpoint's events (webhooks:manage); the answer holds the signing secret, shown once",
            "parameters": [endpoint],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
                "required": ["url"], "properties": {"url": url, "events": events, "resources": resource_filter, "payload": payload, "description": description}}}}},
            "responses": create,
        },
        "get": {
            "operationId": "list_webhooks", "tags": tags, "summary": "This endpoint's subscriptions, with their health",
            "parameters": [endpoint],
            "responses": responses("200", json!({"type": "object", "properties": {"data": {"type": "array", "items": subscription}}})),
        },
    }));
    paths.insert("/api/public/{endpoint}/webhooks/{id}".into(), json!({
        "get": {"operationId": "get_webhook", "tags": tags, "summary": "One subscription", "parameters": [endpoint, id],
                "responses": responses("200", subscription.clone())},
        "patch": {
            "operationId": "update_webhook", "tags": tags,
            "summary": "Change a subscription; status active resumes a paused one and re-enables a disabled one",
            "parameters": [endpoint, id],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
                "properties": {"url": url, "events": events, "resources": resource_filter, "payload": payload, "description": description,
                               "status": {"type": "string", "enum": ["active", "paused"]}}}}}},
            "responses": responses("200", subscription.clone()),
        },
        "delete": {"operationId": "delete_webhook", "tags": tags, "summary": "Delete a subscription and its waiting events",
                   "parameters": [endpoint, id], "responses": responses("204", Value::Null)},
    }));
    paths.insert("/api/public/{endpoint}/webhooks/{id}/rotate-secret".into(), json!({"post": {
        "operationId": "rotate_webhook_secret", "tags": tags,
        "summary": "A new signing secret, shown once; the old one keeps signing for overlap_seconds (default a day)",
        "parameters": [endpoint, id],
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
            "properties": {"overlap_seconds": {"type": "integer", "minimum": 0, "maximum": 604800}}}}}},
        "responses": responses("200", subscription.clone()),
    }}));
    paths.insert("/api/public/{endpoint}/webhooks/{id}/deliveries".into(), json!({"get": {
        "operationId": "list_webhook_deliveries", "tags": tags,
        "summary": "The delivery log, newest first: state, attempts, last status, latency and the start of the answer",
        "parameters": [endpoint, id,
            {"name": "before", "in": "query", "required": false, "schema": {"type": "string", "pattern": "^evt_[0-9]{1,18}$"}, "description": "next_before of the previous page"},
            {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": webhooks::MAX_LOG_PAGE, "default": 50}}],
        "responses": responses("200", json!({"type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}},
                                                                             "next_before": {"type": ["string", "null"]}}})),
    }}));
    paths.insert("/api/public/{endpoint}/webhooks/{id}/replay".into(), json!({"post": {
        "operationId": "replay_webhook", "tags": tags,
        "summary": "Send again one event (event_id) or every retained event after a change_seq (since_change_seq)",
        "parameters": [endpoint, id],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
            "properties": {"event_id": {"type": "string", "pattern": "^evt_[0-9]{1,18}$"}, "since_change_seq": {"type": "integer", "minimum": 0, "maximum": i64::MAX}},
            "oneOf": [{"required": ["event_id"]}, {"required": ["since_change_seq"]}]}}}},
        "responses": responses("202", json!({"type": "object", "properties": {"queued": {"type": "integer"}}})),
    }}));
}
