//! A restricted role with the `write` class: INSERT, UPDATE, DELETE and
//! MERGE reach only rows inside the row filter, read only masked values,
//! and RETURNING shows masked values — checked on the database directly.

use std::sync::OnceLock;

use crate::harness::{db, psql_ok, Proxy, Setup, PASSWORD};
use crate::restricted::run;

const CLERK: &str = r#"
roles:
  clerk:
    upstream: { user: trust_user }
    databases: [writes]
    statements: [read, write]
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
  # A row filter that names its table.
  filer:
    upstream: { user: trust_user }
    databases: [writes]
    statements: [read, write]
    tables:
      public.patients:
        rows: "patients.clinic_id = {{ user.clinic_id }}"
"#;

fn writes_db() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        db().sql("postgres", "CREATE DATABASE writes");
        let clinic = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clinic.sql"),
        )
        .expect("clinic.sql");
        psql_ok(&db().conninfo("writes"), &clinic);
        db().sql(
            "writes",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO trust_user",
        );
    });
}

fn direct(sql: &str) -> String {
    db().sql("writes", sql).trim_end().to_string()
}

/// A proxy with the clerk role and cleo (clinic 1) on the `writes` database.
fn clerk() -> (Proxy, String) {
    writes_db();
    let proxy = Proxy::with(Setup::default().policy(CLERK));
    proxy.add_user_with("cleo", &["clerk"], &["clinic_id=1"]);
    let cleo = proxy
        .conninfo("cleo", PASSWORD)
        .replace("dbname=clinic", "dbname=writes");
    (proxy, cleo)
}

fn ok_sql(conninfo: &str, s: &str) -> String {
    let (ok, out) = run(conninfo, s);
    assert!(ok, "{s}: {out}");
    out.trim_end().to_string()
}

#[test]
fn writes_stay_inside_the_filter_and_never_read_raw_values() {
    let (_proxy, cleo) = clerk();
    let sql = |s: &str| ok_sql(&cleo, s);

    // Copying a masked column into a visible one copies the masked value.
    let real = direct("SELECT ssn FROM patients WHERE id = 3");
    assert_eq!(
        sql("UPDATE patients SET phone = ssn WHERE id = 3"),
        "UPDATE 1"
    );
    let phone = direct("SELECT phone FROM patients WHERE id = 3");
    assert_eq!(phone, format!("*******{}", &real[7..]));
    assert_eq!(
        direct("SELECT ssn FROM patients WHERE id = 3"),
        real,
        "ssn untouched"
    );

    // Rows of another clinic are out of reach.
    let before = direct("SELECT phone FROM patients WHERE id = 4");
    sql("UPDATE patients SET phone = 'x' WHERE id = 4");
    sql("UPDATE patients SET phone = 'x' WHERE id = 4 OR true AND id = 4");
    assert_eq!(direct("SELECT phone FROM patients WHERE id = 4"), before);
    // Visit 2 is clinic 1's, visit 3 clinic 2's.
    sql("DELETE FROM visits WHERE id IN (2, 3)");
    assert_eq!(
        direct("SELECT string_agg(id::text, ',') FROM visits WHERE id IN (2, 3)"),
        "3"
    );

    // INSERT keeps only rows inside the filter.
    sql(
        "INSERT INTO visits (id, patient_id, clinic_id, visited_at, reason)
         VALUES (90001, 3, 1, now(), 'ok'), (90002, 3, 2, now(), 'other clinic')",
    );
    assert_eq!(
        direct("SELECT string_agg(id::text, ',') FROM visits WHERE id > 90000"),
        "90001"
    );
    // The filter judges the value as stored: 1.4 is clinic 1, 1.6 is clinic 2.
    sql(
        "INSERT INTO visits (id, patient_id, clinic_id, visited_at, reason)
         VALUES (90005, 3, 1.4, now(), 'rounds to 1'), (90006, 3, 1.6, now(), 'rounds to 2')",
    );
    assert_eq!(
        direct("SELECT string_agg(id::text, ',') FROM visits WHERE id > 90004"),
        "90005"
    );

    // RETURNING shows what the person may see.
    let out =
        sql("UPDATE patients SET email = 'new@example.net' WHERE id = 6 RETURNING id, ssn, email");
    assert!(
        out.starts_with("6|*******") && out.ends_with("|***@example.net"),
        "{out}"
    );
    assert_eq!(
        direct("SELECT email FROM patients WHERE id = 6"),
        "new@example.net"
    );

    // Refused, with the reason, and nothing changed.
    for (attack, reason) in [
        ("UPDATE visits SET notes = 'x' WHERE id = 5", "notes"),
        (
            "UPDATE patients SET clinic_id = 2 WHERE id = 3",
            "row filter",
        ),
        (
            "UPDATE patients SET phone = pgward_t.ssn WHERE id = 3",
            "reserved",
        ),
        (
            "INSERT INTO visits VALUES (90003, 3, 1, now(), 'r', 'n')",
            "column list",
        ),
        (
            "MERGE INTO visits v USING (VALUES (5)) AS s (id) ON v.id = s.id \
             WHEN MATCHED THEN UPDATE SET notes = 'x'",
            "notes",
        ),
    ] {
        let (ok, out) = run(&cleo, attack);
        assert!(
            !ok && out.contains(reason) && out.contains("pgward:"),
            "{attack}: {out}"
        );
    }
    assert_eq!(direct("SELECT count(*) FROM visits WHERE notes = 'x'"), "0");
    assert_eq!(
        direct("SELECT count(*) FROM patients WHERE clinic_id = 2 AND id = 3"),
        "0"
    );
}

