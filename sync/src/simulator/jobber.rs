//! A Jobber stand-in (PROVIDERS.md §2): OAuth without scopes or PKCE, JWT access tokens with
//! `exp`, single-use rotating refresh tokens, and a GraphQL endpoint that parses each query,
//! prices it with Jobber's cost model, answers `THROTTLED` (HTTP 200) when the leaky bucket
//! cannot pay, guards 2,500 requests per 300 s with 429, reports `extensions.cost` and
//! `extensions.versioning`, and resolves the queries Jobber's schema names (`account`,
//! `clients`, `jobs`, `invoices`, `client`, `job`, `invoice`, nested connections with `first` and
//! `after`) over a deterministic generated account. Every answer is projected through the
//! query's selection set, so a field the query does not ask for is never sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_graphql_parser::types::{ExecutableDocument, Field, OperationType, SelectionSet};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::servicem8::{Fault, FaultKnobs};
use super::webhooks::WebhookKnobs;
use crate::jobber::graphql;
use crate::jobber::mapping::parse_datetime;

/// How the simulator behaves; every knob is also a flag of `clientapi simulate jobber`.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub clients: usize,
    pub jobs_per_client: usize,
    /// Up to this many line items on a job (jobs vary from none to this).
    pub line_items_per_job: usize,
    pub visits_per_job: usize,
    pub properties_per_client: usize,
    pub seed: u64,
    pub client_id: String,
    pub client_secret: String,
    pub access_token_ttl: Duration,
    pub bucket_maximum: f64,
    pub restore_rate: f64,
    /// The DDoS guard: this many requests per `guard_window`.
    pub guard_requests: usize,
    pub guard_window: Duration,
    /// Versions this simulated Jobber still serves; older ones are upgraded to the oldest with
    /// a warning, and the oldest carries a deprecation warning.
    pub versions: Vec<String>,
    pub faults: FaultKnobs,
    /// How the simulated Jobber delivers webhooks: dropped, duplicated, reordered, late.
    pub webhooks: WebhookKnobs,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            clients: 30,
            jobs_per_client: 20,
            line_items_per_job: 3,
            visits_per_job: 2,
            properties_per_client: 1,
            seed: 1,
            client_id: "jobber-sim-client".into(),
            client_secret: "jobber-sim-secret".into(),
            access_token_ttl: Duration::from_secs(3600),
            bucket_maximum: 10_000.0,
            restore_rate: 500.0,
            guard_requests: 2_500,
            guard_window: Duration::from_secs(300),
            versions: vec!["2025-01-20".into(), "2026-03-10".into(), "2026-05-12".into()],
            faults: FaultKnobs::default(),
            webhooks: WebhookKnobs::default(),
        }
    }
}

/// Counters tests read.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub api_requests: u64,
    pub throttled: u64,
    pub guarded: u64,
    /// Points charged (the actual cost of each answered query).
    pub cost: u64,
    pub token_exchanges: u64,
    pub refreshes: u64,
    pub refresh_attempts: u64,
    pub webhooks_sent: u64,
    pub webhooks_dropped: u64,
}

/// One kind of top-level object: rows in creation order, and where each id is.
#[derive(Default)]
struct Table {
    rows: BTreeMap<u64, Value>,
    ids: HashMap<String, u64>,
}

impl Table {
    fn insert(&mut self, seq: u64, row: Value) {
        self.ids.insert(row["id"].as_str().expect("id").to_owned(), seq);
        self.rows.insert(seq, row);
    }
    fn get(&self, id: &str) -> Option<&Value> {
        self.rows.get(self.ids.get(id)?)
    }
    fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.rows.get_mut(self.ids.get(id)?)
    }
}

struct State_ {
    tables: HashMap<&'static str, Table>,
    next_seq: u64,
    codes: HashMap<String, ()>,
    access_tokens: HashMap<String, Instant>,
    refresh_tokens: HashMap<String, ()>,
    bucket: f64,
    bucket_at: Instant,
    guard: VecDeque<Instant>,
    scheduled: BTreeMap<u64, Fault>,
    knobs: FaultKnobs,
    stats: Stats,
    rng: StdRng,
    /// The clock records are stamped with: moves forward on every change.
    clock: DateTime<Utc>,
    /// Webhook endpoints: one URL per topic (`webhookEndpointCreate`).
    endpoints: BTreeMap<String, String>,
    /// Events of the request being answered, sent once its lock is released.
    events: Vec<(String, String)>,
}

pub struct Simulator {
    config: SimConfig,
    state: Mutex<State_>,
}

