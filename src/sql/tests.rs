//! Rewriter tests on SQL text alone (no database).

use std::collections::BTreeMap;

use super::schema::Schema;
use super::Enforcer;
use crate::policy::Role;

const POLICY: &str = r#"
upstream: { user: app_reader, password: x }
databases: [clinic]
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
listen: [chan, "alerts_*"]
"#;

fn enforcer() -> Enforcer {
    let mut role: Role = serde_yaml::from_str(POLICY).unwrap();
    role.name = crate::policy::RoleName::parse("analyst").unwrap();
    let schema = Schema::from_spec(&[
        (
            "public.patients",
            &[
                ("id", "integer"),
                ("clinic_id", "integer"),
                ("name", "text"),
                ("ssn", "text"),
                ("email", "text"),
                ("dob", "date"),
            ],
        ),
        (
            "public.visits",
            &[
                ("id", "integer"),
                ("patient_id", "integer"),
                ("clinic_id", "integer"),
                ("notes", "text"),
            ],
        ),
        ("public.clinics", &[("id", "integer"), ("name", "text")]),
        ("public.secrets", &[("v", "text")]),
    ]);
    let attrs = BTreeMap::from([("clinic_id".to_string(), "1".to_string())]);
    Enforcer::new(&role, "clinic", &attrs, &schema, "k3y")
}

fn ok(sql: &str) -> String {
    match enforcer().rewrite(sql) {
        Ok(r) => r.sql,
        Err(e) => panic!("{sql}: refused: {e}"),
    }
}

fn refused(sql: &str) -> String {
    match enforcer().rewrite(sql) {
        Ok(r) => panic!("{sql}: allowed as {}", r.sql),
        Err(e) => e.message,
    }
}

