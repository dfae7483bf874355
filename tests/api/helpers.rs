//! The test harness: one local Postgres cluster per test run (or `DATABASE_URL`), one database
//! per test cloned from a migrated template, and the app on port 0, driven over HTTP.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clientapi::config::Config;
use clientapi::startup::Application;
use clientapi_schema::db;
use clientapi_schema::local_pg::{Durability, LocalPostgres};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

/// A fixed master key for tests (base64 of 32 bytes of 0x2a).
pub const TEST_MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

enum Cluster {
    /// Started for this run; never stopped explicitly: the parent-death signal stops it when
    /// the test process exits.
    Local(LocalPostgres),
    External(Box<(PgConnectOptions, url::Url)>),
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        clientapi::telemetry::init_logging("info,sqlx=warn");
    }
}

/// Where this run keeps scratch: clusters of earlier runs whose process is gone are removed.
pub fn scratch_root() -> PathBuf {
    let root = std::env::temp_dir().join("clientapi-tests");
    std::fs::create_dir_all(&root).unwrap();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("run-").and_then(|p| p.parse::<u32>().ok())
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    root.join(format!("run-{}", std::process::id()))
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        init_test_logging();
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL must parse");
                Cluster::External(Box::new((options, url::Url::parse(&url).expect("DATABASE_URL must be a URL"))))
            }
            _ => Cluster::Local(
                LocalPostgres::start(&scratch_root().join("pg"), Durability::Ephemeral)
                    .expect("starting the test run's local Postgres"),
            ),
        }
    })
}

/// Options and URL for `database` on the test cluster.
pub fn database_target(database: &str) -> (PgConnectOptions, String) {
    match cluster() {
        Cluster::Local(pg) => (pg.connect_options(database), pg.url(database)),
        Cluster::External(external) => {
            let (options, url) = &**external;
            let mut url = url.clone();
            url.set_path(database);
            (options.clone().database(database), url.to_string())
        }
    }
}

/// A fresh database for one test, cloned from the migrated template. Returns its name.
pub async fn fresh_database() -> String {
    let template = TEMPLATE
        .get_or_init(|| async {
            let name = format!("clientapi_template_{}", std::process::id());
            let (maintenance, _) = database_target("postgres");
            db::ensure_database(&maintenance, &name, None).await.expect("creating the template database");
            let (options, _) = database_target(&name);
            let pool = db::connect(options).await.expect("connecting to the template");
            db::migrate(&pool).await.expect("migrating the template");
            pool.close().await;
            name
        })
        .await;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (maintenance, _) = database_target("postgres");
    db::ensure_database(&maintenance, &name, Some(template)).await.expect("cloning the template");
    name
}

/// A running app on its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: clientapi::startup::AppState,
    pub client: reqwest::Client,
    pub db: PgPool,
    /// The test's own database, for running the CLI against it.
    pub database_url: String,
    pub shutdown: CancellationToken,
    _data_dir: tempfile::TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request failed")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings for a test: the given database, port 0, a scratch data dir, a fixed master key.
pub fn test_config(database_url: &str, data_dir: &Path, extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("CLIENTAPI_BIND", "127.0.0.1:0"),
        ("CLIENTAPI_DATA_DIR", data_dir.to_str().unwrap()),
        ("CLIENTAPI_SECRET_KEY", TEST_MASTER_KEY),
        // The tests send many wrong keys from one address on purpose; the tarpit test turns it on.
        ("CLIENTAPI_FAILED_AUTH_DELAY_MS", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(None, &env).expect("test config is valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the app with extra settings (environment names and values).
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let name = fresh_database().await;
    let (_, database_url) = database_target(&name);
    spawn_app_on(database_url, extra).await
}

/// Spawns the app on the database at `database_url` (migrated on start) with extra settings.
pub async fn spawn_app_on(database_url: String, extra: &[(&str, &str)]) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let config = test_config(&database_url, data_dir.path(), extra);
    let app = Application::build(config).await.expect("building the app");
    let addr = app.local_addr();
    let db = app.state().db.clone();
    let state = app.state().clone();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = app.run_until_stopped(stop).await {
            eprintln!("test app stopped with an error: {e:#}");
        }
    });
    TestApp {
        addr,
        state,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        db,
        database_url,
        shutdown,
        _data_dir: data_dir,
    }
}

/// A free loopback port (released before it is returned, so racy but fine on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `clientapi` binary run as a child process, as an operator would.
pub fn clientapi(args: &[&str], envs: &[(&str, &str)]) -> Command {
    clientapi_at(Path::new(env!("CARGO_BIN_EXE_clientapi")), args, envs)
}

