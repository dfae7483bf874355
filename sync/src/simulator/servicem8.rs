//! A ServiceM8 simulator on loopback (PROVIDERS.md §1): OAuth authorize (auto-approving) and
//! token endpoints, and the `api_1.0` REST shape with its quirks reproduced: bare-array lists
//! paged by `cursor=-1` / `x-next-cursor`, `$filter` with `eq ne gt lt` only, numbers as strings,
//! flags as 0/1 and sometimes "0"/"1", `0000-00-00 00:00:00` empty dates, soft deletes through
//! `active = 0` (bumping `edit_date`), `x-record-uuid` on create, `{errorCode, message}` errors,
//! 429 past 180 requests/min or 20,000/day (JSON or text body, with or without `Retry-After`).
//!
//! Data comes from a deterministic generator (`--companies`, `--jobs-per-company`, `--seed`)
//! plus any JSON fixtures in `fixtures/servicem8/`. Tests drive it in-process through
//! [`Simulator`]'s methods: change data, schedule faults, read counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use chrono::{NaiveDate, NaiveDateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use super::webhooks::{Hooks, WebhookKnobs, WebhookStats};

const DATETIME: &str = "%Y-%m-%d %H:%M:%S";
const EMPTY_DATETIME: &str = "0000-00-00 00:00:00";
/// The objects the simulator serves.
pub const OBJECTS: &[&str] = &[
    "company",
    "companycontact",
    "job",
    "jobmaterial",
    "jobpayment",
    "attachment",
    "jobactivity",
    "staff",
    "category",
    "customfield",
    "taxrate",
    "material",
];

/// How the simulator behaves; every knob is also a CLI flag of `clientapi simulate servicem8`.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub companies: usize,
    pub jobs_per_company: usize,
    /// Sites (companies with a `parent_company_uuid`) under each company, each with a contact
    /// and some of the company's jobs.
    pub sites_per_company: usize,
    /// Objects this account refuses to list (403, as for a token without the object's scope).
    pub withheld: Vec<&'static str>,
    /// Zipf-like company sizes (company i gets a share ∝ 1/(i+1)) with the same total.
    pub skewed: bool,
    pub seed: u64,
    pub client_id: String,
    pub client_secret: String,
    /// Records per list page (ServiceM8 serves up to 5,000).
    pub page_size: usize,
    pub access_token_ttl: Duration,
    /// Every refresh returns a new refresh token and kills the old one.
    pub rotate_refresh_tokens: bool,
    pub per_minute_limit: u32,
    pub per_day_limit: u32,
    pub faults: FaultKnobs,
    pub webhooks: WebhookKnobs,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            companies: 30,
            jobs_per_company: 100,
            sites_per_company: 0,
            withheld: Vec::new(),
            skewed: false,
            seed: 1,
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            page_size: 5000,
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: true,
            per_minute_limit: 180,
            per_day_limit: 20_000,
            faults: FaultKnobs::default(),
            webhooks: WebhookKnobs::default(),
        }
    }
}

/// Random faults on API requests (not OAuth), as probabilities from 0 to 1.
#[derive(Debug, Clone, Default)]
pub struct FaultKnobs {
    pub rate_429: f64,
    /// Sent with injected and real 429s; `None` sends no `Retry-After`.
    pub retry_after_secs: Option<u64>,
    pub rate_5xx: f64,
    pub rate_truncated: f64,
    pub latency: Duration,
}

/// A fault scheduled for one particular upcoming API request.
#[derive(Debug, Clone)]
pub enum Fault {
    TooManyRequests {
        retry_after_secs: Option<u64>,
        text_body: bool,
    },
    ServerError(u16),
    /// A 200 whose JSON body is cut in half.
    Truncated,
    /// Answers only after this long (longer than the client's timeout = a timeout).
    Delay(Duration),
    /// Rejects the bearer token as if it had expired.
    ExpiredToken,
    /// Applies the request (a write happens) but the answer never arrives in time.
    LoseResponse(Duration),
}

/// Counters tests read.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub api_requests: u64,
    pub token_exchanges: u64,
    pub refreshes: u64,
    /// Refresh calls, successful or not.
    pub refresh_attempts: u64,
    pub creates: u64,
    pub rate_limited: u64,
}

struct State_ {
    objects: HashMap<&'static str, BTreeMap<String, Map<String, Value>>>,
    vendor: Value,
    codes: HashMap<String, (String, Option<String>)>,
    access_tokens: HashMap<String, Instant>,
    refresh_tokens: HashMap<String, ()>,
    minute_window: VecDeque<Instant>,
    day_count: u32,
    scheduled: BTreeMap<u64, Fault>,
    /// Faults for the next request to one method and path (`GET object/file`), whoever sends it.
    aimed: Vec<(String, Fault)>,
    /// The next create lands under this company, whatever it asked for.
    misplace: Option<String>,
    stats: Stats,
    rng: StdRng,
    next_job_number: i64,
    knobs: FaultKnobs,
    /// Uploaded attachment bytes: uuid → (content type, bytes).
    files: HashMap<String, (String, Vec<u8>)>,
}

/// The simulator: shared state behind one lock (it is a test double, not a hot path).
pub struct Simulator {
    config: SimConfig,
    state: Mutex<State_>,
    hooks: Arc<Hooks>,
}

