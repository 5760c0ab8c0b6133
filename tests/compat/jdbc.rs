//! JDBC (Debian's pgjdbc 42.5) through pgward.
//!
//! JDBC talks to PostgreSQL differently from libpq: every statement goes
//! through the extended protocol; from the fifth execution of a
//! PreparedStatement (`prepareThreshold`) the driver switches to a named
//! server-side statement and binary transfer; a fetch size reads through a
//! named portal, `maxRows` at a time (PortalSuspended); a batch pipelines
//! many Bind/Execute pairs behind one Sync; `DatabaseMetaData` runs large
//! catalog queries; and while connecting it runs `SET extra_float_digits`
//! and `SET application_name`. Each of those is a way for a rewriting proxy
//! to break a real application, so each is shown here with
//! `tests/clients/jdbc/Compat.java`, which prints a canonical transcript:
//!
//! * as the unrestricted `alice`, the transcript (settings, metadata,
//!   prepared statements past the threshold, special types, a fetch-size
//!   read of the clinic tables and of 1,000,000 generated rows, batch
//!   inserts plain and rewritten, a failing batch, ordinary errors) equals
//!   the same program's on a direct connection, and that transcript says
//!   what it should (counts, checksums, server-side prepares);
//! * as the masked, row-filtered `ann`, the same reads work, the patients
//!   come back masked and from clinic 1 only, and no raw value from the
//!   database appears anywhere in the output;
//! * as `ann`, refused statements are ordinary `SQLException`s with
//!   SQLState 42501 and a readable message, and the connection goes on:
//!   in autocommit, for a statement failing past `prepareThreshold` (error
//!   recovery through Sync, with an earlier named statement still usable),
//!   in a batch and in a transaction (which the refusal aborts, as any
//!   error would).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fixture::{compat_db, direct, root, run_ok, tool, Compat, Endpoint, DATABASE};
use crate::harness::db;

/// Generous: the program compiles itself (source launcher) before running.
const LIMIT: Duration = Duration::from_secs(180);

/// Runs `Compat.java` with `sections` against `ep`; its transcript.
fn jdbc(sections: &[&str], ep: &Endpoint) -> String {
    let java = tool("/usr/bin/java", "Java");
    let jar = tool(
        "/usr/share/java/postgresql.jar",
        "the PostgreSQL JDBC driver",
    );
    let mut cmd = Command::new(java);
    cmd.args(["-XX:+UseSerialGC", "-Xss1m", "-cp"])
        .arg(jar)
        .arg(root().join("tests/clients/jdbc/Compat.java"))
        .args(sections);
    let started = Instant::now();
    let out = run_ok(cmd, ep, LIMIT);
    eprintln!(
        "jdbc {sections:?} as {} on port {}: {:?}",
        ep.user,
        ep.port,
        started.elapsed()
    );
    assert!(out.ends_with("== done\n"), "incomplete transcript:\n{out}");
    out
}

/// The table the `write` section fills (created here, as the brief's
/// objects are, so the program needs no DDL rights).
fn batch_table() {
    compat_db();
    db().sql(
        DATABASE,
        "CREATE TABLE IF NOT EXISTS jdbc_batch (
             id     integer PRIMARY KEY,
             label  text NOT NULL,
             amount numeric(10,2)
         )",
    );
}

/// The direct connection's `read write` transcript, made once: the
/// unrestricted test compares with all of it, the masked one takes the
/// raw values and the unmasked tables from it.
fn direct_transcript() -> &'static str {
    static DIRECT: OnceLock<String> = OnceLock::new();
    DIRECT.get_or_init(|| {
        batch_table();
        jdbc(&["read", "write"], &direct())
    })
}

/// The fields of every transcript line whose first field is `tag`.
fn lines<'a>(transcript: &'a str, tag: &str) -> Vec<Vec<&'a str>> {
    transcript
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f[0] == tag)
        .collect()
}