pub fn clientapi_at(binary: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(args).env_remove("DATABASE_URL").env_remove("CLIENTAPI_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Waits until `GET /readyz` on `port` answers 200, or panics with the child's stderr.
pub fn wait_ready(child: &mut Child, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the service exited early ({status}): {}", read_stderr(child));
        }
        if http_status(port, "/readyz") == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "the service was not ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// A bare HTTP/1.1 GET over loopback (blocking), returning the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A bare HTTP/1.1 GET over loopback (blocking), returning the whole response, head and body.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Spawns `serve` with piped stderr.
pub fn spawn_serve(cmd: &mut Command) -> Child {
    cmd.arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning clientapi serve")
}

/// A ServiceM8 simulator on a loopback port.
pub async fn spawn_sim(
    config: clientapi_sync::simulator::servicem8::SimConfig,
) -> clientapi_sync::simulator::servicem8::Running {
    clientapi_sync::simulator::servicem8::Simulator::spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// The app, configured to use `sim` as ServiceM8.
pub async fn spawn_app_for(sim: &clientapi_sync::simulator::servicem8::Running) -> TestApp {
    spawn_app_for_with(sim, &[]).await
}

/// The app, configured to use `sim` as ServiceM8, with extra settings.
pub async fn spawn_app_for_with(
    sim: &clientapi_sync::simulator::servicem8::Running,
    extra: &[(&str, &str)],
) -> TestApp {
    let (api, oauth) = (sim.api_url(), sim.oauth_url());
    let config = sim.sim.config().clone();
    let mut settings = vec![
        ("CLIENTAPI_SERVICEM8_API_URL", api.as_str()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", oauth.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", config.client_id.as_str()),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", config.client_secret.as_str()),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

/// A Jobber simulator on a loopback port.
pub async fn spawn_jobber(
    config: clientapi_sync::simulator::jobber::SimConfig,
) -> clientapi_sync::simulator::jobber::Running {
    clientapi_sync::simulator::jobber::Simulator::spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// The app, configured to use `sim` as Jobber.
pub async fn spawn_app_for_jobber(sim: &clientapi_sync::simulator::jobber::Running, extra: &[(&str, &str)]) -> TestApp {
    let (api, oauth) = (sim.api_url(), sim.oauth_url());
    let config = sim.sim.config().clone();
    let mut settings = vec![
        ("CLIENTAPI_JOBBER_API_URL", api.as_str()),
        ("CLIENTAPI_JOBBER_OAUTH_URL", oauth.as_str()),
        ("CLIENTAPI_JOBBER_CLIENT_ID", config.client_id.as_str()),
        ("CLIENTAPI_JOBBER_CLIENT_SECRET", config.client_secret.as_str()),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

/// `method /api/public/{ep}{path}` with `key`, a JSON body if given: (status, JSON answer).
pub async fn send_as(
    app: &TestApp,
    ep: &str,
    key: &str,
    method: reqwest::Method,
    path: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app.client.request(method, app.url(&format!("/api/public/{ep}{path}"))).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// `GET path` with a bearer token (a key or an admin token), as JSON.
pub async fn get_json(app: &TestApp, path: &str, bearer: &str) -> serde_json::Value {
    app.client.get(app.url(path)).bearer_auth(bearer).send().await.unwrap().json().await.unwrap()
}

/// Creates an admin user in `account` and returns an `ak_` token for it.
pub async fn admin_token(app: &TestApp, email: &str, account: &str) -> String {
    clientapi::accounts::create_user(&app.db, email, "a long enough password".into(), account).await.unwrap();
    clientapi::accounts::create_admin_token(&app.db, email, "test").await.unwrap()
}

/// Starts the OAuth flow as `token`'s admin; returns the provider's redirect back to us.
pub async fn authorize_redirect(app: &TestApp, token: &str) -> String {
    authorize_redirect_for(app, token, "servicem8").await
}

/// Starts `provider`'s OAuth flow as `token`'s admin; returns the provider's redirect back to us.
pub async fn authorize_redirect_for(app: &TestApp, token: &str, provider: &str) -> String {
    let response = app
        .client
        .post(app.url(&format!("/api/admin/connections/{provider}/authorize")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let body: serde_json::Value = response.json().await.unwrap();
    let authorize_url = body["authorize_url"].as_str().unwrap().to_owned();
    // The simulator approves at once and redirects back to the callback.
    let approval = app.client.get(&authorize_url).send().await.unwrap();
    assert_eq!(approval.status(), 302);
    approval.headers()["location"].to_str().unwrap().to_owned()
}

/// Runs the whole OAuth flow over HTTP; returns the new connection.
pub async fn connect_servicem8(app: &TestApp, token: &str) -> serde_json::Value {
    connect_provider(app, token, "servicem8").await
}

/// Runs `provider`'s whole OAuth flow over HTTP; returns the new connection.
pub async fn connect_provider(app: &TestApp, token: &str, provider: &str) -> serde_json::Value {
    let callback = authorize_redirect_for(app, token, provider).await;
    let response = app.client.get(&callback).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Where the tests that run on Node.js live, with their pinned npm packages.
pub fn node_suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Node.js and these npm packages, or a message naming what is missing and how to get it.
pub fn require_node_packages(packages: &[&str]) {
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "this test needs Node.js (`node`) on PATH"
    );
    for package in packages {
        assert!(
            node_suite_dir().join("node_modules").join(package).exists(),
            "this test needs the npm package {package}: `npm ci --prefix tests/browser` (.ci/run runs it)"
        );
    }
}

/// Runs `script` from the Node tests' directory with `envs` (off the async runtime); panics
/// with its output unless it succeeds, and returns what it printed.
pub async fn run_node(script: &str, envs: Vec<(&'static str, String)>) -> String {
    let script = script.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new("node");
        command.arg(&script).current_dir(node_suite_dir());
        for (name, value) in envs {
            command.env(name, value);
        }
        command.output().expect("running node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "node failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}
