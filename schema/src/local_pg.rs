//! A private Postgres cluster run from the machine's installed server binaries (DESIGN.md §2).
//!
//! The cluster lives in one directory, is initialised on first use, listens on loopback on a
//! private port (and on a unix socket inside the data directory when the path is short enough),
//! and persists across runs. The postmaster is our child process: it is started through
//! `setpriv --pdeathsig SIGINT`, so if this process dies, even by SIGKILL, Postgres gets a fast
//! shutdown instead of being orphaned. When we run as root, `setpriv` also drops to the
//! `postgres` system user, because Postgres refuses to run as root (`runuser` would not forward
//! the stop signal). A `postmaster.pid` left behind by a crash is recognised and removed; a live
//! postmaster already serving the directory (another process of ours) is shared, not restarted.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User, chown};
use rand::distr::{Alphanumeric, SampleString};
use sqlx::postgres::PgConnectOptions;

/// The superuser `initdb` creates; the service connects as it.
pub const SUPERUSER: &str = "clientapi";
/// How long we wait for the postmaster to accept connections or to stop.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Unix socket paths are limited to 107 bytes; the socket file adds ~20 to the directory.
const MAX_SOCKET_DIR_LEN: usize = 80;

/// Everything that can go wrong while finding, initialising, starting or stopping the cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and postgres via CLIENTAPI_PG_BIN, \
         `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH). Install the PostgreSQL server \
         (Debian/Ubuntu: `apt-get install postgresql`), point CLIENTAPI_PG_BIN at its bin directory, \
         or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but there is no `postgres` system user to run the server as \
         (Postgres refuses to run as root); create it or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error("{action} failed: {detail}")]
    Command { action: &'static str, detail: String },
    #[error("the local Postgres did not become ready within {0:?}; its log says:\n{1}")]
    StartTimeout(Duration, String),
    #[error("the local Postgres exited during start-up ({0}); its log says:\n{1}")]
    ExitedEarly(ExitStatus, String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalPgError + '_ {
    move |source| LocalPgError::Io { path: path.to_path_buf(), source }
}

/// How the cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The service's own data: Postgres defaults (fsync on).
    Durable,
    /// Throw-away clusters for tests and benchmarks' scratch: no fsync, so an OS crash may lose
    /// data, but a process crash (even SIGKILL of the postmaster) loses no committed work.
    Ephemeral,
}

/// A running (or shared) local cluster. Stop it with [`LocalPostgres::stop`]; dropping it
/// without stopping leaves the postmaster to `pdeathsig` at process exit.
pub struct LocalPostgres {
    data_dir: PathBuf,
    port: u16,
    password: String,
    /// `Some` when this process started the postmaster and owns its shutdown.
    child: Option<ChildHandle>,
}

impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("owned", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

/// The postmaster's pid and its exit status, filled in by the thread that waits on it.
#[derive(Clone)]
struct ChildHandle {
    pid: u32,
    exit: Arc<(Mutex<Option<ExitStatus>>, Condvar)>,
}

impl ChildHandle {
    fn exited(&self) -> Option<ExitStatus> {
        *self.exit.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let (lock, cvar) = &*self.exit;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) =
            cvar.wait_timeout_while(guard, timeout, |status| status.is_none()).unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// Where the server binaries are (a directory holding `initdb`, `postgres`, `pg_ctl`).
/// Whether the server has the `pg_stat_statements` library (Debian's postgresql package does).
fn stat_statements_installed(bin: &Path) -> bool {
    bin.parent().is_some_and(|root| root.join("lib/pg_stat_statements.so").is_file())
}

pub fn find_bin_dir() -> Result<PathBuf, LocalPgError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("CLIENTAPI_PG_BIN").map(PathBuf::from) {
        return if has_server(&dir) { Ok(dir) } else { Err(LocalPgError::BinariesNotFound) };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    // Debian keeps server binaries out of PATH, one directory per major version: take the newest.
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| has_server(dir))
        .ok_or(LocalPgError::BinariesNotFound)
}

/// Who runs the server: ourselves, or (when we are root) the `postgres` system user.
#[derive(Debug, Clone)]
struct RunAs {
    user: Option<User>,
}

impl RunAs {
    fn detect() -> Result<Self, LocalPgError> {
        if !Uid::effective().is_root() {
            return Ok(Self { user: None });
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(Self { user: Some(user) }),
            _ => Err(LocalPgError::NoPostgresUser),
        }
    }

    /// A command for `program`, dropping privileges and arranging a parent-death signal.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        if self.user.is_some() {
            cmd.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups"]);
        }
        cmd.args(["--pdeathsig", "SIGINT", "--"]).arg(program);
        cmd
    }

    /// Gives a path we created to the user who runs the server.
    fn hand_over(&self, path: &Path) -> Result<(), LocalPgError> {
        if let Some(user) = &self.user {
            chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| LocalPgError::Io { path: path.to_path_buf(), source: e.into() })?;
        }
        Ok(())
    }
}

impl LocalPostgres {
    /// Starts the cluster in `data_dir` (initialising it on first use), or joins the postmaster
    /// that already serves it. Blocking: call it from `spawn_blocking` in async code.
    pub fn start(data_dir: &Path, durability: Durability) -> Result<Self, LocalPgError> {
        let bin = find_bin_dir()?;
        let run_as = RunAs::detect()?;
        let data_dir = absolute(data_dir)?;
        let cluster = data_dir.join("pg");
        let password_file = data_dir.join("pg.password");

        create_private_dir(&data_dir, run_as.user.is_some())?;
        if !cluster.join("PG_VERSION").is_file() {
            init_cluster(&bin, &run_as, &data_dir, &cluster, &password_file)?;
        }
        let password = read_secret_file(&password_file)?;

        if let Some(port) = live_postmaster_port(&cluster)? {
            tracing::info!(port, dir = %cluster.display(), "sharing the local Postgres that already serves this directory");
            return Ok(Self { data_dir, port, password, child: None });
        }

        let port = choose_port(&data_dir.join("pg.port"))?;
        let socket_dir = data_dir.join("run");
        let use_socket = socket_dir.as_os_str().len() <= MAX_SOCKET_DIR_LEN;
        clear_stale_sockets(&socket_dir)?;
        if use_socket {
            fs::create_dir_all(&socket_dir).map_err(io_err(&socket_dir))?;
            // Local connections are trusted (initdb's --auth-local=trust): the socket is for
            // the server's user (and root) alone.
            fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&socket_dir))?;
            run_as.hand_over(&socket_dir)?;
        }
        let log_path = data_dir.join("pg.log");
        let log =
            OpenOptions::new().create(true).append(true).mode(0o600).open(&log_path).map_err(io_err(&log_path))?;
        let log_err = log.try_clone().map_err(io_err(&log_path))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut cmd = run_as.command(&bin.join("postgres"));
        cmd.arg("-D").arg(&cluster);
        cmd.args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("port={port}")]);
        let sockets = if use_socket { socket_dir.display().to_string() } else { String::new() };
        cmd.args(["-c", &format!("unix_socket_directories={sockets}"), "-c", "unix_socket_permissions=0700"]);
        cmd.args(["-c", "max_connections=200", "-c", "shared_buffers=256MB"]);
        // Per-statement counts for operators, the benchmark and the N+1 tests, where installed.
        if stat_statements_installed(&bin) {
            cmd.args([
                "-c",
                "shared_preload_libraries=pg_stat_statements",
                "-c",
                "pg_stat_statements.track_utility=off",
            ]);
        }
        if durability == Durability::Ephemeral {
            for setting in ["fsync=off", "full_page_writes=off"] {
                cmd.args(["-c", setting]);
            }
        }
        cmd.current_dir(&cluster).stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = spawn_owned(cmd)?;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.exited() {
                return Err(LocalPgError::ExitedEarly(status, log_tail(&log_path, log_start)));
            }
            if postmaster_status(&cluster).as_deref() == Some("ready") {
                break;
            }
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(child.pid as i32), Signal::SIGQUIT);
                return Err(LocalPgError::StartTimeout(STARTUP_TIMEOUT, log_tail(&log_path, log_start)));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::info!(port, dir = %cluster.display(), "local Postgres started");
        Ok(Self { data_dir, port, password, child: Some(child) })
    }

    /// Starts a hot standby of this cluster in `dir` (first use: `pg_basebackup` from this
    /// cluster, streaming, with `standby.signal`), or joins the one already serving `dir`. It
    /// runs from the same binaries as its primary and follows it by streaming replication;
    /// it shares the primary's superuser and password, copied with the data.
    /// Blocking: call it from `spawn_blocking` in async code.
    pub fn start_replica(&self, dir: &Path, durability: Durability) -> Result<Self, LocalPgError> {
        let bin = find_bin_dir()?;
        let run_as = RunAs::detect()?;
        let dir = absolute(dir)?;
        let cluster = dir.join("pg");
        create_private_dir(&dir, run_as.user.is_some())?;
        if !cluster.join("PG_VERSION").is_file() {
            // A half-copied standby from an interrupted backup is useless: start over.
            if cluster.exists() {
                fs::remove_dir_all(&cluster).map_err(io_err(&cluster))?;
            }
            fs::create_dir_all(&cluster).map_err(io_err(&cluster))?;
            fs::set_permissions(&cluster, fs::Permissions::from_mode(0o700)).map_err(io_err(&cluster))?;
            run_as.hand_over(&cluster)?;
            let mut cmd = run_as.command(&bin.join("pg_basebackup"));
            cmd.arg("-D").arg(&cluster);
            // -R writes standby.signal and primary_conninfo; the WAL made during the copy
            // streams beside it, so the standby starts consistent.
            cmd.args(["-R", "-X", "stream", "--checkpoint=fast", "-U", SUPERUSER, "-p", &self.port.to_string()]);
            match self.socket_dir() {
                Some(socket) => cmd.arg("-h").arg(socket),
                None => cmd.args(["-h", "127.0.0.1"]).env("PGPASSWORD", &self.password),
            };
            let out = cmd
                .current_dir(&cluster)
                .output()
                .map_err(|e| LocalPgError::Command { action: "running pg_basebackup", detail: e.to_string() })?;
            if !out.status.success() {
                let _ = fs::remove_dir_all(&cluster);
                return Err(LocalPgError::Command {
                    action: "pg_basebackup",
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
            write_secret_file(&dir.join("pg.password"), &self.password)?;
            tracing::info!(dir = %cluster.display(), "copied a hot standby from the local Postgres");
        }
        Self::start(&dir, durability)
    }

    /// Connection options for `database` on this cluster, as its superuser: through the Unix
    /// socket when the cluster has one, else loopback TCP.
    ///
    /// The socket is also the faster transport, and it carries no Nagle's algorithm: sqlx 0.9.0
    /// sets no TCP_NODELAY (transact-rs/sqlx#4335, fixed upstream in #4336, not yet released), so
    /// over TCP a COPY's closing message waits for the server's delayed acknowledgement, about
    /// 40 ms, which every small COPY (a write's read-back, an incremental page) would pay.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        let options =
            PgConnectOptions::new().port(self.port).username(SUPERUSER).password(&self.password).database(database);
        match self.socket_dir() {
            Some(dir) => options.socket(dir),
            None => options.host("127.0.0.1"),
        }
    }

    /// The directory of the cluster's Unix socket, when it has one.
    fn socket_dir(&self) -> Option<PathBuf> {
        let dir = self.data_dir.join("run");
        dir.join(format!(".s.PGSQL.{}", self.port)).exists().then_some(dir)
    }

    /// A `postgres://` URL for `database`. It holds the password: hand it only to child
    /// processes (psql, pgbench), never to a log.
    ///
    /// Like [`Self::connect_options`], it names the socket when there is one (`?host=`, which
    /// sqlx, psql and pgbench all read).
    pub fn url(&self, database: &str) -> String {
        let url = format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.port);
        match self.socket_dir() {
            Some(dir) => format!("{url}?host={}", percent_encode(&dir.to_string_lossy())),
            None => url,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process started the postmaster (and so stops it).
    pub fn is_owner(&self) -> bool {
        self.child.is_some()
    }

    /// The postmaster's pid while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        read_pid_file(&self.data_dir.join("pg")).map(|(pid, _)| pid)
    }

    /// Fast shutdown (SIGINT: disconnect clients, checkpoint, exit), waiting for it to finish.
    /// A shared cluster is left running for its owner.
    pub fn stop(self) -> Result<(), LocalPgError> {
        let Some(child) = self.child else { return Ok(()) };
        if child.exited().is_some() {
            return Ok(());
        }
        let _ = kill(Pid::from_raw(child.pid as i32), Signal::SIGINT);
        match child.wait_timeout(STOP_TIMEOUT) {
            Some(_) => {
                tracing::info!("local Postgres stopped");
                Ok(())
            }
            None => {
                let _ = kill(Pid::from_raw(child.pid as i32), Signal::SIGQUIT);
                Err(LocalPgError::Command {
                    action: "stopping the local Postgres",
                    detail: format!("no exit within {STOP_TIMEOUT:?}; sent SIGQUIT"),
                })
            }
        }
    }
}

