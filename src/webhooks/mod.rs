//! Customer webhooks (DESIGN.md §8): an endpoint's subscriptions to its own company's events,
//! managed by the endpoint (`webhooks:manage`) and by its account's admins through the same
//! functions. Events come from the outbox the mirror writes (`clientapi_schema::outbox`) and go
//! out through the [`dispatch`]er, signed with the Standard Webhooks scheme ([`sign`]).
//!
//! A subscription can only ask for what its endpoint may read, and every delivery is checked
//! again against the endpoint as it is then: an endpoint that lost a scope hears nothing more
//! of that resource.

pub mod dispatch;
pub mod guard;
pub mod sign;

use chrono::{DateTime, Utc};
use clientapi_schema::model::Resource;
use clientapi_schema::{AccountId, CompanyId, ConnectionId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::Secret;
use crate::error::{ApiError, FieldError};
use crate::startup::AppState;

/// The scope that lets an endpoint manage its own webhook subscriptions.
pub const WEBHOOKS_MANAGE: &str = "webhooks:manage";
/// Subscriptions one endpoint may hold.
pub const MAX_PER_ENDPOINT: i64 = 20;
/// How long a rotated-out secret still signs, unless the rotation says otherwise.
pub const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;
/// Delivered, failed and dropped deliveries (and every attempt) are kept this long, for the log
/// and for replays.
pub const RETENTION_DAYS: i32 = 7;
/// What a record event's change can be.
pub const CHANGES: [&str; 3] = ["created", "updated", "deleted"];
/// Deliveries one page of the log shows at most.
pub const MAX_LOG_PAGE: i64 = 200;

/// Resources with events: those a company owns (staff and lookups are account-wide: read them
/// from their lists).
pub fn has_events(resource: Resource) -> bool {
    !resource.is_account_wide()
}

/// Who is managing subscriptions: one endpoint (its own), or an admin (their account's).
#[derive(Debug, Clone, Copy)]
pub enum Manager {
    Endpoint(i64),
    Account(AccountId),
}

impl Manager {
    /// The SQL condition on `s` (webhook_subscriptions) and `e` (its endpoint), with `$1`.
    fn condition(self) -> &'static str {
        match self {
            Manager::Endpoint(_) => "s.endpoint_id = $1",
            Manager::Account(_) => "e.account_id = $1",
        }
    }

    fn bind(self) -> i64 {
        match self {
            Manager::Endpoint(id) => id,
            Manager::Account(id) => id.0,
        }
    }
}

/// A subscription as its managers see it (never its secret, but at creation and rotation).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscription {
    #[serde(rename = "id")]
    pub public_id: String,
    /// The endpoint's public id.
    pub endpoint: String,
    pub url: String,
    pub events: Vec<String>,
    pub resources: Option<Vec<String>>,
    pub payload: String,
    pub description: String,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failure: Option<String>,
    /// Events waiting to be delivered.
    pub pending: i64,
    /// When the oldest waiting event happened (the subscription's lag).
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SELECT: &str = "select s.public_id, e.public_id as endpoint, s.url, s.events, s.resources, s.payload, s.description,
        s.status, s.disabled_reason, s.failing_since, s.last_success_at, s.last_failure_at, s.last_failure,
        coalesce(p.pending, 0) as pending, p.oldest_pending_at,
        case when s.previous_secret_expires_at > now() then s.previous_secret_expires_at end as previous_secret_expires_at,
        s.created_at, s.updated_at
    from webhook_subscriptions s
    join endpoints e on e.id = s.endpoint_id
    left join lateral (select count(*) as pending, min(d.created_at) as oldest_pending_at from webhook_deliveries d
                       where d.company_id = s.company_id and d.subscription_id = s.public_id and d.state = 'pending') p on true";

/// What a new subscription asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub resources: Option<Vec<String>>,
    pub payload: Option<String>,
    pub description: Option<String>,
    /// Admins only: the endpoint the subscription belongs to.
    pub endpoint: Option<String>,
}

