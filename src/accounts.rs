//! Operator accounts, their users (argon2id password hashes) and automation tokens (`ak_…`).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use clientapi_schema::{AccountId, UserId};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub const MIN_PASSWORD_LEN: usize = 10;
const MAX_PASSWORD_LEN: usize = 1024;
const ADMIN_TOKEN_PREFIX: &str = "ak_";
const ADMIN_TOKEN_RANDOM_LEN: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("`{0}` is not an email address")]
    InvalidEmail(String),
    #[error("the password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("a user with email {0} already exists")]
    EmailTaken(String),
    #[error("no user has email {0}")]
    NoSuchUser(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Lower-cases and checks an email address (shape only: one `@`, a dot in the domain).
pub fn normalize_email(email: &str) -> Result<String, AccountError> {
    let email = email.trim().to_lowercase();
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && email.len() <= 320
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if valid { Ok(email) } else { Err(AccountError::InvalidEmail(email)) }
}

/// argon2id with the crate's default costs, off the async runtime (≈13 ms of CPU).
pub async fn hash_password(password: String) -> Result<String, AccountError> {
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.chars().count()) {
        return Err(AccountError::WeakPassword);
    }
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| AccountError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AccountError::Hashing(e.to_string()))?
}

/// Verifies a password against a stored PHC hash, off the async runtime.
pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Creates a user in the account called `account_name`, creating the account if needed.
pub async fn create_user(
    db: &PgPool,
    email: &str,
    password: String,
    account_name: &str,
) -> Result<(AccountId, UserId), AccountError> {
    let email = normalize_email(email)?;
    let hash = hash_password(password).await?;
    let mut tx = db.begin().await?;
    let account: Option<AccountId> = sqlx::query_scalar("select id from accounts where name = $1 order by id limit 1")
        .bind(account_name)
        .fetch_optional(&mut *tx)
        .await?;
    let account = match account {
        Some(id) => id,
        None => {
            sqlx::query_scalar("insert into accounts (name) values ($1) returning id")
                .bind(account_name)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let user =
        sqlx::query_scalar("insert into users (account_id, email, password_hash) values ($1, $2, $3) returning id")
            .bind(account)
            .bind(&email)
            .bind(&hash)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.constraint() == Some("users_email_key") => {
                    AccountError::EmailTaken(email.clone())
                }
                _ => AccountError::Database(e),
            })?;
    tx.commit().await?;
    Ok((account, user))
}

/// SHA-256 of a high-entropy token: what the database stores and looks up.
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Issues an admin token for the user with `email`; returns the plaintext, shown once.
pub async fn create_admin_token(db: &PgPool, email: &str, name: &str) -> Result<String, AccountError> {
    let email = normalize_email(email)?;
    let user: Option<(UserId, AccountId)> =
        sqlx::query_as("select id, account_id from users where email = $1").bind(&email).fetch_optional(db).await?;
    let (user_id, account_id) = user.ok_or_else(|| AccountError::NoSuchUser(email.clone()))?;
    let token = format!("{ADMIN_TOKEN_PREFIX}{}", Alphanumeric.sample_string(&mut rand::rng(), ADMIN_TOKEN_RANDOM_LEN));
    let hint = format!("{}…{}", &token[..7], &token[token.len() - 4..]);
    sqlx::query("insert into admin_tokens (account_id, user_id, name, token_hash, hint) values ($1, $2, $3, $4, $5)")
        .bind(account_id)
        .bind(user_id)
        .bind(name)
        .bind(token_digest(&token))
        .bind(hint)
        .execute(db)
        .await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email(" Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in ["", "ada", "ada@", "@x.com", "ada@x", "a b@x.com", "a@x.com."] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), hash.clone()).await);
        assert!(!verify_password("wrong horse battery".into(), hash).await);
        assert!(matches!(hash_password("short".into()).await, Err(AccountError::WeakPassword)));
    }
}
