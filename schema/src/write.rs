//! What a customer may write, in the unified model's names, and the validation every write
//! passes before any provider is called (DESIGN.md §5). REST bodies and GraphQL inputs are both
//! checked here; provider adapters map the cleaned fields to their own.

use serde_json::{Map, Value};

use crate::model::Resource;
use crate::read::record_fields;

/// The most bytes an attachment upload may carry (decoded).
pub const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Text {
        max: usize,
    },
    Email,
    /// YYYY-MM-DD.
    Date,
    /// A non-negative decimal, as a string or a number.
    Decimal,
    Boolean,
    /// Another record's id; it must be in the endpoint's scope (checked by the caller).
    Reference(Resource),
    /// One of the provider's job statuses.
    JobStatus,
    /// File content, base64.
    Base64,
    /// A media type, `type/subtype` (no parameters).
    MediaType,
    /// An RFC 3339 time; cleaned to UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    Timestamp,
    /// Custom field values by name: an object, checked against the definitions by the caller.
    CustomFields,
}

/// What a media type looks like: two RFC 9110 tokens around a slash.
pub const MEDIA_TYPE_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,60}/[!#$%&'*+.^_`|~0-9A-Za-z-]{1,60}$";

fn media_type(s: &str) -> bool {
    let token = |t: &str| {
        (1..=60).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
    };
    s.split_once('/').is_some_and(|(kind, sub)| token(kind) && token(sub))
}

#[derive(Debug, Clone, Copy)]
pub struct WriteField {
    pub name: &'static str,
    pub kind: WriteKind,
    /// Must be given on create.
    pub required: bool,
    /// May only be given on create (it says where the record lives).
    pub create_only: bool,
}

const fn field(name: &'static str, kind: WriteKind) -> WriteField {
    WriteField { name, kind, required: false, create_only: false }
}

const fn required(name: &'static str, kind: WriteKind) -> WriteField {
    WriteField { name, kind, required: true, create_only: false }
}

const fn placed(name: &'static str, kind: WriteKind, required: bool) -> WriteField {
    WriteField { name, kind, required, create_only: true }
}

const TEXT_SHORT: WriteKind = WriteKind::Text { max: 100 };
const TEXT_NAME: WriteKind = WriteKind::Text { max: 200 };
const TEXT_ADDRESS: WriteKind = WriteKind::Text { max: 500 };

use WriteKind::*;

const JOB: &[WriteField] = &[
    required("status", JobStatus),
    field("description", Text { max: 4000 }),
    field("address", TEXT_ADDRESS),
    field("purchase_order", TEXT_SHORT),
    field("scheduled_on", Date),
    field("client_id", Reference(Resource::Client)),
    field("site_id", Reference(Resource::Site)),
    field("job_type_id", Reference(Resource::JobType)),
    field("custom_fields", CustomFields),
    // The preferred window: creates the job's first visit.
    placed("start_time", Timestamp, false),
    placed("end_time", Timestamp, false),
];
const SITE: &[WriteField] = &[required("name", TEXT_NAME), field("address", TEXT_ADDRESS)];
const VISIT: &[WriteField] = &[
    placed("job_id", Reference(Resource::Job), true),
    field("staff_id", Reference(Resource::Staff)),
    required("start_at", Timestamp),
    required("end_at", Timestamp),
];
const CONTACT: &[WriteField] = &[
    field("client_id", Reference(Resource::Client)),
    field("first_name", TEXT_SHORT),
    field("last_name", TEXT_SHORT),
    field("email", Email),
    field("phone", Text { max: 50 }),
    field("mobile", Text { max: 50 }),
    field("kind", Text { max: 50 }),
    field("is_primary", Boolean),
];
const LINE_ITEM: &[WriteField] = &[
    placed("job_id", Reference(Resource::Job), true),
    required("name", TEXT_NAME),
    required("quantity", Decimal),
    field("unit_price", Decimal),
];
const CLIENT: &[WriteField] = &[
    required("name", TEXT_NAME),
    field("address", TEXT_ADDRESS),
    field("billing_address", TEXT_ADDRESS),
    field("website", Text { max: 300 }),
];
const ATTACHMENT: &[WriteField] = &[
    placed("job_id", Reference(Resource::Job), true),
    required("name", TEXT_NAME),
    placed("content_type", MediaType, false),
    placed("content_base64", Base64, true),
];

/// The fields a customer may set on `resource`; empty when it is not writable.
pub fn write_fields(resource: Resource) -> &'static [WriteField] {
    match resource {
        Resource::Job => JOB,
        Resource::Contact => CONTACT,
        Resource::LineItem => LINE_ITEM,
        Resource::Client => CLIENT,
        Resource::Attachment => ATTACHMENT,
        Resource::Site => SITE,
        Resource::Visit => VISIT,
        _ => &[],
    }
}

