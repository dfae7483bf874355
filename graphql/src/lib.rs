//! clientapi-graphql: the GraphQL API over the company-scoped mirror (DESIGN.md §5).
//!
//! The schema is generated from the same field table REST renders (`read::record_fields`), and
//! reads through the same scoped read path (`read::list_page`, `read::load_related`) with the
//! same filters and the same signed cursors: a REST `next_cursor` is a GraphQL `after`.
//! Relations are batched by one loader per request whose batches mix every relation of a
//! nesting level into one SQL statement, so a query costs at most one statement per level.
//! Knows nothing of HTTP: the service hands it a [`Scope`] and a request.

pub use async_graphql;

mod batch;
mod direct;
mod limits;
mod schema;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::{ErrorExtensionValues, Response, ServerError, Value};
use clientapi_schema::cursor::CursorSigner;
use clientapi_schema::model::Resource;

pub use limits::{
    Cost, DEFAULT_FIRST, DEFAULT_NESTED_FIRST, MAX_ALIASES, MAX_COMPLEXITY, MAX_DEPTH, MAX_RECORDS, RECORDS_PER_REQUEST,
};

/// Where the service answers `me` from: the same JSON as REST's `/me`.
pub type MeFuture = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;

/// A write a mutation asks for; the service performs it exactly as REST does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Create,
    Update(String),
    Delete(String),
}

/// Why a write was refused: a stable code, a message, and the fields at fault.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    pub code: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

pub type WriteFuture = Pin<Box<dyn Future<Output = Result<String, WriteFailure>> + Send>>;

/// Unified write fields by name.
pub type WriteFields = serde_json::Map<String, serde_json::Value>;

/// Performs a write and answers with the mirrored record's JSON.
pub type Writer = Box<dyn Fn(Resource, WriteOp, WriteFields) -> WriteFuture + Send + Sync>;

/// One request's scope: the endpoint asking and what it may read.
pub struct Scope {
    pub reader: clientapi_schema::read::Reader,
    /// The company read, and whether technicians are shown.
    pub company: clientapi_schema::read::Scope,
    /// The endpoint's public id, which cursors are bound to.
    pub endpoint: String,
    pub readable: Vec<Resource>,
    pub cursors: CursorSigner,
    pub me: Box<dyn Fn() -> MeFuture + Send + Sync>,
    /// Spends `n` more units of the endpoint's rate limit, or says when to retry (seconds).
    pub charge: Box<dyn Fn(u32) -> Result<(), u64> + Send + Sync>,
    /// Performs a write (unified field names) and answers with the mirrored record's JSON.
    pub write: Writer,
}

/// An operation's answer: the executor's response, or JSON the direct path rendered.
pub enum Answer {
    Executed(Response),
    Rendered(String),
}

impl Answer {
    pub fn errors(&self) -> &[ServerError] {
        match self {
            Answer::Executed(response) => &response.errors,
            Answer::Rendered(_) => &[],
        }
    }

    /// The answer as JSON.
    pub fn into_json(self) -> Result<String, serde_json::Error> {
        match self {
            Answer::Executed(response) => serde_json::to_string(&response),
            Answer::Rendered(json) => Ok(json),
        }
    }
}

/// What happened, for the response and the request log.
pub struct Outcome {
    pub response: Answer,
    pub operation: Option<String>,
    /// Records in the answer (every list, relation and single lookup).
    pub items: usize,
    /// Set when the query's cost ran over the endpoint's rate limit: seconds until it may retry.
    pub retry_after: Option<u64>,
}

/// The per-request state resolvers see.
pub(crate) struct RequestScope {
    pub scope: Scope,
    pub loader: batch::Batcher,
    /// Relations loaded ahead by their level (see `schema::prefetch`).
    pub prefetched:
        std::sync::Mutex<std::collections::HashMap<clientapi_schema::read::RelatedKey, Arc<Vec<Arc<Value>>>>>,
    pub items: AtomicUsize,
}

/// What async-graphql's introspection says of the schema itself.
const SCHEMA_DESCRIPTION: &str = "A GraphQL Schema defines the capabilities of a GraphQL server. It exposes all available \
    types and directives on the server, as well as the entry points for query, mutation, and subscription operations.";

/// Deepest nesting of an introspection-only operation: the standard introspection queries
/// (graphql-js, graphql-core, GraphiQL, codegen, Postman) nest their type references 13 deep.
pub const INTROSPECTION_MAX_DEPTH: usize = 20;