/// A running simulator: its address and the handle tests use.
pub struct Running {
    pub addr: SocketAddr,
    pub sim: Arc<Simulator>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn api_url(&self) -> String {
        format!("http://{}/api_1.0", self.addr)
    }
    pub fn oauth_url(&self) -> String {
        format!("http://{}/oauth", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn now_stamp() -> String {
    Utc::now().format(DATETIME).to_string()
}

fn uuid_from(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string()
}

/// ServiceM8 sometimes sends flags as strings: every third record here does.
fn flag(value: bool, as_string: bool) -> Value {
    match (value, as_string) {
        (true, false) => json!(1),
        (false, false) => json!(0),
        (true, true) => json!("1"),
        (false, true) => json!("0"),
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

impl Simulator {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut objects: HashMap<&'static str, BTreeMap<String, Map<String, Value>>> =
            OBJECTS.iter().map(|o| (*o, BTreeMap::new())).collect();
        let base = NaiveDate::from_ymd_opt(2026, 1, 1).expect("valid").and_hms_opt(8, 0, 0).expect("valid");
        let stamp = |rng: &mut StdRng| {
            (base + chrono::Duration::seconds(rng.random_range(0..86_400 * 200))).format(DATETIME).to_string()
        };
        let mut job_number = 1000;
        let mut n = 0usize;
        let insert = |objects: &mut HashMap<&'static str, BTreeMap<String, Map<String, Value>>>,
                      object: &'static str,
                      value: Value| {
            let map = value.as_object().expect("generated objects are objects").clone();
            let uuid = map["uuid"].as_str().expect("uuid").to_owned();
            objects.get_mut(object).expect("known object").insert(uuid, map);
        };
        // The account's lookups and staff, as ServiceM8 shapes them (PROVIDERS.md §1), and the
        // sites and bookings below, from a stream of their own: the rest of the data is what
        // the same seed always made.
        let mut extra = StdRng::seed_from_u64(config.seed ^ 0x5173_5eed);
        let mut staff = Vec::new();
        for (first, last, title) in
            [("Sam", "Ng", "Plumber"), ("Alex", "Reid", "Electrician"), ("Jo", "Park", "Apprentice")]
        {
            let uuid = uuid_from(&mut extra);
            insert(
                &mut objects,
                "staff",
                json!({
                    "uuid": uuid, "active": 1, "edit_date": stamp(&mut extra), "first": first, "last": last,
                    "email": format!("{}@example.com", first.to_lowercase()), "mobile": format!("0400 000 00{}", staff.len()),
                    "job_title": title, "color": "#3366cc", "hide_from_schedule": "0", "status_message": ""
                }),
            );
            staff.push(uuid);
        }
        let mut categories = Vec::new();
        for (name, colour) in [("Maintenance", "3366cc"), ("Installation", "33cc66"), ("Emergency", "cc3333")] {
            let uuid = uuid_from(&mut extra);
            insert(
                &mut objects,
                "category",
                json!({"uuid": uuid, "active": 1, "edit_date": stamp(&mut extra), "name": name, "colour": colour}),
            );
            categories.push(uuid);
        }
        let gst = uuid_from(&mut extra);
        for (uuid, name, amount, default) in
            [(gst.clone(), "GST", "10", "1"), (uuid_from(&mut extra), "GST Free", "0", "0")]
        {
            insert(
                &mut objects,
                "taxrate",
                json!({"uuid": uuid, "active": 1, "edit_date": stamp(&mut extra), "name": name, "amount": amount,
                       "is_default_tax_rate": default}),
            );
        }
        for (k, (name, price)) in
            [("Labour (hour)", "120.00"), ("Call-out fee", "95.00"), ("Copper pipe 15mm (m)", "8.50")]
                .into_iter()
                .enumerate()
        {
            insert(
                &mut objects,
                "material",
                json!({"uuid": uuid_from(&mut extra), "active": 1, "edit_date": stamp(&mut extra), "name": name,
                       "item_number": format!("SKU-{:03}", k + 1), "price": price, "cost": "0.00",
                       "price_includes_taxes": "0", "tax_rate_uuid": gst, "quantity_in_stock": "0",
                       "item_is_inventoried": "0"}),
            );
        }
        for (name, label, kind, options) in [
            ("customfield_gate_code", "Gate code", "Text", ""),
            ("customfield_access", "Access", "Dropdown", "Key safe;Tenant;Agent"),
        ] {
            insert(
                &mut objects,
                "customfield",
                json!({"uuid": uuid_from(&mut extra), "active": 1, "edit_date": stamp(&mut extra), "field_name": name,
                       "label": label, "type": kind, "options": options, "object": "job"}),
            );
        }
        let harmonic: f64 = (1..=config.companies.max(1)).map(|i| 1.0 / i as f64).sum();
        let total_jobs = (config.companies * config.jobs_per_company) as f64;
        for c in 0..config.companies {
            let jobs_here = if config.skewed {
                ((total_jobs / harmonic / (c + 1) as f64).round() as usize).max(1)
            } else {
                config.jobs_per_company
            };
            let company = uuid_from(&mut rng);
            n += 1;
            insert(
                &mut objects,
                "company",
                json!({
                    "uuid": company, "active": flag(true, n.is_multiple_of(3)), "edit_date": stamp(&mut rng),
                    "name": format!("Company {c:04}"), "abn_number": "", "address": format!("{} Main St", c + 1),
                    "address_street": format!("{} Main St", c + 1), "address_city": "Springfield", "address_state": "NSW",
                    "address_postcode": "2000", "address_country": "Australia", "billing_address": "",
                    "website": "", "fax_number": "", "badges": "[]", "tax_rate_uuid": "", "payment_terms": "",
                    "is_individual": flag(c.is_multiple_of(7), n.is_multiple_of(2)), "parent_company_uuid": ""
                }),
            );
            // Sites: a company each, under this one, with a contact of its own; some of this
            // company's jobs are at a site.
            let mut sites = Vec::new();
            for k in 0..config.sites_per_company {
                let site = uuid_from(&mut extra);
                insert(
                    &mut objects,
                    "company",
                    json!({
                        "uuid": site, "active": 1, "edit_date": stamp(&mut extra), "name": format!("Company {c:04} site {k}"),
                        "address": format!("{} Depot Rd", k + 1), "billing_address": "", "website": "", "badges": "[]",
                        "is_individual": 0, "parent_company_uuid": company
                    }),
                );
                insert(
                    &mut objects,
                    "companycontact",
                    json!({
                        "uuid": uuid_from(&mut extra), "active": 1, "edit_date": stamp(&mut extra), "company_uuid": site,
                        "first": "Site", "last": format!("Manager {k}"), "phone": "", "mobile": "0400 111 222",
                        "email": format!("site{k}.{c}@example.com"), "type": "JOB", "is_primary_contact": "0"
                    }),
                );
                sites.push(site);
            }
            for k in 0..2 {
                n += 1;
                insert(
                    &mut objects,
                    "companycontact",
                    json!({
                        "uuid": uuid_from(&mut rng), "active": 1, "edit_date": stamp(&mut rng), "company_uuid": company,
                        "first": format!("Ann{k}"), "last": format!("Lee{c}"), "phone": "02 9999 0000",
                        "mobile": "", "email": format!("ann{k}.{c}@example.com"),
                        "type": if k == 0 { "BILLING" } else { "JOB" }, "is_primary_contact": if k == 0 { "1" } else { "0" }
                    }),
                );
            }
            for _ in 0..jobs_here {
                let job = uuid_from(&mut rng);
                job_number += 1;
                n += 1;
                let mut total = 0i64;
                for m in 0..rng.random_range(1..=3) {
                    let qty = rng.random_range(1..=5i64);
                    let price = rng.random_range(500..=50_000i64);
                    total += qty * price;
                    insert(
                        &mut objects,
                        "jobmaterial",
                        json!({
                            "uuid": uuid_from(&mut rng), "active": 1, "edit_date": stamp(&mut rng), "job_uuid": job,
                            "material_uuid": "", "name": format!("Item {m}"), "quantity": qty.to_string(),
                            "price": money(price), "displayed_amount": money(qty * price),
                            "displayed_amount_is_tax_inclusive": "0", "tax_rate_uuid": "", "cost": "0.00", "sort_order": m
                        }),
                    );
                }
                let status = ["Quote", "Work Order", "Completed", "Unsuccessful"][rng.random_range(0..4)];
                let invoiced = status == "Completed" && rng.random_bool(0.8);
                let paid = invoiced && rng.random_bool(0.6);
                let edit = stamp(&mut rng);
                // Every third job is at a site, when the company has any.
                let at = match sites.len() {
                    0 => &company,
                    len if job_number % 3 == 0 => &sites[(job_number as usize / 3) % len],
                    _ => &company,
                };
                let category = &categories[job_number as usize % categories.len()];
                if matches!(status, "Work Order" | "Completed") {
                    let start =
                        NaiveDateTime::parse_from_str(&edit, DATETIME).expect("generated") + chrono::Duration::days(1);
                    insert(
                        &mut objects,
                        "jobactivity",
                        json!({
                            "uuid": uuid_from(&mut extra), "active": 1, "edit_date": edit, "job_uuid": job,
                            "staff_uuid": staff[job_number as usize % staff.len()],
                            "start_date": start.format(DATETIME).to_string(),
                            "end_date": (start + chrono::Duration::hours(2)).format(DATETIME).to_string(),
                            "activity_was_scheduled": "1", "activity_was_recorded": "0",
                            "activity_was_automated": "0", "has_been_opened": "0", "travel_time_in_seconds": "0",
                            "material_uuid": ""
                        }),
                    );
                }
                insert(
                    &mut objects,
                    "job",
                    json!({
                        "uuid": job, "active": flag(true, n.is_multiple_of(3)), "edit_date": edit, "status": status,
                        "generated_job_id": job_number.to_string(), "company_uuid": at, "category_uuid": category,
                        "customfield_gate_code": if n.is_multiple_of(2) { format!("{:04}", n % 10_000) } else { String::new() },
                        "customfield_access": (["Key safe", "Tenant", ""][n % 3]),
                        "date": &edit[..10], "job_address": format!("{} Main St", c + 1),
                        "billing_address": "", "job_description": format!("Job {job_number}"),
                        "work_done_description": "", "purchase_order_number": if n.is_multiple_of(4) { format!("PO-{n}") } else { String::new() },
                        "completion_date": if status == "Completed" { edit.clone() } else { EMPTY_DATETIME.into() },
                        "invoice_sent": flag(invoiced, n.is_multiple_of(2)),
                        "invoice_sent_stamp": if invoiced { edit.clone() } else { EMPTY_DATETIME.into() },
                        "total_invoice_amount": money(total), "payment_received": flag(paid, false),
                        "payment_received_stamp": if paid { edit.clone() } else { EMPTY_DATETIME.into() },
                        "payment_processed": 0, "payment_processed_stamp": EMPTY_DATETIME
                    }),
                );
                if paid {
                    let method = ["Cash", "Credit Card", "Stripe"][rng.random_range(0..3)];
                    insert(
                        &mut objects,
                        "jobpayment",
                        json!({
                            "uuid": uuid_from(&mut rng), "active": 1, "edit_date": edit, "job_uuid": job,
                            "actioned_by_uuid": "", "timestamp": edit, "amount": money(total),
                            "method": method, "note": "",
                            "attachment_uuid": "", "is_deposit": "0"
                        }),
                    );
                }
                if invoiced {
                    insert(
                        &mut objects,
                        "attachment",
                        json!({
                            "uuid": uuid_from(&mut rng), "active": 1, "edit_date": edit, "related_object": "job",
                            "related_object_uuid": job, "attachment_name": format!("Invoice {job_number}"),
                            "file_type": ".pdf", "attachment_source": "INVOICE", "tags": "", "timestamp": edit,
                            "is_favourite": "0", "metadata": ""
                        }),
                    );
                }
            }
        }
        let vendor = json!({"uuid": uuid_from(&mut rng), "name": "Simulated Plumbing Pty Ltd", "timezone_name": "Australia/Sydney"});
        let knobs = config.faults.clone();
        let hooks = Arc::new(Hooks::new(config.webhooks.clone()));
        let sim = Arc::new(Self {
            hooks,
            state: Mutex::new(State_ {
                objects,
                vendor,
                codes: HashMap::new(),
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                minute_window: VecDeque::new(),
                day_count: 0,
                scheduled: BTreeMap::new(),
                aimed: Vec::new(),
                misplace: None,
                stats: Stats::default(),
                rng,
                next_job_number: job_number + 1,
                knobs,
                files: HashMap::new(),
            }),
            config,
        });
        sim.load_fixtures();
        sim
    }

    /// Adds every `fixtures/servicem8/<object>.json` (a JSON array) to the generated data.
    fn load_fixtures(&self) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/servicem8");
        for object in OBJECTS {
            let Ok(text) = std::fs::read_to_string(dir.join(format!("{object}.json"))) else { continue };
            if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) {
                for item in items {
                    self.put(object, item);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts serving on `addr` (port 0 for any).
    pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<Running> {
        let sim = Simulator::new(config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let router = sim.clone().router();
        tokio::spawn(sim.hooks.clone().run(format!("http://{addr}/api_1.0"), shutdown.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        Ok(Running { addr, sim, shutdown })
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/access_token", post(access_token))
            .route("/api_1.0/{file}", get(list_objects).post(create_object))
            .route("/api_1.0/{object}/{file}", get(get_object).post(update_object).delete(delete_object))
            .route(
                "/webhook_subscriptions",
                get(list_subscriptions).post(create_subscription).delete(delete_subscription),
            )
            .route("/webhook_subscriptions/object", post(create_subscription))
            // The simulator's own controls (not ServiceM8's): the bench changes records through them.
            .route("/_sim/modify/{object}/{uuid}", post(modify_record))
            .route("/_sim/ids/{object}", get(record_ids))
            .with_state(self)
    }

    // ---- test controls -------------------------------------------------------------------

    /// All records of `object`, as served.
    pub fn records(&self, object: &str) -> Vec<Value> {
        self.lock().objects.get(object).map(|m| m.values().cloned().map(Value::Object).collect()).unwrap_or_default()
    }

    pub fn record(&self, object: &str, uuid: &str) -> Option<Value> {
        self.lock().objects.get(object)?.get(uuid).cloned().map(Value::Object)
    }

    /// Inserts or replaces a whole record (stamping `edit_date`).
    pub fn put(&self, object: &str, mut value: Value) {
        let key = OBJECTS.iter().find(|o| **o == object).copied().expect("known object");
        let map = value.as_object_mut().expect("an object");
        map.entry("edit_date").or_insert_with(|| json!(now_stamp()));
        map.entry("active").or_insert(json!(1));
        let uuid = map["uuid"].as_str().expect("uuid").to_owned();
        let fields = map.keys().cloned().collect();
        self.lock().objects.get_mut(key).expect("known").insert(uuid.clone(), map.clone());
        self.hooks.changed(key, &uuid, fields, &now_stamp());
    }

    /// Changes fields of a record as a ServiceM8 user would, bumping `edit_date`.
    pub fn modify(&self, object: &str, uuid: &str, patch: Value) -> bool {
        let Some(key) = OBJECTS.iter().find(|o| **o == object).copied() else { return false };
        let patch = patch.as_object().expect("patch is an object");
        {
            let mut state = self.lock();
            let Some(record) = state.objects.get_mut(key).and_then(|m| m.get_mut(uuid)) else { return false };
            for (k, v) in patch {
                record.insert(k.clone(), v.clone());
            }
            record.insert("edit_date".into(), json!(now_stamp()));
        }
        self.hooks.changed(key, uuid, patch.keys().cloned().collect(), &now_stamp());
        true
    }

    /// Removes a record outright (a hard delete, only a full reconciliation can notice).
    pub fn hard_delete(&self, object: &str, uuid: &str) -> bool {
        let Some(key) = OBJECTS.iter().find(|o| **o == object).copied() else { return false };
        let removed = self.lock().objects.get_mut(key).and_then(|m| m.remove(uuid)).is_some();
        if removed {
            self.hooks.changed(key, uuid, vec!["active".into()], &now_stamp());
        }
        removed
    }

    /// The webhook side: subscriptions, knobs and counters.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Makes request number `stats().api_requests + after` (1 = the next one) fail with `fault`.
    pub fn schedule_fault(&self, after: u64, fault: Fault) {
        let mut state = self.lock();
        let at = state.stats.api_requests + after;
        state.scheduled.insert(at, fault);
    }

    /// Makes the next API request to `request` (method and path under `/api_1.0/`, e.g.
    /// `GET attachment/{uuid}.file` or `POST job.json`; `GET /webhook_subscriptions`) fail with `fault`, whatever other
    /// requests arrive first: the service's background work (polls, webhook fetches) cannot
    /// take it.
    pub fn schedule_fault_at(&self, path: &str, fault: Fault) {
        self.lock().aimed.push((path.to_owned(), fault));
    }

    /// Makes the next create land under `company_uuid` instead of where it was asked to, as a
    /// provider with its own placement rules might.
    pub fn misplace_next_create(&self, company_uuid: &str) {
        self.lock().misplace = Some(company_uuid.to_owned());
    }

    pub fn set_knobs(&self, knobs: FaultKnobs) {
        self.lock().knobs = knobs;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Every access token issued so far stops working (as if an hour passed).
    pub fn expire_access_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Every refresh token stops working (the user disconnected the add-on).
    pub fn revoke_refresh_tokens(&self) {
        self.lock().refresh_tokens.clear();
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn issue_tokens(&self, state: &mut State_, scope: Option<String>) -> Value {
        let access = format!("sim_at_{}", random_token(&mut state.rng));
        let refresh = format!("sim_rt_{}", random_token(&mut state.rng));
        state.access_tokens.insert(access.clone(), Instant::now() + self.config.access_token_ttl);
        state.refresh_tokens.insert(refresh.clone(), ());
        json!({
            "access_token": access, "token_type": "bearer", "expires_in": self.config.access_token_ttl.as_secs(),
            "refresh_token": refresh, "scope": scope.unwrap_or_default()
        })
    }
}

/// Codes and tokens come from OS randomness, not the seeded generator: they must not repeat.
fn random_token(_: &mut StdRng) -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sm_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"errorCode": status.as_u16(), "message": message}))).into_response()
}

// ---- OAuth -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
}

/// Auto-approves: redirects straight back with a code, as if the user clicked "Allow".
async fn authorize(State(sim): State<Arc<Simulator>>, Query(p): Query<AuthorizeParams>) -> Response {
    if p.response_type.as_deref() != Some("code") || p.client_id.as_deref() != Some(&sim.config.client_id) {
        return (StatusCode::BAD_REQUEST, "invalid client_id or response_type").into_response();
    }
    let Some(redirect) = p.redirect_uri.as_deref().and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is required").into_response();
    };
    let mut state = sim.lock();
    let code = random_token(&mut state.rng);
    state.codes.insert(code.clone(), (p.scope.clone().unwrap_or_default(), p.code_challenge.clone()));
    drop(state);
    let mut target = redirect;
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
    code_verifier: Option<String>,
}

fn oauth_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response()
}

/// Form-encoded token endpoint: authorization_code and refresh_token grants.
async fn access_token(State(sim): State<Arc<Simulator>>, headers: HeaderMap, Form(form): Form<TokenForm>) -> Response {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error("invalid_request");
    }
    if form.client_id.as_deref() != Some(&sim.config.client_id)
        || form.client_secret.as_deref() != Some(&sim.config.client_secret)
    {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let mut state = sim.lock();
    match form.grant_type.as_str() {
        "authorization_code" => {
            let Some((scope, challenge)) = form.code.as_deref().and_then(|c| state.codes.remove(c)) else {
                return oauth_error("invalid_grant");
            };
            if let Some(challenge) = challenge {
                let verifier = form.code_verifier.unwrap_or_default();
                let computed =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                if computed != challenge {
                    return oauth_error("invalid_grant");
                }
            }
            state.stats.token_exchanges += 1;
            let body = sim.issue_tokens(&mut state, Some(scope));
            axum::Json(body).into_response()
        }
        "refresh_token" => {
            state.stats.refresh_attempts += 1;
            let Some(token) = form.refresh_token else { return oauth_error("invalid_request") };
            if !state.refresh_tokens.contains_key(&token) {
                return oauth_error("invalid_grant");
            }
            state.stats.refreshes += 1;
            if sim.config.rotate_refresh_tokens {
                state.refresh_tokens.remove(&token);
                let body = sim.issue_tokens(&mut state, None);
                axum::Json(body).into_response()
            } else {
                let mut body = sim.issue_tokens(&mut state, None);
                let issued = body["refresh_token"].as_str().expect("issued").to_owned();
                state.refresh_tokens.remove(&issued);
                body["refresh_token"] = json!(token);
                axum::Json(body).into_response()
            }
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

// ---- API ---------------------------------------------------------------------------------

/// What the gate decided for one API request.
enum Gate {
    Proceed { truncate: bool, lose: Option<Duration> },
    Reject(Response),
}

/// Auth, rate limits and faults, applied to every API request in order.
async fn gate(sim: &Simulator, headers: &HeaderMap, request: &str) -> Gate {
    let (fault, delay, gate) = {
        let mut state = sim.lock();
        state.stats.api_requests += 1;
        let n = state.stats.api_requests;
        let fault = state.scheduled.remove(&n).or_else(|| {
            let aimed = state.aimed.iter().position(|(r, _)| r == request)?;
            Some(state.aimed.remove(aimed).1)
        });
        let knobs = state.knobs.clone();
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::to_owned);
        let valid = token.as_ref().and_then(|t| state.access_tokens.get(t)).is_some_and(|exp| *exp > Instant::now());
        let now = Instant::now();
        while state.minute_window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            state.minute_window.pop_front();
        }
        let gate = if !valid || matches!(fault, Some(Fault::ExpiredToken)) {
            Some(sm_error(StatusCode::UNAUTHORIZED, "Authentication failed. Please check your API key or OAuth token."))
        } else if state.minute_window.len() as u32 >= sim.config.per_minute_limit {
            state.stats.rate_limited += 1;
            let wait =
                state.minute_window.front().map(|t| 60u64.saturating_sub(now.duration_since(*t).as_secs()).max(1));
            Some(too_many(knobs.retry_after_secs.or(wait), false, "per minute"))
        } else if state.day_count >= sim.config.per_day_limit {
            state.stats.rate_limited += 1;
            Some(too_many(knobs.retry_after_secs, true, "per day"))
        } else {
            state.minute_window.push_back(now);
            state.day_count += 1;
            let roll: f64 = state.rng.random();
            if roll < knobs.rate_429 {
                state.stats.rate_limited += 1;
                Some(too_many(knobs.retry_after_secs, false, "per minute"))
            } else if roll < knobs.rate_429 + knobs.rate_5xx {
                Some(sm_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"))
            } else {
                None
            }
        };
        let truncate_roll: f64 = state.rng.random();
        (fault, knobs.latency, gate.map(Err).unwrap_or(Ok(truncate_roll < knobs.rate_truncated)))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match (gate, fault) {
        (Err(response), _) => Gate::Reject(response),
        (Ok(_), Some(Fault::TooManyRequests { retry_after_secs, text_body })) => {
            sim.lock().stats.rate_limited += 1;
            Gate::Reject(too_many(retry_after_secs, text_body, "per minute"))
        }
        (Ok(_), Some(Fault::ServerError(code))) => {
            Gate::Reject(sm_error(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY), "Server error"))
        }
        (Ok(_), Some(Fault::Delay(d))) => {
            tokio::time::sleep(d).await;
            Gate::Proceed { truncate: false, lose: None }
        }
        (Ok(_), Some(Fault::Truncated)) => Gate::Proceed { truncate: true, lose: None },
        (Ok(_), Some(Fault::LoseResponse(d))) => Gate::Proceed { truncate: false, lose: Some(d) },
        (Ok(truncate), _) => Gate::Proceed { truncate, lose: None },
    }
}

/// ServiceM8's per-minute rate-limit answer (fixtures/).
const ERROR_429: &str = include_str!("../../../fixtures/servicem8/error_429.json");

fn too_many(retry_after: Option<u64>, text_body: bool, window: &str) -> Response {
    let message = format!("Number of allowed API requests {window} exceeded");
    let mut response = if text_body {
        (StatusCode::TOO_MANY_REQUESTS, message).into_response()
    } else if window == "per minute" {
        (StatusCode::TOO_MANY_REQUESTS, [(header::CONTENT_TYPE, "application/json")], ERROR_429).into_response()
    } else {
        sm_error(StatusCode::TOO_MANY_REQUESTS, &message)
    };
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Serializes `body`, cutting it in half when the gate said so.
fn json_body(body: &impl serde::Serialize, truncate: bool) -> Body {
    // A page of records is megabytes: start big rather than grow (and copy) twenty times.
    let mut bytes = Vec::with_capacity(1 << 20);
    serde_json::to_writer(&mut bytes, body).expect("serializable");
    if truncate { Body::from(bytes[..bytes.len() / 2].to_vec()) } else { Body::from(bytes) }
}

/// `field op value` clauses joined by `and`; ServiceM8 has no `ge`/`le`.
fn parse_filter(filter: &str) -> Result<Vec<(String, String, Value)>, String> {
    let mut clauses = Vec::new();
    for clause in split_and(filter) {
        let clause = clause.trim();
        let mut parts = clause.splitn(3, ' ');
        let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("Invalid filter clause: {clause}"));
        };
        if !matches!(op, "eq" | "ne" | "gt" | "lt") {
            return Err(format!("Unsupported filter operator: {op}"));
        }
        let value = value.trim();
        let value = if let Some(s) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            json!(s)
        } else {
            value.parse::<f64>().map(|f| json!(f)).map_err(|_| format!("Invalid filter value: {value}"))?
        };
        clauses.push((field.to_owned(), op.to_owned(), value));
    }
    if clauses.len() > 10 {
        return Err("At most 10 filter conditions are allowed".into());
    }
    Ok(clauses)
}

fn split_and(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = filter;
    while let Some(i) = rest.to_lowercase().find(" and ") {
        parts.push(&rest[..i]);
        rest = &rest[i + 5..];
    }
    parts.push(rest);
    parts
}

fn matches(record: &Map<String, Value>, clauses: &[(String, String, Value)]) -> bool {
    clauses.iter().all(|(field, op, value)| {
        let actual = record.get(field).cloned().unwrap_or(Value::Null);
        let ordering = match (value, &actual) {
            (Value::String(v), a) => {
                let a = match a {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                a.as_str().cmp(v.as_str())
            }
            (Value::Number(v), a) => {
                let a = match a {
                    Value::Number(n) => n.as_f64().unwrap_or(0.0),
                    Value::String(s) => s.parse().unwrap_or(0.0),
                    _ => 0.0,
                };
                a.partial_cmp(&v.as_f64().unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Equal)
            }
            _ => std::cmp::Ordering::Equal,
        };
        match op.as_str() {
            "eq" => ordering.is_eq(),
            "ne" => !ordering.is_eq(),
            "gt" => ordering.is_gt(),
            _ => ordering.is_lt(),
        }
    })
}

fn object_name(file: &str, suffix: &str) -> Option<&'static str> {
    let name = file.strip_suffix(suffix)?;
    OBJECTS.iter().copied().find(|o| *o == name)
}

async fn list_objects(
    State(sim): State<Arc<Simulator>>,
    Path(file): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let truncate = match gate(&sim, &headers, &format!("GET {file}")).await {
        Gate::Reject(r) => return r,
        Gate::Proceed { truncate, .. } => truncate,
    };
    if file == "vendor.json" {
        let vendor = sim.lock().vendor.clone();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(json_body(&json!([vendor]), truncate))
            .expect("valid response");
    }
    let Some(object) = object_name(&file, ".json") else {
        return sm_error(
            StatusCode::NOT_FOUND,
            "Resource not found. The requested record does not exist or has been deleted.",
        );
    };
    if sim.config.withheld.contains(&object) {
        return sm_error(StatusCode::FORBIDDEN, &format!("The access token lacks the scope to read {object} records"));
    }
    let clauses = match params.get("$filter").map(|f| parse_filter(f)).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(message) => return sm_error(StatusCode::BAD_REQUEST, &message),
    };
    let state = sim.lock();
    let all = &state.objects[object];
    let mut page_size = sim.config.page_size;
    if let Some(top) = params.get("$top").and_then(|t| t.parse::<usize>().ok()) {
        page_size = page_size.min(top.max(1));
    }
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/json");
    // Borrowed, not cloned: the page is written out while the state is held.
    let items: Vec<&Map<String, Value>> = match params.get("cursor").map(String::as_str) {
        // Without a cursor: everything at once (the legacy behaviour, UNCONFIRMED).
        None => all.values().filter(|r| matches(r, &clauses)).collect(),
        Some(cursor) => {
            let start = if cursor == "-1" { None } else { Some(cursor.to_owned()) };
            let mut iter: Box<dyn Iterator<Item = (&String, &Map<String, Value>)>> = match &start {
                None => Box::new(all.iter()),
                Some(after) => Box::new(
                    all.range::<String, _>((std::ops::Bound::Excluded(after.clone()), std::ops::Bound::Unbounded)),
                ),
            };
            let mut page = Vec::new();
            let mut last = None;
            for (uuid, record) in iter.by_ref() {
                if matches(record, &clauses) {
                    page.push(record);
                    last = Some(uuid.clone());
                    if page.len() == page_size {
                        break;
                    }
                }
            }
            let more = last.is_some() && page.len() == page_size && iter.any(|(_, r)| matches(r, &clauses));
            if more && let Some(last) = last {
                response = response.header("x-next-cursor", last);
            }
            page
        }
    };
    let body = json_body(&items, truncate);
    drop(state);
    response.body(body).expect("valid response")
}

async fn get_object(
    State(sim): State<Arc<Simulator>>,
    Path((object, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let truncate = match gate(&sim, &headers, &format!("GET {object}/{file}")).await {
        Gate::Reject(r) => return r,
        Gate::Proceed { truncate, .. } => truncate,
    };
    let object = if object == "dboattachment" { "attachment".to_owned() } else { object };
    if object == "attachment"
        && let Some(uuid) = file.strip_suffix(".file")
    {
        if let Some((content_type, bytes)) = sim.lock().files.get(uuid).cloned() {
            return ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
        }
        return match sim.record("attachment", uuid) {
            Some(record) => {
                let name = record["attachment_name"].as_str().unwrap_or("file").to_owned();
                let body = format!("%PDF-1.4\n% simulated attachment {uuid}: {name}\n%%EOF\n");
                ([(header::CONTENT_TYPE, "application/pdf")], body).into_response()
            }
            None => sm_error(
                StatusCode::NOT_FOUND,
                "Resource not found. The requested record does not exist or has been deleted.",
            ),
        };
    }
    let record = OBJECTS
        .iter()
        .find(|o| **o == object)
        .zip(file.strip_suffix(".json"))
        .and_then(|(o, uuid)| sim.record(o, uuid));
    match record {
        Some(record) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(json_body(&record, truncate))
            .expect("valid response"),
        None => sm_error(
            StatusCode::NOT_FOUND,
            "Resource not found. The requested record does not exist or has been deleted.",
        ),
    }
}

/// Fields ServiceM8 computes itself; writes of them are ignored.
const READ_ONLY: &[&str] = &["generated_job_id", "total_invoice_amount", "edit_date", "job_is_scheduled_until_stamp"];

fn apply_write(
    sim: &Simulator,
    object: &'static str,
    uuid: &str,
    body: &Map<String, Value>,
    create: bool,
) -> Result<(), Box<Response>> {
    write_record(sim, object, uuid, body, create)?;
    sim.hooks.changed(object, uuid, body.keys().cloned().collect(), &now_stamp());
    Ok(())
}

fn write_record(
    sim: &Simulator,
    object: &'static str,
    uuid: &str,
    body: &Map<String, Value>,
    create: bool,
) -> Result<(), Box<Response>> {
    let mut state = sim.lock();
    if create
        && object == "job"
        && !body
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| ["Quote", "Work Order", "Unsuccessful", "Completed"].contains(&s))
    {
        return Err(Box::new(sm_error(
            StatusCode::BAD_REQUEST,
            "status is required and must be Quote, Work Order, Unsuccessful or Completed",
        )));
    }
    if object == "jobactivity"
        && let Some(other) = double_booking(&state, uuid, body)
    {
        return Err(Box::new(sm_error(
            StatusCode::CONFLICT,
            &format!("The staff member is already scheduled from {} to {}", other.0, other.1),
        )));
    }
    let number = state.next_job_number;
    let table = state.objects.get_mut(object).expect("known");
    let record = if create {
        if table.contains_key(uuid) {
            return Err(Box::new(sm_error(StatusCode::BAD_REQUEST, "A record with this uuid already exists")));
        }
        table.entry(uuid.to_owned()).or_insert_with(|| {
            let mut m = Map::new();
            m.insert("uuid".into(), json!(uuid));
            m.insert("active".into(), json!(1));
            m
        })
    } else {
        match table.get_mut(uuid) {
            Some(r) => r,
            None => {
                return Err(Box::new(sm_error(
                    StatusCode::NOT_FOUND,
                    "Resource not found. The requested record does not exist or has been deleted.",
                )));
            }
        }
    };
    for (k, v) in body {
        if !READ_ONLY.contains(&k.as_str()) && k != "uuid" {
            record.insert(k.clone(), v.clone());
        }
    }
    record.insert("edit_date".into(), json!(now_stamp()));
    if create && object == "job" {
        record.insert("generated_job_id".into(), json!(number.to_string()));
        record.insert("total_invoice_amount".into(), json!("0.00"));
        for f in ["invoice_sent_stamp", "payment_received_stamp", "completion_date"] {
            record.entry(f).or_insert(json!(EMPTY_DATETIME));
        }
        state.next_job_number += 1;
    }
    // A material changes its job's computed total (a server-side effect).
    if object == "jobmaterial" {
        let job = state.objects["jobmaterial"][uuid].get("job_uuid").and_then(Value::as_str).map(str::to_owned);
        if let Some(job) = job {
            recompute_total(&mut state, &job);
        }
    }
    Ok(())
}

/// A booking that would overlap another live booking of the same staff member: the other's
/// (start, end). ServiceM8's own words for this are not documented; the simulator refuses it with
/// a 409 so that a provider's conflict can be shown passing through.
fn double_booking(state: &State_, uuid: &str, body: &Map<String, Value>) -> Option<(String, String)> {
    let current = state.objects["jobactivity"].get(uuid);
    let field = |name: &str| {
        body.get(name).or_else(|| current.and_then(|c| c.get(name))).and_then(Value::as_str).map(str::to_owned)
    };
    let (staff, start, end) = (field("staff_uuid")?, field("start_date")?, field("end_date")?);
    if staff.is_empty() || body.get("active") == Some(&json!(0)) {
        return None;
    }
    state.objects["jobactivity"].values().find_map(|other| {
        let text = |name: &str| other.get(name).and_then(Value::as_str).unwrap_or_default();
        let live = other.get("active") != Some(&json!(0)) && other.get("active") != Some(&json!("0"));
        (live
            && text("uuid") != uuid
            && text("staff_uuid") == staff
            && text("start_date") < end.as_str()
            && start.as_str() < text("end_date"))
        .then(|| (text("start_date").to_owned(), text("end_date").to_owned()))
    })
}

fn recompute_total(state: &mut State_, job: &str) {
    let total: f64 = state.objects["jobmaterial"]
        .values()
        .filter(|m| m.get("job_uuid").and_then(Value::as_str) == Some(job) && m.get("active") != Some(&json!(0)))
        .map(|m| {
            let q: f64 =
                m.get("quantity").and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_f64())).unwrap_or(0.0);
            let p: f64 =
                m.get("price").and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_f64())).unwrap_or(0.0);
            q * p
        })
        .sum();
    if let Some(j) = state.objects.get_mut("job").and_then(|t| t.get_mut(job)) {
        j.insert("total_invoice_amount".into(), json!(format!("{total:.2}")));
        j.insert("edit_date".into(), json!(now_stamp()));
    }
}

