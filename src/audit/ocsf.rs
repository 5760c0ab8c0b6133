//! Audit events as OCSF 1.1.0 records, for SIEMs that ingest the Open
//! Cybersecurity Schema Framework (Amazon Security Lake, Splunk, …).
//!
//! OCSF has no class for "a statement passed through an access proxy", so
//! this is a mapping, chosen to put each fact where a SIEM looks for it:
//!
//! | pgward event                  | OCSF class                      | activity                  |
//! |-------------------------------|---------------------------------|---------------------------|
//! | `login`                       | Authentication (3002, cat. 3)   | Logon (1)                 |
//! | `session_start`               | Datastore Activity (6005, cat. 6) | Connect (3)             |
//! | `statement`, class `read`     | Datastore Activity              | Read (1)                  |
//! | `statement`, class `write`    | Datastore Activity              | Write (5)                 |
//! | other statements (`ddl`, `admin`, `other`), `session_end`, `admin`, `alert` | Datastore Activity | Other (99), `activity_name` says what |
//!
//! Write statements are not split into Create/Update/Delete: pgward
//! classifies statements, it does not tag each INSERT/UPDATE/DELETE, and
//! guessing from the text would be wrong for CTEs and MERGE.
//!
//! Status: a denied statement, a statement that ended in an SQLSTATE other
//! than success/warning/no-data, and a login whose outcome is not `ok` are
//! Failure (2), with `status_code` the SQLSTATE and `status_detail` the
//! reason; everything else is Success (1). Severity is Informational (1),
//! Low (2) for failures, Medium (3) for alerts. Times are milliseconds (the
//! exact microseconds stay in `metadata.original_time` and the body).
//!
//! `unmapped` carries what OCSF has no place for (decision, role, masks,
//! row filters, …), plus the event's stored `body` (a string, verbatim) and
//! chain `hash`, so a record can be traced back to the provable trail.

use serde_json::{json, Map, Value};

use super::event::{format_time, Event, Kind};
use super::export::decision_str;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.1.0";

const DATASTORE: (u32, &str) = (6005, "Datastore Activity");
const AUTHENTICATION: (u32, &str) = (3002, "Authentication");

/// (class, activity id, activity name) for an event.
fn classify(e: &Event) -> ((u32, &'static str), u32, String) {
    let other = |name: &str| (DATASTORE, 99, name.to_string());
    match e.kind {
        Kind::Login => (AUTHENTICATION, 1, "Logon".into()),
        Kind::SessionStart => (DATASTORE, 3, "Connect".into()),
        Kind::SessionEnd => other("Disconnect"),
        Kind::Admin => other("Admin"),
        Kind::Alert => other("Alert"),
        Kind::Statement => match e.class.as_deref() {
            Some("read") => (DATASTORE, 1, "Read".into()),
            Some("write") => (DATASTORE, 5, "Write".into()),
            Some("ddl") => other("DDL"),
            Some("admin") => other("Admin Statement"),
            _ => other("Statement"),
        },
    }
}

/// Whether a SQLSTATE means the statement failed (classes 00, 01 and 02
/// are success, warning and no data).
fn sqlstate_failed(s: &str) -> bool {
    !(s.starts_with("00") || s.starts_with("01") || s.starts_with("02"))
}

/// `ip:port`, `[v6]:port` or a bare address; anything else as a name.
fn endpoint(addr: &str) -> Value {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return json!({ "ip": sa.ip().to_string(), "port": sa.port() });
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return json!({ "ip": ip.to_string() });
    }
    json!({ "name": addr })
}

