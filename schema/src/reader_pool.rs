//! The read path's own connection pool. sqlx's pool checks every connection handed back to it
//! with a round trip of its own, in a task it spawns (`ping`: a `Sync` and a wait for Postgres's
//! answer). A scoped read ends its read-only transaction with a `rollback` that needs no answer
//! before the connection is used again, so this pool sends that `rollback` as the connection
//! comes back and takes it back at once; the answer is read by the connection's next exchange,
//! before its next statement is sent (sqlx counts the answers it still expects).
//!
//! A connection also remembers the scope its session was last set to (`read::scoped_statement`
//! sets it for the session, outside any transaction), and [`ReaderPool::acquire_for`] hands out
//! an idle connection already set to the scope asked for when there is one: a one-statement read
//! on it is one exchange with Postgres, the statement alone (bench/README.md).
//!
//! Exports hold a connection for as long as their client takes to read the whole stream, so they
//! have permits of their own ([`ReaderPool::acquire_streaming`]): however many exports run, the
//! pages keep every one of theirs.
//!
//! What it keeps of sqlx's pool: at most `max_connections` connections handed out at once (to
//! reads; as many again to exports), made lazily (each one
//! `set role clientapi_reader` once, as the read role), handed out last in first out, an
//! acquire that gives up after `acquire_timeout` ([`sqlx::Error::PoolTimedOut`]), connections
//! closed past [`MAX_LIFETIME`] or idle past [`IDLE_TIMEOUT`], and `close`. A connection that
//! died while idle is not pinged for: the read's first exchange on it finds it (`read::Scoped`,
//! `read::scoped_statement`), and the read takes another.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::read::Scope;

/// A connection is closed once it is this old (sqlx's default).
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// An idle connection is closed after this long unused (sqlx's default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How often idle connections are looked at.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// A pool of connections acting as the read role. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct ReaderPool(Arc<Inner>);

struct Inner {
    options: PgConnectOptions,
    acquire_timeout: Duration,
    /// One permit per connection that reads other than exports may hold at once; an acquired
    /// connection holds one.
    permits: Arc<Semaphore>,
    /// As many again for exports ([`ReaderPool::acquire_streaming`]).
    streaming: Arc<Semaphore>,
    max_connections: u32,
    /// Idle connections, the most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// Connections open now, idle or handed out.
    size: AtomicU32,
    closed: AtomicBool,
    /// Whether the task that closes idle connections past [`IDLE_TIMEOUT`] runs (started by
    /// the first acquire, which has a runtime to start it on).
    reaper: AtomicBool,
}

struct Idle {
    conn: PgConnection,
    born: Instant,
    since: Instant,
    session: Option<Scope>,
}

impl ReaderPool {
    /// A lazy pool: no connection is made until the first acquire. At most `max_connections`
    /// are handed out at once to reads, and as many again to exports.
    pub fn new(options: PgConnectOptions, max_connections: u32, acquire_timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            options,
            acquire_timeout,
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            streaming: Arc::new(Semaphore::new(max_connections as usize)),
            max_connections,
            idle: Mutex::new(Vec::new()),
            size: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            reaper: AtomicBool::new(false),
        }))
    }

    /// A connection: the most recently returned idle one, or a new one while fewer than the
    /// maximum are open. Waits up to the acquire timeout for one to come back.
    pub async fn acquire(&self) -> Result<ReaderConnection, sqlx::Error> {
        self.acquire_preferring(None, &self.0.permits).await
    }

    /// [`acquire`](Self::acquire) for an export, which holds its connection until its client has
    /// read the whole stream: on the exports' own permits, so exports wait for each other, never
    /// taking the connections pages need.
    pub async fn acquire_streaming(&self) -> Result<ReaderConnection, sqlx::Error> {
        self.acquire_preferring(None, &self.0.streaming).await
    }

    /// [`acquire`](Self::acquire), but of the idle connections the most recently returned one
    /// whose session is set to `scope` when there is one ([`ReaderConnection::session`]).
    pub async fn acquire_for(&self, scope: Scope) -> Result<ReaderConnection, sqlx::Error> {
        self.acquire_preferring(Some(scope), &self.0.permits).await
    }

    async fn acquire_preferring(
        &self,
        scope: Option<Scope>,
        permits: &Arc<Semaphore>,
    ) -> Result<ReaderConnection, sqlx::Error> {
        let inner = &self.0;
        if inner.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        inner.start_reaper(&self.0);
        let deadline = tokio::time::Instant::now() + inner.acquire_timeout;
        let permit = match tokio::time::timeout_at(deadline, permits.clone().acquire_owned()).await {
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
            Ok(Err(_)) => return Err(sqlx::Error::PoolClosed),
            Ok(Ok(permit)) => permit,
        };
        let idle = {
            let mut idle = inner.lock_idle();
            match scope.and_then(|scope| idle.iter().rposition(|i| i.session == Some(scope))) {
                Some(at) => Some(idle.remove(at)),
                None => idle.pop(),
            }
        };
        let (conn, born, session, new) = match idle {
            Some(idle) => (idle.conn, idle.born, idle.session, false),
            None => {
                let connect = async {
                    let mut conn = PgConnection::connect_with(&inner.options).await?;
                    conn.execute("set role clientapi_reader").await?;
                    Ok::<_, sqlx::Error>(conn)
                };
                let conn = match tokio::time::timeout_at(deadline, connect).await {
                    Err(_) => return Err(sqlx::Error::PoolTimedOut),
                    Ok(conn) => conn?,
                };
                inner.size.fetch_add(1, Ordering::AcqRel);
                (conn, Instant::now(), None, true)
            }
        };
        Ok(ReaderConnection {
            conn: Some(conn),
            born,
            session,
            new,
            close: false,
            pool: self.0.clone(),
            permit: Some(permit),
        })
    }

    /// Closes the connections that have been idle for `at_least` (the pool does so every minute
    /// for [`IDLE_TIMEOUT`]).
    pub fn close_idle_for(&self, at_least: Duration) {
        self.0.close_idle_for(at_least);
    }

    /// How many connections reads other than exports may hold at once (exports as many again).
    pub fn max_connections(&self) -> u32 {
        self.0.max_connections
    }

    /// How many connections the pool may hold at once, the pages' and the exports' together
    /// (after a failover, every idle one may be dead).
    pub fn capacity(&self) -> u32 {
        self.0.max_connections.saturating_mul(2)
    }

    /// Connections open now, idle or handed out.
    pub fn size(&self) -> u32 {
        self.0.size.load(Ordering::Acquire)
    }

    /// Refuses further acquires and closes the idle connections; connections handed out are
    /// closed as they come back.
    pub async fn close(&self) {
        let inner = &self.0;
        inner.closed.store(true, Ordering::Release);
        inner.permits.close();
        inner.streaming.close();
        let idle = std::mem::take(&mut *inner.lock_idle());
        for idle in idle {
            inner.size.fetch_sub(1, Ordering::AcqRel);
            let _ = idle.conn.close().await;
        }
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the task that closes connections idle past [`IDLE_TIMEOUT`], once; it ends with
    /// the pool (it holds only a weak reference) or when the pool is closed.
    fn start_reaper(&self, this: &Arc<Inner>) {
        if self.reaper.load(Ordering::Relaxed) || self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                if pool.closed.load(Ordering::Acquire) {
                    return;
                }
                pool.close_idle_for(IDLE_TIMEOUT);
            }
        });
    }

    /// Closes the connections that have been idle for `at_least`.
    fn close_idle_for(&self, at_least: Duration) {
        let now = Instant::now();
        let stale: Vec<PgConnection> = {
            let mut idle = self.lock_idle();
            // Idle connections are in the order they came back: the stale ones lead.
            let keep_from = idle.iter().position(|i| now.duration_since(i.since) < at_least).unwrap_or(idle.len());
            idle.drain(..keep_from).map(|i| i.conn).collect()
        };
        for conn in stale {
            self.discard(conn);
        }
    }

    /// Takes `conn` back as idle, unless the pool is closed or the connection too old.
    fn take_back(&self, conn: PgConnection, born: Instant, session: Option<Scope>) {
        let now = Instant::now();
        if self.closed.load(Ordering::Acquire) || now.duration_since(born) >= MAX_LIFETIME {
            self.discard(conn);
            return;
        }
        self.lock_idle().push(Idle { conn, born, since: now, session });
    }

    /// Closes `conn` (politely, in a task, when there is a runtime to run one).
    fn discard(&self, conn: PgConnection) {
        self.size.fetch_sub(1, Ordering::AcqRel);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            });
        }
    }
}