/// The masked subquery that replaces `patients` (alias and all).
fn patients_subquery(sql: &str) -> bool {
    sql.contains(r#"FROM "public"."patients" WHERE (clinic_id = '1'))"#)
}

#[test]
fn every_reference_to_a_listed_table_becomes_its_masked_subquery() {
    for sql in [
        "SELECT * FROM patients",
        "SELECT * FROM public.patients",
        "SELECT * FROM clinic.public.patients",
        "SELECT * FROM PATIENTS",
        "SELECT * FROM \"patients\"",
        "SELECT p FROM patients p",
        "SELECT row_to_json(p) FROM patients p",
        "SELECT (SELECT max(ssn) FROM patients)",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM patients WHERE ssn = 'x')",
        "SELECT 1 WHERE 'x' IN (SELECT ssn FROM patients)",
        "SELECT * FROM clinics c, LATERAL (SELECT * FROM patients p WHERE p.clinic_id = c.id) x",
        "SELECT ssn FROM patients UNION SELECT name FROM clinics",
        "SELECT name FROM clinics EXCEPT SELECT ssn FROM patients",
        "SELECT * FROM (SELECT * FROM (SELECT * FROM patients) a) b",
        "WITH x AS (SELECT * FROM patients) SELECT * FROM x",
        "COPY patients TO STDOUT",
        "COPY patients (ssn) TO STDOUT WITH (FORMAT csv)",
        "COPY (SELECT * FROM patients) TO STDOUT",
        "DECLARE c CURSOR FOR SELECT * FROM patients",
        "PREPARE q AS SELECT * FROM patients WHERE id = $1",
    ] {
        let out = ok(sql);
        assert!(patients_subquery(&out), "{sql}\n => {out}");
        assert!(!out.contains(r#"FROM patients"#), "{sql}\n => {out}");
    }
}

#[test]
fn the_masked_subquery_keeps_names_masks_and_omits_denied_columns() {
    let out = ok("SELECT * FROM patients");
    assert!(
        out.contains(r#"AS "ssn""#) && out.contains("right(\"ssn\", 4)"),
        "{out}"
    );
    assert!(out.contains(r#"AS "patients""#), "{out}");
    assert!(out.contains("date_trunc('year', \"dob\")"), "{out}");
    let visits = ok("SELECT * FROM visits");
    assert!(!visits.contains("notes"), "{visits}");
    assert!(visits.contains(r#""patient_id""#), "{visits}");
    let aliased = ok("SELECT p.ssn FROM patients AS p");
    assert!(aliased.contains(") AS p"), "{aliased}");
}

#[test]
fn a_cte_named_like_a_table_is_the_cte_outside_and_the_table_inside() {
    let out = ok("WITH patients AS (SELECT * FROM patients) SELECT * FROM patients");
    // Substituted once: inside the CTE's definition.
    assert_eq!(
        out.matches(r#"FROM "public"."patients""#).count(),
        1,
        "{out}"
    );
    assert!(out.ends_with("SELECT * FROM patients"), "{out}");
    let recursive = ok(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    );
    assert!(recursive.contains("FROM r WHERE"), "{recursive}");
    // A CTE is not in scope outside its query.
    assert!(
        refused("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) a, x")
            .contains("\"x\" is not in the policy")
    );
}

#[test]
fn functions_are_allowlisted_and_qualified() {
    let out = ok("SELECT lower(name), count(*), coalesce(email, 'x') FROM patients GROUP BY 1");
    assert!(out.contains(r#""pg_catalog"."lower"(name)"#), "{out}");
    assert!(out.contains("coalesce(email, 'x')"), "{out}");
    assert!(ok("SELECT ARRAY(SELECT id FROM clinics)").contains("ARRAY(SELECT"));
    assert!(ok("SELECT * FROM generate_series(1, 3)").contains(r#""pg_catalog"."generate_series""#));
    for (sql, name) in [
        ("SELECT set_config('role', 'postgres', false)", "set_config"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        (
            "SELECT query_to_xml('select * from secrets', true, true, '')",
            "query_to_xml",
        ),
        ("SELECT lo_get(1)", "lo_get"),
        ("SELECT pg_notify('c', ssn) FROM patients", "pg_notify"),
        ("SELECT public.leak(ssn) FROM patients", "public.leak"),
        ("SELECT leak(ssn) FROM patients", "leak"),
        (
            "SELECT * FROM dblink('x', 'select 1') AS t(a int)",
            "dblink",
        ),
        ("SELECT nextval('s')", "nextval"),
    ] {
        let message = refused(sql);
        assert!(
            message.contains(&format!("function {name}()")),
            "{sql}: {message}"
        );
    }
}

#[test]
fn set_config_of_a_setting_the_role_may_set_is_allowed_and_qualified() {
    // asyncpg, before and after its type introspection query.
    let out = ok("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new");
    assert!(
        out.contains(r#""pg_catalog"."set_config"('jit', 'off', false)"#),
        "{out}"
    );
    let out = ok("SELECT pg_catalog.set_config('jit', $1, false)");
    assert!(
        out.contains(r#""pg_catalog"."set_config"('jit', $1, false)"#),
        "{out}"
    );
    assert!(ok("SELECT set_config('DateStyle', 'ISO', true)").contains("set_config"));
    // Its value is an expression like any other: checked and rewritten.
    assert!(
        refused("SELECT set_config('jit', pg_read_file('x'), false)")
            .contains("function pg_read_file()")
    );
    for sql in [
        "SELECT set_config('search_path', 'evil', false)",
        "SELECT set_config('session_authorization', 'postgres', false)",
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT set_config($1, 'off', false)",
        "SELECT set_config('ji' || 't', 'off', false)",
        "SELECT set_config(E'jit', 'off', false)",
        "SELECT set_config('jit', 'off')",
        "SELECT public.set_config('jit', 'off', false)",
    ] {
        let message = refused(sql);
        assert!(message.contains("set_config()"), "{sql}: {message}");
    }
}

#[test]
fn relations_outside_the_policy_are_refused_by_name() {
    for (sql, name) in [
        ("SELECT * FROM secrets", "secrets"),
        ("SELECT * FROM public.secrets", "public.secrets"),
        ("SELECT * FROM other.patients", "other.patients"),
        (
            "SELECT * FROM otherdb.public.patients",
            "otherdb.public.patients",
        ),
        ("SELECT * FROM clinics JOIN secrets ON true", "secrets"),
    ] {
        let message = refused(sql);
        assert!(
            message.contains(&format!("relation \"{name}\"")),
            "{sql}: {message}"
        );
    }
}

#[test]
fn catalog_relations_are_qualified_and_value_bearing_ones_closed() {
    let out = ok("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace");
    assert!(out.contains(r#""pg_catalog"."pg_class" c"#), "{out}");
    for sql in [
        "SELECT * FROM pg_stats",
        "SELECT * FROM pg_catalog.pg_statistic",
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_authid",
        "SELECT * FROM pg_largeobject",
    ] {
        assert!(refused(sql).contains("reading pg_catalog."), "{sql}");
    }
}

#[test]
fn statements_outside_the_closed_list_are_refused_with_a_reason() {
    for (sql, reason) in [
        (
            "DO $$ BEGIN PERFORM 1; END $$",
            "DO blocks are not allowed for role \"analyst\"",
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "CREATE FUNCTION",
        ),
        (
            "CREATE TEMP TABLE t AS SELECT * FROM patients",
            "CREATE TEMP",
        ),
        ("SET ROLE postgres", "SET ROLE"),
        (
            "SET SESSION AUTHORIZATION postgres",
            "SET SESSION AUTHORIZATION",
        ),
        ("SET search_path = evil", "SET search_path"),
        ("COPY patients TO '/tmp/x'", "COPY to a file or program"),
        (
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "COPY to a file or program",
        ),
        ("COPY patients FROM STDIN", "writing"),
        ("INSERT INTO clinics VALUES (9, 'x')", "writing"),
        ("UPDATE patients SET ssn = 'x'", "writing"),
        ("DELETE FROM patients", "writing"),
        ("NOTIFY c, 'x'", "NOTIFY"),
        ("SELECT * INTO t FROM patients", "SELECT … INTO"),
        ("SELECT * FROM patients FOR UPDATE", "row locks"),
        ("TABLE patients", "could not analyze"),
        (
            "WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d",
            "data-modifying",
        ),
        ("EXPLAIN ANALYZE SELECT * FROM visits", "EXPLAIN ANALYZE"),
        ("EXPLAIN (ANALYZE) SELECT * FROM visits", "EXPLAIN ANALYZE"),
        ("EXPLAIN SELECT name FROM patients", "hash-masked"),
        ("SELECT 1; SELECT * FROM secrets", "secrets"),
        (
            "SELECT 1 FROM patients WHERE ssn OPERATOR(public.=) 'x'",
            "operators outside pg_catalog",
        ),
        ("VACUUM patients", "VACUUM"),
        ("SET client_encoding = 'SJIS'", "SET client_encoding"),
        ("SET NAMES 'BIG5'", "SET NAMES"),
        // The Kelvin sign is not `k` to PostgreSQL: `kiosk` is not the CTE.
        (
            "WITH \u{212A}iosk AS (SELECT 1) SELECT * FROM kiosk",
            "relation \"kiosk\"",
        ),
        ("LOAD 'x'", "LOAD"),
        ("SELEC 1", "could not analyze"),
    ] {
        let message = refused(sql);
        assert!(message.contains(reason), "{sql}: {message}");
        assert!(message.starts_with("pgward: "), "{sql}: {message}");
    }
}

#[test]
fn safe_session_statements_pass_unchanged() {
    for sql in [
        "SET statement_timeout = 5000",
        "SET TIME ZONE 'UTC'",
        "RESET ALL",
        "SHOW search_path",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "DISCARD ALL",
        "FETCH 10 FROM c",
        "CLOSE c",
        "DEALLOCATE q",
        "LISTEN chan",
        "LISTEN alerts_ward3",
        "UNLISTEN *",
        "SET client_encoding = 'UTF8'",
        "SET NAMES 'utf-8'",
    ] {
        assert_eq!(ok(sql), sql);
    }
    assert_eq!(ok("MOVE NEXT IN c"), "MOVE NEXT IN c");
    assert_eq!(ok("move forward 5 from c"), "MOVE FORWARD 5 FROM c");
    // FROM / IN may be left out (asyncpg's Cursor.forward()).
    assert_eq!(
        ok("MOVE FORWARD 5 __asyncpg_portal_1__"),
        "MOVE FORWARD 5 FROM __asyncpg_portal_1__"
    );
    assert_eq!(ok("MOVE c"), "MOVE NEXT FROM c");
    assert_eq!(ok("FETCH 10 c"), "FETCH 10 FROM c");
    assert_eq!(
        ok("fetch backward all \"MyCursor\""),
        r#"FETCH BACKWARD ALL FROM "MyCursor""#
    );
    assert!(refused("MOVE FORWARD 5 c; SELECT 1").contains("could not analyze"));
    assert!(refused("FETCH 5 FROM FROM c").contains("could not analyze"));
}

#[test]
fn listen_only_on_channels_the_policy_lists() {
    assert_eq!(ok("LISTEN CHAN"), "LISTEN CHAN");
    for sql in ["LISTEN patient_updates", "LISTEN \"Chan\"", "LISTEN alerts"] {
        let message = refused(sql);
        assert!(
            message.contains("LISTEN") && message.contains("listen:"),
            "{sql}: {message}"
        );
    }
}

#[test]
fn application_name_keeps_pgwards_tag() {
    // pgjdbc sends this while connecting; refusing it would fail the login.
    assert_eq!(
        ok("SET application_name = 'PostgreSQL JDBC Driver'"),
        "SET application_name = DEFAULT"
    );
    assert_eq!(
        ok("set local Application_Name to 'pgward:bob'"),
        "SET LOCAL Application_Name = DEFAULT"
    );
    assert_eq!(ok("RESET application_name"), "RESET application_name");
    assert!(refused("SET application_name = 'x'; SET search_path = evil").contains("search_path"));
}

#[test]
fn pgjdbc_primary_key_metadata_is_allowed() {
    // DatabaseMetaData.getPrimaryKeys (pgjdbc 42.5), trimmed.
    let out = ok(
        "SELECT ct.relname, a.attname, (information_schema._pg_expandarray(i.indkey)).n \
         FROM pg_catalog.pg_class ct JOIN pg_catalog.pg_attribute a ON ct.oid = a.attrelid \
         JOIN (SELECT i.indexrelid, i.indrelid, i.indisprimary, \
               information_schema._pg_expandarray(i.indkey) AS keys FROM pg_catalog.pg_index i) i \
           ON a.attnum = (i.keys).x AND a.attrelid = i.indrelid \
         WHERE ct.relname = E'patients' AND i.indisprimary",
    );
    assert!(
        out.contains("information_schema._pg_expandarray(i.indkey)"),
        "{out}"
    );
    assert!(refused(
        "SELECT information_schema._pg_truetypid(a, t) FROM pg_attribute a, pg_type t"
    )
    .contains("information_schema._pg_truetypid"));
}

#[test]
fn output_is_a_fixpoint_of_parse_and_print() {
    for sql in [
        "SELECT 'it''s', E'\\n', $$dollar$$ FROM patients",
        "SELECT * FROM patients /* comment; DROP TABLE x */ WHERE id = 1 -- trailing",
        "select id,ssn from patients where ssn like '%1%' order by 1 limit 5 offset 1",
        // Not a Unicode identifier to sqlparser: `U & "…"`, and printed so,
        // which is how PostgreSQL then reads it too.
        "SELECT U&\"d\\0061t\" FROM patients",
    ] {
        let once = ok(sql);
        let statements = super::parse::parse(&once).unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].to_string(), once);
        assert!(!once.contains("--") && !once.contains("/*"), "{once}");
    }
    assert!(ok("SELECT U&\"d\\0061t\" FROM patients").contains("U & \"d\\0061t\""));
}

#[test]
fn row_filter_attributes_are_quoted_literals() {
    let mut role: Role = serde_yaml::from_str(POLICY).unwrap();
    role.name = crate::policy::RoleName::parse("analyst").unwrap();
    let schema = Schema::from_spec(&[(
        "public.patients",
        &[
            ("id", "integer"),
            ("clinic_id", "integer"),
            ("name", "text"),
            ("ssn", "text"),
            ("email", "text"),
            ("dob", "date"),
        ],
    )]);
    let attrs = BTreeMap::from([("clinic_id".to_string(), "1' OR '1'='1".to_string())]);
    let enf = Enforcer::new(&role, "clinic", &attrs, &schema, "k");
    let out = enf.rewrite("SELECT id FROM patients").unwrap().sql;
    assert!(
        out.contains("WHERE (clinic_id = '1'' OR ''1''=''1')"),
        "{out}"
    );
}

#[test]
fn write_statements_are_refused_without_the_write_class() {
    let message =
        refused("MERGE INTO clinics c USING clinics d ON c.id = d.id WHEN MATCHED THEN DELETE");
    assert!(message.contains("do not include write"), "{message}");
}

fn writer() -> Enforcer {
    let mut role: Role = serde_yaml::from_str(&POLICY.replace("[read]", "[read, write]")).unwrap();
    role.name = crate::policy::RoleName::parse("clerk").unwrap();
    let schema = Schema::from_spec(&[
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
                ("notes", "text"),
            ],
        ),
        ("public.clinics", &[("id", "integer"), ("name", "text")]),
    ]);
    let attrs = BTreeMap::from([("clinic_id".to_string(), "1".to_string())]);
    Enforcer::new(&role, "clinic", &attrs, &schema, "k3y")
}

fn write_ok(sql: &str) -> String {
    match writer().rewrite(sql) {
        Ok(r) => r.sql,
        Err(e) => panic!("{sql}: refused: {e}"),
    }
}

fn write_refused(sql: &str) -> String {
    match writer().rewrite(sql) {
        Ok(r) => panic!("{sql}: allowed as {}", r.sql),
        Err(e) => e.message,
    }
}

#[test]
fn updates_and_deletes_join_the_masked_filtered_rows_and_read_masked_values() {
    let out = write_ok("UPDATE patients SET phone = ssn WHERE id = 3");
    assert!(
        out.starts_with(
            r#"UPDATE "public"."patients" AS "pgward_t" SET phone = "patients".ssn FROM (SELECT"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"WHERE (clinic_id = '1')) AS "patients""#),
        "{out}"
    );
    assert!(
        out.contains(r#""pgward_t".ctid = "patients"."pgward_ctid""#),
        "{out}"
    );
    assert!(out.ends_with(r#"AND ("patients".id = 3)"#), "{out}");
    let aliased = write_ok(
        "UPDATE patients p SET phone = p.phone || 'x' FROM clinics c WHERE c.id = p.clinic_id",
    );
    assert!(
        aliased.contains(r#"AS "p", (SELECT "id", "name" FROM "public"."clinics") c WHERE"#),
        "{aliased}"
    );
    let del = write_ok("DELETE FROM visits v WHERE v.clinic_id = 1 AND patient_id = 3");
    assert!(
        del.starts_with(r#"DELETE FROM "public"."visits" AS "pgward_t" USING (SELECT"#),
        "{del}"
    );
    assert!(
        del.ends_with(r#"AND (v.clinic_id = 1 AND "v".patient_id = 3)"#),
        "{del}"
    );
}

#[test]
fn returning_is_computed_over_the_masked_projection() {
    let out = write_ok("UPDATE patients SET email = 'a@b.org' WHERE id = 3 RETURNING ssn, email");
    assert!(out.starts_with(r#"WITH "pgward_w" AS (UPDATE"#), "{out}");
    assert!(
        out.contains(
            r#"RETURNING "pgward_t".*) SELECT "patients".ssn, "patients".email FROM (SELECT"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"right("ssn", 4)"#) && out.ends_with(r#"FROM "pgward_w") AS "patients""#),
        "{out}"
    );
    let del = write_ok("DELETE FROM visits WHERE id = 1 RETURNING *");
    assert!(
        del.contains(r#"SELECT * FROM (SELECT "id", "patient_id", "clinic_id" FROM "pgward_w")"#),
        "{del}"
    );
}

#[test]
fn inserts_keep_only_rows_inside_the_filter() {
    let out =
        write_ok("INSERT INTO visits (id, patient_id, clinic_id) VALUES (1, 3, 1), (2, 3, 2)");
    assert_eq!(
        out,
        r#"INSERT INTO "public"."visits" AS "pgward_t" ("id", "patient_id", "clinic_id") SELECT * FROM (SELECT CAST("id" AS INTEGER) AS "id", CAST("patient_id" AS INTEGER) AS "patient_id", CAST("clinic_id" AS INTEGER) AS "clinic_id" FROM (VALUES (1, 3, 1), (2, 3, 2)) AS "pgward_s" ("id", "patient_id", "clinic_id")) AS "visits" WHERE (clinic_id = '1')"#
    );
    let copy = write_ok("INSERT INTO visits (id, patient_id, clinic_id) SELECT id + 100, id, clinic_id FROM patients ON CONFLICT DO NOTHING");
    assert!(
        copy.contains(r#"FROM "public"."patients" AS "patients" WHERE (clinic_id = '1'))"#),
        "{copy}"
    );
    assert!(copy.ends_with("ON CONFLICT DO NOTHING"), "{copy}");
}

#[test]
fn writes_that_could_leak_or_escape_the_filter_are_refused() {
    for (sql, reason) in [
        (
            "UPDATE visits SET notes = 'x'",
            "writing column public.visits.notes",
        ),
        (
            "INSERT INTO visits VALUES (1, 3, 1, 'n')",
            "without a column list",
        ),
        (
            "INSERT INTO visits (id, notes) VALUES (1, 'n')",
            "writing column public.visits.notes",
        ),
        (
            "UPDATE patients SET clinic_id = 2",
            "the role's row filter reads it",
        ),
        ("UPDATE patients SET phone = pgward_t.ssn", "reserved"),
        (
            "DELETE FROM patients USING patients AS PGWARD_T",
            "reserved",
        ),
        ("UPDATE secrets SET v = 'x'", "relation \"secrets\""),
        (
            "DELETE FROM pg_catalog.pg_class",
            "only tables the role's policy lists",
        ),
        (
            "INSERT INTO visits (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET clinic_id = 2",
            "ON CONFLICT DO UPDATE",
        ),
        ("COPY visits FROM STDIN", "COPY … FROM"),
        ("INSERT INTO patients DEFAULT VALUES", "DEFAULT VALUES"),
        (
            "UPDATE patients SET phone = ssn FROM secrets",
            "relation \"secrets\"",
        ),
        (
            "UPDATE patients SET phone = diagnosis FROM clinics c WHERE patients.id = c.id",
            "unqualified names",
        ),
        (
            "UPDATE patients SET phone = xmin::text",
            "unqualified names",
        ),
        (
            "DELETE FROM visits USING clinics c WHERE notes_v2 = 'x' AND c.id = 1",
            "unqualified names",
        ),
    ] {
        let message = write_refused(sql);
        assert!(message.contains(reason), "{sql}: {message}");
    }
}

#[test]
fn plain_column_reads_of_one_table_get_the_table_with_its_filter() {
    assert_eq!(
        ok("SELECT id, clinic_id FROM patients WHERE id = 3"),
        r#"SELECT id, clinic_id FROM "public"."patients" AS "patients" WHERE (clinic_id = '1') AND (id = 3)"#
    );
    assert_eq!(
        ok("SELECT count(*) FROM patients p"),
        r#"SELECT "pg_catalog"."count"(*) FROM "public"."patients" p WHERE (clinic_id = '1')"#
    );
    assert!(
        ok("SELECT p.id FROM patients p ORDER BY p.clinic_id LIMIT 1")
            .contains(r#"FROM "public"."patients" p WHERE (clinic_id = '1') ORDER BY"#)
    );
    // Anything that could reach a masked or denied column keeps the subquery.
    for sql in [
        "SELECT * FROM patients",
        "SELECT ssn FROM patients",
        "SELECT id FROM patients WHERE ssn = 'x'",
        "SELECT id FROM patients ORDER BY name",
        "SELECT p FROM patients p",
        "SELECT row_to_json(p.*) FROM patients p",
        "SELECT count(p.*) FROM patients p",
        "SELECT ARRAY[p.*] FROM patients p",
        "SELECT row(p.*) FROM patients p",
        "SELECT to_jsonb(patients) FROM patients",
        "SELECT id FROM patients GROUP BY patients",
        "SELECT (p).id FROM patients p",
        "SELECT p.ssn FROM patients p",
        "SELECT id FROM patients p WHERE EXISTS (SELECT 1 FROM visits v WHERE v.patient_id = p.id AND p.dob > now())",
        "SELECT id FROM patients WHERE id IN (SELECT patient_id FROM visits WHERE name LIKE 'x')",
        "SELECT count(*) FROM patients, visits",
        "SELECT id FROM patients JOIN visits ON true",
        "WITH x AS (SELECT 1) SELECT id FROM patients",
        "SELECT id FROM public.patients.id",
        "SELECT p.row_to_json FROM patients p",
        "SELECT patients.to_jsonb FROM patients",
        "SELECT xmin, ctid FROM patients",
        "SELECT \"É\" FROM patients É",
        "SELECT id FROM patients WHERE id = (SELECT 1)",
    ] {
        if let Ok(r) = enforcer().rewrite(sql) {
            assert!(patients_subquery(&r.sql), "{sql}\n => {}", r.sql);
        }
    }
}

#[test]
fn deep_nesting_is_refused_or_rewritten_never_a_crash() {
    // Test threads have the same 2 MiB stack as tokio's workers.
    for depth in [10, 50, 150, 199, 250, 5000] {
        let parens = format!(
            "SELECT {}id{} FROM patients",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        let _ = enforcer().rewrite(&parens);
        let subqueries = format!(
            "{}SELECT id FROM patients{}",
            "SELECT * FROM (".repeat(depth.min(400)),
            ") s".repeat(depth.min(400))
        );
        let _ = enforcer().rewrite(&subqueries);
        let calls = format!("SELECT {}1{}", "abs(".repeat(depth), ")".repeat(depth));
        let _ = enforcer().rewrite(&calls);
    }
}

#[test]
fn merge_matches_only_masked_filtered_rows_and_inserts_only_inside_the_filter() {
    let out = write_ok(
        "MERGE INTO patients p USING (VALUES (3, '123-45-6789')) AS s (id, x) ON p.ssn = s.x \
         WHEN MATCHED AND email LIKE '%@%' THEN UPDATE SET phone = ssn \
         WHEN NOT MATCHED THEN INSERT (id, clinic_id, phone) VALUES (s.id, 1, x)",
    );
    // The person's ON joins the source to the masked, filtered rows; the
    // target itself is matched only by row identity.
    assert!(
        out.starts_with(
            r#"MERGE INTO "public"."patients" AS "pgward_t" USING ((VALUES (3, '123-45-6789')) AS s (id, x) LEFT JOIN (SELECT"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"WHERE (clinic_id = '1')) AS "p" ON (p.ssn = s.x)"#),
        "{out}"
    );
    assert!(
        out.contains(r#") ON "pgward_t".tableoid = "p"."pgward_tableoid" AND "pgward_t".ctid = "p"."pgward_ctid" "#),
        "{out}"
    );
    // MATCHED reads masked values by bare name.
    assert!(
        out.contains(r#"WHEN MATCHED AND ("p".email LIKE '%@%') THEN UPDATE SET phone = "p".ssn"#),
        "{out}"
    );
    // NOT MATCHED: values computed once, in a LATERAL subquery, and the
    // row filter judged on them.
    assert!(
        out.contains(r#"FROM (SELECT CASE WHEN "p"."pgward_ctid" IS NULL THEN CAST((s.id) AS INTEGER) END AS "id", "#),
        "{out}"
    );
    assert!(
        out.contains(r#"CAST(("s".x) AS TEXT) END AS "phone") AS "patients") AS "pgward_v0""#),
        "{out}"
    );
    assert!(
        out.contains(
            r#"CROSS JOIN LATERAL (SELECT *, (clinic_id = '1') AS "pgward_ok" FROM (SELECT CASE"#
        ),
        "{out}"
    );
    assert!(
        out.ends_with(r#"WHEN NOT MATCHED AND ("pgward_v0"."pgward_ok") THEN INSERT (id, clinic_id, phone) VALUES ("pgward_v0"."id", "pgward_v0"."clinic_id", "pgward_v0"."phone")"#),
        "{out}"
    );
    // Bare names in MATCHED that are not the target's are the source's:
    // a column added since the schema was read, or a system column, cannot
    // come from the raw target.
    let other = write_ok(
        "MERGE INTO patients p USING clinics c ON p.id = c.id \
         WHEN MATCHED AND xmin IS NOT NULL THEN UPDATE SET phone = diagnosis",
    );
    assert!(
        other.contains(
            r#"WHEN MATCHED AND ("c".xmin IS NOT NULL) THEN UPDATE SET phone = "c".diagnosis"#
        ),
        "{other}"
    );
}

#[test]
fn merge_names_of_denied_columns_resolve_to_the_masked_row_where_they_do_not_exist() {
    let out = write_ok(
        "MERGE INTO visits v USING clinics c ON v.id = c.id \
         WHEN MATCHED AND notes IS NOT NULL THEN UPDATE SET patient_id = notes",
    );
    assert!(
        out.contains(
            r#"WHEN MATCHED AND ("v".notes IS NOT NULL) THEN UPDATE SET patient_id = "v".notes"#
        ),
        "{out}"
    );
    assert!(!out.contains(r#""notes" FROM"#), "{out}");
}

#[test]
fn merge_forms_that_could_leak_or_escape_the_filter_are_refused() {
    for (sql, reason) in [
        (
            "MERGE INTO patients p USING clinics c ON p.clinic_id = c.id WHEN MATCHED THEN UPDATE SET clinic_id = 2",
            "the role's row filter reads it",
        ),
        (
            "MERGE INTO visits v USING clinics c ON v.id = c.id WHEN MATCHED THEN UPDATE SET notes = 'x'",
            "writing column public.visits.notes",
        ),
        (
            "MERGE INTO visits v USING clinics c ON v.id = c.id WHEN NOT MATCHED THEN INSERT (id, patient_id) VALUES (c.id, 1)",
            "does not set clinic_id",
        ),
        (
            "MERGE INTO visits v USING clinics c ON v.id = c.id WHEN NOT MATCHED THEN INSERT VALUES (c.id, 1, 1, 'n')",
            "name the columns",
        ),
        (
            "MERGE INTO patients p USING clinics c ON p.id = (SELECT max(id) FROM patients) WHEN MATCHED THEN DELETE",
            "subqueries",
        ),
        (
            "MERGE INTO patients p USING clinics c ON p.id = c.id WHEN MATCHED AND EXISTS (SELECT 1 FROM visits) THEN DELETE",
            "subqueries",
        ),
        (
            "MERGE INTO patients p USING clinics c ON p.id = c.id WHEN MATCHED THEN UPDATE SET phone = (SELECT ssn)",
            "subqueries",
        ),
        (
            "MERGE INTO patients p USING clinics p ON true WHEN MATCHED THEN DELETE",
            "named like its target",
        ),
        (
            "MERGE INTO patients p USING clinics c ON p.id = c.id WHEN MATCHED THEN UPDATE SET phone = pgward_t.ssn",
            "reserved",
        ),
        (
            "MERGE INTO secrets s USING clinics c ON true WHEN MATCHED THEN DELETE",
            "relation \"secrets\"",
        ),
        (
            "WITH x AS (SELECT 1) MERGE INTO patients p USING x ON true WHEN MATCHED THEN DELETE",
            "data-modifying",
        ),
        (
            "MERGE INTO patients p USING secrets s ON true WHEN MATCHED THEN DELETE",
            "relation \"secrets\"",
        ),
    ] {
        let message = write_refused(sql);
        assert!(message.contains(reason), "{sql}: {message}");
    }
}

#[test]
fn a_filter_that_names_its_table_judges_new_rows_not_the_source() {
    let mut role: Role = serde_yaml::from_str(
        &POLICY
            .replace("[read]", "[read, write]")
            .replace(r#"rows: "clinic_id"#, r#"rows: "patients.clinic_id"#),
    )
    .unwrap();
    role.name = crate::policy::RoleName::parse("clerk").unwrap();
    let schema = Schema::from_spec(&[(
        "public.patients",
        &[("id", "integer"), ("clinic_id", "integer"), ("ssn", "text")],
    )]);
    let attrs = BTreeMap::from([("clinic_id".to_string(), "1".to_string())]);
    let enforcer = Enforcer::new(&role, "clinic", &attrs, &schema, "k3y");
    let rewrite = |sql: &str| match enforcer.rewrite(sql) {
        Ok(r) => r.sql,
        Err(e) => panic!("{sql}: {e}"),
    };
    // A source named like the table must not answer for the filter.
    let out = rewrite(
        "MERGE INTO patients AS t USING (VALUES (5000, 1)) AS patients (id, clinic_id) \
         ON t.id = patients.id WHEN NOT MATCHED THEN INSERT (id, clinic_id) VALUES (5000, 2)",
    );
    assert!(
        out.contains(r#"(SELECT *, (patients.clinic_id = '1') AS "pgward_ok" FROM (SELECT CASE WHEN "t"."pgward_ctid" IS NULL THEN CAST((5000) AS INTEGER) END AS "id", CASE WHEN "t"."pgward_ctid" IS NULL THEN CAST((2) AS INTEGER) END AS "clinic_id") AS "patients") AS "pgward_v0""#),
        "{out}"
    );
    let insert = rewrite("INSERT INTO patients (id, clinic_id) VALUES (5000, 2)");
    assert!(
        insert.ends_with(
            r#"AS "pgward_s" ("id", "clinic_id")) AS "patients" WHERE (patients.clinic_id = '1')"#
        ),
        "{insert}"
    );
}

#[test]
fn identifiers_are_cut_to_63_bytes_as_postgresql_cuts_them() {
    use sqlparser::ast::Ident;
    let long = "a".repeat(70);
    assert_eq!(super::walk::fold(&Ident::new(long)), "a".repeat(63));
    // 62 ASCII bytes and a two-byte letter: the letter does not fit.
    let wide = format!("{}é", "b".repeat(62));
    assert_eq!(
        super::walk::fold(&Ident::with_quote('"', wide)),
        "b".repeat(62)
    );
}

#[test]
fn listen_names_the_channel_as_postgresql_folds_it() {
    let mut role: Role = serde_yaml::from_str(POLICY).unwrap();
    role.name = crate::policy::RoleName::parse("analyst").unwrap();
    let long = "a".repeat(64);
    role.listen = vec!["kitchen".into(), "café".into(), format!("{long}*")];
    let schema = Schema::from_spec(&[("public.clinics", &[("id", "integer")])]);
    let e = Enforcer::new(&role, "clinic", &BTreeMap::new(), &schema, "k3y");
    assert!(e.rewrite("LISTEN KITCHEN").is_ok());
    assert!(e.rewrite("LISTEN café").is_ok());
    // PostgreSQL lowercases ASCII letters only: these are the channels
    // "\u{212A}itchen" (Kelvin sign) and "cafÉ", which the policy does not list.
    for sql in ["LISTEN \u{212A}itchen", "LISTEN CAFÉ"] {
        let message = e.rewrite(sql).expect_err(sql).message;
        assert!(message.contains("listen:"), "{sql}: {message}");
    }
    // Cut to 63 bytes, the channel is 63 a's: not under the 64-byte prefix.
    let sql = format!("LISTEN {long}x");
    assert!(e.rewrite(&sql).is_err(), "{sql}");
}

#[test]
fn set_config_values_are_walked_and_odd_names_refused() {
    assert!(patients_subquery(&ok(
        "SELECT set_config('jit', (SELECT ssn FROM patients LIMIT 1), false)"
    )));
    for sql in [
        "SELECT set_config('jit', (SELECT v FROM secrets), false)",
        "SELECT set_config('jit', 'off', (SELECT v FROM secrets) IS NULL)",
        "EXECUTE q(set_config('jit', (SELECT v FROM secrets), false))",
    ] {
        assert!(refused(sql).contains("secrets"), "{sql}");
    }
    for sql in [
        "SELECT set_config('jit ', 'off', false)",
        "SELECT set_config(U&'jit', 'off', false)",
        "SELECT set_config($$jit$$, 'off', false)",
        "SELECT set_config(setting_name => 'jit', new_value => 'x', is_local => false)",
        "SELECT * FROM set_config('jit', 'off', false)",
        "SELECT set_config('jit', 'off', false) OVER ()",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('role', 'postgres', false)",
        "SELECT set_config('pgward.x', 'y', false)",
    ] {
        assert!(refused(sql).contains("set_config()"), "{sql}");
    }
    assert!(
        refused("SELECT set_config('search_'\n'path', 'x', false)").contains("could not analyze")
    );
}
