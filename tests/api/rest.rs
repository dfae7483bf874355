//! The REST query API: scoped lists, filters, keyset pages, the changes feed, export.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clientapi_schema::ConnectionId;
use clientapi_schema::model::Resource;
use clientapi_sync::simulator::servicem8::{Running, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::endpoints::create_endpoint;
use crate::helpers::{TestApp, admin_token, connect_servicem8, spawn_app_for, spawn_sim};

/// A simulated account, connected and synced once, and an admin token.
pub async fn synced(config: SimConfig) -> (Running, TestApp, String, ConnectionId) {
    let sim = spawn_sim(config).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let id = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(id, false, None).await.unwrap();
    (sim, app, token, id)
}

/// Which company owns every mirrored record: (resource, id) → company external id.
async fn owners(app: &TestApp) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    for r in Resource::ALL {
        let sql = format!(
            "select t.external_id, c.external_id from {} t join companies c on c.id = t.company_id",
            r.plural()
        );
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&app.db).await.unwrap();
        for (id, company) in rows {
            out.insert((r.singular().to_owned(), id), company);
        }
    }
    out
}

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let response = app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn thousands_of_generated_requests_never_return_another_companys_record() {
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 20, jobs_per_company: 8, sites_per_company: 1, ..SimConfig::default() }).await;
    let companies = crate::endpoints::head_offices(&sim);
    let scopes = crate::endpoints::every_read_scope();
    let mut endpoints = Vec::new();
    for company in &companies {
        let extra = json!({"rate_limit_per_minute": 1000000, "scopes": scopes});
        let (ep, key) = create_endpoint(&app, &token, conn, company, extra).await;
        endpoints.push((ep, key, company.clone()));
    }
    let owners = owners(&app).await;
    let foreign_ids: Vec<(String, String, String)> =
        owners.iter().map(|((r, id), c)| (r.clone(), id.clone(), c.clone())).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let mut cursors: Vec<(String, String)> = Vec::new(); // (endpoint, cursor)
    let mut requests = 0;
    let check = |body: &Value, company: &str, what: &str| {
        let items: Vec<Value> = match &body["data"] {
            Value::Array(items) => items.clone(),
            Value::Object(_) => vec![body["data"].clone()],
            _ => vec![],
        };
        for item in items {
            let (resource, id) = match item.get("record") {
                Some(record) => {
                    (item["resource"].as_str().unwrap().to_owned(), record["id"].as_str().unwrap().to_owned())
                }
                None => (body["resource"].as_str().unwrap().to_owned(), item["id"].as_str().unwrap().to_owned()),
            };
            let owner = owners
                .get(&(resource.clone(), id.clone()))
                .unwrap_or_else(|| panic!("{what}: unknown {resource} {id}"));
            // Staff and lookups are the account's, shared by every endpoint of the connection.
            let shared = Resource::parse(&resource).unwrap().is_account_wide() && owner.is_empty();
            assert!(owner == company || shared, "{what}: a {resource} of another company ({owner}) leaked");
        }
    };
    for round in 0..120 {
        for (ep, key, company) in &endpoints {
            let resource = Resource::ALL[rng.random_range(0..Resource::ALL.len())];
            let plural = resource.plural();
            let path = match rng.random_range(0..9) {
                0 => format!("/api/public/{ep}/{plural}?page_size={}", rng.random_range(1..40)),
                1 => format!(
                    "/api/public/{ep}/query/?resource={}&include_deleted=true&sort=-updated_at",
                    resource.singular()
                ),
                2 => {
                    // A foreign id: exactly like a missing one.
                    let (r, id, owner) = &foreign_ids[rng.random_range(0..foreign_ids.len())];
                    let r = Resource::parse(r).unwrap();
                    let (status, body) = get(&app, key, &format!("/api/public/{ep}/{}/{id}", r.plural())).await;
                    requests += 1;
                    if owner == company || (r.is_account_wide() && owner.is_empty()) {
                        assert_eq!(status, 200);
                    } else {
                        assert_eq!(status, 404, "foreign {id} answered {status}");
                        let (_, missing) = get(&app, key, &format!("/api/public/{ep}/{}/no-such-id", r.plural())).await;
                        assert_eq!((&body["code"], &body["detail"]), (&missing["code"], &missing["detail"]));
                    }
                    continue;
                }
                3 => {
                    // ids mixing this company's and others'.
                    let ids: Vec<&str> =
                        (0..6).map(|_| foreign_ids[rng.random_range(0..foreign_ids.len())].1.as_str()).collect();
                    format!("/api/public/{ep}/{plural}?ids={}&include_deleted=true", ids.join(","))
                }
                4 => format!("/api/public/{ep}/changes?page_size={}", rng.random_range(1..200)),
                5 => {
                    // Another endpoint's cursor is refused, never followed.
                    if let Some((owner_ep, cursor)) = cursors.get(rng.random_range(0..cursors.len().max(1))).cloned() {
                        let resource_of_cursor = "jobs";
                        let (status, _) = get(
                            &app,
                            key,
                            &format!("/api/public/{ep}/{resource_of_cursor}?page_size=3&cursor={cursor}"),
                        )
                        .await;
                        requests += 1;
                        if owner_ep != *ep {
                            assert_eq!(status, 400, "a foreign cursor must be refused");
                        }
                    }
                    continue;
                }
                6 => format!("/api/public/{ep}/jobs?page_size=3&sort=number&status=Completed,Quote"),
                7 => {
                    let client = &companies[rng.random_range(0..companies.len())];
                    format!("/api/public/{ep}/jobs?client_id={client}")
                }
                _ => {
                    let format = if rng.random_bool(0.5) { "ndjson" } else { "csv" };
                    let response = app
                        .client
                        .get(app.url(&format!("/api/public/{ep}/export?resource=job&format={format}")))
                        .bearer_auth(key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    let text = response.text().await.unwrap();
                    requests += 1;
                    for line in text.lines().skip(if format == "csv" { 1 } else { 0 }) {
                        let id = if format == "csv" {
                            line.split(',').next().unwrap().to_owned()
                        } else {
                            serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned()
                        };
                        assert_eq!(owners.get(&("job".to_owned(), id.clone())), Some(company), "export leaked {id}");
                    }
                    continue;
                }
            };
            let (status, body) = get(&app, key, &path).await;
            requests += 1;
            assert_eq!(status, 200, "{path}: {body}");
            check(&body, company, &path);
            if let Some(cursor) = body["next_cursor"].as_str()
                && path.contains("/jobs?page_size=3")
            {
                cursors.push((ep.clone(), cursor.to_owned()));
            }
        }
        if round == 0 {
            assert!(endpoints.len() >= 20);
        }
    }
    assert!(requests >= 2000, "{requests} requests");
}

