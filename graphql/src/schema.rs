//! The schema, generated from the record field table: one object type per resource, Relay-style
//! connections for the top-level lists, relations both ways, `me`.
//!
//! Every record object's parent value is the record's JSON (as REST renders it), so each API
//! shows the same values. Relations and single lookups go through one batcher per request,
//! whose batches become one SQL statement each.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_graphql::dynamic::{
    Enum, Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar, SchemaBuilder,
    TypeRef,
};
use async_graphql::{Error, ErrorExtensions, SelectionField, Value};
use clientapi_schema::model::Resource;
use clientapi_schema::read::{
    self, FieldKind, Filters, Link, ListQuery, MAX_PAGE_SIZE, RelatedKey, Sort, record_fields,
};

use crate::limits::{DEFAULT_FIRST, DEFAULT_NESTED_FIRST};
use clientapi_schema::write::{WriteKind, write_fields};

use crate::{RequestScope, WriteOp, camel, pascal};

/// Where `DateTime` is specified (introspection's `specifiedByURL`; the SDL's `@specifiedBy`).
pub const DATETIME_SPEC: &str = "https://datatracker.ietf.org/doc/html/rfc3339";

/// A record, or any other JSON-backed object: fields read their snake_case key. Records are
/// parsed straight from Postgres' JSON text into GraphQL values, so a field is a lookup.
type Json = Arc<Value>;

/// The value under `key` of an object.
fn get<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    match object {
        Value::Object(map) => map.get(key),
        _ => None,
    }
}

fn as_str(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

const MAX_IDS: usize = 1000;

/// A relation from one resource to another.
struct Relation {
    from: Resource,
    /// The field's name in the schema.
    field: &'static str,
    to: Resource,
    link: Link,
    /// For to-one relations: the parent's field holding the related id.
    via: Option<&'static str>,
}

/// Every relation: to-one from each reference field, to-many back along it.
fn relations() -> &'static [Relation] {
    static ALL: std::sync::OnceLock<Vec<Relation>> = std::sync::OnceLock::new();
    ALL.get_or_init(all_relations)
}

fn all_relations() -> Vec<Relation> {
    let mut all = Vec::new();
    for from in Resource::ALL {
        for f in record_fields(from, false) {
            if let FieldKind::Reference(to) = f.kind {
                let field = f.name.strip_suffix("_id").unwrap_or(f.name);
                all.push(Relation { from, field, to, link: Link::Id, via: Some(f.name) });
            }
        }
    }
    let many = [
        (Resource::Client, Resource::Site, Link::ClientId),
        (Resource::Site, Resource::Contact, Link::ClientId),
        (Resource::Site, Resource::Job, Link::ClientId),
        (Resource::Job, Resource::Visit, Link::JobId),
        (Resource::Client, Resource::Contact, Link::ClientId),
        (Resource::Client, Resource::Job, Link::ClientId),
        (Resource::Client, Resource::Invoice, Link::ClientId),
        (Resource::Job, Resource::LineItem, Link::JobId),
        (Resource::Job, Resource::Invoice, Link::JobId),
        (Resource::Job, Resource::Payment, Link::JobId),
        (Resource::Job, Resource::Attachment, Link::JobId),
        (Resource::Invoice, Resource::LineItem, Link::InvoiceId),
        (Resource::Invoice, Resource::Payment, Link::InvoiceId),
    ];
    for (from, to, link) in many {
        all.push(Relation { from, field: to.plural(), to, link, via: None });
    }
    all
}

fn type_name(resource: Resource) -> String {
    pascal(resource.singular())
}

fn coded(message: impl Into<String>, code: &'static str) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// Logs the cause and hides it from the caller.
fn internal(error: impl std::fmt::Display) -> Error {
    tracing::error!(error = %error, "GraphQL read failed");
    coded("Internal error; it has been logged.", "internal")
}

fn request_scope<'a>(ctx: &ResolverContext<'a>) -> Result<&'a Arc<RequestScope>, Error> {
    ctx.data::<Arc<RequestScope>>()
}

impl RequestScope {
    fn require_read(&self, resource: Resource) -> Result<(), Error> {
        if self.scope.readable.contains(&resource) {
            Ok(())
        } else {
            Err(coded(format!("This key lacks the {} scope.", resource.read_scope()), "missing_scope"))
        }
    }

    fn count(&self, n: usize) {
        self.items.fetch_add(n, Ordering::Relaxed);
    }
}

fn parse_record(text: &str) -> Result<Json, Error> {
    serde_json::from_str::<Value>(text).map(Arc::new).map_err(internal)
}