/// The OCSF record for `e`, whose stored bytes are `body` and chain hash
/// `hash`.
pub fn record(e: &Event, body: &[u8], hash: &[u8]) -> Value {
    let ((class_uid, class_name), activity_id, activity_name) = classify(e);
    let category = match class_uid {
        3002 => (3, "Identity & Access Management"),
        _ => (6, "Application Activity"),
    };
    let who = e.who.as_deref();

    let (failed, detail) = match e.kind {
        Kind::Login => match e.outcome.as_deref() {
            Some("ok") => (false, None),
            other => (true, other.map(str::to_string)),
        },
        _ if e.decision == Some(super::Decision::Denied) => (true, e.reason.clone()),
        _ => match e.sqlstate.as_deref() {
            Some(s) if sqlstate_failed(s) => (true, e.reason.clone()),
            _ => (false, None),
        },
    };
    let (severity_id, severity) = match (e.kind, failed) {
        (Kind::Alert, _) => (3, "Medium"),
        (_, true) => (2, "Low"),
        _ => (1, "Informational"),
    };

    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_string(), v);
    };
    put("class_uid", class_uid.into());
    put("class_name", class_name.into());
    put("category_uid", category.0.into());
    put("category_name", category.1.into());
    put("activity_id", activity_id.into());
    put("activity_name", activity_name.clone().into());
    put(
        "type_uid",
        (u64::from(class_uid) * 100 + u64::from(activity_id)).into(),
    );
    put("type_name", format!("{class_name}: {activity_name}").into());
    put("time", e.time_us.div_euclid(1000).into());
    put("severity_id", severity_id.into());
    put("severity", severity.into());
    put("status_id", if failed { 2 } else { 1 }.into());
    put("status", if failed { "Failure" } else { "Success" }.into());
    if let Some(code) = &e.sqlstate {
        put("status_code", code.clone().into());
    }
    if let Some(detail) = detail {
        put("status_detail", detail.into());
    }
    put(
        "metadata",
        json!({
            "version": OCSF_VERSION,
            "uid": e.id.to_string(),
            "original_time": format_time(e.time_us),
            "log_name": "pgward audit",
            "product": {
                "name": "pgward",
                "vendor_name": "pgward",
                "version": env!("CARGO_PKG_VERSION"),
            },
        }),
    );
    if let Some(d) = e.duration_us {
        put("duration", (d / 1000).into());
    }

    let user = who.and_then(|w| w.user.as_deref());
    let mut actor = Map::new();
    if let Some(u) = user {
        actor.insert("user".into(), json!({ "name": u }));
    }
    if let Some(s) = who.and_then(|w| w.session) {
        actor.insert("session".into(), json!({ "uid": s.to_string() }));
    }
    if !actor.is_empty() {
        put("actor", actor.into());
    }
    if let Some(addr) = who.and_then(|w| w.client_addr.as_deref()) {
        put("src_endpoint", endpoint(addr));
    }
    let database = who.and_then(|w| w.database.as_deref());
    if class_uid == AUTHENTICATION.0 {
        if let Some(u) = user {
            put("user", json!({ "name": u }));
        }
    } else {
        if let Some(db) = database {
            put(
                "database",
                json!({ "name": db, "type": "Relational", "type_id": 1 }),
            );
        }
        // The datastore's resource type: Table (3) or Database (1).
        if let Some(t) = e.relations.first() {
            put("table", json!({ "name": t }));
            put("type_id", 3.into());
            put("type", "Table".into());
        } else if database.is_some() {
            put("type_id", 1.into());
            put("type", "Database".into());
        }
        if let Some(text) = &e.text {
            put("query_info", json!({ "query_string": text }));
        }
    }

    let mut u = Map::new();
    let mut keep = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            u.insert(k.to_string(), v);
        }
    };
    let list = |l: &Vec<String>| (!l.is_empty()).then(|| Value::from(l.clone()));
    keep("id", Some(e.id.into()));
    keep("kind", Some(e.kind.as_str().into()));
    keep("instance", Some(e.instance.as_ref().into()));
    keep("role", who.and_then(|w| w.role.clone()).map(Value::from));
    keep("via", who.and_then(|w| w.via.clone()).map(Value::from));
    keep(
        "application_name",
        who.and_then(|w| w.application_name.clone())
            .map(Value::from),
    );
    keep(
        "tls_version",
        who.and_then(|w| w.tls_version.clone()).map(Value::from),
    );
    keep(
        "client_cert",
        who.and_then(|w| w.client_cert.clone()).map(Value::from),
    );
    keep(
        "upstream_user",
        who.and_then(|w| w.upstream_user.clone()).map(Value::from),
    );
    if class_uid == AUTHENTICATION.0 {
        keep("database", database.map(Value::from));
    }
    keep("class", e.class.clone().map(Value::from));
    keep("decision", e.decision.map(|d| decision_str(d).into()));
    keep("reason", e.reason.clone().map(Value::from));
    keep("sent", e.sent.clone().map(Value::from));
    keep("fingerprint", e.fingerprint.as_deref().map(Value::from));
    keep("relations", list(&e.relations));
    keep("columns", list(&e.columns));
    keep("masks", list(&e.masks));
    keep("filters", list(&e.filters));
    keep("rows", e.rows.map(Value::from));
    keep("bytes", e.bytes.map(Value::from));
    keep("duration_us", e.duration_us.map(Value::from));
    keep("outcome", e.outcome.clone().map(Value::from));
    keep("action", e.action.clone().map(Value::from));
    keep("detail", e.detail.clone().map(Value::from));
    keep(
        "body",
        Some(String::from_utf8_lossy(body).into_owned().into()),
    );
    keep("hash", Some(hex::encode(hash).into()));
    put("unmapped", u.into());
    r.into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::event::{Decision, SessionInfo};
    use crate::audit::verify::tests::statement;

    #[test]
    fn a_statement_maps_field_by_field() {
        let mut e = statement(3);
        e.id = 4;
        let body = e.encode();
        let r = record(&e, &body, &[0xab; 32]);
        assert_eq!(r["class_uid"], 6005);
        assert_eq!(r["class_name"], "Datastore Activity");
        assert_eq!(r["category_uid"], 6);
        assert_eq!(r["category_name"], "Application Activity");
        assert_eq!(r["activity_id"], 1);
        assert_eq!(r["activity_name"], "Read");
        assert_eq!(r["type_uid"], 600501);
        assert_eq!(r["type_name"], "Datastore Activity: Read");
        assert_eq!(r["time"], 1_700_000_003_000i64);
        assert_eq!(r["severity_id"], 1);
        assert_eq!(r["status_id"], 1);
        assert_eq!(r["status"], "Success");
        assert!(r.get("status_code").is_none());
        assert_eq!(r["metadata"]["version"], "1.1.0");
        assert_eq!(r["metadata"]["uid"], "4");
        assert_eq!(
            r["metadata"]["original_time"],
            "2023-11-14T22:13:23.000000Z"
        );
        assert_eq!(r["metadata"]["product"]["name"], "pgward");
        assert_eq!(r["metadata"]["product"]["vendor_name"], "pgward");
        assert_eq!(r["duration"], 1);
        assert_eq!(r["actor"]["user"]["name"], "ann");
        assert_eq!(r["actor"]["session"]["uid"], "1");
        assert_eq!(r["src_endpoint"]["ip"], "10.0.0.7");
        assert_eq!(r["src_endpoint"]["port"], 51234);
        assert_eq!(r["database"]["name"], "clinic");
        assert_eq!(r["table"]["name"], "public.patients");
        assert_eq!(r["type_id"], 3);
        assert_eq!(
            r["query_info"]["query_string"],
            "SELECT name, \"ssn\" FROM patients WHERE id = 3"
        );
        let u = &r["unmapped"];
        assert_eq!(u["decision"], "rewritten");
        assert_eq!(u["role"], "analyst");
        assert_eq!(u["masks"][0], "public.patients.ssn: redact");
        assert_eq!(u["rows"], 1);
        assert_eq!(u["body"].as_str().unwrap().as_bytes(), body.as_slice());
        assert_eq!(u["hash"], "ab".repeat(32));
    }

    #[test]
    fn denials_logins_and_the_rest() {
        let mut e = statement(0);
        e.class = Some("write".into());
        e.decision = Some(Decision::Denied);
        e.reason = Some("pgward: writes are not allowed".into());
        e.sqlstate = Some("42501".into());
        let r = record(&e, b"{}", &[0; 32]);
        assert_eq!(
            (r["activity_id"].clone(), r["type_uid"].clone()),
            (5.into(), 600505.into())
        );
        assert_eq!(r["status_id"], 2);
        assert_eq!(r["status"], "Failure");
        assert_eq!(r["status_code"], "42501");
        assert_eq!(r["status_detail"], "pgward: writes are not allowed");
        assert_eq!(r["severity_id"], 2);

        let mut login = Event::new(Kind::Login, "p");
        login.who = Some(Arc::new(SessionInfo {
            user: Some("bob".into()),
            client_addr: Some("[::1]:5000".into()),
            database: Some("clinic".into()),
            ..SessionInfo::default()
        }));
        login.outcome = Some("bad password".into());
        let r = record(&login, b"{}", &[0; 32]);
        assert_eq!(r["class_uid"], 3002);
        assert_eq!(r["category_uid"], 3);
        assert_eq!(r["activity_id"], 1);
        assert_eq!(r["type_uid"], 300201);
        assert_eq!(r["user"]["name"], "bob");
        assert_eq!(r["src_endpoint"]["ip"], "::1");
        assert_eq!(r["status_detail"], "bad password");
        assert_eq!(r["unmapped"]["database"], "clinic");
        assert!(r.get("database").is_none());

        let admin = Event::admin("p", "root", "audit.export", "{}");
        let r = record(&admin, b"{}", &[0; 32]);
        assert_eq!(
            (r["class_uid"].clone(), r["activity_id"].clone()),
            (6005.into(), 99.into())
        );
        assert_eq!(r["activity_name"], "Admin");
        assert_eq!(r["unmapped"]["action"], "audit.export");
        assert_eq!(r["status_id"], 1);
    }
}
