//! `pgward audit verify`, `export`, `tail` and `public-key` as a user runs
//! them: a config directory from `pgward init`, a store filled through the
//! library (no proxy or database needed), and the real binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use pgward::audit::chain::SigningKey;
use pgward::audit::store::AuditStore;
use pgward::audit::{Decision, Event, Kind, SessionInfo};
use pgward::config::Config;

use crate::harness::{pgward, PGWARD};

const USERS: [&str; 3] = ["ann", "bob", "cy"];

struct Trail {
    dir: tempfile::TempDir,
    config: PathBuf,
    audit_db: PathBuf,
}

fn statement(i: usize) -> Event {
    let mut e = Event::new(Kind::Statement, "pgward-e2e");
    e.who = Some(Arc::new(SessionInfo {
        session: Some(1 + (i / 10) as u64),
        user: Some(USERS[i % 3].to_string()),
        role: Some("analyst".into()),
        client_addr: Some("10.1.2.3:40000".into()),
        database: Some("clinic".into()),
        ..SessionInfo::default()
    }));
    e.class = Some("read".into());
    e.text = Some(format!("SELECT name, ssn FROM patients WHERE id = {i}").into());
    e.relations = vec!["public.patients".into()];
    e.decision = Some(Decision::Rewritten);
    e.rows = Some(1);
    e
}

/// A config directory and 30 statement events, a checkpoint every 10.
fn new_trail() -> Trail {
    trail_of(statement)
}

/// A config directory and 30 events made by `event`, a checkpoint every 10.
fn trail_of(event: impl Fn(usize) -> Event) -> Trail {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pgward(&[
        "init",
        "--dir",
        dir.path().to_str().expect("utf8 path"),
        "--upstream",
        "postgres://admin:secret@127.0.0.1:1",
    ]);
    assert!(out.status.success(), "init: {}", text(&out));
    let config = dir.path().join("pgward.yaml");
    let loaded = Config::load(&config).expect("config");
    let mut store = AuditStore::open(&loaded.audit.path).expect("audit store");
    let key = SigningKey::load_or_create(&loaded.audit.signing_key).expect("key");
    for batch in 0..3 {
        let mut events: Vec<Event> = (batch * 10..batch * 10 + 10).map(&event).collect();
        store.append(&mut events).expect("append");
        store.checkpoint(&key).expect("checkpoint");
    }
    Trail {
        audit_db: loaded.audit.path,
        config,
        dir,
    }
}

impl Trail {
    fn audit(&self, args: &[&str]) -> Output {
        Command::new(PGWARD)
            .arg("audit")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("USER", "auditor")
            .output()
            .expect("pgward audit")
    }

    fn store(&self) -> AuditStore {
        AuditStore::open(&self.audit_db).expect("audit store")
    }

    /// Rewrites event `id`'s body as someone with write access to the
    /// file could, replacing `from` by `to`.
    fn tamper(&self, id: u64, from: &str, to: &str) {
        let changed = self
            .store()
            .connection()
            .execute(
                "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), ?2, ?3) AS BLOB) WHERE id = ?1",
                rusqlite::params![id as i64, from, to],
            )
            .expect("tamper");
        assert_eq!(changed, 1);
    }

