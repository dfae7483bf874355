//! bench/events: how fast a change at the provider reaches the mirror and a customer's webhook
//! receiver through provider webhooks, beside the poll path, and how many events a second the
//! dispatcher delivers to a local receiver. Run by `bench/run-events` (release build):
//!
//!   cargo run --release --example bench_events -- [--rate 50] [--seconds 30] [--out FILE]
//!
//! Everything runs in this process on loopback, as the tests do: the ServiceM8 simulator (sending
//! webhooks the way ServiceM8 does), the service on its own local Postgres, and the receivers.
//! The provider's request budget is lifted (as `bench/run` does): under ServiceM8's documented 180
//! requests a minute, fetching each changed record by id caps the webhook path at 3 records a second.
//!
//! Phases:
//! 1. webhooks: `--rate` changes a second for `--seconds`, each to a different job, the poll
//!    schedule paused. Provider change → mirror is the job row's `synced_at` (its transaction's
//!    start) less the moment of the change; → delivery is the receiver's arrival time less it.
//! 2. poll: the same, with every webhook dropped and incremental syncs run back to back (the poll
//!    path's best case: a schedule adds up to its interval, 5 minutes by default, on top).
//! 3. throughput: every subscription paused while a backlog of events builds up, then resumed;
//!    events delivered a second until the receiver has them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clientapi::config::Config;
use clientapi::startup::Application;
use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::{SimConfig, Simulator, WebhookKnobs};
use serde_json::{Value, json};

const SUBSCRIPTIONS_PER_ENDPOINT: usize = 5;

struct Args {
    rate: u32,
    seconds: u32,
    companies: usize,
    jobs: usize,
    out: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { rate: 50, seconds: 30, companies: 20, jobs: 100, out: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => a.rate = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--companies" => a.companies = value.parse()?,
            "--jobs-per-company" => a.jobs = value.parse()?,
            "--out" => a.out = Some(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
}

/// What the receivers got: arrival times per record description (one per subscription), and a count.
#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    count: Arc<AtomicU64>,
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64, f64, usize) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.5), at(0.95), at(0.99), *ms.last().unwrap(), ms.len())
}

