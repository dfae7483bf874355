//! Settings from the environment (`CLIENTAPI_*`, `DATABASE_URL`) over an optional TOML file,
//! validated at start with every bad setting named. Secrets are wrapped so `Debug` redacts them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use url::Url;

pub use clientapi_schema::secret::Secret;

/// The 32-byte master key that encrypts provider tokens at rest.
pub type MasterKey = Secret<[u8; 32]>;

/// One provider app's OAuth credentials and base URLs.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    pub api_url: Url,
    pub oauth_url: Url,
    /// The account's request budget per minute (ServiceM8 documents 180).
    pub requests_per_minute: u32,
}

/// The service's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// External Postgres; `None` runs the local cluster in `data_dir`.
    pub database_url: Option<Secret<String>>,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub public_url: Url,
    /// From `CLIENTAPI_SECRET_KEY`; `None` means "generate or read it in the data dir".
    pub secret_key: Option<MasterKey>,
    pub servicem8: ProviderSettings,
    pub jobber: ProviderSettings,
    /// The `X-JOBBER-GRAPHQL-VERSION` every Jobber request pins.
    pub jobber_graphql_version: String,
    /// Days of request logs kept.
    pub request_log_retention_days: u32,
    /// Seconds one provider request may take, connect to last byte.
    pub provider_timeout_secs: u64,
    /// Milliseconds a failing client IP's answers are held past its free budget (0: never).
    pub failed_auth_delay_ms: u64,
    /// Transactions (each its own Postgres backend) that may write one sync page at once.
    pub sync_writers: usize,
    /// Reader connections (per Postgres server read from) that pages may hold at once; exports
    /// as many again.
    pub read_connections: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client (empty: the peer is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Customer webhooks (DESIGN.md §8).
    pub webhooks: WebhookSettings,
    /// Hot standbys that serve customer reads (`CLIENTAPI_READ_REPLICA_URLS`, comma-separated).
    pub read_replica_urls: Vec<Secret<String>>,
    /// A standby serves reads only while its replay is this far behind the primary, or less.
    pub replica_max_lag_ms: u64,
    /// Hot standbys of the local cluster started beside it (`serve --local-replicas N`).
    pub local_replicas: usize,
    /// API processes sharing each endpoint's rate limit: each admits `limit / N` of it, so all
    /// of them together never admit more than the limit.
    pub api_processes: u32,
}

/// How customer webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Subscriber URLs may point at loopback, private and link-local addresses (the operator's own
    /// network). Off by default: no SSRF into the operator's network.
    pub allow_private: bool,
    /// How long an event is retried before it is given up, and how long a subscription may fail
    /// without a success before it is disabled.
    pub retry_for: std::time::Duration,
    /// The first retry's delay; each further one doubles, to an hour, with jitter.
    pub retry_base: std::time::Duration,
    /// One delivery attempt's limit, connect to last byte.
    pub timeout: std::time::Duration,
}

/// Every setting: environment name, TOML key, default shown in docs.
pub const SETTINGS: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("CLIENTAPI_DATA_DIR", "data_dir"),
    ("CLIENTAPI_BIND", "bind"),
    ("CLIENTAPI_PUBLIC_URL", "public_url"),
    ("CLIENTAPI_SECRET_KEY", "secret_key"),
    ("CLIENTAPI_SERVICEM8_CLIENT_ID", "servicem8_client_id"),
    ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", "servicem8_client_secret"),
    ("CLIENTAPI_SERVICEM8_API_URL", "servicem8_api_url"),
    ("CLIENTAPI_SERVICEM8_OAUTH_URL", "servicem8_oauth_url"),
    ("CLIENTAPI_SERVICEM8_REQUESTS_PER_MINUTE", "servicem8_requests_per_minute"),
    ("CLIENTAPI_JOBBER_CLIENT_ID", "jobber_client_id"),
    ("CLIENTAPI_JOBBER_CLIENT_SECRET", "jobber_client_secret"),
    ("CLIENTAPI_JOBBER_API_URL", "jobber_api_url"),
    ("CLIENTAPI_JOBBER_OAUTH_URL", "jobber_oauth_url"),
    ("CLIENTAPI_JOBBER_GRAPHQL_VERSION", "jobber_graphql_version"),
    ("CLIENTAPI_REQUEST_LOG_RETENTION_DAYS", "request_log_retention_days"),
    ("CLIENTAPI_PROVIDER_TIMEOUT_SECS", "provider_timeout_secs"),
    ("CLIENTAPI_FAILED_AUTH_DELAY_MS", "failed_auth_delay_ms"),
    ("CLIENTAPI_SYNC_WRITERS", "sync_writers"),
    ("CLIENTAPI_READ_CONNECTIONS", "read_connections"),
    ("CLIENTAPI_TRUSTED_PROXIES", "trusted_proxies"),
    ("CLIENTAPI_WEBHOOKS_ALLOW_PRIVATE", "webhooks_allow_private"),
    ("CLIENTAPI_WEBHOOK_RETRY_FOR_SECS", "webhook_retry_for_secs"),
    ("CLIENTAPI_WEBHOOK_RETRY_BASE_MS", "webhook_retry_base_ms"),
    ("CLIENTAPI_WEBHOOK_TIMEOUT_SECS", "webhook_timeout_secs"),
    ("CLIENTAPI_READ_REPLICA_URLS", "read_replica_urls"),
    ("CLIENTAPI_REPLICA_MAX_LAG_MS", "replica_max_lag_ms"),
    ("CLIENTAPI_LOCAL_REPLICAS", "local_replicas"),
    ("CLIENTAPI_API_PROCESSES", "api_processes"),
];

