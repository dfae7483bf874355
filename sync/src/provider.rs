//! The provider abstraction: what the sync engine, the OAuth flow and the write path need from
//! a provider, shaped so that a GraphQL, cost-throttled provider with rotating refresh tokens
//! (Jobber) fits without changing the engine. Records come out already in the unified model.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clientapi_schema::model::{Record, Resource};
use clientapi_schema::secret::Secret;
use url::Url;

/// Which provider a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    ServiceM8,
    Jobber,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::ServiceM8 => "servicem8",
            ProviderKind::Jobber => "jobber",
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "servicem8" => Some(ProviderKind::ServiceM8),
            "jobber" => Some(ProviderKind::Jobber),
            _ => None,
        }
    }
}

/// One thing a provider lists incrementally. A stream can yield several unified resources
/// (a ServiceM8 job yields the job and its derived invoice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub name: &'static str,
    pub resources: &'static [Resource],
}

impl Stream {
    /// Whether the stream carries only what supplements the customer data (visits, staff,
    /// lookups): a run that cannot read it still succeeds.
    pub fn is_supplementary(&self) -> bool {
        self.resources.iter().all(|r| r.is_supplementary())
    }
}

/// A provider's published request budget, which the engine stays inside.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub per_minute: u32,
    pub per_day: u32,
}

/// Access and refresh tokens as the provider returned them.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Secret<String>,
    /// `None` when the provider did not send one (keep the old one).
    pub refresh_token: Option<Secret<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

/// One page of a stream.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<Record>,
    /// Records that could not be mapped: reported, never blocking the rest.
    pub bad_records: Vec<RecordError>,
    /// Where the next page starts; `None` on the last page.
    pub next_page: Option<String>,
    /// The newest change stamp on this page, in the provider's own cursor format.
    pub max_updated: Option<String>,
    /// Raw records on the page (mapped or not): the complete-scan id set uses it.
    pub seen_ids: Vec<String>,
}

/// A provider record that could not be mapped: which object, which id, which field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{object} {id}: field `{field}`: {message}")]
pub struct RecordError {
    pub object: String,
    pub id: String,
    pub field: String,
    pub message: String,
}

/// What went wrong talking to a provider, classified for retry decisions.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider rejected the access token")]
    Unauthorized,
    #[error("the provider refused the refresh token or code (invalid_grant)")]
    InvalidGrant,
    #[error("rate limited by the provider{}", .retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration>, daily: bool },
    #[error("provider server error (HTTP {0})")]
    Server(u16),
    #[error("timed out talking to the provider")]
    Timeout,
    #[error("could not reach the provider: {0}")]
    Transport(String),
    #[error("malformed provider response: {0}")]
    Malformed(String),
    #[error("not found at the provider")]
    NotFound,
    #[error("the provider refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the provider is not configured: {0}")]
    NotConfigured(String),
}

impl ProviderError {
    /// Worth retrying after a back-off (the same request may well succeed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { daily: false, .. }
                | ProviderError::Server(_)
                | ProviderError::Timeout
                | ProviderError::Transport(_)
                | ProviderError::Malformed(_)
        )
    }

    pub fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ProviderError::Timeout
        } else if e.is_decode() || e.is_body() {
            ProviderError::Malformed(e.to_string())
        } else {
            ProviderError::Transport(e.without_url().to_string())
        }
    }
}

