//! Scoped endpoints and keys: issue, scope, rotate, revoke, rate-limit, log.

use std::time::{Duration, Instant};

use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::{Running, SimConfig};
use serde_json::{Value, json};

use crate::helpers::{TestApp, admin_token, connect_servicem8, spawn_app_for_with, spawn_sim};

/// A synced connection and an admin token.
pub async fn synced(companies: usize) -> (Running, TestApp, String, ConnectionId) {
    synced_with(companies, &[]).await
}

/// A synced connection and an admin token, the app run with extra settings.
pub async fn synced_with(companies: usize, settings: &[(&str, &str)]) -> (Running, TestApp, String, ConnectionId) {
    let sim = spawn_sim(SimConfig { companies, jobs_per_company: 4, ..SimConfig::default() }).await;
    let app = spawn_app_for_with(&sim, settings).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    (sim, app, token, id)
}

/// The simulated account's head offices (companies without a parent), in the simulator's order:
/// a site is served by its head office's endpoint.
pub fn head_offices(sim: &Running) -> Vec<String> {
    sim.sim
        .records("company")
        .iter()
        .filter(|c| c["parent_company_uuid"] == "")
        .map(|c| c["uuid"].as_str().unwrap().to_owned())
        .collect()
}

/// Every read scope, and the technicians shown on jobs and visits: what a probe of every
/// resource needs.
pub fn every_read_scope() -> Vec<String> {
    let mut scopes: Vec<String> = clientapi_schema::model::Resource::ALL.iter().map(|r| r.read_scope()).collect();
    scopes.push(clientapi::auth::TECHNICIANS_READ.to_owned());
    scopes
}

/// Every scope there is, the personal ones and webhook management included.
pub fn every_scope() -> Vec<String> {
    let mut scopes = every_read_scope();
    scopes.extend(clientapi::endpoints::WRITABLE.iter().map(|r| r.write_scope()));
    scopes.push(clientapi::webhooks::WEBHOOKS_MANAGE.to_owned());
    scopes
}

pub fn company(sim: &Running, n: usize) -> String {
    sim.sim.records("company")[n]["uuid"].as_str().unwrap().to_owned()
}

