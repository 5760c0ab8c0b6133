//! A restricted role's rules, compiled against one database's schema.
//!
//! Built once per session (and again when the schema is refreshed): for each
//! table the role lists, the masked subquery that replaces every reference
//! to it — its columns in table order, masked or omitted, the row filter
//! rendered with the person's attributes — parsed once and cloned per use.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlparser::ast::{Query, Statement};

use super::parse::parse;
use super::schema::Schema;
use crate::policy::mask::quote_ident;
use crate::policy::{ColumnRule, Role, StatementClass, TableName, TablePolicy};

/// A listed table, ready to be substituted — or the reason it cannot be.
#[derive(Clone, Debug)]
pub(crate) struct Protected {
    pub template: Result<Compiled, String>,
    /// The template carries the masking key (hash masks): its text must
    /// never reach the client, e.g. through EXPLAIN.
    pub carries_key: bool,
}

/// A table's masked subquery, and its pieces for the write path.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    /// `SELECT <projection> FROM <qualified> WHERE (<filter>)`, parsed.
    pub query: Query,
    /// `"schema"."table"`.
    pub qualified: String,
    /// The masked select list (denied columns left out).
    pub projection: String,
    /// The rendered row filter.
    pub filter: Option<String>,
    /// Columns the row filter reads: a restricted role may not change them.
    pub filter_columns: HashSet<String>,
    /// Every column of the table, in order.
    pub columns: Vec<String>,
    /// Their types, as `format_type()` prints them.
    pub types: Vec<String>,
    /// Columns the role may not see (nor write).
    pub denied: HashSet<String>,
    /// Columns visible as they are (neither masked nor denied).
    pub plain: HashSet<String>,
}

/// Everything the rewriter needs to decide for one session.
#[derive(Debug)]
pub struct Enforcer {
    pub(crate) role: String,
    pub(crate) database: String,
    pub(crate) may_read: bool,
    pub(crate) may_write: bool,
    pub(crate) search_path: Vec<String>,
    pub(crate) tables: HashMap<TableName, Protected>,
    pub(crate) catalog: HashSet<String>,
    /// Extra functions the role lists, as (schema, name).
    pub(crate) functions: HashSet<(String, String)>,
    /// Channels (or `prefix*`) the role may LISTEN on.
    pub(crate) listen: Vec<String>,
    pub(crate) schema_version: u64,
}

impl Enforcer {
    pub fn new(
        role: &Role,
        database: &str,
        attrs: &BTreeMap<String, String>,
        schema: &Schema,
        hash_key: &str,
    ) -> Enforcer {
        let classes = &role.statements;
        let has =
            |c: StatementClass| classes.contains(&c) || classes.contains(&StatementClass::All);
        let tables = role
            .tables
            .iter()
            .filter_map(|(name, policy)| {
                let table = TableName::parse(name).ok()?;
                let protected = compile(&table, policy, schema, attrs, hash_key, database);
                Some((table, protected))
            })
            .collect();
        let functions = role
            .functions
            .iter()
            .map(|f| {
                let (s, n) = f.split_once('.').unwrap_or(("public", f));
                (s.to_ascii_lowercase(), n.to_ascii_lowercase())
            })
            .collect();
        Enforcer {
            role: role.name.to_string(),
            database: database.to_string(),
            may_read: has(StatementClass::Read),
            may_write: has(StatementClass::Write),
            search_path: role.search_path.clone(),
            tables,
            catalog: schema.catalog.clone(),
            functions,
            listen: role.listen.clone(),
            schema_version: schema.version,
        }
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Whether the role's policy lists `channel` (as PostgreSQL names it).
    pub(crate) fn may_listen(&self, channel: &str) -> bool {
        self.listen
            .iter()
            .any(|allowed| match allowed.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => channel == allowed,
            })
    }

    /// Each listed table's masked subquery as SQL, or why it cannot be
    /// built — what `pgward policy check` tries against the database.
    pub fn compiled(&self) -> Vec<(TableName, Result<String, String>)> {
        let mut out: Vec<_> = self
            .tables
            .iter()
            .map(|(t, p)| {
                (
                    t.clone(),
                    p.template
                        .as_ref()
                        .map(|c| c.query.to_string())
                        .map_err(Clone::clone),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The masked subquery for one table.
fn compile(
    table: &TableName,
    policy: &TablePolicy,
    schema: &Schema,
    attrs: &BTreeMap<String, String>,
    hash_key: &str,
    database: &str,
) -> Protected {
    let carries_key = policy
        .columns
        .values()
        .any(|r| matches!(r, ColumnRule::Mask(crate::policy::mask::Mask::Hash {})));
    let template = (|| {
        let relation = schema.relations.get(table).ok_or_else(|| {
            format!("{table} is listed in the policy but does not exist in database \"{database}\"")
        })?;
        let mut columns = Vec::new();
        let mut denied = HashSet::new();
        let mut plain = HashSet::new();
        for column in &relation.columns {
            let quoted = quote_ident(&column.name);
            match policy.rule(&column.name) {
                ColumnRule::Allow => {
                    plain.insert(column.name.clone());
                    columns.push(quoted);
                }
                ColumnRule::Deny => {
                    denied.insert(column.name.clone());
                }
                ColumnRule::Mask(mask) => {
                    let expr = mask
                        .sql(&quoted, &column.pg_type, hash_key)
                        .map_err(|e| format!("column {}: {e}", column.name))?;
                    columns.push(format!("{expr} AS {quoted}"));
                }
            }
        }
        if columns.is_empty() {
            return Err(format!("every column of {table} is denied"));
        }
        let projection = columns.join(", ");
        let qualified = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.table)
        );
        let mut sql = format!("SELECT {projection} FROM {qualified}");
        let filter = match &policy.rows {
            Some(filter) => Some(filter.render(attrs)?),
            None => None,
        };
        if let Some(rendered) = &filter {
            sql.push_str(&format!(" WHERE ({rendered})"));
        }
        let query = match parse(&sql) {
            Ok(mut stmts) if stmts.len() == 1 => match stmts.pop() {
                Some(Statement::Query(q)) => *q,
                _ => {
                    return Err(format!(
                        "the policy for {table} does not compile to a query"
                    ))
                }
            },
            Ok(_) => {
                return Err(format!(
                    "the policy for {table} does not compile to one query"
                ))
            }
            Err(e) => return Err(format!("the policy for {table} does not compile: {e}")),
        };
        let filter_columns = match &query.body.as_ref() {
            sqlparser::ast::SetExpr::Select(s) => s
                .selection
                .as_ref()
                .map(super::write::identifiers)
                .unwrap_or_default(),
            _ => HashSet::new(),
        };
        Ok(Compiled {
            query,
            qualified,
            projection,
            filter,
            filter_columns,
            columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            types: relation.columns.iter().map(|c| c.pg_type.clone()).collect(),
            denied,
            plain,
        })
    })();
    Protected {
        template,
        carries_key,
    }
}
