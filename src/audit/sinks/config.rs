//! `audit.sinks` in `pgward.yaml`: one entry per destination.
//!
//! ```yaml
//! audit:
//!   sinks:
//!     - name: siem
//!       type: syslog
//!       address: siem.example.org:6514
//!       transport: tls
//!     - name: alerts
//!       type: webhook
//!       url: https://hooks.example.org/pgward
//!       kinds: [alert]
//! ```
//!
//! The settings every sink has (`name`, `type`, `kinds`, `batch`, `poll`,
//! `start`, `cursor`) and those of its type are read separately, each with
//! unknown keys refused, so a misspelt key is named together with the sink
//! and the keys its type knows. (serde cannot refuse unknown keys of a
//! struct that flattens another.)

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::audit::event::Kind;

/// One entry of `audit.sinks`.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkConfig {
    /// Unique: names the cursor file and the metrics label.
    pub name: String,
    pub target: Target,
    /// Only events of these kinds; every kind when absent.
    pub kinds: Option<Vec<Kind>>,
    /// Events read from the store and delivered at once, at most.
    pub batch: usize,
    /// How often an idle sink looks for new events.
    pub poll: Duration,
    /// Where a sink without a cursor file begins.
    pub start: Start,
    /// The cursor file; `<directory of audit.path>/sinks/<name>.cursor`
    /// when absent.
    pub cursor: Option<PathBuf>,
}

/// Where a new sink (one without a cursor file) begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// With the next event stored: nothing from before the sink existed.
    #[default]
    Head,
    /// With the oldest event in the store.
    Oldest,
}

/// What a sink writes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    File(FileConfig),
    Syslog(SyslogConfig),
    Webhook(WebhookConfig),
}

/// `type: file`: JSON lines, for Vector, Fluentd, Filebeat and the like.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Start a new file before one would grow past this (`100MB`).
    #[serde(default, deserialize_with = "byte_size")]
    pub rotate_size: Option<u64>,
    /// Start a new file when the current one is this old (`1d`).
    #[serde(default, with = "humantime_serde")]
    pub rotate_interval: Option<Duration>,
    /// Rotated files kept; older ones are deleted.
    #[serde(default = "FileConfig::keep")]
    pub keep: usize,
}

impl FileConfig {
    fn keep() -> usize {
        10
    }
}

/// `type: syslog`: RFC 5424 messages over TCP (RFC 6587 octet counting)
/// or TLS (RFC 5425).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` of the receiver.
    pub address: String,
    #[serde(default)]
    pub transport: Transport,
    /// CA bundle that signed the receiver's certificate (TLS); the
    /// system's roots if absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name the receiver's certificate must carry (TLS); the host of
    /// `address` if absent.
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub facility: Facility,
    /// The IANA private enterprise number in the structured data's ID
    /// (`[pgward@32473 …]`). 32473 is the number RFC 5612 reserves for
    /// documentation; set your organisation's own if it has one.
    #[serde(default = "SyslogConfig::enterprise_id")]
    pub enterprise_id: u32,
    /// Connect and write timeout.
    #[serde(default = "timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl SyslogConfig {
    fn enterprise_id() -> u32 {
        32473
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Tls,
}

/// Syslog facilities (RFC 5424 section 6.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    /// Security and authorization messages kept private: the default.
    #[default]
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    pub fn code(self) -> u8 {
        use Facility::*;
        match self {
            Kern => 0,
            User => 1,
            Mail => 2,
            Daemon => 3,
            Auth => 4,
            Syslog => 5,
            Lpr => 6,
            News => 7,
            Uucp => 8,
            Cron => 9,
            Authpriv => 10,
            Ftp => 11,
            Local0 => 16,
            Local1 => 17,
            Local2 => 18,
            Local3 => 19,
            Local4 => 20,
            Local5 => 21,
            Local6 => 22,
            Local7 => 23,
        }
    }
}

/// `type: webhook`: each batch POSTed as a JSON array.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (or `http://…` on a trusted network).
    pub url: String,
    /// Extra request headers, such as `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// CA bundle that signed the receiver's certificate; the system's
    /// roots if absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time allowed for one request, from connecting to the answer.
    #[serde(default = "timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn timeout() -> Duration {
    Duration::from_secs(10)
}

/// The keys every sink has; the rest belong to its type.
const COMMON: &[&str] = &["name", "type", "kinds", "batch", "poll", "start", "cursor"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    #[serde(rename = "type")]
    kind: TargetType,
    #[serde(default)]
    kinds: Option<Vec<Kind>>,
    #[serde(default = "Common::batch")]
    batch: usize,
    #[serde(default = "Common::poll", with = "humantime_serde")]
    poll: Duration,
    #[serde(default)]
    start: Start,
    #[serde(default)]
    cursor: Option<PathBuf>,
}

