//! Verifying API keys on the hot path (DESIGN.md §6). The checksum is checked before any
//! database work; a verified key is cached (moka) under SHA-256 of the token with its endpoint;
//! argon2 runs on `spawn_blocking`, bounded per endpoint, per client IP and in total, so a
//! flood of wrong keys cannot starve the CPU; a wrong key is remembered briefly so repeating
//! it costs nothing. A key proven good runs argon2 once a day per process, not once per cache
//! lifetime: when its cached verification lapses, only its key row is read again. Any change to
//! an endpoint or key reaches every process through Postgres `LISTEN/NOTIFY` (channel
//! `clientapi_endpoints`), with the cache's TTL as the fallback.
//! `last_used_at`/`last_used_ip` are collected in memory and written in one batch.
//!
//! A client IP that keeps failing is slowed down: past a small free budget of failures its
//! failed answers are held for `CLIENTAPI_FAILED_AUTH_DELAY_MS` (a tarpit). A sender that waits
//! for its answers, as scanners and credential-stuffing scripts do, then costs a few requests a
//! second per connection instead of thousands, and for 10 s after its last failure it gets no
//! verification (argon2 or database) of keys not proven good: its wrong keys cost nothing.
//! The hold doubles for every further 10 s an address keeps failing, to 8 times the delay (4 s
//! at the default), so a flood that runs for minutes is answered at a fraction of its first rate;
//! the run is remembered for a minute after its last failure, so pausing does not reset it.
//! An address is held as failing as soon as more than a few of its keys fail verification, too,
//! whatever its rate of failed answers: while argon2 is what answers its wrong keys, they come
//! back slower than the free budget of failures, and would otherwise keep argon2 busy for good.
//! Keys already waiting for argon2 when their address comes to be held are refused unverified,
//! and an address that resumes failing within its remembered run is held again at its first
//! failed verification: a flood pays for about ten verifications once, not at every pause.
//! Keys proven good from the same address are never held or refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clientapi_schema::{AccountId, CompanyId, ConnectionId};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use moka::future::Cache;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::endpoint_key;

/// A verified key stays cached this long without a NOTIFY (the fallback bound on staleness).
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// A key that failed verification is refused without argon2 for this long.
const REJECTED_TTL: Duration = Duration::from_secs(60);
const PROVEN_TTL: Duration = Duration::from_secs(24 * 3600);
const CACHE_CAPACITY: u64 = 100_000;
/// argon2 verifications allowed per endpoint and per client IP (sustained per second, burst).
const ARGON2_PER_ENDPOINT: (u32, u32) = (10, 20);
const ARGON2_PER_IP: (u32, u32) = (20, 50);
/// Failed authentications per client IP answered at once (sustained per second, burst); past
/// them each failure is answered after the configured delay.
const FREE_FAILURES_PER_IP: (u32, u32) = (5, 30);
/// Keys from one client IP that may fail verification (argon2 ran and no key matched, or the
/// endpoint has no such key) before the address is held as failing (sustained per second, burst).
/// Keys that verify never count: many customers' first requests from one address are not held.
const FAILED_VERIFICATIONS_PER_IP: (u32, u32) = (1, 10);
/// Failed answers held at once; past this many they are answered without delay (a held answer
/// is a sleeping task and an open connection: cheap, not free).
const MAX_HELD_FAILURES: usize = 10_000;
/// An address held for failing runs no key verification (argon2, or the database) for keys not
/// proven good, until it has not failed for this long.
const FAILING_FOR: Duration = Duration::from_secs(10);
/// A failing address's hold doubles for each further this long that it keeps failing...
const HOLD_DOUBLES_EVERY: Duration = Duration::from_secs(10);
/// ...at most this many times (8 times the configured delay).
const MAX_HOLD_DOUBLINGS: u32 = 3;
/// A run of failures is over once its address has not failed for this long.
const FAILURE_RUN_MEMORY: Duration = Duration::from_secs(60);
/// How often last-used times are written.
pub const LAST_USED_FLUSH: Duration = Duration::from_secs(5);
pub const NOTIFY_CHANNEL: &str = "clientapi_endpoints";

/// The scope that shows the technician assigned to jobs and visits.
pub const TECHNICIANS_READ: &str = "technicians:read";

