//! node-postgres (`pg` and `pg-cursor` from npm, versions pinned in
//! `tests/clients/node/package-lock.json`) through pgward.
//!
//! node-postgres speaks the extended protocol for every query with
//! parameters, remembers named statements per connection (Parse once, then
//! only Bind/Execute), reads cursors with `Execute` row limits and `Flush`
//! rather than `Sync`, and delivers `NotificationResponse`s whenever they
//! arrive — all things a rewriting proxy can get subtly wrong while psql
//! keeps working. `tests/clients/node/compat.js` exercises them and prints a
//! canonical JSON-lines transcript, and these tests prove that:
//!
//! * as an unrestricted person the transcript is *equal* to the same
//!   script's on a direct connection (types, writes, prepared statements,
//!   a 200 000-row cursor, notices, errors, LISTEN/NOTIFY);
//! * as the masked analyst the same reads work and come back masked and
//!   filtered to clinic 1, and no raw SSN or e-mail address of the direct
//!   run appears anywhere in the output;
//! * a refused statement — simple or extended protocol, named, in a cursor,
//!   in a transaction — is an ordinary `42501` error, a denied column is
//!   PostgreSQL's "does not exist" (`42703`), a data error over a masked
//!   value keeps its SQLSTATE but quotes nothing, and after each the
//!   connection goes on (extended-protocol recovery through Sync; an
//!   aborted transaction until ROLLBACK, as PostgreSQL does);
//! * the analyst may LISTEN (and receives what others send) but may not
//!   NOTIFY.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fixture::{direct, root, run_ok, tool, Compat, Endpoint};

const LIMIT: Duration = Duration::from_secs(180);

/// Runs `compat.js` with `sections` against `ep`; returns its transcript.
fn node(ep: &Endpoint, sections: &[&str], sender: Option<&Endpoint>) -> Vec<Value> {
    tool(
        "tests/clients/node/node_modules/pg-cursor/package.json",
        "node-postgres",
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(root().join("tests/clients/node"))
        .arg("compat.js")
        .args(sections)
        // node-postgres turns `date` values into local midnights.
        .env("TZ", "UTC");
    match sender {
        Some(s) => cmd.env(
            "NODE_COMPAT_SENDER",
            json!({
                "host": s.host, "port": s.port, "user": s.user,
                "password": s.password, "database": s.database,
                "sslmode": s.sslmode, "sslrootcert": s.ca,
            })
            .to_string(),
        ),
        None => cmd.env_remove("NODE_COMPAT_SENDER"),
    };
    run_ok(cmd, ep, LIMIT)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The one line of section `s`, query `q`.
fn line<'a>(transcript: &'a [Value], s: &str, q: &str) -> &'a Value {
    let found: Vec<&Value> = transcript
        .iter()
        .filter(|l| l["s"] == s && l["q"] == q)
        .collect();
    assert_eq!(found.len(), 1, "{s}/{q} in {transcript:#?}");
    found[0]
}

fn lines<'a>(transcript: &'a [Value], s: &str, q: &str) -> Vec<&'a Value> {
    transcript
        .iter()
        .filter(|l| l["s"] == s && l["q"] == q)
        .collect()
}

