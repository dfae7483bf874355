//! Sync schedules as admins set them: an incremental sync every N minutes and a nightly
//! reconciliation at HH:MM UTC, stored as the six-field cron expressions the scheduler runs.
//! Only intervals that divide an hour or a day evenly are offered, so "every N minutes" means
//! exactly that around the clock; a schedule set some other way (SQL, an older release) is
//! shown as its cron text and kept until changed.

use clientapi_schema::{AccountId, ConnectionId};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::{ApiError, FieldError};

/// The incremental intervals offered, in minutes.
pub const INTERVALS: [u32; 19] = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440];

/// A connection's schedule as the admin API and the dashboard show it.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// `None` when the cron expression is not one of the offered intervals.
    pub incremental_every_minutes: Option<u32>,
    /// `HH:MM` UTC, `None` when the cron expression is not a daily time.
    pub reconcile_at: Option<String>,
    pub paused: bool,
    pub sync_schedule: String,
    pub reconcile_schedule: String,
}

/// What an admin may change; absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChange {
    pub incremental_every_minutes: Option<u32>,
    pub reconcile_at: Option<String>,
    pub paused: Option<bool>,
}

/// The cron expression for an incremental sync every `minutes`.
pub fn interval_cron(minutes: u32) -> Option<String> {
    if !INTERVALS.contains(&minutes) {
        return None;
    }
    Some(match minutes {
        1 => "0 * * * * *".to_owned(),
        m if m < 60 => format!("0 */{m} * * * *"),
        60 => "0 0 * * * *".to_owned(),
        1440 => "0 0 0 * * *".to_owned(),
        m => format!("0 0 */{} * * *", m / 60),
    })
}

/// The interval a cron expression written by [`interval_cron`] stands for.
pub fn cron_interval(cron: &str) -> Option<u32> {
    INTERVALS.iter().copied().find(|m| interval_cron(*m).as_deref() == Some(cron))
}

/// `HH:MM` (UTC) as a daily cron expression.
pub fn daily_cron(at: &str) -> Option<String> {
    let (h, m) = at.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && at.len() == 5).then(|| format!("0 {m} {h} * * *"))
}

/// The `HH:MM` of a daily cron expression written by [`daily_cron`].
pub fn cron_daily(cron: &str) -> Option<String> {
    let fields: Vec<&str> = cron.split(' ').collect();
    let [sec, m, h, "*", "*", "*"] = fields.as_slice() else { return None };
    let (m, h): (u32, u32) = (m.parse().ok()?, h.parse().ok()?);
    (*sec == "0" && h < 24 && m < 60).then(|| format!("{h:02}:{m:02}"))
}

impl Schedule {
    pub fn from_cron(sync_schedule: String, reconcile_schedule: String, paused: bool) -> Self {
        Self {
            incremental_every_minutes: cron_interval(&sync_schedule),
            reconcile_at: cron_daily(&reconcile_schedule),
            paused,
            sync_schedule,
            reconcile_schedule,
        }
    }

    /// The interval in minutes the sync is expected to keep, for rating freshness.
    pub fn expected_interval_minutes(&self) -> u32 {
        self.incremental_every_minutes.unwrap_or(5)
    }
}

/// One of `account`'s connections' schedule.
pub async fn get(db: &PgPool, account: AccountId, id: ConnectionId) -> Result<Schedule, ApiError> {
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "select sync_schedule, reconcile_schedule, sync_paused from connections where account_id = $1 and id = $2",
    )
    .bind(account)
    .bind(id)
    .fetch_optional(db)
    .await?;
    let (sync, reconcile, paused) = row.ok_or(ApiError::NotFound)?;
    Ok(Schedule::from_cron(sync, reconcile, paused))
}

/// Applies a change, every bad field named in one 422; the scheduler picks it up on its next
/// refresh (within 30 seconds).
pub async fn update(
    db: &PgPool,
    account: AccountId,
    id: ConnectionId,
    change: &ScheduleChange,
) -> Result<Schedule, ApiError> {
    let mut errors = Vec::new();
    let sync = change.incremental_every_minutes.map(|m| {
        interval_cron(m).unwrap_or_else(|| {
            let offered: Vec<String> = INTERVALS.iter().map(u32::to_string).collect();
            errors.push(FieldError::new("incremental_every_minutes", format!("one of {}", offered.join(", "))));
            String::new()
        })
    });
    let reconcile = change.reconcile_at.as_deref().map(|at| {
        daily_cron(at).unwrap_or_else(|| {
            errors.push(FieldError::new("reconcile_at", "a UTC time of day as HH:MM, from 00:00 to 23:59"));
            String::new()
        })
    });
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let done = sqlx::query(
        "update connections set sync_schedule = coalesce($3, sync_schedule),
             reconcile_schedule = coalesce($4, reconcile_schedule), sync_paused = coalesce($5, sync_paused),
             updated_at = now()
         where account_id = $1 and id = $2",
    )
    .bind(account)
    .bind(id)
    .bind(sync)
    .bind(reconcile)
    .bind(change.paused)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    get(db, account, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_interval_round_trips_through_its_cron_expression() {
        for m in INTERVALS {
            assert_eq!(cron_interval(&interval_cron(m).unwrap()), Some(m), "{m}");
        }
        assert_eq!(interval_cron(5).as_deref(), Some("0 */5 * * * *"), "the default schedule");
        assert_eq!(interval_cron(7), None);
        assert_eq!(cron_interval("0 */7 * * * *"), None);
    }

    #[test]
    fn daily_times_round_trip_and_bad_ones_are_refused() {
        assert_eq!(daily_cron("03:30").as_deref(), Some("0 30 3 * * *"), "the default reconciliation");
        assert_eq!(cron_daily("0 30 3 * * *").as_deref(), Some("03:30"));
        for bad in ["24:00", "3:30", "03:60", "0330", "aa:bb", ""] {
            assert_eq!(daily_cron(bad), None, "{bad}");
        }
    }
}
