//! Walking a query: every relation resolved, every protected table
//! replaced, every function and expression form checked.
//!
//! sqlparser's visitor reaches every node, so nothing hides in a clause the
//! walker forgot. Scope is the one thing a flat visit cannot know — a
//! `WITH patients AS (…)` makes `patients` mean the CTE in the query body
//! but the table inside the CTE's own definition — so each nested query is
//! lifted out of the visit and walked on its own with the names in scope at
//! that point ([`rewrite_query`]).

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::LazyLock;

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Query, Select, SelectFlavor, SetExpr, Statement, TableAlias,
    TableFactor, Value, VisitMut, VisitorMut,
};

use super::catalog;
use super::enforcer::Enforcer;
use super::functions;
use super::parse::parse;
use super::settings;
use super::Refusal;
use crate::policy::TableName;

/// What a statement touched, for the caller's checks and the audit trail.
#[derive(Debug, Default, Clone)]
pub struct Uses {
    pub tables: BTreeSet<TableName>,
    /// A substituted template carries the masking key.
    pub carries_key: bool,
}

/// An identifier as PostgreSQL folds it in a UTF8 database: unquoted names
/// have their ASCII letters lowercased, and nothing else (`É`, the Kelvin
/// sign `K` stay as they are); every name is cut to 63 bytes on a character
/// boundary (NAMEDATALEN - 1), so a long name is the column it will be.
pub(crate) fn fold(ident: &Ident) -> String {
    let mut name = if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    };
    if name.len() > MAX_IDENTIFIER {
        let mut end = MAX_IDENTIFIER;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// PostgreSQL's NAMEDATALEN - 1.
const MAX_IDENTIFIER: usize = 63;

fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// `set_config('name', value, is_local)` whose setting is named by a
/// literal and is one a restricted role may also `SET`: the same change,
/// spelt as a function. asyncpg turns `jit` off this way around the
/// catalog query it sends to learn an enum or composite type; refusing it
/// would leave such columns unreadable. Any other setting, or a name the
/// analyzer cannot read, is left to the allowlist (which refuses it).
fn is_safe_set_config(f: &Function) -> bool {
    let named = matches!(
        name_parts(&f.name).as_deref(),
        Some([n]) if n == "set_config"
    ) || matches!(
        name_parts(&f.name).as_deref(),
        Some([s, n]) if s == "pg_catalog" && n == "set_config"
    );
    let FunctionArguments::List(list) = &f.args else {
        return false;
    };
    let plain = list.duplicate_treatment.is_none()
        && list.clauses.is_empty()
        && list.args.len() == 3
        && f.filter.is_none()
        && f.over.is_none()
        && f.within_group.is_empty()
        && f.null_treatment.is_none();
    let setting = match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            Value::SingleQuotedString(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        },
        _ => None,
    };
    named && plain && setting.is_some_and(|s| settings::is_safe(&s))
}

static PLACEHOLDER: LazyLock<Query> = LazyLock::new(|| match parse("SELECT 1") {
    Ok(mut s) => match s.pop() {
        Some(Statement::Query(q)) => *q,
        _ => unreachable!("SELECT 1 is a query"),
    },
    Err(e) => unreachable!("SELECT 1 parses: {e}"),
});

