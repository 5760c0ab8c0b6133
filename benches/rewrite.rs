//! Analysis and rewrite for a restricted role, cold (parse, resolve,
//! substitute, print, re-parse) and cached (the shared analysis cache, as
//! every session uses it), for three statements: a pgbench-style point
//! select, a 5-way join and the catalog query psql sends for `\d table`.
//!
//! `cargo bench --bench rewrite`; the issue's target is ≤ 2 µs cached.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use pgward::guard::cache::AnalysisCache;
use pgward::guard::literals;
use pgward::policy::{Role, RoleName};
use pgward::sql::schema::Schema;
use pgward::sql::Enforcer;

const POLICY: &str = r#"
upstream: { user: app_reader }
databases: [clinic]
statements: [read]
tables:
  public.pgbench_accounts:
    columns:
      filler: { mask: redact }
    rows: "bid = {{ user.branch }}"
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
  public.prescriptions: {}
  public.staff:
    rows: "clinic_id = {{ user.clinic_id }}"
"#;

const POINT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

const JOIN5: &str = "SELECT c.name, s.name, p.ssn, v.visited_at, r.drug \
    FROM patients p \
    JOIN visits v ON v.patient_id = p.id \
    JOIN clinics c ON c.id = v.clinic_id \
    JOIN staff s ON s.clinic_id = c.id \
    JOIN prescriptions r ON r.visit_id = v.id \
    WHERE p.dob > date '1970-01-01' AND r.dose > 10 \
    ORDER BY v.visited_at DESC LIMIT 50";

/// What psql 15 sends for the columns part of `\d patients`.
const PSQL_D: &str = "SELECT a.attname,\n  pg_catalog.format_type(a.atttypid, a.atttypmod),\n  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)\n   FROM pg_catalog.pg_attrdef d\n   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),\n  a.attnotnull,\n  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t\n   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,\n  a.attidentity,\n  a.attgenerated\nFROM pg_catalog.pg_attribute a\nWHERE a.attrelid = '16385' AND a.attnum > 0 AND NOT a.attisdropped\nORDER BY a.attnum;";

fn enforcer() -> Enforcer {
    let mut role: Role = serde_yaml::from_str(POLICY).expect("policy");
    role.name = RoleName::parse("analyst").expect("name");
    let schema = Schema::from_spec(&[
        (
            "public.pgbench_accounts",
            &[
                ("aid", "integer"),
                ("bid", "integer"),
                ("abalance", "integer"),
                ("filler", "character(84)"),
            ],
        ),
        (
            "public.patients",
            &[
                ("id", "integer"),
                ("clinic_id", "integer"),
                ("name", "text"),
                ("ssn", "text"),
                ("email", "text"),
                ("dob", "date"),
                ("phone", "text"),
            ],
        ),
        (
            "public.visits",
            &[
                ("id", "integer"),
                ("patient_id", "integer"),
                ("clinic_id", "integer"),
                ("visited_at", "timestamp with time zone"),
                ("reason", "text"),
                ("notes", "text"),
            ],
        ),
        (
            "public.clinics",
            &[("id", "integer"), ("name", "text"), ("city", "text")],
        ),
        (
            "public.prescriptions",
            &[
                ("id", "integer"),
                ("visit_id", "integer"),
                ("drug", "text"),
                ("dose", "integer"),
            ],
        ),
        (
            "public.staff",
            &[
                ("id", "integer"),
                ("clinic_id", "integer"),
                ("name", "text"),
            ],
        ),
    ]);
    let attrs = BTreeMap::from([
        ("clinic_id".to_string(), "1".to_string()),
        ("branch".to_string(), "1".to_string()),
    ]);
    Enforcer::new(&role, "clinic", &attrs, &schema, "bench-masking-key")
}

fn rewrite(c: &mut Criterion) {
    let enforcer = enforcer();
    let cache = AnalysisCache::new(64 << 20);
    let scope = "38:1|analyst|clinic|1|{\"branch\":\"1\",\"clinic_id\":\"1\"}|";
    for (name, sql) in [
        ("point_select", POINT),
        ("join5", JOIN5),
        ("psql_d", PSQL_D),
    ] {
        let cold = enforcer.rewrite(sql);
        assert!(cold.is_ok(), "{name}: {cold:?}");
        c.bench_function(&format!("{name}/cold"), |b| {
            b.iter(|| enforcer.rewrite(std::hint::black_box(sql)))
        });
        cache.decide(scope, sql, || enforcer.rewrite(sql));
        c.bench_function(&format!("{name}/cached"), |b| {
            b.iter(|| {
                cache.decide(scope, std::hint::black_box(sql), || {
                    unreachable!("warmed above")
                })
            })
        });
    }
}

/// What a session does for a simple-protocol point select with a new
/// constant each time: shape it, find the shape's rewrite, fill it back.
fn shaped(c: &mut Criterion) {
    let enforcer = enforcer();
    let cache = AnalysisCache::new(64 << 20);
    let scope = "shape|38:1|analyst|clinic|1|{}|";
    let mut aid = 0u32;
    c.bench_function("point_select/shaped_new_constant", |b| {
        b.iter(|| {
            aid = aid.wrapping_add(7919) % 1_000_000;
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            let (shape, lits) = literals::normalize(&sql).expect("shape");
            let d = cache.decide(scope, &shape, || enforcer.rewrite(&shape));
            let rewritten = d.as_ref().as_ref().expect("allowed");
            literals::fill(&rewritten.sql, &lits).expect("filled")
        })
    });
}

criterion_group!(benches, rewrite, shaped);
criterion_main!(benches);
