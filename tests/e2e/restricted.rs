//! Restricted roles end to end: a masked, row-filtered analyst against a
//! real PostgreSQL, attacked and used.
//!
//! The red-team suite runs each attack through pgward with psql and checks
//! that no protected value (full SSNs, names, e-mail addresses, birth
//! dates, denied notes) and no row of another clinic (their phone numbers)
//! appears anywhere in the output or in error messages, and that nothing
//! was written.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::{db, psql_ok, Proxy, Setup, PASSWORD};

/// The analyst policy from the product brief, on its own database.
pub const ANALYST: &str = r#"
roles:
  analyst:
    upstream: { user: trust_user }
    databases: [redteam]
    statements: [read]
    tables:
      public.patients:
        columns:
          ssn:   { mask: partial, keep_last: 4 }
          name:  { mask: hash }
          email: { mask: email }
          dob:   { mask: year }
        rows: "clinic_id = {{ user.clinic_id }}"
      public.visits:
        deny_columns: [notes]
        rows: "clinic_id = {{ user.clinic_id }}"
      public.clinics: {}
"#;

/// A database of its own, so objects the attacks need (a view, a leaky
/// function, an unlisted table) do not disturb other tests.
pub fn redteam_db() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        db().sql("postgres", "CREATE DATABASE redteam");
        let clinic = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clinic.sql"),
        )
        .expect("clinic.sql");
        psql_ok(&db().conninfo("redteam"), &clinic);
        db().sql(
            "redteam",
            "CREATE VIEW patients_v AS SELECT * FROM patients;
             CREATE FUNCTION leak_ssn(int) RETURNS text LANGUAGE sql AS 'SELECT ssn FROM patients WHERE id = $1';
             CREATE TABLE staff_secrets (v text);
             INSERT INTO staff_secrets VALUES ('TOPSECRET-STAFF');
             CREATE SEQUENCE counter;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO trust_user;
             GRANT USAGE ON SEQUENCE counter TO trust_user;
             ANALYZE;",
        );
    });
}

pub fn analyst_proxy() -> Proxy {
    redteam_db();
    let proxy = Proxy::with(Setup::default().policy(ANALYST));
    proxy.add_user_with("ann", &["analyst"], &["clinic_id=1"]);
    proxy
}

pub fn conninfo(proxy: &Proxy, user: &str) -> String {
    proxy
        .conninfo(user, PASSWORD)
        .replace("dbname=clinic", "dbname=redteam")
}

/// Runs `sql` through psql as one Query message; stdout and stderr together.
pub fn run(conninfo: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-At", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a psql script (statements one by one) through stdin.
pub fn run_script(conninfo: &str, script: &str) -> (bool, String) {
    let mut child = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-At", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("psql");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

struct Secrets {
    values: BTreeSet<String>,
}

impl Secrets {
    fn load() -> Secrets {
        let mut values = BTreeSet::new();
        let rows = db().sql(
            "redteam",
            "SELECT clinic_id, name, ssn, email, dob, phone FROM patients",
        );
        let clinic1_phones: BTreeSet<String> = db()
            .sql("redteam", "SELECT phone FROM patients WHERE clinic_id = 1")
            .lines()
            .map(str::to_string)
            .collect();
        for line in rows.lines() {
            let f: Vec<&str> = line.split('|').collect();
            let (clinic, name, ssn, email, dob, phone) = (f[0], f[1], f[2], f[3], f[4], f[5]);
            values.insert(name.to_string());
            values.insert(ssn.to_string());
            // The unmasked part of an SSN.
            values.insert(ssn[..7].to_string());
            values.insert(email.to_string());
            if !dob.ends_with("-01-01") {
                values.insert(dob.to_string());
            }
            if clinic != "1" && !clinic1_phones.contains(phone) {
                values.insert(phone.to_string());
            }
        }
        for note in db()
            .sql(
                "redteam",
                "SELECT notes FROM visits WHERE id IN (1, 2, 3, 100, 2999)",
            )
            .lines()
        {
            values.insert(format!("{note}\n"));
            values.insert(format!("{note}|"));
        }
        values.insert("TOPSECRET-STAFF".into());
        Secrets { values }
    }

    fn leaks<'a>(&'a self, output: &str) -> Vec<&'a str> {
        let output = format!("{output}\n");
        self.values
            .iter()
            .filter(|v| output.contains(v.as_str()))
            .map(String::as_str)
            .take(3)
            .collect()
    }
}

