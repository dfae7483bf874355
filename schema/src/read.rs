//! The public read path over the mirror: typed list queries (filters, keyset sort, page size)
//! turned into one SQL statement per page, run on a pool whose connections act as the
//! row-level-security role `clientapi_reader`, with the company set for the connection's session
//! (a one-statement read, [`scoped_statement`]) or for a read-only transaction (several
//! statements, [`scoped_read`]). The statement keeps its own `company_id = $1` filter: RLS is the
//! second lock, not the first, and where the two disagree no row passes both.
//! Rows come back as JSON text built by Postgres, ready to be spliced into the response.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgRow, PgTransactionManager};
use sqlx::{Executor, PgConnection, Postgres, Row, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;

use crate::CompanyId;
use crate::model::Resource;
pub use crate::reader_pool::{ReaderConnection, ReaderPool};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// How many reader connections a pool hands out at once by default: twice the cores of this
/// machine (which runs Postgres too when the service starts its own cluster), at least 4. A page
/// is one exchange with Postgres and gives its connection back at once, so more connections
/// than Postgres can run at once add no throughput: they only let more backends share the cores
/// whenever requests bunch up, and every request in the bunch waits on all of them. On two cores,
/// 4 connections served the REST list faster than 32, and with a lower, steadier tail
/// (bench/README.md).
pub fn default_read_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores.saturating_mul(2)).unwrap_or(u32::MAX).max(4)
}

/// A pool for the public read path, `connections` wide: every connection runs as
/// `clientapi_reader`. Lazy: no connection is made until the first read.
pub fn reader_pool(options: PgConnectOptions, connections: u32) -> ReaderPool {
    reader_pool_with_timeout(options, connections, Duration::from_secs(5))
}

/// [`reader_pool`] that gives up on a connection after `acquire_timeout` (a standby's is short:
/// the primary can answer instead).
pub fn reader_pool_with_timeout(options: PgConnectOptions, connections: u32, acquire_timeout: Duration) -> ReaderPool {
    // Named, so an operator (and a test) can tell the read path's backends from the rest.
    // Generic plans: the read statements are prepared once per connection, but on tables
    // hash-partitioned by company Postgres keeps choosing a custom plan (the generic plan's cost
    // counts every partition; the executor prunes them to one at start-up), so each execution
    // was planned again, and planning cost more than running (bench/README.md).
    // Read-only by default: a one-statement read runs outside any explicit transaction
    // ([`scoped_statement`]), and stays read-only as the scoped `begin read only` makes the rest.
    let options = options
        .application_name(READER_APPLICATION)
        .options([("plan_cache_mode", "force_generic_plan"), ("default_transaction_read_only", "on")]);
    // No check of a connection before it is handed out: a read's first exchange on it finds a
    // dead one instead (`Scoped::begin_on`'s `begin`, `scoped_statement`'s first statement).
    ReaderPool::new(options, connections, acquire_timeout)
}

/// How many times a read runs at most when its connection is lost under it ([`scoped_read`]).
pub const READ_ATTEMPTS: u32 = 3;

/// The read path's backends' `application_name`.
pub const READER_APPLICATION: &str = "clientapi-reader";

/// Whether `e` says the connection itself was lost (its backend terminated, the server shutting
/// down or restarting, a broken socket) rather than anything about the statement: the same read
/// on a fresh connection may well succeed.
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// A statement run on a connection of the scoped transaction, for [`scoped_read`].
pub type Statement<'c, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// Where the read path runs its statements: a reader pool (the primary's, or a hot standby's)
/// and, when it is a standby's, the primary's behind it for when the standby cannot serve.
#[derive(Clone)]
pub struct Reader {
    pool: ReaderPool,
    fallback: Option<Fallback>,
}

#[derive(Clone)]
struct Fallback {
    primary: ReaderPool,
    /// Told when the standby could not serve, so it is set aside until it answers again.
    on_failure: std::sync::Arc<dyn Fn() + Send + Sync>,
}

impl Reader {
    /// Reads on the primary's reader pool.
    pub fn primary(pool: ReaderPool) -> Self {
        Self { pool, fallback: None }
    }

    /// Reads on a standby's reader pool; a read the standby cannot serve (down, unreachable,
    /// its statement cancelled by replay) runs on `primary` instead, and `on_failure` is told.
    pub fn standby(pool: ReaderPool, primary: ReaderPool, on_failure: std::sync::Arc<dyn Fn() + Send + Sync>) -> Self {
        Self { pool, fallback: Some(Fallback { primary, on_failure }) }
    }

    /// The pool reads try first.
    pub fn pool(&self) -> &ReaderPool {
        &self.pool
    }

    /// The primary to read from instead, when this reader is a standby's and `e` says the
    /// standby could not serve (rather than anything about the statement).
    fn fall_back(&self, e: &sqlx::Error) -> Option<&ReaderPool> {
        let fallback = self.fallback.as_ref()?;
        let standby_failed = connection_lost(e)
            || matches!(e, sqlx::Error::PoolTimedOut)
            // "canceling statement due to conflict with recovery": replay needed the rows.
            || matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"));
        if !standby_failed {
            return None;
        }
        tracing::warn!(error = %e, "a read replica could not serve a read; reading from the primary");
        metrics::counter!("replica_fallbacks_total").increment(1);
        (fallback.on_failure)();
        Some(&fallback.primary)
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("standby", &self.fallback.is_some()).finish_non_exhaustive()
    }
}

/// Runs `run` inside a scoped read transaction; when the connection was lost under it (a killed
/// backend, a failover), again on a fresh one, up to [`READ_ATTEMPTS`] in all, so a dropped
/// connection costs no failed read (one retry was not enough: a backend killed during the retry's
/// statement too, under load, failed one read in a CI run of `tests/api/resilience.rs`).
/// On a standby that cannot serve, the read runs on the primary. For reads of several statements
/// (one snapshot) or that change settings for the transaction (`set local`); a read of one
/// statement is cheaper through [`scoped_statement`].
pub async fn scoped_read<T, F>(reader: &Reader, scope: Scope, run: F) -> Result<T, sqlx::Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> Statement<'c, T>,
{
    read_in(reader, scope, Shape::Transaction, run).await
}

