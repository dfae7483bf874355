//! The Jobber adapter (GraphQL, PROVIDERS.md §2), over reqwest with configurable URLs so the
//! same code talks to Jobber or to the simulator.
//!
//! - **Requests**: `POST {api}` with the pinned `X-JOBBER-GRAPHQL-VERSION`. Errors arrive as
//!   HTTP 200 with `errors[].extensions.code`; `extensions.versioning.warning` is kept and shown in
//!   sync status ([`Jobber::version_warning`]).
//! - **Cost**: every query is priced before it is sent ([`graphql::query_cost`]) and waits until
//!   the account's leaky bucket, as the last `extensions.cost.throttleStatus` left it and
//!   restored since, holds that much; so a sync paces itself to the bucket instead of being
//!   answered `THROTTLED`. If one comes anyway (another app shares nothing, but a guess can be
//!   wrong), the answer's own figures say how long to wait, once per attempt, a few attempts.
//!   The 2,500 requests / 300 s guard is the engine's per-minute budget (500).
//! - **Incremental**: clients and invoices filter on `updatedAt` (inclusive, started
//!   `OVERLAP` before the watermark); jobs cannot, so they are read newest first by
//!   `UPDATED_AT` and the scan stops at the first job older than the watermark. Line items,
//!   visits and payment records come nested in their job or invoice (whose `updatedAt` they
//!   bump); a nested connection longer than one page is read to its end by id.
//! - **Deletes**: Jobber has no tombstones. A full scan (reconciliation) finds what is gone;
//!   archived clients are tombstones.
//! - **Tokens**: no scopes, no PKCE; the expiry is the access token's JWT `exp`; refresh tokens
//!   rotate, and the token manager commits the new one before the new access token is used.

pub mod graphql;
pub mod mapping;
pub mod webhooks;
pub mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use clientapi_schema::model::{Record, Resource};
use clientapi_schema::secret::Secret;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use crate::provider::*;
use mapping::Obj;

/// The API version this adapter is written against (`X-JOBBER-GRAPHQL-VERSION`).
pub const GRAPHQL_VERSION: &str = "2026-05-12";
/// How far before the stored watermark an incremental scan starts.
pub const OVERLAP: Duration = Duration::from_secs(10 * 60);
/// Jobber's documented bucket, assumed until an answer states it.
pub const BUCKET_MAXIMUM: f64 = 10_000.0;
pub const BUCKET_RESTORE_PER_SECOND: f64 = 500.0;
/// The DDoS guard, 2,500 requests per 300 s, as a per-minute budget.
pub const REQUESTS_PER_MINUTE: u32 = 500;
/// How long a query waiting for the bucket sleeps before looking again (answers arriving
/// meanwhile may say more is available).
const RECHECK_PACING: Duration = Duration::from_millis(250);
/// How many times a `THROTTLED` answer is waited out before the run backs off.
const THROTTLE_ATTEMPTS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes per page: each keeps a page's price well under the bucket (see the cost test).
pub const CLIENTS_FIRST: u64 = 50;
pub const JOBS_FIRST: u64 = 20;
pub const INVOICES_FIRST: u64 = 40;
/// Nested nodes per parent on a list page, and per follow-up page.
const NESTED_FIRST: u64 = 10;
const NESTED_MORE: u64 = 100;

pub const STREAMS: &[Stream] = &[
    Stream { name: "clients", resources: &[Resource::Client, Resource::Contact, Resource::Site] },
    Stream { name: "jobs", resources: &[Resource::Job, Resource::LineItem, Resource::Visit] },
    Stream { name: "invoices", resources: &[Resource::Invoice, Resource::Payment] },
];

pub const CLIENT_NODE: &str = "fragment ClientNode on Client {
  id name firstName lastName companyName isCompany isArchived title createdAt updatedAt
  billingAddress { street1 street2 city province postalCode country }
  emails { address description primary }
  phones { number description primary }
  properties { id address { street1 street2 city province postalCode country } }
}";
pub const LINE_ITEM_NODE: &str =
    "fragment LineItemNode on JobLineItem { id name description quantity unitPrice totalPrice createdAt updatedAt }";
