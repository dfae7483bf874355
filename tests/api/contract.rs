//! One contract for every provider: the same tests, run unchanged against the ServiceM8 and
//! the Jobber simulators through the same service (OAuth connect, the sync engine, the mirror,
//! REST). A provider passes when its mirror equals what the provider holds, record by record
//! and company by company, after a full sync, after creates and updates, after hard deletes
//! (found only by a complete reconciliation), and after faults at the first, a middle and the
//! last request; and when a key sees its own company only.

use std::collections::BTreeSet;

use clientapi_schema::ConnectionId;
use clientapi_schema::model::{Owner, Resource};
use clientapi_sync::jobber::mapping::{self as jm, Obj};
use clientapi_sync::simulator::servicem8::Fault;
use clientapi_sync::simulator::{jobber as jb, servicem8 as sm};
use serde_json::{Value, json};

use crate::endpoints::{create_endpoint, every_read_scope};
use crate::helpers::{
    TestApp, admin_token, connect_provider, spawn_app_for_jobber, spawn_app_for_with, spawn_jobber, spawn_sim,
};

/// A provider simulator behind the contract.
pub enum Sim {
    ServiceM8(sm::Running),
    Jobber(jb::Running),
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    ServiceM8,
    Jobber,
}

/// A connected account: the simulator, the app, an admin token and the connection.
pub struct Connected {
    pub sim: Sim,
    pub app: TestApp,
    pub token: String,
    pub id: ConnectionId,
}

/// Each provider's simulator at a size that spans several pages of every stream.
pub async fn connect(kind: Kind) -> Connected {
    let timeout = [("CLIENTAPI_PROVIDER_TIMEOUT_SECS", "5")];
    let (sim, app, provider) = match kind {
        Kind::ServiceM8 => {
            let config = sm::SimConfig {
                companies: 6,
                jobs_per_company: 5,
                sites_per_company: 1,
                page_size: 7,
                per_minute_limit: 100_000,
                ..Default::default()
            };
            let sim = spawn_sim(config).await;
            let app = spawn_app_for_with(&sim, &timeout).await;
            (Sim::ServiceM8(sim), app, "servicem8")
        }
        Kind::Jobber => {
            let sim = spawn_jobber(jb::SimConfig {
                clients: 60,
                jobs_per_client: 3,
                // The bucket's pacing has its own test; here it would only add minutes.
                restore_rate: 1_000_000.0,
                // Every webhook is lost: the contract is the sync's (webhooks have their own test).
                webhooks: clientapi_sync::simulator::webhooks::WebhookKnobs { drop: 1.0, ..Default::default() },
                ..Default::default()
            })
            .await;
            let app = spawn_app_for_jobber(&sim, &timeout).await;
            (Sim::Jobber(sim), app, "jobber")
        }
    };
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_provider(&app, &token, provider).await["id"].as_i64().unwrap());
    Connected { sim, app, token, id }
}

impl Sim {
    /// The resources this provider fills.
    pub fn resources(&self) -> Vec<Resource> {
        match self {
            Sim::ServiceM8(_) => Resource::ALL.to_vec(),
            Sim::Jobber(_) => vec![
                Resource::Client,
                Resource::Contact,
                Resource::Site,
                Resource::Job,
                Resource::LineItem,
                Resource::Visit,
                Resource::Invoice,
                Resource::Payment,
            ],
        }
    }

    /// What the mirror must hold: (id, company) of every live record, derived from the
    /// simulator's data with the adapter's own mapping.
    pub fn expected(&self, resource: Resource) -> BTreeSet<(String, String)> {
        match self {
            Sim::ServiceM8(sim) => crate::sync::expected(sim, resource).into_iter().map(|(id, c, _)| (id, c)).collect(),
            Sim::Jobber(sim) => {
                let mut out = BTreeSet::new();
                let job_client =
                    |job: &str| sim.sim.record("jobs", job).and_then(|j| j["client"]["id"].as_str().map(str::to_owned));
                for (table, rows) in [
                    ("clients", sim.sim.records("clients")),
                    ("jobs", sim.sim.records("jobs")),
                    ("invoices", sim.sim.records("invoices")),
                ] {
                    for row in rows {
                        let text = serde_json::value::to_raw_value(&row).unwrap();
                        let node = Obj::parse(&text).unwrap();
                        let records = match table {
                            "clients" => jm::client(&node),
                            "jobs" => jm::job(&node, "USD"),
                            _ => jm::invoice(&node, "USD"),
                        }
                        .unwrap();
                        for r in records.into_iter().filter(|r| r.resource() == resource && !r.deleted) {
                            let company = match &r.owner {
                                Owner::Company(c) => c.clone(),
                                Owner::Job(j) => job_client(j).unwrap(),
                                other => panic!("unexpected owner {other:?}"),
                            };
                            out.insert((r.external_id, company));
                        }
                    }
                }
                out
            }
        }
    }