/// Runs `run`, which sends exactly one statement, outside any explicit transaction (the
/// statement is its own, read-only by the connection's default), on a connection whose session
/// is scoped to the company: `clientapi.company_id` and `clientapi.technicians` set for the
/// session, not the transaction. The pool hands out a connection already set to this scope when
/// one is idle ([`ReaderPool::acquire_for`]), and then the read is one exchange with Postgres, the
/// statement alone; otherwise the scope is set first (one exchange more). Same guarantees as
/// [`scoped_read`]: row-level security as the read role with the company set, the statement's
/// own company filter beside it, the same retries and fallback. `run` must not `set local`.
pub async fn scoped_statement<T, F>(reader: &Reader, scope: Scope, run: F) -> Result<T, sqlx::Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> Statement<'c, T>,
{
    read_in(reader, scope, Shape::OneStatement, run).await
}

/// How a scoped read holds its company: for a transaction, or for the session.
#[derive(Clone, Copy)]
enum Shape {
    Transaction,
    OneStatement,
}

async fn read_in<T, F>(reader: &Reader, scope: Scope, shape: Shape, mut run: F) -> Result<T, sqlx::Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> Statement<'c, T>,
{
    match read_on(&reader.pool, scope, shape, &mut run).await {
        Err(e) => match reader.fall_back(&e) {
            Some(primary) => read_on(primary, scope, shape, &mut run).await,
            None => Err(e),
        },
        done => done,
    }
}

async fn read_on<T, F>(pool: &ReaderPool, scope: Scope, shape: Shape, run: &mut F) -> Result<T, sqlx::Error>
where
    F: for<'c> FnMut(&'c mut PgConnection) -> Statement<'c, T>,
{
    let mut attempts = 1;
    let mut dead = 0;
    loop {
        let result = match shape {
            Shape::Transaction => {
                let mut scoped = Scoped::begin_on(pool, scope, Hold::Page).await?;
                let result = run(scoped.conn()).await;
                scoped.finish(result)
            }
            Shape::OneStatement => {
                let mut scoped = SessionScoped { conn: pool.acquire_for(scope).await?, open: true };
                // Whether the next exchange is the first on a connection that sat idle.
                let mut first_on_idle = !scoped.conn.is_new();
                let result = match scoped.set(scope).await {
                    Ok(sent) => {
                        first_on_idle &= !sent;
                        run(scoped.conn()).await
                    }
                    Err(e) => Err(e),
                };
                let result = scoped.finish(result);
                // Lost on an idle connection's first exchange: it had died while idle (after a
                // failover every idle one has): the next one is taken, as `Scoped::begin_on` does.
                if first_on_idle && dead <= pool.capacity() && matches!(&result, Err(e) if connection_lost(e)) {
                    dead += 1;
                    continue;
                }
                result
            }
        };
        match result {
            Err(e) if attempts < READ_ATTEMPTS && connection_lost(&e) => {
                metrics::counter!("read_retries_total").increment(1);
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// Sort orders; every one ends with the id, so pages are stable and keysets unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// The provider id: immutable, so a walk sees every record exactly once even while syncs
    /// update records. The default.
    Id,
    UpdatedAt,
    CreatedAt,
    Number,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort { key: SortKey::Id, descending: false }
    }
}

impl Sort {
    pub fn parse(text: &str, resource: Resource) -> Option<Sort> {
        let (descending, name) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let key = match name {
            "id" => SortKey::Id,
            "updated_at" => SortKey::UpdatedAt,
            "created_at" => SortKey::CreatedAt,
            "number" if has_number(resource) => SortKey::Number,
            _ => return None,
        };
        Some(Sort { key, descending })
    }

    pub fn name(&self) -> String {
        let key = match self.key {
            SortKey::Id => "id",
            SortKey::UpdatedAt => "updated_at",
            SortKey::CreatedAt => "created_at",
            SortKey::Number => "number",
        };
        if self.descending { format!("-{key}") } else { key.to_owned() }
    }

    fn expression(&self) -> &'static str {
        match self.key {
            SortKey::Id => "t.external_id",
            SortKey::UpdatedAt => "t.remote_updated_at",
            SortKey::CreatedAt => "t.created_at",
            SortKey::Number => "coalesce(t.number, -1)",
        }
    }

    /// The sort key as text, for the cursor.
    fn text_expression(&self) -> &'static str {
        match self.key {
            SortKey::Id => "t.external_id",
            SortKey::UpdatedAt => {
                "case when isfinite(t.remote_updated_at) then to_char(t.remote_updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') else '-infinity' end"
            }
            SortKey::CreatedAt => {
                "case when isfinite(t.created_at) then to_char(t.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') else '-infinity' end"
            }
            SortKey::Number => "coalesce(t.number, -1)::text",
        }
    }

    /// The cursor's text turned back into a comparable value.
    fn bind_cast(&self) -> &'static str {
        match self.key {
            SortKey::Id => "({p})::text",
            SortKey::UpdatedAt | SortKey::CreatedAt => "(({p})::timestamp at time zone 'UTC')",
            SortKey::Number => "({p})::bigint",
        }
    }
}

/// A filter time: RFC 3339, or a date (midnight UTC).
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    parse_date(text)?.and_hms_opt(0, 0, 0).map(|t| t.and_utc())
}

/// `YYYY-MM-DD` exactly (RFC 3339's full-date): chrono alone would also take `2026-1-2`.
pub fn parse_date(text: &str) -> Option<chrono::NaiveDate> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    shaped.then(|| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()).flatten()
}

pub fn has_number(resource: Resource) -> bool {
    matches!(resource, Resource::Job | Resource::Invoice)
}

