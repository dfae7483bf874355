//! Writes that pass through to the provider (DESIGN.md §5), shared by REST and GraphQL:
//! validate, confine to the endpoint's company, queue per provider account, call the provider
//! (looking a create up before any retry, so a lost answer never makes a duplicate), re-read
//! what the provider now holds into the mirror, and answer with the mirrored record.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clientapi_schema::model::{Record, Resource};
use clientapi_schema::read;
use clientapi_schema::write::{self as fields, Invalid};
use clientapi_schema::{CompanyId, ConnectionId, mirror};
use clientapi_sync::connections::TokenError;
use clientapi_sync::provider::{Provider, ProviderError, ProviderKind, Stream};
use moka::sync::Cache;
use serde_json::{Map, Value};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::startup::AppState;

/// Provider calls in flight per connection for customer writes (the sync engine runs beside them).
const WRITES_PER_CONNECTION: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update(String),
    Delete(String),
}

impl Operation {
    pub fn create(&self) -> bool {
        matches!(self, Operation::Create)
    }
}

/// What a write answers: the HTTP status and the mirrored record (JSON text).
pub struct Written {
    pub created: bool,
    pub id: String,
    pub record: String,
}

/// Customer writes wait here, per provider account: each company has one write at the door
/// at a time (its others queue behind it), so one busy company cannot crowd out the rest.
pub struct WriteQueue {
    connections: Cache<ConnectionId, Arc<Semaphore>>,
    companies: Cache<CompanyId, Arc<Mutex<()>>>,
}

pub struct Turn {
    _company: OwnedMutexGuard<()>,
    _slot: OwnedSemaphorePermit,
}

impl Default for WriteQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteQueue {
    pub fn new() -> Self {
        Self {
            connections: Cache::builder().max_capacity(10_000).time_to_idle(Duration::from_secs(3600)).build(),
            companies: Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(3600)).build(),
        }
    }

    pub async fn turn(&self, connection: ConnectionId, company: CompanyId) -> Turn {
        let company = self.companies.get_with(company, Arc::default).lock_owned().await;
        let slot = self.connections.get_with(connection, || Arc::new(Semaphore::new(WRITES_PER_CONNECTION)));
        let slot = slot.acquire_owned().await.expect("the write semaphore is never closed");
        Turn { _company: company, _slot: slot }
    }
}

fn invalid(errors: Vec<Invalid>) -> ApiError {
    ApiError::Invalid(errors.into_iter().map(|i| FieldError::new(i.field, i.message)).collect())
}

/// A provider condition that is not the caller's doing, one status wherever it is met (a write,
/// an attachment's content): its spent budget or its 429 is a 503 with `Retry-After` (the
/// request was fine and will succeed later), a connection that needs the operator a 503 too.
pub fn provider_unavailable(e: &ProviderError) -> Option<ApiError> {
    match e {
        ProviderError::RateLimited { retry_after, .. } => Some(ApiError::Unavailable {
            detail: "The provider's request budget is spent; try again shortly.".into(),
            retry_after_secs: Some(retry_after.map_or(30, |d| d.as_secs().max(1))),
        }),
        ProviderError::Unauthorized | ProviderError::InvalidGrant | ProviderError::NotConfigured(_) => {
            Some(ApiError::Unavailable {
                detail: "The provider connection needs attention from the operator.".into(),
                retry_after_secs: Some(300),
            })
        }
        _ => None,
    }
}

/// How a provider's refusal reads to the customer: its own words, never a 500.
fn provider_failure(e: ProviderError) -> ApiError {
    if let Some(unavailable) = provider_unavailable(&e) {
        return unavailable;
    }
    match e {
        ProviderError::NotFound => ApiError::NotFound,
        ProviderError::Rejected { status: 409, message } => ApiError::Conflict {
            code: "provider_conflict",
            detail: format!("The provider refused the write: {message}"),
        },
        ProviderError::Rejected { status, message } if (400..500).contains(&status) => {
            ApiError::Invalid(vec![FieldError::new("body", format!("the provider refused the write: {message}"))])
        }
        other => ApiError::BadGateway { detail: format!("The provider failed: {other}") },
    }
}

fn token_failure(e: TokenError) -> ApiError {
    match e {
        TokenError::Database(e) => e.into(),
        TokenError::Provider(e) => provider_failure(e),
        other => ApiError::Unavailable {
            detail: format!("The provider connection is unavailable: {other}"),
            retry_after_secs: Some(300),
        },
    }
}