fn ok_body(uuid: Option<&str>) -> Response {
    let mut response = axum::Json(json!({"errorCode": 0, "message": "OK"})).into_response();
    if let Some(uuid) = uuid.and_then(|u| HeaderValue::from_str(u).ok()) {
        response.headers_mut().insert("x-record-uuid", uuid);
    }
    response
}

async fn finish(lose: Option<Duration>, response: Response) -> Response {
    if let Some(d) = lose {
        tokio::time::sleep(d).await;
    }
    response
}

async fn create_object(
    State(sim): State<Arc<Simulator>>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let lose = match gate(&sim, &headers, &format!("POST {file}")).await {
        Gate::Reject(r) => return r,
        Gate::Proceed { lose, .. } => lose,
    };
    let Some(object) = object_name(&file, ".json") else {
        return sm_error(StatusCode::NOT_FOUND, "Resource not found.");
    };
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&body) else {
        return sm_error(StatusCode::BAD_REQUEST, "An error occurred completing your request");
    };
    if let Some(company) = sim.lock().misplace.take() {
        body.insert("company_uuid".into(), Value::String(company));
    }
    let uuid = match body.get("uuid").and_then(Value::as_str) {
        Some(u) => u.to_owned(),
        None => {
            let mut state = sim.lock();
            uuid_from(&mut state.rng)
        }
    };
    if let Err(r) = apply_write(&sim, object, &uuid, &body, true) {
        return *r;
    }
    sim.lock().stats.creates += 1;
    finish(lose, ok_body(Some(&uuid))).await
}