/// How a cleaned timestamp reads: UTC, to the second.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// The most custom fields one write may set.
pub const MAX_CUSTOM_FIELDS: usize = 50;

/// Checks custom field values against the definitions (`name → (type, allowed values)`) and
/// cleans them: every value a string as the provider stores it, or null to clear it.
pub fn validate_custom_fields(
    values: &Map<String, Value>,
    definitions: &std::collections::HashMap<String, (String, Vec<String>)>,
) -> Result<Map<String, Value>, Vec<Invalid>> {
    let mut errors = Vec::new();
    let mut clean = Map::new();
    for (name, value) in values {
        let field = format!("custom_fields.{name}");
        let Some((kind, choices)) = definitions.get(name) else {
            errors.push(invalid(&field, "no such custom field (see GET /custom_fields)"));
            continue;
        };
        if value.is_null() {
            clean.insert(name.clone(), Value::Null);
            continue;
        }
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let cleaned = match (kind.as_str(), text) {
            (_, None) => Err("must be a string or a number".to_owned()),
            ("numeric" | "currency", Some(t)) => t
                .parse::<rust_decimal::Decimal>()
                .map(|d| d.normalize().to_string())
                .map_err(|_| "must be a number".to_owned()),
            ("date", Some(t)) => crate::read::parse_date(&t)
                .map(|d| d.to_string())
                .ok_or_else(|| "must be a date, YYYY-MM-DD".to_owned()),
            ("datetime", Some(t)) => chrono::DateTime::parse_from_rfc3339(&t)
                .map(|d| d.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string())
                .map_err(|_| "must be an RFC 3339 time".to_owned()),
            ("choice", Some(t)) if choices.contains(&t) => Ok(t),
            ("choice", Some(_)) => Err(format!("must be one of: {}", choices.join(", "))),
            (_, Some(t)) if t.chars().count() > 500 => Err("at most 500 characters".to_owned()),
            (_, Some(t)) if t.chars().any(|c| c.is_control() && !TEXT_CONTROLS_ALLOWED.contains(c)) => {
                Err("control characters are not allowed".to_owned())
            }
            (_, Some(t)) => Ok(t),
        };
        match cleaned {
            Ok(v) => {
                clean.insert(name.clone(), Value::String(v));
            }
            Err(message) => errors.push(invalid(&field, message)),
        }
    }
    if errors.is_empty() { Ok(clean) } else { Err(errors) }
}

/// The control characters text fields may hold (line breaks and tabs); all others are refused.
pub const TEXT_CONTROLS_ALLOWED: &str = "\n\r\t";

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid { field: field.chars().take(100).collect(), message: message.into() }
}

fn plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
}

/// A decimal string (`12.5`: up to 12 digits, a point and up to 4 more) or a whole JSON number;
/// a fractional JSON number is refused, since a float cannot carry money exactly.
fn decimal(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
            let digits = |t: &str, max: usize| (1..=max).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit());
            let d: rust_decimal::Decimal = s.parse().ok()?;
            (digits(whole, 12) && digits(fraction, 4)).then(|| d.normalize().to_string())
        }
        Value::Number(n) => n.as_u64().filter(|n| *n < DECIMAL_LIMIT).map(|n| n.to_string()),
        _ => None,
    }
}

/// Decimals written are below this (12 digits before the point).
pub const DECIMAL_LIMIT: u64 = 1_000_000_000_000;
/// What a decimal string looks like, as the OpenAPI document states it.
pub const DECIMAL_PATTERN: &str = "^[0-9]{1,12}(\\.[0-9]{1,4})?$";

