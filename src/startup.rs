//! Startup: the database (local cluster or `DATABASE_URL`), the shared `AppState`, the HTTP
//! server, and graceful shutdown through one cancellation token. Tests build the same thing.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context;
use clientapi_schema::db;
use clientapi_schema::local_pg::{Durability, LocalPostgres};
use clientapi_schema::read::ReaderPool;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyVerifier;
use clientapi_schema::ConnectionId;
use clientapi_schema::cursor::CursorSigner;
use clientapi_sync::status::StreamStatus;

/// How stale the sync status in an envelope may be.
const FRESHNESS_TTL: std::time::Duration = std::time::Duration::from_secs(1);
use crate::config::{Config, MasterKey};
use crate::rate_limit::EndpointRateLimits;
use crate::request_log::{self, RequestLog};
use clientapi_sync::Providers;
use clientapi_sync::connections::TokenManager;
use clientapi_sync::crypto::Cipher;
use clientapi_sync::engine::SyncEngine;
use clientapi_sync::jobber::{Jobber, JobberConfig};
use clientapi_sync::servicem8::{ServiceM8, ServiceM8Config};

/// Everything a handler or worker needs: one shared allocation, so the clone every request
/// makes (axum's `State`) is a reference count, not a copy of every pool and cache handle.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub db: PgPool,
    /// The public read path's pool on the primary: its connections act as the
    /// row-level-security role.
    pub reader: ReaderPool,
    /// Where customer reads run: a read replica within the lag bound, else the primary.
    pub reads: crate::replicas::ReadRouter,
    pub cursors: CursorSigner,
    pub graphql: Arc<clientapi_graphql::GraphqlApi>,
    /// Per connection and per server read (the primary, or a replica by index).
    freshness: moka::future::Cache<(ConnectionId, Option<usize>), Arc<Vec<StreamStatus>>>,
    pub config: Arc<Config>,
    pub master_key: Arc<MasterKey>,
    pub providers: Providers,
    pub tokens: TokenManager,
    pub engine: SyncEngine,
    pub verifier: Arc<KeyVerifier>,
    pub rate_limits: Arc<EndpointRateLimits>,
    pub write_queue: Arc<crate::writes::WriteQueue>,
    pub request_log: RequestLog,
    /// Admin events from every process, for the dashboard's event streams.
    pub events: crate::events::AdminEvents,
    /// Cancelled when the server starts draining: open event streams end so it can.
    pub streams_closing: CancellationToken,
    /// Sign-in attempts per client address and per email.
    pub login_limits: crate::http::admin::auth::LoginLimits,
    /// Background tasks (request log writer, key invalidation), awaited after `shutdown`.
    pub tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    pub shutdown: CancellationToken,
}

impl AppState {
    /// The state over `db` (the primary) and its reader pool, with reads on `replicas` when
    /// there are any.
    pub fn new(
        db: PgPool,
        reader: ReaderPool,
        replicas: Vec<PgConnectOptions>,
        config: Config,
        master_key: MasterKey,
    ) -> Self {
        let providers = providers(&config);
        let tokens = TokenManager::new(db.clone(), Cipher::new(master_key.expose()));
        let shutdown = CancellationToken::new();
        let engine = SyncEngine::new(db.clone(), tokens.clone(), providers.clone(), shutdown.clone())
            .with_writers(config.sync_writers);
        let verifier = Arc::new(KeyVerifier::new(std::time::Duration::from_millis(config.failed_auth_delay_ms)));
        let (request_log, writer) = request_log::spawn(db.clone(), config.request_log_retention_days, shutdown.clone());
        let listener = tokio::spawn(verifier.clone().run(db.clone(), shutdown.clone()));
        let events = crate::events::AdminEvents::default();
        let events_listener = tokio::spawn(events.clone().run(db.clone(), shutdown.clone()));
        let reads = crate::replicas::ReadRouter::new(
            db.clone(),
            reader.clone(),
            replicas,
            config.read_connections,
            std::time::Duration::from_millis(config.replica_max_lag_ms),
        );
        let replica_checks = tokio::spawn(reads.clone().run(shutdown.clone()));
        Self(Arc::new(Shared {
            db,
            reader,
            reads,
            cursors: CursorSigner::new(master_key.expose()),
            graphql: Arc::new(clientapi_graphql::GraphqlApi::new()),
            freshness: moka::future::Cache::builder().max_capacity(10_000).time_to_live(FRESHNESS_TTL).build(),
            providers,
            tokens,
            engine,
            verifier,
            rate_limits: Arc::new(EndpointRateLimits::shared_by(config.api_processes)),
            write_queue: Arc::new(crate::writes::WriteQueue::new()),
            request_log,
            events,
            streams_closing: shutdown.child_token(),
            login_limits: Default::default(),
            tasks: Arc::new(std::sync::Mutex::new(vec![writer, listener, events_listener, replica_checks])),
            config: Arc::new(config),
            master_key: Arc::new(master_key),
            shutdown,
        }))
    }

