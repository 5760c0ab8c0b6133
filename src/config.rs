//! `pgward.yaml`: where to listen, which database to protect, where the
//! policies, certificates and store live, and the session limits.
//!
//! Relative paths are resolved against the directory holding the config file,
//! so a config directory can be moved as a whole. Unknown keys are errors: a
//! misspelt security setting must not be silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::net::tls::UpstreamTlsMode;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Address of the HTTP listener for `/metrics` and `/healthz`; off if absent.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    pub upstream: UpstreamConfig,
    pub tls: TlsConfig,
    /// pgward's CA and the client certificates it issues.
    #[serde(default)]
    pub certs: CertsConfig,
    pub store: StoreConfig,
    /// Directory of `*.yaml` policy files.
    pub policies: PathBuf,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub sessions: SessionConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub enforcement: EnforcementConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// Directory the relative paths above were resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// How restricted roles are enforced.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementConfig {
    /// Key for `hash` masks (created with mode 0600 if missing). Changing it
    /// changes every hashed value.
    #[serde(default = "EnforcementConfig::masking_key")]
    pub masking_key: PathBuf,
    /// How often table knowledge is re-read from the database (it is also
    /// re-read after DDL passes through pgward).
    #[serde(
        default = "EnforcementConfig::schema_refresh",
        with = "humantime_serde"
    )]
    pub schema_refresh: Duration,
    /// Memory for cached analysis results, shared by all sessions.
    #[serde(
        default = "EnforcementConfig::analysis_cache",
        deserialize_with = "byte_size"
    )]
    pub analysis_cache: usize,
}

impl EnforcementConfig {
    fn masking_key() -> PathBuf {
        PathBuf::from("secrets/masking.key")
    }
    fn schema_refresh() -> Duration {
        Duration::from_secs(60)
    }
    fn analysis_cache() -> usize {
        64 << 20
    }
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            masking_key: EnforcementConfig::masking_key(),
            schema_refresh: EnforcementConfig::schema_refresh(),
            analysis_cache: EnforcementConfig::analysis_cache(),
        }
    }
}

/// The audit trail.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// SQLite file holding the hash-chained events.
    pub path: PathBuf,
    /// Ed25519 key that signs checkpoints (created with mode 0600).
    pub signing_key: PathBuf,
    /// Events waiting to be stored, at most.
    pub queue: usize,
    /// Events stored per transaction, at most.
    pub batch: usize,
    /// What happens to statements when events cannot be stored.
    pub on_failure: crate::audit::OnFailure,
    /// How often the chain's head is signed (when it has moved).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// `spool`: a statement's ReadyForQuery waits until its event is
    /// written to the spool file next to the store, which pgward stores
    /// from after a crash (nothing a client saw complete is lost, even on
    /// kill -9); `commit`: it waits until the event is committed to the
    /// store (the same guarantee, slower); `queue`: it waits only for a
    /// place in the queue (a crash can lose the events of the last
    /// milliseconds).
    pub durability: AuditDurability,
    /// How long a statement's ReadyForQuery waits for its event to be
    /// stored before the session is ended.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Bind parameters in statement events: `off`, `redacted` (types and
    /// sizes only) or `full`.
    pub parameters: AuditParameters,
    /// How long events are kept: older ones are pruned, at a signed
    /// checkpoint so the rest still verifies. `forever` (or 0) keeps all;
    /// at least a day otherwise. Needs a restart to change.
    #[serde(deserialize_with = "retention")]
    pub retention: Option<Duration>,
    /// How often pgward prunes (the first time shortly after it starts).
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// Name of this pgward in events; the host name if absent.
    pub instance: Option<String>,
    /// Record an event for every statement (on by default). Off leaves
    /// logins, sessions and administrative events only — for measuring
    /// the cost of auditing, or where statement auditing happens elsewhere;
    /// turning it off is itself an audit event.
    pub record_statements: bool,
    /// Alert rules; alerts are events, delivered by the sinks.
    pub alerts: crate::audit::alerts::AlertRules,
    /// Where copies of the trail go (JSON-lines files, syslog, webhooks);
    /// each follows the store from its own cursor. Needs a restart to
    /// change.
    pub sinks: Vec<crate::audit::sinks::SinkConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDurability {
    #[default]
    Spool,
    Commit,
    Queue,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditParameters {
    #[default]
    Off,
    Redacted,
    Full,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("audit.db"),
            signing_key: PathBuf::from("secrets/audit-signing.key"),
            queue: 65536,
            batch: 1024,
            on_failure: crate::audit::OnFailure::Refuse,
            checkpoint_interval: Duration::from_secs(1),
            durability: AuditDurability::Spool,
            ack_timeout: Duration::from_secs(10),
            parameters: AuditParameters::Off,
            retention: Some(crate::audit::retention::DEFAULT_RETENTION),
            prune_interval: Duration::from_secs(3600),
            instance: None,
            record_statements: true,
            alerts: Default::default(),
            sinks: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The name events carry.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "pgward".to_string())
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// CA bundle for `verify-full`; the system's roots if absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Send a role's password in the clear when the database asks for it
    /// over a connection that is not `verify-full`. Off: such a request
    /// could come from anyone between pgward and the database.
    #[serde(default)]
    pub allow_cleartext_password: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Accept clients without TLS, but only from loopback addresses.
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
}

