//! What one audit event says, and its canonical encoding.
//!
//! An event is stored as JSON text, and the hash chain covers exactly
//! those bytes. A session encodes its event once ([`Encoded`]: fields in
//! struct order, absent ones left out, id 0); the writer numbers that text
//! and appends what it adds (fingerprint, relations) at the end rather
//! than encoding the event again. Verification never re-encodes: old events
//! stay verifiable when fields are added later, and readers decode by name,
//! not position. The text is written by [`encode`](super::encode), not
//! serde, for speed; it is byte-identical to serde's. Session facts (who, from
//! where, over what) are shared by every event of a session through an
//! `Arc`, and flattened into each event's JSON, so an exported event stands
//! on its own.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

/// Which kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A statement a client sent (one Query message, or one Execute).
    Statement,
    /// A login attempt, successful or not.
    Login,
    SessionStart,
    SessionEnd,
    /// A change made by an administrator (users, grants, policies) or an
    /// audit operation (export, verify).
    Admin,
    /// An alert rule fired.
    Alert,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Statement => "statement",
            Kind::Login => "login",
            Kind::SessionStart => "session_start",
            Kind::SessionEnd => "session_end",
            Kind::Admin => "admin",
            Kind::Alert => "alert",
        }
    }
}

/// What pgward did with a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Relayed as typed (an unrestricted role).
    Allowed,
    /// Analyzed and rewritten (a restricted role).
    Rewritten,
    /// Refused by pgward; never reached the database.
    Denied,
}

/// Facts about a session, the same for each of its events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// These facts encoded, once for all the session's events.
    #[serde(skip)]
    pub encoded: MembersCache,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The grant or break-glass behind the role, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_user: Option<String>,
}

/// One audit event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Position in the chain; assigned when the event is stored.
    pub id: u64,
    /// UTC, microseconds since the Unix epoch.
    pub time_us: i64,
    pub kind: Kind,
    /// The pgward instance (host name unless configured); shared, as every
    /// event of a process names the same one.
    pub instance: Arc<str>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Arc<SessionInfo>>,
    /// Statement class (`read`, `write`, `ddl`, `admin`, `other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The statement as the client sent it (shared with the session's
    /// prepared statement, which every Execute of it names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Arc<str>>,
    /// The statement as pgward sent it, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// The statement with constants replaced by `?` (shared with the
    /// session's prepared statement, like `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Arc<str>>,
    /// Bind parameters (only with `audit.parameters` set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<Option<String>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relations: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// `relation.column: mask` for every masked column the statement read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<String>,
    /// `relation: filter` for every row filter applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Borrowed for the common codes (`00000` for each statement that
    /// succeeds), owned for those read from the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Login: `ok` or why it failed; session end: why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Admin and alert events: what was done (`user.add`, `audit.export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// [`SessionInfo`] as JSON object members (`"session":3,"user":"ann"`),
/// filled on first use. A clone starts empty (the clone may be changed)
/// and caches never make two `SessionInfo`s unequal.
#[derive(Debug, Default)]
pub struct MembersCache(OnceLock<Box<[u8]>>);

impl Clone for MembersCache {
    fn clone(&self) -> Self {
        MembersCache::default()
    }
}

impl PartialEq for MembersCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MembersCache {}

impl SessionInfo {
    /// The facts as JSON object members, encoded on first use.
    pub(super) fn members(&self) -> &[u8] {
        self.encoded.0.get_or_init(|| {
            let object = serde_json::to_vec(self).unwrap_or_default();
            let inner = object
                .strip_prefix(b"{")
                .and_then(|o| o.strip_suffix(b"}"))
                .unwrap_or_default();
            inner.into()
        })
    }
}

impl Event {
    /// An event of `kind` happening now, with nothing else filled in.
    pub fn new(kind: Kind, instance: &str) -> Event {
        Event::of(kind, Arc::from(instance))
    }

