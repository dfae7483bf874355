//! Writing the mirror: a page of unified records resolved to companies, dealt into lanes by
//! company ([`prepare`]), and each lane applied in one transaction ([`apply_lane`]), in batches
//! (one statement per table, never one per row); a write's read-back applies its records in
//! its own transaction ([`apply`]). An upsert writes nothing, and does
//! not bump `change_seq`, when the record has not changed. A record whose company changed (a job
//! reassigned to another client) leaves its old company's partition in the same transaction,
//! and a moved job takes its line items, payments and attachments with it. What changed for a
//! company with webhook subscriptions goes to the outbox in the same transaction
//! ([`crate::outbox`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Maps and sets keyed by provider ids, built and probed for every record of a page: a fast
/// hash (std's SipHash was a twentieth of the sync's own CPU at a million records).
type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type IdSet<K> = HashSet<K, foldhash::fast::RandomState>;

use sqlx::PgConnection;

use crate::model::{ACCOUNT_SCOPE, Fields, Owner, Record, Resource};
use crate::outbox::{Change, Outbox};
use crate::{CompanyId, ConnectionId};

/// The typed columns of each mirror table (besides the common ones).
pub fn columns(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Client => &["name", "is_individual", "address", "billing_address", "website", "parent_id"],
        Resource::Contact => {
            &["client_id", "first_name", "last_name", "email", "phone", "mobile", "kind", "is_primary"]
        }
        Resource::Job => &[
            "client_id",
            "number",
            "status",
            "description",
            "address",
            "purchase_order",
            "scheduled_on",
            "completed_at",
            "total",
            "currency",
            "job_type_id",
            "custom_fields",
        ],
        Resource::Invoice => &["client_id", "job_id", "number", "status", "issued_at", "paid_at", "total", "currency"],
        Resource::LineItem => &["job_id", "invoice_id", "name", "quantity", "unit_price", "total", "currency"],
        Resource::Payment => &["job_id", "invoice_id", "amount", "method", "paid_at", "note", "is_deposit", "currency"],
        Resource::Attachment => &["job_id", "related_object", "related_object_id", "name", "file_type", "source"],
        Resource::Site => &["client_id", "name", "address"],
        Resource::Visit => &["job_id", "staff_id", "start_at", "end_at", "status"],
        Resource::Staff => &["first_name", "last_name", "email", "phone", "job_title", "active"],
        Resource::JobType => &["name", "colour"],
        Resource::CustomField => &["name", "label", "field_type", "choices"],
        Resource::TaxRate => &["name", "rate", "is_default"],
        Resource::Material => &["name", "item_number", "price", "tax_rate_id", "currency"],
    }
}

/// Columns every mirror table has after its typed ones.
pub const COMMON_COLUMNS: &[&str] =
    &["created_at", "remote_updated_at", "remote_data", "synced_at", "deleted_at", "change_seq"];

/// Resources that belong to a job and move with it.
const JOB_CHILDREN: [Resource; 4] = [Resource::LineItem, Resource::Payment, Resource::Attachment, Resource::Visit];

/// Resources that name their client in `client_id` and move with it (a site that moves to
/// another head office takes its contacts, jobs, invoices and sites along; the jobs take theirs).
const CLIENT_CHILDREN: [Resource; 4] = [Resource::Contact, Resource::Job, Resource::Invoice, Resource::Site];

/// What applying a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ApplyStats {
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    /// Records with no company (or whose job is unknown): counted, never exposed.
    pub unowned: u64,
}

impl std::ops::AddAssign for ApplyStats {
    fn add_assign(&mut self, o: Self) {
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.unowned += o.unowned;
    }
}

/// The typed columns of a COPY line, in [`columns`] order, each followed by a tab.
fn copy_fields(out: &mut Vec<u8>, fields: &Fields) {
    use CopyValue as V;
    let values: &[V<'_>] = match fields {
        Fields::Client(f) => &[
            V::Text(Some(&f.name)),
            V::Bool(f.is_individual),
            V::Text(f.address.as_deref()),
            V::Text(f.billing_address.as_deref()),
            V::Text(f.website.as_deref()),
            V::Text(f.parent_id.as_deref()),
        ],
        Fields::Contact(f) => &[
            V::Text(f.client_id.as_deref()),
            V::Text(f.first_name.as_deref()),
            V::Text(f.last_name.as_deref()),
            V::Text(f.email.as_deref()),
            V::Text(f.phone.as_deref()),
            V::Text(f.mobile.as_deref()),
            V::Text(f.kind.as_deref()),
            V::Bool(f.is_primary),
        ],
        Fields::Job(f) => &[
            V::Text(f.client_id.as_deref()),
            V::Int(f.number),
            V::Text(Some(&f.status)),
            V::Text(f.description.as_deref()),
            V::Text(f.address.as_deref()),
            V::Text(f.purchase_order.as_deref()),
            V::Date(f.scheduled_on),
            V::Time(f.completed_at),
            V::Decimal(f.total),
            V::Text(Some(&f.currency)),
            V::Text(f.job_type_id.as_deref()),
            V::Text(f.custom_fields.as_deref()),
        ],
        Fields::Invoice(f) => &[
            V::Text(f.client_id.as_deref()),
            V::Text(f.job_id.as_deref()),
            V::Int(f.number),
            V::Text(Some(&f.status)),
            V::Time(f.issued_at),
            V::Time(f.paid_at),
            V::Decimal(f.total),
            V::Text(Some(&f.currency)),
        ],
        Fields::LineItem(f) => &[
            V::Text(f.job_id.as_deref()),
            V::Text(f.invoice_id.as_deref()),
            V::Text(Some(&f.name)),
            V::Decimal(Some(f.quantity)),
            V::Decimal(f.unit_price),
            V::Decimal(f.total),
            V::Text(Some(&f.currency)),
        ],
        Fields::Payment(f) => &[
            V::Text(f.job_id.as_deref()),
            V::Text(f.invoice_id.as_deref()),
            V::Decimal(Some(f.amount)),
            V::Text(f.method.as_deref()),
            V::Time(f.paid_at),
            V::Text(f.note.as_deref()),
            V::Bool(f.is_deposit),
            V::Text(Some(&f.currency)),
        ],
        Fields::Attachment(f) => &[
            V::Text(f.job_id.as_deref()),
            V::Text(f.related_object.as_deref()),
            V::Text(f.related_object_id.as_deref()),
            V::Text(Some(&f.name)),
            V::Text(f.file_type.as_deref()),
            V::Text(f.source.as_deref()),
        ],
        Fields::Site(f) => &[V::Text(f.client_id.as_deref()), V::Text(Some(&f.name)), V::Text(f.address.as_deref())],
        Fields::Visit(f) => &[
            V::Text(f.job_id.as_deref()),
            V::Text(f.staff_id.as_deref()),
            V::Time(f.start_at),
            V::Time(f.end_at),
            V::Text(Some(&f.status)),
        ],
        Fields::Staff(f) => &[
            V::Text(f.first_name.as_deref()),
            V::Text(f.last_name.as_deref()),
            V::Text(f.email.as_deref()),
            V::Text(f.phone.as_deref()),
            V::Text(f.job_title.as_deref()),
            V::Bool(f.active),
        ],
        Fields::JobType(f) => &[V::Text(Some(&f.name)), V::Text(f.colour.as_deref())],
        Fields::CustomField(f) => &[
            V::Text(Some(&f.name)),
            V::Text(f.label.as_deref()),
            V::Text(Some(&f.field_type)),
            V::Text(f.choices.as_deref()),
        ],
        Fields::TaxRate(f) => &[V::Text(Some(&f.name)), V::Decimal(f.rate), V::Bool(f.is_default)],
        Fields::Material(f) => &[
            V::Text(Some(&f.name)),
            V::Text(f.item_number.as_deref()),
            V::Decimal(f.price),
            V::Text(f.tax_rate_id.as_deref()),
            V::Text(Some(&f.currency)),
        ],
    };
    debug_assert_eq!(values.len(), columns(fields.resource()).len());
    for value in values {
        value.write(out);
        out.push(b'\t');
    }
}

