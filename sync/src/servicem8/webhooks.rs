//! ServiceM8 object webhooks (PROVIDERS.md §1, "Webhooks"): subscriptions are form-encoded
//! POSTs to `/webhook_subscriptions` (beside `api_1.0`), one per object with the fields to
//! watch; ServiceM8 checks the callback with `mode=subscribe&challenge=…` and later posts
//! `{"object", "entry": [{"uuid", "changed_fields", "time"}], "resource_url"}` without field
//! values, so every callback only names records to fetch.

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::STREAMS;
use crate::provider::{Callback, MAX_CALLBACK_ENTRIES, ProviderError};

/// The fields watched per object: those the mapping reads (a change elsewhere does not change
/// the mirror).
pub const WATCHED_FIELDS: &[(&str, &str)] = &[
    ("company", "uuid,active,name,is_individual,address,billing_address,website,parent_company_uuid,edit_date"),
    ("companycontact", "uuid,active,company_uuid,first,last,email,phone,mobile,type,is_primary_contact,edit_date"),
    (
        "job",
        "uuid,active,company_uuid,generated_job_id,status,job_description,job_address,purchase_order_number,date,\
         completion_date,total_invoice_amount,category_uuid,invoice_sent,invoice_sent_stamp,payment_received,\
         payment_received_stamp,edit_date",
    ),
    ("jobmaterial", "uuid,active,job_uuid,name,quantity,price,displayed_amount,edit_date"),
    ("jobpayment", "uuid,active,job_uuid,amount,method,timestamp,note,is_deposit,edit_date"),
    ("attachment", "uuid,active,related_object,related_object_uuid,attachment_name,file_type,edit_date"),
    ("jobactivity", "uuid,active,job_uuid,staff_uuid,start_date,end_date,activity_was_scheduled,edit_date"),
    ("staff", "uuid,active,first,last,email,mobile,job_title,edit_date"),
    ("category", "uuid,active,name,colour,edit_date"),
    ("customfield", "uuid,active,field_name,name,type,options,edit_date"),
    ("taxrate", "uuid,active,name,rate,is_default_tax_rate,edit_date"),
    ("material", "uuid,active,name,item_number,price,tax_rate_uuid,edit_date"),
];

/// Where subscriptions are managed: beside the `api_1.0` base (the simulator's too).
pub fn subscriptions_url(api_url: &Url) -> Url {
    let base = format!("{}/", api_url.as_str().trim_end_matches('/'));
    Url::parse(&base).and_then(|u| u.join("../webhook_subscriptions")).expect("the API base URL is valid")
}

/// The form of one object subscription.
pub fn subscription_form<'a>(
    object: &'a str,
    fields: &'a str,
    callback: &'a Url,
    unique_id: &'a str,
) -> [(&'a str, &'a str); 4] {
    [("object", object), ("fields", fields), ("callback_url", callback.as_str()), ("unique_id", unique_id)]
}

/// ServiceM8's answer to a subscription: `{"success": true}`, or false with a message.
pub fn subscription_answer(status: u16, body: &str) -> Result<(), ProviderError> {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match value.get("success") {
        Some(Value::Bool(true)) => Ok(()),
        _ if (200..300).contains(&status) && value.get("success").is_none() && value.get("errorCode").is_none() => {
            Ok(())
        }
        _ => Err(ProviderError::Rejected {
            status,
            message: value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| body.chars().take(200).collect()),
        }),
    }
}

#[derive(Deserialize)]
struct Challenge {
    mode: String,
    challenge: String,
}

#[derive(Deserialize)]
struct Payload {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    uuid: String,
}

/// ServiceM8 uuids: hex digits and dashes (36 characters, though the check allows any short id).
fn plausible_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Reads a callback: the handshake (form-encoded, or JSON) or an object payload (JSON).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Callback, String> {
    let form = content_type.is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let challenge = if form {
        let pairs: std::collections::HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        match (pairs.get("mode"), pairs.get("challenge")) {
            (Some(mode), Some(challenge)) => Some(Challenge { mode: mode.clone(), challenge: challenge.clone() }),
            _ => None,
        }
    } else {
        serde_json::from_slice::<Challenge>(body).ok()
    };
    if let Some(c) = challenge {
        if c.mode != "subscribe" {
            return Err(format!("mode must be subscribe, not {:?}", c.mode.chars().take(40).collect::<String>()));
        }
        return Ok(Callback::Challenge(c.challenge));
    }
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| format!("expected ServiceM8's object webhook JSON: {e}"))?;
    let object = payload.object.to_ascii_lowercase();
    let Some(stream) = STREAMS.iter().find(|s| s.name == object) else {
        return Err(format!("object {:?} is not mirrored", payload.object.chars().take(64).collect::<String>()));
    };
    if payload.entry.is_empty() || payload.entry.len() > MAX_CALLBACK_ENTRIES {
        return Err(format!("entry must hold 1 to {MAX_CALLBACK_ENTRIES} records"));
    }
    let mut changed = Vec::with_capacity(payload.entry.len());
    for entry in payload.entry {
        if !plausible_id(&entry.uuid) {
            return Err("entry[].uuid must be a ServiceM8 uuid".into());
        }
        changed.push((stream.name, entry.uuid.to_ascii_lowercase()));
    }
    Ok(Callback::Changed(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_is_a_challenge_or_the_records_to_fetch_and_nothing_else() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(parse(form, b"mode=subscribe&challenge=abc123"), Ok(Callback::Challenge("abc123".into())));
        let body =
            br#"{"object":"Job","entry":[{"uuid":"0A1B-22","changed_fields":["status"],"time":"2026-12-02 10:00:00"}],
                        "resource_url":"https://api.servicem8.com/api_1.0/job/0a1b-22.json"}"#;
        assert_eq!(parse(Some("application/json"), body), Ok(Callback::Changed(vec![("job", "0a1b-22".into())])));
        assert!(parse(None, br#"{"object":"invoice","entry":[{"uuid":"ab"}]}"#).unwrap_err().contains("not mirrored"));
        assert!(parse(None, br#"{"object":"job","entry":[{"uuid":"'; drop table"}]}"#).is_err());
        assert!(parse(None, br#"{"object":"job","entry":[]}"#).is_err());
        assert!(parse(form, b"mode=unsubscribe&challenge=x").is_err());
    }

    #[test]
    fn subscriptions_live_beside_the_api_base() {
        let api = Url::parse("https://api.servicem8.com/api_1.0").unwrap();
        assert_eq!(subscriptions_url(&api).as_str(), "https://api.servicem8.com/webhook_subscriptions");
        let sim = Url::parse("http://127.0.0.1:9/api_1.0/").unwrap();
        assert_eq!(subscriptions_url(&sim).as_str(), "http://127.0.0.1:9/webhook_subscriptions");
    }

    #[test]
    fn every_mirrored_object_has_watched_fields() {
        for stream in STREAMS {
            assert!(WATCHED_FIELDS.iter().any(|(o, _)| *o == stream.name), "{}", stream.name);
        }
    }
}