/// A field read from the parent's JSON under `key`.
fn json_field(name: impl Into<String>, key: &'static str, ty: TypeRef) -> Field {
    Field::new(name, ty, move |ctx| {
        let value = ctx.parent_value.downcast_ref::<Json>().and_then(|parent| get(parent, key));
        FieldFuture::from_value(value.filter(|v| !matches!(v, Value::Null)).cloned())
    })
}

/// Whether the records a field returns will be asked for `remoteData` (through `nodes` or
/// `edges.node` for connections).
fn wants_remote_data(ctx: &ResolverContext<'_>, connection: bool) -> bool {
    let look = ctx.look_ahead();
    if connection {
        look.field("nodes").field("remoteData").exists()
            || look.field("edges").field("node").field("remoteData").exists()
    } else {
        look.field("remoteData").exists()
    }
}

/// The records for `key`: prefetched with their level, or loaded in a batch now.
async fn load(ctx: &ResolverContext<'_>, key: RelatedKey) -> Result<Vec<Json>, Error> {
    let state = request_scope(ctx)?;
    state.require_read(key.resource)?;
    let cached = state.prefetched.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
    let records = match cached {
        Some(records) => records.to_vec(),
        None => {
            let rows = state.loader.load(key).await.map_err(|e| internal(&*e))?;
            rows.iter().map(|r| parse_record(r)).collect::<Result<_, _>>()?
        }
    };
    state.count(records.len());
    Ok(records)
}

/// The relations `selection` asks of `resource`'s records, with their arguments decided.
fn selected_relations<'a>(
    state: &RequestScope,
    resource: Resource,
    selection: &[SelectionField<'a>],
) -> Vec<(&'static Relation, u32, bool, Vec<SelectionField<'a>>)> {
    let mut out = Vec::new();
    for field in selection {
        let Some(relation) = relations().iter().find(|r| r.from == resource && camel(r.field) == field.name()) else {
            continue;
        };
        // What the resolver would refuse is left to it, to refuse with its message.
        if state.require_read(relation.to).is_err() {
            continue;
        }
        let limit = match field.arguments().ok().and_then(|args| args.into_iter().find(|(n, _)| n.as_str() == "first"))
        {
            None | Some((_, Value::Null)) => {
                if relation.via.is_some() {
                    1
                } else {
                    DEFAULT_NESTED_FIRST
                }
            }
            Some((_, Value::Number(n))) => match n.as_i64().map(page_size) {
                Some(Ok(n)) => n,
                _ => continue,
            },
            Some(_) => continue,
        };
        let sub: Vec<SelectionField<'a>> = field.selection_set().collect();
        let remote_data = sub.iter().any(|f| f.name() == "remoteData");
        out.push((relation, limit, remote_data, sub));
    }
    out
}

/// Loads, level by level, every relation `selection` will ask of `records` and of what they
/// relate to: one statement per nesting level, however many relations each level has. The
/// relation resolvers then find their records here (async-graphql's dynamic schema resolves an
/// object's fields one after another, so batching at resolve time would cost a statement per
/// relation, not per level).
async fn prefetch(
    state: &RequestScope,
    resource: Resource,
    records: Vec<Json>,
    selection: Vec<SelectionField<'_>>,
) -> Result<(), Error> {
    let mut level = vec![(resource, records, selection)];
    while !level.is_empty() {
        let mut wanted = Vec::new();
        let mut keys: Vec<RelatedKey> = Vec::new();
        for (resource, records, selection) in &level {
            for (relation, limit, include_remote_data, sub) in selected_relations(state, *resource, selection) {
                let via = relation.via.unwrap_or("id");
                let relation_keys: Vec<RelatedKey> = records
                    .iter()
                    .filter_map(|r| get(r, via).and_then(as_str))
                    .map(|value| RelatedKey {
                        resource: relation.to,
                        link: relation.link,
                        value: value.to_owned(),
                        limit,
                        include_remote_data,
                    })
                    .collect();
                keys.extend(relation_keys.iter().cloned());
                wanted.push((relation.to, relation_keys, sub));
            }
        }
        {
            let cache = state.prefetched.lock().unwrap_or_else(|e| e.into_inner());
            keys.retain(|k| !cache.contains_key(k));
        }
        keys.sort_by(|a, b| (a.resource, &a.value).cmp(&(b.resource, &b.value)));
        keys.dedup();
        if !keys.is_empty() {
            let mut found =
                read::load_related(&state.scope.reader, state.scope.company, &keys).await.map_err(internal)?;
            let mut parsed = Vec::with_capacity(keys.len());
            for key in keys {
                let rows = found.remove(&key).unwrap_or_default();
                let records: Vec<Json> = rows.iter().map(|r| parse_record(r)).collect::<Result<_, _>>()?;
                parsed.push((key, Arc::new(records)));
            }
            state.prefetched.lock().unwrap_or_else(|e| e.into_inner()).extend(parsed);
        }
        let cache = state.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        level = wanted
            .into_iter()
            .filter(|(_, _, sub)| !sub.is_empty())
            .map(|(to, keys, sub)| {
                let records: Vec<Json> =
                    keys.iter().filter_map(|k| cache.get(k)).flat_map(|r| r.iter().cloned()).collect();
                (to, records, sub)
            })
            .filter(|(_, records, _)| !records.is_empty())
            .collect();
    }
    Ok(())
}

