//! Customer endpoints: one per company, with one live key (two during a reissue's grace
//! window). Every query here is scoped by the caller's account.

use chrono::{DateTime, Utc};
use clientapi_schema::model::Resource;
use clientapi_schema::{AccountId, CompanyId, ConnectionId};
use ipnet::IpNet;
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::endpoint_key;
use crate::error::{ApiError, FieldError};

/// Longest reissue grace window.
pub const MAX_GRACE_SECONDS: i64 = 7 * 24 * 3600;
pub const DEFAULT_RATE_LIMIT: i32 = 600;
/// Resources customers may write (through the provider).
pub const WRITABLE: [Resource; 7] = [
    Resource::Client,
    Resource::Contact,
    Resource::Job,
    Resource::LineItem,
    Resource::Attachment,
    Resource::Site,
    Resource::Visit,
];

/// Scopes about the operator's own people, granted only when asked for: the staff list, and
/// the technician shown on jobs and visits.
pub fn is_personal_scope(scope: &str) -> bool {
    scope == Resource::Staff.read_scope() || scope == crate::auth::TECHNICIANS_READ
}

/// Every scope there is.
pub fn all_scopes() -> Vec<String> {
    Resource::ALL
        .iter()
        .map(|r| r.read_scope())
        .chain([crate::auth::TECHNICIANS_READ.to_owned()])
        .chain(WRITABLE.iter().map(|r| r.write_scope()))
        .chain([crate::webhooks::WEBHOOKS_MANAGE.to_owned()])
        .collect()
}

/// Whether a read-only endpoint may hold `scope`: reads, and managing its own webhooks (which
/// writes nothing at the provider).
pub fn read_only_may_hold(scope: &str) -> bool {
    scope.ends_with(":read") || scope == crate::webhooks::WEBHOOKS_MANAGE
}

/// The default scopes: all reads but the personal ones, plus writes for read-write endpoints.
pub fn default_scopes(read_write: bool) -> Vec<String> {
    let mut scopes: Vec<String> =
        Resource::ALL.iter().map(|r| r.read_scope()).filter(|s| !is_personal_scope(s)).collect();
    if read_write {
        scopes.extend(WRITABLE.iter().map(|r| r.write_scope()));
    }
    scopes
}

/// An endpoint as admins see it (never its key).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Endpoint {
    #[serde(rename = "id")]
    pub public_id: String,
    pub name: String,
    pub connection_id: ConnectionId,
    pub company_external_id: String,
    pub provider: String,
    pub access: String,
    pub scopes: Vec<String>,
    pub environment: String,
    /// The connection's environment (`live` or `sandbox`).
    pub connection_environment: String,
    pub company_name: Option<String>,
    pub status: String,
    pub ip_allowlist: Vec<String>,
    pub rate_limit_per_minute: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub key_hint: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The public id, as pages write it.
    pub fn id(&self) -> &str {
        &self.public_id
    }
}

const SELECT: &str = "select e.public_id, e.name, e.connection_id, c.external_id as company_external_id, n.provider,
        e.access, e.scopes, e.environment, n.environment as connection_environment, c.name as company_name, e.status, e.ip_allowlist::text[] as ip_allowlist, e.rate_limit_per_minute,
        e.expires_at, e.last_used_at, host(e.last_used_ip) as last_used_ip,
        (select k.hint from endpoint_keys k where k.endpoint_id = e.id and k.revoked_at is null
         order by k.id desc limit 1) as key_hint,
        e.created_at, e.updated_at
    from endpoints e join companies c on c.id = e.company_id join connections n on n.id = e.connection_id";

pub async fn list(db: &PgPool, account: AccountId) -> Result<Vec<Endpoint>, sqlx::Error> {
    let sql = format!("{SELECT} where e.account_id = $1 order by e.id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(account).fetch_all(db).await
}

pub async fn get(db: &PgPool, account: AccountId, public_id: &str) -> Result<Option<Endpoint>, sqlx::Error> {
    let sql = format!("{SELECT} where e.account_id = $1 and e.public_id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(account).bind(public_id).fetch_optional(db).await
}

/// The settings an admin can set, parsed with every bad field reported at once.
#[derive(Debug, Default)]
pub struct Settings {
    pub name: Option<String>,
    pub access: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub environment: Option<String>,
    pub ip_allowlist: Option<Vec<IpNet>>,
    pub rate_limit_per_minute: Option<i32>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

fn string_field(body: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(key, "must be a string"));
            None
        }
    }
}

