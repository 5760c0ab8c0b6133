//! Sinks: copies of the audit trail delivered outside pgward — a JSON-lines
//! file for log shippers ([`file`]), syslog to a SIEM ([`syslog`]), an HTTP
//! webhook ([`webhook`]).
//!
//! The store stays the one source of truth, and sinks follow it rather
//! than sit in the writer's path: each sink is a thread with its own
//! read-only connection to the audit store (SQLite WAL readers never block
//! the writer) that reads the events after its cursor, delivers them, and
//! only then moves the cursor ([`cursor`]). So a sink that is slow or down
//! never slows the proxy, and when it comes back it catches up from the
//! store, from the first event it had not delivered.
//!
//! Delivered "once" means: the cursor moves only after a delivery succeeded,
//! and each destination does what it can about the window between the two.
//! The file sink reads the last line it wrote back at start; the webhook
//! counts only a 2xx answer; syslog has no acknowledgements, see
//! [`syslog`]. Every event carries its id and chain hash, so a receiver can
//! drop a repeat and check the chain.
//!
//! What a sink sends for one event is the stored canonical JSON, byte for
//! byte, with `"hash":"<hex>"` added before the closing brace. A stored
//! body that is not a one-line JSON object (a damaged or tampered store)
//! is sent as a placeholder naming its id, so receivers see no silent gap,
//! and logged; `pgward audit verify` says what is wrong with it.

mod config;
mod cursor;
mod file;
mod follow;
mod roots;
mod syslog;
mod webhook;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use config::{
    validate, Facility, FileConfig, SinkConfig, Start, SyslogConfig, Target, Transport,
    WebhookConfig,
};

use super::store::{AuditStore, AuditStoreError, Stored};
use cursor::CursorFile;
use follow::{Control, Follower};

/// Why a delivery (or the reading before it) failed. Messages never hold
/// event contents or secrets: they are logged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{0}")]
    Store(#[from] AuditStoreError),
    #[error("{0}")]
    Setup(String),
}

/// One event as sinks send it.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub id: u64,
    pub time_us: i64,
    /// The store's `kind` column.
    pub kind: String,
    /// The chain hash, hex.
    pub hash: String,
    /// The body with the hash added: one line of JSON.
    pub json: Vec<u8>,
}

impl Record {
    pub fn from_stored(s: Stored) -> Record {
        let hash = hex::encode(&s.hash);
        let json = with_hash(s.body, &hash).unwrap_or_else(|| {
            tracing::warn!(
                id = s.id,
                "audit event body is not a JSON object; sinks get a placeholder"
            );
            let placeholder = serde_json::json!({
                "id": s.id,
                "time_us": s.time_us,
                "kind": s.kind,
                "unreadable": true,
                "hash": hash,
            });
            placeholder.to_string().into_bytes()
        });
        Record {
            id: s.id,
            time_us: s.time_us,
            kind: s.kind,
            hash,
            json,
        }
    }
}

/// `{…}` → `{…,"hash":"…"}`; `None` unless `body` is a JSON object on one
/// line.
fn with_hash(mut body: Vec<u8>, hash: &str) -> Option<Vec<u8>> {
    let object = body.first() == Some(&b'{')
        && body.last() == Some(&b'}')
        && !body.iter().any(|&b| b == b'\n' || b == b'\r')
        && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
    if !object {
        return None;
    }
    body.pop();
    if body.len() > 1 {
        body.push(b',');
    }
    body.extend_from_slice(b"\"hash\":\"");
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}");
    Some(body)
}

/// A destination.
pub(crate) trait Deliver: Send {
    /// The last event id the destination itself shows as delivered, read
    /// once at start (the file sink's last line).
    fn recover(&mut self) -> Option<u64> {
        None
    }

    /// Delivers `records` (in id order, never empty) completely, or fails.
    fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError>;
}

/// Where sinks report progress; the metrics endpoint implements it.
pub trait Report: Send + Sync {
    fn delivered(&self, sink: &str, events: u64);
    fn failed(&self, sink: &str);
    /// Events stored and not yet delivered or passed over.
    fn lag(&self, sink: &str, events: u64);
}

/// A [`Report`] that reports nowhere.
pub struct NoReport;

impl Report for NoReport {
    fn delivered(&self, _: &str, _: u64) {}
    fn failed(&self, _: &str) {}
    fn lag(&self, _: &str, _: u64) {}
}

/// How long [`Sinks::close`] lets sinks deliver what is stored.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The running sinks.
pub struct Sinks {
    threads: Vec<(String, JoinHandle<()>)>,
    control: Arc<Control>,
}