/// The executable schema, built once.
pub struct GraphqlApi {
    schema: async_graphql::dynamic::Schema,
    /// The same schema with the depth limit sized for introspection, for operations that ask
    /// for nothing but `__schema`, `__type` and `__typename` (they run no resolver of ours, so
    /// no SQL); the field-count limit is the same.
    introspection: async_graphql::dynamic::Schema,
    /// Parsed documents by query text.
    documents: moka::sync::Cache<String, Arc<async_graphql::parser::types::ExecutableDocument>>,
    /// Query texts (with the operation run) the executor has answered without an error: only
    /// these may take the direct path.
    validated: moka::sync::Cache<(String, Option<String>), ()>,
}

/// graphql-js 16's `getIntrospectionQuery({ descriptions, specifiedByUrl, directiveIsRepeatable,
/// schemaDescription, inputValueDeprecation })`.
const INTROSPECTION_QUERY: &str = "query IntrospectionQuery { __schema { description queryType { name } mutationType { name } \
subscriptionType { name } types { ...FullType } directives { name description isRepeatable locations \
args(includeDeprecated: true) { ...InputValue } } } } \
fragment FullType on __Type { kind name description specifiedByURL fields(includeDeprecated: true) { name description \
args(includeDeprecated: true) { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason } \
inputFields(includeDeprecated: true) { ...InputValue } interfaces { ...TypeRef } \
enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason } possibleTypes { ...TypeRef } } \
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue isDeprecated deprecationReason } \
fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name \
ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } } } }";

/// Queries longer than this are parsed every time rather than cached.
const MAX_CACHED_QUERY: usize = 16 * 1024;

impl Default for GraphqlApi {
    fn default() -> Self {
        Self::new()
    }
}

impl GraphqlApi {
    pub fn new() -> Self {
        let schema = schema::build()
            .limit_depth(MAX_DEPTH)
            .limit_complexity(MAX_COMPLEXITY)
            .limit_directives(10)
            .finish()
            .expect("the generated schema is valid");
        let introspection = schema::build()
            .limit_depth(INTROSPECTION_MAX_DEPTH)
            .limit_complexity(MAX_COMPLEXITY)
            .limit_directives(10)
            .finish()
            .expect("the generated schema is valid");
        Self {
            schema,
            introspection,
            documents: moka::sync::Cache::builder().max_capacity(1_000).build(),
            validated: moka::sync::Cache::builder().max_capacity(1_000).build(),
        }
    }

    /// The schema in SDL, as served and committed: exactly what a client builds from
    /// introspection (graphql-js `buildClientSchema` and `printSchema` give the same text).
    pub fn sdl(&self) -> String {
        // async-graphql's SDL leaves out `@specifiedBy`, which its introspection answers.
        let sdl = self.schema.sdl().replace(
            "scalar DateTime\n",
            &format!("scalar DateTime @specifiedBy(url: \"{}\")\n", schema::DATETIME_SPEC),
        );
        // Its introspection answers this description for every schema (`__schema {
        // description }`), where its SDL prints none: say the same in both.
        match sdl.rfind("\nschema {") {
            Some(at) => format!("{}\n\"\"\"\n{SCHEMA_DESCRIPTION}\n\"\"\"{}", &sdl[..at], &sdl[at..]),
            None => sdl,
        }
    }

    /// The answer to the standard introspection query (graphql-js's `getIntrospectionQuery` with
    /// every option): the schema is public like its SDL, so GraphiQL loads it before any key is
    /// typed. It runs no resolver of ours.
    pub async fn introspection(&self) -> serde_json::Value {
        let response = self.introspection.execute(async_graphql::Request::new(INTROSPECTION_QUERY)).await;
        serde_json::to_value(&response).unwrap_or_default()
    }

