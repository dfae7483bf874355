//! Third-party tools against the running service, as customers' developers point them at it:
//! schemathesis over every public operation (coverage, fuzzing and stateful phases), and a
//! client generated from the served OpenAPI document by openapi-python-client. The tools come
//! from PyPI, pinned by `tests/conformance/requirements.txt` into `tests/conformance/.venv`
//! (`.ci/run` makes it; never committed).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::endpoints::{company, create_endpoint, synced};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// A tool of the pinned virtualenv, or a message naming what is missing and how to get it.
pub fn python_tool(name: &str) -> PathBuf {
    let path = conformance_dir().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "this test needs {name} from tests/conformance/requirements.txt: `python3 -m venv tests/conformance/.venv && \
         tests/conformance/.venv/bin/pip install --no-deps -r tests/conformance/requirements.txt` (.ci/run does it)"
    );
    path
}

/// Runs `command` off the async runtime; returns (success, stdout + stderr).
async fn run(mut command: Command) -> (bool, String) {
    let output =
        tokio::task::spawn_blocking(move || command.output().expect("running a conformance tool")).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// An endpoint with a read-write key over a synced simulator, its rate limit out of the way
/// (the tools send thousands of requests a minute).
async fn read_write_endpoint()
-> (crate::helpers::TestApp, String, String, clientapi_sync::simulator::servicem8::Running) {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) = create_endpoint(
        &app,
        &token,
        conn,
        &company(&sim, 0),
        // Every scope, so no operation answers only 403.
        json!({"access": "read_write", "rate_limit_per_minute": 1_000_000, "scopes": crate::endpoints::every_scope()}),
    )
    .await;
    (app, ep, key, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_the_openapi_document_and_the_server() {
    let st = python_tool("st");
    let (app, ep, key, _sim) = read_write_endpoint().await;
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(conformance_dir().join("schemathesis.toml"), work.path().join("schemathesis.toml")).unwrap();
    let mut command = Command::new(st);
    command
        .current_dir(work.path())
        .env("PYTHONPATH", conformance_dir())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("EP", &ep)
        .env("NO_COLOR", "1")
        .args(["run", &app.url("/api/public/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {key}"), "-H", &format!("X-API-Key: {key}")])
        // Replaced by the hooks' versions (see hooks.py); missing_required_header reads the two
        // alternative security schemes as two required headers.
        .args(["--checks", "all"])
        .args([
            "--exclude-checks",
            "missing_required_header,positive_data_acceptance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--workers", "1", "--seed", "1", "--max-examples", "10", "--request-timeout", "10"]);
    let (ok, output) = run(command).await;
    let summary = output.rsplit("SUMMARY").next().unwrap_or(&output);
    println!("schemathesis:{summary}");
    assert!(ok && output.contains("No issues found"), "schemathesis found problems:\n{output}");
    // It really ran every phase over every operation.
    let operations = app.get("/api/public/openapi.json").await.json::<serde_json::Value>().await.unwrap()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>();
    assert!(summary.contains(&format!("Tested: {operations}")), "every operation tested: {summary}");
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(summary.contains(&format!("✅ {phase}")), "the {phase} phase ran and passed: {summary}");
    }
}

#[tokio::test]
async fn a_client_generated_from_the_served_document_lists_pages_reads_writes_and_follows_changes() {
    let generator = python_tool("openapi-python-client");
    let python = python_tool("python");
    let (app, ep, key, _sim) = read_write_endpoint().await;
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, app.get("/api/public/openapi.json").await.bytes().await.unwrap()).unwrap();
    let mut generate = Command::new(generator);
    generate.current_dir(work.path()).env("PATH", generate_path()).args([
        "generate",
        "--path",
        spec.to_str().unwrap(),
        "--output-path",
        work.path().join("clientapi_client").to_str().unwrap(),
        "--meta",
        "none",
    ]);
    let (ok, output) = run(generate).await;
    assert!(ok, "openapi-python-client failed:\n{output}");
    assert!(!output.contains("WARNING"), "every operation and model generated cleanly:\n{output}");
    let mut client = Command::new(python);
    client
        .arg(conformance_dir().join("client.py"))
        .env("GENERATED", work.path())
        .env("BASE_URL", app.url(""))
        .env("ENDPOINT", &ep)
        .env("KEY", &key);
    let (ok, output) = run(client).await;
    assert!(ok && output.contains("generated client ok"), "the generated client failed:\n{output}");
    println!("{output}");
}

/// The venv's tools first (the generator formats its output with ruff from there).
fn generate_path() -> String {
    let venv = conformance_dir().join(".venv/bin");
    format!("{}:{}", venv.display(), std::env::var("PATH").unwrap_or_default())
}
