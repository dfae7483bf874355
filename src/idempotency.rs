//! `Idempotency-Key` on public writes: the same key and body replays the first answer without
//! a second provider call; the same key with another body is a 422; a key whose first request
//! is still running is a 409. Keys live 24 hours. A failed attempt that may have reached the
//! provider leaves the key retryable with the id it chose, so the retry looks that id up first.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::ApiError;

pub const MAX_KEY_LEN: usize = 255;

/// A write runs to the end even when its caller goes away (it is not tied to the connection),
/// so only a process that died leaves a key "in flight"; after this long it may be retried.
pub const STALE_IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What to do with a request that carries a key.
pub enum Begin {
    /// Run it; `preset_id` is the id an earlier, failed attempt chose for its create.
    Run { preset_id: Option<String> },
    /// Answer with what the first request answered.
    Replay { status: u16, body: String },
}

/// The request's fingerprint: method, path and body.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), b"\n", path.as_bytes(), b"\n", body] {
        hash.update(part);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A usable key, or a 422 naming the header.
pub fn parse_key(value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > MAX_KEY_LEN || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::Invalid(vec![crate::error::FieldError::new(
            "Idempotency-Key",
            format!("1 to {MAX_KEY_LEN} printable ASCII characters"),
        )]));
    }
    Ok(value.to_owned())
}

pub async fn begin(db: &PgPool, endpoint: i64, key: &str, hash: &str) -> Result<Begin, ApiError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "delete from idempotency_keys where endpoint_id = $1 and key = $2 and created_at < now() - interval '24 hours'",
    )
    .bind(endpoint)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query(
        "insert into idempotency_keys (endpoint_id, key, request_hash) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(endpoint)
    .bind(key)
    .bind(hash)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        tx.commit().await?;
        return Ok(Begin::Run { preset_id: None });
    }
    // A request still "in flight" after STALE_IN_FLIGHT died with its process: retryable.
    let (stored_hash, state, record_id, status, body): (String, String, Option<String>, Option<i16>, Option<String>) =
        sqlx::query_as(
            "select request_hash,
                    case when state = 'in_flight' and created_at < now() - make_interval(secs => $3) then 'retryable'
                         else state end,
                    record_id, response_status, response_body
             from idempotency_keys where endpoint_id = $1 and key = $2 for update",
        )
        .bind(endpoint)
        .bind(key)
        .bind(STALE_IN_FLIGHT.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
    if stored_hash != hash {
        return Err(ApiError::Invalid(vec![crate::error::FieldError::new(
            "Idempotency-Key",
            "already used for a different request (method, path or body); use a new key",
        )]));
    }
    match state.as_str() {
        "done" => Ok(Begin::Replay { status: status.unwrap_or(200) as u16, body: body.unwrap_or_default() }),
        "retryable" => {
            sqlx::query(
                "update idempotency_keys set state = 'in_flight', created_at = now() where endpoint_id = $1 and key = $2",
            )
                .bind(endpoint)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Begin::Run { preset_id: record_id })
        }
        _ => Err(ApiError::Conflict {
            code: "idempotency_in_flight",
            detail: "A request with this Idempotency-Key is still being processed; retry shortly.".into(),
        }),
    }
}

/// Remembers the id a create chose, before the provider is called.
pub async fn chose_id(db: &PgPool, endpoint: i64, key: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("update idempotency_keys set record_id = $3 where endpoint_id = $1 and key = $2")
        .bind(endpoint)
        .bind(key)
        .bind(id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Stores the answer to replay. Server-side failures (5xx) leave the key retryable instead:
/// the same request may succeed later, and must then find what the first attempt did.
pub async fn finish(db: &PgPool, endpoint: i64, key: &str, status: u16, body: &str) -> Result<(), sqlx::Error> {
    if status >= 500 {
        sqlx::query("update idempotency_keys set state = 'retryable' where endpoint_id = $1 and key = $2")
            .bind(endpoint)
            .bind(key)
            .execute(db)
            .await?;
    } else {
        sqlx::query(
            "update idempotency_keys set state = 'done', response_status = $3, response_body = $4
             where endpoint_id = $1 and key = $2",
        )
        .bind(endpoint)
        .bind(key)
        .bind(status as i16)
        .bind(body)
        .execute(db)
        .await?;
    }
    Ok(())
}