    /// [`Event::new`] for an instance name already shared.
    pub fn of(kind: Kind, instance: Arc<str>) -> Event {
        Event {
            id: 0,
            time_us: now_us(),
            kind,
            instance,
            who: None,
            class: None,
            text: None,
            sent: None,
            fingerprint: None,
            params: None,
            relations: Vec::new(),
            columns: Vec::new(),
            masks: Vec::new(),
            filters: Vec::new(),
            decision: None,
            reason: None,
            sqlstate: None,
            rows: None,
            bytes: None,
            duration_us: None,
            outcome: None,
            action: None,
            detail: None,
        }
    }

    /// An administrative action.
    pub fn admin(instance: &str, user: &str, action: &str, detail: impl Into<String>) -> Event {
        let mut e = Event::new(Kind::Admin, instance);
        e.who = Some(Arc::new(SessionInfo {
            user: Some(user.to_string()),
            ..SessionInfo::default()
        }));
        e.action = Some(action.to_string());
        e.detail = Some(detail.into());
        e
    }

    /// The canonical encoding the chain hashes.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(body: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(body)
    }

    pub fn user(&self) -> Option<&str> {
        self.who.as_ref().and_then(|w| w.user.as_deref())
    }

    pub fn database(&self) -> Option<&str> {
        self.who.as_ref().and_then(|w| w.database.as_deref())
    }
}

/// An event with its JSON text so far: encoded once, by the session that
/// produced it, with id 0; [`Encoded::numbered`] gives the stored text.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub event: Event,
    pub body: Vec<u8>,
}

/// How every unnumbered body starts.
const UNNUMBERED: &[u8] = br#"{"id":0,"#;

impl Encoded {
    pub fn new(mut event: Event) -> Encoded {
        event.id = 0;
        // The same text as `event.encode()`, written directly.
        let mut body = Vec::new();
        super::encode::write_event(&mut body, &event);
        Encoded { event, body }
    }

    /// A body read back (from the spool), with the event it decodes to.
    pub fn decode(body: Vec<u8>) -> Result<Encoded, serde_json::Error> {
        let event = Event::decode(&body)?;
        if event.id != 0 || !body.starts_with(UNNUMBERED) {
            // Not a body this module wrote: encode it afresh.
            return Ok(Encoded::new(event));
        }
        Ok(Encoded { event, body })
    }

    /// Sets a field the event did not have when it was encoded, in the
    /// event and at the end of the body.
    pub fn add(&mut self, key: &str, value: &impl Serialize) {
        if self.body.pop() != Some(b'}') {
            // Not an object: cannot happen for a body `new` made.
            return;
        }
        self.body.extend_from_slice(b",\"");
        self.body.extend_from_slice(key.as_bytes());
        self.body.extend_from_slice(b"\":");
        // Strings and lists of strings cannot fail to serialize.
        let _ = serde_json::to_writer(&mut self.body, value);
        self.body.push(b'}');
    }

    /// Sets the fingerprint the writer computed.
    pub fn set_fingerprint(&mut self, fingerprint: String) {
        self.add("fingerprint", &fingerprint);
        self.event.fingerprint = Some(fingerprint.into());
    }

    /// Sets the relations the writer found.
    pub fn set_relations(&mut self, relations: Vec<String>) {
        if !relations.is_empty() {
            self.add("relations", &relations);
        }
        self.event.relations = relations;
    }

    /// The stored text of this event as number `id`.
    pub fn numbered(&self, id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 20);
        self.number_into(&mut out, id);
        out
    }

    /// [`Encoded::numbered`] into `out` (cleared first), so a writer can
    /// reuse one buffer for a batch.
    pub fn number_into(&self, out: &mut Vec<u8>, id: u64) {
        let rest = &self.body[UNNUMBERED.len() - 1..];
        out.clear();
        out.extend_from_slice(br#"{"id":"#);
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        out.extend_from_slice(rest);
    }
}

/// What the policy engine found in a statement of a restricted role.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub sent: Option<String>,
    pub decision: Option<Decision>,
    pub reason: Option<String>,
    pub relations: Vec<String>,
    pub masks: Vec<String>,
    pub filters: Vec<String>,
}