/// Who a verified key speaks for: the endpoint and its settings, as of verification.
#[derive(Debug, Clone)]
pub struct Principal {
    pub endpoint_id: i64,
    pub public_id: String,
    pub key_id: i64,
    pub account_id: AccountId,
    pub connection_id: ConnectionId,
    pub company_id: CompanyId,
    pub company_external_id: String,
    pub provider: String,
    pub name: String,
    pub access: String,
    pub scopes: Vec<String>,
    pub environment: String,
    pub status: String,
    pub ip_allowlist: Vec<IpNet>,
    pub rate_limit_per_minute: u32,
    pub endpoint_expires_at: Option<DateTime<Utc>>,
    pub key_expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    /// What this endpoint's reads see: its company, and technicians only with `technicians:read`.
    pub fn read_scope(&self) -> clientapi_schema::read::Scope {
        clientapi_schema::read::Scope::new(self.company_id, self.scopes.iter().any(|s| s == TECHNICIANS_READ))
    }

    /// Expiry is a moment, not an event: checked on every request, cached or not.
    pub fn expired(&self) -> bool {
        let now = Utc::now();
        self.endpoint_expires_at.is_some_and(|at| at <= now) || self.key_expires_at.is_some_and(|at| at <= now)
    }

    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.ip_allowlist.is_empty() || self.ip_allowlist.iter().any(|net| net.contains(&ip))
    }
}

/// Why a key was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Missing, malformed, wrong, revoked or expired: one answer for all.
    Unauthorized,
    /// Too many unverified keys from this client or for this endpoint: try later.
    Throttled,
}

#[derive(sqlx::FromRow)]
struct Candidate {
    key_id: i64,
    key_hash: String,
    key_expires_at: Option<DateTime<Utc>>,
    endpoint_id: i64,
    account_id: AccountId,
    connection_id: ConnectionId,
    company_id: CompanyId,
    company_external_id: String,
    provider: String,
    name: String,
    access: String,
    scopes: Vec<String>,
    environment: String,
    status: String,
    ip_allowlist: Vec<String>,
    rate_limit_per_minute: i32,
    endpoint_expires_at: Option<DateTime<Utc>>,
}

pub struct KeyVerifier {
    verified: Cache<[u8; 32], Arc<Principal>>,
    /// Refusals are per endpoint: a key tried on the wrong endpoint is still good on its own.
    rejected: Cache<(String, [u8; 32]), ()>,
    /// Keys verified good within a day: their endpoint and key id. When a proven key's cached
    /// verification lapses, its key row is read again (revoked, expired, settings changed) but
    /// argon2 does not run again: the token's SHA-256 already identifies it, and the argon2
    /// budgets a flood of wrong keys spends are not in its way. Many keys lapsing together cost
    /// as many indexed reads, not seconds of hashing.
    proven: Cache<[u8; 32], (String, i64)>,
    per_endpoint: DefaultKeyedRateLimiter<String>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    argon2_slots: Semaphore,
    free_failures: DefaultKeyedRateLimiter<IpAddr>,
    failed_verifications: DefaultKeyedRateLimiter<IpAddr>,
    held_failures: Semaphore,
    failure_delay: Duration,
    /// Addresses past their free failures, recently: unproven keys from them are not verified.
    failing: Cache<IpAddr, ()>,
    /// When each failing address's run of failures began: its holds grow with the run.
    failing_since: Cache<IpAddr, Instant>,
    last_used: Mutex<HashMap<i64, (DateTime<Utc>, IpAddr)>>,
}

/// How long a failed answer is held for an address that has kept failing for `failing_for`.
fn hold_for(delay: Duration, failing_for: Duration) -> Duration {
    let doublings = (failing_for.as_secs() / HOLD_DOUBLES_EVERY.as_secs()).min(u64::from(MAX_HOLD_DOUBLINGS));
    delay * (1u32 << doublings)
}

fn quota((per_second, burst): (u32, u32)) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second).expect("non-zero"))
        .allow_burst(NonZeroU32::new(burst).expect("non-zero"))
}

