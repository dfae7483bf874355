//! Endpoints' pages: the list with each one's traffic for the range, create (→ the key shown
//! once), edit, reissue with a grace window, deactivate, activate and delete behind
//! confirmations, and the endpoint's own page: its company's sync freshness beside its traffic,
//! charts whose bars filter the request log, and the log with a live tail.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDateTime, Utc};
use clientapi_schema::ConnectionId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::connections::{StreamView, summarize};
use super::overview::{BucketRow, RangeLink, Tiles, bucket_rows, range_links};
use super::view::{self, Badge, Chrome};
use super::{ConfirmPage, Form, PageError, Posted, Session, charts, errors_by_field, render, see_other};
use crate::endpoints::{self, Endpoint, MAX_GRACE_SECONDS};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::usage::{self, LogFilter, Range};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/endpoints", get(endpoints_page).post(create_endpoint))
        .route("/endpoints/new", get(new_endpoint))
        .route("/endpoints/{id}", get(endpoint_page))
        .route("/endpoints/{id}/edit", get(edit_endpoint).post(save_endpoint))
        .route("/endpoints/{id}/reissue", get(reissue_form).post(reissue_key))
        .route("/endpoints/{id}/deactivate", get(confirm_deactivate).post(deactivate))
        .route("/endpoints/{id}/activate", axum::routing::post(activate))
        .route("/endpoints/{id}/delete", get(confirm_delete).post(delete))
}

fn access_label(access: &str) -> &'static str {
    if access == "read_write" { "Read-write" } else { "Read-only" }
}

fn status_badge(endpoint: &Endpoint) -> Badge {
    match (endpoint.status.as_str(), endpoint.expires_at) {
        ("active", Some(at)) if at <= Utc::now() => Badge::new("warn", "Expired"),
        ("active", _) => Badge::new("good", "Active"),
        _ => Badge::new("neutral", "Deactivated"),
    }
}

struct EndpointRow {
    id: String,
    name: String,
    company: String,
    access: &'static str,
    environment: Badge,
    status: Badge,
    scopes: String,
    last_used: String,
    last_used_ip: String,
    requests: String,
    errors: String,
}

#[derive(Template)]
#[template(path = "endpoints.html")]
struct EndpointsPage {
    chrome: Chrome,
    ranges: Vec<RangeLink>,
    range_label: &'static str,
    rows: Vec<EndpointRow>,
    connections: Vec<(ConnectionId, String)>,
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

async fn endpoints_page(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<RangeQuery>,
) -> Result<Response, PageError> {
    let range = Range::from_param(query.range.as_deref())?;
    let list = endpoints::list(&state.db, session.account()).await?;
    let usage = usage::usage(&state.db, session.account(), range, None).await?;
    let rows = list
        .iter()
        .map(|e| {
            let totals = usage.endpoint(&e.public_id).map(|u| u.totals.clone()).unwrap_or_default();
            EndpointRow {
                id: e.public_id.clone(),
                name: e.name.clone(),
                company: e
                    .company_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| e.company_external_id.clone()),
                access: access_label(&e.access),
                environment: view::environment_badge(&e.environment),
                status: status_badge(e),
                scopes: format!("{} scopes", e.scopes.len()),
                last_used: view::time(e.last_used_at),
                last_used_ip: e.last_used_ip.clone().unwrap_or_default(),
                requests: view::number(totals.requests),
                errors: view::number(totals.errors),
            }
        })
        .collect();
    let connections = clientapi_sync::connections::list(&state.db, session.account())
        .await?
        .into_iter()
        .map(|c| (c.id, c.display_name().to_owned()))
        .collect();
    Ok(render(&EndpointsPage {
        chrome: Chrome::page(&session, "endpoints", "Endpoints").live("/api/admin/events"),
        ranges: range_links("/endpoints", range),
        range_label: range.label(),
        rows,
        connections,
    }))
}

/// A scope checkbox.
struct ScopeBox {
    value: String,
    label: String,
    checked: bool,
    write: bool,
}