    /// Runs one operation in `scope`. Queries over the alias, page-size or record limits are
    /// refused before anything runs; then the query's price is charged to the rate limit.
    pub async fn execute(&self, scope: Scope, mut request: async_graphql::Request) -> Outcome {
        let mut operation = request.operation_name.clone();
        // Parsed once (and reused across requests with the same text: dashboards repeat
        // theirs); async-graphql executes the same document. One that does not parse is
        // reported by async-graphql below, before any resolver.
        let parsed = match self.documents.get(&request.query) {
            Some(doc) => Some(doc),
            None => async_graphql::parser::parse_query(&request.query).ok().map(|doc| {
                let doc = Arc::new(doc);
                if request.query.len() <= MAX_CACHED_QUERY {
                    self.documents.insert(request.query.clone(), doc.clone());
                }
                doc
            }),
        };
        let mut introspecting = false;
        if let Some(doc) = parsed {
            introspecting = introspection_only(&doc, request.operation_name.as_deref());
            // Without an operation name, a document's only operation runs: log its name.
            if operation.is_none() && doc.operations.iter().count() == 1 {
                operation = doc.operations.iter().next().and_then(|(name, _)| name.map(|n| n.to_string()));
            }
            let cost = match limits::assess(&doc, &request.variables, request.operation_name.as_deref()) {
                Ok(cost) => cost,
                Err(refusal) => {
                    let response = Response::from_errors(vec![coded(refusal.message, refusal.code)]);
                    return Outcome { response: Answer::Executed(response), operation, items: 0, retry_after: None };
                }
            };
            if cost.extra_requests > 0
                && let Err(retry_after) = (scope.charge)(cost.extra_requests)
            {
                let message = format!(
                    "This query costs {} requests of the endpoint's rate limit ({} records); retry in {retry_after} s.",
                    cost.extra_requests + 1,
                    cost.records
                );
                let response = Response::from_errors(vec![coded(message, "rate_limited")]);
                return Outcome {
                    response: Answer::Executed(response),
                    operation,
                    items: 0,
                    retry_after: Some(retry_after),
                };
            }
            let validated = (request.query.clone(), request.operation_name.clone());
            if self.validated.contains_key(&validated)
                && let Some(plan) = direct::plan(&doc, request.operation_name.as_deref(), &request.variables, &scope)
                && let Some((json, items)) = direct::run(&plan, &scope).await
            {
                metrics::counter!("graphql_operations_total", "path" => "direct").increment(1);
                return Outcome { response: Answer::Rendered(json), operation, items, retry_after: None };
            }
            request.set_parsed_query((*doc).clone());
        }
        let loader = batch::Batcher::new(scope.reader.clone(), scope.company);
        let state =
            Arc::new(RequestScope { scope, loader, prefetched: Default::default(), items: AtomicUsize::new(0) });
        let text =
            (request.query.len() <= MAX_CACHED_QUERY).then(|| (request.query.clone(), request.operation_name.clone()));
        let schema = if introspecting { &self.introspection } else { &self.schema };
        let mut response = schema.execute(request.data(state.clone())).await;
        metrics::counter!("graphql_operations_total", "path" => "executor").increment(1);
        if response.errors.is_empty()
            && let Some(text) = text
        {
            self.validated.insert(text, ());
        }
        // Parse and validation errors carry no code of their own.
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(ErrorExtensionValues::default);
            if extensions.get("code").is_none() {
                extensions.set("code", "invalid_query");
            }
        }
        let items = state.items.load(Ordering::Relaxed);
        Outcome { response: Answer::Executed(response), operation, items, retry_after: None }
    }
}

/// Whether the operation that will run asks only for introspection fields.
fn introspection_only(doc: &async_graphql::parser::types::ExecutableDocument, operation: Option<&str>) -> bool {
    use async_graphql::parser::types::{DocumentOperations, Selection, SelectionSet};
    fn only_meta(set: &SelectionSet, doc: &async_graphql::parser::types::ExecutableDocument, hops: usize) -> bool {
        hops < 8
            && !set.items.is_empty()
            && set.items.iter().all(|item| match &item.node {
                Selection::Field(f) => f.node.name.node.starts_with("__"),
                Selection::InlineFragment(f) => only_meta(&f.node.selection_set.node, doc, hops + 1),
                Selection::FragmentSpread(spread) => doc
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .is_some_and(|f| only_meta(&f.node.selection_set.node, doc, hops + 1)),
            })
    }
    let operation = match (&doc.operations, operation) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(&async_graphql::Name::new(name)),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    operation.is_some_and(|op| only_meta(&op.node.selection_set.node, doc, 0))
}

fn coded(message: String, code: &'static str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", Value::from(code));
    error.extensions = Some(extensions);
    error
}

/// `line_items` → `lineItems`: schema names from the field tables' names.
pub fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `line_item` → `LineItem`.
pub(crate) fn pascal(snake: &str) -> String {
    let camel = camel(snake);
    let mut chars = camel.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_converted() {
        assert_eq!(camel("line_items"), "lineItems");
        assert_eq!(camel("id"), "id");
        assert_eq!(pascal("line_item"), "LineItem");
    }
}
