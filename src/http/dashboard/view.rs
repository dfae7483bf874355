//! What every page shares: the layout's data, times (rendered in UTC, turned into the viewer's
//! zone by the script, UTC kept on hover), numbers, badges and the freshness rating of a sync
//! stream against its schedule.

use chrono::{DateTime, Utc};
use clientapi_sync::status::{StreamStatus, SyncRun};

use super::Session;
use super::assets::{ASSETS, Assets};

/// The layout's data.
pub struct Chrome {
    pub title: String,
    /// The nav item to mark current.
    pub section: &'static str,
    /// The session's CSRF token (signed-in pages have one; the sign-in page does not).
    pub csrf: Option<String>,
    /// The event stream this page's live regions follow.
    pub events: Option<String>,
    pub assets: &'static Assets,
}

impl Chrome {
    pub fn bare(title: &str) -> Self {
        Self { title: title.to_owned(), section: "", csrf: None, events: None, assets: &ASSETS }
    }

    pub fn page(session: &Session, section: &'static str, title: impl Into<String>) -> Self {
        Self { title: title.into(), section, csrf: Some(session.csrf.clone()), events: None, assets: &ASSETS }
    }

    pub fn live(mut self, events: impl Into<String>) -> Self {
        self.events = Some(events.into());
        self
    }

    pub fn csrf(&self) -> &str {
        self.csrf.as_deref().unwrap_or_default()
    }

    pub fn signed_in(&self) -> bool {
        self.csrf.is_some()
    }
}

/// A time as a `<time>` element: UTC in the text and the title; the script shows it in the
/// viewer's zone and keeps UTC on hover.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    match at {
        None => "—".to_owned(),
        Some(at) => {
            let utc = at.format("%Y-%m-%d %H:%M:%S UTC");
            format!(
                r#"<time datetime="{}" title="{utc}">{utc}</time>"#,
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        }
    }
}

/// How long ago, roughly.
pub fn ago(at: Option<DateTime<Utc>>) -> String {
    match at {
        None => "never".to_owned(),
        Some(at) => match (Utc::now() - at).num_seconds() {
            s if s < 1 => "just now".to_owned(),
            s => format!("{} ago", span(s as f64)),
        },
    }
}

/// A span of seconds, roughly: "4 s", "12 min", "3 h", "2 d".
pub fn span(secs: f64) -> String {
    match secs {
        s if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h", s / 3600.0),
        s => format!("{:.0} d", s / 86_400.0),
    }
}

/// An integer with thousands separators.
pub fn number(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Milliseconds, or a dash.
pub fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| if v < 10.0 { format!("{v:.2} ms") } else { format!("{v:.0} ms") })
}

/// A percentage of a whole, or a dash when there is no whole.
pub fn percent(part: i64, whole: i64) -> String {
    if whole == 0 { "—".to_owned() } else { format!("{:.1}%", part as f64 * 100.0 / whole as f64) }
}

/// A coloured label with words (never colour alone).
#[derive(Debug, Clone)]
pub struct Badge {
    /// `good`, `warn`, `bad`, `info` or `neutral`.
    pub tone: &'static str,
    pub label: String,
}

impl Badge {
    pub fn new(tone: &'static str, label: impl Into<String>) -> Self {
        Self { tone, label: label.into() }
    }
}

/// A connection's state in one word: needs re-auth, disconnected, syncing, failing, paused or active.
pub fn connection_badge(status: &str, paused: bool, running: bool, last_failed: bool) -> Badge {
    match status {
        "needs_reauth" => Badge::new("bad", "Needs re-auth"),
        "disconnected" => Badge::new("neutral", "Disconnected"),
        _ if running => Badge::new("info", "Syncing"),
        _ if last_failed => Badge::new("bad", "Failing"),
        _ if paused => Badge::new("neutral", "Paused"),
        _ => Badge::new("good", "Active"),
    }
}

pub fn environment_badge(environment: &str) -> Badge {
    match environment {
        "sandbox" => Badge::new("sandbox", "Sandbox"),
        "test" => Badge::new("sandbox", "Test"),
        _ => Badge::new("live", "Live"),
    }
}

/// A stream's freshness against the schedule: Syncing, Error (the last run failed on it and it
/// has not succeeded since), On time (a success within two intervals and a minute), Late,
/// Paused, or Never synced.
pub fn rate_stream(
    name: &str,
    status: Option<&StreamStatus>,
    interval_minutes: u32,
    running: Option<&SyncRun>,
    last_finished: Option<&SyncRun>,
    paused: bool,
) -> Badge {
    let success = status.and_then(|s| s.last_success_at);
    if running.is_some_and(|r| r.stream.as_deref() == Some(name) || status.is_some_and(|s| s.scan_in_progress)) {
        return Badge::new("info", "Syncing");
    }
    if let Some(run) = last_finished.filter(|r| r.status == "failed" && r.stream.as_deref() == Some(name))
        && success.is_none_or(|at| at < run.started_at)
    {
        return Badge::new("bad", "Error");
    }
    let Some(age) = status.and_then(|s| s.freshness_seconds) else {
        return if running.is_some() { Badge::new("info", "Waiting") } else { Badge::new("neutral", "Never synced") };
    };
    let allowed = 2.0 * 60.0 * f64::from(interval_minutes) + 60.0;
    match () {
        _ if age <= allowed => Badge::new("good", "On time"),
        _ if paused => Badge::new("neutral", "Paused"),
        _ => Badge::new("warn", "Late"),
    }
}

/// The label of a stream for people: the resources it fills.
pub fn stream_label(stream: &clientapi_sync::provider::Stream) -> String {
    let names: Vec<String> = stream.resources.iter().map(|r| r.plural().replace('_', " ")).collect();
    let text = names.join(" and ");
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Text made safe inside HTML or SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(age: Option<f64>) -> StreamStatus {
        StreamStatus {
            stream: "job".into(),
            watermark: None,
            scan_in_progress: false,
            last_success_at: age.map(|a| Utc::now() - chrono::Duration::seconds(a as i64)),
            last_full_at: None,
            freshness_seconds: age,
        }
    }

    #[test]
    fn streams_are_rated_against_their_schedule() {
        assert_eq!(rate_stream("job", Some(&stream(Some(60.0))), 5, None, None, false).label, "On time");
        assert_eq!(rate_stream("job", Some(&stream(Some(3600.0))), 5, None, None, false).label, "Late");
        assert_eq!(rate_stream("job", Some(&stream(Some(3600.0))), 60, None, None, false).label, "On time");
        assert_eq!(rate_stream("job", Some(&stream(Some(3600.0))), 5, None, None, true).label, "Paused");
        assert_eq!(rate_stream("job", None, 5, None, None, false).label, "Never synced");
    }

    #[test]
    fn numbers_and_spans_read_naturally() {
        assert_eq!(number(1_234_567), "1,234,567");
        assert_eq!(number(12), "12");
        assert_eq!(number(-1000), "-1,000");
        assert_eq!(span(42.0), "42 s");
        assert_eq!(span(600.0), "10 min");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(0, 0), "—");
    }
}
