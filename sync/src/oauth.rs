//! The OAuth authorization-code flow that creates connections: a single-use `state` bound to
//! the admin who started it, PKCE S256, and a short expiry. Only SHA-256 of the state is stored;
//! the PKCE verifier is encrypted at rest.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clientapi_schema::{AccountId, UserId};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use url::Url;

use crate::connections::{self, Connection};
use crate::crypto::Cipher;
use crate::provider::{Provider, ProviderError};

/// How long an authorize link stays usable.
pub const STATE_TTL_MINUTES: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("the OAuth state is missing, unknown, already used, expired or was started by another user")]
    InvalidState,
    #[error("the provider denied access: {0}")]
    Denied(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

fn verifier_aad(hash: &[u8]) -> String {
    format!("clientapi:oauth_state:{}", URL_SAFE_NO_PAD.encode(hash))
}

/// Starts the flow: returns the provider URL to send the admin to. `environment` (`live` or
/// `sandbox`) is what the new connection will be.
pub async fn begin(
    db: &PgPool,
    cipher: &Cipher,
    provider: &dyn Provider,
    account: AccountId,
    user: UserId,
    redirect_uri: &Url,
    environment: &str,
) -> Result<Url, OAuthError> {
    let state = Alphanumeric.sample_string(&mut rand::rng(), 43);
    // RFC 7636: 43–128 characters from the unreserved set.
    let verifier = Alphanumeric.sample_string(&mut rand::rng(), 64);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let url = provider.authorize_url(redirect_uri, &state, &challenge)?;
    let hash = state_hash(&state);
    // Expired states are useless: sweep them as new ones are made.
    sqlx::query("delete from oauth_states where expires_at < now()").execute(db).await?;
    sqlx::query(
        "insert into oauth_states (state_hash, account_id, user_id, provider, pkce_verifier_enc, expires_at, environment)
         values ($1, $2, $3, $4, $5, now() + make_interval(mins => $6), $7)",
    )
    .bind(&hash)
    .bind(account)
    .bind(user)
    .bind(provider.kind().as_str())
    .bind(cipher.encrypt(&verifier, &verifier_aad(&hash)))
    .bind(STATE_TTL_MINUTES)
    .bind(environment)
    .execute(db)
    .await?;
    Ok(url)
}

/// Finishes the flow for the admin `user`: consumes the state, exchanges the code, identifies
/// the provider account and stores the connection with its tokens encrypted.
pub async fn complete(
    db: &PgPool,
    cipher: &Cipher,
    provider: &dyn Provider,
    user: UserId,
    state: &str,
    code: &str,
    redirect_uri: &Url,
) -> Result<Connection, OAuthError> {
    let hash = state_hash(state);
    // Deleting is what makes it single-use; only the admin who started it can consume it.
    let row: Option<(AccountId, Vec<u8>, bool, String)> = sqlx::query_as(
        "delete from oauth_states where state_hash = $1 and user_id = $2 and provider = $3
         returning account_id, pkce_verifier_enc, expires_at > now(), environment",
    )
    .bind(&hash)
    .bind(user)
    .bind(provider.kind().as_str())
    .fetch_optional(db)
    .await?;
    let Some((account, sealed, live, environment)) = row else { return Err(OAuthError::InvalidState) };
    if !live {
        return Err(OAuthError::InvalidState);
    }
    let verifier = cipher.decrypt(&sealed, &verifier_aad(&hash)).map_err(|_| OAuthError::InvalidState)?;
    let tokens = provider.exchange_code(code, verifier.expose(), redirect_uri).await?;
    let (external_id, name) = provider.account(&tokens.access_token).await?;
    let connection = connections::save_authorized(
        db,
        cipher,
        account,
        provider.kind().as_str(),
        &external_id,
        &name,
        &environment,
        &tokens,
    )
    .await?;
    tracing::info!(connection_id = %connection.id, provider = provider.kind().as_str(), "provider connected");
    Ok(connection)
}