/// Rewrites `q` in place. `outer` holds the CTE names visible around it.
pub(crate) fn rewrite_query(
    enf: &Enforcer,
    q: &mut Query,
    outer: &[String],
    uses: &mut Uses,
) -> Result<(), Refusal> {
    if q.for_clause.is_some()
        || q.settings.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return Err(enf.refuse("this query syntax is not PostgreSQL and"));
    }
    if !q.locks.is_empty() {
        return Err(enf.refuse("SELECT … FOR UPDATE/SHARE (row locks)"));
    }
    let mut scope: Vec<String> = outer.to_vec();
    if let Some(with) = &mut q.with {
        let names: Vec<String> = with
            .cte_tables
            .iter()
            .map(|c| fold(&c.alias.name))
            .collect();
        if with.recursive {
            scope.extend(names.iter().cloned());
        }
        for (cte, name) in with.cte_tables.iter_mut().zip(names) {
            if cte.from.is_some() {
                return Err(enf.refuse("this WITH syntax"));
            }
            rewrite_query(enf, &mut cte.query, &scope, uses)?;
            if !with.recursive {
                scope.push(name);
            }
        }
    }
    check_set_expr(enf, &q.body)?;
    let inline = super::inline::candidate(enf, q, &scope);
    let mut walker = Walker {
        enf,
        ctes: &scope,
        stash: Vec::new(),
        pending_relations: 0,
        uses,
    };
    walker.run(&mut q.body)?;
    walker.run(&mut q.order_by)?;
    walker.run(&mut q.limit_clause)?;
    walker.run(&mut q.fetch)?;
    if let Some(table) = inline {
        if let Some(Ok(compiled)) = enf.tables.get(&table).map(|p| p.template.as_ref()) {
            super::inline::apply(q, compiled);
        }
    }
    Ok(())
}

/// What a table name in a statement (not a query) refers to.
pub(crate) fn resolve(enf: &Enforcer, name: &ObjectName) -> Result<Resolved, Refusal> {
    let mut uses = Uses::default();
    let walker = Walker {
        enf,
        ctes: &[],
        stash: Vec::new(),
        pending_relations: 0,
        uses: &mut uses,
    };
    walker.resolve(name)
}

/// Rewrites any part of a statement outside a query — EXECUTE's
/// parameters, an UPDATE's SET list or FROM items — as reads.
pub(crate) fn rewrite_part<T: VisitMut>(
    enf: &Enforcer,
    node: &mut T,
    uses: &mut Uses,
) -> Result<(), Refusal> {
    let mut walker = Walker {
        enf,
        ctes: &[],
        stash: Vec::new(),
        pending_relations: 0,
        uses,
    };
    walker.run(node)
}

fn check_set_expr(enf: &Enforcer, body: &SetExpr) -> Result<(), Refusal> {
    match body {
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Query(_) => Ok(()),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(enf, left)?;
            check_set_expr(enf, right)
        }
        SetExpr::Table(_) => Err(enf.refuse_with(
            "the TABLE shorthand",
            "write SELECT * FROM the table instead",
        )),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            Err(enf
                .refuse("data-modifying statements inside a query (WITH … INSERT/UPDATE/DELETE)"))
        }
    }
}

struct Walker<'a> {
    enf: &'a Enforcer,
    ctes: &'a [String],
    /// Nested queries lifted out of the visit, restored on the way back up.
    stash: Vec<Query>,
    /// Table references whose name the visitor has yet to show us.
    pending_relations: usize,
    uses: &'a mut Uses,
}

pub(crate) enum Resolved {
    Cte,
    Catalog(String, String),
    Protected(TableName),
}