    /// The customer companies, in the provider's order.
    pub fn companies(&self) -> Vec<String> {
        match self {
            Sim::ServiceM8(sim) => crate::endpoints::head_offices(sim),
            Sim::Jobber(sim) => {
                sim.sim.records("clients").iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
            }
        }
    }

    /// The jobs of one company.
    pub fn jobs_of(&self, company: &str) -> Vec<String> {
        let (rows, key): (Vec<Value>, fn(&Value) -> &Value) = match self {
            Sim::ServiceM8(sim) => (sim.sim.records("job"), |j| &j["company_uuid"]),
            Sim::Jobber(sim) => (sim.sim.records("jobs"), |j| &j["client"]["id"]),
        };
        let id = |j: &Value| j.get("uuid").or_else(|| j.get("id")).and_then(Value::as_str).unwrap().to_owned();
        rows.iter().filter(|j| key(j) == &json!(company)).map(id).collect()
    }

    /// Renames a company as a user at the provider would.
    pub fn rename(&self, company: &str, name: &str) {
        let done = match self {
            Sim::ServiceM8(sim) => sim.sim.modify("company", company, json!({"name": name})),
            Sim::Jobber(sim) => sim.sim.modify("clients", company, json!({"name": name})),
        };
        assert!(done);
    }

    /// Creates a company at the provider; returns its id.
    pub fn add_company(&self, name: &str) -> String {
        match self {
            Sim::ServiceM8(sim) => {
                let uuid = uuid::Uuid::new_v4().to_string();
                sim.sim.put("company", json!({"uuid": uuid, "name": name, "parent_company_uuid": ""}));
                uuid
            }
            Sim::Jobber(sim) => sim.sim.add_client(name),
        }
    }

    /// Changes a job as a user at the provider would.
    pub fn touch_job(&self, job: &str) {
        let done = match self {
            Sim::ServiceM8(sim) => sim.sim.modify("job", job, json!({"job_description": "changed"})),
            Sim::Jobber(sim) => sim.sim.modify("jobs", job, json!({"title": "changed"})),
        };
        assert!(done);
    }

    /// Deletes a job outright, with what it owns: no tombstone is left.
    pub fn hard_delete_job(&self, job: &str) {
        match self {
            Sim::ServiceM8(sim) => {
                assert!(sim.sim.hard_delete("job", job));
                for object in ["jobmaterial", "jobpayment", "attachment", "jobactivity"] {
                    let key = if object == "attachment" { "related_object_uuid" } else { "job_uuid" };
                    for child in sim.sim.records(object).iter().filter(|r| r[key] == json!(job)) {
                        sim.sim.hard_delete(object, child["uuid"].as_str().unwrap());
                    }
                }
            }
            Sim::Jobber(sim) => {
                assert!(sim.sim.destroy("jobs", job));
                // Its invoices go too (Jobber refuses to delete an invoiced job; the contract
                // only needs a job and what hangs off it to vanish).
                for invoice in sim.sim.records("invoices").iter().filter(|i| i["jobs"][0]["id"] == json!(job)) {
                    sim.sim.destroy("invoices", invoice["id"].as_str().unwrap());
                }
            }
        }
    }

    pub fn schedule_fault(&self, after: u64, fault: Fault) {
        match self {
            Sim::ServiceM8(sim) => sim.sim.schedule_fault(after, fault),
            Sim::Jobber(sim) => sim.sim.schedule_fault(after, fault),
        }
    }