pub fn has_status(resource: Resource) -> bool {
    matches!(resource, Resource::Job | Resource::Invoice | Resource::Visit)
}

pub fn has_client_id(resource: Resource) -> bool {
    matches!(resource, Resource::Contact | Resource::Job | Resource::Invoice | Resource::Site)
}

pub fn has_job_id(resource: Resource) -> bool {
    matches!(
        resource,
        Resource::Invoice | Resource::LineItem | Resource::Payment | Resource::Attachment | Resource::Visit
    )
}

/// The company whose rows a read of `resource` sees, over `$1` (the endpoint's company): the
/// company itself, or for staff and lookups its connection's account scope (a security-definer
/// function the reader role may call; the rows' own policy asks the same).
pub fn scope_condition(resource: Resource, company: &str) -> String {
    if resource.is_account_wide() {
        format!("t.company_id = clientapi_account_scope({company})")
    } else {
        format!("t.company_id = {company}")
    }
}

/// Whose records a read sees: the endpoint's company (its head office, its sites and what
/// belongs to them, and its connection's staff and lookups), and whether the technicians
/// assigned to jobs and visits are shown (`technicians:read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub company: CompanyId,
    pub technicians: bool,
}

impl Scope {
    pub fn new(company: CompanyId, technicians: bool) -> Self {
        Self { company, technicians }
    }
}

pub fn has_invoice_id(resource: Resource) -> bool {
    matches!(resource, Resource::LineItem | Resource::Payment)
}

/// Filters every list accepts (those that make no sense for a resource are refused upstream).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub updated_since: Option<DateTime<Utc>>,
    pub updated_before: Option<DateTime<Utc>>,
    pub created_since: Option<DateTime<Utc>>,
    pub status: Option<Vec<String>>,
    pub ids: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub job_id: Option<String>,
    pub invoice_id: Option<String>,
    pub include_deleted: bool,
}

impl Filters {
    /// Whether how many rows the filters admit depends on their values and the company (a status,
    /// a time range, a parent): the best plan then differs between a small company and a large
    /// one, so such a statement is planned for its values, not by the generic plan the read path
    /// otherwise reuses (see [`reader_pool`]).
    pub fn value_dependent(&self) -> bool {
        self.updated_since.is_some()
            || self.updated_before.is_some()
            || self.created_since.is_some()
            || self.status.is_some()
            || self.client_id.is_some()
            || self.job_id.is_some()
            || self.invoice_id.is_some()
    }
}

/// Before a statement whose plan should follow its values (see [`Filters::value_dependent`]).
const CUSTOM_PLANS: &str = "set local plan_cache_mode = auto";

/// One page request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub resource: Resource,
    pub filters: Filters,
    pub sort: Sort,
    pub page_size: u32,
    /// Keyset position: (sort key as text, id) of the last row already returned.
    pub after: Option<(String, String)>,
    pub include_remote_data: bool,
}

/// A page: rows as JSON text, each row's keyset (sort key as text, id), and the keyset of the
/// last row when more may follow.
#[derive(Debug)]
pub struct PageRows {
    pub rows: Vec<String>,
    pub keys: Vec<(String, String)>,
    pub next: Option<(String, String)>,
}

/// What a field holds, so each API can type it: REST renders it as JSON, GraphQL declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// The record's own provider id.
    Id,
    /// Another record's provider id.
    Reference(Resource),
    Text,
    Integer,
    Boolean,
    /// A decimal string in the record's currency.
    Money,
    /// A decimal string without a currency (quantities).
    Decimal,
    Date,
    /// RFC 3339.
    Timestamp,
    Json,
}

/// One field of a record in the public shape: its name, its SQL expression over `t`, its kind.
#[derive(Debug, Clone)]
pub struct RecordField {
    pub name: &'static str,
    pub expr: String,
    pub kind: FieldKind,
}

/// The fields of one record in the public shape. `id` is the provider's id; money is a decimal
/// string; unknown times are null. The one list REST, GraphQL and the export are built from
/// (built once: every page asks for it).
pub fn record_fields(resource: Resource, include_remote_data: bool) -> &'static [RecordField] {
    &tables().fields[table_index(resource, include_remote_data)]
}

/// The JSON object of one record, rendered by Postgres as text. Without `technicians` (a key
/// without `technicians:read`) the technician is a plain `null` in the statement itself, not a
/// subquery the transaction's setting turns off: the statement then never names the staff and
/// visits tables, whose partitions and indexes a generic plan would otherwise lock on every
/// read (160 relation locks a page of jobs, 144 of them in the shared lock manager, against 70;
/// bench/README.md).
pub fn json_select(resource: Resource, include_remote_data: bool, technicians: bool) -> &'static str {
    let selects = if technicians { &tables().selects } else { &tables().selects_without_technicians };
    &selects[table_index(resource, include_remote_data)]
}

struct Tables {
    fields: Vec<Vec<RecordField>>,
    selects: Vec<String>,
    selects_without_technicians: Vec<String>,
}

fn table_index(resource: Resource, include_remote_data: bool) -> usize {
    let position = Resource::ALL.iter().position(|r| *r == resource).expect("every resource is in ALL");
    position * 2 + usize::from(include_remote_data)
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let fields: Vec<Vec<RecordField>> = Resource::ALL
            .into_iter()
            .flat_map(|r| [build_record_fields(r, false), build_record_fields(r, true)])
            .collect();
        let select = |fields: &[RecordField], technicians: bool| {
            let pairs: Vec<String> = fields
                .iter()
                .map(|f| {
                    let expr = if f.name == TECHNICIAN && !technicians { "null" } else { f.expr.as_str() };
                    format!("'{}', {expr}", f.name)
                })
                .collect();
            // json_build_object takes at most 100 arguments; these stay far below.
            format!("json_build_object({})::text", pairs.join(", "))
        };
        let selects = fields.iter().map(|f| select(f, true)).collect();
        let selects_without_technicians = fields.iter().map(|f| select(f, false)).collect();
        Tables { fields, selects, selects_without_technicians }
    })
}