impl KeyVerifier {
    /// `failure_delay`: how long a failing client IP's answers are held past its free budget
    /// (zero: never).
    pub fn new(failure_delay: Duration) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self {
            verified: Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            rejected: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(REJECTED_TTL).build(),
            proven: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(PROVEN_TTL).build(),
            per_endpoint: RateLimiter::keyed(quota(ARGON2_PER_ENDPOINT)),
            per_ip: RateLimiter::keyed(quota(ARGON2_PER_IP)),
            // Leave a core for serving cached traffic.
            argon2_slots: Semaphore::new(cores.saturating_sub(1).max(1)),
            free_failures: RateLimiter::keyed(quota(FREE_FAILURES_PER_IP)),
            failed_verifications: RateLimiter::keyed(quota(FAILED_VERIFICATIONS_PER_IP)),
            held_failures: Semaphore::new(MAX_HELD_FAILURES),
            failure_delay,
            failing: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(FAILING_FOR).build(),
            failing_since: Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(FAILURE_RUN_MEMORY).build(),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `token` for the endpoint `public_id` called from `ip`.
    pub async fn authenticate(
        &self,
        db: &PgPool,
        public_id: &str,
        token: &str,
        ip: IpAddr,
    ) -> Result<Arc<Principal>, AuthFailure> {
        if !endpoint_key::well_formed(token) {
            return Err(AuthFailure::Unauthorized);
        }
        let digest = endpoint_key::digest(token);
        if let Some(principal) = self.verified.get(&digest).await {
            metrics::counter!("key_cache_total", "result" => "hit").increment(1);
            return if principal.public_id == public_id && !principal.expired() {
                Ok(principal)
            } else {
                Err(AuthFailure::Unauthorized)
            };
        }
        let refusal = (public_id.to_owned(), digest);
        if self.rejected.contains_key(&refusal) {
            metrics::counter!("key_cache_total", "result" => "rejected").increment(1);
            return Err(AuthFailure::Unauthorized);
        }
        metrics::counter!("key_cache_total", "result" => "miss").increment(1);
        // argon2 budget: refuse before doing the expensive work, unless this very key proved
        // good for this endpoint recently (its key row is still read again below).
        let proven = self.proven.get(&digest).await.filter(|(ep, _)| ep == public_id).map(|(_, key)| key);
        if proven.is_none()
            && (self.failing.contains_key(&ip)
                || self.per_ip.check_key(&ip).is_err()
                || self.per_endpoint.check_key(&public_id.to_owned()).is_err())
        {
            metrics::counter!("key_verifications_throttled_total").increment(1);
            return Err(AuthFailure::Throttled);
        }
        let candidates: Vec<Candidate> = sqlx::query_as(
            "select k.id as key_id, k.key_hash, k.expires_at as key_expires_at, e.id as endpoint_id, e.account_id,
                    e.connection_id, e.company_id, c.external_id as company_external_id, n.provider, e.name, e.access,
                    e.scopes, e.environment, e.status, e.ip_allowlist::text[] as ip_allowlist, e.rate_limit_per_minute,
                    e.expires_at as endpoint_expires_at
             from endpoints e join endpoint_keys k on k.endpoint_id = e.id
                  join companies c on c.id = e.company_id join connections n on n.id = e.connection_id
             where e.public_id = $1 and ($2::bigint is null or k.id = $2)
               and k.revoked_at is null and (k.expires_at is null or k.expires_at > now())
             order by k.id desc limit 2",
        )
        .bind(public_id)
        .bind(proven)
        .fetch_all(db)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "loading endpoint keys failed");
            AuthFailure::Unauthorized
        })?;
        if candidates.is_empty() {
            if proven.is_some() {
                // Revoked or expired since: refused, and verified in full should it come back.
                self.proven.invalidate(&digest).await;
            }
            self.rejected.insert(refusal, ()).await;
            self.failed_verification(ip).await;
            return Err(AuthFailure::Unauthorized);
        }
        let matched = if proven.is_some() {
            Some(0)
        } else {
            let _slot = self.argon2_slots.acquire().await.map_err(|_| AuthFailure::Throttled)?;
            // Keys queued for a slot while their address came to be held (a flood's first
            // wrong keys arrive together) are refused now, not verified one after another.
            if self.failing.contains_key(&ip) {
                metrics::counter!("key_verifications_throttled_total").increment(1);
                return Err(AuthFailure::Throttled);
            }
            let hashes: Vec<String> = candidates.iter().map(|c| c.key_hash.clone()).collect();
            let token_owned = token.to_owned();
            tokio::task::spawn_blocking(move || hashes.iter().position(|h| endpoint_key::verify(&token_owned, h)))
                .await
                .map_err(|_| AuthFailure::Unauthorized)?
        };
        let Some(index) = matched else {
            self.rejected.insert(refusal, ()).await;
            self.failed_verification(ip).await;
            return Err(AuthFailure::Unauthorized);
        };
        let c = candidates.into_iter().nth(index).expect("index from this list");
        let principal = Arc::new(Principal {
            endpoint_id: c.endpoint_id,
            public_id: public_id.to_owned(),
            key_id: c.key_id,
            account_id: c.account_id,
            connection_id: c.connection_id,
            company_id: c.company_id,
            company_external_id: c.company_external_id,
            provider: c.provider,
            name: c.name,
            access: c.access,
            scopes: c.scopes,
            environment: c.environment,
            status: c.status,
            ip_allowlist: c.ip_allowlist.iter().filter_map(|n| n.parse().ok()).collect(),
            rate_limit_per_minute: c.rate_limit_per_minute.max(1) as u32,
            endpoint_expires_at: c.endpoint_expires_at,
            key_expires_at: c.key_expires_at,
        });
        if principal.expired() {
            return Err(AuthFailure::Unauthorized);
        }
        self.verified.insert(digest, principal.clone()).await;
        self.proven.insert(digest, (public_id.to_owned(), principal.key_id)).await;
        Ok(principal)
    }

    /// Called on every failed authentication from `ip` before it is answered: past the IP's
    /// free budget the address is marked failing and the answer waits `failure_delay`, doubled
    /// for every [`HOLD_DOUBLES_EVERY`] the address has kept failing (at most
    /// [`MAX_HOLD_DOUBLINGS`] times).
    pub async fn hold_failure(&self, ip: IpAddr) {
        if self.failure_delay.is_zero() || self.free_failures.check_key(&ip).is_ok() {
            return;
        }
        let since = self.mark_failing(ip).await;
        if let Ok(_held) = self.held_failures.try_acquire() {
            metrics::counter!("auth_failures_held_total").increment(1);
            tokio::time::sleep(hold_for(self.failure_delay, since.elapsed())).await;
        }
    }

    /// Holds `ip` as failing for [`FAILING_FOR`] more; returns when its run of failures began
    /// (now, unless it failed within [`FAILURE_RUN_MEMORY`]).
    async fn mark_failing(&self, ip: IpAddr) -> Instant {
        self.failing.insert(ip, ()).await;
        let since = self.failing_since.get(&ip).await.unwrap_or_else(Instant::now);
        self.failing_since.insert(ip, since).await;
        since
    }

    /// Counts a key from `ip` that failed verification: past [`FAILED_VERIFICATIONS_PER_IP`] the
    /// address is held as failing at once (with the tarpit on), so its next unproven keys cost
    /// no argon2. An address still in a run of failures (held within [`FAILURE_RUN_MEMORY`]) is
    /// held again at its first such key: a flood that pauses past [`FAILING_FOR`] and resumes
    /// does not get a fresh burst of verifications.
    async fn failed_verification(&self, ip: IpAddr) {
        if self.failure_delay.is_zero() {
            return;
        }
        if self.failing_since.contains_key(&ip) || self.failed_verifications.check_key(&ip).is_err() {
            metrics::counter!("auth_addresses_held_for_failed_verifications_total").increment(1);
            self.mark_failing(ip).await;
        }
    }

    /// Drops every cached verification of `endpoint_id` (its settings or keys changed).
    pub fn invalidate_endpoint(&self, endpoint_id: i64) {
        let _ = self.verified.invalidate_entries_if(move |_, p| p.endpoint_id == endpoint_id);
        // (Proofs stay: a proven key's row is read again, so a revoked one is refused.)
        // A key refused a moment ago may be valid now (a reissue): forget refusals too.
        self.rejected.invalidate_all();
    }

    pub fn invalidate_all(&self) {
        self.verified.invalidate_all();
        self.rejected.invalidate_all();
    }

    /// Remembers a use; written later in one batch.
    pub fn touch(&self, endpoint_id: i64, ip: IpAddr) {
        self.last_used.lock().unwrap_or_else(|e| e.into_inner()).insert(endpoint_id, (Utc::now(), ip));
    }

    /// Writes the collected last-used times (one statement for all endpoints).
    pub async fn flush_last_used(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let pending: Vec<(i64, (DateTime<Utc>, IpAddr))> =
            self.last_used.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = pending.iter().map(|(id, _)| *id).collect();
        let times: Vec<DateTime<Utc>> = pending.iter().map(|(_, (t, _))| *t).collect();
        let ips: Vec<String> = pending.iter().map(|(_, (_, ip))| ip.to_string()).collect();
        sqlx::query(
            "update endpoints e set last_used_at = greatest(e.last_used_at, v.t), last_used_ip = v.ip::inet
             from unnest($1::bigint[], $2::timestamptz[], $3::text[]) as v(id, t, ip) where e.id = v.id",
        )
        .bind(ids)
        .bind(times)
        .bind(ips)
        .execute(db)
        .await?;
        Ok(())
    }

    /// Background work: NOTIFY-driven invalidation and periodic last-used writes, until shutdown.
    pub async fn run(self: Arc<Self>, db: PgPool, shutdown: CancellationToken) {
        let listener = {
            let verifier = self.clone();
            let db = db.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { verifier.listen(db, shutdown).await })
        };
        let mut tick = tokio::time::interval(LAST_USED_FLUSH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.flush_last_used(&db).await {
                tracing::warn!(error = %e, "writing last-used times failed");
            }
            self.per_ip.retain_recent();
            self.per_endpoint.retain_recent();
            self.free_failures.retain_recent();
            self.failed_verifications.retain_recent();
        }
        let _ = self.flush_last_used(&db).await;
        let _ = listener.await;
    }

    async fn listen(&self, db: PgPool, shutdown: CancellationToken) {
        loop {
            let mut listener = match PgListener::connect_with(&db).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "key invalidation listener could not connect; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                continue;
            }
            // Anything may have changed while we were not listening.
            self.invalidate_all();
            loop {
                tokio::select! {
                    notification = listener.try_recv() => match notification {
                        Ok(Some(n)) => match n.payload().parse::<i64>() {
                            Ok(id) => self.invalidate_endpoint(id),
                            Err(_) => self.invalidate_all(),
                        },
                        // The connection dropped and is being re-established: notifications
                        // may have been missed, so trust nothing cached.
                        Ok(None) => self.invalidate_all(),
                        // The database went away (a restart, a failover). Keys keep their
                        // cached verdicts meanwhile, so reads served elsewhere (a replica) go on:
                        // nothing can be revoked while the primary is down, and everything
                        // cached is dropped once we listen again (above), or after CACHE_TTL.
                        Err(e) => {
                            tracing::warn!(error = %e, "key invalidation listener lost its connection; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_doubles_every_ten_seconds_of_failing_up_to_eight_times() {
        let delay = Duration::from_millis(500);
        let ms = |secs: u64| hold_for(delay, Duration::from_secs(secs)).as_millis();
        assert_eq!([ms(0), ms(9), ms(10), ms(19), ms(20), ms(30), ms(3600)], [500, 500, 1000, 1000, 2000, 4000, 4000]);
    }

    #[tokio::test]
    async fn a_run_of_failures_keeps_its_start_while_it_lasts() {
        let verifier = KeyVerifier::new(Duration::from_millis(500));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = verifier.mark_failing(ip).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(verifier.mark_failing(ip).await, first);
        assert!(verifier.failing.contains_key(&ip));
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(verifier.mark_failing(other).await > first, "another address starts its own run");
    }

    #[tokio::test]
    async fn an_address_resuming_within_its_run_is_held_at_its_first_failed_verification() {
        let verifier = KeyVerifier::new(Duration::from_millis(500));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        // A fresh address has a few failed verifications before it is held.
        verifier.failed_verification(ip).await;
        assert!(!verifier.failing.contains_key(&ip));
        // Held, then its mark lapses (it paused past FAILING_FOR) while its run is remembered:
        // its next failed verification holds it again, with no fresh burst.
        verifier.mark_failing(ip).await;
        verifier.failing.invalidate(&ip).await;
        verifier.failed_verification(ip).await;
        assert!(verifier.failing.contains_key(&ip), "a resumed flood was given a fresh burst of argon2");
        // With the tarpit off nothing is held.
        let off = KeyVerifier::new(Duration::ZERO);
        off.mark_failing(ip).await;
        off.failing.invalidate(&ip).await;
        off.failed_verification(ip).await;
        assert!(!off.failing.contains_key(&ip));
    }
}
