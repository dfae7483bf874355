//! Past one machine (issue 22): a primary and two hot standbys started from the installed
//! Postgres binaries, two API processes (`serve --api-only`) and one worker process
//! (`serve --workers-only`), each a child process as an operator would run it. Customer reads
//! run on the standbys; losing one, holding one behind the lag bound and restarting the primary
//! cost no failed read; writes meet the primary's outage with 503 and `Retry-After`.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clientapi_schema::ConnectionId;
use clientapi_schema::db;
use clientapi_schema::local_pg::{Durability, LocalPostgres};
use clientapi_sync::simulator::servicem8::SimConfig;
use serde_json::{Value, json};

use crate::endpoints::{company, create_endpoint};
use crate::helpers::{
    TEST_MASTER_KEY, admin_token, clientapi, connect_servicem8, free_port, scratch_root, spawn_app_on, spawn_sim,
    wait_ready,
};
use crate::webhooks::eventually;

const DATABASE: &str = "clientapi";

/// A `clientapi serve` child process, killed when dropped.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn serve(role: &str, envs: &[(&str, String)], log: &Path) -> Process {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut pairs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.push(("CLIENTAPI_BIND", &bind));
    pairs.push(("RUST_LOG", "info,sqlx=warn"));
    let data_dir = log.with_extension("data");
    let data_dir = data_dir.to_str().unwrap().to_owned();
    pairs.push(("CLIENTAPI_DATA_DIR", &data_dir));
    let mut child = clientapi(&["serve", role], &pairs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: a busy process must never block on a full pipe nobody reads.
        .stderr(File::create(log).unwrap())
        .spawn()
        .expect("spawning clientapi serve");
    wait_ready(&mut child, port, Duration::from_secs(60));
    Process { child, port }
}

