//! What only Jobber has: rotating refresh tokens raced by many callers, the query-cost bucket,
//! jobs read newest first down to the watermark, nested connections longer than a page, the
//! pinned API version and its warning, and money sent as floats.

use std::sync::Arc;

use clientapi_schema::ConnectionId;
use clientapi_sync::jobber::{Jobber, JobberConfig};
use clientapi_sync::simulator::jobber::{Running, SimConfig};

use serde_json::json;

use crate::endpoints::{create_endpoint, every_scope};
use crate::helpers::{TestApp, admin_token, connect_provider, spawn_app_for_jobber, spawn_jobber};

/// A Jobber adapter nobody calls: for engines built for the ServiceM8 tests.
pub fn unused_adapter() -> Arc<Jobber> {
    Arc::new(Jobber::new(JobberConfig::new(
        "http://127.0.0.1:9/api/graphql".parse().unwrap(),
        "http://127.0.0.1:9/api/oauth".parse().unwrap(),
        None,
        None,
    )))
}

async fn connected(config: SimConfig) -> (Running, TestApp, ConnectionId) {
    let sim = spawn_jobber(config).await;
    let app = spawn_app_for_jobber(&sim, &[]).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_provider(&app, &token, "jobber").await["id"].as_i64().unwrap());
    (sim, app, id)
}

#[tokio::test]
async fn fifty_callers_on_an_expiring_token_cause_one_refresh_and_the_rotated_token_is_stored_first() {
    let (sim, app, id) = connected(SimConfig { clients: 2, ..SimConfig::default() }).await;
    let provider: Arc<dyn clientapi_sync::provider::Provider> = app.state.providers.jobber.clone();
    // The stored access token is about to expire.
    sqlx::query("update connections set token_expires_at = now() + interval '10 seconds' where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let before = sim.sim.stats();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (tokens, provider) = (app.state.tokens.clone(), provider.clone());
            tokio::spawn(async move { tokens.access_token(provider.as_ref(), id).await.unwrap().expose().clone() })
        })
        .collect();
    let mut handed_out = std::collections::BTreeSet::new();
    for task in tasks {
        handed_out.insert(task.await.unwrap());
    }
    let after = sim.sim.stats();
    assert_eq!(after.refresh_attempts - before.refresh_attempts, 1, "exactly one refresh");
    assert_eq!(handed_out.len(), 1, "every caller got the same new token");
    // The rotated refresh token was committed: the next refresh (with whatever is stored) works,
    // which it could not if the old, now dead, token were still stored.
    sqlx::query("update connections set token_expires_at = now() where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.state.tokens.access_token(provider.as_ref(), id).await.unwrap();
    assert_eq!(sim.sim.stats().refreshes - after.refreshes, 1);
    let run = app.state.engine.sync_connection(id, false, None).await.unwrap();
    assert!(run.fetched > 0);
}

