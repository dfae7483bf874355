//! What the request log says, for admins: usage per endpoint per time bucket over a range
//! (requests, errors by class, p50/p95 latency), and the log itself in keyset pages. The admin
//! JSON API and the dashboard call these same functions, so they never disagree.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clientapi_schema::AccountId;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::error::{ApiError, FieldError};

/// The ranges every widget shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    Hour,
    #[default]
    Day,
    Week,
    Month,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Hour, Range::Day, Range::Week, Range::Month];

    pub fn parse(raw: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    /// A range from a query parameter: absent means the default, anything unknown is a 422.
    pub fn from_param(raw: Option<&str>) -> Result<Range, ApiError> {
        match raw.filter(|r| !r.is_empty()) {
            None => Ok(Range::default()),
            Some(raw) => Range::parse(raw)
                .ok_or_else(|| ApiError::Invalid(vec![FieldError::new("range", "one of 1h, 24h, 7d, 30d")])),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Range::Hour => "Last hour",
            Range::Day => "Last 24 hours",
            Range::Week => "Last 7 days",
            Range::Month => "Last 30 days",
        }
    }

    pub fn span(self) -> TimeDelta {
        match self {
            Range::Hour => TimeDelta::hours(1),
            Range::Day => TimeDelta::days(1),
            Range::Week => TimeDelta::days(7),
            Range::Month => TimeDelta::days(30),
        }
    }

    /// Bucket width: 12 to 30 bars whatever the range.
    pub fn bucket(self) -> TimeDelta {
        match self {
            Range::Hour => TimeDelta::minutes(5),
            Range::Day => TimeDelta::hours(1),
            Range::Week => TimeDelta::hours(6),
            Range::Month => TimeDelta::days(1),
        }
    }

    /// The buckets' starts, oldest first: the last one holds now.
    pub fn bucket_starts(self, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let width = self.bucket();
        let last = now.duration_trunc(width).unwrap_or(now);
        let count = (self.span().num_seconds() / width.num_seconds()) as i32;
        (0..count).rev().map(|i| last - width * i).collect()
    }
}

/// One time bucket of one endpoint (or of the whole account).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub requests: i64,
    /// 4xx and 5xx answers.
    pub errors: i64,
    /// 1xx–3xx answers.
    pub ok: i64,
    pub client_errors: i64,
    pub server_errors: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointUsage {
    pub id: String,
    pub name: String,
    pub totals: Bucket,
    pub buckets: Vec<Bucket>,
}

/// Usage over a range: per endpoint, and the account's totals, bucket by bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub range: &'static str,
    pub bucket_seconds: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub totals: Bucket,
    pub buckets: Vec<Bucket>,
    pub endpoints: Vec<EndpointUsage>,
}

impl Usage {
    pub fn endpoint(&self, id: &str) -> Option<&EndpointUsage> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    endpoint: Option<String>,
    bucket: Option<DateTime<Utc>>,
    requests: i64,
    ok: i64,
    client_errors: i64,
    server_errors: i64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
}