impl Walker<'_> {
    fn run<T: VisitMut>(&mut self, node: &mut T) -> Result<(), Refusal> {
        match node.visit(self) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(r) => Err(r),
        }
    }

    fn resolve(&self, name: &ObjectName) -> Result<Resolved, Refusal> {
        let enf = self.enf;
        let parts = name_parts(name).ok_or_else(|| enf.refuse("this kind of table reference"))?;
        let (schema, relation) = match parts.as_slice() {
            [relation] => {
                if self.ctes.contains(relation) {
                    return Ok(Resolved::Cte);
                }
                if enf.catalog.contains(relation) {
                    (String::from("pg_catalog"), relation.clone())
                } else {
                    let found = enf.search_path.iter().find(|s| {
                        enf.tables.contains_key(&TableName {
                            schema: (*s).clone(),
                            table: relation.clone(),
                        })
                    });
                    match found {
                        Some(s) => (s.clone(), relation.clone()),
                        None => return Err(enf.not_listed(relation)),
                    }
                }
            }
            [schema, relation] => (schema.clone(), relation.clone()),
            [database, schema, relation] if *database == enf.database => {
                (schema.clone(), relation.clone())
            }
            _ => return Err(enf.not_listed(&name.to_string())),
        };
        if catalog::is_catalog_schema(&schema) {
            if schema == "pg_catalog" {
                if let Some(why) = catalog::closed_reason(&relation) {
                    return Err(enf.refuse_with(&format!("reading pg_catalog.{relation}"), why));
                }
            }
            return Ok(Resolved::Catalog(schema, relation));
        }
        let table = TableName {
            schema,
            table: relation,
        };
        if enf.tables.contains_key(&table) {
            Ok(Resolved::Protected(table))
        } else {
            Err(enf.not_listed(&table.to_string()))
        }
    }

    fn check_function(&self, f: &mut Function) -> Result<(), Refusal> {
        if f.uses_odbc_syntax || !matches!(f.parameters, FunctionArguments::None) {
            return Err(self.enf.refuse("this function call syntax"));
        }
        let keyword_form = matches!(f.args, FunctionArguments::None);
        if is_safe_set_config(f) {
            f.name = ObjectName::from(vec![quoted("pg_catalog"), quoted("set_config")]);
            return Ok(());
        }
        self.check_function_name(&mut f.name, keyword_form)
    }

    /// Checks a function name against the allowlist and qualifies it.
    fn check_function_name(
        &self,
        fname: &mut ObjectName,
        keyword_form: bool,
    ) -> Result<(), Refusal> {
        let enf = self.enf;
        let parts = name_parts(fname).ok_or_else(|| enf.refuse("this function call syntax"))?;
        match parts.as_slice() {
            [name] => {
                if functions::is_syntax(name) && (keyword_form || functions::is_safe_builtin(name))
                {
                    return Ok(());
                }
                if functions::is_safe_builtin(name)
                    || enf
                        .functions
                        .contains(&("pg_catalog".to_string(), name.clone()))
                {
                    // Qualified, so a same-named function elsewhere on the
                    // search path can never be picked instead.
                    *fname = ObjectName::from(vec![quoted("pg_catalog"), quoted(name)]);
                    return Ok(());
                }
                let listed = enf
                    .search_path
                    .iter()
                    .find(|s| enf.functions.contains(&((*s).clone(), name.clone())));
                if let Some(schema) = listed {
                    *fname = ObjectName::from(vec![quoted(schema), quoted(name)]);
                    return Ok(());
                }
                Err(enf.function_refused(name))
            }
            [schema, name] => {
                let builtin = (schema == "pg_catalog" && functions::is_safe_builtin(name))
                    || (schema == "information_schema"
                        && functions::is_safe_information_schema(name));
                if builtin || enf.functions.contains(&(schema.clone(), name.clone())) {
                    Ok(())
                } else {
                    Err(enf.function_refused(&format!("{schema}.{name}")))
                }
            }
            _ => Err(enf.function_refused(&fname.to_string())),
        }
    }

    fn check_select(&self, s: &Select) -> Result<(), Refusal> {
        let enf = self.enf;
        if s.into.is_some() {
            return Err(enf.refuse("SELECT … INTO (it creates a table)"));
        }
        let foreign = s.top.is_some()
            || s.exclude.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || s.qualify.is_some()
            || s.value_table_mode.is_some()
            || s.select_modifiers.is_some()
            || !s.optimizer_hints.is_empty()
            || !matches!(s.flavor, SelectFlavor::Standard);
        if foreign {
            return Err(enf.refuse("this SELECT syntax is not PostgreSQL and"));
        }
        Ok(())
    }

    fn check_expr(&self, e: &mut Expr) -> Result<(), Refusal> {
        match e {
            Expr::Function(f) => self.check_function(f),
            Expr::BinaryOp { op, .. } => match op {
                BinaryOperator::PGCustomBinaryOperator(parts)
                    if parts.len() > 1 && parts[0] != "pg_catalog" =>
                {
                    Err(self.enf.refuse("operators outside pg_catalog"))
                }
                _ => Ok(()),
            },
            Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::CompoundFieldAccess { .. }
            | Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(_, _)
            | Expr::IsNotDistinctFrom(_, _)
            | Expr::IsNormalized { .. }
            | Expr::InList { .. }
            | Expr::InSubquery { .. }
            | Expr::Between { .. }
            | Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
            | Expr::UnaryOp { .. }
            | Expr::Cast { .. }
            | Expr::AtTimeZone { .. }
            | Expr::Extract { .. }
            | Expr::Ceil { .. }
            | Expr::Floor { .. }
            | Expr::Position { .. }
            | Expr::Substring { .. }
            | Expr::Trim { .. }
            | Expr::Overlay { .. }
            | Expr::Collate { .. }
            | Expr::Nested(_)
            | Expr::Value(_)
            | Expr::TypedString(_)
            | Expr::Case { .. }
            | Expr::Exists { .. }
            | Expr::Subquery(_)
            | Expr::GroupingSets(_)
            | Expr::Cube(_)
            | Expr::Rollup(_)
            | Expr::Tuple(_)
            | Expr::Array(_)
            | Expr::Interval(_)
            | Expr::Wildcard(_)
            | Expr::QualifiedWildcard(_, _) => Ok(()),
            _ => Err(self.enf.refuse("this expression syntax")),
        }
    }

    fn substitute(&mut self, factor: &mut TableFactor) -> Result<(), Refusal> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return Ok(());
        };
        match self.resolve(name)? {
            Resolved::Cte => Ok(()),
            Resolved::Catalog(schema, relation) => {
                *name = ObjectName::from(vec![quoted(&schema), quoted(&relation)]);
                Ok(())
            }
            Resolved::Protected(table) => {
                let protected = self
                    .enf
                    .tables
                    .get(&table)
                    .ok_or_else(|| self.enf.not_listed(&table.to_string()))?;
                let template = protected
                    .template
                    .as_ref()
                    .map(|c| c.query.clone())
                    .map_err(Clone::clone)
                    .map_err(|e| self.enf.refuse_with(&format!("reading {table}"), &e))?;
                self.uses.carries_key |= protected.carries_key;
                let alias = alias.take().unwrap_or_else(|| TableAlias {
                    explicit: true,
                    name: quoted(&table.table),
                    columns: Vec::new(),
                    at: None,
                });
                self.uses.tables.insert(table);
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery: Box::new(template),
                    alias: Some(alias),
                    sample: None,
                };
                Ok(())
            }
        }
    }
}