/// A connection of a [`ReaderPool`], handed back when dropped.
pub struct ReaderConnection {
    conn: Option<PgConnection>,
    born: Instant,
    /// The scope the session is set to, when known.
    session: Option<Scope>,
    /// Made by the acquire that handed it out (not taken from the idle ones).
    new: bool,
    close: bool,
    pool: Arc<Inner>,
    /// Released when the connection is back (or closed), so a waiter finds it idle.
    permit: Option<OwnedSemaphorePermit>,
}

impl ReaderConnection {
    /// Close this connection when it is dropped instead of handing it back (it is in a state
    /// no other read may inherit).
    pub fn close_on_drop(&mut self) {
        self.close = true;
    }

    /// The scope this connection's session is set to, as last recorded by
    /// [`set_session`](Self::set_session) (kept while the connection is idle); `None` when
    /// unknown or never set.
    pub fn session(&self) -> Option<Scope> {
        self.session
    }

    /// Records the scope the session is now set to (`None` while it is being changed).
    pub fn set_session(&mut self, session: Option<Scope>) {
        self.session = session;
    }

    /// Whether this connection was made for this acquire rather than taken from the idle ones
    /// (an idle one may have died unnoticed).
    pub fn is_new(&self) -> bool {
        self.new
    }
}

impl Deref for ReaderConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a reader connection is present until dropped")
    }
}

impl DerefMut for ReaderConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a reader connection is present until dropped")
    }
}

impl Drop for ReaderConnection {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if self.close {
            self.pool.discard(conn);
            return;
        }
        if !conn.should_flush() {
            self.pool.take_back(conn, self.born, self.session);
            return;
        }
        // Messages are queued (a read's `rollback`): send them now, so that Postgres ends the
        // transaction while the connection waits, idle, for its next read. Sending to a local
        // socket completes at once; waiting for the answer is left to the next exchange (the
        // future is cancel-safe: sqlx counts the answers it still expects and reads them
        // first). Only when the socket cannot take the bytes now does a task finish sending.
        // `Connection::flush` is sqlx's hidden `wait_until_ready` (write what is queued, then read
        // the answers expected), in sqlx 0.9.0 as the lock file holds it: recheck on an upgrade.
        match conn.flush().now_or_never() {
            Some(Err(_)) => self.pool.discard(conn),
            _ if !conn.should_flush() => self.pool.take_back(conn, self.born, self.session),
            _ => {
                let (pool, born, session, permit) = (self.pool.clone(), self.born, self.session, self.permit.take());
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            match conn.flush().await {
                                Ok(()) => pool.take_back(conn, born, session),
                                Err(_) => pool.discard(conn),
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => pool.discard(conn),
                }
            }
        }
    }
}
