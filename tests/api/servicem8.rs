//! The ServiceM8 connection: the OAuth flow over HTTP against the simulator, the adapter
//! reading every resource, and token refresh.

use std::collections::BTreeSet;

use clientapi_schema::ConnectionId;
use clientapi_schema::model::Fields;
use clientapi_sync::connections::TokenError;
use clientapi_sync::provider::{Provider, ProviderError};
use clientapi_sync::servicem8::STREAMS;
use clientapi_sync::simulator::servicem8::{SimConfig, Simulator};
use serde_json::json;

use crate::helpers::{TestApp, admin_token, authorize_redirect, connect_servicem8, spawn_app_for, spawn_sim};

fn small() -> SimConfig {
    SimConfig { companies: 4, jobs_per_company: 5, page_size: 7, ..SimConfig::default() }
}

async fn connected(
    config: SimConfig,
) -> (clientapi_sync::simulator::servicem8::Running, TestApp, String, ConnectionId) {
    let sim = spawn_sim(config).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let connection = connect_servicem8(&app, &token).await;
    let id = ConnectionId(connection["id"].as_i64().unwrap());
    (sim, app, token, id)
}

fn adapter(app: &TestApp) -> std::sync::Arc<dyn Provider> {
    app.state.providers.servicem8.clone()
}

#[tokio::test]
async fn the_oauth_flow_connects_and_the_adapter_reads_every_resource_across_pages() {
    let (sim, app, _, id) = connected(small()).await;
    let s: &Simulator = &sim.sim;
    // Quirks the generator does not make by itself: a soft-deleted job and a broken record.
    let job = s.records("job")[0]["uuid"].as_str().unwrap().to_owned();
    s.modify("job", &job, json!({"active": 0}));
    s.put(
        "jobmaterial",
        json!({"uuid": "bad-material", "job_uuid": job, "name": "x", "quantity": "lots", "price": "1"}),
    );

    let provider = adapter(&app);
    let token = app.state.tokens.access_token(provider.as_ref(), id).await.unwrap();
    for stream in STREAMS {
        let mut seen = BTreeSet::new();
        let mut records = Vec::new();
        let mut bad = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = provider.list_page(&token, *stream, None, cursor.as_deref()).await.unwrap();
            pages += 1;
            seen.extend(page.seen_ids);
            records.extend(page.records);
            bad.extend(page.bad_records);
            match page.next_page {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: BTreeSet<String> =
            s.records(stream.name).iter().map(|r| r["uuid"].as_str().unwrap().to_owned()).collect();
        assert_eq!(seen, expected, "every {} record is listed exactly once", stream.name);
        if expected.len() > 7 {
            assert!(pages > 1, "{} should span pages", stream.name);
        }
        if stream.name == "jobmaterial" {
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!((bad[0].id.as_str(), bad[0].field.as_str()), ("bad-material", "quantity"));
            assert_eq!(records.len(), expected.len() - 1, "only the broken record is skipped");
        } else {
            assert!(bad.is_empty(), "{}: {bad:?}", stream.name);
            let per_record = stream.resources.len();
            assert_eq!(records.len(), expected.len() * per_record);
        }
        if stream.name == "job" {
            let deleted = records.iter().find(|r| r.external_id == job && matches!(r.fields, Fields::Job(_))).unwrap();
            assert!(deleted.deleted, "active = 0 is a tombstone");
            let invoices = records.iter().filter(|r| matches!(r.fields, Fields::Invoice(_)) && !r.deleted).count();
            let invoiced = s
                .records("job")
                .iter()
                .filter(|j| {
                    j["active"] != json!(0)
                        && (j["invoice_sent"] == json!(1)
                            || j["invoice_sent"] == json!("1")
                            || j["payment_received"] == json!(1))
                })
                .count();
            assert_eq!(invoices, invoiced, "one invoice per invoiced job");
        }
    }

    // Incremental: only what changed after the watermark (minus the overlap) comes back.
    let job_stream = STREAMS[2];
    let changed = s.records("job")[1]["uuid"].as_str().unwrap().to_owned();
    s.modify("job", &changed, json!({"status": "Completed"}));
    let watermark = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%d %H:%M:%S").to_string();
    let page = provider.list_page(&token, job_stream, Some(&watermark), None).await.unwrap();
    assert!(page.seen_ids.contains(&changed));
    assert!(page.seen_ids.len() < s.records("job").len(), "the filter narrowed the scan");

    // One record by id; a missing id is None.
    let one = provider.get(&token, job_stream, &changed).await.unwrap().unwrap();
    assert_eq!(one[0].external_id, changed);
    assert!(provider.get(&token, job_stream, "00000000-0000-0000-0000-000000000000").await.unwrap().is_none());
    // Attachment bytes come through.
    let attachment = s.records("attachment")[0]["uuid"].as_str().unwrap().to_owned();
    let download = provider.download(&token, &attachment).await.unwrap();
    assert_eq!(download.content_type.as_deref(), Some("application/pdf"));
    assert!(download.response.bytes().await.unwrap().starts_with(b"%PDF"));
}

#[tokio::test]
async fn a_missing_unknown_replayed_expired_or_foreign_state_is_refused() {
    let sim = spawn_sim(small()).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let other = admin_token(&app, "other@example.com", "acme").await;
    let callback = |query: &str| app.url(&format!("/api/admin/oauth/servicem8/callback?{query}"));
    let refused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_state");
    };

    refused(app.client.get(callback("code=abc")).bearer_auth(&token).send().await.unwrap()).await;
    refused(app.client.get(callback("code=abc&state=forged")).bearer_auth(&token).send().await.unwrap()).await;

    // Another admin cannot complete a flow someone else started.
    let redirect = authorize_redirect(&app, &token).await;
    refused(app.client.get(&redirect).bearer_auth(&other).send().await.unwrap()).await;
    // The rightful admin can, once; a replay is refused.
    assert_eq!(app.client.get(&redirect).bearer_auth(&token).send().await.unwrap().status(), 201);
    refused(app.client.get(&redirect).bearer_auth(&token).send().await.unwrap()).await;

    // An expired state is refused.
    let redirect = authorize_redirect(&app, &token).await;
    sqlx::query("update oauth_states set expires_at = now() - interval '1 second'").execute(&app.db).await.unwrap();
    refused(app.client.get(&redirect).bearer_auth(&token).send().await.unwrap()).await;

    // Without admin credentials the callback is 401.
    assert_eq!(app.client.get(callback("code=a&state=b")).send().await.unwrap().status(), 401);
    assert_eq!(sim.sim.stats().token_exchanges, 1, "only the one valid flow reached the provider");
}

