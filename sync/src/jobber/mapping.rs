//! Jobber GraphQL nodes → unified records (PROVIDERS.md §2, "Types"). Each node is read from its
//! JSON text as it arrived: Jobber sends money as JSON floats, and a float's digits are turned
//! into a decimal exactly once, here, from the text (never through an `f64`).
//!
//! - A `Client` yields the client, its person as the client's primary contact (the same id: a
//!   Jobber client is a person or company with emails and phones, not a list of contacts), and
//!   each of its `properties` as a site. An archived client is a tombstone.
//! - A `Job` yields the job, its `lineItems` and its `visits`, owned by the job's client directly
//!   (a Jobber job never changes client, and its children come on the same page as the job,
//!   before the mirror knows the job).
//! - An `Invoice` yields the invoice and its `paymentRecords`.
//!
//! Statuses map to the unified values (see [`job_status`], [`invoice_status`]); the provider's own
//! value stays in `remote_data`.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use clientapi_schema::model::*;
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::provider::RecordError;

/// The watermark format: UTC, to the second, so the engine's `greatest()` over strings is a
/// comparison of instants.
pub const WATERMARK_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// One JSON object, its fields borrowed from the text.
pub struct Obj<'a> {
    pub text: &'a RawValue,
    map: HashMap<&'a str, &'a RawValue>,
}

impl<'a> Obj<'a> {
    pub fn parse(text: &'a RawValue) -> Result<Self, String> {
        let map: HashMap<&'a str, &'a RawValue> =
            serde_json::from_str(text.get()).map_err(|e| format!("not a JSON object: {e}"))?;
        Ok(Self { text, map })
    }

    /// A field that is present and not null.
    pub fn get(&self, field: &str) -> Option<&'a RawValue> {
        self.map.get(field).copied().filter(|v| v.get() != "null")
    }

    pub fn str(&self, field: &str) -> Option<String> {
        serde_json::from_str::<String>(self.get(field)?.get()).ok().filter(|s| !s.is_empty())
    }

    pub fn obj(&self, field: &str) -> Option<Obj<'a>> {
        Obj::parse(self.get(field)?).ok()
    }

    /// The objects of a plain list field, or of a connection's `nodes`.
    pub fn items(&self, field: &str) -> Vec<&'a RawValue> {
        let Some(raw) = self.get(field) else { return Vec::new() };
        if raw.get().trim_start().starts_with('[') {
            return serde_json::from_str(raw.get()).unwrap_or_default();
        }
        Obj::parse(raw).ok().map(|c| c.items("nodes")).unwrap_or_default()
    }

    /// A connection field's `pageInfo`: (hasNextPage, endCursor).
    pub fn page_info(&self, field: &str) -> (bool, Option<String>) {
        let info = self.obj(field).and_then(|c| c.obj("pageInfo"));
        match info {
            Some(info) => (info.get("hasNextPage").is_some_and(|v| v.get() == "true"), info.str("endCursor")),
            None => (false, None),
        }
    }
}

/// Reads the fields of one node, naming the node in every error.
pub struct Node<'o, 'a> {
    object: &'static str,
    pub id: String,
    pub map: &'o Obj<'a>,
}

impl<'o, 'a> Node<'o, 'a> {
    pub fn new(object: &'static str, map: &'o Obj<'a>) -> Result<Self, RecordError> {
        let id = map.str("id").ok_or_else(|| RecordError {
            object: object.into(),
            id: String::new(),
            field: "id".into(),
            message: "missing".into(),
        })?;
        Ok(Self { object, id, map })
    }

    fn err(&self, field: &str, message: impl Into<String>) -> RecordError {
        RecordError { object: self.object.into(), id: self.id.clone(), field: field.into(), message: message.into() }
    }

    pub fn text(&self, field: &str) -> Option<String> {
        self.map.str(field)
    }

