//! ServiceM8 records → the unified model. The quirks (PROVIDERS.md §1) are normalised here:
//! numbers as strings, booleans as 0/1 or "0"/"1", `0000-00-00 00:00:00` for "no date", soft
//! deletes through `active = 0`. A value that cannot be read is reported with the object, the
//! uuid and the field, and only that record is skipped.
//!
//! Datetimes carry no timezone (they are probably account-local: UNCONFIRMED); they are stored
//! as UTC wall-clock values unchanged, which keeps ordering and the sync watermark exact.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clientapi_schema::model::*;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::provider::RecordError;

pub const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// One provider object as it arrived: its fields' JSON, borrowed from the response body (read
/// only where a column needs them), and its whole text, which becomes the record's
/// `remote_data` unchanged. Nothing is built as a tree of values.
pub struct Object<'a> {
    text: &'a RawValue,
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// Reads the top level of one object; anything but an object is named by its kind.
    pub fn parse(text: &'a RawValue) -> Result<Self, &'static str> {
        match text.get().as_bytes().first() {
            Some(b'{') => {}
            _ => return Err(kind_of(text)),
        }
        let fields = serde_json::from_str::<TopLevel<'a>>(text.get()).map_err(|_| "malformed JSON")?.0;
        Ok(Self { text, fields })
    }

    /// The field's JSON, if present (the last of repeated keys, as a map would keep).
    pub fn get(&self, field: &str) -> Option<&'a RawValue> {
        self.fields.iter().rev().find(|(k, _)| k == field).map(|(_, v)| *v)
    }

    /// The field, when it is a JSON string.
    pub fn str(&self, field: &str) -> Option<Cow<'a, str>> {
        self.get(field).and_then(json_str)
    }
}

/// An object's top-level fields, keys and values borrowed where the JSON allows.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some(Key(key)) = map.next_key()? {
                    fields.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// A key, borrowed unless it holds an escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON string's text: borrowed when it holds no escape, decoded when it does.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// Whether JSON text escapes a NUL character (`\u0000`, not an escaped backslash before `u0000`).
fn holds_nul(json: &str) -> bool {
    json.match_indices("\\u0000").any(|(at, _)| json[..at].bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 0)
}

/// Reads typed values out of one raw ServiceM8 object, naming the field on failure.
pub struct Raw<'a, 'o> {
    object: &'static str,
    pub uuid: String,
    map: &'o Object<'a>,
}

impl<'a, 'o> Raw<'a, 'o> {
    pub fn new(object: &'static str, map: &'o Object<'a>) -> Result<Self, RecordError> {
        let uuid = match map.str("uuid") {
            Some(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                return Err(RecordError {
                    object: object.into(),
                    id: "?".into(),
                    field: "uuid".into(),
                    message: "missing or empty".into(),
                });
            }
        };
        // Postgres stores a NUL character neither in text nor in jsonb: such a record could
        // never be written, and would hold its whole page back.
        if holds_nul(map.text.get()) {
            return Err(RecordError {
                object: object.into(),
                id: uuid,
                field: "(record)".into(),
                message: "holds a \\u0000 (NUL) character, which Postgres cannot store".into(),
            });
        }
        Ok(Self { object, uuid, map })
    }

    fn err(&self, field: &str, message: impl Into<String>) -> RecordError {
        RecordError { object: self.object.into(), id: self.uuid.clone(), field: field.into(), message: message.into() }
    }

    /// A string, a number shown as a string, or `None` for missing/null/blank.
    pub fn text(&self, field: &str) -> Option<String> {
        let raw = self.map.get(field)?;
        match raw.get().as_bytes().first()? {
            b'"' => json_str(raw).filter(|s| !s.trim().is_empty()).map(Cow::into_owned),
            b'n' | b'{' | b'[' => None,
            // A number or a boolean: its JSON text is its text.
            _ => Some(raw.get().to_owned()),
        }
    }

    /// 0/1, "0"/"1", true/false; missing is false.
    pub fn flag(&self, field: &str) -> Result<bool, RecordError> {
        let Some(raw) = self.map.get(field) else { return Ok(false) };
        let value = match json_str(raw) {
            Some(text) => match text.trim() {
                "0" | "" | "false" => Some(false),
                "1" | "true" => Some(true),
                _ => None,
            },
            None => match raw.get() {
                "null" | "0" | "false" => Some(false),
                "1" | "true" => Some(true),
                _ => None,
            },
        };
        value.ok_or_else(|| self.err(field, format!("expected 0 or 1, got {raw}")))
    }

