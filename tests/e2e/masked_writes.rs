//! A restricted role with the `write` class: INSERT, UPDATE and DELETE
//! reach only rows inside the row filter, read only masked values, and
//! RETURNING shows masked values — checked on the database directly.

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

#[test]
fn writes_stay_inside_the_filter_and_never_read_raw_values() {
    writes_db();
    let proxy = Proxy::with(Setup::default().policy(CLERK));
    proxy.add_user_with("cleo", &["clerk"], &["clinic_id=1"]);
    let cleo = proxy
        .conninfo("cleo", PASSWORD)
        .replace("dbname=clinic", "dbname=writes");
    let sql = |s: &str| {
        let (ok, out) = run(&cleo, s);
        assert!(ok, "{s}: {out}");
        out.trim_end().to_string()
    };

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
            "MERGE INTO visits t USING visits s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "MERGE",
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