    fn last_event(&self) -> Event {
        let store = self.store();
        let (id, _) = store.head().expect("head");
        let body: Vec<u8> = store
            .connection()
            .query_row("SELECT body FROM events WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
            .expect("last event");
        Event::decode(&body).expect("event")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn verify_passes_then_names_the_tampered_event() {
    let trail = new_trail();
    let out = trail.audit(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.starts_with("OK: "), "{report}");
    assert!(report.contains("30 event(s), ids 1..=30"), "{report}");
    assert!(report.contains("3 signed checkpoint(s)"), "{report}");
    // The verification is itself audited, and signed.
    let last = trail.last_event();
    assert_eq!(last.kind, Kind::Admin);
    assert_eq!(last.action.as_deref(), Some("audit.verify"));
    assert_eq!(last.user(), Some("auditor"));
    assert_eq!(trail.audit(&["verify"]).status.code(), Some(0));

    // Someone with write access to the file edits event 8 (i = 7).
    trail.tamper(8, "id = 7", "id = 9");
    let before = trail.store().count().expect("count");
    let out = trail.audit(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.starts_with("FAILED: "), "{report}");
    assert!(report.contains("event 8 was changed"), "{report}");
    assert!(
        text(&out).contains("the audit trail failed verification"),
        "{}",
        text(&out)
    );
    assert_eq!(
        trail.store().count().expect("count"),
        before,
        "a damaged store is left as found"
    );

    // Events cut off the end that a checkpoint covered.
    let trail = new_trail();
    trail
        .store()
        .connection()
        .execute("DELETE FROM events WHERE id > 25", [])
        .expect("truncate");
    let out = trail.audit(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("events 26..=30 were deleted from the end"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_jsonl_export_verifies_with_the_public_key_alone() {
    let trail = new_trail();
    let file = trail.path("ann.jsonl");
    let out = trail.audit(&[
        "export",
        "--format",
        "jsonl",
        "--user",
        "ann",
        "--out",
        file.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("exported 10 event(s) as jsonl"),
        "{}",
        text(&out)
    );
    let last = trail.last_event();
    assert_eq!(last.action.as_deref(), Some("audit.export"));
    assert_eq!(last.user(), Some("auditor"));
    let detail = last.detail.unwrap_or_default();
    assert!(detail.contains(r#""events":10"#), "{detail}");
    assert!(detail.contains(r#""filters":{"user":"ann"}"#), "{detail}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)
        .expect("export")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "exports may hold patient data");

    let out = trail.audit(&["public-key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = stdout(&out).trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|c| c.is_ascii_hexdigit()), "{key}");
    let key_file = trail.path("audit.pub");
    let out = trail.audit(&["public-key", "--out", key_file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("key file").trim(),
        key
    );

    // The auditor's machine: the export, the public key, no config.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let verify = |file: &Path| {
        Command::new(PGWARD)
            .args(["audit", "verify", "--export"])
            .arg(file)
            .arg("--public-key")
            .arg(&key_file)
            .current_dir(elsewhere.path())
            .env_remove("PGWARD_CONFIG")
            .output()
            .expect("pgward audit verify")
    };
    let out = verify(&file);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.starts_with("OK: "), "{report}");
    assert!(report.contains("10 event(s) and 20 digest(s)"), "{report}");
    assert!(report.contains("proven through event 30"), "{report}");
    assert!(!report.contains("NOT"), "{report}");

    // One byte of one event changed.
    let exported = std::fs::read_to_string(&file).expect("export");
    let tampered = trail.path("tampered.jsonl");
    std::fs::write(
        &tampered,
        exported.replacen("WHERE id = 3\"", "WHERE id = 4\"", 1),
    )
    .expect("write");
    let out = verify(&tampered);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).starts_with("FAILED: "), "{}", text(&out));
    assert!(
        stdout(&out).contains("do not match the checkpoint"),
        "{}",
        text(&out)
    );

    // Verifying with the config records it in the trail.
    let out = trail.audit(&["verify", "--export", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(trail.last_event().action.as_deref(), Some("audit.verify"));
    // And the store still verifies after all that.
    let out = trail.audit(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn csv_ocsf_and_tail_show_the_selected_events() {
    let trail = new_trail();
    let out = trail.audit(&["tail", "-n", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains("#28  statement  ann@clinic  rewritten  rows=1  SELECT name, ssn FROM patients WHERE id = 27"), "{lines:?}");

    let out = trail.audit(&["tail", "-n", "2", "--user", "cy", "--table", "patients"]);
    let tail = stdout(&out);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.contains("cy@clinic")), "{tail}");

    let out = trail.audit(&[
        "export",
        "--format",
        "csv",
        "--since",
        "2000-01-01",
        "--user",
        "bob",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = stdout(&out);
    assert_eq!(csv.lines().count(), 11, "header and bob's 10:\n{csv}");
    assert!(
        csv.starts_with("id,time,kind,instance,session,user,"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.contains(",\"SELECT name, ssn FROM patients WHERE id = 1\",")),
        "{csv}"
    );

    let out = trail.audit(&["export", "--format", "ocsf", "--kind", "statement"]);
    assert!(out.status.success(), "{}", text(&out));
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 30);
    assert_eq!(records[0]["class_uid"], 6005);
    assert_eq!(records[0]["actor"]["user"]["name"], "ann");
    assert_eq!(records[0]["src_endpoint"]["ip"], "10.1.2.3");

    let out = trail.audit(&["export", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("RFC 3339"), "{}", text(&out));
}

#[test]
fn tail_follow_prints_new_events() {
    let trail = new_trail();
    let mut child = Command::new(PGWARD)
        .args(["audit", "tail", "-n", "1", "--follow", "--config"])
        .arg(&trail.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail");
    let (tx, rx) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("first line");
    assert!(first.contains("#30 "), "{first}");
    let mut e = statement(0);
    e.text = Some("SELECT 'followed'".into());
    trail.store().append(&mut [e]).expect("append");
    let next = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let next = next.expect("the new event");
    assert!(
        next.contains("#31 ") && next.contains("SELECT 'followed'"),
        "{next}"
    );
}

#[test]
fn public_key_needs_an_existing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = pgward(&[
        "init",
        "--dir",
        dir.path().to_str().expect("utf8 path"),
        "--upstream",
        "postgres://admin@127.0.0.1:1",
    ]);
    assert!(out.status.success(), "init: {}", text(&out));
    let out = Command::new(PGWARD)
        .args(["audit", "public-key", "--config"])
        .arg(dir.path().join("pgward.yaml"))
        .output()
        .expect("pgward audit public-key");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("there is no audit signing key"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("secrets/audit-signing.key").exists(),
        "not created"
    );
}

/// 2020-01-01T00:00:00Z, and a day, in microseconds.
const JAN_1_2020_US: i64 = 1_577_836_800_000_000;
const DAY_US: i64 = 86_400_000_000;

/// Like [`new_trail`], but event `i` happened on 2020-01-01 plus `i` days.
fn old_trail() -> Trail {
    trail_of(|i| {
        let mut e = statement(i);
        e.time_us = JAN_1_2020_US + i as i64 * DAY_US;
        e
    })
}

#[test]
fn prune_removes_old_events_and_the_rest_still_verifies() {
    let trail = old_trail();
    // Events 1..=15 are from before 2020-01-16; the last checkpoint among
    // them is at event 10, so 11..=15 stay.
    let out = trail.audit(&["prune", "--before", "2020-01-16", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "would remove 10 event(s), ids 1..=10, older than 2020-01-16T00:00:00.000000Z"
        ),
        "{report}"
    );
    assert!(
        report.contains("5 older event(s) after event 10 are kept"),
        "{report}"
    );
    let store = trail.store();
    assert_eq!(
        store.count().expect("count"),
        30,
        "a dry run changes nothing"
    );
    assert_eq!(store.head().expect("head").0, 30);
    assert_eq!(store.base().expect("base").0, 0);
    drop(store);

    let out = trail.audit(&["prune", "--before", "2020-01-16"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("removed 10 event(s), ids 1..=10"),
        "{report}"
    );
    assert!(
        report.contains("the trail now starts after event 10"),
        "{report}"
    );
    // Pruning is audited, and signed.
    let last = trail.last_event();
    assert_eq!(last.action.as_deref(), Some("audit.prune"));
    assert_eq!(last.user(), Some("auditor"));
    let detail = last.detail.unwrap_or_default();
    assert!(detail.contains(r#""removed":10"#), "{detail}");
    assert!(detail.contains(r#""base":10"#), "{detail}");
    let store = trail.store();
    assert_eq!(store.count().expect("count"), 21, "11..=30 and the record");
    assert_eq!(store.base().expect("base").0, 10);
    drop(store);

    let out = trail.audit(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("21 event(s), ids 11..=31, chain intact"),
        "{report}"
    );
    assert!(
        report.contains("events through 10 were pruned (recorded by event 31)"),
        "{report}"
    );

    // An export of what is left is still provable with the public key.
    let file = trail.path("all.jsonl");
    let out = trail.audit(&["export", "--out", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let key_file = trail.path("audit.pub");
    let out = trail.audit(&["public-key", "--out", key_file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(PGWARD)
        .args(["audit", "verify", "--export"])
        .arg(&file)
        .arg("--public-key")
        .arg(&key_file)
        .env_remove("PGWARD_CONFIG")
        .current_dir(trail.dir.path())
        .output()
        .expect("pgward audit verify --export");
    assert!(out.status.success(), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.contains("export of ids 11..="), "{report}");
    assert!(!report.contains("NOT"), "{report}");

    // A retention in minutes is a typo, not a policy.
    let out = trail.audit(&["prune", "--older-than", "6m"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("minutes"), "{}", text(&out));

    // Nor is a cutoff of an hour ago.
    let recent = pgward::audit::event::format_time(pgward::audit::event::now_us() - 3_600_000_000);
    let out = trail.audit(&["prune", "--before", &recent]);
    assert!(!out.status.success());
    assert!(text(&out).contains("less than 1day ago"), "{}", text(&out));

    // A tampered event among those to remove: nothing is pruned.
    trail.tamper(12, "id = 11", "id = 12");
    let before = trail.store().count().expect("count");
    let out = trail.audit(&["prune", "--before", "2020-01-25"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).starts_with("FAILED: "), "{}", text(&out));
    assert!(
        stdout(&out).contains("event 12 was changed"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("nothing was pruned"), "{}", text(&out));
    let store = trail.store();
    assert_eq!(store.count().expect("count"), before);
    assert_eq!(store.base().expect("base").0, 10);
}
