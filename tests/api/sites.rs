//! Sites, visits, staff and lookups (issue: "the rest of a field-service customer's day"): the
//! scoping rule for sites from every side, a site moving between head offices, the booking flow
//! end to end, and technicians shown only with `technicians:read`.

use std::collections::BTreeSet;

use clientapi_schema::model::Resource;
use clientapi_sync::simulator::servicem8::{Running, SimConfig};
use serde_json::{Value, json};

use crate::endpoints::{create_endpoint, every_read_scope, head_offices};
use crate::helpers::TestApp;
use crate::rest::synced;

async fn call(
    app: &TestApp,
    ep: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(&format!("/api/public/{ep}{path}"))).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(app: &TestApp, ep: &str, key: &str, path: &str) -> (u16, Value) {
    call(app, ep, key, reqwest::Method::GET, path, None).await
}

fn ids(body: &Value) -> BTreeSet<String> {
    body["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// Every change the endpoint's feed holds: (resource, id) → the last record seen.
async fn whole_feed(app: &TestApp, ep: &str, key: &str) -> std::collections::HashMap<(String, String), Value> {
    let mut out = std::collections::HashMap::new();
    let mut path = "/changes?page_size=1000".to_owned();
    loop {
        let (status, body) = get(app, ep, key, &path).await;
        assert_eq!(status, 200, "{body}");
        for change in body["data"].as_array().unwrap() {
            let key = (change["resource"].as_str().unwrap().to_owned(), change["id"].as_str().unwrap().to_owned());
            out.insert(key, change["record"].clone());
        }
        if body["has_more"] != json!(true) {
            return out;
        }
        path = format!("/changes?page_size=1000&since={}", body["next_cursor"].as_str().unwrap());
    }
}

/// Ids of a whole export (NDJSON).
async fn exported(app: &TestApp, ep: &str, key: &str, resource: &str) -> Vec<Value> {
    let url = app.url(&format!("/api/public/{ep}/export?resource={resource}&format=ndjson"));
    let text = app.client.get(url).bearer_auth(key).send().await.unwrap().text().await.unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn graphql(app: &TestApp, ep: &str, key: &str, query: &str) -> Value {
    let url = app.url(&format!("/api/public/{ep}/graphql"));
    let response = app.client.post(url).bearer_auth(key).json(&json!({"query": query})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// What belongs to one site at the provider: its contacts, its jobs, and their line items and
/// visits.
struct SiteRecords {
    contacts: Vec<String>,
    jobs: Vec<String>,
    line_items: Vec<String>,
    visits: Vec<String>,
}

fn site_records(sim: &Running, site: &str) -> SiteRecords {
    let uuids = |object: &str, field: &str, values: &[String]| -> Vec<String> {
        sim.sim
            .records(object)
            .iter()
            .filter(|r| r[field].as_str().is_some_and(|v| values.iter().any(|x| x == v)))
            .map(|r| r["uuid"].as_str().unwrap().to_owned())
            .collect()
    };
    let site = [site.to_owned()];
    let jobs = uuids("job", "company_uuid", &site);
    SiteRecords {
        contacts: uuids("companycontact", "company_uuid", &site),
        line_items: uuids("jobmaterial", "job_uuid", &jobs),
        visits: uuids("jobactivity", "job_uuid", &jobs),
        jobs,
    }
}

/// Asserts that the endpoint sees exactly (`visible`) or none (`!visible`) of a site and its
/// records, through every route: one record, lists with relation filters, the changes feed,
/// the export and GraphQL relations.
async fn assert_sees_site(app: &TestApp, ep: &str, key: &str, site: &str, records: &SiteRecords, visible: bool) {
    let want = if visible { 200 } else { 404 };
    let who = format!("{ep} ({})", if visible { "its head office" } else { "another company" });
    assert_eq!(get(app, ep, key, &format!("/sites/{site}")).await.0, want, "site via {who}");
    assert_eq!(get(app, ep, key, &format!("/clients/{site}")).await.0, want, "site as a client via {who}");
    for (plural, list) in [
        ("contacts", &records.contacts),
        ("jobs", &records.jobs),
        ("line_items", &records.line_items),
        ("visits", &records.visits),
    ] {
        for id in list.iter() {
            let (status, body) = get(app, ep, key, &format!("/{plural}/{id}")).await;
            assert_eq!(status, want, "{plural} {id} via {who}: {body}");
        }
    }
    let (_, sites) = get(app, ep, key, "/sites?page_size=1000").await;
    assert_eq!(ids(&sites).contains(site), visible, "the sites list via {who}");
    let (_, contacts) = get(app, ep, key, &format!("/contacts?client_id={site}")).await;
    assert_eq!(ids(&contacts), if visible { records.contacts.iter().cloned().collect() } else { BTreeSet::new() });
    let (_, jobs) = get(app, ep, key, &format!("/jobs?client_id={site}&page_size=1000")).await;
    assert_eq!(ids(&jobs), if visible { records.jobs.iter().cloned().collect() } else { BTreeSet::new() });
    for job in jobs["data"].as_array().unwrap() {
        assert_eq!(job["site_id"], json!(site), "a job at a site names it");
    }
    let (mut items, mut visits) = (BTreeSet::new(), BTreeSet::new());
    for job in &records.jobs {
        items.extend(ids(&get(app, ep, key, &format!("/line_items?job_id={job}&page_size=1000")).await.1));
        visits.extend(ids(&get(app, ep, key, &format!("/visits?job_id={job}&page_size=1000")).await.1));
    }
    let all = |list: &Vec<String>| if visible { list.iter().cloned().collect() } else { BTreeSet::new() };
    assert_eq!(items, all(&records.line_items), "line items by job via {who}");
    assert_eq!(visits, all(&records.visits), "visits by job via {who}");
    let feed = whole_feed(app, ep, key).await;
    let in_feed = |resource: &str, id: &str| {
        feed.get(&(resource.to_owned(), id.to_owned())).is_some_and(|r| r["deleted_at"].is_null())
    };
    assert_eq!(in_feed("site", site), visible, "the feed's site via {who}");
    for (resource, list) in [
        ("contact", &records.contacts),
        ("job", &records.jobs),
        ("line_item", &records.line_items),
        ("visit", &records.visits),
    ] {
        for id in list.iter() {
            assert_eq!(in_feed(resource, id), visible, "the feed's {resource} {id} via {who}");
        }
    }
    let exported_jobs: BTreeSet<String> =
        exported(app, ep, key, "jobs").await.iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    for job in &records.jobs {
        assert_eq!(exported_jobs.contains(job), visible, "the export's job {job} via {who}");
    }
    let body =
        graphql(app, ep, key, &format!(r#"{{ site(id: "{site}") {{ id jobs {{ id }} contacts {{ id }} }} }}"#)).await;
    assert!(body.get("errors").is_none(), "{body}");
    if visible {
        assert_eq!(body["data"]["site"]["jobs"].as_array().unwrap().len(), records.jobs.len(), "{body}");
        assert_eq!(body["data"]["site"]["contacts"].as_array().unwrap().len(), records.contacts.len(), "{body}");
    } else {
        assert!(body["data"]["site"].is_null(), "{body}");
    }
}

async fn mirror_counts(app: &TestApp) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for r in Resource::ALL {
        let sql = format!("select count(*), count(distinct external_id) from {}", r.plural());
        let (all, distinct): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&app.db).await.unwrap();
        assert_eq!(all, distinct, "{r}: a record in two companies");
        out.push((r.plural().to_owned(), all, distinct));
    }
    out
}

#[tokio::test]
async fn a_sites_records_are_its_head_offices_everywhere_and_move_with_the_site_in_one_sync() {
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 3, jobs_per_company: 9, sites_per_company: 1, ..SimConfig::default() }).await;
    let companies = sim.sim.records("company");
    let head_offices = head_offices(&sim);
    let (a, b) = (head_offices[0].clone(), head_offices[1].clone());
    let site =
        companies.iter().find(|c| c["parent_company_uuid"] == json!(a)).unwrap()["uuid"].as_str().unwrap().to_owned();
    let records = site_records(&sim, &site);
    assert!(!records.contacts.is_empty() && !records.jobs.is_empty() && !records.line_items.is_empty(), "a busy site");
    assert!(!records.visits.is_empty(), "the site's jobs are booked");

    let scopes = json!({"scopes": every_read_scope()});
    let (ep_a, key_a) = create_endpoint(&app, &token, conn, &a, scopes.clone()).await;
    let (ep_b, key_b) = create_endpoint(&app, &token, conn, &b, scopes.clone()).await;
    assert_sees_site(&app, &ep_a, &key_a, &site, &records, true).await;
    assert_sees_site(&app, &ep_b, &key_b, &site, &records, false).await;
    let (_, site_json) = get(&app, &ep_a, &key_a, &format!("/sites/{site}")).await;
    assert_eq!(site_json["data"]["client_id"], json!(a), "a site names its head office");

    // A site is no customer company of its own: not listed to admins, no endpoint for it.
    let companies_page = app
        .client
        .get(app.url(&format!("/api/admin/connections/{}/companies?limit=100", conn.0)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let listed: Vec<&str> =
        companies_page["data"].as_array().unwrap().iter().map(|c| c["external_id"].as_str().unwrap()).collect();
    assert!(listed.contains(&a.as_str()) && !listed.contains(&site.as_str()) && !listed.contains(&""), "{listed:?}");
    let refused = app
        .client
        .post(app.url("/api/admin/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"connection_id": conn.0, "company_external_id": site, "name": "Site"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("head office"));

    // The site moves to another head office: one incremental sync moves everything of it.
    let before = mirror_counts(&app).await;
    assert!(sim.sim.modify("company", &site, json!({"parent_company_uuid": b})));
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    assert_eq!(mirror_counts(&app).await, before, "nothing lost, nothing duplicated");
    assert_sees_site(&app, &ep_b, &key_b, &site, &records, true).await;
    assert_sees_site(&app, &ep_a, &key_a, &site, &records, false).await;
    let (_, site_json) = get(&app, &ep_b, &key_b, &format!("/sites/{site}")).await;
    assert_eq!(site_json["data"]["client_id"], json!(b));

    // And back, by a full reconciliation this time.
    assert!(sim.sim.modify("company", &site, json!({"parent_company_uuid": a})));
    app.state.engine.sync_connection(conn, true, None).await.unwrap();
    assert_eq!(mirror_counts(&app).await, before);
    assert_sees_site(&app, &ep_a, &key_a, &site, &records, true).await;
    assert_sees_site(&app, &ep_b, &key_b, &site, &records, false).await;
}

#[tokio::test]
async fn records_mirrored_under_a_sites_own_company_move_to_its_head_office() {
    // The mirror before the rule: a contact that named a site was mirrored under a company of
    // the site's own id. Its next sync (and the migration, for what it already holds) brings it
    // to the head office, nothing lost.
    let (sim, app, token, conn) =
        synced(SimConfig { companies: 2, jobs_per_company: 3, sites_per_company: 1, ..SimConfig::default() }).await;
    let companies = sim.sim.records("company");
    let a = companies.iter().find(|c| c["parent_company_uuid"] == "").unwrap()["uuid"].as_str().unwrap().to_owned();
    let site =
        companies.iter().find(|c| c["parent_company_uuid"] == json!(a)).unwrap()["uuid"].as_str().unwrap().to_owned();
    let records = site_records(&sim, &site);
    // Put the site's records where the old rule put them.
    let own: i64 =
        sqlx::query_scalar("insert into companies (connection_id, external_id) values ($1, $2) returning id")
            .bind(conn)
            .bind(&site)
            .fetch_one(&app.db)
            .await
            .unwrap();
    for table in ["contacts", "jobs", "invoices", "line_items", "payments", "visits"] {
        let (column, ids) = match table {
            "contacts" => ("external_id", &records.contacts),
            "jobs" | "invoices" => ("external_id", &records.jobs),
            "line_items" => ("external_id", &records.line_items),
            "visits" => ("external_id", &records.visits),
            _ => ("job_id", &records.jobs),
        };
        let sql = format!("update {table} set company_id = $1 where {column} = any($2)");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(own).bind(ids).execute(&app.db).await.unwrap();
    }
    sqlx::query("update mirror_keys set company_id = $1 where external_id = any($2) and resource <> 'client'")
        .bind(own)
        .bind(
            records
                .contacts
                .iter()
                .chain(&records.jobs)
                .chain(&records.line_items)
                .chain(&records.visits)
                .collect::<Vec<_>>(),
        )
        .execute(&app.db)
        .await
        .unwrap();
    let (ep, key) = create_endpoint(&app, &token, conn, &a, json!({"scopes": every_read_scope()})).await;
    let (status, _) = get(&app, &ep, &key, &format!("/contacts/{}", records.contacts[0])).await;
    assert_eq!(status, 404, "stranded under the site's own company");
    let before = mirror_counts(&app).await;

    // The site's record comes round again (any edit, or the reconciliation).
    sim.sim.modify("company", &site, json!({"name": "Renamed site"}));
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    assert_eq!(mirror_counts(&app).await, before);
    assert_sees_site(&app, &ep, &key, &site, &records, true).await;
}

#[tokio::test]
async fn the_setup_flow_books_a_job_at_a_new_site_and_technicians_show_only_with_their_scope() {
    let (sim, app, token, conn) = synced(SimConfig { companies: 2, jobs_per_company: 4, ..SimConfig::default() }).await;
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let mut scopes = every_read_scope();
    scopes.extend(["sites:write", "jobs:write", "visits:write", "contacts:write"].map(str::to_owned));
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company, json!({"access": "read_write", "scopes": scopes})).await;
    let (post, patch, delete) = (reqwest::Method::POST, reqwest::Method::PATCH, reqwest::Method::DELETE);

    // 1. Lookups, resolved once.
    let (_, types) = get(&app, &ep, &key, "/job_types").await;
    let job_type = types["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, fields) = get(&app, &ep, &key, "/custom_fields").await;
    let access = fields["data"].as_array().unwrap().iter().find(|f| f["name"] == "access").unwrap();
    assert_eq!(
        (access["type"].as_str(), &access["choices"]),
        (Some("choice"), &json!(["Key safe", "Tenant", "Agent"]))
    );
    let (_, staff) = get(&app, &ep, &key, "/staff").await;
    let technician = staff["data"][0].clone();
    let (_, rates) = get(&app, &ep, &key, "/tax_rates").await;
    assert!(
        rates["data"].as_array().unwrap().iter().any(|r| r["rate"] == "10.00" && r["is_default"] == true),
        "{rates}"
    );
    let (_, materials) = get(&app, &ep, &key, "/materials").await;
    assert_eq!(
        materials["data"][0]["tax_rate_id"],
        rates["data"].as_array().unwrap().iter().find(|r| r["name"] == "GST").unwrap()["id"]
    );

    // 2. A site, created under the endpoint's company.
    let (status, site) =
        call(&app, &ep, &key, post.clone(), "/sites", Some(json!({"name": "Warehouse", "address": "9 Dock St"}))).await;
    assert_eq!(status, 201, "{site}");
    let site_id = site["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(site["data"]["client_id"], json!(company));
    // A contact at the site lands in scope and is readable at once (it used to fall outside).
    let (status, contact) = call(
        &app,
        &ep,
        &key,
        post.clone(),
        "/contacts",
        Some(json!({"client_id": site_id, "first_name": "Dock", "last_name": "Manager"})),
    )
    .await;
    assert_eq!(status, 201, "{contact}");

    // 3. A job at the site, with a type, custom fields and a preferred window.
    let job_body = json!({
        "status": "Work Order", "description": "Install racking", "site_id": site_id, "job_type_id": job_type,
        "custom_fields": {"gate_code": "4321", "access": "Tenant"},
        "start_time": "2030-03-04T08:00:00Z", "end_time": "2030-03-04T12:00:00+00:00"
    });
    let (status, job) = call(&app, &ep, &key, post.clone(), "/jobs", Some(job_body.clone())).await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!((&job["data"]["site_id"], &job["data"]["client_id"]), (&json!(site_id), &json!(site_id)));
    assert_eq!(job["data"]["job_type_id"], json!(job_type));
    assert_eq!(job["data"]["custom_fields"], json!({"gate_code": "4321", "access": "Tenant"}));

    // 4. The job, its site and its visit, readable at once through REST, GraphQL and /changes.
    let (_, visits) = get(&app, &ep, &key, &format!("/visits?job_id={job_id}")).await;
    let visit = &visits["data"][0];
    assert_eq!(
        (visit["start_at"].as_str(), visit["end_at"].as_str()),
        (Some("2030-03-04T08:00:00+00:00"), Some("2030-03-04T12:00:00+00:00")),
        "{visits}"
    );
    assert_eq!(visit["status"], "scheduled");
    let body = graphql(&app, &ep, &key, &format!(
        r#"{{ job(id: "{job_id}") {{ site {{ id name client {{ id }} }} jobType {{ id }} customFields visits {{ startAt }} }} }}"#
    )).await;
    assert_eq!(body["data"]["job"]["site"]["name"], "Warehouse", "{body}");
    assert_eq!(body["data"]["job"]["site"]["client"]["id"], json!(company));
    assert_eq!(body["data"]["job"]["jobType"]["id"], json!(job_type));
    assert_eq!(body["data"]["job"]["customFields"]["gate_code"], "4321");
    assert_eq!(body["data"]["job"]["visits"].as_array().unwrap().len(), 1);
    let feed = whole_feed(&app, &ep, &key).await;
    for (resource, id) in [("site", &site_id), ("job", &job_id), ("visit", &visit["id"].as_str().unwrap().to_owned())] {
        assert!(feed.contains_key(&(resource.to_owned(), id.clone())), "{resource} {id} in /changes");
    }

    // Custom fields are checked against their definitions, each bad one named.
    let mut bad = job_body.clone();
    bad["custom_fields"] = json!({"nope": "x", "access": "Nobody"});
    let (status, problem) = call(&app, &ep, &key, post.clone(), "/jobs", Some(bad)).await;
    assert_eq!(status, 422, "{problem}");
    let named: BTreeSet<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(named, BTreeSet::from(["custom_fields.access", "custom_fields.nope"]), "{problem}");
    let mut backwards = job_body.clone();
    backwards["end_time"] = json!("2030-03-04T07:00:00Z");
    let (status, problem) = call(&app, &ep, &key, post.clone(), "/jobs", Some(backwards)).await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (422, Some("end_time")), "{problem}");

    // Book a technician; a double booking is the provider's 409, in its words.
    let booking = json!({"job_id": job_id, "staff_id": technician["id"], "start_at": "2030-03-05T08:00:00Z", "end_at": "2030-03-05T10:00:00Z"});
    let (status, booked) = call(&app, &ep, &key, post.clone(), "/visits", Some(booking.clone())).await;
    assert_eq!(status, 201, "{booked}");
    let booked_id = booked["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(booked["data"]["technician"]["id"], technician["id"]);
    assert_eq!(booked["data"]["technician"]["email"], technician["email"]);
    let mut clash = booking.clone();
    clash["start_at"] = json!("2030-03-05T09:00:00Z");
    clash["end_at"] = json!("2030-03-05T11:00:00Z");
    let (status, problem) = call(&app, &ep, &key, post.clone(), "/visits", Some(clash)).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("already scheduled"), "{problem}");
    let (status, moved) = call(
        &app,
        &ep,
        &key,
        patch,
        &format!("/visits/{booked_id}"),
        Some(json!({"start_at": "2030-03-05T13:00:00Z", "end_at": "2030-03-05T15:00:00Z"})),
    )
    .await;
    assert_eq!((status, moved["data"]["start_at"].as_str()), (200, Some("2030-03-05T13:00:00+00:00")), "{moved}");
    let (status, _) = call(&app, &ep, &key, delete, &format!("/visits/{booked_id}"), None).await;
    assert!(status == 200 || status == 204, "{status}");
    let (_, cancelled) = get(&app, &ep, &key, &format!("/visits/{booked_id}")).await;
    assert!(!cancelled["data"]["deleted_at"].is_null(), "a cancelled visit is a tombstone: {cancelled}");

    // A read-only key without technicians:read sees no technician anywhere.
    let plain: Vec<String> = Resource::ALL.iter().map(|r| r.read_scope()).filter(|s| s != "staff:read").collect();
    let (ro_ep, ro_key) = create_endpoint(&app, &token, conn, &company, json!({"scopes": plain})).await;
    let no_technician = |record: &Value, what: &str| assert!(record["technician"].is_null(), "{what}: {record}");
    for (ep, key, shown) in [(&ro_ep, &ro_key, false), (&ep, &key, true)] {
        let (_, job) = get(&app, ep, key, &format!("/jobs/{job_id}")).await;
        let (_, visits) = get(&app, ep, key, "/visits?page_size=1000").await;
        let jobs = exported(&app, ep, key, "jobs").await;
        let feed = whole_feed(&app, ep, key).await;
        let body = graphql(
            &app,
            ep,
            key,
            "{ jobs(first: 100) { nodes { technician } } visits(first: 100) { nodes { technician } } }",
        )
        .await;
        let graphql_technicians: Vec<&Value> = body["data"]["jobs"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .chain(body["data"]["visits"]["nodes"].as_array().unwrap())
            .map(|n| &n["technician"])
            .collect();
        if shown {
            assert!(visits["data"].as_array().unwrap().iter().any(|v| !v["technician"].is_null()), "{visits}");
            assert!(jobs.iter().any(|j| !j["technician"].is_null()));
            assert!(graphql_technicians.iter().any(|t| !t.is_null()), "{body}");
            continue;
        }
        no_technician(&job["data"], "REST job");
        for v in visits["data"].as_array().unwrap() {
            no_technician(v, "REST visit");
        }
        for j in &jobs {
            no_technician(j, "export");
        }
        for record in feed.values() {
            no_technician(record, "changes");
        }
        assert!(graphql_technicians.iter().all(|t| t.is_null()), "{body}");
        assert!(!visits["data"].as_array().unwrap().is_empty());
        let (status, _) = get(&app, ep, key, "/staff").await;
        assert_eq!(status, 403, "the staff list needs staff:read");
    }
}

#[tokio::test]
async fn a_connection_without_the_scopes_of_staff_or_lookups_still_syncs_its_customers() {
    // A connection made before staff and lookups were mirrored: its token lacks their scopes.
    let config =
        SimConfig { companies: 2, jobs_per_company: 3, withheld: vec!["staff", "customfield"], ..SimConfig::default() };
    let (sim, app, token, conn) = synced(config).await;
    let (status, streams): (String, Value) =
        sqlx::query_as("select status, streams from sync_runs order by id desc limit 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "succeeded");
    assert!(streams["staff"]["unavailable"].as_str().unwrap().contains("scope"), "{streams}");
    assert!(streams["customfield"]["unavailable"].is_string() && streams["job"]["unavailable"].is_null(), "{streams}");
    let company = sim.sim.records("company")[0]["uuid"].as_str().unwrap().to_owned();
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({"scopes": every_read_scope()})).await;
    let (_, jobs) = get(&app, &ep, &key, "/jobs").await;
    assert!(!jobs["data"].as_array().unwrap().is_empty());
    let (status, staff) = get(&app, &ep, &key, "/staff").await;
    assert_eq!((status, staff["count"].as_i64()), (200, Some(0)), "{staff}");
    let (_, types) = get(&app, &ep, &key, "/job_types").await;
    assert!(!types["data"].as_array().unwrap().is_empty(), "the other lookups are mirrored");
}