/// `account`'s usage over `range`, for every endpoint or only `endpoint` (a public id). One
/// statement: grouping sets give per endpoint per bucket, per endpoint, per bucket and overall.
pub async fn usage(
    db: &PgPool,
    account: AccountId,
    range: Range,
    endpoint: Option<&str>,
) -> Result<Usage, sqlx::Error> {
    let now = Utc::now();
    let starts = range.bucket_starts(now);
    let from = starts[0];
    let rows: Vec<UsageRow> = sqlx::query_as(
        "select e.public_id as endpoint, date_bin(make_interval(secs => $3), r.created_at, $2) as bucket,
                count(r.status) as requests, count(*) filter (where r.status < 400) as ok,
                count(*) filter (where r.status between 400 and 499) as client_errors,
                count(*) filter (where r.status >= 500) as server_errors,
                percentile_cont(0.5) within group (order by r.duration_ms) as p50_ms,
                percentile_cont(0.95) within group (order by r.duration_ms) as p95_ms
         from endpoints e join request_logs r on r.endpoint_id = e.id and r.created_at >= $2
         where e.account_id = $1 and ($4::text is null or e.public_id = $4)
         group by grouping sets ((e.public_id, date_bin(make_interval(secs => $3), r.created_at, $2)), (e.public_id),
                                 (date_bin(make_interval(secs => $3), r.created_at, $2)), ())",
    )
    .bind(account)
    .bind(from)
    .bind(range.bucket().num_seconds() as f64)
    .bind(endpoint)
    .fetch_all(db)
    .await?;
    let endpoints: Vec<(String, String)> = sqlx::query_as(
        "select public_id, name from endpoints where account_id = $1 and ($2::text is null or public_id = $2)
         order by id",
    )
    .bind(account)
    .bind(endpoint)
    .fetch_all(db)
    .await?;

    let to_bucket = |row: &UsageRow, start: DateTime<Utc>| Bucket {
        start,
        requests: row.requests,
        errors: row.client_errors + row.server_errors,
        ok: row.ok,
        client_errors: row.client_errors,
        server_errors: row.server_errors,
        p50_ms: row.p50_ms,
        p95_ms: row.p95_ms,
    };
    let series = |endpoint: Option<&str>| -> Vec<Bucket> {
        starts
            .iter()
            .map(|start| {
                rows.iter()
                    .find(|r| r.endpoint.as_deref() == endpoint && r.bucket == Some(*start))
                    .map_or_else(|| Bucket { start: *start, ..Bucket::default() }, |r| to_bucket(r, *start))
            })
            .collect()
    };
    let totals_of = |endpoint: Option<&str>| -> Bucket {
        rows.iter()
            .find(|r| r.endpoint.as_deref() == endpoint && r.bucket.is_none())
            .map_or_else(|| Bucket { start: from, ..Bucket::default() }, |r| to_bucket(r, from))
    };
    let endpoints = endpoints
        .into_iter()
        .map(|(id, name)| EndpointUsage { totals: totals_of(Some(&id)), buckets: series(Some(&id)), id, name })
        .collect();
    Ok(Usage {
        range: range.as_str(),
        bucket_seconds: range.bucket().num_seconds(),
        from,
        to: now,
        totals: totals_of(None),
        buckets: series(None),
        endpoints,
    })
}

/// Which log rows to show.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    /// An exact status (`404`) or a class (`4xx`), as given.
    pub status: Option<String>,
    pub resource: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// A cursor from an earlier page: rows older than it.
    pub before: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogEntry {
    pub created_at: DateTime<Utc>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub resource: Option<String>,
    pub status: i16,
    pub item_count: Option<i32>,
    pub duration_ms: f32,
    pub query: Option<Value>,
    pub error_code: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub operation: Option<String>,
}

impl LogEntry {
    /// The keyset position of this row, as a cursor.
    pub fn cursor(&self) -> String {
        format!("{}_{}", self.created_at.timestamp_micros(), self.request_id)
    }
}

/// A status filter as an inclusive range.
pub fn status_range(status: Option<&str>) -> Result<(i16, i16), FieldError> {
    let bad = || FieldError::new("status", "a status like 404 or a class like 4xx");
    match status.filter(|s| !s.is_empty()) {
        None => Ok((0, 999)),
        Some(class) if class.len() == 3 && class.ends_with("xx") => match class[..1].parse::<i16>() {
            Ok(d) if (1..=5).contains(&d) => Ok((d * 100, d * 100 + 99)),
            _ => Err(bad()),
        },
        Some(exact) => match exact.parse::<i16>() {
            Ok(s) if (100..=599).contains(&s) => Ok((s, s)),
            _ => Err(bad()),
        },
    }
}

/// A log row's columns, for [`LogEntry`].
const LOG_SELECT: &str =
    "select created_at, request_id, method, path, resource, status, item_count, duration_ms, query,
        error_code, host(client_ip) as client_ip, user_agent, operation
    from request_logs where endpoint_id = $1";