pub const DEFAULT_FAILED_AUTH_DELAY_MS: u64 = 500;
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = ".clientapi";
pub const DEFAULT_SERVICEM8_API_URL: &str = "https://api.servicem8.com/api_1.0";
pub const DEFAULT_SERVICEM8_OAUTH_URL: &str = "https://go.servicem8.com/oauth";
pub const DEFAULT_JOBBER_API_URL: &str = "https://api.getjobber.com/api/graphql";
pub const DEFAULT_JOBBER_OAUTH_URL: &str = "https://api.getjobber.com/api/oauth";
pub use clientapi_schema::read::default_read_connections;
pub use clientapi_sync::engine::DEFAULT_WRITERS as DEFAULT_SYNC_WRITERS;
pub use clientapi_sync::servicem8::REQUESTS_PER_MINUTE as SERVICEM8_REQUESTS_PER_MINUTE;

/// All the problems found in the settings, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|(k, m)| format!("  {k}: {m}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<(String, String)>);

impl Config {
    /// Loads from the process environment and, if named by `--config` or `CLIENTAPI_CONFIG`,
    /// a TOML file.
    pub fn from_env(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load(config_file, &env)
    }

    /// The pure core of loading: `env` wins over the file, the file over defaults.
    pub fn load(config_file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut raw: BTreeMap<&'static str, (String, String)> = BTreeMap::new();

        let file = config_file
            .map(Path::to_path_buf)
            .or_else(|| env.get("CLIENTAPI_CONFIG").filter(|s| !s.is_empty()).map(PathBuf::from));
        if let Some(path) = &file {
            match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| text.parse::<toml::Table>().map_err(|e| e.message().to_owned()))
            {
                Err(e) => errors.push(("CLIENTAPI_CONFIG".into(), format!("{}: {e}", path.display()))),
                Ok(table) => {
                    for (key, value) in table {
                        let source = format!("{} key `{key}`", path.display());
                        match SETTINGS.iter().find(|(_, k)| *k == key) {
                            None => errors.push((source, "unknown setting".into())),
                            Some((_, k)) => match value {
                                toml::Value::String(s) => {
                                    raw.insert(k, (source, s));
                                }
                                toml::Value::Integer(i) => {
                                    raw.insert(k, (source, i.to_string()));
                                }
                                other => errors.push((source, format!("expected a string, got {}", other.type_str()))),
                            },
                        }
                    }
                }
            }
        }
        for (env_name, key) in SETTINGS {
            if let Some(value) = env.get(*env_name).filter(|v| !v.is_empty()) {
                raw.insert(key, (env_name.to_string(), value.clone()));
            }
        }

        let get = |key: &str| raw.get(key).map(|(source, value)| (source.clone(), value.clone()));
        let or_default =
            |key: &str, default: &str| get(key).unwrap_or_else(|| (env_name_of(key).to_owned(), default.to_owned()));

        let (src, v) = or_default("bind", DEFAULT_BIND);
        let bind = v
            .parse::<SocketAddr>()
            .map_err(|_| errors.push((src, format!("not a socket address like {DEFAULT_BIND} (got {v:?})"))))
            .ok();
        let data_dir = PathBuf::from(or_default("data_dir", DEFAULT_DATA_DIR).1);