pub const VISIT_NODE: &str = "fragment VisitNode on Visit { id title startAt endAt completedAt createdAt assignedUsers(first: 1) { nodes { id } } }";
pub const PAYMENT_NODE: &str = "fragment PaymentNode on PaymentRecord { id amount entryDate details }";

fn job_node() -> String {
    format!(
        "fragment JobNode on Job {{
  id jobNumber title instructions jobStatus startAt endAt completedAt total createdAt updatedAt
  client {{ id }}
  property {{ id address {{ street1 street2 city province postalCode country }} }}
  lineItems(first: {NESTED_FIRST}) {{ nodes {{ ...LineItemNode }} pageInfo {{ hasNextPage endCursor }} }}
  visits(first: {NESTED_FIRST}) {{ nodes {{ ...VisitNode }} pageInfo {{ hasNextPage endCursor }} }}
}}
{LINE_ITEM_NODE}
{VISIT_NODE}"
    )
}

fn invoice_node() -> String {
    format!(
        "fragment InvoiceNode on Invoice {{
  id invoiceNumber invoiceStatus subject issuedDate dueDate receivedDate createdAt updatedAt
  client {{ id }}
  jobs(first: 1) {{ nodes {{ id }} }}
  amounts {{ subtotal taxAmount total invoiceBalance paymentsTotal }}
  paymentRecords(first: {NESTED_FIRST}) {{ nodes {{ ...PaymentNode }} pageInfo {{ hasNextPage endCursor }} }}
}}
{PAYMENT_NODE}"
    )
}

/// The list query of a stream.
pub fn list_query(stream: &str) -> String {
    match stream {
        "clients" => format!(
            "query Clients($first: Int!, $after: String, $filter: ClientFilterAttributes) {{
  clients(first: $first, after: $after, filter: $filter) {{ nodes {{ ...ClientNode }} pageInfo {{ hasNextPage endCursor }} }}
}}
{CLIENT_NODE}"
        ),
        "jobs" => format!(
            "query Jobs($first: Int!, $after: String) {{
  jobs(first: $first, after: $after, sort: [{{key: UPDATED_AT, direction: DESCENDING}}]) {{
    nodes {{ ...JobNode }} pageInfo {{ hasNextPage endCursor }}
  }}
}}
{}",
            job_node()
        ),
        _ => format!(
            "query Invoices($first: Int!, $after: String, $filter: InvoiceFilterAttributes) {{
  invoices(first: $first, after: $after, filter: $filter) {{ nodes {{ ...InvoiceNode }} pageInfo {{ hasNextPage endCursor }} }}
}}
{}",
            invoice_node()
        ),
    }
}

/// The one-record query of a stream.
fn get_query(stream: &str) -> String {
    match stream {
        "clients" => format!("query Client($id: EncodedId!) {{ client(id: $id) {{ ...ClientNode }} }}\n{CLIENT_NODE}"),
        "jobs" => format!("query Job($id: EncodedId!) {{ job(id: $id) {{ ...JobNode }} }}\n{}", job_node()),
        _ => format!("query Invoice($id: EncodedId!) {{ invoice(id: $id) {{ ...InvoiceNode }} }}\n{}", invoice_node()),
    }
}

/// The rest of a nested connection (`lineItems`, `visits`, `paymentRecords`) of one parent.
fn more_query(parent: &str, field: &str, fragment: &str, definition: &str) -> String {
    format!(
        "query More($id: EncodedId!, $after: String) {{
  {parent}(id: $id) {{ {field}(first: {NESTED_MORE}, after: $after) {{ nodes {{ ...{fragment} }} pageInfo {{ hasNextPage endCursor }} }} }}
}}
{definition}"
    )
}

#[derive(Debug, Clone)]
pub struct JobberConfig {
    /// The GraphQL endpoint (`https://api.getjobber.com/api/graphql`).
    pub api_url: Url,
    /// The OAuth base (`https://api.getjobber.com/api/oauth`): `/authorize` and `/token`.
    pub oauth_url: Url,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    pub graphql_version: String,
    /// Jobber amounts carry no currency; the account's.
    pub currency: String,
    pub request_timeout: Duration,
    pub requests_per_minute: u32,
}

