//! OpenAPI 3.1 for the public API, built from the same resource and filter definitions the
//! handlers use, served at `/api/public/openapi.json` with an offline docs page at
//! `/api/public/docs`. The committed copy (`openapi/public.json`) is checked by a test;
//! regenerate it with `clientapi openapi > openapi/public.json`.

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use clientapi_schema::model::Resource;
use clientapi_schema::read::{self, FieldKind};
use clientapi_schema::write::{WriteKind, write_fields};
use serde_json::{Map, Value, json};

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/public/openapi.json", get(|| async { axum::Json(spec()) }))
        .route("/api/public/docs", get(|| async { Html(DOCS_PAGE) }))
}

fn field_type(kind: FieldKind) -> Value {
    match kind {
        FieldKind::Id => json!({"type": "string", "description": "The provider's own id"}),
        FieldKind::Reference(to) => {
            json!({"type": ["string", "null"], "description": format!("A {} id", to.singular())})
        }
        FieldKind::Integer => json!({"type": ["integer", "null"]}),
        FieldKind::Boolean => json!({"type": ["boolean", "null"]}),
        FieldKind::Money | FieldKind::Decimal => {
            json!({"type": ["string", "null"], "format": "decimal", "description": "Decimal, never a float"})
        }
        FieldKind::Date => json!({"type": ["string", "null"], "format": "date"}),
        FieldKind::Timestamp => json!({"type": ["string", "null"], "format": "date-time"}),
        FieldKind::Json => {
            json!({"type": "object", "description": "The provider's raw record (with include=remote_data)"})
        }
        FieldKind::Text => json!({"type": ["string", "null"]}),
    }
}

fn record_schema(resource: Resource) -> Value {
    let mut properties = Map::new();
    for field in read::record_fields(resource, true) {
        properties.insert(field.name.to_owned(), field_type(field.kind));
    }
    json!({"type": "object", "properties": properties, "required": ["id"]})
}

/// The body of a create (`create`) or an update, from the write field table.
fn write_schema(resource: Resource, create: bool, job_statuses: &[&str]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in write_fields(resource).iter().filter(|f| create || !f.create_only) {
        let schema = match f.kind {
            WriteKind::Text { max } => json!({"type": "string", "maxLength": max}),
            WriteKind::Email => json!({"type": "string", "format": "email"}),
            WriteKind::Date => json!({"type": "string", "format": "date"}),
            WriteKind::Decimal => json!({"type": ["string", "number"], "format": "decimal", "minimum": 0}),
            WriteKind::Boolean => json!({"type": "boolean"}),
            WriteKind::Reference(to) => {
                json!({"type": "string", "description": format!("One of your {}", to.plural().replace('_', " "))})
            }
            WriteKind::JobStatus => json!({"type": "string", "enum": job_statuses}),
            WriteKind::Base64 => {
                json!({"type": "string", "contentEncoding": "base64", "description": "At most 10 MiB decoded"})
            }
        };
        properties.insert(f.name.to_owned(), schema);
        if create && f.required {
            required.push(f.name);
        }
    }
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn list_params(resource: Option<Resource>) -> Vec<Value> {
    let applies = |f: fn(Resource) -> bool| resource.is_none_or(f);
    let mut params = vec![
        param(
            "updated_since",
            "Changed at or after (RFC 3339 or YYYY-MM-DD); alias updated_at_from",
            json!({"type": "string"}),
        ),
        param("updated_before", "Changed before", json!({"type": "string"})),
        param("created_since", "Created at or after", json!({"type": "string"})),
        param("ids", "Comma-separated ids (at most 1000)", json!({"type": "string"})),
        param("include_deleted", "Include tombstones", json!({"type": "boolean", "default": false})),
        param(
            "sort",
            "id (default, stable under concurrent syncs), updated_at, created_at, number (jobs, invoices); prefix - for descending",
            json!({"type": "string", "default": "id"}),
        ),
        param(
            "page_size",
            "Records per page",
            json!({"type": "integer", "minimum": 1, "maximum": read::MAX_PAGE_SIZE, "default": read::DEFAULT_PAGE_SIZE}),
        ),
        param("cursor", "Opaque next_cursor of the previous page", json!({"type": "string"})),
        param("include", "remote_data", json!({"type": "string", "enum": ["remote_data"]})),
    ];
    if applies(read::has_status) {
        params.push(param("status", "Comma-separated statuses (jobs, invoices)", json!({"type": "string"})));
    }
    if applies(read::has_client_id) {
        params.push(param("client_id", "The client's id", json!({"type": "string"})));
    }
    if applies(read::has_job_id) {
        params.push(param("job_id", "The job's id", json!({"type": "string"})));
    }
    if applies(read::has_invoice_id) {
        params.push(param("invoice_id", "The invoice's id", json!({"type": "string"})));
    }
    params
}

fn problems() -> Value {
    let problem = json!({"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    json!({
        "400": problem, "401": problem, "403": problem, "404": problem, "422": problem, "429": problem
    })
}

fn with_problems(ok: Value) -> Value {
    let mut responses = problems();
    responses["200"] = ok;
    responses
}

fn write_responses(status: &str, record: &Value) -> Value {
    let problem = json!({"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let mut responses = problems();
    for code in ["405", "409", "502", "503"] {
        responses[code] = problem.clone();
    }
    responses[status] = json!({"description": "The record as mirrored right after the provider accepted the write",
        "content": {"application/json": {"schema": {"type": "object", "properties": {"data": record}}}}});
    responses
}

fn idempotency_header() -> Value {
    json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255},
           "description": "Replays the first answer for 24 hours instead of writing twice; another body with the same key is a 422"})
}

