//! The direct path: a query that only lists records' own fields is answered with JSON that
//! Postgres renders in the query's own shape (aliases, order, `Money` objects), one row per
//! node, with no resolver per field. A reporting dashboard's list query costs about what the
//! same REST page costs.
//!
//! It is an answer cache's cousin, not a second executor: it serves only a document that the
//! full executor has already answered once without an error (so validation stays
//! async-graphql's), only shapes it fully understands (connections of plain fields, `pageInfo`,
//! `totalCount`, `__typename`), and it reads its arguments, cursors and scope exactly as the
//! resolvers do. Anything else — relations, single lookups, fragments, directives, a variable of
//! the wrong type, a bad cursor, a missing scope — goes to the full executor, which answers it
//! (errors included) the way it always has.

use std::fmt::Write;

use async_graphql::Variables;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Value};
use clientapi_schema::model::Resource;
use clientapi_schema::read::{self, FieldKind, ListQuery, record_fields};

use crate::Scope;
use crate::schema::list_arguments;

/// Most keys one rendered row may have (`json_build_object` takes at most 100 arguments).
const MAX_ROW_KEYS: usize = 50;

/// What the query asks, decided: each root field in order.
pub(crate) struct Plan {
    roots: Vec<(Name, Root)>,
}

enum Root {
    Typename,
    List(Box<List>),
}

struct List {
    query: ListQuery,
    /// The row expression: the node's selection as a JSON object, rendered by Postgres.
    select: Option<String>,
    parts: Vec<(Name, Part)>,
}

enum Part {
    Typename(String),
    Nodes,
    Edges(Vec<(Name, EdgePart)>),
    PageInfo(Vec<(Name, InfoPart)>),
    TotalCount,
}

enum EdgePart {
    Node,
    Cursor,
    Typename(String),
}

enum InfoPart {
    HasNextPage,
    EndCursor,
    Typename,
}

fn type_name(resource: Resource) -> String {
    crate::pascal(resource.singular())
}

/// The selection's fields, or `None` when it holds fragments or directives.
fn plain_fields(set: &SelectionSet) -> Option<Vec<&Field>> {
    let mut fields = Vec::with_capacity(set.items.len());
    let mut keys: Vec<&Name> = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let Selection::Field(field) = &item.node else { return None };
        let field = &field.node;
        if !field.directives.is_empty() {
            return None;
        }
        // A response key given twice is merged by the executor: leave that to it.
        let key = response_key(field);
        if keys.contains(&key) {
            return None;
        }
        keys.push(key);
        fields.push(field);
    }
    Some(fields)
}

fn response_key(field: &Field) -> &Name {
    field.alias.as_ref().map_or(&field.name.node, |a| &a.node)
}