impl JobberConfig {
    pub fn new(api_url: Url, oauth_url: Url, client_id: Option<String>, client_secret: Option<Secret<String>>) -> Self {
        Self {
            api_url,
            oauth_url,
            client_id,
            client_secret,
            graphql_version: GRAPHQL_VERSION.into(),
            currency: "USD".into(),
            request_timeout: REQUEST_TIMEOUT,
            requests_per_minute: REQUESTS_PER_MINUTE,
        }
    }
}

/// One account's query-cost bucket as this process last knew it.
#[derive(Debug, Clone)]
struct Bucket {
    available: f64,
    maximum: f64,
    restore: f64,
    at: Instant,
    /// Queries sent and not yet answered: (when sent, price reserved). An answer's
    /// `throttleStatus` already counts those sent before it, not those sent after.
    in_flight: Vec<(Instant, f64)>,
    /// When the query whose answer last set the figures was sent: an answer to a query sent
    /// before it (priced before it, as a rule) holds older figures and is not taken.
    figures_sent: Option<Instant>,
}

impl Bucket {
    fn now(&self) -> f64 {
        (self.available + self.at.elapsed().as_secs_f64() * self.restore).min(self.maximum)
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            available: BUCKET_MAXIMUM,
            maximum: BUCKET_MAXIMUM,
            restore: BUCKET_RESTORE_PER_SECOND,
            at: Instant::now(),
            in_flight: Vec::new(),
            figures_sent: None,
        }
    }
}

/// What the adapter has counted, for tests and the bench.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    pub queries: u64,
    pub cost: u64,
    pub throttled: u64,
    /// Time spent waiting for the bucket before sending.
    pub paced_ms: u64,
}

pub struct Jobber {
    config: JobberConfig,
    http: reqwest::Client,
    buckets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Bucket>>>>,
    version_warning: Mutex<Option<String>>,
    counters: Mutex<Counters>,
    /// Line items this process created, by id: their job (their read-back reads it).
    line_item_jobs: Mutex<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct GqlResponse<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    errors: Vec<GqlError>,
    #[serde(default)]
    extensions: Extensions,
}

#[derive(Deserialize)]
struct GqlError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    extensions: Option<ErrorExtensions>,
}

#[derive(Deserialize)]
struct ErrorExtensions {
    code: Option<String>,
}

#[derive(Deserialize, Default)]
struct Extensions {
    cost: Option<Cost>,
    versioning: Option<Versioning>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    requested_query_cost: Option<f64>,
    throttle_status: Option<ThrottleStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThrottleStatus {
    maximum_available: f64,
    currently_available: f64,
    restore_rate: f64,
}

#[derive(Deserialize)]
struct Versioning {
    warning: Option<String>,
}

/// The `exp` of a JWT access token (its payload is not verified: only Jobber can, and the
/// expiry is only a hint for refreshing ahead; a 401 still refreshes).
pub fn jwt_expiry(token: &str) -> Option<DateTime<Utc>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    DateTime::from_timestamp(claims.get("exp")?.as_i64()?, 0)
}

/// Which bucket a token draws on: the JWT's account when it names one, else the token itself.
fn bucket_key(token: &str) -> String {
    let account = token.split('.').nth(1).and_then(|p| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok()?;
        let claims: Value = serde_json::from_slice(&bytes).ok()?;
        claims.get("account_id").map(Value::to_string)
    });
    account.unwrap_or_else(|| format!("{:x}", Sha256::digest(token.as_bytes())))
}

impl Jobber {
    pub fn new(config: JobberConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("clientapi/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static reqwest configuration");
        Self {
            config,
            http,
            buckets: Mutex::default(),
            version_warning: Mutex::default(),
            counters: Mutex::default(),
            line_item_jobs: Mutex::default(),
        }
    }

    pub fn config(&self) -> &JobberConfig {
        &self.config
    }

