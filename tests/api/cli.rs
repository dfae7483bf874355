//! The `clientapi` binary as an operator runs it: no DATABASE_URL, its own local Postgres.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};

use crate::helpers::{
    clientapi, clientapi_at, database_target, free_port, fresh_database, http_get, read_stderr, spawn_serve, wait_ready,
};

const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn run_ok(mut cmd: Command, stdin: &str) -> String {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "command failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

fn wait_exit(pid: i32) {
    for _ in 0..600 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pid {pid} did not exit");
}

/// A data directory the `postgres` user can reach and a free port, for `serve` as a child.
struct Scratch {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    port: u16,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        Self { _dir: dir, data, port: free_port() }
    }

    fn envs(&self) -> [(&'static str, String); 2] {
        [
            ("CLIENTAPI_DATA_DIR", self.data.to_str().unwrap().to_owned()),
            ("CLIENTAPI_BIND", format!("127.0.0.1:{}", self.port)),
        ]
    }
}

#[test]
fn serve_runs_its_own_postgres_survives_sigkill_and_a_stale_pid_and_keeps_its_data() {
    let scratch = Scratch::new();
    let (data, port) = (scratch.data.clone(), scratch.port);
    let envs = scratch.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let mut serve = spawn_serve(&mut clientapi(&[], &envs));
    wait_ready(&mut serve, port, READY_TIMEOUT);
    let key_mode = std::fs::metadata(data.join("master.key")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600, "the generated master key is private");

    // A CLI command alongside the running service shares its cluster.
    run_ok(
        clientapi(&["user", "create", "--email", "ops@example.com", "--password-stdin"], &envs),
        "a long enough password\n",
    );

    // Crash both the service and its postmaster, and leave a pid file naming a live process.
    let postmaster = postmaster_pid(&data).expect("serve wrote a postmaster.pid");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(serve.id() as i32), Signal::SIGKILL).unwrap();
    serve.wait().unwrap();
    wait_exit(postmaster);
    let pid_file = data.join("pg/postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).expect("the crash left a stale pid file");
    let rest: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&pid_file, format!("{}\n{}\n", std::process::id(), rest.join("\n"))).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let mut serve = spawn_serve(&mut clientapi(&[], &envs));
    wait_ready(&mut serve, port, READY_TIMEOUT);
    // The user made before the crash is still there: a token can be issued for it.
    let token = run_ok(clientapi(&["token", "create", "--email", "ops@example.com"], &envs), "");
    let lines: Vec<&str> = token.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds the token and nothing else: {token:?}");
    assert!(lines[0].starts_with("ak_") && lines[0].len() == 43, "{token:?}");

    // SIGTERM: a clean exit that stops the local Postgres too.
    let postmaster = postmaster_pid(&data).unwrap();
    kill(Pid::from_raw(serve.id() as i32), Signal::SIGTERM).unwrap();
    let status = serve.wait().unwrap();
    assert!(status.success(), "serve exited with {status}: {}", read_stderr(&mut serve));
    wait_exit(postmaster);
    assert!(!pid_file.exists(), "a clean shutdown removes postmaster.pid");
}

#[test]
fn serve_works_as_an_unprivileged_user_too() {
    if !Uid::effective().is_root() {
        // Already unprivileged: the test above covered this case; the root case needs root.
        eprintln!("not root: the unprivileged path is exercised by every other test");
        return;
    }
    // Run as `nobody` from a copy of the binary in a directory that user can reach.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("clientapi");
    std::fs::copy(env!("CARGO_BIN_EXE_clientapi"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    nix::unistd::chown(&data, Some(nix::unistd::Uid::from_raw(65534)), Some(nix::unistd::Gid::from_raw(65534)))
        .unwrap();

    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]);
    let inner =
        clientapi_at(&binary, &[], &[("CLIENTAPI_DATA_DIR", data.to_str().unwrap()), ("CLIENTAPI_BIND", &bind)]);
    cmd.arg(inner.get_program()).envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?)))).env_remove("DATABASE_URL");
    cmd.current_dir(dir.path());
    let mut serve = spawn_serve(&mut cmd);
    wait_ready(&mut serve, port, READY_TIMEOUT);

    let owner = std::fs::metadata(data.join("pg/PG_VERSION")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&owner), 65534, "the cluster belongs to the unprivileged user");
    let postmaster = postmaster_pid(&data).unwrap();
    kill(Pid::from_raw(serve.id() as i32), Signal::SIGTERM).unwrap();
    assert!(serve.wait().unwrap().success(), "{}", read_stderr(&mut serve));
    wait_exit(postmaster);
}