/// The plan for `doc`'s operation, when the direct path can answer it in full.
pub(crate) fn plan(
    doc: &ExecutableDocument,
    operation: Option<&str>,
    variables: &Variables,
    scope: &Scope,
) -> Option<Plan> {
    let op = match (&doc.operations, operation) {
        (DocumentOperations::Single(op), None) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(&Name::new(name))?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    let op = &op.node;
    if op.ty != OperationType::Query || !op.directives.is_empty() {
        return None;
    }
    // A variable's value, or its declared default, or (nullable and left out) no value, which
    // every list argument reads as not given. A required one left out is the executor's.
    let variable = |name: Name| -> Result<Value, ()> {
        if let Some(value) = variables.get(&name) {
            return Ok(value.clone());
        }
        let definition = &op.variable_definitions.iter().find(|d| d.node.name.node == name).ok_or(())?.node;
        match &definition.default_value {
            Some(default) => Ok(default.node.clone()),
            None if definition.var_type.node.nullable => Ok(Value::Null),
            None => Err(()),
        }
    };
    let mut roots = Vec::new();
    for field in plain_fields(&op.selection_set.node)? {
        let key = response_key(field).clone();
        let name = field.name.node.as_str();
        if name == "__typename" {
            roots.push((key, Root::Typename));
            continue;
        }
        let resource = Resource::ALL.into_iter().find(|r| camel_is(r.plural(), name))?;
        if !scope.readable.contains(&resource) {
            return None;
        }
        let args: Vec<(Name, Value)> = field
            .arguments
            .iter()
            .map(|(n, v)| Some((n.node.clone(), v.node.clone().into_const_with(&variable).ok()?)))
            .collect::<Option<_>>()?;
        let lookup = |name: &str| args.iter().find(|(n, _)| n.as_str() == name).map(|(_, v)| v);
        let list = list(resource, field, &lookup, scope)?;
        roots.push((key, Root::List(Box::new(list))));
    }
    Some(Plan { roots })
}

fn list<'v>(
    resource: Resource,
    field: &Field,
    args: &impl crate::schema::Arguments<'v>,
    scope: &Scope,
) -> Option<List> {
    let mut parts = Vec::new();
    // Every node selection (under `nodes` and `edges.node`) must render the same one row.
    let mut select: Option<String> = None;
    let mut remote_data = false;
    let mut same_node = |fields: Vec<&Field>| -> Option<()> {
        let row = row_select(resource, &fields)?;
        if select.as_ref().is_some_and(|s| *s != row) {
            return None;
        }
        remote_data |= fields.iter().any(|f| f.name.node == "remoteData");
        select = Some(row);
        Some(())
    };
    for part in plain_fields(&field.selection_set.node)? {
        let key = response_key(part).clone();
        let part = match part.name.node.as_str() {
            "__typename" => Part::Typename(format!("{}Connection", type_name(resource))),
            "totalCount" => Part::TotalCount,
            "nodes" => {
                same_node(plain_fields(&part.selection_set.node)?)?;
                Part::Nodes
            }
            "edges" => {
                let mut edge = Vec::new();
                for f in plain_fields(&part.selection_set.node)? {
                    let key = response_key(f).clone();
                    edge.push(match f.name.node.as_str() {
                        "node" => {
                            same_node(plain_fields(&f.selection_set.node)?)?;
                            (key, EdgePart::Node)
                        }
                        "cursor" => (key, EdgePart::Cursor),
                        "__typename" => (key, EdgePart::Typename(format!("{}Edge", type_name(resource)))),
                        _ => return None,
                    });
                }
                Part::Edges(edge)
            }
            "pageInfo" => {
                let mut info = Vec::new();
                for f in plain_fields(&part.selection_set.node)? {
                    let key = response_key(f).clone();
                    info.push(match f.name.node.as_str() {
                        "hasNextPage" => (key, InfoPart::HasNextPage),
                        "endCursor" => (key, InfoPart::EndCursor),
                        "__typename" => (key, InfoPart::Typename),
                        _ => return None,
                    });
                }
                Part::PageInfo(info)
            }
            _ => return None,
        };
        parts.push((key, part));
    }
    let (mut query, after) = list_arguments(resource, args, remote_data).ok()?;
    if let Some(after) = after {
        query.after = Some(scope.cursors.list_position(&scope.endpoint, &query, after)?);
    }
    Some(List { query, select, parts })
}

/// Marks the direct path's statements in `pg_stat_statements` and `pg_stat_activity`.
pub(crate) const SQL_MARK: &str = "/* graphql direct */";

/// One row as Postgres renders it: `json_build_object('key', expr, …)::text` in selection order.
fn row_select(resource: Resource, fields: &[&Field]) -> Option<String> {
    if fields.len() > MAX_ROW_KEYS {
        return None;
    }
    let table = record_fields(resource, true);
    let mut sql = format!("{SQL_MARK} json_build_object(");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let key = sql_key(response_key(field))?;
        let name = field.name.node.as_str();
        if name == "__typename" {
            write!(sql, "{key}, '{}'", type_name(resource)).ok()?;
            continue;
        }
        let column = table.iter().find(|c| camel_is(c.name, name))?;
        let sub = &field.selection_set.node;
        match column.kind {
            FieldKind::Money => {
                let mut money = String::new();
                for (j, part) in plain_fields(sub)?.into_iter().enumerate() {
                    if j > 0 {
                        money.push_str(", ");
                    }
                    let part_key = sql_key(response_key(part))?;
                    let expr = match part.name.node.as_str() {
                        "amount" => column.expr.as_str(),
                        "currency" => "t.currency",
                        "__typename" => "'Money'",
                        _ => return None,
                    };
                    write!(money, "{part_key}, {expr}").ok()?;
                }
                write!(sql, "{key}, case when ({}) is null then null else json_build_object({money}) end", column.expr)
                    .ok()?;
            }
            _ if !sub.items.is_empty() => return None,
            _ => write!(sql, "{key}, {}", column.expr).ok()?,
        }
    }
    sql.push_str(")::text");
    Some(sql)
}

/// Whether `camel` is `snake` in camelCase (`line_items` → `lineItems`), without allocating.
fn camel_is(snake: &str, camel: &str) -> bool {
    let mut expected = camel.chars();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
            continue;
        }
        let c = if upper { c.to_ascii_uppercase() } else { c };
        upper = false;
        if expected.next() != Some(c) {
            return false;
        }
    }
    expected.next().is_none()
}