/// What a provider's webhook callback says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// The subscription handshake: answer 200 with exactly this body.
    Challenge(String),
    /// These records changed, as (stream name, record id). Nothing else in a callback is
    /// trusted: the records are fetched from the provider.
    Changed(Vec<(&'static str, String)>),
}

/// Records one callback may name.
pub const MAX_CALLBACK_ENTRIES: usize = 1000;

/// The bytes of an attachment as the provider streams them.
pub struct Download {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub response: reqwest::Response,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The streams a sync visits, owners first.
    fn streams(&self) -> &'static [Stream];

    fn rate_limits(&self) -> RateLimits;

    /// The stream whose records are of `resource` (for writes and targeted re-reads).
    fn stream_for(&self, resource: Resource) -> Option<Stream> {
        self.streams().iter().copied().find(|s| s.resources.contains(&resource))
    }

    /// One page of `stream` changed after `since` (the stored watermark, `None` for all),
    /// starting at `page` (`None` for the first page).
    async fn list_page(
        &self,
        token: &Secret<String>,
        stream: Stream,
        since: Option<&str>,
        page: Option<&str>,
    ) -> Result<Page, ProviderError>;

    /// One record (and what derives from it), or `None` when the provider has no such id.
    async fn get(&self, token: &Secret<String>, stream: Stream, id: &str)
    -> Result<Option<Vec<Record>>, ProviderError>;

    /// Creates a record from a provider-shaped body; returns its new id.
    async fn create(
        &self,
        token: &Secret<String>,
        stream: Stream,
        body: serde_json::Value,
    ) -> Result<String, ProviderError>;

    async fn update(
        &self,
        token: &Secret<String>,
        stream: Stream,
        id: &str,
        body: serde_json::Value,
    ) -> Result<(), ProviderError>;

    async fn delete(&self, token: &Secret<String>, stream: Stream, id: &str) -> Result<(), ProviderError>;

    async fn download(&self, token: &Secret<String>, attachment_id: &str) -> Result<Download, ProviderError>;

    /// Stores an attachment's bytes on a created attachment record.
    async fn upload(
        &self,
        token: &Secret<String>,
        attachment_id: &str,
        file_name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ProviderError>;

    /// The job statuses the provider accepts on a write.
    fn job_statuses(&self) -> &'static [&'static str];

    /// The provider-shaped body of a validated write (unified field names, see
    /// `clientapi_schema::write`). `company` is the writing endpoint's company's provider id:
    /// records are placed under it unless the write names one of its own clients.
    fn write_body(
        &self,
        resource: Resource,
        company: &str,
        fields: &serde_json::Map<String, serde_json::Value>,
        create: bool,
    ) -> serde_json::Value;

    /// The provider-shaped body that books a new job's preferred window (cleaned UTC times) as
    /// a visit of the job, created on the visit stream; `None` when the provider cannot.
    fn window_body(&self, _job: &str, _start: &str, _end: &str) -> Option<serde_json::Value> {
        None
    }

    /// An id to create a record under, when the provider accepts ids chosen by the caller: a
    /// create whose answer is lost can then be looked up instead of blindly retried.
    fn new_id(&self) -> Option<String>;

    /// Puts an id from [`Provider::new_id`] into a create's body.
    fn set_id(&self, body: &mut serde_json::Value, id: &str);

    /// Where to send the admin to grant access.
    fn authorize_url(&self, redirect_uri: &Url, state: &str, pkce_challenge: &str) -> Result<Url, ProviderError>;

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError>;

    async fn refresh(&self, refresh_token: &Secret<String>) -> Result<TokenSet, ProviderError>;

    /// The connected account's provider id and display name.
    async fn account(&self, token: &Secret<String>) -> Result<(String, String), ProviderError>;

    /// Subscribes the provider's webhooks for every stream to `callback` (the provider checks the
    /// URL answers before it keeps a subscription); returns the objects subscribed.
    async fn subscribe_webhooks(&self, _token: &Secret<String>, _callback: &Url) -> Result<Vec<String>, ProviderError> {
        Err(ProviderError::NotConfigured("this provider sends no webhooks".into()))
    }

    /// What the provider has said that an admin should act on (kept with each run).
    fn notices(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether a record that a verified callback names and the provider no longer returns is
    /// gone (Jobber: deletes arrive only as `*_DESTROY` callbacks, with no tombstone to fetch).
    /// Otherwise the reconciliation finds hard deletes.
    fn missing_means_deleted(&self) -> bool {
        false
    }

    /// Reads a webhook callback (its headers and raw body), or says what is wrong with it.
    fn parse_callback(&self, _headers: &http::HeaderMap, _body: &[u8]) -> Result<Callback, String> {
        Err("this provider sends no webhooks".into())
    }
}
