//! API keys (DESIGN.md §6): `sk_live_` or `sk_test_`, 32 random base62 characters, then a
//! 6-character base62 CRC32 of everything before it, so a mistyped or invented key is refused
//! before any database work. The plaintext is shown once; the database keeps an argon2id hash.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

pub const LIVE_PREFIX: &str = "sk_live_";
pub const TEST_PREFIX: &str = "sk_test_";
const RANDOM_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62_fixed(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).expect("base62 is ASCII")
}

fn checksum(body: &str) -> String {
    base62_fixed(u64::from(crc32fast::hash(body.as_bytes())), CHECK_LEN)
}

/// A new key for an endpoint of the given environment.
pub fn generate(test: bool) -> String {
    let prefix = if test { TEST_PREFIX } else { LIVE_PREFIX };
    let body = format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), RANDOM_LEN));
    let check = checksum(&body);
    body + &check
}

/// Shape and checksum only: no database, no hashing.
pub fn well_formed(token: &str) -> bool {
    let Some(random) = token.strip_prefix(LIVE_PREFIX).or_else(|| token.strip_prefix(TEST_PREFIX)) else {
        return false;
    };
    if random.len() != RANDOM_LEN + CHECK_LEN || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, check) = token.split_at(token.len() - CHECK_LEN);
    checksum(body) == check
}

/// What admins see instead of the key.
pub fn hint(token: &str) -> String {
    let prefix_len = if token.starts_with(TEST_PREFIX) { TEST_PREFIX.len() } else { LIVE_PREFIX.len() };
    format!("{}…{}", &token[..prefix_len + 4], &token[token.len() - 4..])
}

/// The cache key: SHA-256 of the token (never the token itself).
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// argon2id with the crate's defaults (≈13 ms of CPU): call from `spawn_blocking`.
pub fn hash(token: &str) -> String {
    Argon2::default().hash_password(token.as_bytes()).expect("argon2 hashing of a short input cannot fail").to_string()
}

/// Verifies against a stored hash (≈13 ms of CPU): call from `spawn_blocking`.
pub fn verify(token: &str, stored: &str) -> bool {
    PasswordHash::new(stored).map(|h| Argon2::default().verify_password(token.as_bytes(), &h).is_ok()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_any_single_change_breaks_the_checksum() {
        for test in [false, true] {
            let key = generate(test);
            assert_eq!(key.len(), 8 + 32 + 6);
            assert!(well_formed(&key), "{key}");
            let mut bytes = key.clone().into_bytes();
            for i in 8..bytes.len() {
                let original = bytes[i];
                bytes[i] = if original == b'a' { b'b' } else { b'a' };
                assert!(!well_formed(std::str::from_utf8(&bytes).unwrap()), "changed byte {i} still passes");
                bytes[i] = original;
            }
        }
        for bad in ["", "sk_live_", "ak_x", "sk_live_short", &format!("sk_prod_{}", "a".repeat(38))] {
            assert!(!well_formed(bad));
        }
    }

    #[test]
    fn hints_show_only_the_ends_and_hashes_verify() {
        let key = generate(false);
        let h = hint(&key);
        assert!(h.starts_with("sk_live_") && h.len() < 20 && !h.contains(&key[12..40]));
        let stored = hash(&key);
        assert!(verify(&key, &stored));
        assert!(!verify(&generate(false), &stored));
    }
}
