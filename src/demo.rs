//! `clientapi demo`: the newcomer's first command. Local Postgres, a ServiceM8 simulator with
//! generated data on loopback, an admin, a connection made through the real OAuth flow, a
//! first sync with progress, a read-only and a read-write endpoint, and copy-paste commands;
//! then it serves until Ctrl-C. A second run reuses the data (and issues fresh keys, because
//! keys are stored hashed and cannot be shown again).

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, bail};
use clientapi_schema::{AccountId, ConnectionId};
use clientapi_sync::provider::ProviderKind;
use clientapi_sync::simulator::{jobber, servicem8};
use serde_json::{Value, json};

use crate::config::Config;
use crate::startup::{Application, shutdown_on_signals};

pub const DEMO_EMAIL: &str = "demo@clientapi.local";
const DEMO_ACCOUNT: &str = "Demo operator";
const READ_ONLY: &str = "Demo portal (read-only)";
const READ_WRITE: &str = "Demo booking widget (read-write)";

/// Demo knobs (CLI flags).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// `servicem8` or `jobber`: which provider's simulator the demo connects.
    pub provider: ProviderKind,
    pub companies: usize,
    pub jobs_per_company: usize,
    pub seed: u64,
}

/// The simulator the demo runs, kept alive while it serves.
enum Sim {
    ServiceM8(servicem8::Running),
    Jobber(jobber::Running),
}

impl Sim {
    fn label(&self) -> &'static str {
        match self {
            Sim::ServiceM8(_) => "ServiceM8",
            Sim::Jobber(_) => "Jobber",
        }
    }

    fn provider(&self) -> &'static str {
        match self {
            Sim::ServiceM8(_) => "servicem8",
            Sim::Jobber(_) => "jobber",
        }
    }

    /// The first customer company (a head office, for ServiceM8).
    fn first_company(&self) -> Option<String> {
        match self {
            Sim::ServiceM8(sim) => sim
                .sim
                .records("company")
                .iter()
                .find(|c| c["parent_company_uuid"] == "")
                .and_then(|c| c["uuid"].as_str().map(str::to_owned)),
            Sim::Jobber(sim) => sim.sim.records("clients").first().and_then(|c| c["id"].as_str().map(str::to_owned)),
        }
    }
}

pub async fn run(mut config: Config, options: DemoOptions) -> anyhow::Result<()> {
    let sim = match options.provider {
        ProviderKind::ServiceM8 => {
            let sim_config = servicem8::SimConfig {
                companies: options.companies,
                jobs_per_company: options.jobs_per_company,
                // Some customers have sites, as field-service customers do.
                sites_per_company: 1,
                seed: options.seed,
                ..servicem8::SimConfig::default()
            };
            let (client_id, client_secret) = (sim_config.client_id.clone(), sim_config.client_secret.clone());
            let sim = servicem8::Simulator::spawn(sim_config, "127.0.0.1:0".parse().expect("valid"))
                .await
                .context("starting the ServiceM8 simulator")?;
            eprintln!(
                "• ServiceM8 simulator on {} ({} companies × {} jobs, seed {})",
                sim.base_url(),
                options.companies,
                options.jobs_per_company,
                options.seed
            );
            config.servicem8.api_url = sim.api_url().parse()?;
            config.servicem8.oauth_url = sim.oauth_url().parse()?;
            config.servicem8.client_id = Some(client_id);
            config.servicem8.client_secret = Some(crate::config::Secret::new(client_secret));
            Sim::ServiceM8(sim)
        }
        ProviderKind::Jobber => {
            let sim_config = jobber::SimConfig {
                clients: options.companies,
                jobs_per_client: options.jobs_per_company,
                seed: options.seed,
                // Jobber's documented bucket restores 500 points a second: a first sync of the
                // demo's thousands of jobs would take many minutes. The demo's bucket restores
                // faster; `clientapi simulate jobber` keeps Jobber's figures.
                restore_rate: 50_000.0,
                ..jobber::SimConfig::default()
            };
            let (client_id, client_secret) = (sim_config.client_id.clone(), sim_config.client_secret.clone());
            let sim = jobber::Simulator::spawn(sim_config, "127.0.0.1:0".parse().expect("valid"))
                .await
                .context("starting the Jobber simulator")?;
            eprintln!(
                "• Jobber simulator on http://{} ({} clients × {} jobs, seed {}, cost bucket restoring 50,000 points/s)",
                sim.addr, options.companies, options.jobs_per_company, options.seed
            );
            config.jobber.api_url = sim.api_url().parse()?;
            config.jobber.oauth_url = sim.oauth_url().parse()?;
            config.jobber.client_id = Some(client_id);
            config.jobber.client_secret = Some(crate::config::Secret::new(client_secret));
            Sim::Jobber(sim)
        }
    };

    let data_dir = config.data_dir.clone();
    let app = Application::build(config).await?;
    let state = app.state().clone();
    let base = state.config.public_url.as_str().trim_end_matches('/').to_owned();
    eprintln!("• Postgres ready, data in {}", data_dir.display());
    let shutdown = shutdown_on_signals();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let result = set_up(&state, &base, &sim).await;
    if let Err(e) = &result {
        eprintln!("clientapi demo: {e:#}");
        shutdown.cancel();
    }
    server.await.context("the server task")??;
    drop(sim);
    result
}