/// A live record of the endpoint's company, or 404 exactly like a missing one.
async fn own_record(state: &AppState, p: &Principal, resource: Resource, id: &str) -> Result<Value, ApiError> {
    let row =
        read::get_one(&state.reads.primary(), p.read_scope(), resource, id, false).await?.ok_or(ApiError::NotFound)?;
    let record: Value = serde_json::from_str(&row).map_err(anyhow::Error::from)?;
    if record["deleted_at"].is_null() { Ok(record) } else { Err(ApiError::NotFound) }
}

/// The provider calls of one write, with the connection's budget and one token refresh.
struct Call<'a> {
    state: &'a AppState,
    provider: &'a dyn Provider,
    connection: ConnectionId,
    token: clientapi_schema::secret::Secret<String>,
}

impl Call<'_> {
    async fn budget(&self) {
        self.state.engine.limiter(self.connection, self.provider).until_ready().await;
    }

    /// Runs `f` with the token; after a token rejection, refreshes once and runs it again.
    async fn run<T, F, Fut>(&mut self, f: F) -> Result<T, ProviderError>
    where
        F: Fn(clientapi_schema::secret::Secret<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        self.budget().await;
        match f(self.token.clone()).await {
            Err(ProviderError::Unauthorized) => {
                let fresh = self
                    .state
                    .tokens
                    .refresh_after_rejection(self.provider, self.connection, &self.token)
                    .await
                    .map_err(|_| ProviderError::Unauthorized)?;
                self.token = fresh;
                self.budget().await;
                f(self.token.clone()).await
            }
            other => other,
        }
    }

    async fn get(&mut self, stream: Stream, id: &str) -> Result<Option<Vec<Record>>, ProviderError> {
        let provider = self.provider;
        self.run(|token| async move { provider.get(&token, stream, id).await }).await
    }
}

/// Whether the provider may have acted although no answer came back.
fn answer_lost(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Timeout | ProviderError::Transport(_) | ProviderError::Server(_) | ProviderError::Malformed(_)
    )
}

/// The id a create will be made under, chosen before the provider is called.
pub struct ChosenId {
    pub id: String,
    /// An earlier attempt of the same idempotent request used it: look it up before creating.
    pub earlier_attempt: bool,
}

/// An id for a create, when `p`'s provider accepts ids chosen by the caller.
pub fn new_id(state: &AppState, p: &Principal) -> Option<String> {
    ProviderKind::parse(&p.provider).and_then(|kind| state.providers.get(kind).new_id())
}