/// One typed column's value, as [`copy_fields`] writes it.
enum CopyValue<'a> {
    Text(Option<&'a str>),
    Bool(bool),
    Int(Option<i64>),
    Decimal(Option<rust_decimal::Decimal>),
    Date(Option<chrono::NaiveDate>),
    Time(Option<chrono::DateTime<chrono::Utc>>),
}

impl CopyValue<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = match self {
            CopyValue::Text(Some(text)) => {
                copy_str(out, text);
                Ok(())
            }
            CopyValue::Bool(b) => {
                out.push(if *b { b't' } else { b'f' });
                Ok(())
            }
            CopyValue::Int(Some(n)) => write!(out, "{n}"),
            CopyValue::Decimal(Some(d)) => write!(out, "{d}"),
            CopyValue::Date(Some(d)) => write!(out, "{d}"),
            CopyValue::Time(Some(t)) => {
                copy_time(out, t);
                Ok(())
            }
            CopyValue::Text(None)
            | CopyValue::Int(None)
            | CopyValue::Decimal(None)
            | CopyValue::Date(None)
            | CopyValue::Time(None) => {
                out.extend_from_slice(b"\\N");
                Ok(())
            }
        };
    }
}

/// A record with its staging-table COPY line already rendered: every column but the company,
/// which the commit resolves. The sync engine stages a page while the previous page commits,
/// so the commit itself only streams bytes.
pub struct Staged {
    pub record: Record,
    line: Vec<u8>,
}

/// Renders each record's COPY line (see [`Staged`]).
pub fn stage(records: Vec<Record>) -> Vec<Staged> {
    records
        .into_iter()
        .map(|record| {
            let line = copy_line(&record);
            Staged { record, line }
        })
        .collect()
}

/// The columns of a COPY line, in order: the record's, then the company the commit appends.
fn copy_columns(resource: Resource) -> String {
    format!(
        "external_id, {}, created_at, remote_updated_at, remote_data, deleted_at, company_id",
        columns(resource).join(", ")
    )
}

/// `external_id`, the typed columns, the times, `remote_data` and `deleted_at`, each followed by
/// a tab: the line waits only for its company id and newline.
fn copy_line(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    copy_str(&mut out, &record.external_id);
    out.push(b'\t');
    copy_fields(&mut out, &record.fields);
    // An unknown time sorts first: -infinity (the read path shows it as null).
    for time in [record.created_at, record.remote_updated_at] {
        match time {
            Some(t) => copy_time(&mut out, &t),
            None => out.extend_from_slice(b"-infinity"),
        }
        out.push(b'\t');
    }
    // JSON text holds no raw tab or newline inside its strings, so only the backslashes of its
    // escapes and any whitespace between its tokens need escaping.
    copy_str(&mut out, record.remote_data.get());
    out.push(b'\t');
    if record.deleted {
        copy_str(&mut out, &chrono::Utc::now().to_rfc3339());
    } else {
        out.extend_from_slice(b"\\N");
    }
    out.push(b'\t');
    out
}