        let public_url = match get("public_url") {
            Some((src, v)) => parse_url(&src, &v, &mut errors),
            None => bind.and_then(|b| {
                let host = if b.ip().is_unspecified() { "127.0.0.1".to_string() } else { b.ip().to_string() };
                let host = if b.is_ipv6() && !b.ip().is_unspecified() { format!("[{host}]") } else { host };
                Url::parse(&format!("http://{host}:{}", b.port())).ok()
            }),
        };

        let database_url = get("database_url").and_then(|(src, v)| {
            if v.starts_with("postgres://") || v.starts_with("postgresql://") {
                Some(Secret::new(v))
            } else {
                // Never echo the value: it may hold a password.
                errors.push((src, "must be a postgres:// or postgresql:// URL".into()));
                None
            }
        });

        let secret_key = get("secret_key").and_then(|(src, v)| match parse_master_key(&v) {
            Ok(key) => Some(key),
            Err(e) => {
                errors.push((src, e));
                None
            }
        });

        let api_url = get("servicem8_api_url")
            .map_or_else(|| Url::parse(DEFAULT_SERVICEM8_API_URL).ok(), |(s, v)| parse_url(&s, &v, &mut errors));
        let oauth_url = get("servicem8_oauth_url")
            .map_or_else(|| Url::parse(DEFAULT_SERVICEM8_OAUTH_URL).ok(), |(s, v)| parse_url(&s, &v, &mut errors));

        let jobber_api_url = get("jobber_api_url")
            .map_or_else(|| Url::parse(DEFAULT_JOBBER_API_URL).ok(), |(s, v)| parse_url(&s, &v, &mut errors));
        let jobber_oauth_url = get("jobber_oauth_url")
            .map_or_else(|| Url::parse(DEFAULT_JOBBER_OAUTH_URL).ok(), |(s, v)| parse_url(&s, &v, &mut errors));
        let jobber_version = match get("jobber_graphql_version") {
            None => Some(clientapi_sync::jobber::GRAPHQL_VERSION.to_owned()),
            Some((_, v)) if chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d").is_ok() => Some(v),
            Some((s, v)) => {
                errors.push((s, format!("expected a Jobber API version as YYYY-MM-DD, got `{v}`")));
                None
            }
        };
        let servicem8_per_minute = get("servicem8_requests_per_minute")
            .map_or(Some(SERVICEM8_REQUESTS_PER_MINUTE), |(s, v)| {
                parse_number(&s, &v, 1..=1_000_000, "requests per minute", &mut errors)
            });
        let retention = get("request_log_retention_days")
            .map_or(Some(30), |(s, v)| parse_number(&s, &v, 1..=3650, "days", &mut errors));
        let provider_timeout = get("provider_timeout_secs")
            .map_or(Some(60), |(s, v)| parse_number(&s, &v, 1..=600, "seconds", &mut errors));
        let failed_auth_delay = get("failed_auth_delay_ms").map_or(Some(DEFAULT_FAILED_AUTH_DELAY_MS), |(s, v)| {
            parse_number(&s, &v, 0..=10_000, "milliseconds", &mut errors)
        });
        let sync_writers = get("sync_writers").map_or(Some(DEFAULT_SYNC_WRITERS), |(s, v)| {
            parse_number(&s, &v, 1..=clientapi_schema::mirror::MAX_LANES, "writers", &mut errors)
        });

        let read_connections = get("read_connections").map_or(Some(default_read_connections()), |(s, v)| {
            parse_number(&s, &v, 1..=1000, "connections", &mut errors)
        });

        let trusted_proxies = get("trusted_proxies").map_or_else(Vec::new, |(src, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .filter_map(|entry| {
                    let net = entry
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                    if net.is_err() {
                        errors.push((src.clone(), format!("{entry:?} is not an IP address or a CIDR network")));
                    }
                    net.ok()
                })
                .collect()
        });

