//! What pgward knows about a database's tables: column names and types of
//! the relations a policy lists, and the names of the system catalogs.
//!
//! The masked subquery that replaces a table must list every column in
//! order with its type, so the knowledge comes from the database's own
//! catalog (see [`TABLES_SQL`]), per database, and is refreshed by the
//! session layer. This module only holds and reads it.

use std::collections::{HashMap, HashSet};

use crate::policy::TableName;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// As `format_type()` prints it: `character varying(20)`, `date`, …
    pub pg_type: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// `pg_class.relkind`: `r` table, `p` partitioned, `v` view, `m`
    /// materialized view, `f` foreign table.
    pub kind: char,
    pub columns: Vec<Column>,
}

#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub relations: HashMap<TableName, Relation>,
    /// Relation names in `pg_catalog` (they win over any schema on the
    /// search path for unqualified names).
    pub catalog: HashSet<String>,
    /// Bumped on every refresh; part of the analysis cache key.
    pub version: u64,
}

/// Columns of every ordinary relation outside the system schemas. It takes
/// no parameters, so it runs over the simple protocol.
pub const TABLES_SQL: &str = "SELECT n.nspname, c.relname, c.relkind::text, a.attname, \
     pg_catalog.format_type(a.atttypid, a.atttypmod) \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     AND n.nspname NOT LIKE 'pg_temp%' \
     ORDER BY 1, 2, a.attnum";

/// Relation names in `pg_catalog`.
pub const CATALOG_SQL: &str = "SELECT c.relname FROM pg_catalog.pg_class c \
     WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'f')";

impl Schema {
    /// Builds a schema from the rows of [`TABLES_SQL`] and [`CATALOG_SQL`].
    pub fn from_rows(
        tables: &[Vec<Option<String>>],
        catalog: &[Vec<Option<String>>],
        version: u64,
    ) -> Result<Schema, String> {
        let mut relations: HashMap<TableName, Relation> = HashMap::new();
        for row in tables {
            let field = |i: usize| {
                row.get(i)
                    .and_then(|v| v.clone())
                    .ok_or_else(|| format!("unexpected catalog row {row:?}"))
            };
            let name = TableName {
                schema: field(0)?,
                table: field(1)?,
            };
            let kind = field(2)?.chars().next().unwrap_or('r');
            let column = Column {
                name: field(3)?,
                pg_type: field(4)?,
            };
            relations
                .entry(name)
                .or_insert_with(|| Relation {
                    kind,
                    columns: Vec::new(),
                })
                .columns
                .push(column);
        }
        let catalog = catalog
            .iter()
            .filter_map(|row| row.first().cloned().flatten())
            .collect();
        Ok(Schema {
            relations,
            catalog,
            version,
        })
    }

    /// A schema for tests and `policy explain --offline`: tables given as
    /// `(schema.table, [(column, type)])`, plus the usual catalogs.
    pub fn from_spec(tables: &[(&str, &[(&str, &str)])]) -> Schema {
        let mut schema = Schema::default();
        for (name, columns) in tables {
            let (s, t) = name.split_once('.').unwrap_or(("public", name));
            schema.relations.insert(
                TableName {
                    schema: s.into(),
                    table: t.into(),
                },
                Relation {
                    kind: 'r',
                    columns: columns
                        .iter()
                        .map(|(n, ty)| Column {
                            name: (*n).into(),
                            pg_type: (*ty).into(),
                        })
                        .collect(),
                },
            );
        }
        for c in [
            "pg_class",
            "pg_namespace",
            "pg_attribute",
            "pg_type",
            "pg_proc",
            "pg_index",
            "pg_constraint",
            "pg_database",
            "pg_roles",
            "pg_settings",
            "pg_stats",
            "pg_statistic",
            "pg_stat_activity",
            "pg_tables",
            "pg_description",
            "pg_am",
            "pg_inherits",
            "pg_trigger",
            "pg_policy",
            "pg_attrdef",
            "pg_collation",
            "pg_publication",
            "pg_publication_rel",
            "pg_statistic_ext",
            "pg_foreign_table",
            "pg_largeobject",
            "pg_authid",
            "pg_prepared_statements",
        ] {
            schema.catalog.insert(c.into());
        }
        schema
    }
}
