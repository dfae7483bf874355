//! The sync engine against the simulator: complete, exact, idempotent, fault-tolerant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use clientapi_schema::model::{Owner, Resource};
use clientapi_schema::{ConnectionId, mirror};
use clientapi_sync::Providers;
use clientapi_sync::engine::{SyncEngine, SyncError};
use clientapi_sync::servicem8::{ServiceM8, ServiceM8Config, mapping};
use clientapi_sync::simulator::servicem8::{Fault, FaultKnobs, Running, SimConfig};
use serde_json::{Value, json};

use crate::helpers::{TestApp, admin_token, connect_servicem8, spawn_app_for, spawn_sim};

async fn connected(config: SimConfig) -> (Running, TestApp, ConnectionId) {
    let sim = spawn_sim(config).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let connection = connect_servicem8(&app, &token).await;
    (sim, app, ConnectionId(connection["id"].as_i64().unwrap()))
}

/// An engine over the app's database, talking to `sim` with a short request timeout.
fn engine(app: &TestApp, sim: &Running) -> SyncEngine {
    let config = sim.sim.config();
    let mut sm8 = ServiceM8Config::new(
        sim.api_url().parse().unwrap(),
        sim.oauth_url().parse().unwrap(),
        Some(config.client_id.clone()),
        Some(clientapi_schema::secret::Secret::new(config.client_secret.clone())),
    );
    sm8.request_timeout = Duration::from_secs(2);
    let providers = Providers { servicem8: Arc::new(ServiceM8::new(sm8)), jobber: crate::jobber::unused_adapter() };
    SyncEngine::new(app.db.clone(), app.state.tokens.clone(), providers, Default::default())
}

/// Maps a provider object as the adapter does, from its JSON text; `None` for a non-object.
fn mapped<T>(value: &Value, map: impl FnOnce(&mapping::Object<'_>) -> T) -> Option<T> {
    let text = serde_json::value::to_raw_value(value).unwrap();
    Some(map(&mapping::Object::parse(&text).ok()?))
}

/// The job record of a provider job object.
fn job_record(value: &Value) -> clientapi_schema::model::Record {
    mapped(value, |o| mapping::job(o, "AUD")).unwrap().unwrap().swap_remove(0)
}

/// What the mirror must hold for `resource`: (id, company external id, raw record) of every
/// live record, derived from the simulator's data with the adapter's own mapping.
pub(crate) fn expected(sim: &Running, resource: Resource) -> BTreeSet<(String, String, String)> {
    let s = &sim.sim;
    // Sites live with their head office (followed up the chain of parents).
    let head_office = |company: &str| {
        let mut at = company.to_owned();
        for _ in 0..8 {
            match s.record("company", &at).and_then(|c| c["parent_company_uuid"].as_str().map(str::to_owned)) {
                Some(parent) if !parent.is_empty() => at = parent,
                _ => break,
            }
        }
        at
    };
    let job_company = |job: &str| s.record("job", job).and_then(|j| j["company_uuid"].as_str().map(&head_office));
    let (object, resources) = match resource {
        Resource::Client => ("company", 0),
        Resource::Site => ("company", 1),
        Resource::Visit => ("jobactivity", 0),
        Resource::Staff => ("staff", 0),
        Resource::JobType => ("category", 0),
        Resource::CustomField => ("customfield", 0),
        Resource::TaxRate => ("taxrate", 0),
        Resource::Material => ("material", 0),
        Resource::Contact => ("companycontact", 0),
        Resource::Job => ("job", 0),
        Resource::Invoice => ("job", 1),
        Resource::LineItem => ("jobmaterial", 0),
        Resource::Payment => ("jobpayment", 0),
        Resource::Attachment => ("attachment", 0),
    };
    s.records(object)
        .iter()
        .filter_map(|raw| {
            let records = match object {
                "company" => mapped(raw, mapping::client)?.ok()?,
                "companycontact" => vec![mapped(raw, mapping::contact)?.ok()?],
                "jobactivity" => vec![mapped(raw, mapping::visit)?.ok()?],
                "staff" => vec![mapped(raw, mapping::staff)?.ok()?],
                "category" => vec![mapped(raw, mapping::job_type)?.ok()?],
                "customfield" => vec![mapped(raw, mapping::custom_field)?.ok()?],
                "taxrate" => vec![mapped(raw, mapping::tax_rate)?.ok()?],
                "material" => vec![mapped(raw, |o| mapping::material(o, "AUD"))?.ok()?],
                "job" => mapped(raw, |o| mapping::job(o, "AUD"))?.ok()?,
                "jobmaterial" => vec![mapped(raw, |o| mapping::line_item(o, "AUD"))?.ok()?],
                "jobpayment" => vec![mapped(raw, |o| mapping::payment(o, "AUD"))?.ok()?],
                "attachment" => vec![mapped(raw, mapping::attachment)?.ok()?],
                other => panic!("no mapping for {other}"),
            };
            let record = records.into_iter().nth(resources)?;
            if record.deleted {
                return None;
            }
            let company = match &record.owner {
                Owner::Company(c) => head_office(c),
                Owner::Job(j) => job_company(j)?,
                Owner::Account => String::new(),
                Owner::Unowned => return None,
            };
            Some((record.external_id, company, raw.to_string()))
        })
        .collect()
}

async fn mirrored(app: &TestApp, resource: Resource) -> BTreeSet<(String, String, String)> {
    let sql = format!(
        "select t.external_id, c.external_id, t.remote_data::text from {} t join companies c on c.id = t.company_id
         where t.deleted_at is null",
        resource.plural()
    );
    let rows: Vec<(String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&app.db).await.unwrap();
    // Normalise the JSON text so key order does not matter.
    rows.into_iter().map(|(id, c, raw)| (id, c, serde_json::from_str::<Value>(&raw).unwrap().to_string())).collect()
}

/// Mirror = provider, record by record and field by field (the raw payload and its company).
async fn assert_converged(app: &TestApp, sim: &Running) {
    for resource in Resource::ALL {
        let want = expected(sim, resource);
        let have = mirrored(app, resource).await;
        assert_eq!(have.len(), want.len(), "{resource}: count");
        assert!(have == want, "{resource}: mirror differs from the provider");
    }
    // Nothing is duplicated across companies.
    for resource in Resource::ALL {
        let sql = format!("select count(*) - count(distinct external_id) from {}", resource.plural());
        let dupes: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&app.db).await.unwrap();
        assert_eq!(dupes, 0, "{resource} has a record in two companies");
    }
}