        let allow_private = get("webhooks_allow_private").map_or(Some(false), |(src, v)| match v.as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => {
                errors.push((src, format!("expected true or false (got {v:?})")));
                None
            }
        });
        let retry_for = get("webhook_retry_for_secs")
            .map_or(Some(3 * 86_400), |(s, v)| parse_number(&s, &v, 1..=30 * 86_400, "seconds", &mut errors));
        let retry_base = get("webhook_retry_base_ms")
            .map_or(Some(5_000), |(s, v)| parse_number(&s, &v, 1..=3_600_000, "milliseconds", &mut errors));
        let webhook_timeout =
            get("webhook_timeout_secs").map_or(Some(10), |(s, v)| parse_number(&s, &v, 1..=60, "seconds", &mut errors));

        let read_replica_urls = get("read_replica_urls").map_or_else(Vec::new, |(src, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .enumerate()
                .filter_map(|(n, url)| {
                    let parsed = (url.starts_with("postgres://") || url.starts_with("postgresql://"))
                        && sqlx::postgres::PgConnectOptions::from_str(url).is_ok();
                    if !parsed {
                        // Never echo the value: it may hold a password.
                        errors.push((src.clone(), format!("entry {} is not a postgres:// URL", n + 1)));
                    }
                    parsed.then(|| Secret::new(url.to_owned()))
                })
                .collect()
        });
        let replica_max_lag = get("replica_max_lag_ms")
            .map_or(Some(1_000), |(s, v)| parse_number(&s, &v, 1..=3_600_000, "milliseconds", &mut errors));
        let local_replicas =
            get("local_replicas").map_or(Some(0), |(s, v)| parse_number(&s, &v, 0..=8, "replicas", &mut errors));
        if local_replicas.is_some_and(|n| n > 0)
            && let (Some(_), Some((src, _))) = (&database_url, get("local_replicas"))
        {
            errors.push((src, "local replicas need the local Postgres: unset DATABASE_URL".into()));
        }
        let api_processes =
            get("api_processes").map_or(Some(1), |(s, v)| parse_number(&s, &v, 1..=1_000, "processes", &mut errors));

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            database_url,
            data_dir,
            bind: bind.expect("checked above"),
            public_url: public_url.expect("checked above"),
            secret_key,
            servicem8: ProviderSettings {
                client_id: get("servicem8_client_id").map(|(_, v)| v),
                client_secret: get("servicem8_client_secret").map(|(_, v)| Secret::new(v)),
                api_url: api_url.expect("checked above"),
                oauth_url: oauth_url.expect("checked above"),
                requests_per_minute: servicem8_per_minute.expect("checked above"),
            },
            jobber: ProviderSettings {
                client_id: get("jobber_client_id").map(|(_, v)| v),
                client_secret: get("jobber_client_secret").map(|(_, v)| Secret::new(v)),
                api_url: jobber_api_url.expect("checked above"),
                oauth_url: jobber_oauth_url.expect("checked above"),
                requests_per_minute: clientapi_sync::jobber::REQUESTS_PER_MINUTE,
            },
            jobber_graphql_version: jobber_version.expect("checked above"),
            request_log_retention_days: retention.expect("checked above"),
            provider_timeout_secs: provider_timeout.expect("checked above"),
            failed_auth_delay_ms: failed_auth_delay.expect("checked above"),
            sync_writers: sync_writers.expect("checked above"),
            read_connections: read_connections.expect("checked above"),
            trusted_proxies,
            webhooks: WebhookSettings {
                allow_private: allow_private.expect("checked above"),
                retry_for: std::time::Duration::from_secs(retry_for.expect("checked above")),
                retry_base: std::time::Duration::from_millis(retry_base.expect("checked above")),
                timeout: std::time::Duration::from_secs(webhook_timeout.expect("checked above")),
            },
            read_replica_urls,
            replica_max_lag_ms: replica_max_lag.expect("checked above"),
            local_replicas: local_replicas.expect("checked above"),
            api_processes: api_processes.expect("checked above"),
        })
    }

    /// The master key: configured, or read from (first run: generated into) the data dir, 0600.
    pub fn master_key(&self) -> anyhow::Result<MasterKey> {
        use anyhow::Context;
        if let Some(key) = &self.secret_key {
            return Ok(key.clone());
        }
        let path = self.data_dir.join("master.key");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            return parse_master_key(text.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        }
        std::fs::create_dir_all(&self.data_dir).with_context(|| format!("creating {}", self.data_dir.display()))?;
        let key: [u8; 32] = rand::random();
        clientapi_schema::local_pg::write_secret_file(&path, &BASE64.encode(key))
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated a new master key for tokens at rest");
        Ok(Secret::new(key))
    }
}

fn env_name_of(key: &str) -> &'static str {
    SETTINGS.iter().find(|(_, k)| *k == key).map(|(e, _)| *e).unwrap_or("?")
}

fn parse_url(source: &str, value: &str, errors: &mut Vec<(String, String)>) -> Option<Url> {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            errors.push((source.to_owned(), format!("expected an http(s) URL (got {value:?})")));
            None
        }
    }
}

