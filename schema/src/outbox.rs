//! The customer-webhook outbox (DESIGN.md §8): every mirror change of a company that has webhook
//! subscriptions becomes one delivery row per matching subscription, written by the statement
//! after the one that changed the mirror, in the same transaction, so a committed change always
//! has its events and a rolled-back one never does. Companies without subscriptions cost one
//! indexed probe per batch and nothing per record.
//!
//! Events are `{resource}.created`, `.updated` and `.deleted` (a record that moves to another
//! company is deleted from the old one's point of view and created in the new one's), and
//! `sync.completed`. An event's id is drawn from the mirror's sequence inside the mirror
//! writer's lock, so one company's events are numbered in commit order, like its `change_seq`.

use sqlx::PgConnection;

use crate::ConnectionId;
use crate::model::Resource;

/// The channel a committed outbox write notifies, so dispatchers wake at once.
pub const NOTIFY_CHANNEL: &str = "clientapi_webhooks";

/// What happened to a record, from one company's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }
}

/// The companies of a connection whose changes go to the outbox (those with a subscription, in
/// any state: a paused subscription's events wait for it), read under the mirror writer's lock.
/// Creating a subscription takes the connection's lock too, so every change committed after a
/// subscription exists is seen here.
#[derive(Debug, Default, Clone)]
pub struct Outbox {
    companies: Vec<i64>,
}

impl Outbox {
    pub async fn load(conn: &mut PgConnection, connection: ConnectionId) -> Result<Self, sqlx::Error> {
        let companies: Vec<i64> = sqlx::query_scalar(
            "select distinct company_id from webhook_subscriptions where connection_id = $1 order by 1",
        )
        .bind(connection)
        .fetch_all(conn)
        .await?;
        Ok(Self { companies })
    }

    pub fn is_empty(&self) -> bool {
        self.companies.is_empty()
    }

    pub fn wants(&self, company: i64) -> bool {
        self.companies.binary_search(&company).is_ok()
    }

    /// Writes the events of `changes` (company, record id, change) that some subscription wants.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        resource: Resource,
        changes: impl IntoIterator<Item = (i64, String, Change)>,
    ) -> Result<u64, sqlx::Error> {
        if self.is_empty() {
            return Ok(0);
        }
        let (mut companies, mut ids, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for (company, id, change) in changes {
            if self.wants(company) {
                companies.push(company);
                ids.push(id);
                kinds.push(change.as_str());
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let table = resource.plural();
        // One event id per change, shared by every subscription that receives it (materialized:
        // evaluated once per change, not once per joined row).
        let sql = format!(
            "with e as materialized (
                 select c, x, k, nextval('mirror_change_seq') as event_id, ord
                 from unnest($1::bigint[], $2::text[], $3::text[]) with ordinality as u(c, x, k, ord))
             insert into webhook_deliveries (company_id, subscription_id, event_id, event_type, resource, external_id, change_seq)
             select e.c, s.public_id, e.event_id, $4 || '.' || e.k, $4, e.x, t.change_seq
             from e
             join webhook_subscriptions s on s.company_id = e.c
                  and s.events && array['*', $4 || '.*', $4 || '.' || e.k]
                  and (s.resources is null or $4 = any(s.resources))
             left join {table} t on t.company_id = e.c and t.external_id = e.x
             order by e.ord"
        );
        let written = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&companies)
            .bind(&ids)
            .bind(&kinds)
            .bind(resource.singular())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if written > 0 {
            notify(conn).await?;
        }
        Ok(written)
    }
}

/// A finished sync run, as an event to every subscription of the connection that wants
/// `sync.completed` (each company's subscriptions hear of the run, never of other companies).
pub async fn sync_completed(
    conn: &mut PgConnection,
    connection: ConnectionId,
    data: &serde_json::Value,
) -> Result<u64, sqlx::Error> {
    let written = sqlx::query(
        "with e as materialized (select nextval('mirror_change_seq') as event_id)
         insert into webhook_deliveries (company_id, subscription_id, event_id, event_type, data)
         select s.company_id, s.public_id, e.event_id, 'sync.completed', $2
         from webhook_subscriptions s, e
         where s.connection_id = $1 and s.events && array['*', 'sync.*', 'sync.completed']",
    )
    .bind(connection)
    .bind(data)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if written > 0 {
        notify(conn).await?;
    }
    Ok(written)
}

async fn notify(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(conn).await?;
    Ok(())
}
