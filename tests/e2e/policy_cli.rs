//! `pgward policy check` and `pgward policy explain` against a real
//! database.

use std::process::{Command, Output};

use crate::harness::PGWARD;
use crate::restricted::analyst_proxy;

fn policy(proxy: &crate::harness::Proxy, args: &[&str]) -> Output {
    Command::new(PGWARD)
        .arg("policy")
        .args(args)
        .arg("--config")
        .arg(&proxy.config)
        .output()
        .expect("pgward policy")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_passes_a_good_policy_and_checks_it_against_the_database() {
    let proxy = analyst_proxy();
    let out = policy(&proxy, &["check"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("role(s) OK; masks checked against redteam"),
        "{report}"
    );
}

#[test]
fn check_reports_every_problem_with_file_and_line() {
    let proxy = analyst_proxy();
    // A user of the role, lacking the attribute its filter will need.
    std::fs::write(
        proxy.dir.path().join("policies/broken.yaml"),
        "roles:\n  broken:\n    upstream: { user: trust_user }\n",
    )
    .expect("write policy");
    proxy.add_user_with("bob", &["broken"], &["team=x"]);
    std::fs::write(
        proxy.dir.path().join("policies/broken.yaml"),
        r#"roles:
  broken:
    upstream: { user: trust_user }
    databases: [redteam]
    statements: [read]
    tables:
      public.patients:
        columns:
          dob: { mask: round }
          nosuch: { mask: redact }
        rows: "clinic_id = {{ user.clinc_id }}"
      public.visits:
        columns:
          reason: { mask: expr, sql: "no_such_function({{ column }})" }
  broken_syntax:
    upstream: { user: trust_user }
    statements: [ddl]
"#,
    )
    .expect("write policy");
    std::fs::write(
        proxy.dir.path().join("policies/typo.yaml"),
        "roles:\n  t:\n    upstream: { user: x }\n    tables:\n      public.a:\n        columns:\n          c: { mask: sparkle }\n",
    )
    .expect("write policy");
    let out = policy(&proxy, &["check"]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    for expected in [
        // Role-level error, located at the role.
        "broken.yaml:15: role \"broken_syntax\"",
        // Unknown mask: serde_yaml's own location.
        "typo.yaml:7:",
        "sparkle",
        // Type mismatch, at the column's line, against the live schema.
        "broken.yaml:9: role \"broken\": table public.patients in \"redteam\": column dob",
        // A policy column the table does not have.
        "broken.yaml:10: role \"broken\": table public.patients: column nosuch does not exist",
        // The custom mask the database rejects.
        "broken.yaml:12: role \"broken\": table public.visits: \"redteam\" rejects the masked query",
        "no_such_function",
        // The attribute nobody has.
        "broken.yaml:11: role \"broken\": table public.patients: unknown attribute user.clinc_id is missing for bob",
        "problem(s) in the policies",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

#[test]
fn explain_shows_decision_reason_and_rewritten_sql() {
    let proxy = analyst_proxy();
    let out = policy(
        &proxy,
        &[
            "explain",
            "--user",
            "ann",
            "--db",
            "redteam",
            "SELECT name, ssn FROM patients WHERE id = 3",
        ],
    );
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("user:     ann (role analyst, restricted)"),
        "{report}"
    );
    assert!(
        report.contains("decision: rewritten (protected tables: public.patients)"),
        "{report}"
    );
    assert!(report.contains("\"public\".\"patients\""), "{report}");
    assert!(report.contains("clinic_id = '1'"), "{report}");
    // The hash mask's key is never printed.
    let key =
        std::fs::read_to_string(proxy.dir.path().join("secrets/masking.key")).expect("masking key");
    assert!(!report.contains(key.trim()), "{report}");
    assert!(report.contains("'<masking key>'"), "{report}");

    let out = policy(
        &proxy,
        &[
            "explain",
            "--user",
            "ann",
            "--db",
            "redteam",
            "DO $$ BEGIN END $$",
        ],
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("decision: refused (SQLSTATE 42501)"),
        "{report}"
    );
    assert!(
        report.contains("reason:   pgward: DO blocks are not allowed for role \"analyst\""),
        "{report}"
    );

    let out = policy(
        &proxy,
        &["explain", "--user", "nobody", "--db", "redteam", "SELECT 1"],
    );
    assert!(
        text(&out).contains("no user named \"nobody\""),
        "{}",
        text(&out)
    );
}
