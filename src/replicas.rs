//! Read replicas (DESIGN.md §3): customer reads go to a hot standby whose replay is within
//! `CLIENTAPI_REPLICA_MAX_LAG_MS` of the primary; everything else, and every read a standby
//! cannot serve, goes to the primary.
//!
//! - **Lag**, checked every [`CHECK_EVERY`] with one cheap statement per server: the primary's
//!   WAL position is sampled, each standby's replay position read, and a standby's lag is the
//!   age of the oldest primary sample it has not replayed yet (0 when it has replayed them all).
//!   An idle primary makes no lag; a paused or slow standby's lag grows until it is set aside,
//!   and it serves again once it catches up. While the primary cannot be sampled (a restart)
//!   the standbys keep their standing: they cannot fall behind a primary that writes nothing.
//! - **Down**: a standby that fails a probe, or a read, is set aside at once (that read runs on
//!   the primary: no error reaches the caller) until a probe succeeds again.
//! - **Read-your-writes**: after an endpoint's write, the writing process notes the primary's
//!   WAL position and waits (up to [`WRITE_WAIT`]) for the usable standbys to replay it, so a
//!   read that follows, on any process, finds the write on whichever standby it lands. Every
//!   process remembers the position for the endpoint for [`REMEMBER_WRITES`], and reads only
//!   from standbys known to have replayed it, else from the primary. The writing process knows
//!   at once; when a standby did not replay the write within the wait, the others are told by a
//!   NOTIFY on [`WRITES_CHANNEL`] that the writer hears itself before it answers, so they know
//!   before the caller can ask them (delivery to every listener is the same step in Postgres;
//!   what is left is each process reading its socket, well under the caller's next round trip).
//!   A process that is not listening (its listener lost with a primary restart, or not yet
//!   connected) cannot hear announcements: while the primary answers, it reads from the primary;
//!   once listening again, it reads only from standbys that have replayed the primary's position
//!   at the moment it started to listen, so no write announced while it was deaf is missed.
//!   While the primary is down nothing is written, and the standbys keep serving.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clientapi_schema::read::{self, Reader, ReaderPool};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

/// How often each server's position is read.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How long a write waits for the standbys to replay it before it answers.
pub const WRITE_WAIT: Duration = Duration::from_millis(250);
/// How long this process steers an endpoint's reads to standbys that have its last write.
const REMEMBER_WRITES: Duration = Duration::from_secs(30);
/// One probe's limit: a standby that does not answer in this time is down for now.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Where a write no standby had replayed in time is announced: `endpoint_id:position`.
pub const WRITES_CHANNEL: &str = "clientapi_replica_writes";
/// How long a writer waits to hear its own announcement.
const HEAR_WAIT: Duration = Duration::from_millis(200);
/// How soon a lost announcement listener tries again, and how long one try may take: short,
/// so it listens again within moments of the primary's return (a deaf process reads from the
/// primary, or, while the primary is down, from standbys it cannot vouch for).
const LISTEN_RETRY: Duration = Duration::from_millis(50);
const LISTEN_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// One hot standby.
pub struct Replica {
    /// `host:port/database`, for logs and status; never the password.
    pub name: String,
    /// Reads, as the row-level-security role.
    reader: ReaderPool,
    /// Probes and sync-status reads, as the configured user.
    service: PgPool,
    up: AtomicBool,
    /// The WAL position it has replayed, as last seen.
    replayed: AtomicU64,
    lag_ms: AtomicU64,
}

/// What a replica looks like now, for status pages and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaStatus {
    pub name: String,
    pub up: bool,
    pub lag_ms: u64,
    pub serving: bool,
}

/// Where a request's reads run.
#[derive(Clone)]
pub struct Routed {
    pub reader: Reader,
    /// The standby chosen (an index into the router's list), `None` for the primary.
    pub replica: Option<usize>,
}

/// Chooses where customer reads run.
#[derive(Clone)]
pub struct ReadRouter(Arc<Inner>);

struct Inner {
    primary: PgPool,
    /// The announcement listener's own connection to the primary (short connect timeout).
    listen: PgPool,
    primary_reader: ReaderPool,
    replicas: Vec<Arc<Replica>>,
    max_lag: Duration,
    /// Endpoint id → the WAL position after its last write (this process's, or announced).
    written: moka::sync::Cache<i64, u64>,
    /// The highest position heard on [`WRITES_CHANNEL`], and a wake-up when it moves.
    heard: AtomicU64,
    heard_moved: tokio::sync::Notify,
    /// Whether the announcement listener is connected, and the primary's position when it
    /// started to listen (every write announced before that is at or below it).
    hearing: AtomicBool,
    hearing_from: AtomicU64,
    /// Whether the primary answered its last probe (the checker's, or the listener's loss).
    primary_up: AtomicBool,
    next: AtomicUsize,
}