    pub fn flag(&self, field: &str) -> Result<bool, RecordError> {
        match self.map.get(field).map(RawValue::get) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(self.err(field, format!("expected a boolean, got {other}"))),
        }
    }

    /// A JSON number's digits as a decimal, exactly.
    pub fn decimal(&self, field: &str) -> Result<Option<Decimal>, RecordError> {
        let Some(raw) = self.map.get(field) else { return Ok(None) };
        decimal_text(raw.get()).map_err(|m| self.err(field, m))
    }

    pub fn integer(&self, field: &str) -> Result<Option<i64>, RecordError> {
        let Some(raw) = self.map.get(field) else { return Ok(None) };
        match raw.get() {
            "null" => Ok(None),
            text => text.parse().map(Some).map_err(|_| self.err(field, format!("expected an integer, got {text}"))),
        }
    }

    pub fn datetime(&self, field: &str) -> Result<Option<DateTime<Utc>>, RecordError> {
        let Some(text) = self.text(field) else { return Ok(None) };
        parse_datetime(&text).map(Some).ok_or_else(|| self.err(field, format!("not an ISO 8601 time: {text}")))
    }

    /// The id of a referenced object (`client { id }`).
    pub fn reference(&self, field: &str) -> Option<String> {
        self.map.obj(field).and_then(|o| o.str("id"))
    }
}

/// A JSON number (or a numeric string) as a decimal, from its digits.
pub fn decimal_text(text: &str) -> Result<Option<Decimal>, String> {
    let text = text.trim();
    if text == "null" {
        return Ok(None);
    }
    let digits = text.trim_matches('"');
    Decimal::from_str_exact(digits)
        .or_else(|_| Decimal::from_scientific(digits))
        .or_else(|_| Decimal::from_str(digits))
        .map(|d| Some(d.normalize()))
        .map_err(|_| format!("expected a number, got {text}"))
}

/// An `ISO8601DateTime` (any offset), or a bare date at midnight UTC.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|d| d.and_time(Default::default()).and_utc()))
}

/// A node's `updatedAt` as a watermark.
pub fn watermark(node: &Obj<'_>) -> Option<String> {
    node.str("updatedAt").and_then(|t| parse_datetime(&t)).map(|t| t.format(WATERMARK_FORMAT).to_string())
}

/// One line of an `Address` object: street, city, province, postcode, country.
fn address(node: &Obj<'_>, field: &str) -> Option<String> {
    let a = node.obj(field)?;
    let parts: Vec<String> =
        ["street1", "street2", "city", "province", "postalCode", "country"].iter().filter_map(|f| a.str(f)).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn record(node: &Node<'_, '_>, text: &RawValue, owner: Owner, fields: Fields) -> Result<Record, RecordError> {
    Ok(Record {
        external_id: node.id.clone(),
        owner,
        created_at: node.datetime("createdAt")?,
        remote_updated_at: node.datetime("updatedAt")?,
        deleted: false,
        fields,
        remote_data: RawJson::from(text),
    })
}

/// The unified job status of a Jobber `jobStatus`: a job that needs invoicing or is archived is
/// `Completed`; every other state (`active`, `late`, `today`, `upcoming`, `action_required`,
/// `on_hold`, `unscheduled`) is a `Work Order`.
pub fn job_status(jobber: &str) -> &'static str {
    match jobber.to_ascii_lowercase().as_str() {
        "requires_invoicing" | "archived" => "Completed",
        _ => "Work Order",
    }
}

/// The unified invoice status of a Jobber `invoiceStatus`: `draft`, `paid`, and
/// `awaiting_payment` for everything still owed (`awaiting_payment`, `past_due`, `bad_debt`).
pub fn invoice_status(jobber: &str) -> &'static str {
    match jobber.to_ascii_lowercase().as_str() {
        "draft" => "draft",
        "paid" => "paid",
        _ => "awaiting_payment",
    }
}

