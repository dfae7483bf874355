use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_the_database_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["database"], "ok");
}

#[tokio::test]
async fn readyz_answers_503_problem_json_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.db.close().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
}

#[tokio::test]
async fn metrics_are_prometheus_text_counting_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total") && l.contains("route=\"/healthz\"") && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no /healthz counter in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0);
    assert!(text.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn every_response_carries_a_request_id_echoing_a_sane_one() {
    let app = spawn_app().await;

    let generated = app.get("/healthz").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "generated id {id:?} is not a UUID");

    let echoed = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123_X.y").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123_X.y");

    for hostile in ["a b", "<script>", &"x".repeat(200)] {
        let replaced = app.client.get(app.url("/healthz")).header("x-request-id", hostile).send().await.unwrap();
        let id = replaced.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, hostile);
        assert!(uuid::Uuid::parse_str(id).is_ok());
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json_with_the_request_id_as_instance() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/no/such/thing")).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["instance"], "req-42");
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["status"], 404);
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }

    let response = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("GET,HEAD"),
        "405 names what is allowed"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/api/public/ep_x/me", "GET,HEAD"),
        (reqwest::Method::PUT, "/api/public/ep_x/jobs", "GET,HEAD,POST"),
        (reqwest::Method::PUT, "/api/public/ep_x/jobs/j1", "GET,HEAD,PATCH,DELETE"),
        (reqwest::Method::PUT, "/api/public/ep_x/query/", "GET,HEAD"),
        (reqwest::Method::PUT, "/api/public/ep_x/changes", "GET,HEAD"),
        (reqwest::Method::PUT, "/api/public/ep_x/export", "GET,HEAD"),
        (reqwest::Method::PUT, "/api/public/ep_x/graphql", "GET,HEAD,POST"),
        (reqwest::Method::PUT, "/api/public/ep_x/attachments/a1/content", "GET,HEAD"),
        (reqwest::Method::PUT, "/api/public/openapi.json", "GET,HEAD"),
    ] {
        let response = app.client.request(method, app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allowed), "{path}");
    }
}

/// A client that sends its headers and then its body (Python's http.client does, for text
/// bodies) and reuses the connection: an answer given before the body arrived must not
/// leave the connection closing under the next request.
#[tokio::test]
async fn an_answer_given_before_the_body_arrives_keeps_the_connection_for_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let body = r#"{"name": "late"}"#;
    for (method, path) in [("PUT", "/api/public/ep_x/jobs/j1"), ("OPTIONS", "/healthz"), ("POST", "/no/such/thing")] {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        socket.write_all(body.as_bytes()).await.unwrap();
        let answer = read_answer(&mut socket).await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{method} {path} answered: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"), "{method} {path} kept alive: {answer}");
    }
    // The same connection still answers.
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut socket).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "the reused connection answered: {answer}");

    /// One whole answer (headers and a Content-Length body), or what arrived before the close.
    async fn read_answer(socket: &mut tokio::net::TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if rest.len() >= length {
                    return text;
                }
            }
            let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            if read == 0 {
                return format!("{text}<closed>");
            }
            seen.extend_from_slice(&buf[..read]);
        }
    }
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one_and_the_docs_page_is_offline() {
    let app = spawn_app().await;
    let served: serde_json::Value = app.get("/api/public/openapi.json").await.json().await.unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/public.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served == committed,
        "openapi/public.json is stale: regenerate it with `cargo run -- openapi > openapi/public.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/api/public/{endpoint}/jobs",
        "/api/public/{endpoint}/changes",
        "/api/public/{endpoint}/export",
        "/api/public/{endpoint}/query/",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} undocumented");
    }
    let page = app.get("/api/public/docs").await.text().await.unwrap();
    assert!(
        page.contains("openapi.json") && !page.contains("src=") && !page.contains("<script"),
        "the docs page must not load anything from the network"
    );
}
