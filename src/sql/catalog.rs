//! System catalogs a restricted role may read.
//!
//! psql's `\d` family, JDBC metadata calls and BI tools' schema browsers
//! read `pg_catalog` and `information_schema`; those describe objects and
//! are open. A few system relations expose *data values* or the text of
//! other statements (which, after rewriting, carries masking internals):
//! those are closed.

/// Relations in `pg_catalog` a restricted role may not read, and why.
const CLOSED: &[(&str, &str)] = &[
    (
        "pg_statistic",
        "column statistics contain sample data values",
    ),
    (
        "pg_statistic_ext_data",
        "column statistics contain sample data values",
    ),
    ("pg_stats", "column statistics contain sample data values"),
    (
        "pg_stats_ext",
        "column statistics contain sample data values",
    ),
    (
        "pg_stats_ext_exprs",
        "column statistics contain sample data values",
    ),
    (
        "pg_stat_activity",
        "it shows the text of other sessions' statements",
    ),
    (
        "pg_prepared_statements",
        "it shows rewritten statement text",
    ),
    ("pg_cursors", "it shows rewritten statement text"),
    ("pg_largeobject", "large objects bypass table policies"),
    (
        "pg_largeobject_metadata",
        "large objects bypass table policies",
    ),
    ("pg_authid", "it holds password hashes"),
    ("pg_shadow", "it holds password hashes"),
    ("pg_user_mapping", "it holds foreign server credentials"),
    ("pg_user_mappings", "it holds foreign server credentials"),
    ("pg_hba_file_rules", "it exposes server configuration files"),
    (
        "pg_ident_file_mappings",
        "it exposes server configuration files",
    ),
    ("pg_file_settings", "it exposes server configuration files"),
    ("pg_backend_memory_contexts", "it exposes server internals"),
    ("pg_subscription", "it holds connection strings"),
];

/// Why a `pg_catalog` relation is closed, or `None` when it is open.
pub fn closed_reason(relation: &str) -> Option<&'static str> {
    CLOSED
        .iter()
        .find(|(name, _)| *name == relation)
        .map(|(_, why)| *why)
}

/// Schemas whose relations are metadata open to every role.
pub fn is_catalog_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}