    /// The last `extensions.versioning.warning` Jobber sent: the pinned version is going away.
    pub fn version_warning(&self) -> Option<String> {
        self.version_warning.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn bucket(&self, token: &Secret<String>) -> Arc<tokio::sync::Mutex<Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).entry(bucket_key(token.expose())).or_default().clone()
    }

    /// Runs one GraphQL operation, paced to the cost bucket; returns `data`'s JSON text.
    pub async fn query(&self, token: &Secret<String>, query: &str, variables: Value) -> Result<String, ProviderError> {
        let doc = graphql::parse(query).map_err(|e| ProviderError::Malformed(format!("adapter query: {e}")))?;
        let op = graphql::operation(&doc, None).map_err(ProviderError::Malformed)?;
        let vars = variables.as_object().cloned().unwrap_or_default();
        let cost = graphql::query_cost(&doc, op, &vars) as f64;
        let bucket = self.bucket(token);
        let body = json!({"query": query, "variables": variables});
        for attempt in 0..=THROTTLE_ATTEMPTS {
            // Wait until the bucket holds the price, then reserve it. The bucket is not held while
            // waiting: an answer that arrives meanwhile (saying what was really charged) shortens
            // the wait.
            let sent = loop {
                let mut b = bucket.lock().await;
                if cost > b.maximum {
                    return Err(ProviderError::Rejected {
                        status: 400,
                        message: format!("a query costing {cost} can never run under a bucket of {}", b.maximum),
                    });
                }
                let short = cost - b.now();
                if short <= 0.0 {
                    b.available = b.now() - cost;
                    let now = Instant::now();
                    b.at = now;
                    b.in_flight.push((now, cost));
                    break now;
                }
                let wait = Duration::from_secs_f64(short / b.restore.max(1.0)).min(RECHECK_PACING);
                drop(b);
                self.counters.lock().unwrap_or_else(|e| e.into_inner()).paced_ms += wait.as_millis() as u64;
                tokio::time::sleep(wait).await;
            };
            let answered = |b: &mut Bucket| {
                if let Some(at) = b.in_flight.iter().position(|(t, c)| *t == sent && *c == cost) {
                    b.in_flight.remove(at);
                }
            };
            let answer = async {
                let response = self
                    .http
                    .post(self.config.api_url.clone())
                    .bearer_auth(token.expose())
                    .header("X-JOBBER-GRAPHQL-VERSION", &self.config.graphql_version)
                    .json(&body)
                    .send()
                    .await
                    .map_err(ProviderError::from_reqwest)?;
                // Jobber priced the query before it began to answer: its figures hold from here
                // on, not from when the whole body has arrived and been read.
                let arrived = Instant::now();
                let response = crate::servicem8::check_status(response).await?;
                Ok((arrived, response.bytes().await.map_err(ProviderError::from_reqwest)?))
            }
            .await;
            let (arrived, bytes) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    answered(&mut *bucket.lock().await);
                    return Err(e);
                }
            };
            let parsed: GqlResponse<'_> = match serde_json::from_slice(&bytes) {
                Ok(parsed) => parsed,
                Err(e) => {
                    // Priced or not, the query is no longer in flight.
                    answered(&mut *bucket.lock().await);
                    return Err(ProviderError::Malformed(format!("invalid JSON ({} bytes): {e}", bytes.len())));
                }
            };
            {
                let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
                counters.queries += 1;
                counters.cost += cost as u64;
            }
            if let Some(warning) = parsed.extensions.versioning.and_then(|v| v.warning) {
                let mut kept = self.version_warning.lock().unwrap_or_else(|e| e.into_inner());
                if kept.as_deref() != Some(warning.as_str()) {
                    tracing::warn!(%warning, version = %self.config.graphql_version, "Jobber says the pinned API version is going away");
                    *kept = Some(warning);
                }
            }
            let mut requested = cost;
            {
                let mut b = bucket.lock().await;
                answered(&mut b);
                if let Some(c) = parsed.extensions.cost {
                    requested = c.requested_query_cost.unwrap_or(cost);
                    if let Some(t) = c.throttle_status.filter(|_| b.figures_sent.is_none_or(|f| f <= sent)) {
                        // The figures are as of when Jobber priced this query, some time between
                        // sending and the answer's first byte: they restore from that byte (never
                        // sooner, so no query is sent before the bucket holds its price), and
                        // queries sent after this one are not in them yet.
                        let later: f64 = b.in_flight.iter().filter(|(t, _)| *t > sent).map(|(_, c)| c).sum();
                        b.available = t.currently_available - later;
                        b.maximum = t.maximum_available;
                        b.restore = t.restore_rate;
                        b.at = arrived;
                        b.figures_sent = Some(sent);
                    }
                }
            }
            let code = |e: &GqlError| e.extensions.as_ref().and_then(|x| x.code.clone()).unwrap_or_default();
            if let Some(error) = parsed.errors.first() {
                match code(error).as_str() {
                    "THROTTLED" => {
                        self.counters.lock().unwrap_or_else(|e| e.into_inner()).throttled += 1;
                        let b = bucket.lock().await.clone();
                        let wait =
                            Duration::from_secs_f64(((requested - b.now()).max(0.0) / b.restore.max(1.0)).max(0.05));
                        tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "Jobber answered THROTTLED");
                        if attempt == THROTTLE_ATTEMPTS {
                            return Err(ProviderError::RateLimited { retry_after: Some(wait), daily: false });
                        }
                        continue; // the bucket, now known, makes the next attempt wait
                    }
                    "UNAUTHENTICATED" => return Err(ProviderError::Unauthorized),
                    _ => {
                        let message = parsed.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
                        return Err(ProviderError::Rejected { status: 400, message });
                    }
                }
            }
            return parsed.data.map(|d| d.get().to_owned()).ok_or_else(|| ProviderError::Malformed("no data".into()));
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// [`Self::query`], its `data` parsed.
    async fn query_value(&self, token: &Secret<String>, query: &str, variables: Value) -> Result<Value, ProviderError> {
        let data = self.query(token, query, variables).await?;
        serde_json::from_str(&data).map_err(|e| ProviderError::Malformed(e.to_string()))
    }

    fn map_node(&self, stream: &str, node: &Obj<'_>) -> Result<Vec<Record>, RecordError> {
        match stream {
            "clients" => mapping::client(node),
            "jobs" => mapping::job(node, &self.config.currency),
            _ => mapping::invoice(node, &self.config.currency),
        }
    }

    /// The nested connections a node of `stream` carries, as (parent query field, field,
    /// fragment name, fragment definition).
    fn nested(stream: &str) -> &'static [(&'static str, &'static str, &'static str, &'static str)] {
        match stream {
            "jobs" => {
                &[("job", "lineItems", "LineItemNode", LINE_ITEM_NODE), ("job", "visits", "VisitNode", VISIT_NODE)]
            }
            "invoices" => &[("invoice", "paymentRecords", "PaymentNode", PAYMENT_NODE)],
            _ => &[],
        }
    }

    /// One node's records, with every nested connection read to its end.
    async fn node_records(
        &self,
        token: &Secret<String>,
        stream: &str,
        raw: &RawValue,
    ) -> Result<Result<Vec<Record>, RecordError>, ProviderError> {
        let node = match Obj::parse(raw) {
            Ok(node) => node,
            Err(m) => {
                return Ok(Err(RecordError {
                    object: stream.into(),
                    id: "?".into(),
                    field: "(record)".into(),
                    message: m,
                }));
            }
        };
        let mut records = match self.map_node(stream, &node) {
            Ok(records) => records,
            Err(e) => return Ok(Err(e)),
        };
        let Some(id) = node.str("id") else { return Ok(Ok(records)) };
        for (parent, field, fragment, definition) in Self::nested(stream) {
            let (mut more, mut after) = node.page_info(field);
            let query = more_query(parent, field, fragment, definition);
            while more {
                let data = self.query_value(token, &query, json!({"id": id, "after": after})).await?;
                let connection = RawValue::from_string(data[*parent][*field].to_string()).expect("JSON");
                let page = Obj::parse(&connection).map_err(ProviderError::Malformed)?;
                let parent_record = records[0].clone();
                for item in page.items("nodes") {
                    let mapped = match *field {
                        "lineItems" => mapping::line_item(item, &id, &parent_record, &self.config.currency),
                        "visits" => mapping::visit(item, &id, &parent_record),
                        _ => mapping::payment(item, &parent_record, &self.config.currency),
                    };
                    match mapped {
                        Ok(record) => records.push(record),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                (more, after) = page.page_info_self();
            }
        }
        Ok(Ok(records))
    }
}

fn since_minus_overlap(since: &str) -> Option<DateTime<Utc>> {
    mapping::parse_datetime(since).map(|t| t - chrono::Duration::from_std(OVERLAP).expect("small constant"))
}

#[async_trait]
impl Provider for Jobber {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Jobber
    }

    fn streams(&self) -> &'static [Stream] {
        STREAMS
    }

    fn rate_limits(&self) -> RateLimits {
        RateLimits { per_minute: self.config.requests_per_minute, per_day: u32::MAX }
    }

    async fn list_page(
        &self,
        token: &Secret<String>,
        stream: Stream,
        since: Option<&str>,
        page: Option<&str>,
    ) -> Result<Page, ProviderError> {
        let from = since.and_then(since_minus_overlap);
        let first = match stream.name {
            "clients" => CLIENTS_FIRST,
            "jobs" => JOBS_FIRST,
            _ => INVOICES_FIRST,
        };
        let mut variables = json!({"first": first, "after": page});
        if let (Some(from), true) = (from, stream.name != "jobs") {
            variables["filter"] = json!({"updatedAt": {"after": from.format(mapping::WATERMARK_FORMAT).to_string()}});
        }
        let data = self.query(token, &list_query(stream.name), variables).await?;
        let data: HashMap<&str, &RawValue> =
            serde_json::from_str(&data).map_err(|e| ProviderError::Malformed(e.to_string()))?;
        let connection = data
            .get(stream.name)
            .and_then(|c| Obj::parse(c).ok())
            .ok_or_else(|| ProviderError::Malformed(format!("no `{}` connection in the answer", stream.name)))?;
        let (mut has_next, end_cursor) = connection.page_info_self();
        let mut out = Page::default();
        for raw in connection.items("nodes") {
            let node = Obj::parse(raw).ok();
            let updated = node.as_ref().and_then(mapping::watermark);
            // Jobs come newest first: the first one older than the watermark ends the scan.
            if stream.name == "jobs"
                && let (Some(from), Some(at)) = (from, node.as_ref().and_then(|n| n.str("updatedAt")))
                && mapping::parse_datetime(&at).is_some_and(|at| at < from)
            {
                has_next = false;
                break;
            }
            if let Some(updated) = updated
                && out.max_updated.as_ref().is_none_or(|m| *m < updated)
            {
                out.max_updated = Some(updated);
            }
            match self.node_records(token, stream.name, raw).await? {
                Ok(records) => {
                    out.seen_ids.extend(records.iter().map(|r| r.external_id.clone()));
                    out.records.extend(records);
                }
                Err(e) => {
                    out.seen_ids.extend(node.and_then(|n| n.str("id")));
                    out.bad_records.push(e);
                }
            }
        }
        out.next_page = if has_next { end_cursor } else { None };
        Ok(out)
    }

    async fn get(
        &self,
        token: &Secret<String>,
        stream: Stream,
        id: &str,
    ) -> Result<Option<Vec<Record>>, ProviderError> {
        let job = self.line_item_jobs.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
        let id = job.as_deref().filter(|_| stream.name == "jobs").unwrap_or(id);
        let data = self.query(token, &get_query(stream.name), json!({"id": id})).await?;
        let data: HashMap<&str, &RawValue> =
            serde_json::from_str(&data).map_err(|e| ProviderError::Malformed(e.to_string()))?;
        let field = match stream.name {
            "clients" => "client",
            "jobs" => "job",
            _ => "invoice",
        };
        let Some(raw) = data.get(field).filter(|r| r.get() != "null") else { return Ok(None) };
        match self.node_records(token, stream.name, raw).await? {
            Ok(records) => Ok(Some(records)),
            Err(e) => Err(ProviderError::Malformed(e.to_string())),
        }
    }

    async fn create(&self, token: &Secret<String>, _stream: Stream, body: Value) -> Result<String, ProviderError> {
        let (query, mut variables, path) = write::mutation(&body, None)?;
        if body["mutation"] == "jobCreate" && variables["input"]["propertyId"].is_null() {
            // A Jobber job lives at a property: the client's first, unless the write named a site.
            let data = self
                .query_value(
                    token,
                    "query Properties($id: EncodedId!) { client(id: $id) { properties { id } } }",
                    json!({"id": body["client"]}),
                )
                .await?;
            let property = data["client"]["properties"][0]["id"].as_str().ok_or_else(|| ProviderError::Rejected {
                status: 422,
                message: "the client has no property to put a job at; add a site (property) in Jobber first".into(),
            })?;
            variables["input"]["propertyId"] = json!(property);
        }
        let data = self.query_value(token, &query, variables).await?;
        let id = write::outcome(&data, path)?;
        if let Some(job) = body["job"].as_str() {
            // Jobber has no query for one line item: its read-back reads its job.
            let mut known = self.line_item_jobs.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() > 10_000 {
                known.clear();
            }
            known.insert(id.clone(), job.to_owned());
        }
        Ok(id)
    }

    async fn update(
        &self,
        token: &Secret<String>,
        _stream: Stream,
        id: &str,
        body: Value,
    ) -> Result<(), ProviderError> {
        let (query, variables, path) = write::mutation(&body, Some(id))?;
        let data = self.query_value(token, &query, variables).await?;
        write::outcome(&data, path).map(drop)
    }

    async fn delete(&self, _token: &Secret<String>, _stream: Stream, _id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Rejected { status: 422, message: "a Jobber connection does not offer deletes".into() })
    }

    async fn download(&self, _token: &Secret<String>, _attachment_id: &str) -> Result<Download, ProviderError> {
        Err(ProviderError::NotFound)
    }

    async fn upload(
        &self,
        _token: &Secret<String>,
        _attachment_id: &str,
        _file_name: &str,
        _content_type: &str,
        _bytes: Vec<u8>,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::NotFound)
    }

    fn job_statuses(&self) -> &'static [&'static str] {
        write::JOB_STATUSES
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

    fn new_id(&self) -> Option<String> {
        None
    }

    fn set_id(&self, _body: &mut Value, _id: &str) {}

    fn authorize_url(&self, redirect_uri: &Url, state: &str, _pkce_challenge: &str) -> Result<Url, ProviderError> {
        let client_id = self.config.client_id.as_deref().ok_or_else(not_configured)?;
        // Jobber takes no scope (fixed on the app) and no PKCE.
        let mut url = oauth_endpoint(&self.config.oauth_url, "authorize")?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("state", state);
        Ok(url)
    }

    async fn exchange_code(
        &self,
        code: &str,
        _pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &Secret<String>) -> Result<TokenSet, ProviderError> {
        self.token_request(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())]).await
    }

    async fn account(&self, token: &Secret<String>) -> Result<(String, String), ProviderError> {
        let data = self.query_value(token, "query Account { account { id name } }", json!({})).await?;
        let id = data["account"]["id"].as_str().ok_or_else(|| ProviderError::Malformed("account has no id".into()))?;
        let name = data["account"]["name"].as_str().unwrap_or("Jobber account");
        Ok((id.to_owned(), name.to_owned()))
    }

    fn missing_means_deleted(&self) -> bool {
        true
    }

    async fn subscribe_webhooks(&self, token: &Secret<String>, callback: &Url) -> Result<Vec<String>, ProviderError> {
        let mut subscribed = Vec::new();
        for (topic, _) in webhooks::TOPICS {
            let data = self.query_value(
                    token,
                    "mutation Subscribe($input: WebhookEndpointCreateInput!) { webhookEndpointCreate(input: $input) { webhookEndpoint { id } userErrors { message path } } }",
                    json!({"input": {"topic": topic, "url": callback.as_str()}}),
                ).await?;
            write::outcome(&data, &["webhookEndpointCreate", "webhookEndpoint", "id"])?;
            subscribed.push((*topic).to_owned());
        }
        Ok(subscribed)
    }

    fn parse_callback(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<Callback, String> {
        let secret = self.config.client_secret.as_ref().ok_or("no Jobber client secret is configured")?;
        let signature = headers.get(webhooks::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        webhooks::parse(secret.expose(), signature, body)
    }

    fn notices(&self) -> Vec<String> {
        self.version_warning()
            .map(|w| format!("Jobber API version {} (X-JOBBER-GRAPHQL-VERSION): {w}", self.config.graphql_version))
            .into_iter()
            .collect()
    }
}

fn not_configured() -> ProviderError {
    ProviderError::NotConfigured("set CLIENTAPI_JOBBER_CLIENT_ID and CLIENTAPI_JOBBER_CLIENT_SECRET".into())
}

fn oauth_endpoint(base: &Url, path: &str) -> Result<Url, ProviderError> {
    Url::parse(&format!("{}/{path}", base.as_str().trim_end_matches('/')))
        .map_err(|e| ProviderError::NotConfigured(format!("Jobber OAuth URL: {e}")))
}

impl Jobber {
    /// `POST {oauth}/token`, form-encoded with the app's credentials; the answer has no
    /// `expires_in`: the expiry is the access token's JWT `exp`.
    async fn token_request(&self, grant: &[(&str, &str)]) -> Result<TokenSet, ProviderError> {
        let (Some(id), Some(secret)) = (&self.config.client_id, &self.config.client_secret) else {
            return Err(not_configured());
        };
        let mut form: Vec<(&str, &str)> = vec![("client_id", id), ("client_secret", secret.expose())];
        form.extend_from_slice(grant);
        let response = self
            .http
            .post(oauth_endpoint(&self.config.oauth_url, "token")?)
            .form(&form)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or_default();
            return Err(match (status.as_u16(), error) {
                (_, "invalid_client") => {
                    ProviderError::Rejected { status: 401, message: "OAuth error: invalid_client".into() }
                }
                (400 | 401, _) => ProviderError::InvalidGrant,
                (s, _) if s >= 500 => ProviderError::Server(s),
                (s, e) => ProviderError::Rejected { status: s, message: format!("OAuth error: {e}") },
            });
        }
        let access = body["access_token"].as_str().ok_or_else(|| ProviderError::Malformed("no access_token".into()))?;
        if let Some(warning) = body["warning"].as_str() {
            tracing::warn!(%warning, "Jobber's token answer carries a warning (is refresh-token rotation off?)");
        }
        Ok(TokenSet {
            access_token: Secret::new(access.to_owned()),
            refresh_token: body["refresh_token"].as_str().map(|t| Secret::new(t.to_owned())),
            expires_at: jwt_expiry(access),
            scopes: Vec::new(),
        })
    }
}

