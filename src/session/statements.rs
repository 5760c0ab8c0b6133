//! Statement events for one session: what the client asked to run, joined
//! with what the database answered.
//!
//! The client side turns each Query, Execute and FunctionCall into a
//! [`Record`] — the event so far (text as received and as sent, the policy
//! decision, parameters) plus its reserved place in the audit queue — which
//! rides in the [`Pipeline`](super::pipeline::Pipeline) entry for that
//! request. The database side adds rows, bytes and the SQLSTATE as replies
//! pass, and the record becomes an event when its request completes
//! (CommandComplete/EmptyQuery/PortalSuspended/ErrorResponse for an
//! Execute, ReadyForQuery for a Query). Named statements and portals are
//! remembered so an Execute knows its text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::audit::fingerprint::fingerprint;
use crate::audit::{Analysis, Audit, Decision, Event, Kind, SessionInfo, Slot};
use crate::config::AuditParameters;

/// A statement on its way through the database.
pub struct Record {
    event: Event,
    slot: Slot,
    started: Instant,
    rows: u64,
    data_rows: u64,
    bytes: u64,
}

impl Record {
    /// A DataRow or CopyData of `len` bytes went to the client.
    pub fn data(&mut self, len: usize, is_row: bool) {
        self.bytes += len as u64;
        if is_row {
            self.data_rows += 1;
        }
    }

    /// A CommandComplete tag (`SELECT 5`, `INSERT 0 3`, `COPY 10`).
    pub fn complete(&mut self, tag: &[u8]) {
        let tag = tag.strip_suffix(&[0]).unwrap_or(tag);
        let last = tag.rsplit(|&b| b == b' ').next().unwrap_or(b"");
        if let Some(n) = std::str::from_utf8(last)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.rows += n;
        }
    }

    pub fn error(&mut self, sqlstate: &str) {
        if self.event.sqlstate.is_none() {
            // A refusal reaches the server as a marker that fails to parse;
            // the client is told 42501, and so is the record.
            let code = match self.event.decision {
                Some(Decision::Denied) => "42501",
                _ => sqlstate,
            };
            self.event.sqlstate = Some(Cow::Owned(code.to_string()));
        }
    }

    /// The finished event, queued; resolves when it is stored.
    pub fn finish(mut self, audit: &Audit) -> Option<oneshot::Receiver<()>> {
        let e = &mut self.event;
        e.rows = Some(self.rows.max(self.data_rows));
        e.bytes = Some(self.bytes);
        e.duration_us = Some(self.started.elapsed().as_micros() as u64);
        if e.sqlstate.is_none() {
            e.sqlstate = Some(Cow::Borrowed("00000"));
        }
        audit.send(self.slot, self.event)
    }

    /// A request the server never ran (discarded after an error, or cut
    /// off by the end of the session): stored with what is known.
    pub fn abandon(mut self, audit: &Audit, why: &str) {
        self.event.outcome = Some(why.to_string());
        self.event.duration_us = Some(self.started.elapsed().as_micros() as u64);
        let _ = audit.send(self.slot, self.event);
    }
}

#[derive(Clone)]
struct Prepared {
    text: Arc<str>,
    /// Once per statement, not per Execute (the writer fingerprints the
    /// text of a Query).
    fingerprint: Arc<str>,
    analysis: Option<Arc<Analysis>>,
}

#[derive(Clone)]
struct Portal {
    statement: Prepared,
    params: Option<Vec<Option<String>>>,
}

/// Client-side bookkeeping: prepared statements and portals by name.
pub struct Recorder {
    pub audit: Arc<Audit>,
    who: Arc<SessionInfo>,
    parameters: AuditParameters,
    statements: HashMap<Vec<u8>, Prepared>,
    /// The unnamed portal, apart: drivers bind and execute it for every
    /// statement, and it needs no key copied or hashed.
    unnamed: Option<Portal>,
    portals: HashMap<Vec<u8>, Portal>,
}

fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

impl Recorder {
    pub fn new(audit: Arc<Audit>, who: Arc<SessionInfo>, parameters: AuditParameters) -> Self {
        Recorder {
            audit,
            who,
            parameters,
            statements: HashMap::new(),
            unnamed: None,
            portals: HashMap::new(),
        }
    }

    fn event(&self, text: Arc<str>, analysis: Option<&Analysis>) -> Event {
        let mut e = Event::of(Kind::Statement, self.audit.shared_instance());
        e.who = Some(Arc::clone(&self.who));
        e.text = Some(text);
        match analysis {
            Some(a) => e.apply(a),
            None => e.decision = Some(Decision::Allowed),
        }
        e
    }

    fn record(&self, event: Event, slot: Slot) -> Box<Record> {
        Box::new(Record {
            event,
            slot,
            started: Instant::now(),
            rows: 0,
            data_rows: 0,
            bytes: 0,
        })
    }

    /// A Query frame (body without the header).
    pub fn query(&self, body: &[u8], analysis: Option<&Analysis>, slot: Slot) -> Box<Record> {
        let text = cstr(body).map_or(body, |(t, _)| t);
        let event = self.event(String::from_utf8_lossy(text).into(), analysis);
        self.record(event, slot)
    }