/// Client certificates: pgward's CA signs them, and a client presenting
/// one logs in without a password.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertsConfig {
    /// The CA clients' certificates must chain to. Without this file pgward
    /// asks for no client certificate and every login uses a password.
    pub ca_cert: PathBuf,
    /// Its private key, read only when a certificate is issued.
    pub ca_key: PathBuf,
    /// Longest lifetime of a person's certificate: short, because holding
    /// it replaces the password and second factor.
    #[serde(with = "humantime_serde")]
    pub person_max_ttl: Duration,
    /// Longest lifetime of a service account's certificate (`--service`).
    #[serde(with = "humantime_serde")]
    pub service_max_ttl: Duration,
}

impl Default for CertsConfig {
    fn default() -> Self {
        CertsConfig {
            ca_cert: PathBuf::from("certs/ca.crt"),
            ca_key: PathBuf::from("certs/ca.key"),
            person_max_ttl: Duration::from_secs(12 * 3600),
            service_max_ttl: Duration::from_secs(365 * 86400),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file.
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed logins within `failure_window` that lock an account.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// Password hashes computed at once; more logins wait their turn.
    pub hash_concurrency: usize,
    /// Every person must log in with a second factor: people without one
    /// enrolled are refused until an administrator enrolls them. Service
    /// accounts are exempt (they use client certificates).
    pub mfa_required: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_failures: 5,
            failure_window: Duration::from_secs(15 * 60),
            hash_concurrency: 2,
            mfa_required: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session with nothing in flight and no client message for this long is ended.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// No session lives longer than this.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Time allowed from connect to a finished login.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// On SIGTERM, how long running sessions may continue before they are ended.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    /// Connections from one address that may be in the login phase at once.
    pub max_startups_per_ip: usize,
    /// Largest single protocol message accepted from a client.
    #[serde(deserialize_with = "byte_size")]
    pub max_message_size: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            max_lifetime: Some(Duration::from_secs(12 * 3600)),
            startup_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 2000,
            max_startups_per_ip: 64,
            max_message_size: 256 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `pgward=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// `audit.retention`: a duration of at least a day (`6years`), or
/// `forever` or `0` for `None`.
fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(0) => Ok(None),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "audit.retention {n} needs a unit, such as 6years"
        ))),
        Raw::Text(s) => crate::audit::retention::parse_retention(&s)
            .map_err(|e| serde::de::Error::custom(format!("audit.retention: {e}"))),
    }
}

/// Accepts `65536`, `"64KiB"`, `"256MiB"`, `"1GiB"`.
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(usize),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Text(s) => parse_byte_size(&s).map_err(serde::de::Error::custom),
    }
}

pub fn parse_byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 65536, 64KiB, 256MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "kB" | "KB" => 1 << 10,
        "MiB" | "MB" => 1 << 20,
        "GiB" | "GB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.certs.ca_cert);
        resolve(&mut self.certs.ca_key);
        resolve(&mut self.store.path);
        resolve(&mut self.policies);
        resolve(&mut self.enforcement.masking_key);
        resolve(&mut self.audit.path);
        resolve(&mut self.audit.signing_key);
        for sink in &mut self.audit.sinks {
            sink.resolve_paths(&resolve);
        }
        if let Some(ca) = &mut self.upstream.ca_file {
            resolve(ca);
        }
        self.base_dir = base.to_path_buf();
    }

    fn validate(&self) -> Result<(), String> {
        if self.audit.queue == 0 || self.audit.batch == 0 {
            return Err("audit.queue and audit.batch must be at least 1".into());
        }
        if self.audit.prune_interval < Duration::from_secs(1) {
            return Err("audit.prune_interval must be at least 1s".into());
        }
        self.audit.alerts.validate()?;
        if !self.audit.record_statements && self.audit.alerts.on_statements() {
            return Err("audit.alerts: rows_per_statement, statements_per_minute and denied need statement events, but audit.record_statements is false".into());
        }
        crate::audit::sinks::validate(&self.audit.sinks, &self.audit.path)?;
        if self.certs.person_max_ttl.is_zero() || self.certs.service_max_ttl.is_zero() {
            return Err(
                "certs.person_max_ttl and certs.service_max_ttl must be more than 0".into(),
            );
        }
        if self.auth.max_failures == 0 {
            return Err("auth.max_failures must be at least 1".into());
        }
        if self.auth.hash_concurrency == 0 {
            return Err("auth.hash_concurrency must be at least 1".into());
        }
        if self.sessions.max_startups_per_ip == 0 {
            return Err("sessions.max_startups_per_ip must be at least 1".into());
        }
        if self.sessions.max_connections == 0 {
            return Err("sessions.max_connections must be at least 1".into());
        }
        if self.sessions.max_message_size < 1024 {
            return Err("sessions.max_message_size must be at least 1KiB".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("65536"), Ok(65536));
        assert_eq!(parse_byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_byte_size("256MiB"), Ok(256 << 20));
        assert!(parse_byte_size("12 parsecs").is_err());
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:6432\nupstream: {host: localhost, port: 5432}\n\
             tls: {cert: certs/server.crt, key: certs/server.key}\n\
             store: {path: pgward.db}\npolicies: policies\n\
             sessions: {idle_timeout: 5m, max_message_size: 1MiB}\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.path().join("certs/server.crt"));
        assert_eq!(config.sessions.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(config.sessions.max_message_size, 1 << 20);
        assert_eq!(config.auth.max_failures, 5);
        assert!(!config.auth.mfa_required);
        assert_eq!(config.upstream.tls, UpstreamTlsMode::Prefer);
        assert_eq!(config.certs.ca_cert, dir.path().join("certs/ca.crt"));
        assert_eq!(config.certs.person_max_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(
            config.certs.service_max_ttl,
            Duration::from_secs(365 * 86400)
        );
    }

    #[test]
    fn certificate_lifetimes_are_configurable_and_never_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.yaml");
        let load = |certs: &str| {
            std::fs::write(
                &path,
                format!(
                    "listen: 127.0.0.1:6432\nupstream: {{host: h, port: 1}}\n\
                     tls: {{cert: c, key: k}}\nstore: {{path: s}}\npolicies: p\ncerts: {certs}\n"
                ),
            )
            .unwrap();
            Config::load(&path)
        };
        let config =
            load("{person_max_ttl: 8h, service_max_ttl: 90d, ca_cert: /etc/ca.crt}").unwrap();
        assert_eq!(config.certs.person_max_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(
            config.certs.service_max_ttl,
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(config.certs.ca_cert, PathBuf::from("/etc/ca.crt"));
        assert_eq!(config.certs.ca_key, dir.path().join("certs/ca.key"));
        assert!(load("{person_max_ttl: 0s}").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:6432\nupstream: {host: h, port: 1}\n\
             tls: {cert: c, key: k, allow_plaintext: true}\nstore: {path: s}\npolicies: p\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("allow_plaintext"), "{err}");
    }

    #[test]
    fn audit_retention_is_six_years_forever_or_at_least_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.yaml");
        let load = |audit: &str| {
            std::fs::write(
                &path,
                format!(
                    "listen: 127.0.0.1:6432\nupstream: {{host: h, port: 1}}\n\
                     tls: {{cert: c, key: k}}\nstore: {{path: s}}\npolicies: p\naudit: {audit}\n"
                ),
            )
            .unwrap();
            Config::load(&path)
        };
        let config = load("{}").unwrap();
        assert_eq!(
            config.audit.retention,
            Some(Duration::from_secs(6 * 31_557_600))
        );
        assert_eq!(config.audit.prune_interval, Duration::from_secs(3600));
        let config = load("{retention: 7years, prune_interval: 10m}").unwrap();
        assert_eq!(
            config.audit.retention,
            Some(Duration::from_secs(7 * 31_557_600))
        );
        assert_eq!(config.audit.prune_interval, Duration::from_secs(600));
        assert_eq!(load("{retention: forever}").unwrap().audit.retention, None);
        assert_eq!(load("{retention: 0}").unwrap().audit.retention, None);
        let err = load("{retention: 6m}").unwrap_err().to_string();
        assert!(err.contains("minutes"), "{err}");
        assert!(load("{retention: 6}").is_err());
        assert!(load("{prune_interval: 0s}").is_err());
    }

    #[test]
    fn audit_sinks_resolve_paths_and_are_validated() {
        use crate::audit::sinks::Target;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.yaml");
        let load = |sinks: &str| {
            std::fs::write(
                &path,
                format!(
                    "listen: 127.0.0.1:6432\nupstream: {{host: h, port: 1}}\n\
                     tls: {{cert: c, key: k}}\nstore: {{path: s}}\npolicies: p\n\
                     audit: {{sinks: {sinks}}}\n"
                ),
            )
            .unwrap();
            Config::load(&path)
        };
        let config = load("[{name: logs, type: file, path: log/audit.jsonl}]").unwrap();
        let Target::File(f) = &config.audit.sinks[0].target else {
            panic!("{:?}", config.audit.sinks)
        };
        assert_eq!(f.path, dir.path().join("log/audit.jsonl"));
        assert_eq!(
            config.audit.sinks[0].cursor_path(&config.audit.path),
            dir.path().join("sinks/logs.cursor")
        );
        let err = load("[{name: a, type: syslog, address: nowhere}]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit sink a: address must be host:port"),
            "{err}"
        );
        assert!(load("[]").unwrap().audit.sinks.is_empty());
        assert!(AuditConfig::default().sinks.is_empty());
    }
}
