//! Connections (one connected provider account each) and their OAuth tokens: stored encrypted,
//! refreshed ahead of expiry by at most one caller per connection across every process (a row
//! lock), with the new refresh token committed before the new access token is handed out.
//! `invalid_grant` marks the connection `needs_reauth` and stops using it, without looping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clientapi_schema::secret::Secret;
use clientapi_schema::{AccountId, ConnectionId};
use sqlx::PgPool;

use crate::crypto::{Cipher, token_aad};
use crate::provider::{Provider, ProviderError, TokenSet};

/// Refresh when the access token has less than this left.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// A connection as the admin API shows it (never its tokens).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Connection {
    pub id: ConnectionId,
    pub account_id: AccountId,
    pub provider: String,
    pub external_account_id: String,
    pub name: String,
    pub status: String,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub sync_schedule: String,
    pub reconcile_schedule: String,
    pub last_error: Option<String>,
    /// `live` (a real provider account) or `sandbox` (a simulator or a provider's sandbox
    /// account): test endpoints exist only on sandboxes, live ones only on live connections.
    pub environment: String,
    /// Scheduled syncs are paused (manual ones still run).
    pub sync_paused: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Connection {
    /// What people call it: the provider account's name, or its id when the provider gave none.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() { &self.external_account_id } else { &self.name }
    }
}

const COLUMNS: &str = "id, account_id, provider, external_account_id, name, status, token_expires_at, scopes, \
                       sync_schedule, reconcile_schedule, last_error, environment, sync_paused, created_at, updated_at";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the connection needs to be authorised again (the provider refused its refresh token)")]
    NeedsReauth,
    #[error("the connection is disconnected")]
    Disconnected,
    #[error("no such connection")]
    NotFound,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Decrypt(#[from] crate::crypto::DecryptError),
}

/// Creates the connection for a provider account (or reconnects it) with fresh tokens. A
/// reconnected account keeps the environment it was first connected as: its endpoints' keys
/// were issued for it.
#[allow(clippy::too_many_arguments)]
pub async fn save_authorized(
    db: &PgPool,
    cipher: &Cipher,
    account: AccountId,
    provider: &str,
    external_account_id: &str,
    name: &str,
    environment: &str,
    tokens: &TokenSet,
) -> Result<Connection, sqlx::Error> {
    let mut tx = db.begin().await?;
    let id: ConnectionId = sqlx::query_scalar(
        "insert into connections (account_id, provider, external_account_id, name, environment)
         values ($1, $2, $3, $4, $5)
         on conflict (account_id, provider, external_account_id)
         do update set name = excluded.name, updated_at = now()
         returning id",
    )
    .bind(account)
    .bind(provider)
    .bind(external_account_id)
    .bind(name)
    .bind(environment)
    .fetch_one(&mut *tx)
    .await?;
    let access = cipher.encrypt(tokens.access_token.expose(), &token_aad(id.0, "access"));
    let refresh = tokens.refresh_token.as_ref().map(|t| cipher.encrypt(t.expose(), &token_aad(id.0, "refresh")));
    let sql = format!(
        "update connections set status = 'active', access_token_enc = $2, refresh_token_enc = $3,
         token_expires_at = $4, scopes = $5, last_error = null, updated_at = now() where id = $1 returning {COLUMNS}"
    );
    let connection = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(access)
        .bind(refresh)
        .bind(tokens.expires_at)
        .bind(&tokens.scopes)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(connection)
}

pub async fn list(db: &PgPool, account: AccountId) -> Result<Vec<Connection>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from connections where account_id = $1 order by id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(account).fetch_all(db).await
}

/// One connection of `account` (another account's id is simply not found).
pub async fn get(db: &PgPool, account: AccountId, id: ConnectionId) -> Result<Option<Connection>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from connections where account_id = $1 and id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(account).bind(id).fetch_optional(db).await
}

/// Any connection by id, for workers (which act for every account).
pub async fn get_any(db: &PgPool, id: ConnectionId) -> Result<Option<Connection>, sqlx::Error> {
    let sql = format!("select {COLUMNS} from connections where id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(db).await
}

/// Disconnects: the tokens are deleted, the mirrored data stays until the connection is removed.
pub async fn disconnect(db: &PgPool, account: AccountId, id: ConnectionId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update connections set status = 'disconnected', access_token_enc = null, refresh_token_enc = null,
         token_expires_at = null, updated_at = now() where account_id = $1 and id = $2",
    )
    .bind(account)
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    status: String,
    access_token_enc: Option<Vec<u8>>,
    refresh_token_enc: Option<Vec<u8>>,
    token_expires_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    fn usable(&self) -> Result<(), TokenError> {
        match self.status.as_str() {
            "active" => Ok(()),
            "needs_reauth" => Err(TokenError::NeedsReauth),
            _ => Err(TokenError::Disconnected),
        }
    }

    fn fresh(&self) -> bool {
        self.token_expires_at.is_none_or(|at| at > Utc::now() + REFRESH_AHEAD)
    }
}