    /// A Parse frame: remembers the statement's text and analysis.
    pub fn parse(&mut self, body: &[u8], analysis: Option<Analysis>) {
        let Some((name, rest)) = cstr(body) else {
            return;
        };
        let text = String::from_utf8_lossy(cstr(rest).map_or(rest, |(t, _)| t));
        self.statements.insert(
            name.to_vec(),
            Prepared {
                fingerprint: fingerprint(&text).into(),
                text: Arc::from(text.as_ref()),
                analysis: analysis.map(Arc::new),
            },
        );
    }

    /// A Bind frame: the portal's statement and, if configured, parameters.
    pub fn bind(&mut self, body: &[u8]) {
        let Some((portal, rest)) = cstr(body) else {
            return;
        };
        let Some((statement, rest)) = cstr(rest) else {
            return;
        };
        let Some(prepared) = self.statements.get(statement).cloned() else {
            return;
        };
        let params = match self.parameters {
            AuditParameters::Off => None,
            mode => bind_params(rest, mode == AuditParameters::Full),
        };
        let bound = Portal {
            statement: prepared,
            params,
        };
        if portal.is_empty() {
            self.unnamed = Some(bound);
        } else {
            self.portals.insert(portal.to_vec(), bound);
        }
    }

    fn portal(&self, name: &[u8]) -> Option<&Portal> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.portals.get(name)
        }
    }

    /// A Close frame: forgets the statement or portal.
    pub fn close(&mut self, body: &[u8]) {
        let Some((&what, rest)) = body.split_first() else {
            return;
        };
        let name = cstr(rest).map_or(rest, |(n, _)| n);
        match what {
            b'S' => {
                self.statements.remove(name);
            }
            _ if name.is_empty() => self.unnamed = None,
            _ => {
                self.portals.remove(name);
            }
        }
    }

    /// An Execute frame.
    pub fn execute(&self, body: &[u8], slot: Slot) -> Box<Record> {
        let portal = cstr(body).map_or(body, |(p, _)| p);
        let mut event = match self.portal(portal) {
            Some(p) => {
                let text = Arc::clone(&p.statement.text);
                let mut e = self.event(text, p.statement.analysis.as_deref());
                e.fingerprint = Some(Arc::clone(&p.statement.fingerprint));
                e.params.clone_from(&p.params);
                e
            }
            None => self.event("".into(), None),
        };
        if event.text.as_deref() == Some("") {
            let text = format!("(execute portal \"{}\")", String::from_utf8_lossy(portal));
            event.text = Some(text.into());
            event.fingerprint = None;
        }
        self.record(event, slot)
    }

    /// A FunctionCall frame.
    pub fn call(&self, body: &[u8], analysis: Option<&Analysis>, slot: Slot) -> Box<Record> {
        let oid = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        let event = self.event(
            format!("(fast-path function call, oid {oid})").into(),
            analysis,
        );
        self.record(event, slot)
    }
}

/// Bind parameters: the values (text format) or, redacted, their sizes.
fn bind_params(body: &[u8], full: bool) -> Option<Vec<Option<String>>> {
    let mut r = Reader(body);
    let nformats = r.u16()? as usize;
    let mut formats = Vec::with_capacity(nformats);
    for _ in 0..nformats {
        formats.push(r.u16()?);
    }
    let n = r.u16()? as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let len = r.i32()?;
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = r.take(len as usize)?;
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats.get(i)?,
        };
        out.push(Some(match (full, format) {
            (true, 0) => String::from_utf8_lossy(value).into_owned(),
            (true, _) => format!("\\x{}", hex::encode(value)),
            (false, _) => format!("({} bytes)", value.len()),
        }));
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_execute_carries_the_fingerprint_made_at_parse() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::start(crate::audit::writer::tests::config(dir.path(), 16)).unwrap();
        let who = Arc::new(SessionInfo::default());
        let mut r = Recorder::new(Arc::clone(&audit), who, AuditParameters::Off);
        // Parse "s1", then Bind the unnamed portal to it (no parameters).
        r.parse(b"s1\0SELECT * FROM t WHERE id = 42\0\0\0", None);
        let execute = |r: &Recorder| {
            let slot = audit.reserve_now().unwrap();
            r.execute(b"\0\0\0\0\0", slot)
        };
        r.bind(b"\0s1\0\0\0\0\0\0\0");
        let (a, b) = (execute(&r), execute(&r));
        assert_eq!(
            a.event.fingerprint.as_deref(),
            Some("SELECT * FROM t WHERE id = ?")
        );
        let (fa, fb) = (a.event.fingerprint.clone(), b.event.fingerprint.clone());
        assert!(Arc::ptr_eq(&fa.unwrap(), &fb.unwrap()), "made once, shared");
        // A portal nobody bound: the text says so, and the writer
        // fingerprints that text itself.
        let slot = audit.reserve_now().unwrap();
        let unknown = r.execute(b"p9\0\0\0\0\0", slot);
        assert_eq!(
            unknown.event.text.as_deref(),
            Some("(execute portal \"p9\")")
        );
        assert_eq!(unknown.event.fingerprint, None);
        drop((a, b, unknown));
        audit.close().await;
    }

    #[test]
    fn bind_parameters_full_and_redacted() {
        // one format code (text), two params: "42" and NULL
        let mut body = vec![0, 1, 0, 0, 0, 2];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"42");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        assert_eq!(
            bind_params(&body, true),
            Some(vec![Some("42".to_string()), None])
        );
        assert_eq!(
            bind_params(&body, false),
            Some(vec![Some("(2 bytes)".to_string()), None])
        );
        assert_eq!(bind_params(&body[..5], true), None, "truncated");
    }
}
