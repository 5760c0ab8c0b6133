//! Row filters: `clinic_id = {{ user.clinic_id }}`.
//!
//! A filter is SQL written by the policy author with placeholders for the
//! person's attributes. Placeholders become quoted literals when a session
//! starts — never spliced-in text — so an attribute value like
//! `1 OR true` or `'; DROP TABLE x; --` is just a string the database
//! compares against.

use std::collections::{BTreeMap, BTreeSet};

use super::mask::quote_literal;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Sql(String),
    Attr(String),
}

/// A parsed row filter template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowFilter {
    source: String,
    pieces: Vec<Piece>,
}

impl RowFilter {
    /// Parses `{{ user.NAME }}` placeholders. Anything else inside `{{ }}` is
    /// an error, as is an unclosed placeholder.
    pub fn parse(source: &str) -> Result<RowFilter, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Sql(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in row filter {source:?}"))?;
            let inner = after[..end].trim();
            let attr = inner.strip_prefix("user.").ok_or_else(|| {
                format!("unknown placeholder {{{{ {inner} }}}}: use {{{{ user.ATTRIBUTE }}}}")
            })?;
            crate::store::validate_attr_key(attr)?;
            pieces.push(Piece::Attr(attr.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Sql(rest.to_string()));
        }
        if rest.contains("}}") {
            return Err(format!("stray }}}} in row filter {source:?}"));
        }
        if source.trim().is_empty() {
            return Err("row filter is empty".into());
        }
        Ok(RowFilter {
            source: source.to_string(),
            pieces,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Attribute names the filter needs.
    pub fn attributes(&self) -> BTreeSet<&str> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Attr(a) => Some(a.as_str()),
                Piece::Sql(_) => None,
            })
            .collect()
    }

    /// The filter with attributes as literals; an error names a missing one.
    pub fn render(&self, attrs: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for piece in &self.pieces {
            match piece {
                Piece::Sql(s) => out.push_str(s),
                Piece::Attr(a) => {
                    let value = attrs
                        .get(a)
                        .ok_or_else(|| format!("the user has no attribute {a:?}"))?;
                    out.push_str(&quote_literal(value));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_attributes_as_literals() {
        let f = RowFilter::parse("clinic_id = {{ user.clinic_id }} AND region = {{user.region}}")
            .unwrap();
        assert_eq!(
            f.attributes().into_iter().collect::<Vec<_>>(),
            vec!["clinic_id", "region"]
        );
        let sql = f
            .render(&attrs(&[("clinic_id", "1"), ("region", "north")]))
            .unwrap();
        assert_eq!(sql, "clinic_id = '1' AND region = 'north'");
    }

    #[test]
    fn attribute_values_cannot_inject_sql() {
        let f = RowFilter::parse("clinic_id = {{ user.clinic_id }}").unwrap();
        for evil in [
            "1 OR true",
            "1' OR '1'='1",
            r"1\' OR 1=1 --",
            "'; DROP TABLE patients; --",
        ] {
            let sql = f.render(&attrs(&[("clinic_id", evil)])).unwrap();
            // The rendered filter is the column, '=', and one literal.
            let literal = sql.strip_prefix("clinic_id = ").unwrap();
            assert!(
                (literal.starts_with('\'') || literal.starts_with("E'")) && literal.ends_with('\''),
                "{sql}"
            );
            let body = literal.trim_start_matches('E');
            let inner = &body[1..body.len() - 1];
            assert!(
                !inner.replace("''", "").contains('\''),
                "quote escapes: {sql}"
            );
        }
    }

    #[test]
    fn missing_attributes_and_bad_placeholders() {
        let f = RowFilter::parse("clinic_id = {{ user.clinic_id }}").unwrap();
        assert!(f.render(&attrs(&[])).unwrap_err().contains("clinic_id"));
        assert!(RowFilter::parse("a = {{ session.x }}").is_err());
        assert!(RowFilter::parse("a = {{ user.x").is_err());
        assert!(RowFilter::parse("a = {{ user.1x }}").is_err());
        assert!(RowFilter::parse("  ").is_err());
    }
}