/// `Client` → the client, its primary contact, and its properties as sites.
pub fn client(map: &Obj<'_>) -> Result<Vec<Record>, RecordError> {
    let node = Node::new("Client", map)?;
    let archived = node.flag("isArchived")?;
    let is_company = node.flag("isCompany")?;
    let person = [node.text("firstName"), node.text("lastName")].into_iter().flatten().collect::<Vec<_>>().join(" ");
    let name = node.text("name").or_else(|| if is_company { node.text("companyName") } else { None }).unwrap_or(person);
    let billing = address(map, "billingAddress");
    let mut client = record(
        &node,
        map.text,
        Owner::Company(node.id.clone()),
        Fields::Client(ClientFields {
            name: name.clone(),
            is_individual: !is_company,
            address: billing.clone(),
            billing_address: billing,
            website: None,
            parent_id: None,
        }),
    )?;
    client.deleted = archived;
    let pick = |list: &str, key: &str, want: &dyn Fn(&Obj<'_>) -> bool| {
        let items: Vec<Obj<'_>> = map.items(list).into_iter().filter_map(|r| Obj::parse(r).ok()).collect();
        let chosen = items
            .iter()
            .filter(|o| want(o))
            .find(|o| o.get("primary").is_some_and(|v| v.get() == "true"))
            .or_else(|| items.iter().find(|o| want(o)));
        chosen.and_then(|o| o.str(key))
    };
    let mobile = |o: &Obj<'_>| o.str("description").is_some_and(|d| d.eq_ignore_ascii_case("mobile"));
    let contact = Record {
        fields: Fields::Contact(ContactFields {
            client_id: Some(node.id.clone()),
            first_name: node.text("firstName"),
            last_name: node.text("lastName"),
            email: pick("emails", "address", &|_| true),
            phone: pick("phones", "number", &|o| !mobile(o)),
            mobile: pick("phones", "number", &mobile),
            kind: node.text("title"),
            is_primary: true,
        }),
        ..client.clone()
    };
    let mut out = vec![client, contact];
    for raw in map.items("properties") {
        let property = Obj::parse(raw).map_err(|m| node.err("properties", m))?;
        let site = Node::new("Property", &property)?;
        let place = address(&property, "address");
        out.push(Record {
            external_id: site.id.clone(),
            owner: Owner::Company(node.id.clone()),
            created_at: out[0].created_at,
            remote_updated_at: out[0].remote_updated_at,
            deleted: archived,
            fields: Fields::Site(SiteFields {
                client_id: Some(node.id.clone()),
                name: property.obj("address").and_then(|a| a.str("street1")).or(place.clone()).unwrap_or_default(),
                address: place,
            }),
            remote_data: RawJson::from(raw),
        });
    }
    Ok(out)
}

/// `Job` → the job, its line items and its visits.
pub fn job(map: &Obj<'_>, currency: &str) -> Result<Vec<Record>, RecordError> {
    let node = Node::new("Job", map)?;
    let client_id = node.reference("client");
    let job = record(
        &node,
        map.text,
        client_id.clone().map_or(Owner::Unowned, Owner::Company),
        Fields::Job(JobFields {
            client_id,
            number: node.integer("jobNumber")?,
            status: job_status(&node.text("jobStatus").unwrap_or_default()).into(),
            description: node.text("title"),
            address: map.obj("property").and_then(|p| address(&p, "address")),
            purchase_order: None,
            scheduled_on: node.datetime("startAt")?.map(|t| t.date_naive()),
            completed_at: node.datetime("completedAt")?,
            total: node.decimal("total")?,
            currency: currency.to_owned(),
            job_type_id: None,
            custom_fields: None,
        }),
    )?;
    let mut out = vec![job];
    for raw in map.items("lineItems") {
        out.push(line_item(raw, &node.id, &out[0], currency)?);
    }
    for raw in map.items("visits") {
        out.push(visit(raw, &node.id, &out[0])?);
    }
    Ok(out)
}

/// A job's `JobLineItem`.
pub fn line_item(raw: &RawValue, job_id: &str, job: &Record, currency: &str) -> Result<Record, RecordError> {
    let map = Obj::parse(raw).map_err(|m| RecordError {
        object: "JobLineItem".into(),
        id: String::new(),
        field: String::new(),
        message: m,
    })?;
    let node = Node::new("JobLineItem", &map)?;
    let quantity = node.decimal("quantity")?.unwrap_or_default();
    let unit_price = node.decimal("unitPrice")?;
    let total = match node.decimal("totalPrice")? {
        Some(total) => Some(total),
        None => unit_price.map(|p| (p * quantity).round_dp(2)),
    };
    let mut rec = record(
        &node,
        raw,
        job.owner.clone(),
        Fields::LineItem(LineItemFields {
            job_id: Some(job_id.to_owned()),
            invoice_id: None,
            name: node.text("name").unwrap_or_default(),
            quantity,
            unit_price,
            total,
            currency: currency.to_owned(),
        }),
    )?;
    rec.remote_updated_at = rec.remote_updated_at.or(job.remote_updated_at);
    Ok(rec)
}

/// A job's `Visit`: `recorded` once completed, `scheduled` before.
pub fn visit(raw: &RawValue, job_id: &str, job: &Record) -> Result<Record, RecordError> {
    let map = Obj::parse(raw).map_err(|m| RecordError {
        object: "Visit".into(),
        id: String::new(),
        field: String::new(),
        message: m,
    })?;
    let node = Node::new("Visit", &map)?;
    let staff_id = map.items("assignedUsers").into_iter().find_map(|u| Obj::parse(u).ok()?.str("id"));
    let completed = node.datetime("completedAt")?;
    let mut rec = record(
        &node,
        raw,
        job.owner.clone(),
        Fields::Visit(VisitFields {
            job_id: Some(job_id.to_owned()),
            staff_id,
            start_at: node.datetime("startAt")?,
            end_at: node.datetime("endAt")?,
            status: if completed.is_some() { "recorded" } else { "scheduled" }.into(),
        }),
    )?;
    rec.remote_updated_at = rec.remote_updated_at.or(job.remote_updated_at);
    Ok(rec)
}

