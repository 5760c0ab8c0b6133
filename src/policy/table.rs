//! Per-table rules for restricted roles: which columns are visible, masked
//! or denied, and which rows.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::filter::RowFilter;
use super::mask::Mask;

/// What happens to one column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnRule {
    Allow,
    Deny,
    Mask(Mask),
}

impl<'de> Deserialize<'de> for ColumnRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = ColumnRule;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("allow, deny, or a mask such as {mask: partial, keep_last: 4}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ColumnRule, E> {
                match v {
                    "allow" => Ok(ColumnRule::Allow),
                    "deny" => Ok(ColumnRule::Deny),
                    other => Err(E::custom(format!(
                        "unknown column rule {other:?}: use allow, deny or {{mask: …}}"
                    ))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ColumnRule, A::Error> {
                // Deserializing straight from the map keeps serde_yaml's line
                // and column in any error (an unknown mask, say).
                Mask::deserialize(de::value::MapAccessDeserializer::new(map)).map(ColumnRule::Mask)
            }
        }
        d.deserialize_any(RuleVisitor)
    }
}

/// Columns a table policy does not mention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    #[default]
    Allow,
    Deny,
}

fn row_filter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RowFilter>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| RowFilter::parse(&t).map_err(de::Error::custom))
        .transpose()
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePolicy {
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnRule>,
    /// Shorthand for `column: deny`.
    #[serde(default)]
    pub deny_columns: Vec<String>,
    /// Rows the role may see, touch or delete.
    #[serde(default, deserialize_with = "row_filter")]
    pub rows: Option<RowFilter>,
    /// Columns not listed above: visible (default) or denied.
    #[serde(default)]
    pub unlisted_columns: Unlisted,
}

impl TablePolicy {
    /// The rule for a column, after `deny_columns` and `unlisted_columns`.
    pub fn rule(&self, column: &str) -> ColumnRule {
        if self.deny_columns.iter().any(|c| c == column) {
            return ColumnRule::Deny;
        }
        match self.columns.get(column) {
            Some(rule) => rule.clone(),
            None => match self.unlisted_columns {
                Unlisted::Allow => ColumnRule::Allow,
                Unlisted::Deny => ColumnRule::Deny,
            },
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        for column in &self.deny_columns {
            if let Some(rule) = self.columns.get(column) {
                if *rule != ColumnRule::Deny {
                    return Err(format!(
                        "column {column:?} is in deny_columns and also has a rule in columns"
                    ));
                }
            }
        }
        for (column, rule) in &self.columns {
            if let ColumnRule::Mask(mask) = rule {
                mask.validate()
                    .map_err(|e| format!("column {column:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// A table name as written in a policy: `schema.table`, or `table` for the
/// `public` schema. Quoted names are not supported in policy keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn parse(s: &str) -> Result<TableName, String> {
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !part.starts_with(|c: char| c.is_ascii_digit())
        };
        let (schema, table) = s.split_once('.').unwrap_or(("public", s));
        if !valid(schema) || !valid(table) {
            return Err(format!(
                "invalid table name {s:?}: use schema.table with letters, digits and '_'"
            ));
        }
        Ok(TableName {
            schema: schema.to_ascii_lowercase(),
            table: table.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_from_yaml() {
        let t: TablePolicy = serde_yaml::from_str(
            "columns:\n  ssn: {mask: partial, keep_last: 4}\n  id: allow\n  notes: deny\n\
             deny_columns: [secret]\nrows: \"clinic_id = {{ user.clinic_id }}\"\n",
        )
        .unwrap();
        assert!(matches!(
            t.rule("ssn"),
            ColumnRule::Mask(Mask::Partial { .. })
        ));
        assert_eq!(t.rule("id"), ColumnRule::Allow);
        assert_eq!(t.rule("notes"), ColumnRule::Deny);
        assert_eq!(t.rule("secret"), ColumnRule::Deny);
        assert_eq!(t.rule("other"), ColumnRule::Allow);
        assert!(t.rows.is_some());
        t.validate().unwrap();
    }

    #[test]
    fn errors_carry_their_location() {
        let err =
            serde_yaml::from_str::<TablePolicy>("columns:\n  id: allow\n  ssn: {mask: parital}\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("parital") && text.contains("line 3"),
            "{text}"
        );
        let err = serde_yaml::from_str::<TablePolicy>("rows: \"a = {{ session.x }}\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown placeholder"), "{err}");
        let err = serde_yaml::from_str::<TablePolicy>("columns:\n  a: hide\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column rule"), "{err}");
    }

    #[test]
    fn contradictions_are_errors() {
        let t: TablePolicy =
            serde_yaml::from_str("columns:\n  ssn: allow\ndeny_columns: [ssn]\n").unwrap();
        assert!(t.validate().is_err());
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("patients").unwrap().to_string(),
            "public.patients"
        );
        assert_eq!(
            TableName::parse("Clinic.Visits").unwrap().to_string(),
            "clinic.visits"
        );
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("x; drop").is_err());
    }
}
