//! Signing in and out, and the overview: every connection's health, the account's traffic for
//! the chosen range, re-authorisation banners and "Connect a provider".

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::connections::{ConnectionSummary, summarize};
use super::view::{self, Chrome};
use super::{Form, PageError, Posted, Session, charts, local_path, render, see_other};
use crate::error::ApiError;
use crate::http::admin::auth::{self, CLEAR_SESSION_COOKIE};
use crate::startup::AppState;
use crate::usage::{self, Range};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    email: String,
    error: Option<String>,
    signed_out: bool,
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
    signed_out: Option<String>,
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, PageError> {
    let next = local_path(query.next.as_deref());
    if auth::session(&state, &headers).await?.is_some() {
        return Ok(see_other(&next));
    }
    Ok(render(&LoginPage {
        chrome: Chrome::bare("Sign in"),
        next,
        email: String::new(),
        error: None,
        signed_out: query.signed_out.is_some(),
    }))
}

async fn login(
    State(state): State<AppState>,
    client_ip: crate::http::extract::ClientIp,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let form = Form::parse(&body);
    let (email, password) = (form.get("email").unwrap_or_default(), form.get("password").unwrap_or_default());
    let next = local_path(form.get("next"));
    match auth::start_session(&state, email, password.to_owned(), client_ip.0).await {
        Ok(session) => {
            let mut response = see_other(&next);
            response.headers_mut().insert(header::SET_COOKIE, auth::session_set_cookie(&state, &session.token)?);
            Ok(response)
        }
        Err(e @ (ApiError::Unauthorized | ApiError::RateLimited { .. })) => {
            let (status, error) = match e {
                ApiError::RateLimited { retry_after_secs } => (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    format!("Too many sign-in attempts. Try again in {retry_after_secs} seconds."),
                ),
                _ => {
                    (axum::http::StatusCode::UNAUTHORIZED, "That email and password do not match an admin.".to_owned())
                }
            };
            let page = LoginPage {
                chrome: Chrome::bare("Sign in"),
                next,
                email: email.to_owned(),
                error: Some(error),
                signed_out: false,
            };
            Ok((status, render(&page)).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, _posted: Posted) -> Result<Response, PageError> {
    auth::end_session(&state, &headers).await?;
    let mut response = see_other("/login?signed_out=1");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_SESSION_COOKIE));
    Ok(response)
}

/// A link of the range picker.
pub struct RangeLink {
    pub label: &'static str,
    pub value: &'static str,
    pub href: String,
    pub current: bool,
}

/// The range picker's links for a page at `path` (which may carry a query already).
pub fn range_links(path: &str, current: Range) -> Vec<RangeLink> {
    let joiner = if path.contains('?') { '&' } else { '?' };
    Range::ALL
        .iter()
        .map(|r| RangeLink {
            label: r.label(),
            value: r.as_str(),
            href: format!("{path}{joiner}range={}", r.as_str()),
            current: *r == current,
        })
        .collect()
}

/// The traffic tiles every usage widget shows.
pub struct Tiles {
    pub requests: String,
    pub errors: String,
    pub error_rate: String,
    pub p50: String,
    pub p95: String,
}

impl Tiles {
    pub fn of(totals: &usage::Bucket) -> Self {
        Self {
            requests: view::number(totals.requests),
            errors: view::number(totals.errors),
            error_rate: view::percent(totals.errors, totals.requests),
            p50: view::ms(totals.p50_ms),
            p95: view::ms(totals.p95_ms),
        }
    }
}

/// A chart's numbers, as a table row.
pub struct BucketRow {
    pub start: String,
    pub requests: i64,
    pub ok: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub p50: String,
    pub p95: String,
}

pub fn bucket_rows(buckets: &[usage::Bucket]) -> Vec<BucketRow> {
    buckets
        .iter()
        .map(|b| BucketRow {
            start: view::time(Some(b.start)),
            requests: b.requests,
            ok: b.ok,
            client_errors: b.client_errors,
            server_errors: b.server_errors,
            p50: view::ms(b.p50_ms),
            p95: view::ms(b.p95_ms),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    ranges: Vec<RangeLink>,
    range_label: &'static str,
    tiles: Tiles,
    chart: String,
    rows: Vec<BucketRow>,
    connections: Vec<ConnectionSummary>,
    busiest: Vec<(String, String, String, String)>,
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

async fn overview(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<RangeQuery>,
) -> Result<Response, PageError> {
    let range = Range::from_param(query.range.as_deref())?;
    let usage = usage::usage(&state.db, session.account(), range, None).await?;
    let mut connections = Vec::new();
    for connection in clientapi_sync::connections::list(&state.db, session.account()).await? {
        connections.push(summarize(&state, connection).await?);
    }
    let mut busiest: Vec<&usage::EndpointUsage> = usage.endpoints.iter().filter(|e| e.totals.requests > 0).collect();
    busiest.sort_by_key(|e| std::cmp::Reverse(e.totals.requests));
    let busiest = busiest
        .into_iter()
        .take(5)
        .map(|e| {
            (
                format!("/endpoints/{}?range={}", e.id, range.as_str()),
                e.name.clone(),
                view::number(e.totals.requests),
                view::percent(e.totals.errors, e.totals.requests),
            )
        })
        .collect();
    let chart = charts::requests(&usage.buckets, "Requests across the account", |_| "/endpoints".to_owned());
    let page = OverviewPage {
        chrome: Chrome::page(&session, "overview", "Overview").live("/api/admin/events"),
        ranges: range_links("/", range),
        range_label: range.label(),
        tiles: Tiles::of(&usage.totals),
        chart,
        rows: bucket_rows(&usage.buckets),
        connections,
        busiest,
    };
    Ok(render(&page))
}