/// Spawns the postmaster from a thread that lives exactly as long as it does: the parent-death
/// signal fires when the *thread* that forked exits, so it must not be a pool thread.
fn spawn_owned(mut cmd: Command) -> Result<ChildHandle, LocalPgError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let exit = Arc::new((Mutex::new(None), Condvar::new()));
    let exit_for_thread = exit.clone();
    std::thread::Builder::new()
        .name("local-postgres".into())
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let status = child.wait();
                let (lock, cvar) = &*exit_for_thread;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(-1)));
                cvar.notify_all();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| LocalPgError::Command { action: "spawning a thread", detail: e.to_string() })?;
    let pid = rx
        .recv()
        .map_err(|_| LocalPgError::Command { action: "starting postgres", detail: "spawn thread died".into() })?
        .map_err(|e| LocalPgError::Command { action: "starting postgres (via setpriv)", detail: e.to_string() })?;
    Ok(ChildHandle { pid, exit })
}

fn init_cluster(
    bin: &Path,
    run_as: &RunAs,
    data_dir: &Path,
    cluster: &Path,
    password_file: &Path,
) -> Result<(), LocalPgError> {
    // A half-made cluster from an interrupted initdb is useless: start over.
    if cluster.exists() {
        fs::remove_dir_all(cluster).map_err(io_err(cluster))?;
    }
    fs::create_dir_all(cluster).map_err(io_err(cluster))?;
    fs::set_permissions(cluster, fs::Permissions::from_mode(0o700)).map_err(io_err(cluster))?;
    run_as.hand_over(cluster)?;

    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    write_secret_file(password_file, &password)?;
    // initdb reads the password from a file the server user can read; it lives only for the call.
    let pwfile = data_dir.join("pg.initpw");
    write_secret_file(&pwfile, &password)?;
    run_as.hand_over(&pwfile)?;

    let mut cmd = run_as.command(&bin.join("initdb"));
    cmd.arg("-D").arg(cluster).arg(format!("--pwfile={}", pwfile.display()));
    cmd.args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256"]);
    cmd.args(["-E", "UTF8", "--locale=C", "--no-instructions"]);
    cmd.current_dir(cluster);
    let out = cmd.output();
    let _ = fs::remove_file(&pwfile);
    let out = out.map_err(|e| LocalPgError::Command { action: "running initdb", detail: e.to_string() })?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if run_as.user.is_some() && detail.contains("ermission denied") {
            detail.push_str(&format!(
                "\nhint: the `postgres` system user must be able to reach {}; \
                 set CLIENTAPI_DATA_DIR to a directory it can traverse",
                data_dir.display()
            ));
        }
        let _ = fs::remove_dir_all(cluster);
        return Err(LocalPgError::Command { action: "initdb", detail });
    }
    tracing::info!(dir = %cluster.display(), "initialised a new local Postgres cluster");
    Ok(())
}