fn rows(l: &Value) -> &Vec<Value> {
    l["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("rows in {l}"))
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

/// Asserts two transcripts are equal, naming the first line that differs.
fn assert_same(direct: &[Value], proxied: &[Value]) {
    for (i, (d, p)) in direct.iter().zip(proxied).enumerate() {
        assert_eq!(d, p, "line {i} differs: direct\n{d}\nthrough pgward\n{p}");
    }
    assert_eq!(direct.len(), proxied.len(), "transcript lengths differ");
}

fn notes(l: &Value) -> Vec<(String, String)> {
    l["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| {
            (
                n["channel"].as_str().expect("channel").to_string(),
                n["payload"].as_str().expect("payload").to_string(),
            )
        })
        .collect()
}

/// What the notify section must show, whoever listens.
fn assert_notifications(t: &[Value]) {
    assert_eq!(line(t, "notify", "listen")["command"], "LISTEN");
    let main = |p: &str| ("node_main".to_string(), p.to_string());
    assert_eq!(
        notes(line(t, "notify", "received")),
        vec![
            main("plain"),
            main("with \"quotes\" and ünïcode"),
            main("in-transaction-1"),
            main("in-transaction-2"),
        ]
    );
    assert_eq!(notes(line(t, "notify", "after-rollback")), vec![]);
    assert_eq!(notes(line(t, "notify", "after-unlisten")), vec![]);
    let idle = line(t, "notify", "idle");
    assert_eq!(idle["busy"], 7);
    assert_eq!(
        notes(idle),
        vec![
            ("node_idle".to_string(), "while-idle".to_string()),
            ("node_idle".to_string(), "after-query".to_string()),
        ]
    );
}

#[test]
fn node_unrestricted_transcript_equals_direct() {
    let compat = Compat::start();
    let sections = ["types", "write", "patients", "cursor", "notify"];
    let want = node(&direct(), &sections, None);
    let got = node(&compat.unrestricted(), &sections, None);
    assert_same(&want, &got);

    // The transcript shows what it should (so equality means something).
    let scalars = &rows(line(&got, "types", "scalars"))[0];
    assert_eq!(scalars["b"], "9007199254740993");
    assert_eq!(scalars["n"], "12345678901234567890.123456789");
    assert_eq!(scalars["ts"], "2024-03-01T12:34:56.789Z");
    assert_eq!(scalars["ta"], json!(["a", "b,c", "d\"e", null, ""]));
    assert_eq!(scalars["raw"], "\\x000102feff");
    assert_eq!(scalars["j"], json!({"k": [1, 2, {"x": null}], "s": "ü"}));
    assert_eq!(
        ids(rows(line(&got, "types", "kinds"))),
        vec![2, 4, 8, 10, 12, 150]
    );
    assert_eq!(rows(line(&got, "types", "kinds-aggregate"))[0]["n"], "200");
    assert_eq!(rows(line(&got, "write", "inserted-returning")).len(), 25);
    assert_eq!(
        rows(line(&got, "write", "count-after-rollback"))[0]["n"],
        25
    );
    assert_eq!(line(&got, "write", "update")["rowCount"], 2);
    assert_eq!(
        line(&got, "write", "notices")["notices"],
        json!([
            {"severity": "NOTICE", "code": "00000", "message": "first 1"},
            {"severity": "WARNING", "code": "01000", "message": "second"},
        ])
    );
    let errors = line(&got, "write", "errors")["errors"]
        .as_array()
        .expect("errors");
    let codes: Vec<&str> = errors
        .iter()
        .map(|e| e["error"]["code"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(codes, ["22012", "22012", "22P02", "23505", "42703"]);
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["next"], json!([{ "next": i + 1 }]), "{e}");
    }
    assert_eq!(
        line(&got, "types", "empty"),
        &json!({"s": "types", "q": "empty", "command": null, "rowCount": null, "rows": []})
    );
    let prepared = lines(&got, "patients", "prepared-by-id");
    assert_eq!(prepared.len(), 5);
    assert!(prepared.iter().all(|l| l["rowCount"] == 1));
    assert_eq!(rows(line(&got, "patients", "counts-by-name-only")).len(), 3);
    let series = line(&got, "cursor", "generate-series");
    assert_eq!(series["count"], 200_000);
    assert_eq!(series["sum"], 20_000_100_000_i64);
    assert_eq!(series["chunks"], 26);
    assert_eq!(series["ordered"], true);
    assert_eq!(series["matchesServer"], true);
    assert_eq!(line(&got, "cursor", "patients-all")["count"], 1000);
    assert_notifications(&got);
    let own = line(&got, "notify", "self");
    assert_eq!(own["error"], Value::Null, "{own}");
    assert_eq!(
        notes(own),
        vec![("node_self".to_string(), "from-listener".to_string())]
    );
}

#[test]
fn node_masked_reads_are_masked_and_row_filtered() {
    let compat = Compat::start();
    let sections = ["types", "patients", "cursor"];
    let raw = node(&direct(), &sections, None);
    let ann = node(&compat.masked(), &sections, None);

    // kinds is readable as it is, and the cursor over generate_series is
    // not touched by the policy.
    for q in ["scalars", "typed", "kinds", "kinds-aggregate", "empty"] {
        assert_eq!(line(&ann, "types", q), line(&raw, "types", q), "types/{q}");
    }
    assert_eq!(
        line(&ann, "cursor", "generate-series"),
        line(&raw, "cursor", "generate-series")
    );

    // Clinic 1's patients only, masked; the types are the table's own.
    let by_ids = line(&ann, "patients", "by-ids");
    assert_eq!(by_ids["fields"], line(&raw, "patients", "by-ids")["fields"]);
    let masked = rows(by_ids);
    assert_eq!(ids(masked), vec![3, 6, 9, 12]);
    let originals = rows(line(&raw, "patients", "by-ids"));
    for m in masked {
        let o = originals
            .iter()
            .find(|o| o["id"] == m["id"])
            .expect("same patient directly");
        assert_eq!(m["clinic_id"], 1, "{m}");
        let (ssn, raw_ssn) = (m["ssn"].as_str().unwrap(), o["ssn"].as_str().unwrap());
        assert_eq!(ssn.len(), raw_ssn.len(), "{m}");
        assert!(ssn.starts_with("*******"), "{m}");
        assert_eq!(ssn[7..], raw_ssn[raw_ssn.len() - 4..], "{m}");
        assert_eq!(m["email"], "***@example.org", "{m}");
        let name = m["name"].as_str().unwrap();
        assert!(
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "{m}"
        );
        let (dob, raw_dob) = (m["dob"].as_str().unwrap(), o["dob"].as_str().unwrap());
        assert_eq!(dob[..4], raw_dob[..4], "{m}");
        assert_eq!(&dob[4..10], "-01-01", "{m}");
        assert_eq!(m["phone"], o["phone"], "phone is not masked: {m}");
    }

    // The named statement, executed repeatedly: other clinics' rows are
    // simply not there.
    let prepared = lines(&ann, "patients", "prepared-by-id");
    let found: Vec<(i64, u64)> = prepared
        .iter()
        .map(|l| (l["id"].as_i64().unwrap(), l["rowCount"].as_u64().unwrap()))
        .collect();
    assert_eq!(found, vec![(3, 1), (4, 0), (6, 1), (9, 1), (3, 1)]);
    for l in &prepared {
        for r in rows(l) {
            assert!(r["ssn"].as_str().unwrap().starts_with("*******"), "{r}");
        }
    }
    for l in lines(&ann, "patients", "prepared-visits") {
        assert!(!rows(l).is_empty(), "{l}");
        assert!(rows(l).iter().all(|r| r["clinic_id"] == 1), "{l}");
    }
    // Several statements in one simple query: each rewritten.
    let multi = &line(&ann, "patients", "multi-statement")["results"];
    assert_eq!(multi[0]["rows"], json!([{"n": 3}]), "{multi}");
    assert_eq!(
        multi[1]["rows"],
        json!([{"id": 3, "ssn": "*******1021", "email": "***@example.org"}]),
        "{multi}"
    );
    let counts = json!([{"clinic_id": 1, "n": 333}]);
    assert_eq!(line(&ann, "patients", "counts")["rows"], counts);
    assert_eq!(
        line(&ann, "patients", "counts-by-name-only")["rows"],
        counts
    );

    // Cursors over patients: the same masking and filtering.
    let first = rows(line(&ann, "cursor", "patients-first-chunks"));
    assert_eq!(ids(first), vec![3, 6, 9, 12, 15, 18]);
    let all = line(&ann, "cursor", "patients-all");
    assert_eq!(all["count"], 333);
    assert_eq!(all["clinics"], json!([1]));
    assert_eq!(
        line(&ann, "cursor", "after")["rows"],
        json!([{"still": "usable"}])
    );

    // No raw SSN or e-mail address of the direct run, anywhere.
    let mut secrets = BTreeSet::new();
    for l in &raw {
        if let Some(rs) = l["rows"].as_array() {
            for r in rs {
                for key in ["ssn", "email"] {
                    if let Some(v) = r[key].as_str() {
                        secrets.insert(v.to_string());
                    }
                }
            }
        }
    }
    assert!(secrets.len() >= 24, "too few secrets: {secrets:?}");
    let text: String = ann.iter().map(|l| l.to_string() + "\n").collect();
    let leaked: Vec<&String> = secrets.iter().filter(|s| text.contains(*s)).collect();
    assert!(leaked.is_empty(), "raw values in ann's output: {leaked:?}");
}

#[test]
fn node_masked_refusals_are_ordinary_errors_and_the_connection_goes_on() {
    let compat = Compat::start();
    let t = node(&compat.masked(), &["refusals"], None);
    assert!(
        !t.iter().any(|l| l.get("unexpectedlyOk").is_some()),
        "a refused statement ran: {t:#?}"
    );
    for q in [
        "simple-view",
        "extended-view",
        "simple-update",
        "extended-update",
        "extended-insert",
        "prepared-refused",
        "prepared-refused-again",
        "cursor-refused",
        "simple-notify",
        "extended-pg-notify",
        "listen-unlisted",
    ] {
        let l = line(&t, "refusals", q);
        let error = &l["error"];
        assert_eq!(error["code"], "42501", "{q}: {l}");
        assert_eq!(error["severity"], "ERROR", "{q}: {l}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("pgward: ") && message.contains("analyst"),
            "{q}: not a readable refusal: {l}"
        );
        // The very next query, on the same connection, works.
        assert_eq!(l["next"], json!({"next": q, "n": 3}), "{q}: {l}");
    }
    // A denied column is simply not there for the role: PostgreSQL's own
    // error, and the connection goes on just the same.
    for q in ["simple-denied-column", "extended-denied-column"] {
        let l = line(&t, "refusals", q);
        assert_eq!(l["error"]["code"], "42703", "{q}: {l}");
        assert_eq!(
            l["error"]["message"], "column \"notes\" does not exist",
            "{q}: {l}"
        );
        assert_eq!(l["next"], json!({"next": q, "n": 3}), "{q}: {l}");
    }
    // A data error over a masked value keeps PostgreSQL's SQLSTATE, and
    // its message quotes nothing.
    let data = line(&t, "refusals", "extended-data-error");
    assert_eq!(data["error"]["code"], "22P02", "{data}");
    let message = data["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("pgward: ") && !message.contains("1021"),
        "{data}"
    );
    assert_eq!(data["next"]["n"], 3, "{data}");
    let tx = line(&t, "refusals", "in-transaction");
    assert_eq!(tx["error"]["code"], "42501", "{tx}");
    // As with any error in PostgreSQL, the transaction is aborted until
    // ROLLBACK (pgward does not leave it half-alive), and then all is well.
    assert_eq!(tx["after"]["error"]["code"], "25P02", "{tx}");
    assert_eq!(tx["afterRollback"], json!([{"ok": 1}]), "{tx}");
    assert_eq!(
        line(&t, "refusals", "good-after")["rows"],
        json!([{"id": 2, "clinic_id": 1}, {"id": 5, "clinic_id": 1}])
    );
}

#[test]
fn node_masked_role_may_listen_but_not_notify() {
    let compat = Compat::start();
    // ann listens; alice, through pgward too, sends.
    let t = node(&compat.masked(), &["notify"], Some(&compat.unrestricted()));
    assert_notifications(&t);
    // ann's own NOTIFY is refused, and nothing reaches a listener (ann's).
    let own = line(&t, "notify", "self");
    assert_eq!(own["error"]["code"], "42501", "{own}");
    assert_eq!(notes(own), vec![], "{own}");
}
