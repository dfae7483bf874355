//! GraphQL over the mirror: agreement with REST, statements per nesting level (counted by
//! Postgres' pg_stat_statements, not assumed), tenant isolation through every relation, and
//! abusive queries refused before any SQL.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clientapi_schema::model::Resource;
use serde_json::{Value, json};

use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::SimConfig;

use crate::endpoints::{company, create_endpoint, synced};
use crate::helpers::{TestApp, admin_token, connect_servicem8, spawn_app_for, spawn_sim};

async fn graphql(app: &TestApp, ep: &str, key: &str, body: Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/api/public/{ep}/graphql")))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn rest(app: &TestApp, key: &str, path: &str) -> Value {
    let response = app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// Statements the public read path has run in this test's database, as Postgres counted them:
/// every statement of the `clientapi_reader` role except the transaction's scope setting.
struct StatementCounter {
    db: sqlx::PgPool,
}

impl StatementCounter {
    async fn new(app: &TestApp) -> Self {
        sqlx::query("create extension if not exists pg_stat_statements").execute(&app.db).await.unwrap();
        Self { db: app.db.clone() }
    }

    async fn reset(&self) {
        sqlx::query("select pg_stat_statements_reset()").execute(&self.db).await.unwrap();
    }

    async fn data_statements(&self) -> i64 {
        sqlx::query_scalar(
            "select coalesce(sum(calls), 0)::int8 from pg_stat_statements s
              where s.dbid = (select oid from pg_database where datname = current_database())
                and s.userid = 'clientapi_reader'::regrole
                and s.query not like '%set_config(%'",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }
}

const NESTED: &str = "query Nested($first: Int) {
  jobs(first: $first, sort: UPDATED_AT_DESC) {
    nodes {
      id number
      client { id name }
      lineItems { id name total { amount currency } }
      invoices { id number payments { id amount { amount } } }
    }
  }
}";

#[tokio::test]
async fn graphql_agrees_with_rest_and_a_nested_query_costs_one_statement_per_level() {
    let sim = spawn_sim(SimConfig { companies: 3, jobs_per_company: 40, ..SimConfig::default() }).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let conn = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;

    // The same list, the same filters, the same values.
    let list = rest(&app, &key, &format!("/api/public/{ep}/jobs?page_size=2&sort=-updated_at")).await;
    let (status, body) = graphql(
        &app,
        &ep,
        &key,
        json!({"query": "{ jobs(first: 2, sort: UPDATED_AT_DESC) { nodes { id number status clientId total { amount currency } createdAt updatedAt } pageInfo { hasNextPage endCursor } totalCount } }"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let nodes = body["data"]["jobs"]["nodes"].as_array().unwrap();
    let data = list["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for (node, record) in nodes.iter().zip(data) {
        assert_eq!(node["id"], record["id"]);
        assert_eq!(node["number"], record["number"]);
        assert_eq!(node["status"], record["status"]);
        assert_eq!(node["clientId"], record["client_id"]);
        assert_eq!(node["total"]["amount"], record["total"]);
        assert_eq!(node["total"]["currency"], record["currency"]);
        assert_eq!(node["createdAt"], record["created_at"]);
        assert_eq!(node["updatedAt"], record["updated_at"]);
    }
    let rest_total = rest(&app, &key, &format!("/api/public/{ep}/jobs?page_size=1000")).await["count"].clone();
    assert_eq!(body["data"]["jobs"]["totalCount"], rest_total);
    // Cursors are shared: REST's next page through GraphQL, and GraphQL's through REST.
    let after = list["next_cursor"].as_str().unwrap();
    let (_, page2) = graphql(
        &app,
        &ep,
        &key,
        json!({"query": "query($after: String) { jobs(first: 2, sort: UPDATED_AT_DESC, after: $after) { nodes { id } } }", "variables": {"after": after}}),
    )
    .await;
    let rest2 = rest(&app, &key, &format!("/api/public/{ep}/jobs?page_size=2&sort=-updated_at&cursor={after}")).await;
    let ids =
        |v: &Value, field: &str| -> Vec<Value> { v.as_array().unwrap().iter().map(|r| r[field].clone()).collect() };
    assert_eq!(ids(&page2["data"]["jobs"]["nodes"], "id"), ids(&rest2["data"], "id"));
    let end = body["data"]["jobs"]["pageInfo"]["endCursor"].as_str().unwrap();
    let rest_from_gql =
        rest(&app, &key, &format!("/api/public/{ep}/jobs?page_size=2&sort=-updated_at&cursor={end}")).await;
    assert_eq!(ids(&rest_from_gql["data"], "id"), ids(&rest2["data"], "id"));

    // The nested query: jobs → client, lineItems, invoices → payments. Depth 6
    // (jobs.nodes.invoices.payments.amount.amount); three levels carry records.
    let counter = StatementCounter::new(&app).await;
    counter.reset().await;
    let (status, nested) = graphql(&app, &ep, &key, json!({"query": NESTED, "variables": {"first": 40}})).await;
    assert_eq!(status, 200);
    assert!(nested.get("errors").is_none(), "{nested}");
    let statements = counter.data_statements().await;
    let seen: Vec<(i64, String)> = sqlx::query_as("select calls, (select coalesce(string_agg(m[1], ','), left(query, 40)) from regexp_matches(query, 'from ([a-z_]+) t', 'g') m) from pg_stat_statements s where s.dbid = (select oid from pg_database where datname = current_database()) and s.userid = 'clientapi_reader'::regrole").fetch_all(&app.db).await.unwrap();
    eprintln!("STATEMENTS {seen:#?}");
    assert!(statements <= 6 + 1, "{statements} statements for a depth-6 query");
    assert_eq!(statements, 3, "one statement per level that carries records");
    // ... and the nested answers are the records REST gives for the same relations.
    let jobs = nested["data"]["jobs"]["nodes"].as_array().unwrap();
    assert!(
        jobs.iter()
            .flat_map(|j| j["invoices"].as_array().unwrap())
            .any(|i| !i["payments"].as_array().unwrap().is_empty()),
        "the fixture reaches the third level"
    );
    let mut nested_items = 0;
    for job in jobs {
        let id = job["id"].as_str().unwrap();
        let items = rest(&app, &key, &format!("/api/public/{ep}/line_items?job_id={id}&page_size=1000")).await;
        assert_eq!(ids(&job["lineItems"], "id"), ids(&items["data"], "id"), "line items of {id}");
        nested_items += items["data"].as_array().unwrap().len();
        let invoices = rest(&app, &key, &format!("/api/public/{ep}/invoices?job_id={id}")).await;
        assert_eq!(ids(&job["invoices"], "id"), ids(&invoices["data"], "id"), "invoices of {id}");
        for invoice in job["invoices"].as_array().unwrap() {
            let iid = invoice["id"].as_str().unwrap();
            let payments = rest(&app, &key, &format!("/api/public/{ep}/payments?invoice_id={iid}")).await;
            assert_eq!(ids(&invoice["payments"], "id"), ids(&payments["data"], "id"));
        }
        if let Some(client_id) = job["client"]["id"].as_str() {
            let client = rest(&app, &key, &format!("/api/public/{ep}/clients/{client_id}")).await;
            assert_eq!(job["client"]["name"], client["data"]["name"]);
        }
    }
    assert!(nested_items > 0, "the fixture has line items to nest");

    // The request log names the operation and counts the records.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged: (Option<String>, Option<i32>, i16) = sqlx::query_as(
        "select operation, item_count, status from request_logs where operation = 'Nested' order by created_at desc limit 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(logged.0.as_deref(), Some("Nested"));
    assert!(logged.1.unwrap() as usize > jobs.len(), "jobs and everything nested count: {logged:?}");
    assert_eq!(logged.2, 200);
}

/// Every (resource, id) in a GraphQL answer, by `__typename`.
fn collect(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(ty)), Some(Value::String(id))) = (map.get("__typename"), map.get("id")) {
                out.push((ty.clone(), id.clone()));
            }
            map.values().for_each(|v| collect(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        _ => {}
    }
}

fn type_resource(name: &str) -> Resource {
    Resource::ALL.into_iter().find(|r| r.singular().replace('_', "") == name.to_lowercase()).unwrap()
}

#[tokio::test]
async fn cross_tenant_probes_through_every_relation_return_nothing_foreign() {
    // Six customers, each with a site where some of its jobs are.
    let (sim, app, token, conn) = crate::rest::synced(SimConfig {
        companies: 6,
        jobs_per_company: 4,
        sites_per_company: 1,
        ..SimConfig::default()
    })
    .await;
    let head_offices = crate::endpoints::head_offices(&sim);
    let scopes = crate::endpoints::every_read_scope();
    let mut endpoints = Vec::new();
    for company in head_offices {
        let extra = json!({"rate_limit_per_minute": 100000, "scopes": scopes});
        let (ep, key) = create_endpoint(&app, &token, conn, &company, extra).await;
        endpoints.push((ep, key, company));
    }
    let owners: HashMap<(Resource, String), String> = {
        let mut out = HashMap::new();
        for r in Resource::ALL {
            let sql = format!(
                "select t.external_id, c.external_id from {} t join companies c on c.id = t.company_id",
                r.plural()
            );
            let rows: Vec<(String, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&app.db).await.unwrap();
            out.extend(rows.into_iter().map(|(id, company)| ((r, id), company)));
        }
        out
    };
    // Every relation, both ways, from every root list.
    let everything = r#"
      fragment C on Client { __typename id parent { __typename id } contacts { __typename id client { __typename id } }
                             jobs { __typename id } invoices { __typename id } sites { __typename id client { __typename id } } }
      fragment S on Site { __typename id client { __typename id } contacts { __typename id client { __typename id } }
                           jobs { __typename id site { __typename id } visits { __typename id job { __typename id } } } }
      fragment J on Job { __typename id client { __typename id } site { __typename id } jobType { __typename id }
                          visits { __typename id job { __typename id } }
                          lineItems { __typename id invoice { __typename id } }
                          invoices { __typename id payments { __typename id } } payments { __typename id job { __typename id } }
                          attachments { __typename id job { __typename id } } }
      fragment I on Invoice { __typename id client { __typename id } job { __typename id } lineItems { __typename id job { __typename id } }
                              payments { __typename id invoice { __typename id } } }
      query Everything {
        clients(first: 50, includeDeleted: true) { nodes { ...C } }
        contacts(first: 50, includeDeleted: true) { nodes { __typename id client { ...C } } }
        jobs(first: 50, includeDeleted: true) { nodes { ...J } }
        invoices(first: 50, includeDeleted: true) { nodes { ...I } }
        lineItems(first: 50, includeDeleted: true) { nodes { __typename id job { __typename id } invoice { __typename id } } }
        payments(first: 50, includeDeleted: true) { nodes { __typename id job { __typename id } invoice { __typename id } } }
        attachments(first: 50, includeDeleted: true) { nodes { __typename id job { ...J } } }
        sites(first: 10, includeDeleted: true) { nodes { ...S } }
        visits(first: 50, includeDeleted: true) { nodes { __typename id job { __typename id client { __typename id } } } }
        staff(first: 50) { nodes { __typename id } }
        jobTypes(first: 50) { nodes { __typename id } }
        customFields(first: 50) { nodes { __typename id } }
        taxRates(first: 50) { nodes { __typename id } }
        materials(first: 50) { nodes { __typename id taxRate { __typename id } } }
      }"#;
    let mut seen_any: HashSet<Resource> = HashSet::new();
    for (ep, key, company) in &endpoints {
        let (status, body) = graphql(&app, ep, key, json!({"query": everything})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        let mut found = Vec::new();
        collect(&body["data"], &mut found);
        assert!(!found.is_empty());
        for (ty, id) in found {
            let resource = type_resource(&ty);
            seen_any.insert(resource);
            let owner = owners.get(&(resource, id.clone()));
            // Staff and lookups are the account's: shared by every endpoint of the connection.
            let shared = resource.is_account_wide() && owner.is_some_and(String::is_empty);
            assert!(owner == Some(company) || shared, "{ty} {id} leaked to {ep}");
        }
    }
    assert_eq!(seen_any.len(), Resource::ALL.len(), "the probe reached every resource: {seen_any:?}");

    // Foreign ids look exactly like missing ones: by id, in `ids`, as relation filters.
    let (ep, key, company) = &endpoints[0];
    for resource in Resource::ALL.into_iter().filter(|r| !r.is_account_wide()) {
        let Some(((_, foreign), _)) = owners.iter().find(|((r, _), owner)| *r == resource && *owner != company) else {
            continue;
        };
        let single = clientapi_graphql::camel(resource.singular());
        let query = format!(r#"{{ a: {single}(id: "{foreign}") {{ id }} b: {single}(id: "no-such-id") {{ id }} }}"#);
        let (_, body) = graphql(&app, ep, key, json!({ "query": query })).await;
        assert_eq!(body["data"], json!({"a": null, "b": null}), "{resource}: {body}");
    }
    let own_job = owners.iter().find(|((r, _), o)| *r == Resource::Job && *o == company).unwrap().0.1.clone();
    let foreign_job = owners.iter().find(|((r, _), o)| *r == Resource::Job && *o != company).unwrap().0.1.clone();
    let foreign_client = owners.iter().find(|((r, _), o)| *r == Resource::Client && *o != company).unwrap().0.1.clone();
    let (_, body) = graphql(
        &app,
        ep,
        key,
        json!({"query": "query($ids: [ID!], $client: ID) { jobs(ids: $ids) { nodes { id } } byClient: jobs(clientId: $client) { nodes { id } } }",
               "variables": {"ids": [own_job, foreign_job], "client": foreign_client}}),
    )
    .await;
    assert_eq!(body["data"]["jobs"]["nodes"], json!([{"id": own_job}]), "{body}");
    assert_eq!(body["data"]["byClient"]["nodes"], json!([]));

    // A cursor from another endpoint is refused, not honoured.
    let (other_ep, other_key, _) = &endpoints[1];
    let (_, body) =
        graphql(&app, other_ep, other_key, json!({"query": "{ jobs(first: 1) { pageInfo { endCursor } } }"})).await;
    let cursor = body["data"]["jobs"]["pageInfo"]["endCursor"].as_str().unwrap().to_owned();
    let (_, body) = graphql(
        &app,
        ep,
        key,
        json!({"query": "query($c: String) { jobs(first: 1, after: $c) { nodes { id } } }", "variables": {"c": cursor}}),
    )
    .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "invalid_cursor", "{body}");
    assert!(body["data"].is_null());

    // A key without a scope gets that field refused, naming the scope.
    let (ep2, key2) = create_endpoint(&app, &token, conn, &endpoints[2].2, json!({"scopes": ["jobs:read"]})).await;
    let (_, body) =
        graphql(&app, &ep2, &key2, json!({"query": "{ jobs(first: 2) { nodes { id client { id } } } }"})).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "missing_scope", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("clients:read"));
    // And no key at all is the REST 401.
    let response = app
        .client
        .post(app.url(&format!("/api/public/{ep}/graphql")))
        .json(&json!({"query": "{ me { id } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn abusive_queries_are_refused_before_any_sql_and_cost_counts_against_the_rate_limit() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 60})).await;
    let counter = StatementCounter::new(&app).await;

    let deep = format!("{{ jobs {{ nodes {{ client {{ {} id {} }} }} }} }}", "parent { ".repeat(48), "} ".repeat(48));
    let aliases = format!("{{ {} }}", (0..1000).map(|n| format!("a{n}: me {{ id }}")).collect::<Vec<_>>().join(" "));
    let cycle = "fragment A on Job { client { jobs { ...B } } } fragment B on Job { ...A } { jobs { nodes { ...A } } }";
    let huge_first = "{ jobs(first: 1000000) { nodes { id } } }";
    let too_many_records = "{ jobs(first: 1000) { nodes { lineItems(first: 1000) { id } } } }";
    let via_variable =
        json!({"query": "query($n: Int) { jobs(first: $n) { nodes { id } } }", "variables": {"n": 5000}});
    let cases = [
        (json!({"query": deep}), "query_too_deep"),
        (json!({"query": aliases}), "too_many_aliases"),
        (json!({"query": cycle}), "fragment_cycle"),
        (json!({"query": huge_first}), "invalid_argument"),
        (json!({"query": too_many_records}), "query_too_large"),
        (via_variable, "invalid_argument"),
        (json!({"query": "{ jobs { nodes { nope } } }"}), "invalid_query"),
        (json!({"query": "{ jobs(first: "}), "invalid_query"),
    ];
    for (body, code) in cases {
        counter.reset().await;
        let (status, answer) = graphql(&app, &ep, &key, body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["data"].is_null(), "{answer}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], code, "{body}: {answer}");
        assert_eq!(counter.data_statements().await, 0, "no SQL for {body}");
    }
    // Batches are limited too.
    let batch: Vec<Value> = (0..11).map(|_| json!({"query": "{ me { id } }"})).collect();
    let (status, _) = graphql(&app, &ep, &key, Value::Array(batch)).await;
    assert_eq!(status, 422);

    // A query that could touch 45,000 records spends 45 of the endpoint's 60 requests a minute:
    // it runs once, and the second time is refused with Retry-After.
    let costly = json!({"query": "{ jobs(first: 1000) { nodes { lineItems(first: 44) { id } } } }"});
    let (status, body) = graphql(&app, &ep, &key, costly.clone()).await;
    assert_eq!(status, 200, "{body}");
    let response = app
        .client
        .post(app.url(&format!("/api/public/{ep}/graphql")))
        .bearer_auth(&key)
        .json(&costly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "rate_limited");
}

#[tokio::test]
async fn the_served_sdl_is_the_committed_one_and_graphiql_is_served() {
    let app = crate::helpers::spawn_app().await;
    let served = app.get("/api/public/graphql/schema.graphql").await.text().await.unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/graphql/schema.graphql")).unwrap();
    assert!(
        served == committed,
        "graphql/schema.graphql is stale: regenerate it with `cargo run -- graphql-schema > graphql/schema.graphql`"
    );
    for name in ["type Job", "jobs(", "lineItems(", "type Money", "scalar DateTime", "totalCount: Int!"] {
        assert!(served.contains(name), "{name}");
    }
    let page = app.get("/api/public/ep_anything/graphql").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/api/public/ep_anything/graphql"));
}

/// Statements the GraphQL direct path has run in this test's database (its SQL is marked).
async fn direct_statements(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(calls), 0)::int8 from pg_stat_statements s
          where s.dbid = (select oid from pg_database where datname = current_database())
            and s.query like '%/* graphql direct */%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Every query is sent twice: the executor answers the first time (which validates the text),
/// the direct path the second, and the two answers must be the same JSON; Postgres' count of
/// the direct path's (marked) statements shows which path ran.
#[tokio::test]
async fn the_direct_path_answers_exactly_what_the_executor_answers() {
    let (sim, app, token, conn) = synced(2).await;
    let (ep, key) =
        create_endpoint(&app, &token, conn, &company(&sim, 0), json!({"rate_limit_per_minute": 100000})).await;
    let (other_ep, other_key) =
        create_endpoint(&app, &token, conn, &company(&sim, 1), json!({"rate_limit_per_minute": 100000})).await;
    StatementCounter::new(&app).await;
    let page = "query Page($n: Int, $after: String, $sort: JobSort) {
        jobs(first: $n, after: $after, sort: $sort) {
          edges { cursor node { probe2: id number total { a: amount __typename } } __typename }
          pageInfo { hasNextPage endCursor __typename } __typename } }";
    let direct = [
        (
            "probe1",
            json!({"query": "{ jobs(first: 3) { nodes { probe1: id number status description total { amount currency }
            scheduledOn completedAt createdAt updatedAt deletedAt clientId address purchaseOrder currency }
            pageInfo { hasNextPage endCursor } totalCount } }"}),
        ),
        ("probe2", json!({"query": page, "variables": {"n": 2, "sort": "UPDATED_AT_DESC"}})),
        (
            "probe3",
            json!({"query": "{ invoices(first: 5, includeDeleted: true) { nodes { probe3: id number total { amount currency } remoteData } }
            clients(first: 2, sort: ID_DESC) { totalCount nodes { __typename id name isIndividual parentId } } __typename }"}),
        ),
        (
            "probe4",
            json!({"query": "query Items($ids: [ID!]) { lineItems(first: 20) { nodes { probe4: id jobId invoiceId name quantity unitPrice { amount } total { currency amount } } }
            payments(ids: $ids) { nodes { id amount { amount currency } isDeposit paidAt } } }", "variables": {"ids": ["x", "y"]}}),
        ),
    ];
    let mut ran = 0;
    for (probe, body) in &direct {
        let (status, first) = graphql(&app, &ep, &key, body.clone()).await;
        assert_eq!(status, 200, "{first}");
        assert!(first.get("errors").is_none(), "{first}");
        let before = direct_statements(&app).await;
        assert_eq!(before, ran, "{probe}: the executor answers a query the first time");
        let (status, second) = graphql(&app, &ep, &key, body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(second, first, "{probe}: the direct answer differs from the executor's");
        ran = direct_statements(&app).await;
        assert!(ran > before, "{probe}: the second answer was not the direct path's");
    }
    // The next page through the direct path, from the cursor it signed, agrees with REST.
    let (_, answer) =
        graphql(&app, &ep, &key, json!({"query": page, "variables": {"n": 2, "sort": "UPDATED_AT_DESC"}})).await;
    let cursor = answer["data"]["jobs"]["pageInfo"]["endCursor"].as_str().unwrap().to_owned();
    let (_, next) = graphql(
        &app,
        &ep,
        &key,
        json!({"query": page, "variables": {"n": 2, "sort": "UPDATED_AT_DESC", "after": cursor}}),
    )
    .await;
    let rest_page =
        rest(&app, &key, &format!("/api/public/{ep}/jobs?page_size=2&sort=-updated_at&cursor={cursor}")).await;
    let ids = |v: &Value, path: &[&str]| -> Vec<String> {
        let mut v = v;
        for p in path {
            v = &v[*p];
        }
        let id = |x: &Value| {
            let x = if x["node"].is_object() { &x["node"] } else { x };
            ["probe1", "probe2", "id"].iter().find_map(|k| x[*k].as_str()).unwrap().to_owned()
        };
        v.as_array().unwrap().iter().map(id).collect()
    };
    assert_eq!(ids(&next, &["data", "jobs", "edges"]), ids(&rest_page, &["data"]));
    // Another endpoint sending the same (validated) text sees only its own company.
    let (_, theirs) = graphql(&app, &other_ep, &other_key, direct[0].1.clone()).await;
    let their_rest = rest(&app, &other_key, &format!("/api/public/{other_ep}/jobs?page_size=3")).await;
    assert_eq!(ids(&theirs, &["data", "jobs", "nodes"]), ids(&their_rest, &["data"]));
    assert!(!ids(&theirs, &["data", "jobs", "nodes"]).is_empty());
    // ...and one endpoint's cursor is refused for another, exactly as the executor refuses it.
    let (_, refused) = graphql(
        &app,
        &other_ep,
        &other_key,
        json!({"query": page, "variables": {"n": 2, "sort": "UPDATED_AT_DESC", "after": cursor}}),
    )
    .await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "invalid_cursor", "{refused}");
    // A variable of the wrong type on a validated text is the executor's to refuse.
    let (_, wrong) = graphql(&app, &ep, &key, json!({"query": page, "variables": {"n": "two"}})).await;
    assert!(wrong["errors"][0]["message"].as_str().is_some() && wrong["data"].is_null(), "{wrong}");
    // What the direct path does not render (a relation) stays with the executor, twice.
    let relation = json!({"query": "{ jobs(first: 2) { nodes { probe9: id client { name } } } }"});
    let ran = direct_statements(&app).await;
    let (_, first) = graphql(&app, &ep, &key, relation.clone()).await;
    let (_, second) = graphql(&app, &ep, &key, relation).await;
    assert_eq!(first, second);
    assert!(first["data"]["jobs"]["nodes"][0]["client"]["name"].is_string(), "{first}");
    assert_eq!(direct_statements(&app).await, ran);
}

#[tokio::test]
async fn graphql_tools_load_the_schema_by_introspection_and_it_is_the_committed_sdl() {
    crate::helpers::require_node_packages(&["graphql"]);
    let (sim, app, token, conn) = synced(1).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let queries: Vec<String> = readme
        .split("\"query\": \"")
        .skip(1)
        .map(|rest| rest.split("\"}").next().unwrap().replace("\\\"", "\""))
        .collect();
    assert!(!queries.is_empty(), "the README shows GraphQL queries");
    let envs = vec![
        ("URL", app.url(&format!("/api/public/{ep}/graphql"))),
        ("KEY", key.clone()),
        ("SDL", concat!(env!("CARGO_MANIFEST_DIR"), "/graphql/schema.graphql").to_owned()),
        ("QUERIES", serde_json::to_string(&queries).unwrap()),
    ];
    // The public introspection answer (GraphiQL starts from it, before any key) is the
    // endpoint's own, and needs no key.
    let public: Value = app.get("/api/public/graphql/introspection.json").await.json().await.unwrap();
    let types = |answer: &Value| -> Vec<String> {
        let mut names: Vec<String> = answer["data"]["__schema"]["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let (_, by_key) = graphql(&app, &ep, &key, json!({"query": "{ __schema { types { name } } }"})).await;
    assert!(types(&public).len() > 20 && public["data"]["__schema"]["queryType"]["name"] == "Query", "{public}");
    assert_eq!(types(&public), types(&by_key));
    // graphql-js, as GraphiQL, Apollo and Relay load a schema.
    let stdout = crate::helpers::run_node("introspection.mjs", envs.clone()).await;
    assert!(stdout.contains("SDL equal"), "{stdout}");
    // graphql-core, as Python clients (gql, Strawberry's codegen) do.
    let python = crate::conformance::python_tool("python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/introspection.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).envs(envs).output().expect("running python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("SDL equal"),
        "graphql-core: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn introspection_deeper_than_the_standard_queries_is_still_refused_before_any_sql() {
    let (sim, app, token, conn) = synced(1).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    let counter = StatementCounter::new(&app).await;
    // 24 levels through the introspection types; and a mix of introspection and data keeps the
    // data query's limits.
    let deep = format!("{{ __schema {{ types {{ {} name {} }} }} }}", "fields { type { ".repeat(11), "} } ".repeat(11));
    let mixed = format!(
        "{{ __typename jobs {{ nodes {{ client {{ {} id {} }} }} }} }}",
        "parent { ".repeat(12),
        "} ".repeat(12)
    );
    for query in [deep, mixed] {
        counter.reset().await;
        let (status, answer) = graphql(&app, &ep, &key, json!({ "query": query })).await;
        assert_eq!(status, 200);
        assert!(answer["data"].is_null(), "{answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("nested too deep") || answer["errors"][0]["extensions"]["code"] == "query_too_deep",
            "{answer}"
        );
        assert_eq!(counter.data_statements().await, 0);
    }
    // The standard depth is served.
    let (_, answer) = graphql(&app, &ep, &key, json!({"query": "{ __type(name: \"Job\") { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } }"})).await;
    assert!(answer["errors"].is_null(), "{answer}");
}

#[tokio::test]
async fn the_graphql_over_http_audit_passes_every_must() {
    crate::helpers::require_node_packages(&["graphql-http"]);
    let (sim, app, token, conn) = synced(1).await;
    let (ep, key) = create_endpoint(&app, &token, conn, &company(&sim, 0), json!({})).await;
    let stdout = crate::helpers::run_node(
        "audit.mjs",
        vec![("URL", app.url(&format!("/api/public/{ep}/graphql"))), ("KEY", key)],
    )
    .await;
    assert!(stdout.contains("0 MUST failures"), "{stdout}");
}
