//! What the adapter and the simulator both need from a GraphQL document: parsing, argument
//! values under a request's variables, and Jobber's documented query cost (PROVIDERS.md §2,
//! "Rate limits"): each field costs 1; `edges`, `nodes`, `node` and `__typename` cost nothing
//! themselves; a connection costs `first` × what one node selects (100 when no `first` is
//! given); `filter` and `sort` are free. The adapter prices a query before sending it, so it can
//! wait for the bucket instead of being answered `THROTTLED`.

use async_graphql_parser::types::{ExecutableDocument, Field, OperationDefinition, Selection, SelectionSet};
use async_graphql_parser::{Positioned, parse_query};
use serde_json::{Map, Value};

/// The page size Jobber assumes for a connection given no `first`.
pub const DEFAULT_FIRST: u64 = 100;

pub fn parse(query: &str) -> Result<ExecutableDocument, String> {
    parse_query(query).map_err(|e| e.to_string())
}

/// The document's one operation (or the one named).
pub fn operation<'d>(doc: &'d ExecutableDocument, name: Option<&str>) -> Result<&'d OperationDefinition, String> {
    let mut ops = doc.operations.iter();
    match name {
        Some(wanted) => doc
            .operations
            .iter()
            .find(|(n, _)| n.is_some_and(|n| n.as_str() == wanted))
            .map(|(_, op)| &op.node)
            .ok_or_else(|| format!("no operation named {wanted}")),
        None => match (ops.next(), ops.next()) {
            (Some((_, op)), None) => Ok(&op.node),
            _ => Err("the document must hold exactly one operation, or name one".into()),
        },
    }
}

/// An argument's value with its variables filled in, as JSON (`None` when absent).
pub fn argument(field: &Field, name: &str, variables: &Map<String, Value>) -> Option<Value> {
    let value = field.get_argument(name)?.node.clone();
    let constant = value
        .into_const_with(|var| Ok::<_, std::convert::Infallible>(variable(variables, var.as_str())))
        .unwrap_or_else(|never| match never {});
    constant.into_json().ok().filter(|v| !v.is_null())
}

fn variable(variables: &Map<String, Value>, name: &str) -> async_graphql_value::ConstValue {
    variables
        .get(name)
        .cloned()
        .and_then(|v| async_graphql_value::ConstValue::from_json(v).ok())
        .unwrap_or(async_graphql_value::ConstValue::Null)
}

/// The fields a selection set selects, with fragments spread in place.
pub fn fields<'d>(set: &'d SelectionSet, doc: &'d ExecutableDocument) -> Vec<&'d Positioned<Field>> {
    let mut out = Vec::new();
    collect(set, doc, &mut out, 0);
    out
}

fn collect<'d>(set: &'d SelectionSet, doc: &'d ExecutableDocument, out: &mut Vec<&'d Positioned<Field>>, depth: u32) {
    if depth > 16 {
        return; // a fragment cycle: the rest is not looked at
    }
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => out.push(field),
            Selection::InlineFragment(fragment) => collect(&fragment.node.selection_set.node, doc, out, depth + 1),
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                    collect(&fragment.node.selection_set.node, doc, out, depth + 1);
                }
            }
        }
    }
}

/// Whether a field with this selection is a Relay connection.
pub fn is_connection(set: &SelectionSet, doc: &ExecutableDocument) -> bool {
    fields(set, doc).iter().any(|f| matches!(f.node.name.node.as_str(), "nodes" | "edges" | "pageInfo"))
}

/// The cost Jobber charges for a query, before it runs.
pub fn query_cost(doc: &ExecutableDocument, operation: &OperationDefinition, variables: &Map<String, Value>) -> u64 {
    set_cost(&operation.selection_set.node, doc, variables)
}

fn set_cost(set: &SelectionSet, doc: &ExecutableDocument, variables: &Map<String, Value>) -> u64 {
    fields(set, doc).into_iter().map(|f| field_cost(&f.node, doc, variables)).fold(0, u64::saturating_add)
}

fn field_cost(field: &Field, doc: &ExecutableDocument, variables: &Map<String, Value>) -> u64 {
    let children = &field.selection_set.node;
    match field.name.node.as_str() {
        "__typename" => 0,
        "edges" | "nodes" | "node" => set_cost(children, doc, variables),
        _ if children.items.is_empty() => 1,
        _ if is_connection(children, doc) => {
            // `first` × one node, plus what the connection itself selects (`pageInfo`, counts).
            let first = argument(field, "first", variables).and_then(|v| v.as_u64()).unwrap_or(DEFAULT_FIRST);
            fields(children, doc)
                .into_iter()
                .map(|child| {
                    let cost = field_cost(&child.node, doc, variables);
                    match child.node.name.node.as_str() {
                        "nodes" | "edges" => first.saturating_mul(cost),
                        _ => cost,
                    }
                })
                .fold(0, u64::saturating_add)
        }
        _ => 1 + set_cost(children, doc, variables),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(query: &str, variables: Value) -> u64 {
        let doc = parse(query).unwrap();
        let op = operation(&doc, None).unwrap();
        query_cost(&doc, op, variables.as_object().unwrap())
    }

    #[test]
    fn the_documented_example_costs_fifty() {
        // PROVIDERS.md §2: `quotes(first:10){edges{node{5 fields}}}` = 50.
        assert_eq!(
            cost(
                "{ quotes(first: 10) { edges { node { id title quoteNumber createdAt updatedAt } } } }",
                Value::Object(Map::new())
            ),
            50
        );
    }

    #[test]
    fn first_comes_from_variables_and_defaults_to_one_hundred() {
        let q = "query Q($n: Int) { clients(first: $n, filter: {updatedAt: {after: \"x\"}}) { nodes { id name } } }";
        assert_eq!(cost(q, serde_json::json!({"n": 7})), 14);
        assert_eq!(cost(q, serde_json::json!({})), 200, "no first: Jobber assumes 100");
    }

    #[test]
    fn nested_connections_multiply_and_fragments_count() {
        let q = "query { jobs(first: 2) { nodes { ...J } pageInfo { hasNextPage endCursor } } }
                 fragment J on Job { id client { id } lineItems(first: 3) { nodes { id name } } }";
        // per job: id 1 + client{id} 2 + lineItems 3×2 = 9; ×2 jobs = 18; pageInfo 1 + 2 = 3.
        assert_eq!(cost(q, serde_json::json!({})), 18 + 3);
    }
}
