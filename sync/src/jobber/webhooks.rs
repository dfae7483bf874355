//! Jobber webhooks (PROVIDERS.md §2, "Webhooks"): one endpoint per topic and account, made with
//! `webhookEndpointCreate(input: {topic, url})`; each event is a minimal JSON body
//! (`{"data":{"webHookEvent":{"topic","accountId","itemId","occurredAt"}}}`, `occuredAt` for
//! older apps) signed `X-Jobber-Hmac-SHA256: base64(HMAC-SHA256(client secret, raw body))`.
//! Nothing in a body is trusted beyond the signature: the named record is fetched. A
//! `*_DESTROY` names a record Jobber no longer returns: the fetch finds nothing, and a Jobber
//! connection takes that as the delete (it has no tombstones to fetch).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::provider::{Callback, MAX_CALLBACK_ENTRIES};

pub const SIGNATURE_HEADER: &str = "x-jobber-hmac-sha256";

/// The topics subscribed, by the stream their item is fetched from.
pub const TOPICS: &[(&str, &str)] = &[
    ("CLIENT_CREATE", "clients"),
    ("CLIENT_UPDATE", "clients"),
    ("CLIENT_DESTROY", "clients"),
    ("JOB_CREATE", "jobs"),
    ("JOB_UPDATE", "jobs"),
    ("JOB_DESTROY", "jobs"),
    ("INVOICE_CREATE", "invoices"),
    ("INVOICE_UPDATE", "invoices"),
    ("INVOICE_DESTROY", "invoices"),
];

/// The signature Jobber sends for `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks the signature (in constant time) and reads the event.
pub fn parse(secret: &str, signature: Option<&str>, body: &[u8]) -> Result<Callback, String> {
    let signature = signature.ok_or("no X-Jobber-Hmac-SHA256 signature")?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "the X-Jobber-Hmac-SHA256 signature is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| "the X-Jobber-Hmac-SHA256 signature does not match the body")?;
    let event: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let event = &event["data"]["webHookEvent"];
    let topic = event["topic"].as_str().ok_or("no data.webHookEvent.topic")?;
    let item = event["itemId"].as_str().ok_or("no data.webHookEvent.itemId")?;
    if item.is_empty() || item.len() > 200 {
        return Err("data.webHookEvent.itemId is not an id".into());
    }
    // Topics this connection does not mirror (visits, payments, properties, apps) are
    // acknowledged and left to the poll.
    let changed: Vec<(&'static str, String)> =
        TOPICS.iter().filter(|(t, _)| *t == topic).map(|(_, stream)| (*stream, item.to_owned())).collect();
    debug_assert!(changed.len() <= MAX_CALLBACK_ENTRIES);
    Ok(Callback::Changed(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_event_names_its_record_and_a_forged_one_is_refused() {
        let body = include_bytes!("../../../fixtures/jobber/webhook.json");
        let signature = sign("secret", body);
        assert_eq!(
            parse("secret", Some(&signature), body),
            Ok(Callback::Changed(vec![("jobs", "Z2lkOi8vSm9iYmVyL0pvYi8x".into())]))
        );
        assert!(parse("other secret", Some(&signature), body).unwrap_err().contains("does not match"));
        assert!(parse("secret", None, body).is_err());
        let visit = br#"{"data":{"webHookEvent":{"topic":"VISIT_COMPLETE","itemId":"V"}}}"#;
        assert_eq!(parse("s", Some(&sign("s", visit)), visit), Ok(Callback::Changed(vec![])));
    }
}