/// A whole number of `unit` within `range`, or an error naming the setting.
fn parse_number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    source: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
    errors: &mut Vec<(String, String)>,
) -> Option<T> {
    match value.parse::<T>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            let (low, high) = (range.start(), range.end());
            errors
                .push((source.to_owned(), format!("expected a number of {unit} from {low} to {high} (got {value:?})")));
            None
        }
    }
}

fn parse_master_key(value: &str) -> Result<MasterKey, String> {
    let bytes = BASE64
        .decode(value.trim())
        .map_err(|_| "must be base64 (generate one with `openssl rand -base64 32`)".to_string())?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("must decode to 32 bytes, got {}", b.len()))?;
    Ok(Secret::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = Config::load(None, &env(&[])).unwrap();
        assert_eq!(config.bind.to_string(), DEFAULT_BIND);
        assert_eq!(config.public_url.as_str(), "http://127.0.0.1:8080/");
        assert!(config.database_url.is_none());
        assert_eq!(config.servicem8.api_url.as_str(), DEFAULT_SERVICEM8_API_URL);
        assert_eq!(config.servicem8.requests_per_minute, 180, "ServiceM8's documented limit");
        assert_eq!(config.sync_writers, 2);
    }

    #[test]
    fn the_read_pool_is_sized_by_the_cores_unless_set() {
        let config = Config::load(None, &env(&[])).unwrap();
        assert_eq!(config.read_connections, default_read_connections());
        assert!(config.read_connections >= 4);
        let config = Config::load(None, &env(&[("CLIENTAPI_READ_CONNECTIONS", "12")])).unwrap();
        assert_eq!(config.read_connections, 12);
        let err = Config::load(None, &env(&[("CLIENTAPI_READ_CONNECTIONS", "0")])).unwrap_err();
        assert_eq!(err.0[0].0, "CLIENTAPI_READ_CONNECTIONS", "{err}");
    }

    #[test]
    fn every_bad_setting_is_named_in_one_error() {
        let err = Config::load(
            None,
            &env(&[
                ("CLIENTAPI_BIND", "nope"),
                ("CLIENTAPI_SECRET_KEY", "c2hvcnQ="),
                ("DATABASE_URL", "mysql://root:hunter2@x/db"),
                ("CLIENTAPI_SERVICEM8_API_URL", "ftp://x"),
                ("CLIENTAPI_SERVICEM8_REQUESTS_PER_MINUTE", "0"),
                ("CLIENTAPI_SYNC_WRITERS", "5"),
                ("CLIENTAPI_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
            ]),
        )
        .unwrap_err();
        let names: Vec<&str> = err.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "CLIENTAPI_BIND",
                "DATABASE_URL",
                "CLIENTAPI_SECRET_KEY",
                "CLIENTAPI_SERVICEM8_API_URL",
                "CLIENTAPI_SERVICEM8_REQUESTS_PER_MINUTE",
                "CLIENTAPI_SYNC_WRITERS",
                "CLIENTAPI_TRUSTED_PROXIES"
            ]
        );
        assert!(err.to_string().contains("proxy.internal"), "the bad entry is named: {err}");
        assert!(!err.to_string().contains("hunter2"), "a bad DATABASE_URL must not be echoed");
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "bind = \"127.0.0.1:9000\"\ndata_dir = \"/x\"\nbogus = \"1\"\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err();
        assert!(err.0[0].0.ends_with("key `bogus`"), "{err}");

        std::fs::write(&file, "bind = \"127.0.0.1:9000\"\ndata_dir = \"/x\"\n").unwrap();
        let config = Config::load(Some(&file), &env(&[("CLIENTAPI_BIND", "127.0.0.1:9100")])).unwrap();
        assert_eq!(config.bind.port(), 9100);
        assert_eq!(config.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let key = BASE64.encode([7u8; 32]);
        let config = Config::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://u:hunter2@h/db"),
                ("CLIENTAPI_SECRET_KEY", &key),
                ("CLIENTAPI_SERVICEM8_CLIENT_SECRET", "sm8-secret"),
            ]),
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains(&key) && !shown.contains("sm8-secret"), "{shown}");
    }

    #[test]
    fn the_master_key_is_generated_once_with_mode_0600_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config = Config::load(None, &env(&[("CLIENTAPI_DATA_DIR", data_dir.to_str().unwrap())])).unwrap();
        let first = config.master_key().unwrap();
        let mode = std::fs::metadata(data_dir.join("master.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(config.master_key().unwrap().expose(), first.expose());
    }
}