#[tokio::test]
async fn walking_every_page_of_ten_thousand_jobs_sees_each_once_while_syncs_update_them() {
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 1, jobs_per_company: 10_000, ..SimConfig::default() }).await;
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({"rate_limit_per_minute": 1000000})).await;
    let all: HashSet<String> = sim.sim.records("job").iter().map(|j| j["uuid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(all.len(), 10_000);

    // Concurrent syncs keep updating jobs while the walk goes on.
    let updater = {
        let sim_handle = sim.sim.clone();
        let engine = app.state.engine.clone();
        let ids: Vec<String> = all.iter().cloned().collect();
        tokio::spawn(async move {
            let mut n = 0;
            for round in 0..6 {
                for id in ids.iter().skip(round * 300).take(300) {
                    sim_handle.modify("job", id, json!({"job_description": format!("round {round}")}));
                }
                n += engine.sync_connection(conn, false, None).await.map(|r| r.stats.updated).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    for sort in ["id", "number", "-created_at"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/public/{ep}/jobs?page_size=500&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = get(&app, &key, &path).await;
            assert_eq!(status, 200, "{body}");
            seen.extend(body["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), unique.len(), "sort {sort}: a record came twice");
        assert_eq!(unique, all, "sort {sort}: every record exactly once");
    }
    let updated = updater.await.unwrap();
    assert!(updated > 0, "the concurrent syncs really changed records");
}

#[tokio::test]
async fn a_corpus_of_malformed_input_gets_4xx_problems_and_never_a_5xx() {
    let (sim, app, token, conn) = synced(SimConfig { companies: 2, jobs_per_company: 3, ..SimConfig::default() }).await;
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({"rate_limit_per_minute": 1000000})).await;
    let long = "x".repeat(10_000);
    let corpus = [
        "jobs?page_size=0",
        "jobs?page_size=-1",
        "jobs?page_size=1001",
        "jobs?page_size=abc",
        "jobs?page_size=99999999999999999999",
        "jobs?sort=bogus",
        "clients?sort=number",
        "jobs?cursor=garbage",
        "jobs?cursor=a.b",
        "jobs?cursor=%FF%FE",
        "jobs?updated_since=yesterday",
        "jobs?updated_since=2026-13-45",
        "jobs?updated_at_from=2026-01-01&updated_since=2026-01-01",
        "jobs?created_since=%00",
        "jobs?status=%00",
        "jobs?ids=,,",
        "jobs?ids=a%00b",
        "clients?status=Quote",
        "clients?job_id=x",
        "payments?client_id=x",
        "jobs?include=everything",
        "jobs?include_deleted=maybe",
        "jobs?bogus=1",
        "jobs?page_size=1&page_size=2",
        "query/?resource=nope",
        "query/",
        "query?resource=job&resource=client",
        "changes?since=forged",
        "changes?resource=nope",
        "changes?page_size=0",
        "export?format=xml&resource=job",
        "export?resource=job&cursor=x",
        "export",
        "jobs?%ZZ=1",
        "jobs?ids=%E2%82",
        "attachments/..%2F..%2Fetc/content",
        "jobs/%00",
        "nonsense",
        "jobs/a/b/c",
    ];
    let mut paths: Vec<String> = corpus.iter().map(|p| format!("/api/public/{ep}/{p}")).collect();
    paths.push(format!("/api/public/{ep}/jobs?status={long}"));
    paths.push(format!("/api/public/{ep}/jobs/{long}"));
    paths.push(format!("/api/public/{ep}/jobs?ids={}", vec!["a"; 1001].join(",")));
    paths.push("/api/public/ep_%00/jobs".to_owned());
    paths.push(format!("/api/public/{long}/jobs"));
    for path in paths {
        let response = app.client.get(app.url(&path)).bearer_auth(&key).send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path} answered {status}");
        if status != 404 || response.headers().get("content-type").is_some_and(|v| v == "application/problem+json") {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(body["code"].is_string(), "{path}: not a problem: {body}");
        }
    }
    // Injection attempts are ordinary values: bound as parameters, they match nothing.
    for path in
        ["jobs?status='%20or%201=1--", "jobs?client_id=%27%3B%20drop%20table%20jobs%3B--", "jobs?ids=%27)%20or%20(%271"]
    {
        let (status, body) = get(&app, &key, &format!("/api/public/{ep}/{path}")).await;
        assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "{path}");
    }
    let (_, all) = get(&app, &key, &format!("/api/public/{ep}/jobs")).await;
    assert!(all["count"].as_u64().unwrap() > 0, "the jobs table is intact");

    // A 422 names every bad field at once.
    let (status, body) =
        get(&app, &key, &format!("/api/public/{ep}/jobs?page_size=0&sort=bogus&bogus=1&updated_since=x")).await;
    assert_eq!(status, 422);
    let fields: HashSet<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, HashSet::from(["page_size", "sort", "bogus", "updated_since"]));
}

#[tokio::test]
async fn lists_filter_page_and_feed_changes_exactly_as_documented() {
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 3, jobs_per_company: 12, ..SimConfig::default() }).await;
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({"rate_limit_per_minute": 1000000})).await;
    let jobs: Vec<Value> = sim.sim.records("job").into_iter().filter(|j| j["company_uuid"] == json!(company)).collect();

    // The envelope, singular and plural resource names.
    let (_, body) = get(&app, &key, &format!("/api/public/{ep}/query/?resource=job&page_size=5")).await;
    for field in
        ["provider", "company_external_id", "resource", "count", "data", "next_cursor", "synced_at", "sync_status"]
    {
        assert!(body.get(field).is_some(), "envelope lacks {field}");
    }
    assert_eq!(
        (body["provider"].as_str(), body["resource"].as_str(), body["count"].as_u64()),
        (Some("servicem8"), Some("job"), Some(5))
    );
    assert_eq!(body["sync_status"], "synced");
    let (_, plural) = get(&app, &key, &format!("/api/public/{ep}/query?resource=jobs&page_size=5")).await;
    assert_eq!(plural["data"], body["data"]);
    let (_, listed) = get(&app, &key, &format!("/api/public/{ep}/jobs?page_size=5")).await;
    assert_eq!(listed["data"], body["data"]);

    // status and relation filters; money as decimal strings; remote_data on request.
    let completed = jobs.iter().filter(|j| j["status"] == "Completed" && j["active"] != json!(0)).count();
    let (_, filtered) = get(&app, &key, &format!("/api/public/{ep}/jobs?status=Completed&page_size=1000")).await;
    assert_eq!(filtered["count"].as_u64().unwrap() as usize, completed);
    let job = &filtered["data"][0];
    assert!(job["total"].is_string(), "money is a decimal string: {job}");
    assert!(job.get("remote_data").is_none());
    let id = job["id"].as_str().unwrap();
    let (_, items) = get(&app, &key, &format!("/api/public/{ep}/line_items?job_id={id}")).await;
    let expected = sim.sim.records("jobmaterial").iter().filter(|m| m["job_uuid"] == json!(id)).count();
    assert_eq!(items["count"].as_u64().unwrap() as usize, expected);
    let (_, one) = get(&app, &key, &format!("/api/public/{ep}/jobs/{id}?include=remote_data")).await;
    assert_eq!(one["data"]["remote_data"]["uuid"], json!(id));

    // The changes feed: a change after the cursor comes once, then nothing repeats.
    let mut cursor = String::new();
    let mut total = 0;
    loop {
        let since = if cursor.is_empty() { String::new() } else { format!("&since={cursor}") };
        let (_, page) = get(&app, &key, &format!("/api/public/{ep}/changes?page_size=50{since}")).await;
        total += page["count"].as_u64().unwrap();
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert!(total > 0);
    sim.sim.modify("job", id, json!({"status": "Unsuccessful"}));
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    let (_, page) = get(&app, &key, &format!("/api/public/{ep}/changes?since={cursor}")).await;
    let changed: Vec<&str> = page["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(changed, [id, id], "the job and its invoice record, once each");
    let next = page["next_cursor"].as_str().unwrap();
    let (_, again) = get(&app, &key, &format!("/api/public/{ep}/changes?since={next}")).await;
    assert_eq!(again["count"], 0, "nothing repeats");

    // Export: a header row, correct quoting, every job of the company.
    let csv = app
        .client
        .get(app.url(&format!("/api/public/{ep}/export?resource=jobs&format=csv")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("id,client_id,number,status"));
    let live = jobs.iter().filter(|j| j["active"] != json!(0)).count();
    assert_eq!(lines.count(), live);

    // Attachment bytes come from the provider after the scope check.
    let attachment =
        sim.sim.records("attachment").into_iter().find(|a| jobs.iter().any(|j| j["uuid"] == a["related_object_uuid"]));
    if let Some(attachment) = attachment {
        let id = attachment["uuid"].as_str().unwrap();
        let response = app
            .client
            .get(app.url(&format!("/api/public/{ep}/attachments/{id}/content")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/pdf");
        let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
        assert_eq!(response.bytes().await.unwrap().len(), length);
    }
    let foreign = sim
        .sim
        .records("attachment")
        .into_iter()
        .find(|a| !jobs.iter().any(|j| j["uuid"] == a["related_object_uuid"]))
        .unwrap();
    let (status, _) =
        get(&app, &key, &format!("/api/public/{ep}/attachments/{}/content", foreign["uuid"].as_str().unwrap())).await;
    assert_eq!(status, 404, "another company's file is not found");

    // The request log holds item counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted: i64 =
        sqlx::query_scalar("select count(*) from request_logs where item_count = 5 and resource = 'job'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(counted >= 3);
}

/// A minimal RFC 4180 reader: quoted fields may hold commas, quotes ("") and line breaks; an
/// unquoted empty field is a null.
fn parse_csv(text: &str) -> Vec<Vec<Option<String>>> {
    let (mut rows, mut row) = (Vec::new(), Vec::new());
    let (mut field, mut quoted, mut in_quotes) = (String::new(), false, false);
    let mut chars = text.chars().peekable();
    let close = |field: &mut String, quoted: &mut bool| {
        let value = (*quoted || !field.is_empty()).then(|| std::mem::take(field));
        *quoted = false;
        value
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => in_quotes = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => (in_quotes, quoted) = (true, true),
            ',' => row.push(close(&mut field, &mut quoted)),
            '\n' => {
                row.push(close(&mut field, &mut quoted));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn the_csv_export_quotes_like_rfc_4180_and_says_what_the_ndjson_says() {
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 2, jobs_per_company: 10, ..SimConfig::default() }).await;
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let job = sim.sim.records("job").into_iter().find(|j| j["company_uuid"] == json!(company)).unwrap();
    // Quotes, a newline, a backslash and control characters: JSON escapes them, CSV quotes them.
    let awkward = "Fix \"the\" tap, then\nthe sink\\drain;\u{1}\u{2}\t café ✓";
    sim.sim.modify("job", job["uuid"].as_str().unwrap(), json!({"job_description": awkward}));
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({})).await;
    let fetch = |format: &'static str| {
        let (app, key, ep) = (&app, &key, &ep);
        async move {
            let url = app.url(&format!("/api/public/{ep}/export?resource=jobs&format={format}"));
            app.client.get(url).bearer_auth(key).send().await.unwrap().text().await.unwrap()
        }
    };
    let csv = parse_csv(&fetch("csv").await);
    let ndjson: Vec<Value> = fetch("ndjson").await.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let header: Vec<String> = csv[0].iter().map(|h| h.clone().unwrap()).collect();
    assert_eq!(header[..4], ["id", "client_id", "number", "status"]);
    assert_eq!(csv.len() - 1, ndjson.len());
    for (row, record) in csv[1..].iter().zip(&ndjson) {
        for (name, value) in header.iter().zip(row) {
            let expected = match &record[name] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                // JSON fields (custom fields) are JSON text in the CSV, however it is spaced.
                json @ (Value::Object(_) | Value::Array(_)) => {
                    let csv_json: Value = serde_json::from_str(value.as_deref().unwrap_or("null")).unwrap();
                    assert_eq!(&csv_json, json, "{name} of {}", record["id"]);
                    continue;
                }
                other => Some(other.to_string()),
            };
            assert_eq!(value, &expected, "{name} of {}", record["id"]);
        }
    }
    let row = csv.iter().find(|r| r[0].as_deref() == job["uuid"].as_str()).unwrap();
    assert_eq!(row[header.iter().position(|h| h == "description").unwrap()].as_deref(), Some(awkward));
    // Each NDJSON line is the record exactly as a read of it renders it.
    let line = ndjson.iter().find(|r| r["id"] == job["uuid"]).unwrap();
    assert_eq!(line["description"], awkward);
    let url = app.url(&format!("/api/public/{ep}/jobs/{}", job["uuid"].as_str().unwrap()));
    let one: Value = app.client.get(url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(line, &one["data"], "the export's line and the read agree");
}

#[tokio::test]
async fn a_read_abandoned_inside_its_transaction_never_goes_back_to_the_pool_open() {
    let app = crate::helpers::spawn_app().await;
    let idle_in_transaction = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
              where datname = current_database() and state like 'idle in transaction%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    // A caller that goes away between `begin` and `finish` (a dropped request future).
    let scoped = clientapi_schema::read::Scoped::begin(
        &app.state.reads.primary(),
        clientapi_schema::read::Scope::new(clientapi_schema::CompanyId(1), false),
    )
    .await
    .unwrap();
    assert_eq!(idle_in_transaction().await, 1);
    drop(scoped);
    for _ in 0..50 {
        if idle_in_transaction().await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the abandoned transaction's connection is still open");
}

/// A one-statement read (`read::scoped_statement`) sets the company for its connection's
/// session, not a transaction, and the pool hands that connection to the same company's next
/// read without setting it again. One connection serving two companies in turn answers each with
/// its own rows only; and should the session ever hold another company than the pool recorded,
/// the statement's own company filter and row-level security disagree and no row passes both.
#[tokio::test]
async fn a_one_statement_read_sees_only_its_own_company_whatever_its_connection_served_before() {
    use clientapi_schema::read::{self, Filters, ListQuery, Scope, Sort};
    let app = crate::helpers::spawn_app().await;
    let (a, b): (i64, i64) = sqlx::query_as(
        "with account as (insert into accounts (name) values ('acme') returning id),
              connection as (insert into connections (account_id, provider, external_account_id)
                             select id, 'servicem8', 'v' from account returning id),
              company as (insert into companies (connection_id, external_id)
                          select id, x from connection, (values ('a'), ('b')) v(x) returning id, external_id)
         select (select id from company where external_id = 'a'), (select id from company where external_id = 'b')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "insert into clients (company_id, external_id, name, remote_data, change_seq)
         values ($1, 'client-a', 'A', '{}', 1), ($2, 'client-b', 'B', '{}', 2)",
    )
    .bind(a)
    .bind(b)
    .execute(&app.db)
    .await
    .unwrap();
    let reader = app.state.reads.primary();
    reader.pool().close_idle_for(Duration::ZERO);
    let (scope_a, scope_b) =
        (Scope::new(clientapi_schema::CompanyId(a), false), Scope::new(clientapi_schema::CompanyId(b), false));
    let query = ListQuery {
        resource: Resource::Client,
        filters: Filters::default(),
        sort: Sort::default(),
        page_size: 50,
        after: None,
        include_remote_data: false,
    };
    let ids = |rows: Vec<String>| -> Vec<String> {
        rows.iter().map(|r| serde_json::from_str::<Value>(r).unwrap()["id"].as_str().unwrap().to_owned()).collect()
    };
    for _ in 0..2 {
        assert_eq!(ids(read::list_page(&reader, scope_a, &query).await.unwrap().rows), ["client-a"]);
        assert_eq!(ids(read::list_page(&reader, scope_b, &query).await.unwrap().rows), ["client-b"]);
        assert_eq!(ids(read::list_page(&reader, scope_b, &query).await.unwrap().rows), ["client-b"]);
    }
    assert_eq!(reader.pool().size(), 1, "one connection served both companies in turn");
    // The connection is idle, outside any transaction, its session set to the last company read.
    let mut conn = reader.pool().acquire_for(scope_b).await.unwrap();
    assert_eq!(conn.session(), Some(scope_b));
    let row = sqlx::raw_sql(
        "select current_setting('clientapi.company_id'), transaction_timestamp() = statement_timestamp()",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let (company, own_transaction): (String, bool) = (sqlx::Row::get(&row, 0), sqlx::Row::get(&row, 1));
    assert_eq!(company, b.to_string());
    assert!(own_transaction, "a transaction was left open");
    // A session holding company A while the pool believes B: B's read admits nothing.
    sqlx::query("select set_config('clientapi.company_id', $1, false)")
        .bind(a.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let page = read::list_page(&reader, scope_b, &query).await.unwrap();
    assert!(page.rows.is_empty(), "rows passed a filter and a policy naming different companies: {:?}", page.rows);
    // Reads that must hold a snapshot still run in a transaction scoped for it alone, and leave
    // the session's company as it was.
    let mut scoped = read::Scoped::begin(&reader, scope_a).await.unwrap();
    let company: String =
        sqlx::query_scalar("select current_setting('clientapi.company_id')").fetch_one(scoped.conn()).await.unwrap();
    assert_eq!(company, a.to_string());
    scoped.finish(Ok(())).unwrap();
    assert_eq!(ids(read::list_page(&reader, scope_a, &query).await.unwrap().rows), ["client-a"]);
    // A one-statement read abandoned mid-statement: its connection is closed, never handed back.
    assert_eq!(reader.pool().size(), 1);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        read::scoped_statement(&reader, scope_a, |conn| Box::pin(sqlx::query("select pg_sleep(5)").execute(conn))),
    )
    .await;
    assert!(abandoned.is_err(), "the sleep ended first");
    assert_eq!(reader.pool().size(), 0, "the abandoned read's connection went back to the pool");
    assert_eq!(ids(read::list_page(&reader, scope_a, &query).await.unwrap().rows), ["client-a"]);
}

/// A finished read's end (`rollback`, queued rather than awaited: `Scoped::finish`) reaches
/// Postgres as the pool takes the connection back: nothing is left open, and the
/// next read on that connection starts without the last one's company.
#[tokio::test]
async fn a_finished_read_leaves_no_transaction_and_no_company_on_its_connection() {
    let app = crate::helpers::spawn_app().await;
    let reader = app.state.reads.primary();
    let in_transaction = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity
              where datname = current_database() and application_name = $1 and state like 'idle in transaction%'",
        )
        .bind(clientapi_schema::read::READER_APPLICATION)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let scope = clientapi_schema::read::Scope::new(clientapi_schema::CompanyId(7), false);
    let mut scoped = clientapi_schema::read::Scoped::begin(&reader, scope).await.unwrap();
    let company: String =
        sqlx::query_scalar("select current_setting('clientapi.company_id')").fetch_one(scoped.conn()).await.unwrap();
    assert_eq!(company, "7");
    assert_eq!(in_transaction().await, 1);
    scoped.finish(Ok(())).unwrap();
    let mut closed = false;
    for _ in 0..50 {
        if in_transaction().await == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the finished read's transaction is still open");
    // The pool made one connection, so this is the one the read used: back outside any
    // transaction, with the company's setting gone with it.
    let mut conn = reader.pool().acquire().await.unwrap();
    // One simple-protocol statement: its implicit transaction begins with it, so the two
    // timestamps differ only when a transaction was already open.
    let row = sqlx::raw_sql(
        "select nullif(current_setting('clientapi.company_id', true), ''),
                transaction_timestamp() = statement_timestamp()",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let (company, own_transaction): (Option<String>, bool) = (sqlx::Row::get(&row, 0), sqlx::Row::get(&row, 1));
    assert_eq!(company, None);
    assert!(own_transaction, "the statement ran inside a transaction begun before it");
    assert_eq!(reader.pool().size(), 1);
}

/// The read pool hands out at most its size in connections: more reads at once than that wait
/// their turn and all succeed, each connection goes back idle outside any transaction, and a
/// closed pool refuses reads.
#[tokio::test]
async fn more_reads_than_the_read_pool_holds_wait_their_turn_and_leave_nothing_open() {
    let app = crate::helpers::spawn_app().await;
    let reader = app.state.reads.primary();
    let scope = clientapi_schema::read::Scope::new(clientapi_schema::CompanyId(3), false);
    let reads = (0..80).map(|_| {
        let reader = reader.clone();
        async move {
            let mut scoped = clientapi_schema::read::Scoped::begin(&reader, scope).await?;
            let result =
                sqlx::query_scalar::<_, String>("select current_setting('clientapi.company_id') from pg_sleep(0.05)")
                    .fetch_one(scoped.conn())
                    .await;
            scoped.finish(result)
        }
    });
    let companies = futures::future::join_all(reads).await;
    assert!(companies.iter().all(|c| c.as_deref().ok() == Some("3")), "{companies:?}");
    assert!(reader.pool().size() <= 32, "the pool opened {} connections", reader.pool().size());
    let busy = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity where application_name = $1 and state <> 'idle'",
        )
        .bind(clientapi_schema::read::READER_APPLICATION)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let mut left = busy().await;
    for _ in 0..50 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = busy().await;
    }
    assert_eq!(left, 0, "reader connections still in a transaction or a statement");
    // Idle connections are closed once idle long enough (ten minutes, looked at every minute;
    // here at once), and the next read opens a fresh one.
    assert!(reader.pool().size() > 0);
    reader.pool().close_idle_for(Duration::ZERO);
    assert_eq!(reader.pool().size(), 0);
    let mut scoped = clientapi_schema::read::Scoped::begin(&reader, scope).await.unwrap();
    let company: String =
        sqlx::query_scalar("select current_setting('clientapi.company_id')").fetch_one(scoped.conn()).await.unwrap();
    scoped.finish(Ok(())).unwrap();
    assert_eq!((company.as_str(), reader.pool().size()), ("3", 1));
    reader.pool().close().await;
    assert_eq!(reader.pool().size(), 0);
    let refused = clientapi_schema::read::Scoped::begin(&reader, scope).await;
    assert!(matches!(refused, Err(sqlx::Error::PoolClosed)), "{:?}", refused.err());
}

/// Exports hold their connections for as long as their clients take to read: they have permits
/// of their own, so with every one of them held a page still gets a connection at once, and an
/// export past them waits for one to finish.
#[tokio::test]
async fn exports_holding_all_their_connections_leave_the_pages_theirs() {
    let app = crate::helpers::spawn_app().await;
    let reader = app.state.reads.primary();
    let width = reader.pool().max_connections();
    let scope = clientapi_schema::read::Scope::new(clientapi_schema::CompanyId(3), false);
    let mut exports = Vec::new();
    for _ in 0..width {
        exports.push(clientapi_schema::read::Scoped::begin_streaming(&reader, scope).await.unwrap());
    }
    let one_more = tokio::time::timeout(
        Duration::from_millis(300),
        clientapi_schema::read::Scoped::begin_streaming(&reader, scope),
    )
    .await;
    assert!(one_more.is_err(), "an export past the exports' connections did not wait");
    let mut pages = Vec::new();
    for _ in 0..width {
        let page = tokio::time::timeout(Duration::from_secs(3), clientapi_schema::read::Scoped::begin(&reader, scope))
            .await
            .expect("a page waited behind exports");
        pages.push(page.unwrap());
    }
    for mut page in pages {
        let company: String =
            sqlx::query_scalar("select current_setting('clientapi.company_id')").fetch_one(page.conn()).await.unwrap();
        assert_eq!(page.finish(Ok(company)).unwrap(), "3");
    }
    exports.pop().unwrap().finish(Ok(())).unwrap();
    let next =
        tokio::time::timeout(Duration::from_secs(3), clientapi_schema::read::Scoped::begin_streaming(&reader, scope))
            .await
            .expect("an export waited though one had finished");
    next.unwrap().finish(Ok(())).unwrap();
    for export in exports {
        export.finish(Ok(())).unwrap();
    }
    assert!(reader.pool().size() <= 2 * width, "the pool opened {} connections", reader.pool().size());
}

/// An export takes its connection before its answer starts: with every export connection held by
/// other exports past the pool's wait it is refused with a 503 and `Retry-After` (never an empty
/// 200), while pages are served; once one is free, it streams.
#[tokio::test]
async fn an_export_that_finds_every_export_connection_busy_is_told_to_retry() {
    let (sim, app, token, conn) = crate::endpoints::synced(1).await;
    let (ep, key) = crate::endpoints::create_endpoint(
        &app,
        &token,
        conn,
        &crate::endpoints::company(&sim, 0),
        serde_json::json!({}),
    )
    .await;
    let reader = app.state.reads.primary();
    let scope = clientapi_schema::read::Scope::new(clientapi_schema::CompanyId(1), false);
    let mut held = Vec::new();
    for _ in 0..reader.pool().max_connections() {
        held.push(clientapi_schema::read::Scoped::begin_streaming(&reader, scope).await.unwrap());
    }
    let export = app.url(&format!("/api/public/{ep}/export?resource=job&format=ndjson"));
    let refused = app.client.get(&export).bearer_auth(&key).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    let body: Value = refused.json().await.unwrap();
    assert!(body.to_string().contains("export connection is busy"), "{body}");
    let page = app.client.get(app.url(&format!("/api/public/{ep}/jobs"))).bearer_auth(&key).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "a page waited behind the exports");
    held.pop().unwrap().finish(Ok(())).unwrap();
    let streamed = app.client.get(&export).bearer_auth(&key).send().await.unwrap();
    assert_eq!(streamed.status().as_u16(), 200);
    let lines = streamed.text().await.unwrap();
    assert!(lines.lines().count() > 0 && lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{lines}");
    for scoped in held {
        scoped.finish(Ok(())).unwrap();
    }
}

#[tokio::test]
async fn a_parameter_given_without_a_value_is_refused_by_name() {
    let (sim, app, token, conn) = crate::endpoints::synced(1).await;
    let (ep, key) = crate::endpoints::create_endpoint(
        &app,
        &token,
        conn,
        &crate::endpoints::company(&sim, 0),
        serde_json::json!({}),
    )
    .await;
    let get = |path: String| {
        let (app, key) = (&app, &key);
        async move {
            let response = app.client.get(app.url(&path)).bearer_auth(key).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let fields = |body: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> =
            body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
        names.sort();
        names
    };
    let (status, body) = get(format!(
        "/api/public/{ep}/jobs?cursor=&updated_since=&updated_before=&created_since=&status=&ids=&client_id=&sort=&page_size=&include=&include_deleted="
    ))
    .await;
    assert_eq!(status, 422, "{body}");
    let mut all = vec![
        "client_id",
        "created_since",
        "cursor",
        "ids",
        "include",
        "include_deleted",
        "page_size",
        "sort",
        "status",
        "updated_before",
        "updated_since",
    ];
    all.sort();
    assert_eq!(fields(&body), all, "every empty parameter is named: {body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("leave the parameter out"));
    for path in [
        format!("/api/public/{ep}/changes?since=&resource=&page_size="),
        format!("/api/public/{ep}/export?resource=jobs&format="),
        format!("/api/public/{ep}/query/?resource=jobs&cursor="),
        format!("/api/public/{ep}/query/?resource="),
        format!("/api/public/{ep}/jobs/{}?include=", crate::endpoints::company(&sim, 0)),
    ] {
        let (status, body) = get(path.clone()).await;
        assert_eq!(status, 422, "{path}: {body}");
    }
    // Left out, the same parameters are fine.
    assert_eq!(get(format!("/api/public/{ep}/jobs")).await.0, 200);
}