fn records_value(records: Vec<Json>) -> FieldValue<'static> {
    FieldValue::list(records.into_iter().map(FieldValue::owned_any))
}

/// The object type of one resource: its fields, money as `Money`, and its relations.
fn record_object(resource: Resource) -> Object {
    let mut object = Object::new(type_name(resource))
        .description(format!("One {} from the provider, as mirrored.", resource.singular().replace('_', " ")));
    for f in record_fields(resource, true) {
        let key = f.name;
        let name = camel(key);
        object = object.field(match f.kind {
            FieldKind::Id => json_field(name, key, TypeRef::named_nn(TypeRef::ID)),
            FieldKind::Reference(_) => json_field(name, key, TypeRef::named(TypeRef::ID)),
            FieldKind::Text => json_field(name, key, TypeRef::named(TypeRef::STRING)),
            FieldKind::Integer => json_field(name, key, TypeRef::named(TypeRef::INT)),
            FieldKind::Boolean => json_field(name, key, TypeRef::named(TypeRef::BOOLEAN)),
            FieldKind::Decimal => json_field(name, key, TypeRef::named("Decimal")),
            FieldKind::Date => json_field(name, key, TypeRef::named("Date")),
            FieldKind::Timestamp => json_field(name, key, TypeRef::named("DateTime")),
            FieldKind::Json => json_field(name, key, TypeRef::named("JSON")).description(match key {
                "remote_data" => "The provider's own record, exactly as last fetched; only when selected.",
                "custom_fields" => "Custom field values by name (see the customFields lookup for their definitions).",
                "technician" => {
                    "The technician assigned ({id, name, email, phone}); null unless the key holds technicians:read."
                }
                "choices" => "The values a choice field allows, as an array; null for other types.",
                _ => "JSON.",
            }),
            FieldKind::Money => Field::new(name, TypeRef::named("Money"), move |ctx| {
                let money = ctx.parent_value.downcast_ref::<Json>().and_then(|record| {
                    let amount = get(record, key).filter(|v| !matches!(v, Value::Null))?.clone();
                    let currency = get(record, "currency").cloned().unwrap_or(Value::Null);
                    let mut money = async_graphql::indexmap::IndexMap::new();
                    money.insert(async_graphql::Name::new("amount"), amount);
                    money.insert(async_graphql::Name::new("currency"), currency);
                    Some(Arc::new(Value::Object(money)))
                });
                FieldFuture::Value(money.map(FieldValue::owned_any))
            }),
        });
    }
    for relation in relations().iter().filter(|r| r.from == resource) {
        object = object.field(relation_field(relation));
    }
    object
}

fn relation_field(relation: &Relation) -> Field {
    let (to, link) = (relation.to, relation.link);
    let about = match relation.field {
        "parent" => "The head-office client this site belongs to.".to_owned(),
        _ => format!("The {} this record belongs to.", to.singular().replace('_', " ")),
    };
    match relation.via {
        Some(via) => Field::new(camel(relation.field), TypeRef::named(type_name(to)), move |ctx| {
            FieldFuture::new(async move {
                let Some(id) = ctx.parent_value.downcast_ref::<Json>().and_then(|p| get(p, via)).and_then(as_str)
                else {
                    return Ok(None);
                };
                let key = RelatedKey {
                    resource: to,
                    link,
                    value: id.to_owned(),
                    limit: 1,
                    include_remote_data: wants_remote_data(&ctx, false),
                };
                Ok(load(&ctx, key).await?.into_iter().next().map(FieldValue::owned_any))
            })
        })
        .description(about),
        None => Field::new(camel(relation.field), TypeRef::named_nn_list_nn(type_name(to)), move |ctx| {
            FieldFuture::new(async move {
                let Some(id) = ctx.parent_value.downcast_ref::<Json>().and_then(|p| get(p, "id")).and_then(as_str)
                else {
                    return Ok(None);
                };
                let limit = match ctx.args.get("first") {
                    None => DEFAULT_NESTED_FIRST,
                    Some(v) => page_size(v.i64()?)?,
                };
                let key = RelatedKey {
                    resource: to,
                    link,
                    value: id.to_owned(),
                    limit,
                    include_remote_data: wants_remote_data(&ctx, false),
                };
                Ok(Some(records_value(load(&ctx, key).await?)))
            })
        })
        .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)).description(format!(
            "At most this many, in id order (default {DEFAULT_NESTED_FIRST}, at most {MAX_PAGE_SIZE})."
        )))
        .description(format!("This record's live {}, in id order.", to.plural().replace('_', " "))),
    }
}