impl Settings {
    /// Parses the settable fields of `body`; `allowed` lists the other keys the caller accepts.
    pub fn parse(body: &Map<String, Value>, allowed: &[&str], errors: &mut Vec<FieldError>) -> Self {
        const SETTABLE: [&str; 7] =
            ["name", "access", "scopes", "environment", "ip_allowlist", "rate_limit_per_minute", "expires_at"];
        for key in body.keys() {
            if !SETTABLE.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
                errors.push(FieldError::new(key, "unknown field"));
            }
        }
        let mut s = Settings::default();
        if let Some(name) = string_field(body, "name", errors) {
            if name.trim().is_empty() || name.chars().count() > 200 {
                errors.push(FieldError::new("name", "must be 1 to 200 characters"));
            } else {
                s.name = Some(name.trim().to_owned());
            }
        }
        if let Some(access) = string_field(body, "access", errors) {
            if matches!(access.as_str(), "read_only" | "read_write") {
                s.access = Some(access);
            } else {
                errors.push(FieldError::new("access", "must be read_only or read_write"));
            }
        }
        if let Some(env) = string_field(body, "environment", errors) {
            if matches!(env.as_str(), "live" | "test") {
                s.environment = Some(env);
            } else {
                errors.push(FieldError::new("environment", "must be live or test"));
            }
        }
        match body.get("scopes") {
            None => {}
            Some(Value::Array(items)) => {
                let known = all_scopes();
                let mut scopes = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(scope) if known.iter().any(|k| k == scope) => scopes.push(scope.to_owned()),
                        _ => errors.push(FieldError::new(
                            format!("scopes[{i}]"),
                            format!("unknown scope; one of {}", known.join(", ")),
                        )),
                    }
                }
                scopes.sort();
                scopes.dedup();
                s.scopes = Some(scopes);
            }
            Some(_) => errors.push(FieldError::new("scopes", "must be an array of scope names")),
        }
        match body.get("ip_allowlist") {
            None => {}
            Some(Value::Array(items)) => {
                let mut nets = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let parsed = item.as_str().and_then(|t| {
                        t.parse::<IpNet>().ok().or_else(|| t.parse::<std::net::IpAddr>().ok().map(IpNet::from))
                    });
                    match parsed {
                        Some(net) => nets.push(net.trunc()),
                        None => errors.push(FieldError::new(
                            format!("ip_allowlist[{i}]"),
                            "must be an IPv4 or IPv6 address or CIDR",
                        )),
                    }
                }
                s.ip_allowlist = Some(nets);
            }
            Some(_) => errors.push(FieldError::new("ip_allowlist", "must be an array of CIDRs")),
        }
        match body.get("rate_limit_per_minute") {
            None => {}
            Some(v) => match v.as_i64() {
                Some(n) if (1..=1_000_000).contains(&n) => s.rate_limit_per_minute = Some(n as i32),
                _ => errors.push(FieldError::new("rate_limit_per_minute", "must be an integer from 1 to 1000000")),
            },
        }
        match body.get("expires_at") {
            None => {}
            Some(Value::Null) => s.expires_at = Some(None),
            Some(Value::String(t)) => match DateTime::parse_from_rfc3339(t) {
                Ok(at) if at > Utc::now() => s.expires_at = Some(Some(at.with_timezone(&Utc))),
                Ok(_) => errors.push(FieldError::new("expires_at", "must be in the future")),
                Err(_) => errors.push(FieldError::new("expires_at", "must be an RFC 3339 timestamp")),
            },
            Some(_) => errors.push(FieldError::new("expires_at", "must be an RFC 3339 timestamp or null")),
        }
        s
    }
}

/// A new endpoint and its key's plaintext (shown once).
pub struct Created {
    pub endpoint: Endpoint,
    pub key: String,
}

fn body_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::Invalid(vec![FieldError::new("body", "must be a JSON object")]))
}