/// Performs one write for endpoint `p`. `chosen` is the id a create is made under (when the
/// caller chose it, e.g. to keep it with an idempotency key).
pub async fn perform(
    state: &AppState,
    p: &Principal,
    resource: Resource,
    operation: Operation,
    body: &Map<String, Value>,
    chosen: Option<ChosenId>,
) -> Result<Written, ApiError> {
    let kind = ProviderKind::parse(&p.provider).ok_or(ApiError::NotFound)?;
    let provider = state.providers.get(kind);
    let provider = provider.as_ref();
    if fields::write_fields(resource).is_empty() {
        return Err(ApiError::MethodNotAllowed);
    }
    if !resource.is_deletable() && matches!(operation, Operation::Delete(_)) {
        return Err(ApiError::Forbidden {
            code: "not_deletable",
            detail: format!("{} cannot be deleted through this API.", resource.plural().replace('_', " ")),
        });
    }
    let clean = match operation {
        Operation::Delete(_) => Map::new(),
        _ => fields::validate(resource, body, operation.create(), provider.job_statuses()).map_err(invalid)?,
    };
    // Scope: the target and every record the body points at must be this company's.
    if let Operation::Update(id) | Operation::Delete(id) = &operation {
        own_record(state, p, resource, id).await?;
    }
    for spec in fields::write_fields(resource) {
        if let fields::WriteKind::Reference(to) = spec.kind
            && let Some(Value::String(id)) = clean.get(spec.name)
        {
            // Missing and another company's answer alike, naming the field, before the provider.
            own_record(state, p, to, id).await.map_err(|e| match e {
                ApiError::NotFound => ApiError::Invalid(vec![FieldError::new(
                    spec.name,
                    format!("must be the id of one of your {}", to.plural().replace('_', " ")),
                )]),
                other => other,
            })?;
        }
    }
    // Custom field values, against the definitions the mirror holds (never the provider's).
    let mut clean = clean;
    if let Some(Value::Object(values)) = clean.get("custom_fields") {
        let definitions = custom_field_definitions(state, p).await?;
        let values = fields::validate_custom_fields(values, &definitions).map_err(invalid)?;
        clean.insert("custom_fields".into(), Value::Object(values));
    }
    let window = match (clean.remove("start_time"), clean.remove("end_time")) {
        (Some(Value::String(start)), Some(Value::String(end))) => Some((start, end)),
        _ => None,
    };
    let stream = provider.stream_for(resource).ok_or(ApiError::MethodNotAllowed)?;
    // The mirror must be able to take the write before the provider is asked: with the primary
    // down (a restart, a failover) the write stops here, a 503 with Retry-After, instead of
    // reaching the provider and coming back unmirrored.
    sqlx::query("select 1").execute(&state.db).await?;
    let _turn = state.write_queue.turn(p.connection_id, p.company_id).await;
    let token = state.tokens.access_token(provider, p.connection_id).await.map_err(token_failure)?;
    let mut call = Call { state, provider, connection: p.connection_id, token };
    let payload = provider.write_body(resource, &p.company_external_id, &clean, operation.create());
    let (id, created) = match &operation {
        Operation::Create => {
            let chosen = chosen.or_else(|| provider.new_id().map(|id| ChosenId { id, earlier_attempt: false }));
            let id = create(&mut call, stream, payload, chosen).await.map_err(provider_failure)?;
            if resource == Resource::Attachment {
                upload(&mut call, &id, &clean).await.map_err(provider_failure)?;
            }
            (id, true)
        }
        Operation::Update(id) => {
            // An update sets the same fields however often it lands: retried when the answer is lost.
            let body = payload.clone();
            let mut attempt = 0;
            loop {
                let result = call
                    .run(|token| {
                        let body = body.clone();
                        async move { provider.update(&token, stream, id, body).await }
                    })
                    .await;
                match result {
                    Err(e) if answer_lost(&e) && attempt < 2 => attempt += 1,
                    other => break other.map_err(provider_failure)?,
                }
            }
            (id.clone(), false)
        }
        Operation::Delete(id) => {
            let mut attempt = 0;
            loop {
                match call.run(|token| async move { provider.delete(&token, stream, id).await }).await {
                    Err(e) if answer_lost(&e) && attempt < 2 => attempt += 1,
                    other => break other.map_err(provider_failure)?,
                }
            }
            (id.clone(), false)
        }
    };
    // Read-your-writes: what the provider now holds goes into the mirror before we answer.
    let mut records = call.get(stream, &id).await.map_err(provider_failure)?.unwrap_or_default();
    if records.is_empty() {
        return Err(ApiError::BadGateway {
            detail: format!("The provider accepted the write but does not return {} {id}.", resource.singular()),
        });
    }
    // Server-side effects: a line item changes its job's computed total.
    if resource == Resource::LineItem
        && let Some(job) = records.first().and_then(|r| r.owner.job_ref()).cloned()
        && let Some(job_stream) = provider.stream_for(Resource::Job)
    {
        match call.get(job_stream, &job).await {
            Ok(Some(more)) => records.extend(more),
            Ok(None) => {}
            // The next sync picks the total up; the write itself succeeded.
            Err(e) => tracing::warn!(error = %e, job, "re-reading the job after a line item write failed"),
        }
    }
    // A new job's preferred window becomes its first visit, mirrored after the job it belongs to.
    let (mut visits, mut window_failed) = (Vec::new(), None);
    if let (Some((start, end)), true) = (&window, created)
        && let (Some(body), Some(visit_stream)) =
            (provider.window_body(&id, start, end), provider.stream_for(Resource::Visit))
    {
        let chosen = provider.new_id().map(|id| ChosenId { id, earlier_attempt: false });
        let booked = match create(&mut call, visit_stream, body, chosen).await {
            Ok(visit) => call.get(visit_stream, &visit).await,
            Err(e) => Err(e),
        };
        match booked {
            Ok(records) => visits = records.unwrap_or_default(),
            Err(e) => window_failed = Some(window_failure(&id, e)),
        }
    }
    let mut tx = state.db.begin().await?;
    mirror::lock_connection(&mut tx, p.connection_id).await?;
    for batch in [records, visits] {
        mirror::apply(&mut tx, p.connection_id, &mirror::stage(batch), &mut mirror::Expectation::default()).await?;
    }
    tx.commit().await?;
    // Read-your-writes through the read replicas, on this process and the others.
    state.reads.wrote(p.endpoint_id).await;
    // The job itself is mirrored and readable; the answer says its window was not booked.
    if let Some(failed) = window_failed {
        return Err(failed);
    }
    let Some(record) = read::get_one(&state.reads.primary(), p.read_scope(), resource, &id, false).await? else {
        // The provider put the record where this endpoint cannot see it: undo a create, and say
        // what happened either way.
        let what = format!("The provider placed {} {id} outside this endpoint's company", resource.singular());
        if !created {
            return Err(ApiError::BadGateway { detail: format!("{what}; the change stays there.") });
        }
        let target = id.as_str();
        let undone = call.run(|token| async move { provider.delete(&token, stream, target).await }).await;
        return Err(ApiError::BadGateway {
            detail: match undone {
                Ok(()) => format!("{what}, so it was deleted again; nothing was created."),
                Err(e) => format!("{what}, and deleting it again failed ({e}): it exists at the provider."),
            },
        });
    };
    Ok(Written { created, id, record })
}