fn page_size(n: i64) -> Result<u32, Error> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
        .ok_or_else(|| coded(format!("first must be an integer from 1 to {MAX_PAGE_SIZE}."), "invalid_argument"))
}

fn sort_enum(resource: Resource) -> Enum {
    let mut sort = Enum::new(format!("{}Sort", type_name(resource)))
        .description("Sort orders; every one ends with the id, so pages are stable.");
    for name in sort_names(resource) {
        sort = sort.item(name);
    }
    sort
}

fn sort_names(resource: Resource) -> Vec<&'static str> {
    let mut names = vec!["ID", "ID_DESC", "UPDATED_AT", "UPDATED_AT_DESC", "CREATED_AT", "CREATED_AT_DESC"];
    if read::has_number(resource) {
        names.extend(["NUMBER", "NUMBER_DESC"]);
    }
    names
}

/// `UPDATED_AT_DESC` is REST's `-updated_at`: one parser decides both.
fn parse_sort(name: &str, resource: Resource) -> Result<Sort, Error> {
    let rest = match name.strip_suffix("_DESC") {
        Some(key) => format!("-{}", key.to_lowercase()),
        None => name.to_lowercase(),
    };
    Sort::parse(&rest, resource)
        .filter(|_| sort_names(resource).contains(&name))
        .ok_or_else(|| invalid(format!("sort must be one of {}.", sort_names(resource).join(", "))))
}

/// The filter arguments a resource's list takes: REST's, in camelCase.
fn filter_arguments(resource: Resource) -> Vec<InputValue> {
    let time =
        |name: &str, about: &str| InputValue::new(name, TypeRef::named("DateTime")).description(about.to_owned());
    let mut args = vec![
        time("updatedSince", "Records updated at or after this time (RFC 3339 or YYYY-MM-DD)."),
        time("updatedBefore", "Records updated before this time."),
        time("createdSince", "Records created at or after this time."),
        InputValue::new("ids", TypeRef::named_nn_list(TypeRef::ID)).description("Only these ids (at most 1000)."),
        InputValue::new("includeDeleted", TypeRef::named(TypeRef::BOOLEAN))
            .description("Include tombstoned records (default false)."),
    ];
    if read::has_status(resource) {
        args.push(
            InputValue::new("status", TypeRef::named_nn_list(TypeRef::STRING)).description("Any of these statuses."),
        );
    }
    for (applies, name) in [
        (read::has_client_id(resource), "clientId"),
        (read::has_job_id(resource), "jobId"),
        (read::has_invoice_id(resource), "invoiceId"),
    ] {
        if applies {
            args.push(InputValue::new(name, TypeRef::named(TypeRef::ID)));
        }
    }
    args
}

/// A connection's arguments by name, constant (variables already substituted).
pub(crate) trait Arguments<'v> {
    fn arg(&self, name: &str) -> Option<&'v Value>;
}

impl<'v, F: Fn(&str) -> Option<&'v Value>> Arguments<'v> for F {
    fn arg(&self, name: &str) -> Option<&'v Value> {
        self(name).filter(|v| !matches!(v, Value::Null))
    }
}

fn invalid(message: String) -> Error {
    coded(message, "invalid_argument")
}

fn string_arg<'v>(args: &impl Arguments<'v>, name: &str) -> Result<Option<&'v str>, Error> {
    match args.arg(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(format!("{name} must be a string."))),
    }
}

fn string_list<'v>(args: &impl Arguments<'v>, name: &str, max: usize) -> Result<Option<Vec<String>>, Error> {
    let Some(value) = args.arg(name) else { return Ok(None) };
    let bad = || invalid(format!("{name} must list 1 to {max} values of 1 to 200 characters."));
    let Value::List(list) = value else { return Err(bad()) };
    let items: Vec<String> = list
        .iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() && s.len() <= 200 => Ok(s.clone()),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    if items.is_empty() || items.len() > max {
        return Err(bad());
    }
    Ok(Some(items))
}