/// Creates an endpoint for `company_external_id` of one of `account`'s connections.
pub async fn create(db: &PgPool, account: AccountId, body: &Value) -> Result<Created, ApiError> {
    let body = body_object(body)?;
    let mut errors = Vec::new();
    let settings = Settings::parse(body, &["connection_id", "company_external_id"], &mut errors);
    let connection = match body.get("connection_id").and_then(Value::as_i64) {
        Some(id) => Some(ConnectionId(id)),
        None => {
            errors.push(FieldError::new("connection_id", "required: the id of one of your connections"));
            None
        }
    };
    let company = string_field(body, "company_external_id", &mut errors);
    if company.is_none() && !errors.iter().any(|e| e.field == "company_external_id") {
        errors.push(FieldError::new("company_external_id", "required: the provider's id of the customer company"));
    }
    if settings.name.is_none() && !errors.iter().any(|e| e.field == "name") {
        errors.push(FieldError::new("name", "required"));
    }
    let mut company_id = None;
    let mut environment = settings.environment.clone();
    if let (Some(connection), Some(company)) = (connection, &company) {
        let found: Option<(String, Option<CompanyId>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select n.environment, (select c.id from companies c where c.connection_id = n.id and c.external_id = $3
                                    and {})
             from connections n where n.id = $1 and n.account_id = $2",
            crate::companies::ISSUABLE
        )))
        .bind(connection)
        .bind(account)
        .bind(company)
        .fetch_optional(db)
        .await?;
        match found {
            None => errors.push(FieldError::new("connection_id", "no such connection in your account")),
            Some((connection_environment, company)) => {
                match company {
                    None => errors.push(FieldError::new(
                        "company_external_id",
                        "no such company in this connection (has it synced? a site is served by its head office's endpoint)",
                    )),
                    Some(id) => company_id = Some(id),
                }
                let expected = endpoint_environment_for(&connection_environment);
                match &environment {
                    None => environment = Some(expected.to_owned()),
                    Some(asked) if asked != expected => {
                        errors.push(environment_mismatch(asked, &connection_environment))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let (connection, company_id) = (connection.expect("checked"), company_id.expect("checked"));
    let access = settings.access.unwrap_or_else(|| "read_only".into());
    let read_write = access == "read_write";
    let mut scopes = settings.scopes.unwrap_or_else(|| default_scopes(read_write));
    if !read_write {
        // A read-only endpoint holds no write scope, whatever was asked.
        scopes.retain(|s| read_only_may_hold(s));
    }
    let environment = environment.expect("checked");
    let key = endpoint_key::generate(environment == "test");
    let hash = hash_off_runtime(key.clone()).await?;
    let public_id = format!("ep_{}", Alphanumeric.sample_string(&mut rand::rng(), 16).to_lowercase());

    let mut tx = db.begin().await?;
    let id: i64 = sqlx::query_scalar(
        "insert into endpoints (public_id, account_id, connection_id, company_id, name, access, scopes, environment,
                                ip_allowlist, rate_limit_per_minute, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::cidr[], $10, $11) returning id",
    )
    .bind(&public_id)
    .bind(account)
    .bind(connection)
    .bind(company_id)
    .bind(settings.name.expect("checked"))
    .bind(&access)
    .bind(&scopes)
    .bind(&environment)
    .bind(settings.ip_allowlist.unwrap_or_default().iter().map(ToString::to_string).collect::<Vec<_>>())
    .bind(settings.rate_limit_per_minute.unwrap_or(DEFAULT_RATE_LIMIT))
    .bind(settings.expires_at.flatten())
    .fetch_one(&mut *tx)
    .await?;
    store_key(&mut tx, id, &hash, &key).await?;
    tx.commit().await?;
    let endpoint = get(db, account, &public_id).await?.ok_or(ApiError::NotFound)?;
    Ok(Created { endpoint, key })
}

/// The endpoint environment a connection's environment allows: test keys touch only test data.
pub fn endpoint_environment_for(connection_environment: &str) -> &'static str {
    if connection_environment == "sandbox" { "test" } else { "live" }
}

/// The 422 for an endpoint environment its connection does not allow.
fn environment_mismatch(asked: &str, connection_environment: &str) -> FieldError {
    FieldError::new(
        "environment",
        format!(
            "a {asked} endpoint cannot be on a {connection_environment} connection: test endpoints exist only on \
             sandbox connections and live endpoints only on live connections"
        ),
    )
}

/// Records a key's hash and hint (never the key) for an endpoint.
async fn store_key(conn: &mut sqlx::PgConnection, endpoint_id: i64, hash: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("insert into endpoint_keys (endpoint_id, key_hash, hint) values ($1, $2, $3)")
        .bind(endpoint_id)
        .bind(hash)
        .bind(endpoint_key::hint(key))
        .execute(conn)
        .await?;
    Ok(())
}

async fn hash_off_runtime(key: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || endpoint_key::hash(&key))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("argon2 task failed: {e}")))
}

