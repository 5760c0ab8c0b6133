//! What one audit event says, and its canonical encoding.
//!
//! An event is stored as the JSON text [`Event::encode`] produces — field
//! order fixed by the struct, absent fields left out — and the hash chain
//! covers exactly those bytes. Verification never re-encodes: old events
//! stay verifiable when fields are added later. Session facts (who, from
//! where, over what) are shared by every event of a session through an
//! `Arc`, and flattened into each event's JSON, so an exported event stands
//! on its own.

use std::sync::Arc;

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
    /// The pgward instance (host name unless configured).
    pub instance: String,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Arc<SessionInfo>>,
    /// Statement class (`read`, `write`, `ddl`, `admin`, `other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The statement as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The statement as pgward sent it, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    /// The statement with constants replaced by `?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
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

impl Event {
    /// An event of `kind` happening now, with nothing else filled in.
    pub fn new(kind: Kind, instance: &str) -> Event {
        Event {
            id: 0,
            time_us: now_us(),
            kind,
            instance: instance.to_string(),
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

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1000) as i64
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
    fn times_format_as_utc_with_microseconds() {
        assert_eq!(
            format_time(1_700_000_000_000_001),
            "2023-11-14T22:13:20.000001Z"
        );
    }
}
