//! `clientapi demo`, tried as a newcomer would: run it, paste every printed command, stop it,
//! run it again.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{clientapi, free_port};

/// Runs the demo until it prints `ready`; returns the child, its stdout lines and stderr.
fn start_demo(data: &std::path::Path, port: u16) -> (std::process::Child, Vec<String>, String) {
    let bind = format!("127.0.0.1:{port}");
    let mut child =
        clientapi(&["demo", "--companies", "3", "--jobs-per-company", "6"], &[("CLIENTAPI_BIND", bind.as_str())])
            .env("CLIENTAPI_DATA_DIR", data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line == "ready" => break,
            Ok(line) => lines.push(line),
            Err(_) => panic!("the demo never got ready; stderr: {}", erx.try_iter().collect::<Vec<_>>().join("\n")),
        }
    }
    let stderr: Vec<String> = erx.try_iter().collect();
    (child, lines, stderr.join("\n"))
}

fn paste_every_command(lines: &[String]) -> usize {
    let commands: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    for command in &commands {
        let out = Command::new("sh").arg("-c").arg(format!("{command} -w '\n%{{http_code}}'")).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        assert!(status == "200" || status == "201", "pasted command failed ({status}): {command}");
        assert!(!body.contains("\"errors\""), "pasted command answered errors: {command}: {body}");
    }
    commands.len()
}

/// The printed dashboard sign-in opens a session; a wrong password does not.
fn assert_dashboard_sign_in_works(lines: &[String], port: u16) {
    let line = lines.iter().find(|l| l.contains("Dashboard")).expect("the demo prints the dashboard");
    assert!(line.contains(&format!("http://127.0.0.1:{port}/")), "{line}");
    let password = line.split("with password ").nth(1).and_then(|p| p.split(')').next()).expect("a password");
    let sign_in = |password: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-urlencode", "email=demo@clientapi.local"])
            .arg("--data-urlencode")
            .arg(format!("password={password}"))
            .arg(format!("http://127.0.0.1:{port}/login"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(sign_in(password), "303", "the printed password signs in");
    assert_eq!(sign_in("wrong"), "401");
}

#[test]
fn the_demo_works_start_to_finish_and_a_second_run_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let port = free_port();

    let (mut demo, lines, stderr) = start_demo(&data, port);
    assert!(stderr.contains("Created admin demo@clientapi.local"), "{stderr}");
    assert!(stderr.contains("through OAuth") && stderr.contains("Synced"), "{stderr}");
    let keys: Vec<&String> =
        lines.iter().filter(|l| l.contains("key  sk_test_") || l.contains("key sk_test_")).collect();
    assert_eq!(keys.len(), 2, "a read-only and a read-write test key, for the sandbox: {lines:?}");
    assert!(stderr.contains("sandbox"), "{stderr}");
    assert!(paste_every_command(&lines) >= 8);
    assert_dashboard_sign_in_works(&lines, port);
    kill(Pid::from_raw(demo.id() as i32), Signal::SIGINT).unwrap();
    assert!(demo.wait().unwrap().success(), "Ctrl-C stops the demo cleanly");
    assert!(!data.join("pg/postmaster.pid").exists(), "and its Postgres");

    let (mut again, lines, stderr) = start_demo(&data, port);
    assert!(stderr.contains("Reusing the demo data"), "{stderr}");
    assert!(paste_every_command(&lines) >= 8, "the new keys work");
    assert_dashboard_sign_in_works(&lines, port);
    kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM).unwrap();
    assert!(again.wait().unwrap().success());
}