/// Creates an endpoint through the admin API; returns (endpoint id, key).
pub async fn create_endpoint(
    app: &TestApp,
    token: &str,
    connection: ConnectionId,
    company: &str,
    extra: Value,
) -> (String, String) {
    let mut body = json!({"connection_id": connection.0, "company_external_id": company, "name": "Portal"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let response =
        app.client.post(app.url("/api/admin/endpoints")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    (body["endpoint"]["id"].as_str().unwrap().to_owned(), body["key"].as_str().unwrap().to_owned())
}

async fn get_as(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Flips one character of a well-formed key's checksum.
fn bad_checksum(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn the_authorization_matrix_answers_exactly_for_every_public_route() {
    let (sim, app, token, conn) = synced(3).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    let (other_ep, other_key) = create_endpoint(&app, &token, conn, &company(&sim, 1), json!({})).await;
    let (allow_ep, allow_key) = create_endpoint(
        &app,
        &token,
        conn,
        &company(&sim, 2),
        json!({"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]}),
    )
    .await;
    let (off_ep, off_key) = create_endpoint(&app, &token, conn, &company(&sim, 2), json!({})).await;
    app.client
        .post(app.url(&format!("/api/admin/endpoints/{off_ep}/deactivate")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (old_ep, revoked_key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    app.client
        .post(app.url(&format!("/api/admin/endpoints/{old_ep}/reissue")))
        .bearer_auth(&token)
        .json(&json!({"grace_seconds": 0}))
        .send()
        .await
        .unwrap();
    let (expired_ep, expired_key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    sqlx::query("update endpoints set expires_at = now() - interval '1 second' where public_id = $1")
        .bind(&expired_ep)
        .execute(&app.db)
        .await
        .unwrap();
    let wrong_secret = clientapi::endpoint_key::generate(false);
    let (narrow_ep, narrow_key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"scopes": ["clients:read"]})).await;

    // Every public route: what a valid (read-only) key gets, and what a key holding only
    // clients:read gets. Writes with a read-only key are refused before anything else.
    const OK: (u16, &str) = (200, "");
    const NOT_FOUND: (u16, &str) = (404, "not_found");
    const NO_SCOPE: (u16, &str) = (403, "missing_scope");
    const READ_ONLY: (u16, &str) = (403, "read_only_endpoint");
    let get = reqwest::Method::GET;
    let write_body = json!({"status": "Quote"});
    type Expect = (u16, &'static str);
    let routes: Vec<(reqwest::Method, &str, Option<Value>, Expect, Expect)> = vec![
        (get.clone(), "/me", None, OK, OK),
        (get.clone(), "/jobs", None, OK, NO_SCOPE),
        (get.clone(), "/query/?resource=job", None, OK, NO_SCOPE),
        (get.clone(), "/jobs/no-such-job", None, NOT_FOUND, NO_SCOPE),
        // Without `resource`, the feed is every resource the key may read: clients here.
        (get.clone(), "/changes", None, OK, OK),
        (get.clone(), "/changes?resource=job", None, OK, NO_SCOPE),
        (get.clone(), "/staff", None, NO_SCOPE, NO_SCOPE),
        (get.clone(), "/sites", None, OK, NO_SCOPE),
        (reqwest::Method::POST, "/visits", Some(json!({"job_id": "j"})), READ_ONLY, READ_ONLY),
        (get.clone(), "/export?resource=job", None, OK, NO_SCOPE),
        (get.clone(), "/attachments/no-such-file/content", None, NOT_FOUND, NO_SCOPE),
        (get.clone(), "/clients", None, OK, OK),
        (reqwest::Method::POST, "/graphql", Some(json!({"query": "{ me { id } }"})), OK, OK),
        (reqwest::Method::POST, "/jobs", Some(write_body.clone()), READ_ONLY, READ_ONLY),
        (reqwest::Method::PATCH, "/jobs/no-such-job", Some(write_body.clone()), READ_ONLY, READ_ONLY),
        (reqwest::Method::DELETE, "/jobs/no-such-job", None, READ_ONLY, READ_ONLY),
        (reqwest::Method::PATCH, "/clients/no-such-client", Some(json!({"name": "x"})), READ_ONLY, READ_ONLY),
    ];
    let send = |method: reqwest::Method, path: String, key: Option<String>, body: Option<Value>| {
        let app = &app;
        async move {
            let mut request = app.client.request(method, app.url(&path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            request.send().await.unwrap()
        }
    };
    for (method, route, body, valid, narrow) in routes {
        let path = |e: &str| format!("/api/public/{e}{route}");
        let cases: Vec<(&str, String, Option<String>, Expect)> = vec![
            ("no key", path(&ep), None, (401, "unauthorized")),
            ("malformed", path(&ep), Some("hello".into()), (401, "unauthorized")),
            ("bad checksum", path(&ep), Some(bad_checksum(&key)), (401, "unauthorized")),
            ("wrong secret", path(&ep), Some(wrong_secret.clone()), (401, "unauthorized")),
            ("revoked", path(&old_ep), Some(revoked_key.clone()), (401, "unauthorized")),
            ("expired", path(&expired_ep), Some(expired_key.clone()), (401, "unauthorized")),
            ("other company's key", path(&ep), Some(other_key.clone()), (401, "unauthorized")),
            ("IP outside allowlist", path(&allow_ep), Some(allow_key.clone()), (403, "ip_not_allowed")),
            ("deactivated endpoint", path(&off_ep), Some(off_key.clone()), (403, "endpoint_inactive")),
            ("valid", path(&ep), Some(key.clone()), valid),
            ("valid, other endpoint", path(&other_ep), Some(other_key.clone()), valid),
            ("clients:read only", path(&narrow_ep), Some(narrow_key.clone()), narrow),
        ];
        let mut unauthorized_bodies = Vec::new();
        for (case, path, key, (status, code)) in cases {
            let (got, answer) = problem(send(method.clone(), path, key, body.clone()).await).await;
            assert_eq!(got, status, "{method} {route} / {case}: {answer}");
            if status >= 400 {
                assert_eq!(answer["code"], code, "{method} {route} / {case}");
            }
            if status == 401 {
                unauthorized_bodies.push((answer["title"].clone(), answer["detail"].clone(), answer["type"].clone()));
            }
        }
        unauthorized_bodies.dedup();
        assert_eq!(unauthorized_bodies.len(), 1, "every 401 must look the same: {unauthorized_bodies:?}");
        // X-API-Key works like Bearer.
        let mut request = app.client.request(method.clone(), app.url(&path(&ep))).header("x-api-key", &key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), valid.0);
    }
    let me: Value = get_as(&app, &format!("/api/public/{ep}/me"), Some(&key)).await.json().await.unwrap();
    assert_eq!(me["company_external_id"], company(&sim, 0));
    assert_eq!(me["access"], "read_only");
    assert!(me["scopes"].as_array().unwrap().iter().all(|s| s.as_str().unwrap().ends_with(":read")));
    assert!(me["freshness"].as_array().unwrap().iter().any(|f| f["resource"] == "job" && f["sync_status"] == "synced"));
}

#[tokio::test]
async fn a_key_is_shown_once_stored_hashed_and_a_reissue_grace_window_ends_on_time() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    assert_eq!(get_as(&app, &format!("/api/public/{ep}/me"), Some(&key)).await.status(), 200);

    // Never again in an admin answer: only a hint.
    for path in [format!("/api/admin/endpoints/{ep}"), "/api/admin/endpoints".to_owned()] {
        let text = app.client.get(app.url(&path)).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains(&key[8..]), "{path} shows the key");
        assert!(text.contains(&key[..12]), "{path} shows the hint");
    }

    let response = app
        .client
        .post(app.url(&format!("/api/admin/endpoints/{ep}/reissue")))
        .bearer_auth(&token)
        .json(&json!({"grace_seconds": 2}))
        .send()
        .await
        .unwrap();
    let new_key = response.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    let reissued = Instant::now();
    assert_eq!(
        get_as(&app, &format!("/api/public/{ep}/me"), Some(&new_key)).await.status(),
        200,
        "the new key works at once"
    );
    assert_eq!(
        get_as(&app, &format!("/api/public/{ep}/me"), Some(&key)).await.status(),
        200,
        "the old key works in the grace window"
    );
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(reissued.elapsed())).await;
    assert_eq!(
        get_as(&app, &format!("/api/public/{ep}/me"), Some(&key)).await.status(),
        401,
        "the old key is dead after the grace window"
    );
    assert_eq!(get_as(&app, &format!("/api/public/{ep}/me"), Some(&new_key)).await.status(), 200);

    // Out-of-range grace windows are refused.
    for grace in [-1, 7 * 24 * 3600 + 1] {
        let response = app
            .client
            .post(app.url(&format!("/api/admin/endpoints/{ep}/reissue")))
            .bearer_auth(&token)
            .json(&json!({"grace_seconds": grace}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
    }

    // Neither the database nor the request log holds a key.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pg_dump = clientapi_schema::local_pg::find_bin_dir().unwrap().join("pg_dump");
    let url = app.state.config.database_url.as_ref().unwrap().expose().clone();
    let dump = std::process::Command::new(pg_dump).args(["--data-only", "--dbname", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("COPY public.endpoint_keys") && text.contains("COPY public.request_logs"));
    for secret in [&key, &new_key] {
        assert!(!text.contains(&secret[8..]), "the dump holds a key");
    }
}

#[tokio::test]
async fn a_revocation_on_one_process_reaches_another_within_a_second() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, mut key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    // A second service process on the same database.
    let port = crate::helpers::free_port();
    let bind = format!("127.0.0.1:{port}");
    let url = app.state.config.database_url.as_ref().unwrap().expose().clone();
    let mut other = crate::helpers::spawn_serve(&mut crate::helpers::clientapi(
        &[],
        &[("DATABASE_URL", &url), ("CLIENTAPI_BIND", &bind), ("CLIENTAPI_SECRET_KEY", crate::helpers::TEST_MASTER_KEY)],
    ));
    crate::helpers::wait_ready(&mut other, port, Duration::from_secs(60));
    let remote = |key: String| {
        let client = app.client.clone();
        let url = format!("http://127.0.0.1:{port}/api/public/{ep}/me");
        async move { client.get(url).bearer_auth(key).send().await.unwrap().status().as_u16() }
    };
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        assert_eq!(remote(key.clone()).await, 200, "warm the other process's cache");
        assert_eq!(remote(key.clone()).await, 200);
        let revoked_at = Instant::now();
        let response = app
            .client
            .post(app.url(&format!("/api/admin/endpoints/{ep}/reissue")))
            .bearer_auth(&token)
            .json(&json!({"grace_seconds": 0}))
            .send()
            .await
            .unwrap();
        let next = response.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
        while remote(key.clone()).await != 401 {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "the other process still accepts a revoked key after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst = worst.max(revoked_at.elapsed());
        key = next;
    }
    eprintln!("revocation propagation, worst of 10: {worst:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(other.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    other.wait().unwrap();
}

fn rate_header(response: &reqwest::Response) -> (u32, u64) {
    let value = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    let field = |name: &str| value.split(';').find_map(|p| p.strip_prefix(name)).unwrap().parse::<u64>().unwrap();
    (field("r=") as u32, field("t="))
}

#[tokio::test]
async fn the_rate_limit_is_honoured_with_headers_and_failed_auth_spends_nothing() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 5})).await;
    let path = format!("/api/public/{ep}/me");
    // An attacker's wrong keys against the endpoint do not eat its quota.
    for _ in 0..8 {
        assert_eq!(get_as(&app, &path, Some(&clientapi::endpoint_key::generate(false))).await.status(), 401);
    }
    for expected_remaining in (0..5).rev() {
        let response = get_as(&app, &path, Some(&key)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-policy"], "\"default\";q=5;w=60");
        assert_eq!(rate_header(&response).0, expected_remaining);
    }
    let refused = get_as(&app, &path, Some(&key)).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let (remaining, reset) = rate_header(&refused);
    assert_eq!(remaining, 0);
    assert_eq!(retry_after, reset, "Retry-After equals the reset time");
    assert!((1..=12).contains(&retry_after), "one request every 12 s at 5/min: {retry_after}");
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "rate_limited");
}

#[tokio::test]
async fn every_public_request_leaves_exactly_one_log_row_whatever_its_status() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 3})).await;
    let me = format!("/api/public/{ep}/me");
    let mut expected = vec![];
    for (path, key) in [
        (me.clone(), Some(key.as_str())),
        (me.clone(), None),
        (format!("/api/public/{ep}/nope"), Some(key.as_str())),
        (me.clone(), Some(key.as_str())),
        (me.clone(), Some(key.as_str())),
    ] {
        expected.push(get_as(&app, &format!("{path}?page_size=5&api_key=sk_live_secret"), key).await.status().as_u16());
    }
    assert_eq!(expected, [200, 401, 404, 200, 429]);
    /// status, endpoint, error code, query, request id
    type Row = (i16, Option<i64>, Option<String>, Value, String);
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..50 {
        rows = sqlx::query_as(
            "select status, endpoint_id, error_code, query, request_id from request_logs order by created_at",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        if rows.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses: Vec<u16> = rows.iter().map(|r| r.0 as u16).collect();
    assert_eq!(statuses, expected, "one row per request, in order");
    assert!(rows[1].1.is_none() && rows[1].2.as_deref() == Some("unauthorized"), "a 401 is logged without an endpoint");
    assert_eq!(rows[4].2.as_deref(), Some("rate_limited"));
    assert!(rows.iter().all(|r| r.3["api_key"] == "[redacted]" && r.3["page_size"] == "5"));
    let ids: std::collections::HashSet<&String> = rows.iter().map(|r| &r.4).collect();
    assert_eq!(ids.len(), rows.len(), "each row carries its own request id");

    // The admin log view and usage see them; another account sees nothing.
    let logs: Value = app
        .client
        .get(app.url(&format!("/api/admin/endpoints/{ep}/logs?status=4xx")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(logs.as_array().unwrap().len(), 2, "{logs}");
    let usage: Value = app
        .client
        .get(app.url(&format!("/api/admin/endpoints/{ep}/usage?range=24h")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["totals"]["requests"], 4, "{usage}");
    assert_eq!(usage["totals"]["errors"], 2);
    assert_eq!(usage["totals"]["client_errors"], 2);
    let buckets = usage["endpoints"][0]["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24, "hourly buckets over a day");
    assert_eq!(buckets.iter().map(|b| b["requests"].as_i64().unwrap()).sum::<i64>(), 4);
    let stranger = admin_token(&app, "eve@example.org", "other").await;
    for path in [
        format!("/api/admin/endpoints/{ep}/logs"),
        format!("/api/admin/endpoints/{ep}"),
        format!("/api/admin/endpoints/{ep}/usage"),
    ] {
        assert_eq!(app.client.get(app.url(&path)).bearer_auth(&stranger).send().await.unwrap().status(), 404, "{path}");
    }
    let response = app
        .client
        .post(app.url(&format!("/api/admin/endpoints/{ep}/deactivate")))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn a_flood_of_wrong_keys_is_throttled_while_a_verified_key_keeps_working() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    let path = format!("/api/public/{ep}/me");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200);
    // 120 wrong keys at once, with the valid key among them: the endpoint's argon2 budget (a
    // burst of 20, then 10 a second) bounds how many are hashed, however fast this machine is,
    // and the cached key is never held behind it.
    let started = Instant::now();
    let wrong = (0..120).map(|_| async {
        get_as(&app, &path, Some(&clientapi::endpoint_key::generate(false))).await.status().as_u16()
    });
    let valid = (0..10).map(|_| async { get_as(&app, &path, Some(&key)).await.status().as_u16() });
    let (wrong, valid) = tokio::join!(futures::future::join_all(wrong), futures::future::join_all(valid));
    let elapsed = started.elapsed().as_secs_f64();
    assert!(wrong.iter().all(|s| *s == 401 || *s == 429), "{wrong:?}");
    assert!(valid.iter().all(|s| *s == 200), "a cached key is never throttled: {valid:?}");
    let hashed = wrong.iter().filter(|s| **s == 401).count();
    let bound = 20 + (10.0 * elapsed).ceil() as usize;
    assert!(
        hashed <= bound && hashed < 120,
        "argon2 work per endpoint is bounded: {hashed} of 120 hashed in {elapsed:.2} s (at most {bound})"
    );
    // While wrong keys keep the endpoint's argon2 budget spent, every change to the endpoint
    // drops its cached verifications; the proven key is read again (no argon2, no budget) and
    // keeps working each time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (client, url, stop) = (app.client.clone(), app.url(&path), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let wrong = clientapi::endpoint_key::generate(false);
                let _ = client.get(&url).bearer_auth(wrong).send().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..10 {
        let renamed = app
            .client
            .patch(app.url(&format!("/api/admin/endpoints/{ep}")))
            .bearer_auth(&token)
            .json(&json!({"name": format!("Portal {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(renamed.status(), 200);
        // The change reaches the cache through NOTIFY: wait until the new name shows.
        let started = Instant::now();
        loop {
            let me = get_as(&app, &path, Some(&key)).await;
            assert_eq!(me.status(), 200, "a proven key is not held behind the argon2 budgets");
            if me.json::<Value>().await.unwrap()["name"] == format!("Portal {n}") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the rename never reached the key cache");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.await.unwrap();
}

#[tokio::test]
async fn a_client_that_keeps_failing_is_answered_slowly_while_valid_keys_are_not() {
    const HOLD: Duration = Duration::from_secs(3);
    let (sim, app, token, conn) = synced_with(2, &[("CLIENTAPI_FAILED_AUTH_DELAY_MS", "3000")]).await;
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    let path = format!("/api/public/{ep}/jobs");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200);
    // 80 failures at once from one address: a wrong secret, no key, a bad checksum, an unknown endpoint.
    let wrong = clientapi::endpoint_key::generate(false);
    let failures = (0..80).map(|i| {
        let (app, wrong, path) = (&app, wrong.clone(), path.clone());
        async move {
            let started = Instant::now();
            let (target, key) = match i % 4 {
                0 => (path, Some(wrong)),
                1 => (path, None),
                2 => (path, Some(bad_checksum(&wrong))),
                _ => ("/api/public/ep_nosuchendpoint/jobs".to_owned(), Some(wrong)),
            };
            let (status, body) = problem(get_as(app, &target, key.as_deref()).await).await;
            (started.elapsed(), status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    });
    let valid = async {
        // Sent once the failures are being held.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let status = get_as(&app, &path, Some(&key)).await.status();
        (started.elapsed(), status)
    };
    let (answers, (valid_took, valid_status)) = tokio::join!(futures::future::join_all(failures), valid);
    for (_, status, code) in &answers {
        assert!(
            (*status, code.as_str()) == (401, "unauthorized")
                || (*status, code.as_str()) == (429, "too_many_auth_attempts"),
            "{status} {code}"
        );
    }
    let held = answers.iter().filter(|(took, _, _)| *took >= HOLD).count();
    // 30 are free at once (and a few more refill while they run); every other one waits.
    assert!((35..=50).contains(&held), "{held} of 80 failures were held");
    assert_eq!(valid_status, 200);
    assert!(valid_took < HOLD, "a valid key from the failing address was held too ({valid_took:?})");
    // While it keeps failing, the address gets no verification of a key not yet proven good
    // (its wrong keys cost no argon2); once it has stopped for 10 s, the new key verifies.
    let (new_ep, new_key) =
        create_endpoint(&app, &token, conn, &company(&sim, 1), json!({"rate_limit_per_minute": 100000})).await;
    let new_path = format!("/api/public/{new_ep}/me");
    let (status, body) = problem(get_as(&app, &new_path, Some(&new_key)).await).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("too_many_auth_attempts")), "{body}");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200, "a proven key is not refused");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(get_as(&app, &new_path, Some(&new_key)).await.status(), 200);
}

/// Of wrong keys' answers, how many came from argon2 refusing the key (401); the others were
/// refused unverified while their address was held (429).
fn verified_with_argon2(answers: Vec<(u16, Value)>) -> usize {
    answers
        .iter()
        .filter(|(status, body)| match (*status, body["code"].as_str()) {
            (401, Some("unauthorized")) => true,
            (429, Some("too_many_auth_attempts")) => false,
            other => panic!("a wrong key answered {other:?}"),
        })
        .count()
}

#[tokio::test]
async fn an_address_whose_keys_keep_failing_verification_is_held_before_it_spends_much_argon2() {
    let (sim, app, token, conn) = synced_with(1, &[("CLIENTAPI_FAILED_AUTH_DELAY_MS", "100")]).await;
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    let path = format!("/api/public/{ep}/jobs");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200);
    // Distinct wrong keys for a real endpoint, one after another: each is answered only once
    // argon2 has refused it, so the failed answers alone would not outrun the free budget for a
    // long while. A burst of 10 failed verifications, then 1 a second, and the address is held:
    // its next wrong keys are refused without argon2.
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..30 {
        let wrong = clientapi::endpoint_key::generate(false);
        answers.push(problem(get_as(&app, &path, Some(&wrong)).await).await);
    }
    let verified = verified_with_argon2(answers);
    let bound = 10 + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(verified <= bound, "{verified} of 30 wrong keys were verified with argon2 (at most {bound})");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200, "a proven key from the address is not refused");
}

#[tokio::test]
async fn wrong_keys_arriving_together_stop_being_verified_once_their_address_is_held() {
    let (sim, app, token, conn) = synced_with(1, &[("CLIENTAPI_FAILED_AUTH_DELAY_MS", "100")]).await;
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    let path = format!("/api/public/{ep}/jobs");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200);
    // 30 distinct wrong keys at once, as a flood's connections open: they pass the address's
    // check together and queue for argon2. Once 10 have failed verification the address is
    // held, and the keys still waiting for argon2 are refused without it: at most one more per
    // argon2 slot (the cores but one) is verified, and the budgets' refill while this runs.
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_sub(1).max(1);
    let started = Instant::now();
    let answers = futures::future::join_all((0..30).map(|_| {
        let wrong = clientapi::endpoint_key::generate(false);
        let (app, path) = (&app, &path);
        async move { problem(get_as(app, path, Some(&wrong)).await).await }
    }))
    .await;
    let verified = verified_with_argon2(answers);
    let bound = 10 + slots + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(verified <= bound, "{verified} of 30 wrong keys sent together were verified with argon2 (at most {bound})");
    assert_eq!(get_as(&app, &path, Some(&key)).await.status(), 200, "a proven key from the address is not refused");
}

#[tokio::test]
async fn endpoint_input_is_validated_with_every_bad_field_named() {
    let (_sim, app, token, conn) = synced(1).await;
    let response = app
        .client
        .post(app.url("/api/admin/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"connection_id": conn.0, "company_external_id": "nope", "access": "admin",
            "scopes": ["jobs:read", "root"], "ip_allowlist": ["300.1.1.1"], "rate_limit_per_minute": 0,
            "expires_at": "yesterday", "colour": "blue"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    for field in [
        "colour",
        "access",
        "scopes[1]",
        "ip_allowlist[0]",
        "rate_limit_per_minute",
        "expires_at",
        "name",
        "company_external_id",
    ] {
        assert!(fields.contains(&field), "{field} not reported in {fields:?}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_is_the_one_allowlisted_and_logged() {
    let allow = json!({"ip_allowlist": ["203.0.113.0/24"]});
    let from = |app: &TestApp, ep: &str, key: &str, forwarded: &str| {
        let request = app.client.get(app.url(&format!("/api/public/{ep}/me"))).bearer_auth(key);
        let request = request.header("X-Forwarded-For", forwarded.to_owned());
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Behind a proxy on loopback: the address it forwards is the client's.
    let (sim, app, token, conn) = synced_with(1, &[("CLIENTAPI_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")]).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), allow.clone()).await;
    assert_eq!(from(&app, &ep, &key, "203.0.113.7").await, 200);
    assert_eq!(from(&app, &ep, &key, "198.51.100.1").await, 403);
    // A hop the client wrote itself, left of what the proxy saw, changes nothing.
    assert_eq!(from(&app, &ep, &key, "203.0.113.7, 198.51.100.1").await, 403);
    assert_eq!(from(&app, &ep, &key, "203.0.113.8, 10.1.1.1").await, 200, "a trusted inner proxy is skipped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged: Vec<(Option<String>, i16)> =
        sqlx::query_as("select host(client_ip), status from request_logs order by created_at")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let logged: Vec<(String, i16)> = logged.into_iter().map(|(ip, s)| (ip.unwrap_or_default(), s)).collect();
    assert_eq!(
        logged,
        vec![
            ("203.0.113.7".to_owned(), 200),
            ("198.51.100.1".to_owned(), 403),
            ("198.51.100.1".to_owned(), 403),
            ("203.0.113.8".to_owned(), 200)
        ]
    );

    // Without trusted proxies, the header is the client's own word and is ignored.
    let (sim, app, token, conn) = synced(1).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), allow).await;
    assert_eq!(from(&app, &ep, &key, "203.0.113.7").await, 403);
}