/// The field shown only to keys holding `technicians:read`.
const TECHNICIAN: &str = "technician";

fn build_record_fields(resource: Resource, include_remote_data: bool) -> Vec<RecordField> {
    use FieldKind::*;
    let field = |name: &'static str, expr: String, kind| RecordField { name, expr, kind };
    // Cents when that is exact (220.00), more digits only when they carry value (3.505).
    let decimal = |c: &'static str, kind| {
        let expr =
            format!("case when t.{c} = round(t.{c}, 2) then round(t.{c}, 2)::text else trim_scale(t.{c})::text end");
        field(c, expr, kind)
    };
    let plain = |c: &'static str, kind| field(c, format!("t.{c}"), kind);
    let client = || plain("client_id", Reference(Resource::Client));
    // The technician is shown only to keys holding `technicians:read` (the transaction says);
    // otherwise the subquery is never run and the field is null.
    let technician = |staff_id: &str| {
        field(
            TECHNICIAN,
            format!(
                "case when current_setting('clientapi.technicians', true) = 'on' then \
                 (select json_build_object('id', s.external_id, \
                    'name', nullif(concat_ws(' ', s.first_name, s.last_name), ''), 'email', s.email, 'phone', s.phone) \
                  from staff s where s.company_id = clientapi_account_scope(t.company_id) \
                    and s.external_id = {staff_id}) end"
            ),
            Json,
        )
    };
    let job = || plain("job_id", Reference(Resource::Job));
    let invoice = || plain("invoice_id", Reference(Resource::Invoice));
    let mut fields = vec![field("id", "t.external_id".to_owned(), Id)];
    fields.extend(match resource {
        Resource::Client => vec![
            plain("name", Text),
            plain("is_individual", Boolean),
            plain("address", Text),
            plain("billing_address", Text),
            plain("website", Text),
            plain("parent_id", Reference(Resource::Client)),
        ],
        Resource::Contact => vec![
            client(),
            plain("first_name", Text),
            plain("last_name", Text),
            plain("email", Text),
            plain("phone", Text),
            plain("mobile", Text),
            plain("kind", Text),
            plain("is_primary", Boolean),
        ],
        Resource::Job => vec![
            client(),
            plain("number", Integer),
            plain("status", Text),
            plain("description", Text),
            plain("address", Text),
            plain("purchase_order", Text),
            plain("scheduled_on", Date),
            plain("completed_at", Timestamp),
            decimal("total", Money),
            plain("currency", Text),
            // Every record of the scope belongs to the head office or one of its sites: a job
            // whose client is not the head office is at a site. (The head office's id is read
            // once per statement, not per row.)
            field(
                "site_id",
                "case when t.client_id <> (select clientapi_scope_client()) then t.client_id end".to_owned(),
                Reference(Resource::Site),
            ),
            plain("job_type_id", Reference(Resource::JobType)),
            field("custom_fields", "coalesce(t.custom_fields, '{}'::jsonb)".to_owned(), Json),
            technician(
                "(select v.staff_id from visits v where v.company_id = t.company_id and v.job_id = t.external_id \
                 and v.deleted_at is null and v.staff_id is not null \
                 order by v.start_at desc nulls last, v.external_id limit 1)",
            ),
        ],
        Resource::Invoice => vec![
            client(),
            job(),
            plain("number", Integer),
            plain("status", Text),
            plain("issued_at", Timestamp),
            plain("paid_at", Timestamp),
            decimal("total", Money),
            plain("currency", Text),
        ],
        Resource::LineItem => vec![
            job(),
            invoice(),
            plain("name", Text),
            decimal("quantity", Decimal),
            decimal("unit_price", Money),
            decimal("total", Money),
            plain("currency", Text),
        ],
        Resource::Payment => vec![
            job(),
            invoice(),
            decimal("amount", Money),
            plain("method", Text),
            plain("paid_at", Timestamp),
            plain("note", Text),
            plain("is_deposit", Boolean),
            plain("currency", Text),
        ],
        Resource::Attachment => vec![
            job(),
            plain("related_object", Text),
            plain("related_object_id", Text),
            plain("name", Text),
            plain("file_type", Text),
            plain("source", Text),
        ],
        Resource::Site => vec![client(), plain("name", Text), plain("address", Text)],
        Resource::Visit => vec![
            job(),
            plain("start_at", Timestamp),
            plain("end_at", Timestamp),
            plain("status", Text),
            technician("t.staff_id"),
        ],
        Resource::Staff => vec![
            plain("first_name", Text),
            plain("last_name", Text),
            plain("email", Text),
            plain("phone", Text),
            plain("job_title", Text),
            plain("active", Boolean),
        ],
        Resource::JobType => vec![plain("name", Text), plain("colour", Text)],
        Resource::CustomField => vec![
            plain("name", Text),
            plain("label", Text),
            field("type", "t.field_type".to_owned(), Text),
            field("choices", "t.choices".to_owned(), Json),
        ],
        Resource::TaxRate => vec![plain("name", Text), decimal("rate", Decimal), plain("is_default", Boolean)],
        Resource::Material => vec![
            plain("name", Text),
            plain("item_number", Text),
            decimal("price", Money),
            plain("currency", Text),
            plain("tax_rate_id", Reference(Resource::TaxRate)),
        ],
    });
    let time =
        |name: &'static str, c: &str| field(name, format!("case when isfinite(t.{c}) then t.{c} end"), Timestamp);
    fields.push(time("created_at", "created_at"));
    fields.push(time("updated_at", "remote_updated_at"));
    fields.push(plain("deleted_at", Timestamp));
    if include_remote_data {
        fields.push(plain("remote_data", Json));
    }
    fields
}

