//! The Python clients — psycopg 3, asyncpg and SQLAlchemy (on psycopg) —
//! through pgward. They exercise the parts of the protocol that psql
//! never does: server-side binding and named prepared statements (psycopg
//! `prepare=True`, every asyncpg query), binary result and parameter
//! formats, COPY in both directions and in both formats, libpq pipeline
//! mode, portals fetched a few rows at a time, and the catalog queries
//! that asyncpg (custom type codecs) and SQLAlchemy (reflection) send on
//! their own.
//!
//! Each program (in `tests/clients/python/`) prints a canonical transcript,
//! one JSON object per step. For the unrestricted person the transcript
//! through pgward must equal the transcript on a direct connection, byte
//! for byte: pgward changes nothing it is not asked to. For the masked
//! person the same steps must work, with masked values and clinic 1's rows
//! only, no raw value of the database anywhere in the output; a refused
//! statement must be the client's ordinary 42501 error, after which the
//! connection (a psycopg pipeline, an asyncpg prepared statement) goes on.
//! A denied column (`visits.notes`) is not refused but hidden: PostgreSQL
//! itself answers 42703, as for a column that does not exist.
//!
//! Two things these clients do that pgward once refused for a restricted
//! role: asyncpg wraps its type introspection in
//! `set_config('jit', …, false)`, and its `Cursor.forward()` sends `MOVE
//! FORWARD n portal` without `FROM`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixture::{compat_db, direct, root, run_ok, tool, Compat, Endpoint, DATABASE};
use crate::harness::db;

/// How long one client program may take.
const LIMIT: Duration = Duration::from_secs(180);

/// A program's output: one JSON object per line, each with a `step`.
struct Transcript {
    who: String,
    text: String,
    lines: Vec<Value>,
}

impl Transcript {
    /// The line of `step` (the first, if several).
    fn step(&self, step: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| l["step"] == step)
            .unwrap_or_else(|| panic!("no step {step} for {}:\n{}", self.who, self.text))
    }

    fn steps(&self) -> Vec<&str> {
        self.lines
            .iter()
            .map(|l| l["step"].as_str().unwrap_or("?"))
            .collect()
    }
}

/// Runs `tests/clients/python/<script>` with the venv's Python against `ep`.
fn python(script: &str, ep: &Endpoint, args: &[&str]) -> Transcript {
    let python = tool(
        "target/clients/venv/bin/python",
        "the Python clients' virtual environment",
    );
    let mut cmd = Command::new(python);
    cmd.arg(root().join("tests/clients/python").join(script))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONHASHSEED", "0");
    let started = Instant::now();
    let text = run_ok(cmd, ep, LIMIT);
    eprintln!(
        "{script} {args:?} as {}: {:.1}s",
        ep.user,
        started.elapsed().as_secs_f64()
    );
    let lines = text
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{script}: not JSON ({e}): {l}\n{text}"))
        })
        .collect();
    let who = format!("{script} as {}@{}", ep.user, ep.port);
    Transcript { who, text, lines }
}

/// The proxied transcript equals the direct one, line by line.
fn assert_same(direct: &Transcript, proxied: &Transcript) {
    let d: Vec<&str> = direct.text.lines().collect();
    let p: Vec<&str> = proxied.text.lines().collect();
    for (i, (a, b)) in d.iter().zip(&p).enumerate() {
        assert_eq!(
            a, b,
            "line {i} differs between {} (left) and {} (right)",
            direct.who, proxied.who
        );
    }
    assert_eq!(
        d.len(),
        p.len(),
        "{} has {} lines, {} has {}",
        direct.who,
        d.len(),
        proxied.who,
        p.len()
    );
}

/// A patient as the database holds it.
struct Patient {
    clinic: i64,
    name: String,
    ssn: String,
    email: String,
    dob: String,
}

/// Every patient, and every value the masked person must never see.
struct Raw {
    patients: BTreeMap<i64, Patient>,
    secrets: BTreeSet<String>,
}