/// The create and edit form's state (as sent, when it comes back with errors).
struct EndpointForm {
    name: String,
    connection_id: String,
    company_external_id: String,
    access: String,
    environment: String,
    scopes: Vec<ScopeBox>,
    ip_allowlist: String,
    rate_limit: String,
    expires_at: String,
    errors: std::collections::HashMap<String, String>,
}

impl EndpointForm {
    fn error(&self, field: &str) -> &str {
        self.errors.get(field).map(String::as_str).unwrap_or_default()
    }

    fn scope_boxes(selected: &[String]) -> Vec<ScopeBox> {
        endpoints::all_scopes()
            .into_iter()
            .map(|scope| ScopeBox {
                checked: selected.contains(&scope),
                write: scope.ends_with(":write"),
                label: scope.replace('_', " ").replace(":read", ": read").replace(":write", ": write"),
                value: scope,
            })
            .collect()
    }

    fn from_form(form: &Form) -> Self {
        let selected: Vec<String> = form.all("scopes").into_iter().map(str::to_owned).collect();
        Self {
            name: form.get("name").unwrap_or_default().to_owned(),
            connection_id: form.get("connection_id").unwrap_or_default().to_owned(),
            company_external_id: form.get("company_external_id").unwrap_or_default().to_owned(),
            access: form.get("access").unwrap_or("read_only").to_owned(),
            environment: form.get("environment").unwrap_or_default().to_owned(),
            scopes: Self::scope_boxes(&selected),
            ip_allowlist: form.get("ip_allowlist").unwrap_or_default().to_owned(),
            rate_limit: form.get("rate_limit_per_minute").unwrap_or_default().to_owned(),
            expires_at: form.get("expires_at").unwrap_or_default().to_owned(),
            errors: Default::default(),
        }
    }