#[cfg(test)]
mod one_line {
    use super::*;

    /// Each record's SQL is one line: psql's `\copy` (the bench's peer) takes one, and
    /// `pg_stat_statements` and the logs read it whole.
    #[test]
    fn every_records_sql_is_one_line() {
        for resource in Resource::ALL {
            for (remote, technicians) in [(false, false), (false, true), (true, false), (true, true)] {
                assert!(!json_select(resource, remote, technicians).contains('\n'), "{resource}");
            }
        }
    }
}

/// The `where` clause of a list (with the keyset condition when `query.after` is set) and its
/// text binds, numbered from `$2`: `$1` is always the company.
fn list_conditions(query: &ListQuery) -> (String, Vec<Option<String>>) {
    let mut binds: Vec<Option<String>> = Vec::new();
    let mut bind = |value: Option<String>| {
        binds.push(value);
        format!("${}", binds.len() + 1)
    };
    let mut conditions = vec![scope_condition(query.resource, "$1")];
    let f = &query.filters;
    if !f.include_deleted {
        conditions.push("t.deleted_at is null".into());
    }
    if let Some(t) = f.updated_since {
        conditions.push(format!("t.remote_updated_at >= {}::timestamptz", bind(Some(t.to_rfc3339()))));
    }
    if let Some(t) = f.updated_before {
        conditions.push(format!("t.remote_updated_at < {}::timestamptz", bind(Some(t.to_rfc3339()))));
    }
    if let Some(t) = f.created_since {
        conditions.push(format!("t.created_at >= {}::timestamptz", bind(Some(t.to_rfc3339()))));
    }
    if let Some(statuses) = &f.status {
        conditions.push(format!("t.status = any(string_to_array({}, chr(31)))", bind(Some(statuses.join("\u{1f}")))));
    }
    if let Some(ids) = &f.ids {
        conditions.push(format!("t.external_id = any(string_to_array({}, chr(31)))", bind(Some(ids.join("\u{1f}")))));
    }
    for (value, column) in [(&f.client_id, "client_id"), (&f.job_id, "job_id"), (&f.invoice_id, "invoice_id")] {
        if let Some(v) = value {
            conditions.push(format!("t.{column} = {}", bind(Some(v.clone()))));
        }
    }
    let sort = query.sort;
    let op = if sort.descending { "<" } else { ">" };
    if let Some((key, id)) = &query.after {
        let cast = sort.bind_cast().replace("{p}", &bind(Some(key.clone())));
        conditions.push(format!("({}, t.external_id) {op} ({cast}, {})", sort.expression(), bind(Some(id.clone()))));
    }
    (conditions.join(" and "), binds)
}

/// SQL and text binds for a page. `$1` is always the company.
pub fn list_sql(query: &ListQuery, technicians: bool) -> (String, Vec<Option<String>>) {
    list_sql_rendering(query, json_select(query.resource, query.include_remote_data, technicians))
}

/// [`list_sql`] with each row rendered by `select`, a text expression over `t` (GraphQL's
/// direct path renders the rows in the query's own shape).
pub fn list_sql_rendering(query: &ListQuery, select: &str) -> (String, Vec<Option<String>>) {
    let (conditions, binds) = list_conditions(query);
    let sort = query.sort;
    let dir = if sort.descending { "desc" } else { "asc" };
    let sql = format!(
        "select {select}, {}, t.external_id from {} t where {conditions} order by {} {dir}, t.external_id {dir} limit {}",
        sort.text_expression(),
        query.resource.plural(),
        sort.expression(),
        query.page_size + 1,
    );
    (sql, binds)
}

/// How long a scoped transaction holds its connection: for a page's statements, or for as long
/// as an export's client takes to read its stream.
#[derive(Clone, Copy)]
enum Hold {
    Page,
    Stream,
}

/// A reader connection inside a read-only transaction scoped to one company: row-level
/// security admits only that company's rows until [`Scoped::finish`]. Dropped before that (a
/// caller that went away mid-read), the connection is closed, never handed back to the pool
/// inside its transaction.
pub struct Scoped {
    conn: ReaderConnection,
    open: bool,
}

impl Scoped {
    /// Begins on `reader`'s pool, or on the primary when a standby cannot serve.
    pub async fn begin(reader: &Reader, scope: Scope) -> Result<Scoped, sqlx::Error> {
        Self::begin_as(reader, scope, Hold::Page).await
    }

    /// [`begin`](Self::begin) for an export, on the pool's exports' permits
    /// ([`ReaderPool::acquire_streaming`]).
    pub async fn begin_streaming(reader: &Reader, scope: Scope) -> Result<Scoped, sqlx::Error> {
        Self::begin_as(reader, scope, Hold::Stream).await
    }

    async fn begin_as(reader: &Reader, scope: Scope, hold: Hold) -> Result<Scoped, sqlx::Error> {
        match Self::begin_on(&reader.pool, scope, hold).await {
            Err(e) => match reader.fall_back(&e) {
                Some(primary) => Self::begin_on(primary, scope, hold).await,
                None => Err(e),
            },
            begun => begun,
        }
    }