/// Hands out valid access tokens for connections, refreshing them when due.
#[derive(Clone)]
pub struct TokenManager {
    db: PgPool,
    cipher: Cipher,
    /// Callers in this process queue here before taking the row lock, so a burst of them
    /// costs one refresh and one waiting database connection, not fifty.
    local: Arc<Mutex<HashMap<ConnectionId, Arc<tokio::sync::Mutex<()>>>>>,
}

impl TokenManager {
    pub fn new(db: PgPool, cipher: Cipher) -> Self {
        Self { db, cipher, local: Arc::default() }
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    async fn row(&self, id: ConnectionId) -> Result<TokenRow, TokenError> {
        sqlx::query_as(
            "select status, access_token_enc, refresh_token_enc, token_expires_at from connections where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db)
        .await?
        .ok_or(TokenError::NotFound)
    }

    fn decrypt_access(&self, id: ConnectionId, row: &TokenRow) -> Result<Secret<String>, TokenError> {
        let sealed = row.access_token_enc.as_deref().ok_or(TokenError::Disconnected)?;
        Ok(self.cipher.decrypt(sealed, &token_aad(id.0, "access"))?)
    }

    /// A valid access token, refreshed first when it expires within [`REFRESH_AHEAD`].
    pub async fn access_token(&self, provider: &dyn Provider, id: ConnectionId) -> Result<Secret<String>, TokenError> {
        let row = self.row(id).await?;
        row.usable()?;
        if row.fresh() {
            return self.decrypt_access(id, &row);
        }
        self.refresh(provider, id, None).await
    }

    /// After the provider rejected `stale`: refresh, unless another caller already did.
    pub async fn refresh_after_rejection(
        &self,
        provider: &dyn Provider,
        id: ConnectionId,
        stale: &Secret<String>,
    ) -> Result<Secret<String>, TokenError> {
        self.refresh(provider, id, Some(stale)).await
    }

    async fn refresh(
        &self,
        provider: &dyn Provider,
        id: ConnectionId,
        stale: Option<&Secret<String>>,
    ) -> Result<Secret<String>, TokenError> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().clone();
        let _queued = local.lock().await;

        let mut tx = self.db.begin().await?;
        // The row lock is the cross-process guarantee: one refresh per connection at a time.
        let row: TokenRow = sqlx::query_as(
            "select status, access_token_enc, refresh_token_enc, token_expires_at from connections where id = $1 for update",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(TokenError::NotFound)?;
        row.usable()?;
        let current = self.decrypt_access(id, &row)?;
        let already_replaced = match stale {
            Some(stale) => current.expose() != stale.expose(),
            None => row.fresh(),
        };
        if already_replaced {
            return Ok(current);
        }
        let Some(sealed) = row.refresh_token_enc.as_deref() else {
            return Err(self.mark_needs_reauth(tx, id, "no refresh token stored").await);
        };
        let refresh_token = self.cipher.decrypt(sealed, &token_aad(id.0, "refresh"))?;
        match provider.refresh(&refresh_token).await {
            Ok(tokens) => {
                let access = self.cipher.encrypt(tokens.access_token.expose(), &token_aad(id.0, "access"));
                // Rotation: the old refresh token may already be dead, so the new one is
                // committed before anyone uses the new access token.
                let refresh =
                    tokens.refresh_token.as_ref().map(|t| self.cipher.encrypt(t.expose(), &token_aad(id.0, "refresh")));
                sqlx::query(
                    "update connections set access_token_enc = $2, refresh_token_enc = coalesce($3, refresh_token_enc),
                     token_expires_at = $4, last_error = null, updated_at = now() where id = $1",
                )
                .bind(id)
                .bind(access)
                .bind(refresh)
                .bind(tokens.expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(connection_id = %id, "refreshed the provider access token");
                Ok(tokens.access_token)
            }
            Err(ProviderError::InvalidGrant) => {
                Err(self.mark_needs_reauth(tx, id, "the provider refused the refresh token").await)
            }
            Err(e) => Err(TokenError::Provider(e)),
        }
    }

    async fn mark_needs_reauth(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        id: ConnectionId,
        why: &str,
    ) -> TokenError {
        let result = sqlx::query(
            "update connections set status = 'needs_reauth', last_error = $2, updated_at = now() where id = $1",
        )
        .bind(id)
        .bind(why)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => match tx.commit().await {
                Ok(()) => {
                    tracing::warn!(connection_id = %id, "connection needs re-authorisation: {why}");
                    TokenError::NeedsReauth
                }
                Err(e) => TokenError::Database(e),
            },
            Err(e) => TokenError::Database(e),
        }
    }
}