impl ReadRouter {
    /// A router over `replicas` (connection options), with `primary` (the service pool) and
    /// `primary_reader` (the primary's reader pool); each replica's reader pool hands out
    /// `read_connections`. No replicas: every read on the primary.
    pub fn new(
        primary: PgPool,
        primary_reader: ReaderPool,
        replicas: Vec<PgConnectOptions>,
        read_connections: u32,
        max_lag: Duration,
    ) -> Self {
        let replicas = replicas
            .into_iter()
            .map(|options| {
                let name = format!(
                    "{}:{}/{}",
                    options.get_socket().map_or_else(|| options.get_host().to_owned(), |s| s.display().to_string()),
                    options.get_port(),
                    options.get_database().unwrap_or("")
                );
                // A standby that cannot hand out a connection quickly is not worth waiting for:
                // the primary answers instead.
                let reader = read::reader_pool_with_timeout(options.clone(), read_connections, PROBE_TIMEOUT);
                let service = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(PROBE_TIMEOUT)
                    .connect_lazy_with(options.application_name("clientapi-replica-probe"));
                Arc::new(Replica {
                    name,
                    reader,
                    service,
                    up: AtomicBool::new(false),
                    replayed: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(u64::MAX),
                })
            })
            .collect();
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTEN_CONNECT_TIMEOUT)
            .connect_lazy_with((*primary.connect_options()).clone().application_name("clientapi-replica-listener"));
        Self(Arc::new(Inner {
            primary,
            listen,
            primary_reader,
            replicas,
            max_lag,
            written: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(REMEMBER_WRITES).build(),
            heard: AtomicU64::new(0),
            heard_moved: tokio::sync::Notify::new(),
            hearing: AtomicBool::new(false),
            hearing_from: AtomicU64::new(0),
            primary_up: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        }))
    }

    /// Parses `CLIENTAPI_READ_REPLICA_URLS` entries (validated with the configuration).
    pub fn options(urls: &[crate::config::Secret<String>]) -> anyhow::Result<Vec<PgConnectOptions>> {
        urls.iter()
            .enumerate()
            .map(|(n, url)| {
                PgConnectOptions::from_str(url.expose())
                    .map_err(|_| anyhow::anyhow!("CLIENTAPI_READ_REPLICA_URLS entry {} does not parse", n + 1))
            })
            .collect()
    }

    /// The primary's reader: writes' read-backs and anything that must see its own write.
    pub fn primary(&self) -> Reader {
        Reader::primary(self.0.primary_reader.clone())
    }

    /// Where `endpoint_id`'s next read runs: a usable standby (round robin) known to have
    /// replayed the endpoint's last write (this process's, or one announced), else the primary.
    pub fn route(&self, endpoint_id: i64) -> Routed {
        let inner = &self.0;
        if inner.replicas.is_empty() {
            return Routed { reader: self.primary(), replica: None };
        }
        let mut needs = inner.written.get(&endpoint_id).unwrap_or(0);
        if inner.hearing.load(Ordering::Acquire) {
            needs = needs.max(inner.hearing_from.load(Ordering::Acquire));
        } else if inner.primary_up.load(Ordering::Acquire) {
            // Deaf to the other processes' writes: only the primary is sure to have them.
            metrics::counter!("reads_routed_total", "to" => "primary").increment(1);
            return Routed { reader: self.primary(), replica: None };
        }
        let max_lag = inner.max_lag.as_millis() as u64;
        let start = inner.next.fetch_add(1, Ordering::Relaxed);
        let count = inner.replicas.len();
        for i in 0..count {
            let index = (start + i) % count;
            let replica = &inner.replicas[index];
            if replica.serving(max_lag) && replica.replayed.load(Ordering::Acquire) >= needs {
                metrics::counter!("reads_routed_total", "to" => "replica").increment(1);
                let failed = Arc::clone(replica);
                let on_failure = Arc::new(move || failed.set_down());
                return Routed {
                    reader: Reader::standby(replica.reader.clone(), inner.primary_reader.clone(), on_failure),
                    replica: Some(index),
                };
            }
        }
        metrics::counter!("reads_routed_total", "to" => "primary").increment(1);
        Routed { reader: self.primary(), replica: None }
    }

    /// The pool to read sync status from, consistent with reads routed to `replica`: a standby's
    /// status is the one its data matches.
    pub fn status_pool(&self, replica: Option<usize>) -> &PgPool {
        match replica.and_then(|i| self.0.replicas.get(i)) {
            Some(replica) => &replica.service,
            None => &self.0.primary,
        }
    }

    /// After `endpoint_id`'s write committed on the primary: remembers where the WAL stood and
    /// waits (bounded) for the serving standbys to replay that far.
    pub async fn wrote(&self, endpoint_id: i64) {
        let inner = &self.0;
        if inner.replicas.is_empty() {
            return;
        }
        let Ok(Some(position)) = primary_position(&inner.primary).await else { return };
        inner.written.insert(endpoint_id, position);
        let max_lag = inner.max_lag.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + WRITE_WAIT;
        let waits = inner.replicas.iter().filter(|r| r.serving(max_lag)).map(|replica| async move {
            while replica.replayed.load(Ordering::Acquire) < position {
                match tokio::time::timeout_at(deadline, replayed(&replica.service)).await {
                    Ok(Ok(Some(at))) => {
                        replica.replayed.fetch_max(at, Ordering::AcqRel);
                        if at < position {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    _ => return false,
                }
            }
            true
        });
        if futures::future::join_all(waits).await.into_iter().all(|replayed| replayed) {
            return;
        }
        // A standby is behind this write: the other processes must not read it from there.
        metrics::counter!("replica_write_announcements_total").increment(1);
        let announced = sqlx::query("select pg_notify($1, $2)")
            .bind(WRITES_CHANNEL)
            .bind(format!("{endpoint_id}:{position}"))
            .execute(&inner.primary)
            .await;
        if let Err(e) = announced {
            tracing::warn!(error = %e, "a write's position was not announced to the other processes");
            return;
        }
        let heard = async {
            loop {
                let moved = inner.heard_moved.notified();
                if inner.heard.load(Ordering::Acquire) >= position {
                    return;
                }
                moved.await;
            }
        };
        let _ = tokio::time::timeout(HEAR_WAIT, heard).await;
    }

    /// Hears the writes other processes announce on [`WRITES_CHANNEL`] until `shutdown`.
    async fn hear_writes(&self, shutdown: CancellationToken) {
        let inner = &self.0;
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&inner.listen).await?;
                // A lost connection must come back here, not be re-established inside
                // `try_recv`: announcements made while it was gone are missed, so listening again
                // needs a new position to hold the standbys to.
                listener.eager_reconnect(false);
                listener.listen(WRITES_CHANNEL).await?;
                // Announced before this point means committed before it: at or below this position.
                let (position,): (Option<i64>,) = sqlx::query_as(PRIMARY_POSITION).fetch_one(&mut listener).await?;
                if let Some(position) = position.map(|p| p as u64) {
                    inner.hearing_from.fetch_max(position, Ordering::AcqRel);
                }
                inner.hearing.store(true, Ordering::Release);
                loop {
                    let Some(notification) = listener.try_recv().await? else {
                        return Err(sqlx::Error::Protocol("the listener's connection was lost".into()));
                    };
                    let Some((endpoint, position)) = notification.payload().split_once(':') else { continue };
                    let (Ok(endpoint), Ok(position)) = (endpoint.parse::<i64>(), position.parse::<u64>()) else {
                        continue;
                    };
                    if inner.written.get(&endpoint).is_none_or(|known| known < position) {
                        inner.written.insert(endpoint, position);
                    }
                    inner.heard.fetch_max(position, Ordering::AcqRel);
                    inner.heard_moved.notify_waiters();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Err(e) = listening => {
                    // Deaf from here: reads go to the primary once a probe finds it answering.
                    inner.hearing.store(false, Ordering::Release);
                    inner.primary_up.store(false, Ordering::Release);
                    tracing::debug!(error = %e, "replica write announcements: listener lost; reconnecting");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LISTEN_RETRY) => {}
            }
        }
    }

    /// Each standby's standing now.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        let max_lag = self.0.max_lag.as_millis() as u64;
        self.0
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                name: r.name.clone(),
                up: r.up.load(Ordering::Acquire),
                lag_ms: r.lag_ms.load(Ordering::Acquire),
                serving: r.serving(max_lag),
            })
            .collect()
    }

    /// Checks every standby every [`CHECK_EVERY`] until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.0;
        if inner.replicas.is_empty() {
            return;
        }
        let hearing = tokio::spawn(self.clone().hear_writes_owned(shutdown.clone()));
        // (taken at, primary WAL position) samples, oldest first, covering a little more than
        // the lag bound: an older unreplayed sample only says "too far behind" again.
        let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
        let keep = inner.max_lag * 2 + CHECK_EVERY * 2;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = hearing.await;
                    return;
                }
                _ = tick.tick() => {}
            }
            let primary_up = match tokio::time::timeout(PROBE_TIMEOUT, primary_position(&inner.primary)).await {
                Ok(Ok(Some(position))) => {
                    let now = Instant::now();
                    if samples.back().is_none_or(|(_, last)| *last < position) {
                        samples.push_back((now, position));
                    }
                    while samples.len() > 1 && samples.front().is_some_and(|(at, _)| now.duration_since(*at) > keep) {
                        samples.pop_front();
                    }
                    true
                }
                _ => false,
            };
            inner.primary_up.store(primary_up, Ordering::Release);
            let probes = inner.replicas.iter().map(|replica| {
                let samples = &samples;
                async move {
                    let probed = tokio::time::timeout(PROBE_TIMEOUT, replayed(&replica.service)).await;
                    let Ok(Ok(Some(at))) = probed else {
                        if replica.up.swap(false, Ordering::AcqRel) {
                            tracing::warn!(replica = %replica.name, "read replica unreachable; its reads go elsewhere");
                        }
                        return;
                    };
                    let at = replica.replayed.fetch_max(at, Ordering::AcqRel).max(at);
                    if primary_up {
                        let now = Instant::now();
                        let lag = samples
                            .iter()
                            .find(|(_, position)| *position > at)
                            .map_or(0, |(taken, _)| now.duration_since(*taken).as_millis() as u64);
                        let before = replica.lag_ms.swap(lag, Ordering::AcqRel);
                        let bound = inner.max_lag.as_millis() as u64;
                        if lag > bound && before <= bound {
                            tracing::warn!(replica = %replica.name, lag_ms = lag, "read replica behind the lag bound; its reads go elsewhere");
                        } else if lag <= bound && before > bound && before != u64::MAX {
                            tracing::info!(replica = %replica.name, lag_ms = lag, "read replica caught up; serving reads again");
                        }
                        metrics::gauge!("replica_lag_ms", "replica" => replica.name.clone()).set(lag as f64);
                    }
                    if !replica.up.swap(true, Ordering::AcqRel) && replica.lag_ms.load(Ordering::Acquire) != u64::MAX {
                        tracing::info!(replica = %replica.name, "read replica reachable; serving reads");
                    }
                }
            });
            futures::future::join_all(probes).await;
        }
    }

    async fn hear_writes_owned(self, shutdown: CancellationToken) {
        self.hear_writes(shutdown).await;
    }

    /// Closes every standby's pools.
    pub async fn close(&self) {
        self.0.listen.close().await;
        for replica in &self.0.replicas {
            replica.reader.close().await;
            replica.service.close().await;
        }
    }
}

impl Replica {
    fn serving(&self, max_lag_ms: u64) -> bool {
        self.up.load(Ordering::Acquire) && self.lag_ms.load(Ordering::Acquire) <= max_lag_ms
    }

    fn set_down(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %self.name, "read replica failed a read; set aside until it answers a probe");
        }
    }
}

const PRIMARY_POSITION: &str = "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8";

/// The primary's WAL write position: past the commit of anything committed (synchronously)
/// before it. Not the insert position: that one skips a page header when the last record ends
/// on a page boundary, so an idle standby that has replayed everything would never reach it.
async fn primary_position(primary: &PgPool) -> Result<Option<u64>, sqlx::Error> {
    let (position,): (Option<i64>,) = sqlx::query_as(PRIMARY_POSITION).fetch_one(primary).await?;
    Ok(position.map(|p| p as u64))
}

/// How far a standby has replayed; `None` on a server that is not a standby (promoted, or
/// pointed at the primary by mistake: not a replica to route to).
async fn replayed(service: &PgPool) -> Result<Option<u64>, sqlx::Error> {
    let (position,): (Option<i64>,) =
        sqlx::query_as("select (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8").fetch_one(service).await?;
    Ok(position.map(|p| p as u64))
}