/// Every mirror row's physical version: unchanged iff no row was written.
async fn row_versions(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for resource in Resource::ALL {
        let sql = format!(
            "select xmin::text || ':' || ctid::text from {} order by company_id, external_id",
            resource.plural()
        );
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&app.db).await.unwrap();
        out.extend(rows);
    }
    out
}

#[tokio::test]
async fn a_simulated_account_of_fifty_companies_syncs_completely_and_a_resync_writes_nothing() {
    let (sim, app, id) =
        connected(SimConfig { companies: 50, jobs_per_company: 6, page_size: 100, ..SimConfig::default() }).await;
    let engine = engine(&app, &sim);
    let run = engine.sync_connection(id, false, None).await.unwrap();
    assert!(run.stats.inserted > 0 && run.record_errors.is_empty(), "{run:?}");
    assert_converged(&app, &sim).await;
    let companies: i64 =
        sqlx::query_scalar("select count(*) from companies where external_id <> ''").fetch_one(&app.db).await.unwrap();
    assert_eq!(companies, 50, "one company per customer, and the account scope beside them");

    let before = row_versions(&app).await;
    let again = engine.sync_connection(id, false, None).await.unwrap();
    assert_eq!((again.stats.inserted, again.stats.updated, again.stats.deleted), (0, 0, 0), "{again:?}");
    assert_eq!(row_versions(&app).await, before, "an unchanged re-sync rewrote rows");
    let full = engine.sync_connection(id, true, None).await.unwrap();
    assert_eq!((full.stats.inserted, full.stats.updated, full.stats.deleted), (0, 0, 0), "{full:?}");
    assert_eq!(row_versions(&app).await, before, "an unchanged full scan rewrote rows");

    let runs: Vec<(String, i64)> =
        sqlx::query_as("select status, fetched from sync_runs order by id").fetch_all(&app.db).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|(status, fetched)| status == "succeeded" && *fetched > 0));
}

