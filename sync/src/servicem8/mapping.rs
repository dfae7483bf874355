//! ServiceM8 records → the unified model. The quirks (PROVIDERS.md §1) are normalised here:
//! numbers as strings, booleans as 0/1 or "0"/"1", `0000-00-00 00:00:00` for "no date", soft
//! deletes through `active = 0`. A value that cannot be read is reported with the object, the
//! uuid and the field, and only that record is skipped.
//!
//! Datetimes carry no timezone (they are probably account-local: UNCONFIRMED); they are stored
//! as UTC wall-clock values unchanged, which keeps ordering and the sync watermark exact.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clientapi_schema::model::*;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::provider::RecordError;

pub const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Reads typed values out of one raw ServiceM8 object, naming the field on failure.
pub struct Raw<'a> {
    object: &'static str,
    pub uuid: String,
    map: &'a Map<String, Value>,
}

impl<'a> Raw<'a> {
    pub fn new(object: &'static str, value: &'a Value) -> Result<Self, RecordError> {
        let map = value.as_object().ok_or_else(|| RecordError {
            object: object.into(),
            id: "?".into(),
            field: "(record)".into(),
            message: format!("expected a JSON object, got {}", kind_of(value)),
        })?;
        let uuid = match map.get("uuid") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                return Err(RecordError {
                    object: object.into(),
                    id: "?".into(),
                    field: "uuid".into(),
                    message: "missing or empty".into(),
                });
            }
        };
        Ok(Self { object, uuid, map })
    }

    fn err(&self, field: &str, message: impl Into<String>) -> RecordError {
        RecordError { object: self.object.into(), id: self.uuid.clone(), field: field.into(), message: message.into() }
    }

    /// A string, a number shown as a string, or `None` for missing/null/blank.
    pub fn text(&self, field: &str) -> Option<String> {
        match self.map.get(field)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// 0/1, "0"/"1", true/false; missing is false.
    pub fn flag(&self, field: &str) -> Result<bool, RecordError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
            Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
            Some(Value::String(s)) if matches!(s.trim(), "0" | "" | "false") => Ok(false),
            Some(Value::String(s)) if matches!(s.trim(), "1" | "true") => Ok(true),
            Some(other) => Err(self.err(field, format!("expected 0 or 1, got {other}"))),
        }
    }

    /// Active unless the provider says `active = 0`.
    pub fn active(&self) -> Result<bool, RecordError> {
        if self.map.contains_key("active") { self.flag("active") } else { Ok(true) }
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
    if let Ok(dt) = NaiveDateTime::parse_from_str(text, DATETIME_FORMAT) {
        return Ok(Some(dt.and_utc()));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Some(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()));
    }
    Err(BadDatetime)
}

/// A ServiceM8 datetime in neither of its two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDatetime;

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The record, its raw payload still to be moved in (see [`with_raw`]).
fn record(raw: &Raw<'_>, owner: Owner, fields: Fields) -> Result<Record, RecordError> {
    let edited = raw.datetime("edit_date")?;
    Ok(Record {
        external_id: raw.uuid.clone(),
        owner,
        created_at: None,
        remote_updated_at: edited,
        deleted: !raw.active()?,
        fields,
        remote_data: Value::Null,
    })
}

/// The provider's object becomes the record's raw payload: moved, not copied (copying every
/// object's map was about 5% of the sync process's CPU in a profile of the 1M-record ingest).
fn with_raw(record: Record, value: Value) -> Record {
    Record { remote_data: value, ..record }
}

fn owner_company(id: Option<String>) -> Owner {
    id.map_or(Owner::Unowned, Owner::Company)
}

/// `company` → client. A site (with a head office) lives in its head office's scope.
pub fn client(value: Value) -> Result<Record, RecordError> {
    let raw = Raw::new("company", &value)?;
    let parent = raw.text("parent_company_uuid");
    let owner = Owner::Company(parent.clone().unwrap_or_else(|| raw.uuid.clone()));
    let fields = ClientFields {
        name: raw.text("name").unwrap_or_default(),
        is_individual: raw.flag("is_individual")?,
        address: raw.text("address"),
        billing_address: raw.text("billing_address"),
        website: raw.text("website"),
        parent_id: parent,
    };
    Ok(with_raw(record(&raw, owner, Fields::Client(fields))?, value))
}