/// The one line starting with `prefix` (tab-separated fields, joined by tabs).
fn line<'a>(transcript: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = transcript
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "{prefix:?}:\n{transcript}");
    found[0]
}

/// `(step, SQLState, message)` of every error line.
fn errors(transcript: &str) -> Vec<(String, String, String)> {
    transcript
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|f| f.len() >= 5 && f[1] == "error")
        .map(|f| (f[0].to_string(), f[2].to_string(), f[4].to_string()))
        .collect()
}

/// The first line where two transcripts differ, for a readable failure.
fn first_difference(a: &str, b: &str) -> String {
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  direct: {x}\n  pgward: {y}", n + 1);
        }
    }
    format!(
        "one transcript is longer ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

/// The million-row line the program must print: count, sum, CRC-32 of
/// every row as `g:row-g\n`, computed here independently.
fn million_line() -> String {
    let mut crc = crc32fast::Hasher::new();
    for g in 1..=1_000_000u32 {
        crc.update(format!("{g}:row-{g}\n").as_bytes());
    }
    format!(
        "million\tcount\t1000000\tsum\t500000500000\tout_of_order\t0\tcrc32\t{:x}",
        crc.finalize()
    )
}

#[test]
fn jdbc_unrestricted_transcript_equals_direct() {
    let direct = direct_transcript();
    let compat = Compat::start();
    let alice = jdbc(&["read", "write"], &compat.unrestricted());
    assert!(
        alice == direct,
        "JDBC through pgward differs from direct: {}\n--- through pgward\n{alice}",
        first_difference(direct, &alice)
    );

    // And the shared transcript shows what it claims to.
    let t = direct;
    let tables: BTreeSet<String> = lines(t, "table")
        .iter()
        .filter(|f| f.len() == 4)
        .map(|f| format!("{} {}", f[2], f[3]))
        .collect();
    for want in [
        "patients TABLE",
        "visits TABLE",
        "clinics TABLE",
        "kinds TABLE",
        "jdbc_batch TABLE",
        "clinic_counts VIEW",
    ] {
        assert!(tables.contains(want), "getTables lacks {want}: {tables:?}");
    }
    let patient_columns = lines(t, "column")
        .iter()
        .filter(|f| f[1] == "patients")
        .count();
    assert_eq!(patient_columns, 7, "getColumns(patients)");
    line(t, "pkey\tpatients\tid\t1\tpatients_pkey");
    line(
        t,
        "fkey\tvisits\tclinic_id\tclinics\tid\tvisits_clinic_id_fkey",
    );
    // Ten runs, three rows each, and the driver switched to a named statement.
    assert_eq!(lines(t, "patient").len(), 30);
    line(t, "prepared\trun\t10\trows\t3\tserver_prepare\ttrue");
    line(t, "kinds\trun\t10\trows\t3");
    // pg_prepared_statements: the server holds both as protocol-level prepares.
    line(t, "server_prepared\t1\t1\tt");
    line(t, "fetch\trows\t1000");
    line(t, &million_line());
    // Batches: 1000 rows in four plain batches, 1000 more rewritten into
    // multi-row INSERTs (SUCCESS_NO_INFO, -2 each); the failing batch left
    // nothing behind; the statement batch's counts; errors left the
    // connection usable.
    line(
        t,
        "plain\tbatches\t[250, 250, 250, 250]\tsum_of_counts\t1000",
    );
    line(
        t,
        "rewritten\tbatches\t[300, 300, 300, 100]\tsum_of_counts\t-2000",
    );
    assert!(line(t, "duplicate\terror\t23505").contains("Key (id)=(5) already exists"));
    assert_eq!(
        lines(t, "table").iter().filter(|f| f[1] == "1000").count(),
        1
    );
    line(t, "statement_batch\tcounts\t[10, 10, 1]");
    line(t, "divide\t10\t7");
    line(t, "after_errors\t1991");
    let failed: Vec<String> = errors(t).into_iter().map(|e| e.0).collect();
    assert_eq!(
        failed,
        ["duplicate", "division", "divide 3", "divide 6", "divide 9"],
        "{t}"
    );
}

/// Values `ann` must never see: full SSNs, names, e-mail addresses, exact
/// birth dates, and other clinics' phone numbers.
fn secrets() -> BTreeSet<String> {
    compat_db();
    let mut values = BTreeSet::new();
    let rows = db().sql(
        DATABASE,
        "SELECT clinic_id, name, ssn, email, dob, phone FROM patients",
    );
    for row in rows.lines() {
        let f: Vec<&str> = row.split('|').collect();
        values.insert(f[1].to_string());
        values.insert(f[2].to_string());
        values.insert(f[3].to_string());
        if !f[4].ends_with("-01-01") {
            values.insert(f[4].to_string());
        }
        if f[0] != "1" {
            values.insert(f[5].to_string());
        }
    }
    // Another clinic's phone can equal one of clinic 1's: those are not secret.
    for phone in db()
        .sql(DATABASE, "SELECT phone FROM patients WHERE clinic_id = 1")
        .lines()
    {
        values.remove(phone);
    }
    values
}

fn assert_no_secret(transcript: &str, secrets: &BTreeSet<String>) {
    let leaked: Vec<&String> = secrets
        .iter()
        .filter(|s| transcript.contains(s.as_str()))
        .collect();
    assert!(leaked.is_empty(), "leaked {leaked:?}:\n{transcript}");
}

#[test]
fn jdbc_masked_reads_are_masked_and_filtered() {
    let direct = direct_transcript();
    let compat = Compat::start();
    let ann = jdbc(&["read"], &compat.masked());

    // Everything ran, except reading pg_prepared_statements (it would show
    // the rewritten statement text), which pgward refuses.
    let errs = errors(&ann);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1.as_str()),
        ("server_prepared", "42501")
    );

    // Introspection works as it does directly.
    for tag in ["table", "column", "pkey", "fkey", "index", "kinds"] {
        let theirs: Vec<_> = lines(&ann, tag)
            .into_iter()
            .filter(|f| f[1] != "rows")
            .collect();
        assert!(!theirs.is_empty(), "no {tag} lines:\n{ann}");
        let direct_lines = lines(direct, tag);
        for f in &theirs {
            assert!(direct_lines.contains(f), "{tag} {f:?} differs from direct");
        }
    }
    line(&ann, "pkey\tpatients\tid\t1\tpatients_pkey");
    // An unmasked table, text and then binary, and the million rows: as direct.
    assert_eq!(lines(&ann, "kind"), lines(direct, "kind"));
    line(&ann, &million_line());

    // Patients: clinic 1 only, every protected column masked.
    let real: std::collections::BTreeMap<String, (String, String)> = db()
        .sql(DATABASE, "SELECT id, ssn, dob FROM patients")
        .lines()
        .map(|r| {
            let f: Vec<&str> = r.split('|').collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect();
    let prepared = lines(&ann, "patient");
    let fetched = lines(&ann, "row");
    assert_eq!(prepared.len(), 10, "one clinic-1 patient per run");
    assert_eq!(fetched.len(), 333, "clinic 1 has 333 patients");
    line(&ann, "fetch\trows\t333");
    line(&ann, "prepared\trun\t10\trows\t1\tserver_prepare\ttrue");
    for f in prepared.iter().chain(&fetched) {
        let [_, id, clinic, name, ssn, email, dob, _phone] = f[..] else {
            panic!("{f:?}");
        };
        let (real_ssn, real_dob) = &real[id];
        assert_eq!(clinic, "1", "{f:?}");
        assert!(
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "name not hashed: {f:?}"
        );
        assert_eq!(ssn, format!("*******{}", &real_ssn[7..]), "{f:?}");
        assert_eq!(email, "***@example.org", "{f:?}");
        assert_eq!(dob, format!("{}-01-01", &real_dob[..4]), "{f:?}");
    }
    let visits = lines(&ann, "visits");
    assert!(
        visits.iter().all(|f| f[1] == "rows" || f[3] == "1"),
        "{visits:?}"
    );
    line(&ann, "visits\trows\t10");
    assert_eq!(
        lines(&ann, "counts"),
        [vec!["counts", "1", "333"], vec!["counts", "rows", "1"]]
    );

    // No raw SSN of the direct run, nor any other protected value, anywhere.
    let raw_ssns: BTreeSet<String> = lines(direct, "row")
        .iter()
        .map(|f| f[4].to_string())
        .collect();
    assert_eq!(raw_ssns.len(), 1000);
    assert_no_secret(&ann, &raw_ssns);
    assert_no_secret(&ann, &secrets());
}

#[test]
fn jdbc_masked_refusals_are_42501_and_the_session_goes_on() {
    let compat = Compat::start();
    let t = jdbc(&["refused"], &compat.masked());

    // pgjdbc's `SET application_name` at connect did not replace the tag.
    assert!(
        t.lines().any(|l| l == "application_name\tpgward:ann"),
        "application_name:\n{t}"
    );

    let errs = errors(&t);
    let state = |step: &str| -> (String, String) {
        let found: Vec<_> = errs.iter().filter(|e| e.0 == step).collect();
        assert_eq!(found.len(), 1, "{step}: {errs:?}");
        (found[0].1.clone(), found[0].2.clone())
    };
    for step in ["update", "delete", "create", "unlisted_view", "function"] {
        let (code, message) = state(step);
        assert_eq!(code, "42501", "{step}: {message}");
        assert!(
            message.starts_with("ERROR: pgward: ") && message.contains("role \"analyst\""),
            "{step}: {message}"
        );
    }
    assert!(state("update").1.contains("do not include write"));
    assert!(state("unlisted_view").1.contains("clinic_counts"));
    // A denied column is not there for the role: PostgreSQL's own error.
    assert_eq!(
        state("denied_column"),
        (
            "42703".to_string(),
            "ERROR: column \"notes\" does not exist".to_string()
        )
    );

    // Past prepareThreshold: every run refused (named statements from the
    // fifth), the earlier server-side statement still answers afterwards.
    for run in 1..=10 {
        assert_eq!(state(&format!("bad_read {run}")).0, "42501");
        assert_eq!(state(&format!("bad_update {run}")).0, "42501");
    }
    line(&t, "bad_read 10\tserver_prepare\ttrue");
    assert_eq!(lines(&t, "good").len(), 10);
    line(&t, "good\t10\t30\t*******1210\tserver_prepare\ttrue");
    assert_eq!(
        lines(&t, "good_again"),
        [
            vec!["good_again", "1", "303", "*******3121"],
            vec!["good_again", "2", "306", "*******3142"],
            vec!["good_again", "3", "309", "*******3163"],
        ]
    );

    // A batch is refused whole; in a transaction the refusal aborts it
    // (25P02 next) and a rollback recovers.
    let (code, message) = state("batch");
    assert_eq!(code, "42501", "{message}");
    assert!(message.contains("Batch entry 0"), "{message}");
    assert_eq!(state("tx_refused").0, "42501");
    assert_eq!(state("tx_after_error").0, "25P02");
    line(&t, "tx_after_rollback\t333");

    // Nothing else failed, and after every refusal the connection answered.
    assert_eq!(errs.len(), 5 + 1 + 20 + 3, "{errs:?}");
    let alive = lines(&t, "alive");
    assert_eq!(alive.len(), 6, "{t}");
    for f in &alive {
        assert_eq!(f[2..], ["333", "*******1021", "valid", "true"], "{f:?}");
    }
    assert_no_secret(&t, &secrets());
    assert_eq!(
        db().sql(
            DATABASE,
            "SELECT count(*) FROM patients WHERE ssn = '000-00-0000' OR email = 'x@example.org'"
        ),
        "0",
        "a refused write reached the database"
    );
}
