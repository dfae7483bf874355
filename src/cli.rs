//! The command line: `clientapi --help` lists every command.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::startup::{Application, Database, shutdown_on_signals};

#[derive(Debug, Parser)]
#[command(name = "clientapi", version, about = "Scoped REST and GraphQL APIs over a field-service provider account.")]
pub struct Cli {
    /// TOML file with settings (environment variables override it).
    #[arg(long, global = true, env = "CLIENTAPI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The first command to run: local Postgres, a ServiceM8 simulator, an admin, a connection
    /// through OAuth, a first sync, two endpoints with keys, and commands to paste; then serves.
    Demo {
        /// Which provider's simulator to connect: `servicem8` or `jobber`.
        #[arg(long, default_value = "servicem8", value_parser = parse_provider)]
        provider: clientapi_sync::provider::ProviderKind,
        #[arg(long, default_value_t = 30)]
        companies: usize,
        #[arg(long, default_value_t = 100)]
        jobs_per_company: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the service until Ctrl-C or SIGTERM: the API, and the workers (sync scheduler,
    /// provider callbacks, webhook delivery). Any number of processes may share one database.
    Serve {
        /// Serve the API only; other processes run the workers.
        #[arg(long, alias = "no-workers", conflicts_with = "workers_only")]
        api_only: bool,
        /// Run the workers only (HTTP serves just /healthz, /readyz and /metrics).
        #[arg(long)]
        workers_only: bool,
        /// Start this many hot standbys of the local Postgres (pg_basebackup, in the data
        /// directory) and serve customer reads from them (CLIENTAPI_LOCAL_REPLICAS).
        #[arg(long, value_name = "N")]
        local_replicas: Option<usize>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage admin users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect and sync connections.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Manage customer endpoints and their keys.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Helpers for bench/run (hidden).
    #[command(subcommand, hide = true)]
    BenchSupport(BenchSupport),
    /// Print the public API's OpenAPI 3.1 document (the committed copy is openapi/public.json).
    Openapi,
    /// Print the GraphQL schema in SDL (the committed copy is graphql/schema.graphql).
    GraphqlSchema,
    /// Run a provider simulator on loopback (for development, tests and the demo).
    #[command(subcommand)]
    Simulate(SimulateCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Every connection, of every account.
    List,
    /// Sync one connection now (a progress bar on a terminal).
    Sync {
        id: i64,
        /// A full scan that also finds hard deletes.
        #[arg(long)]
        full: bool,
    },
    /// Sync status per stream and the latest runs.
    Status { id: i64 },
    /// Subscribe the provider's webhooks again, at CLIENTAPI_PUBLIC_URL (the service must be
    /// serving there: the provider checks the URL before it keeps a subscription).
    RepairWebhooks { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum BenchSupport {
    /// The exact SQL the REST list runs for `resource` (first page, default order), `$1` = company.
    ListSql {
        #[arg(long, default_value = "job")]
        resource: String,
        #[arg(long, default_value_t = 50)]
        page_size: u32,
        /// As for a key holding `technicians:read` (default: without, as the default scopes).
        #[arg(long)]
        technicians: bool,
    },
    /// The exact `select` the export copies out for `resource` in `format` (ndjson or csv),
    /// unfiltered, for one company.
    ExportSql {
        #[arg(long, default_value = "invoice")]
        resource: String,
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        company: i64,
    },
    /// Well-formed keys (valid checksum) that belong to no endpoint.
    WrongKeys { count: usize },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint for one company of a connection; prints its key once, on stdout.
    Create {
        #[arg(long)]
        connection: i64,
        /// The provider's id of the customer company.
        #[arg(long)]
        company: String,
        #[arg(long)]
        name: String,
        /// Allow writes (through to the provider).
        #[arg(long)]
        read_write: bool,
        /// A test endpoint (`sk_test_` key); only a sandbox connection takes one. Without
        /// `--test` or `--live` the endpoint follows its connection.
        #[arg(long, conflicts_with = "live")]
        test: bool,
        /// A live endpoint (`sk_live_` key); only a live connection takes one.
        #[arg(long)]
        live: bool,
        #[arg(long)]
        rate_limit: Option<i32>,
    },
    /// Every endpoint (never a key).
    List,
    /// Issue a new key; the old one keeps working for the grace period. Prints the key once.
    Reissue {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_seconds: i64,
    },
    /// Stop an endpoint answering (its key stays, for re-activation).
    Deactivate { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SimulateCommand {
    /// ServiceM8's OAuth and api_1.0 REST shape, with generated data and fault knobs.
    Servicem8(SimulateArgs),
    /// Jobber's OAuth (rotating refresh tokens, JWT expiry) and GraphQL shape, with its query-cost
    /// bucket, `THROTTLED` answers, version headers, generated data and fault knobs.
    Jobber(SimulateJobberArgs),
}

#[derive(Debug, Args)]
pub struct SimulateJobberArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8091)]
    pub port: u16,
    #[arg(long, default_value_t = 30)]
    pub clients: usize,
    #[arg(long, default_value_t = 20)]
    pub jobs_per_client: usize,
    /// Jobs carry from none to this many line items.
    #[arg(long, default_value_t = 3)]
    pub line_items_per_job: usize,
    #[arg(long, default_value_t = 2)]
    pub visits_per_job: usize,
    #[arg(long, default_value_t = 1)]
    pub properties_per_client: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "jobber-sim-client")]
    pub client_id: String,
    #[arg(long, default_value = "jobber-sim-secret")]
    pub client_secret: String,
    /// Access-token lifetime in seconds (Jobber's: 3,600).
    #[arg(long, default_value_t = 3600)]
    pub token_ttl: u64,
    /// The query-cost bucket's size, in points (Jobber's: 10,000).
    #[arg(long, default_value_t = 10_000.0)]
    pub bucket: f64,
    /// Points the bucket restores per second (Jobber's: 500).
    #[arg(long, default_value_t = 500.0)]
    pub restore_rate: f64,
    /// Probability (0–1) of a 500 on each API request.
    #[arg(long, default_value_t = 0.0)]
    pub rate_5xx: f64,
    /// Added latency per API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0–1) that a webhook is never sent.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_drop: f64,
    /// Probability (0–1) that a webhook is sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_duplicate: f64,
    /// Webhooks leave in a shuffled order (each up to 200 ms late).
    #[arg(long)]
    pub webhook_reorder: bool,
    /// Every webhook waits this long before it is sent, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub webhook_delay_ms: u64,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
    #[arg(long, default_value_t = 30)]
    pub companies: usize,
    #[arg(long, default_value_t = 100)]
    pub jobs_per_company: usize,
    /// Sites under each company (ServiceM8 companies with a `parent_company_uuid`); a third of
    /// the company's jobs are at a site.
    #[arg(long, default_value_t = 0)]
    pub sites_per_company: usize,
    /// Skewed company sizes (a few large, many small), same total number of jobs.
    #[arg(long)]
    pub skewed: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 5000)]
    pub page_size: usize,
    #[arg(long, default_value = "sim-client")]
    pub client_id: String,
    #[arg(long, default_value = "sim-secret")]
    pub client_secret: String,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl: u64,
    /// Keep refresh tokens valid across refreshes (default: rotate on every refresh).
    #[arg(long)]
    pub no_rotate: bool,
    #[arg(long, default_value_t = 180)]
    pub per_minute: u32,
    #[arg(long, default_value_t = 20_000)]
    pub per_day: u32,
    /// Probability (0–1) of an injected 429 on each API request.
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// Retry-After seconds sent with 429s (omit for none).
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Probability (0–1) of a 500 on each API request.
    #[arg(long, default_value_t = 0.0)]
    pub rate_5xx: f64,
    /// Probability (0–1) of a truncated JSON body.
    #[arg(long, default_value_t = 0.0)]
    pub rate_truncated: f64,
    /// Added latency per API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0–1) that a webhook callback is never sent.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_drop: f64,
    /// Probability (0–1) that a webhook callback is sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_duplicate: f64,
    /// Send webhook callbacks gathered together in reverse order.
    #[arg(long)]
    pub webhook_reorder: bool,
    /// Delay every webhook callback by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub webhook_delay_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an admin user (and its account, if new).
    Create(UserCreate),
}

#[derive(Debug, Args)]
pub struct UserCreate {
    #[arg(long)]
    pub email: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// The operator account to join or create.
    #[arg(long, default_value = "default")]
    pub account: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue an admin token (`ak_…`) for a user; prints only the token on stdout, once.
    Create {
        #[arg(long)]
        email: String,
        /// A label shown in token listings.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Runs the parsed command. Exit codes: 0 ok, 1 failure, 2 bad configuration or usage.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&crate::http::public::openapi::spec())?);
            return Ok(());
        }
        Command::GraphqlSchema => {
            print!("{}", clientapi_graphql::GraphqlApi::new().sdl());
            return Ok(());
        }
        Command::BenchSupport(BenchSupport::ListSql { resource, page_size, technicians }) => {
            let resource = clientapi_schema::model::Resource::parse(resource).context("unknown resource")?;
            let query = clientapi_schema::read::ListQuery {
                resource,
                filters: Default::default(),
                sort: Default::default(),
                page_size: *page_size,
                after: None,
                include_remote_data: false,
            };
            println!("{}", clientapi_schema::read::list_sql(&query, *technicians).0);
            return Ok(());
        }
        Command::BenchSupport(BenchSupport::ExportSql { resource, format, company }) => {
            use clientapi_schema::read::{ExportFormat, Scope, export_select};
            let resource = clientapi_schema::model::Resource::parse(resource).context("unknown resource")?;
            let format = match format.as_str() {
                "csv" => ExportFormat::Csv,
                "ndjson" => ExportFormat::Ndjson,
                other => anyhow::bail!("unknown format {other}: ndjson or csv"),
            };
            let scope = Scope::new(clientapi_schema::CompanyId(*company), false);
            println!("{}", export_select(scope, resource, &Default::default(), format).0);
            return Ok(());
        }
        Command::BenchSupport(BenchSupport::WrongKeys { count }) => {
            for _ in 0..*count {
                println!("{}", crate::endpoint_key::generate(false));
            }
            return Ok(());
        }
        _ => {}
    }
    let mut config = match Config::from_env(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("clientapi: {e}");
            std::process::exit(2);
        }
    };
    // Local replicas are the server's to start: a one-off command (user create, connection
    // sync) works on the primary alone.
    if !matches!(cli.command, Command::Serve { .. }) {
        config.local_replicas = 0;
    }
    match cli.command {
        Command::Demo { provider, companies, jobs_per_company, seed } => {
            crate::demo::run(config, crate::demo::DemoOptions { provider, companies, jobs_per_company, seed }).await
        }
        Command::Serve { api_only, workers_only, local_replicas } => {
            if let Some(n) = local_replicas {
                if config.database_url.is_some() {
                    anyhow::bail!("--local-replicas needs the local Postgres: unset DATABASE_URL");
                }
                if n > 8 {
                    anyhow::bail!("--local-replicas: at most 8 (got {n})");
                }
                config.local_replicas = n;
            }
            let role = match (api_only, workers_only) {
                (true, _) => crate::startup::Role::Api,
                (_, true) => crate::startup::Role::Workers,
                _ => crate::startup::Role::All,
            };
            let app = Application::build(config).await?.with_role(role);
            app.run_until_stopped(shutdown_on_signals()).await
        }
        Command::Migrate => {
            let db = Database::open(&config).await?;
            eprintln!("migrations applied");
            db.close().await
        }
        Command::User(UserCommand::Create(args)) => {
            let password = read_password(args.password_stdin)?;
            let db = Database::open(&config).await?;
            let result = crate::accounts::create_user(&db.pool, &args.email, password, &args.account).await;
            db.close().await?;
            let (account, user) = result?;
            eprintln!("created user {user} in account {account}");
            Ok(())
        }
        Command::Simulate(SimulateCommand::Servicem8(args)) => simulate_servicem8(args).await,
        Command::Simulate(SimulateCommand::Jobber(args)) => simulate_jobber(args).await,
        Command::Openapi | Command::GraphqlSchema | Command::BenchSupport(_) => {
            unreachable!("answered before configuration is loaded")
        }
        Command::Endpoint(command) => {
            let (db, state) = open_state(config).await?;
            let result = endpoint_command(&state, command).await;
            close_state(db, state).await?;
            result
        }
        Command::Connection(command) => {
            let (db, state) = open_state(config).await?;
            let result = connection_command(&state, command).await;
            close_state(db, state).await?;
            result
        }
        Command::Token(TokenCommand::Create { email, name }) => {
            let db = Database::open(&config).await?;
            let result = crate::accounts::create_admin_token(&db.pool, &email, &name).await;
            db.close().await?;
            println!("{}", result?);
            Ok(())
        }
    }
}

