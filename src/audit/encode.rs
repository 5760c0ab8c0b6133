//! The canonical JSON text of an [`Event`], written directly.
//!
//! Every statement pays for encoding its event before ReadyForQuery is
//! released, so this is on the hot path: serde's derived serializer (the
//! flattened session facts make it a map, field by field, into buffers that
//! grow several times) cost a few microseconds per statement under load.
//! This writes the same bytes in one pass into one buffer sized up front,
//! with the session's facts copied from their cached encoding. Strings go
//! through serde_json's own escaping, so text is escaped exactly as serde
//! does it; the tests compare whole events with serde's encoding.

use serde::Serialize;

use super::event::{Decision, Event, SessionInfo};

/// Appends the JSON object for `event` to `out`: fields in struct order,
/// absent ones left out, the session's facts (from their per-session
/// cache) where serde flattens them.
pub fn write_event(out: &mut Vec<u8>, event: &Event) {
    let facts = event.who.as_deref().map_or(&[][..], SessionInfo::members);
    // Room for the writer's additions too: a fingerprint (no longer than
    // the text, as a rule) and relations.
    let text = event.text.as_deref().map_or(0, str::len);
    out.reserve(320 + facts.len() + text_len(event) + text);
    out.extend_from_slice(b"{\"id\":");
    number(out, event.id);
    out.extend_from_slice(b",\"time_us\":");
    out.extend_from_slice(itoa::Buffer::new().format(event.time_us).as_bytes());
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(event.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"instance\":");
    string(out, &event.instance);
    if !facts.is_empty() {
        out.push(b',');
        out.extend_from_slice(facts);
    }
    opt_string(out, "class", event.class.as_deref());
    opt_string(out, "text", event.text.as_deref());
    opt_string(out, "sent", event.sent.as_deref());
    opt_string(out, "fingerprint", event.fingerprint.as_deref());
    if let Some(params) = &event.params {
        member(out, "params", params);
    }
    list(out, "relations", &event.relations);
    list(out, "columns", &event.columns);
    list(out, "masks", &event.masks);
    list(out, "filters", &event.filters);
    if let Some(d) = event.decision {
        key(out, "decision");
        out.push(b'"');
        out.extend_from_slice(decision(d).as_bytes());
        out.push(b'"');
    }
    opt_string(out, "reason", event.reason.as_deref());
    opt_string(out, "sqlstate", event.sqlstate.as_deref());
    opt_number(out, "rows", event.rows);
    opt_number(out, "bytes", event.bytes);
    opt_number(out, "duration_us", event.duration_us);
    opt_string(out, "outcome", event.outcome.as_deref());
    opt_string(out, "action", event.action.as_deref());
    opt_string(out, "detail", event.detail.as_deref());
    out.push(b'}');
}

/// The bytes of the longer strings, so one allocation holds the event.
fn text_len(e: &Event) -> usize {
    [
        e.text.as_deref(),
        e.sent.as_deref(),
        e.fingerprint.as_deref(),
        e.reason.as_deref(),
        e.detail.as_deref(),
    ]
    .iter()
    .map(|s| s.map_or(0, str::len))
    .sum()
}

/// The name serde gives each variant (`rename_all = "snake_case"`); the
/// tests check each against serde, as they do [`Kind::as_str`].
fn decision(d: Decision) -> &'static str {
    match d {
        Decision::Allowed => "allowed",
        Decision::Rewritten => "rewritten",
        Decision::Denied => "denied",
    }
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn member(out: &mut Vec<u8>, name: &str, value: &impl Serialize) {
    key(out, name);
    // Strings, lists and options of strings cannot fail to serialize.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn opt_string(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(s) = value {
        key(out, name);
        string(out, s);
    }
}

fn opt_number(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(n) = value {
        key(out, name);
        number(out, n);
    }
}

fn list(out: &mut Vec<u8>, name: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    key(out, name);
    out.push(b'[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::event::Kind;

    fn serde_text(e: &Event) -> String {
        String::from_utf8(serde_json::to_vec(e).unwrap()).unwrap()
    }

    fn direct_text(e: &Event) -> String {
        let mut out = Vec::new();
        write_event(&mut out, e);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_field_is_written_as_serde_writes_it() {
        let mut e = Event::new(Kind::Statement, "pgward \u{e9}\"1\"");
        e.id = u64::MAX;
        e.time_us = -5;
        e.who = Some(Arc::new(SessionInfo {
            session: Some(3),
            user: Some("ann \"the\" admin".into()),
            role: Some("dba".into()),
            via: Some("grant 7".into()),
            client_addr: Some("10.0.0.1:5000".into()),
            tls_version: Some("TLSv1_3".into()),
            client_cert: Some("CN=ann\\x".into()),
            application_name: Some("psql\u{1}\u{7f}".into()),
            database: Some("clinic".into()),
            upstream_user: Some("app".into()),
            ..SessionInfo::default()
        }));
        e.class = Some("read".into());
        e.text = Some("SELECT 'x\n\t\r\u{8}\u{c}\u{0}' -- \u{1f600}".into());
        e.sent = Some("SELECT mask(x)".into());
        e.fingerprint = Some("SELECT ?".into());
        e.params = Some(vec![Some("42".into()), None, Some("\"q\"".into())]);
        e.relations = vec!["public.t".into(), "a\"b".into()];
        e.columns = vec!["t.x".into()];
        e.masks = vec!["t.x: hash".into()];
        e.filters = vec!["t: x > 0".into()];
        e.reason = Some("because\\".into());
        e.sqlstate = Some("42501".into());
        e.rows = Some(0);
        e.bytes = Some(12);
        e.duration_us = Some(u64::MAX);
        e.outcome = Some("ok".into());
        e.action = Some("user.add".into());
        e.detail = Some("{\"json\": true}".into());
        for d in [Decision::Allowed, Decision::Rewritten, Decision::Denied] {
            e.decision = Some(d);
            assert_eq!(direct_text(&e), serde_text(&e));
        }
        for k in [
            Kind::Statement,
            Kind::Login,
            Kind::SessionStart,
            Kind::SessionEnd,
            Kind::Admin,
            Kind::Alert,
        ] {
            e.kind = k;
            assert_eq!(direct_text(&e), serde_text(&e));
        }
    }

    #[test]
    fn absent_fields_are_left_out_as_serde_leaves_them() {
        let mut e = Event::new(Kind::Login, "i");
        e.time_us = 1_700_000_000_000_001;
        assert_eq!(direct_text(&e), serde_text(&e));
        assert_eq!(
            direct_text(&e),
            r#"{"id":0,"time_us":1700000000000001,"kind":"login","instance":"i"}"#
        );
        e.who = Some(Arc::new(SessionInfo::default()));
        e.params = Some(Vec::new());
        e.rows = Some(1);
        assert_eq!(direct_text(&e), serde_text(&e));
    }
}
