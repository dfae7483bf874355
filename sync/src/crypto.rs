//! Provider tokens at rest: AES-256-GCM under the master key, with a random 96-bit nonce per
//! value and associated data naming what the ciphertext belongs to, so a token copied into
//! another connection's row (or another column) fails to decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use clientapi_schema::secret::Secret;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted (wrong master key, or the row was tampered with)")]
pub struct DecryptError;

#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self { aead: Aes256Gcm::new(key.into()) }
    }

    pub fn encrypt(&self, plaintext: &str, aad: &str) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce.to_vec();
        let sealed = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        out.extend(sealed);
        out
    }

    pub fn decrypt(&self, sealed: &[u8], aad: &str) -> Result<Secret<String>, DecryptError> {
        if sealed.len() < NONCE_LEN {
            return Err(DecryptError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: aad.as_bytes() })
            .map_err(|_| DecryptError)?;
        String::from_utf8(plain).map(Secret::new).map_err(|_| DecryptError)
    }
}

/// The associated data for one token field of one connection.
pub fn token_aad(connection_id: i64, field: &str) -> String {
    format!("clientapi:connection:{connection_id}:{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_is_bound_to_its_associated_data() {
        let cipher = Cipher::new(&[7; 32]);
        let sealed = cipher.encrypt("sim_at_secret", &token_aad(1, "access"));
        assert!(!String::from_utf8_lossy(&sealed).contains("sim_at_secret"));
        assert_eq!(cipher.decrypt(&sealed, &token_aad(1, "access")).unwrap().expose(), "sim_at_secret");
        assert!(cipher.decrypt(&sealed, &token_aad(2, "access")).is_err());
        assert!(cipher.decrypt(&sealed, &token_aad(1, "refresh")).is_err());
        assert!(Cipher::new(&[8; 32]).decrypt(&sealed, &token_aad(1, "access")).is_err());
    }
}