/// `Invoice` → the invoice and its payment records.
pub fn invoice(map: &Obj<'_>, currency: &str) -> Result<Vec<Record>, RecordError> {
    let node = Node::new("Invoice", map)?;
    let client_id = node.reference("client");
    let job_id = map.items("jobs").into_iter().find_map(|j| Obj::parse(j).ok()?.str("id"));
    let owner = client_id.clone().map_or(Owner::Unowned, Owner::Company);
    let total = match map.obj("amounts") {
        Some(amounts) => {
            let amounts_node = Node { object: "Invoice", id: node.id.clone(), map: &amounts };
            amounts_node.decimal("total")?
        }
        None => node.decimal("total")?,
    };
    let invoice = record(
        &node,
        map.text,
        owner.clone(),
        Fields::Invoice(InvoiceFields {
            client_id,
            job_id: job_id.clone(),
            // Jobber's invoice numbers are strings; the unified column holds the numeric ones
            // (all Jobber issues), and `remote_data` keeps the string as sent.
            number: node.text("invoiceNumber").and_then(|n| n.trim().parse().ok()),
            status: invoice_status(&node.text("invoiceStatus").unwrap_or_default()).into(),
            issued_at: node.datetime("issuedDate")?,
            paid_at: node.datetime("receivedDate")?,
            total,
            currency: currency.to_owned(),
        }),
    )?;
    let mut out = vec![invoice];
    for raw in map.items("paymentRecords") {
        let payment = payment(raw, &out[0], currency)?;
        out.push(payment);
    }
    Ok(out)
}

