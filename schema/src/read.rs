//! The public read path over the mirror: typed list queries (filters, keyset sort, page size)
//! turned into one SQL statement per page, run on a pool whose connections act as the
//! row-level-security role `clientapi_reader`, with the company set for the transaction. The
//! statement keeps its own `company_id = $1` filter: RLS is the second lock, not the first.
//! Rows come back as JSON text built by Postgres, ready to be spliced into the response.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, PgConnection};

use crate::CompanyId;
use crate::model::Resource;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;
const READER_CONNECTIONS: u32 = 32;

/// A pool for the public read path: every connection runs as `clientapi_reader`. Lazy: no
/// connection is made until the first read.
pub fn reader_pool(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(READER_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("set role clientapi_reader").await?;
                Ok(())
            })
        })
        .connect_lazy_with(options)
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

pub fn has_number(resource: Resource) -> bool {
    matches!(resource, Resource::Job | Resource::Invoice)
}

pub fn has_status(resource: Resource) -> bool {
    matches!(resource, Resource::Job | Resource::Invoice)
}

pub fn has_client_id(resource: Resource) -> bool {
    matches!(resource, Resource::Contact | Resource::Job | Resource::Invoice)
}

pub fn has_job_id(resource: Resource) -> bool {
    matches!(resource, Resource::Invoice | Resource::LineItem | Resource::Payment | Resource::Attachment)
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

/// A page: rows as JSON text, and the keyset of the last row when more may follow.
#[derive(Debug)]
pub struct PageRows {
    pub rows: Vec<String>,
    pub next: Option<(String, String)>,
}

/// The fields of one record in the public shape: (name, SQL expression over `t`). `id` is the
/// provider's id; money is a decimal string; unknown times are null.
pub fn record_fields(resource: Resource, include_remote_data: bool) -> Vec<(&'static str, String)> {
    // Cents when that is exact (220.00), more digits only when they carry value (3.505).
    let money = |c: &'static str| {
        (c, format!("case when t.{c} = round(t.{c}, 2) then round(t.{c}, 2)::text else trim_scale(t.{c})::text end"))
    };
    let time = |name: &'static str, c: &str| (name, format!("case when isfinite(t.{c}) then t.{c} end"));
    let plain = |c: &'static str| (c, format!("t.{c}"));
    let mut fields = vec![("id", "t.external_id".to_owned())];
    let typed: Vec<(&'static str, String)> = match resource {
        Resource::Client => {
            ["name", "is_individual", "address", "billing_address", "website", "parent_id"].map(plain).to_vec()
        }
        Resource::Contact => ["client_id", "first_name", "last_name", "email", "phone", "mobile", "kind", "is_primary"]
            .map(plain)
            .to_vec(),
        Resource::Job => vec![
            plain("client_id"),
            plain("number"),
            plain("status"),
            plain("description"),
            plain("address"),
            plain("purchase_order"),
            plain("scheduled_on"),
            plain("completed_at"),
            money("total"),
            plain("currency"),
        ],
        Resource::Invoice => vec![
            plain("client_id"),
            plain("job_id"),
            plain("number"),
            plain("status"),
            plain("issued_at"),
            plain("paid_at"),
            money("total"),
            plain("currency"),
        ],
        Resource::LineItem => vec![
            plain("job_id"),
            plain("invoice_id"),
            plain("name"),
            money("quantity"),
            money("unit_price"),
            money("total"),
            plain("currency"),
        ],
        Resource::Payment => vec![
            plain("job_id"),
            plain("invoice_id"),
            money("amount"),
            plain("method"),
            plain("paid_at"),
            plain("note"),
            plain("is_deposit"),
            plain("currency"),
        ],
        Resource::Attachment => {
            ["job_id", "related_object", "related_object_id", "name", "file_type", "source"].map(plain).to_vec()
        }
    };
    fields.extend(typed);
    fields.push(time("created_at", "created_at"));
    fields.push(time("updated_at", "remote_updated_at"));
    fields.push(plain("deleted_at"));
    if include_remote_data {
        fields.push(plain("remote_data"));
    }
    fields
}

/// The JSON object of one record, rendered by Postgres as text.
pub fn json_select(resource: Resource, include_remote_data: bool) -> String {
    let pairs: Vec<String> = record_fields(resource, include_remote_data)
        .into_iter()
        .map(|(name, expr)| format!("'{name}', {expr}"))
        .collect();
    // json_build_object takes at most 100 arguments; these stay far below.
    format!("json_build_object({})::text", pairs.join(", "))
}

/// SQL and text binds for a page. `$1` is always the company.
pub fn list_sql(query: &ListQuery) -> (String, Vec<Option<String>>) {
    let table = query.resource.plural();
    let mut binds: Vec<Option<String>> = Vec::new();
    let mut bind = |value: Option<String>| {
        binds.push(value);
        format!("${}", binds.len() + 1)
    };
    let mut conditions = vec!["t.company_id = $1".to_owned()];
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
    let dir = if sort.descending { "desc" } else { "asc" };
    let sql = format!(
        "select {}, {}, t.external_id from {table} t where {} order by {} {dir}, t.external_id {dir} limit {}",
        json_select(query.resource, query.include_remote_data),
        sort.text_expression(),
        conditions.join(" and "),
        sort.expression(),
        query.page_size + 1,
    );
    (sql, binds)
}