fn endpoint_param() -> Value {
    json!({"name": "endpoint", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Your endpoint id (ep_…)"})
}

/// The whole public API as OpenAPI 3.1.
pub fn spec() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let envelope = |items: Value| {
        json!({"type": "object", "properties": {
            "provider": {"type": "string"}, "company_external_id": {"type": "string"}, "resource": {"type": "string"},
            "count": {"type": "integer"}, "data": {"type": "array", "items": items},
            "next_cursor": {"type": ["string", "null"]}, "synced_at": {"type": ["string", "null"], "format": "date-time"},
            "sync_status": {"type": "string", "enum": ["synced", "syncing", "never_synced"]}
        }})
    };
    for resource in Resource::ALL {
        let name = resource.singular();
        let title = name.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect::<String>();
        schemas.insert(title.clone(), record_schema(resource));
        let reference = json!({"$ref": format!("#/components/schemas/{title}")});
        let mut params = vec![endpoint_param()];
        params.extend(list_params(Some(resource)));
        let writable = !write_fields(resource).is_empty();
        // Job statuses are the provider's; ServiceM8 is the one provider so far.
        let statuses = clientapi_sync::servicem8::JOB_STATUSES;
        let mut list = json!({"get": {
            "operationId": format!("list_{}", resource.plural()), "tags": [resource.plural()],
            "summary": format!("List {} (keyset pages)", resource.plural().replace('_', " ")),
            "parameters": params,
            "responses": with_problems(json!({"description": "A page", "content": {"application/json": {"schema": envelope(reference.clone())}}})),
        }});
        if writable {
            list["post"] = json!({
                "operationId": format!("create_{name}"), "tags": [resource.plural()],
                "summary": format!("Create a {} at the provider (read-write endpoints with {}); answers with it as mirrored", name.replace('_', " "), resource.write_scope()),
                "parameters": [endpoint_param(), idempotency_header()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": write_schema(resource, true, statuses)}}},
                "responses": write_responses("201", &reference),
            });
        }
        paths.insert(format!("/api/public/{{endpoint}}/{}", resource.plural()), list);
        let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
        let mut item = json!({"get": {
            "operationId": format!("get_{name}"), "tags": [resource.plural()],
            "summary": format!("One {}; another company's id answers 404 like a missing one", name.replace('_', " ")),
            "parameters": [endpoint_param(), {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                           param("include", "remote_data", json!({"type": "string", "enum": ["remote_data"]}))],
            "responses": with_problems(json!({"description": "The record", "content": {"application/json": {"schema": {"type": "object", "properties": {"data": reference}}}}})),
        }});
        if writable {
            item["patch"] = json!({
                "operationId": format!("update_{name}"), "tags": [resource.plural()],
                "summary": format!("Change the given fields of a {} at the provider", name.replace('_', " ")),
                "parameters": [endpoint_param(), id_param.clone(), idempotency_header()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": write_schema(resource, false, statuses)}}},
                "responses": write_responses("200", &reference),
            });
            if resource != Resource::Client {
                item["delete"] = json!({
                    "operationId": format!("delete_{name}"), "tags": [resource.plural()],
                    "summary": "Delete at the provider (ServiceM8 soft-deletes); answers with the tombstoned record",
                    "parameters": [endpoint_param(), id_param],
                    "responses": write_responses("200", &reference),
                });
            }
        }
        paths.insert(format!("/api/public/{{endpoint}}/{}/{{id}}", resource.plural()), item);
    }
    paths.insert("/api/public/{endpoint}/graphql".into(), json!({"post": {
        "operationId": "graphql", "tags": ["graphql"],
        "summary": "GraphQL over the same scope (schema: /api/public/graphql/schema.graphql); a list of up to 10 operations is a batch",
        "parameters": [endpoint_param()],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string"}, "variables": {"type": "object"}, "operationName": {"type": "string"}}}}}},
        "responses": with_problems(json!({"description": "data and errors (errors carry extensions.code)", "content": {"application/json": {"schema": {"type": "object"}}}})),
    }}));
    let mut query_params = vec![
        endpoint_param(),
        json!({"name": "resource", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1}, "description": "Singular or plural resource name"}),
    ];
    query_params.extend(list_params(None));
    paths.insert("/api/public/{endpoint}/query/".into(), json!({"get": {
        "operationId": "query", "tags": ["query"], "summary": "The canonical list form: any resource by name",
        "parameters": query_params,
        "responses": with_problems(json!({"description": "A page", "content": {"application/json": {"schema": envelope(json!({"type": "object"}))}}})),
    }}));
    paths.insert("/api/public/{endpoint}/changes".into(), json!({"get": {
        "operationId": "changes", "tags": ["changes"],
        "summary": "Upserts and tombstones in commit order since a cursor: pull everything since last time, nothing missed or repeated",
        "parameters": [endpoint_param(), param("since", "next_cursor of the previous pull (omit to start from the beginning)", json!({"type": "string"})),
                       param("resource", "Comma-separated resources (default: all)", json!({"type": "string"})),
                       param("page_size", "Changes per page", json!({"type": "integer", "minimum": 1, "maximum": read::MAX_PAGE_SIZE, "default": 100}))],
        "responses": with_problems(json!({"description": "Changes", "content": {"application/json": {"schema": {"type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}}, "next_cursor": {"type": "string"}, "has_more": {"type": "boolean"}}}}}})),
    }}));
    let mut export_params = vec![
        endpoint_param(),
        json!({"name": "resource", "in": "query", "required": true, "schema": {"type": "string", "minLength": 1}}),
        param(
            "format",
            "ndjson (default) or csv (with a header row)",
            json!({"type": "string", "enum": ["ndjson", "csv"]}),
        ),
    ];
    export_params.extend(
        list_params(None)
            .into_iter()
            .filter(|p| !matches!(p["name"].as_str(), Some("cursor" | "page_size" | "sort" | "include"))),
    );
    paths.insert("/api/public/{endpoint}/export".into(), json!({"get": {
        "operationId": "export", "tags": ["export"], "summary": "The whole scope, streamed with flat memory",
        "parameters": export_params,
        "responses": with_problems(json!({"description": "A stream", "content": {"application/x-ndjson": {}, "text/csv": {}}})),
    }}));
    // The provider is called: its failure is a 502, its spent budget or 429 a 503 with Retry-After.
    let mut content_responses =
        with_problems(json!({"description": "The bytes", "content": {"application/octet-stream": {}}}));
    for code in ["502", "503"] {
        content_responses[code] = content_responses["404"].clone();
    }
    paths.insert("/api/public/{endpoint}/attachments/{id}/content".into(), json!({"get": {
        "operationId": "get_attachment_content", "tags": ["attachments"], "summary": "The file's bytes, from the provider, after the scope check",
        "parameters": [endpoint_param(), {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": content_responses,
    }}));
    paths.insert("/api/public/{endpoint}/me".into(), json!({"get": {
        "operationId": "me", "tags": ["endpoint"], "summary": "This endpoint: company, access, scopes, rate limit, freshness per resource",
        "parameters": [endpoint_param()],
        "responses": with_problems(json!({"description": "The endpoint", "content": {"application/json": {"schema": {"type": "object"}}}})),
    }}));
    schemas.insert("Problem".into(), json!({"type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
        "instance": {"type": "string", "description": "The request id"}, "code": {"type": "string", "description": "Machine-readable"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}}));
    schemas.insert(
        "Change".into(),
        json!({"type": "object", "properties": {
        "resource": {"type": "string"}, "id": {"type": "string"}, "change_seq": {"type": "integer"},
        "operation": {"type": "string", "enum": ["upsert", "delete"]}, "record": {"type": "object"}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Client API — public API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Your company's records, mirrored from the field-service provider. Every request needs your key as `Authorization: Bearer sk_…` or `X-API-Key`. Errors are application/problem+json with a machine `code`; every response has X-Request-Id and RateLimit headers. A query parameter given with an empty value (`cursor=`) is the same as leaving it out."
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            }
        }
    })
}

/// A self-contained page (no CDN): it reads the spec and lists every route with its parameters.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Client API — public API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#1a1a1a}
h1{font-size:1.6rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
code,pre{font-family:ui-monospace,monospace;background:#f5f5f5;padding:.1rem .3rem;border-radius:3px}
.op{margin:1rem 0;padding:.5rem 1rem;border-left:3px solid #3b6;background:#fafafa}
.m{font-weight:bold;color:#3b6}table{border-collapse:collapse;font-size:13px}td{padding:.15rem .6rem;border-bottom:1px solid #eee}
</style></head><body><h1>Client API — public API</h1><p id="desc"></p>
<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1). GraphQL: the schema is
<a href="graphql/schema.graphql">graphql/schema.graphql</a>, and GraphiQL opens at
<code>/api/public/{endpoint}/graphql</code> in a browser (put your key in its Headers tab).</p><div id="ops">Loading…</div>
<script>
fetch('openapi.json').then(r=>r.json()).then(spec=>{
  document.getElementById('desc').textContent=spec.info.description;
  const out=[];
  for(const [path,item] of Object.entries(spec.paths)){
    for(const [method,op] of Object.entries(item)){
      const rows=(op.parameters||[]).map(p=>`<tr><td><code>${p.name}</code></td><td>${p.in}</td><td>${p.required?'required':''}</td><td>${p.description||''}</td></tr>`).join('');
      out.push(`<div class="op"><span class="m">${method.toUpperCase()}</span> <code>${path}</code><div>${op.summary||''}</div><table>${rows}</table></div>`);
    }
  }
  document.getElementById('ops').innerHTML=out.join('');
});
</script></body></html>"#;