/// Allocates (on first sight) and returns the company ids of `external_ids` in `connection`.
pub async fn company_ids(
    conn: &mut PgConnection,
    connection: ConnectionId,
    external_ids: &[String],
) -> Result<HashMap<String, CompanyId>, sqlx::Error> {
    if external_ids.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query(
        "insert into companies (connection_id, external_id) select $1, x from unnest($2::text[]) as x
         on conflict (connection_id, external_id) do nothing",
    )
    .bind(connection)
    .bind(external_ids)
    .execute(&mut *conn)
    .await?;
    // A join against unnest, not `= any($2)`: with thousands of ids a generic plan would
    // otherwise test the whole array against every row.
    let rows: Vec<(String, CompanyId)> = sqlx::query_as(
        "select c.external_id, c.id from unnest($2::text[]) as x(id)
         join companies c on c.connection_id = $1 and c.external_id = x.id",
    )
    .bind(connection)
    .bind(external_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn current_owners(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resource: Resource,
    external_ids: &[String],
) -> Result<HashMap<String, CompanyId>, sqlx::Error> {
    // One primary-key descent per id, whatever the registry's size (callers pass the ids sorted,
    // so consecutive descents touch neighbouring pages). The `limit` keeps the lateral lookup
    // from being flattened into a join, which the planner (guessing 100 rows for unnest, or a
    // handful for an array) turns into a hash join or a filter over every key once the registry
    // holds a million: 60 ms to seconds a page instead of a few milliseconds.
    let rows: Vec<(String, CompanyId)> = sqlx::query_as(
        "select x.id, k.company_id from unnest($3::text[]) as x(id)
         cross join lateral (select m.company_id from mirror_keys m
                             where m.connection_id = $1 and m.resource = $2 and m.external_id = x.id limit 1) k",
    )
    .bind(connection)
    .bind(resource.singular())
    .bind(external_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// What one page taught about the next, carried by a scan from page to page: which resources'
/// records have all been new to the mirror (a first sync's pages, or a backfill). The next
/// page's records of such a resource are registered in the key registry first, optimistically,
/// instead of being looked up one by one; a key the registry already holds undoes that and
/// sends the batch the careful way. A fresh value expects nothing, so every batch is looked up.
#[derive(Debug, Default, Clone)]
pub struct Expectation {
    new: HashSet<Resource>,
}

impl Expectation {
    /// Whether the next batch of `resource` will be registered optimistically.
    pub fn expects_new(&self, resource: Resource) -> bool {
        self.new.contains(&resource)
    }
}

/// Applies a batch of records of one connection in the caller's transaction, which holds
/// [`lock_connection`]: a write's read-back. (A sync deals its pages into lanes instead.)
pub async fn apply(
    conn: &mut PgConnection,
    connection: ConnectionId,
    records: &[Staged],
    expect: &mut Expectation,
) -> Result<ApplyStats, sqlx::Error> {
    // The caller holds every lane's lock, so no job can move under it: no count to check.
    let prepared = deal(conn, connection, records, 1, &mut Known::default(), 0).await?;
    let mut stats = apply_batches(conn, connection, &prepared.lanes[0].batches, expect).await?;
    stats.unowned += prepared.unowned;
    Ok(stats)
}

/// A page's records resolved to their companies and dealt into lanes: every record of a
/// company in one lane, so each lane can be written by its own transaction, beside the others,
/// and still draw each company's `change_seq` values in commit order (see [`lock_lane`]).
pub struct Prepared<'a> {
    lanes: Vec<Lane<'a>>,
    unowned: u64,
    /// The connection's count of job moves, read before the job owners were.
    job_moves: i64,
}

#[derive(Default)]
struct Lane<'a> {
    /// Each resource's records with their companies, deduplicated, in key order.
    batches: BTreeMap<Resource, Vec<(&'a Staged, CompanyId)>>,
    records: usize,
    /// What the lane will write, as the deal weighs it: a tombstone of a record the mirror
    /// never had (a job's never-invoiced invoice) writes nothing.
    weight: usize,
}

impl Prepared<'_> {
    /// How many lanes the page was dealt into (some may be empty).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Whether `lane` holds no records to write.
    pub fn is_empty(&self, lane: usize) -> bool {
        self.lanes[lane].records == 0
    }

    /// Records with no company (or whose job is unknown): counted, never exposed.
    pub fn unowned(&self) -> u64 {
        self.unowned
    }
}

/// What a sync remembers from page to page about where records belong, so a page's records
/// need no lookup of a company or job it has seen: a million-record first sync otherwise
/// spends seconds finding again the companies and jobs it has just written. A company's id
/// never changes. Where clients and jobs live is valid while the connection's count of moves
/// is unchanged; [`prepare`] forgets it when the count has changed.
#[derive(Debug, Default)]
pub struct Known {
    /// The registry: a provider company id → its own company.
    companies: IdMap<String, CompanyId>,
    moves: Option<i64>,
    /// Where each client lives: its own company, or its head office's for a site.
    clients: IdMap<String, CompanyId>,
    job_owners: IdMap<String, CompanyId>,
}

/// Companies, and jobs, a [`Known`] remembers at most (about a hundred bytes each); past it,
/// the rest are looked up.
const KNOWN_CAP: usize = 500_000;

fn remember(map: &mut IdMap<String, CompanyId>, key: &str, company: CompanyId) {
    if let Some(known) = map.get_mut(key) {
        *known = company;
    } else if map.len() < KNOWN_CAP {
        map.insert(key.to_owned(), company);
    }
}

impl Known {
    /// Once every lane of `prepared` has committed: its jobs are where it put them. (Not the
    /// tombstones of jobs the mirror never had: their records have no company to find.)
    pub fn learn(&mut self, prepared: &Prepared<'_>) {
        if self.moves != Some(prepared.job_moves) {
            return;
        }
        for lane in &prepared.lanes {
            for (staged, company) in lane.batches.get(&Resource::Job).into_iter().flatten() {
                if !staged.record.deleted {
                    remember(&mut self.job_owners, &staged.record.external_id, *company);
                }
            }
        }
    }
}

/// Resolves every record's company (allocating companies on first sight) and deals the
/// companies into at most `lanes` lanes, the largest first into the lightest lane. Needs no
/// lock: the lanes check what they rely on (see [`apply_lane`]).
pub async fn prepare<'a>(
    conn: &mut PgConnection,
    connection: ConnectionId,
    records: &'a [Staged],
    lanes: usize,
    known: &mut Known,
) -> Result<Prepared<'a>, sqlx::Error> {
    // Read before the owners: a move committed after this read is seen by the lanes' check.
    let job_moves = job_moves(conn, connection).await?;
    if known.moves != Some(job_moves) {
        known.job_owners.clear();
        known.clients.clear();
        known.moves = Some(job_moves);
    }
    deal(conn, connection, records, lanes, known, job_moves).await
}

/// [`prepare`], the count of job moves read.
async fn deal<'a>(
    conn: &mut PgConnection,
    connection: ConnectionId,
    records: &'a [Staged],
    lanes: usize,
    known: &mut Known,
    job_moves: i64,
) -> Result<Prepared<'a>, sqlx::Error> {
    // A record owned by a client lives where that client lives (a site's records with its head
    // office); a client not yet mirrored, and a client record naming itself, with the company
    // of its own id.
    let unknown_clients = unknown_refs(records, Owner::company_ref, &known.clients);
    if !unknown_clients.is_empty() {
        for (client, company) in current_owners(conn, connection, Resource::Client, &unknown_clients).await? {
            remember(&mut known.clients, &client, company);
        }
    }
    let mut new_companies = BTreeSet::new();
    for staged in records {
        let wanted = match &staged.record.owner {
            Owner::Company(c) if self_owned(&staged.record) || !known.clients.contains_key(c) => c.as_str(),
            Owner::Account => ACCOUNT_SCOPE,
            _ => continue,
        };
        if !known.companies.contains_key(wanted) {
            new_companies.insert(wanted);
        }
    }
    let new_companies: Vec<String> = new_companies.into_iter().map(str::to_owned).collect();
    for (company, id) in company_ids(conn, connection, &new_companies).await? {
        remember(&mut known.companies, &company, id);
    }
    let unknown_jobs = unknown_refs(records, Owner::job_ref, &known.job_owners);
    if !unknown_jobs.is_empty() {
        for (job, company) in current_owners(conn, connection, Resource::Job, &unknown_jobs).await? {
            remember(&mut known.job_owners, &job, company);
        }
    }
    let (companies, clients, job_owners) = (&known.companies, &known.clients, &known.job_owners);
    record_company_names(conn, connection, records).await?;

    // A page can hold a record twice (overlapping windows): the last copy wins.
    let mut unowned = 0;
    let mut seen = IdSet::default();
    let mut by_company: IdMap<CompanyId, Vec<&Staged>> = IdMap::default();
    for staged in records.iter().rev() {
        let record = &staged.record;
        let company = match &record.owner {
            Owner::Company(c) if self_owned(record) => companies.get(c).copied(),
            Owner::Company(c) => clients.get(c).or_else(|| companies.get(c)).copied(),
            Owner::Account => companies.get(ACCOUNT_SCOPE).copied(),
            Owner::Job(j) => job_owners.get(j).copied(),
            Owner::Unowned => None,
        };
        match company {
            Some(company) => {
                if seen.insert((record.resource(), record.external_id.as_str())) {
                    by_company.entry(company).or_default().push(staged);
                }
            }
            None => unowned += 1,
        }
    }

    // A page that moves jobs and also holds records owned through jobs is written in one lane:
    // a child dealt to its job's old company must meet the move in the same transaction. So is
    // a page whose clients own other records of the page (a site's sites).
    let page_clients: IdSet<&str> = records
        .iter()
        .filter(|r| r.record.resource() == Resource::Client)
        .map(|r| r.record.external_id.as_str())
        .collect();
    let moves_and_children = (records.iter().any(|r| r.record.resource() == Resource::Job)
        && records.iter().any(|r| matches!(r.record.owner, Owner::Job(_))))
        || records.iter().any(|r| match &r.record.owner {
            Owner::Company(c) => !self_owned(&r.record) && page_clients.contains(c.as_str()),
            _ => false,
        });
    let count = if moves_and_children { 1 } else { lanes.clamp(1, MAX_LANES).min(by_company.len().max(1)) };
    let mut dealt: Vec<Lane> = (0..count).map(|_| Lane::default()).collect();
    let mut companies: Vec<(usize, CompanyId, Vec<&Staged>)> = by_company
        .into_iter()
        .map(|(company, staged)| (staged.iter().filter(|s| !s.record.deleted).count(), company, staged))
        .collect();
    companies.sort_unstable_by(|(wa, a, _), (wb, b, _)| wb.cmp(wa).then(a.cmp(b)));
    for (weight, company, staged) in companies {
        let lane = dealt.iter_mut().min_by_key(|l| l.weight).expect("at least one lane");
        lane.records += staged.len();
        lane.weight += weight;
        for s in staged {
            lane.batches.entry(s.record.resource()).or_default().push((s, company));
        }
    }
    for lane in &mut dealt {
        for batch in lane.batches.values_mut() {
            // In key order: every index of a mirror table leads with the company, so rows
            // grouped by company land on neighbouring index pages one after another (a quarter
            // faster than a provider page's order, measured at a million rows).
            batch.sort_unstable_by(|(a, ca), (b, cb)| (ca, &a.record.external_id).cmp(&(cb, &b.record.external_id)));
        }
    }
    Ok(Prepared { lanes: dealt, unowned, job_moves })
}

