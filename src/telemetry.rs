//! Logging (tracing to stderr, so stdout stays for a command's answer) and the Prometheus
//! recorder, installed once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the log subscriber. `RUST_LOG` overrides the default filter.
pub fn init_logging(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The process-wide metrics recorder (idempotent: tests build many apps in one process).
pub fn metrics_handle() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness): then ours just renders empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub fn render_metrics() -> String {
    metrics_handle().render()
}
