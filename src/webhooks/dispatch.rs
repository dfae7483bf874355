//! The webhook dispatcher: claims due deliveries from the outbox (a lease, so any number of
//! worker processes share the work and a killed one's claims come back), renders each event as
//! the REST API renders its record, signs and posts it, and records the outcome: delivered;
//! retried with exponential backoff and jitter until the retry window (3 days by default) has
//! passed; or dropped when the endpoint may no longer see it. A record's events go out in
//! order: a later one waits while an earlier one is still pending. A subscription that has not
//! had a success for the whole retry window is disabled, with the reason kept for its admin.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clientapi_schema::CompanyId;
use clientapi_schema::model::Resource;
use clientapi_schema::read::{self, Filters, ListQuery, Scope, Sort};
use futures::StreamExt;
use rand::Rng;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{guard, sign};
use crate::config::Secret;
use crate::startup::AppState;

/// Deliveries claimed at once.
pub const BATCH: i64 = 256;
/// Requests in flight at once, per process.
const CONCURRENCY: usize = 64;
/// How often the outbox is looked at when no notification came (another process's, a retry
/// coming due).
const IDLE: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The start of a receiver's answer kept in the log.
const SNIPPET: usize = 1024;
/// How often old deliveries and attempts are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Wakes every dispatcher (in any process) to look at the outbox now.
pub async fn wake(db: &PgPool) {
    let _ = sqlx::query("select pg_notify($1, '')").bind(clientapi_schema::outbox::NOTIFY_CHANNEL).execute(db).await;
}

/// One claimed delivery, with what sending it needs.
#[derive(sqlx::FromRow)]
struct Claimed {
    company_id: CompanyId,
    subscription_id: String,
    event_id: i64,
    event_type: String,
    resource: Option<String>,
    external_id: Option<String>,
    change_seq: Option<i64>,
    data: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    attempts: i32,
    url: String,
    payload: String,
    secret_enc: Vec<u8>,
    previous_secret_enc: Option<Vec<u8>>,
    endpoint: String,
    scopes: Vec<String>,
}

/// A rendered record's key: company, technicians shown (two endpoints of a company may see a
/// job differently), resource, id.
type RecordKey = (i64, bool, Resource, String);

/// What one attempt came to.
enum Outcome {
    Delivered { status: u16 },
    Failed { status: Option<u16>, error: String },
    Dropped { reason: String },
}

struct Attempt {
    outcome: Outcome,
    latency_ms: f32,
    response: Option<String>,
}

/// Sends webhooks. One per worker process.
#[derive(Clone)]
pub struct Dispatcher {
    state: AppState,
    http: reqwest::Client,
}

