//! Events: provider webhooks in (the mirror fresh in seconds, whatever the callbacks do) and
//! customer webhooks out (per endpoint, its company only, signed, retried, logged, replayable),
//! signatures checked by the Standard Webhooks reference library from PyPI.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::{Running, SimConfig, WebhookKnobs};
use serde_json::{Value, json};

use crate::conformance::python_tool;
use crate::endpoints::{create_endpoint, head_offices};
use crate::helpers::{TestApp, admin_token, connect_servicem8, get_json, spawn_app_for_with, spawn_sim};

/// Fast retries for tests; loopback receivers allowed.
const SETTINGS: &[(&str, &str)] =
    &[("CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE", "true"), ("CLIENTAPI_WEBHOOK_RETRY_BASE_MS", "100")];

/// What a receiver does with a delivery.
const ANSWER_OK: u8 = 0;
const ANSWER_503: u8 = 1;
const ANSWER_HANG: u8 = 2;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver on loopback that records what it is sent.
#[derive(Clone, Default)]
pub struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<AtomicU8>,
    pub base: String,
}

impl Receiver {
    pub async fn spawn() -> Self {
        let mut receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        receiver.base = format!("http://{}", listener.local_addr().unwrap());
        let r = receiver.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let r = r.clone();
            async move {
                match r.answer.load(Ordering::SeqCst) {
                    ANSWER_503 => return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance".to_owned()),
                    ANSWER_HANG => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return (StatusCode::GATEWAY_TIMEOUT, String::new());
                    }
                    _ => {}
                }
                let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
                r.got.lock().unwrap().push(Received { path: uri.path().to_owned(), headers, body });
                (StatusCode::OK, "thanks".to_owned())
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    pub fn set(&self, answer: u8) {
        self.answer.store(answer, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything received at `path`.
    pub fn at(&self, path: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }
}

/// Polls `check` until it holds, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connected (webhooks subscribed), synced account with its schedule paused: from here on
/// only webhooks bring changes.
pub async fn connected(config: SimConfig, settings: &[(&str, &str)]) -> (Running, TestApp, String, ConnectionId) {
    let sim = spawn_sim(config).await;
    let app = spawn_app_for_with(&sim, settings).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    pause_and_await_subscription(&app, &token, id).await;
    (sim, app, token, id)
}

/// Pauses the connection's schedule (from here on only webhooks bring changes) and waits for its
/// provider webhooks to be subscribed.
pub async fn pause_and_await_subscription(app: &TestApp, token: &str, id: ConnectionId) {
    let response = app
        .client
        .patch(app.url(&format!("/api/admin/connections/{}/schedule", id.0)))
        .bearer_auth(token)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let db = app.db.clone();
    eventually(Duration::from_secs(20), "the provider webhooks to be subscribed", || {
        let db = db.clone();
        async move {
            let status: String = sqlx::query_scalar("select webhook_status from connections where id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
            status == "subscribed"
        }
    })
    .await;
}

/// An endpoint for `company` with the default scopes and `webhooks:manage`.
async fn webhook_endpoint(app: &TestApp, token: &str, conn: ConnectionId, company: &str) -> (String, String) {
    let mut scopes = clientapi::endpoints::default_scopes(false);
    scopes.push("webhooks:manage".into());
    create_endpoint(app, token, conn, company, json!({"scopes": scopes})).await
}

/// Subscribes through the endpoint's own API; returns (subscription id, secret).
async fn subscribe(app: &TestApp, ep: &str, key: &str, body: Value) -> (String, String) {
    let response = app
        .client
        .post(app.url(&format!("/api/public/{ep}/webhooks")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

/// Verifies every message with the Standard Webhooks reference library; returns its lines.
fn verify(messages: &[(&str, &Received)]) -> Vec<String> {
    let input: Vec<Value> =
        messages.iter().map(|(secret, r)| json!({"secret": secret, "headers": r.headers, "body": r.body})).collect();
    let mut child = std::process::Command::new(python_tool("python"))
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/verify_webhooks.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "verify_webhooks.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

fn job_of(sim: &Running, company: &str) -> String {
    sim.sim
        .records("job")
        .iter()
        .find(|j| j["company_uuid"] == company && j["active"] != 0 && j["active"] != "0")
        .map(|j| j["uuid"].as_str().unwrap().to_owned())
        .expect("the company has a job")
}

async fn rest_get(app: &TestApp, ep: &str, key: &str, path: &str) -> Value {
    get_json(app, &format!("/api/public/{ep}{path}"), key).await
}

#[tokio::test]
async fn a_change_at_the_provider_reaches_the_mirror_and_only_its_companys_subscriber_through_webhooks_alone() {
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 2, jobs_per_company: 3, ..SimConfig::default() }, SETTINGS).await;
    let receiver = Receiver::spawn().await;
    let offices = head_offices(&sim);
    let (ep_a, key_a) = webhook_endpoint(&app, &token, conn, &offices[0]).await;
    let (ep_b, key_b) = webhook_endpoint(&app, &token, conn, &offices[1]).await;
    let (_, secret_a) = subscribe(&app, &ep_a, &key_a, json!({"url": receiver.url("/a")})).await;
    let (_, secret_b) = subscribe(&app, &ep_b, &key_b, json!({"url": receiver.url("/b"), "events": ["job.*"]})).await;

    // A change at ServiceM8, with the poll schedule paused.
    let job_a = job_of(&sim, &offices[0]);
    assert!(sim.sim.modify("job", &job_a, json!({"job_description": "Fix the leaking tap (via webhook)"})));
    eventually(Duration::from_secs(20), "the mirror to have the change", || async {
        rest_get(&app, &ep_a, &key_a, &format!("/jobs/{job_a}")).await["data"]["description"]
            == "Fix the leaking tap (via webhook)"
    })
    .await;
    eventually(Duration::from_secs(20), "company A's subscriber to hear of it", || async {
        receiver.at("/a").iter().any(|r| r.json()["data"]["id"] == job_a.as_str())
    })
    .await;
    let event = receiver.at("/a").into_iter().find(|r| r.json()["data"]["id"] == job_a.as_str()).unwrap();
    let body = event.json();
    assert_eq!(body["type"], "job.updated");
    assert_eq!(body["data"]["resource"], "job");
    assert_eq!(body["data"]["record"]["description"], "Fix the leaking tap (via webhook)");
    assert!(body["data"]["change_seq"].as_i64().unwrap() > 0);
    assert!(event.headers["webhook-id"].starts_with("evt_"));
    // The record is the one the REST API serves (the same rendering).
    let served = rest_get(&app, &ep_a, &key_a, &format!("/jobs/{job_a}")).await;
    assert_eq!(body["data"]["record"], served["data"]);

    // B's change reaches B; neither hears of the other's.
    let job_b = job_of(&sim, &offices[1]);
    assert!(sim.sim.modify("job", &job_b, json!({"job_description": "B's job changed"})));
    eventually(Duration::from_secs(20), "company B's subscriber to hear of its job", || async {
        receiver.at("/b").iter().any(|r| r.json()["data"]["id"] == job_b.as_str())
    })
    .await;
    // Let anything misrouted arrive before looking for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.at("/a").iter().all(|r| r.json()["data"]["id"] != job_b.as_str()), "A heard of B's job");
    assert!(receiver.at("/b").iter().all(|r| r.json()["data"]["id"] != job_a.as_str()), "B heard of A's job");
    let foreign: Vec<_> = receiver.at("/b").iter().map(Received::json).filter(|b| b["type"] != "job.updated").collect();
    assert!(foreign.is_empty(), "B subscribed to job.* only: {foreign:?}");

    // Every delivery verifies with the reference library, under its own subscription's secret.
    let mut messages: Vec<(&str, &Received)> = Vec::new();
    let (a, b) = (receiver.at("/a"), receiver.at("/b"));
    messages.extend(a.iter().map(|r| (secret_a.as_str(), r)));
    messages.extend(b.iter().map(|r| (secret_b.as_str(), r)));
    let lines = verify(&messages);
    assert_eq!(lines.len(), messages.len());
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
    // And not under the other's: the check can fail.
    let crossed = verify(&[(secret_b.as_str(), &a[0])]);
    assert!(crossed[0].starts_with("bad "), "{crossed:?}");

    // Visible: the connection's last callback and its lag; the subscription's health.
    let connection: Value = get_json(&app, &format!("/api/admin/connections/{}", conn.0), &token).await;
    assert_eq!(connection["webhooks"]["status"], "subscribed");
    assert!(connection["webhooks"]["last_callback_at"].is_string());
    assert!(connection["webhooks"]["last_callback_lag_ms"].is_number());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for name in ["provider_callbacks_total", "webhook_deliveries_total", "webhook_delivery_lag_seconds"] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_every_event_once_it_recovers_in_change_seq_order_per_record() {
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 1, jobs_per_company: 4, ..SimConfig::default() }, SETTINGS).await;
    let receiver = Receiver::spawn().await;
    let office = &head_offices(&sim)[0];
    let (ep, key) = webhook_endpoint(&app, &token, conn, office).await;
    let (sub, secret) = subscribe(&app, &ep, &key, json!({"url": receiver.url("/r"), "events": ["job.updated"]})).await;
    receiver.set(ANSWER_503);

    let jobs: Vec<String> = sim
        .sim
        .records("job")
        .iter()
        .filter(|j| j["company_uuid"] == office.as_str())
        .map(|j| j["uuid"].as_str().unwrap().to_owned())
        .take(2)
        .collect();
    // Three changes to each job, each mirrored (and so an event) before the next.
    for round in 1..=3 {
        for job in &jobs {
            assert!(sim.sim.modify("job", job, json!({"job_description": format!("round {round}")})));
        }
        eventually(Duration::from_secs(20), "the round to be mirrored", || async {
            let mut all = true;
            for job in &jobs {
                all &= rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"]
                    == format!("round {round}").as_str();
            }
            all
        })
        .await;
    }
    // The receiver keeps failing: attempts pile up, nothing is given up.
    let log_path = format!("/webhooks/{sub}/deliveries");
    eventually(Duration::from_secs(20), "failed attempts to be retried", || async {
        let log = rest_get(&app, &ep, &key, &log_path).await;
        log["data"].as_array().unwrap().iter().any(|d| d["attempts"].as_i64().unwrap() >= 2)
    })
    .await;
    let log = rest_get(&app, &ep, &key, &log_path).await;
    assert!(log["data"].is_array(), "{log}");
    let failing = log["data"].as_array().unwrap().iter().find(|d| d["attempts"].as_i64().unwrap() >= 1).unwrap();
    assert_eq!(failing["state"], "pending");
    assert_eq!(failing["last_status"], 503);
    assert_eq!(failing["last_response"], "down for maintenance");
    assert!(failing["last_latency_ms"].as_f64().is_some());
    assert!(receiver.at("/r").is_empty());

    receiver.set(ANSWER_OK);
    eventually(Duration::from_secs(30), "every event to be delivered", || async { receiver.at("/r").len() >= 6 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.at("/r");
    assert_eq!(got.len(), 6, "six events, each once");
    for job in &jobs {
        let seqs: Vec<i64> = got
            .iter()
            .map(Received::json)
            .filter(|b| b["data"]["id"] == job.as_str())
            .map(|b| b["data"]["change_seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs.len(), 3, "{job}: {seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{job}: in change_seq order: {seqs:?}");
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|r| r.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 6);
    let messages: Vec<_> = got.iter().map(|r| (secret.as_str(), r)).collect();
    assert!(verify(&messages).iter().all(|l| l.starts_with("ok ")));
    let subscription = rest_get(&app, &ep, &key, &format!("/webhooks/{sub}")).await;
    assert_eq!(subscription["status"], "active");
    assert!(subscription["failing_since"].is_null() && subscription["last_success_at"].is_string());
    assert_eq!(subscription["pending"], 0);
}

#[tokio::test]
async fn forged_duplicated_replayed_reordered_and_lost_provider_callbacks_change_nothing_wrong() {
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 2, jobs_per_company: 4, ..SimConfig::default() }, SETTINGS).await;
    let offices = head_offices(&sim);
    let (ep, key) = webhook_endpoint(&app, &token, conn, &offices[0]).await;
    let callback: String = sim.sim.hooks().subscriptions()[0].callback_url.clone();
    let job = job_of(&sim, &offices[0]);
    let queued = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from provider_callbacks").fetch_one(&db).await.unwrap()
    };
    let mirror_seq = |db: sqlx::PgPool, job: String| async move {
        sqlx::query_scalar::<_, i64>("select change_seq from jobs where external_id = $1")
            .bind(job)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let payload = |uuid: &str| json!({"object": "job", "entry": [{"uuid": uuid, "changed_fields": ["status"], "time": "2026-12-02 10:00:00"}]});

    // Forged: a guessed callback URL does no work at all.
    let requests_before = sim.sim.stats().api_requests;
    let forged = callback.rsplit_once('/').unwrap().0.to_owned() + "/not-the-token";
    let answer = app.client.post(&forged).json(&payload(&job)).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    let answer =
        app.client.post(callback.replace("/servicem8/", "/jobber/")).json(&payload(&job)).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    // Malformed, with the right token: said so, nothing queued.
    let answer = app.client.post(&callback).body("not json").send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let answer = app
        .client
        .post(&callback)
        .json(&json!({"object": "invoice", "entry": [{"uuid": "ab12"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(queued(app.db.clone()).await, 0);
    assert_eq!(sim.sim.stats().api_requests, requests_before, "nothing was fetched");

    // With the token, a callback can only make the service look: a record that is not there, or
    // one that did not change, changes nothing.
    let before = mirror_seq(app.db.clone(), job.clone()).await;
    let jobs_before: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&app.db).await.unwrap();
    for body in [payload("0000-dead-beef"), payload(&job)] {
        assert_eq!(app.client.post(&callback).json(&body).send().await.unwrap().status(), 200);
    }
    eventually(Duration::from_secs(10), "the callbacks to be worked off", || async {
        queued(app.db.clone()).await == 0
    })
    .await;
    assert_eq!(mirror_seq(app.db.clone(), job.clone()).await, before, "an unchanged record was not rewritten");
    let jobs_after: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&app.db).await.unwrap();
    assert_eq!(jobs_after, jobs_before);

    // Duplicated: many copies of one callback collapse into one queued record.
    assert!(sim.sim.modify("job", &job, json!({"job_description": "v2"})));
    for _ in 0..10 {
        assert_eq!(app.client.post(&callback).json(&payload(&job)).send().await.unwrap().status(), 200);
    }
    eventually(Duration::from_secs(10), "v2 in the mirror", || async {
        rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"] == "v2"
    })
    .await;
    eventually(Duration::from_secs(10), "the queue to drain", || async { queued(app.db.clone()).await == 0 }).await;

    // Replayed late, after the provider has moved on and back in time (a stale read): the mirror
    // keeps the newer snapshot.
    let mut stale = sim.sim.record("job", &job).unwrap();
    stale["job_description"] = json!("stale");
    stale["edit_date"] = json!("2020-01-01 00:00:00");
    sim.sim.put("job", stale);
    assert_eq!(app.client.post(&callback).json(&payload(&job)).send().await.unwrap().status(), 200);
    eventually(Duration::from_secs(10), "the late callback to be worked off", || async {
        queued(app.db.clone()).await == 0
    })
    .await;
    assert_eq!(rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"], "v2");

    // Reordered and duplicated by the network: the mirror ends where the provider is.
    sim.sim.hooks().set_knobs(WebhookKnobs { duplicate: 1.0, reorder: true, ..WebhookKnobs::default() });
    let jobs: Vec<String> = sim
        .sim
        .records("job")
        .iter()
        .filter(|j| j["company_uuid"] == offices[0].as_str())
        .map(|j| j["uuid"].as_str().unwrap().to_owned())
        .collect();
    for (n, j) in jobs.iter().enumerate() {
        assert!(sim.sim.modify("job", j, json!({"job_description": format!("shuffled {n}")})));
    }
    eventually(Duration::from_secs(20), "every shuffled change in the mirror", || async {
        let mut all = true;
        for (n, j) in jobs.iter().enumerate() {
            all &= rest_get(&app, &ep, &key, &format!("/jobs/{j}")).await["data"]["description"]
                == format!("shuffled {n}").as_str();
        }
        all
    })
    .await;
    assert!(sim.sim.hooks().stats().duplicated > 0);

    // Lost: a dropped callback leaves the mirror behind until the poll (the safety net) runs.
    sim.sim.hooks().set_knobs(WebhookKnobs { drop: 1.0, ..WebhookKnobs::default() });
    let mirrored = rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"].clone();
    assert!(sim.sim.modify("job", &job, json!({"job_description": "lost callback"})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sim.sim.hooks().stats().dropped > 0);
    assert_eq!(rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"], mirrored);
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    assert_eq!(rest_get(&app, &ep, &key, &format!("/jobs/{job}")).await["data"]["description"], "lost callback");

    // Out of order across objects: a new customer's job arrives before the customer. The job
    // waits for its owner rather than being lost until the next poll.
    let mut company = sim.sim.record("company", &offices[1]).unwrap();
    let new_company = "0c0ffee0-0000-4000-8000-000000000001";
    company["uuid"] = json!(new_company);
    company["name"] = json!("Arrived Late Pty Ltd");
    let mut new_job = sim.sim.record("job", &job_of(&sim, &offices[1])).unwrap();
    let late_job = "0c0ffee0-0000-4000-8000-000000000002";
    new_job["uuid"] = json!(late_job);
    new_job["company_uuid"] = json!(new_company);
    sim.sim.put("company", company);
    sim.sim.put("job", new_job);
    assert_eq!(app.client.post(&callback).json(&payload(late_job)).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let company_callback = json!({"object": "company", "entry": [{"uuid": new_company, "changed_fields": ["name"], "time": "2026-12-02 10:00:00"}]});
    assert_eq!(app.client.post(&callback).json(&company_callback).send().await.unwrap().status(), 200);
    let db = app.db.clone();
    eventually(Duration::from_secs(20), "the early job to be mirrored once its customer is", || {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from jobs where external_id = $1 and deleted_at is null")
                .bind(late_job)
                .fetch_one(&db)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
}

#[tokio::test]
async fn subscriptions_belong_to_their_endpoint_and_its_admins_and_ask_only_for_what_it_reads() {
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 2, jobs_per_company: 2, ..SimConfig::default() }, &[]).await;
    let receiver = Receiver::spawn().await;
    let offices = head_offices(&sim);
    let (ep_a, key_a) = webhook_endpoint(&app, &token, conn, &offices[0]).await;
    let (ep_b, key_b) = webhook_endpoint(&app, &token, conn, &offices[1]).await;
    let (ep_plain, key_plain) = create_endpoint(&app, &token, conn, &offices[0], json!({})).await;
    let post = |ep: String, key: String, body: Value| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.url(&format!("/api/public/{ep}/webhooks")))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Without webhooks:manage: refused, naming the scope.
    let (status, body) = post(ep_plain.clone(), key_plain.clone(), json!({"url": "https://hooks.example.com/x"})).await;
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains("webhooks:manage"));

    // Bad requests say what is wrong. Loopback is refused unless the operator allows it.
    for (body, field, words) in [
        (json!({"url": receiver.url("/x")}), "url", "private"),
        (json!({"url": "ftp://hooks.example.com/x"}), "url", "http"),
        (json!({"url": "https://user:pw@hooks.example.com/x"}), "url", "password"),
        // Not RFC 3986 (the document's `format: uri`), though a lenient URL parser would take each.
        (json!({"url": "https://\u{be}3"}), "url", "punycode"),
        (json!({"url": "https://hooks.example.com/a b"}), "url", "percent-encoded"),
        (json!({"url": "https://hooks.exa\tmple.com/x"}), "url", "percent-encoded"),
        (json!({"url": "https://hooks.example.com/%zz"}), "url", "%20"),
        (json!({"url": "https://hooks.example.com/[x]"}), "url", "IPv6"),
        (json!({"url": "https://hooks.example.com/x", "events": ["job.exploded"]}), "events[0]", "job.updated"),
        (
            json!({"url": "https://hooks.example.com/x", "events": ["staff_member.updated"]}),
            "events[0]",
            "account-wide",
        ),
        (json!({"url": "https://hooks.example.com/x", "resources": ["staff"]}), "resources[0]", "account-wide"),
        (json!({"url": "https://hooks.example.com/x", "payload": "everything"}), "payload", "record"),
        (json!({}), "url", "required"),
    ] {
        let (status, problem) = post(ep_a.clone(), key_a.clone(), body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        let error = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("{body}: {problem}"));
        assert!(error["message"].as_str().unwrap().contains(words), "{body}: {problem}");
    }
    // A scope the endpoint lacks cannot be subscribed to.
    let (ep_jobs, key_jobs) =
        create_endpoint(&app, &token, conn, &offices[0], json!({"scopes": ["jobs:read", "webhooks:manage"]})).await;
    let (status, problem) = post(
        ep_jobs.clone(),
        key_jobs.clone(),
        json!({"url": "https://hooks.example.com/x", "events": ["invoice.created"]}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(problem.to_string().contains("invoices:read"), "{problem}");

    let (status, created) = post(
        ep_a.clone(),
        key_a.clone(),
        json!({"url": "https://hooks.example.com/a", "events": ["jobs.updated", "job.updated"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["events"], json!(["job.updated"]), "deduplicated, singular");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let sub = created["id"].as_str().unwrap().to_owned();
    // The secret is never shown again, nor stored in plaintext.
    let shown = app
        .client
        .get(app.url(&format!("/api/public/{ep_a}/webhooks/{sub}")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    let shown: Value = shown.json().await.unwrap();
    assert!(shown.get("secret").is_none());
    let sealed: Vec<u8> =
        sqlx::query_scalar("select secret_enc from webhook_subscriptions").fetch_one(&app.db).await.unwrap();
    let plain = created["secret"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(&plain[6..]));

    // Another endpoint of the same account sees nothing of it, and cannot touch it.
    let path = format!("/api/public/{ep_b}/webhooks/{sub}");
    assert_eq!(app.client.get(app.url(&path)).bearer_auth(&key_b).send().await.unwrap().status(), 404);
    assert_eq!(app.client.delete(app.url(&path)).bearer_auth(&key_b).send().await.unwrap().status(), 404);
    let listed: Value = get_json(&app, &format!("/api/public/{ep_b}/webhooks"), &key_b).await;
    assert_eq!(listed["data"], json!([]));

    // Its admins see and manage it; another account's admin does not.
    let admin_list: Value =
        app.client.get(app.url("/api/admin/webhooks")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(admin_list["data"][0]["id"], sub.as_str());
    assert_eq!(admin_list["data"][0]["endpoint"], ep_a.as_str());
    let stranger = admin_token(&app, "someone@else.example", "other").await;
    let response =
        app.client.get(app.url(&format!("/api/admin/webhooks/{sub}"))).bearer_auth(&stranger).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let stranger_list: Value = get_json(&app, "/api/admin/webhooks", &stranger).await;
    assert_eq!(stranger_list["data"], json!([]));
    let paused = app
        .client
        .patch(app.url(&format!("/api/admin/webhooks/{sub}")))
        .bearer_auth(&token)
        .json(&json!({"status": "paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    assert_eq!(paused.json::<Value>().await.unwrap()["status"], "paused");
    let deleted =
        app.client.delete(app.url(&format!("/api/admin/webhooks/{sub}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        app.client
            .get(app.url(&format!("/api/public/{ep_a}/webhooks/{sub}")))
            .bearer_auth(&key_a)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn secrets_rotate_with_an_overlap_events_replay_pause_waits_and_a_failing_subscription_is_disabled() {
    let settings = [
        ("CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ("CLIENTAPI_WEBHOOK_RETRY_BASE_MS", "100"),
        ("CLIENTAPI_WEBHOOK_RETRY_FOR_SECS", "3"),
    ];
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 1, jobs_per_company: 3, ..SimConfig::default() }, &settings).await;
    let receiver = Receiver::spawn().await;
    let office = &head_offices(&sim)[0];
    let (ep, key) = webhook_endpoint(&app, &token, conn, office).await;
    let (sub, old_secret) =
        subscribe(&app, &ep, &key, json!({"url": receiver.url("/r"), "events": ["job.updated"], "payload": "id"}))
            .await;
    let base = format!("/api/public/{ep}/webhooks/{sub}");
    let own = format!("/webhooks/{sub}");
    let job = job_of(&sim, office);

    // Rotation: the new secret shown once; both sign during the overlap.
    let rotated: Value = app
        .client
        .post(app.url(&format!("{base}/rotate-secret")))
        .bearer_auth(&key)
        .json(&json!({"overlap_seconds": 3600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert!(rotated["previous_secret_expires_at"].is_string());
    assert!(sim.sim.modify("job", &job, json!({"job_description": "after rotation"})));
    eventually(Duration::from_secs(20), "the event", || async { !receiver.at("/r").is_empty() }).await;
    let first = receiver.at("/r")[0].clone();
    assert_eq!(first.headers["webhook-signature"].split(' ').count(), 2);
    let lines = verify(&[(old_secret.as_str(), &first), (new_secret.as_str(), &first)]);
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
    // payload "id": the id and where to fetch it, no record.
    let body = first.json();
    assert!(body["data"].get("record").is_none());
    assert!(body["data"]["url"].as_str().unwrap().ends_with(&format!("/api/public/{ep}/jobs/{job}")));

    // Replay one event: the same webhook-id again.
    let event_id = first.headers["webhook-id"].clone();
    let replayed = app
        .client
        .post(app.url(&format!("{base}/replay")))
        .bearer_auth(&key)
        .json(&json!({"event_id": event_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 202);
    eventually(Duration::from_secs(10), "the replay", || async { receiver.at("/r").len() == 2 }).await;
    assert_eq!(receiver.at("/r")[1].headers["webhook-id"], event_id);
    let missing = app
        .client
        .post(app.url(&format!("{base}/replay")))
        .bearer_auth(&key)
        .json(&json!({"event_id": "evt_1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Paused: events wait, then go out on resume.
    let patch = |status: &'static str| {
        let (app, base, key) = (&app, base.clone(), key.clone());
        async move {
            let r = app
                .client
                .patch(app.url(&base))
                .bearer_auth(key)
                .json(&json!({"status": status}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    patch("paused").await;
    assert!(sim.sim.modify("job", &job, json!({"job_description": "while paused"})));
    eventually(Duration::from_secs(20), "the paused event to wait", || async {
        rest_get(&app, &ep, &key, &own).await["pending"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.at("/r").len(), 2);
    patch("active").await;
    eventually(Duration::from_secs(10), "the event after resume", || async { receiver.at("/r").len() == 3 }).await;

    // A receiver that fails for longer than the retry window: the event is given up and the
    // subscription disabled, with the reason for its admin.
    receiver.set(ANSWER_503);
    assert!(sim.sim.modify("job", &job, json!({"job_description": "never delivered"})));
    eventually(Duration::from_secs(30), "the subscription to be disabled", || async {
        let s: Value = get_json(&app, &format!("/api/admin/webhooks/{sub}"), &token).await;
        s["status"] == "disabled"
    })
    .await;
    let s: Value = get_json(&app, &format!("/api/admin/webhooks/{sub}"), &token).await;
    let reason = s["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("No delivery succeeded since") && reason.contains("503"), "{reason}");
    let log = rest_get(&app, &ep, &key, &format!("{own}/deliveries")).await;
    assert_eq!(log["data"][0]["state"], "failed", "{log}");
    // Re-enabled, it delivers again.
    receiver.set(ANSWER_OK);
    let enabled = patch("active").await;
    assert!(enabled["disabled_reason"].is_null());
    assert!(sim.sim.modify("job", &job, json!({"job_description": "back"})));
    eventually(Duration::from_secs(10), "delivery after re-enabling", || async { receiver.at("/r").len() == 4 }).await;
}

#[tokio::test]
async fn nothing_is_lost_across_a_sigkill_between_the_mirror_commit_and_the_delivery() {
    use crate::helpers::{TEST_MASTER_KEY, clientapi, spawn_serve, wait_ready};
    let (sim, app, token, conn) =
        connected(SimConfig { companies: 1, jobs_per_company: 2, ..SimConfig::default() }, SETTINGS).await;
    let receiver = Receiver::spawn().await;
    let office = &head_offices(&sim)[0];
    let (ep, key) = webhook_endpoint(&app, &token, conn, office).await;
    subscribe(&app, &ep, &key, json!({"url": receiver.url("/r"), "events": ["job.updated"]})).await;
    // The service moves to a process of its own, on the same address (the provider's callback
    // URL names it) and the same database.
    let addr = app.addr;
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (api, oauth) = (sim.api_url(), sim.oauth_url());
    let bind = addr.to_string();
    let config = sim.sim.config().clone();
    let envs = [
        ("DATABASE_URL", app.database_url.as_str()),
        ("CLIENTAPI_BIND", bind.as_str()),
        ("CLIENTAPI_SECRET_KEY", TEST_MASTER_KEY),
        ("CLIENTAPI_SERVICEM8_API_URL", api.as_str()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", oauth.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", config.client_id.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", config.client_secret.as_str()),
        ("CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ("CLIENTAPI_WEBHOOK_TIMEOUT_SECS", "1"),
        ("CLIENTAPI_WEBHOOK_RETRY_BASE_MS", "100"),
    ];
    let mut child = spawn_serve(&mut clientapi(&[], &envs));
    wait_ready(&mut child, addr.port(), Duration::from_secs(30));

    // The receiver hangs: the change is mirrored, its event claimed and in flight when the
    // process is killed.
    receiver.set(ANSWER_HANG);
    let job = job_of(&sim, office);
    assert!(sim.sim.modify("job", &job, json!({"job_description": "survives a kill"})));
    // The app's own pool closed with it.
    let db = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    eventually(Duration::from_secs(20), "the event to be in flight", || {
        let db = db.clone();
        async move {
            let in_flight: i64 = sqlx::query_scalar(
                "select count(*) from webhook_deliveries where state = 'pending' and attempts >= 1 and leased_until > now()",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            in_flight == 1
        }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    receiver.set(ANSWER_OK);
    let mut child = spawn_serve(&mut clientapi(&[], &envs));
    wait_ready(&mut child, addr.port(), Duration::from_secs(30));
    eventually(Duration::from_secs(30), "the event after the restart", || async {
        receiver.at("/r").iter().any(|r| r.json()["data"]["record"]["description"] == "survives a kill")
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}