/// Writes one lane of a prepared page, in the caller's transaction, after taking the lane's
/// lock. Returns `None`, having written nothing, when a client or a job moved since the page
/// was prepared (its records may have been dealt to the old company): prepare the page again.
pub async fn apply_lane(
    conn: &mut PgConnection,
    connection: ConnectionId,
    prepared: &Prepared<'_>,
    lane: usize,
    expect: &mut Expectation,
) -> Result<Option<ApplyStats>, sqlx::Error> {
    lock_lane(conn, connection, lane).await?;
    let dealt = &prepared.lanes[lane];
    // Under the lane's lock a move either committed (and bumped the count) or waits for this
    // transaction, and then takes the children written here along with their job or client.
    if job_moves(conn, connection).await? != prepared.job_moves {
        return Ok(None);
    }
    apply_batches(conn, connection, &dealt.batches, expect).await.map(Some)
}

async fn job_moves(conn: &mut PgConnection, connection: ConnectionId) -> Result<i64, sqlx::Error> {
    let moves: Option<i64> = sqlx::query_scalar("select job_moves from connections where id = $1")
        .bind(connection)
        .fetch_optional(conn)
        .await?;
    Ok(moves.unwrap_or(0))
}

async fn apply_batches(
    conn: &mut PgConnection,
    connection: ConnectionId,
    batches: &BTreeMap<Resource, Vec<(&Staged, CompanyId)>>,
    expect: &mut Expectation,
) -> Result<ApplyStats, sqlx::Error> {
    let mut stats = ApplyStats::default();
    // Read under the lane's lock: see `Outbox`.
    let outbox = Outbox::load(conn, connection).await?;
    for (resource, batch) in batches {
        stats += apply_resource(conn, connection, *resource, batch, expect, &outbox).await?;
    }
    Ok(stats)
}

/// Lanes a page of one connection may be split across: the most writers a sync may use.
pub const MAX_LANES: usize = 4;

/// Serialises mirror writes of one connection until the transaction ends: takes every lane's
/// lock (see [`lock_lane`]), in order. Writes' read-backs and the end of a scan hold it.
pub async fn lock_connection(conn: &mut PgConnection, connection: ConnectionId) -> Result<(), sqlx::Error> {
    // The select list is evaluated left to right: the locks are taken in lane order.
    let locks: Vec<String> =
        (0..MAX_LANES).map(|lane| format!("pg_advisory_xact_lock({}, $1::int)", LANE_LOCK + lane)).collect();
    let sql = format!("select {}", locks.join(", "));
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(connection.0 as i32).execute(conn).await?;
    Ok(())
}

/// Serialises the writers of one lane of a connection until the transaction ends. A page's
/// lanes hold disjoint companies, so `change_seq` values of any one company are still
/// committed in the order they are drawn: a changes-feed reader that has seen seq N can never
/// later find a smaller one appear (every company belongs to one connection).
pub async fn lock_lane(conn: &mut PgConnection, connection: ConnectionId, lane: usize) -> Result<(), sqlx::Error> {
    assert!(lane < MAX_LANES, "lane {lane} out of range");
    sqlx::query("select pg_advisory_xact_lock($1, $2::int)")
        .bind((LANE_LOCK + lane) as i32)
        .bind(connection.0 as i32)
        .execute(conn)
        .await?;
    Ok(())
}

/// The first lane's advisory lock class (the connection lock's before lanes existed).
const LANE_LOCK: usize = 7314;

/// A client record naming itself as its owner: a head office, which lives in its own company.
fn self_owned(record: &Record) -> bool {
    record.resource() == Resource::Client && record.owner.company_ref() == Some(&record.external_id)
}

/// The distinct owners of one kind that `known` does not hold, in order (see [`current_owners`]).
fn unknown_refs(
    records: &[Staged],
    pick: fn(&Owner) -> Option<&String>,
    known: &IdMap<String, CompanyId>,
) -> Vec<String> {
    let refs: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| pick(&r.record.owner).map(String::as_str))
        .filter(|id| !known.contains_key(*id))
        .collect();
    refs.into_iter().map(str::to_owned).collect()
}

/// Keeps the registry's display names in step with client records of the company itself.
async fn record_company_names(
    conn: &mut PgConnection,
    connection: ConnectionId,
    records: &[Staged],
) -> Result<(), sqlx::Error> {
    let (ids, names): (Vec<String>, Vec<String>) = records
        .iter()
        .map(|r| &r.record)
        .filter_map(|r| match (&r.fields, &r.owner) {
            (Fields::Client(c), Owner::Company(owner)) if *owner == r.external_id => {
                Some((r.external_id.clone(), c.name.clone()))
            }
            _ => None,
        })
        .unzip();
    if !ids.is_empty() {
        sqlx::query(
            "update companies set name = v.name from unnest($2::text[], $3::text[]) as v(id, name)
             where companies.connection_id = $1 and companies.external_id = v.id and companies.name is distinct from v.name",
        )
        .bind(connection)
        .bind(ids)
        .bind(names)
        .execute(conn)
        .await?;
    }
    Ok(())
}