    fn of(endpoint: &Endpoint) -> Self {
        Self {
            name: endpoint.name.clone(),
            connection_id: endpoint.connection_id.to_string(),
            company_external_id: endpoint.company_external_id.clone(),
            access: endpoint.access.clone(),
            environment: endpoint.environment.clone(),
            scopes: Self::scope_boxes(&endpoint.scopes),
            ip_allowlist: endpoint.ip_allowlist.join("\n"),
            rate_limit: endpoint.rate_limit_per_minute.to_string(),
            expires_at: endpoint.expires_at.map(|at| at.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default(),
            errors: Default::default(),
        }
    }
}

/// The form as the admin API's JSON body, so both validate with the same code.
fn form_body(form: &Form, creating: bool) -> Value {
    let mut body = json!({
        "name": form.get("name").unwrap_or_default(),
        "access": form.get("access").unwrap_or("read_only"),
        "scopes": form.all("scopes"),
        "ip_allowlist": form.get("ip_allowlist").unwrap_or_default().split(['\n', ',']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>(),
    });
    if creating {
        body["connection_id"] = match form.filled("connection_id").map(str::parse::<i64>) {
            Some(Ok(id)) => json!(id),
            Some(Err(_)) => json!(form.get("connection_id")),
            None => Value::Null,
        };
        body["company_external_id"] = json!(form.filled("company_external_id"));
        if let Some(environment) = form.filled("environment") {
            body["environment"] = json!(environment);
        }
    }
    if let Some(limit) = form.filled("rate_limit_per_minute") {
        body["rate_limit_per_minute"] = limit.parse::<i64>().map_or_else(|_| json!(limit), |n| json!(n));
    }
    match form.filled("expires_at") {
        // A datetime-local input has no zone: the form labels it UTC.
        Some(at) => {
            body["expires_at"] = NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M")
                .map(|t| json!(t.and_utc().to_rfc3339()))
                .unwrap_or_else(|_| json!(at));
        }
        None if !creating => body["expires_at"] = Value::Null,
        None => {}
    }
    let object = body.as_object_mut().expect("an object");
    object.retain(|_, v| !v.is_null());
    body
}

#[derive(Template)]
#[template(path = "endpoint_form.html")]
struct EndpointFormPage {
    chrome: Chrome,
    creating: bool,
    id: String,
    form: EndpointForm,
    connections: Vec<(String, String, String)>,
    company: Option<String>,
}

#[derive(Deserialize)]
struct NewQuery {
    connection: Option<String>,
    company: Option<String>,
}

async fn connection_choices(state: &AppState, session: &Session) -> Result<Vec<(String, String, String)>, PageError> {
    Ok(clientapi_sync::connections::list(&state.db, session.account())
        .await?
        .into_iter()
        .map(|c| {
            let label =
                format!("{} ({})", c.display_name(), if c.environment == "sandbox" { "sandbox" } else { "live" });
            (c.id.to_string(), label, c.environment)
        })
        .collect())
}

async fn company_name(state: &AppState, session: &Session, form: &EndpointForm) -> Option<String> {
    let connection = ConnectionId(form.connection_id.parse().ok()?);
    crate::companies::one(&state.db, session.account(), connection, &form.company_external_id)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.name)
}

async fn new_endpoint(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<NewQuery>,
) -> Result<Response, PageError> {
    let connections = connection_choices(&state, &session).await?;
    let connection_id =
        query.connection.unwrap_or_else(|| connections.first().map(|c| c.0.clone()).unwrap_or_default());
    let environment = connections
        .iter()
        .find(|c| c.0 == connection_id)
        .map(|c| endpoints::endpoint_environment_for(&c.2).to_owned())
        .unwrap_or_else(|| "live".into());
    let form = EndpointForm {
        name: String::new(),
        connection_id,
        company_external_id: query.company.unwrap_or_default(),
        access: "read_only".into(),
        environment,
        scopes: EndpointForm::scope_boxes(&endpoints::default_scopes(false)),
        ip_allowlist: String::new(),
        rate_limit: endpoints::DEFAULT_RATE_LIMIT.to_string(),
        expires_at: String::new(),
        errors: Default::default(),
    };
    let company = company_name(&state, &session, &form).await;
    Ok(render(&EndpointFormPage {
        chrome: Chrome::page(&session, "endpoints", "New endpoint"),
        creating: true,
        id: String::new(),
        form,
        connections,
        company,
    }))
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    chrome: Chrome,
    id: String,
    name: String,
    key: String,
    url: String,
    curl: String,
    reissued: bool,
    grace: Option<String>,
}

fn key_page(state: &AppState, session: &Session, created: endpoints::Created, reissued: bool, grace: i64) -> Response {
    let url = crate::http::admin::endpoints::endpoint_url(state, &created.endpoint);
    let curl = format!("curl -s -H 'Authorization: Bearer {}' '{url}/me'", created.key);
    let page = KeyPage {
        chrome: Chrome::page(session, "endpoints", "Your new key"),
        id: created.endpoint.public_id.clone(),
        name: created.endpoint.name.clone(),
        key: created.key,
        url,
        curl,
        reissued,
        grace: (grace > 0).then(|| view::span(grace as f64)),
    };
    let mut response = render(&page);
    // Shown once: never stored by the browser or anything between.
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

async fn create_endpoint(
    State(state): State<AppState>,
    Posted { session, form }: Posted,
) -> Result<Response, PageError> {
    match endpoints::create(&state.db, session.account(), &form_body(&form, true)).await {
        Ok(created) => Ok(key_page(&state, &session, created, false, 0)),
        Err(ApiError::Invalid(errors)) => {
            let mut page_form = EndpointForm::from_form(&form);
            page_form.errors = errors_by_field(&errors);
            let company = company_name(&state, &session, &page_form).await;
            let page = EndpointFormPage {
                chrome: Chrome::page(&session, "endpoints", "New endpoint"),
                creating: true,
                id: String::new(),
                form: page_form,
                connections: connection_choices(&state, &session).await?,
                company,
            };
            Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn owned(state: &AppState, session: &Session, id: &str) -> Result<Endpoint, PageError> {
    endpoints::get(&state.db, session.account(), id).await?.ok_or(PageError::NotFound)
}

async fn edit_endpoint(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let endpoint = owned(&state, &session, &id).await?;
    Ok(render(&EndpointFormPage {
        chrome: Chrome::page(&session, "endpoints", format!("Edit {}", endpoint.name)),
        creating: false,
        id: endpoint.public_id.clone(),
        form: EndpointForm::of(&endpoint),
        connections: connection_choices(&state, &session).await?,
        company: endpoint.company_name.clone(),
    }))
}

async fn save_endpoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted,
) -> Result<Response, PageError> {
    let endpoint = owned(&state, &session, &id).await?;
    match endpoints::update(&state.db, session.account(), &endpoint.public_id, &form_body(&form, false)).await {
        Ok(_) => Ok(see_other(&format!("/endpoints/{}?done=saved", endpoint.public_id))),
        Err(ApiError::Invalid(errors)) => {
            let mut page_form = EndpointForm::from_form(&form);
            page_form.connection_id = endpoint.connection_id.to_string();
            page_form.company_external_id = endpoint.company_external_id.clone();
            page_form.environment = endpoint.environment.clone();
            page_form.errors = errors_by_field(&errors);
            let page = EndpointFormPage {
                chrome: Chrome::page(&session, "endpoints", format!("Edit {}", endpoint.name)),
                creating: false,
                id: endpoint.public_id.clone(),
                form: page_form,
                connections: connection_choices(&state, &session).await?,
                company: endpoint.company_name.clone(),
            };
            Ok((axum::http::StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "reissue.html")]
struct ReissuePage {
    chrome: Chrome,
    id: String,
    name: String,
    hint: String,
    graces: Vec<(i64, &'static str)>,
}

async fn reissue_form(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let endpoint = owned(&state, &session, &id).await?;
    Ok(render(&ReissuePage {
        chrome: Chrome::page(&session, "endpoints", format!("Reissue the key of {}", endpoint.name)),
        id: endpoint.public_id,
        name: endpoint.name,
        hint: endpoint.key_hint.unwrap_or_default(),
        graces: vec![
            (0, "None: the current key stops working now"),
            (3600, "1 hour"),
            (86_400, "24 hours"),
            (MAX_GRACE_SECONDS, "7 days"),
        ],
    }))
}

async fn reissue_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, form }: Posted,
) -> Result<Response, PageError> {
    let endpoint = owned(&state, &session, &id).await?;
    let grace = form.get("grace_seconds").and_then(|g| g.parse::<i64>().ok()).unwrap_or(0);
    let created = endpoints::reissue(&state.db, session.account(), &endpoint.public_id, grace).await?;
    Ok(key_page(&state, &session, created, true, grace))
}

/// The confirmation page before `action` on an endpoint.
fn confirm(session: &Session, e: &Endpoint, action: &str, heading: String, body: &str, button: &str) -> Response {
    render(&ConfirmPage {
        chrome: Chrome::page(session, "endpoints", heading.clone()),
        heading,
        body: body.to_owned(),
        action: format!("/endpoints/{}/{action}", e.public_id),
        button: button.to_owned(),
        cancel: format!("/endpoints/{}", e.public_id),
        danger: true,
    })
}

async fn confirm_deactivate(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let e = owned(&state, &session, &id).await?;
    let body = "Every request with its key is refused with 403 at once, on every process. The key is kept: \
                activating the endpoint again restores it.";
    Ok(confirm(&session, &e, "deactivate", format!("Deactivate {}?", e.name), body, "Deactivate"))
}

async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted,
) -> Result<Response, PageError> {
    let e = endpoints::set_status(&state.db, session.account(), &id, false).await?;
    Ok(see_other(&format!("/endpoints/{}?done=deactivated", e.public_id)))
}

async fn activate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted,
) -> Result<Response, PageError> {
    let e = endpoints::set_status(&state.db, session.account(), &id, true).await?;
    Ok(see_other(&format!("/endpoints/{}?done=activated", e.public_id)))
}

async fn confirm_delete(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let e = owned(&state, &session, &id).await?;
    let body = "The endpoint and its keys are deleted; its URL answers 404 from now on. Its request log is kept \
                until it ages out. This cannot be undone.";
    Ok(confirm(&session, &e, "delete", format!("Delete {} for good?", e.name), body, "Delete endpoint"))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Posted { session, .. }: Posted,
) -> Result<Response, PageError> {
    endpoints::delete(&state.db, session.account(), &id).await?;
    Ok(see_other("/endpoints"))
}

#[derive(Deserialize)]
struct DetailQuery {
    range: Option<String>,
    status: Option<String>,
    resource: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    done: Option<String>,
}

struct LogRow {
    time: String,
    method: String,
    path: String,
    resource: String,
    status: i16,
    tone: &'static str,
    items: String,
    duration: String,
    ip: String,
    user_agent: String,
    request_id: String,
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage {
    chrome: Chrome,
    e: Endpoint,
    url: String,
    access: &'static str,
    environment: Badge,
    status: Badge,
    active: bool,
    flash: Option<&'static str>,
    ranges: Vec<RangeLink>,
    range: &'static str,
    range_label: &'static str,
    tiles: Tiles,
    requests_chart: String,
    latency_chart: String,
    rows: Vec<BucketRow>,
    streams: Vec<StreamView>,
    sync_status: Badge,
    company_records: Vec<(String, String)>,
    company_last_change: String,
    log: Vec<LogRow>,
    log_filter: String,
    status_filter: String,
    resource_filter: String,
    resources: Vec<&'static str>,
    window: Option<String>,
    older: Option<String>,
    tailing: bool,
    webhooks: Vec<WebhookRow>,
}

/// One of the endpoint's webhook subscriptions and its health.
struct WebhookRow {
    url: String,
    events: String,
    status: Badge,
    health: String,
    last_success: String,
    pending: String,
}

impl WebhookRow {
    fn of(s: crate::webhooks::Subscription) -> Self {
        let status = match s.status.as_str() {
            "active" if s.failing_since.is_some() => Badge::new("warn", "Failing"),
            "active" => Badge::new("good", "Active"),
            "paused" => Badge::new("muted", "Paused"),
            _ => Badge::new("bad", "Disabled"),
        };
        let health = match (&s.disabled_reason, s.failing_since, &s.last_failure) {
            (Some(reason), _, _) => reason.clone(),
            (None, Some(since), failure) => {
                format!("Failing since {} UTC: {}", since.format("%Y-%m-%d %H:%M:%S"), failure.as_deref().unwrap_or(""))
            }
            _ => String::new(),
        };
        Self {
            url: s.url,
            events: s.events.join(", "),
            status,
            health,
            last_success: view::time(s.last_success_at),
            pending: view::number(s.pending),
        }
    }
}

impl EndpointPage {
    fn status_is(&self, class: &str) -> bool {
        self.status_filter == class
    }

    fn resource_is(&self, resource: &str) -> bool {
        self.resource_filter == resource
    }

    fn last_used(&self) -> String {
        match &self.e.last_used_ip {
            Some(ip) => format!("{} from {}", view::time(self.e.last_used_at), view::escape(ip)),
            None => view::time(self.e.last_used_at),
        }
    }
}

fn parse_time(raw: Option<&str>, field: &str) -> Result<Option<DateTime<Utc>>, PageError> {
    match raw.filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| PageError::BadRequest(format!("{field} must be an RFC 3339 time"))),
    }
}

async fn endpoint_page(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, PageError> {
    let e = owned(&state, &session, &id).await?;
    let range = Range::from_param(q.range.as_deref())?;
    let internal = crate::http::admin::endpoints::owned_endpoint(&state, &session.admin, &e.public_id).await?;
    let usage = usage::usage(&state.db, session.account(), range, Some(&e.public_id)).await?;
    let mine = usage.endpoint(&e.public_id).cloned();
    let (totals, buckets) = mine.map(|u| (u.totals, u.buckets)).unwrap_or_default();

    let base = format!("/endpoints/{}?range={}", e.public_id, range.as_str());
    let width = range.bucket();
    let requests_chart = charts::requests(&buckets, "Requests by status class", |b| {
        let (since, until) = (b.start.to_rfc3339(), (b.start + width).to_rfc3339());
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!("{base}&since={}&until={}#log", enc(&since), enc(&until))
    });
    let latency_chart = charts::latency(&buckets, "Latency p50 and p95");

    let connection = clientapi_sync::connections::get(&state.db, session.account(), e.connection_id)
        .await?
        .ok_or(PageError::NotFound)?;
    let summary = summarize(&state, connection).await?;
    let company = crate::companies::one(&state.db, session.account(), e.connection_id, &e.company_external_id).await?;

    let filter = LogFilter {
        status: q.status.clone().filter(|s| !s.is_empty()),
        resource: q.resource.clone().filter(|s| !s.is_empty()),
        since: parse_time(q.since.as_deref(), "since")?,
        until: parse_time(q.until.as_deref(), "until")?,
        before: q.before.clone().filter(|s| !s.is_empty()),
        limit: Some(50),
    };
    let (entries, next) = usage::logs(&state.db, internal, &filter).await?;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut log_filter = String::new();
    for (name, value) in
        [("status", &filter.status), ("resource", &filter.resource), ("since", &q.since), ("until", &q.until)]
    {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            log_filter.push_str(&format!("&{name}={}", enc(v)));
        }
    }
    let window = match (filter.since, filter.until) {
        (Some(since), Some(until)) => Some(format!("{} to {}", view::time(Some(since)), view::time(Some(until)))),
        _ => None,
    };
    let older = next.map(|cursor| format!("{base}{log_filter}&before={}#log", enc(&cursor)));
    let log = entries
        .into_iter()
        .map(|r| LogRow {
            time: view::time(Some(r.created_at)),
            tone: match r.status {
                s if s >= 500 => "bad",
                s if s >= 400 => "warn",
                _ => "good",
            },
            method: r.method,
            path: r.path,
            resource: r.resource.unwrap_or_default(),
            status: r.status,
            items: r.item_count.map(|n| n.to_string()).unwrap_or_default(),
            duration: format!("{:.1} ms", r.duration_ms),
            ip: r.client_ip.unwrap_or_default(),
            user_agent: r.user_agent.unwrap_or_default(),
            request_id: r.request_id,
        })
        .collect();
    let flash = match q.done.as_deref() {
        Some("saved") => Some("Saved."),
        Some("deactivated") => Some("Deactivated: its key is refused with 403 from now on."),
        Some("activated") => Some("Activated: its key works again."),
        _ => None,
    };
    let tailing = filter.before.is_none() && filter.until.is_none();
    let webhooks =
        crate::webhooks::list(&state.db, crate::webhooks::Manager::Account(session.account()), Some(&e.public_id))
            .await?
            .into_iter()
            .map(WebhookRow::of)
            .collect();
    let page = EndpointPage {
        webhooks,
        chrome: Chrome::page(&session, "endpoints", e.name.clone())
            .live(format!("/api/admin/events?endpoint={}", e.public_id)),
        url: crate::http::admin::endpoints::endpoint_url(&state, &e),
        access: access_label(&e.access),
        environment: view::environment_badge(&e.environment),
        status: status_badge(&e),
        active: e.status == "active",
        flash,
        ranges: range_links(&format!("/endpoints/{}", e.public_id), range),
        range: range.as_str(),
        range_label: range.label(),
        tiles: Tiles::of(&totals),
        requests_chart,
        latency_chart,
        rows: bucket_rows(&buckets),
        streams: summary.streams,
        sync_status: summary.status,
        company_records: company
            .as_ref()
            // Words, as the companies page heads its columns: "line items", not line_items.
            .map(|c| c.records.iter().map(|(k, v)| (k.replace('_', " "), view::number(*v))).collect())
            .unwrap_or_default(),
        company_last_change: view::time(company.and_then(|c| c.last_change_at)),
        log,
        log_filter,
        status_filter: filter.status.unwrap_or_default(),
        resource_filter: filter.resource.unwrap_or_default(),
        resources: clientapi_schema::model::Resource::ALL.iter().map(|r| r.singular()).collect(),
        window,
        older,
        tailing,
        e,
    };
    Ok(render(&page))
}