fn fingerprint() -> String {
    db().sql(
        "redteam",
        "SELECT (SELECT md5(string_agg(p::text, ',' ORDER BY id)) FROM patients p),
                (SELECT md5(string_agg(v::text, ',' ORDER BY id)) FROM visits v),
                (SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM clinics c),
                (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace),
                (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace),
                (SELECT last_value FROM counter)",
    )
}

/// (attack, must it be refused by pgward with 42501?)
const ATTACKS: &[&str] = &[
    // plain reads, functions and casts over masked columns
    "SELECT * FROM patients",
    "SELECT ssn, name, email, dob FROM patients WHERE id = 3",
    "SELECT ssn::text || '', concat(ssn), concat_ws(',', name, email) FROM patients",
    "SELECT upper(ssn), lower(name), reverse(email), substr(ssn, 1, 6) FROM patients",
    "SELECT CAST(ssn AS varchar(3)), left(ssn, 7), split_part(email, '@', 1) FROM patients",
    "SELECT to_char(dob, 'YYYY-MM-DD'), dob::text, extract(day FROM dob) FROM patients",
    // label swapping
    "SELECT ssn AS phone, phone AS ssn, name AS clinic_id FROM patients",
    "SELECT x.ssn FROM (SELECT ssn AS name, name AS ssn FROM patients) x",
    // whole-row, JSON and XML
    "SELECT p FROM patients p",
    "SELECT p.* FROM patients p",
    "SELECT row_to_json(p), to_jsonb(p) FROM patients p",
    "SELECT json_agg(p) FROM patients p",
    "SELECT (p).ssn, (p).name FROM patients p",
    "SELECT xmlelement(name x, ssn), xmlforest(name, email) FROM patients",
    "SELECT jsonb_populate_record(NULL::patients, to_jsonb(p)) FROM patients p",
    // aggregates and windows
    "SELECT string_agg(ssn, ','), array_agg(name), max(email), min(dob) FROM patients",
    "SELECT ssn, row_number() OVER (ORDER BY ssn), lag(name) OVER () FROM patients",
    "SELECT name, count(*) FROM patients GROUP BY name HAVING count(*) > 0",
    // CTEs, subqueries, LATERAL, set operations
    "WITH x AS (SELECT * FROM patients) SELECT * FROM x",
    "WITH patients AS (SELECT * FROM patients) SELECT * FROM patients",
    "WITH patients AS (SELECT * FROM public.patients) SELECT ssn FROM patients",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2) SELECT p.* FROM r, patients p",
    "SELECT * FROM (SELECT * FROM patients) s",
    "SELECT (SELECT ssn FROM patients WHERE id = 3), (SELECT name FROM patients LIMIT 1)",
    "SELECT * FROM patients WHERE ssn IN (SELECT ssn FROM patients)",
    "SELECT * FROM clinics c, LATERAL (SELECT ssn, name FROM patients p WHERE p.clinic_id = c.id) l",
    "SELECT ssn FROM patients UNION SELECT name FROM patients",
    "SELECT ssn FROM patients EXCEPT SELECT 'x'",
    "SELECT ssn FROM patients INTERSECT SELECT ssn FROM patients",
    "SELECT * FROM patients p1 FULL JOIN patients p2 ON false",
    "VALUES ((SELECT ssn FROM patients LIMIT 1))",
    // cursors, PREPARE, multi-statement strings
    "BEGIN; DECLARE c CURSOR FOR SELECT * FROM patients; FETCH ALL FROM c; COMMIT",
    "PREPARE q AS SELECT * FROM patients; EXECUTE q",
    "PREPARE q2(int) AS SELECT ssn FROM patients WHERE id = $1; EXECUTE q2(3)",
    "SELECT 1; SELECT ssn, name FROM patients",
    "SELECT 1; DO $$BEGIN RAISE NOTICE '%', (SELECT ssn FROM patients LIMIT 1); END$$",
    // comments, quoting, case
    "SELECT /* hi */ ssn -- there\n, name FROM patients",
    "SELECT $$x$$, ssn, $t$y$t$ FROM patients",
    "SELECT U&\"\\0073sn\" FROM patients",
    "SELECT \"ssn\", \"name\" FROM \"patients\"",
    "SELECT SSN, NAME FROM PATIENTS",
    "SELECT * FROM public.\"patients\"",
    "SELECT * FROM redteam.public.patients",
    "SELECT E'\\x27' || ssn FROM patients",
    // COPY in all forms
    "COPY patients TO STDOUT",
    "COPY patients (ssn, name) TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT * FROM patients) TO STDOUT",
    "COPY patients TO '/tmp/pgward-redteam-leak.csv'",
    "COPY patients TO PROGRAM 'cat > /tmp/pgward-redteam-leak.csv'",
    "COPY patients FROM STDIN",
    "COPY staff_secrets TO STDOUT",
    // DO, temp objects, functions, existing views and functions
    "DO $$BEGIN RAISE NOTICE '%', (SELECT string_agg(ssn, ',') FROM patients); END$$",
    "CREATE TEMP TABLE t AS SELECT * FROM patients",
    "CREATE TEMP VIEW v AS SELECT * FROM patients",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM patients LIMIT 1'",
    "CREATE PROCEDURE pr() LANGUAGE sql AS 'SELECT 1'",
    "SELECT * INTO TEMP t2 FROM patients",
    "SELECT * FROM pg_temp.t",
    "SELECT * FROM patients_v",
    "SELECT leak_ssn(3), public.leak_ssn(4)",
    "SELECT * FROM staff_secrets",
    "TABLE patients",
    "SELECT * FROM ONLY patients",
    "SELECT * FROM patients TABLESAMPLE SYSTEM (100)",
    // writes
    "UPDATE patients SET email = email RETURNING ssn, name",
    "DELETE FROM patients WHERE id = 3 RETURNING *",
    "INSERT INTO patients SELECT id + 10000, clinic_id, name, ssn, email, dob, phone FROM patients RETURNING *",
    "MERGE INTO patients t USING patients s ON t.id = s.id WHEN MATCHED THEN UPDATE SET email = s.email",
    "WITH d AS (DELETE FROM visits RETURNING *) SELECT * FROM d",
    "TRUNCATE patients",
    "SELECT nextval('counter')",
    "SELECT ssn FROM patients FOR UPDATE",
    // settings, roles, notifications, side channels
    "SELECT set_config('search_path', 'pg_temp, public', false)",
    "SET search_path = pg_temp, public",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SET standard_conforming_strings = off",
    "SELECT pg_notify('x', ssn) FROM patients",
    "NOTIFY x, 'y'",
    "SELECT current_setting('search_path'), current_query()",
    // error-message leaks
    "SELECT ssn::int FROM patients",
    "SELECT name::int FROM patients",
    "SELECT CAST(email AS date) FROM patients",
    "SELECT phone::int FROM patients",
    "SELECT 1 / (clinic_id - 2) FROM patients",
    "SELECT ssn::int FROM patients WHERE clinic_id = 2",
    // the plain-column shortcut (table + filter instead of the subquery)
    "SELECT id, phone FROM patients WHERE clinic_id = 2 OR true",
    "SELECT id, phone FROM patients WHERE true) OR (true",
    "SELECT phone FROM patients GROUP BY phone HAVING true OR count(*) > 0",
    "SELECT phone FROM patients UNION ALL SELECT phone FROM patients WHERE true OR true",
    "SELECT id FROM patients p WHERE (SELECT p.ssn) LIKE '%'",
    "SELECT phone, (SELECT max(ssn) FROM patients) FROM patients",
    "SELECT phone FROM patients p, LATERAL (SELECT p.ssn) x",
    "SELECT phone FROM patients ORDER BY id LIMIT 1 OFFSET 400",
    "SELECT p.row_to_json FROM patients p",
    "SELECT patients.to_jsonb, phone FROM patients",
    "SELECT \"É\" FROM patients É",
    "SELECT xmin, ctid, phone FROM patients",
    // encodings in which a multibyte character can end in a quote byte
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'BIG5'",
    // inference through WHERE / LIKE
    "SELECT * FROM patients WHERE clinic_id = 2",
    "SELECT * FROM patients WHERE clinic_id = 2 OR true",
    "SELECT * FROM visits WHERE clinic_id <> 1",
    "SELECT id FROM patients WHERE ssn LIKE '%-%-%' AND name LIKE 'A%'",
    // statistics, plans, activity, catalogs that hold values
    "SELECT * FROM pg_stats WHERE tablename = 'patients'",
    "SELECT * FROM pg_catalog.pg_statistic",
    "SELECT * FROM pg_stats_ext",
    "EXPLAIN ANALYZE SELECT * FROM patients WHERE ssn = 'x'",
    "EXPLAIN (ANALYZE true, FORMAT json) SELECT * FROM visits",
    "EXPLAIN SELECT * FROM patients WHERE name = 'x'",
    "SELECT query FROM pg_stat_activity",
    "SELECT * FROM pg_prepared_statements",
    "SELECT * FROM pg_cursors",
    // server files, large objects, dblink, xml query functions
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT lo_import('/etc/hostname')",
    "SELECT lo_get(1)",
    "SELECT * FROM pg_largeobject",
    "SELECT * FROM dblink('dbname=redteam', 'SELECT ssn FROM patients') AS t(s text)",
    "SELECT query_to_xml('SELECT * FROM patients', true, true, '')",
    "SELECT table_to_xml('patients', true, true, '')",
    // denied columns and the row filter on a second table
    "SELECT * FROM visits",
    "SELECT notes FROM visits",
    "SELECT v FROM visits v",
    "SELECT row_to_json(v) FROM visits v",
    "COPY visits TO STDOUT",
    "ANALYZE patients",
    "VACUUM patients",
    "GRANT SELECT ON patients TO PUBLIC",
    "ALTER TABLE patients ADD COLUMN x int",
    "DROP TABLE visits",
    "LOAD 'plpgsql'",
];

#[test]
fn red_team_attacks_leak_nothing_and_write_nothing() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    let secrets = Secrets::load();
    assert!(secrets.values.len() > 2000, "secret corpus is too small");
    let before = fingerprint();
    let _ = std::fs::remove_file("/tmp/pgward-redteam-leak.csv");

    // The masked analyst does see data: the check below is not vacuous.
    let (ok, out) = run(
        &ann,
        "SELECT ssn, name, email, dob, phone FROM patients ORDER BY id LIMIT 1",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("*******") && out.contains("***@example.org"),
        "{out}"
    );

    let mut failures = Vec::new();
    for attack in ATTACKS {
        let (_, out) = run(&ann, attack);
        let leaks = secrets.leaks(&out);
        if !leaks.is_empty() {
            failures.push(format!("{attack}\n  leaked {leaks:?}"));
        }
        if out.contains("server closed the connection") || out.contains("panicked") {
            failures.push(format!("{attack}\n  broke the session: {out}"));
        }
    }
    assert!(ATTACKS.len() >= 60);
    assert!(
        failures.is_empty(),
        "{} leaks:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(fingerprint(), before, "an attack wrote to the database");
    assert!(!std::path::Path::new("/tmp/pgward-redteam-leak.csv").exists());
}
