//! The REST query API over the mirror (DESIGN.md §5): lists with filters and keyset pages,
//! single records, the changes feed, bulk export and attachment bytes. Every read is served
//! from the mirror through `read.rs` (one data statement per page, under row-level security);
//! only attachment bytes come from the provider, after the same scope check.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use clientapi_schema::model::Resource;
use clientapi_schema::read::{self, Filters, ListQuery, Sort};
use clientapi_sync::provider::ProviderKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::EndpointAuth;
use super::me::resource_freshness;
use super::writes;
use crate::error::{ApiError, FieldError};
use crate::startup::AppState;

const MAX_VALUE_LEN: usize = 4096;
pub const MAX_IDS: usize = 1000;
pub const MAX_STATUSES: usize = 50;
/// The parameters that are lists of values.
const LIST_PARAMETERS: [&str; 2] = ["ids", "status"];
const CHANGES_DEFAULT: u32 = 100;
/// Names in a changes feed's `resource` list: every resource, singular and plural.
pub const MAX_CHANGES_RESOURCES: usize = 2 * Resource::ALL.len();
/// Export rows are gathered into chunks of up to about this many bytes.
const EXPORT_CHUNK: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/public/{endpoint}/query", get(query_records))
        .route("/api/public/{endpoint}/query/", get(query_records))
        .route("/api/public/{endpoint}/changes", get(list_changes))
        .route("/api/public/{endpoint}/export", get(export_records))
        .route("/api/public/{endpoint}/attachments/{id}/content", get(get_attachment_content))
        .route("/api/public/{endpoint}/{resources}", get(list_records).post(writes::create_record))
        .route(
            "/api/public/{endpoint}/{resources}/{id}",
            get(get_record).patch(writes::update_record).delete(writes::delete_record),
        )
}

#[derive(Serialize, Deserialize)]
struct ChangesCursor {
    e: String,
    r: String,
    c: i64,
}

/// A parsed list request.
pub struct ListRequest {
    pub query: ListQuery,
}

fn parse_time(field: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let time = read::parse_time(value);
    if time.is_none() {
        errors.push(FieldError::new(field, "must be an RFC 3339 timestamp or a YYYY-MM-DD date"));
    }
    time
}

/// `a,b,c`: 1 to `max` values of 1 to 200 characters, none blank.
fn parse_list(value: &str, field: &str, max: usize, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let items: Vec<String> = value.split(',').map(str::trim).map(str::to_owned).collect();
    if items.len() > max || items.iter().any(|s| s.is_empty() || s.chars().count() > 200) {
        errors.push(FieldError::new(
            field,
            format!("must be a comma-separated list of 1 to {max} values, none blank or over 200 characters"),
        ));
        return None;
    }
    Some(items)
}

/// What every query parameter must be, whatever it means: given once, with a value (an empty
/// `cursor=` is refused, not guessed at), of sane length, in UTF-8 without control characters.
/// Reports the problem and answers false when `(k, v)` is not usable.
fn plain_parameter(k: &str, v: &str, errors: &mut Vec<FieldError>) -> bool {
    let name = || k.chars().filter(|c| !c.is_control() && *c != '\u{FFFD}').take(100).collect::<String>();
    // A list is bounded by its count and each value's length, everything else here.
    let max = match k {
        "ids" => MAX_IDS * 201,
        "status" => MAX_STATUSES * 201,
        _ => MAX_VALUE_LEN,
    };
    let problem = if k.chars().count() > 100 || v.chars().count() > max {
        "value too long"
    } else if v.contains('\u{FFFD}') || k.contains('\u{FFFD}') {
        // Invalid UTF-8 in the percent-encoding decodes to U+FFFD: refuse it rather than guess.
        "not valid UTF-8"
    } else if v.chars().chain(k.chars()).any(char::is_control) {
        "control characters are not allowed"
    } else if v.is_empty() {
        "given without a value: leave the parameter out instead"
    } else {
        return true;
    };
    errors.push(FieldError::new(name(), problem));
    false
}