    /// The pool does not ping a connection before handing it out (a round trip on every read):
    /// a pooled connection whose backend died while idle fails here instead, before any
    /// statement, is closed (not returned), and the next one is taken, up to the whole pool
    /// (after a failover every idle one is dead).
    async fn begin_on(pool: &ReaderPool, scope: Scope, hold: Hold) -> Result<Scoped, sqlx::Error> {
        // The company id is our own integer, never caller text: safe to inline.
        let begin = format!(
            "begin read only; select set_config('clientapi.company_id', '{}', true), set_config('clientapi.technicians', '{}', true)",
            scope.company.0,
            if scope.technicians { "on" } else { "off" }
        );
        let mut dead = 0;
        loop {
            let conn = match hold {
                Hold::Page => pool.acquire().await?,
                Hold::Stream => pool.acquire_streaming().await?,
            };
            let mut scoped = Scoped { conn, open: true };
            // Through sqlx's own transaction bookkeeping, so that `finish` can queue the end.
            let statement = sqlx::AssertSqlSafe(begin.clone()).into_sql_str();
            match begin_tracked(&mut scoped.conn, statement).await {
                Ok(_) => return Ok(scoped),
                Err(e) if connection_lost(&e) && dead <= pool.capacity() => dead += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Ends the transaction and hands the result on. The transaction is read-only, so ending it
    /// by `rollback` is the same as committing it, and the `rollback` is sent rather than
    /// awaited: the pool sends it as the connection comes back and takes the connection back at
    /// once; its answer is read by the connection's next exchange, before the next `begin` is
    /// sent ([`ReaderPool`]). A read costs two round trips (the scoped `begin`, its statements)
    /// instead of three.
    pub fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        queue_rollback(&mut self.conn);
        self.open = false;
        result
    }
}

/// Begins `statement` (a custom `begin`) the way sqlx's transactions do, so the connection
/// knows it is in one and [`queue_rollback`] can end it.
async fn begin_tracked(conn: &mut PgConnection, statement: sqlx::SqlStr) -> Result<(), sqlx::Error> {
    PgTransactionManager::begin(conn, Some(statement)).await
}

/// Queues the `rollback` of the transaction [`begin_tracked`] began; the pool sends it as the
/// connection comes back.
fn queue_rollback(conn: &mut PgConnection) {
    PgTransactionManager::start_rollback(conn)
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// A reader connection whose session is scoped to one company, for one statement outside any
/// transaction ([`scoped_statement`]). Dropped mid-exchange (a caller that went away), the
/// connection is closed: what it was sent and what it will answer are not known.
struct SessionScoped {
    conn: ReaderConnection,
    open: bool,
}

/// Sets the scope for the session (not a transaction): it stays until set again.
const SET_SESSION_SCOPE: &str =
    "select set_config('clientapi.company_id', $1, false), set_config('clientapi.technicians', $2, false)";

impl SessionScoped {
    /// Sets the session to `scope` unless the connection is known to be set to it already.
    /// Returns whether it took an exchange.
    async fn set(&mut self, scope: Scope) -> Result<bool, sqlx::Error> {
        if self.conn.session() == Some(scope) {
            return Ok(false);
        }
        // Unknown until Postgres has answered.
        self.conn.set_session(None);
        sqlx::query(SET_SESSION_SCOPE)
            .bind(scope.company.0.to_string())
            .bind(if scope.technicians { "on" } else { "off" })
            .execute(&mut *self.conn)
            .await?;
        self.conn.set_session(Some(scope));
        Ok(true)
    }

    fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Hands the result on; the connection goes back to the pool unless the exchange failed
    /// other than by Postgres refusing the statement (a lost or confused connection is closed,
    /// as is one whose backend said it is going away).
    fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(e) = &result
            && (connection_lost(e) || !matches!(e, sqlx::Error::Database(_)))
        {
            self.conn.close_on_drop();
        }
        self.open = false;
        result
    }
}

impl Drop for SessionScoped {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

fn bind_all<'q>(
    sql: String,
    company: CompanyId,
    binds: Vec<Option<String>>,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(company);
    for b in binds {
        q = q.bind(b);
    }
    q
}

/// Runs one page: one data statement inside the scoped transaction.
pub async fn list_page(reader: &Reader, scope: Scope, query: &ListQuery) -> Result<PageRows, sqlx::Error> {
    list_page_rendering(reader, scope, query, json_select(query.resource, query.include_remote_data, scope.technicians))
        .await
}

/// [`list_page`] with each row rendered by `select` (see [`list_sql_rendering`]).
pub async fn list_page_rendering(
    reader: &Reader,
    scope: Scope,
    query: &ListQuery,
    select: &str,
) -> Result<PageRows, sqlx::Error> {
    let (fetched, more) = fetch_page(reader, scope, query, select).await?;
    let mut rows = Vec::with_capacity(fetched.len());
    let mut keys = Vec::with_capacity(fetched.len());
    for row in &fetched {
        rows.push(row.try_get(0)?);
        keys.push(row_keys(row)?);
    }
    let next = if more { keys.last().cloned() } else { None };
    Ok(PageRows { rows, keys, next })
}

/// A page as a response body holds it: the records' JSON joined by commas (what goes between
/// `[` and `]`), how many there are, and the next page's keyset position.
pub struct JoinedPage {
    pub json: String,
    pub count: usize,
    pub next: Option<(String, String)>,
}

/// [`list_page`] for a response body: each record's JSON is copied once, from the connection's
/// buffer into the joined text, and only the last record's keys are decoded (the next cursor),
/// where [`list_page`] makes three strings of every row.
pub async fn list_page_joined(reader: &Reader, scope: Scope, query: &ListQuery) -> Result<JoinedPage, sqlx::Error> {
    let (fetched, more) =
        fetch_page(reader, scope, query, json_select(query.resource, query.include_remote_data, scope.technicians))
            .await?;
    let records = fetched.iter().map(|row| row.try_get::<&str, _>(0)).collect::<Result<Vec<_>, _>>()?;
    let next = match fetched.last() {
        Some(last) if more => Some(row_keys(last)?),
        _ => None,
    };
    Ok(JoinedPage { json: records.join(","), count: records.len(), next })
}

/// Runs one page's statement: its rows (at most the page size) and whether there are more.
async fn fetch_page(
    reader: &Reader,
    scope: Scope,
    query: &ListQuery,
    select: &str,
) -> Result<(Vec<PgRow>, bool), sqlx::Error> {
    let (sql, binds) = list_sql_rendering(query, select);
    let mut fetched = fetch_listing(reader, scope, &sql, &binds, query.filters.value_dependent()).await?;
    let page_size = query.page_size as usize;
    let more = fetched.len() > page_size;
    fetched.truncate(page_size);
    Ok((fetched, more))
}

/// A page row's keyset position: its sort key as text, and its id.
fn row_keys(row: &PgRow) -> Result<(String, String), sqlx::Error> {
    Ok((row.try_get(1)?, row.try_get(2)?))
}

/// How many records the list's filters admit (ignoring its position and page size).
pub async fn count(reader: &Reader, scope: Scope, query: &ListQuery) -> Result<i64, sqlx::Error> {
    let query = ListQuery { after: None, ..query.clone() };
    let (conditions, binds) = list_conditions(&query);
    let sql = format!("select count(*) from {} t where {conditions}", query.resource.plural());
    let counted = fetch_listing(reader, scope, &sql, &binds, query.filters.value_dependent()).await?;
    counted.first().ok_or(sqlx::Error::RowNotFound)?.try_get(0)
}

/// Runs a statement of [`list_conditions`] (`$1` the company, then `binds`): on its own, on a
/// connection whose session is scoped ([`scoped_statement`]), or, when its plan should follow
/// its values, in a scoped transaction that asks for custom plans first.
async fn fetch_listing(
    reader: &Reader,
    scope: Scope,
    sql: &str,
    binds: &[Option<String>],
    custom_plan: bool,
) -> Result<Vec<PgRow>, sqlx::Error> {
    if custom_plan {
        scoped_read(reader, scope, |conn| {
            let (sql, binds) = (sql.to_owned(), binds.to_vec());
            Box::pin(async move {
                conn.execute(CUSTOM_PLANS).await?;
                bind_all(sql, scope.company, binds).fetch_all(conn).await
            })
        })
        .await
    } else {
        scoped_statement(reader, scope, |conn| {
            Box::pin(bind_all(sql.to_owned(), scope.company, binds.to_vec()).fetch_all(conn))
        })
        .await
    }
}

/// One record by id, or `None` (missing and foreign look the same).
pub async fn get_one(
    reader: &Reader,
    scope: Scope,
    resource: Resource,
    id: &str,
    include_remote_data: bool,
) -> Result<Option<String>, sqlx::Error> {
    let query = ListQuery {
        resource,
        filters: Filters { ids: Some(vec![id.to_owned()]), include_deleted: true, ..Filters::default() },
        sort: Sort::default(),
        page_size: 1,
        after: None,
        include_remote_data,
    };
    Ok(list_page(reader, scope, &query).await?.rows.into_iter().next())
}

/// One entry of the changes feed.
#[derive(Debug)]
pub struct Change {
    pub seq: i64,
    pub json: String,
}

/// Upserts and tombstones after `since` in `change_seq` order, across `resources`.
pub async fn changes(
    reader: &Reader,
    scope: Scope,
    resources: &[Resource],
    since: i64,
    limit: u32,
) -> Result<Vec<Change>, sqlx::Error> {
    let branches: Vec<String> = resources
        .iter()
        .map(|r| {
            format!(
                "(select t.change_seq, json_build_object('resource', '{}', 'id', t.external_id, 'change_seq', t.change_seq,
                         'operation', case when t.deleted_at is null then 'upsert' else 'delete' end,
                         'record', {}::json)::text
                  from {} t where {} and t.change_seq > $2 order by t.change_seq limit $3)",
                r.singular(),
                json_select(*r, false, scope.technicians),
                r.plural(),
                scope_condition(*r, "$1"),
            )
        })
        .collect();
    let sql = format!("select * from ({}) c order by 1 limit $3", branches.join(" union all "));
    let rows: Vec<(i64, String)> = scoped_statement(reader, scope, |conn| {
        let sql = sql.clone();
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(scope.company)
                .bind(since)
                .bind(i64::from(limit))
                .fetch_all(conn)
                .await
        })
    })
    .await?;
    Ok(rows.into_iter().map(|(seq, json)| Change { seq, json }).collect())
}