impl Raw {
    fn load() -> Raw {
        let mut patients = BTreeMap::new();
        let mut secrets = BTreeSet::new();
        let rows = db().sql(
            DATABASE,
            "SELECT id, clinic_id, name, ssn, email, dob FROM patients",
        );
        for line in rows.lines() {
            let f: Vec<&str> = line.split('|').collect();
            let p = Patient {
                clinic: f[1].parse().expect("clinic"),
                name: f[2].into(),
                ssn: f[3].into(),
                email: f[4].into(),
                dob: f[5].into(),
            };
            secrets.insert(p.name.clone());
            secrets.insert(p.ssn.clone());
            secrets.insert(p.ssn[..7].to_string());
            secrets.insert(p.email.clone());
            if !p.dob.ends_with("-01-01") {
                secrets.insert(p.dob.clone());
            }
            patients.insert(f[0].parse().expect("id"), p);
        }
        for note in db().sql(DATABASE, "SELECT notes FROM visits").lines() {
            secrets.insert(note.to_string());
        }
        Raw { patients, secrets }
    }

    /// No raw value anywhere in `t`.
    fn assert_absent(&self, t: &Transcript) {
        for secret in &self.secrets {
            assert!(
                !t.text.contains(secret.as_str()),
                "{} shows the raw value {secret:?}:\n{}",
                t.who,
                t.text
            );
        }
    }

    /// One patient row as the masked person sees it: clinic 1, SSN all
    /// stars but the last four, a hashed name, the e-mail's domain only,
    /// the birth year only.
    fn assert_masked(&self, who: &str, id: &Value, fields: [Option<&Value>; 5]) {
        let [clinic, _, ssn, email, dob] = fields.map(|f| f.unwrap_or(&Value::Null));
        let id = id.as_i64().unwrap_or_else(|| panic!("{who}: id {id}"));
        let raw = &self.patients[&id];
        assert_eq!(raw.clinic, 1, "{who}: patient {id} is not clinic 1's");
        assert_eq!(clinic.as_i64(), Some(1), "{who}: patient {id}");
        let ssn = ssn.as_str().expect("ssn text");
        assert_eq!(ssn, format!("*******{}", &raw.ssn[7..]), "{who}: {id}");
        assert_eq!(email, "***@example.org", "{who}: patient {id}");
        if let Some(name) = fields[1] {
            let name = name.as_str().expect("name text");
            assert!(
                name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
                "{who}: name of {id} is not a hash: {name}"
            );
        }
        assert_eq!(
            dob.as_str(),
            Some(format!("{}-01-01", &raw.dob[..4]).as_str()),
            "{who}: dob of {id}"
        );
    }

    /// The ids of clinic 1's patients in `lo..=hi`.
    fn clinic1(&self, lo: i64, hi: i64) -> Vec<i64> {
        self.patients
            .range(lo..=hi)
            .filter(|(_, p)| p.clinic == 1)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn ids(rows: &Value, key: impl Fn(&Value) -> &Value) -> Vec<i64> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| key(r).as_i64().expect("id"))
        .collect()
}

/// A database error as the client reports it: its own error class, the
/// SQLSTATE, a message a person can read.
fn assert_error(t: &Transcript, step: &str, class: &str, sqlstate: &str) {
    let line = t.step(step);
    assert_eq!(
        line["raised"], true,
        "{}: {step} raised nothing: {line}",
        t.who
    );
    let err = &line["error"];
    assert_eq!(err["sqlstate"], sqlstate, "{}: {step}: {err}", t.who);
    assert_eq!(err["class"], class, "{}: {step}: {err}", t.who);
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.len() > 10 && message.is_ascii() && !message.contains('\u{0}'),
        "{}: {step}: unreadable message {message:?}",
        t.who
    );
}

/// A refusal: the client's ordinary error for SQLSTATE 42501, saying
/// pgward refused it.
fn assert_refused(t: &Transcript, step: &str, class: &str) {
    assert_error(t, step, class, "42501");
    let message = t.step(step)["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.starts_with("pgward: ") && message.contains("not allowed"),
        "{}: {step}: {message}",
        t.who
    );
}

/// The working query after a refusal: patient 3, masked.
fn assert_goes_on(t: &Transcript, step: &str, raw: &Raw) {
    let rows = &t.step(step)["rows"];
    let row = &rows[0];
    let (id, ssn) = if row.is_array() {
        (&row[0], &row[1])
    } else {
        (&row["id"], &row["ssn"])
    };
    assert_eq!(id, 3, "{}: {step}: {rows}", t.who);
    assert_eq!(
        ssn.as_str(),
        Some(format!("*******{}", &raw.patients[&3].ssn[7..]).as_str()),
        "{}: {step}",
        t.who
    );
}

