//! Writes through to the provider (the ServiceM8 simulator): create, update and delete of each
//! writable resource, read back at once; confinement to the endpoint's company; validation;
//! idempotency; a lost provider answer.

use std::time::Duration;

use base64::Engine;
use clientapi_schema::ConnectionId;
use clientapi_sync::simulator::servicem8::{Fault, Running, SimConfig};
use serde_json::{Value, json};

use crate::endpoints::{company, create_endpoint};
use crate::helpers::{TestApp, admin_token, connect_servicem8, spawn_app_with, spawn_sim};

struct Fixture {
    sim: Running,
    app: TestApp,
    token: String,
    conn: ConnectionId,
    ep: String,
    key: String,
    company: String,
}

async fn fixture(extra: &[(&str, &str)]) -> Fixture {
    let sim = spawn_sim(SimConfig { companies: 4, jobs_per_company: 6, ..SimConfig::default() }).await;
    let mut settings = vec![
        ("CLIENTAPI_SERVICEM8_API_URL", sim.api_url()),
        ("CLIENTAPI_SERVICEM8_OAUTH_URL", sim.oauth_url()),
        ("CLIENTAPI_SERVICEM8_CLIENT_ID", "sim-client".to_owned()),
        ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", "sim-secret".to_owned()),
    ];
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app_with(&pairs).await;
    let token = admin_token(&app, "ops@example.com", "acme").await;
    let conn = ConnectionId(connect_servicem8(&app, &token).await["id"].as_i64().unwrap());
    app.state.engine.sync_connection(conn, false, None).await.unwrap();
    let company = company(&sim, 0);
    let (ep, key) = create_endpoint(&app, &token, conn, &company, json!({"access": "read_write"})).await;
    Fixture { sim, app, token, conn, ep, key, company }
}