/// The postmaster.pid file: (pid, lines).
fn read_pid_file(cluster: &Path) -> Option<(u32, Vec<String>)> {
    let text = fs::read_to_string(cluster.join("postmaster.pid")).ok()?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let pid = lines.first()?.trim().parse().ok()?;
    Some((pid, lines))
}

/// Line 8 of postmaster.pid: `starting`, `ready`, `stopping`.
fn postmaster_status(cluster: &Path) -> Option<String> {
    read_pid_file(cluster).and_then(|(_, lines)| lines.get(7).map(|s| s.trim().to_owned()))
}

/// If a live postmaster serves `cluster`, its port. A pid file whose process is gone, or whose
/// pid now belongs to some other program (pids are reused after a crash), is stale: remove it so
/// the postmaster does not refuse to start.
fn live_postmaster_port(cluster: &Path) -> Result<Option<u16>, LocalPgError> {
    let pid_path = cluster.join("postmaster.pid");
    let Some((pid, lines)) = read_pid_file(cluster) else {
        if pid_path.exists() {
            fs::remove_file(&pid_path).map_err(io_err(&pid_path))?;
        }
        return Ok(None);
    };
    let alive_postgres = is_live_postgres(pid);
    let port = lines.get(3).and_then(|p| p.trim().parse::<u16>().ok());
    if alive_postgres
        && lines.get(7).map(|s| s.trim()) == Some("ready")
        && let Some(port) = port
    {
        return Ok(Some(port));
    }
    if alive_postgres {
        return Err(LocalPgError::Command {
            action: "starting the local Postgres",
            detail: format!("postmaster pid {pid} holds {} but is not ready; try again", cluster.display()),
        });
    }
    tracing::warn!(pid, "removing a stale postmaster.pid left by a crash");
    fs::remove_file(&pid_path).map_err(io_err(&pid_path))?;
    Ok(None)
}