async fn update_object(
    State(sim): State<Arc<Simulator>>,
    Path((object, file)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let lose = match gate(&sim, request.headers(), &format!("POST {object}/{file}")).await {
        Gate::Reject(r) => return r,
        Gate::Proceed { lose, .. } => lose,
    };
    if object == "attachment"
        && let Some(uuid) = file.strip_suffix(".file")
    {
        return finish(lose, upload_file(&sim, uuid, request).await).await;
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), 1 << 20).await else {
        return sm_error(StatusCode::BAD_REQUEST, "An error occurred completing your request");
    };
    let (Some(object), Some(uuid)) = (OBJECTS.iter().copied().find(|o| *o == object), file.strip_suffix(".json"))
    else {
        return sm_error(StatusCode::NOT_FOUND, "Resource not found.");
    };
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return sm_error(StatusCode::BAD_REQUEST, "An error occurred completing your request");
    };
    if let Err(r) = apply_write(&sim, object, uuid, &body, false) {
        return *r;
    }
    finish(lose, ok_body(None)).await
}

/// `POST /attachment/{uuid}.file`: multipart, the bytes in field `file`.
async fn upload_file(sim: &Simulator, uuid: &str, request: axum::extract::Request) -> Response {
    use axum::extract::FromRequest;
    if sim.record("attachment", uuid).is_none() {
        return sm_error(
            StatusCode::NOT_FOUND,
            "Resource not found. The requested record does not exist or has been deleted.",
        );
    }
    let Ok(mut form) = axum::extract::Multipart::from_request(request, &()).await else {
        return sm_error(StatusCode::BAD_REQUEST, "An error occurred completing your request");
    };
    while let Ok(Some(part)) = form.next_field().await {
        if part.name() != Some("file") {
            continue;
        }
        let content_type = part.content_type().unwrap_or("application/octet-stream").to_owned();
        let Ok(bytes) = part.bytes().await else { break };
        sim.lock().files.insert(uuid.to_owned(), (content_type, bytes.to_vec()));
        return ok_body(None);
    }
    sm_error(StatusCode::BAD_REQUEST, "An error occurred completing your request")
}