    /// Active unless the provider says `active = 0`.
    pub fn active(&self) -> Result<bool, RecordError> {
        if self.map.get("active").is_some() { self.flag("active") } else { Ok(true) }
    }

    /// A decimal from a string ("220.00") or a number; blank is `None`.
    pub fn decimal(&self, field: &str) -> Result<Option<Decimal>, RecordError> {
        let Some(text) = self.text(field) else { return Ok(None) };
        text.trim()
            .parse::<Decimal>()
            .or_else(|_| Decimal::from_scientific(text.trim()))
            .map(Some)
            .map_err(|_| self.err(field, format!("expected a decimal number, got {text:?}")))
    }

    pub fn integer(&self, field: &str) -> Result<Option<i64>, RecordError> {
        let Some(text) = self.text(field) else { return Ok(None) };
        text.trim().parse::<i64>().map(Some).map_err(|_| self.err(field, format!("expected an integer, got {text:?}")))
    }

    /// `YYYY-MM-DD HH:MM:SS` (or a bare date); the all-zero "no date" is `None`.
    pub fn datetime(&self, field: &str) -> Result<Option<DateTime<Utc>>, RecordError> {
        let Some(text) = self.text(field) else { return Ok(None) };
        parse_datetime(&text)
            .map_err(|BadDatetime| self.err(field, format!("expected YYYY-MM-DD HH:MM:SS, got {text:?}")))
    }

    pub fn date(&self, field: &str) -> Result<Option<NaiveDate>, RecordError> {
        Ok(self.datetime(field)?.map(|d| d.date_naive()))
    }
}

/// Parses a ServiceM8 datetime; `Ok(None)` for the all-zero placeholder.
pub fn parse_datetime(text: &str) -> Result<Option<DateTime<Utc>>, BadDatetime> {
    let text = text.trim();
    if text.is_empty() || text.starts_with("0000-00-00") {
        return Ok(None);
    }
    if let Some(dt) = datetime_value(text) {
        return Ok(Some(dt.and_utc()));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Some(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()));
    }
    Err(BadDatetime)
}