/// Whether `pid` is a running (not zombie) postgres process. A zombie keeps its name and
/// answers `kill(pid, 0)`, which is exactly how a crashed postmaster fools a naive check in a
/// container whose init does not reap.
fn is_live_postgres(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) state …`; comm may itself contain spaces or parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    matches!(comm, "postgres" | "postmaster") && !matches!(state, "Z" | "X")
}

/// With no live postmaster on the cluster, nothing uses our private socket directory: socket
/// lock files left there by a crash would otherwise stop the new postmaster.
fn clear_stale_sockets(socket_dir: &Path) -> Result<(), LocalPgError> {
    let Ok(entries) = fs::read_dir(socket_dir) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
}

/// The port used last time if it is still free, else a fresh free one (remembered for next time).
fn choose_port(port_file: &Path) -> Result<u16, LocalPgError> {
    let free = |port: u16| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok();
    if let Some(port) = fs::read_to_string(port_file).ok().and_then(|s| s.trim().parse::<u16>().ok())
        && port != 0
        && free(port)
    {
        return Ok(port);
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err(port_file))?;
    let port = listener.local_addr().map_err(io_err(port_file))?.port();
    drop(listener);
    fs::write(port_file, port.to_string()).map_err(io_err(port_file))?;
    Ok(port)
}

fn absolute(path: &Path) -> Result<PathBuf, LocalPgError> {
    std::path::absolute(path).map_err(io_err(path))
}

/// The data directory holds secrets: private to us, but traversable by the server user when we
/// run as root (it owns the `pg/` subdirectory).
fn create_private_dir(dir: &Path, traversable: bool) -> Result<(), LocalPgError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mode = if traversable { 0o711 } else { 0o700 };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

/// Writes a secret with mode 0600 from the first byte (never world-readable, even briefly).
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), LocalPgError> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn read_secret_file(path: &Path) -> Result<String, LocalPgError> {
    let mut text = String::new();
    File::open(path).and_then(|mut f| f.read_to_string(&mut text)).map_err(io_err(path))?;
    Ok(text.trim().to_owned())
}

fn log_tail(path: &Path, from: u64) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = (from as usize).min(text.len());
    let tail = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = tail.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A URL query value: everything but unreserved characters and `/` percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