/// After an error mid-pipeline (psycopg): the statement before it ran, the
/// one after it was aborted, and the next pipeline and statement work.
fn assert_pipeline_recovers(t: &Transcript, step: &str, patients: i64, visits: i64) {
    assert_eq!(
        t.step(step)["before"],
        serde_json::json!([[3]]),
        "{}",
        t.who
    );
    assert_eq!(t.step(step)["status"], "IDLE", "{}", t.who);
    let after = t.step(&format!("{step}_after"));
    assert_eq!(after["fetched"], false, "{}: {after}", t.who);
    let then = t.step(&format!("{step}_then"));
    assert_eq!(then["count"], serde_json::json!([[patients]]), "{}", t.who);
    assert_eq!(then["visits"], serde_json::json!([[visits]]), "{}", t.who);
    assert_eq!(then["rows"].as_array().map(Vec::is_empty), Some(false));
}

/// Recreates a table of this module's own, directly.
fn own_table(name: &str, columns: &str) {
    compat_db();
    db().sql(
        DATABASE,
        &format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns});"),
    );
}

#[test]
fn psycopg_unrestricted_transcript_equals_direct() {
    own_table(
        "py_copy",
        "id integer PRIMARY KEY, label text, amount numeric, at timestamptz",
    );
    let compat = Compat::start();
    let direct = python("psycopg_client.py", &direct(), &["--writes"]);
    let proxied = python("psycopg_client.py", &compat.unrestricted(), &["--writes"]);
    assert_same(&direct, &proxied);

    // The transcript is the one intended, not two equal failures.
    assert_eq!(
        proxied.step("binary_kinds")["formats"],
        serde_json::json!([1])
    );
    assert_eq!(
        proxied.step("binary_patients")["formats"],
        serde_json::json!([1])
    );
    assert_eq!(
        proxied.step("bound")["rows"].as_array().map(Vec::len),
        Some(12)
    );
    assert_eq!(
        proxied.step("custom_types")["rows"][0][1]["enum"],
        "Mood",
        "enum registered"
    );
    assert_eq!(
        proxied.step("copy_out_query")["lines"]
            .as_array()
            .map(Vec::len),
        Some(12)
    );
    assert_eq!(
        proxied.step("copy_out_binary")["rows"]
            .as_array()
            .map(Vec::len),
        Some(9)
    );
    let prepared = proxied.step("prepared_on_server")["statements"].to_string();
    assert!(
        prepared.contains("FROM patients WHERE id = $1") && prepared.contains("visited_at < $1"),
        "prepare=True and prepare_threshold prepared nothing: {prepared}"
    );
    assert_eq!(proxied.step("copy_in_back")["same"], true);
    assert_eq!(proxied.step("copy_in_back")["count"], 50);
    assert_eq!(proxied.step("copy_in_text")["rowcount"], 25);
    assert_error(&proxied, "pipeline_error", "DivisionByZero", "22012");
    assert_pipeline_recovers(&proxied, "pipeline_error", 1000, 3000);
    assert_eq!(proxied.steps().last(), Some(&"done"));
}