/// Opens the read transaction for `company` on a reader connection: after this, row-level
/// security admits only that company's rows until commit.
pub async fn begin_scoped(conn: &mut PgConnection, company: CompanyId) -> Result<(), sqlx::Error> {
    // The company id is our own integer, never caller text: safe to inline.
    conn.execute(sqlx::AssertSqlSafe(format!(
        "begin read only; select set_config('clientapi.company_id', '{}', true)",
        company.0
    )))
    .await?;
    Ok(())
}

/// Runs one page: one data statement inside the scoped transaction.
pub async fn list_page(reader: &PgPool, company: CompanyId, query: &ListQuery) -> Result<PageRows, sqlx::Error> {
    let (sql, binds) = list_sql(query);
    let mut conn = reader.acquire().await?;
    begin_scoped(&mut conn, company).await?;
    let result = run_page(&mut conn, company, &sql, binds, query.page_size as usize).await;
    match &result {
        Ok(_) => conn.execute("commit").await.map(|_| ())?,
        Err(_) => {
            let _ = conn.execute("rollback").await;
        }
    }
    result
}

async fn run_page(
    conn: &mut PgConnection,
    company: CompanyId,
    sql: &str,
    binds: Vec<Option<String>>,
    page_size: usize,
) -> Result<PageRows, sqlx::Error> {
    let mut q = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql.to_owned())).bind(company);
    for b in binds {
        q = q.bind(b);
    }
    let mut fetched: Vec<(String, String, String)> = q.fetch_all(&mut *conn).await?;
    let more = fetched.len() > page_size;
    fetched.truncate(page_size);
    let next = if more { fetched.last().map(|(_, key, id)| (key.clone(), id.clone())) } else { None };
    Ok(PageRows { rows: fetched.into_iter().map(|(json, _, _)| json).collect(), next })
}

/// One record by id, or `None` (missing and foreign look the same).
pub async fn get_one(
    reader: &PgPool,
    company: CompanyId,
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
    Ok(list_page(reader, company, &query).await?.rows.into_iter().next())
}

/// One entry of the changes feed.
#[derive(Debug)]
pub struct Change {
    pub seq: i64,
    pub json: String,
}

/// Upserts and tombstones after `since` in `change_seq` order, across `resources`.
pub async fn changes(
    reader: &PgPool,
    company: CompanyId,
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
                  from {} t where t.company_id = $1 and t.change_seq > $2 order by t.change_seq limit $3)",
                r.singular(),
                json_select(*r, false),
                r.plural()
            )
        })
        .collect();
    let sql = format!("select * from ({}) c order by 1 limit $3", branches.join(" union all "));
    let mut conn = reader.acquire().await?;
    begin_scoped(&mut conn, company).await?;
    let rows: Result<Vec<(i64, String)>, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(company)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await;
    match &rows {
        Ok(_) => {
            conn.execute("commit").await?;
        }
        Err(_) => {
            let _ = conn.execute("rollback").await;
        }
    }
    Ok(rows?.into_iter().map(|(seq, json)| Change { seq, json }).collect())
}

/// Streams every row of a filtered scope into `rows` (JSON text), in id order, with flat
/// memory: rows are handed over as Postgres sends them, and a slow reader (the bounded
/// channel) slows the scan. Stops early when the receiver is gone. Returns the count sent.
pub async fn export(
    reader: &PgPool,
    company: CompanyId,
    resource: Resource,
    filters: &Filters,
    rows: tokio::sync::mpsc::Sender<String>,
) -> Result<u64, sqlx::Error> {
    let query = ListQuery {
        resource,
        filters: filters.clone(),
        sort: Sort::default(),
        page_size: u32::MAX - 1,
        after: None,
        include_remote_data: false,
    };
    let (sql, binds) = list_sql(&query);
    // Order by id only, without a limit: the cheapest complete scan.
    let sql = match sql.find(" order by ") {
        Some(at) => format!("{} order by t.external_id", &sql[..at]),
        None => sql,
    };
    let mut conn = reader.acquire().await?;
    begin_scoped(&mut conn, company).await?;
    let mut count = 0;
    let outcome: Result<(), sqlx::Error> = async {
        let mut q = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql)).bind(company);
        for b in binds {
            q = q.bind(b);
        }
        let mut stream = q.fetch(&mut *conn);
        while let Some((json, _, _)) = stream.try_next().await? {
            if rows.send(json).await.is_err() {
                break;
            }
            count += 1;
        }
        Ok(())
    }
    .await;
    let _ = conn.execute(if outcome.is_ok() { "commit" } else { "rollback" }).await;
    outcome.map(|()| count)
}

/// The CSV header of an export: the record's field names, in order.
pub fn export_columns(resource: Resource) -> Vec<String> {
    record_fields(resource, false).into_iter().map(|(name, _)| name.to_owned()).collect()
}