/// Parses the query string of a list, reporting every bad or unknown parameter.
/// `resource` is `None` for `/query`, which takes it as a parameter.
pub fn parse_list_request(
    auth: &EndpointAuth,
    state: &AppState,
    resource: Option<Resource>,
    raw_query: Option<&str>,
) -> Result<ListRequest, ApiError> {
    let mut errors = Vec::new();
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if !plain_parameter(&k, &v, &mut errors) {
            continue;
        }
        if let Some((_, earlier)) = params.iter_mut().find(|(seen, _)| *seen == k) {
            // A list may come comma-separated or repeated (`status=a&status=b`, as clients that
            // explode arrays send it); any other parameter is given once.
            if LIST_PARAMETERS.contains(&k.as_ref()) {
                earlier.push(',');
                earlier.push_str(&v);
            } else {
                errors.push(FieldError::new(k.to_string(), "given more than once"));
            }
            continue;
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let resource = match resource {
        Some(r) => Some(r),
        None => match get("resource") {
            None => {
                errors.push(FieldError::new(
                    "resource",
                    "required: one of clients, contacts, jobs, line_items, payments, invoices, attachments",
                ));
                None
            }
            Some(name) => {
                let r = Resource::parse(name);
                if r.is_none() {
                    errors.push(FieldError::new("resource", format!("unknown resource {name:?}")));
                }
                r
            }
        },
    };
    const KNOWN: [&str; 15] = [
        "resource",
        "updated_since",
        "updated_at_from",
        "updated_before",
        "created_since",
        "status",
        "ids",
        "client_id",
        "job_id",
        "invoice_id",
        "include_deleted",
        "sort",
        "page_size",
        "cursor",
        "include",
    ];
    for (k, _) in &params {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(FieldError::new(k.clone(), "unknown parameter"));
        }
    }
    let mut filters = Filters::default();
    if get("updated_since").is_some() && get("updated_at_from").is_some() {
        errors.push(FieldError::new("updated_at_from", "an alias of updated_since: give one of them"));
    }
    if let Some(v) = get("updated_since").or(get("updated_at_from")) {
        let field = if get("updated_since").is_some() { "updated_since" } else { "updated_at_from" };
        filters.updated_since = parse_time(field, v, &mut errors);
    }
    if let Some(v) = get("updated_before") {
        filters.updated_before = parse_time("updated_before", v, &mut errors);
    }
    if let Some(v) = get("created_since") {
        filters.created_since = parse_time("created_since", v, &mut errors);
    }
    if let Some(v) = get("ids") {
        filters.ids = parse_list(v, "ids", MAX_IDS, &mut errors);
    }
    if let Some(r) = resource {
        let applicable: [(&str, bool); 4] = [
            ("status", read::has_status(r)),
            ("client_id", read::has_client_id(r)),
            ("job_id", read::has_job_id(r)),
            ("invoice_id", read::has_invoice_id(r)),
        ];
        for (name, ok) in applicable {
            let Some(v) = get(name) else { continue };
            if !ok {
                errors.push(FieldError::new(name, format!("{} records cannot be filtered by {name}", r.singular())));
                continue;
            }
            match name {
                "status" => filters.status = parse_list(v, "status", MAX_STATUSES, &mut errors),
                _ if v.chars().count() > 200 => errors.push(FieldError::new(name, "must be 1 to 200 characters")),
                "client_id" => filters.client_id = Some(v.to_owned()),
                "job_id" => filters.job_id = Some(v.to_owned()),
                _ => filters.invoice_id = Some(v.to_owned()),
            }
        }
    }
    match get("include_deleted") {
        None => {}
        Some("true" | "1") => filters.include_deleted = true,
        Some("false" | "0") => {}
        Some(_) => errors.push(FieldError::new("include_deleted", "must be true or false")),
    }
    let sort = match (get("sort"), resource) {
        (None, _) => Sort::default(),
        (Some(v), Some(r)) => Sort::parse(v, r).unwrap_or_else(|| {
            let number = if read::has_number(r) { ", number, -number" } else { "" };
            errors.push(FieldError::new(
                "sort",
                format!("one of id, -id, updated_at, -updated_at, created_at, -created_at{number}"),
            ));
            Sort::default()
        }),
        (Some(_), None) => Sort::default(),
    };
    let page_size = match get("page_size") {
        None => read::DEFAULT_PAGE_SIZE,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=read::MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                errors.push(FieldError::new("page_size", format!("an integer from 1 to {}", read::MAX_PAGE_SIZE)));
                read::DEFAULT_PAGE_SIZE
            }
        },
    };
    let include_remote_data = match get("include") {
        None => false,
        Some("remote_data") => true,
        Some(_) => {
            errors.push(FieldError::new("include", "only remote_data can be included"));
            false
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let resource = resource.expect("errors would have been reported");
    let mut query = ListQuery { resource, filters, sort, page_size, after: None, include_remote_data };
    if let Some(cursor) = get("cursor") {
        query.after =
            Some(state.cursors.list_position(&auth.principal.public_id, &query, cursor).ok_or_else(invalid_cursor)?);
    }
    Ok(ListRequest { query })
}

fn invalid_cursor() -> ApiError {
    ApiError::BadRequest {
        code: "invalid_cursor",
        detail: "The cursor is not valid for this endpoint, resource, sort and filters; start again without it.".into(),
    }
}

fn resource_from_path(name: &str) -> Result<Resource, ApiError> {
    Resource::ALL.into_iter().find(|r| r.plural() == name).ok_or(ApiError::NotFound)
}

fn json_response(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Runs a parsed list and renders the envelope (shared by `/query` and `/{resources}`).
pub async fn render_list(state: &AppState, auth: &EndpointAuth, request: ListRequest) -> Result<Response, ApiError> {
    let resource = request.query.resource;
    auth.require_read(resource)?;
    let routed = state.reads.route(auth.principal.endpoint_id);
    // Freshness first: the data read after it is at least as fresh as it says.
    let (synced_at, sync_status) = resource_freshness(state, &auth.principal, resource, routed.replica).await;
    let page = read::list_page_joined(&routed.reader, auth.principal.read_scope(), &request.query).await?;
    let next_cursor = page.next.map(|next| state.cursors.list_cursor(&auth.principal.public_id, &request.query, next));
    auth.set_item_count(page.count);
    // The records' text is copied once more, into a body sized for it up front.
    let mut body = String::with_capacity(page.json.len() + 512);
    let _ = write!(
        body,
        "{{\"provider\":{},\"company_external_id\":{},\"resource\":\"{}\",\"count\":{},\"data\":[",
        json!(auth.principal.provider),
        json!(auth.principal.company_external_id),
        resource.singular(),
        page.count,
    );
    body.push_str(&page.json);
    let _ = write!(
        body,
        "],\"next_cursor\":{},\"synced_at\":{synced_at},\"sync_status\":\"{sync_status}\"}}",
        json!(next_cursor)
    );
    Ok(json_response(body))
}

async fn query_records(
    State(state): State<AppState>,
    auth: EndpointAuth,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let request = parse_list_request(&auth, &state, None, q.as_deref())?;
    render_list(&state, &auth, request).await
}

async fn list_records(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let resource = resource_from_path(params.get("resources").map(String::as_str).unwrap_or(""))?;
    if q.as_deref().is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "resource")) {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "resource",
            "the resource is in the path here; use /query to pass it",
        )]));
    }
    let request = parse_list_request(&auth, &state, Some(resource), q.as_deref())?;
    render_list(&state, &auth, request).await
}