#[test]
fn psycopg_masked_person_gets_masked_filtered_rows() {
    let compat = Compat::start();
    let raw = Raw::load();
    let direct = python("psycopg_client.py", &direct(), &[]);
    let ann = python("psycopg_client.py", &compat.masked(), &[]);
    assert_eq!(ann.steps(), direct.steps());
    raw.assert_absent(&ann);

    // Rows: [id, clinic_id, name, ssn, email, dob, phone].
    let masked = |step: &str, lo: i64, hi: i64| {
        let rows = &ann.step(step)["rows"];
        assert_eq!(ids(rows, |r| &r[0]), raw.clinic1(lo, hi), "{step}: {rows}");
        for r in rows.as_array().expect("rows") {
            raw.assert_masked(
                step,
                &r[0],
                [
                    Some(&r[1]),
                    Some(&r[2]),
                    Some(&r[3]),
                    Some(&r[4]),
                    Some(&r[5]),
                ],
            );
        }
    };
    masked("bound", 1, 12);
    masked("binary_patients", 1, 12);
    assert_eq!(
        ann.step("binary_patients")["formats"],
        serde_json::json!([1])
    );
    let pipeline = ann.step("pipeline");
    assert_eq!(
        pipeline["count"][0][0].as_i64(),
        Some(raw.patients.values().filter(|p| p.clinic == 1).count() as i64)
    );
    assert_eq!(ids(&pipeline["patients"], |r| &r[0]), raw.clinic1(10, 15));
    // Prepared: patients 3 and 6 are clinic 1's, 7 is not.
    let prepared = &ann.step("prepared")["rows"];
    assert_eq!(prepared[0][0][0], 3, "{prepared}");
    assert_eq!(prepared[1][0][0], 6, "{prepared}");
    assert_eq!(prepared[2], serde_json::json!([]), "{prepared}");
    // COPY out: masked, filtered, in the text format.
    let copy = ann.step("copy_out_query")["lines"]
        .as_array()
        .expect("lines")
        .clone();
    assert_eq!(copy.len(), raw.clinic1(1, 12).len(), "{copy:?}");
    for line in &copy {
        let f: Vec<&str> = line.as_str().expect("line").split('\t').collect();
        let id: i64 = f[0].parse().expect("id");
        let clinic = Value::from(f[1].parse::<i64>().expect("clinic"));
        let [ssn, email, dob] = [f[2], f[3], f[4]].map(Value::from);
        raw.assert_masked(
            "copy_out_query",
            &id.into(),
            [Some(&clinic), None, Some(&ssn), Some(&email), Some(&dob)],
        );
    }
    let binary_copy = &ann.step("copy_out_binary")["rows"];
    assert_eq!(ids(binary_copy, |r| &r[0]), raw.clinic1(1, 9));
    // What the policy leaves alone is exactly what the database says.
    for step in [
        "binary_kinds",
        "type_info",
        "custom_types",
        "custom_params",
        "copy_out_table",
    ] {
        assert_eq!(ann.step(step), direct.step(step), "{step}");
    }
}

#[test]
fn psycopg_refusals_are_42501_and_the_connection_and_pipeline_go_on() {
    let compat = Compat::start();
    let raw = Raw::load();
    let ann = python("psycopg_client.py", &compat.masked(), &["--refusals"]);
    raw.assert_absent(&ann);
    // A denied column does not exist for the role: PostgreSQL's own error.
    assert_error(&ann, "hidden_denied_column", "UndefinedColumn", "42703");
    assert_goes_on(&ann, "hidden_denied_column_then", &raw);
    for step in [
        "refused_function",
        "refused_catalog",
        "refused_update",
        "refused_prepared",
        "refused_copy_in",
    ] {
        assert_refused(&ann, step, "InsufficientPrivilege");
        assert_goes_on(&ann, &format!("{step}_then"), &raw);
    }
    assert_refused(&ann, "pipeline_refused", "InsufficientPrivilege");
    let clinic1 = raw.clinic1(1, 1000);
    let visits: i64 = db()
        .sql(DATABASE, "SELECT count(*) FROM visits WHERE clinic_id = 1")
        .parse()
        .expect("count");
    assert_pipeline_recovers(&ann, "pipeline_refused", clinic1.len() as i64, visits);
    assert_eq!(
        ids(&ann.step("pipeline_refused_then")["rows"], |r| &r[0]),
        raw.clinic1(1, 6)
    );
    assert_eq!(ann.step("done")["closed"], false);
}