    /// The settings that point a `clientapi` process at this simulator.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            Sim::ServiceM8(sim) => vec![
                ("CLIENTAPI_SERVICEM8_API_URL", sim.api_url()),
                ("CLIENTAPI_SERVICEM8_OAUTH_URL", sim.oauth_url()),
                ("CLIENTAPI_SERVICEM8_CLIENT_ID", sim.sim.config().client_id.clone()),
                ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", sim.sim.config().client_secret.clone()),
            ],
            Sim::Jobber(sim) => vec![
                ("CLIENTAPI_JOBBER_API_URL", sim.api_url()),
                ("CLIENTAPI_JOBBER_OAUTH_URL", sim.oauth_url()),
                ("CLIENTAPI_JOBBER_CLIENT_ID", sim.sim.config().client_id.clone()),
                ("CLIENTAPI_JOBBER_CLIENT_SECRET", sim.sim.config().client_secret.clone()),
            ],
        }
    }

    /// Every provider request waits this long (so a sync spans long enough to be killed in).
    pub fn slow_down(&self, latency: std::time::Duration) {
        let knobs = sm::FaultKnobs { latency, ..Default::default() };
        match self {
            Sim::ServiceM8(sim) => sim.sim.set_knobs(knobs),
            Sim::Jobber(sim) => sim.sim.set_knobs(knobs),
        }
    }

    pub fn api_requests(&self) -> u64 {
        match self {
            Sim::ServiceM8(sim) => sim.sim.stats().api_requests,
            Sim::Jobber(sim) => sim.sim.stats().api_requests,
        }
    }
}

async fn mirrored(app: &TestApp, resource: Resource) -> BTreeSet<(String, String)> {
    let sql = format!(
        "select t.external_id, c.external_id from {} t join companies c on c.id = t.company_id where t.deleted_at is null",
        resource.plural()
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&app.db).await.unwrap().into_iter().collect()
}

/// Mirror = provider, for every resource the provider fills, and nothing for the rest.
pub async fn assert_converged(c: &Connected) {
    let filled = c.sim.resources();
    for resource in Resource::ALL {
        let have = mirrored(&c.app, resource).await;
        if filled.contains(&resource) {
            let want = c.sim.expected(resource);
            assert!(!want.is_empty(), "{resource}: the simulator should hold some");
            assert_eq!(have.len(), want.len(), "{resource}: count");
            assert!(have == want, "{resource}: the mirror differs from the provider");
        } else {
            assert!(have.is_empty(), "{resource}: nothing to mirror, yet {} rows", have.len());
        }
    }
}

async fn sync(c: &Connected, full: bool) -> clientapi_sync::engine::RunSummary {
    c.app.state.engine.sync_connection(c.id, full, None).await.unwrap()
}

pub async fn full_sync_is_exact_and_a_resync_writes_nothing(kind: Kind) {
    let c = connect(kind).await;
    let run = sync(&c, false).await;
    assert!(run.stats.inserted > 0 && run.record_errors.is_empty(), "{run:?}");
    assert!(run.pages >= 6, "several pages per stream ({} pages)", run.pages);
    assert_converged(&c).await;
    let again = sync(&c, false).await;
    assert_eq!((again.stats.inserted, again.stats.updated, again.stats.deleted), (0, 0, 0), "{again:?}");
    let full = sync(&c, true).await;
    assert_eq!((full.stats.inserted, full.stats.updated, full.stats.deleted), (0, 0, 0), "{full:?}");
    assert_converged(&c).await;
}

pub async fn incremental_sync_converges_after_creates_and_updates(kind: Kind) {
    let c = connect(kind).await;
    sync(&c, false).await;
    let companies = c.sim.companies();
    c.sim.rename(&companies[1], "Renamed Ltd");
    let job = c.sim.jobs_of(&companies[2])[0].clone();
    c.sim.touch_job(&job);
    let added = c.sim.add_company("Brand New Co");
    let before = c.sim.api_requests();
    let run = sync(&c, false).await;
    let requests = c.sim.api_requests() - before;
    // (ServiceM8's webhooks may have applied some of it already: the run's counts vary; the
    // mirror may not.)
    assert!(run.record_errors.is_empty(), "{run:?}");
    assert_converged(&c).await;
    let description: Option<String> = sqlx::query_scalar("select description from jobs where external_id = $1")
        .bind(&job)
        .fetch_one(&c.app.db)
        .await
        .unwrap();
    assert_eq!(description.as_deref(), Some("changed"));
    let name: String = sqlx::query_scalar("select name from clients where external_id = $1")
        .bind(&companies[1])
        .fetch_one(&c.app.db)
        .await
        .unwrap();
    assert_eq!(name, "Renamed Ltd");
    let added_rows: i64 = sqlx::query_scalar("select count(*) from clients where external_id = $1")
        .bind(&added)
        .fetch_one(&c.app.db)
        .await
        .unwrap();
    assert_eq!(added_rows, 1);
    // Incremental means fewer requests than a full read.
    let before = c.sim.api_requests();
    sync(&c, true).await;
    let full_requests = c.sim.api_requests() - before;
    assert!(requests < full_requests, "incremental {requests} requests, full {full_requests}");
}

