//! The public API's docs page at `/api/public/docs`, rendered on the server from the OpenAPI
//! document itself (so it cannot drift from it), the problem catalogue (`error::PROBLEMS`, the
//! target of every problem's `type` link) and `openapi/examples.json`: one real request and
//! answer per operation, recorded from the service by `tests/api/docs.rs`. No script, no CDN.

use std::fmt::Write;
use std::sync::OnceLock;

use serde_json::Value;

use crate::error::PROBLEMS;
use crate::http::dashboard::view::escape;

const EXAMPLES: &str = include_str!("../../../openapi/examples.json");

/// The page, rendered once.
pub fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(render)
}

/// Markdown (CommonMark, no raw HTML) to HTML.
fn markdown(text: &str) -> String {
    use pulldown_cmark::{Event, Parser};
    let events = Parser::new(text).map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// A schema in a word or two: `string (date-time)`, `integer 1–1000`, `one of a, b`.
fn schema_summary(schema: &Value) -> String {
    if let Some(options) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
        return options.iter().map(schema_summary).collect::<Vec<_>>().join(" or ");
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| v.as_str().map_or(v.to_string(), str::to_owned)).collect();
        return format!("one of {}", values.join(", "));
    }
    let kind = match &schema["type"] {
        Value::Array(types) => types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        Value::String(t) => t.clone(),
        _ => "any".into(),
    };
    let mut text = match (kind.as_str(), &schema["items"]) {
        ("array", items) if !items.is_null() => format!("comma-separated list of {}", schema_summary(items)),
        _ => kind,
    };
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(text, " ({format})");
    }
    match (schema["minimum"].as_u64(), schema["maximum"].as_u64()) {
        (Some(min), Some(max)) => {
            let _ = write!(text, " {min}–{max}");
        }
        (Some(min), None) => {
            let _ = write!(text, " ≥ {min}");
        }
        _ => {}
    }
    if let Some(max) = schema["maxLength"].as_u64() {
        let _ = write!(text, ", at most {max} characters");
    }
    if let Some(max) = schema["maxItems"].as_u64() {
        let _ = write!(text, ", at most {max}");
    }
    text
}

