//! The docs page's examples are real answers: this test makes every public operation's request
//! against a synced simulator and records what the service answered. `CLIENTAPI_BLESS=1 cargo
//! test docs_examples` rewrites `openapi/examples.json`; otherwise the committed examples must
//! still match what the service answers, operation by operation, in status and shape.

use serde_json::{Map, Value, json};

use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::SimConfig;

use crate::endpoints::{create_endpoint, every_scope, head_offices};
use crate::helpers::{admin_token, connect_servicem8, spawn_app_for, spawn_sim};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/examples.json");

/// The keys of an answer, and of its first record, which make its shape.
fn shape(example: &Value) -> Value {
    let response = &example["response"];
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let first = match &response["data"] {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    json!({"status": example["status"], "keys": keys(response), "record": keys(&first)})
}

/// A list answer cut to one record, so the page stays readable.
fn trimmed(mut body: Value) -> Value {
    if let Some(items) = body.get_mut("data").and_then(Value::as_array_mut) {
        items.truncate(1);
    }
    body
}

#[tokio::test]
async fn docs_examples_are_what_the_service_answers() {
    // One company with enough jobs that it has some of everything (payments, attachments).
    let sim =
        spawn_sim(SimConfig { companies: 1, jobs_per_company: 40, sites_per_company: 1, ..SimConfig::default() }).await;
    let app = spawn_app_for(&sim).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let conn = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    let head_office = head_offices(&sim).remove(0);
    // Every scope, the personal ones included, so every operation answers.
    let scopes = every_scope();
    let (ep, key) =
        create_endpoint(&app, &token, conn, &head_office, json!({"access": "read_write", "scopes": scopes})).await;
    let mut examples = Map::new();
    let mut call = async |operation: &str, method: &str, path: String, body: Option<Value>| -> Value {
        let url = app.url(&format!("/api/public/{ep}{path}"));
        let mut request = app.client.request(method.parse().unwrap(), url).bearer_auth(&key);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = response.text().await.unwrap();
        let answer = if content_type.starts_with("application/json") || content_type.contains("problem+json") {
            trimmed(serde_json::from_str(&text).unwrap())
        } else {
            // NDJSON, CSV, bytes, HTML: the first two lines.
            Value::String(text.lines().take(2).collect::<Vec<_>>().join("\n"))
        };
        let example = json!({"method": method, "path": format!("/api/public/{{endpoint}}{path}"), "body": body,
                             "status": status, "content_type": content_type, "response": answer});
        examples.insert(operation.to_owned(), example);
        answer
    };
    let first_id = |page: &Value| page["data"][0]["id"].as_str().unwrap().to_owned();
    let id_of = |written: Value| written["data"]["id"].as_str().unwrap().to_owned();

    call("me", "GET", "/me".into(), None).await;
    for (plural, singular) in [
        ("clients", "client"),
        ("contacts", "contact"),
        ("jobs", "job"),
        ("line_items", "line_item"),
        ("payments", "payment"),
        ("invoices", "invoice"),
        ("attachments", "attachment"),
        ("sites", "site"),
        ("visits", "visit"),
        ("staff", "staff_member"),
        ("job_types", "job_type"),
        ("custom_fields", "custom_field"),
        ("tax_rates", "tax_rate"),
        ("materials", "material"),
    ] {
        let page = call(&format!("list_{plural}"), "GET", format!("/{plural}?page_size=1"), None).await;
        call(&format!("get_{singular}"), "GET", format!("/{plural}/{}", first_id(&page)), None).await;
    }
    let site = id_of(
        call("create_site", "POST", "/sites".into(), Some(json!({"name": "Harbour View", "address": "2 Quay St"})))
            .await,
    );
    call("update_site", "PATCH", format!("/sites/{site}"), Some(json!({"address": "4 Quay St"}))).await;
    let job_type = first_id(&call("list_job_types", "GET", "/job_types?page_size=1".into(), None).await);
    let job = id_of(
        call(
            "create_job",
            "POST",
            "/jobs".into(),
            Some(json!({"status": "Quote", "description": "Replace the hot water unit", "scheduled_on": "2026-12-14",
                        "site_id": site, "job_type_id": job_type, "custom_fields": {"gate_code": "4321"},
                        "start_time": "2026-12-14T08:00:00Z", "end_time": "2026-12-14T10:00:00Z"})),
        )
        .await,
    );
    let technician = first_id(&call("list_staff", "GET", "/staff?page_size=1".into(), None).await);
    let visit = id_of(
        call(
            "create_visit",
            "POST",
            "/visits".into(),
            Some(json!({"job_id": job, "staff_id": technician, "start_at": "2026-12-15T08:00:00Z",
                        "end_at": "2026-12-15T11:00:00Z"})),
        )
        .await,
    );
    call(
        "update_visit",
        "PATCH",
        format!("/visits/{visit}"),
        Some(json!({"start_at": "2026-12-15T13:00:00Z", "end_at": "2026-12-15T16:00:00Z"})),
    )
    .await;
    call("delete_visit", "DELETE", format!("/visits/{visit}"), None).await;
    call("update_job", "PATCH", format!("/jobs/{job}"), Some(json!({"status": "Work Order"}))).await;
    let client = call("create_client", "POST", "/clients".into(), Some(json!({"name": "Harbour View (site)"}))).await;
    call(
        "update_client",
        "PATCH",
        format!("/clients/{}", client["data"]["id"].as_str().unwrap()),
        Some(json!({"website": "https://harbourview.example"})),
    )
    .await;
    let contact = id_of(
        call(
            "create_contact",
            "POST",
            "/contacts".into(),
            Some(json!({"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"})),
        )
        .await,
    );
    call("update_contact", "PATCH", format!("/contacts/{contact}"), Some(json!({"mobile": "0400 000 000"}))).await;
    call("delete_contact", "DELETE", format!("/contacts/{contact}"), None).await;
    let item = id_of(
        call(
            "create_line_item",
            "POST",
            "/line_items".into(),
            Some(json!({"job_id": job, "name": "Labour", "quantity": "2", "unit_price": "95.00"})),
        )
        .await,
    );
    call("update_line_item", "PATCH", format!("/line_items/{item}"), Some(json!({"quantity": "3"}))).await;
    call("delete_line_item", "DELETE", format!("/line_items/{item}"), None).await;
    let attachment = id_of(call(
        "create_attachment",
        "POST",
        "/attachments".into(),
        Some(json!({"job_id": job, "name": "note.txt", "content_type": "text/plain", "content_base64": "SG90IHdhdGVyIHVuaXQgcmVwbGFjZWQu"})),
    ).await);
    call("get_attachment_content", "GET", format!("/attachments/{attachment}/content"), None).await;
    call("update_attachment", "PATCH", format!("/attachments/{attachment}"), Some(json!({"name": "note-2.txt"}))).await;
    call("delete_attachment", "DELETE", format!("/attachments/{attachment}"), None).await;
    call("delete_job", "DELETE", format!("/jobs/{job}"), None).await;
    call("query", "GET", "/query/?resource=invoices&status=paid&page_size=1".into(), None).await;
    call("changes", "GET", "/changes?resource=jobs&page_size=1".into(), None).await;
    call("export", "GET", "/export?resource=clients&format=csv".into(), None).await;
    call(
        "graphql",
        "POST",
        "/graphql".into(),
        Some(json!({"query": "{ jobs(first: 1) { nodes { id number status client { name } } } }"})),
    )
    .await;
    call("graphiql", "GET", "/graphql".into(), None).await;
    let hook = call(
        "create_webhook",
        "POST",
        "/webhooks".into(),
        Some(json!({"url": "https://hooks.example.com/clientapi", "events": ["job.*", "invoice.updated", "sync.completed"]})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call("list_webhooks", "GET", "/webhooks".into(), None).await;
    call("get_webhook", "GET", format!("/webhooks/{hook}"), None).await;
    call("update_webhook", "PATCH", format!("/webhooks/{hook}"), Some(json!({"description": "Dispatch board"}))).await;
    call(
        "rotate_webhook_secret",
        "POST",
        format!("/webhooks/{hook}/rotate-secret"),
        Some(json!({"overlap_seconds": 3600})),
    )
    .await;
    call("list_webhook_deliveries", "GET", format!("/webhooks/{hook}/deliveries?limit=1"), None).await;
    call("replay_webhook", "POST", format!("/webhooks/{hook}/replay"), Some(json!({"since_change_seq": 0}))).await;
    call("delete_webhook", "DELETE", format!("/webhooks/{hook}"), None).await;
    // A secret is shown once, to its subscriber: the docs show where it is, not one.
    for id in ["create_webhook", "rotate_webhook_secret"] {
        examples[id]["response"]["secret"] = json!("whsec_… (shown once)");
    }

    // Every operation of the document has its example, answered with a status it declares.
    let spec: Value = app.get("/api/public/openapi.json").await.json().await.unwrap();
    let mut operations = Vec::new();
    for item in spec["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            let id = operation["operationId"].as_str().unwrap();
            let example = examples.get(id).unwrap_or_else(|| panic!("no example for {id}"));
            let status = example["status"].to_string();
            assert!(operation["responses"].get(&status).is_some(), "{id} answered {status}, undeclared");
            assert!(example["status"].as_u64().unwrap() < 300, "{id}: {example}");
            operations.push(id.to_owned());
        }
    }
    assert_eq!(operations.len(), examples.len(), "an example for an operation the document lacks");

    let recorded = Value::Object(examples);
    if std::env::var("CLIENTAPI_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(EXAMPLES, serde_json::to_string_pretty(&recorded).unwrap() + "\n").unwrap();
        return;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(EXAMPLES).unwrap()).unwrap();
    for (id, example) in recorded.as_object().unwrap() {
        assert_eq!(
            shape(&committed[id]),
            shape(example),
            "openapi/examples.json is stale for {id}: CLIENTAPI_BLESS=1 cargo test docs_examples"
        );
    }
    assert_eq!(committed.as_object().unwrap().len(), recorded.as_object().unwrap().len());
}