/// The service's state for a one-off command, as `serve` would build it.
async fn open_state(config: Config) -> anyhow::Result<(Database, crate::startup::AppState)> {
    let master_key = config.master_key()?;
    let db = Database::open(&config).await?;
    let state =
        crate::startup::AppState::new(db.pool.clone(), db.reader.clone(), db.replicas.clone(), config, master_key);
    Ok((db, state))
}

/// Flushes background work (the request log) and stops the database.
async fn close_state(db: Database, state: crate::startup::AppState) -> anyhow::Result<()> {
    state.stop_background().await;
    db.close().await
}

async fn connection_command(state: &crate::startup::AppState, command: ConnectionCommand) -> anyhow::Result<()> {
    use clientapi_schema::ConnectionId;
    match command {
        ConnectionCommand::List => {
            let rows: Vec<(i64, i64, String, String, String, String)> = sqlx::query_as(
                "select id, account_id, provider, external_account_id, name, status from connections order by id",
            )
            .fetch_all(&state.db)
            .await?;
            println!("{:>4}  {:>7}  {:<10}  {:<13}  NAME", "ID", "ACCOUNT", "PROVIDER", "STATUS");
            for (id, account, provider, _external, name, status) in rows {
                println!("{id:>4}  {account:>7}  {provider:<10}  {status:<13}  {name}");
            }
            Ok(())
        }
        ConnectionCommand::Sync { id, full } => {
            let bar = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            let progress: Option<clientapi_sync::engine::ProgressFn> = bar.clone().map(|bar| {
                std::sync::Arc::new(move |p: clientapi_sync::engine::Progress| {
                    bar.set_message(format!("{}: {} pages, {} records", p.stream, p.pages, p.fetched));
                }) as clientapi_sync::engine::ProgressFn
            });
            let shutdown = shutdown_on_signals();
            let engine = state.engine.clone();
            let cancel = state.shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                cancel.cancel();
            });
            let run = engine.sync_connection(ConnectionId(id), full, progress).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let run = run?;
            let s = run.stats;
            println!(
                "run {}: {} pages, {} fetched, {} inserted, {} updated, {} unchanged, {} deleted, {} unowned, {} record errors",
                run.run_id,
                run.pages,
                run.fetched,
                s.inserted,
                s.updated,
                s.unchanged,
                s.deleted,
                s.unowned,
                run.error_count
            );
            Ok(())
        }
        ConnectionCommand::RepairWebhooks { id } => {
            let objects = crate::provider_hooks::subscribe(state, ConnectionId(id)).await?;
            println!("subscribed {} objects: {}", objects.len(), objects.join(", "));
            Ok(())
        }
        ConnectionCommand::Status { id } => {
            let account: Option<i64> = sqlx::query_scalar("select account_id from connections where id = $1")
                .bind(id)
                .fetch_optional(&state.db)
                .await?;
            let Some(account) = account else { bail!("no connection {id}") };
            println!("{:<16} {:<21} {:>10}  IN PROGRESS", "STREAM", "WATERMARK", "AGE (s)");
            for s in clientapi_sync::status::streams(&state.db, ConnectionId(id)).await? {
                println!(
                    "{:<16} {:<21} {:>10}  {}",
                    s.stream,
                    s.watermark.unwrap_or_else(|| "-".into()),
                    s.freshness_seconds.map_or("-".into(), |f| format!("{f:.0}")),
                    if s.scan_in_progress { "yes" } else { "no" }
                );
            }
            let runs = clientapi_sync::status::runs(
                &state.db,
                clientapi_schema::AccountId(account),
                Some(ConnectionId(id)),
                5,
            )
            .await?;
            for r in runs {
                println!(
                    "run {} {} {}: fetched {}, inserted {}, updated {}, deleted {}{}",
                    r.id,
                    r.kind,
                    r.status,
                    r.fetched,
                    r.inserted,
                    r.updated,
                    r.deleted,
                    r.error.map(|e| format!(" — {e}")).unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

/// The account that owns a connection or an endpoint: the CLI acts as that account's admin.
async fn owning_account(
    state: &crate::startup::AppState,
    sql: &'static str,
    id: String,
) -> anyhow::Result<clientapi_schema::AccountId> {
    let account: Option<clientapi_schema::AccountId> =
        sqlx::query_scalar(sql).bind(id).fetch_optional(&state.db).await?;
    account.context("not found")
}

fn api_error(e: crate::error::ApiError) -> anyhow::Error {
    match e {
        crate::error::ApiError::Invalid(errors) => {
            anyhow::anyhow!(
                "{}",
                errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
            )
        }
        other => anyhow::anyhow!("{other}"),
    }
}

async fn endpoint_command(state: &crate::startup::AppState, command: EndpointCommand) -> anyhow::Result<()> {
    use crate::endpoints;
    match command {
        EndpointCommand::Create { connection, company, name, read_write, test, live, rate_limit } => {
            let account = owning_account(
                state,
                "select account_id from connections where id = $1::text::bigint",
                connection.to_string(),
            )
            .await
            .with_context(|| format!("no connection {connection}"))?;
            let mut body = serde_json::json!({
                "connection_id": connection, "company_external_id": company, "name": name,
                "access": if read_write { "read_write" } else { "read_only" },
            });
            if test || live {
                body["environment"] = if test { "test" } else { "live" }.into();
            }
            if let Some(limit) = rate_limit {
                body["rate_limit_per_minute"] = limit.into();
            }
            let created = endpoints::create(&state.db, account, &body).await.map_err(api_error)?;
            eprintln!(
                "created endpoint {} ({}) at {}/api/public/{}; the key below is shown once",
                created.endpoint.public_id,
                created.endpoint.access,
                state.config.public_url.as_str().trim_end_matches('/'),
                created.endpoint.public_id
            );
            println!("{}", created.key);
            Ok(())
        }
        EndpointCommand::List => {
            let rows: Vec<(String, String, String, String, String, Option<String>)> = sqlx::query_as(
                "select e.public_id, e.name, e.access, e.status, c.external_id,
                        (select hint from endpoint_keys k where k.endpoint_id = e.id and k.revoked_at is null order by id desc limit 1)
                 from endpoints e join companies c on c.id = e.company_id order by e.id",
            )
            .fetch_all(&state.db)
            .await?;
            println!("{:<20} {:<10} {:<8} {:<24} {:<40} NAME", "ID", "ACCESS", "STATUS", "KEY", "COMPANY");
            for (id, name, access, status, company, hint) in rows {
                println!("{id:<20} {access:<10} {status:<8} {:<24} {company:<40} {name}", hint.unwrap_or_default());
            }
            Ok(())
        }
        EndpointCommand::Reissue { id, grace_seconds } => {
            let account = owning_account(state, "select account_id from endpoints where public_id = $1", id.clone())
                .await
                .with_context(|| format!("no endpoint {id}"))?;
            let created = endpoints::reissue(&state.db, account, &id, grace_seconds).await.map_err(api_error)?;
            eprintln!("new key for {id}; the old key works for {grace_seconds} more seconds");
            println!("{}", created.key);
            Ok(())
        }
        EndpointCommand::Deactivate { id } => {
            let account = owning_account(state, "select account_id from endpoints where public_id = $1", id.clone())
                .await
                .with_context(|| format!("no endpoint {id}"))?;
            endpoints::set_status(&state.db, account, &id, false).await.map_err(api_error)?;
            eprintln!("endpoint {id} deactivated");
            Ok(())
        }
    }
}

async fn simulate_servicem8(args: SimulateArgs) -> anyhow::Result<()> {
    use clientapi_sync::simulator::servicem8::{FaultKnobs, SimConfig, Simulator, WebhookKnobs};
    for (name, p) in [
        ("--rate-429", args.rate_429),
        ("--rate-5xx", args.rate_5xx),
        ("--rate-truncated", args.rate_truncated),
        ("--webhook-drop", args.webhook_drop),
        ("--webhook-duplicate", args.webhook_duplicate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be a probability from 0 to 1");
        }
    }
    let config = SimConfig {
        companies: args.companies,
        jobs_per_company: args.jobs_per_company,
        sites_per_company: args.sites_per_company,
        withheld: Vec::new(),
        skewed: args.skewed,
        seed: args.seed,
        client_id: args.client_id,
        client_secret: args.client_secret,
        page_size: args.page_size.max(1),
        access_token_ttl: std::time::Duration::from_secs(args.token_ttl),
        rotate_refresh_tokens: !args.no_rotate,
        per_minute_limit: args.per_minute,
        per_day_limit: args.per_day,
        faults: FaultKnobs {
            rate_429: args.rate_429,
            retry_after_secs: args.retry_after,
            rate_5xx: args.rate_5xx,
            rate_truncated: args.rate_truncated,
            latency: std::time::Duration::from_millis(args.latency_ms),
        },
        webhooks: WebhookKnobs {
            drop: args.webhook_drop,
            duplicate: args.webhook_duplicate,
            reorder: args.webhook_reorder,
            delay: std::time::Duration::from_millis(args.webhook_delay_ms),
        },
    };
    let (client_id, client_secret) = (config.client_id.clone(), config.client_secret.clone());
    let running = Simulator::spawn(config, std::net::SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    println!("ServiceM8 simulator on {}", running.base_url());
    println!("  CLIENTAPI_SERVICEM8_API_URL={}", running.api_url());
    println!("  CLIENTAPI_SERVICEM8_OAUTH_URL={}", running.oauth_url());
    println!("  CLIENTAPI_SERVICEM8_CLIENT_ID={client_id}");
    println!("  CLIENTAPI_SERVICEM8_CLIENT_SECRET={client_secret}");
    let shutdown = shutdown_on_signals();
    shutdown.cancelled().await;
    drop(running);
    Ok(())
}

fn parse_provider(name: &str) -> Result<clientapi_sync::provider::ProviderKind, String> {
    clientapi_sync::provider::ProviderKind::parse(name)
        .ok_or_else(|| format!("unknown provider `{name}` (expected servicem8 or jobber)"))
}

async fn simulate_jobber(args: SimulateJobberArgs) -> anyhow::Result<()> {
    use clientapi_sync::simulator::jobber::{SimConfig, Simulator};
    for (name, p) in [
        ("--rate-5xx", args.rate_5xx),
        ("--webhook-drop", args.webhook_drop),
        ("--webhook-duplicate", args.webhook_duplicate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be a probability from 0 to 1");
        }
    }
    if !(args.bucket >= 1.0 && args.restore_rate > 0.0) {
        bail!("--bucket must be at least 1 and --restore-rate above 0");
    }
    let config = SimConfig {
        clients: args.clients,
        jobs_per_client: args.jobs_per_client,
        line_items_per_job: args.line_items_per_job,
        visits_per_job: args.visits_per_job,
        properties_per_client: args.properties_per_client,
        seed: args.seed,
        client_id: args.client_id,
        client_secret: args.client_secret,
        access_token_ttl: std::time::Duration::from_secs(args.token_ttl),
        bucket_maximum: args.bucket,
        restore_rate: args.restore_rate,
        faults: clientapi_sync::simulator::servicem8::FaultKnobs {
            rate_5xx: args.rate_5xx,
            latency: std::time::Duration::from_millis(args.latency_ms),
            ..Default::default()
        },
        webhooks: clientapi_sync::simulator::webhooks::WebhookKnobs {
            drop: args.webhook_drop,
            duplicate: args.webhook_duplicate,
            reorder: args.webhook_reorder,
            delay: std::time::Duration::from_millis(args.webhook_delay_ms),
        },
        ..SimConfig::default()
    };
    let (client_id, client_secret) = (config.client_id.clone(), config.client_secret.clone());
    let running = Simulator::spawn(config, std::net::SocketAddr::new(args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    println!("Jobber simulator on http://{}", running.addr);
    println!("  CLIENTAPI_JOBBER_API_URL={}", running.api_url());
    println!("  CLIENTAPI_JOBBER_OAUTH_URL={}", running.oauth_url());
    println!("  CLIENTAPI_JOBBER_CLIENT_ID={client_id}");
    println!("  CLIENTAPI_JOBBER_CLIENT_SECRET={client_secret}");
    let shutdown = shutdown_on_signals();
    shutdown.cancelled().await;
    drop(running);
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password("Password: ")?;
    let again = rpassword::prompt_password("Again: ")?;
    if first != again {
        bail!("the passwords differ");
    }
    Ok(first)
}