impl Common {
    fn batch() -> usize {
        500
    }
    fn poll() -> Duration {
        Duration::from_millis(200)
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TargetType {
    File,
    Syslog,
    Webhook,
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::{Mapping, Value};
        let all = Mapping::deserialize(d)?;
        let (mut common, mut own) = (Mapping::new(), Mapping::new());
        for (key, value) in all {
            if key.as_str().is_some_and(|k| COMMON.contains(&k)) {
                common.insert(key, value);
            } else {
                own.insert(key, value);
            }
        }
        let name = common
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_string();
        let in_sink = |e: serde_yaml::Error| D::Error::custom(format!("audit sink {name}: {e}"));
        let c: Common = serde_yaml::from_value(Value::Mapping(common)).map_err(in_sink)?;
        let own = Value::Mapping(own);
        let target = match c.kind {
            TargetType::File => serde_yaml::from_value(own).map(Target::File),
            TargetType::Syslog => serde_yaml::from_value(own).map(Target::Syslog),
            TargetType::Webhook => serde_yaml::from_value(own).map(Target::Webhook),
        }
        .map_err(in_sink)?;
        Ok(SinkConfig {
            name: c.name,
            target,
            kinds: c.kinds,
            batch: c.batch,
            poll: c.poll,
            start: c.start,
            cursor: c.cursor,
        })
    }
}

/// `100MB`, `64KiB` or a number of bytes.
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(s)) => crate::config::parse_byte_size(&s)
            .map(|n| Some(n as u64))
            .map_err(serde::de::Error::custom),
    }
}

impl SinkConfig {
    /// Where the sink remembers the last event it delivered.
    pub fn cursor_path(&self, audit_db: &Path) -> PathBuf {
        self.cursor.clone().unwrap_or_else(|| {
            audit_db
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("sinks")
                .join(format!("{}.cursor", self.name))
        })
    }