/// `companycontact` → contact.
pub fn contact(value: Value) -> Result<Record, RecordError> {
    let raw = Raw::new("companycontact", &value)?;
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
    Ok(with_raw(record(&raw, owner_company(client_id), Fields::Contact(fields))?, value))
}

/// `job` → the job, and its invoice (ServiceM8 has no invoice object: an invoiced job is one).
/// A job that is not (or no longer) invoiced yields an invoice tombstone, which the mirror
/// ignores when it never had that invoice.
pub fn job(value: Value, currency: &str) -> Result<Vec<Record>, RecordError> {
    let raw = Raw::new("job", &value)?;
    let client_id = raw.text("company_uuid");
    let total = raw.decimal("total_invoice_amount")?;
    let number = raw.integer("generated_job_id")?;
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
        remote_data: value.clone(),
    };
    Ok(vec![with_raw(job, value), invoice])
}

/// `jobmaterial` → line item (on the job, and on the job's invoice).
pub fn line_item(value: Value, currency: &str) -> Result<Record, RecordError> {
    let raw = Raw::new("jobmaterial", &value)?;
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
    Ok(with_raw(record(&raw, job_id.map_or(Owner::Unowned, Owner::Job), Fields::LineItem(fields))?, value))
}

/// `jobpayment` → payment (against the job's invoice).
pub fn payment(value: Value, currency: &str) -> Result<Record, RecordError> {
    let raw = Raw::new("jobpayment", &value)?;
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
    Ok(with_raw(rec, value))
}

/// `attachment` → attachment. Only attachments on jobs are scoped to a company.
pub fn attachment(value: Value) -> Result<Record, RecordError> {
    let raw = Raw::new("attachment", &value)?;
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
    Ok(with_raw(rec, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_with_string_numbers_zero_dates_and_string_flags_maps_cleanly() {
        let value = json!({"uuid":"6f0c","active":"1","edit_date":"2026-03-01 12:00:00","status":"Work Order",
            "generated_job_id":"1042","company_uuid":"9a1b","date":"2026-02-27","job_description":"Fix tap",
            "invoice_sent":0,"invoice_sent_stamp":"0000-00-00 00:00:00","total_invoice_amount":"220.00",
            "payment_received":0, "completion_date":"0000-00-00 00:00:00"});
        let records = job(value.clone(), "AUD").unwrap();
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
        let records = job(value.clone(), "AUD").unwrap();
        assert!(records[0].deleted);
        let Fields::Invoice(inv) = &records[1].fields else { panic!() };
        assert_eq!(inv.status, "paid");
        assert!(records[1].deleted, "a soft-deleted job takes its invoice with it");
    }

    #[test]
    fn a_bad_field_names_the_object_uuid_and_field() {
        let value = json!({"uuid":"m1","job_uuid":"j1","name":"Pipe","quantity":"two","price":"3.50"});
        let err = line_item(value.clone(), "AUD").unwrap_err();
        assert_eq!((err.object.as_str(), err.id.as_str(), err.field.as_str()), ("jobmaterial", "m1", "quantity"));
        let err = contact(json!({"uuid":"x","is_primary_contact":"maybe"})).unwrap_err();
        assert_eq!(err.field, "is_primary_contact");
        let err = client(json!({"name":"no uuid"})).unwrap_err();
        assert_eq!(err.field, "uuid");
    }

    #[test]
    fn line_item_totals_fall_back_to_quantity_times_price() {
        let value = json!({"uuid":"m1","job_uuid":"j1","name":"Pipe","quantity":"2","price":"3.505"});
        let Fields::LineItem(li) = line_item(value.clone(), "AUD").unwrap().fields else { panic!() };
        assert_eq!(li.total, Some(Decimal::new(701, 2)));
        assert_eq!(li.invoice_id.as_deref(), Some("j1"));
    }

    #[test]
    fn a_site_belongs_to_its_head_office_scope() {
        let rec = client(json!({"uuid":"site","name":"Depot","parent_company_uuid":"hq"})).unwrap();
        assert_eq!(rec.owner, Owner::Company("hq".into()));
        let rec = client(json!({"uuid":"hq","name":"HQ","parent_company_uuid":""})).unwrap();
        assert_eq!(rec.owner, Owner::Company("hq".into()));
    }
}
