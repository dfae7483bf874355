//! The operators' dashboard and the admin API behind it, over HTTP: sessions, CSRF, account
//! isolation of every page, fragment and event, companies, schedules, usage, the event stream,
//! and the rule that test keys touch only sandbox data. (The browser suite drives the same
//! pages in Chromium: `browser.rs`.)

use std::time::{Duration, Instant};

use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::SimConfig;
use reqwest::header;
use serde_json::{Value, json};

use crate::endpoints::{company, create_endpoint, synced};
use crate::helpers::{TestApp, admin_token, clientapi, connect_servicem8, spawn_app_for, spawn_sim};

const PASSWORD: &str = "a long enough password";

/// A signed-in dashboard session.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

pub async fn sign_in(app: &TestApp, email: &str) -> Browser {
    let response = app
        .client
        .post(app.url("/api/admin/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    Browser { cookie, csrf: body["csrf_token"].as_str().unwrap().to_owned() }
}

async fn get_page(app: &TestApp, browser: &Browser, path: &str) -> (u16, String) {
    let response = app.client.get(app.url(path)).header(header::COOKIE, &browser.cookie).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post_form(app: &TestApp, browser: &Browser, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form: Vec<(&str, &str)> = vec![("csrf", browser.csrf.as_str())];
    form.extend_from_slice(fields);
    app.client.post(app.url(path)).header(header::COOKIE, &browser.cookie).form(&form).send().await.unwrap()
}

/// Reads an event stream until `until` is in it or `within` passes; returns what was read.
async fn read_stream(response: &mut reqwest::Response, within: Duration, until: Option<&str>) -> String {
    let deadline = Instant::now() + within;
    let mut text = String::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(_) => break,
            Err(_) => break,
        }
        if until.is_some_and(|needle| text.contains(needle)) {
            break;
        }
    }
    text
}

async fn open_stream(app: &TestApp, browser: &Browser, query: &str) -> reqwest::Response {
    let response = app
        .client
        .get(app.url(&format!("/api/admin/events{query}")))
        .header(header::COOKIE, &browser.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    response
}

#[tokio::test]
async fn pages_send_a_visitor_without_a_session_to_sign_in_and_sign_out_ends_the_session_on_the_server() {
    let sim = spawn_sim(SimConfig { companies: 2, jobs_per_company: 1, ..SimConfig::default() }).await;
    let app = spawn_app_for(&sim).await;
    admin_token(&app, "ops@example.com", "acme").await;

    let response = app.client.get(app.url("/endpoints?range=7d")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[header::LOCATION], "/login?next=%2Fendpoints%3Frange%3D7d");

    // The sign-in form: a wrong password is refused on the page, the right one goes on to `next`.
    let login = |password: &'static str| {
        app.client
            .post(app.url("/login"))
            .form(&[("email", "ops@example.com"), ("password", password), ("next", "/endpoints")])
            .send()
    };
    let refused = login("wrong").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("do not match"));
    let signed_in = login(PASSWORD).await.unwrap();
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()[header::LOCATION], "/endpoints");
    let set_cookie = signed_in.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let page = app.client.get(app.url("/")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("Connect a provider") && !html.contains("cdn"), "no CDN, a finished page");

    // A form without the session's CSRF token changes nothing.
    let forged = app
        .client
        .post(app.url("/logout"))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let out = app
        .client
        .post(app.url("/logout"))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
    // The old cookie is dead on the server, not only forgotten by the browser.
    let after = app.client.get(app.url("/")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303);
    let api = app.client.get(app.url("/api/admin/connections")).header(header::COOKIE, &cookie).send().await.unwrap();
    assert_eq!(api.status(), 401);
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_address_and_email() {
    let sim = spawn_sim(SimConfig { companies: 1, jobs_per_company: 1, ..SimConfig::default() }).await;
    let app = spawn_app_for(&sim).await;
    admin_token(&app, "ops@example.com", "acme").await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = app
            .client
            .post(app.url("/api/admin/login"))
            .json(&json!({"email": "ops@example.com", "password": "guess"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key(header::RETRY_AFTER));
        }
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(statuses[10..], [429, 429], "{statuses:?}");
    // The right password is held back too while the budget is spent: guessing cannot outrun it.
    let right = app
        .client
        .post(app.url("/login"))
        .form(&[("email", "ops@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 429);
    assert!(right.text().await.unwrap().contains("Too many sign-in attempts"));
}

#[tokio::test]
async fn a_second_account_gets_404_for_every_page_form_and_event_of_the_first() {
    let (sim, app, token, connection) = synced(3).await;
    let (endpoint, key) = create_endpoint(&app, &token, connection, &company(&sim, 0), json!({})).await;
    admin_token(&app, "eve@example.org", "other").await;
    let owner = sign_in(&app, "ops@example.com").await;
    let eve = sign_in(&app, "eve@example.org").await;

    let pages = [
        format!("/connections/{connection}"),
        format!("/connections/{connection}/companies"),
        format!("/connections/{connection}/companies?q=a"),
        format!("/connections/{connection}/disconnect"),
        format!("/endpoints/{endpoint}"),
        format!("/endpoints/{endpoint}?range=1h&status=4xx"),
        format!("/endpoints/{endpoint}/edit"),
        format!("/endpoints/{endpoint}/reissue"),
        format!("/endpoints/{endpoint}/deactivate"),
        format!("/endpoints/{endpoint}/delete"),
        format!("/endpoints/new?connection={connection}&company={}", company(&sim, 0)),
    ];
    for path in &pages {
        let (status, html) = get_page(&app, &owner, path).await;
        assert_eq!(status, 200, "the owner sees {path}");
        if path == &format!("/connections/{connection}") {
            assert!(html.contains("Provider webhooks"), "the connection page shows its webhooks");
        }
        if path == &format!("/endpoints/{endpoint}") {
            assert!(html.contains("Webhook subscriptions"), "the endpoint page shows its subscriptions");
        }
        let (status, eve_html) = get_page(&app, &eve, path).await;
        if path.starts_with("/endpoints/new") {
            // The form itself is anyone's; it offers only the viewer's own connections.
            assert_eq!(status, 200);
            assert!(!eve_html.contains(&format!("<option value=\"{connection}\"")), "{path}");
            assert!(html.contains(&format!("<option value=\"{connection}\"")));
            continue;
        }
        assert_eq!(status, 404, "{path}");
        assert!(!eve_html.contains(&endpoint) || path.contains(&endpoint), "nothing of the first account on {path}");
    }
    let forms: [(String, Vec<(&str, &str)>); 10] = [
        (format!("/connections/{connection}/sync"), vec![]),
        (format!("/connections/{connection}/webhooks"), vec![]),
        (format!("/connections/{connection}/schedule"), vec![("paused", "1")]),
        (format!("/connections/{connection}/disconnect"), vec![]),
        (format!("/endpoints/{endpoint}/edit"), vec![("name", "Taken over")]),
        (format!("/endpoints/{endpoint}/reissue"), vec![("grace_seconds", "0")]),
        (format!("/endpoints/{endpoint}/deactivate"), vec![]),
        (format!("/endpoints/{endpoint}/activate"), vec![]),
        (format!("/endpoints/{endpoint}/delete"), vec![]),
        ("/endpoints".to_owned(), vec![("name", "Mine now"), ("connection_id", "1"), ("company_external_id", "x")]),
    ];
    for (path, fields) in &forms {
        let response = post_form(&app, &eve, path, fields).await;
        let status = response.status().as_u16();
        if path == "/endpoints" {
            assert_eq!(status, 422, "another account's connection is not offered");
            assert!(response.text().await.unwrap().contains("no such connection in your account"));
        } else {
            assert_eq!(status, 404, "{path}");
        }
    }
    // Nothing changed: the key still works and the schedule is not paused.
    let me = app.client.get(app.url(&format!("/api/public/{endpoint}/me"))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(me.status(), 200);
    for path in [
        format!("/api/admin/connections/{connection}/companies"),
        format!("/api/admin/connections/{connection}/schedule"),
        format!("/api/admin/events?endpoint={endpoint}"),
        format!("/api/admin/endpoints/{endpoint}/usage?range=1h"),
    ] {
        let response = app.client.get(app.url(&path)).header(header::COOKIE, &eve.cookie).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }

    // Eve's own stream, open while the first account syncs, is asked about and is used: it
    // carries nothing of the first account.
    let mut eve_stream = open_stream(&app, &eve, "").await;
    let mut owner_stream = open_stream(&app, &owner, &format!("?endpoint={endpoint}")).await;
    read_stream(&mut owner_stream, Duration::from_secs(5), Some("event: ready")).await;
    read_stream(&mut eve_stream, Duration::from_secs(5), Some("event: ready")).await;
    let started = post_form(&app, &owner, &format!("/connections/{connection}/sync"), &[("full", "1")]).await;
    assert_eq!(started.status(), 303);
    let response =
        app.client.get(app.url(&format!("/api/public/{endpoint}/jobs"))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let post_edit =
        post_form(&app, &owner, &format!("/endpoints/{endpoint}/edit"), &[("name", "Renamed portal")]).await;
    assert_eq!(post_edit.status(), 303);
    let seen = read_stream(&mut owner_stream, Duration::from_secs(20), Some("/jobs")).await;
    assert!(seen.contains("event: sync_run"), "the owner sees the sync: {seen}");
    assert!(seen.contains("event: request") && seen.contains("/jobs"), "and the request: {seen}");
    let eve_saw = read_stream(&mut eve_stream, Duration::from_secs(2), None).await;
    assert!(
        !eve_saw.contains("event: sync_run")
            && !eve_saw.contains("event: endpoint")
            && !eve_saw.contains("event: request"),
        "{eve_saw}"
    );
    assert!(!eve_saw.contains(&endpoint) && !eve_saw.contains(&format!("\"connection_id\":{connection}")), "{eve_saw}");
}

#[tokio::test]
async fn the_event_stream_carries_sync_progress_and_the_watched_endpoints_new_requests() {
    let (sim, app, token, connection) = synced(2).await;
    let (endpoint, key) = create_endpoint(&app, &token, connection, &company(&sim, 0), json!({})).await;
    let (other, other_key) =
        create_endpoint(&app, &token, connection, &company(&sim, 1), json!({"name": "Other"})).await;
    let owner = sign_in(&app, "ops@example.com").await;
    let mut stream = open_stream(&app, &owner, &format!("?endpoint={endpoint}")).await;
    read_stream(&mut stream, Duration::from_secs(5), Some("event: ready")).await;

    app.state.engine.sync_connection(connection, true, None).await.unwrap();
    for (ep, key) in [(&other, &other_key), (&endpoint, &key)] {
        let url = app.url(&format!("/api/public/{ep}/jobs?page_size=2"));
        assert_eq!(app.client.get(url).bearer_auth(key).send().await.unwrap().status(), 200);
    }
    let seen = read_stream(&mut stream, Duration::from_secs(20), Some("event: request")).await;
    let progress: Vec<Value> = seen
        .split("event: sync_run\ndata: ")
        .skip(1)
        .map(|chunk| serde_json::from_str(chunk.lines().next().unwrap()).unwrap())
        .collect();
    assert!(progress.iter().any(|e| e["status"] == "running" && e["pages"].as_i64() > Some(0)), "{seen}");
    assert!(progress.iter().any(|e| e["status"] == "succeeded"), "the run's end: {seen}");
    let requests: Vec<Value> = seen
        .split("event: request\ndata: ")
        .skip(1)
        .map(|chunk| serde_json::from_str(chunk.lines().next().unwrap()).unwrap())
        .collect();
    assert_eq!(requests.len(), 1, "only the watched endpoint's rows: {seen}");
    assert_eq!(requests[0]["path"], format!("/api/public/{endpoint}/jobs"));
    assert_eq!(requests[0]["status"], 200);
}

#[tokio::test]
async fn companies_are_searched_by_name_in_keyset_pages_with_their_records_and_endpoints() {
    let (sim, app, token, connection) = synced(7).await;
    let first = company(&sim, 0);
    let (endpoint, _) = create_endpoint(&app, &token, connection, &first, json!({})).await;
    let get = |path: String| {
        let (app, token) = (&app, &token);
        async move {
            let response = app.client.get(app.url(&path)).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) =
            get(format!("/api/admin/connections/{connection}/companies?limit=3&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        for c in page["data"].as_array().unwrap() {
            seen.push((c["name"].as_str().unwrap_or_default().to_lowercase(), c.clone()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "every company once, across pages");
    let names: Vec<&String> = seen.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "by name");
    let mine = &seen.iter().find(|(_, c)| c["external_id"] == first.as_str()).unwrap().1;
    let jobs = sqlx::query_scalar::<_, i64>(
        "select count(*) from jobs j join companies c on c.id = j.company_id
         where c.external_id = $1 and j.deleted_at is null",
    )
    .bind(&first)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(mine["records"]["jobs"], jobs);
    assert!(jobs > 0 && mine["last_change_at"].is_string());
    assert_eq!(mine["endpoints"][0]["id"], endpoint.as_str());

    // Search is by part of the name, any case.
    let name = mine["name"].as_str().unwrap().to_owned();
    let part: String = name.chars().skip(1).take(5).collect::<String>().to_uppercase();
    let (_, found) = get(format!("/api/admin/connections/{connection}/companies?q={part}")).await;
    assert!(found["data"].as_array().unwrap().iter().any(|c| c["external_id"] == first.as_str()), "{found}");
    let (status, none) = get(format!("/api/admin/connections/{connection}/companies?q=%25%25nothing")).await;
    assert_eq!((status, none["data"].as_array().unwrap().len()), (200, 0), "% is matched literally");
    let (status, bad) = get(format!("/api/admin/connections/{connection}/companies?cursor=nope&limit=0")).await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = bad["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["limit", "cursor"]);

    // The dashboard page shows the same rows and a way to issue an endpoint for each.
    let owner = sign_in(&app, "ops@example.com").await;
    let (status, html) = get_page(&app, &owner, &format!("/connections/{connection}/companies?q={part}")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!("/endpoints/new?connection={connection}&amp;company={first}"))
            || html.contains(&format!("/endpoints/new?connection={connection}&#38;company={first}")),
        "{html}"
    );
}

#[tokio::test]
async fn a_connections_schedule_is_read_changed_paused_and_resumed_and_bad_values_are_named() {
    let (_sim, app, token, connection) = synced(1).await;
    let path = format!("/api/admin/connections/{connection}/schedule");
    let schedule: Value =
        app.client.get(app.url(&path)).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(schedule["incremental_every_minutes"], 5);
    assert_eq!(schedule["reconcile_at"], "03:30");
    assert_eq!(schedule["paused"], false);

    let changed = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&token)
        .json(&json!({"incremental_every_minutes": 15, "reconcile_at": "01:05"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let stored: (String, String) =
        sqlx::query_as("select sync_schedule, reconcile_schedule from connections where id = $1")
            .bind(connection)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, ("0 */15 * * * *".to_owned(), "0 5 1 * * *".to_owned()), "what the scheduler runs");

    let bad = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&token)
        .json(&json!({"incremental_every_minutes": 7, "reconcile_at": "25:00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");

    let paused = app
        .client
        .post(app.url(&format!("/api/admin/connections/{connection}/pause")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(paused.json::<Value>().await.unwrap()["paused"], true);
    let scheduled: bool = sqlx::query_scalar(
        "select exists (select 1 from connections where status = 'active' and not sync_paused and id = $1)",
    )
    .bind(connection)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(!scheduled, "the scheduler's query leaves it out");
    let resumed = app
        .client
        .post(app.url(&format!("/api/admin/connections/{connection}/resume")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.json::<Value>().await.unwrap()["paused"], false);

    // The dashboard's form does the same.
    let owner = sign_in(&app, "ops@example.com").await;
    let saved = post_form(
        &app,
        &owner,
        &format!("/connections/{connection}/schedule"),
        &[("incremental_every_minutes", "60"), ("reconcile_at", "23:45")],
    )
    .await;
    assert_eq!(saved.status(), 303);
    let schedule: Value =
        app.client.get(app.url(&path)).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (schedule["incremental_every_minutes"].as_i64(), schedule["reconcile_at"].as_str()),
        (Some(60), Some("23:45"))
    );
}

#[tokio::test]
async fn account_usage_counts_requests_errors_and_latency_per_endpoint_per_bucket() {
    let (sim, app, token, connection) = synced(2).await;
    let (a, key_a) = create_endpoint(&app, &token, connection, &company(&sim, 0), json!({})).await;
    let (b, key_b) = create_endpoint(&app, &token, connection, &company(&sim, 1), json!({"name": "B"})).await;
    for (ep, key, path) in [(&a, &key_a, "jobs"), (&a, &key_a, "nope"), (&b, &key_b, "clients")] {
        app.client.get(app.url(&format!("/api/public/{ep}/{path}"))).bearer_auth(key).send().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage: Value = app
            .client
            .get(app.url("/api/admin/usage?range=1h"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["totals"]["requests"] == 3 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(usage["totals"]["requests"], 3, "{usage}");
    assert_eq!(usage["totals"]["client_errors"], 1);
    assert_eq!(usage["bucket_seconds"], 300);
    assert_eq!(usage["buckets"].as_array().unwrap().len(), 12);
    let per: Vec<(String, i64)> = usage["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["totals"]["requests"].as_i64().unwrap()))
        .collect();
    assert_eq!(per, [(a.clone(), 2), (b.clone(), 1)]);
    assert!(usage["endpoints"][0]["totals"]["p95_ms"].as_f64().unwrap() > 0.0);
    let bad = app.client.get(app.url("/api/admin/usage?range=2h")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(bad.status(), 422);
    // Another account's usage is empty: the same query, its own endpoints only.
    let eve = admin_token(&app, "eve@example.org", "other").await;
    let theirs: Value = app
        .client
        .get(app.url("/api/admin/usage?range=1h"))
        .bearer_auth(&eve)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["totals"]["requests"], 0);
    assert_eq!(theirs["endpoints"].as_array().unwrap().len(), 0);
}

/// Connects the simulator as `environment` and syncs it.
async fn connected_as(app: &TestApp, token: &str, environment: &str) -> ConnectionId {
    let response = app
        .client
        .post(app.url("/api/admin/connections/servicem8/authorize"))
        .bearer_auth(token)
        .json(&json!({"environment": environment}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["environment"], environment);
    let approval = app.client.get(body["authorize_url"].as_str().unwrap()).send().await.unwrap();
    let callback = approval.headers()["location"].to_str().unwrap().to_owned();
    let connection: Value = app.client.get(&callback).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    assert_eq!(connection["environment"], environment);
    let id = ConnectionId(connection["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    id
}

#[tokio::test]
async fn test_endpoints_exist_only_on_sandbox_connections_and_live_ones_only_on_live_connections() {
    let live_sim = spawn_sim(SimConfig { companies: 1, jobs_per_company: 1, ..SimConfig::default() }).await;
    let app = spawn_app_for(&live_sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let live = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(live, false, None).await.unwrap();
    let company = company(&live_sim, 0);

    // The API: the wrong pairing is a 422 naming the rule; with no environment, the connection's.
    let refused = app
        .client
        .post(app.url("/api/admin/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"connection_id": live.0, "company_external_id": company, "name": "T", "environment": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "environment");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains("test endpoints exist only on sandbox connections")
    );
    let (live_ep, live_key) = create_endpoint(&app, &token, live, &company, json!({})).await;
    assert!(live_key.starts_with("sk_live_"));
    let edit = app
        .client
        .patch(app.url(&format!("/api/admin/endpoints/{live_ep}")))
        .bearer_auth(&token)
        .json(&json!({"environment": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 422, "an endpoint cannot change environment later either");

    // A sandbox connection of the same simulator account cannot be made twice in one account
    // (one row per provider account), so a second account connects it as a sandbox.
    let sandbox_token = admin_token(&app, "sandbox@example.com", "sandbox team").await;
    let sandbox = connected_as(&app, &sandbox_token, "sandbox").await;
    let (_, test_key) = create_endpoint(&app, &sandbox_token, sandbox, &company, json!({})).await;
    assert!(test_key.starts_with("sk_test_"), "a sandbox's endpoints default to test");
    let refused = app
        .client
        .post(app.url("/api/admin/endpoints"))
        .bearer_auth(&sandbox_token)
        .json(&json!({"connection_id": sandbox.0, "company_external_id": company, "name": "L", "environment": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    // The CLI says the same.
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("DATABASE_URL", app.database_url.as_str()),
        ("CLIENTAPI_SECRET_KEY", crate::helpers::TEST_MASTER_KEY),
        ("CLIENTAPI_DATA_DIR", dir.path().to_str().unwrap()),
    ];
    let live_arg = live.0.to_string();
    let out = clientapi(
        &["endpoint", "create", "--connection", &live_arg, "--company", &company, "--name", "CLI", "--test"],
        &envs,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("test endpoints exist only on sandbox connections"), "{stderr}");
    assert!(out.stdout.is_empty(), "no key printed");
    let sandbox_arg = sandbox.0.to_string();
    let out = clientapi(
        &["endpoint", "create", "--connection", &sandbox_arg, "--company", &company, "--name", "CLI", "--live"],
        &envs,
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out =
        clientapi(&["endpoint", "create", "--connection", &sandbox_arg, "--company", &company, "--name", "CLI"], &envs)
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("sk_test_"));

    // And the dashboard's form, which marks the field and keeps what was typed.
    let owner = sign_in(&app, "ops@example.com").await;
    let response = post_form(
        &app,
        &owner,
        "/endpoints",
        &[
            ("name", "Dashboard test key"),
            ("connection_id", &live_arg),
            ("company_external_id", &company),
            ("access", "read_only"),
            ("environment", "test"),
            ("scopes", "jobs:read"),
        ],
    )
    .await;
    assert_eq!(response.status(), 422);
    let html = response.text().await.unwrap();
    assert!(html.contains("test endpoints exist only on sandbox connections"), "{html}");
    assert!(html.contains("value=\"Dashboard test key\""), "what was typed stays");
    assert!(!html.contains("sk_test_") || html.contains("<code>sk_test_</code>"), "no key was made");

    // The pages label the sandbox and its test endpoints.
    let sandbox_admin = sign_in(&app, "sandbox@example.com").await;
    let (_, overview) = get_page(&app, &sandbox_admin, "/").await;
    assert!(overview.contains("badge sandbox\">Sandbox"), "{overview}");
    let (_, list) = get_page(&app, &sandbox_admin, "/endpoints").await;
    assert!(list.contains("badge sandbox\">Test"), "{list}");
}

#[tokio::test]
async fn creating_an_endpoint_on_the_dashboard_shows_its_key_once_and_never_again() {
    let (sim, app, _token, connection) = synced(1).await;
    let owner = sign_in(&app, "ops@example.com").await;
    let connection_arg = connection.0.to_string();
    let response = post_form(
        &app,
        &owner,
        "/endpoints",
        &[
            ("name", "Acme reporting"),
            ("connection_id", &connection_arg),
            ("company_external_id", &company(&sim, 0)),
            ("access", "read_only"),
            ("scopes", "jobs:read"),
            ("scopes", "invoices:read"),
            ("ip_allowlist", "10.0.0.0/8\n127.0.0.1"),
            ("rate_limit_per_minute", "120"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let html = response.text().await.unwrap();
    let key = html.split("value=\"sk_live_").nth(1).map(|k| format!("sk_live_{}", k.split('"').next().unwrap()));
    let key = key.expect("the key is on its page");
    assert!(html.contains("I have stored this key"));
    let endpoint = html.split("action=\"/endpoints/").nth(1).unwrap().split('"').next().unwrap().to_owned();

    let settings: Value = app
        .client
        .get(app.url(&format!("/api/admin/endpoints/{endpoint}")))
        .header(header::COOKIE, &owner.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["endpoint"]["scopes"], json!(["invoices:read", "jobs:read"]));
    assert_eq!(settings["endpoint"]["ip_allowlist"], json!(["10.0.0.0/8", "127.0.0.1/32"]));
    assert_eq!(settings["endpoint"]["rate_limit_per_minute"], 120);

    // The key works, and no page shows it again.
    let me = app.client.get(app.url(&format!("/api/public/{endpoint}/me"))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(me.status(), 200);
    for path in [
        "/".to_owned(),
        "/endpoints".to_owned(),
        format!("/endpoints/{endpoint}"),
        format!("/endpoints/{endpoint}/edit"),
    ] {
        let (status, html) = get_page(&app, &owner, &path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!html.contains(&key) && !html.contains(&key[8..]), "the key appears on {path}");
    }
}

#[tokio::test]
async fn a_browser_back_from_the_provider_finishes_the_connection_or_reads_the_providers_words() {
    let sim = spawn_sim(SimConfig { companies: 2, jobs_per_company: 1, ..SimConfig::default() }).await;
    let app = spawn_app_for(&sim).await;
    admin_token(&app, "ops@example.com", "acme").await;
    let owner = sign_in(&app, "ops@example.com").await;
    let browse = |url: String, cookie: Option<&str>| {
        let mut request = app.client.get(url).header(header::ACCEPT, "text/html,application/xhtml+xml");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send()
    };

    // Refused at the provider: the page says so in the provider's words, and nothing is stored.
    let denied =
        browse(app.url("/api/admin/oauth/servicem8/callback?error=access_denied&state=x"), Some(&owner.cookie))
            .await
            .unwrap();
    assert_eq!(denied.status(), 400);
    let html = denied.text().await.unwrap();
    assert!(html.contains("The connection failed") && html.contains("Access was denied: access_denied"), "{html}");

    // Approved: the Connect form goes to the provider, which sends the browser back. Coming from
    // another site, a SameSite=Strict cookie is not sent: the first visit answers a page that
    // follows the same URL from here, and that visit (with the cookie) stores the connection.
    let connect =
        post_form(&app, &owner, "/connections/connect", &[("provider", "servicem8"), ("environment", "sandbox")]).await;
    assert_eq!(connect.status(), 303);
    let authorize = connect.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let approval = app.client.get(&authorize).send().await.unwrap();
    let callback = approval.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let bounce = browse(callback.clone(), None).await.unwrap();
    assert_eq!(bounce.status(), 200);
    let html = bounce.text().await.unwrap();
    assert!(html.contains("http-equiv=\"refresh\"") && html.contains("bounced=1"), "{html}");
    let again = format!("{callback}&bounced=1");
    let done = browse(again.clone(), Some(&owner.cookie)).await.unwrap();
    assert_eq!(done.status(), 303);
    let location = done.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/connections/") && location.ends_with("?done=connected"), "{location}");
    let environment: String =
        sqlx::query_scalar("select environment from connections").fetch_one(&app.db).await.unwrap();
    assert_eq!(environment, "sandbox");
    // A signed-out browser that comes back is sent to sign in, and then here again.
    let signed_out = browse(format!("{callback}&bounced=1"), None).await.unwrap();
    assert_eq!(signed_out.status(), 303);
    assert!(signed_out.headers()[header::LOCATION].to_str().unwrap().starts_with("/login?next="));
}