#[tokio::test]
async fn a_refresh_whose_commit_was_lost_leaves_a_connection_marked_needs_reauth_with_its_reason_not_a_loop() {
    let (sim, app, id) = connected(SimConfig { clients: 2, ..SimConfig::default() }).await;
    let provider: Arc<dyn clientapi_sync::provider::Provider> = app.state.providers.jobber.clone();
    // A process refreshed (rotating the refresh token at Jobber) and died before committing:
    // what is stored is the dead token.
    let sealed: Vec<u8> = sqlx::query_scalar("select refresh_token_enc from connections where id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let stored =
        app.state.tokens.cipher().decrypt(&sealed, &clientapi_sync::crypto::token_aad(id.0, "refresh")).unwrap();
    provider.refresh(&stored).await.unwrap();
    sqlx::query("update connections set token_expires_at = now() where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let before = sim.sim.stats().refresh_attempts;
    let run = app.state.engine.sync_connection(id, false, None).await;
    assert!(run.is_err(), "{run:?}");
    let (status, error): (String, Option<String>) =
        sqlx::query_as("select status, last_error from connections where id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "needs_reauth");
    assert!(error.unwrap_or_default().contains("refresh"), "the reason names the refused refresh");
    // Later syncs do not try again and again.
    let _ = app.state.engine.sync_connection(id, false, None).await;
    let _ = app.state.engine.sync_connection(id, false, None).await;
    assert_eq!(sim.sim.stats().refresh_attempts - before, 1, "one refused refresh, then no more attempts");
}

#[tokio::test]
async fn a_sync_paces_itself_to_the_cost_bucket_and_is_never_throttled() {
    // A small bucket, so the pacing shows within a test: the same arithmetic as Jobber's 10,000
    // points at 500/s (the bench runs that one).
    let config = SimConfig {
        clients: 60,
        jobs_per_client: 3,
        bucket_maximum: 6_000.0,
        restore_rate: 4_000.0,
        ..SimConfig::default()
    };
    let (sim, app, id) = connected(config).await;
    let started = std::time::Instant::now();
    let run = app.state.engine.sync_connection(id, false, None).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    let stats = sim.sim.stats();
    assert_eq!(stats.throttled, 0, "no THROTTLED answer");
    assert!(stats.cost as f64 > 6_000.0 * 2.0, "the sync must cost several buckets ({})", stats.cost);
    let allowed = (stats.cost as f64 - 6_000.0) / 4_000.0;
    let counters = app.state.providers.jobber.counters();
    assert!(counters.paced_ms > 0, "the adapter waited for the bucket");
    eprintln!(
        "jobber throttle: {} records, {} points, {took:.2}s against {allowed:.2}s the bucket allows ({:.0}%), paced {} ms",
        run.fetched,
        stats.cost,
        100.0 * took / allowed,
        counters.paced_ms
    );
}

#[tokio::test]
async fn jobs_are_read_newest_first_down_to_the_watermark_and_long_nested_lists_are_read_to_their_end() {
    let config = SimConfig {
        clients: 10,
        jobs_per_client: 15,
        line_items_per_job: 14,
        // Every webhook is lost: the sync alone brings the change.
        webhooks: clientapi_sync::simulator::webhooks::WebhookKnobs { drop: 1.0, ..Default::default() },
        ..SimConfig::default()
    };
    let (sim, app, id) = connected(config).await;
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    // A job with more line items than a page of its nested connection.
    let long = sim.sim.records("jobs").into_iter().find(|j| j["lineItems"].as_array().unwrap().len() > 10).unwrap();
    let job_id = long["id"].as_str().unwrap().to_owned();
    let mirrored: i64 = sqlx::query_scalar("select count(*) from line_items where job_id = $1 and deleted_at is null")
        .bind(&job_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(mirrored, long["lineItems"].as_array().unwrap().len() as i64);

    // A new line item bumps its job; the incremental run reads only the newest jobs.
    assert!(sim.sim.modify_nested(
        "jobs",
        &job_id,
        "lineItems",
        "bmV3LWxpbmUtaXRlbQ==",
        Some(serde_json::json!({"name": "Added", "quantity": 2.0, "unitPrice": 0.1, "totalPrice": 0.2}))
    ));
    let before = sim.sim.stats().api_requests;
    let run = app.state.engine.sync_connection(id, false, None).await.unwrap();
    let requests = sim.sim.stats().api_requests - before;
    assert!(run.stats.inserted >= 1, "{run:?}");
    assert!(requests <= 6, "one page per stream, the long job's nested pages: {requests} requests");
    // Money arrived as floats and is stored as the exact decimal sent.
    let total: String =
        sqlx::query_scalar("select total::text from line_items where external_id = 'bmV3LWxpbmUtaXRlbQ=='")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(total, "0.2000", "numeric(18, 4) of the exact 0.2");
}

#[tokio::test]
async fn the_pinned_version_is_sent_and_a_deprecation_warning_is_kept() {
    let sim = spawn_jobber(SimConfig { clients: 2, ..SimConfig::default() }).await;
    // Pinned to the simulator's oldest version, which it warns is going away.
    let app = spawn_app_for_jobber(&sim, &[("CLIENTAPI_JOBBER_GRAPHQL_VERSION", "2025-01-20")]).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_provider(&app, &token, "jobber").await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    let warning = app.state.providers.jobber.version_warning().expect("a warning");
    assert!(warning.contains("2025-01-20"), "{warning}");
    // … and shown with the run, in the admin API's sync status.
    let status = crate::helpers::get_json(&app, &format!("/api/admin/connections/{}", id.0), &token).await;
    let notices = &status["sync"]["recent_runs"][0]["notices"];
    assert!(notices[0].as_str().is_some_and(|n| n.contains("2025-01-20") && n.contains("deprecated")), "{status}");
    // A version that is not a date is refused at start-up.
    let env = std::collections::HashMap::from([("CLIENTAPI_JOBBER_GRAPHQL_VERSION".to_owned(), "latest".to_owned())]);
    let bad = clientapi::config::Config::load(None, &env).unwrap_err().to_string();
    assert!(bad.contains("CLIENTAPI_JOBBER_GRAPHQL_VERSION"), "{bad}");
}

#[tokio::test]
async fn writes_become_jobber_mutations_read_back_at_once_and_what_jobber_refuses_is_a_422_in_its_words() {
    let sim = spawn_jobber(SimConfig { clients: 3, ..SimConfig::default() }).await;
    let app = spawn_app_for_jobber(&sim, &[]).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_provider(&app, &token, "jobber").await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    let client = sim.sim.records("clients")[0].clone();
    let company = client["id"].as_str().unwrap().to_owned();
    let (ep, key) =
        create_endpoint(&app, &token, id, &company, json!({"access": "read_write", "scopes": every_scope()})).await;
    let send = |method, path: String, body| crate::helpers::send_as(&app, &ep, &key, method, path, body);

    // A job: created at the client's first property, read back at once.
    let (status, created) = send(
        reqwest::Method::POST,
        "/jobs".into(),
        Some(json!({"status": "Work Order", "description": "Fix the gate"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let job = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["client_id"], company.as_str());
    let at_jobber = sim.sim.record("jobs", &job).expect("created at Jobber");
    assert_eq!(at_jobber["title"], "Fix the gate");
    assert_eq!(at_jobber["property"]["id"], client["properties"][0]["id"]);
    let (status, read) = send(reqwest::Method::GET, format!("/jobs/{job}"), None).await;
    assert_eq!((status, &read["data"]["description"]), (200, &json!("Fix the gate")));

    let (status, updated) =
        send(reqwest::Method::PATCH, format!("/jobs/{job}"), Some(json!({"description": "Fix the gate and fence"})))
            .await;
    assert_eq!((status, &updated["data"]["description"]), (200, &json!("Fix the gate and fence")), "{updated}");

    // A line item: Jobber recomputes the job's total; both are read back.
    let (status, item) = send(
        reqwest::Method::POST,
        "/line_items".into(),
        Some(json!({"job_id": job, "name": "Hinge", "quantity": "2", "unit_price": "12.55"})),
    )
    .await;
    assert_eq!(status, 201, "{item}");
    assert_eq!(item["data"]["job_id"], job.as_str());
    let (_, read) = send(reqwest::Method::GET, format!("/jobs/{job}"), None).await;
    assert_eq!(read["data"]["total"], "25.10", "{read}");

    // The client itself.
    let (status, renamed) =
        send(reqwest::Method::PATCH, format!("/clients/{company}"), Some(json!({"name": "Renamed Through The API"})))
            .await;
    assert_eq!((status, &renamed["data"]["name"]), (200, &json!("Renamed Through The API")), "{renamed}");
    assert_eq!(sim.sim.record("clients", &company).unwrap()["companyName"], "Renamed Through The API");

    // What Jobber cannot store is refused before anything is sent, naming it.
    let before = sim.sim.stats().api_requests;
    let (status, refused) =
        send(reqwest::Method::PATCH, format!("/clients/{company}"), Some(json!({"website": "https://x.test"}))).await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("website"), "{refused}");
    let (status, refused) = send(reqwest::Method::POST, "/contacts".into(), Some(json!({"first_name": "Ann"}))).await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("contacts"), "{refused}");
    let (status, refused) = send(reqwest::Method::POST, "/clients".into(), Some(json!({"name": "Another"}))).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(sim.sim.stats().api_requests, before, "nothing was sent to Jobber");

    // Jobber's userErrors come back in its own words.
    let provider = app.state.providers.jobber.clone();
    let access = app.state.tokens.access_token(provider.as_ref(), id).await.unwrap();
    let stream =
        clientapi_sync::provider::Provider::stream_for(provider.as_ref(), clientapi_schema::model::Resource::Job)
            .unwrap();
    let error = clientapi_sync::provider::Provider::update(
        provider.as_ref(),
        &access,
        stream,
        &job,
        json!({"mutation": "jobEdit", "input": {"title": "  "}}),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("input.title: Title can't be blank"), "{error}");
}

#[tokio::test]
async fn jobber_webhooks_bring_changes_and_destroys_without_a_sync_and_forged_ones_change_nothing() {
    use std::time::Duration;

    use crate::webhooks::eventually;
    // Every callback is sent twice and out of order: duplicates and reordering change nothing.
    let webhooks =
        clientapi_sync::simulator::webhooks::WebhookKnobs { duplicate: 1.0, reorder: true, ..Default::default() };
    let sim = spawn_jobber(SimConfig { clients: 3, webhooks, ..SimConfig::default() }).await;
    let app = spawn_app_for_jobber(&sim, &[]).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_provider(&app, &token, "jobber").await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    crate::webhooks::pause_and_await_subscription(&app, &token, id).await;
    let query = |sql: &'static str, bind: String| {
        let db = app.db.clone();
        async move { sqlx::query_scalar::<_, Option<String>>(sql).bind(bind).fetch_optional(&db).await.unwrap().flatten() }
    };

    // An update at Jobber reaches the mirror through its webhook alone.
    let job = sim.sim.records("jobs")[0].clone();
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert!(sim.sim.modify("jobs", &job_id, json!({"title": "Changed at Jobber"})));
    eventually(Duration::from_secs(20), "the JOB_UPDATE to be applied", || {
        let q = query("select description from jobs where external_id = $1", job_id.clone());
        async move { q.await.as_deref() == Some("Changed at Jobber") }
    })
    .await;

    // A destroy: the job, its line items and its visits are tombstoned, without any sync.
    let children: Vec<String> = ["lineItems", "visits"]
        .iter()
        .flat_map(|f| {
            job[*f].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        })
        .collect();
    assert!(!children.is_empty());
    assert!(sim.sim.destroy("jobs", &job_id));
    eventually(Duration::from_secs(20), "the JOB_DESTROY to tombstone the job", || {
        let q = query("select deleted_at::text from jobs where external_id = $1", job_id.clone());
        async move { q.await.is_some() }
    })
    .await;
    for child in &children {
        let live: i64 = sqlx::query_scalar(
            "select (select count(*) from line_items where external_id = $1 and deleted_at is null)
                  + (select count(*) from visits where external_id = $1 and deleted_at is null)",
        )
        .bind(child)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(live, 0, "{child} went with its job");
    }
    let runs: i64 = sqlx::query_scalar("select count(*) from sync_runs").fetch_one(&app.db).await.unwrap();
    assert_eq!(runs, 1, "only the first sync ran: the webhooks did the rest");

    // A forged callback (wrong signature) for a live job: refused, nothing queued, nothing deleted.
    let other = sim.sim.records("jobs")[1]["id"].as_str().unwrap().to_owned();
    let url: String = {
        let token =
            clientapi::provider_hooks::callback_url(&app.state, id, clientapi_sync::provider::ProviderKind::Jobber)
                .await
                .unwrap();
        token.to_string()
    };
    let body = json!({"data": {"webHookEvent": {"topic": "JOB_DESTROY", "itemId": other}}}).to_string();
    let forged = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-jobber-hmac-sha256", clientapi_sync::jobber::webhooks::sign("not the secret", body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let unsigned = app.client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(unsigned.status(), 400);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(query("select deleted_at::text from jobs where external_id = $1", other).await.is_none());
    let stats = sim.sim.stats();
    assert!(stats.webhooks_sent >= 4, "{stats:?}");
}
