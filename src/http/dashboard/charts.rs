//! Charts as inline SVG drawn on the server: no script, no library, and each chart has its
//! numbers in a table beside it for screen readers and for copying. A bar is a link to the log
//! rows behind it.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::view::escape;
use crate::usage::Bucket;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
const TOP: f64 = 14.0;
const LEFT: f64 = 44.0;

/// A round axis maximum at or above `max`.
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|m| *m >= max).unwrap_or(max)
}

fn axis(svg: &mut String, max: f64, unit: &str) {
    for fraction in [0.0, 0.5, 1.0] {
        let y = TOP + (HEIGHT - TOP) * (1.0 - fraction);
        let value = max * fraction;
        let label =
            if value >= 10.0 || value == 0.0 { format!("{value:.0}{unit}") } else { format!("{value:.1}{unit}") };
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{x:.1}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x = LEFT - 6.0,
            ty = y + 4.0
        );
    }
}

fn bucket_title(start: DateTime<Utc>) -> String {
    start.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Requests per bucket, stacked by status class (2xx/3xx, 4xx, 5xx). `link(bucket)` is where a
/// click on a bar goes (so the chart is a group of links, not an image).
pub fn requests(buckets: &[Bucket], label: &str, link: impl Fn(&Bucket) -> String) -> String {
    let max = nice_max(buckets.iter().map(|b| b.requests).max().unwrap_or(0) as f64);
    let slot = (WIDTH - LEFT) / buckets.len().max(1) as f64;
    let bar = (slot * 0.72).max(1.0);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {h}" role="group" aria-label="{label}" preserveAspectRatio="none">"#,
        h = HEIGHT + 4.0,
        label = escape(label)
    );
    axis(&mut svg, max, "");
    for (i, b) in buckets.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let scale = |n: i64| (HEIGHT - TOP) * n as f64 / max;
        let mut y = HEIGHT;
        let title = format!(
            "{}: {} requests, {} errors (4xx {}, 5xx {})",
            bucket_title(b.start),
            b.requests,
            b.errors,
            b.client_errors,
            b.server_errors
        );
        let _ = write!(svg, r#"<a href="{}"><title>{}</title>"#, escape(&link(b)), escape(&title));
        // A transparent full-height target keeps small bars clickable.
        let _ =
            write!(svg, r#"<rect class="hit" x="{x:.1}" y="{TOP}" width="{bar:.1}" height="{:.1}"/>"#, HEIGHT - TOP);
        for (count, class) in [(b.ok, "ok"), (b.client_errors, "c4"), (b.server_errors, "c5")] {
            if count == 0 {
                continue;
            }
            let h = scale(count).max(1.0);
            y -= h;
            let _ = write!(svg, r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}"/>"#);
        }
        svg.push_str("</a>");
    }
    svg.push_str("</svg>");
    svg
}

/// p50 and p95 latency per bucket, as two lines (buckets without requests leave gaps).
pub fn latency(buckets: &[Bucket], label: &str) -> String {
    let max = nice_max(buckets.iter().filter_map(|b| b.p95_ms).fold(0.0, f64::max));
    let slot = (WIDTH - LEFT) / buckets.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {h}" role="img" aria-label="{label}" preserveAspectRatio="none">"#,
        h = HEIGHT + 4.0,
        label = escape(label)
    );
    axis(&mut svg, max, " ms");
    for (class, value) in
        [("p95", (|b: &Bucket| b.p95_ms) as fn(&Bucket) -> Option<f64>), ("p50", |b: &Bucket| b.p50_ms)]
    {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, b) in buckets.iter().enumerate() {
            let x = LEFT + slot * (i as f64 + 0.5);
            match value(b) {
                Some(v) => {
                    let y = HEIGHT - (HEIGHT - TOP) * v / max;
                    let _ = write!(path, "{}{x:.1} {y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                    let _ = write!(
                        svg,
                        r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="2.5"><title>{}: {class} {v:.2} ms</title></circle>"#,
                        escape(&bucket_title(b.start))
                    );
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(svg, r#"<path class="{class}" d="{}"/>"#, path.trim_end());
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(requests: i64, errors: i64) -> Bucket {
        Bucket {
            start: Utc::now(),
            requests,
            errors,
            ok: requests - errors,
            client_errors: errors,
            server_errors: 0,
            p50_ms: (requests > 0).then_some(1.5),
            p95_ms: (requests > 0).then_some(4.0),
        }
    }

    #[test]
    fn a_bar_per_bucket_links_to_its_rows_and_empty_buckets_draw_no_bars() {
        let svg = requests(&[bucket(10, 2), bucket(0, 0), bucket(3, 0)], "Requests", |_| "/log?x=1&y=2".into());
        assert_eq!(svg.matches("<a href=\"/log?x=1&amp;y=2\">").count(), 3);
        assert_eq!(svg.matches(r#"class="c4""#).count(), 1);
        assert_eq!(svg.matches(r#"class="ok""#).count(), 2);
        assert!(svg.contains("10 requests, 2 errors"));
    }

    #[test]
    fn latency_lines_break_where_there_were_no_requests() {
        let svg = latency(&[bucket(1, 0), bucket(0, 0), bucket(1, 0)], "Latency");
        assert_eq!(svg.matches(r#"<path class="p50" d="M"#).count(), 1);
        assert_eq!(svg.matches(" M").count() + svg.matches("\"M").count(), 4, "{svg}");
    }

    #[test]
    fn axes_round_up() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(240.0), 250.0);
    }
}
