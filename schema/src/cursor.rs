//! Opaque, tamper-proof cursors: a JSON payload and an HMAC-SHA256 tag under a key derived
//! from the master key. The payload binds the endpoint, the resource, the sort and the
//! filters, so a cursor replayed on another endpoint, or with other filters, or edited, is
//! refused (400) instead of leaking or skipping anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use crate::read::ListQuery;

type HmacSha256 = Hmac<Sha256>;
const MAX_CURSOR_LEN: usize = 2048;

#[derive(Clone)]
pub struct CursorSigner {
    /// HMAC-SHA256 keyed once (its inner and outer pads already absorbed); each tag clones it.
    keyed: HmacSha256,
}

impl CursorSigner {
    pub fn new(master_key: &[u8; 32]) -> Self {
        let mut mac = HmacSha256::new_from_slice(master_key).expect("HMAC takes any key length");
        mac.update(b"clientapi cursor key v1");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        Self { keyed: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length") }
    }

    fn tag(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(payload);
        mac
    }

    pub fn sign<T: Serialize>(&self, value: &T) -> String {
        let payload = serde_json::to_vec(value).expect("cursor payloads serialize");
        let tag = self.tag(&payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(tag))
    }

    /// The payload, if the cursor is ours and unaltered.
    pub fn verify<T: DeserializeOwned>(&self, cursor: &str) -> Option<T> {
        if cursor.len() > MAX_CURSOR_LEN {
            return None;
        }
        let (payload, tag) = cursor.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.tag(&payload).verify_slice(&tag).ok()?;
        serde_json::from_slice(&payload).ok()
    }
}

/// Where a list page ended, bound to what was asked: the endpoint, the resource, the sort and
/// a fingerprint of the filters (page size and included fields may change between pages).
/// REST's `cursor` and GraphQL's `after` are the same cursor.
#[derive(Serialize, Deserialize)]
struct ListCursor {
    e: String,
    r: String,
    s: String,
    f: String,
    k: String,
    i: String,
}

fn filters_fingerprint(query: &ListQuery) -> String {
    let digest = Sha256::digest(format!("{:?}", query.filters).as_bytes());
    let mut hex = String::with_capacity(24);
    for b in &digest[..12] {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

impl CursorSigner {
    /// The cursor that continues `query` after the keyset `(key, id)`, for `endpoint` only.
    pub fn list_cursor(&self, endpoint: &str, query: &ListQuery, (key, id): (String, String)) -> String {
        self.sign(&ListCursor {
            e: endpoint.to_owned(),
            r: query.resource.singular().to_owned(),
            s: query.sort.name(),
            f: filters_fingerprint(query),
            k: key,
            i: id,
        })
    }

    /// The keyset a cursor continues from, if it was issued to `endpoint` for this resource,
    /// sort and filters and is unaltered; `None` otherwise.
    pub fn list_position(&self, endpoint: &str, query: &ListQuery, cursor: &str) -> Option<(String, String)> {
        let c: ListCursor = self.verify(cursor)?;
        let matches = c.e == endpoint
            && c.r == query.resource.singular()
            && c.s == query.sort.name()
            && c.f == filters_fingerprint(query);
        matches.then_some((c.k, c.i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_any_edit_or_other_key_is_refused() {
        let signer = CursorSigner::new(&[1; 32]);
        let cursor = signer.sign(&("ep_a", 42));
        assert_eq!(signer.verify::<(String, i32)>(&cursor), Some(("ep_a".into(), 42)));
        let forged = signer.sign(&("ep_b", 42));
        let (payload, _) = forged.split_once('.').unwrap();
        let (_, tag) = cursor.split_once('.').unwrap();
        assert_eq!(signer.verify::<(String, i32)>(&format!("{payload}.{tag}")), None, "swapped payload");
        assert_eq!(CursorSigner::new(&[2; 32]).verify::<(String, i32)>(&cursor), None, "other key");
        for junk in ["", ".", "abc", "a.b", &"x".repeat(5000)] {
            assert_eq!(signer.verify::<(String, i32)>(junk), None);
        }
    }
}
