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
        .route("/api/public/docs", get(|| async { Html(super::docs::page()) }))
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
        let schema = match (field.kind, field.name) {
            (FieldKind::Json, "custom_fields") => json!({"type": "object",
                "description": "Custom field values by name (their definitions: GET /custom_fields)"}),
            (FieldKind::Json, "technician") => json!({"type": ["object", "null"],
                "properties": {"id": {"type": "string"}, "name": {"type": ["string", "null"]},
                               "email": {"type": ["string", "null"]}, "phone": {"type": ["string", "null"]}},
                "description": "The technician assigned; null unless the key holds technicians:read"}),
            (FieldKind::Json, "choices") => json!({"type": ["array", "null"], "items": {"type": "string"},
                "description": "The values a choice field allows; null for other types"}),
            (kind, _) => field_type(kind),
        };
        properties.insert(field.name.to_owned(), schema);
    }
    json!({"type": "object", "properties": properties, "required": ["id"]})
}

/// The body of a create (`create`) or an update, from the write field table.
/// A calendar date's shape (the server also refuses dates that do not exist, like 2026-02-30,
/// which the `date` format already excludes).
const DATE_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

/// The control characters no text may hold (text fields of a body may hold line breaks and tabs).
const CONTROLS: &str = "\\u0000-\\u001f\\u007f-\\u009f";
const TEXT_CONTROLS: &str = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f";

/// A string of 1 to `max` characters, none of them a control character.
fn plain_text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": format!("^[^{CONTROLS}]+$")})
}

/// An id as the provider writes it (a reference, a filter).
fn id_text() -> Value {
    plain_text(200)
}

/// `a,b,c` as an array serialized the way the server reads it.
fn comma_list(items: Value, max: usize) -> Value {
    json!({"type": "array", "items": items, "minItems": 1, "maxItems": max})
}

/// A list item: not blank, no comma.
fn list_item() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 200, "pattern": format!("^[^,{CONTROLS}]*[^,\\s{CONTROLS}][^,{CONTROLS}]*$")})
}

fn nullable(mut schema: Value) -> Value {
    schema["type"] = json!([schema["type"].clone(), "null"]);
    schema
}

/// The body of a create (`create`) or an update, from the write field table: exactly what
/// `clientapi_schema::write::validate` accepts.
fn write_schema(resource: Resource, create: bool, job_statuses: &[&str]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in write_fields(resource).iter().filter(|f| create || !f.create_only) {
        let schema = match f.kind {
            WriteKind::Text { max } if f.required => json!({"type": "string", "maxLength": max,
                "pattern": format!("^[^{TEXT_CONTROLS}]*[^\\s{TEXT_CONTROLS}][^{TEXT_CONTROLS}]*$"),
                "description": "Not blank; line breaks and tabs are the only control characters allowed"}),
            WriteKind::Text { max } => {
                json!({"type": "string", "maxLength": max, "pattern": format!("^[^{TEXT_CONTROLS}]*$"),
                "description": "Line breaks and tabs are the only control characters allowed"})
            }
            WriteKind::Email => {
                json!({"type": "string", "maxLength": 254, "pattern": "^[^@\\s,;]+@[^.\\s,;][^\\s,;]*\\.[^\\s,;]*[^.\\s,;]$",
                "description": "An email address"})
            }
            WriteKind::Date => json!({"type": "string", "format": "date", "pattern": DATE_PATTERN}),
            WriteKind::Decimal => json!({"anyOf": [
                {"type": "string", "pattern": clientapi_schema::write::DECIMAL_PATTERN},
                {"type": "integer", "minimum": 0, "exclusiveMaximum": clientapi_schema::write::DECIMAL_LIMIT}],
                "description": "A decimal string (up to 4 places), or a whole number: never a fractional JSON number, which cannot carry money exactly"}),
            WriteKind::Boolean => json!({"type": "boolean"}),
            WriteKind::MediaType => json!({"type": "string", "pattern": clientapi_schema::write::MEDIA_TYPE_PATTERN,
                "description": "The file's media type, such as application/pdf (default application/octet-stream)"}),
            WriteKind::Reference(to) => {
                let mut id = id_text();
                id["description"] = json!(format!(
                    "One of your {}: another company's is refused with a 422 naming this field, before the provider is called",
                    to.plural().replace('_', " ")
                ));
                id
            }
            WriteKind::JobStatus => json!({"type": "string", "enum": job_statuses}),
            WriteKind::Timestamp => json!({"type": "string", "format": "date-time",
                "description": "RFC 3339; a window's end must be after its start"}),
            WriteKind::CustomFields => {
                json!({"type": "object", "maxProperties": clientapi_schema::write::MAX_CUSTOM_FIELDS,
                "additionalProperties": {"type": ["string", "number", "null"]},
                "description": "Custom field values by name, each checked against its definition (GET /custom_fields): an unknown name or a value of the wrong type is a 422 naming custom_fields.<name>; null clears"})
            }
            WriteKind::Base64 => json!({"type": "string", "contentEncoding": "base64",
                "maxLength": clientapi_schema::write::MAX_UPLOAD_BYTES.div_ceil(3) * 4,
                "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
                "description": "Standard base64 with padding, at most 10 MiB decoded"}),
        };
        let never_null = f.required || matches!(f.kind, WriteKind::Reference(_));
        let schema = if never_null || schema.get("anyOf").is_some() { schema } else { nullable(schema) };
        properties.insert(f.name.to_owned(), schema);
        if create && f.required {
            required.push(f.name);
        }
    }
    let mut body = json!({"type": "object", "properties": properties, "additionalProperties": false});
    if create {
        body["required"] = json!(required);
        if resource == Resource::Contact {
            // Said, not encoded: an anyOf here would split generated clients' one body model in three.
            body["description"] = json!("A contact needs a first name, a last name or an email (a 422 otherwise).");
        }
    } else {
        body["minProperties"] = json!(1);
    }
    body
}