    /// Per-stream sync status of a connection, cached briefly: the read path asks on every page.
    /// Read on the server the data comes from (`replica`, else the primary), so a replica's
    /// envelope says how fresh *its* data is.
    pub async fn freshness(&self, connection: ConnectionId, replica: Option<usize>) -> Arc<Vec<StreamStatus>> {
        let (pool, primary) = (self.reads.status_pool(replica).clone(), self.db.clone());
        self.freshness
            .get_with((connection, replica), async move {
                let streams = match clientapi_sync::status::streams(&pool, connection).await {
                    Ok(streams) => Ok(streams),
                    // A replica that cannot answer: the primary's status is at least as fresh
                    // as the data the primary would serve instead.
                    Err(_) if replica.is_some() => clientapi_sync::status::streams(&primary, connection).await,
                    Err(e) => Err(e),
                };
                Arc::new(streams.unwrap_or_default())
            })
            .await
    }

    /// Stops background work and waits for it (the request log flushes its queue).
    pub async fn stop_background(&self) {
        self.shutdown.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The service's database: a pool, and the local cluster behind it when there is one.
pub struct Database {
    pub pool: PgPool,
    pub reader: ReaderPool,
    /// Read replicas: configured (`CLIENTAPI_READ_REPLICA_URLS`) and local ones.
    pub replicas: Vec<PgConnectOptions>,
    local: Option<LocalPostgres>,
    local_replicas: Vec<LocalPostgres>,
}

impl Database {
    /// Connects (starting the local cluster when `DATABASE_URL` is unset) and migrates.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let (options, local) = match &config.database_url {
            Some(url) => {
                let options = PgConnectOptions::from_str(url.expose()).context("parsing DATABASE_URL")?;
                (options, None)
            }
            None => {
                let dir = config.data_dir.clone();
                let local = tokio::task::spawn_blocking(move || LocalPostgres::start(&dir, Durability::Durable))
                    .await
                    .context("local Postgres start-up task")?
                    .context("starting the local Postgres")?;
                db::ensure_database(&local.connect_options("postgres"), db::SERVICE_DATABASE, None)
                    .await
                    .context("creating the service database")?;
                (local.connect_options(db::SERVICE_DATABASE), Some(local))
            }
        };
        let pool = db::connect(options.clone()).await.context("connecting to Postgres")?;
        db::migrate(&pool).await.context("running migrations")?;
        let reader = clientapi_schema::read::reader_pool(options, config.read_connections);
        let mut replicas = crate::replicas::ReadRouter::options(&config.read_replica_urls)?;
        let mut local_replicas = Vec::new();
        let mut local = local;
        for n in 1..=config.local_replicas {
            let Some(primary) = local.take() else { break };
            let dir = config.data_dir.join(format!("replica-{n}"));
            let (primary, standby) = tokio::task::spawn_blocking(move || {
                let standby = primary.start_replica(&dir, Durability::Durable);
                (primary, standby)
            })
            .await
            .context("local replica start-up task")?;
            local = Some(primary);
            let standby = standby.with_context(|| format!("starting local read replica {n}"))?;
            tracing::info!(replica = n, port = standby.port(), "local read replica serving");
            replicas.push(standby.connect_options(db::SERVICE_DATABASE));
            local_replicas.push(standby);
        }
        Ok(Self { pool, reader, replicas, local, local_replicas })
    }