fn parse_before(raw: &str) -> Option<(DateTime<Utc>, String)> {
    let (micros, request_id) = raw.split_once('_')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, request_id.to_owned()))
}

/// A page of an endpoint's log (by its internal id, already checked to be the caller's),
/// newest first, and the cursor of the next page.
pub async fn logs(
    db: &PgPool,
    endpoint_id: i64,
    filter: &LogFilter,
) -> Result<(Vec<LogEntry>, Option<String>), ApiError> {
    let mut errors = Vec::new();
    let (low, high) = status_range(filter.status.as_deref()).unwrap_or_else(|e| {
        errors.push(e);
        (0, 999)
    });
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        errors.push(FieldError::new("limit", "from 1 to 1000"));
    }
    let before = match filter.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(raw) => parse_before(raw).or_else(|| {
            errors.push(FieldError::new("before", "not a cursor this log gave out"));
            None
        }),
    };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let sql = format!(
        "{LOG_SELECT} and status between $2 and $3
           and ($4::timestamptz is null or created_at >= $4) and ($5::timestamptz is null or created_at < $5)
           and ($6::text is null or resource = $6)
           and ($7::timestamptz is null or (created_at, request_id) < ($7, $8))
         order by created_at desc, request_id desc limit $9"
    );
    let mut rows: Vec<LogEntry> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(endpoint_id)
        .bind(low)
        .bind(high)
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.resource.as_deref().filter(|r| !r.is_empty()))
        .bind(before.as_ref().map(|b| b.0))
        .bind(before.as_ref().map_or(String::new(), |b| b.1.clone()))
        .bind(limit + 1)
        .fetch_all(db)
        .await?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(LogEntry::cursor)
    });
    Ok((rows, next.flatten()))
}

/// The most rows a live tail sends at once; past it, the newest.
pub const TAIL_ROWS: i64 = 50;

/// Rows newer than `after` (a cursor): the newest [`TAIL_ROWS`] of them, oldest first. The
/// live tail.
pub async fn logs_after(db: &PgPool, endpoint_id: i64, after: Option<&str>) -> Result<Vec<LogEntry>, sqlx::Error> {
    let after = after.and_then(parse_before);
    let sql = format!(
        "select * from ({LOG_SELECT}
           and created_at >= coalesce($2, now() - interval '1 minute')
           and ($2::timestamptz is null or (created_at, request_id) > ($2, $3))
         order by created_at desc, request_id desc limit {TAIL_ROWS}) newest order by created_at, request_id"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(endpoint_id)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map_or(String::new(), |a| a.1.clone()))
        .fetch_all(db)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_has_a_dozen_to_thirty_buckets_ending_with_now() {
        let now = Utc::now();
        for range in Range::ALL {
            let starts = range.bucket_starts(now);
            assert!((12..=30).contains(&starts.len()), "{range:?}: {}", starts.len());
            assert!(*starts.last().unwrap() <= now && now - *starts.last().unwrap() < range.bucket());
            assert_eq!(Range::parse(range.as_str()), Some(range));
        }
        assert!(Range::from_param(Some("2h")).is_err());
        assert_eq!(Range::from_param(None).unwrap(), Range::Day);
    }

    #[test]
    fn status_filters_are_exact_codes_or_classes() {
        assert_eq!(status_range(Some("4xx")).unwrap(), (400, 499));
        assert_eq!(status_range(Some("404")).unwrap(), (404, 404));
        assert_eq!(status_range(None).unwrap(), (0, 999));
        for bad in ["6xx", "abc", "99", "4x"] {
            assert!(status_range(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_log_cursor_round_trips() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let (t, id) = parse_before(&format!("{}_{}", at.timestamp_micros(), "req_1_x")).unwrap();
        assert_eq!((t, id.as_str()), (at, "req_1_x"));
        assert!(parse_before("nonsense").is_none());
    }
}