#[test]
fn asyncpg_unrestricted_transcript_equals_direct() {
    own_table(
        "py_asyncpg_many",
        "id integer PRIMARY KEY, label text, m mood, a address, amount numeric",
    );
    own_table(
        "py_asyncpg_copy",
        "id integer PRIMARY KEY, label text, at timestamptz, nums integer[], raw bytea",
    );
    let compat = Compat::start();
    let direct = python("asyncpg_client.py", &direct(), &["--writes"]);
    let proxied = python("asyncpg_client.py", &compat.unrestricted(), &["--writes"]);
    assert_same(&direct, &proxied);

    let kinds = proxied.step("kinds");
    let types: Vec<&Value> = kinds["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|a| &a[1])
        .collect();
    assert!(types.contains(&&Value::from("mood")), "{kinds}");
    assert!(types.contains(&&Value::from("address")), "{kinds}");
    assert_eq!(kinds["rows"][0]["m"], "tense", "enum decoded: {kinds}");
    assert_eq!(
        kinds["rows"][0]["a"],
        serde_json::json!({"street": "Main St 1", "zip": "00001"}),
        "composite decoded: {kinds}"
    );
    assert_eq!(
        proxied.step("prepared")["rows"].as_array().map(Vec::len),
        Some(12)
    );
    assert_eq!(
        proxied.step("cursor")["rows"].as_array().map(Vec::len),
        Some(30)
    );
    assert_eq!(proxied.step("executemany")["same"], true);
    assert_eq!(proxied.step("executemany")["count"], 40);
    assert_eq!(proxied.step("copy_records")["same"], true);
    assert_eq!(proxied.step("copy_records")["result"], "COPY 100");
    assert_eq!(proxied.step("prepared_error")["error"]["sqlstate"], "22012");
    assert_eq!(proxied.step("prepared_error_then")["value"], 2);
    assert_eq!(proxied.steps().last(), Some(&"done"));
}

#[test]
fn asyncpg_masked_person_gets_masked_filtered_rows_and_custom_types() {
    let compat = Compat::start();
    let raw = Raw::load();
    let direct = python("asyncpg_client.py", &direct(), &[]);
    let ann = python("asyncpg_client.py", &compat.masked(), &[]);
    assert_eq!(ann.steps(), direct.steps());
    raw.assert_absent(&ann);

    let rows = &ann.step("prepared")["rows"];
    assert_eq!(ids(rows, |r| &r["id"]), raw.clinic1(1, 12), "{rows}");
    for r in rows.as_array().expect("rows") {
        raw.assert_masked(
            "prepared",
            &r["id"],
            ["clinic_id", "name", "ssn", "email", "dob"].map(|k| Some(&r[k])),
        );
    }
    // The statement's description is the database's: masks keep types.
    assert_eq!(
        ann.step("prepared")["attributes"],
        direct.step("prepared")["attributes"]
    );
    let again = ann.step("prepared_again");
    assert_eq!(ids(&again["rows"], |r| &r["id"]), raw.clinic1(13, 16));
    assert_eq!(again["row"]["id"], raw.clinic1(30, 40)[0]);
    assert_eq!(again["value"], Value::Null, "patient 7 is clinic 2's");
    let cursor = ann.step("cursor");
    assert_eq!(ids(&cursor["rows"], |r| &r["id"]), raw.clinic1(1, 30));
    assert_eq!(cursor["first"][0]["email"], "***@example.org");
    let copy = ann.step("copy_out")["lines"]
        .as_array()
        .expect("lines")
        .clone();
    assert_eq!(copy.len(), raw.clinic1(1, 12).len(), "{copy:?}");
    for line in &copy {
        let f: Vec<&str> = line.as_str().expect("line").split(',').collect();
        assert_eq!(f[1], "1", "{line}");
        assert_eq!(f[3], "***@example.org", "{line}");
    }
    // Type introspection and custom codecs work for the masked person too,
    // with the same result.
    for step in ["kinds", "custom_params", "enum_array"] {
        assert_eq!(ann.step(step), direct.step(step), "{step}");
    }
}

#[test]
fn asyncpg_refusals_are_42501_and_the_connection_goes_on() {
    let compat = Compat::start();
    let raw = Raw::load();
    let ann = python("asyncpg_client.py", &compat.masked(), &["--refusals"]);
    raw.assert_absent(&ann);
    assert_error(
        &ann,
        "hidden_denied_column",
        "UndefinedColumnError",
        "42703",
    );
    assert_goes_on(&ann, "hidden_denied_column_then", &raw);
    for step in [
        "refused_function",
        "refused_prepare",
        "refused_update",
        "refused_executemany",
        "refused_copy_records",
    ] {
        assert_refused(&ann, step, "InsufficientPrivilegeError");
        assert_goes_on(&ann, &format!("{step}_then"), &raw);
    }
    assert_refused(&ann, "refused_in_transaction", "InsufficientPrivilegeError");
    let then = ann.step("refused_in_transaction_then");
    assert_eq!(
        then["value"].as_i64(),
        Some(raw.patients.values().filter(|p| p.clinic == 1).count() as i64)
    );
    assert_eq!(then["in_transaction"], false);
    assert_eq!(ann.step("done")["closed"], true);
}

#[test]
fn sqlalchemy_reflection_equals_direct_and_works_masked() {
    let compat = Compat::start();
    let raw = Raw::load();
    let direct = python("sqlalchemy_client.py", &direct(), &[]);
    let alice = python("sqlalchemy_client.py", &compat.unrestricted(), &[]);
    assert_same(&direct, &alice);

    assert_eq!(
        alice.step("tables")["fixture"],
        serde_json::json!(["clinics", "kinds", "patients", "visits"])
    );
    assert_eq!(
        alice.step("views")["fixture"],
        serde_json::json!(["clinic_counts"])
    );
    let definition = alice.step("view")["definition"]
        .as_str()
        .unwrap_or_default();
    assert!(definition.contains("JOIN clinics"), "{definition}");
    let fks = |t: &Transcript, table: &str| -> Vec<(String, String)> {
        let line = t
            .lines
            .iter()
            .find(|l| l["step"] == "table" && l["name"] == table)
            .unwrap_or_else(|| panic!("no table {table}: {}", t.text));
        line["fks"]
            .as_array()
            .expect("fks")
            .iter()
            .map(|fk| {
                (
                    fk["constrained_columns"][0].as_str().unwrap_or("").into(),
                    fk["referred_table"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(fks(&alice, "patients"), pairs(&[("clinic_id", "clinics")]));
    assert_eq!(
        fks(&alice, "visits"),
        pairs(&[("clinic_id", "clinics"), ("patient_id", "patients")])
    );
    assert!(
        alice.step("enums")["enums"][0]["labels"] == serde_json::json!(["calm", "tense", "elated"])
    );

    // The masked person: reflection is the same, the data is masked.
    let ann = python("sqlalchemy_client.py", &compat.masked(), &[]);
    raw.assert_absent(&ann);
    for (d, a) in direct.lines.iter().zip(&ann.lines) {
        let step = d["step"].as_str().unwrap_or("?");
        if [
            "schemas", "tables", "table", "views", "view", "enums", "has", "metadata",
        ]
        .contains(&step)
        {
            assert_eq!(a, d, "{step}: reflection as the masked person");
        }
    }
    assert_eq!(fks(&ann, "visits"), fks(&direct, "visits"));
    let rows = &ann.step("select")["rows"];
    assert_eq!(ids(rows, |r| &r[0]), raw.clinic1(1, 12), "{rows}");
    for r in rows.as_array().expect("rows") {
        raw.assert_masked(
            "select",
            &r[0],
            [
                Some(&r[1]),
                Some(&r[2]),
                Some(&r[3]),
                Some(&r[4]),
                Some(&r[5]),
            ],
        );
    }
    let join = &ann.step("join")["rows"];
    assert_eq!(
        join.as_array().map(Vec::len),
        Some(1),
        "clinic 1 only: {join}"
    );
    assert_eq!(join[0][0], "Riverside Family Practice");
    for r in ann.step("fk_join")["rows"].as_array().expect("rows") {
        assert_eq!(r[2], "***@example.org", "{r}");
    }
    assert_eq!(ann.step("custom_types"), direct.step("custom_types"));

    // A write that changes nothing runs for alice; the analyst gets an
    // ordinary DBAPI error with 42501 and her connection goes on.
    assert_eq!(
        alice.step("refusal"),
        &serde_json::json!({"step": "refusal", "refused": false, "rows": 0})
    );
    let refusal = ann.step("refusal");
    assert_eq!(refusal["refused"], true, "{refusal}");
    assert_eq!(refusal["error"], "ProgrammingError", "{refusal}");
    assert_eq!(refusal["sqlstate"], "42501", "{refusal}");
    assert_eq!(refusal["pgward"], true, "{refusal}");
    assert_eq!(
        ann.step("after_refusal")["patients"],
        serde_json::json!(raw.clinic1(1, 1000).len()),
        "the connection goes on, clinic 1 only"
    );
    assert_eq!(ann.steps(), direct.steps());
}
