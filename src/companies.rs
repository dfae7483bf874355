//! A connection's customer companies, as admins pick them: searched by name, in keyset pages,
//! each with its records per resource, its last change and the endpoints issued for it.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use clientapi_schema::model::Resource;
use clientapi_schema::{AccountId, CompanyId, ConnectionId};
use serde::Serialize;
use sqlx::PgPool;

use crate::error::{ApiError, FieldError};

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// One company as the picker shows it.
#[derive(Debug, Serialize)]
pub struct Company {
    pub external_id: String,
    pub name: Option<String>,
    /// Live (not deleted) records per resource, by plural name.
    pub records: BTreeMap<&'static str, i64>,
    /// When the mirror last changed one of its records.
    pub last_change_at: Option<DateTime<Utc>>,
    pub endpoints: Vec<IssuedEndpoint>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct IssuedEndpoint {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub status: String,
}

#[derive(Debug, Serialize)]
pub struct CompanyPage {
    pub data: Vec<Company>,
    /// Pass back as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Where a page starts: after this sort key.
struct After {
    name: String,
    id: i64,
}

fn encode_cursor(name: &str, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{id}:{name}"))
}

fn decode_cursor(raw: &str) -> Option<After> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (id, name) = text.split_once(':')?;
    Some(After { name: name.to_owned(), id: id.parse().ok()? })
}

/// A page of `connection`'s companies whose name contains `search` (case-insensitive), by
/// name. Another account's connection is not found.
pub async fn list(
    db: &PgPool,
    account: AccountId,
    connection: ConnectionId,
    search: Option<&str>,
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<CompanyPage, ApiError> {
    let mut errors = Vec::new();
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        errors.push(FieldError::new("limit", format!("from 1 to {MAX_PAGE}")));
    }
    let after = match cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => match decode_cursor(raw) {
            Some(after) => Some(after),
            None => {
                errors.push(FieldError::new("cursor", "not a cursor this list gave out"));
                None
            }
        },
    };
    if search.is_some_and(|q| q.chars().count() > 200) {
        errors.push(FieldError::new("q", "at most 200 characters"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let owned: Option<bool> = sqlx::query_scalar("select true from connections where id = $1 and account_id = $2")
        .bind(connection)
        .bind(account)
        .fetch_optional(db)
        .await?;
    if owned.is_none() {
        return Err(ApiError::NotFound);
    }
    let pattern = search.map(str::trim).filter(|q| !q.is_empty()).map(|q| {
        let escaped = q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows: Vec<(CompanyId, String, Option<String>, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select id, external_id, name, lower(coalesce(name, '')) as sort_name from companies c
         where connection_id = $1 and {ISSUABLE} and ($2::text is null or lower(coalesce(name, '')) like $2)
           and ($3::text is null or (lower(coalesce(name, '')), id) > ($3, $4))
         order by lower(coalesce(name, '')), id limit $5"
    )))
    .bind(connection)
    .bind(&pattern)
    .bind(after.as_ref().map(|a| a.name.clone()))
    .bind(after.as_ref().map_or(0, |a| a.id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next_cursor = more.then(|| rows.last().map(|(id, _, _, sort)| encode_cursor(sort, id.0))).flatten();
    let data =
        describe(db, account, rows.iter().map(|(id, ext, name, _)| (*id, ext.clone(), name.clone())).collect()).await?;
    Ok(CompanyPage { data, next_cursor })
}

/// Which registry rows (`c`) are customer companies an endpoint may be issued for: not the
/// connection's account scope (staff and lookups), and not a site, whose records live with its
/// head office (a client that lives in another company than its own).
pub const ISSUABLE: &str = "c.external_id <> '' and not exists (select 1 from mirror_keys k
    where k.connection_id = c.connection_id and k.resource = 'client' and k.external_id = c.external_id
      and k.company_id <> c.id)";

/// One company of `connection` by its provider id, described like a picker row.
pub async fn one(
    db: &PgPool,
    account: AccountId,
    connection: ConnectionId,
    external_id: &str,
) -> Result<Option<Company>, sqlx::Error> {
    let row: Option<(CompanyId, String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select c.id, c.external_id, c.name from companies c join connections n on n.id = c.connection_id
         where c.connection_id = $1 and n.account_id = $2 and c.external_id = $3 and {ISSUABLE}"
    )))
    .bind(connection)
    .bind(account)
    .bind(external_id)
    .fetch_optional(db)
    .await?;
    Ok(describe(db, account, row.into_iter().collect()).await?.pop())
}

/// The resources a company's records are counted in: its own, not the account-wide staff and
/// lookups every company of the connection shares.
pub fn counted_resources() -> impl Iterator<Item = Resource> {
    Resource::ALL.into_iter().filter(|r| !r.is_account_wide())
}

/// Records per resource, last change and endpoints of companies already known to be in
/// `account`.
async fn describe(
    db: &PgPool,
    account: AccountId,
    rows: Vec<(CompanyId, String, Option<String>)>,
) -> Result<Vec<Company>, sqlx::Error> {
    let ids: Vec<CompanyId> = rows.iter().map(|r| r.0).collect();

    // Counts for the page's companies only, in one statement, from indexes: every row by the
    // primary key less the tombstones (a partial index), the last change off the changes feed's.
    let counts_sql = counted_resources()
        .map(|r| {
            format!(
                "select t.company_id, '{table}' as resource,
                        count(*) - (select count(*) from {table} d where d.company_id = t.company_id
                                    and d.deleted_at is not null) as n,
                        (select l.synced_at from {table} l where l.company_id = t.company_id
                         order by l.change_seq desc limit 1) as last_change
                 from {table} t where t.company_id = any($1) group by t.company_id",
                table = r.plural()
            )
        })
        .collect::<Vec<_>>()
        .join(" union all ");
    // Its cost estimate grows with the companies' sizes past the JIT threshold, and compiling
    // its 600-odd expressions took 160 ms where running them takes 20 (measured, bench/dashboard).
    let mut tx = db.begin().await?;
    sqlx::query("set local jit = off").execute(&mut *tx).await?;
    let counts: Vec<(CompanyId, String, i64, Option<DateTime<Utc>>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(counts_sql)).bind(&ids).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let endpoints: Vec<(CompanyId, String, String, String, String)> = sqlx::query_as(
        "select company_id, public_id, name, environment, status from endpoints
         where account_id = $1 and company_id = any($2) order by id",
    )
    .bind(account)
    .bind(&ids)
    .fetch_all(db)
    .await?;

    let data = rows
        .iter()
        .map(|(id, external_id, name)| {
            let mut records: BTreeMap<&'static str, i64> = counted_resources().map(|r| (r.plural(), 0)).collect();
            let mut last_change_at = None;
            for (_, resource, n, changed) in counts.iter().filter(|c| c.0 == *id) {
                if let Some(slot) = records.iter_mut().find(|(k, _)| **k == resource.as_str()) {
                    *slot.1 = *n;
                }
                last_change_at = last_change_at.max(*changed);
            }
            let endpoints = endpoints
                .iter()
                .filter(|e| e.0 == *id)
                .map(|(_, id, name, environment, status)| IssuedEndpoint {
                    id: id.clone(),
                    name: name.clone(),
                    environment: environment.clone(),
                    status: status.clone(),
                })
                .collect();
            Company { external_id: external_id.clone(), name: name.clone(), records, last_change_at, endpoints }
        })
        .collect();
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_names_with_colons_and_anything_else_is_refused() {
        let after = decode_cursor(&encode_cursor("acme: north", 42)).unwrap();
        assert_eq!((after.name.as_str(), after.id), ("acme: north", 42));
        assert!(decode_cursor("not base64!").is_none());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x:name")).is_none());
    }
}