/// An invoice's `PaymentRecord`, in the invoice's company.
pub fn payment(raw: &RawValue, invoice: &Record, currency: &str) -> Result<Record, RecordError> {
    let map = Obj::parse(raw).map_err(|m| RecordError {
        object: "PaymentRecord".into(),
        id: String::new(),
        field: String::new(),
        message: m,
    })?;
    let p = Node::new("PaymentRecord", &map)?;
    let job_id = match &invoice.fields {
        Fields::Invoice(i) => i.job_id.clone(),
        _ => None,
    };
    let paid_at = p.datetime("entryDate")?;
    let mut rec = record(
        &p,
        raw,
        invoice.owner.clone(),
        Fields::Payment(PaymentFields {
            job_id,
            invoice_id: Some(invoice.external_id.clone()),
            amount: p.decimal("amount")?.unwrap_or_default(),
            method: p.text("paymentType"),
            paid_at,
            note: p.text("details"),
            is_deposit: false,
            currency: currency.to_owned(),
        }),
    )?;
    rec.created_at = rec.created_at.or(paid_at);
    rec.remote_updated_at = rec.remote_updated_at.or(invoice.remote_updated_at);
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: &str) -> Box<RawValue> {
        RawValue::from_string(v.to_owned()).unwrap()
    }

    fn fixture(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.trim().to_owned()).unwrap()
    }

    #[test]
    fn the_documented_fixtures_map_exactly() {
        let client_text = fixture(include_str!("../../../fixtures/jobber/client.json"));
        let records = client(&Obj::parse(&client_text).unwrap()).unwrap();
        assert_eq!(
            records.iter().map(|r| r.resource()).collect::<Vec<_>>(),
            [Resource::Client, Resource::Contact, Resource::Site]
        );
        assert_eq!(records[0].remote_updated_at.unwrap().to_rfc3339(), "2021-08-13T15:00:00+00:00");

        let job_text = fixture(include_str!("../../../fixtures/jobber/job.json"));
        let records = job(&Obj::parse(&job_text).unwrap(), "USD").unwrap();
        let Fields::Job(j) = &records[0].fields else { panic!() };
        assert_eq!(
            (j.status.as_str(), j.number, j.total.unwrap().to_string()),
            ("Completed", Some(42), "110.55".into())
        );
        let items: Vec<(String, String, String)> = records
            .iter()
            .filter_map(|r| match &r.fields {
                Fields::LineItem(l) => {
                    Some((l.quantity.to_string(), l.unit_price.unwrap().to_string(), l.total.unwrap().to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(items, [("3".into(), "0.1".into(), "0.3".into()), ("2".into(), "55.125".into(), "110.25".into())]);
        let Some(Fields::Visit(v)) = records.iter().map(|r| &r.fields).find(|f| matches!(f, Fields::Visit(_))) else {
            panic!()
        };
        assert_eq!((v.status.as_str(), v.staff_id.as_deref()), ("recorded", Some("Z2lkOi8vSm9iYmVyL1VzZXIvMQ==")));
        assert!(records[1..].iter().all(|r| r.owner == Owner::Company("Z2lkOi8vSm9iYmVyL0NsaWVudC8x".into())));

        let invoice_text = fixture(include_str!("../../../fixtures/jobber/invoice.json"));
        let records = invoice(&Obj::parse(&invoice_text).unwrap(), "USD").unwrap();
        let Fields::Invoice(i) = &records[0].fields else { panic!() };
        assert_eq!(
            (i.number, i.status.as_str(), i.job_id.as_deref()),
            (Some(1001), "paid", Some("Z2lkOi8vSm9iYmVyL0pvYi8x"))
        );
        let Fields::Payment(p) = &records[1].fields else { panic!() };
        assert_eq!(p.amount.to_string(), "110.55");
    }

    #[test]
    fn money_is_the_floats_digits_exactly() {
        for (text, want) in
            [("0.1", "0.1"), ("19.99", "19.99"), ("1234567.89", "1234567.89"), ("1e2", "100"), ("-0.30", "-0.3")]
        {
            assert_eq!(decimal_text(text).unwrap().unwrap().to_string(), want, "{text}");
        }
        // 0.1 + 0.2 in f64 is 0.30000000000000004; the decimal is exact.
        let sum = decimal_text("0.1").unwrap().unwrap() + decimal_text("0.2").unwrap().unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn times_with_offsets_become_utc_watermarks() {
        let node = raw(r#"{"id":"MQ==","updatedAt":"2021-08-12T16:31:36-06:00"}"#);
        assert_eq!(watermark(&Obj::parse(&node).unwrap()).as_deref(), Some("2021-08-12T22:31:36Z"));
    }

    #[test]
    fn a_client_yields_its_contact_and_sites_and_archived_is_a_tombstone() {
        let node = raw(
            r#"{"id":"Q2xpZW50LzE=","name":"Acme","isCompany":true,"isArchived":true,"firstName":"Ann","lastName":"Lee",
                "emails":[{"address":"a@x.test","primary":true}],
                "phones":[{"number":"1","description":"MAIN"},{"number":"2","description":"MOBILE","primary":true}],
                "properties":[{"id":"UHJvcGVydHkvMQ==","address":{"street1":"1 Main St","city":"Springfield"}}],
                "updatedAt":"2026-01-01T00:00:00Z"}"#,
        );
        let records = client(&Obj::parse(&node).unwrap()).unwrap();
        assert_eq!(records.len(), 3);
        assert!(records.iter().all(|r| r.deleted));
        let Fields::Contact(c) = &records[1].fields else { panic!() };
        assert_eq!((c.phone.as_deref(), c.mobile.as_deref()), (Some("1"), Some("2")));
        let Fields::Site(s) = &records[2].fields else { panic!() };
        assert_eq!(s.address.as_deref(), Some("1 Main St, Springfield"));
        assert_eq!(records[2].owner, Owner::Company("Q2xpZW50LzE=".into()));
    }

    #[test]
    fn an_invoice_keeps_its_status_mapped_and_its_payments() {
        let node = raw(r#"{"id":"SW52LzE=","invoiceNumber":"42","invoiceStatus":"past_due","client":{"id":"C"},
                "jobs":{"nodes":[{"id":"J"}]},"amounts":{"total":110.55},
                "paymentRecords":{"nodes":[{"id":"P","amount":10.1,"entryDate":"2026-02-03T04:05:06+10:00"}]}}"#);
        let records = invoice(&Obj::parse(&node).unwrap(), "USD").unwrap();
        let Fields::Invoice(i) = &records[0].fields else { panic!() };
        assert_eq!(
            (i.number, i.status.as_str(), i.total.unwrap().to_string()),
            (Some(42), "awaiting_payment", "110.55".into())
        );
        let Fields::Payment(p) = &records[1].fields else { panic!() };
        assert_eq!((p.amount.to_string(), p.job_id.as_deref()), ("10.1".into(), Some("J")));
    }
}
