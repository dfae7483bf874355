//! Per-endpoint request quotas: GCRA (governor) with the endpoint's per-minute limit as both
//! rate and burst. Only authenticated requests reach it, so failed authentications never
//! spend a victim endpoint's quota.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome, for the `RateLimit-Policy` / `RateLimit` headers.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the quota is whole again; when refused, until the next request is admitted.
    pub reset_secs: u64,
    pub allowed: bool,
}

impl RateInfo {
    pub fn policy_header(&self) -> String {
        format!("\"default\";q={};w=60", self.limit)
    }
    pub fn header(&self) -> String {
        format!("\"default\";r={};t={}", self.remaining, self.reset_secs)
    }
}

/// Per process: with `processes` API processes sharing endpoints (`CLIENTAPI_API_PROCESSES`),
/// each admits `per_minute / processes` (at least 1) of an endpoint's quota, so together they
/// never admit more than the quota; a client whose requests reach only some of the processes
/// meets a lower limit, and the headers say so (they report what this process admits).
pub struct EndpointRateLimits {
    limiters: Cache<(i64, u32), Arc<Limiter>>,
    processes: u32,
    /// One clock for "how long until": building a quanta clock calibrates it (measured at a
    /// quarter of the CPU of a rate-limited request).
    clock: DefaultClock,
}

impl Default for EndpointRateLimits {
    fn default() -> Self {
        Self {
            limiters: Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build(),
            processes: 1,
            clock: DefaultClock::default(),
        }
    }
}

impl EndpointRateLimits {
    /// Limits whose quotas `processes` API processes share.
    pub fn shared_by(processes: u32) -> Self {
        Self { processes: processes.max(1), ..Self::default() }
    }

    /// This process's share of a quota.
    fn share(&self, per_minute: u32) -> u32 {
        (per_minute / self.processes).max(1)
    }

    /// Spends one request of `endpoint_id`'s quota (`per_minute`), if there is one left.
    pub fn check(&self, endpoint_id: i64, per_minute: u32) -> RateInfo {
        let per_minute = self.share(per_minute);
        let limiter = self.limiter(endpoint_id, per_minute);
        let interval = 60.0 / f64::from(per_minute);
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = f64::from(per_minute - remaining.min(per_minute));
                RateInfo { limit: per_minute, remaining, reset_secs: (missing * interval).ceil() as u64, allowed: true }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateInfo {
                    limit: per_minute,
                    remaining: 0,
                    reset_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    allowed: false,
                }
            }
        }
    }

    /// Spends `n` more requests of `endpoint_id`'s quota at once (a costly GraphQL query), or
    /// says in how many seconds it could be afforded.
    pub fn charge(&self, endpoint_id: i64, per_minute: u32, n: u32) -> Result<(), u64> {
        let per_minute = self.share(per_minute);
        let limiter = self.limiter(endpoint_id, per_minute);
        let Some(n) = NonZeroU32::new(n) else { return Ok(()) };
        match limiter.check_n(n) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now()).as_secs_f64().ceil().max(1.0) as u64),
            // More than the whole quota: never affordable at once; a minute is the honest wait.
            Err(_) => Err(60),
        }
    }

    fn limiter(&self, endpoint_id: i64, per_minute: u32) -> Arc<Limiter> {
        self.limiters.get_with((endpoint_id, per_minute), || {
            let q = NonZeroU32::new(per_minute).expect("at least 1");
            Arc::new(RateLimiter::direct(Quota::per_minute(q)).with_middleware::<StateInformationMiddleware>())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_sharing_a_quota_never_admit_more_than_it_together() {
        let processes: Vec<EndpointRateLimits> = (0..3).map(|_| EndpointRateLimits::shared_by(3)).collect();
        let admitted = (0..300).filter(|n| processes[n % 3].check(7, 60).allowed).count();
        assert_eq!(admitted, 60, "three processes share one quota of 60");
        let first = EndpointRateLimits::shared_by(3).check(8, 60);
        assert_eq!(first.limit, 20, "each admits a third, and says so");
        // A quota smaller than the process count still admits one per process.
        assert!(EndpointRateLimits::shared_by(5).check(9, 2).allowed);
        assert_eq!(EndpointRateLimits::default().check(10, 60).limit, 60, "one process: the whole quota");
    }
}