    /// Makes relative paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, resolve: &dyn Fn(&mut PathBuf)) {
        if let Some(c) = &mut self.cursor {
            resolve(c);
        }
        match &mut self.target {
            Target::File(f) => resolve(&mut f.path),
            Target::Syslog(s) => s.ca_file.iter_mut().for_each(resolve),
            Target::Webhook(w) => w.ca_file.iter_mut().for_each(resolve),
        }
    }

    /// Whether the sink delivers events of this kind (the store's `kind`
    /// column).
    pub fn wants(&self, kind: &str) -> bool {
        self.kinds
            .as_ref()
            .map_or(true, |ks| ks.iter().any(|k| k.as_str() == kind))
    }

    fn validate(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(format!(
                "audit sink {:?}: a name is 1 to 64 of a-z, 0-9, _ and -",
                self.name
            ));
        }
        let fail = |what: &str| Err(format!("audit sink {}: {what}", self.name));
        if self.batch == 0 {
            return fail("batch must be at least 1");
        }
        if self.poll < Duration::from_millis(10) {
            return fail("poll must be at least 10ms");
        }
        if self.kinds.as_ref().is_some_and(Vec::is_empty) {
            return fail("kinds is empty; leave it out to deliver every kind");
        }
        match &self.target {
            Target::File(f) => {
                if f.path.as_os_str().is_empty() || f.path.file_name().is_none() {
                    return fail("path must name a file");
                }
                if f.rotate_size == Some(0) {
                    return fail("rotate_size must be more than 0");
                }
                if f.rotate_interval
                    .is_some_and(|d| d < Duration::from_secs(1))
                {
                    return fail("rotate_interval must be at least 1s");
                }
                if f.keep == 0 {
                    return fail("keep must be at least 1 (rotated files kept)");
                }
            }
            Target::Syslog(s) => {
                let port = s
                    .address
                    .rsplit_once(':')
                    .filter(|(host, _)| !host.is_empty())
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                if port.is_none() {
                    return fail("address must be host:port");
                }
                if s.transport == Transport::Tcp && (s.ca_file.is_some() || s.server_name.is_some())
                {
                    return fail("ca_file and server_name apply to transport: tls only");
                }
                if s.transport == Transport::Tls {
                    let name = s.server_name.clone().unwrap_or_else(|| host_of(&s.address));
                    if rustls::pki_types::ServerName::try_from(name.clone()).is_err() {
                        return fail(&format!("{name:?} is not a valid TLS server name"));
                    }
                }
                if s.enterprise_id == 0 {
                    return fail("enterprise_id must be a private enterprise number above 0");
                }
            }
            Target::Webhook(w) => {
                let https = w.url.starts_with("https://");
                if !https && !w.url.starts_with("http://") {
                    return fail("url must start with https:// or http://");
                }
                let host = w
                    .url
                    .parse::<ureq::http::Uri>()
                    .ok()
                    .and_then(|u| u.host().filter(|h| !h.is_empty()).map(str::to_string));
                if host.is_none() {
                    return fail("url is not a valid URL with a host");
                }
                if !https && w.ca_file.is_some() {
                    return fail("ca_file applies to https:// URLs only");
                }
                for (key, value) in &w.headers {
                    if ureq::http::HeaderName::from_bytes(key.as_bytes()).is_err() {
                        return fail(&format!("{key:?} is not a valid header name"));
                    }
                    if ureq::http::HeaderValue::from_str(value).is_err() {
                        // The value may be a secret: never echo it.
                        return fail(&format!("the value of header {key} is not valid"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The host part of `host:port` (IPv6 brackets removed).
pub(super) fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Checks every sink and that names, cursor files and file paths are not
/// shared (two sinks writing one file would interleave and duplicate).
pub fn validate(sinks: &[SinkConfig], audit_db: &Path) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut cursors = HashSet::new();
    let mut files = HashSet::new();
    for sink in sinks {
        sink.validate()?;
        if !names.insert(sink.name.as_str()) {
            return Err(format!(
                "audit sink {}: the name is used by two sinks",
                sink.name
            ));
        }
        if !cursors.insert(sink.cursor_path(audit_db)) {
            return Err(format!(
                "audit sink {}: the cursor file is used by two sinks",
                sink.name
            ));
        }
        if let Target::File(f) = &sink.target {
            if !files.insert(f.path.clone()) {
                return Err(format!(
                    "audit sink {}: {} is written by two sinks",
                    sink.name,
                    f.path.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<SinkConfig>, String> {
        let sinks: Vec<SinkConfig> = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        validate(&sinks, Path::new("/var/lib/pgward/audit.db"))?;
        Ok(sinks)
    }

    #[test]
    fn reads_each_type_with_defaults() {
        let sinks = parse(
            "- {name: logs, type: file, path: /var/log/pgward/audit.jsonl, rotate_size: 100MB, rotate_interval: 1d}\n\
             - {name: siem, type: syslog, address: 'siem:6514', transport: tls, kinds: [alert, login]}\n\
             - {name: hook, type: webhook, url: 'https://hooks.example.org/x', headers: {Authorization: Bearer t}, start: oldest}\n",
        )
        .unwrap();
        let Target::File(f) = &sinks[0].target else {
            panic!("{sinks:?}")
        };
        assert_eq!(f.rotate_size, Some(100 << 20));
        assert_eq!(f.rotate_interval, Some(Duration::from_secs(86400)));
        assert_eq!(f.keep, 10);
        assert_eq!(sinks[0].batch, 500);
        assert_eq!(sinks[0].poll, Duration::from_millis(200));
        assert_eq!(sinks[0].start, Start::Head);
        assert_eq!(
            sinks[0].cursor_path(Path::new("/var/lib/pgward/audit.db")),
            Path::new("/var/lib/pgward/sinks/logs.cursor")
        );
        let Target::Syslog(s) = &sinks[1].target else {
            panic!("{sinks:?}")
        };
        assert_eq!(s.facility, Facility::Authpriv);
        assert_eq!(s.enterprise_id, 32473);
        assert!(sinks[1].wants("alert") && !sinks[1].wants("statement"));
        assert!(sinks[0].wants("statement"));
        assert_eq!(sinks[2].start, Start::Oldest);
    }

    #[test]
    fn invalid_settings_name_the_sink() {
        let cases = [
            ("- {name: Logs, type: file, path: /x}", "a name is 1 to 64"),
            (
                "- {name: a, type: file, path: /x}\n- {name: a, type: file, path: /y}",
                "audit sink a: the name is used by two sinks",
            ),
            (
                "- {name: a, type: file, path: /x}\n- {name: b, type: file, path: /x}",
                "audit sink b: /x is written by two sinks",
            ),
            (
                "- {name: a, type: file, path: /x, rotate_sise: 1MB}",
                "audit sink a: unknown field `rotate_sise`",
            ),
            (
                "- {name: a, type: file, path: /x, address: 'h:1'}",
                "audit sink a: unknown field `address`",
            ),
            ("- {name: a, type: file, path: /x, keep: 0}", "keep must be"),
            (
                "- {name: a, type: file, path: /x, kinds: []}",
                "kinds is empty",
            ),
            (
                "- {name: a, type: file, path: /x, kinds: [statment]}",
                "audit sink a: unknown variant `statment`",
            ),
            ("- {name: a, type: file, path: /x, batch: 0}", "batch"),
            (
                "- {name: s, type: syslog, address: siem}",
                "audit sink s: address must be host:port",
            ),
            (
                "- {name: s, type: syslog, address: 'siem:514', ca_file: /ca.pem}",
                "transport: tls only",
            ),
            (
                "- {name: s, type: syslog, address: 'siem:514', facility: local9}",
                "unknown variant `local9`",
            ),
            (
                "- {name: w, type: webhook, url: 'ftp://x'}",
                "audit sink w: url must start",
            ),
            (
                "- {name: w, type: webhook, url: 'http://x/', ca_file: /ca.pem}",
                "https:// URLs only",
            ),
            (
                "- {name: w, type: webhook, url: 'https://x/', headers: {'bad header': v}}",
                "not a valid header name",
            ),
            (
                "- {name: w, type: mail, url: 'https://x/'}",
                "unknown variant `mail`",
            ),
        ];
        for (yaml, want) in cases {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn header_values_are_not_echoed() {
        let err = parse(
            "- {name: w, type: webhook, url: 'https://x/', headers: {X-Token: \"s3cret\\n\"}}",
        )
        .unwrap_err();
        assert!(err.contains("X-Token") && !err.contains("s3cret"), "{err}");
    }
}