fn filters<'v>(args: &impl Arguments<'v>) -> Result<Filters, Error> {
    let time = |name: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
        string_arg(args, name)?
            .map(|text| {
                read::parse_time(text)
                    .ok_or_else(|| invalid(format!("{name} must be an RFC 3339 timestamp or a YYYY-MM-DD date.")))
            })
            .transpose()
    };
    let id = |name: &str| -> Result<Option<String>, Error> {
        match string_arg(args, name)? {
            Some(id) if id.is_empty() || id.len() > 200 => Err(invalid(format!("{name} must be 1 to 200 characters."))),
            id => Ok(id.map(str::to_owned)),
        }
    };
    Ok(Filters {
        updated_since: time("updatedSince")?,
        updated_before: time("updatedBefore")?,
        created_since: time("createdSince")?,
        status: string_list(args, "status", 50)?,
        ids: string_list(args, "ids", MAX_IDS)?,
        client_id: id("clientId")?,
        job_id: id("jobId")?,
        invoice_id: id("invoiceId")?,
        include_deleted: match args.arg("includeDeleted") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(_) => return Err(invalid("includeDeleted must be a boolean.".into())),
        },
    })
}

/// A connection's arguments as a list query, and its `after` cursor (not yet verified): the
/// one reading of them, for the resolver and the direct path alike.
pub(crate) fn list_arguments<'v>(
    resource: Resource,
    args: &impl Arguments<'v>,
    include_remote_data: bool,
) -> Result<(ListQuery, Option<&'v str>), Error> {
    let page_size = match args.arg("first") {
        None => DEFAULT_FIRST,
        Some(Value::Number(n)) => page_size(n.as_i64().unwrap_or(0))?,
        Some(_) => page_size(0)?,
    };
    let sort = match args.arg("sort") {
        None => Sort::default(),
        // A literal is an enum; a variable's value arrives as a string.
        Some(Value::Enum(name)) => parse_sort(name, resource)?,
        Some(Value::String(name)) => parse_sort(name, resource)?,
        Some(_) => return Err(invalid("sort must be one of the sort enum's values.".into())),
    };
    let query = ListQuery { resource, filters: filters(args)?, sort, page_size, after: None, include_remote_data };
    Ok((query, string_arg(args, "after")?))
}

/// A page of a connection, with what is needed to sign its cursors and count its total.
struct Page {
    query: ListQuery,
    records: Vec<Json>,
    keys: Vec<(String, String)>,
    next: Option<(String, String)>,
}

struct Edge {
    page: Arc<Page>,
    index: usize,
}

fn connection_field(resource: Resource) -> Field {
    let mut field = Field::new(
        camel(resource.plural()),
        TypeRef::named_nn(format!("{}Connection", type_name(resource))),
        move |ctx| {
            FieldFuture::new(async move {
                let state = request_scope(&ctx)?;
                state.require_read(resource)?;
                let args = |name: &str| ctx.args.get(name).map(|v| v.as_value());
                let (mut query, after) = list_arguments(resource, &args, wants_remote_data(&ctx, true))?;
                if let Some(after) = after {
                    query.after = Some(
                        state
                            .scope
                            .cursors
                            .list_position(&state.scope.endpoint, &query, after)
                            .ok_or_else(invalid_cursor)?,
                    );
                }
                let page = read::list_page(&state.scope.reader, state.scope.company, &query).await.map_err(internal)?;
                let records: Vec<Json> = page.rows.iter().map(|r| parse_record(r)).collect::<Result<_, _>>()?;
                state.count(records.len());
                let mut selection = Vec::new();
                for field in ctx.ctx.field().selection_set() {
                    match field.name() {
                        "nodes" => selection.extend(field.selection_set()),
                        "edges" => {
                            for node in field.selection_set().filter(|f| f.name() == "node") {
                                selection.extend(node.selection_set());
                            }
                        }
                        _ => {}
                    }
                }
                prefetch(state, resource, records.clone(), selection).await?;
                Ok(Some(FieldValue::owned_any(Arc::new(Page { query, records, keys: page.keys, next: page.next }))))
            })
        },
    )
    .description(format!("The endpoint's {}, a page at a time.", resource.plural().replace('_', " ")))
    .argument(
        InputValue::new("first", TypeRef::named(TypeRef::INT))
            .description(format!("Page size (default {DEFAULT_FIRST}, at most {MAX_PAGE_SIZE}).")),
    )
    .argument(
        InputValue::new("after", TypeRef::named(TypeRef::STRING))
            .description("An endCursor or edge cursor, or a REST next_cursor for the same filters."),
    )
    .argument(InputValue::new("sort", TypeRef::named(format!("{}Sort", type_name(resource)))));
    for arg in filter_arguments(resource) {
        field = field.argument(arg);
    }
    field
}