/// Checks a create (`create`) or update body against `resource`'s write fields and returns
/// the cleaned fields, or every problem at once: unknown fields, fields nobody may set (ids,
/// company, computed totals), missing required fields, wrong types, lengths, dates, statuses.
pub fn validate(
    resource: Resource,
    body: &Map<String, Value>,
    create: bool,
    job_statuses: &[&str],
) -> Result<Map<String, Value>, Vec<Invalid>> {
    let fields = write_fields(resource);
    let readable: Vec<&str> = record_fields(resource, true).iter().map(|f| f.name).collect();
    let mut errors = Vec::new();
    let mut clean = Map::new();
    for (name, value) in body {
        let Some(spec) = fields.iter().find(|f| f.name == name) else {
            if readable.contains(&name.as_str()) || matches!(name.as_str(), "company_id" | "company_external_id") {
                errors.push(invalid(name, "cannot be set: the provider or this service decides it"));
            } else {
                errors.push(invalid(name, "unknown field"));
            }
            continue;
        };
        if spec.create_only && !create {
            errors.push(invalid(name, "can only be given when the record is created"));
            continue;
        }
        if value.is_null() {
            if spec.required {
                errors.push(invalid(name, "is required and cannot be null"));
            } else if let WriteKind::Reference(to) = spec.kind {
                // A record without its parent would land outside every company.
                errors.push(invalid(
                    name,
                    format!("cannot be null: give the id of one of your {}", to.plural().replace('_', " ")),
                ));
            } else {
                clean.insert(name.clone(), Value::Null);
            }
            continue;
        }
        let cleaned = match spec.kind {
            WriteKind::Text { max } => match value.as_str() {
                Some(s) if s.chars().count() > max => Err(format!("at most {max} characters")),
                Some(s) if s.chars().any(|c| c.is_control() && !TEXT_CONTROLS_ALLOWED.contains(c)) => {
                    Err("control characters are not allowed".to_owned())
                }
                Some(s) if spec.required && s.trim().is_empty() => Err("cannot be empty".to_owned()),
                Some(s) => Ok(Value::String(s.to_owned())),
                None => Err("must be a string".to_owned()),
            },
            WriteKind::Email => match value.as_str() {
                Some(s) if s.chars().count() <= 254 && plausible_email(s) => Ok(Value::String(s.to_owned())),
                _ => Err("must be an email address".to_owned()),
            },
            WriteKind::Date => match value.as_str().and_then(crate::read::parse_date) {
                Some(d) => Ok(Value::String(d.format("%Y-%m-%d").to_string())),
                _ => Err("must be a date, YYYY-MM-DD".to_owned()),
            },
            WriteKind::Decimal => match decimal(value) {
                Some(d) => Ok(Value::String(d)),
                None => Err(
                    "must be a non-negative decimal below 10^12 with at most 4 decimal places, as a string (\"12.50\") or a whole number"
                        .to_owned(),
                ),
            },
            WriteKind::MediaType => match value.as_str() {
                Some(s) if media_type(s) => Ok(Value::String(s.to_owned())),
                _ => Err("must be a media type such as application/pdf".to_owned()),
            },
            WriteKind::Boolean => match value {
                Value::Bool(b) => Ok(Value::Bool(*b)),
                _ => Err("must be true or false".to_owned()),
            },
            WriteKind::Reference(to) => match value.as_str() {
                Some(s) if !s.is_empty() && s.chars().count() <= 200 && !s.chars().any(char::is_control) => {
                    Ok(Value::String(s.to_owned()))
                }
                _ => Err(format!("must be the id of one of your {}", to.plural().replace('_', " "))),
            },
            WriteKind::Timestamp => match value.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
                Some(t) => Ok(Value::String(t.with_timezone(&chrono::Utc).format(TIMESTAMP_FORMAT).to_string())),
                None => Err("must be an RFC 3339 time, such as 2026-03-02T08:00:00Z".to_owned()),
            },
            WriteKind::CustomFields => match value {
                Value::Object(values) if values.len() <= MAX_CUSTOM_FIELDS => Ok(value.clone()),
                Value::Object(_) => Err(format!("at most {MAX_CUSTOM_FIELDS} custom fields")),
                _ => Err("must be an object of custom field name → value".to_owned()),
            },
            WriteKind::JobStatus => match value.as_str() {
                Some(s) if job_statuses.contains(&s) => Ok(Value::String(s.to_owned())),
                _ => Err(format!("must be one of: {}", job_statuses.join(", "))),
            },
            WriteKind::Base64 => {
                use base64::Engine;
                match value.as_str().map(|s| base64::engine::general_purpose::STANDARD.decode(s)) {
                    Some(Ok(bytes)) if bytes.len() <= MAX_UPLOAD_BYTES => {
                        Ok(Value::String(value.as_str().unwrap_or_default().to_owned()))
                    }
                    Some(Ok(_)) => Err(format!("at most {} MiB once decoded", MAX_UPLOAD_BYTES / 1024 / 1024)),
                    _ => Err("must be base64 (RFC 4648, with padding)".to_owned()),
                }
            }
        };
        match cleaned {
            Ok(v) => {
                clean.insert(name.clone(), v);
            }
            Err(message) => errors.push(invalid(name, message)),
        }
    }
    if create {
        for spec in fields.iter().filter(|f| f.required) {
            if !body.contains_key(spec.name) {
                errors.push(invalid(spec.name, "is required"));
            }
        }
        if resource == Resource::Job && clean.contains_key("start_time") != clean.contains_key("end_time") {
            errors.push(invalid("end_time", "a window needs both start_time and end_time"));
        }
        if resource == Resource::Contact
            && !["first_name", "last_name", "email"].iter().any(|f| clean.get(*f).is_some_and(|v| !v.is_null()))
        {
            errors.push(invalid("first_name", "a contact needs a first name, a last name or an email"));
        }
    } else if body.is_empty() {
        errors.push(invalid("body", "an update needs at least one field"));
    }
    // A window ends after it starts (the times are cleaned to one format, so they compare as text).
    for (start, end) in [("start_time", "end_time"), ("start_at", "end_at")] {
        if let (Some(Value::String(s)), Some(Value::String(e))) = (clean.get(start), clean.get(end))
            && e <= s
        {
            errors.push(invalid(end, format!("must be after {start}")));
        }
    }
    if errors.is_empty() { Ok(clean) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const STATUSES: &[&str] = &["Quote", "Work Order"];

    fn errors(resource: Resource, body: Value, create: bool) -> Vec<String> {
        match validate(resource, body.as_object().unwrap(), create, STATUSES) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|i| i.field).collect(),
        }
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let bad = json!({"status": "Nope", "scheduled_on": "2026-13-01", "description": 5, "id": "x", "total": "1",
                         "colour": "red", "purchase_order": "p".repeat(101)});
        let mut got = errors(Resource::Job, bad, true);
        got.sort();
        assert_eq!(got, ["colour", "description", "id", "purchase_order", "scheduled_on", "status", "total"]);
        assert_eq!(errors(Resource::Job, json!({}), true), ["status"]);
        assert_eq!(errors(Resource::Job, json!({}), false), ["body"]);
        assert!(errors(Resource::Job, json!({"status": "Quote", "scheduled_on": "2026-02-28"}), true).is_empty());
    }

    #[test]
    fn kinds_are_checked_and_cleaned() {
        let ok = validate(
            Resource::LineItem,
            json!({"job_id": "j1", "name": "Tap", "quantity": 2, "unit_price": "10.50"}).as_object().unwrap(),
            true,
            STATUSES,
        )
        .unwrap();
        assert_eq!(ok["quantity"], "2");
        assert_eq!(ok["unit_price"], "10.5");
        assert_eq!(
            errors(Resource::LineItem, json!({"job_id": "j1", "name": "x", "quantity": "-1"}), true),
            ["quantity"]
        );
        assert_eq!(errors(Resource::LineItem, json!({"job_id": "j2"}), false), ["job_id"]);
        assert_eq!(errors(Resource::Contact, json!({"email": "not-an-email"}), true), ["email", "first_name"]);
        assert_eq!(errors(Resource::Contact, json!({"is_primary": "yes", "last_name": "Li"}), true), ["is_primary"]);
        assert_eq!(
            errors(Resource::Attachment, json!({"job_id": "j", "name": "a.txt", "content_base64": "!!"}), true),
            ["content_base64"]
        );
        assert_eq!(errors(Resource::Payment, json!({"amount": "1"}), true), ["amount"]);
    }
}