async fn apply_resource(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resource: Resource,
    batch: &[(&Staged, CompanyId)],
    expect: &mut Expectation,
    outbox: &Outbox,
) -> Result<ApplyStats, sqlx::Error> {
    let mut stats = ApplyStats::default();
    let table = resource.plural();
    // Where each record is now: nowhere, for a batch whose keys were all new to the registry.
    let registered = expect.new.contains(&resource) && register_new(conn, connection, resource, batch).await?;
    let owners = if registered {
        HashMap::new()
    } else {
        let mut ids: Vec<String> = batch.iter().map(|(r, _)| r.record.external_id.clone()).collect();
        ids.sort_unstable();
        current_owners(conn, connection, resource, &ids).await?
    };
    if owners.is_empty() {
        expect.new.insert(resource);
    } else {
        expect.new.remove(&resource);
    }

    // Moves: out of the old company's partition, in this transaction.
    let (mut moved_old, mut moved_new, mut moved_ids) = (Vec::new(), Vec::new(), Vec::new());
    for (staged, company) in batch {
        let id = &staged.record.external_id;
        if let Some(old) = owners.get(id).filter(|old| *old != company) {
            moved_old.push(old.0);
            moved_new.push(company.0);
            moved_ids.push(id.clone());
        }
    }
    if !moved_ids.is_empty() {
        let sql = format!(
            "delete from {table} t using unnest($1::bigint[], $2::text[]) as m(c, e)
             where t.company_id = m.c and t.external_id = m.e"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&moved_old).bind(&moved_ids).execute(&mut *conn).await?;
        // Gone from the old company's point of view; the write below creates it in the new one.
        let gone = moved_old.iter().zip(&moved_ids).map(|(old, id)| (*old, id.clone(), Change::Deleted));
        outbox.record(conn, resource, gone).await?;
        if resource == Resource::Job {
            move_job_children(conn, connection, &moved_old, &moved_new, &moved_ids, outbox).await?;
        }
    }
    if resource == Resource::Client {
        // A site's records go where the site goes: from where it lived, and from the company of
        // its own id, which holds whatever named the site before it was known to be one.
        let sites: Vec<(&str, CompanyId)> = batch
            .iter()
            .filter(|(s, _)| !self_owned(&s.record) && !s.record.deleted)
            .map(|(s, company)| (s.record.external_id.as_str(), *company))
            .collect();
        let (mut old, mut new, mut ids) = (moved_old.clone(), moved_new.clone(), moved_ids.clone());
        if !sites.is_empty() {
            let names: Vec<&str> = sites.iter().map(|(id, _)| *id).collect();
            let own: Vec<(String, CompanyId)> = sqlx::query_as(
                "select external_id, id from companies where connection_id = $1 and external_id = any($2)",
            )
            .bind(connection)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await?;
            for (id, company) in own {
                if let Some((_, to)) = sites.iter().find(|(s, to)| *s == id && *to != company) {
                    old.push(company.0);
                    new.push(to.0);
                    ids.push(id);
                }
            }
        }
        if !ids.is_empty() {
            move_client_children(conn, connection, &old, &new, &ids, 0, outbox).await?;
        }
    }
    if !moved_ids.is_empty() && matches!(resource, Resource::Job | Resource::Client) {
        // Tells lanes prepared before this move that where clients and jobs live is stale.
        sqlx::query("update connections set job_moves = job_moves + 1 where id = $1")
            .bind(connection)
            .execute(&mut *conn)
            .await?;
    }

    // Rows to write: every live record, and tombstones only for records the mirror has, as
    // COPY text: the cheapest bulk path Postgres has.
    let mut buffer = Vec::with_capacity(batch.iter().map(|(s, _)| s.line.len() + 24).sum());
    let mut written = Vec::with_capacity(batch.len());
    for (staged, company) in batch {
        let record = &staged.record;
        if record.deleted && !owners.contains_key(&record.external_id) {
            stats.unchanged += 1;
            continue;
        }
        buffer.extend_from_slice(&staged.line);
        buffer.extend_from_slice(company.0.to_string().as_bytes());
        buffer.push(b'\n');
        written.push((record.external_id.clone(), company.0));
    }
    if written.is_empty() {
        return Ok(stats);
    }
    if owners.is_empty() {
        // None of these records is in the mirror yet (a first sync, or new records): they go
        // straight into the table by COPY, `change_seq` and `synced_at` from the columns'
        // defaults. (The key registry is written in this transaction, under the connection's
        // lock, so "not in the registry" means not in the table; a duplicate would fail the
        // primary key, never pass silently.)
        copy_in(conn, &format!("{table} ({})", copy_columns(resource)), buffer).await?;
        stats.inserted += written.len() as u64;
        let created = written.iter().map(|(id, company)| (*company, id.clone(), Change::Created));
        outbox.record(conn, resource, created).await?;
    } else {
        let (merged, changed) = merge(conn, resource, buffer, &owners, written.len()).await?;
        stats += merged;
        if !outbox.is_empty() {
            let companies: HashMap<&str, i64> = written.iter().map(|(id, c)| (id.as_str(), *c)).collect();
            let changes = changed.into_iter().filter_map(|(id, deleted)| {
                let company = *companies.get(id.as_str())?;
                let change = match owners.get(&id) {
                    // New to the mirror, or new to this company (moved in).
                    None => Change::Created,
                    Some(old) if old.0 != company => Change::Created,
                    Some(_) if deleted => Change::Deleted,
                    Some(_) => Change::Updated,
                };
                Some((company, id, change))
            });
            outbox.record(conn, resource, changes).await?;
        }
    }

    if registered {
        return Ok(stats);
    }
    let (keys, companies): (Vec<String>, Vec<i64>) = written.into_iter().unzip();
    sqlx::query(
        "insert into mirror_keys (connection_id, resource, external_id, company_id)
         select $1, $2, e, c from unnest($3::text[], $4::bigint[]) as x(e, c)
         on conflict (connection_id, resource, external_id)
         do update set company_id = excluded.company_id where mirror_keys.company_id <> excluded.company_id",
    )
    .bind(connection)
    .bind(resource.singular())
    .bind(keys)
    .bind(companies)
    .execute(&mut *conn)
    .await?;
    Ok(stats)
}

/// Registers the keys of a batch expected to be new to the mirror: those it would write (not
/// the tombstones, which a record the mirror lacks does not need). Returns false, with nothing
/// registered, when the registry already held one of them.
async fn register_new(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resource: Resource,
    batch: &[(&Staged, CompanyId)],
) -> Result<bool, sqlx::Error> {
    // In the registry's key order (see `apply`).
    let mut keys: Vec<_> = batch.iter().filter(|(s, _)| !s.record.deleted).collect();
    if keys.is_empty() {
        return Ok(true);
    }
    keys.sort_unstable_by_key(|(s, _)| &s.record.external_id);
    let (ids, companies): (Vec<&str>, Vec<i64>) =
        keys.into_iter().map(|(s, company)| (s.record.external_id.as_str(), company.0)).unzip();
    sqlx::query("savepoint register_new").execute(&mut *conn).await?;
    // A statement, not a COPY: as a COPY, the backend spent about a tenth of a first sync
    // waiting on the client (ClientRead) for this small message, most likely its closing
    // message held back by Nagle's algorithm (sqlx sets no TCP_NODELAY) until the server's
    // delayed acknowledgement. A statement goes out in one write.
    let inserted = sqlx::query(
        "insert into mirror_keys (connection_id, resource, external_id, company_id)
         select $1, $2, e, c from unnest($3::text[], $4::bigint[]) as x(e, c)",
    )
    .bind(connection)
    .bind(resource.singular())
    .bind(ids)
    .bind(companies)
    .execute(&mut *conn)
    .await;
    match inserted.map(|_| ()) {
        Ok(()) => {
            sqlx::query("release savepoint register_new").execute(&mut *conn).await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            sqlx::query("rollback to savepoint register_new").execute(&mut *conn).await?;
            sqlx::query("release savepoint register_new").execute(&mut *conn).await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Some of the rows may be in the mirror already: they travel by COPY into a session-lived
/// staging table (emptied at every commit), then one merge writes what changed.
async fn merge(
    conn: &mut PgConnection,
    resource: Resource,
    buffer: Vec<u8>,
    owners: &HashMap<String, CompanyId>,
    written: usize,
) -> Result<(ApplyStats, Vec<(String, bool)>), sqlx::Error> {
    let mut stats = ApplyStats::default();
    let table = resource.plural();
    let typed = columns(resource);
    let cols = typed.join(", ");
    let stage = format!("stage_{table}");
    let copy_cols = copy_columns(resource);
    // Just the copied columns, no constraints: the merge below enforces everything.
    let sql = format!(
        "create temp table if not exists {stage} on commit delete rows as select {copy_cols} from {table} with no data"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *conn).await?;
    copy_in(conn, &format!("{stage} ({copy_cols})"), buffer).await?;

    let updates: String = typed.iter().map(|c| format!("{c} = excluded.{c}, ")).collect();
    let old_tuple: String = typed.iter().map(|c| format!("t.{c}, ")).collect();
    let new_tuple: String = typed.iter().map(|c| format!("excluded.{c}, ")).collect();
    let sql = format!(
        "insert into {table} as t (company_id, external_id, {cols}, created_at, remote_updated_at, remote_data,
                                   deleted_at, change_seq, synced_at)
         select company_id, external_id, {cols}, created_at, remote_updated_at, remote_data, deleted_at,
                nextval('mirror_change_seq'), now()
         from {stage}
         on conflict (company_id, external_id) do update set {updates}
             created_at = excluded.created_at, remote_updated_at = excluded.remote_updated_at,
             remote_data = excluded.remote_data,
             deleted_at = case when excluded.deleted_at is null then null
                               else coalesce(t.deleted_at, excluded.deleted_at) end,
             change_seq = excluded.change_seq, synced_at = now()
         where ({old_tuple} t.created_at, t.remote_updated_at, t.remote_data, t.deleted_at is null)
               is distinct from
               ({new_tuple} excluded.created_at, excluded.remote_updated_at, excluded.remote_data,
                excluded.deleted_at is null)
           -- A snapshot older than the mirror's (a late webhook's fetch, a page fetched before a
           -- write's read-back) never overwrites a newer one.
           and (t.remote_updated_at is null or excluded.remote_updated_at is null
                or excluded.remote_updated_at >= t.remote_updated_at)
         returning external_id, deleted_at is not null as deleted"
    );
    let changed: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
    // The staging table empties at commit; a second batch in the same transaction must not
    // see this one's rows (a delete: cheaper here than a truncate's new file and catalog work).
    sqlx::query(sqlx::AssertSqlSafe(format!("delete from {stage}"))).execute(&mut *conn).await?;
    // (`xmax = 0` cannot be read back from a partitioned table: the key registry says instead.)
    for (external_id, deleted) in &changed {
        match (owners.contains_key(external_id), deleted) {
            (false, _) => stats.inserted += 1,
            (true, true) => stats.deleted += 1,
            (true, false) => stats.updated += 1,
        }
    }
    stats.unchanged += (written - changed.len()) as u64;
    Ok((stats, changed))
}

/// Streams COPY text into `target` (a table and its column list).
async fn copy_in(conn: &mut PgConnection, target: &str, buffer: Vec<u8>) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(&format!("copy {target} from stdin")).await?;
    copy.send(buffer).await?;
    copy.finish().await?;
    Ok(())
}

/// Text in COPY format: backslash escapes for the separators, the runs between them copied whole.
fn copy_str(out: &mut Vec<u8>, text: &str) {
    copy_bytes(out, text.as_bytes());
}

fn copy_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    /// A run of bytes checked at once: the check compiles to a few vector compares, and most
    /// runs (of a JSON payload above all) have nothing to escape and are copied whole.
    const RUN: usize = 32;
    out.reserve(bytes.len());
    let mut runs = bytes.chunks_exact(RUN);
    for run in &mut runs {
        if run.iter().fold(false, |any, &b| any | needs_escape(b)) {
            escape_into(out, run);
        } else {
            out.extend_from_slice(run);
        }
    }
    escape_into(out, runs.remainder());
}

fn needs_escape(byte: u8) -> bool {
    matches!(byte, b'\\' | b'\t' | b'\n' | b'\r')
}

fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// A time in COPY text: `2026-03-01 12:30:05+00`, written by hand for the common case (the
/// library's formatter was a tenth of the sync's own CPU at a million records), RFC 3339 else.
fn copy_time(out: &mut Vec<u8>, time: &chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (time.year(), time.nanosecond());
    if !(0..=9999).contains(&year) || nanos != 0 {
        return copy_str(out, &time.to_rfc3339());
    }
    let two = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    two(out, year as u32 / 100);
    two(out, year as u32 % 100);
    out.push(b'-');
    two(out, time.month());
    out.push(b'-');
    two(out, time.day());
    out.push(b' ');
    two(out, time.hour());
    out.push(b':');
    two(out, time.minute());
    out.push(b':');
    two(out, time.second());
    out.extend_from_slice(b"+00");
}

/// A job changed company: its line items, payments, attachments and visits go with it.
async fn move_job_children(
    conn: &mut PgConnection,
    connection: ConnectionId,
    old: &[i64],
    new: &[i64],
    jobs: &[String],
    outbox: &Outbox,
) -> Result<(), sqlx::Error> {
    for child in JOB_CHILDREN {
        move_rows(conn, connection, child, "job_id", old, new, jobs, outbox).await?;
    }
    Ok(())
}

/// How deep sites of sites are followed when one moves.
const MAX_SITE_DEPTH: usize = 4;

/// A client changed company (a site moved to another head office): what names it goes with
/// it, and its jobs take their own records along. Its own sites (clients whose `parent_id` it
/// is) follow, and theirs, to [`MAX_SITE_DEPTH`].
async fn move_client_children(
    conn: &mut PgConnection,
    connection: ConnectionId,
    old: &[i64],
    new: &[i64],
    clients: &[String],
    depth: usize,
    outbox: &Outbox,
) -> Result<(), sqlx::Error> {
    for child in CLIENT_CHILDREN {
        let moved = move_rows(conn, connection, child, "client_id", old, new, clients, outbox).await?;
        if child == Resource::Job && !moved.is_empty() {
            let (o, n, j) = unzip3(moved);
            move_job_children(conn, connection, &o, &n, &j, outbox).await?;
        }
    }
    let sites = move_rows(conn, connection, Resource::Client, "parent_id", old, new, clients, outbox).await?;
    if !sites.is_empty() && depth < MAX_SITE_DEPTH {
        let (o, n, s) = unzip3(sites);
        Box::pin(move_client_children(conn, connection, &o, &n, &s, depth + 1, outbox)).await?;
    }
    Ok(())
}

fn unzip3(rows: Vec<(i64, i64, String)>) -> (Vec<i64>, Vec<i64>, Vec<String>) {
    let mut out = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for (o, n, id) in rows {
        out.0.push(o);
        out.1.push(n);
        out.2.push(id);
    }
    out
}

/// Moves the rows of `resource` whose `column` names one of `owners` from the owner's old
/// company to its new one (updating the partition key moves the row to the new company's
/// partition), with their keys in the registry, and their events (deleted in the old company,
/// created in the new). Returns each moved row's (old, new, id).
#[allow(clippy::too_many_arguments)]
async fn move_rows(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resource: Resource,
    column: &str,
    old: &[i64],
    new: &[i64],
    owners: &[String],
    outbox: &Outbox,
) -> Result<Vec<(i64, i64, String)>, sqlx::Error> {
    let table = resource.plural();
    let sql = format!(
        "update {table} t set company_id = m.n, change_seq = nextval('mirror_change_seq'), synced_at = now()
         from unnest($1::bigint[], $2::bigint[], $3::text[]) as m(o, n, j)
         where t.company_id = m.o and t.{column} = m.j and m.o <> m.n
         returning m.o, t.company_id, t.external_id"
    );
    let moved: Vec<(i64, i64, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(old).bind(new).bind(owners).fetch_all(&mut *conn).await?;
    if !moved.is_empty() {
        let ids: Vec<&str> = moved.iter().map(|(_, _, id)| id.as_str()).collect();
        let companies: Vec<i64> = moved.iter().map(|(_, n, _)| *n).collect();
        sqlx::query(
            "update mirror_keys k set company_id = x.c from unnest($3::text[], $4::bigint[]) as x(e, c)
             where k.connection_id = $1 and k.resource = $2 and k.external_id = x.e",
        )
        .bind(connection)
        .bind(resource.singular())
        .bind(ids)
        .bind(companies)
        .execute(&mut *conn)
        .await?;
        let changes =
            moved.iter().flat_map(|(o, n, id)| [(*o, id.clone(), Change::Deleted), (*n, id.clone(), Change::Created)]);
        outbox.record(conn, resource, changes).await?;
    }
    Ok(moved)
}

/// After a complete scan of a resource: every mirrored record the provider no longer has
/// (a hard delete) becomes a tombstone. Call it only when the scan finished.
pub async fn tombstone_missing(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resource: Resource,
    seen: &[String],
) -> Result<u64, sqlx::Error> {
    // The complete id set goes into an indexed temporary table: an anti-join against a bare
    // unnest() is planned as a nested loop (the planner guesses ten rows), O(mirror × seen).
    sqlx::query("create temp table if not exists reconcile_seen (id text primary key) on commit drop")
        .execute(&mut *conn)
        .await?;
    sqlx::query("truncate reconcile_seen").execute(&mut *conn).await?;
    sqlx::query("insert into reconcile_seen select distinct unnest($1::text[]) on conflict do nothing")
        .bind(seen)
        .execute(&mut *conn)
        .await?;
    sqlx::query("analyze reconcile_seen").execute(&mut *conn).await?;
    let table = resource.plural();
    let sql = format!(
        "with gone as (select k.company_id, k.external_id from mirror_keys k
                       where k.connection_id = $1 and k.resource = $2
                         and not exists (select 1 from reconcile_seen s where s.id = k.external_id))
         update {table} t set deleted_at = now(), change_seq = nextval('mirror_change_seq'), synced_at = now()
         from gone where t.company_id = gone.company_id and t.external_id = gone.external_id and t.deleted_at is null
         returning t.company_id, t.external_id"
    );
    let gone: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(connection)
        .bind(resource.singular())
        .fetch_all(&mut *conn)
        .await?;
    // The caller holds the connection's lock (see `Outbox`).
    let outbox = Outbox::load(conn, connection).await?;
    outbox.record(conn, resource, gone.iter().map(|(c, id)| (*c, id.clone(), Change::Deleted))).await?;
    Ok(gone.len() as u64)
}

/// Tombstones the record `id` of each of `resources` and, of those owned through a parent
/// (line items and visits through their job, payments through their invoice, contacts and sites
/// through their client), the ones whose parent is `id`: a delete the provider announced (a
/// verified callback naming a record the provider no longer returns). The caller holds the
/// connection's lock (see `Outbox`). Returns how many records were tombstoned.
pub async fn tombstone_named(
    conn: &mut PgConnection,
    connection: ConnectionId,
    resources: &[Resource],
    id: &str,
) -> Result<u64, sqlx::Error> {
    let outbox = Outbox::load(conn, connection).await?;
    let mut total = 0;
    for resource in resources {
        let parent = match resource {
            Resource::LineItem | Resource::Visit => Some("job_id"),
            Resource::Payment => Some("invoice_id"),
            Resource::Contact | Resource::Site => Some("client_id"),
            _ => None,
        };
        let matches = match parent {
            Some(column) => format!("(t.external_id = $2 or t.{column} = $2)"),
            None => "t.external_id = $2".to_owned(),
        };
        let sql = format!(
            "update {} t set deleted_at = now(), change_seq = nextval('mirror_change_seq'), synced_at = now()
             from companies c
             where c.id = t.company_id and c.connection_id = $1 and {matches} and t.deleted_at is null
             returning t.company_id, t.external_id",
            resource.plural()
        );
        let gone: Vec<(i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(connection).bind(id).fetch_all(&mut *conn).await?;
        total += gone.len() as u64;
        outbox.record(conn, *resource, gone.into_iter().map(|(c, id)| (c, id, Change::Deleted))).await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// COPY text's reading of an escaped field.
    fn unescape(field: &[u8]) -> String {
        let (mut out, mut bytes) = (Vec::new(), field.iter());
        while let Some(&b) = bytes.next() {
            out.push(match (b, b == b'\\') {
                (_, true) => match bytes.next() {
                    Some(b't') => b'\t',
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(&other) => other,
                    None => panic!("a dangling backslash"),
                },
                (b, false) => b,
            });
        }
        String::from_utf8(out).unwrap()
    }

    /// Reads a time as Postgres reads COPY text: RFC 3339, or `2026-03-01 12:30:05+00`.
    fn copied_time(text: &str) -> chrono::ParseResult<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(text)
            .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%#z"))
    }

    #[test]
    fn escaping_matches_byte_by_byte_escaping_at_every_position_of_a_run() {
        let naive = |bytes: &[u8]| {
            let mut out = Vec::new();
            escape_into(&mut out, bytes);
            out
        };
        for len in [0, 1, 31, 32, 33, 64, 65, 100] {
            for at in 0..len {
                for special in [b'\\', b'\t', b'\n', b'\r'] {
                    let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                    bytes[at] = special;
                    let mut out = Vec::new();
                    copy_bytes(&mut out, &bytes);
                    assert_eq!(out, naive(&bytes), "length {len}, {special} at {at}");
                    assert_eq!(unescape(&out).as_bytes(), bytes.as_slice());
                }
            }
        }
    }

    #[test]
    fn times_are_written_as_postgres_reads_them() {
        use chrono::{TimeZone, Utc};
        let plain = Utc.with_ymd_and_hms(2026, 3, 1, 9, 5, 7).unwrap();
        let with_nanos = plain + chrono::Duration::nanoseconds(120_000_000);
        let early = Utc.with_ymd_and_hms(33, 12, 31, 23, 59, 59).unwrap();
        for time in [plain, with_nanos, early] {
            let mut out = Vec::new();
            copy_time(&mut out, &time);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(copied_time(&text).map_err(|e| format!("{text}: {e}")), Ok(time.fixed_offset()));
        }
        let mut out = Vec::new();
        copy_time(&mut out, &plain);
        assert_eq!(out, b"2026-03-01 09:05:07+00");
        // Past year 9999, the library's own RFC 3339 (as before).
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        let mut out = Vec::new();
        copy_time(&mut out, &far);
        assert_eq!(String::from_utf8(out).unwrap(), far.to_rfc3339());
    }

    /// Every resource's fields, once with every value set (text with separators in it) and
    /// once with every optional value missing.
    fn sample_fields() -> Vec<Fields> {
        use chrono::{NaiveDate, TimeZone, Utc};
        use rust_decimal::Decimal;

        use crate::model::*;
        // Every value differs from every other, so a column written in another's place shows.
        let n = std::cell::Cell::new(0);
        let next = || {
            n.set(n.get() + 1);
            n.get()
        };
        let text = || Some(format!("tab\there\nnew line\r\\back\\slash, ünïcode {}", next()));
        let time = || Some(Utc.with_ymd_and_hms(2026, 3, 1, 12, 30, next()).unwrap());
        let money = || Some(Decimal::new(-22050 - next() as i64, 2));
        let full = vec![
            Fields::Client(ClientFields {
                name: "N\t1".into(),
                is_individual: true,
                address: text(),
                billing_address: text(),
                website: text(),
                parent_id: text(),
            }),
            Fields::Contact(ContactFields {
                client_id: text(),
                first_name: text(),
                last_name: text(),
                email: text(),
                phone: text(),
                mobile: text(),
                kind: text(),
                is_primary: true,
            }),
            Fields::Job(JobFields {
                client_id: text(),
                number: Some(-1042),
                status: "Work\\Order".into(),
                description: text(),
                address: text(),
                purchase_order: text(),
                scheduled_on: NaiveDate::from_ymd_opt(2026, 2, 27),
                completed_at: time(),
                total: money(),
                currency: "AUD".into(),
                job_type_id: text(),
                custom_fields: Some(r#"{"gate_code": "12\t34"}"#.into()),
            }),
            Fields::Invoice(InvoiceFields {
                client_id: text(),
                job_id: text(),
                number: Some(7),
                status: "paid".into(),
                issued_at: time(),
                paid_at: time(),
                total: money(),
                currency: "AUD".into(),
            }),
            Fields::LineItem(LineItemFields {
                job_id: text(),
                invoice_id: text(),
                name: "Pipe\n".into(),
                quantity: Decimal::new(15, 1),
                unit_price: money(),
                total: money(),
                currency: "AUD".into(),
            }),
            Fields::Payment(PaymentFields {
                job_id: text(),
                invoice_id: text(),
                amount: Decimal::new(1, 4),
                method: text(),
                paid_at: time(),
                note: text(),
                is_deposit: true,
                currency: "AUD".into(),
            }),
            Fields::Attachment(AttachmentFields {
                job_id: text(),
                related_object: text(),
                related_object_id: text(),
                name: "a.pdf".into(),
                file_type: text(),
                source: text(),
            }),
            Fields::Site(SiteFields { client_id: text(), name: "Depot\t2".into(), address: text() }),
            Fields::Visit(VisitFields {
                job_id: text(),
                staff_id: text(),
                start_at: time(),
                end_at: time(),
                status: "scheduled".into(),
            }),
            Fields::Staff(StaffFields {
                first_name: text(),
                last_name: text(),
                email: text(),
                phone: text(),
                job_title: text(),
                active: true,
            }),
            Fields::JobType(JobTypeFields { name: "Install\n".into(), colour: text() }),
            Fields::CustomField(CustomFieldFields {
                name: "gate_code".into(),
                label: text(),
                field_type: "text".into(),
                choices: Some(r#"["a", "b\\c"]"#.into()),
            }),
            Fields::TaxRate(TaxRateFields { name: "GST".into(), rate: Some(Decimal::new(10, 0)), is_default: true }),
            Fields::Material(MaterialFields {
                name: "Pipe".into(),
                item_number: text(),
                price: money(),
                tax_rate_id: text(),
                currency: "AUD".into(),
            }),
        ];
        let empty = vec![
            Fields::Client(ClientFields::default()),
            Fields::Contact(ContactFields::default()),
            Fields::Job(JobFields::default()),
            Fields::Invoice(InvoiceFields::default()),
            Fields::LineItem(LineItemFields::default()),
            Fields::Payment(PaymentFields::default()),
            Fields::Attachment(AttachmentFields::default()),
            Fields::Site(SiteFields::default()),
            Fields::Visit(VisitFields::default()),
            Fields::Staff(StaffFields::default()),
            Fields::JobType(JobTypeFields::default()),
            Fields::CustomField(CustomFieldFields::default()),
            Fields::TaxRate(TaxRateFields::default()),
            Fields::Material(MaterialFields::default()),
        ];
        full.into_iter().chain(empty).collect()
    }

    /// A COPY line carries every column of the record, in the order [`copy_columns`] names
    /// them, escaped so that it reads back exactly: checked against the fields' own serde form.
    #[test]
    fn copy_lines_hold_every_column_in_order_and_read_back_exactly() {
        use chrono::{DateTime, Utc};
        let payload = "{\n\t\"note\": \"a\\tb \\\\ c\\n\",\r\n \"nested\": [1, {\"x\": \"\\u00fc\"}]\n}";
        let remote_data: crate::model::RawJson = serde_json::from_str(payload).unwrap();
        for fields in sample_fields() {
            let resource = fields.resource();
            let record = Record {
                external_id: "id\t1".into(),
                owner: Owner::Unowned,
                created_at: None,
                remote_updated_at: Some(Utc::now()),
                deleted: false,
                fields: fields.clone(),
                remote_data: remote_data.clone(),
            };
            let mut line = copy_line(&record);
            line.extend_from_slice(b"42");
            assert!(!line.iter().any(|b| matches!(b, b'\n' | b'\r')), "a raw line break in {resource}'s line");
            // `\N` (null) stays as it is; every other field is unescaped.
            let read: Vec<String> = line
                .split(|b| *b == b'\t')
                .map(|field| if field == b"\\N" { "\\N".to_owned() } else { unescape(field) })
                .collect();
            let names: Vec<String> = copy_columns(resource).split(", ").map(str::to_owned).collect();
            assert_eq!(read.len(), names.len(), "{resource}: one value per column");
            let column = |name: &str| &read[names.iter().position(|n| n == name).unwrap()];

            assert_eq!(column("external_id"), "id\t1");
            assert_eq!(column("remote_data"), payload, "{resource}: the payload as sent");
            assert_eq!(column("created_at"), "-infinity");
            assert_eq!(column("deleted_at"), "\\N");
            assert_eq!(column("company_id"), "42");
            let Value::Object(expected) = serde_json::to_value(&fields).unwrap() else { panic!() };
            for name in columns(resource) {
                let got = column(name);
                match &expected[*name] {
                    Value::Null => assert_eq!(got, "\\N", "{resource}.{name}"),
                    Value::Bool(b) => assert_eq!(got, if *b { "t" } else { "f" }, "{resource}.{name}"),
                    Value::Number(n) => assert_eq!(*got, n.to_string(), "{resource}.{name}"),
                    Value::String(s) => match (DateTime::parse_from_rfc3339(s), copied_time(got)) {
                        (Ok(want), Ok(have)) => assert_eq!(want, have, "{resource}.{name}"),
                        _ => assert_eq!(got, s, "{resource}.{name}"),
                    },
                    other => panic!("{resource}.{name}: unexpected {other}"),
                }
            }
        }
    }
}