// Patients 9 and 12 and visit 8 are clinic 1's; patient 7 is clinic 2's and
// visit 4 clinic 3's (see examples/clinic.sql). The other test leaves them be.
#[test]
fn merge_stays_inside_the_filter_and_never_reads_raw_values() {
    let (proxy, cleo) = clerk();
    let sql = |s: &str| ok_sql(&cleo, s);

    // ON over a masked column: the real SSN matches nothing.
    let real = direct("SELECT ssn FROM patients WHERE id = 9");
    let phone = direct("SELECT phone FROM patients WHERE id = 9");
    assert_eq!(
        sql(&format!(
            "MERGE INTO patients p USING (VALUES (9, '{real}')) AS s (id, x) ON p.ssn = s.x \
             WHEN MATCHED THEN UPDATE SET phone = 'hit'"
        )),
        "MERGE 0"
    );
    assert_eq!(direct("SELECT phone FROM patients WHERE id = 9"), phone);

    // Matched rows read masked values.
    assert_eq!(
        sql(
            "MERGE INTO patients p USING (VALUES (9)) AS s (id) ON p.id = s.id \
             WHEN MATCHED THEN UPDATE SET phone = ssn"
        ),
        "MERGE 1"
    );
    assert_eq!(
        direct("SELECT phone FROM patients WHERE id = 9"),
        format!("*******{}", &real[7..])
    );

    // Another clinic's row is never matched: not changed, and the source
    // row goes to WHEN NOT MATCHED, which inserts inside the filter only.
    let insert = "INSERT (id, clinic_id, name, ssn, email, dob, phone) \
                  VALUES (s.id + 90000, s.c, 'n', '000-00-0000', 'n@example.org', '2000-01-01', '5')";
    assert_eq!(
        sql(&format!(
            "MERGE INTO patients p USING (VALUES (7, 1), (12, 2)) AS s (id, c) ON p.id = s.id \
             WHEN MATCHED THEN UPDATE SET phone = 'merged' WHEN NOT MATCHED THEN {insert}"
        )),
        "MERGE 2"
    );
    assert_eq!(
        direct("SELECT string_agg(id::text, ',') FROM patients WHERE phone = 'merged'"),
        "12"
    );
    assert_eq!(
        direct("SELECT string_agg(id || ':' || clinic_id, ',') FROM patients WHERE id > 90000"),
        "90007:1"
    );
    // A row the person cannot see still occupies its key: the database's
    // unique violation reaches them as SQLSTATE and a generic message.
    let (ok, out) = run(
        &cleo,
        &format!(
            "MERGE INTO patients p USING (VALUES (-89993, 1)) AS s (id, c) ON p.id = s.id \
             WHEN NOT MATCHED THEN {insert}"
        ),
    );
    assert!(
        !ok && out.contains("23505") && !out.contains("(id)"),
        "{out}"
    );

    // A volatile value is computed once per row: it cannot pass the filter
    // as 1 and be stored as 2.
    sql(
        "MERGE INTO visits v USING generate_series(80000, 80199) AS g (n) ON v.id = g.n \
         WHEN NOT MATCHED THEN INSERT (id, patient_id, clinic_id, visited_at, reason) \
         VALUES (n, 3, CASE WHEN random() < 0.5 THEN 1 ELSE 2 END, now(), 'm')",
    );
    assert_eq!(
        direct(
            "SELECT count(*) FILTER (WHERE clinic_id <> 1), count(*) > 50 \
             FROM visits WHERE id BETWEEN 80000 AND 80199"
        ),
        "0|t"
    );

    // A denied column is not there to be read.
    let (ok, out) = run(
        &cleo,
        "MERGE INTO visits v USING (VALUES (5)) AS s (id) ON v.id = s.id \
         WHEN MATCHED THEN UPDATE SET reason = notes",
    );
    assert!(!ok && out.contains("v.notes does not exist"), "{out}");
    assert_eq!(
        direct("SELECT count(*) FROM visits WHERE reason LIKE 'clinical note%'"),
        "0"
    );

    // A column added after pgward read the schema is not reachable by a
    // bare name: refused in UPDATE … FROM, the source's in MERGE.
    sql("SELECT count(*) FROM visits");
    direct("ALTER TABLE visits ADD COLUMN IF NOT EXISTS secret_v text DEFAULT 'TOPSECRET'");
    let (ok, out) = run(
        &cleo,
        "UPDATE visits v SET reason = secret_v FROM clinics c WHERE v.id = 11 AND c.id = 1",
    );
    assert!(!ok && out.contains("unqualified names"), "{out}");
    let (ok, out) = run(
        &cleo,
        "MERGE INTO visits v USING (VALUES (11)) AS s (id) ON v.id = s.id \
         WHEN MATCHED THEN UPDATE SET reason = secret_v",
    );
    assert!(!ok && out.contains("s.secret_v does not exist"), "{out}");
    assert_eq!(
        direct("SELECT count(*) FROM visits WHERE reason = 'TOPSECRET'"),
        "0"
    );

    // A filter that names its table judges the new row, not a source that
    // borrows the table's name.
    proxy.add_user_with("fay", &["filer"], &["clinic_id=1"]);
    let fay = proxy
        .conninfo("fay", PASSWORD)
        .replace("dbname=clinic", "dbname=writes");
    for (id, clinic) in [(95000, 2), (95001, 1)] {
        ok_sql(
            &fay,
            &format!(
                "MERGE INTO patients AS t USING (VALUES ({id}, 1)) AS patients (id, clinic_id) \
                 ON t.id = patients.id WHEN NOT MATCHED THEN INSERT \
                 (id, clinic_id, name, ssn, email, dob, phone) \
                 VALUES ({id}, {clinic}, 'x', 'x', 'x', '2000-01-01', 'x')"
            ),
        );
    }
    assert_eq!(
        direct("SELECT string_agg(id || ':' || clinic_id, ',') FROM patients WHERE id >= 95000"),
        "95001:1"
    );

    // DELETE reaches only the person's rows.
    assert_eq!(
        sql(
            "MERGE INTO visits v USING (VALUES (8), (4)) AS s (id) ON v.id = s.id \
             WHEN MATCHED THEN DELETE"
        ),
        "MERGE 1"
    );
    assert_eq!(
        direct("SELECT string_agg(id::text, ',') FROM visits WHERE id IN (4, 8)"),
        "4"
    );
}