impl Fixture {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send_as(&self.ep, &self.key, method, path, body, None).await
    }

    async fn send_as(
        &self,
        ep: &str,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        let mut request =
            self.app.client.request(method, self.app.url(&format!("/api/public/{ep}{path}"))).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(k) = idempotency_key {
            request = request.header("idempotency-key", k);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// An attachment's bytes, as the endpoint downloads them.
    async fn download(&self, attachment: &str) -> reqwest::Response {
        let url = self.app.url(&format!("/api/public/{}/attachments/{attachment}/content", self.ep));
        self.app.client.get(url).bearer_auth(&self.key).send().await.unwrap()
    }

    /// A job of another company.
    fn foreign_job(&self) -> String {
        let other = company(&self.sim, 1);
        let jobs = self.sim.sim.records("job");
        jobs.iter().find(|j| j["company_uuid"] == other.as_str()).unwrap()["uuid"].as_str().unwrap().to_owned()
    }
}

fn fields(errors: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        errors["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn each_writable_resource_is_created_updated_and_deleted_and_read_back_at_once() {
    let f = fixture(&[]).await;

    // Jobs.
    let (status, created) = f.post("/jobs", json!({"status": "Quote", "description": "Fix tap"})).await;
    assert_eq!(status, 201, "{created}");
    let job = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["status"], "Quote");
    assert_eq!(created["data"]["client_id"], f.company.as_str(), "placed under the endpoint's company");
    assert!(created["data"]["number"].as_i64().is_some(), "the provider's number is read back");
    assert_eq!(f.sim.sim.record("job", &job).unwrap()["job_description"], "Fix tap");
    let (status, read) = f.get(&format!("/jobs/{job}")).await;
    assert_eq!((status, &read["data"]), (200, &created["data"]));
    let (status, updated) =
        f.patch(&format!("/jobs/{job}"), json!({"description": "Fix two taps", "scheduled_on": "2026-12-01"})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"]["description"], "Fix two taps");
    assert_eq!(f.get(&format!("/jobs/{job}")).await.1["data"]["scheduled_on"], "2026-12-01");

    // Line items, and the job total the provider recomputes.
    let (status, item) =
        f.post("/line_items", json!({"job_id": job, "name": "Washer", "quantity": 2, "unit_price": "10.50"})).await;
    assert_eq!(status, 201, "{item}");
    let item = item["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(f.get(&format!("/jobs/{job}")).await.1["data"]["total"], "21.00");
    let (status, _) = f.patch(&format!("/line_items/{item}"), json!({"quantity": "3"})).await;
    assert_eq!(status, 200);
    assert_eq!(f.get(&format!("/jobs/{job}")).await.1["data"]["total"], "31.50");
    let (status, gone) = f.delete(&format!("/line_items/{item}")).await;
    assert_eq!(status, 200);
    assert!(gone["data"]["deleted_at"].is_string(), "{gone}");
    assert_eq!(f.get(&format!("/line_items?job_id={job}")).await.1["count"], 0);
    assert_eq!(f.get(&format!("/jobs/{job}")).await.1["data"]["total"], "0.00");

    // Contacts.
    let (status, contact) = f.post("/contacts", json!({"first_name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!(status, 201, "{contact}");
    let contact_id = contact["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(contact["data"]["client_id"], f.company.as_str());
    let (_, contact) =
        f.patch(&format!("/contacts/{contact_id}"), json!({"is_primary": true, "mobile": "0400 000 000"})).await;
    assert_eq!(
        (contact["data"]["is_primary"].clone(), contact["data"]["mobile"].clone()),
        (json!(true), json!("0400 000 000"))
    );
    assert_eq!(f.delete(&format!("/contacts/{contact_id}")).await.0, 200);

    // The company's own client record, and a site under it.
    let (status, client) = f.patch(&format!("/clients/{}", f.company), json!({"website": "https://example.com"})).await;
    assert_eq!(status, 200, "{client}");
    assert_eq!(client["data"]["website"], "https://example.com");
    let (status, site) = f.post("/clients", json!({"name": "Site B", "address": "1 Side St"})).await;
    assert_eq!(status, 201, "{site}");
    assert_eq!(site["data"]["parent_id"], f.company.as_str());
    // A contact or a job at that site is the company's too: in scope and readable at once, as
    // a site with its head office.
    let site_id = site["data"]["id"].as_str().unwrap().to_owned();
    for (path, body) in [
        ("/contacts", json!({"client_id": site_id, "first_name": "On", "last_name": "Site"})),
        ("/jobs", json!({"client_id": site_id, "status": "Quote"})),
    ] {
        let (status, written) = f.post(path, body).await;
        assert_eq!(status, 201, "{path}: {written}");
        assert_eq!(written["data"]["client_id"], json!(site_id));
        let (status, read) = f.get(&format!("{path}/{}", written["data"]["id"].as_str().unwrap())).await;
        assert_eq!(status, 200, "{read}");
    }
    let (status, listed) = f.get(&format!("/sites/{site_id}")).await;
    assert_eq!((status, &listed["data"]["client_id"]), (200, &json!(f.company)), "{listed}");
    let (status, refused) = f.delete(&format!("/clients/{}", f.company)).await;
    assert_eq!((status, refused["code"].as_str()), (405, Some("method_not_allowed")), "clients are never deleted here");

    // Attachments: the bytes reach the provider and come back through the content route.
    let text = b"hello from the portal\n";
    let (status, file) = f
        .post(
            "/attachments",
            json!({"job_id": job, "name": "note.txt", "content_type": "text/plain",
                   "content_base64": base64::engine::general_purpose::STANDARD.encode(text)}),
        )
        .await;
    assert_eq!(status, 201, "{file}");
    let file = file["data"]["id"].as_str().unwrap().to_owned();
    let response = f.download(&file).await;
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.bytes().await.unwrap().as_ref(), text);
    // Read-only resources answer writes 405, naming what is allowed.
    for (method, path) in [(reqwest::Method::POST, "payments"), (reqwest::Method::PATCH, "invoices/x1")] {
        let response = f
            .app
            .client
            .request(method, f.app.url(&format!("/api/public/{}/{path}", f.ep)))
            .bearer_auth(&f.key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "GET,HEAD", "{path}");
    }
    // The provider rate-limiting the download is the same 503 with Retry-After as for a write.
    // (Aimed at the download's own path: a webhook fetch in the background must not take it.)
    f.sim.sim.schedule_fault_at(
        &format!("GET attachment/{file}.file"),
        clientapi_sync::simulator::servicem8::Fault::TooManyRequests { retry_after_secs: Some(7), text_body: false },
    );
    let limited = f.download(&file).await;
    assert_eq!(limited.status(), 503);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(
        f.patch(&format!("/attachments/{file}"), json!({"name": "notes.txt"})).await.1["data"]["name"],
        "notes.txt"
    );
    assert_eq!(f.delete(&format!("/attachments/{file}")).await.0, 200);

    // Deleting the job soft-deletes it at the provider and tombstones it here.
    let (status, gone) = f.delete(&format!("/jobs/{job}")).await;
    assert_eq!(status, 200);
    assert!(gone["data"]["deleted_at"].is_string());
    assert_eq!(f.sim.sim.record("job", &job).unwrap()["active"], 0);
    assert_eq!(f.get(&format!("/jobs?ids={job}")).await.1["count"], 0);

    // Every write is in the request log with its outcome.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logged: Vec<(String, i16)> = sqlx::query_as(
        "select method, status from request_logs where method in ('POST', 'PATCH', 'DELETE') order by created_at",
    )
    .fetch_all(&f.app.db)
    .await
    .unwrap();
    assert_eq!(logged.len(), 19, "{logged:?}");
    assert_eq!(logged.iter().filter(|l| l.1 == 422).count(), 0, "the writes at a site are in scope");
    assert_eq!(
        logged.iter().filter(|l| l.1 == 405).count(),
        3,
        "the two writes to read-only resources and the client's delete"
    );
}

#[tokio::test]
async fn writes_stay_inside_the_endpoints_company_and_bad_input_never_reaches_the_provider() {
    let f = fixture(&[]).await;
    let creates_before = f.sim.sim.stats().creates;
    let foreign_job = f.foreign_job();
    let foreign_client = company(&f.sim, 1);

    // Another company's records answer exactly like missing ones: a 404 as the target of a
    // write, a 422 naming the field when a body points at one.
    for (method, path, body) in [
        (reqwest::Method::PATCH, format!("/jobs/{foreign_job}"), Some(json!({"description": "x"}))),
        (reqwest::Method::DELETE, format!("/jobs/{foreign_job}"), None),
        (reqwest::Method::PATCH, "/jobs/no-such-job".to_owned(), Some(json!({"description": "x"}))),
        (reqwest::Method::PATCH, format!("/clients/{foreign_client}"), Some(json!({"website": "https://evil"}))),
    ] {
        let (status, body) = f.send(method.clone(), &path, body).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{method} {path}: {body}");
    }
    for (path, body, field, missing) in [
        ("/line_items", json!({"job_id": foreign_job, "name": "x", "quantity": 1}), "job_id", "no-such-job"),
        ("/contacts", json!({"client_id": foreign_client, "first_name": "Eve"}), "client_id", "no-such-client"),
        ("/jobs", json!({"status": "Quote", "client_id": foreign_client}), "client_id", "no-such-client"),
    ] {
        let (status, foreign) = f.post(path, body.clone()).await;
        assert_eq!((status, foreign["errors"][0]["field"].as_str()), (422, Some(field)), "{path}: {foreign}");
        let mut body = body;
        body[field] = json!(missing);
        let (status, absent) = f.post(path, body).await;
        assert_eq!(status, 422, "{path}: {absent}");
        assert_eq!(foreign["errors"], absent["errors"], "another company's {field} reads like a missing one");
    }
    assert_ne!(f.sim.sim.record("job", &foreign_job).unwrap()["job_description"], "x");

    // Read-only endpoints and missing scopes are refused, naming why.
    let (ro, ro_key) = create_endpoint(&f.app, &f.token, f.conn, &f.company, json!({})).await;
    let (status, body) =
        f.send_as(&ro, &ro_key, reqwest::Method::POST, "/jobs", Some(json!({"status": "Quote"})), None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("read_only_endpoint")));
    let (scoped, scoped_key) = create_endpoint(
        &f.app,
        &f.token,
        f.conn,
        &f.company,
        json!({"access": "read_write", "scopes": ["jobs:read", "contacts:write"]}),
    )
    .await;
    let (status, body) =
        f.send_as(&scoped, &scoped_key, reqwest::Method::POST, "/jobs", Some(json!({"status": "Quote"})), None).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("missing_scope")));
    assert!(body["detail"].as_str().unwrap().contains("jobs:write"));
    let (status, _) = f.post("/invoices", json!({"number": 1})).await;
    assert_eq!(status, 405, "invoices are not writable");

    // The validation corpus: every bad field named in one 422.
    let corpus = [
        ("/jobs", json!({}), vec!["status"]),
        ("/jobs", json!({"status": "Done"}), vec!["status"]),
        (
            "/jobs",
            json!({"status": "Quote", "id": "x", "number": 9, "total": "1.00", "company_id": 3}),
            vec!["company_id", "id", "number", "total"],
        ),
        (
            "/jobs",
            json!({"status": "Quote", "scheduled_on": "31/12/2026", "description": 12, "colour": "red"}),
            vec!["colour", "description", "scheduled_on"],
        ),
        ("/jobs", json!({"status": "Quote", "purchase_order": "x".repeat(101)}), vec!["purchase_order"]),
        (
            "/line_items",
            json!({"name": "", "quantity": "-2", "unit_price": "abc"}),
            vec!["job_id", "name", "quantity", "unit_price"],
        ),
        ("/contacts", json!({"email": "nobody", "is_primary": "yes"}), vec!["email", "first_name", "is_primary"]),
        ("/attachments", json!({"job_id": "j", "name": "a.txt", "content_base64": "***"}), vec!["content_base64"]),
        ("/clients", json!({"name": null}), vec!["name"]),
    ];
    for (path, body, expected) in corpus {
        let (status, answer) = f.post(path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert_eq!(fields(&answer), expected, "{path} {body}");
    }
    let (status, answer) = f.send(reqwest::Method::POST, "/jobs", Some(json!(["not", "an", "object"]))).await;
    assert_eq!((status, fields(&answer)), (422, vec!["body".to_owned()]));
    let (status, answer) = f
        .patch(
            &format!(
                "/jobs/{}",
                f.sim.sim.records("job").iter().find(|j| j["company_uuid"] == f.company.as_str()).unwrap()["uuid"]
                    .as_str()
                    .unwrap()
            ),
            json!({"job_id": "x"}),
        )
        .await;
    assert_eq!((status, fields(&answer)), (422, vec!["job_id".to_owned()]));
    assert_eq!(f.sim.sim.stats().creates, creates_before, "nothing refused reached the provider");

    // A create the provider places in another company anyway is undone, and the answer says so.
    f.sim.sim.misplace_next_create(&foreign_client);
    let jobs_before = f.sim.sim.records("job").len();
    let (status, undone) = f.post("/jobs", json!({"status": "Quote", "description": "misplaced"})).await;
    assert_eq!((status, undone["code"].as_str()), (502, Some("provider_error")), "{undone}");
    assert!(undone["detail"].as_str().unwrap().contains("deleted again; nothing was created"), "{undone}");
    let misplaced: Vec<_> =
        f.sim.sim.records("job").into_iter().filter(|j| j["job_description"] == "misplaced").collect();
    assert_eq!((misplaced.len(), f.sim.sim.records("job").len()), (1, jobs_before + 1));
    assert_eq!(misplaced[0]["active"], 0, "deleted again at the provider: {:?}", misplaced[0]);
    assert_eq!(
        f.get("/jobs?page_size=1000").await.1["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["description"] == "misplaced")
            .count(),
        0
    );
}

#[tokio::test]
async fn one_idempotency_key_sent_ten_times_at_once_creates_one_record() {
    let f = fixture(&[]).await;
    let creates_before = f.sim.sim.stats().creates;
    let body = json!({"status": "Work Order", "description": "Booked online"});
    let attempts = (0..10)
        .map(|_| f.send_as(&f.ep, &f.key, reqwest::Method::POST, "/jobs", Some(body.clone()), Some("booking-42")));
    let answers = futures::future::join_all(attempts).await;
    let created: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 201).map(|(_, b)| b).collect();
    assert!(!created.is_empty(), "{answers:?}");
    assert!(answers.iter().all(|(s, _)| *s == 201 || *s == 409), "{answers:?}");
    assert_eq!(f.sim.sim.stats().creates, creates_before + 1, "exactly one create at the provider");
    let id = created[0]["data"]["id"].clone();
    assert!(created.iter().all(|b| b["data"]["id"] == id));

    // Later: the same key and body replays; another body is refused.
    let (status, replay) =
        f.send_as(&f.ep, &f.key, reqwest::Method::POST, "/jobs", Some(body.clone()), Some("booking-42")).await;
    assert_eq!((status, &replay["data"]["id"]), (201, &id));
    let (status, reused) = f
        .send_as(&f.ep, &f.key, reqwest::Method::POST, "/jobs", Some(json!({"status": "Quote"})), Some("booking-42"))
        .await;
    assert_eq!((status, fields(&reused)), (422, vec!["Idempotency-Key".to_owned()]));
    assert_eq!(f.sim.sim.stats().creates, creates_before + 1);
    let description = "Booked online";
    let at_provider = f.sim.sim.records("job").iter().filter(|j| j["job_description"] == description).count();
    assert_eq!(at_provider, 1);
}

#[tokio::test]
async fn a_lost_provider_answer_is_looked_up_and_creates_no_duplicate() {
    let f = fixture(&[("CLIENTAPI_PROVIDER_TIMEOUT_SECS", "1")]).await;
    let creates_before = f.sim.sim.stats().creates;
    // The create is applied at the provider, but its answer arrives too late.
    f.sim.sim.schedule_fault_at("POST job.json", Fault::LoseResponse(Duration::from_secs(3)));
    let (status, created) = f.post("/jobs", json!({"status": "Quote", "description": "Lost in transit"})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(f.sim.sim.stats().creates, creates_before + 1, "no second create");
    let at_provider: Vec<Value> =
        f.sim.sim.records("job").into_iter().filter(|j| j["job_description"] == "Lost in transit").collect();
    assert_eq!(at_provider.len(), 1);
    assert_eq!(at_provider[0]["uuid"], created["data"]["id"]);
    // And it is in the mirror.
    assert_eq!(f.get(&format!("/jobs/{}", created["data"]["id"].as_str().unwrap())).await.0, 200);
}

#[tokio::test]
async fn graphql_mutations_share_the_rest_write_path() {
    let f = fixture(&[]).await;
    let gql = |ep: String, key: String, query: String, variables: Value| {
        let app = &f.app;
        async move {
            let response = app
                .client
                .post(app.url(&format!("/api/public/{ep}/graphql")))
                .bearer_auth(key)
                .json(&json!({"query": query, "variables": variables}))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    let run = |query: &str, variables: Value| gql(f.ep.clone(), f.key.clone(), query.to_owned(), variables);

    let created = run(
        "mutation($in: JobCreateInput!) { createJob(input: $in) { id status description clientId total { amount } } }",
        json!({"in": {"status": "Work Order", "description": "Via GraphQL"}}),
    )
    .await;
    assert!(created.get("errors").is_none(), "{created}");
    let job = created["data"]["createJob"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["createJob"]["clientId"], f.company.as_str());
    assert_eq!(f.get(&format!("/jobs/{job}")).await.1["data"]["description"], "Via GraphQL", "REST sees it at once");

    let item = run(
        "mutation($in: LineItemCreateInput!) { createLineItem(input: $in) { id job { id total { amount } } } }",
        json!({"in": {"jobId": job, "name": "Pipe", "quantity": "4", "unitPrice": "2.25"}}),
    )
    .await;
    assert!(item.get("errors").is_none(), "{item}");
    assert_eq!(item["data"]["createLineItem"]["job"]["total"]["amount"], "9.00", "the recomputed total is read back");
    let item_id = item["data"]["createLineItem"]["id"].as_str().unwrap().to_owned();

    let updated = run(
        "mutation($id: ID!) { updateJob(id: $id, input: {purchaseOrder: \"PO-7\", scheduledOn: \"2026-12-24\"}) { purchaseOrder scheduledOn } }",
        json!({"id": job}),
    )
    .await;
    assert_eq!(
        updated["data"]["updateJob"],
        json!({"purchaseOrder": "PO-7", "scheduledOn": "2026-12-24"}),
        "{updated}"
    );
    let read = run("query($id: ID!) { job(id: $id) { purchaseOrder lineItems { id } } }", json!({"id": job})).await;
    assert_eq!(read["data"]["job"]["purchaseOrder"], "PO-7");
    assert_eq!(read["data"]["job"]["lineItems"], json!([{"id": item_id}]));

    let contact = run(
        "mutation { createContact(input: {firstName: \"Grace\", email: \"grace@example.com\", isPrimary: false}) { id firstName } }",
        json!({}),
    )
    .await;
    assert_eq!(contact["data"]["createContact"]["firstName"], "Grace", "{contact}");
    let client = run(
        "mutation($id: ID!) { updateClient(id: $id, input: {billingAddress: \"PO Box 1\"}) { billingAddress } }",
        json!({"id": f.company}),
    )
    .await;
    assert_eq!(client["data"]["updateClient"]["billingAddress"], "PO Box 1", "{client}");
    let file = run(
        "mutation($in: AttachmentCreateInput!) { createAttachment(input: $in) { id name jobId } }",
        json!({"in": {"jobId": job, "name": "plan.pdf", "contentBase64": "JVBERi0xLjQK"}}),
    )
    .await;
    assert_eq!(file["data"]["createAttachment"]["name"], "plan.pdf", "{file}");

    let deleted = run("mutation($id: ID!) { deleteLineItem(id: $id) { id deletedAt } }", json!({"id": item_id})).await;
    assert!(deleted["data"]["deleteLineItem"]["deletedAt"].is_string(), "{deleted}");
    let deleted = run("mutation($id: ID!) { deleteJob(id: $id) { deletedAt } }", json!({"id": job})).await;
    assert!(deleted["data"]["deleteJob"]["deletedAt"].is_string(), "{deleted}");

    // Refusals carry REST's codes, and every bad field.
    let bad =
        run("mutation { createJob(input: {status: \"Done\", scheduledOn: \"tomorrow\"}) { id } }", json!({})).await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "invalid_input", "{bad}");
    let mut named: Vec<&str> = bad["errors"][0]["extensions"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, ["scheduledOn", "status"]);
    let foreign = run(
        "mutation($id: ID!) { updateJob(id: $id, input: {description: \"mine now\"}) { id } }",
        json!({"id": f.foreign_job()}),
    )
    .await;
    assert_eq!(foreign["errors"][0]["extensions"]["code"], "not_found", "{foreign}");
    let (ro, ro_key) = create_endpoint(&f.app, &f.token, f.conn, &f.company, json!({})).await;
    let refused = gql(ro, ro_key, "mutation { createJob(input: {status: \"Quote\"}) { id } }".into(), json!({})).await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "read_only_endpoint", "{refused}");
}