pub(crate) fn invalid_cursor() -> Error {
    coded(
        "The cursor is not valid for this endpoint, resource, sort and filters; start again without it.",
        "invalid_cursor",
    )
}

fn page_of<'a>(ctx: &ResolverContext<'a>) -> Result<&'a Arc<Page>, Error> {
    ctx.parent_value.try_downcast_ref::<Arc<Page>>()
}

fn connection_types(resource: Resource) -> (Object, Object) {
    let name = type_name(resource);
    let connection = Object::new(format!("{name}Connection"))
        .field(Field::new("nodes", TypeRef::named_nn_list_nn(name.clone()), |ctx| {
            FieldFuture::new(async move {
                let page = page_of(&ctx)?;
                Ok(Some(FieldValue::list(page.records.iter().cloned().map(FieldValue::owned_any))))
            })
        }))
        .field(Field::new("edges", TypeRef::named_nn_list_nn(format!("{name}Edge")), |ctx| {
            FieldFuture::new(async move {
                let page = page_of(&ctx)?;
                let edges =
                    (0..page.records.len()).map(|index| FieldValue::owned_any(Edge { page: page.clone(), index }));
                Ok(Some(FieldValue::list(edges)))
            })
        }))
        .field(Field::new("pageInfo", TypeRef::named_nn("PageInfo"), |ctx| {
            FieldFuture::new(async move { Ok(Some(FieldValue::owned_any(page_of(&ctx)?.clone()))) })
        }))
        .field(
            Field::new("totalCount", TypeRef::named_nn(TypeRef::INT), |ctx| {
                FieldFuture::new(async move {
                    let page = page_of(&ctx)?;
                    let state = request_scope(&ctx)?;
                    let n =
                        read::count(&state.scope.reader, state.scope.company, &page.query).await.map_err(internal)?;
                    Ok(Some(Value::from(n)))
                })
            })
            .description("How many records the filters admit in all (one more SQL statement)."),
        );
    let edge = Object::new(format!("{name}Edge"))
        .field(Field::new("node", TypeRef::named_nn(name), |ctx| {
            let edge = ctx.parent_value.try_downcast_ref::<Edge>();
            FieldFuture::Value(edge.ok().map(|e| FieldValue::owned_any(e.page.records[e.index].clone())))
        }))
        .field(Field::new("cursor", TypeRef::named_nn(TypeRef::STRING), |ctx| {
            FieldFuture::new(async move {
                let edge = ctx.parent_value.try_downcast_ref::<Edge>()?;
                let state = request_scope(&ctx)?;
                let key = edge.page.keys[edge.index].clone();
                Ok(Some(Value::from(state.scope.cursors.list_cursor(&state.scope.endpoint, &edge.page.query, key))))
            })
        }));
    (connection, edge)
}

fn page_info() -> Object {
    Object::new("PageInfo")
        .field(Field::new("hasNextPage", TypeRef::named_nn(TypeRef::BOOLEAN), |ctx| {
            FieldFuture::new(async move { Ok(Some(Value::from(page_of(&ctx)?.next.is_some()))) })
        }))
        .field(Field::new("endCursor", TypeRef::named(TypeRef::STRING), |ctx| {
            FieldFuture::new(async move {
                let page = page_of(&ctx)?;
                let state = request_scope(&ctx)?;
                let Some(next) = page.next.clone() else { return Ok(None) };
                Ok(Some(Value::from(state.scope.cursors.list_cursor(&state.scope.endpoint, &page.query, next))))
            })
        }))
}