impl Dispatcher {
    pub fn new(state: AppState) -> Self {
        let settings = &state.config.webhooks;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(guard::PublicResolver { allow_private: settings.allow_private })
            .user_agent(concat!("clientapi-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static reqwest configuration");
        Self { state, http }
    }

    /// Delivers until `shutdown`: at once when the outbox notifies, else every [`IDLE`].
    pub async fn run(self, shutdown: CancellationToken) {
        let queue = crate::queue_worker::Queue {
            name: "webhook deliveries",
            channel: clientapi_schema::outbox::NOTIFY_CHANNEL,
            batch: BATCH as usize,
            idle: IDLE,
            housekeeping_every: PRUNE_EVERY,
        };
        queue.run(&self.state.db, shutdown, || self.tick(), || self.prune()).await;
    }

    /// Claims one batch of due deliveries and attempts each; returns how many it attempted.
    pub async fn tick(&self) -> Result<usize, sqlx::Error> {
        let claimed: Vec<Claimed> = sqlx::query_as(
            "with due as (
                 select d.company_id, d.subscription_id, d.event_id
                 from webhook_deliveries d
                 join webhook_subscriptions s on s.company_id = d.company_id and s.public_id = d.subscription_id
                 join endpoints e on e.id = s.endpoint_id
                 where d.state = 'pending' and d.next_attempt_at <= now()
                   and (d.leased_until is null or d.leased_until < now())
                   and s.status = 'active' and e.status = 'active'
                   and not exists (select 1 from webhook_deliveries p
                                   where p.company_id = d.company_id and p.subscription_id = d.subscription_id
                                     and p.resource = d.resource and p.external_id = d.external_id
                                     and p.event_id < d.event_id and p.state = 'pending')
                 order by d.event_id
                 limit $1
                 for update of d skip locked)
             update webhook_deliveries d set leased_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
             from due, webhook_subscriptions s, endpoints e
             where d.company_id = due.company_id and d.subscription_id = due.subscription_id and d.event_id = due.event_id
               and s.company_id = d.company_id and s.public_id = d.subscription_id and e.id = s.endpoint_id
             returning d.company_id, d.subscription_id, d.event_id, d.event_type, d.resource, d.external_id, d.change_seq,
                       d.data, d.created_at, d.attempts, s.url, s.payload, s.secret_enc,
                       case when s.previous_secret_expires_at > now() then s.previous_secret_enc end as previous_secret_enc,
                       e.public_id as endpoint, e.scopes",
        )
        .bind(BATCH)
        // A claim outlives every attempt it covers (a killed process's claims come back after it).
        .bind((self.state.config.webhooks.timeout * 2 + Duration::from_secs(5)).as_secs_f64())
        .fetch_all(&self.state.db)
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let records = self.render(&claimed).await?;
        // Collected first: a lazily mapped iterator inside a spawned task trips the compiler's
        // higher-ranked lifetime inference.
        let pending: Vec<_> = claimed.iter().map(|c| self.attempt(c, &records)).collect();
        let attempts: Vec<Attempt> = futures::stream::iter(pending).buffered(CONCURRENCY).collect().await;
        self.record(&claimed, &attempts).await?;
        Ok(claimed.len())
    }

