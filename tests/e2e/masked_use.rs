//! A masked, row-filtered analyst doing ordinary work: joins, aggregates,
//! windows, psql's `\d` family, the extended protocol, cursors and prepared
//! statements all work — and every answer is the masked, filtered one,
//! computed here independently on a direct connection.

use crate::harness::{db, message, sqlstate, PASSWORD};
use crate::restricted::{analyst_proxy, conninfo, run, run_script};

/// What the analyst should get, computed directly (clinic 1 only).
fn direct(sql: &str) -> String {
    db().sql("redteam", sql)
}

fn through(ann: &str, sql: &str) -> String {
    let (ok, out) = run(ann, sql);
    assert!(ok, "{sql}: {out}");
    out.trim_end().to_string()
}

#[test]
fn joins_aggregates_and_windows_answer_over_the_filtered_masked_rows() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    let cases = [
        (
            "SELECT count(*) FROM patients",
            "SELECT count(*) FROM patients WHERE clinic_id = 1",
        ),
        (
            "SELECT clinic_id, count(*) FROM patients GROUP BY 1 ORDER BY 1",
            "SELECT clinic_id, count(*) FROM patients WHERE clinic_id = 1 GROUP BY 1 ORDER BY 1",
        ),
        (
            "SELECT count(*), count(DISTINCT p.id) FROM visits v JOIN patients p ON p.id = v.patient_id",
            "SELECT count(*), count(DISTINCT p.id) FROM visits v JOIN patients p ON p.id = v.patient_id
             WHERE v.clinic_id = 1 AND p.clinic_id = 1",
        ),
        (
            "SELECT c.name, v.reason, count(*) FROM clinics c JOIN visits v ON v.clinic_id = c.id
             GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT c.name, v.reason, count(*) FROM clinics c JOIN visits v ON v.clinic_id = c.id
             WHERE v.clinic_id = 1 GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "SELECT id, row_number() OVER (ORDER BY id), lag(id) OVER (ORDER BY id)
             FROM patients ORDER BY id LIMIT 5",
            "SELECT id, row_number() OVER (ORDER BY id), lag(id) OVER (ORDER BY id)
             FROM patients WHERE clinic_id = 1 ORDER BY id LIMIT 5",
        ),
        // Hash masks are deterministic: equal names still join and group.
        (
            "SELECT count(*) FROM patients a JOIN patients b ON a.name = b.name",
            "SELECT count(*) FROM patients a JOIN patients b ON a.name = b.name
             WHERE a.clinic_id = 1 AND b.clinic_id = 1",
        ),
        (
            "SELECT count(DISTINCT name), count(DISTINCT dob) FROM patients",
            "SELECT count(DISTINCT name), count(DISTINCT date_trunc('year', dob))
             FROM patients WHERE clinic_id = 1",
        ),
        // The masked value is what WHERE sees: the real SSN matches nothing.
        (
            "SELECT count(*) FROM patients WHERE ssn = (SELECT '000-00-0000')",
            "SELECT 0",
        ),
        (
            "SELECT extract(year FROM dob)::int, right(ssn, 4), split_part(email, '@', 2)
             FROM patients WHERE id = 3",
            "SELECT extract(year FROM dob)::int, right(ssn, 4), split_part(email, '@', 2)
             FROM patients WHERE id = 3",
        ),
    ];
    for (via, expected) in cases {
        assert_eq!(through(&ann, via), direct(expected).trim_end(), "{via}");
    }

    // Masks, value by value, for one patient of clinic 1.
    let real_ssn = direct("SELECT ssn FROM patients WHERE id = 3");
    let row = through(
        &ann,
        "SELECT ssn, name, email, dob, phone FROM patients WHERE id = 3",
    );
    let fields: Vec<&str> = row.split('|').collect();
    assert_eq!(fields.len(), 5, "{row}");
    assert_eq!(fields[0], format!("*******{}", &real_ssn[7..]), "{row}");
    assert!(
        fields[1].len() == 64 && fields[1].bytes().all(|b| b.is_ascii_hexdigit()),
        "{row}"
    );
    assert_eq!(fields[2], "***@example.org");
    assert!(fields[3].ends_with("-01-01"), "{row}");
    let real_phone = direct("SELECT phone FROM patients WHERE id = 3");
    assert_eq!(fields[4], real_phone.trim_end(), "phone is allowed");
    let inference = format!("SELECT count(*) FROM patients WHERE ssn = '{real_ssn}'");
    assert_eq!(through(&ann, &inference), "0");
    // A patient of clinic 2 does not exist for the analyst.
    assert_eq!(
        through(&ann, "SELECT count(*) FROM patients WHERE id = 4"),
        "0"
    );
}

#[test]
fn psql_describe_commands_work_for_a_masked_user() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    for (cmd, expect) in [
        ("\\dt", "patients"),
        ("\\d patients", "ssn"),
        ("\\d+ patients", "clinic_id"),
        ("\\d visits", "patient_id"),
        ("\\dn", "public"),
        ("\\df", ""),
        ("\\dv", "patients_v"),
        ("\\l", "redteam"),
        ("\\du", "trust_user"),
        ("\\dx", "plpgsql"),
        ("\\di", "patients_pkey"),
        ("\\conninfo", "redteam"),
    ] {
        let (ok, out) = run(&ann, cmd);
        assert!(ok && out.contains(expect), "{cmd}: {out}");
        assert!(!out.contains("pgward:"), "{cmd} was refused: {out}");
    }
}