pub struct Running {
    pub addr: SocketAddr,
    pub sim: Arc<Simulator>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Running {
    pub fn api_url(&self) -> String {
        format!("http://{}/api/graphql", self.addr)
    }
    pub fn oauth_url(&self) -> String {
        format!("http://{}/api/oauth", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Jobber's `THROTTLED` answer and webhook body, as documented (fixtures/).
const THROTTLED: &str = include_str!("../../../fixtures/jobber/throttled.json");
const WEBHOOK: &str = include_str!("../../../fixtures/jobber/webhook.json");

/// A webhook topic: `JOB_UPDATE` for (`jobs`, `UPDATE`).
fn topic(table: &str, event: &str) -> String {
    let object = match table {
        "clients" => "CLIENT",
        "jobs" => "JOB",
        _ => "INVOICE",
    };
    format!("{object}_{event}")
}

/// Jobber's `EncodedId`: base64 of a global id.
pub fn encoded_id(kind: &str, n: u64) -> String {
    STANDARD.encode(format!("gid://Jobber/{kind}/{n}"))
}

/// Jobber's times carry the account's offset (here Mountain, as in Jobber's own examples).
fn stamp(t: DateTime<Utc>) -> String {
    let offset = FixedOffset::west_opt(6 * 3600).expect("valid");
    offset.from_utc_datetime(&t.naive_utc()).to_rfc3339()
}

/// A float amount from cents, as Jobber sends money.
fn money(cents: i64) -> Value {
    json!(cents as f64 / 100.0)
}

fn address(n: usize) -> Value {
    json!({"street1": format!("{} Main St", n + 1), "street2": null, "city": "Springfield",
           "province": "CO", "postalCode": format!("8{:04}", n % 10_000), "country": "US"})
}

impl Simulator {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 8, 0, 0).single().expect("valid");
        let mut tables: HashMap<&'static str, Table> =
            ["clients", "jobs", "invoices"].into_iter().map(|t| (t, Table::default())).collect();
        let (mut seq, mut job_number, mut invoice_number) = (0u64, 1u64, 1u64);
        let mut next = || {
            seq += 1;
            seq
        };
        for c in 0..config.clients {
            let cs = next();
            let id = encoded_id("Client", cs);
            let created = base + chrono::Duration::seconds(rng.random_range(0..86_400 * 100));
            let is_company = c % 3 != 0;
            let properties: Vec<Value> = (0..config.properties_per_client)
                .map(|p| json!({"id": encoded_id("Property", cs * 100 + p as u64), "address": address(c * 7 + p)}))
                .collect();
            tables.get_mut("clients").expect("table").insert(
                cs,
                json!({
                    "id": id, "name": if is_company { format!("Client {c} LLC") } else { format!("Pat Client{c}") },
                    "firstName": "Pat", "lastName": format!("Client{c}"),
                    "companyName": if is_company { json!(format!("Client {c} LLC")) } else { Value::Null },
                    "isCompany": is_company, "isArchived": false, "isLead": false, "title": null,
                    "billingAddress": address(c),
                    "emails": [{"id": encoded_id("Email", cs), "address": format!("client{c}@example.test"),
                                "description": "MAIN", "primary": true}],
                    "phones": [{"id": encoded_id("Phone", cs), "number": format!("555-01{:02}", c % 100),
                                "description": "MAIN", "primary": true, "smsAllowed": false},
                               {"id": encoded_id("Phone", cs + 1_000_000), "number": format!("555-02{:02}", c % 100),
                                "description": "MOBILE", "primary": false, "smsAllowed": true}],
                    "properties": properties,
                    "createdAt": stamp(created), "updatedAt": stamp(created),
                }),
            );
            for j in 0..config.jobs_per_client {
                let js = next();
                let job_id = encoded_id("Job", js);
                let at = created + chrono::Duration::seconds(rng.random_range(60..86_400 * 60));
                let items = if config.line_items_per_job == 0 { 0 } else { j % (config.line_items_per_job + 1) };
                let mut total = 0i64;
                let line_items: Vec<Value> = (0..items)
                    .map(|i| {
                        let (qty, price) = (rng.random_range(1..5i64), rng.random_range(500..50_000i64));
                        total += qty * price;
                        json!({"id": encoded_id("JobLineItem", js * 100 + i as u64), "name": format!("Item {i}"),
                               "description": null, "quantity": qty as f64, "unitPrice": money(price),
                               "totalPrice": money(qty * price), "createdAt": stamp(at), "updatedAt": stamp(at)})
                    })
                    .collect();
                let visits: Vec<Value> = (0..config.visits_per_job)
                    .map(|v| {
                        let start = at + chrono::Duration::days(v as i64 + 1);
                        json!({"id": encoded_id("Visit", js * 100 + v as u64), "title": format!("Visit {v}"),
                               "startAt": stamp(start), "endAt": stamp(start + chrono::Duration::hours(2)),
                               "completedAt": if v == 0 && j % 2 == 0 { json!(stamp(start + chrono::Duration::hours(2))) } else { Value::Null },
                               "createdAt": stamp(at),
                               "assignedUsers": [{"id": encoded_id("User", 1 + (j as u64 % 3))}]})
                    })
                    .collect();
                let status = ["active", "requires_invoicing", "upcoming", "archived"][j % 4];
                tables.get_mut("jobs").expect("table").insert(
                    js,
                    json!({
                        "id": job_id, "jobNumber": job_number, "title": format!("Job {job_number}"),
                        "instructions": null, "jobStatus": status, "jobType": "ONE_OFF", "billingType": "FIXED_PRICE",
                        "startAt": visits.first().map(|v| v["startAt"].clone()), "endAt": null,
                        "completedAt": if status == "requires_invoicing" { json!(stamp(at)) } else { Value::Null },
                        "total": money(total), "client": {"id": id},
                        "property": properties.first().cloned(),
                        "lineItems": line_items, "visits": visits,
                        "createdAt": stamp(at), "updatedAt": stamp(at),
                    }),
                );
                job_number += 1;
                if j % 2 == 0 {
                    let is = next();
                    let paid = j % 4 == 0;
                    let payments: Vec<Value> = if paid {
                        vec![json!({"id": encoded_id("PaymentRecord", is), "amount": money(total),
                                    "entryDate": stamp(at + chrono::Duration::days(3)), "details": "card"})]
                    } else {
                        Vec::new()
                    };
                    tables.get_mut("invoices").expect("table").insert(
                        is,
                        json!({
                            "id": encoded_id("Invoice", is), "invoiceNumber": invoice_number.to_string(),
                            "invoiceStatus": if paid { "paid" } else { "awaiting_payment" },
                            "subject": format!("For job {job_number}"), "client": {"id": id},
                            "jobs": [{"id": job_id}], "issuedDate": stamp(at + chrono::Duration::days(1)),
                            "dueDate": stamp(at + chrono::Duration::days(15)),
                            "receivedDate": if paid { json!(stamp(at + chrono::Duration::days(3))) } else { Value::Null },
                            "amounts": {"subtotal": money(total), "taxAmount": 0.0, "total": money(total),
                                        "invoiceBalance": if paid { 0.0 } else { total as f64 / 100.0 },
                                        "paymentsTotal": if paid { total as f64 / 100.0 } else { 0.0 }},
                            "paymentRecords": payments,
                            "createdAt": stamp(at), "updatedAt": stamp(at),
                        }),
                    );
                    invoice_number += 1;
                }
            }
        }
        let knobs = config.faults.clone();
        let bucket = config.bucket_maximum;
        Arc::new(Self {
            config,
            state: Mutex::new(State_ {
                tables,
                next_seq: seq + 1,
                codes: HashMap::new(),
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                bucket,
                bucket_at: Instant::now(),
                guard: VecDeque::new(),
                scheduled: BTreeMap::new(),
                knobs,
                stats: Stats::default(),
                rng,
                clock: Utc::now(),
                endpoints: BTreeMap::new(),
                events: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<Running> {
        let sim = Simulator::new(config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let router = sim.clone().router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        Ok(Running { addr, sim, shutdown })
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/oauth/authorize", get(authorize))
            .route("/api/oauth/token", post(token))
            .route("/api/graphql", post(graphql_endpoint))
            // The simulator's own controls (not Jobber's): the bench reads its counters.
            .route("/_sim/stats", get(stats_route))
            .with_state(self)
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Every top-level object of `table` (`clients`, `jobs`, `invoices`), in full.
    pub fn records(&self, table: &str) -> Vec<Value> {
        self.lock().tables.get(table).map(|t| t.rows.values().cloned().collect()).unwrap_or_default()
    }

    pub fn record(&self, table: &str, id: &str) -> Option<Value> {
        self.lock().tables.get(table)?.get(id).cloned()
    }

    /// A later instant than any stamped so far.
    fn tick(state: &mut State_) -> String {
        state.clock = state.clock.max(Utc::now()) + chrono::Duration::seconds(1);
        stamp(state.clock)
    }

    /// Merges `patch` into a top-level object and stamps it changed.
    pub fn modify(&self, table: &str, id: &str, patch: Value) -> bool {
        let changed = self.modify_quietly(table, id, patch);
        if changed {
            self.emit(topic(table, "UPDATE"), id);
        }
        changed
    }

    fn modify_quietly(&self, table: &str, id: &str, patch: Value) -> bool {
        let mut state = self.lock();
        let now = Self::tick(&mut state);
        let Some(row) = state.tables.get_mut(table).and_then(|t| t.get_mut(id)) else { return false };
        if let (Some(row), Some(patch)) = (row.as_object_mut(), patch.as_object()) {
            for (k, v) in patch {
                row.insert(k.clone(), v.clone());
            }
            row.insert("updatedAt".into(), json!(now));
        }
        true
    }

    /// Changes, adds (`patch` with a new id) or removes (`None`) one nested node (`lineItems`,
    /// `visits`, `paymentRecords`, `properties`) and stamps its parent changed, as Jobber does.
    pub fn modify_nested(&self, table: &str, parent: &str, field: &str, id: &str, patch: Option<Value>) -> bool {
        let changed = self.modify_nested_quietly(table, parent, field, id, patch);
        if changed {
            self.emit(topic(table, "UPDATE"), parent);
        }
        changed
    }

    fn modify_nested_quietly(&self, table: &str, parent: &str, field: &str, id: &str, patch: Option<Value>) -> bool {
        let mut state = self.lock();
        let now = Self::tick(&mut state);
        let Some(row) = state.tables.get_mut(table).and_then(|t| t.get_mut(parent)) else { return false };
        let Some(items) = row[field].as_array_mut() else { return false };
        let at = items.iter().position(|i| i["id"] == id);
        match (at, patch) {
            (Some(at), None) => {
                items.remove(at);
            }
            (Some(at), Some(patch)) => {
                for (k, v) in patch.as_object().into_iter().flatten() {
                    items[at][k] = v.clone();
                }
            }
            (None, Some(mut patch)) => {
                patch["id"] = json!(id);
                items.push(patch);
            }
            (None, None) => return false,
        }
        row["updatedAt"] = json!(now);
        true
    }

    /// Adds a client (and stamps it now); returns its id.
    pub fn add_client(&self, name: &str) -> String {
        let mut state = self.lock();
        let now = Self::tick(&mut state);
        let seq = state.next_seq;
        state.next_seq += 1;
        let id = encoded_id("Client", seq);
        let row = json!({"id": id, "name": name, "firstName": null, "lastName": null, "companyName": name,
                         "isCompany": true, "isArchived": false, "title": null, "billingAddress": address(seq as usize),
                         "emails": [], "phones": [], "properties": [], "createdAt": now, "updatedAt": now});
        state.tables.get_mut("clients").expect("table").insert(seq, row);
        drop(state);
        self.emit(topic("clients", "CREATE"), &id);
        id
    }

    /// Deletes a top-level object outright: Jobber keeps no tombstone.
    pub fn destroy(&self, table: &str, id: &str) -> bool {
        let removed = {
            let mut state = self.lock();
            let Some(t) = state.tables.get_mut(table) else { return false };
            match t.ids.remove(id) {
                Some(seq) => t.rows.remove(&seq).is_some(),
                None => false,
            }
        };
        if removed {
            self.emit(topic(table, "DESTROY"), id);
        }
        removed
    }

    /// Sends `topic` for `item` to its webhook endpoint, signed as Jobber signs, through the
    /// delivery knobs.
    pub fn emit(&self, topic: String, item: &str) {
        let (url, copies, delay) = {
            let mut state = self.lock();
            let Some(url) = state.endpoints.get(&topic).cloned() else { return };
            let knobs = self.config.webhooks.clone();
            if state.rng.random::<f64>() < knobs.drop {
                state.stats.webhooks_dropped += 1;
                return;
            }
            let copies = if state.rng.random::<f64>() < knobs.duplicate { 2 } else { 1 };
            let jitter =
                if knobs.reorder { Duration::from_millis(state.rng.random_range(0..200)) } else { Duration::ZERO };
            state.stats.webhooks_sent += copies;
            (url, copies, knobs.delay + jitter)
        };
        // Jobber's documented body (fixtures/), for this event.
        let mut body: Value = serde_json::from_str(WEBHOOK).expect("the fixture is JSON");
        let event = &mut body["data"]["webHookEvent"];
        event["topic"] = json!(topic);
        event["appId"] = json!(self.config.client_id);
        event["accountId"] = json!(encoded_id("Account", 1));
        event["itemId"] = json!(item);
        event["occuredAt"] = json!(stamp(Utc::now()));
        let body = body.to_string();
        let signature = crate::jobber::webhooks::sign(&self.config.client_secret, body.as_bytes());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let client = reqwest::Client::new();
            for _ in 0..copies {
                let _ = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(crate::jobber::webhooks::SIGNATURE_HEADER, &signature)
                    .body(body.clone())
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
            }
        });
    }

    fn flush_events(&self) {
        let events = std::mem::take(&mut self.lock().events);
        for (topic, item) in events {
            self.emit(topic, &item);
        }
    }

    pub fn schedule_fault(&self, after: u64, fault: Fault) {
        let mut state = self.lock();
        let at = state.stats.api_requests + after;
        state.scheduled.insert(at, fault);
    }

    pub fn set_knobs(&self, knobs: FaultKnobs) {
        self.lock().knobs = knobs;
    }

    pub fn expire_access_tokens(&self) {
        self.lock().access_tokens.values_mut().for_each(|t| *t = Instant::now());
    }

    /// The account's bucket now (restored since it was last drawn on).
    pub fn bucket_available(&self) -> f64 {
        let state = self.lock();
        (state.bucket + state.bucket_at.elapsed().as_secs_f64() * self.config.restore_rate)
            .min(self.config.bucket_maximum)
    }

    fn issue_tokens(&self, state: &mut State_) -> Value {
        let exp = Utc::now() + chrono::Duration::from_std(self.config.access_token_ttl).expect("small");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let nonce: u64 = state.rng.random();
        let payload = URL_SAFE_NO_PAD
            .encode(json!({"account_id": 1, "app_id": "sim", "exp": exp.timestamp(), "jti": nonce}).to_string());
        let signature = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let access = format!("{header}.{payload}.{signature}");
        let refresh = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        state.access_tokens.insert(access.clone(), Instant::now() + self.config.access_token_ttl);
        state.refresh_tokens.insert(refresh.clone(), ());
        // Jobber's answer: no `expires_in`; the expiry is in the JWT.
        json!({"access_token": access, "refresh_token": refresh})
    }
}

async fn stats_route(State(sim): State<Arc<Simulator>>) -> Response {
    let s = sim.stats();
    axum::Json(json!({
        "api_requests": s.api_requests, "throttled": s.throttled, "guarded": s.guarded, "cost": s.cost,
        "refreshes": s.refreshes, "bucket_maximum": sim.config.bucket_maximum, "restore_rate": sim.config.restore_rate,
    }))
    .into_response()
}

// ---- OAuth -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
}

/// Approves at once and redirects back with a code (and the state, when one was sent).
async fn authorize(State(sim): State<Arc<Simulator>>, Query(p): Query<AuthorizeParams>) -> Response {
    if p.response_type.as_deref() != Some("code") || p.client_id.as_deref() != Some(&sim.config.client_id) {
        return (StatusCode::BAD_REQUEST, "invalid client_id or response_type").into_response();
    }
    let Some(mut target) = p.redirect_uri.as_deref().and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    };
    let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
    sim.lock().codes.insert(code.clone(), ());
    target.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = &p.state {
        target.query_pairs_mut().append_pair("state", s);
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    code: Option<String>,
    refresh_token: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({"error": error}))).into_response()
}

async fn token(State(sim): State<Arc<Simulator>>, axum::Form(form): axum::Form<TokenForm>) -> Response {
    if form.client_id.as_deref() != Some(&sim.config.client_id)
        || form.client_secret.as_deref() != Some(&sim.config.client_secret)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut state = sim.lock();
    match form.grant_type.as_str() {
        "authorization_code" => {
            if form.code.as_deref().and_then(|c| state.codes.remove(c)).is_none() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            state.stats.token_exchanges += 1;
            axum::Json(sim.issue_tokens(&mut state)).into_response()
        }
        "refresh_token" => {
            state.stats.refresh_attempts += 1;
            // Rotation: every refresh token works once (apps made after 2024-01-02).
            if form.refresh_token.as_deref().and_then(|t| state.refresh_tokens.remove(t)).is_none() {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant");
            }
            state.stats.refreshes += 1;
            axum::Json(sim.issue_tokens(&mut state)).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

// ---- GraphQL -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct GqlRequest {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
}

fn errors(message: &str, code: Option<&str>, extensions: Value) -> Response {
    let mut error = json!({"message": message});
    if let Some(code) = code {
        error["extensions"] = json!({"code": code});
    }
    axum::Json(json!({"data": null, "errors": [error], "extensions": extensions})).into_response()
}

async fn graphql_endpoint(State(sim): State<Arc<Simulator>>, headers: HeaderMap, body: Bytes) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json").into_response();
    }
    // Auth, the DDoS guard and injected faults, in that order.
    let (fault, latency) = {
        let mut state = sim.lock();
        state.stats.api_requests += 1;
        let n = state.stats.api_requests;
        let fault = state.scheduled.remove(&n);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let valid = bearer.and_then(|t| state.access_tokens.get(&t).copied()).is_some_and(|exp| exp > Instant::now());
        if !valid || matches!(fault, Some(Fault::ExpiredToken)) {
            return (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "Unauthorized"}))).into_response();
        }
        let now = Instant::now();
        while state.guard.front().is_some_and(|t| now.duration_since(*t) > sim.config.guard_window) {
            state.guard.pop_front();
        }
        if state.guard.len() >= sim.config.guard_requests {
            state.stats.guarded += 1;
            return (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"message": "Too many requests"})))
                .into_response();
        }
        state.guard.push_back(now);
        let roll: f64 = state.rng.random();
        if roll < state.knobs.rate_5xx {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        (fault, state.knobs.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(Fault::ServerError(code)) => {
            return StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY).into_response();
        }
        Some(Fault::TooManyRequests { .. }) => {
            sim.lock().stats.guarded += 1;
            return (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"message": "Too many requests"})))
                .into_response();
        }
        Some(Fault::Delay(d)) | Some(Fault::LoseResponse(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let truncate = matches!(fault, Some(Fault::Truncated));

    let versioning = match headers.get("x-jobber-graphql-version").and_then(|v| v.to_str().ok()) {
        None => return (StatusCode::BAD_REQUEST, "the X-JOBBER-GRAPHQL-VERSION header is required").into_response(),
        Some(v) => versioning(&sim.config.versions, v),
    };
    let request: GqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return errors(&format!("invalid request body: {e}"), None, json!({"versioning": versioning})),
    };
    let doc = match graphql::parse(&request.query) {
        Ok(doc) => doc,
        Err(e) => return errors(&e, Some("GRAPHQL_PARSE_FAILED"), json!({"versioning": versioning})),
    };
    let op = match graphql::operation(&doc, request.operation_name.as_deref()) {
        Ok(op) => op,
        Err(e) => return errors(&e, None, json!({"versioning": versioning})),
    };
    let variables = request.variables.unwrap_or_default();
    let requested = graphql::query_cost(&doc, op, &variables) as f64;

    let mut state = sim.lock();
    let max = sim.config.bucket_maximum;
    // The bucket as of now; it goes on restoring while the query runs.
    let priced = Instant::now();
    let available =
        (state.bucket + priced.duration_since(state.bucket_at).as_secs_f64() * sim.config.restore_rate).min(max);
    let status = |available: f64| json!({"maximumAvailable": max, "currentlyAvailable": available.floor(), "restoreRate": sim.config.restore_rate});
    if requested > available {
        state.stats.throttled += 1;
        let cost = json!({"requestedQueryCost": requested, "actualQueryCost": 0, "throttleStatus": status(available)});
        // Jobber's documented answer (fixtures/), with this request's figures.
        let mut answer: Value = serde_json::from_str(THROTTLED).expect("the fixture is JSON");
        answer["extensions"] = json!({"cost": cost, "versioning": versioning});
        return axum::Json(answer).into_response();
    }
    let data = match op.ty {
        OperationType::Query => execute(&state, &doc, &op.selection_set.node, &variables),
        OperationType::Mutation => mutate(&mut state, &doc, &op.selection_set.node, &variables),
        OperationType::Subscription => Err("subscriptions are not served".into()),
    };
    // Jobber checks the requested cost up front and charges the actual one: connections cost
    // what they returned, not what `first` allowed.
    let actual = match &data {
        Ok(data) => actual_cost(&op.selection_set.node, &doc, data) as f64,
        Err(_) => 0.0,
    };
    state.bucket = available - actual;
    state.bucket_at = priced;
    state.stats.cost += actual as u64;
    let cost =
        json!({"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": status(state.bucket)});
    drop(state);
    sim.flush_events();
    let body = match data {
        Ok(data) => json!({"data": data, "extensions": {"cost": cost, "versioning": versioning}}),
        Err(message) => {
            json!({"data": null, "errors": [{"message": message}], "extensions": {"cost": cost, "versioning": versioning}})
        }
    };
    let mut text = body.to_string();
    if truncate {
        text.truncate(text.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// `extensions.versioning` for a requested version: served as is, upgraded to the oldest
/// supported one when removed, with a warning while the oldest is on its way out.
fn versioning(supported: &[String], requested: &str) -> Value {
    let oldest = supported.iter().min().cloned().unwrap_or_default();
    if requested < oldest.as_str() {
        json!({"version": oldest, "warning": format!("API version {requested} is no longer supported; this request used {oldest}")})
    } else if requested == oldest && supported.len() > 1 {
        json!({"version": requested, "warning": format!("API version {requested} is deprecated and will be removed; upgrade to {}", supported.iter().max().expect("nonempty"))})
    } else {
        json!({"version": requested})
    }
}

fn execute(
    state: &State_,
    doc: &ExecutableDocument,
    set: &SelectionSet,
    vars: &Map<String, Value>,
) -> Result<Value, String> {
    let mut data = Map::new();
    for field in graphql::fields(set, doc) {
        let f = &field.node;
        let key = f.response_key().node.to_string();
        let children = &f.selection_set.node;
        let by_id = |table: &str| {
            let id = graphql::argument(f, "id", vars).and_then(|v| v.as_str().map(str::to_owned));
            let row = id.and_then(|id| state.tables[table].get(&id).cloned());
            row.map_or(Value::Null, |r| project(&r, children, doc, vars))
        };
        let value = match f.name.node.as_str() {
            "account" => project(
                &json!({"id": encoded_id("Account", 1), "name": "Simulated Jobber account"}),
                children,
                doc,
                vars,
            ),
            "client" => by_id("clients"),
            "job" => by_id("jobs"),
            "invoice" => by_id("invoices"),
            table @ ("clients" | "jobs" | "invoices") => {
                let mut rows: Vec<&Value> = state.tables[table].rows.values().collect();
                if let Some(range) = graphql::argument(f, "filter", vars).and_then(|v| v.get("updatedAt").cloned()) {
                    if table == "jobs" {
                        return Err("Field 'updatedAt' is not defined by type 'JobFilterAttributes'".into());
                    }
                    let bound = |k: &str| range.get(k).and_then(Value::as_str).and_then(parse_datetime);
                    let (after, before) = (bound("after"), bound("before"));
                    rows.retain(|r| {
                        let at = r["updatedAt"].as_str().and_then(parse_datetime);
                        after.is_none_or(|a| at.is_some_and(|t| t >= a))
                            && before.is_none_or(|b| at.is_some_and(|t| t <= b))
                    });
                }
                if let Some(sort) = graphql::argument(f, "sort", vars) {
                    let sort = sort.as_array().and_then(|s| s.first().cloned()).unwrap_or(sort);
                    if sort["key"] == "UPDATED_AT" {
                        rows.sort_by_cached_key(|r| r["updatedAt"].as_str().and_then(parse_datetime));
                        if sort["direction"] == "DESCENDING" {
                            rows.reverse();
                        }
                    }
                }
                // Only the page is copied: each query used to copy the whole table under the lock.
                connection(&rows, f, children, doc, vars)
            }
            "__typename" => json!("Query"),
            other => return Err(format!("Field '{other}' doesn't exist on type 'Query'")),
        };
        data.insert(key, value);
    }
    Ok(Value::Object(data))
}

fn user_error(message: &str, path: &[&str]) -> Value {
    json!([{"message": message, "path": path}])
}

/// The mutations the adapter sends (PROVIDERS.md §2, "Writes"), with Jobber's `userErrors`.
fn mutate(
    state: &mut State_,
    doc: &ExecutableDocument,
    set: &SelectionSet,
    vars: &Map<String, Value>,
) -> Result<Value, String> {
    let mut data = Map::new();
    for field in graphql::fields(set, doc) {
        let f = &field.node;
        let key = f.response_key().node.to_string();
        let arg = |name: &str| graphql::argument(f, name, vars).unwrap_or(Value::Null);
        let input = arg("input");
        let now = Simulator::tick(state);
        let payload = match f.name.node.as_str() {
            "clientEdit" => {
                let id = arg("clientId").as_str().unwrap_or_default().to_owned();
                match state.tables.get_mut("clients").and_then(|t| t.get_mut(&id)) {
                    None => json!({"client": null, "userErrors": user_error("Client not found", &["clientId"])}),
                    Some(_) if input["companyName"].as_str().is_some_and(|n| n.trim().is_empty()) => {
                        json!({"client": null, "userErrors": user_error("Company name can't be blank", &["input", "companyName"])})
                    }
                    Some(row) => {
                        if let Some(name) = input["companyName"].as_str() {
                            row["companyName"] = json!(name);
                            row["name"] = json!(name);
                        }
                        if let Some(address) = input["billingAddress"].as_object() {
                            for (k, v) in address {
                                row["billingAddress"][k] = v.clone();
                            }
                        }
                        row["updatedAt"] = json!(now);
                        let row = row.clone();
                        state.events.push((topic("clients", "UPDATE"), id));
                        json!({"client": row, "userErrors": []})
                    }
                }
            }
            "jobCreate" => {
                let property = input["propertyId"].as_str().unwrap_or_default();
                let owner = state.tables["clients"].rows.values().find_map(|c| {
                    let props = c["properties"].as_array()?;
                    let p = props.iter().find(|p| p["id"] == property)?;
                    Some((c["id"].clone(), p.clone()))
                });
                let title = input["title"].as_str().unwrap_or_default().trim().to_owned();
                match owner {
                    None => {
                        json!({"job": null, "userErrors": user_error("Property not found", &["input", "propertyId"])})
                    }
                    Some(_) if title.is_empty() => {
                        json!({"job": null, "userErrors": user_error("Title can't be blank", &["input", "title"])})
                    }
                    Some((client, property)) => {
                        let seq = state.next_seq;
                        state.next_seq += 1;
                        let number = state.tables["jobs"]
                            .rows
                            .values()
                            .filter_map(|j| j["jobNumber"].as_u64())
                            .max()
                            .unwrap_or(0)
                            + 1;
                        let row = json!({
                            "id": encoded_id("Job", seq), "jobNumber": number, "title": title, "instructions": input["instructions"],
                            "jobStatus": "unscheduled", "jobType": "ONE_OFF", "billingType": input["invoicing"]["invoicingType"],
                            "startAt": null, "endAt": null, "completedAt": null, "total": 0.0,
                            "client": {"id": client}, "property": property, "lineItems": [], "visits": [],
                            "createdAt": now, "updatedAt": now,
                        });
                        state.tables.get_mut("jobs").expect("table").insert(seq, row.clone());
                        state.events.push((topic("jobs", "CREATE"), row["id"].as_str().expect("id").to_owned()));
                        json!({"job": row, "userErrors": []})
                    }
                }
            }
            "jobEdit" => {
                let id = arg("jobId").as_str().unwrap_or_default().to_owned();
                match state.tables.get_mut("jobs").and_then(|t| t.get_mut(&id)) {
                    None => json!({"job": null, "userErrors": user_error("Job not found", &["jobId"])}),
                    Some(_) if input["title"].as_str().is_some_and(|t| t.trim().is_empty()) => {
                        json!({"job": null, "userErrors": user_error("Title can't be blank", &["input", "title"])})
                    }
                    Some(row) => {
                        if let Some(title) = input["title"].as_str() {
                            row["title"] = json!(title);
                        }
                        row["updatedAt"] = json!(now);
                        let row = row.clone();
                        state.events.push((topic("jobs", "UPDATE"), id));
                        json!({"job": row, "userErrors": []})
                    }
                }
            }
            "jobCreateLineItems" => {
                let id = arg("jobId").as_str().unwrap_or_default().to_owned();
                let items = input["lineItems"].as_array().cloned().unwrap_or_default();
                if let Some(at) = items.iter().position(|i| i["name"].as_str().is_none_or(|n| n.trim().is_empty())) {
                    let at = at.to_string();
                    json!({"lineItems": null, "userErrors": user_error("Name can't be blank", &["input", "lineItems", &at, "name"])})
                } else if !state.tables["jobs"].ids.contains_key(&id) {
                    json!({"lineItems": null, "userErrors": user_error("Job not found", &["jobId"])})
                } else {
                    let first = state.next_seq;
                    state.next_seq += items.len() as u64;
                    let created: Vec<Value> = items
                        .iter()
                        .enumerate()
                        .map(|(n, i)| {
                            let (q, p) = (i["quantity"].as_f64().unwrap_or(1.0), i["unitPrice"].as_f64().unwrap_or(0.0));
                            json!({"id": encoded_id("JobLineItem", first + n as u64), "name": i["name"], "description": i["description"],
                                   "quantity": q, "unitPrice": p, "totalPrice": (q * p * 100.0).round() / 100.0,
                                   "createdAt": now, "updatedAt": now})
                        })
                        .collect();
                    let row = state.tables.get_mut("jobs").and_then(|t| t.get_mut(&id)).expect("checked above");
                    let list = row["lineItems"].as_array_mut().expect("generated jobs have line items");
                    list.extend(created.iter().cloned());
                    let cents: i64 =
                        list.iter().map(|i| (i["totalPrice"].as_f64().unwrap_or(0.0) * 100.0).round() as i64).sum();
                    row["total"] = money(cents);
                    row["updatedAt"] = json!(now);
                    state.events.push((topic("jobs", "UPDATE"), id));
                    json!({"lineItems": created, "userErrors": []})
                }
            }
            "webhookEndpointCreate" => {
                let (topic, url) =
                    (input["topic"].as_str().unwrap_or_default(), input["url"].as_str().unwrap_or_default());
                if crate::jobber::webhooks::TOPICS.iter().all(|(t, _)| *t != topic) {
                    json!({"webhookEndpoint": null, "userErrors": user_error("Topic is not a webhook topic", &["input", "topic"])})
                } else if url::Url::parse(url).is_err() {
                    json!({"webhookEndpoint": null, "userErrors": user_error("Url is invalid", &["input", "url"])})
                } else {
                    // One endpoint per topic: a new one replaces the old.
                    state.endpoints.insert(topic.to_owned(), url.to_owned());
                    json!({"webhookEndpoint": {"id": encoded_id("WebhookEndpoint", state.endpoints.len() as u64), "topic": topic, "url": url}, "userErrors": []})
                }
            }
            other => return Err(format!("Field '{other}' doesn't exist on type 'Mutation'")),
        };
        data.insert(key, project(&payload, &f.selection_set.node, doc, vars));
    }
    Ok(Value::Object(data))
}

/// Only what the selection asks for; list fields that are connections are paged.
fn project(value: &Value, set: &SelectionSet, doc: &ExecutableDocument, vars: &Map<String, Value>) -> Value {
    let Value::Object(object) = value else { return Value::Null };
    let mut out = Map::new();
    for field in graphql::fields(set, doc) {
        let f = &field.node;
        let key = f.response_key().node.to_string();
        let children = &f.selection_set.node;
        let v = object.get(f.name.node.as_str()).cloned().unwrap_or(Value::Null);
        let projected = if children.items.is_empty() {
            v
        } else if graphql::is_connection(children, doc) {
            connection(v.as_array().map(Vec::as_slice).unwrap_or_default(), f, children, doc, vars)
        } else {
            match &v {
                Value::Array(items) => Value::Array(items.iter().map(|i| project(i, children, doc, vars)).collect()),
                Value::Object(_) => project(&v, children, doc, vars),
                _ => Value::Null,
            }
        };
        out.insert(key, projected);
    }
    Value::Object(out)
}

/// What a query cost once answered: every field 1, `nodes`/`edges`/`node` nothing, and a
/// connection the nodes it returned (the requested cost is the same with `first` nodes).
fn actual_cost(set: &SelectionSet, doc: &ExecutableDocument, value: &Value) -> u64 {
    let mut total = 0;
    for field in graphql::fields(set, doc) {
        let f = &field.node;
        let key = f.response_key().node.as_str();
        let children = &f.selection_set.node;
        let v = value.get(key).unwrap_or(&Value::Null);
        let each = |v: &Value| match v {
            Value::Array(items) => items.iter().map(|i| actual_cost(children, doc, i)).sum(),
            Value::Null => 0,
            other => actual_cost(children, doc, other),
        };
        total += match f.name.node.as_str() {
            "__typename" => 0,
            "nodes" | "edges" | "node" => each(v),
            _ if children.items.is_empty() => 1,
            _ if graphql::is_connection(children, doc) => actual_cost(children, doc, v),
            _ => 1 + each(v),
        };
    }
    total
}

fn cursor(index: usize) -> String {
    STANDARD.encode(index.to_string())
}

/// A Relay connection over `items`, paged by `first` and `after`.
fn connection<T: serde::Serialize>(
    items: &[T],
    f: &Field,
    set: &SelectionSet,
    doc: &ExecutableDocument,
    vars: &Map<String, Value>,
) -> Value {
    let first = graphql::argument(f, "first", vars).and_then(|v| v.as_u64()).unwrap_or(graphql::DEFAULT_FIRST) as usize;
    let start = graphql::argument(f, "after", vars)
        .and_then(|v| v.as_str().and_then(|c| STANDARD.decode(c).ok()))
        .and_then(|b| String::from_utf8(b).ok()?.parse::<usize>().ok())
        .map_or(0, |i| i + 1)
        .min(items.len());
    let end = (start + first).min(items.len());
    let page = &items[start..end];
    let whole = json!({
        "nodes": page,
        "edges": page.iter().enumerate().map(|(i, n)| json!({"node": n, "cursor": cursor(start + i)})).collect::<Vec<_>>(),
        "pageInfo": {"hasNextPage": end < items.len(), "hasPreviousPage": start > 0,
                     "startCursor": (start < end).then(|| cursor(start)), "endCursor": (start < end).then(|| cursor(end - 1))},
        "totalCount": items.len(),
    });
    project(&whole, set, doc, vars)
}