#[tokio::test]
async fn incremental_sync_converges_after_creates_updates_soft_deletes_and_a_job_moving_company() {
    let (sim, app, id) =
        connected(SimConfig { companies: 6, jobs_per_company: 5, page_size: 10, ..SimConfig::default() }).await;
    let engine = engine(&app, &sim);
    engine.sync_connection(id, false, None).await.unwrap();
    let s = &sim.sim;
    let companies = s.records("company");
    let (a, b) = (companies[0]["uuid"].as_str().unwrap().to_owned(), companies[1]["uuid"].as_str().unwrap().to_owned());
    let jobs_of = |c: &str| s.records("job").into_iter().filter(|j| j["company_uuid"] == json!(c)).collect::<Vec<_>>();
    let moving = jobs_of(&a)[0]["uuid"].as_str().unwrap().to_owned();
    let updated = jobs_of(&a)[1]["uuid"].as_str().unwrap().to_owned();
    let deleted = jobs_of(&b)[0]["uuid"].as_str().unwrap().to_owned();

    s.put(
        "job",
        json!({"uuid": "new-job-1", "status": "Quote", "company_uuid": a, "generated_job_id": "9001",
        "invoice_sent": 0, "payment_received": 0, "total_invoice_amount": "0.00"}),
    );
    s.put(
        "jobmaterial",
        json!({"uuid": "new-mat-1", "job_uuid": moving, "name": "Valve", "quantity": "1", "price": "9.99"}),
    );
    s.modify(
        "job",
        &updated,
        json!({"status": "Completed", "invoice_sent": 1, "invoice_sent_stamp": "2026-11-01 10:00:00"}),
    );
    s.modify("job", &deleted, json!({"active": 0}));
    s.modify("job", &moving, json!({"company_uuid": b}));
    s.modify(
        "companycontact",
        s.records("companycontact")[0]["uuid"].as_str().unwrap(),
        json!({"email": "new@example.com"}),
    );

    let run = engine.sync_connection(id, false, None).await.unwrap();
    assert!(run.stats.inserted >= 2 && run.stats.updated >= 2 && run.stats.deleted >= 1, "{run:?}");
    assert_converged(&app, &sim).await;

    // The moved job and everything on it left company A's partition.
    let in_company = |table: &'static str, company: String, column: &'static str, value: String| {
        let db = app.db.clone();
        async move {
            let sql = format!(
                "select count(*) from {table} t join companies c on c.id = t.company_id where c.external_id = $1 and t.{column} = $2"
            );
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .bind(company)
                .bind(value)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(in_company("jobs", a.clone(), "external_id", moving.clone()).await, 0);
    assert_eq!(in_company("line_items", a.clone(), "job_id", moving.clone()).await, 0);
    assert_eq!(in_company("jobs", b.clone(), "external_id", moving.clone()).await, 1);
    assert!(in_company("line_items", b.clone(), "job_id", moving.clone()).await >= 2);
    // The soft delete is a tombstone, not a removal.
    let tombstone: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select deleted_at from jobs where external_id = $1")
            .bind(&deleted)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(tombstone.is_some());
}

#[tokio::test]
async fn a_full_reconciliation_tombstones_hard_deletes_but_never_on_an_incomplete_scan() {
    let (sim, app, id) =
        connected(SimConfig { companies: 4, jobs_per_company: 5, page_size: 5, ..SimConfig::default() }).await;
    let engine = engine(&app, &sim);
    engine.sync_connection(id, false, None).await.unwrap();
    let gone = sim.sim.records("job")[3]["uuid"].as_str().unwrap().to_owned();
    // A hard delete at the provider takes the job's materials, payments, files and bookings with it.
    assert!(sim.sim.hard_delete("job", &gone));
    for object in ["jobmaterial", "jobpayment", "attachment", "jobactivity"] {
        let key = if object == "attachment" { "related_object_uuid" } else { "job_uuid" };
        for child in sim.sim.records(object).iter().filter(|r| r[key] == json!(gone)) {
            sim.sim.hard_delete(object, child["uuid"].as_str().unwrap());
        }
    }
    let live = |app: &TestApp, gone: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, bool>("select deleted_at is null from jobs where external_id = $1")
                .bind(gone)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    engine.sync_connection(id, false, None).await.unwrap();
    assert!(live(&app, gone.clone()).await, "an incremental scan cannot see a hard delete");

    // A full scan that fails part-way (a non-retryable error on the job stream) deletes nothing.
    sim.sim.schedule_fault(4, Fault::ServerError(400));
    let failed = engine.sync_connection(id, true, None).await;
    assert!(matches!(failed, Err(SyncError::Provider(_))), "{failed:?}");
    assert!(live(&app, gone.clone()).await, "an incomplete scan must not conclude anything is gone");
    let status: String =
        sqlx::query_scalar("select status from sync_runs order by id desc limit 1").fetch_one(&app.db).await.unwrap();
    assert_eq!(status, "failed");

    let run = engine.sync_connection(id, true, None).await.unwrap();
    assert!(run.stats.deleted >= 1);
    assert!(!live(&app, gone.clone()).await, "the completed full scan tombstoned the hard delete");
    assert_converged(&app, &sim).await;
}

#[tokio::test]
async fn two_workers_never_sync_the_same_connection_at_once() {
    let (sim, app, id) =
        connected(SimConfig { companies: 3, jobs_per_company: 3, page_size: 3, ..SimConfig::default() }).await;
    sim.sim.set_knobs(FaultKnobs { latency: Duration::from_millis(30), ..FaultKnobs::default() });
    let (one, two) = (engine(&app, &sim), engine(&app, &sim));
    let (first, second) = tokio::join!(one.sync_connection(id, false, None), two.sync_connection(id, false, None));
    let busy = [&first, &second].iter().filter(|r| matches!(r, Err(SyncError::Busy))).count();
    let ok = [&first, &second].iter().filter(|r| r.is_ok()).count();
    assert_eq!((busy, ok), (1, 1), "{first:?} {second:?}");
    // Once released, the other worker can run.
    sim.sim.set_knobs(FaultKnobs::default());
    two.sync_connection(id, false, None).await.unwrap();
    assert_converged(&app, &sim).await;
}

#[tokio::test]
async fn page_commits_wait_their_turn_behind_a_write_holding_the_connection() {
    let (sim, app, id) = connected(SimConfig { companies: 3, jobs_per_company: 3, ..SimConfig::default() }).await;
    let engine = engine(&app, &sim);
    // A write's read-back holds the connection's lock (as `writes` does) ...
    let mut write = app.db.begin().await.unwrap();
    mirror::lock_connection(&mut write, id).await.unwrap();
    let sync = tokio::spawn(async move { engine.sync_connection(id, false, None).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // ... so no page has committed: `change_seq` values commit in the order they are drawn.
    let rows: i64 = sqlx::query_scalar("select count(*) from clients").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 0);
    assert!(!sync.is_finished());
    write.commit().await.unwrap();
    sync.await.unwrap().unwrap();
    assert_converged(&app, &sim).await;
}

#[tokio::test]
async fn injected_faults_at_the_first_a_middle_and_the_last_page_lose_and_duplicate_nothing() {
    // Eighteen trials share one simulator: lift its per-minute limit, which is not under test here.
    let config = SimConfig {
        companies: 4,
        jobs_per_company: 4,
        page_size: 6,
        per_minute_limit: 100_000,
        ..SimConfig::default()
    };
    let sim = spawn_sim(config).await;
    // How many API calls one clean full sync makes.
    let calls = {
        let app = spawn_app_for(&sim).await;
        let token = admin_token(&app, "ops@example.com", "acme").await;
        let id = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
        let before = sim.sim.stats().api_requests;
        engine(&app, &sim).sync_connection(id, false, None).await.unwrap();
        sim.sim.stats().api_requests - before
    };
    assert!(calls >= 6, "the sync should span several pages ({calls})");
    let faults = [
        Fault::TooManyRequests { retry_after_secs: Some(1), text_body: false },
        Fault::TooManyRequests { retry_after_secs: None, text_body: true },
        Fault::ServerError(503),
        Fault::Truncated,
        Fault::ExpiredToken,
        Fault::Delay(Duration::from_secs(3)),
    ];
    for fault in faults {
        for at in [1, calls / 2, calls] {
            let app = spawn_app_for(&sim).await;
            let token = admin_token(&app, "ops@example.com", "acme").await;
            let id = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
            sim.sim.schedule_fault(at, fault.clone());
            let run = engine(&app, &sim).sync_connection(id, false, None).await;
            assert!(run.is_ok(), "{fault:?} at call {at}: {run:?}");
            assert_converged(&app, &sim).await;
        }
    }
}

#[tokio::test]
async fn a_sync_process_killed_at_random_points_resumes_and_converges_exactly() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use rand::Rng;

    let config = SimConfig {
        companies: 8,
        jobs_per_company: 8,
        page_size: 5,
        per_minute_limit: 100_000,
        faults: FaultKnobs { latency: Duration::from_millis(10), ..FaultKnobs::default() },
        ..SimConfig::default()
    };
    let (sim, app, id) = connected(config).await;
    let sim_config = sim.sim.config().clone();
    let database_url = app.state.config.database_url.as_ref().unwrap().expose().clone();
    let (api, oauth) = (sim.api_url(), sim.oauth_url());
    let envs = [
        ("DATABASE_URL", database_url.as_str()),
        ("CLIENTAPI_SECRET_KEY", crate::helpers::TEST_MASTER_KEY),
        ("CLIENTAPI_SERVICEM8_API_URL", api.as_str()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", oauth.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", sim_config.client_id.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", sim_config.client_secret.as_str()),
    ];
    let id_arg = id.0.to_string();
    let mut finished = 0;
    for trial in 0..20 {
        // The provider keeps changing between (and during) runs.
        let jobs = sim.sim.records("job");
        let companies = sim.sim.records("company");
        let (job, company) = {
            let mut rng = rand::rng();
            (
                jobs[rng.random_range(0..jobs.len())]["uuid"].as_str().unwrap().to_owned(),
                companies[rng.random_range(0..companies.len())]["uuid"].as_str().unwrap().to_owned(),
            )
        };
        sim.sim.modify("job", &job, json!({"company_uuid": company, "job_description": format!("trial {trial}")}));

        let mut child = crate::helpers::clientapi(&["connection", "sync", &id_arg], &envs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = rand::rng().random_range(20..900);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().unwrap();
        // A killed worker's lease would expire by itself after LEASE; the test does not wait.
        sqlx::query("update connections set sync_lease_owner = null, sync_lease_until = null")
            .execute(&app.db)
            .await
            .unwrap();
    }
    assert!(finished < 20, "no trial was interrupted mid-sync; the kills proved nothing");
    engine(&app, &sim).sync_connection(id, false, None).await.unwrap();
    assert_converged(&app, &sim).await;
    let (killed, succeeded): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'running'), count(*) filter (where status = 'succeeded') from sync_runs",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(killed > 0 && succeeded > 0, "killed runs {killed}, succeeded {succeeded}");
}

#[tokio::test]
async fn the_scheduler_runs_each_connections_sync_on_its_cron_schedule() {
    let (sim, app, id) = connected(SimConfig { companies: 2, jobs_per_company: 2, ..SimConfig::default() }).await;
    sqlx::query("update connections set sync_schedule = '*/1 * * * * *' where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let scheduler = tokio::spawn(clientapi_sync::scheduler::run(
        engine(&app, &sim),
        app.db.clone(),
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let mut runs = 0;
    for _ in 0..100 {
        runs = sqlx::query_scalar::<_, i64>(
            "select count(*) from sync_runs where status = 'succeeded' and kind = 'incremental'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if runs >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    scheduler.await.unwrap().unwrap();
    assert!(runs >= 2, "the every-second schedule ran {runs} times");
    assert_converged(&app, &sim).await;
}

#[tokio::test]
async fn row_level_security_shows_the_reader_role_only_the_company_set_for_its_transaction() {
    let (sim, app, id) = connected(SimConfig { companies: 3, jobs_per_company: 4, ..SimConfig::default() }).await;
    engine(&app, &sim).sync_connection(id, false, None).await.unwrap();
    let (company, total): (i64, i64) =
        sqlx::query_as("select (select min(company_id) from jobs), (select count(*) from jobs)")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let own: i64 = sqlx::query_scalar("select count(*) from jobs where company_id = $1")
        .bind(company)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(own > 0 && own < total);

    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("set local role clientapi_reader").execute(&mut *tx).await.unwrap();
    for resource in Resource::ALL {
        let sql = format!("select count(*) from {}", resource.plural());
        let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(seen, 0, "{resource}: a reader with no company set must see nothing");
    }
    sqlx::query("select set_config('clientapi.company_id', $1, true)")
        .bind(company.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&mut *tx).await.unwrap();
    assert_eq!(seen, own, "the reader sees exactly its company's jobs");
    let foreign: i64 = sqlx::query_scalar("select count(*) from jobs where company_id <> $1")
        .bind(company)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(foreign, 0, "even asking for other companies returns nothing");
    let write = sqlx::query("delete from jobs").execute(&mut *tx).await;
    assert!(write.is_err(), "the reader role cannot write");
}

/// Applies `records` as one page commit does: one transaction, under the connection's lock.
async fn apply_page(
    app: &TestApp,
    id: ConnectionId,
    records: Vec<clientapi_schema::model::Record>,
    expect: &mut mirror::Expectation,
) -> mirror::ApplyStats {
    let mut tx = app.db.begin().await.unwrap();
    mirror::lock_connection(&mut tx, id).await.unwrap();
    let stats = mirror::apply(&mut tx, id, &mirror::stage(records), expect).await.unwrap();
    tx.commit().await.unwrap();
    stats
}

#[tokio::test]
async fn a_batch_expected_to_be_new_that_holds_known_records_is_applied_the_careful_way() {
    let (sim, app, id) = connected(SimConfig { companies: 3, jobs_per_company: 3, ..SimConfig::default() }).await;
    let s = &sim.sim;
    let job = |n: usize| job_record(&s.records("job")[n]);
    let other_company = |record: &clientapi_schema::model::Record| {
        s.records("company")
            .iter()
            .map(|c| c["uuid"].as_str().unwrap().to_owned())
            .find(|c| record.owner != Owner::Company(c.clone()))
            .unwrap()
    };
    let where_is = |external_id: String| {
        let db = app.db.clone();
        async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "select c.external_id, (select count(*) from mirror_keys k where k.external_id = j.external_id
                                         and k.company_id = j.company_id)
                 from jobs j join companies c on c.id = j.company_id where j.external_id = $1",
            )
            .bind(external_id)
            .fetch_all(&db)
            .await
            .unwrap();
            rows
        }
    };
    let mut expect = mirror::Expectation::default();

    // A batch new to the mirror teaches the next one to expect new records.
    let stats = apply_page(&app, id, vec![job(0), job(1)], &mut expect).await;
    assert_eq!((stats.inserted, stats.updated), (2, 0));
    assert!(expect.expects_new(Resource::Job));

    // The next holds a known job, moved to another company and changed, beside a new one: the
    // optimistic registration meets the known key, is undone, and the batch is looked up.
    let mut changed = s.records("job")[0].clone();
    changed["job_description"] = json!("moved and changed");
    let mut moved = job_record(&changed);
    let company = other_company(&moved);
    moved.owner = Owner::Company(company.clone());
    let stats = apply_page(&app, id, vec![moved.clone(), job(2)], &mut expect).await;
    assert_eq!((stats.inserted, stats.updated, stats.unchanged), (1, 1, 0), "{stats:?}");
    assert!(!expect.expects_new(Resource::Job));
    assert_eq!(where_is(moved.external_id.clone()).await, vec![(company, 1)], "moved once, registry in step");
    assert_eq!(where_is(job(2).external_id).await.len(), 1);

    // New again, then an unchanged known job: it is found, and nothing is rewritten.
    let stats = apply_page(&app, id, vec![job(3)], &mut expect).await;
    assert_eq!(stats.inserted, 1);
    assert!(expect.expects_new(Resource::Job));
    let before = row_versions(&app).await;
    let stats = apply_page(&app, id, vec![job(1)], &mut expect).await;
    assert_eq!((stats.inserted, stats.updated, stats.unchanged), (0, 0, 1), "{stats:?}");
    assert_eq!(row_versions(&app).await, before, "an unchanged record was rewritten");

    // The registry holds each mirrored job once, where it is.
    let (keys, rows): (i64, i64) =
        sqlx::query_as("select (select count(*) from mirror_keys where resource = 'job'), (select count(*) from jobs)")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((keys, rows), (4, 4));

    // A deleted connection takes its keys with it (a statement trigger, not a per-row check).
    sqlx::query("delete from connections where id = $1").bind(id).execute(&app.db).await.unwrap();
    let keys: i64 = sqlx::query_scalar("select count(*) from mirror_keys").fetch_one(&app.db).await.unwrap();
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn a_page_split_across_lanes_is_dealt_again_when_a_job_moves_under_it() {
    let (sim, app, id) = connected(SimConfig { companies: 3, jobs_per_company: 3, ..SimConfig::default() }).await;
    engine(&app, &sim).sync_connection(id, false, None).await.unwrap();
    let s = &sim.sim;
    let items: Vec<Value> = s.records("jobmaterial");
    let job_id = items[0]["job_uuid"].as_str().unwrap().to_owned();
    let mut job_value = s.record("job", &job_id).unwrap();
    let old = match &job_record(&job_value).owner {
        Owner::Company(c) => c.clone(),
        other => panic!("a job owned by {other:?}"),
    };
    let new = s.records("company").iter().map(|c| c["uuid"].as_str().unwrap().to_owned()).find(|c| *c != old).unwrap();
    let page = |name: &str| {
        let mut items = items.clone();
        items[0]["name"] = json!(name);
        let records = items.iter().map(|raw| mapped(raw, |o| mapping::line_item(o, "AUD")).unwrap().unwrap());
        mirror::stage(records.collect())
    };
    // A page of every line item, over three companies, is dealt into two lanes; the jobs it
    // looked up are remembered.
    let mut known = mirror::Known::default();
    let staged = page("first");
    let mut conn = app.db.acquire().await.unwrap();
    let prepared = mirror::prepare(&mut conn, id, &staged, 2, &mut known).await.unwrap();
    assert_eq!(prepared.lanes(), 2);
    assert!(!prepared.is_empty(0) && !prepared.is_empty(1));

    // A write moves the job to another company before the lanes write ...
    job_value["company_uuid"] = json!(new);
    let job = job_record(&job_value);
    assert_eq!(job.owner, Owner::Company(new.clone()));
    apply_page(&app, id, vec![job], &mut mirror::Expectation::default()).await;

    // ... so neither lane writes what was dealt to the job's old company.
    let written = apply_lanes(&app, id, &prepared).await;
    assert_eq!(written.len(), 2);
    assert!(written.iter().all(Option::is_none), "{written:?}");

    // Dealt again, the remembered owners are forgotten: the line item goes where its job is now.
    let staged = page("second");
    let prepared = mirror::prepare(&mut conn, id, &staged, 2, &mut known).await.unwrap();
    let written = apply_lanes(&app, id, &prepared).await;
    assert!(written.iter().all(Option::is_some), "{written:?}");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select c.external_id, l.remote_data->>'name' from line_items l join companies c on c.id = l.company_id
         where l.external_id = $1",
    )
    .bind(items[0]["uuid"].as_str().unwrap())
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, vec![(new, "second".to_owned())]);
    let (items_mirrored, distinct): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct external_id) from line_items")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((items_mirrored, distinct), (items.len() as i64, items.len() as i64));
}

/// Writes each non-empty lane of `prepared` in a transaction of its own, as the engine does.
async fn apply_lanes(
    app: &TestApp,
    id: ConnectionId,
    prepared: &mirror::Prepared<'_>,
) -> Vec<Option<mirror::ApplyStats>> {
    let mut written = Vec::new();
    for lane in (0..prepared.lanes()).filter(|lane| !prepared.is_empty(*lane)) {
        let mut tx = app.db.begin().await.unwrap();
        let stats = mirror::apply_lane(&mut tx, id, prepared, lane, &mut mirror::Expectation::default()).await.unwrap();
        tx.commit().await.unwrap();
        written.push(stats);
    }
    written
}