/// The whole filtered scope as one "page", for the exports.
fn export_query(resource: Resource, filters: &Filters) -> ListQuery {
    ListQuery {
        resource,
        filters: filters.clone(),
        sort: Sort::default(),
        page_size: u32::MAX - 1,
        after: None,
        include_remote_data: false,
    }
}

/// How related records are found from a parent: by their own id (to-one), or by a column of
/// theirs naming the parent (to-many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    Id,
    ClientId,
    JobId,
    InvoiceId,
}

impl Link {
    fn column(self) -> &'static str {
        match self {
            Link::Id => "external_id",
            Link::ClientId => "client_id",
            Link::JobId => "job_id",
            Link::InvoiceId => "invoice_id",
        }
    }
}

/// The records of `resource` whose `link` equals `value`: at most `limit`, in id order. To-one
/// lookups (`Link::Id`) include tombstoned records, like a read by id; to-many lists do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelatedKey {
    pub resource: Resource,
    pub link: Link,
    pub value: String,
    pub limit: u32,
    pub include_remote_data: bool,
}

/// Answers any number of relation lookups, of any resources and links, in one statement
/// inside the company's scoped transaction. Keys with no records are absent from the answer.
pub async fn load_related(
    reader: &Reader,
    scope: Scope,
    keys: &[RelatedKey],
) -> Result<HashMap<RelatedKey, Vec<String>>, sqlx::Error> {
    type Group = (Resource, Link, u32, bool);
    let mut groups: Vec<(Group, Vec<String>)> = Vec::new();
    for k in keys {
        let group = (k.resource, k.link, k.limit, k.include_remote_data);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, values)) => values.push(k.value.clone()),
            None => groups.push((group, vec![k.value.clone()])),
        }
    }
    let mut answer: HashMap<RelatedKey, Vec<String>> = HashMap::new();
    if groups.is_empty() {
        return Ok(answer);
    }
    let branches: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(n, ((resource, link, limit, remote_data), _))| {
            let live = if *link == Link::Id { "" } else { " and t.deleted_at is null" };
            // A lateral lookup per parent walks the (company_id, column) index and stops at the limit.
            format!(
                "select {n}::int4, k.v, r.row, r.id from unnest(${}::text[]) k(v) cross join lateral
                   (select {} as row, t.external_id as id from {} t
                    where {} and t.{} = k.v{live} order by t.external_id limit {limit}) r",
                n + 2,
                json_select(*resource, *remote_data, scope.technicians),
                resource.plural(),
                scope_condition(*resource, "$1"),
                link.column(),
            )
        })
        .collect();
    let sql = format!("select * from ({}) x order by 1, 2, 4", branches.join(" union all "));
    let values: Vec<Vec<String>> = groups
        .iter()
        .map(|(_, values)| {
            let mut values = values.clone();
            values.sort_unstable();
            values.dedup();
            values
        })
        .collect();
    let rows = scoped_statement(reader, scope, |conn| {
        let mut q =
            sqlx::query_as::<_, (i32, String, String, String)>(sqlx::AssertSqlSafe(sql.clone())).bind(scope.company);
        for v in &values {
            q = q.bind(v.clone());
        }
        Box::pin(async move { q.fetch_all(conn).await })
    })
    .await?;
    for (n, parent, row, _) in rows {
        let Some(((resource, link, limit, include_remote_data), _)) = groups.get(n as usize) else { continue };
        let key = RelatedKey {
            resource: *resource,
            link: *link,
            value: parent,
            limit: *limit,
            include_remote_data: *include_remote_data,
        };
        answer.entry(key).or_default().push(row);
    }
    Ok(answer)
}

