//! What a query may ask for, decided from its text before any resolver runs (so before any SQL):
//! aliases, page sizes and the number of records it could touch. async-graphql's own depth and
//! complexity limits, and its fragment-cycle rule, run next, still before any resolver.

use std::collections::{HashMap, HashSet};

use async_graphql::Variables;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, Field, Selection, SelectionSet};
use async_graphql::{Name, Value};
use clientapi_schema::model::Resource;
use clientapi_schema::read::MAX_PAGE_SIZE;

/// Deepest selection nesting accepted (`jobs { edges { node { client { name } } } }` is 5).
pub const MAX_DEPTH: usize = 12;
/// Most field selections in one query, counted by async-graphql after fragments are expanded.
pub const MAX_COMPLEXITY: usize = 500;
/// Most aliases in one document.
pub const MAX_ALIASES: usize = 30;
/// Most records one query may touch, by its page sizes multiplied through its nesting.
pub const MAX_RECORDS: u64 = 100_000;
/// Records per rate-limit unit: one request to the API, like one REST page, covers up to this many.
pub const RECORDS_PER_REQUEST: u64 = 1_000;
/// Page size of a top-level list when `first` is not given.
pub const DEFAULT_FIRST: u32 = 50;
/// Records of a nested list per parent when `first` is not given.
pub const DEFAULT_NESTED_FIRST: u32 = 20;

/// Why a query was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// What a query costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The most records it could touch.
    pub records: u64,
    /// Rate-limit units it spends beyond the one every request spends.
    pub extra_requests: u32,
}

/// Field names that are lists of records: the resources' plural names (`jobs`, `lineItems`).
fn is_record_list(name: &str) -> bool {
    Resource::ALL.iter().any(|r| crate::camel(r.plural()) == name)
}

/// Checks the document's aliases and page sizes and prices it, for the operation that will run.
pub fn assess(doc: &ExecutableDocument, variables: &Variables, operation: Option<&str>) -> Result<Cost, Refusal> {
    let aliases = count_aliases(doc);
    if aliases > MAX_ALIASES {
        return Err(Refusal {
            code: "too_many_aliases",
            message: format!("The query has {aliases} aliases; at most {MAX_ALIASES} are allowed."),
        });
    }
    let selection = match (&doc.operations, operation) {
        (DocumentOperations::Single(op), _) => &op.node.selection_set,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(&Name::new(name)) {
            Some(op) => &op.node.selection_set,
            // async-graphql reports the unknown operation.
            None => return Ok(Cost { records: 0, extra_requests: 0 }),
        },
        (DocumentOperations::Multiple(ops), None) => match ops.values().next() {
            Some(op) if ops.len() == 1 => &op.node.selection_set,
            _ => return Ok(Cost { records: 0, extra_requests: 0 }),
        },
    };
    let mut walk = Walk { doc, variables, visiting: HashSet::new(), priced: HashMap::new() };
    let records = walk.records(&selection.node, 0)?;
    if records > MAX_RECORDS {
        return Err(Refusal {
            code: "query_too_large",
            message: format!(
                "The query could return {records} records; at most {MAX_RECORDS} are allowed. Ask for smaller pages (first) or fewer nested lists."
            ),
        });
    }
    Ok(Cost { records, extra_requests: (records / RECORDS_PER_REQUEST) as u32 })
}

/// Aliases written anywhere in the document, counted once per place (fragments are not expanded).
fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn in_set(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => usize::from(f.node.alias.is_some()) + in_set(&f.node.selection_set.node),
                Selection::InlineFragment(f) => in_set(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let operations: usize = doc.operations.iter().map(|(_, op)| in_set(&op.node.selection_set.node)).sum();
    let fragments: usize = doc.fragments.values().map(|f| in_set(&f.node.selection_set.node)).sum();
    operations + fragments
}

struct Walk<'a> {
    doc: &'a ExecutableDocument,
    variables: &'a Variables,
    visiting: HashSet<&'a str>,
    /// Each fragment's price, once worked out (a fragment spread many times, or spreading
    /// others many times, is walked once, not exponentially often).
    priced: HashMap<(&'a str, bool), u64>,
}

impl<'a> Walk<'a> {
    /// The most records a selection set could touch.
    fn records(&mut self, set: &'a SelectionSet, depth: usize) -> Result<u64, Refusal> {
        if depth > MAX_DEPTH * 2 {
            return Err(Refusal {
                code: "query_too_deep",
                message: format!("The query nests deeper than {MAX_DEPTH}."),
            });
        }
        let mut total: u64 = 0;
        for item in &set.items {
            let n = match &item.node {
                Selection::Field(f) => self.field(&f.node, depth)?,
                Selection::InlineFragment(f) => self.records(&f.node.selection_set.node, depth)?,
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.doc.fragments.get(&spread.node.fragment_name.node) else { continue };
                    // Only the top level prices lists differently (DEFAULT_FIRST).
                    let memo = (name, depth == 0);
                    if let Some(n) = self.priced.get(&memo) {
                        *n
                    } else {
                        if !self.visiting.insert(name) {
                            return Err(Refusal {
                                code: "fragment_cycle",
                                message: format!("Fragment {name} spreads itself."),
                            });
                        }
                        let n = self.records(&fragment.node.selection_set.node, depth)?;
                        self.visiting.remove(name);
                        self.priced.insert(memo, n);
                        n
                    }
                }
            };
            total = total.saturating_add(n);
        }
        Ok(total)
    }

    fn field(&mut self, field: &'a Field, depth: usize) -> Result<u64, Refusal> {
        let name = field.name.node.as_str();
        let inner = self.records(&field.selection_set.node, depth + 1)?;
        if is_record_list(name) {
            let default = if depth == 0 { DEFAULT_FIRST } else { DEFAULT_NESTED_FIRST };
            let first = self.first(field)?.unwrap_or(u64::from(default));
            Ok(first.saturating_mul(inner.saturating_add(1)))
        } else if field.selection_set.node.items.is_empty() {
            Ok(0)
        } else if matches!(name, "edges" | "node" | "nodes" | "pageInfo" | "me" | "freshness") {
            Ok(inner)
        } else {
            // One record (a single lookup or a to-one relation) and what hangs from it.
            Ok(inner.saturating_add(1))
        }
    }

    /// The `first` argument, from a literal or a variable, refused outside 1..=MAX_PAGE_SIZE.
    fn first(&self, field: &Field) -> Result<Option<u64>, Refusal> {
        let Some(value) = field.get_argument("first") else { return Ok(None) };
        // A variable left out takes the argument's default; async-graphql reports undeclared ones.
        let Ok(value) = value.node.clone().into_const_with(|name| self.variables.get(&name).cloned().ok_or(())) else {
            return Ok(None);
        };
        let n = match &value {
            Value::Null => return Ok(None),
            Value::Number(n) => n.as_i64(),
            _ => None,
        };
        match n {
            Some(n) if (1..=i64::from(MAX_PAGE_SIZE)).contains(&n) => Ok(Some(n as u64)),
            _ => Err(Refusal {
                code: "invalid_argument",
                message: format!("first must be an integer from 1 to {MAX_PAGE_SIZE}."),
            }),
        }
    }
}
