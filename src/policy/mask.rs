//! Column masks: what a restricted role sees instead of a column's value.
//!
//! A mask is an SQL expression evaluated *inside the database* over the real
//! column, so WHERE, JOIN, ORDER BY and error messages only ever meet the
//! masked value. Each mask keeps the column's type where it can (a masked
//! date is still a date, a masked integer key still an integer), so BI tools
//! and joins keep working.

use std::fmt;

use serde::Deserialize;

/// A mask as written in a policy file: `{ mask: partial, keep_last: 4 }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "mask", rename_all = "lowercase", deny_unknown_fields)]
pub enum Mask {
    /// A constant: `****` for text (or `value`), NULL for other types.
    Redact {
        #[serde(default)]
        value: Option<String>,
    },
    /// NULL of the column's type.
    Null {},
    /// Keep the first and/or last characters, star the rest. Values too
    /// short to hide anything are starred completely.
    Partial {
        #[serde(default)]
        keep_first: u8,
        #[serde(default)]
        keep_last: u8,
    },
    /// A keyed, deterministic hash: equal inputs give equal outputs, so
    /// joins and GROUP BY on masked keys still work. Text stays text
    /// (64 hex digits); integers stay integers.
    Hash {},
    /// Keep the domain: `***@example.org`.
    Email {},
    /// Truncate a date or timestamp to the first day of its year.
    Year {},
    /// Truncate a date or timestamp to the first day of its month.
    Month {},
    /// Round a number to a multiple of `to` (default 10).
    Round {
        #[serde(default = "default_round")]
        to: u32,
    },
    /// A custom SQL expression; `{{ column }}` stands for the column.
    Expr { sql: String },
}

fn default_round() -> u32 {
    10
}

/// Broad families of PostgreSQL types, enough to decide what a mask may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeClass {
    Text,
    Integer,
    Numeric,
    Date,
    Timestamp,
    Other,
}

