//! The ServiceM8 adapter (REST `api_1.0`, PROVIDERS.md §1), over reqwest with configurable base
//! URLs so the same code talks to ServiceM8 or to the simulator.
//!
//! Lists go to `{api}/{object}.json?cursor=-1` and follow `x-next-cursor`; incremental scans add
//! `$filter=edit_date gt '…'` (there is no `ge`), started `OVERLAP` before the stored watermark
//! because `gt` is strict and edit dates tie; the mirror's idempotent upsert absorbs the overlap.

pub mod mapping;
pub mod webhooks;
mod write;

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDateTime, Utc};
use clientapi_schema::model::{Record, Resource};
use clientapi_schema::secret::Secret;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, TokenResponse, TokenUrl,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;
use url::Url;

use crate::provider::*;

/// How far before the stored watermark an incremental scan starts.
/// The job statuses ServiceM8 accepts.
pub const JOB_STATUSES: &[&str] = &["Quote", "Work Order", "Unsuccessful", "Completed"];

pub const OVERLAP: Duration = Duration::from_secs(10 * 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The scopes a connection asks for: reads for the mirror, writes for read-write endpoints.
pub const SCOPES: &[&str] = &[
    "read_customers",
    "manage_customers",
    "read_customer_contacts",
    "manage_customer_contacts",
    "read_jobs",
    "create_jobs",
    "manage_jobs",
    "read_job_materials",
    "manage_job_materials",
    "read_job_payments",
    "read_attachments",
    "manage_attachments",
    "read_schedule",
    "manage_schedule",
    "read_staff",
    "read_job_categories",
    "read_inventory",
    "read_tax_rates",
    "read_custom_fields",
];

/// The objects a sync visits, owners first.
pub const STREAMS: &[Stream] = &[
    Stream { name: "company", resources: &[Resource::Client, Resource::Site] },
    Stream { name: "companycontact", resources: &[Resource::Contact] },
    Stream { name: "job", resources: &[Resource::Job, Resource::Invoice] },
    Stream { name: "jobmaterial", resources: &[Resource::LineItem] },
    Stream { name: "jobpayment", resources: &[Resource::Payment] },
    Stream { name: "attachment", resources: &[Resource::Attachment] },
    Stream { name: "jobactivity", resources: &[Resource::Visit] },
    Stream { name: "staff", resources: &[Resource::Staff] },
    Stream { name: "category", resources: &[Resource::JobType] },
    Stream { name: "customfield", resources: &[Resource::CustomField] },
    Stream { name: "taxrate", resources: &[Resource::TaxRate] },
    Stream { name: "material", resources: &[Resource::Material] },
];

/// One ServiceM8 app's settings.
#[derive(Debug, Clone)]
pub struct ServiceM8Config {
    pub api_url: Url,
    pub oauth_url: Url,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    /// ServiceM8 records carry no currency; the account's (default AUD).
    pub currency: String,
    /// Per request, from connect to the last body byte.
    pub request_timeout: Duration,
    /// The account's budget, which syncs and writes share. ServiceM8 documents 180; an account
    /// granted more may say so.
    pub requests_per_minute: u32,
}

/// ServiceM8's documented per-minute limit, per add-on per account.
pub const REQUESTS_PER_MINUTE: u32 = 180;

impl ServiceM8Config {
    /// ServiceM8's own hosts, the given credentials, and default timeouts.
    pub fn new(api_url: Url, oauth_url: Url, client_id: Option<String>, client_secret: Option<Secret<String>>) -> Self {
        Self {
            api_url,
            oauth_url,
            client_id,
            client_secret,
            currency: "AUD".into(),
            request_timeout: REQUEST_TIMEOUT,
            requests_per_minute: REQUESTS_PER_MINUTE,
        }
    }
}

pub struct ServiceM8 {
    config: ServiceM8Config,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

impl ServiceM8 {
    pub fn new(config: ServiceM8Config) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("clientapi/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static reqwest configuration");
        Self { config, http }
    }

    fn url(&self, path: &str) -> Url {
        let base = self.config.api_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{path}")).expect("the API base URL is valid")
    }

    async fn send(
        &self,
        token: &Secret<String>,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request =
            self.http.request(method, url).bearer_auth(token.expose()).header("accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(ProviderError::from_reqwest)?;
        check_status(response).await
    }

    /// Reads a list body (a bare JSON array; a single object is tolerated), borrowing from the
    /// body: each object is read field by field where the mapping needs it, never built as a tree.
    fn raw_objects(bytes: &[u8]) -> Result<Vec<&RawValue>, ProviderError> {
        let parsed = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice::<&RawValue>(bytes).map(|object| vec![object]),
            Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(bytes),
            _ => return Err(ProviderError::Malformed(format!("expected a JSON array ({} bytes)", bytes.len()))),
        };
        // A truncated body is transient: the engine retries the same page.
        parsed.map_err(|e| ProviderError::Malformed(format!("invalid JSON ({} bytes): {e}", bytes.len())))
    }

    /// One item of a list body, which must be an object.
    fn object(stream: Stream, item: &RawValue) -> Result<mapping::Object<'_>, RecordError> {
        mapping::Object::parse(item).map_err(|kind| RecordError {
            object: stream.name.into(),
            id: "?".into(),
            field: "(record)".into(),
            message: format!("expected a JSON object, got {kind}"),
        })
    }

    fn map_object(&self, stream: Stream, object: &mapping::Object<'_>) -> Result<Vec<Record>, RecordError> {
        let currency = &self.config.currency;
        match stream.name {
            "company" => mapping::client(object),
            "companycontact" => mapping::contact(object).map(|r| vec![r]),
            "job" => mapping::job(object, currency),
            "jobmaterial" => mapping::line_item(object, currency).map(|r| vec![r]),
            "jobpayment" => mapping::payment(object, currency).map(|r| vec![r]),
            "attachment" => mapping::attachment(object).map(|r| vec![r]),
            "jobactivity" => mapping::visit(object).map(|r| vec![r]),
            "staff" => mapping::staff(object).map(|r| vec![r]),
            "category" => mapping::job_type(object).map(|r| vec![r]),
            "customfield" => mapping::custom_field(object).map(|r| vec![r]),
            "taxrate" => mapping::tax_rate(object).map(|r| vec![r]),
            "material" => mapping::material(object, currency).map(|r| vec![r]),
            other => Err(RecordError {
                object: other.into(),
                id: "?".into(),
                field: "(object)".into(),
                message: "not a synced object".into(),
            }),
        }
    }

    /// Single-record path: `attachment` lives at `dboattachment/{uuid}` per the spec, at
    /// `attachment/{uuid}` per the official n8n node; the adapter tries both.
    fn record_paths(stream: Stream, id: &str) -> Vec<String> {
        match stream.name {
            "attachment" => vec![format!("attachment/{id}.json"), format!("dboattachment/{id}.json")],
            name => vec![format!("{name}/{id}.json")],
        }
    }

    fn oauth_client(&self) -> Result<OAuthClient, ProviderError> {
        let (Some(id), Some(secret)) = (&self.config.client_id, &self.config.client_secret) else {
            return Err(ProviderError::NotConfigured(
                "set CLIENTAPI_SERVICEM8_CLIENT_ID and CLIENTAPI_SERVICEM8_CLIENT_SECRET".into(),
            ));
        };
        let base = self.config.oauth_url.as_str().trim_end_matches('/');
        let bad = |e: url::ParseError| ProviderError::NotConfigured(format!("ServiceM8 OAuth URL: {e}"));
        Ok(BasicClient::new(ClientId::new(id.clone()))
            .set_client_secret(ClientSecret::new(secret.expose().clone()))
            .set_auth_uri(AuthUrl::new(format!("{base}/authorize")).map_err(bad)?)
            .set_token_uri(TokenUrl::new(format!("{base}/access_token")).map_err(bad)?)
            // ServiceM8 takes client_id and client_secret in the form body.
            .set_auth_type(AuthType::RequestBody))
    }

    /// The `oauth2` crate's HTTP hook, bridged to reqwest 0.13 (its own feature pulls 0.12).
    fn oauth_http(&self) -> impl Fn(oauth2::HttpRequest) -> OAuthFuture + use<> {
        let http = self.http.clone();
        move |request| Box::pin(oauth_http(http.clone(), request))
    }

    fn token_set(response: &oauth2::basic::BasicTokenResponse) -> TokenSet {
        TokenSet {
            access_token: Secret::new(response.access_token().secret().clone()),
            refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())),
            expires_at: response.expires_in().and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| Utc::now() + d),
            scopes: response
                .scopes()
                .map(|s| {
                    s.iter().flat_map(|s| s.split([' ', ','])).filter(|s| !s.is_empty()).map(str::to_owned).collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The `oauth2` client with its authorize and token endpoints set.
type OAuthClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

type OAuthFuture = std::pin::Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send>>;

async fn oauth_http(client: reqwest::Client, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let url = Url::parse(&parts.uri.to_string()).map_err(|e| HttpError(e.to_string()))?;
    let response = client
        .request(parts.method, url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(e.without_url().to_string()))?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let bytes = response.bytes().await.map_err(|e| HttpError(e.to_string()))?;
    builder.body(bytes.to_vec()).map_err(|e| HttpError(e.to_string()))
}

fn token_error<E: std::error::Error>(e: RequestTokenError<E, oauth2::basic::BasicErrorResponse>) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) if *r.error() == BasicErrorResponseType::InvalidGrant => {
            ProviderError::InvalidGrant
        }
        RequestTokenError::ServerResponse(r) => {
            ProviderError::Rejected { status: 400, message: format!("OAuth error: {}", r.error()) }
        }
        RequestTokenError::Request(e) => ProviderError::Transport(e.to_string()),
        RequestTokenError::Parse(e, _) => ProviderError::Malformed(format!("token response: {e}")),
        RequestTokenError::Other(e) => ProviderError::Transport(e),
    }
}

