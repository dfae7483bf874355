//! Admin authentication (DESIGN.md §7): `Authorization: Bearer ak_…` for automation, or the
//! dashboard's session cookie (HttpOnly, SameSite=Strict) with a CSRF token header on every
//! state-changing request. Always scoped to the caller's account.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clientapi_schema::{AccountId, UserId};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::{normalize_email, token_digest, verify_password};
use crate::error::ApiError;
use crate::http::extract::ApiJson;
use crate::startup::AppState;

pub const SESSION_COOKIE: &str = "clientapi_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_HOURS: i32 = 12;
/// Verified against when the email is unknown, so both answers cost one argon2 verify.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$G3Y0eEB8Xgd4V0bVJe3Q2mWm1W7d5qP1nB8cC1fJq3Y";

/// The authenticated admin: every admin handler takes one, so none can forget to scope.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth {
    pub user_id: UserId,
    pub account_id: AccountId,
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_owned())
    })
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Self::authenticate(state, &parts.method, &parts.headers).await
    }
}

impl AdminAuth {
    /// An admin token, or a session cookie (with the CSRF header on anything but a read).
    pub async fn authenticate(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<Self, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            let Some(token) = token.filter(|t| t.starts_with("ak_") && t.len() < 100) else {
                return Err(ApiError::Unauthorized);
            };
            let row: Option<(UserId, AccountId)> = sqlx::query_as(
                "select user_id, account_id from admin_tokens where token_hash = $1 and revoked_at is null",
            )
            .bind(token_digest(token))
            .fetch_optional(&state.db)
            .await?;
            let (user_id, account_id) = row.ok_or(ApiError::Unauthorized)?;
            return Ok(Self { user_id, account_id });
        }
        let (admin, csrf) = session(state, headers).await?.ok_or(ApiError::Unauthorized)?;
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !safe && sent != Some(csrf.as_str()) {
            return Err(ApiError::Forbidden {
                code: "csrf_token_invalid",
                detail: format!(
                    "State-changing requests with a session cookie need the {CSRF_HEADER} header from login."
                ),
            });
        }
        Ok(admin)
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/login", post(login)).route("/api/admin/logout", post(logout))
}

/// Sign-in attempts allowed per client address and per email (sustained per minute, burst):
/// each costs an argon2 verify, and guessing is what they would be used for.
const LOGIN_PER_MINUTE: (u32, u32) = (10, 10);
/// Addresses and emails remembered before the idle ones are forgotten.
const LOGIN_KEYS_KEPT: usize = 10_000;

/// Budgets for sign-in attempts, per client address and per email.
pub struct LoginLimits {
    by_ip: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    by_email: governor::DefaultKeyedRateLimiter<String>,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(LOGIN_PER_MINUTE.0).expect("non-zero"))
            .allow_burst(std::num::NonZeroU32::new(LOGIN_PER_MINUTE.1).expect("non-zero"));
        Self { by_ip: governor::RateLimiter::keyed(quota), by_email: governor::RateLimiter::keyed(quota) }
    }
}

impl LoginLimits {
    /// Spends one attempt for this address and email, or says how long to wait.
    fn check(&self, ip: Option<std::net::IpAddr>, email: &str) -> Result<(), ApiError> {
        // Every address and email tried is a key: forget the ones whose budget is full again,
        // so a spray of made-up emails cannot grow this without bound.
        if self.by_email.len() + self.by_ip.len() > LOGIN_KEYS_KEPT {
            self.by_email.retain_recent();
            self.by_ip.retain_recent();
        }
        let clock = governor::clock::DefaultClock::default();
        let waits = [ip.map(|ip| self.by_ip.check_key(&ip)), Some(self.by_email.check_key(&email.to_owned()))];
        for wait in waits.into_iter().flatten() {
            if let Err(not_until) = wait {
                let retry = not_until.wait_time_from(governor::clock::Clock::now(&clock)).as_secs().max(1);
                return Err(ApiError::RateLimited { retry_after_secs: retry });
            }
        }
        Ok(())
    }
}

/// A new session: the cookie's value (sent once, stored hashed) and its CSRF token.
pub struct NewSession {
    pub token: String,
    pub csrf: String,
    pub email: String,
}

/// Verifies a password (rate-limited per address and email) and opens a session.
pub async fn start_session(
    state: &AppState,
    email: &str,
    password: String,
    ip: Option<std::net::IpAddr>,
) -> Result<NewSession, ApiError> {
    let email = normalize_email(email).unwrap_or_default();
    state.login_limits.check(ip, &email)?;
    let user: Option<(UserId, String)> = sqlx::query_as("select id, password_hash from users where email = $1")
        .bind(&email)
        .fetch_optional(&state.db)
        .await?;
    let hash = user.as_ref().map_or(DUMMY_HASH.to_owned(), |(_, h)| h.clone());
    let verified = verify_password(password, hash).await;
    let Some((user_id, _)) = user.filter(|_| verified) else { return Err(ApiError::Unauthorized) };

    let token = Alphanumeric.sample_string(&mut rand::rng(), 43);
    let csrf = Alphanumeric.sample_string(&mut rand::rng(), 32);
    sqlx::query(
        "insert into sessions (user_id, token_hash, csrf_token, expires_at) values ($1, $2, $3, now() + make_interval(hours => $4))",
    )
    .bind(user_id)
    .bind(token_digest(&token))
    .bind(&csrf)
    .bind(SESSION_HOURS)
    .execute(&state.db)
    .await?;
    Ok(NewSession { token, csrf, email })
}

/// The `Set-Cookie` value carrying a session (HttpOnly, SameSite=Strict, Secure over https).
pub fn session_set_cookie(state: &AppState, token: &str) -> Result<HeaderValue, ApiError> {
    let secure = if state.config.public_url.scheme() == "https" { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.into()))
}

/// Ends the session the request's cookie names, on the server.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(cookie) = session_cookie(headers) {
        sqlx::query("delete from sessions where token_hash = $1")
            .bind(token_digest(&cookie))
            .execute(&state.db)
            .await?;
    }
    Ok(())
}

pub const CLEAR_SESSION_COOKIE: &str = "clientapi_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";

/// The signed-in session a dashboard page is served for, with its CSRF token for forms.
pub async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<(AdminAuth, String)>, ApiError> {
    let Some(cookie) = session_cookie(headers) else { return Ok(None) };
    let row: Option<(UserId, AccountId, String)> = sqlx::query_as(
        "select u.id, u.account_id, s.csrf_token from sessions s join users u on u.id = s.user_id
         where s.token_hash = $1 and s.expires_at > now()",
    )
    .bind(token_digest(&cookie))
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|(user_id, account_id, csrf)| (AdminAuth { user_id, account_id }, csrf)))
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    client_ip: crate::http::extract::ClientIp,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let session = start_session(&state, &body.email, body.password, client_ip.0).await?;
    let mut response = Json(json!({ "csrf_token": session.csrf, "email": session.email })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_set_cookie(&state, &session.token)?);
    Ok(response)
}

async fn logout(State(state): State<AppState>, _admin: AdminAuth, headers: HeaderMap) -> Result<Response, ApiError> {
    end_session(&state, &headers).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_SESSION_COOKIE));
    Ok(response)
}