#[test]
fn cursors_prepared_statements_and_session_resets_work() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    let (ok, out) = run_script(
        &ann,
        "BEGIN;
         DECLARE c CURSOR FOR SELECT id, ssn FROM patients ORDER BY id;
         MOVE 2 IN c;
         FETCH 1 FROM c;
         CLOSE c;
         COMMIT;
         PREPARE q(int) AS SELECT id, email FROM patients WHERE id = $1;
         EXECUTE q(6);
         EXECUTE q(7);
         DEALLOCATE q;
         RESET ALL;
         SHOW search_path;
         DISCARD ALL;
         SHOW search_path;
         SELECT count(*) FROM patients;",
    );
    assert!(ok, "{out}");
    let ssn9 = direct("SELECT right(ssn, 4) FROM patients WHERE id = 9");
    let expected = format!(
        "BEGIN\nDECLARE CURSOR\nMOVE 2\n9|*******{}\nCLOSE CURSOR\nCOMMIT\nPREPARE\n\
         6|***@example.org\nDEALLOCATE\nRESET\n\"public\"\nDISCARD ALL\n\"public\"\n333\n",
        ssn9.trim_end()
    );
    assert_eq!(out, expected);
}

#[tokio::test]
async fn extended_protocol_describes_masked_columns_and_recovers_from_refusals() {
    let proxy = analyst_proxy();
    let (client, conn) = proxy
        .connect_db("ann", PASSWORD, "redteam")
        .await
        .expect("connect");
    tokio::spawn(conn);

    let stmt = client
        .prepare("SELECT id, ssn, dob, name FROM patients WHERE id = $1")
        .await
        .expect("prepare");
    let types: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.type_()))
        .collect();
    assert_eq!(types, ["id:int4", "ssn:text", "dob:date", "name:text"]);
    let row = client.query_one(&stmt, &[&3i32]).await.expect("row");
    let ssn: String = row.get(1);
    assert!(ssn.starts_with("*******"), "{ssn}");
    let dob: String = client
        .query_one("SELECT dob::text FROM patients WHERE id = $1", &[&3i32])
        .await
        .expect("dob")
        .get(0);
    assert!(dob.ends_with("-01-01"), "{dob}");
    assert!(client
        .query(&stmt, &[&4i32])
        .await
        .expect("rows")
        .is_empty());

    // A refusal is an ordinary error, and the session goes on.
    let err = client
        .prepare("SELECT * FROM staff_secrets")
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&err), "42501");
    assert!(message(&err).contains("staff_secrets"), "{}", message(&err));
    let err = client
        .query("SELECT ssn::int FROM patients WHERE id = $1", &[&3i32])
        .await
        .expect_err("cast error");
    assert_eq!(sqlstate(&err), "22P02");
    assert!(!message(&err).contains('*'), "{}", message(&err));
    let n: i64 = client
        .query_one("SELECT count(*) FROM visits WHERE clinic_id = $1", &[&1i32])
        .await
        .expect("usable after errors")
        .get(0);
    assert_eq!(
        n.to_string(),
        direct("SELECT count(*) FROM visits WHERE clinic_id = 1").trim_end()
    );
}

#[test]
fn an_edited_policy_file_applies_to_new_sessions_without_a_signal() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    let phone = "SELECT phone FROM patients WHERE id = 3";
    let real = direct(phone);
    assert_eq!(through(&ann, phone), real.trim_end());

    let file = proxy.dir.path().join("policies/extra.yaml");
    let masked = crate::restricted::ANALYST.replace(
        "dob:   { mask: year }",
        "dob:   { mask: year }\n          phone: { mask: redact }",
    );
    assert_ne!(masked, crate::restricted::ANALYST);
    std::fs::write(&file, masked).expect("edit policy");
    crate::harness::eventually(std::time::Duration::from_secs(10), "file reload", || {
        through(&ann, phone) != real.trim_end()
    });

    // A broken edit is reported and the working policy stays.
    std::fs::write(&file, "roles: [this is not a policy").expect("break policy");
    crate::harness::eventually(std::time::Duration::from_secs(10), "failed reload", || {
        proxy.log().contains("reload failed")
    });
    assert_ne!(through(&ann, phone), real.trim_end());
    assert_eq!(through(&ann, "SELECT count(*) FROM patients"), "333");
}

#[test]
fn a_restricted_session_is_utf8_whatever_the_client_asks() {
    let proxy = analyst_proxy();
    let ann = conninfo(&proxy, "ann");
    let out = std::process::Command::new("psql")
        .arg(&ann)
        .args(["-X", "-At", "-c", "SHOW client_encoding"])
        .env("PGCLIENTENCODING", "SJIS")
        .output()
        .expect("psql");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "UTF8");
}