fn example_html(example: &Value) -> String {
    if example.is_null() {
        return String::new();
    }
    let method = example["method"].as_str().unwrap_or("GET");
    let path = example["path"].as_str().unwrap_or("").replace("{endpoint}", "ep_…");
    let mut curl = String::from("curl -s -H 'Authorization: Bearer sk_…'");
    if method != "GET" {
        let _ = write!(curl, " -X {method}");
    }
    if !example["body"].is_null() {
        let _ = write!(curl, " -H 'Content-Type: application/json' -d '{}'", example["body"]);
    }
    let _ = write!(curl, " 'https://…{path}'");
    let answer = match &example["response"] {
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    format!(
        "<details><summary>Example: a real request and its answer ({status}{content_type})</summary><pre><code>{curl}</code></pre><pre><code>{answer}</code></pre></details>",
        status = example["status"],
        content_type = example["content_type"].as_str().map(|t| format!(", {t}")).unwrap_or_default(),
        curl = escape(&curl),
        answer = escape(&answer),
    )
}

fn render() -> String {
    let spec = super::openapi::spec();
    let examples: Value = serde_json::from_str(EXAMPLES).unwrap_or(Value::Null);
    let mut toc = String::new();
    let mut body = String::new();
    let mut tag_seen = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            let tag = operation["tags"][0].as_str().unwrap_or("other");
            if !tag_seen.contains(&tag) {
                tag_seen.push(tag);
                let _ = write!(toc, "<li><a href=\"#tag-{t}\">{t}</a></li>", t = escape(tag));
                let _ = write!(body, "<h2 id=\"tag-{t}\">{t}</h2>", t = escape(&tag.replace('_', " ")));
            }
            let mut rows = String::new();
            for p in operation["parameters"].as_array().into_iter().flatten() {
                let _ = write!(
                    rows,
                    "<tr><td><code>{name}</code></td><td>{place}{required}</td><td>{schema}</td><td>{description}</td></tr>",
                    name = escape(p["name"].as_str().unwrap_or_default()),
                    place = escape(p["in"].as_str().unwrap_or_default()),
                    required = if p["required"] == true { ", required" } else { "" },
                    schema = escape(&schema_summary(&p["schema"])),
                    description = markdown(p["description"].as_str().unwrap_or_default()),
                );
            }
            let statuses: Vec<String> =
                operation["responses"].as_object().into_iter().flatten().map(|(status, _)| status.clone()).collect();
            let _ = write!(
                body,
                "<section class=\"op\" id=\"op-{id}\"><h3><span class=\"method {method}\">{upper}</span> <code>{path}</code></h3>{summary}\
                 <table><thead><tr><th>Parameter</th><th>In</th><th>Type</th><th>Meaning</th></tr></thead><tbody>{rows}</tbody></table>\
                 <p class=\"statuses\">Answers: {statuses}</p>{example}</section>",
                id = escape(id),
                upper = method.to_uppercase(),
                path = escape(path),
                summary = markdown(operation["summary"].as_str().unwrap_or_default()),
                statuses = statuses.join(", "),
                example = example_html(&examples[id]),
            );
        }
    }
    let mut problems = String::new();
    for p in PROBLEMS {
        let _ = write!(
            problems,
            "<tr id=\"problem-{code}\"><td><code>{code}</code></td><td>{status}</td><td>{explanation}</td></tr>",
            code = p.code,
            status = p.status,
            explanation = markdown(p.explanation),
        );
    }
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Client API — public API</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style></head>
<body><header><h1>Client API — public API</h1>{description}
<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1). GraphQL: the schema is
<a href="graphql/schema.graphql">graphql/schema.graphql</a>; GraphiQL opens at <code>/api/public/ep_…/graphql</code>
in a browser, with your key in its Headers tab.</p>
<nav><ul>{toc}<li><a href="#problems">problems</a></li></ul></nav></header>
<main>{body}
<h2 id="problems">Problems</h2>
<p>Every error is <code>application/problem+json</code>: <code>type</code> (a link to its row here), <code>title</code>,
<code>status</code>, <code>detail</code>, <code>instance</code> (the request id; quote it to the operator), a machine
<code>code</code>, and for 422s <code>errors[]</code> naming each <code>field</code>.</p>
<table class="problems"><thead><tr><th>Code</th><th>Status</th><th>What happened and what to do</th></tr></thead><tbody>{problems}</tbody></table>
</main></body></html>"##,
        description = markdown(spec["info"]["description"].as_str().unwrap_or_default()),
    )
}

const STYLE: &str = "body{font:15px/1.55 system-ui,sans-serif;max-width:1040px;margin:2rem auto;padding:0 1rem;color:#1a1a1a}\
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2.5rem;border-bottom:1px solid #ddd;text-transform:capitalize}\
h3{font-size:1rem;margin:0 0 .3rem}code,pre{font-family:ui-monospace,monospace;font-size:13px}\
p code,td code,li code{background:#f2f2f2;padding:.05rem .3rem;border-radius:3px}\
pre{background:#f6f6f6;padding:.6rem;border-radius:4px;overflow-x:auto;max-height:24rem}\
nav ul{display:flex;flex-wrap:wrap;gap:.3rem 1rem;padding:0;list-style:none}\
.op{margin:1rem 0;padding:.6rem 1rem;border-left:3px solid #2f7a4f;background:#fafafa}\
.method{font-weight:bold;color:#2f7a4f}.method.post{color:#1d5fa8}.method.patch{color:#8a5a00}.method.delete{color:#a12828}\
table{border-collapse:collapse;font-size:13px;width:100%}th{text-align:left;color:#555;font-weight:600}\
td,th{padding:.2rem .6rem;border-bottom:1px solid #eee;vertical-align:top}td p{margin:0}\
.statuses{color:#555;font-size:13px}tr:target{background:#fff6d5}summary{cursor:pointer;color:#1d5fa8}";
