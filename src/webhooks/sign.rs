//! The Standard Webhooks scheme (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the key being the
//! base64 bytes after the secret's `whsec_` prefix; several signatures, space-separated, while
//! a rotated secret's overlap lasts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

const PREFIX: &str = "whsec_";
/// Random bytes in a secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A new secret, `whsec_` and base64 of random bytes.
pub fn new_secret() -> Secret<String> {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    Secret::new(format!("{PREFIX}{}", BASE64.encode(bytes)))
}

/// `v1,<signature>` of one message under one secret.
pub fn signature(secret: &Secret<String>, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let encoded = secret.expose().strip_prefix(PREFIX).unwrap_or(secret.expose());
    let key = BASE64.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per live secret.
pub fn header(secrets: &[Secret<String>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| signature(s, msg_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the Standard Webhooks specification's reference implementations.
    #[test]
    fn signs_the_reference_example() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn new_secrets_differ_and_carry_the_prefix() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.expose().starts_with(PREFIX) && a.expose() != b.expose());
        assert_eq!(BASE64.decode(&a.expose()[PREFIX.len()..]).unwrap().len(), SECRET_BYTES);
    }
}
