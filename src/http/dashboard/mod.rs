//! The operators' dashboard (DESIGN.md §7): server-rendered HTML at `/`, the same functions
//! the admin JSON API calls behind every page, every form working without JavaScript (a small
//! script of our own only enhances: live regions, copy buttons, local times), a strict
//! Content-Security-Policy, and every page scoped to the signed-in user's account (404 for
//! anything else). Sign-in is the admin API's session cookie; forms carry its CSRF token.

mod assets;
mod charts;
mod connections;
mod endpoints;
mod overview;
pub(crate) mod view;

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use clientapi_schema::AccountId;

use crate::error::{ApiError, FieldError};
use crate::http::admin::auth::{self, AdminAuth};
use crate::startup::AppState;

pub use connections::oauth_callback_page;

pub fn router(state: &AppState) -> Router<AppState> {
    let csp = content_security_policy(state);
    Router::new()
        .merge(overview::router())
        .merge(connections::router())
        .merge(endpoints::router())
        .layer(axum::middleware::from_fn(move |request: Request, next: axum::middleware::Next| {
            let csp = csp.clone();
            async move {
                let mut response = next.run(request).await;
                security_headers(response.headers_mut(), &csp);
                response
            }
        }))
        .merge(assets::router())
}

/// Scripts, styles and images from this origin only; forms may post here and to the
/// providers' OAuth pages (a connect form's answer redirects there).
fn content_security_policy(state: &AppState) -> HeaderValue {
    let mut sources = vec!["'self'".to_owned()];
    for settings in [&state.config.servicem8, &state.config.jobber] {
        let origin = settings.oauth_url.origin().ascii_serialization();
        if origin != "null" && !sources.contains(&origin) {
            sources.push(origin);
        }
    }
    let form_action = sources.join(" ");
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

fn security_headers(headers: &mut HeaderMap, csp: &HeaderValue) {
    headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Pages hold account data: never cached (assets set their own, immutable, policy).
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
}

/// The signed-in admin a page is for, and the CSRF token its forms carry. A request without a
/// session is sent to sign in, and back here afterwards.
pub struct Session {
    pub admin: AdminAuth,
    pub csrf: String,
}

impl Session {
    pub fn account(&self) -> AccountId {
        self.admin.account_id
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match auth::session(state, &parts.headers).await {
            Ok(Some((admin, csrf))) => Ok(Session { admin, csrf }),
            Ok(None) => {
                let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let target = format!(
                    "/login?next={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
                Err(Redirect::to(&target).into_response())
            }
            Err(e) => Err(PageError::from(e).into_response()),
        }
    }
}

/// A submitted form (repeated names kept, as checkboxes send them) from a signed-in admin,
/// whose CSRF token has been checked.
pub struct Posted {
    pub session: Session,
    pub form: Form,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|_| PageError::bad_request("The form was too large.").into_response())?;
        let form = Form::parse(&bytes);
        let sent = form.get("csrf").unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), session.csrf.as_bytes())) {
            return Err(PageError::Forbidden(
                "This form has expired or did not come from the dashboard. Reload the page and try again.".into(),
            )
            .into_response());
        }
        Ok(Posted { session, form })
    }
}

/// Form fields in order.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A field that is present and not blank.
    pub fn filled(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// An error page. Another account's anything is a plain 404, like a missing one.
#[derive(Debug)]
pub enum PageError {
    NotFound,
    Forbidden(String),
    BadRequest(String),
    /// An API error shown with its own status and words.
    Api(ApiError),
}

impl PageError {
    pub fn bad_request(message: &str) -> Self {
        PageError::BadRequest(message.to_owned())
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound => PageError::NotFound,
            other => PageError::Api(other),
        }
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError::Api(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: view::Chrome,
    status: u16,
    heading: String,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PageError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it belongs to another account.".to_owned(),
            ),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Something is wrong with that request", m),
            PageError::Api(e) => {
                let (status, _) = e.status_and_code();
                let message = match &e {
                    ApiError::Invalid(errors) => field_messages(errors).join(" "),
                    ApiError::Internal(cause) => {
                        tracing::error!(error = ?cause, "dashboard page failed");
                        "Something went wrong on our side; it has been logged. Try again in a moment.".to_owned()
                    }
                    ApiError::Forbidden { detail, .. }
                    | ApiError::BadRequest { detail, .. }
                    | ApiError::Conflict { detail, .. }
                    | ApiError::BadGateway { detail }
                    | ApiError::Unavailable { detail, .. } => detail.clone(),
                    ApiError::RateLimited { retry_after_secs } => {
                        format!("Too many attempts. Try again in {retry_after_secs} seconds.")
                    }
                    other => other.to_string(),
                };
                (status, status.canonical_reason().unwrap_or("Error"), message)
            }
        };
        let page = ErrorPage {
            chrome: view::Chrome::bare(heading),
            status: status.as_u16(),
            heading: heading.to_owned(),
            message,
        };
        (status, render(&page)).into_response()
    }
}

/// "Are you sure?" before a change that cannot be taken back lightly: works without script.
#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub chrome: view::Chrome,
    pub heading: String,
    pub body: String,
    pub action: String,
    pub button: String,
    pub cancel: String,
    pub danger: bool,
}

/// "field: message" for each error, as a form shows them.
pub fn field_messages(errors: &[FieldError]) -> Vec<String> {
    errors.iter().map(|e| format!("{}: {}.", e.field, e.message)).collect()
}

/// Field errors by field, for forms that show each beside its input.
pub fn errors_by_field(errors: &[FieldError]) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = HashMap::new();
    for e in errors {
        let field = e.field.split('[').next().unwrap_or(&e.field).to_owned();
        map.entry(field).and_modify(|m| m.push_str(&format!(" {}", e.message))).or_insert_with(|| e.message.clone());
    }
    map
}

/// Renders a template into an HTML response.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be rendered.").into_response()
        }
    }
}

/// After a successful form: back to a page (303, so a reload does not post again).
pub fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// A `next` target that stays on this site.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => "/".to_owned(),
    }
}