impl Sinks {
    /// Opens each sink's destination and cursor and starts its thread.
    /// Fails on settings that cannot work (an unreadable CA file or cursor,
    /// a file that cannot be created); a receiver that is down is not an
    /// error, the sink delivers when it comes up.
    pub fn start(
        sinks: &[SinkConfig],
        audit_db: &Path,
        instance: &str,
        report: Arc<dyn Report>,
    ) -> anyhow::Result<Sinks> {
        let control = Arc::new(Control::default());
        let mut started = Sinks {
            threads: Vec::new(),
            control: Arc::clone(&control),
        };
        for cfg in sinks {
            let follower = prepare(cfg, audit_db, instance, &report, &control)
                .with_context(|| format!("starting audit sink {}", cfg.name))?;
            tracing::info!(sink = %cfg.name, next = follower.cursor() + 1, "audit sink started");
            let thread = std::thread::Builder::new()
                .name(format!("pgward-sink-{}", cfg.name))
                .spawn({
                    let name = cfg.name.clone();
                    move || {
                        // A bug ends this sink only, and says so; its
                        // cursor says where the next start resumes.
                        let run = std::panic::AssertUnwindSafe(|| follower.run());
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!(sink = %name, "audit sink stopped after an internal error");
                        }
                    }
                })?;
            started.threads.push((cfg.name.clone(), thread));
        }
        Ok(started)
    }

    /// Lets each sink deliver what is stored, for up to 2 s, then stops
    /// them. A sink still busy then (a receiver that stopped answering) is
    /// left to end with the process; its cursor says where to resume.
    pub fn close(mut self) {
        self.control.draining.store(true, Ordering::Release);
        for (_, t) in &self.threads {
            t.thread().unpark();
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline && self.threads.iter().any(|(_, t)| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.control.abort.store(true, Ordering::Release);
        for (name, t) in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(sink = %name, "audit sink still delivering at shutdown; it resumes from its cursor on the next start");
            }
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.control.abort.store(true, Ordering::Release);
        for (_, t) in &self.threads {
            t.thread().unpark();
        }
    }
}

fn prepare(
    cfg: &SinkConfig,
    audit_db: &Path,
    instance: &str,
    report: &Arc<dyn Report>,
    control: &Arc<Control>,
) -> anyhow::Result<Follower> {
    let mut sink: Box<dyn Deliver> = match &cfg.target {
        Target::File(f) => Box::new(file::FileSink::open(f)?),
        Target::Syslog(s) => Box::new(syslog::SyslogSink::new(s, instance)?),
        Target::Webhook(w) => Box::new(webhook::WebhookSink::new(w)?),
    };
    let store = AuditStore::open_read_only(audit_db)?;
    let cursor = CursorFile::new(cfg.cursor_path(audit_db));
    let saved = cursor.load()?;
    let start = match (saved, cfg.start) {
        (Some(id), _) => id,
        (None, Start::Head) => store.head()?.0,
        (None, Start::Oldest) => store.base()?.0,
    };
    // What the destination shows beats an older cursor: a crash between
    // writing and saving the cursor must not deliver twice.
    let start = start.max(sink.recover().unwrap_or(0));
    if saved != Some(start) {
        cursor
            .save(start)
            .with_context(|| format!("writing {}", cursor.path().display()))?;
    }
    Ok(Follower::new(
        cfg,
        store,
        cursor,
        start,
        sink,
        Arc::clone(report),
        Arc::clone(control),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_goes_inside_the_body() {
        assert_eq!(
            with_hash(br#"{"id":1,"kind":"login"}"#.to_vec(), "ab").unwrap(),
            br#"{"id":1,"kind":"login","hash":"ab"}"#.to_vec()
        );
        assert_eq!(
            with_hash(b"{}".to_vec(), "ab").unwrap(),
            br#"{"hash":"ab"}"#
        );
        assert!(with_hash(b"[1]".to_vec(), "ab").is_none());
        assert!(with_hash(b"{\"a\":\n1}".to_vec(), "ab").is_none());
        assert!(with_hash(b"{\"a\":1".to_vec(), "ab").is_none());
        assert!(with_hash(b"{\"a\" 1}".to_vec(), "ab").is_none());
    }

    #[test]
    fn unreadable_bodies_become_placeholders() {
        let r = Record::from_stored(Stored {
            id: 9,
            time_us: 5,
            kind: "statement".into(),
            user: None,
            database: None,
            class: None,
            relations: None,
            body: b"\xff not json".to_vec(),
            hash: vec![0xab, 0xcd],
        });
        let v: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["unreadable"], true);
        assert_eq!(v["hash"], "abcd");
    }
}