async fn expire_soon(app: &TestApp, id: ConnectionId) {
    sqlx::query("update connections set token_expires_at = now() + interval '1 minute' where id = $1")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn tokens_refresh_ahead_of_expiry_and_fifty_concurrent_users_cause_one_refresh() {
    let (sim, app, _, id) = connected(small()).await;
    let provider = adapter(&app);
    let before = app.state.tokens.access_token(provider.as_ref(), id).await.unwrap();
    assert_eq!(sim.sim.stats().refreshes, 0, "a fresh token is used as is");

    expire_soon(&app, id).await;
    // Refresh tokens are single-use (rotation): a second refresh with the old one would fail.
    let calls = (0..50).map(|_| {
        let tokens = app.state.tokens.clone();
        let provider = provider.clone();
        tokio::spawn(async move { tokens.access_token(provider.as_ref(), id).await })
    });
    let results: Vec<_> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(sim.sim.stats().refresh_attempts, 1, "exactly one refresh for fifty callers");
    let fresh = &results[0];
    assert!(results.iter().all(|t| t.expose() == fresh.expose()));
    assert_ne!(fresh.expose(), before.expose());
    provider.list_page(fresh, STREAMS[0], None, None).await.expect("the refreshed token works");

    // A token the provider rejects early (401) is replaced once, then works.
    sim.sim.expire_access_tokens();
    assert!(matches!(provider.list_page(fresh, STREAMS[0], None, None).await, Err(ProviderError::Unauthorized)));
    let renewed = app.state.tokens.refresh_after_rejection(provider.as_ref(), id, fresh).await.unwrap();
    provider.list_page(&renewed, STREAMS[0], None, None).await.expect("the renewed token works");
    let again = app.state.tokens.refresh_after_rejection(provider.as_ref(), id, fresh).await.unwrap();
    assert_eq!(again.expose(), renewed.expose(), "a second caller with the same stale token gets the new one");
    assert_eq!(sim.sim.stats().refresh_attempts, 2);
}

#[tokio::test]
async fn invalid_grant_marks_the_connection_needs_reauth_without_looping() {
    let (sim, app, token, id) = connected(small()).await;
    let provider = adapter(&app);
    sim.sim.revoke_refresh_tokens();
    expire_soon(&app, id).await;
    assert!(matches!(app.state.tokens.access_token(provider.as_ref(), id).await, Err(TokenError::NeedsReauth)));
    assert!(matches!(app.state.tokens.access_token(provider.as_ref(), id).await, Err(TokenError::NeedsReauth)));
    assert_eq!(sim.sim.stats().refresh_attempts, 1, "no retry loop against a dead refresh token");

    let response =
        app.client.get(app.url(&format!("/api/admin/connections/{id}"))).bearer_auth(&token).send().await.unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["connection"]["status"], "needs_reauth");

    // Re-authorising the same provider account brings it back.
    let connection = connect_servicem8(&app, &token).await;
    assert_eq!(connection["id"].as_i64(), Some(id.0));
    assert_eq!(connection["status"], "active");
}