/// A change to a subscription; absent fields stay as they are (`resources: null` means every
/// resource).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    #[serde(default, with = "serde_with_null")]
    pub resources: Option<Option<Vec<String>>>,
    pub payload: Option<String>,
    pub description: Option<String>,
    /// `active` (also re-enables a disabled subscription) or `paused`.
    pub status: Option<String>,
}

/// Reads a subscription body: an object whose fields, but those in `nullable`, are absent or
/// set (an explicit `null` is refused by name rather than read as "absent"), into `T`.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: Value, nullable: &[&str]) -> Result<T, ApiError> {
    let Value::Object(fields) = &body else {
        return Err(ApiError::Invalid(vec![FieldError::new("body", "must be a JSON object")]));
    };
    let nulls: Vec<FieldError> = fields
        .iter()
        .filter(|(k, v)| v.is_null() && !nullable.contains(&k.as_str()))
        .map(|(k, _)| {
            FieldError::new(k.chars().take(100).collect::<String>(), "must not be null: leave it out instead")
        })
        .collect();
    if !nulls.is_empty() {
        return Err(ApiError::Invalid(nulls));
    }
    serde_json::from_value(body).map_err(|e| ApiError::Invalid(vec![FieldError::new("body", e.to_string())]))
}

/// Tells an absent field (`None`) from an explicit null (`Some(None)`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// The endpoint a subscription belongs to, as far as its checks need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Owner {
    pub endpoint_id: i64,
    pub endpoint_public_id: String,
    pub account_id: AccountId,
    pub connection_id: ConnectionId,
    pub company_id: CompanyId,
    pub scopes: Vec<String>,
}

impl Owner {
    fn reads(&self, resource: Resource) -> bool {
        self.scopes.iter().any(|s| *s == resource.read_scope())
    }

    /// Finds the endpoint `public_id` of `account`.
    pub async fn of_endpoint(db: &PgPool, account: AccountId, public_id: &str) -> Result<Option<Self>, sqlx::Error> {
        sqlx::query_as(
            "select id as endpoint_id, public_id as endpoint_public_id, account_id, connection_id, company_id, scopes
             from endpoints where public_id = $1 and account_id = $2",
        )
        .bind(public_id)
        .bind(account)
        .fetch_optional(db)
        .await
    }
}

/// A created subscription, or a rotated one: with its secret, shown this once.
#[derive(Debug, Serialize)]
pub struct WithSecret {
    #[serde(flatten)]
    pub subscription: Subscription,
    pub secret: String,
}

/// Checks a subscriber URL: http(s), a host, no credentials in it, and (unless the operator
/// allows private addresses) not an address of the operator's own network. A host name is
/// checked again, resolved, at every delivery ([`guard`]).
pub fn check_url(url: &str, allow_private: bool) -> Result<url::Url, String> {
    if url.len() > 2000 {
        return Err("must be at most 2000 characters".into());
    }
    uri_text(url)?;
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password (verify deliveries by their signature)".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    let Some(host) = parsed.host() else { return Err("must have a host".into()) };
    if !allow_private && guard::is_private_host(&host) {
        return Err("points at a private, loopback or link-local address, which this service does not deliver to \
             (the operator can allow it with CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE)"
            .into());
    }
    Ok(parsed)
}

/// The text of a URI as RFC 3986 writes it (the document's `format: uri`): ASCII only, no
/// spaces or control characters (a URL parser would silently drop or encode them), every `%`
/// followed by two hex digits, brackets only around an IP literal host.
fn uri_text(url: &str) -> Result<(), String> {
    const ALLOWED: &str = "-._~:/?#[]@!$&'()*+,;=%";
    if let Some(c) = url.chars().find(|&c| !(c.is_ascii_alphanumeric() || ALLOWED.contains(c))) {
        return Err(if c.is_ascii() {
            format!("is not a URI (RFC 3986): {:?} must be percent-encoded", c)
        } else {
            format!(
                "is not a URI (RFC 3986): {c:?} is not ASCII; write a host in its punycode form (xn--…) and \
                 percent-encode the rest"
            )
        });
    }
    let bytes = url.as_bytes();
    for (i, _) in url.match_indices('%') {
        if !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err("is not a URI (RFC 3986): every % must begin a percent-encoding such as %20".into());
        }
    }
    // Brackets belong only to an IP literal, at the start of the authority.
    let authority = url.split_once("//").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let literal = host.starts_with('[') && host.matches('[').count() == 1 && host.matches(']').count() == 1;
    let brackets = url.matches(['[', ']']).count();
    if brackets > 0 && !(literal && brackets == 2) {
        return Err("is not a URI (RFC 3986): [ and ] belong only around an IPv6 host".into());
    }
    Ok(())
}