fn flow(r: Result<(), Refusal>) -> ControlFlow<Refusal> {
    match r {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(e),
    }
}

impl VisitorMut for Walker<'_> {
    type Break = Refusal;

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<Refusal> {
        let mut taken = std::mem::replace(q, PLACEHOLDER.clone());
        let done = rewrite_query(self.enf, &mut taken, self.ctes, self.uses);
        self.stash.push(taken);
        flow(done)
    }

    fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<Refusal> {
        if let Some(taken) = self.stash.pop() {
            *q = taken;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &mut Select) -> ControlFlow<Refusal> {
        flow(self.check_select(s))
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        let enf = self.enf;
        let r = match factor {
            TableFactor::Table {
                name,
                args,
                with_hints,
                version,
                partitions,
                json_path,
                sample,
                index_hints,
                ..
            } => {
                if !with_hints.is_empty()
                    || version.is_some()
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    Err(enf.refuse("table hints, samples and versions"))
                } else {
                    self.pending_relations += 1;
                    match args {
                        // A set-returning function in FROM: `generate_series(1, 3)`.
                        Some(_) => self.check_function_name(name, false),
                        None => Ok(()),
                    }
                }
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. } => Ok(()),
            TableFactor::Function { name, .. } => self.check_function_name(name, false),
            _ => Err(enf.refuse("this kind of FROM item")),
        };
        flow(r)
    }

    fn pre_visit_relation(&mut self, _relation: &mut ObjectName) -> ControlFlow<Refusal> {
        if self.pending_relations == 0 {
            return ControlFlow::Break(self.enf.refuse("a table reference in this position"));
        }
        self.pending_relations -= 1;
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        flow(self.substitute(factor))
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<Refusal> {
        flow(self.check_expr(e))
    }
}