    /// Closes the pool, then stops the local cluster (its replicas first) if this process owns it.
    pub async fn close(self) -> anyhow::Result<()> {
        self.reader.close().await;
        self.pool.close().await;
        for standby in self.local_replicas {
            tokio::task::spawn_blocking(move || standby.stop()).await??;
        }
        if let Some(local) = self.local {
            tokio::task::spawn_blocking(move || local.stop()).await??;
        }
        Ok(())
    }
}

/// What one process runs. Any number of each may run against one database (README, "Past
/// one machine"): the sync claims each connection's run through a lease, queues are claimed
/// row by row, and caches hear every change through LISTEN/NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API and the workers (the default).
    All,
    /// The API alone (`serve --api-only`): public, admin and dashboard routes.
    Api,
    /// The workers alone (`serve --workers-only`): the sync scheduler, provider callbacks and
    /// webhook delivery, with only `/healthz`, `/readyz` and `/metrics` on HTTP.
    Workers,
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    database: Database,
    role: Role,
}

impl Application {
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let master_key = config.master_key()?;
        let database = Database::open(&config).await?;
        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding {} (CLIENTAPI_BIND)", config.bind))?;
        // A public URL derived from a port-0 bind means "wherever we ended up".
        if config.public_url.port() == Some(0) {
            let _ = config.public_url.set_port(Some(listener.local_addr()?.port()));
        }
        crate::telemetry::metrics_handle();
        let state = AppState::new(
            database.pool.clone(),
            database.reader.clone(),
            database.replicas.clone(),
            config,
            master_key,
        );
        Ok(Self { listener, state, database, role: Role::All })
    }

    /// What this process runs.
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` fires, then drains in-flight requests and stops the database.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, database, role } = self;
        let workers = role != Role::Api;
        let router = match role {
            Role::Workers => crate::http::health_router(state.clone()),
            Role::All | Role::Api => crate::http::router(state.clone()),
        };
        let scheduler = workers.then(|| {
            tokio::spawn(clientapi_sync::scheduler::run(
                state.engine.clone(),
                state.db.clone(),
                clientapi_sync::scheduler::REFRESH,
                state.shutdown.clone(),
            ))
        });
        // Provider callbacks in and customer webhooks out are worker roles too.
        if workers {
            let mut tasks = state.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.push(tokio::spawn(
                crate::provider_hooks::CallbackWorker::new(state.clone()).run(state.shutdown.clone()),
            ));
            tasks.push(tokio::spawn(
                crate::webhooks::dispatch::Dispatcher::new(state.clone()).run(state.shutdown.clone()),
            ));
        }
        tracing::info!(addr = %listener.local_addr()?, ?role, "serving");
        let (signal, streams) = (shutdown.clone(), state.streams_closing.clone());
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                signal.cancelled().await;
                // Event streams never finish on their own; graceful shutdown waits for them.
                streams.cancel();
            })
            .await
            .context("HTTP server")?;
        state.stop_background().await;
        state.reads.close().await;
        if let Some(scheduler) = scheduler {
            match scheduler.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the sync scheduler stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "the sync scheduler task failed"),
                Ok(Ok(())) => {}
            }
        }
        tracing::info!("HTTP server stopped; closing the database");
        database.close().await
    }
}

/// The provider adapters, configured from settings.
pub fn providers(config: &Config) -> Providers {
    Providers {
        servicem8: Arc::new(ServiceM8::new(ServiceM8Config {
            request_timeout: std::time::Duration::from_secs(config.provider_timeout_secs),
            requests_per_minute: config.servicem8.requests_per_minute,
            ..ServiceM8Config::new(
                config.servicem8.api_url.clone(),
                config.servicem8.oauth_url.clone(),
                config.servicem8.client_id.clone(),
                config.servicem8.client_secret.clone(),
            )
        })),
        jobber: Arc::new(Jobber::new(JobberConfig {
            request_timeout: std::time::Duration::from_secs(config.provider_timeout_secs),
            graphql_version: config.jobber_graphql_version.clone(),
            ..JobberConfig::new(
                config.jobber.api_url.clone(),
                config.jobber.oauth_url.clone(),
                config.jobber.client_id.clone(),
                config.jobber.client_secret.clone(),
            )
        })),
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        trigger.cancel();
    });
    token
}
