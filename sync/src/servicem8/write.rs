//! Unified write fields (validated by `clientapi_schema::write`) as ServiceM8 bodies: the
//! inverse of `mapping`, field for field.

use clientapi_schema::model::Resource;
use serde_json::{Map, Value, json};

/// (unified name, ServiceM8 name) per resource.
fn names(resource: Resource) -> &'static [(&'static str, &'static str)] {
    match resource {
        Resource::Job => &[
            ("status", "status"),
            ("description", "job_description"),
            ("address", "job_address"),
            ("purchase_order", "purchase_order_number"),
            ("scheduled_on", "date"),
            ("client_id", "company_uuid"),
            // A job at a site is the site's job (PROVIDERS.md §1 "Sites"): it names the site.
            ("site_id", "company_uuid"),
            ("job_type_id", "category_uuid"),
        ],
        Resource::Contact => &[
            ("client_id", "company_uuid"),
            ("first_name", "first"),
            ("last_name", "last"),
            ("email", "email"),
            ("phone", "phone"),
            ("mobile", "mobile"),
            ("kind", "type"),
            ("is_primary", "is_primary_contact"),
        ],
        Resource::LineItem => {
            &[("job_id", "job_uuid"), ("name", "name"), ("quantity", "quantity"), ("unit_price", "price")]
        }
        Resource::Client => {
            &[("name", "name"), ("address", "address"), ("billing_address", "billing_address"), ("website", "website")]
        }
        Resource::Attachment => &[("job_id", "related_object_uuid"), ("name", "attachment_name")],
        Resource::Site => &[("name", "name"), ("address", "address")],
        Resource::Visit => {
            &[("job_id", "job_uuid"), ("staff_id", "staff_uuid"), ("start_at", "start_date"), ("end_at", "end_date")]
        }
        _ => &[],
    }
}

/// The ServiceM8 body for a write. New jobs and contacts go under the endpoint's company unless
/// they name one of its clients; a new client is a site under the company.
pub fn body(resource: Resource, company: &str, fields: &Map<String, Value>, create: bool) -> Value {
    let mut body = Map::new();
    for (ours, theirs) in names(resource) {
        let Some(value) = fields.get(*ours) else { continue };
        let value = match (value, *ours) {
            (Value::Null, _) => json!(""),
            // ServiceM8 booleans are "1"/"0".
            (Value::Bool(b), _) => json!(if *b { "1" } else { "0" }),
            // Times are account-local wall clock without a zone, as the mapping reads them.
            (Value::String(t), "start_at" | "end_at") => json!(provider_time(t)),
            (v, _) => v.clone(),
        };
        body.insert((*theirs).to_owned(), value);
    }
    if let Some(Value::Object(values)) = fields.get("custom_fields") {
        for (name, value) in values {
            let value = if value.is_null() { json!("") } else { value.clone() };
            body.insert(format!("{}{name}", super::mapping::CUSTOM_FIELD_PREFIX), value);
        }
    }
    if create {
        match resource {
            Resource::Job | Resource::Contact => {
                body.entry("company_uuid").or_insert_with(|| json!(company));
            }
            Resource::Visit => {
                body.insert("activity_was_scheduled".into(), json!("1"));
                body.insert("activity_was_recorded".into(), json!("0"));
            }
            Resource::Client | Resource::Site => {
                body.insert("parent_company_uuid".into(), json!(company));
            }
            Resource::Attachment => {
                body.insert("related_object".into(), json!("job"));
                let name = fields.get("name").and_then(Value::as_str).unwrap_or_default();
                let extension = name.rsplit_once('.').map(|(_, e)| format!(".{}", e.to_lowercase()));
                body.insert("file_type".into(), json!(extension.unwrap_or_default()));
            }
            _ => {}
        }
        body.insert("active".into(), json!(1));
    }
    Value::Object(body)
}

/// A cleaned UTC time (`2026-03-02T08:00:00Z`) as ServiceM8 writes times: `2026-03-02 08:00:00`.
pub fn provider_time(cleaned: &str) -> String {
    cleaned.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The booking ServiceM8 keeps for a job's preferred window: a `jobactivity`.
pub fn window_body(job: &str, start: &str, end: &str) -> Value {
    json!({
        "job_uuid": job, "start_date": provider_time(start), "end_date": provider_time(end),
        "activity_was_scheduled": "1", "activity_was_recorded": "0", "active": 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_fields_become_servicem8_fields() {
        let fields = json!({"status": "Quote", "description": "Fix tap", "scheduled_on": "2026-03-01"});
        let b = body(Resource::Job, "co-1", fields.as_object().unwrap(), true);
        assert_eq!(
            b,
            json!({"status": "Quote", "job_description": "Fix tap", "date": "2026-03-01", "company_uuid": "co-1", "active": 1})
        );
        let contact = json!({"client_id": "site-2", "is_primary": true, "email": null});
        let b = body(Resource::Contact, "co-1", contact.as_object().unwrap(), false);
        assert_eq!(b, json!({"company_uuid": "site-2", "is_primary_contact": "1", "email": ""}));
        let file = json!({"job_id": "j", "name": "Photo.JPG"});
        let b = body(Resource::Attachment, "co-1", file.as_object().unwrap(), true);
        assert_eq!(b["file_type"], ".jpg");
        assert_eq!(b["related_object"], "job");
        let job = json!({"site_id": "s1", "job_type_id": "k1", "custom_fields": {"gate_code": "12", "access": null},
                         "status": "Quote"});
        let b = body(Resource::Job, "co-1", job.as_object().unwrap(), true);
        assert_eq!((&b["company_uuid"], &b["category_uuid"]), (&json!("s1"), &json!("k1")));
        assert_eq!((&b["customfield_gate_code"], &b["customfield_access"]), (&json!("12"), &json!("")));
        let visit = json!({"job_id": "j", "start_at": "2026-03-02T08:00:00Z", "end_at": "2026-03-02T10:00:00Z"});
        let b = body(Resource::Visit, "co-1", visit.as_object().unwrap(), true);
        assert_eq!((&b["start_date"], &b["activity_was_scheduled"]), (&json!("2026-03-02 08:00:00"), &json!("1")));
        let site = body(Resource::Site, "co-1", json!({"name": "Depot"}).as_object().unwrap(), true);
        assert_eq!(site["parent_company_uuid"], "co-1");
    }
}
