//! Writes through a Jobber connection (PROVIDERS.md §2, "Writes"): the unified fields of a
//! validated write become a Jobber mutation's input, and `userErrors` come back as the provider's
//! own words (a 422 to the customer). What Jobber cannot store is refused before anything is
//! sent, naming the field.
//!
//! | Unified | Jobber |
//! |---|---|
//! | update a client | `clientEdit(clientId, input: {companyName, billingAddress})` |
//! | create a job | `jobCreate(input: {propertyId, title, invoicing, scheduling})`, at the named site or the client's first property |
//! | update a job | `jobEdit(jobId, input: {title})` |
//! | create a line item | `jobCreateLineItems(jobId, input: {lineItems: [{name, quantity, unitPrice}]})` |
//!
//! A new client is refused (a Jobber client is a customer company of its own, outside the
//! endpoint's), as are contacts, sites, visits and attachments, and job statuses other than the
//! one Jobber gives a new job (Jobber derives a job's status from its visits and invoices).

use clientapi_schema::model::Resource;
use serde_json::{Map, Value, json};

use crate::provider::ProviderError;

/// The unified job statuses a Jobber write accepts (a new job is active: a `Work Order`).
pub const JOB_STATUSES: &[&str] = &["Work Order"];

fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::Rejected { status: 422, message: message.into() }
}

/// The body the adapter's `create`/`update` get: which mutation, and its input, or why not.
pub fn body(resource: Resource, company: &str, fields: &Map<String, Value>, create: bool) -> Value {
    match plan(resource, company, fields, create) {
        Ok(body) => body,
        Err(message) => json!({"refused": message}),
    }
}

fn plan(resource: Resource, company: &str, fields: &Map<String, Value>, create: bool) -> Result<Value, String> {
    let unsupported = |allowed: &[&str]| -> Result<(), String> {
        let extra: Vec<&str> =
            fields.keys().map(String::as_str).filter(|k| !allowed.contains(k) && fields[*k] != Value::Null).collect();
        match extra.as_slice() {
            [] => Ok(()),
            names => {
                Err(format!("a Jobber {} cannot store: {}", resource.singular().replace('_', " "), names.join(", ")))
            }
        }
    };
    let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
    match (resource, create) {
        (Resource::Client, true) => {
            Err("a Jobber client is a customer company of its own and cannot be created under \
             this endpoint's; create the job at one of its sites instead"
                .into())
        }
        (Resource::Client, false) => {
            unsupported(&["name", "address", "billing_address"])?;
            let mut input = Map::new();
            if let Some(name) = text("name") {
                input.insert("companyName".into(), json!(name));
            }
            if let Some(street) = text("billing_address").or_else(|| text("address")) {
                input.insert("billingAddress".into(), json!({"street1": street}));
            }
            Ok(json!({"mutation": "clientEdit", "input": input}))
        }
        (Resource::Job, _) => {
            unsupported(&["status", "description", "client_id", "site_id"])?;
            if let Some(status) = text("status")
                && !JOB_STATUSES.contains(&status.as_str())
            {
                return Err(format!(
                    "Jobber sets a job's status from its visits and invoices; `{status}` cannot be written"
                ));
            }
            let title = text("description");
            if create {
                let mut input = json!({
                    "title": title.unwrap_or_else(|| "New job".into()),
                    "invoicing": {"invoicingType": "FIXED_PRICE", "invoicingSchedule": "ON_COMPLETION"},
                    "scheduling": {"createVisits": false, "notifyTeam": false},
                });
                if let Some(site) = text("site_id") {
                    input["propertyId"] = json!(site);
                }
                let client = text("client_id").unwrap_or_else(|| company.to_owned());
                Ok(json!({"mutation": "jobCreate", "client": client, "input": input}))
            } else {
                if fields.contains_key("site_id") || fields.contains_key("client_id") {
                    return Err("a Jobber job cannot move to another client or property".into());
                }
                let mut input = Map::new();
                if let Some(title) = title {
                    input.insert("title".into(), json!(title));
                }
                Ok(json!({"mutation": "jobEdit", "input": input}))
            }
        }
        (Resource::LineItem, true) => {
            unsupported(&["job_id", "name", "quantity", "unit_price"])?;
            let number =
                |name: &str| fields.get(name).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
            let item = json!({
                "name": text("name"),
                "quantity": number("quantity").unwrap_or_else(|| "1".into()),
                "unitPrice": number("unit_price").unwrap_or_else(|| "0".into()),
                "saveToProductsAndServices": false,
            });
            Ok(json!({"mutation": "jobCreateLineItems", "job": text("job_id"), "input": {"lineItems": [item]}}))
        }
        (Resource::LineItem, false) => Err("a Jobber line item cannot be changed through this API; add another".into()),
        (other, _) => Err(format!("a Jobber connection does not offer writes of {}", other.plural().replace('_', " "))),
    }
}

/// Money and quantities as JSON numbers from their decimal text (Jobber's `Float`s).
fn floats(mut item: Value) -> Value {
    for key in ["quantity", "unitPrice"] {
        if let Some(text) = item[key].as_str()
            && let Ok(n) = text.parse::<f64>()
        {
            item[key] = json!(n);
        }
    }
    item
}