/// The job was created but its window could not be booked: said plainly, never a silent half.
fn window_failure(job: &str, e: ProviderError) -> ApiError {
    ApiError::BadGateway {
        detail: format!("The job {job} was created, but booking its window failed ({e}); book it with POST /visits."),
    }
}

/// The custom fields a job may carry, from the mirror: name → (type, allowed values).
async fn custom_field_definitions(
    state: &AppState,
    p: &Principal,
) -> Result<std::collections::HashMap<String, (String, Vec<String>)>, ApiError> {
    let query = read::ListQuery {
        resource: Resource::CustomField,
        filters: read::Filters::default(),
        sort: read::Sort::default(),
        page_size: read::MAX_PAGE_SIZE,
        after: None,
        include_remote_data: false,
    };
    let page = read::list_page(&state.reads.primary(), p.read_scope(), &query).await?;
    let mut definitions = std::collections::HashMap::new();
    for row in page.rows {
        let field: Value = serde_json::from_str(&row).map_err(anyhow::Error::from)?;
        let choices = field["choices"]
            .as_array()
            .map(|c| c.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if let (Some(name), Some(kind)) = (field["name"].as_str(), field["type"].as_str()) {
            definitions.insert(name.to_owned(), (kind.to_owned(), choices));
        }
    }
    Ok(definitions)
}

/// Creates, looking the chosen id up before any retry: a create whose answer was lost is found,
/// not made twice.
async fn create(
    call: &mut Call<'_>,
    stream: Stream,
    mut payload: Value,
    chosen: Option<ChosenId>,
) -> Result<String, ProviderError> {
    let provider = call.provider;
    if let Some(c) = &chosen {
        provider.set_id(&mut payload, &c.id);
        // A retry of an earlier attempt: it may have landed.
        if c.earlier_attempt && call.get(stream, &c.id).await?.is_some() {
            return Ok(c.id.clone());
        }
    }
    let chosen = chosen.map(|c| c.id);
    let mut attempt: u32 = 0;
    loop {
        let body = payload.clone();
        let result = call.run(|token| {
            let body = body.clone();
            async move { provider.create(&token, stream, body).await }
        });
        match (result.await, &chosen) {
            (Ok(id), _) => return Ok(id),
            (Err(e), Some(id)) if answer_lost(&e) && attempt < 2 => {
                attempt += 1;
                tracing::warn!(error = %e, id, "create answer lost; looking the record up before any retry");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                if call.get(stream, id).await?.is_some() {
                    return Ok(id.clone());
                }
            }
            (Err(e), _) => return Err(e),
        }
    }
}

async fn upload(call: &mut Call<'_>, id: &str, clean: &Map<String, Value>) -> Result<(), ProviderError> {
    let provider = call.provider;
    let name = clean.get("name").and_then(Value::as_str).unwrap_or("file").to_owned();
    let content_type =
        clean.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream").to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean.get("content_base64").and_then(Value::as_str).unwrap_or_default())
        .map_err(|e| ProviderError::Rejected { status: 422, message: format!("content_base64: {e}") })?;
    call.run(|token| {
        let (name, content_type, bytes) = (name.clone(), content_type.clone(), bytes.clone());
        async move { provider.upload(&token, id, &name, &content_type, bytes).await }
    })
    .await
}