/// `events`: each `*`, `sync.completed`, `sync.*`, `{resource}.*` or `{resource}.{change}`, of a
/// resource the endpoint reads. Returns them deduplicated, in order.
fn check_events(owner: &Owner, events: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if events.is_empty() || events.len() > 100 {
        errors.push(FieldError::new("events", "must list 1 to 100 event types"));
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let field = format!("events[{i}]");
        let ok = match event.as_str() {
            "*" | "sync.*" | "sync.completed" => true,
            other => match other.split_once('.') {
                Some((name, change)) if change == "*" || CHANGES.contains(&change) => match Resource::parse(name) {
                    Some(r) if !has_events(r) => {
                        errors.push(FieldError::new(
                            &field,
                            format!("{} are account-wide and have no events: read them from their list", r.plural()),
                        ));
                        continue;
                    }
                    Some(r) if !owner.reads(r) => {
                        errors.push(FieldError::new(&field, format!("needs the {} scope", r.read_scope())));
                        continue;
                    }
                    Some(r) => {
                        let canonical = format!("{}.{change}", r.singular());
                        if !out.contains(&canonical) {
                            out.push(canonical);
                        }
                        continue;
                    }
                    None => false,
                },
                _ => false,
            },
        };
        if ok {
            if !out.contains(event) {
                out.push(event.clone());
            }
        } else {
            errors.push(FieldError::new(
                field,
                "must be *, sync.completed, or {resource}.created, .updated, .deleted or .* (e.g. job.updated)",
            ));
        }
    }
    out
}

/// `resources`: known resources with events that the endpoint reads, as singular names.
fn check_resources(owner: &Owner, resources: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    if resources.is_empty() || resources.len() > Resource::ALL.len() * 2 {
        errors.push(FieldError::new("resources", "must list at least one resource (or be null for all)"));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, name) in resources.iter().enumerate() {
        let field = format!("resources[{i}]");
        match Resource::parse(name) {
            None => errors.push(FieldError::new(field, "is not a resource (jobs, invoices, …)")),
            Some(r) if !has_events(r) => {
                errors.push(FieldError::new(field, format!("{} are account-wide and have no events", r.plural())))
            }
            Some(r) if !owner.reads(r) => {
                errors.push(FieldError::new(field, format!("needs the {} scope", r.read_scope())))
            }
            Some(r) => {
                if !out.contains(&r.singular().to_owned()) {
                    out.push(r.singular().to_owned());
                }
            }
        }
    }
    out
}

fn check_payload(payload: &str, errors: &mut Vec<FieldError>) {
    if !matches!(payload, "record" | "id") {
        errors.push(FieldError::new(
            "payload",
            "must be record (the record as the REST API renders it) or id (its id and URL)",
        ));
    }
}

fn check_description(description: &str, errors: &mut Vec<FieldError>) {
    if description.chars().count() > 500 || description.chars().any(char::is_control) {
        errors.push(FieldError::new("description", "must be at most 500 characters, without control characters"));
    }
}

fn seal(state: &AppState, public_id: &str, secret: &Secret<String>) -> Vec<u8> {
    state.tokens.cipher().encrypt(secret.expose(), &secret_aad(public_id))
}

/// Binds a sealed secret to its subscription: a secret copied onto another row fails to open.
pub fn secret_aad(public_id: &str) -> String {
    format!("webhook-secret:{public_id}")
}