#[test]
fn serve_local_replicas_copies_the_cluster_serves_reads_from_it_and_stops_it() {
    let scratch = Scratch::new();
    let (data, port) = (scratch.data.clone(), scratch.port);
    let envs = scratch.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut serve = clientapi(&["serve", "--api-only", "--local-replicas", "1"], &envs)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut serve, port, READY_TIMEOUT);
    let standby = data.join("replica-1");
    assert!(standby.join("pg/standby.signal").is_file(), "pg_basebackup -R made a standby");
    // The service finds it, measures it within the lag bound, and serves reads from it.
    let mut serving = false;
    for _ in 0..100 {
        let ready = http_get(port, "/readyz").unwrap_or_default();
        if ready.contains("\"serving\":true") {
            serving = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serving, "/readyz never showed the local replica serving");
    let (primary, replica) = (postmaster_pid(&data).unwrap(), postmaster_pid(&standby).unwrap());
    kill(Pid::from_raw(serve.id() as i32), Signal::SIGTERM).unwrap();
    let status = serve.wait().unwrap();
    assert!(status.success(), "serve exited with {status}: {}", read_stderr(&mut serve));
    wait_exit(replica);
    wait_exit(primary);
}

#[test]
fn bad_settings_are_all_named_and_exit_with_status_2() {
    let out = clientapi(&["serve"], &[("CLIENTAPI_BIND", "not-an-address"), ("CLIENTAPI_SECRET_KEY", "dG9vIHNob3J0")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CLIENTAPI_BIND") && stderr.contains("CLIENTAPI_SECRET_KEY"), "{stderr}");
    assert!(!stderr.contains("dG9vIHNob3J0"), "the secret must not be echoed: {stderr}");
}

#[test]
fn missing_postgres_binaries_give_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = clientapi(
        &["migrate"],
        &[("CLIENTAPI_PG_BIN", "/nonexistent"), ("CLIENTAPI_DATA_DIR", dir.path().to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install postgresql") && stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn user_create_refuses_a_short_password_and_a_duplicate_email() {
    let name = fresh_database().await;
    let (_, url) = database_target(&name);
    let envs = [("DATABASE_URL", url.as_str())];
    run_ok(clientapi(&["user", "create", "--email", "a@example.com", "--password-stdin"], &envs), "long enough pw\n");

    for (stdin, expect) in [("short\n", "password must be"), ("long enough pw\n", "already exists")] {
        let mut cmd = clientapi(&["user", "create", "--email", "A@example.com", "--password-stdin"], &envs);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{stderr}");
        assert!(!stderr.contains(stdin.trim()), "the password must not be echoed");
    }
}

#[test]
fn simulate_servicem8_serves_the_provider_shape_until_stopped() {
    let port = free_port();
    let mut sim = clientapi(
        &["simulate", "servicem8", "--port", &port.to_string(), "--companies", "2", "--jobs-per-company", "3"],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut waited = 0;
    // Unauthenticated API calls answer ServiceM8's 401; the authorize page redirects.
    while crate::helpers::http_status(port, "/api_1.0/job.json") != Some(401) {
        assert!(waited < 300, "the simulator did not come up");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let redirect = crate::helpers::http_status(
        port,
        "/oauth/authorize?response_type=code&client_id=sim-client&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&state=s",
    );
    assert_eq!(redirect, Some(302));
    kill(Pid::from_raw(sim.id() as i32), Signal::SIGTERM).unwrap();
    assert!(sim.wait().unwrap().success());
}