fn single_field(resource: Resource) -> Field {
    Field::new(camel(resource.singular()), TypeRef::named(type_name(resource)), move |ctx| {
        FieldFuture::new(async move {
            let id = ctx.args.try_get("id")?.string()?.to_owned();
            if id.is_empty() || id.len() > 200 {
                return Ok(None);
            }
            let key = RelatedKey {
                resource,
                link: Link::Id,
                value: id,
                limit: 1,
                include_remote_data: wants_remote_data(&ctx, false),
            };
            let Some(record) = load(&ctx, key).await?.into_iter().next() else { return Ok(None) };
            let state = request_scope(&ctx)?;
            prefetch(state, resource, vec![record.clone()], ctx.ctx.field().selection_set().collect()).await?;
            Ok(Some(FieldValue::owned_any(record)))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .description(format!(
        "One {} by id, tombstoned or not; null when missing (another company's records are missing).",
        resource.singular().replace('_', " ")
    ))
}

fn me_types() -> (Object, Object) {
    let me = Object::new("Me")
        .description("The endpoint this key belongs to, and how fresh its data is.")
        .field(json_field("id", "id", TypeRef::named_nn(TypeRef::ID)))
        .field(json_field("name", "name", TypeRef::named_nn(TypeRef::STRING)))
        .field(json_field("provider", "provider", TypeRef::named_nn(TypeRef::STRING)))
        .field(json_field("companyExternalId", "company_external_id", TypeRef::named_nn(TypeRef::ID)))
        .field(json_field("companyName", "company_name", TypeRef::named(TypeRef::STRING)))
        .field(json_field("access", "access", TypeRef::named_nn(TypeRef::STRING)))
        .field(json_field("scopes", "scopes", TypeRef::named_nn_list_nn(TypeRef::STRING)))
        .field(json_field("environment", "environment", TypeRef::named_nn(TypeRef::STRING)))
        .field(json_field("expiresAt", "expires_at", TypeRef::named("DateTime")))
        .field(json_field("keyExpiresAt", "key_expires_at", TypeRef::named("DateTime")))
        .field(Field::new("freshness", TypeRef::named_nn_list_nn("Freshness"), |ctx| {
            let list = match ctx.parent_value.downcast_ref::<Json>().and_then(|me| get(me, "freshness")) {
                Some(Value::List(items)) => items.clone(),
                _ => Vec::new(),
            };
            let items = list.into_iter().map(|v| FieldValue::owned_any(Arc::new(v)));
            FieldFuture::Value(Some(FieldValue::list(items)))
        }));
    let freshness = Object::new("Freshness")
        .field(json_field("resource", "resource", TypeRef::named_nn(TypeRef::STRING)))
        .field(json_field("syncedAt", "synced_at", TypeRef::named("DateTime")))
        .field(json_field("syncStatus", "sync_status", TypeRef::named_nn(TypeRef::STRING)));
    (me, freshness)
}

fn write_type(kind: WriteKind) -> &'static str {
    match kind {
        WriteKind::Text { .. } | WriteKind::Email | WriteKind::JobStatus | WriteKind::Base64 | WriteKind::MediaType => {
            TypeRef::STRING
        }
        WriteKind::Date => "Date",
        WriteKind::Decimal => "Decimal",
        WriteKind::Boolean => TypeRef::BOOLEAN,
        WriteKind::Reference(_) => TypeRef::ID,
        WriteKind::Timestamp => "DateTime",
        WriteKind::CustomFields => "JSON",
    }
}

/// `<Type>CreateInput` and `<Type>UpdateInput` from the write field table.
fn input_types(resource: Resource) -> (InputObject, InputObject) {
    let name = type_name(resource);
    let mut create = InputObject::new(format!("{name}CreateInput"));
    let mut update = InputObject::new(format!("{name}UpdateInput"))
        .description("Only the fields given change; null clears a field that may be empty.");
    for f in write_fields(resource) {
        let ty = write_type(f.kind);
        create = create
            .field(InputValue::new(camel(f.name), if f.required { TypeRef::named_nn(ty) } else { TypeRef::named(ty) }));
        if !f.create_only {
            update = update.field(InputValue::new(camel(f.name), TypeRef::named(ty)));
        }
    }
    (create, update)
}

/// The input object as unified write fields (snake_case), keeping explicit nulls.
fn input_fields(ctx: &ResolverContext<'_>) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    let input = ctx.args.try_get("input")?.object()?;
    let mut fields = serde_json::Map::new();
    for (name, value) in input.iter() {
        let json = value.as_value().clone().into_json().map_err(internal)?;
        fields.insert(snake(name.as_str()), json);
    }
    Ok(fields)
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn write_field(resource: Resource, verb: &'static str) -> Field {
    let name = format!("{verb}{}", type_name(resource));
    let mut field = Field::new(name, TypeRef::named_nn(type_name(resource)), move |ctx| {
        FieldFuture::new(async move {
            let state = request_scope(&ctx)?;
            let id = || -> Result<String, Error> { Ok(ctx.args.try_get("id")?.string()?.to_owned()) };
            let (op, fields) = match verb {
                "create" => (WriteOp::Create, input_fields(&ctx)?),
                "update" => (WriteOp::Update(id()?), input_fields(&ctx)?),
                _ => (WriteOp::Delete(id()?), serde_json::Map::new()),
            };
            let record = (state.scope.write)(resource, op, fields).await.map_err(|failure| {
                let fields: Vec<Value> = failure
                    .fields
                    .iter()
                    .map(|(field, message)| {
                        let mut error = async_graphql::indexmap::IndexMap::new();
                        error.insert(async_graphql::Name::new("field"), Value::from(camel(field)));
                        error.insert(async_graphql::Name::new("message"), Value::from(message.as_str()));
                        Value::Object(error)
                    })
                    .collect();
                Error::new(failure.message).extend_with(move |_, e| {
                    e.set("code", failure.code.as_str());
                    if !fields.is_empty() {
                        e.set("fields", Value::List(fields.clone()));
                    }
                })
            })?;
            state.count(1);
            Ok(Some(FieldValue::owned_any(parse_record(&record)?)))
        })
    });
    match verb {
        "create" => {
            field = field
                .argument(InputValue::new("input", TypeRef::named_nn(format!("{}CreateInput", type_name(resource)))))
                .description(format!(
                    "Creates a {} at the provider, under this endpoint's company, and returns it as mirrored.",
                    resource.singular().replace('_', " ")
                ));
        }
        "update" => {
            field = field
                .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
                .argument(InputValue::new("input", TypeRef::named_nn(format!("{}UpdateInput", type_name(resource)))))
                .description("Changes the given fields at the provider and returns the record as mirrored.");
        }
        _ => {
            field = field
                .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
                .description("Deletes at the provider (ServiceM8 soft-deletes) and returns the tombstoned record.");
        }
    }
    field
}

/// Mutations: the same writes as REST, on read-write endpoints.
fn mutation() -> (Object, Vec<async_graphql::dynamic::Type>) {
    let mut mutation = Object::new("Mutation");
    let mut types: Vec<async_graphql::dynamic::Type> = Vec::new();
    for resource in Resource::ALL.into_iter().filter(|r| !write_fields(*r).is_empty()) {
        let (create, update) = input_types(resource);
        types.extend([create.into(), update.into()]);
        mutation = mutation.field(write_field(resource, "create")).field(write_field(resource, "update"));
        if resource.is_deletable() {
            mutation = mutation.field(write_field(resource, "delete"));
        }
    }
    (mutation, types)
}

/// The whole schema, before limits.
pub(crate) fn build() -> SchemaBuilder {
    let mut query = Object::new("Query").field(
        Field::new("me", TypeRef::named_nn("Me"), |ctx| {
            FieldFuture::new(async move {
                let state = request_scope(&ctx)?;
                let me = (state.scope.me)().await.map_err(internal)?;
                Ok(Some(FieldValue::owned_any(Arc::new(Value::from_json(me).map_err(internal)?))))
            })
        })
        .description("The endpoint this key belongs to."),
    );
    let (me, freshness) = me_types();
    let money = Object::new("Money")
        .description("An amount in a currency.")
        .field(json_field("amount", "amount", TypeRef::named_nn("Decimal")))
        .field(json_field("currency", "currency", TypeRef::named_nn(TypeRef::STRING)));
    let mut builder_types: Vec<async_graphql::dynamic::Type> = vec![
        me.into(),
        freshness.into(),
        money.into(),
        page_info().into(),
        Scalar::new("DateTime")
            .description("An RFC 3339 timestamp; as an argument, a YYYY-MM-DD date also works.")
            .specified_by_url(DATETIME_SPEC)
            .validator(|v| matches!(v, Value::String(s) if read::parse_time(s.as_str()).is_some()))
            .into(),
        Scalar::new("Date").description("A calendar date, YYYY-MM-DD.").into(),
        Scalar::new("Decimal").description("An exact decimal number, as a string (\"220.00\").").into(),
        Scalar::new("JSON").description("Any JSON value.").into(),
    ];
    for resource in Resource::ALL {
        query = query.field(connection_field(resource)).field(single_field(resource));
        let (connection, edge) = connection_types(resource);
        builder_types.extend([
            record_object(resource).into(),
            connection.into(),
            edge.into(),
            sort_enum(resource).into(),
        ]);
    }
    let (mutation, inputs) = mutation();
    builder_types.extend(inputs);
    let mut builder =
        async_graphql::dynamic::Schema::build("Query", Some("Mutation"), None).register(query).register(mutation);
    for ty in builder_types {
        builder = builder.register(ty);
    }
    builder
}