#[tokio::test]
async fn a_database_dump_holds_no_plaintext_token_and_disconnect_deletes_them() {
    let (_sim, app, token, id) = connected(small()).await;
    let provider = adapter(&app);
    // Make sure both an exchange and a refresh have written tokens.
    expire_soon(&app, id).await;
    app.state.tokens.access_token(provider.as_ref(), id).await.unwrap();

    let pg_dump = clientapi_schema::local_pg::find_bin_dir().unwrap().join("pg_dump");
    let url = app.state.config.database_url.as_ref().unwrap().expose().clone();
    let dump = std::process::Command::new(pg_dump).args(["--data-only", "--dbname", &url]).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("COPY public.connections"), "the dump includes the connection");
    // Every simulator token starts with these prefixes; admin tokens keep only a short hint.
    for plaintext in ["sim_at_", "sim_rt_", token.as_str(), &token[3..]] {
        assert!(!text.contains(plaintext), "the dump contains a plaintext token ({})", &plaintext[..7]);
    }

    let path = format!("/api/admin/connections/{id}");
    assert_eq!(app.client.delete(app.url(&path)).bearer_auth(&token).send().await.unwrap().status(), 204);
    let (access, refresh): (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("select access_token_enc, refresh_token_enc from connections where id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(access.is_none() && refresh.is_none());
    assert!(matches!(app.state.tokens.access_token(provider.as_ref(), id).await, Err(TokenError::Disconnected)));
}

#[tokio::test]
async fn one_accounts_admin_never_sees_or_changes_anothers_connections() {
    let (_sim, app, owner, id) = connected(small()).await;
    let stranger = admin_token(&app, "eve@example.org", "other-team").await;
    let path = format!("/api/admin/connections/{id}");

    let list: serde_json::Value = app
        .client
        .get(app.url("/api/admin/connections"))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    assert_eq!(app.client.get(app.url(&path)).bearer_auth(&stranger).send().await.unwrap().status(), 404);
    assert_eq!(app.client.delete(app.url(&path)).bearer_auth(&stranger).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(app.url(&path)).bearer_auth(&owner).send().await.unwrap().status(), 200);
    for bad in ["ak_nope", "sk_live_x", ""] {
        let response = app.client.get(app.url("/api/admin/connections")).bearer_auth(bad).send().await.unwrap();
        assert_eq!(response.status(), 401);
    }
}

#[tokio::test]
async fn a_dashboard_session_works_and_needs_its_csrf_token_to_change_anything() {
    let sim = spawn_sim(small()).await;
    let app = spawn_app_for(&sim).await;
    admin_token(&app, "ops@example.com", "acme").await;

    let wrong = app
        .client
        .post(app.url("/api/admin/login"))
        .json(&json!({"email":"ops@example.com","password":"nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login = app
        .client
        .post(app.url("/api/admin/login"))
        .json(&json!({"email":"OPS@example.com","password":"a long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie_header = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie_header.contains("HttpOnly") && cookie_header.contains("SameSite=Strict"));
    let cookie = cookie_header.split(';').next().unwrap().to_owned();
    let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();

    let list = app.client.get(app.url("/api/admin/connections")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let authorize = app.url("/api/admin/connections/servicem8/authorize");
    let no_csrf = app.client.post(&authorize).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(no_csrf.status(), 403);
    let with_csrf =
        app.client.post(&authorize).header("cookie", &cookie).header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(with_csrf.status(), 200);

    let logout = app
        .client
        .post(app.url("/api/admin/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let after = app.client.get(app.url("/api/admin/connections")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 401);
}