/// The replicas `/readyz` reports, by the standby's port.
async fn replica_standing(client: &reqwest::Client, process: &Process, standby_port: u16) -> Option<Value> {
    let ready: Value = client.get(process.url("/readyz")).send().await.ok()?.json().await.ok()?;
    ready["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["name"].as_str().is_some_and(|n| n.contains(&format!(":{standby_port}/"))))
        .cloned()
}

/// A counter from a process's `/metrics`.
async fn metric(client: &reqwest::Client, process: &Process, line: &str) -> f64 {
    let text = client.get(process.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok()).unwrap_or(0.0)
}

/// Customer reads in a loop against both API processes until stopped: (reads, failures, the
/// first failure's description).
struct Load {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &reqwest::Client, urls: Vec<String>, key: &str) -> Load {
        let (stop, reads) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = urls
            .into_iter()
            .flat_map(|url| [url.clone(), url])
            .map(|url| {
                let (client, key, stop, reads, failures) =
                    (client.clone(), key.to_owned(), stop.clone(), reads.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).bearer_auth(&key).timeout(Duration::from_secs(20)).send().await {
                            Ok(r) if r.status() == 200 => {
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                failures.lock().unwrap().push(format!("{status}: {text}"));
                            }
                            Err(e) => failures.lock().unwrap().push(format!("transport: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load { stop, reads, failures, tasks }
    }

    /// Stops the load; returns (reads, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (self.reads.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_run_on_hot_standbys_through_two_api_processes_and_survive_losing_one_lag_and_a_primary_restart() {
    // A private cluster: this test stops its primary, which the shared test cluster cannot bear.
    let root = scratch_root().join(format!("replicas-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&root).unwrap();
    let primary_dir = root.join("primary");
    let primary = {
        let dir = primary_dir.clone();
        blocking(move || LocalPostgres::start(&dir, Durability::Ephemeral).unwrap()).await
    };
    db::ensure_database(&primary.connect_options("postgres"), DATABASE, None).await.unwrap();
    let primary = Arc::new(primary);
    let mut standbys = Vec::new();
    for n in 1..=2 {
        let (primary, dir) = (primary.clone(), root.join(format!("replica-{n}")));
        standbys.push(blocking(move || primary.start_replica(&dir, Durability::Ephemeral).unwrap()).await);
    }
    let database_url = primary.url(DATABASE);
    let replica_urls: Vec<String> = standbys.iter().map(|s| s.url(DATABASE)).collect();

    // Set-up through an in-process app on the primary alone: an account, a connection, a first
    // sync, and read-write endpoints for two companies.
    let sim = spawn_sim(SimConfig { companies: 3, jobs_per_company: 30, ..SimConfig::default() }).await;
    let provider = [
        ("CLIENTAPI_SERVICEM8_API_URL", sim.api_url()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", sim.oauth_url()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", sim.sim.config().client_id.clone()),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", sim.sim.config().client_secret.clone()),
    ];
    let setup_pairs: Vec<(&str, &str)> = provider.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let setup = spawn_app_on(database_url.clone(), &setup_pairs).await;
    let token = admin_token(&setup, "ops@example.com", "acme").await;
    let connection = ConnectionId(connect_servicem8(&setup, &token).await["id"].as_i64().unwrap());
    setup.state.engine.sync_connection(connection, false, None).await.unwrap();
    // A quota the read load cannot spend: this test counts every non-200 as a failure.
    let write = json!({"access": "read_write", "rate_limit_per_minute": 1_000_000});
    let (ep_a, key_a) = create_endpoint(&setup, &token, connection, &company(&sim, 0), write.clone()).await;
    let (ep_b, key_b) = create_endpoint(&setup, &token, connection, &company(&sim, 1), write).await;
    setup.shutdown.cancel();

    // Two API processes and one worker process, reads on the two standbys.
    let mut envs: Vec<(&str, String)> = provider.to_vec();
    envs.extend([
        ("DATABASE_URL", database_url.clone()),
        ("CLIENTAPI_READ_REPLICA_URLS", replica_urls.join(",")),
        ("CLIENTAPI_SECRET_KEY", TEST_MASTER_KEY.to_owned()),
        ("CLIENTAPI_FAILED_AUTH_DELAY_MS", "0".to_owned()),
        ("CLIENTAPI_API_PROCESSES", "2".to_owned()),
    ]);
    let api =
        [serve("--api-only", &envs, &root.join("api-1.log")), serve("--api-only", &envs, &root.join("api-2.log"))];
    let worker = serve("--workers-only", &envs, &root.join("worker.log"));
    let client = reqwest::Client::new();
    let ports: Vec<u16> = standbys.iter().map(|s| s.port()).collect();
    for process in &api {
        for port in &ports {
            eventually(Duration::from_secs(20), "both standbys serving reads", || async {
                replica_standing(&client, process, *port).await.is_some_and(|r| r["serving"] == true)
            })
            .await;
        }
    }
    // The worker process serves health and metrics only.
    assert_eq!(client.get(worker.url(&format!("/api/public/{ep_a}/jobs"))).send().await.unwrap().status(), 404);
    assert_eq!(client.get(worker.url("/readyz")).send().await.unwrap().status(), 200);

    let get = |process: usize, ep: &str, key: &str, path: &str| {
        let request = client.get(api[process].url(&format!("/api/public/{ep}{path}"))).bearer_auth(key);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let post = |process: usize, ep: &str, key: &str, path: &str, body: Value| {
        let request = client.post(api[process].url(&format!("/api/public/{ep}{path}"))).bearer_auth(key).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (status, retry_after, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let replica_reads_before = metric(&client, &api[0], "reads_routed_total{to=\"replica\"}").await
        + metric(&client, &api[1], "reads_routed_total{to=\"replica\"}").await;

    // Cross-tenant, through both processes and the standbys: each company sees its own jobs
    // only, and the other's ids are not found.
    let (status, jobs_a) = get(0, &ep_a, &key_a, "/jobs?page_size=100").await;
    assert_eq!(status, 200, "{jobs_a}");
    let (_, jobs_b) = get(1, &ep_b, &key_b, "/jobs?page_size=100").await;
    let ids = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
    };
    let (ids_a, ids_b) = (ids(&jobs_a), ids(&jobs_b));
    assert!(!ids_a.is_empty() && !ids_b.is_empty());
    assert!(ids_a.iter().all(|id| !ids_b.contains(id)));
    for (process, id) in [(0, &ids_b[0]), (1, &ids_b[1])] {
        assert_eq!(get(process, &ep_a, &key_a, &format!("/jobs/{id}")).await.0, 404, "another company's job");
    }
    assert_eq!(jobs_a["sync_status"], "synced", "the envelope's freshness, read on the standby: {jobs_a}");
    assert!(jobs_a["synced_at"].is_string());

    // Read-your-writes across processes: created through one, read at once through the other.
    for n in 0..10 {
        let (writer, reader) = (n % 2, 1 - n % 2);
        let (status, _, created) =
            post(writer, &ep_a, &key_a, "/jobs", json!({"status": "Quote", "description": format!("Replica {n}")}))
                .await;
        assert_eq!(status, 201, "{created}");
        let id = created["data"]["id"].as_str().unwrap();
        let (status, read) = get(reader, &ep_a, &key_a, &format!("/jobs/{id}")).await;
        assert_eq!(status, 200, "write {n} read back through the other process: {read}");
        assert_eq!(read["data"]["description"], format!("Replica {n}"));
        let (_, listed) = get(writer, &ep_a, &key_a, &format!("/jobs?ids={id}")).await;
        assert_eq!(listed["count"], 1, "and listed through the writer");
    }

    // The changes feed and the export, through the standbys, agree with the list.
    let (_, all) = get(1, &ep_a, &key_a, "/jobs?page_size=1000").await;
    let mut listed = ids(&all);
    listed.sort();
    let mut changed = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(0, &ep_a, &key_a, &format!("/changes?resource=job&page_size=7{cursor}")).await;
        assert_eq!(status, 200, "{page}");
        changed.extend(page["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        if page["has_more"] != true {
            break;
        }
        cursor = format!("&since={}", page["next_cursor"].as_str().unwrap());
    }
    changed.sort();
    changed.dedup();
    assert_eq!(changed, listed, "the changes feed names every job once");
    let export = client
        .get(api[1].url(&format!("/api/public/{ep_a}/export?resource=job&format=ndjson")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut exported: Vec<String> =
        export.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned()).collect();
    exported.sort();
    assert_eq!(exported, listed, "the export holds exactly the listed jobs");
    let replica_reads = metric(&client, &api[0], "reads_routed_total{to=\"replica\"}").await
        + metric(&client, &api[1], "reads_routed_total{to=\"replica\"}").await
        - replica_reads_before;
    assert!(replica_reads >= 30.0, "the reads ran on the standbys ({replica_reads})");

    // A revocation through one process reaches the other.
    let (ep_c, key_c) = create_endpoint_via(&client, &api[0], &token, connection, &company(&sim, 2)).await;
    assert_eq!(get(1, &ep_c, &key_c, "/jobs").await.0, 200);
    let deactivated = client
        .post(api[0].url(&format!("/api/admin/endpoints/{ep_c}/deactivate")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deactivated.status(), 200);
    eventually(Duration::from_secs(5), "the other process refusing the deactivated endpoint", || async {
        get(1, &ep_c, &key_c, "/jobs").await.0 != 200
    })
    .await;

    let read_urls: Vec<String> = api.iter().map(|p| p.url(&format!("/api/public/{ep_a}/jobs?page_size=10"))).collect();

    // A standby killed mid-load costs no failed read.
    let load = Load::start(&client, read_urls.clone(), &key_a);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = standbys.remove(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.postmaster_pid().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (reads, failures) = load.finish().await;
    assert!(reads > 50, "{reads} reads");
    assert_eq!(failures, Vec::<String>::new(), "a killed standby failed reads");
    for process in &api {
        let standing = replica_standing(&client, process, ports[0]).await.unwrap();
        assert_eq!(standing["up"], false, "{standing}");
    }
    drop(killed);

    // A standby held behind (replay paused) is avoided within the lag bound, and used again
    // once it catches up; the reader's own writes stay visible throughout.
    let standby = &standbys[0];
    let control = sqlx::PgPool::connect_with(standby.connect_options(DATABASE)).await.unwrap();
    sqlx::query("select pg_wal_replay_pause()").execute(&control).await.unwrap();
    let load = Load::start(&client, read_urls.clone(), &key_a);
    for n in 0..3 {
        let (status, _, created) =
            post(0, &ep_a, &key_a, "/jobs", json!({"status": "Quote", "description": format!("Held {n}")})).await;
        assert_eq!(status, 201, "{created}");
        let id = created["data"]["id"].as_str().unwrap();
        assert_eq!(get(0, &ep_a, &key_a, &format!("/jobs/{id}")).await.0, 200, "own write, standby paused");
    }
    for process in &api {
        eventually(Duration::from_secs(10), "the paused standby set aside", || async {
            replica_standing(&client, process, ports[1]).await.is_some_and(|r| r["serving"] == false && r["up"] == true)
        })
        .await;
    }
    sqlx::query("select pg_wal_replay_resume()").execute(&control).await.unwrap();
    for process in &api {
        eventually(Duration::from_secs(10), "the standby serving again after catching up", || async {
            replica_standing(&client, process, ports[1]).await.is_some_and(|r| r["serving"] == true)
        })
        .await;
    }
    control.close().await;
    let (reads, failures) = load.finish().await;
    assert!(reads > 50, "{reads} reads");
    assert_eq!(failures, Vec::<String>::new(), "a lagging standby failed reads");

    // The primary restarts under read load: reads carry on from the standby, writes answer 503
    // with Retry-After while it is down, and both processes resume on their own.
    let load = Load::start(&client, read_urls.clone(), &key_a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let primary = Arc::into_inner(primary).expect("the standbys are started");
    blocking(move || primary.stop().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, retry_after, refused) =
        post(1, &ep_a, &key_a, "/jobs", json!({"status": "Quote", "description": "During"})).await;
    assert_eq!((status, retry_after.is_some()), (503, true), "a write with the primary down: {refused}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let primary = blocking(move || LocalPostgres::start(&primary_dir, Durability::Ephemeral).unwrap()).await;
    let mut resumed = None;
    for _ in 0..60 {
        let (status, _, created) =
            post(0, &ep_a, &key_a, "/jobs", json!({"status": "Quote", "description": "After"})).await;
        if status == 201 {
            resumed = Some(created);
            break;
        }
        assert_eq!(status, 503, "{created}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let resumed = resumed.expect("writes resume after the primary restarts");
    let id = resumed["data"]["id"].as_str().unwrap();
    assert_eq!(get(1, &ep_a, &key_a, &format!("/jobs/{id}")).await.0, 200);
    let (reads, failures) = load.finish().await;
    assert!(reads > 50, "{reads} reads");
    assert_eq!(failures, Vec::<String>::new(), "a primary restart failed reads");

    drop((api, worker));
    for standby in standbys {
        blocking(move || standby.stop().unwrap()).await;
    }
    blocking(move || primary.stop().unwrap()).await;
    let _ = std::fs::remove_dir_all(&root);
}

/// [`create_endpoint`] against a child process.
async fn create_endpoint_via(
    client: &reqwest::Client,
    process: &Process,
    token: &str,
    connection: ConnectionId,
    company: &str,
) -> (String, String) {
    let body = json!({"connection_id": connection.0, "company_external_id": company, "name": "Portal"});
    let response =
        client.post(process.url("/api/admin/endpoints")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["endpoint"]["id"].as_str().unwrap().to_owned(), body["key"].as_str().unwrap().to_owned())
}