async fn set_up(state: &crate::startup::AppState, base: &str, sim: &Sim) -> anyhow::Result<()> {
    let (label, provider) = (sim.label(), sim.provider());
    let db = &state.db;
    let existing: Option<AccountId> =
        sqlx::query_scalar("select account_id from users where email = $1").bind(DEMO_EMAIL).fetch_optional(db).await?;
    // The dashboard's sign-in: a fresh password each run (only its hash is stored, so an
    // earlier run's cannot be shown again).
    let password = rand::distr::SampleString::sample_string(&rand::distr::Alphanumeric, &mut rand::rng(), 20);
    let account = match existing {
        Some(account) => {
            let hash = crate::accounts::hash_password(password.clone()).await?;
            sqlx::query("update users set password_hash = $2 where email = $1")
                .bind(DEMO_EMAIL)
                .bind(hash)
                .execute(db)
                .await?;
            eprintln!("• Reusing the demo data from an earlier run (admin {DEMO_EMAIL}, new password)");
            account
        }
        None => {
            let (account, _) = crate::accounts::create_user(db, DEMO_EMAIL, password.clone(), DEMO_ACCOUNT).await?;
            eprintln!("• Created admin {DEMO_EMAIL}");
            account
        }
    };
    // A fresh admin token each run; earlier demo tokens are revoked.
    sqlx::query(
        "update admin_tokens set revoked_at = now() where account_id = $1 and name = 'demo' and revoked_at is null",
    )
    .bind(account)
    .execute(db)
    .await?;
    let admin = crate::accounts::create_admin_token(db, DEMO_EMAIL, "demo").await?;

    // The real OAuth flow, over HTTP, against the simulator.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    // The simulator is a sandbox: its endpoints get test keys, which touch only its data.
    let authorize: Value = http
        .post(format!("{base}/api/admin/connections/{provider}/authorize"))
        .bearer_auth(&admin)
        .json(&json!({ "environment": "sandbox" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let approval = http.get(authorize["authorize_url"].as_str().context("no authorize_url")?).send().await?;
    let callback = approval
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("the simulator did not redirect back")?;
    let response = http.get(callback).bearer_auth(&admin).send().await?;
    if !response.status().is_success() {
        bail!("the OAuth callback failed: {}", response.text().await?);
    }
    let connection: Value = response.json().await?;
    let connection_id = ConnectionId(connection["id"].as_i64().context("no connection id")?);
    eprintln!(
        "• Connected {label} sandbox account \"{}\" through OAuth (connection {connection_id})",
        connection["name"].as_str().unwrap_or("")
    );

    // The first sync, with progress.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let progress: Option<clientapi_sync::engine::ProgressFn> = bar.clone().map(|bar| {
        Arc::new(move |p: clientapi_sync::engine::Progress| {
            bar.set_message(format!("syncing {}: {} pages, {} records", p.stream, p.pages, p.fetched));
        }) as clientapi_sync::engine::ProgressFn
    });
    let started = std::time::Instant::now();
    let run = state.engine.sync_connection(connection_id, false, progress).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    eprintln!(
        "• Synced {} {label} records in {:.1} s: {} mirror rows written, {} already current",
        run.fetched,
        started.elapsed().as_secs_f64(),
        run.stats.inserted + run.stats.updated + run.stats.deleted,
        run.stats.unchanged
    );

    // The first head office gets the endpoints (its sites come with it).
    let company = sim.first_company().context("the simulator has no companies")?;
    let read_only = endpoint_key(state, account, connection_id, &company, READ_ONLY, "read_only").await?;
    let read_write = endpoint_key(state, account, connection_id, &company, READ_WRITE, "read_write").await?;

    let (ro_url, ro_key) = (&read_only.0, &read_only.1);
    let (rw_url, rw_key) = (&read_write.0, &read_write.1);
    let job = sqlx::query_scalar::<_, String>(
        "select j.external_id from jobs j join companies c on c.id = j.company_id
         where c.connection_id = $1 and c.external_id = $2 and j.deleted_at is null order by j.external_id limit 1",
    )
    .bind(connection_id)
    .bind(&company)
    .fetch_optional(db)
    .await?
    .unwrap_or_default();
    println!();
    println!("Client API demo is running. Keys are shown once (a later run issues new ones).");
    println!();
    println!("  Dashboard      {base}/   (sign in as {DEMO_EMAIL} with password {password})");
    println!("  Admin API      {base}/api/admin   (token: {admin})");
    println!("  API docs       {base}/api/public/docs");
    println!("  Read-only key  {ro_key}");
    println!("  Read-write key {rw_key}");
    println!();
    println!("# List jobs (REST):");
    println!("curl -s -H 'Authorization: Bearer {ro_key}' '{ro_url}/jobs?page_size=5&sort=-updated_at'");
    println!("# The canonical form, with filters:");
    println!("curl -s -H 'X-API-Key: {ro_key}' '{ro_url}/query/?resource=invoice&status=paid&page_size=5'");
    println!("# One job, with its raw {label} record:");
    println!("curl -s -H 'Authorization: Bearer {ro_key}' '{ro_url}/jobs/{job}?include=remote_data'");
    println!("# Everything that changed since your last pull (pass next_cursor back as since=):");
    println!("curl -s -H 'Authorization: Bearer {ro_key}' '{ro_url}/changes?page_size=20'");
    println!("# Export every invoice as CSV:");
    println!("curl -s -H 'Authorization: Bearer {ro_key}' '{ro_url}/export?resource=invoices&format=csv'");
    println!("# GraphQL: jobs with their client and line items in one query (GraphiQL: {ro_url}/graphql):");
    println!(
        "curl -s -H 'Authorization: Bearer {ro_key}' -H 'Content-Type: application/json' -d '{{\"query\": \"{{ jobs(first: 3) {{ nodes {{ id number status client {{ name }} lineItems {{ name total {{ amount currency }} }} }} }} }}\"}}' '{ro_url}/graphql'"
    );
    if matches!(sim, Sim::ServiceM8(_)) {
        println!(
            "# Create a job (read-write key; written to ServiceM8, then readable at once; the key makes retries safe):"
        );
        println!(
            "curl -s -X POST -H 'Authorization: Bearer {rw_key}' -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-booking-1' -d '{{\"status\": \"Quote\", \"description\": \"Booked through the demo\"}}' '{rw_url}/jobs'"
        );
    }
    println!("# The endpoint itself and how fresh its data is:");
    println!("curl -s -H 'Authorization: Bearer {rw_key}' '{rw_url}/me'");
    println!("# Sync status (admin):");
    println!("curl -s -H 'Authorization: Bearer {admin}' '{base}/api/admin/connections/{connection_id}'");
    println!();
    println!("Press Ctrl-C to stop.");
    println!("ready");
    Ok(())
}

/// The endpoint named `name` (created on first run), with a key issued now.
async fn endpoint_key(
    state: &crate::startup::AppState,
    account: AccountId,
    connection: ConnectionId,
    company: &str,
    name: &str,
    access: &str,
) -> anyhow::Result<(String, String)> {
    let existing: Option<String> =
        sqlx::query_scalar("select public_id from endpoints where account_id = $1 and name = $2")
            .bind(account)
            .bind(name)
            .fetch_optional(&state.db)
            .await?;
    let created = match existing {
        Some(public_id) => crate::endpoints::reissue(&state.db, account, &public_id, 0).await,
        None => {
            let body =
                json!({"connection_id": connection.0, "company_external_id": company, "name": name, "access": access});
            crate::endpoints::create(&state.db, account, &body).await
        }
    }
    .map_err(|e| anyhow::anyhow!("creating the {access} endpoint: {e}"))?;
    let url =
        format!("{}/api/public/{}", state.config.public_url.as_str().trim_end_matches('/'), created.endpoint.public_id);
    Ok((url, created.key))
}
