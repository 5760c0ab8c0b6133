//! Parsing statement text with sqlparser's PostgreSQL dialect.
//!
//! The recursion limit is raised above sqlparser's default so that real
//! generated SQL (BI tools nest deeply) parses, while a hostile
//! `((((…))))` still ends in an error rather than a stack overflow.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// How deep expressions and queries may nest.
pub const RECURSION_LIMIT: usize = 200;

/// Parses one or more `;`-separated statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>, String> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_lexical_forms_parse() {
        for sql in [
            "SELECT E'a\\'b', U&\"d\\0061t\\+000061\", $$x$y$$, $tag$q$tag$",
            "SELECT x::int, ARRAY[1,2], '{1}'::int[], a->>'b', a @> b FROM t",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "BEGIN; SELECT 1; COMMIT",
        ] {
            assert!(parse(sql).is_ok(), "{sql}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        let err = parse(&deep).expect_err("nesting beyond the limit");
        assert!(err.contains("recursion"), "{err}");
        let fine = format!("SELECT {}1{}", "(".repeat(50), ")".repeat(50));
        assert!(parse(&fine).is_ok());
    }
}