pub async fn reconciliation_finds_hard_deletes_only_on_a_complete_scan(kind: Kind) {
    let c = connect(kind).await;
    sync(&c, false).await;
    let companies = c.sim.companies();
    let gone = c.sim.jobs_of(&companies[3])[0].clone();
    c.sim.hard_delete_job(&gone);
    let live = || async {
        sqlx::query_scalar::<_, bool>("select deleted_at is null from jobs where external_id = $1")
            .bind(&gone)
            .fetch_one(&c.app.db)
            .await
            .unwrap()
    };
    sync(&c, false).await;
    assert!(live().await, "an incremental scan cannot see a hard delete");
    // A full scan that fails part-way (a refused request) deletes nothing.
    c.sim.schedule_fault(3, Fault::ServerError(400));
    let failed = c.app.state.engine.sync_connection(c.id, true, None).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(live().await, "an incomplete scan must not conclude anything is gone");
    let run = sync(&c, true).await;
    assert!(run.stats.deleted >= 1, "{run:?}");
    assert!(!live().await, "the completed full scan tombstoned the hard delete");
    assert_converged(&c).await;
}

pub async fn faults_at_the_first_a_middle_and_the_last_request_lose_nothing(kind: Kind) {
    let calls = {
        let c = connect(kind).await;
        let before = c.sim.api_requests();
        sync(&c, false).await;
        c.sim.api_requests() - before
    };
    assert!(calls >= 6, "the sync should span several requests ({calls})");
    for fault in [
        Fault::TooManyRequests { retry_after_secs: Some(1), text_body: false },
        Fault::ServerError(503),
        Fault::Truncated,
        Fault::ExpiredToken,
    ] {
        for at in [1, calls / 2, calls] {
            let c = connect(kind).await;
            c.sim.schedule_fault(at, fault.clone());
            let run = c.app.state.engine.sync_connection(c.id, false, None).await;
            assert!(run.is_ok(), "{fault:?} at request {at}: {run:?}");
            assert_converged(&c).await;
        }
    }
}