/// Creates a subscription for `owner`'s endpoint; the answer holds its secret, this once.
pub async fn create(state: &AppState, owner: &Owner, new: NewSubscription) -> Result<WithSecret, ApiError> {
    let mut errors = Vec::new();
    let url = match new.url.as_deref() {
        None => {
            errors.push(FieldError::new("url", "is required"));
            None
        }
        Some(u) => {
            check_url(u, state.config.webhooks.allow_private).map_err(|m| errors.push(FieldError::new("url", m))).ok()
        }
    };
    let events = check_events(owner, new.events.as_deref().unwrap_or(&["*".to_owned()]), &mut errors);
    let resources = new.resources.as_deref().map(|r| check_resources(owner, r, &mut errors));
    let payload = new.payload.unwrap_or_else(|| "record".into());
    check_payload(&payload, &mut errors);
    let description = new.description.unwrap_or_default();
    check_description(&description, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let url = url.expect("checked above");

    let public_id = {
        use rand::distr::{Alphanumeric, SampleString};
        format!("whsub_{}", Alphanumeric.sample_string(&mut rand::rng(), 20).to_lowercase())
    };
    let secret = sign::new_secret();
    let mut tx = state.db.begin().await?;
    let count: i64 = sqlx::query_scalar("select count(*) from webhook_subscriptions where endpoint_id = $1")
        .bind(owner.endpoint_id)
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_PER_ENDPOINT {
        return Err(ApiError::Conflict {
            code: "too_many_subscriptions",
            detail: format!("An endpoint holds at most {MAX_PER_ENDPOINT} webhook subscriptions; delete one first."),
        });
    }
    // Under the mirror writers' lock: every change committed after this subscription exists
    // reaches it (see `clientapi_schema::outbox::Outbox`).
    clientapi_schema::mirror::lock_connection(&mut tx, owner.connection_id).await?;
    sqlx::query(
        "insert into webhook_subscriptions (company_id, public_id, connection_id, endpoint_id, url, events, resources,
                                            payload, description, secret_enc)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(owner.company_id)
    .bind(&public_id)
    .bind(owner.connection_id)
    .bind(owner.endpoint_id)
    .bind(url.as_str())
    .bind(&events)
    .bind(&resources)
    .bind(&payload)
    .bind(&description)
    .bind(seal(state, &public_id, &secret))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let subscription =
        get(&state.db, Manager::Endpoint(owner.endpoint_id), &public_id).await?.ok_or(ApiError::NotFound)?;
    Ok(WithSecret { subscription, secret: secret.expose().clone() })
}

/// Every subscription `manager` may see (an admin: optionally one endpoint's).
pub async fn list(db: &PgPool, manager: Manager, endpoint: Option<&str>) -> Result<Vec<Subscription>, sqlx::Error> {
    let sql = format!(
        "{SELECT} where {} and ($2::text is null or e.public_id = $2) order by s.created_at, s.public_id",
        manager.condition()
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(manager.bind()).bind(endpoint).fetch_all(db).await
}

/// One subscription, if `manager` may see it (another's looks missing).
pub async fn get(db: &PgPool, manager: Manager, public_id: &str) -> Result<Option<Subscription>, sqlx::Error> {
    let sql = format!("{SELECT} where {} and s.public_id = $2", manager.condition());
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(manager.bind()).bind(public_id).fetch_optional(db).await
}

/// The subscription's endpoint, if `manager` may see the subscription.
async fn owner_of(db: &PgPool, manager: Manager, public_id: &str) -> Result<Owner, ApiError> {
    let sql = format!(
        "select e.id as endpoint_id, e.public_id as endpoint_public_id, e.account_id, e.connection_id, e.company_id, e.scopes
         from webhook_subscriptions s join endpoints e on e.id = s.endpoint_id where {} and s.public_id = $2",
        manager.condition()
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(manager.bind())
        .bind(public_id)
        .fetch_optional(db)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Changes a subscription. Re-activating a disabled one clears why it was disabled; its
/// waiting events go out again.
pub async fn update(
    state: &AppState,
    manager: Manager,
    public_id: &str,
    change: SubscriptionChange,
) -> Result<Subscription, ApiError> {
    let owner = owner_of(&state.db, manager, public_id).await?;
    let mut errors = Vec::new();
    let url = change.url.as_deref().and_then(|u| {
        check_url(u, state.config.webhooks.allow_private).map_err(|m| errors.push(FieldError::new("url", m))).ok()
    });
    let events = change.events.as_deref().map(|e| check_events(&owner, e, &mut errors));
    let resources = change.resources.as_ref().map(|r| r.as_deref().map(|r| check_resources(&owner, r, &mut errors)));
    if let Some(p) = &change.payload {
        check_payload(p, &mut errors);
    }
    if let Some(d) = &change.description {
        check_description(d, &mut errors);
    }
    if let Some(s) = &change.status
        && !matches!(s.as_str(), "active" | "paused")
    {
        errors.push(FieldError::new("status", "must be active or paused"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    sqlx::query(
        "update webhook_subscriptions set
             url = coalesce($3, url), events = coalesce($4, events),
             resources = case when $5 then $6 else resources end,
             payload = coalesce($7, payload), description = coalesce($8, description),
             status = coalesce($9, status),
             disabled_reason = case when $9 = 'active' then null else disabled_reason end,
             failing_since = case when $9 = 'active' and status = 'disabled' then null else failing_since end,
             updated_at = now()
         where company_id = $1 and public_id = $2",
    )
    .bind(owner.company_id)
    .bind(public_id)
    .bind(url.as_ref().map(url::Url::as_str))
    .bind(events)
    .bind(resources.is_some())
    .bind(resources.flatten())
    .bind(change.payload)
    .bind(change.description)
    .bind(change.status)
    .execute(&state.db)
    .await?;
    dispatch::wake(&state.db).await;
    get(&state.db, manager, public_id).await?.ok_or(ApiError::NotFound)
}

/// Deletes a subscription and its waiting events.
pub async fn delete(db: &PgPool, manager: Manager, public_id: &str) -> Result<(), ApiError> {
    let owner = owner_of(db, manager, public_id).await?;
    sqlx::query("delete from webhook_subscriptions where company_id = $1 and public_id = $2")
        .bind(owner.company_id)
        .bind(public_id)
        .execute(db)
        .await?;
    Ok(())
}

/// A new secret; the old one keeps signing for `overlap_secs` (0: stops at once), so a
/// receiver can switch without missing a delivery.
pub async fn rotate_secret(
    state: &AppState,
    manager: Manager,
    public_id: &str,
    overlap_secs: Option<u64>,
) -> Result<WithSecret, ApiError> {
    let overlap = overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS);
    if overlap > 7 * 86_400 {
        return Err(ApiError::Invalid(vec![FieldError::new("overlap_seconds", "must be from 0 to 604800 (7 days)")]));
    }
    let owner = owner_of(&state.db, manager, public_id).await?;
    let secret = sign::new_secret();
    sqlx::query(
        "update webhook_subscriptions set previous_secret_enc = secret_enc,
             previous_secret_expires_at = now() + make_interval(secs => $3), secret_enc = $4, updated_at = now()
         where company_id = $1 and public_id = $2",
    )
    .bind(owner.company_id)
    .bind(public_id)
    .bind(overlap as f64)
    .bind(seal(state, public_id, &secret))
    .execute(&state.db)
    .await?;
    let subscription = get(&state.db, manager, public_id).await?.ok_or(ApiError::NotFound)?;
    Ok(WithSecret { subscription, secret: secret.expose().clone() })
}

/// What to replay: one event, or every retained event after a `change_seq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    pub event_id: Option<String>,
    pub since_change_seq: Option<i64>,
}

/// Queues retained events again (delivered, failed or dropped ones too); returns how many.
pub async fn replay(state: &AppState, manager: Manager, public_id: &str, replay: Replay) -> Result<u64, ApiError> {
    let owner = owner_of(&state.db, manager, public_id).await?;
    let (event, since) = match (&replay.event_id, replay.since_change_seq) {
        (Some(id), None) => {
            let n = id.strip_prefix("evt_").and_then(|n| n.parse::<i64>().ok()).ok_or_else(|| {
                ApiError::Invalid(vec![FieldError::new("event_id", "must be an event id like evt_123")])
            })?;
            (Some(n), None)
        }
        (None, Some(seq)) if seq >= 0 => (None, Some(seq)),
        _ => {
            return Err(ApiError::Invalid(vec![FieldError::new(
                "event_id",
                "give exactly one of event_id (one event) or since_change_seq (every event after it, a number ≥ 0)",
            )]));
        }
    };
    // Event ids and change_seq values are drawn from one sequence: "after N" means either.
    let done = sqlx::query(
        "update webhook_deliveries set state = 'pending', next_attempt_at = now(), leased_until = null
         where company_id = $1 and subscription_id = $2
           and (($3::bigint is not null and event_id = $3) or ($4::bigint is not null and coalesce(change_seq, event_id) > $4))",
    )
    .bind(owner.company_id)
    .bind(public_id)
    .bind(event)
    .bind(since)
    .execute(&state.db)
    .await?
    .rows_affected();
    if event.is_some() && done == 0 {
        return Err(ApiError::NotFound);
    }
    dispatch::wake(&state.db).await;
    Ok(done)
}

/// One event's deliveries to a subscription, newest first, with its attempts.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Delivery {
    #[sqlx(skip)]
    pub event_id: String,
    #[serde(skip)]
    pub event_seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub resource: Option<String>,
    pub record_id: Option<String>,
    pub change_seq: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The last attempt's latency and the start of the receiver's answer.
    pub last_latency_ms: Option<f32>,
    pub last_response: Option<String>,
}

/// A page of the delivery log, newest first, after `before` (an event id) if given.
pub async fn deliveries(
    db: &PgPool,
    manager: Manager,
    public_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Value, ApiError> {
    let owner = owner_of(db, manager, public_id).await?;
    let mut rows: Vec<Delivery> = sqlx::query_as(
        "select d.event_id as event_seq, d.event_type, d.resource, d.external_id as record_id, d.change_seq, d.created_at,
                d.state, d.attempts, case when d.state = 'pending' then d.next_attempt_at end as next_attempt_at,
                d.last_status, d.last_error, d.delivered_at, a.latency_ms as last_latency_ms, a.response as last_response
         from webhook_deliveries d
         left join lateral (select latency_ms, response from webhook_attempts a
                            where a.company_id = d.company_id and a.subscription_id = d.subscription_id and a.event_id = d.event_id
                            order by a.attempt desc limit 1) a on true
         where d.company_id = $1 and d.subscription_id = $2 and ($3::bigint is null or d.event_id < $3)
         order by d.event_id desc limit $4",
    )
    .bind(owner.company_id)
    .bind(public_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    for row in &mut rows {
        row.event_id = format!("evt_{}", row.event_seq);
    }
    let next = more.then(|| rows.last().map(|r| r.event_id.clone())).flatten();
    Ok(json!({ "data": rows, "next_before": next }))
}

#[cfg(test)]
mod tests {
    use super::uri_text;

    #[test]
    fn uri_text_takes_what_rfc_3986_writes_and_nothing_else() {
        for good in [
            "https://hooks.example.com/x?a=1&b=%20c",
            "https://[2001:db8::1]:8443/x",
            "https://user@[2001:db8::1]/x",
            "http://xn--3-rdb.example/x;p=1,(2)*'~!$",
        ] {
            assert_eq!(uri_text(good), Ok(()), "{good}");
        }
        for bad in [
            "https://¾3",
            "https://a b.example",
            "https://a.example/\n",
            "https://a.example/x%2",
            "https://a.example/x%g0",
            "https://a.example/[x]",
            "https://[2001:db8::1]]/x",
            "https://a.example/\"q\"",
            "https://a.example/{x}",
        ] {
            assert!(uri_text(bad).is_err(), "{bad}");
        }
    }
}