/// The two shapes of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One record per line, as the REST API renders it.
    Ndjson,
    /// A header row, then one record per row (RFC 4180).
    Csv,
}

/// The `select` an export copies out, without its `copy`: the company inlined (our own
/// integer) and every filter value read back with `current_setting()` from the settings
/// [`export`] makes (COPY takes no parameters, so caller text is never spliced into SQL).
/// Returns it with the filter values, in the order of their settings `clientapi.export_2`, ….
pub fn export_select(
    scope: Scope,
    resource: Resource,
    filters: &Filters,
    format: ExportFormat,
) -> (String, Vec<Option<String>>) {
    let (mut conditions, binds) = list_conditions(&export_query(resource, filters));
    // Highest first, so `$1` does not match the start of `$12`.
    for n in (0..binds.len()).rev() {
        conditions =
            conditions.replace(&format!("${}", n + 2), &format!("current_setting('clientapi.export_{}')", n + 2));
    }
    conditions = conditions.replace("$1", &scope.company.0.to_string());
    let columns = match format {
        ExportFormat::Ndjson => json_select(resource, false, scope.technicians).to_owned(),
        // Values read as in the JSON (RFC 3339 times, `true`/`false`).
        ExportFormat::Csv => record_fields(resource, false)
            .iter()
            .map(|f| match f.kind {
                FieldKind::Timestamp | FieldKind::Date | FieldKind::Boolean => {
                    format!("to_json({})#>>'{{}}' as \"{}\"", f.expr, f.name)
                }
                _ => format!("{} as \"{}\"", f.expr, f.name),
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    // In id order, without a limit: the cheapest complete scan.
    (format!("select {columns} from {} t where {conditions} order by t.external_id", resource.plural()), binds)
}

/// Streams a filtered scope in id order, rendered by Postgres' own `COPY`, with flat memory:
/// chunks of about `chunk` bytes go to `out` as Postgres sends them, and a slow reader (the
/// bounded channel) slows the scan. CSV is `COPY … CSV` (RFC 4180 quoting; a null is an empty
/// field, an empty string `""`). NDJSON is the JSON text of each record copied in CSV mode with
/// a quote and a delimiter that JSON text never holds (it escapes every control character), so
/// each line is the record exactly, unquoted and unescaped. Returns the bytes sent; stops early
/// when the receiver is gone. Runs on `scoped`, begun for `scope` by [`Scoped::begin_streaming`]
/// before the answer starts, so an export that cannot have a connection is refused rather than
/// answered with an empty body.
pub async fn export(
    mut scoped: Scoped,
    scope: Scope,
    resource: Resource,
    filters: &Filters,
    format: ExportFormat,
    chunk: usize,
    out: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<u64, sqlx::Error> {
    let (select, binds) = export_select(scope, resource, filters, format);
    let options = match format {
        ExportFormat::Csv => "format csv, header",
        ExportFormat::Ndjson => "format csv, quote e'\\x01', delimiter e'\\x02'",
    };
    let sql = format!("copy ({select}) to stdout with ({options})");
    let mut sent = 0u64;
    let mut abandoned = false;
    let outcome: Result<(), sqlx::Error> = async {
        for (n, value) in binds.iter().enumerate() {
            sqlx::query("select set_config($1, $2, true)")
                .bind(format!("clientapi.export_{}", n + 2))
                .bind(value.as_deref().unwrap_or(""))
                .execute(scoped.conn())
                .await?;
        }
        let mut stream = scoped.conn().copy_out_raw(&sql).await?;
        let mut buffer = bytes::BytesMut::with_capacity(chunk + 8 * 1024);
        while let Some(data) = stream.try_next().await? {
            buffer.extend_from_slice(&data);
            if buffer.len() >= chunk {
                sent += buffer.len() as u64;
                if out.send(buffer.split().freeze()).await.is_err() {
                    abandoned = true;
                    return Ok(());
                }
            }
        }
        if !buffer.is_empty() {
            sent += buffer.len() as u64;
            let _ = out.send(buffer.freeze()).await;
        }
        Ok(())
    }
    .await;
    if abandoned {
        // The reader left mid-COPY: the connection still holds the rest of the stream; dropped
        // unfinished, it is closed rather than returned to the pool.
        drop(scoped);
        return Ok(sent);
    }
    scoped.finish(outcome).map(|()| sent)
}