/// Changes settings; returns the endpoint as it now is.
pub async fn update(db: &PgPool, account: AccountId, public_id: &str, body: &Value) -> Result<Endpoint, ApiError> {
    let body = body_object(body)?;
    let mut errors = Vec::new();
    let s = Settings::parse(body, &[], &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let current = get(db, account, public_id).await?.ok_or(ApiError::NotFound)?;
    if let Some(asked) = &s.environment
        && *asked != current.environment
    {
        // The key's prefix and the data it may touch both follow the connection.
        return Err(ApiError::Invalid(vec![environment_mismatch(asked, &current.connection_environment)]));
    }
    let access = s.access.unwrap_or(current.access);
    let mut scopes = s.scopes.unwrap_or(current.scopes);
    if access == "read_only" {
        scopes.retain(|scope| read_only_may_hold(scope));
    }
    sqlx::query(
        "update endpoints set name = coalesce($3, name), access = $4, scopes = $5, environment = coalesce($6, environment),
            ip_allowlist = coalesce($7::text[]::cidr[], ip_allowlist),
            rate_limit_per_minute = coalesce($8, rate_limit_per_minute),
            expires_at = case when $9 then $10 else expires_at end, updated_at = now()
         where account_id = $1 and public_id = $2",
    )
    .bind(account)
    .bind(public_id)
    .bind(s.name)
    .bind(access)
    .bind(scopes)
    .bind(s.environment)
    .bind(s.ip_allowlist.map(|nets| nets.iter().map(ToString::to_string).collect::<Vec<_>>()))
    .bind(s.rate_limit_per_minute)
    .bind(s.expires_at.is_some())
    .bind(s.expires_at.flatten())
    .execute(db)
    .await?;
    get(db, account, public_id).await?.ok_or(ApiError::NotFound)
}

/// Issues a new key. The old one stays valid for `grace_seconds` (0 = revoked at once).
pub async fn reissue(
    db: &PgPool,
    account: AccountId,
    public_id: &str,
    grace_seconds: i64,
) -> Result<Created, ApiError> {
    if !(0..=MAX_GRACE_SECONDS).contains(&grace_seconds) {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "grace_seconds",
            format!("must be from 0 to {MAX_GRACE_SECONDS}"),
        )]));
    }
    let found: Option<(i64, String)> =
        sqlx::query_as("select id, environment from endpoints where account_id = $1 and public_id = $2")
            .bind(account)
            .bind(public_id)
            .fetch_optional(db)
            .await?;
    let (id, environment) = found.ok_or(ApiError::NotFound)?;
    let key = endpoint_key::generate(environment == "test");
    let hash = hash_off_runtime(key.clone()).await?;
    let mut tx = db.begin().await?;
    if grace_seconds == 0 {
        sqlx::query("update endpoint_keys set revoked_at = now() where endpoint_id = $1 and revoked_at is null")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "update endpoint_keys set expires_at = least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2))
             where endpoint_id = $1 and revoked_at is null",
        )
        .bind(id)
        .bind(grace_seconds as f64)
        .execute(&mut *tx)
        .await?;
    }
    store_key(&mut tx, id, &hash, &key).await?;
    tx.commit().await?;
    let endpoint = get(db, account, public_id).await?.ok_or(ApiError::NotFound)?;
    Ok(Created { endpoint, key })
}

pub async fn set_status(db: &PgPool, account: AccountId, public_id: &str, active: bool) -> Result<Endpoint, ApiError> {
    let done =
        sqlx::query("update endpoints set status = $3, updated_at = now() where account_id = $1 and public_id = $2")
            .bind(account)
            .bind(public_id)
            .bind(if active { "active" } else { "inactive" })
            .execute(db)
            .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    get(db, account, public_id).await?.ok_or(ApiError::NotFound)
}

pub async fn delete(db: &PgPool, account: AccountId, public_id: &str) -> Result<(), ApiError> {
    let done = sqlx::query("delete from endpoints where account_id = $1 and public_id = $2")
        .bind(account)
        .bind(public_id)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 { Err(ApiError::NotFound) } else { Ok(()) }
}