/// Maps a ServiceM8 status to a classified error (bodies are `{errorCode, message}` or text).
pub(crate) async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    Err(match status {
        StatusCode::UNAUTHORIZED => ProviderError::Unauthorized,
        StatusCode::TOO_MANY_REQUESTS => {
            ProviderError::RateLimited { retry_after, daily: message.to_lowercase().contains("per day") }
        }
        StatusCode::NOT_FOUND => ProviderError::NotFound,
        s if s.is_server_error() => ProviderError::Server(s.as_u16()),
        s => ProviderError::Rejected { status: s.as_u16(), message },
    })
}

/// The `$filter` for changes after `since` (minus the overlap), in ServiceM8's format.
pub fn edit_date_filter(since: &str) -> Option<String> {
    let stamp = NaiveDateTime::parse_from_str(since, mapping::DATETIME_FORMAT).ok()?;
    let from = stamp - chrono::Duration::from_std(OVERLAP).expect("small constant");
    Some(format!("edit_date gt '{}'", from.format(mapping::DATETIME_FORMAT)))
}

#[async_trait]
impl Provider for ServiceM8 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::ServiceM8
    }

    fn streams(&self) -> &'static [Stream] {
        STREAMS
    }

    fn rate_limits(&self) -> RateLimits {
        RateLimits { per_minute: self.config.requests_per_minute, per_day: 20_000 }
    }

    async fn list_page(
        &self,
        token: &Secret<String>,
        stream: Stream,
        since: Option<&str>,
        page: Option<&str>,
    ) -> Result<Page, ProviderError> {
        let mut url = self.url(&format!("{}.json", stream.name));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("cursor", page.unwrap_or("-1"));
            if let Some(filter) = since.and_then(edit_date_filter) {
                query.append_pair("$filter", &filter);
            }
        }
        let response = self.send(token, Method::GET, url, None).await?;
        let next = response.headers().get("x-next-cursor").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.map_err(ProviderError::from_reqwest)?;
        let items = Self::raw_objects(&bytes)?;
        // The n8n node also stops when the cursor repeats: a server that echoes it would loop.
        let next_page = next.filter(|n| !n.is_empty() && Some(n.as_str()) != page && !items.is_empty());
        let mut out = Page { next_page, ..Page::default() };
        out.records.reserve(items.len());
        for item in items {
            let object = match Self::object(stream, item) {
                Ok(object) => object,
                Err(e) => {
                    out.bad_records.push(e);
                    continue;
                }
            };
            if let Some(id) = object.str("uuid") {
                out.seen_ids.push(id.into_owned());
            }
            if let Some(edited) = object.str("edit_date")
                && mapping::datetime_value(&edited).is_some()
                && out.max_updated.as_deref().is_none_or(|m| *edited > *m)
            {
                out.max_updated = Some(edited.into_owned());
            }
            match self.map_object(stream, &object) {
                Ok(records) => out.records.extend(records),
                Err(e) => out.bad_records.push(e),
            }
        }
        Ok(out)
    }

    async fn get(
        &self,
        token: &Secret<String>,
        stream: Stream,
        id: &str,
    ) -> Result<Option<Vec<Record>>, ProviderError> {
        for path in Self::record_paths(stream, id) {
            match self.send(token, Method::GET, self.url(&path), None).await {
                Ok(response) => {
                    let bytes = response.bytes().await.map_err(ProviderError::from_reqwest)?;
                    let Some(item) = Self::raw_objects(&bytes)?.into_iter().next() else { return Ok(None) };
                    return Self::object(stream, item)
                        .and_then(|object| self.map_object(stream, &object))
                        .map(Some)
                        .map_err(|e| ProviderError::Malformed(e.to_string()));
                }
                Err(ProviderError::NotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn create(&self, token: &Secret<String>, stream: Stream, body: Value) -> Result<String, ProviderError> {
        let response = self.send(token, Method::POST, self.url(&format!("{}.json", stream.name)), Some(&body)).await?;
        let supplied = body.get("uuid").and_then(Value::as_str).map(str::to_owned);
        let id = response.headers().get("x-record-uuid").and_then(|v| v.to_str().ok()).map(str::to_owned);
        expect_ok_body(response).await?;
        id.or(supplied).ok_or_else(|| ProviderError::Malformed("create answered without x-record-uuid".into()))
    }

    async fn update(&self, token: &Secret<String>, stream: Stream, id: &str, body: Value) -> Result<(), ProviderError> {
        // ServiceM8 updates with POST to the record's URL, with a partial body.
        let response =
            self.send(token, Method::POST, self.url(&format!("{}/{id}.json", stream.name)), Some(&body)).await?;
        expect_ok_body(response).await
    }

    async fn delete(&self, token: &Secret<String>, stream: Stream, id: &str) -> Result<(), ProviderError> {
        let response = self.send(token, Method::DELETE, self.url(&format!("{}/{id}.json", stream.name)), None).await?;
        expect_ok_body(response).await
    }

    async fn download(&self, token: &Secret<String>, attachment_id: &str) -> Result<Download, ProviderError> {
        let response =
            self.send(token, Method::GET, self.url(&format!("attachment/{attachment_id}.file")), None).await?;
        Ok(Download {
            content_type: response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned),
            content_length: response.content_length(),
            response,
        })
    }

    async fn upload(
        &self,
        token: &Secret<String>,
        attachment_id: &str,
        file_name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ProviderError> {
        // The file goes to the attachment record's `.file` URL as multipart field `file`.
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name.to_owned())
            .mime_str(content_type)
            .map_err(|e| ProviderError::Rejected { status: 422, message: format!("content type: {e}") })?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let response = self
            .http
            .post(self.url(&format!("attachment/{attachment_id}.file")))
            .bearer_auth(token.expose())
            .multipart(form)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        expect_ok_body(check_status(response).await?).await
    }

    fn job_statuses(&self) -> &'static [&'static str] {
        JOB_STATUSES
    }

    fn write_body(
        &self,
        resource: Resource,
        company: &str,
        fields: &serde_json::Map<String, Value>,
        create: bool,
    ) -> Value {
        write::body(resource, company, fields, create)
    }

    fn window_body(&self, job: &str, start: &str, end: &str) -> Option<Value> {
        Some(write::window_body(job, start, end))
    }

    fn new_id(&self) -> Option<String> {
        // ServiceM8 creates a record under a uuid the caller supplies.
        Some(uuid::Uuid::new_v4().to_string())
    }

    fn set_id(&self, body: &mut Value, id: &str) {
        body["uuid"] = Value::String(id.to_owned());
    }

    fn authorize_url(&self, redirect_uri: &Url, state: &str, pkce_challenge: &str) -> Result<Url, ProviderError> {
        let client_id = self.config.client_id.as_deref().ok_or_else(|| {
            ProviderError::NotConfigured(
                "set CLIENTAPI_SERVICEM8_CLIENT_ID and CLIENTAPI_SERVICEM8_CLIENT_SECRET".into(),
            )
        })?;
        let base = self.config.oauth_url.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}/authorize"))
            .map_err(|e| ProviderError::NotConfigured(format!("ServiceM8 OAuth URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("scope", &SCOPES.join(" "))
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("state", state)
            .append_pair("code_challenge", pkce_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        let client = self.oauth_client()?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| ProviderError::NotConfigured(format!("redirect URL: {e}")))?;
        let http = self.oauth_http();
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&http)
            .await
            .map_err(token_error)?;
        Ok(Self::token_set(&response))
    }

    async fn refresh(&self, refresh_token: &Secret<String>) -> Result<TokenSet, ProviderError> {
        let client = self.oauth_client()?;
        let token = RefreshToken::new(refresh_token.expose().clone());
        let http = self.oauth_http();
        let response = client.exchange_refresh_token(&token).request_async(&http).await.map_err(token_error)?;
        Ok(Self::token_set(&response))
    }

    async fn account(&self, token: &Secret<String>) -> Result<(String, String), ProviderError> {
        let response = self.send(token, Method::GET, self.url("vendor.json"), None).await?;
        let bytes = response.bytes().await.map_err(ProviderError::from_reqwest)?;
        let items = Self::raw_objects(&bytes)?;
        let vendor = items.first().ok_or_else(|| ProviderError::Malformed("vendor.json is empty".into()))?;
        let vendor = mapping::Object::parse(vendor)
            .map_err(|kind| ProviderError::Malformed(format!("expected the vendor object, got {kind}")))?;
        let id = vendor.str("uuid").ok_or_else(|| ProviderError::Malformed("vendor has no uuid".into()))?;
        let name = vendor.str("name").unwrap_or("ServiceM8 account".into());
        Ok((id.into_owned(), name.into_owned()))
    }

    async fn subscribe_webhooks(&self, token: &Secret<String>, callback: &Url) -> Result<Vec<String>, ProviderError> {
        let url = webhooks::subscriptions_url(&self.config.api_url);
        let mut subscribed = Vec::new();
        for (object, fields) in webhooks::WATCHED_FIELDS {
            // The same unique id again updates the subscription rather than adding one.
            let unique_id = format!("clientapi-{object}");
            let form = webhooks::subscription_form(object, fields, callback, &unique_id);
            let response = self
                .http
                .post(url.clone())
                .bearer_auth(token.expose())
                .header("accept", "application/json")
                .form(&form)
                .send()
                .await
                .map_err(ProviderError::from_reqwest)?;
            let response = match check_status(response).await {
                Err(ProviderError::NotFound | ProviderError::Rejected { status: 403, .. })
                    if STREAMS.iter().any(|s| s.name == *object && s.is_supplementary()) =>
                {
                    continue;
                }
                other => other?,
            };
            let status = response.status().as_u16();
            let body = response.text().await.map_err(ProviderError::from_reqwest)?;
            match webhooks::subscription_answer(status, &body) {
                Ok(()) => subscribed.push((*object).to_owned()),
                // Like its sync, a supplementary object the account refuses is left out.
                Err(ProviderError::Rejected { .. })
                    if STREAMS.iter().any(|s| s.name == *object && s.is_supplementary()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(subscribed)
    }

    fn parse_callback(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<Callback, String> {
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        webhooks::parse(content_type, body)
    }
}

/// Writes answer `{"errorCode":0,"message":"OK"}`; a non-zero code is a refusal.
async fn expect_ok_body(response: reqwest::Response) -> Result<(), ProviderError> {
    let status = response.status().as_u16();
    let text = response.text().await.map_err(ProviderError::from_reqwest)?;
    match serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("errorCode").and_then(Value::as_i64)) {
        Some(0) | None => Ok(()),
        Some(code) => Err(ProviderError::Rejected {
            status,
            message: serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| format!("error code {code}")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incremental_filter_starts_an_overlap_before_the_watermark_with_strict_gt() {
        assert_eq!(edit_date_filter("2026-03-01 12:00:00").unwrap(), "edit_date gt '2026-03-01 11:50:00'");
        assert_eq!(edit_date_filter("garbage"), None);
    }
}