async fn get_record(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let resource = resource_from_path(params.get("resources").map(String::as_str).unwrap_or(""))?;
    auth.require_read(resource)?;
    let id = params.get("id").map(String::as_str).unwrap_or("");
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::NotFound);
    }
    let mut include_remote_data = false;
    let mut errors = Vec::new();
    for (k, v) in url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        if !plain_parameter(&k, &v, &mut errors) {
            continue;
        }
        match (k.as_ref(), v.as_ref()) {
            ("include", "remote_data") => include_remote_data = true,
            ("include", _) => errors.push(FieldError::new("include", "only remote_data can be included")),
            (other, _) => {
                errors.push(FieldError::new(other.chars().take(100).collect::<String>(), "unknown parameter"))
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    // Another company's id is not found, exactly like a missing one.
    let routed = state.reads.route(auth.principal.endpoint_id);
    let (synced_at, sync_status) = resource_freshness(&state, &auth.principal, resource, routed.replica).await;
    let row = read::get_one(&routed.reader, auth.principal.read_scope(), resource, id, include_remote_data)
        .await?
        .ok_or(ApiError::NotFound)?;
    auth.set_item_count(1);
    Ok(json_response(format!(
        "{{\"provider\":{},\"company_external_id\":{},\"resource\":\"{}\",\"data\":{row},\"synced_at\":{synced_at},\"sync_status\":\"{sync_status}\"}}",
        json!(auth.principal.provider),
        json!(auth.principal.company_external_id),
        resource.singular(),
    )))
}

async fn list_changes(
    State(state): State<AppState>,
    auth: EndpointAuth,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let (mut since, mut resources, mut limit) = (None, None, CHANGES_DEFAULT);
    for (k, v) in url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        if !plain_parameter(&k, &v, &mut errors) {
            continue;
        }
        match k.as_ref() {
            "since" => since = Some(v.into_owned()),
            "resource" if v.split(',').count() > MAX_CHANGES_RESOURCES => errors.push(FieldError::new(
                "resource",
                format!("at most {MAX_CHANGES_RESOURCES} names (each resource singular and plural)"),
            )),
            "resource" => {
                let mut list = Vec::new();
                for name in v.split(',') {
                    match Resource::parse(name) {
                        Some(r) => list.push(r),
                        None => errors.push(FieldError::new(
                            "resource",
                            format!("unknown resource {:?}", name.chars().take(50).collect::<String>()),
                        )),
                    }
                }
                // Given twice (`resource=jobs&resource=clients`), the lists add up.
                let all: &mut Vec<Resource> = resources.get_or_insert_with(Vec::new);
                all.extend(list);
                all.sort();
                all.dedup();
            }
            "page_size" => match v.parse::<u32>() {
                Ok(n) if (1..=read::MAX_PAGE_SIZE).contains(&n) => limit = n,
                _ => errors.push(FieldError::new("page_size", format!("an integer from 1 to {}", read::MAX_PAGE_SIZE))),
            },
            other => errors.push(FieldError::new(other.chars().take(100).collect::<String>(), "unknown parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let cursor: Option<ChangesCursor> = match &since {
        None => None,
        Some(c) => {
            let cursor: ChangesCursor = state.cursors.verify(c).ok_or_else(invalid_cursor)?;
            if cursor.e != auth.principal.public_id {
                return Err(invalid_cursor());
            }
            Some(cursor)
        }
    };
    // Named, the resources are those; omitted, they are the cursor's (a feed keeps its list
    // from page to page), or on a first page every resource the key may read.
    let resources: Vec<Resource> = match (resources, &cursor) {
        (Some(named), _) => named,
        (None, Some(cursor)) => cursor
            .r
            .split(',')
            .map(|name| Resource::parse(name).ok_or_else(invalid_cursor))
            .collect::<Result<_, _>>()?,
        (None, None) => Resource::ALL.into_iter().filter(|r| auth.may_read(*r)).collect(),
    };
    if resources.is_empty() {
        // A key that may read nothing: the 403 names the first scope it lacks.
        auth.require_read(Resource::Client)?;
    }
    for r in &resources {
        auth.require_read(*r)?;
    }
    let key = resources.iter().map(|r| r.singular()).collect::<Vec<_>>().join(",");
    let from = match cursor {
        None => 0,
        Some(cursor) if cursor.r == key => cursor.c,
        Some(_) => return Err(invalid_cursor()),
    };
    let changes = read::changes(
        &state.reads.route(auth.principal.endpoint_id).reader,
        auth.principal.read_scope(),
        &resources,
        from,
        limit,
    )
    .await?;
    let last = changes.last().map_or(from, |c| c.seq);
    let next = state.cursors.sign(&ChangesCursor { e: auth.principal.public_id.clone(), r: key, c: last });
    auth.set_item_count(changes.len());
    Ok(json_response(format!(
        "{{\"provider\":{},\"company_external_id\":{},\"count\":{},\"data\":[{}],\"next_cursor\":{},\"has_more\":{}}}",
        json!(auth.principal.provider),
        json!(auth.principal.company_external_id),
        changes.len(),
        changes.iter().map(|c| c.json.as_str()).collect::<Vec<_>>().join(","),
        json!(next),
        changes.len() as u32 == limit,
    )))
}

async fn export_records(
    State(state): State<AppState>,
    auth: EndpointAuth,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    // Parsed in a block of its own: the query's serializer is not `Send`, and the handler awaits.
    let (request, csv) = {
        // `format` is ours; everything else is a list filter.
        let mut format = "ndjson".to_owned();
        let mut rest = url::form_urlencoded::Serializer::new(String::new());
        let mut errors = Vec::new();
        for (k, v) in url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
            if !plain_parameter(&k, &v, &mut errors) {
                continue;
            }
            match k.as_ref() {
                "format" if v == "ndjson" || v == "csv" => format = v.into_owned(),
                "format" => errors.push(FieldError::new("format", "ndjson or csv")),
                "cursor" | "page_size" | "sort" | "include" => {
                    errors.push(FieldError::new(k.into_owned(), "not used by export: it streams the whole scope"))
                }
                _ => {
                    rest.append_pair(&k, &v);
                }
            }
        }
        let rest = rest.finish();
        let request = parse_list_request(&auth, &state, None, Some(&rest));
        let request = match (request, errors.is_empty()) {
            (Ok(r), true) => r,
            (Ok(_), false) => return Err(ApiError::Invalid(errors)),
            (Err(ApiError::Invalid(mut more)), _) => {
                errors.append(&mut more);
                return Err(ApiError::Invalid(errors));
            }
            (Err(e), _) => return Err(e),
        };
        (request, format == "csv")
    };
    let resource = request.query.resource;
    auth.require_read(resource)?;
    let reader = state.reads.route(auth.principal.endpoint_id).reader;
    let company = auth.principal.read_scope();
    let filters = request.query.filters.clone();
    let endpoint = auth.principal.public_id.clone();
    // Postgres renders either format itself (COPY): the service only relays its bytes.
    let format = if csv { read::ExportFormat::Csv } else { read::ExportFormat::Ndjson };
    // The export's connection is had before the answer starts: an export that finds every one of
    // the exports' connections busy past the pool's wait is told to retry, not sent an empty 200.
    let scoped = read::Scoped::begin_streaming(&reader, company).await.map_err(|e| match e {
        sqlx::Error::PoolTimedOut => ApiError::Unavailable {
            detail: "Every export connection is busy with other exports; retry shortly.".into(),
            retry_after_secs: Some(5),
        },
        e => e.into(),
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        match read::export(scoped, company, resource, &filters, format, EXPORT_CHUNK, tx).await {
            Ok(bytes) => tracing::info!(endpoint, resource = resource.singular(), ?format, bytes, "export finished"),
            Err(e) => {
                tracing::error!(endpoint, error = %e, ?format, "export failed part-way; the response is truncated")
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let (content_type, extension) =
        if csv { ("text/csv; charset=utf-8", "csv") } else { ("application/x-ndjson", "ndjson") };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.{extension}\"", resource.plural())) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

async fn get_attachment_content(
    State(state): State<AppState>,
    auth: EndpointAuth,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    auth.require_read(Resource::Attachment)?;
    let id = params.get("id").map(String::as_str).unwrap_or("");
    if id.is_empty() || id.len() > 200 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ApiError::NotFound);
    }
    // The same scope check as any read: the attachment must be this company's, and live.
    let row = read::get_one(
        &state.reads.route(auth.principal.endpoint_id).reader,
        auth.principal.read_scope(),
        Resource::Attachment,
        id,
        false,
    )
    .await?
    .ok_or(ApiError::NotFound)?;
    let record: Value = serde_json::from_str(&row).map_err(anyhow::Error::from)?;
    if !record["deleted_at"].is_null() {
        return Err(ApiError::NotFound);
    }
    let kind = ProviderKind::parse(&auth.principal.provider).ok_or(ApiError::NotFound)?;
    let provider = state.providers.get(kind);
    let token = state.tokens.access_token(provider.as_ref(), auth.principal.connection_id).await.map_err(|e| {
        ApiError::Unavailable {
            detail: format!("The provider connection is unavailable: {e}"),
            retry_after_secs: Some(60),
        }
    })?;
    // Inside the connection's request budget, like its syncs and writes.
    state.engine.limiter(auth.principal.connection_id, provider.as_ref()).until_ready().await;
    let download = provider.download(&token, id).await.map_err(|e| match e {
        clientapi_sync::provider::ProviderError::NotFound => ApiError::NotFound,
        other => crate::writes::provider_unavailable(&other)
            .unwrap_or_else(|| ApiError::BadGateway { detail: format!("The provider failed: {other}") }),
    })?;
    auth.set_item_count(1);
    let mut response = Body::from_stream(download.response.bytes_stream()).into_response();
    let headers = response.headers_mut();
    let content_type = download.content_type.unwrap_or_else(|| "application/octet-stream".into());
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(length) = download.content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(response)
}