pub async fn a_key_sees_its_own_company_only(kind: Kind) {
    let c = connect(kind).await;
    sync(&c, false).await;
    let companies = c.sim.companies();
    let (mine, theirs) = (&companies[0], &companies[1]);
    let (ep, key) = create_endpoint(&c.app, &c.token, c.id, mine, json!({"scopes": every_read_scope()})).await;
    let get = |path: String| {
        let (app, key) = (&c.app, key.clone());
        async move {
            let response = app.client.get(app.url(&path)).bearer_auth(key).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let jobs = c.sim.expected(Resource::Job);
    let of = |company: &str| -> BTreeSet<String> {
        jobs.iter().filter(|(_, c)| c == company).map(|(id, _)| id.clone()).collect()
    };
    assert!(!of(mine).is_empty() && !of(theirs).is_empty());
    for job in of(theirs) {
        let (status, body) = get(format!("/api/public/{ep}/jobs/{job}")).await;
        assert_eq!(status, 404, "another company's job: {body}");
        assert!(!body.to_string().contains(theirs.as_str()), "the answer names the other company");
    }
    for resource in c.sim.resources() {
        let (status, body) = get(format!("/api/public/{ep}/{}?page_size=200", resource.plural())).await;
        assert_eq!(status, 200, "{resource}: {body}");
        let want: BTreeSet<String> = c
            .sim
            .expected(resource)
            .into_iter()
            .filter(|(_, company)| company == mine || (resource.is_account_wide() && company.is_empty()))
            .map(|(id, _)| id)
            .collect();
        let have: BTreeSet<String> =
            body["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(have, want, "{resource}: the key sees exactly its company's records");
    }
}

pub async fn a_write_is_read_back_at_once_and_never_reaches_another_company(kind: Kind) {
    let c = connect(kind).await;
    sync(&c, false).await;
    let companies = c.sim.companies();
    let (mine, theirs) = (&companies[0], &companies[1]);
    let (ep, key) = create_endpoint(
        &c.app,
        &c.token,
        c.id,
        mine,
        json!({"access": "read_write", "scopes": crate::endpoints::every_scope()}),
    )
    .await;
    let send = |method, path: String, body| crate::helpers::send_as(&c.app, &ep, &key, method, path, body);
    let status = match kind {
        Kind::ServiceM8 => "Quote",
        Kind::Jobber => "Work Order",
    };
    let (code, created) =
        send(reqwest::Method::POST, "/jobs".into(), Some(json!({"status": status, "description": "Booked"}))).await;
    assert_eq!(code, 201, "{created}");
    let job = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["client_id"], mine.as_str(), "placed under the endpoint's company");
    let (code, read) = send(reqwest::Method::GET, format!("/jobs/{job}"), None).await;
    assert_eq!((code, &read["data"]), (200, &created["data"]), "read back at once");
    let (code, changed) =
        send(reqwest::Method::PATCH, format!("/jobs/{job}"), Some(json!({"description": "Booked, then changed"})))
            .await;
    assert_eq!((code, &changed["data"]["description"]), (200, &json!("Booked, then changed")), "{changed}");
    // Another company's job cannot be changed, and the answer is the same as for no job at all.
    let theirs_job = c.sim.expected(Resource::Job).into_iter().find(|(_, company)| company == theirs).unwrap().0;
    let (code, other) =
        send(reqwest::Method::PATCH, format!("/jobs/{theirs_job}"), Some(json!({"description": "Not yours"}))).await;
    let (code_missing, missing) =
        send(reqwest::Method::PATCH, "/jobs/no-such-job".into(), Some(json!({"description": "Not yours"}))).await;
    assert_eq!((code, code_missing), (404, 404), "{other} {missing}");
    let description: Option<String> = sqlx::query_scalar("select description from jobs where external_id = $1")
        .bind(&theirs_job)
        .fetch_one(&c.app.db)
        .await
        .unwrap();
    assert_ne!(description.as_deref(), Some("Not yours"), "the other company's job is unchanged");
}

pub async fn a_sync_process_killed_part_way_resumes_and_converges(kind: Kind) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use rand::Rng;

    let c = connect(kind).await;
    c.sim.slow_down(std::time::Duration::from_millis(60));
    let database_url = c.app.state.config.database_url.as_ref().unwrap().expose().clone();
    let settings = c.sim.settings();
    let mut envs: Vec<(&str, &str)> =
        vec![("DATABASE_URL", database_url.as_str()), ("CLIENTAPI_SECRET_KEY", crate::helpers::TEST_MASTER_KEY)];
    envs.extend(settings.iter().map(|(k, v)| (*k, v.as_str())));
    let id_arg = c.id.0.to_string();
    let companies = c.sim.companies();
    // One whole run first, timed, so the kills land inside a run whatever its length (a Jobber
    // account answers in a few large queries; a fixed window let every run finish in one trial).
    let started = std::time::Instant::now();
    // Waited for off the runtime: the simulator answering it runs on this test's one thread.
    let mut whole_run = crate::helpers::clientapi(&["connection", "sync", "--full", &id_arg], &envs);
    let status = tokio::task::spawn_blocking(move || whole_run.output()).await.unwrap().unwrap();
    assert!(status.status.success(), "a whole sync run failed: {}", String::from_utf8_lossy(&status.stderr));
    let whole = started.elapsed();
    eprintln!("{kind:?}: a whole run took {whole:?}");
    let mut finished = 0;
    for trial in 0..8 {
        // The provider keeps changing between runs.
        let company = &companies[trial % companies.len()];
        if let Some(job) = c.sim.jobs_of(company).first() {
            c.sim.touch_job(job);
        }
        let mut child = crate::helpers::clientapi(&["connection", "sync", "--full", &id_arg], &envs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(whole.mul_f64(rand::rng().random_range(0.3..0.95))).await;
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().unwrap();
        // A killed worker's lease would expire by itself; the test does not wait for it.
        sqlx::query("update connections set sync_lease_owner = null, sync_lease_until = null")
            .execute(&c.app.db)
            .await
            .unwrap();
    }
    assert!(finished < 8, "no run was killed part-way; the kills proved nothing");
    sync(&c, false).await;
    assert_converged(&c).await;
    let killed: i64 = sqlx::query_scalar("select count(*) from sync_runs where status = 'running'")
        .fetch_one(&c.app.db)
        .await
        .unwrap();
    assert!(killed > 0, "some runs were killed mid-way");
}

/// Runs each contract test against each provider.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod servicem8 {
            $(#[tokio::test] async fn $test() { super::$test(super::Kind::ServiceM8).await })*
        }
        mod jobber {
            $(#[tokio::test] async fn $test() { super::$test(super::Kind::Jobber).await })*
        }
    };
}

contract!(
    full_sync_is_exact_and_a_resync_writes_nothing,
    incremental_sync_converges_after_creates_and_updates,
    reconciliation_finds_hard_deletes_only_on_a_complete_scan,
    faults_at_the_first_a_middle_and_the_last_request_lose_nothing,
    a_key_sees_its_own_company_only,
    a_write_is_read_back_at_once_and_never_reaches_another_company,
    a_sync_process_killed_part_way_resumes_and_converges,
);