impl Event {
    /// Copies what the analysis found into the event.
    pub fn apply(&mut self, a: &Analysis) {
        self.sent.clone_from(&a.sent);
        self.decision = a.decision;
        self.reason.clone_from(&a.reason);
        self.relations.clone_from(&a.relations);
        self.masks.clone_from(&a.masks);
        self.filters.clone_from(&a.filters);
    }
}

/// Microseconds since the Unix epoch (0 for a clock set before it).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `2026-11-23T18:40:00.123456Z`.
pub fn format_time(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_microseconds_of_the_utc_clock() {
        let before = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let now = i128::from(now_us());
        let after = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn encoding_is_stable_and_round_trips() {
        let mut e = Event::new(Kind::Statement, "pgward-1");
        e.id = 7;
        e.time_us = 1_700_000_000_000_001;
        e.who = Some(Arc::new(SessionInfo {
            session: Some(3),
            user: Some("ann".into()),
            database: Some("clinic".into()),
            ..SessionInfo::default()
        }));
        e.text = Some("SELECT 1".into());
        e.decision = Some(Decision::Allowed);
        e.rows = Some(1);
        let body = e.encode();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"id":7,"time_us":1700000000000001,"kind":"statement","instance":"pgward-1","session":3,"user":"ann","database":"clinic","text":"SELECT 1","decision":"allowed","rows":1}"#
        );
        let back = Event::decode(&body).unwrap();
        assert_eq!(back.encode(), body);
        assert_eq!(back.user(), Some("ann"));
    }

    #[test]
    fn an_encoded_event_is_numbered_and_extended_without_encoding_again() {
        let mut e = Event::new(Kind::Statement, "pgward-1");
        e.id = 99;
        e.time_us = 1_700_000_000_000_001;
        e.text = Some("SELECT \"x\" FROM t WHERE a = 'b'".into());
        e.rows = Some(1);
        let mut enc = Encoded::new(e);
        enc.set_fingerprint("SELECT \"x\" FROM t WHERE a = ?".into());
        enc.set_relations(vec!["public.t".into()]);
        let body = enc.numbered(12);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"id":12,"time_us":1700000000000001,"kind":"statement","instance":"pgward-1","text":"SELECT \"x\" FROM t WHERE a = 'b'","rows":1,"fingerprint":"SELECT \"x\" FROM t WHERE a = ?","relations":["public.t"]}"#
        );
        let back = Event::decode(&body).unwrap();
        assert_eq!(back.id, 12);
        assert_eq!(back.fingerprint, enc.event.fingerprint);
        assert_eq!(back.relations, ["public.t"]);
        // A body from elsewhere (numbered already) is encoded afresh.
        let again = Encoded::decode(body).unwrap();
        assert_eq!(again.event.id, 0);
        assert!(again.body.starts_with(UNNUMBERED));
    }

    #[test]
    fn the_cached_session_facts_encode_exactly_as_serde_does() {
        let who = Arc::new(SessionInfo {
            session: Some(3),
            user: Some("ann \"the\" admin".into()),
            role: Some("dba".into()),
            via: Some("grant 7".into()),
            client_addr: Some("10.0.0.1:5000".into()),
            database: Some("clinic".into()),
            ..SessionInfo::default()
        });
        let mut full = Event::new(Kind::Statement, "pgward \u{e9}");
        full.who = Some(Arc::clone(&who));
        full.class = Some("read".into());
        full.text = Some("SELECT 'x\n'".into());
        full.relations = vec!["public.t".into()];
        full.rows = Some(2);
        let bare = Event::new(Kind::Login, "i");
        let mut empty_who = Event::new(Kind::Admin, "i");
        empty_who.who = Some(Arc::new(SessionInfo::default()));
        for e in [full.clone(), full, bare, empty_who] {
            let want = serde_json::to_vec(&e).unwrap();
            assert_eq!(
                String::from_utf8(Encoded::new(e).body).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    #[test]
    fn times_format_as_utc_with_microseconds() {
        assert_eq!(
            format_time(1_700_000_000_000_001),
            "2023-11-14T22:13:20.000001Z"
        );
    }
}