/// `YYYY-MM-DD HH:MM:SS`, read by hand when it is exactly that (the library's format-driven
/// parser was a tenth of the sync's own CPU at a million records), by the library else.
pub fn datetime_value(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    let fixed = b.len() == 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':';
    let digits = |at: usize, len: usize| {
        b[at..at + len].iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let quick = || {
        NaiveDate::from_ymd_opt(digits(0, 4)? as i32, digits(5, 2)?, digits(8, 2)?)?.and_hms_opt(
            digits(11, 2)?,
            digits(14, 2)?,
            digits(17, 2)?,
        )
    };
    fixed.then(quick).flatten().or_else(|| NaiveDateTime::parse_from_str(text, DATETIME_FORMAT).ok())
}

/// A ServiceM8 datetime in neither of its two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDatetime;

fn kind_of(v: &RawValue) -> &'static str {
    match v.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// The record, with the object's text as its raw payload.
fn record(raw: &Raw<'_, '_>, owner: Owner, fields: Fields) -> Result<Record, RecordError> {
    let edited = raw.datetime("edit_date")?;
    Ok(Record {
        external_id: raw.uuid.clone(),
        owner,
        created_at: None,
        remote_updated_at: edited,
        deleted: !raw.active()?,
        fields,
        remote_data: RawJson::from(raw.map.text),
    })
}

fn owner_company(id: Option<String>) -> Owner {
    id.map_or(Owner::Unowned, Owner::Company)
}

/// `company` → client, and its site. A site (a company with a head office) is a client too,
/// lives in its head office's scope, and is also a site; a head office yields a site
/// tombstone, which the mirror ignores unless the company was a site before.
pub fn client(object: &Object<'_>) -> Result<Vec<Record>, RecordError> {
    let raw = Raw::new("company", object)?;
    let parent = raw.text("parent_company_uuid");
    let owner = Owner::Company(parent.clone().unwrap_or_else(|| raw.uuid.clone()));
    let name = raw.text("name").unwrap_or_default();
    let address = raw.text("address");
    let fields = ClientFields {
        name: name.clone(),
        is_individual: raw.flag("is_individual")?,
        address: address.clone(),
        billing_address: raw.text("billing_address"),
        website: raw.text("website"),
        parent_id: parent.clone(),
    };
    let client = record(&raw, owner, Fields::Client(fields))?;
    let site = Record {
        deleted: client.deleted || parent.is_none(),
        fields: Fields::Site(SiteFields { client_id: parent, name, address }),
        ..client.clone()
    };
    Ok(vec![client, site])
}

/// `companycontact` → contact.
pub fn contact(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("companycontact", object)?;
    let client_id = raw.text("company_uuid");
    let fields = ContactFields {
        client_id: client_id.clone(),
        first_name: raw.text("first"),
        last_name: raw.text("last"),
        email: raw.text("email"),
        phone: raw.text("phone"),
        mobile: raw.text("mobile"),
        kind: raw.text("type"),
        is_primary: raw.flag("is_primary_contact")?,
    };
    record(&raw, owner_company(client_id), Fields::Contact(fields))
}

/// `job` → the job, and its invoice (ServiceM8 has no invoice object: an invoiced job is one).
/// A job that is not (or no longer) invoiced yields an invoice tombstone, which the mirror
/// ignores when it never had that invoice.
pub fn job(object: &Object<'_>, currency: &str) -> Result<Vec<Record>, RecordError> {
    let raw = Raw::new("job", object)?;
    let client_id = raw.text("company_uuid");
    let total = raw.decimal("total_invoice_amount")?;
    let number = raw.integer("generated_job_id")?;
    let custom_fields = custom_field_values(object);
    let job = record(
        &raw,
        owner_company(client_id.clone()),
        Fields::Job(JobFields {
            client_id: client_id.clone(),
            number,
            status: raw.text("status").unwrap_or_default(),
            description: raw.text("job_description"),
            address: raw.text("job_address"),
            purchase_order: raw.text("purchase_order_number"),
            scheduled_on: raw.date("date")?,
            completed_at: raw.datetime("completion_date")?,
            total,
            currency: currency.to_owned(),
            job_type_id: raw.text("category_uuid"),
            custom_fields,
        }),
    )?;
    let sent = raw.flag("invoice_sent")?;
    let paid = raw.flag("payment_received")?;
    let invoice = Record {
        external_id: raw.uuid.clone(),
        owner: job.owner.clone(),
        created_at: None,
        remote_updated_at: job.remote_updated_at,
        deleted: job.deleted || !(sent || paid),
        fields: Fields::Invoice(InvoiceFields {
            client_id,
            job_id: Some(raw.uuid.clone()),
            number,
            status: if paid {
                "paid"
            } else if sent {
                "awaiting_payment"
            } else {
                "draft"
            }
            .into(),
            issued_at: raw.datetime("invoice_sent_stamp")?,
            paid_at: raw.datetime("payment_received_stamp")?,
            total,
            currency: currency.to_owned(),
        }),
        remote_data: job.remote_data.clone(),
    };
    Ok(vec![job, invoice])
}

/// `jobmaterial` → line item (on the job, and on the job's invoice).
pub fn line_item(object: &Object<'_>, currency: &str) -> Result<Record, RecordError> {
    let raw = Raw::new("jobmaterial", object)?;
    let job_id = raw.text("job_uuid");
    let quantity = raw.decimal("quantity")?.unwrap_or_default();
    let unit_price = raw.decimal("price")?;
    let total = match raw.decimal("displayed_amount")? {
        Some(amount) => Some(amount),
        None => unit_price.map(|p| (p * quantity).round_dp(2)),
    };
    let fields = LineItemFields {
        job_id: job_id.clone(),
        invoice_id: job_id.clone(),
        name: raw.text("name").unwrap_or_default(),
        quantity,
        unit_price,
        total,
        currency: currency.to_owned(),
    };
    record(&raw, job_id.map_or(Owner::Unowned, Owner::Job), Fields::LineItem(fields))
}

/// `jobpayment` → payment (against the job's invoice).
pub fn payment(object: &Object<'_>, currency: &str) -> Result<Record, RecordError> {
    let raw = Raw::new("jobpayment", object)?;
    let job_id = raw.text("job_uuid");
    let paid_at = raw.datetime("timestamp")?;
    let fields = PaymentFields {
        job_id: job_id.clone(),
        invoice_id: job_id.clone(),
        amount: raw.decimal("amount")?.unwrap_or_default(),
        method: raw.text("method"),
        paid_at,
        note: raw.text("note"),
        is_deposit: raw.flag("is_deposit")?,
        currency: currency.to_owned(),
    };
    let mut rec = record(&raw, job_id.map_or(Owner::Unowned, Owner::Job), Fields::Payment(fields))?;
    rec.created_at = paid_at;
    Ok(rec)
}

/// `attachment` → attachment. Only attachments on jobs are scoped to a company.
pub fn attachment(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("attachment", object)?;
    let related = raw.text("related_object").map(|s| s.to_lowercase());
    let related_id = raw.text("related_object_uuid");
    let job_id = if related.as_deref() == Some("job") { related_id.clone() } else { None };
    let fields = AttachmentFields {
        job_id: job_id.clone(),
        related_object: related,
        related_object_id: related_id,
        name: raw.text("attachment_name").unwrap_or_default(),
        file_type: raw.text("file_type"),
        source: raw.text("attachment_source"),
    };
    let mut rec = record(&raw, job_id.map_or(Owner::Unowned, Owner::Job), Fields::Attachment(fields))?;
    rec.created_at = raw.datetime("timestamp")?;
    Ok(rec)
}

/// A job's `customfield_<name>` fields as a JSON object of name → value (strings as sent; a
/// blank value is no value). `None` when the job carries none.
fn custom_field_values(object: &Object<'_>) -> Option<String> {
    let mut values = serde_json::Map::new();
    for (key, value) in &object.fields {
        let Some(name) = key.strip_prefix(CUSTOM_FIELD_PREFIX).filter(|n| !n.is_empty()) else { continue };
        let value: serde_json::Value = match json_str(value) {
            Some(text) if text.trim().is_empty() => continue,
            Some(text) => serde_json::Value::String(text.into_owned()),
            None => match serde_json::from_str(value.get()) {
                Ok(serde_json::Value::Null) | Err(_) => continue,
                Ok(other) => other,
            },
        };
        values.insert(name.to_owned(), value);
    }
    (!values.is_empty()).then(|| serde_json::Value::Object(values).to_string())
}

/// How ServiceM8 names a custom field on a job.
pub const CUSTOM_FIELD_PREFIX: &str = "customfield_";

/// `jobactivity` → visit: a booking (`activity_was_scheduled`) or time recorded on site.
pub fn visit(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("jobactivity", object)?;
    let job_id = raw.text("job_uuid");
    let status = if raw.flag("activity_was_recorded")? { "recorded" } else { "scheduled" };
    let fields = VisitFields {
        job_id: job_id.clone(),
        staff_id: raw.text("staff_uuid"),
        start_at: raw.datetime("start_date")?,
        end_at: raw.datetime("end_date")?,
        status: status.into(),
    };
    record(&raw, job_id.map_or(Owner::Unowned, Owner::Job), Fields::Visit(fields))
}

/// `staff` → staff (account-wide). ServiceM8 keeps one number per person, the mobile.
pub fn staff(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("staff", object)?;
    let fields = StaffFields {
        first_name: raw.text("first"),
        last_name: raw.text("last"),
        email: raw.text("email"),
        phone: raw.text("mobile"),
        job_title: raw.text("job_title"),
        active: raw.active()?,
    };
    let mut rec = record(&raw, Owner::Account, Fields::Staff(fields))?;
    // A staff member who left stays listed, inactive: jobs and visits still name them.
    rec.deleted = false;
    Ok(rec)
}

/// `category` → job type (account-wide).
pub fn job_type(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("category", object)?;
    let fields = JobTypeFields { name: raw.text("name").unwrap_or_default(), colour: raw.text("colour") };
    record(&raw, Owner::Account, Fields::JobType(fields))
}

/// `taxrate` → tax rate (account-wide); `amount` is a percent string.
pub fn tax_rate(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("taxrate", object)?;
    let fields = TaxRateFields {
        name: raw.text("name").unwrap_or_default(),
        rate: raw.decimal("amount")?,
        is_default: raw.flag("is_default_tax_rate")?,
    };
    record(&raw, Owner::Account, Fields::TaxRate(fields))
}

/// `material` → material, the price list line items draw on (account-wide).
pub fn material(object: &Object<'_>, currency: &str) -> Result<Record, RecordError> {
    let raw = Raw::new("material", object)?;
    let fields = MaterialFields {
        name: raw.text("name").unwrap_or_default(),
        item_number: raw.text("item_number"),
        price: raw.decimal("price")?,
        tax_rate_id: raw.text("tax_rate_uuid"),
        currency: currency.to_owned(),
    };
    record(&raw, Owner::Account, Fields::Material(fields))
}

/// A custom field definition (account-wide), from the Custom Fields API (`customfield`; its
/// shape is UNCONFIRMED in PROVIDERS.md: `name` is the key on the job without its prefix,
/// either form accepted; `type` Text, Numeric, Currency, Date, DateTime or Dropdown with
/// `options` as an array or a `;`-joined string).
pub fn custom_field(object: &Object<'_>) -> Result<Record, RecordError> {
    let raw = Raw::new("customfield", object)?;
    let key = raw.text("field_name").or_else(|| raw.text("name")).unwrap_or_default();
    let name = key.strip_prefix(CUSTOM_FIELD_PREFIX).unwrap_or(&key).to_owned();
    let field_type = match raw.text("type").unwrap_or_default().to_lowercase().as_str() {
        "numeric" | "number" => "numeric",
        "currency" => "currency",
        "date" => "date",
        "datetime" | "date_time" => "datetime",
        "dropdown" | "choice" | "select" => "choice",
        _ => "text",
    };
    let choices = match object.get("options") {
        Some(raw_options) if raw_options.get().starts_with('[') => {
            serde_json::from_str::<Vec<serde_json::Value>>(raw_options.get())
                .map_err(|_| raw.err("options", "expected an array of values"))?
                .into_iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
        _ => raw
            .text("options")
            .map(|s| s.split(';').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect())
            .unwrap_or_default(),
    };
    let fields = CustomFieldFields {
        name,
        label: raw.text("label"),
        field_type: field_type.into(),
        choices: (field_type == "choice").then(|| serde_json::Value::from(choices).to_string()),
    };
    record(&raw, Owner::Account, Fields::CustomField(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Maps `value` as the adapter would, from its JSON text.
    fn from_text<T>(text: &str, map: impl FnOnce(&Object<'_>) -> T) -> T {
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        map(&Object::parse(raw).unwrap())
    }

    fn from_json<T>(value: serde_json::Value, map: impl FnOnce(&Object<'_>) -> T) -> T {
        from_text(&value.to_string(), map)
    }

    #[test]
    fn the_documented_job_fixture_maps_with_its_quirks_normalised() {
        let records = from_text(include_str!("../../../fixtures/servicem8/job.json"), |o| job(o, "AUD")).unwrap();
        let Fields::Job(j) = &records[0].fields else { panic!() };
        assert_eq!((j.number, j.total.map(|t| t.to_string())), (Some(1042), Some("110.55".into())));
        assert_eq!((j.scheduled_on, j.completed_at, j.purchase_order.as_deref()), (None, None, None));
        assert!(records[1].deleted, "not invoiced: no invoice");
    }

    #[test]
    fn a_job_with_string_numbers_zero_dates_and_string_flags_maps_cleanly() {
        let value = json!({"uuid":"6f0c","active":"1","edit_date":"2026-03-01 12:00:00","status":"Work Order",
            "generated_job_id":"1042","company_uuid":"9a1b","date":"2026-02-27","job_description":"Fix tap",
            "invoice_sent":0,"invoice_sent_stamp":"0000-00-00 00:00:00","total_invoice_amount":"220.00",
            "payment_received":0, "completion_date":"0000-00-00 00:00:00"});
        let records = from_json(value, |o| job(o, "AUD")).unwrap();
        let Fields::Job(j) = &records[0].fields else { panic!() };
        assert_eq!(j.number, Some(1042));
        assert_eq!(j.total, Some(Decimal::new(22000, 2)));
        assert_eq!(j.completed_at, None);
        assert_eq!(j.scheduled_on, NaiveDate::from_ymd_opt(2026, 2, 27));
        assert_eq!(records[0].owner, Owner::Company("9a1b".into()));
        assert!(!records[0].deleted);
        assert!(records[1].deleted, "a job never invoiced yields an invoice tombstone");
    }

    #[test]
    fn an_invoiced_paid_job_yields_a_paid_invoice_and_active_0_is_a_tombstone() {
        let value = json!({"uuid":"j1","active":0,"edit_date":"2026-03-01 12:00:00","status":"Completed",
            "company_uuid":"c1","invoice_sent":"1","invoice_sent_stamp":"2026-03-02 09:00:00",
            "payment_received":1,"payment_received_stamp":"2026-03-03 10:00:00","total_invoice_amount":"10"});
        let records = from_json(value, |o| job(o, "AUD")).unwrap();
        assert!(records[0].deleted);
        let Fields::Invoice(inv) = &records[1].fields else { panic!() };
        assert_eq!(inv.status, "paid");
        assert!(records[1].deleted, "a soft-deleted job takes its invoice with it");
    }

    #[test]
    fn a_bad_field_names_the_object_uuid_and_field() {
        let value = json!({"uuid":"m1","job_uuid":"j1","name":"Pipe","quantity":"two","price":"3.50"});
        let err = from_json(value, |o| line_item(o, "AUD")).unwrap_err();
        assert_eq!((err.object.as_str(), err.id.as_str(), err.field.as_str()), ("jobmaterial", "m1", "quantity"));
        let err = from_json(json!({"uuid":"x","is_primary_contact":"maybe"}), contact).unwrap_err();
        assert_eq!(err.field, "is_primary_contact");
        let err = from_json(json!({"name":"no uuid"}), client).unwrap_err();
        assert_eq!(err.field, "uuid");
    }

    #[test]
    fn line_item_totals_fall_back_to_quantity_times_price() {
        let value = json!({"uuid":"m1","job_uuid":"j1","name":"Pipe","quantity":"2","price":"3.505"});
        let Fields::LineItem(li) = from_json(value, |o| line_item(o, "AUD")).unwrap().fields else { panic!() };
        assert_eq!(li.total, Some(Decimal::new(701, 2)));
        assert_eq!(li.invoice_id.as_deref(), Some("j1"));
    }

    #[test]
    fn a_site_belongs_to_its_head_office_scope() {
        let recs = from_json(json!({"uuid":"site","name":"Depot","parent_company_uuid":"hq"}), client).unwrap();
        assert_eq!(recs[0].owner, Owner::Company("hq".into()));
        assert_eq!((recs[1].resource(), recs[1].deleted, &recs[1].owner), (Resource::Site, false, &recs[0].owner));
        let Fields::Site(site) = &recs[1].fields else { panic!() };
        assert_eq!((site.client_id.as_deref(), site.name.as_str()), (Some("hq"), "Depot"));
        let recs = from_json(json!({"uuid":"hq","name":"HQ","parent_company_uuid":""}), client).unwrap();
        assert_eq!(recs[0].owner, Owner::Company("hq".into()));
        assert!(recs[1].deleted, "a head office is no site");
    }

    #[test]
    fn visits_staff_and_lookups_read_servicem8_quirks() {
        let value = json!({"uuid":"a1","active":"1","job_uuid":"j1","staff_uuid":"s1","start_date":"2026-03-02 08:00:00",
            "end_date":"0000-00-00 00:00:00","activity_was_scheduled":"1","activity_was_recorded":0,"edit_date":""});
        let rec = from_json(value, visit).unwrap();
        assert_eq!(rec.owner, Owner::Job("j1".into()));
        let Fields::Visit(v) = rec.fields else { panic!() };
        assert_eq!((v.status.as_str(), v.end_at, v.staff_id.as_deref()), ("scheduled", None, Some("s1")));
        let rec = from_json(json!({"uuid":"s1","active":0,"first":"Sam","last":"Ng","mobile":"0400"}), staff).unwrap();
        assert_eq!(
            (rec.owner.clone(), rec.deleted),
            (Owner::Account, false),
            "a staff member who left stays, inactive"
        );
        let Fields::Staff(s) = rec.fields else { panic!() };
        assert_eq!((s.active, s.phone.as_deref()), (false, Some("0400")));
        let rec =
            from_json(json!({"uuid":"t1","name":"GST","amount":"10","is_default_tax_rate":"1"}), tax_rate).unwrap();
        let Fields::TaxRate(t) = rec.fields else { panic!() };
        assert_eq!((t.rate, t.is_default), (Some(Decimal::new(10, 0)), true));
        let err = from_json(json!({"uuid":"t2","amount":"ten"}), tax_rate).unwrap_err();
        assert_eq!(err.field, "amount");
        let rec =
            from_json(json!({"uuid":"f1","name":"customfield_gate","type":"Dropdown","options":"A; B;"}), custom_field)
                .unwrap();
        let Fields::CustomField(f) = rec.fields else { panic!() };
        assert_eq!(
            (f.name.as_str(), f.field_type.as_str(), f.choices.as_deref()),
            ("gate", "choice", Some(r#"["A","B"]"#))
        );
        let jobs = from_json(
            json!({"uuid":"j","company_uuid":"c","category_uuid":"k1","customfield_gate":"12","customfield_note":"",
                   "customfield_count":3,"customfield_":"x"}),
            |o| job(o, "AUD"),
        )
        .unwrap();
        let Fields::Job(j) = &jobs[0].fields else { panic!() };
        assert_eq!(j.job_type_id.as_deref(), Some("k1"));
        assert_eq!(j.custom_fields.as_deref(), Some(r#"{"count":3,"gate":"12"}"#));
    }

    #[test]
    fn a_record_holding_a_nul_is_reported_not_written() {
        let err = from_text(r#"{"uuid":"n1","job_uuid":"j1","name":"a\u0000b"}"#, |o| line_item(o, "AUD")).unwrap_err();
        assert_eq!((err.id.as_str(), err.field.as_str()), ("n1", "(record)"));
        // An escaped backslash before "u0000" is no NUL.
        let ok = from_text(r#"{"uuid":"n2","job_uuid":"j1","name":"a\\u0000b"}"#, |o| line_item(o, "AUD")).unwrap();
        let Fields::LineItem(li) = ok.fields else { panic!() };
        assert_eq!(li.name, "a\\u0000b");
        assert!(holds_nul(r#""\\\u0000""#) && !holds_nul(r#""\\\\u0000""#));
    }

    #[test]
    fn datetimes_read_by_hand_read_as_the_library_reads_them() {
        for text in [
            "2026-03-01 12:00:00",
            "1999-12-31 23:59:59",
            "2024-02-29 00:00:00",
            "2023-02-29 00:00:00",
            "2026-13-01 00:00:00",
            "2026-03-01 24:00:00",
            "2026-03-01 12:00:60",
            "2026-03-01T12:00:00",
            "2026-03-01 12:00",
            "2026-3-01 12:00:00",
            "+026-03-01 12:00:00",
            "2026-03-01 12:00:0x",
            "0000-00-00 00:00:00",
        ] {
            assert_eq!(datetime_value(text), NaiveDateTime::parse_from_str(text, DATETIME_FORMAT).ok(), "{text}");
        }
    }

    #[test]
    fn the_payload_is_kept_as_sent_and_fields_read_through_escapes_numbers_and_repeats() {
        let text = r#"{ "uuid" : " m1 ", "job_uuid": "j\u0031", "name": "Pipe \"15mm\"\n\tcopper",
            "quantity": 2, "price": 3.50, "displayed_amount": null, "active": true,
            "note": {"nested": [1, 2]}, "name": "Pipe \"15mm\"\n\tcopper" }"#;
        let record = from_text(text, |o| line_item(o, "AUD")).unwrap();
        assert_eq!(record.remote_data.get(), text, "the object's text, whitespace and escapes as sent");
        assert_eq!(record.external_id, "m1");
        assert_eq!(record.owner, Owner::Job("j1".into()), "an escaped string is decoded");
        let Fields::LineItem(li) = record.fields else { panic!() };
        assert_eq!(li.name, "Pipe \"15mm\"\n\tcopper");
        assert_eq!(li.quantity, Decimal::new(2, 0));
        assert_eq!(li.unit_price, Some(Decimal::new(350, 2)), "a JSON number keeps its digits");
        assert_eq!(li.total, Some(Decimal::new(700, 2)), "null falls back to quantity × price");
        assert!(!record.deleted);

        let err = from_text(r#"{"uuid":"m2","job_uuid":"j1","active":"maybe"}"#, |o| line_item(o, "AUD")).unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), ("active", "expected 0 or 1, got \"maybe\""));
        for (text, kind) in [("[1]", "an array"), ("\"x\"", "a string"), ("12", "a number"), ("null", "null")] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            assert_eq!(Object::parse(raw).err(), Some(kind));
        }
    }
}