fn row(name: &str, ms: Vec<f64>) -> String {
    if ms.is_empty() {
        return format!("| {name} | – | – | – | – | 0 |");
    }
    let (p50, p95, p99, max, n) = percentiles(ms);
    format!("| {name} | {p50:.0} | {p95:.0} | {p99:.0} | {max:.0} | {n} |")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let sim = Simulator::spawn(
        SimConfig {
            companies: args.companies,
            jobs_per_company: args.jobs,
            per_minute_limit: 1_000_000,
            per_day_limit: u32::MAX,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let data = tempfile::tempdir()?;
    let key: [u8; 32] = rand::random();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    let (api, oauth) = (sim.api_url(), sim.oauth_url());
    let env: HashMap<String, String> = [
        ("CLIENTAPI_DATA_DIR", data.path().to_str().unwrap()),
        ("CLIENTAPI_BIND", "127.0.0.1:0"),
        ("CLIENTAPI_SECRET_KEY", key.as_str()),
        ("CLIENTAPI_SERVICEM8_API_URL", api.as_str()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", oauth.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", "sim-client"),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", "sim-secret"),
        ("CLIENTAPI_SERVICEM8_REQUESTS_PER_MINUTE", "1000000"),
        ("CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::load(None, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Application::build(config).await?;
    let state = app.state().clone();
    let base = format!("http://{}", app.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;

    // Receivers.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hooks = format!("http://{}", listener.local_addr()?);
    let r = receiver.clone();
    let receive = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let r = r.clone();
        async move {
            let at = Instant::now();
            if let Ok(event) = serde_json::from_slice::<Value>(&body)
                && let Some(description) = event["data"]["record"]["description"].as_str()
            {
                r.arrivals.lock().unwrap().entry(description.to_owned()).or_default().push(at);
            }
            r.count.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    });
    tokio::spawn(async move { axum::serve(listener, receive).await });

    // An admin, the connection (through OAuth against the simulator), its first sync.
    eprintln!("== connecting and syncing {} companies × {} jobs", args.companies, args.jobs);
    clientapi::accounts::create_user(&state.db, "bench@example.com", "a long enough password".into(), "bench").await?;
    let token = clientapi::accounts::create_admin_token(&state.db, "bench@example.com", "bench").await?;
    let body: Value = http
        .post(format!("{base}/api/admin/connections/servicem8/authorize"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let approval = http.get(body["authorize_url"].as_str().context("authorize_url")?).send().await?;
    let callback = approval.headers()["location"].to_str()?.to_owned();
    let connection: Value = http.get(&callback).bearer_auth(&token).send().await?.json().await?;
    let conn = ConnectionId(connection["id"].as_i64().context("connection id")?);
    state.engine.sync_connection(conn, false, None).await?;
    http.patch(format!("{base}/api/admin/connections/{}/schedule", conn.0))
        .bearer_auth(&token)
        .json(&json!({"paused": true}))
        .send()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: String = sqlx::query_scalar("select webhook_status from connections where id = $1")
            .bind(conn)
            .fetch_one(&state.db)
            .await?;
        if status == "subscribed" {
            break;
        }
        if Instant::now() > deadline {
            bail!("provider webhooks not subscribed: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An endpoint per company, each with its subscriptions.
    let offices: Vec<String> = sim
        .sim
        .records("company")
        .iter()
        .filter(|c| c["parent_company_uuid"] == "")
        .map(|c| c["uuid"].as_str().unwrap().to_owned())
        .collect();
    let mut subscriptions = Vec::new();
    for (i, office) in offices.iter().enumerate() {
        let mut scopes = clientapi::endpoints::default_scopes(false);
        scopes.push("webhooks:manage".into());
        let created: Value = http
            .post(format!("{base}/api/admin/endpoints"))
            .bearer_auth(&token)
            .json(&json!({"connection_id": conn.0, "company_external_id": office, "name": format!("c{i}"), "scopes": scopes,
                          "rate_limit_per_minute": 1_000_000}))
            .send()
            .await?
            .json()
            .await?;
        let (ep, key) =
            (created["endpoint"]["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned());
        for s in 0..SUBSCRIPTIONS_PER_ENDPOINT {
            let sub: Value = http
                .post(format!("{base}/api/public/{ep}/webhooks"))
                .bearer_auth(&key)
                .json(&json!({"url": format!("{hooks}/c{i}/s{s}"), "events": ["job.updated"]}))
                .send()
                .await?
                .json()
                .await?;
            subscriptions.push(sub["id"].as_str().context("subscription id")?.to_owned());
        }
    }
    let jobs: Vec<String> = sim.sim.records("job").iter().map(|j| j["uuid"].as_str().unwrap().to_owned()).collect();
    let changes = (args.rate * args.seconds) as usize;
    if changes > jobs.len() {
        bail!("{changes} changes need as many jobs; there are {}", jobs.len());
    }

    // Makes `changes` changes at `rate`, one job each, labelled `{label}-{n}`; returns when and what.
    let change = |label: &'static str, offset: usize| {
        let (sim, jobs) = (sim.sim.clone(), jobs.clone());
        let rate = args.rate;
        async move {
            let mut made = Vec::with_capacity(changes);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            for n in 0..changes {
                tick.tick().await;
                let job = &jobs[(offset + n) % jobs.len()];
                let description = format!("{label}-{n}");
                let (at, wall) = (Instant::now(), Utc::now());
                sim.modify("job", job, json!({"job_description": description}));
                made.push((description, job.clone(), at, wall));
            }
            made
        }
    };
    let mirror_latencies = |made: Vec<(String, String, Instant, DateTime<Utc>)>| {
        let db = state.db.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
                    "select remote_data->>'job_description', synced_at from jobs where remote_data->>'job_description' = any($1)",
                )
                .bind(made.iter().map(|m| m.0.clone()).collect::<Vec<_>>())
                .fetch_all(&db)
                .await?;
                if rows.len() == made.len() || Instant::now() > deadline {
                    let at: HashMap<String, DateTime<Utc>> = rows.into_iter().collect();
                    return anyhow::Ok(
                        made.iter()
                            .filter_map(|m| {
                                at.get(&m.0).map(|t| (*t - m.3).num_microseconds().unwrap_or(0) as f64 / 1000.0)
                            })
                            .collect::<Vec<f64>>(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Every subscription's delivery of every change.
    let delivery_latencies = |made: &[(String, String, Instant, DateTime<Utc>)]| {
        let arrivals = receiver.arrivals.lock().unwrap();
        made.iter()
            .flat_map(|m| {
                arrivals.get(&m.0).into_iter().flatten().map(|t| t.duration_since(m.2).as_secs_f64() * 1000.0)
            })
            .collect::<Vec<f64>>()
    };
    let wait_delivered = |made_len: usize, label: &'static str| {
        let receiver = receiver.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let arrived = || -> usize {
                receiver
                    .arrivals
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.starts_with(label))
                    .map(|(_, v)| v.len())
                    .sum()
            };
            while arrived() < made_len * SUBSCRIPTIONS_PER_ENDPOINT && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    eprintln!("== webhooks: {changes} changes at {}/s", args.rate);
    let made = change("hook", 0).await;
    wait_delivered(made.len(), "hook").await;
    let hook_mirror = mirror_latencies(made.clone()).await?;
    let hook_delivery = delivery_latencies(&made);

    eprintln!("== poll: {changes} changes at {}/s, webhooks dropped, syncs back to back", args.rate);
    sim.sim.hooks().set_knobs(WebhookKnobs { drop: 1.0, ..WebhookKnobs::default() });
    let polling = tokio_util::sync::CancellationToken::new();
    let poller = {
        let (engine, polling) = (state.engine.clone(), polling.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !polling.is_cancelled() {
                if engine.sync_connection(conn, false, None).await.is_ok() {
                    runs += 1;
                }
            }
            runs
        })
    };
    let made_poll = change("poll", changes).await;
    wait_delivered(made_poll.len(), "poll").await;
    polling.cancel();
    let poll_runs = poller.await?;
    let poll_mirror = mirror_latencies(made_poll.clone()).await?;
    let poll_delivery = delivery_latencies(&made_poll);
    sim.sim.hooks().set_knobs(WebhookKnobs::default());

    eprintln!("== throughput: a backlog for {} subscriptions, then resumed", subscriptions.len());
    for sub in &subscriptions {
        http.patch(format!("{base}/api/admin/webhooks/{sub}"))
            .bearer_auth(&token)
            .json(&json!({"status": "paused"}))
            .send()
            .await?;
    }
    let backlog_jobs = jobs.len();
    for (n, job) in jobs.iter().enumerate() {
        sim.sim.modify("job", job, json!({"job_description": format!("burst-{n}")}));
    }
    let expected = (backlog_jobs * SUBSCRIPTIONS_PER_ENDPOINT) as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from webhook_deliveries where state = 'pending' and event_type = 'job.updated'",
        )
        .fetch_one(&state.db)
        .await?;
        if pending >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = receiver.count.load(Ordering::Relaxed);
    let started = Instant::now();
    for sub in &subscriptions {
        http.patch(format!("{base}/api/admin/webhooks/{sub}"))
            .bearer_auth(&token)
            .json(&json!({"status": "active"}))
            .send()
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while receiver.count.load(Ordering::Relaxed) - before < expected as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = receiver.count.load(Ordering::Relaxed) - before;
    let throughput = delivered as f64 / elapsed;

    let report = format!(
        "# bench/events, {}\n\n\
         {} companies × {} jobs; {} changes at {}/s per phase; {} subscriptions ({} per company endpoint, `job.updated`),\n\
         all on loopback in one process (simulator, service on its local Postgres, receivers); 2 cores.\n\n\
         | Path, latency from the change at the provider (ms) | p50 | p95 | p99 | max | n |\n|---|---|---|---|---|---|\n\
         {}\n{}\n{}\n{}\n\n\
         The poll path ran {} incremental syncs back to back (its best case; a schedule adds up to its interval).\n\n\
         Delivery throughput: {} events in {:.2} s = **{:.0} events/s** to a local receiver ({} expected).\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        offices.len(),
        args.jobs,
        changes,
        args.rate,
        subscriptions.len(),
        SUBSCRIPTIONS_PER_ENDPOINT,
        row("webhook → mirror", hook_mirror),
        row("webhook → customer delivery", hook_delivery),
        row("poll → mirror", poll_mirror),
        row("poll → customer delivery", poll_delivery),
        poll_runs,
        delivered,
        elapsed,
        throughput,
        expected,
    );
    print!("{report}");
    if let Some(out) = args.out {
        std::fs::write(&out, &report).with_context(|| format!("writing {out}"))?;
    }
    stop.cancel();
    let _ = server.await;
    Ok(())
}