/// DELETE is a soft delete: `active = 0`, `edit_date` bumped; the record stays readable.
async fn delete_object(
    State(sim): State<Arc<Simulator>>,
    Path((object, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let lose = match gate(&sim, &headers, &format!("DELETE {object}/{file}")).await {
        Gate::Reject(r) => return r,
        Gate::Proceed { lose, .. } => lose,
    };
    let (Some(object), Some(uuid)) = (OBJECTS.iter().copied().find(|o| *o == object), file.strip_suffix(".json"))
    else {
        return sm_error(StatusCode::NOT_FOUND, "Resource not found.");
    };
    let body: Map<String, Value> = [("active".to_owned(), json!(0))].into_iter().collect();
    if let Err(r) = apply_write(&sim, object, uuid, &body, false) {
        return *r;
    }
    finish(lose, ok_body(None)).await
}

// ---- webhook subscriptions (form-encoded, like ServiceM8's) ---------------------------------

fn form_fields(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn success(ok: bool, message: Option<String>) -> Response {
    let mut body = json!({"success": ok});
    if let Some(m) = message {
        body["message"] = json!(m);
    }
    (if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST }, axum::Json(body)).into_response()
}

async fn list_subscriptions(State(sim): State<Arc<Simulator>>, headers: HeaderMap) -> Response {
    if let Gate::Reject(r) = gate(&sim, &headers, "GET /webhook_subscriptions").await {
        return r;
    }
    axum::Json(sim.hooks.subscriptions()).into_response()
}

async fn create_subscription(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Gate::Reject(r) = gate(&sim, &headers, "POST /webhook_subscriptions").await {
        return r;
    }
    let form = form_fields(&body);
    let Some(object) = form.get("object").filter(|o| !o.is_empty() && o.len() <= 64) else {
        return success(false, Some("Please specify an object for subscription".into()));
    };
    if !OBJECTS.contains(&object.as_str()) {
        return success(false, Some(format!("Unknown object {object}")));
    }
    let Some(callback_url) = form.get("callback_url").filter(|u| u.starts_with("http")) else {
        return success(false, Some("Please specify a callback_url".into()));
    };
    let subscription = super::webhooks::Subscription {
        object: object.clone(),
        fields: form.get("fields").cloned().unwrap_or_default(),
        callback_url: callback_url.clone(),
        unique_id: form.get("unique_id").cloned().unwrap_or_default().chars().take(100).collect(),
    };
    match sim.hooks.subscribe(subscription).await {
        Ok(()) => success(true, None),
        Err(message) => success(false, Some(message)),
    }
}

async fn delete_subscription(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Gate::Reject(r) = gate(&sim, &headers, "DELETE /webhook_subscriptions").await {
        return r;
    }
    let form = form_fields(&body);
    let Some(object) = form.get("object") else {
        return success(false, Some("Please specify an object for subscription".into()));
    };
    sim.hooks.unsubscribe(object, form.get("callback_url").map(String::as_str));
    success(true, None)
}

/// `POST /_sim/modify/{object}/{uuid}` with a JSON object of fields: a change made at ServiceM8.
async fn modify_record(
    State(sim): State<Arc<Simulator>>,
    Path((object, uuid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(patch @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected a JSON object of fields").into_response();
    };
    if sim.modify(&object, &uuid, patch) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// `GET /_sim/ids/{object}`: the ids of the live records of an object.
async fn record_ids(State(sim): State<Arc<Simulator>>, Path(object): Path<String>) -> Response {
    let state = sim.lock();
    let Some(records) = state.objects.get(object.as_str()) else { return StatusCode::NOT_FOUND.into_response() };
    let ids: Vec<&String> = records
        .iter()
        .filter(|(_, r)| r.get("active").is_none_or(|a| a != &json!(0) && a != "0"))
        .map(|(k, _)| k)
        .collect();
    axum::Json(ids).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_support_eq_ne_gt_lt_and_refuse_ge_le() {
        let clauses = parse_filter("edit_date gt '2026-01-01 00:00:00' and active eq 1").unwrap();
        assert_eq!(clauses.len(), 2);
        let record: Map<String, Value> =
            serde_json::from_value(json!({"edit_date":"2026-02-01 00:00:00","active":"1"})).unwrap();
        assert!(matches(&record, &clauses));
        assert!(parse_filter("edit_date ge '2026-01-01 00:00:00'").is_err());
        assert!(parse_filter("edit_date le '2026-01-01 00:00:00'").is_err());
    }

    #[test]
    fn generation_is_deterministic_for_a_seed() {
        let config = SimConfig { companies: 3, jobs_per_company: 4, ..SimConfig::default() };
        let a = Simulator::new(config.clone());
        let b = Simulator::new(config);
        assert_eq!(a.records("job"), b.records("job"));
        assert_eq!(a.records("company").len(), 3);
        assert_eq!(a.records("job").len(), 12);
    }
}
