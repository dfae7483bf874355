//! The local cluster the service runs on when no DATABASE_URL is set.

use std::time::{Duration, Instant};

use clientapi_schema::local_pg::{Durability, LocalPostgres};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::{Connection, PgConnection};

fn start(dir: &std::path::Path) -> LocalPostgres {
    LocalPostgres::start(dir, Durability::Ephemeral).expect("local Postgres starts")
}

async fn query_count(pg: &LocalPostgres) -> i64 {
    let mut conn = PgConnection::connect_with(&pg.connect_options("postgres")).await.unwrap();
    sqlx::query_scalar("select count(*) from kept").fetch_one(&mut conn).await.unwrap()
}

async fn create_kept_rows(pg: &LocalPostgres) {
    let mut conn = PgConnection::connect_with(&pg.connect_options("postgres")).await.unwrap();
    sqlx::raw_sql("create table kept (n int); insert into kept select generate_series(1, 3)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        // A zombie is gone for our purposes.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_cluster_initialises_once_stops_cleanly_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    assert!(pg.is_owner());
    // Connections go through the Unix socket (trusted, so its directory admits the server's
    // user alone); the URL names it too.
    use std::os::unix::fs::PermissionsExt;
    let run = dir.path().join("run");
    assert!(run.join(format!(".s.PGSQL.{}", pg.port())).exists());
    assert_eq!(std::fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(pg.url("postgres").contains(&format!("?host={}", run.display())), "{}", pg.url("postgres"));
    create_kept_rows(&pg).await;
    pg.stop().unwrap();
    assert!(!dir.path().join("pg/postmaster.pid").exists(), "a clean stop removes the pid file");

    let pg = start(dir.path());
    assert_eq!(query_count(&pg).await, 3, "data persists across restarts");
    pg.stop().unwrap();
}

#[tokio::test]
async fn a_stale_pid_file_left_by_a_crash_is_recovered_even_when_its_pid_was_reused() {
    let dir = tempfile::tempdir().unwrap();
    let pg = start(dir.path());
    create_kept_rows(&pg).await;
    let pid = pg.postmaster_pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_gone(pid);
    std::mem::forget(pg);

    // After a reboot the old pid often belongs to another program: point it at ourselves.
    let pid_file = dir.path().join("pg/postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).expect("SIGKILL leaves the pid file behind");
    let rest: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&pid_file, format!("{}\n{}\n", std::process::id(), rest.join("\n"))).unwrap();

    // Orphaned backends notice the postmaster's death within a moment and exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pg = loop {
        match LocalPostgres::start(dir.path(), Durability::Ephemeral) {
            Ok(pg) => break pg,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying start after crash: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("could not recover from the stale pid file: {e}"),
        }
    };
    assert_eq!(query_count(&pg).await, 3, "crash recovery keeps committed data");
    pg.stop().unwrap();
}

#[tokio::test]
async fn a_second_process_on_the_same_directory_shares_the_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let owner = start(dir.path());
    let guest = start(dir.path());
    assert!(!guest.is_owner());
    assert_eq!(guest.port(), owner.port());
    guest.stop().unwrap();
    // The guest's stop leaves the owner's server running.
    let mut conn = PgConnection::connect_with(&owner.connect_options("postgres")).await.unwrap();
    sqlx::query("select 1").execute(&mut conn).await.unwrap();
    owner.stop().unwrap();
}