/// The GraphQL mutation and variables of a planned write, and the path of the new or changed
/// record's id in the answer.
pub fn mutation(body: &Value, id: Option<&str>) -> Result<(String, Value, &'static [&'static str]), ProviderError> {
    if let Some(message) = body["refused"].as_str() {
        return Err(refused(message));
    }
    let errors = "userErrors { message path }";
    Ok(match body["mutation"].as_str() {
        Some("clientEdit") => (
            format!(
                "mutation Edit($id: EncodedId!, $input: ClientEditInput!) {{ clientEdit(clientId: $id, input: $input) {{ client {{ id }} {errors} }} }}"
            ),
            json!({"id": id, "input": body["input"]}),
            &["clientEdit", "client", "id"],
        ),
        Some("jobCreate") => (
            format!(
                "mutation Create($input: JobCreateAttributes!) {{ jobCreate(input: $input) {{ job {{ id }} {errors} }} }}"
            ),
            json!({"input": body["input"]}),
            &["jobCreate", "job", "id"],
        ),
        Some("jobEdit") => (
            format!(
                "mutation Edit($id: EncodedId!, $input: JobEditAttributes!) {{ jobEdit(jobId: $id, input: $input) {{ job {{ id }} {errors} }} }}"
            ),
            json!({"id": id, "input": body["input"]}),
            &["jobEdit", "job", "id"],
        ),
        Some("jobCreateLineItems") => {
            let items: Vec<Value> =
                body["input"]["lineItems"].as_array().cloned().unwrap_or_default().into_iter().map(floats).collect();
            (
                format!(
                    "mutation Add($job: EncodedId!, $input: JobCreateLineItemsInput!) {{ jobCreateLineItems(jobId: $job, input: $input) {{ lineItems {{ id }} {errors} }} }}"
                ),
                json!({"job": body["job"], "input": {"lineItems": items}}),
                &["jobCreateLineItems", "lineItems", "0", "id"],
            )
        }
        _ => return Err(refused("not a write this Jobber connection offers")),
    })
}

/// The id at `path` in a mutation's `data`, or its `userErrors` as the provider's words.
pub fn outcome(data: &Value, path: &[&str]) -> Result<String, ProviderError> {
    let payload = &data[path[0]];
    if let Some(errors) = payload["userErrors"].as_array().filter(|e| !e.is_empty()) {
        let words: Vec<String> = errors
            .iter()
            .map(|e| {
                let at = e["path"].as_array().map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("."));
                match at.filter(|a| !a.is_empty()) {
                    Some(at) => format!("{at}: {}", e["message"].as_str().unwrap_or("invalid")),
                    None => e["message"].as_str().unwrap_or("invalid").to_owned(),
                }
            })
            .collect();
        return Err(refused(words.join("; ")));
    }
    let mut at = payload;
    for key in &path[1..] {
        at = match key.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[*key],
        };
    }
    at.as_str().map(str::to_owned).ok_or_else(|| ProviderError::Malformed(format!("{} answered no id", path[0])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn what_jobber_cannot_store_is_refused_by_name_before_anything_is_sent() {
        let b = body(Resource::Client, "C", &fields(json!({"name": "A", "website": "x.test"})), false);
        assert!(b["refused"].as_str().unwrap().contains("website"), "{b}");
        let b = body(Resource::Client, "C", &fields(json!({"name": "A"})), true);
        assert!(b["refused"].is_string());
        let b = body(Resource::Job, "C", &fields(json!({"status": "Completed"})), true);
        assert!(b["refused"].as_str().unwrap().contains("Completed"));
        let b = body(Resource::Contact, "C", &fields(json!({"first_name": "A"})), true);
        assert!(b["refused"].as_str().unwrap().contains("contacts"));
    }

    #[test]
    fn a_new_job_lands_under_the_endpoints_client_and_user_errors_are_the_providers_words() {
        let b = body(Resource::Job, "C1", &fields(json!({"status": "Work Order", "description": "Fix"})), true);
        assert_eq!(
            (b["mutation"].as_str(), b["client"].as_str(), b["input"]["title"].as_str()),
            (Some("jobCreate"), Some("C1"), Some("Fix"))
        );
        let data = json!({"jobCreate": {"job": null, "userErrors": [{"message": "can't be blank", "path": ["input", "title"]}]}});
        let e = outcome(&data, &["jobCreate", "job", "id"]).unwrap_err();
        assert!(e.to_string().contains("input.title: can't be blank"), "{e}");
        let documented: Value =
            serde_json::from_str(include_str!("../../../fixtures/jobber/user_errors.json")).unwrap();
        let e = outcome(&documented["data"], &["jobCreate", "job", "id"]).unwrap_err();
        assert!(e.to_string().contains("input.title: Title can't be blank"), "{e}");
        let data = json!({"jobCreateLineItems": {"lineItems": [{"id": "LI"}], "userErrors": []}});
        assert_eq!(outcome(&data, &["jobCreateLineItems", "lineItems", "0", "id"]).unwrap(), "LI");
    }
}