impl TypeClass {
    /// Classifies a type as `format_type()` prints it (`character varying(20)`,
    /// `timestamp with time zone`, `public.citext`, …).
    pub fn of(pg_type: &str) -> TypeClass {
        let t = pg_type.trim().to_ascii_lowercase();
        let base = t.split('(').next().unwrap_or("").trim();
        let base = base.rsplit('.').next().unwrap_or(base);
        match base {
            "text" | "character varying" | "varchar" | "character" | "char" | "bpchar"
            | "citext" | "name" => TypeClass::Text,
            "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" => TypeClass::Integer,
            "numeric" | "decimal" | "real" | "double precision" | "float4" | "float8" | "money" => {
                TypeClass::Numeric
            }
            "date" => TypeClass::Date,
            b if b.starts_with("timestamp") => TypeClass::Timestamp,
            _ => TypeClass::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError(pub String);

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MaskError {}

/// Quotes a string as an SQL literal that means the same thing whatever
/// `standard_conforming_strings` says: backslashes force the `E''` form.
pub fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if doubled.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// Quotes an identifier (`"Weird ""Name"""`).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Mask {
    pub fn name(&self) -> &'static str {
        match self {
            Mask::Redact { .. } => "redact",
            Mask::Null {} => "null",
            Mask::Partial { .. } => "partial",
            Mask::Hash {} => "hash",
            Mask::Email {} => "email",
            Mask::Year {} => "year",
            Mask::Month {} => "month",
            Mask::Round { .. } => "round",
            Mask::Expr { .. } => "expr",
        }
    }

    /// Checks that the mask makes sense for a column of `pg_type`.
    pub fn check_type(&self, pg_type: &str) -> Result<(), MaskError> {
        let class = TypeClass::of(pg_type);
        let ok = match self {
            Mask::Redact { .. } | Mask::Null {} | Mask::Hash {} | Mask::Expr { .. } => true,
            Mask::Partial { .. } | Mask::Email {} => class == TypeClass::Text,
            Mask::Year {} | Mask::Month {} => {
                matches!(class, TypeClass::Date | TypeClass::Timestamp)
            }
            Mask::Round { .. } => matches!(class, TypeClass::Integer | TypeClass::Numeric),
        };
        if ok {
            Ok(())
        } else {
            Err(MaskError(format!(
                "mask {} does not fit a column of type {pg_type}",
                self.name()
            )))
        }
    }

    /// Checks the mask's own parameters (independent of any column).
    pub fn validate(&self) -> Result<(), MaskError> {
        match self {
            Mask::Partial {
                keep_first: 0,
                keep_last: 0,
            } => Err(MaskError(
                "partial mask keeps nothing: set keep_first and/or keep_last, or use redact".into(),
            )),
            Mask::Round { to: 0 } => Err(MaskError("round mask needs `to` of at least 1".into())),
            Mask::Expr { sql } if !sql.contains("{{ column }}") => Err(MaskError(
                "expr mask must use {{ column }} to refer to the column".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The SQL expression that replaces `column` (an already-quoted column
    /// reference) of type `pg_type`. `hash_key` keys the hash mask.
    pub fn sql(&self, column: &str, pg_type: &str, hash_key: &str) -> Result<String, MaskError> {
        self.validate()?;
        self.check_type(pg_type)?;
        let class = TypeClass::of(pg_type);
        let ty = pg_type;
        Ok(match self {
            Mask::Redact { value } => match (class, value) {
                (TypeClass::Text, Some(v)) => format!("CAST({} AS {ty})", quote_literal(v)),
                (TypeClass::Text, None) => {
                    format!("CASE WHEN {column} IS NULL THEN NULL ELSE CAST('****' AS {ty}) END")
                }
                _ => format!("CAST(NULL AS {ty})"),
            },
            Mask::Null {} => format!("CAST(NULL AS {ty})"),
            Mask::Partial {
                keep_first,
                keep_last,
            } => {
                let (f, l) = (u32::from(*keep_first), u32::from(*keep_last));
                let keep = f + l;
                // Too short to hide anything: star it all.
                format!(
                    "CAST(CASE WHEN {column} IS NULL THEN NULL \
                     WHEN length({column}) <= {keep} THEN repeat('*', length({column})) \
                     ELSE left({column}, {f}) || repeat('*', length({column}) - {keep}) || right({column}, {l}) \
                     END AS {ty})"
                )
            }
            Mask::Hash {} => {
                let digest = format!(
                    "encode(sha256(convert_to({} || CAST({column} AS text), 'UTF8')), 'hex')",
                    quote_literal(hash_key)
                );
                match class {
                    TypeClass::Integer => format!(
                        "CASE WHEN {column} IS NULL THEN NULL ELSE \
                         CAST(CAST(CAST('x' || left({digest}, {hex}) AS bit({bits})) AS bigint) AS {ty}) END",
                        hex = integer_hex_digits(ty),
                        bits = integer_hex_digits(ty) * 4,
                    ),
                    TypeClass::Text => format!(
                        "CASE WHEN {column} IS NULL THEN NULL ELSE CAST({digest} AS {ty}) END"
                    ),
                    _ => format!("CASE WHEN {column} IS NULL THEN NULL ELSE {digest} END"),
                }
            }
            Mask::Email {} => format!(
                "CAST(CASE WHEN {column} IS NULL THEN NULL \
                 WHEN position('@' IN {column}) = 0 THEN '***' \
                 ELSE '***@' || split_part({column}, '@', 2) END AS {ty})"
            ),
            Mask::Year {} => format!("CAST(date_trunc('year', {column}) AS {ty})"),
            Mask::Month {} => format!("CAST(date_trunc('month', {column}) AS {ty})"),
            Mask::Round { to } => {
                format!("CAST(round(CAST({column} AS numeric) / {to}) * {to} AS {ty})")
            }
            Mask::Expr { sql } => format!("({})", sql.replace("{{ column }}", column)),
        })
    }
}

/// Hex digits of the hash kept for an integer type, so the result fits and
/// stays non-negative: 3 for smallint (12 bits), 7 for integer, 15 for bigint.
fn integer_hex_digits(pg_type: &str) -> u32 {
    match pg_type.trim().to_ascii_lowercase().as_str() {
        "smallint" | "int2" => 3,
        "integer" | "int4" | "int" => 7,
        _ => 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Mask, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn masks_parse_from_policy_yaml() {
        assert_eq!(
            parse("{mask: partial, keep_last: 4}").unwrap(),
            Mask::Partial {
                keep_first: 0,
                keep_last: 4
            }
        );
        assert_eq!(parse("{mask: hash}").unwrap(), Mask::Hash {});
        assert_eq!(parse("{mask: round}").unwrap(), Mask::Round { to: 10 });
        let err = parse("{mask: parital}").unwrap_err().to_string();
        assert!(err.contains("unknown variant `parital`"), "{err}");
        assert!(
            parse("{mask: hash, keep_last: 2}").is_err(),
            "unknown fields are errors"
        );
    }

    #[test]
    fn type_classes() {
        assert_eq!(TypeClass::of("character varying(20)"), TypeClass::Text);
        assert_eq!(
            TypeClass::of("timestamp with time zone"),
            TypeClass::Timestamp
        );
        assert_eq!(TypeClass::of("public.citext"), TypeClass::Text);
        assert_eq!(TypeClass::of("bigint"), TypeClass::Integer);
        assert_eq!(TypeClass::of("jsonb"), TypeClass::Other);
    }

    #[test]
    fn masks_refuse_columns_they_do_not_fit() {
        assert!(Mask::Year {}.sql("c", "text", "k").is_err());
        assert!(Mask::Email {}.sql("c", "integer", "k").is_err());
        assert!(Mask::Round { to: 10 }.sql("c", "date", "k").is_err());
        assert!(Mask::Partial {
            keep_first: 0,
            keep_last: 0
        }
        .validate()
        .is_err());
        assert!(Mask::Expr { sql: "1".into() }.validate().is_err());
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
        assert_eq!(quote_literal(r"a\'; drop"), r"E'a\\''; drop'");
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }
}