/// A response key as an SQL string literal. GraphQL names are `[_A-Za-z][_0-9A-Za-z]*`; anything
/// else (which the parser does not produce) is refused rather than quoted.
fn sql_key(name: &Name) -> Option<String> {
    let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| format!("'{}'", name.as_str()))
}

/// Runs the plan: one data statement per list (and one more for a `totalCount`). `None` when
/// the database failed: the executor then answers, with its logged, hidden internal error.
pub(crate) async fn run(plan: &Plan, scope: &Scope) -> Option<(String, usize)> {
    let mut out = String::with_capacity(16 * 1024);
    let mut items = 0;
    out.push_str("{\"data\":{");
    for (i, (key, root)) in plan.roots.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_key(&mut out, key);
        match root {
            Root::Typename => out.push_str("\"Query\""),
            Root::List(list) => items += render_list(&mut out, list, scope).await?,
        }
    }
    out.push_str("}}");
    Some((out, items))
}

async fn render_list(out: &mut String, list: &List, scope: &Scope) -> Option<usize> {
    let page = match &list.select {
        Some(select) => read::list_page_rendering(&scope.reader, scope.company, &list.query, select).await,
        // Only pageInfo, totalCount or __typename: the page is still read, for hasNextPage.
        None => {
            read::list_page_rendering(&scope.reader, scope.company, &list.query, &format!("{SQL_MARK} '{{}}'::text"))
                .await
        }
    };
    let page = page.map_err(|e| tracing::warn!(error = %e, "GraphQL direct read failed; the executor answers")).ok()?;
    let total = if list.parts.iter().any(|(_, part)| matches!(part, Part::TotalCount)) {
        let count = read::count(&scope.reader, scope.company, &list.query).await;
        Some(count.map_err(|e| tracing::warn!(error = %e, "GraphQL direct count failed; the executor answers")).ok()?)
    } else {
        None
    };
    let cursor = |key: &(String, String)| scope.cursors.list_cursor(&scope.endpoint, &list.query, key.clone());
    push_object(out, &list.parts, |out, part| match part {
        Part::Typename(name) => push_string(out, name),
        Part::Nodes => push_joined(out, '[', ']', &page.rows, |out, row| out.push_str(row)),
        Part::Edges(edge) => push_joined(out, '[', ']', page.rows.iter().zip(&page.keys), |out, (row, position)| {
            push_object(out, edge, |out, part| match part {
                EdgePart::Node => out.push_str(row),
                EdgePart::Cursor => push_string(out, &cursor(position)),
                EdgePart::Typename(name) => push_string(out, name),
            })
        }),
        Part::PageInfo(info) => push_object(out, info, |out, part| match part {
            InfoPart::HasNextPage => out.push_str(if page.next.is_some() { "true" } else { "false" }),
            InfoPart::EndCursor => match &page.next {
                Some(next) => push_string(out, &cursor(next)),
                None => out.push_str("null"),
            },
            InfoPart::Typename => push_string(out, "PageInfo"),
        }),
        Part::TotalCount => out.push_str(&total.unwrap_or_default().to_string()),
    });
    Some(page.rows.len())
}

/// `items` rendered by `each`, comma-separated, between `open` and `close`.
fn push_joined<T>(
    out: &mut String,
    open: char,
    close: char,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut String, T),
) {
    out.push(open);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(close);
}

/// A JSON object of `(key, part)` pairs, each part rendered by `each`.
fn push_object<P>(out: &mut String, parts: &[(Name, P)], mut each: impl FnMut(&mut String, &P)) {
    push_joined(out, '{', '}', parts, |out, (key, part)| {
        push_key(out, key);
        each(out, part);
    });
}

fn push_key(out: &mut String, key: &Name) {
    push_string(out, key.as_str());
    out.push(':');
}

fn push_string(out: &mut String, text: &str) {
    // serde_json's escaping, straight into the buffer.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "null".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_is_agrees_with_the_schemas_names() {
        for resource in Resource::ALL {
            for snake in record_fields(resource, true).iter().map(|f| f.name).chain([resource.plural()]) {
                let camel = crate::camel(snake);
                assert!(camel_is(snake, &camel), "{snake} → {camel}");
                assert!(!camel_is(snake, &format!("{camel}x")) && !camel_is(snake, &camel[..camel.len() - 1]));
                assert!(!camel_is(snake, snake) || !snake.contains('_'), "{snake}");
            }
        }
    }
}
