//! Every mask, evaluated by a real PostgreSQL: the values a restricted role
//! would see, and that the column keeps its type.

use pgward::policy::mask::{quote_ident, Mask};

use crate::harness::db;

/// Evaluates `mask` over one value of `pg_type`; returns (value, type) as
/// psql prints them (NULL as the empty string).
fn masked(mask: &str, pg_type: &str, value_sql: &str) -> (String, String) {
    let mask: Mask = serde_yaml::from_str(mask).expect("mask yaml");
    let col = quote_ident("c");
    let expr = mask.sql(&col, pg_type, "test-key").expect("mask sql");
    let out = db().sql(
        "postgres",
        &format!(
            "SELECT {expr}, pg_typeof({expr}) FROM (VALUES (CAST({value_sql} AS {pg_type}))) AS t(c)"
        ),
    );
    let (value, ty) = out.split_once('|').expect("two columns");
    (value.to_string(), ty.to_string())
}

#[test]
fn partial_keeps_the_ends_and_hides_short_values_entirely() {
    assert_eq!(
        masked("{mask: partial, keep_last: 4}", "text", "'123-45-6789'"),
        ("*******6789".into(), "text".into())
    );
    assert_eq!(
        masked(
            "{mask: partial, keep_first: 1, keep_last: 1}",
            "character varying(20)",
            "'Jonas'"
        ),
        ("J***s".into(), "character varying".into())
    );
    assert_eq!(
        masked("{mask: partial, keep_last: 4}", "text", "'6789'").0,
        "****"
    );
    assert_eq!(
        masked("{mask: partial, keep_last: 4}", "text", "NULL").0,
        ""
    );
}

#[test]
fn hash_is_keyed_deterministic_and_keeps_the_type() {
    let (a, ty) = masked("{mask: hash}", "text", "'Ada Okafor'");
    assert_eq!(ty, "text");
    assert_eq!(a.len(), 64);
    assert_eq!(
        masked("{mask: hash}", "text", "'Ada Okafor'").0,
        a,
        "deterministic"
    );
    assert_ne!(masked("{mask: hash}", "text", "'Ben Okafor'").0, a);
    let (n, ty) = masked("{mask: hash}", "integer", "42");
    assert_eq!(ty, "integer");
    assert_ne!(n, "42");
    assert!(n.parse::<i32>().unwrap() >= 0);
    assert_eq!(masked("{mask: hash}", "bigint", "42").1, "bigint");
    assert_eq!(masked("{mask: hash}", "integer", "NULL").0, "");
}

#[test]
fn email_year_month_round() {
    assert_eq!(
        masked("{mask: email}", "text", "'patient7@example.org'").0,
        "***@example.org"
    );
    assert_eq!(masked("{mask: email}", "text", "'no-at-sign'").0, "***");
    assert_eq!(
        masked("{mask: year}", "date", "'1985-07-14'"),
        ("1985-01-01".into(), "date".into())
    );
    assert_eq!(
        masked(
            "{mask: month}",
            "timestamp with time zone",
            "'2024-03-17 10:00+00'"
        )
        .1,
        "timestamp with time zone"
    );
    assert_eq!(
        masked("{mask: round}", "integer", "1234"),
        ("1230".into(), "integer".into())
    );
    assert_eq!(
        masked("{mask: round, to: 1000}", "numeric", "123456.78").0,
        "123000"
    );
}

#[test]
fn redact_null_and_custom_expressions() {
    assert_eq!(
        masked("{mask: redact}", "text", "'secret'"),
        ("****".into(), "text".into())
    );
    assert_eq!(
        masked("{mask: redact, value: 'n/a'}", "text", "'secret'").0,
        "n/a"
    );
    assert_eq!(
        masked("{mask: redact}", "integer", "7"),
        ("".into(), "integer".into())
    );
    assert_eq!(
        masked("{mask: null}", "date", "'2020-01-01'"),
        ("".into(), "date".into())
    );
    assert_eq!(
        masked(
            "{mask: expr, sql: \"left({{ column }}, 1) || '.'\"}",
            "text",
            "'Ada'"
        )
        .0,
        "A."
    );
}