impl Obj<'_> {
    /// This connection's own `pageInfo`.
    fn page_info_self(&self) -> (bool, Option<String>) {
        match self.obj("pageInfo") {
            Some(info) => (info.get("hasNextPage").is_some_and(|v| v.get() == "true"), info.str("endCursor")),
            None => (false, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_priced_well_under_the_bucket() {
        for (stream, first) in [("clients", CLIENTS_FIRST), ("jobs", JOBS_FIRST), ("invoices", INVOICES_FIRST)] {
            let query = list_query(stream);
            let doc = graphql::parse(&query).unwrap();
            let op = graphql::operation(&doc, None).unwrap();
            let vars = json!({"first": first}).as_object().cloned().unwrap();
            let cost = graphql::query_cost(&doc, op, &vars);
            assert!(cost <= 5_000, "{stream}: {cost}");
            assert!(cost >= first, "{stream}: {cost}");
        }
    }

    #[test]
    fn the_expiry_is_the_jwt_exp() {
        let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token =
            format!("{}.{}.sig", enc(&json!({"alg": "HS256"})), enc(&json!({"exp": 1_900_000_000, "account_id": 7})));
        assert_eq!(jwt_expiry(&token).unwrap().timestamp(), 1_900_000_000);
        assert_eq!(bucket_key(&token), "7");
        assert_eq!(jwt_expiry("opaque"), None);
        // The documented answer: no `expires_in`, the expiry only in the JWT.
        let documented: Value = serde_json::from_str(include_str!("../../../fixtures/jobber/token.json")).unwrap();
        assert!(documented.get("expires_in").is_none());
        assert_eq!(jwt_expiry(documented["access_token"].as_str().unwrap()).unwrap().timestamp(), 1_900_000_000);
    }

    #[test]
    fn the_documented_throttled_answer_is_read_as_throttled_with_its_bucket() {
        let parsed: GqlResponse<'_> =
            serde_json::from_str(include_str!("../../../fixtures/jobber/throttled.json")).unwrap();
        assert_eq!(parsed.errors[0].extensions.as_ref().unwrap().code.as_deref(), Some("THROTTLED"));
        let cost = parsed.extensions.cost.unwrap();
        assert_eq!(cost.requested_query_cost, Some(10_001.0));
        let status = cost.throttle_status.unwrap();
        assert_eq!(
            (status.maximum_available, status.currently_available, status.restore_rate),
            (10_000.0, 9_875.0, 500.0)
        );
    }
}