    /// The records the batch's record events carry, as the REST API renders them, each read in
    /// its endpoint's scope: one statement per company and resource.
    async fn render(&self, claimed: &[Claimed]) -> Result<HashMap<RecordKey, String>, sqlx::Error> {
        let mut wanted: HashMap<(i64, bool, Resource), Vec<String>> = HashMap::new();
        for c in claimed.iter().filter(|c| c.payload == "record") {
            if let (Some(resource), Some(id)) = (c.resource.as_deref().and_then(Resource::parse), &c.external_id) {
                let technicians = c.scopes.iter().any(|s| s == crate::auth::TECHNICIANS_READ);
                let ids = wanted.entry((c.company_id.0, technicians, resource)).or_default();
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
        }
        let mut out = HashMap::new();
        for ((company, technicians, resource), ids) in wanted {
            for chunk in ids.chunks(crate::http::public::rest::MAX_IDS) {
                let query = ListQuery {
                    resource,
                    filters: Filters { ids: Some(chunk.to_vec()), include_deleted: true, ..Filters::default() },
                    sort: Sort::default(),
                    page_size: chunk.len() as u32,
                    after: None,
                    include_remote_data: false,
                };
                let scope = Scope::new(CompanyId(company), technicians);
                let page = read::list_page(&self.state.reads.primary(), scope, &query).await?;
                for (json, (_, id)) in page.rows.into_iter().zip(page.keys) {
                    out.insert((company, technicians, resource, id), json);
                }
            }
        }
        Ok(out)
    }

    /// The event as it goes out, or why it no longer should.
    fn body(&self, c: &Claimed, records: &HashMap<RecordKey, String>) -> Result<String, String> {
        let event_id = format!("evt_{}", c.event_id);
        let timestamp = c.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let Some(resource_name) = &c.resource else {
            // sync.completed: the run's own facts.
            let data = c.data.clone().unwrap_or_default();
            return Ok(serde_json::json!({
                "type": c.event_type, "timestamp": timestamp,
                "data": { "event_id": event_id, "sync": data },
            })
            .to_string());
        };
        let resource = Resource::parse(resource_name).ok_or_else(|| format!("unknown resource {resource_name}"))?;
        if !c.scopes.iter().any(|s| *s == resource.read_scope()) {
            return Err(format!("the endpoint no longer has the {} scope", resource.read_scope()));
        }
        let id = c.external_id.clone().unwrap_or_default();
        let mut data = serde_json::json!({
            "event_id": event_id, "resource": resource.singular(), "id": id, "change_seq": c.change_seq,
        });
        if c.payload == "record" {
            let technicians = c.scopes.iter().any(|s| s == crate::auth::TECHNICIANS_READ);
            let key = (c.company_id.0, technicians, resource, id.clone());
            match records.get(&key) {
                Some(json) => {
                    let raw = RawValue::from_string(json.clone()).map_err(|e| e.to_string())?;
                    data["record"] = serde_json::to_value(raw).map_err(|e| e.to_string())?;
                }
                // It left the company (moved to another client): only its deletion is news here.
                None if c.event_type.ends_with(".deleted") => data["record"] = serde_json::Value::Null,
                None => return Err("the record is no longer in this endpoint's company".into()),
            }
        } else {
            let base = self.state.config.public_url.as_str().trim_end_matches('/');
            data["url"] = serde_json::json!(format!("{base}/api/public/{}/{}/{id}", c.endpoint, resource.plural()));
        }
        Ok(serde_json::json!({ "type": c.event_type, "timestamp": timestamp, "data": data }).to_string())
    }

    fn secrets(&self, c: &Claimed) -> Result<Vec<Secret<String>>, String> {
        let cipher = self.state.tokens.cipher();
        let aad = super::secret_aad(&c.subscription_id);
        let mut secrets = vec![cipher.decrypt(&c.secret_enc, &aad).map_err(|_| "the signing secret cannot be opened")?];
        if let Some(previous) = &c.previous_secret_enc
            && let Ok(secret) = cipher.decrypt(previous, &aad)
        {
            secrets.push(secret);
        }
        Ok(secrets)
    }

    async fn attempt(&self, c: &Claimed, records: &HashMap<RecordKey, String>) -> Attempt {
        let body = match self.body(c, records) {
            Ok(body) => body,
            Err(reason) => return Attempt { outcome: Outcome::Dropped { reason }, latency_ms: 0.0, response: None },
        };
        let secrets = match self.secrets(c) {
            Ok(s) => s,
            Err(e) => {
                let outcome = Outcome::Failed { status: None, error: e };
                return Attempt { outcome, latency_ms: 0.0, response: None };
            }
        };
        let started = Instant::now();
        let outcome = self.post(c, &body, &secrets).await;
        let latency_ms = started.elapsed().as_secs_f32() * 1000.0;
        let (outcome, response) = match outcome {
            Ok((status, snippet)) if (200..300).contains(&status) => (Outcome::Delivered { status }, snippet),
            Ok((status, snippet)) => (
                Outcome::Failed { status: Some(status), error: format!("the receiver answered HTTP {status}") },
                snippet,
            ),
            Err(error) => (Outcome::Failed { status: None, error }, None),
        };
        Attempt { outcome, latency_ms, response }
    }

    /// One POST: the receiver's status and the start of its answer, or why there was none.
    async fn post(&self, c: &Claimed, body: &str, secrets: &[Secret<String>]) -> Result<(u16, Option<String>), String> {
        let url = reqwest::Url::parse(&c.url).map_err(|e| format!("bad URL: {e}"))?;
        // IP literals skip the resolver: checked here.
        if !self.state.config.webhooks.allow_private
            && let Some(host) = url.host()
            && guard::is_private_host(&host)
        {
            return Err("the URL points at a private address".into());
        }
        let msg_id = format!("evt_{}", c.event_id);
        let timestamp = Utc::now().timestamp();
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign::header(secrets, &msg_id, timestamp, body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                if e.is_timeout() { "timed out".to_owned() } else { format!("could not deliver: {e}") }
            })?;
        let status = response.status().as_u16();
        // Only the start of the answer is read (and kept): a huge or endless body costs nothing.
        let mut snippet = Vec::new();
        let mut response = response;
        while snippet.len() < SNIPPET {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk[..chunk.len().min(SNIPPET - snippet.len())]),
                _ => break,
            }
        }
        let text =
            String::from_utf8_lossy(&snippet).chars().filter(|c| !c.is_control() || *c == '\n').collect::<String>();
        Ok((status, (!text.is_empty()).then_some(text)))
    }

    /// Writes the batch's outcomes: deliveries, attempts, subscriptions' health, metrics.
    async fn record(&self, claimed: &[Claimed], attempts: &[Attempt]) -> Result<(), sqlx::Error> {
        let settings = &self.state.config.webhooks;
        let now = Utc::now();
        let n = claimed.len();
        let (mut companies, mut subs, mut events, mut states) = (vec![], vec![], vec![], vec![]);
        let (mut statuses, mut errors, mut nexts, mut numbers) = (vec![], vec![], vec![], vec![]);
        let (mut latencies, mut responses) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Per subscription: (company, any success, last failure, an event given up).
        let mut health: HashMap<&str, (i64, bool, Option<String>, bool)> = HashMap::new();
        for (c, a) in claimed.iter().zip(attempts) {
            companies.push(c.company_id.0);
            subs.push(c.subscription_id.clone());
            events.push(c.event_id);
            numbers.push(c.attempts);
            latencies.push(a.latency_ms);
            responses.push(a.response.clone());
            let entry = health.entry(&c.subscription_id).or_insert((c.company_id.0, false, None, false));
            match &a.outcome {
                Outcome::Delivered { status } => {
                    states.push("delivered");
                    statuses.push(Some(*status as i16));
                    errors.push(None);
                    nexts.push(now);
                    entry.1 = true;
                    let lag = (now - c.created_at).to_std().unwrap_or_default().as_secs_f64();
                    metrics::histogram!("webhook_delivery_lag_seconds").record(lag);
                    metrics::counter!("webhook_deliveries_total", "result" => "delivered").increment(1);
                }
                Outcome::Failed { status, error } => {
                    let next = now + backoff(c.attempts, settings.retry_base);
                    let expired = next > c.created_at + settings.retry_for;
                    states.push(if expired { "failed" } else { "pending" });
                    statuses.push(status.map(|s| s as i16));
                    let error = if expired {
                        format!("{error}; given up after {} attempts", c.attempts)
                    } else {
                        error.clone()
                    };
                    entry.2 = Some(error.clone());
                    entry.3 |= expired;
                    errors.push(Some(error));
                    nexts.push(next);
                    let result = if expired { "failed" } else { "retry" };
                    metrics::counter!("webhook_deliveries_total", "result" => result).increment(1);
                }
                Outcome::Dropped { reason } => {
                    states.push("dropped");
                    statuses.push(None);
                    errors.push(Some(reason.clone()));
                    nexts.push(now);
                    metrics::counter!("webhook_deliveries_total", "result" => "dropped").increment(1);
                }
            }
            if c.attempts > 1 {
                metrics::counter!("webhook_retries_total").increment(1);
            }
        }
        let mut tx = self.state.db.begin().await?;
        sqlx::query(
            "update webhook_deliveries d set state = r.state, leased_until = null, last_status = r.status,
                 last_error = r.error, next_attempt_at = r.next,
                 delivered_at = case when r.state = 'delivered' then now() else d.delivered_at end
             from unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::smallint[], $6::text[], $7::timestamptz[])
                  as r(c, s, e, state, status, error, next)
             where d.company_id = r.c and d.subscription_id = r.s and d.event_id = r.e",
        )
        .bind(&companies)
        .bind(&subs)
        .bind(&events)
        .bind(&states)
        .bind(&statuses)
        .bind(&errors)
        .bind(&nexts)
        .execute(&mut *tx)
        .await?;
        // Dropped events were never sent: no attempt to log.
        let sent: Vec<usize> = (0..n).filter(|i| states[*i] != "dropped").collect();
        fn pick<T: Clone>(sent: &[usize], v: &[T]) -> Vec<T> {
            sent.iter().map(|i| v[*i].clone()).collect()
        }
        sqlx::query(
            // A subscription deleted while its events were in flight takes its log with it.
            "insert into webhook_attempts (company_id, subscription_id, event_id, attempt, status, latency_ms, response, error)
             select u.* from unnest($1::bigint[], $2::text[], $3::bigint[], $4::int[], $5::smallint[], $6::real[], $7::text[], $8::text[])
                  as u(c, s, e, a, status, latency, response, error)
             where exists (select 1 from webhook_subscriptions w where w.company_id = u.c and w.public_id = u.s)
             on conflict do nothing",
        )
        .bind(pick(&sent, &companies))
        .bind(pick(&sent, &subs))
        .bind(pick(&sent, &events))
        .bind(pick(&sent, &numbers))
        .bind(pick(&sent, &statuses))
        .bind(pick(&sent, &latencies))
        .bind(pick(&sent, &responses))
        .bind(pick(&sent, &errors))
        .execute(&mut *tx)
        .await?;
        let touched: Vec<_> = health.into_iter().filter(|(_, (_, ok, failure, _))| *ok || failure.is_some()).collect();
        if !touched.is_empty() {
            let (mut hc, mut hs, mut hok, mut hfail, mut hgave) = (vec![], vec![], vec![], vec![], vec![]);
            for (sub, (company, ok, failure, gave_up)) in touched {
                hc.push(company);
                hs.push(sub.to_owned());
                hok.push(ok);
                hfail.push(failure);
                hgave.push(gave_up);
            }
            // A success ends a run of failures. A run that outlasts the retry window, or has made
            // the dispatcher give up an event, disables the subscription.
            sqlx::query(
                "update webhook_subscriptions s set
                     last_success_at = case when r.ok then now() else s.last_success_at end,
                     failing_since = case when r.ok then null else coalesce(s.failing_since, now()) end,
                     last_failure_at = case when r.failure is not null then now() else s.last_failure_at end,
                     last_failure = coalesce(r.failure, s.last_failure),
                     status = case when not r.ok and s.status = 'active'
                                        and (r.gave_up or s.failing_since < now() - make_interval(secs => $5))
                                   then 'disabled' else s.status end,
                     disabled_reason = case when not r.ok and s.status = 'active'
                                        and (r.gave_up or s.failing_since < now() - make_interval(secs => $5))
                                   then 'No delivery succeeded since '
                                        || to_char(coalesce(s.failing_since, now()) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                                        || ' UTC and an event was given up; the last attempt: ' || r.failure
                                   else s.disabled_reason end
                 from unnest($1::bigint[], $2::text[], $3::bool[], $4::text[], $6::bool[]) as r(c, s, ok, failure, gave_up)
                 where s.company_id = r.c and s.public_id = r.s",
            )
            .bind(&hc)
            .bind(&hs)
            .bind(&hok)
            .bind(&hfail)
            .bind(settings.retry_for.as_secs_f64())
            .bind(&hgave)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Gives up what waited past the retry window (a paused or disabled subscription's events)
    /// and forgets what is older than the log keeps.
    pub async fn prune(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "update webhook_deliveries set state = 'failed', last_error = 'not delivered within the retry window'
             where state = 'pending' and created_at < now() - make_interval(secs => $1)",
        )
        .bind(self.state.config.webhooks.retry_for.as_secs_f64())
        .execute(&self.state.db)
        .await?;
        let keep = format!("{} days", super::RETENTION_DAYS);
        sqlx::query("delete from webhook_deliveries where state <> 'pending' and created_at < now() - $1::interval")
            .bind(&keep)
            .execute(&self.state.db)
            .await?;
        sqlx::query("delete from webhook_attempts where attempted_at < now() - $1::interval")
            .bind(&keep)
            .execute(&self.state.db)
            .await?;
        Ok(())
    }
}

/// The wait after the `attempt`th failure: the base doubled per attempt, to an hour, with
/// jitter (uniform over its upper half), so receivers coming back are not hit in lockstep.
pub fn backoff(attempt: i32, base: Duration) -> chrono::Duration {
    let exp = base.saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1) as u32).min(MAX_BACKOFF);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    chrono::Duration::from_std(jittered).unwrap_or(chrono::Duration::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_growing_at_an_hour() {
        let base = Duration::from_secs(5);
        for attempt in 1..=40 {
            let ceiling = base.saturating_mul(1 << (attempt - 1).min(19)).min(MAX_BACKOFF);
            let wait = backoff(attempt, base).to_std().unwrap();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "attempt {attempt}: {wait:?} vs {ceiling:?}");
        }
    }
}
