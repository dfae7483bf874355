//! The dashboard in a real browser: `tests/browser/dashboard.mjs` drives Debian's Chromium
//! (playwright-core, axe-core; installed by `.ci/run` with `npm ci`, never committed) against
//! this app, the test's Postgres and the ServiceM8 simulator. Screenshots of every page land in
//! `target/browser-screenshots/`.

use std::path::Path;
use std::time::Duration;

use clientapi_sync::simulator::servicem8::{FaultKnobs, SimConfig};

use crate::helpers::{require_node_packages, run_node, spawn_app_for, spawn_sim};

const CHROMIUM: &str = "/usr/bin/chromium";

/// What the suite needs, or a message naming what is missing and how to get it.
fn require_tools() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "the browser suite needs Chromium at {chromium}: `apt-get install chromium` (.ci/run installs it)"
    );
    require_node_packages(&["playwright-core", "axe-core"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connects_issues_a_key_watches_its_traffic_reissues_deactivates_and_signs_out_in_chromium() {
    require_tools();
    // Small pages with a little latency, so the first sync's progress is there to watch.
    let sim = spawn_sim(SimConfig {
        companies: 24,
        jobs_per_company: 4,
        page_size: 25,
        faults: FaultKnobs { latency: Duration::from_millis(120), ..FaultKnobs::default() },
        ..SimConfig::default()
    })
    .await;
    let app = spawn_app_for(&sim).await;
    let (email, password) = ("ops@example.com", "a long enough password");
    clientapi::accounts::create_user(&app.db, email, password.into(), "Acme Field Services").await.unwrap();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);

    let stdout = run_node(
        "dashboard.mjs",
        vec![
            ("BASE_URL", app.url("")),
            ("EMAIL", email.to_owned()),
            ("PASSWORD", password.to_owned()),
            ("SCREENSHOTS", screenshots.display().to_string()),
        ],
    )
    .await;
    assert!(stdout.contains("browser suite passed"), "{stdout}");
    // What the suite did, it did for real: the endpoint it made was deactivated, its keys kept.
    let (status, keys): (String, i64) = sqlx::query_as(
        "select e.status, (select count(*) from endpoint_keys k where k.endpoint_id = e.id)
         from endpoints e where e.name = 'Acme reporting (browser)'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), keys), ("inactive", 2));
}

/// A synced simulator of `companies` and a read-only endpoint with its key, for a page to use.
async fn endpoint_with_key(
    companies: usize,
) -> (clientapi_sync::simulator::servicem8::Running, crate::helpers::TestApp, String, String) {
    let (sim, app, token, connection) = crate::endpoints::synced(companies).await;
    let company = crate::endpoints::company(&sim, 0);
    let (endpoint, key) =
        crate::endpoints::create_endpoint(&app, &token, connection, &company, serde_json::json!({})).await;
    (sim, app, endpoint, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_loads_offline_runs_a_query_with_the_key_in_its_headers_and_shows_the_schema() {
    require_tools();
    let (_sim, app, endpoint, key) = endpoint_with_key(2).await;
    let page = app.get(&format!("/api/public/{endpoint}/graphql")).await;
    assert_eq!(page.status(), 200, "GraphiQL's assets are embedded (npm ci --prefix web/graphiql before building)");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !page.text().await.unwrap().contains("cdn"), "{csp}");

    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    let stdout = run_node(
        "graphiql.mjs",
        vec![
            ("URL", app.url(&format!("/api/public/{endpoint}/graphql"))),
            ("KEY", key),
            ("SCREENSHOTS", screenshots.display().to_string()),
        ],
    )
    .await;
    assert!(stdout.contains("graphiql ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_renders_offline_with_an_example_per_operation_and_problem_types_link_into_it() {
    require_tools();
    let (_sim, app, endpoint, key) = endpoint_with_key(1).await;
    // A real problem: its `type` is a link into the page, under the service's public URL.
    let refused = app.client.get(app.url(&format!("/api/public/{endpoint}/jobs?page_size=0"))).bearer_auth(&key);
    let problem: serde_json::Value = refused.send().await.unwrap().json().await.unwrap();
    let kind = problem["type"].as_str().unwrap().to_owned();
    assert_eq!(kind, app.url("/api/public/docs#problem-invalid_input"), "{problem}");
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
    let stdout = run_node(
        "docs.mjs",
        vec![
            ("URL", app.url("/api/public/docs")),
            ("PROBLEM_TYPE", kind),
            ("SCREENSHOTS", screenshots.display().to_string()),
        ],
    )
    .await;
    assert!(stdout.contains("docs page ok"), "{stdout}");
}