fn param(name: &str, description: &str, schema: Value) -> Value {
    let mut param =
        json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});
    if schema_is_array(&param["schema"]) {
        param["style"] = json!("form");
        param["explode"] = json!(false);
    }
    param
}

fn schema_is_array(schema: &Value) -> bool {
    schema["type"] == "array"
}

fn timestamp() -> Value {
    json!({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date", "pattern": DATE_PATTERN}]})
}

fn resource_names() -> Vec<&'static str> {
    Resource::ALL.iter().flat_map(|r| [r.singular(), r.plural()]).collect()
}

fn sort_values(number: bool) -> Vec<String> {
    let mut keys = vec!["id", "updated_at", "created_at"];
    if number {
        keys.push("number");
    }
    keys.iter().flat_map(|k| [k.to_string(), format!("-{k}")]).collect()
}

fn list_params(resource: Option<Resource>) -> Vec<Value> {
    let applies = |f: fn(Resource) -> bool| resource.is_none_or(f);
    let only = |what: &str| if resource.is_none() { format!(" ({what} only)") } else { String::new() };
    let mut params = vec![
        param("updated_since", "Changed at or after (RFC 3339 or YYYY-MM-DD)", timestamp()),
        param("updated_at_from", "An alias of updated_since (give one of them)", timestamp()),
        param("updated_before", "Changed before", timestamp()),
        param("created_since", "Created at or after", timestamp()),
        param("ids", "Comma-separated ids", comma_list(list_item(), super::rest::MAX_IDS)),
        param("include_deleted", "Include tombstones", json!({"type": "boolean", "default": false})),
        param(
            "sort",
            &format!(
                "id (the default, stable under concurrent syncs), updated_at, created_at{}; prefix - for descending",
                if applies(read::has_number) { format!(", number{}", only("jobs, invoices")) } else { String::new() }
            ),
            json!({"type": "string", "enum": sort_values(applies(read::has_number)), "default": "id"}),
        ),
        param(
            "page_size",
            "Records per page",
            json!({"type": "integer", "minimum": 1, "maximum": read::MAX_PAGE_SIZE, "default": read::DEFAULT_PAGE_SIZE}),
        ),
        param(
            "cursor",
            "The next_cursor of the previous page, with the same filters and sort; any other is a 400 invalid_cursor",
            plain_text(4096),
        ),
        param("include", "remote_data", json!({"type": "string", "enum": ["remote_data"]})),
    ];
    if applies(read::has_status) {
        params.push(param(
            "status",
            &format!("Comma-separated statuses{}", only("jobs, invoices")),
            comma_list(list_item(), super::rest::MAX_STATUSES),
        ));
    }
    if applies(read::has_client_id) {
        params.push(param("client_id", &format!("The client's id{}", only("contacts, jobs, invoices")), id_text()));
    }
    if applies(read::has_job_id) {
        params.push(param(
            "job_id",
            &format!("The job's id{}", only("invoices, line items, payments, attachments")),
            id_text(),
        ));
    }
    if applies(read::has_invoice_id) {
        params.push(param("invoice_id", &format!("The invoice's id{}", only("line items, payments")), id_text()));
    }
    params
}

fn problems() -> Value {
    let problem = json!({"description": "Problem", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    json!({
        "400": problem, "401": problem, "403": problem, "404": problem, "422": problem, "429": problem,
        "503": problem,
        "414": {"description": "The URL is longer than 65,534 bytes: refused by the HTTP layer before the service reads it, without a body"}
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
    json!({"name": "Idempotency-Key", "in": "header", "required": false,
           "schema": {"type": "string", "minLength": 1, "maxLength": crate::idempotency::MAX_KEY_LEN, "pattern": "^[!-~]+$"},
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
        let id_param = json!({"name": "id", "in": "path", "required": true, "schema": id_text()});
        let mut item = json!({"get": {
            "operationId": format!("get_{name}"), "tags": [resource.plural()],
            "summary": format!("One {}; another company's id answers 404 like a missing one", name.replace('_', " ")),
            "parameters": [endpoint_param(), {"name": "id", "in": "path", "required": true, "schema": id_text()},
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
            if resource.is_deletable() {
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
    // Without `query` a request is answered 200 with a GraphQL error, as GraphQL over HTTP asks.
    let graphql_request = json!({"type": "object", "properties": {
        "query": {"type": "string"}, "variables": {"type": ["object", "null"]}, "operationName": {"type": ["string", "null"]},
        "extensions": {"type": ["object", "null"]}}});
    let html = |what: &str| json!({"description": what, "content": {"text/html": {"schema": {"type": "string"}}}});
    paths.insert("/api/public/{endpoint}/graphql".into(), json!({
        "get": {
            "operationId": "graphiql", "tags": ["graphql"],
            "summary": "GraphiQL in a browser, served by this service (no CDN); put your key in its Headers tab",
            "security": [],
            "parameters": [endpoint_param()],
            "responses": {"200": html("The GraphiQL page"), "503": html("This build was made without GraphiQL's assets")},
        },
        "post": {
            "operationId": "graphql", "tags": ["graphql"],
            "summary": "GraphQL over the same scope (schema: /api/public/graphql/schema.graphql); a list of up to 10 operations is a batch",
            "parameters": [endpoint_param()],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
                graphql_request.clone(),
                {"type": "array", "items": graphql_request, "minItems": 1, "maxItems": super::graphql::MAX_BATCH}]}}}},
            "responses": with_problems(json!({"description": "data and errors (errors carry extensions.code); a list for a batch", "content": {"application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}}}})),
        },
    }));
    let mut query_params = vec![
        endpoint_param(),
        json!({"name": "resource", "in": "query", "required": true, "schema": {"type": "string", "enum": resource_names()}, "description": "Singular or plural resource name"}),
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
        "parameters": [endpoint_param(), param("since", "next_cursor of the previous pull, for the same resources (omit to start from the beginning); any other is a 400 invalid_cursor", plain_text(4096)),
                       param("resource", "Comma-separated resources (default: all)", comma_list(json!({"type": "string", "enum": resource_names()}), super::rest::MAX_CHANGES_RESOURCES)),
                       param("page_size", "Changes per page", json!({"type": "integer", "minimum": 1, "maximum": read::MAX_PAGE_SIZE, "default": 100}))],
        "responses": with_problems(json!({"description": "Changes", "content": {"application/json": {"schema": {"type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}}, "next_cursor": {"type": "string"}, "has_more": {"type": "boolean"}}}}}})),
    }}));
    let mut export_params = vec![
        endpoint_param(),
        json!({"name": "resource", "in": "query", "required": true, "schema": {"type": "string", "enum": resource_names()}}),
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
        "parameters": [endpoint_param(), {"name": "id", "in": "path", "required": true, "schema": id_text()}],
        "responses": content_responses,
    }}));
    paths.insert("/api/public/{endpoint}/me".into(), json!({"get": {
        "operationId": "me", "tags": ["endpoint"], "summary": "This endpoint: company, access, scopes, rate limit, freshness per resource",
        "parameters": [endpoint_param()],
        "responses": with_problems(json!({"description": "The endpoint", "content": {"application/json": {"schema": {"type": "object"}}}})),
    }}));
    super::webhooks::openapi(&mut paths, &mut schemas);
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
            "description": "Your company's records, mirrored from the field-service provider. Every request needs your key as `Authorization: Bearer sk_…` or `X-API-Key`. Errors are application/problem+json with a machine `code`; every response has X-Request-Id and RateLimit headers. A query parameter given without a value (`cursor=`) is refused with a 422 naming it: leave it out instead. Lists (`ids`, `status`) are comma-separated. Refusals a schema cannot express: a cursor this service did not issue for the same filters is a 400 `invalid_cursor`; a filter or sort that does not apply to the resource asked of `/query` or `/export` is a 422 naming it; a body's reference to a record outside your company is a 422 naming the field."
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
