//! INSERT, UPDATE and DELETE for restricted roles with the `write` class.
//!
//! The statement the database receives touches only rows inside the row
//! filter, and every expression the person wrote sees masked values, never
//! raw ones — `UPDATE patients SET phone = ssn` must not copy a real SSN
//! into a visible column. So the target is renamed `pgward_t` and joined,
//! by `(tableoid, ctid)`, to the table's masked, filtered subquery under
//! the name the person used; their SET values, WHERE and RETURNING read
//! that subquery.
//!
//! * Denied columns cannot be written; columns the row filter reads cannot
//!   be changed (a row must not be moved out of the person's reach).
//! * INSERT keeps only new rows that satisfy the row filter, judged on the
//!   values cast to the columns' types.
//! * RETURNING is evaluated over the masked projection of the changed rows
//!   (a data-modifying CTE), so the command tag becomes `SELECT n`.
//! * Subqueries in SET and WHERE are refused: inside one, a denied column
//!   exists only in the raw target, and PostgreSQL would resolve it there.
//!   So are bare names that are not known columns of the target (with FROM
//!   or USING, other tables' columns must be qualified): the raw target
//!   would supply a column added since the schema was read.
//! * `ON CONFLICT DO UPDATE` and COPY FROM are refused; MERGE is built
//!   the same way in `merge.rs`.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Ident, Insert, ObjectName, OnConflictAction,
    OnInsert, Query, SelectItem, TableFactor, TableObject, Update, UpdateTableFromKind, Visit,
    VisitMut, Visitor, VisitorMut,
};

use super::enforcer::{Compiled, Enforcer};
use super::walk::{fold, resolve, rewrite_part, rewrite_query, Resolved, Uses};
use super::Refusal;

/// Column names an expression reads (last part of each reference).
pub(crate) fn identifiers(e: &Expr) -> HashSet<String> {
    struct Names(HashSet<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Identifier(i) => {
                    self.0.insert(fold(i));
                }
                Expr::CompoundIdentifier(parts) => {
                    if let Some(last) = parts.last() {
                        self.0.insert(fold(last));
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(HashSet::new());
    let _ = e.visit(&mut names);
    names.0
}

pub(crate) const TARGET: &str = "pgward_t";
const CHANGED: &str = "pgward_w";

pub(crate) fn q(name: &str) -> String {
    crate::policy::mask::quote_ident(name)
}

/// Qualifies bare references to the target's columns with `alias`, so they
/// read the masked subquery. Nested queries keep their own scope.
struct Qualify<'a> {
    columns: &'a [String],
    alias: &'a str,
    depth: usize,
}

impl VisitorMut for Qualify<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }
    fn post_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if self.depth == 0 {
            if let Expr::Identifier(i) = e {
                if self.columns.contains(&fold(i)) {
                    *e = Expr::CompoundIdentifier(vec![
                        Ident::with_quote('"', self.alias),
                        i.clone(),
                    ]);
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Refuses what would still read the raw target: a nested query (inside
/// it, a denied column exists only in the target and PostgreSQL resolves
/// it there), and — when `strict` — any bare name that is not one of the
/// target's known columns (a column added since the schema was read, a
/// system column: PostgreSQL would find it in the raw target).
struct Scope<'a> {
    columns: &'a [String],
    strict: bool,
    problem: Option<(&'static str, &'static str)>,
}

impl Visitor for Scope<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.problem = Some((
            "subqueries in the conditions and values of a write",
            "in a restricted write they could read the table's raw values",
        ));
        ControlFlow::Break(())
    }
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Identifier(i) = e {
            if self.strict && !self.columns.contains(&fold(i)) {
                self.problem = Some((
                    "unqualified names that are not columns of the table written",
                    "qualify other tables' columns (c.name); an unknown bare name could read the table's raw values",
                ));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

impl Enforcer {
    pub(crate) fn check_scope<T: Visit>(
        &self,
        node: &T,
        c: &Compiled,
        strict: bool,
    ) -> Result<(), Refusal> {
        let mut scope = Scope {
            columns: &c.columns,
            strict,
            problem: None,
        };
        let _ = node.visit(&mut scope);
        match scope.problem {
            Some((what, why)) => Err(self.refuse_with(what, why)),
            None => Ok(()),
        }
    }
}

pub(crate) fn qualify_to<T: VisitMut>(node: &mut T, c: &Compiled, alias: &str) {
    let mut v = Qualify {
        columns: &c.columns,
        alias,
        depth: 0,
    };
    let _ = node.visit(&mut v);
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Enforcer {
    /// The listed table a DML statement writes, compiled.
    pub(crate) fn target(
        &self,
        name: &ObjectName,
    ) -> Result<(&Compiled, crate::policy::TableName), Refusal> {
        match resolve(self, name)? {
            Resolved::Protected(table) => {
                let compiled = self
                    .tables
                    .get(&table)
                    .ok_or_else(|| self.not_listed(&table.to_string()))?
                    .template
                    .as_ref()
                    .map_err(|e| self.refuse_with(&format!("writing {table}"), e))?;
                Ok((compiled, table))
            }
            _ => Err(self.refuse_with(
                &format!("writing {name}"),
                "only tables the role's policy lists can be written",
            )),
        }
    }

    /// A SET target: one writable column the row filter does not read.
    pub(crate) fn assignable(
        &self,
        a: &sqlparser::ast::Assignment,
        c: &Compiled,
        table: &str,
    ) -> Result<(), Refusal> {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return Err(self.refuse("multi-column SET (a, b) = …"));
        };
        let [sqlparser::ast::ObjectNamePart::Identifier(col)] = col.0.as_slice() else {
            return Err(self.refuse("qualified SET targets"));
        };
        let col = fold(col);
        self.writable(c, table, &col)?;
        if c.filter_columns.contains(&col) {
            return Err(self.refuse_with(
                &format!("changing column {table}.{col}"),
                "the role's row filter reads it",
            ));
        }
        Ok(())
    }

    pub(crate) fn writable(&self, c: &Compiled, table: &str, column: &str) -> Result<(), Refusal> {
        if !c.columns.iter().any(|col| col == column) || c.denied.contains(column) {
            return Err(self.refuse_with(
                &format!("writing column {table}.{column}"),
                "the column is denied to the role or does not exist",
            ));
        }
        Ok(())
    }

    /// `WITH pgward_w AS (<dml> RETURNING pgward_t.*) SELECT <items> FROM
    /// (<masked projection of pgward_w>) AS alias`, or the DML alone.
    fn with_returning(
        &self,
        dml: String,
        returning: Option<Vec<SelectItem>>,
        c: &Compiled,
        alias: &str,
        uses: &mut Uses,
    ) -> Result<String, Refusal> {
        let Some(mut items) = returning else {
            return Ok(dml);
        };
        rewrite_part(self, &mut items, uses)?;
        Ok(format!(
            "WITH {w} AS ({dml} RETURNING {t}.*) SELECT {items} FROM (SELECT {proj} FROM {w}) AS {a}",
            w = q(CHANGED),
            t = q(TARGET),
            items = list(&items),
            proj = c.projection,
            a = q(alias),
        ))
    }

    /// The masked subquery with the row identity the join needs.
    pub(crate) fn joinable(c: &Compiled) -> String {
        let filter = c
            .filter
            .as_ref()
            .map(|f| format!(" WHERE ({f})"))
            .unwrap_or_default();
        format!(
            "(SELECT {}, tableoid AS \"pgward_tableoid\", ctid AS \"pgward_ctid\" FROM {}{filter})",
            c.projection, c.qualified
        )
    }

    pub(crate) fn same_row(alias: &str) -> String {
        format!(
            "{t}.tableoid = {a}.\"pgward_tableoid\" AND {t}.ctid = {a}.\"pgward_ctid\"",
            t = q(TARGET),
            a = q(alias)
        )
    }

    pub(crate) fn rewrite_update(
        &self,
        u: &mut Update,
        uses: &mut Uses,
    ) -> Result<String, Refusal> {
        let (name, alias) = match &u.table.relation {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } if u.table.joins.is_empty() => (name.clone(), alias.clone()),
            _ => return Err(self.refuse("this UPDATE target")),
        };
        if alias.as_ref().is_some_and(|a| !a.columns.is_empty())
            || u.or.is_some()
            || u.output.is_some()
            || !u.order_by.is_empty()
            || u.limit.is_some()
            || !u.optimizer_hints.is_empty()
            || matches!(u.from, Some(UpdateTableFromKind::BeforeSet(_)))
        {
            return Err(self.refuse("this UPDATE syntax"));
        }
        let (c, table) = self.target(&name)?;
        let alias = alias.map_or_else(|| table.table.clone(), |a| fold(&a.name));
        for a in &u.assignments {
            self.assignable(a, c, &table.to_string())?;
        }
        for a in &u.assignments {
            self.check_scope(&a.value, c, true)?;
        }
        self.check_scope(&u.selection, c, true)?;
        for a in &mut u.assignments {
            qualify_to(&mut a.value, c, &alias);
        }
        if let Some(sel) = &mut u.selection {
            qualify_to(sel, c, &alias);
        }
        if let Some(ret) = &mut u.returning {
            qualify_to(ret, c, &alias);
        }
        rewrite_part(self, &mut u.assignments, uses)?;
        let mut from = match u.from.take() {
            Some(UpdateTableFromKind::AfterSet(f)) => f,
            _ => Vec::new(),
        };
        rewrite_part(self, &mut from, uses)?;
        rewrite_part(self, &mut u.selection, uses)?;
        uses.tables.insert(table.clone());
        let mut from_items = vec![format!("{} AS {}", Self::joinable(c), q(&alias))];
        from_items.extend(from.iter().map(ToString::to_string));
        let mut condition = Self::same_row(&alias);
        if let Some(sel) = &u.selection {
            condition.push_str(&format!(" AND ({sel})"));
        }
        let dml = format!(
            "UPDATE {} AS {} SET {} FROM {} WHERE {condition}",
            c.qualified,
            q(TARGET),
            list(&u.assignments),
            from_items.join(", ")
        );
        self.with_returning(dml, u.returning.take(), c, &alias, uses)
    }

    pub(crate) fn rewrite_delete(
        &self,
        d: &mut Delete,
        uses: &mut Uses,
    ) -> Result<String, Refusal> {
        let from = match &d.from {
            FromTable::WithFromKeyword(f) => f,
            FromTable::WithoutKeyword(_) => return Err(self.refuse("DELETE without FROM")),
        };
        let (name, alias) = match from.as_slice() {
            [t] if t.joins.is_empty() && d.tables.is_empty() => match &t.relation {
                TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } => (name.clone(), alias.clone()),
                _ => return Err(self.refuse("this DELETE target")),
            },
            _ => return Err(self.refuse("this DELETE target")),
        };
        if alias.as_ref().is_some_and(|a| !a.columns.is_empty())
            || d.output.is_some()
            || !d.order_by.is_empty()
            || d.limit.is_some()
            || !d.optimizer_hints.is_empty()
        {
            return Err(self.refuse("this DELETE syntax"));
        }
        let (c, table) = self.target(&name)?;
        let alias = alias.map_or_else(|| table.table.clone(), |a| fold(&a.name));
        self.check_scope(&d.selection, c, true)?;
        if let Some(sel) = &mut d.selection {
            qualify_to(sel, c, &alias);
        }
        if let Some(ret) = &mut d.returning {
            qualify_to(ret, c, &alias);
        }
        let mut using = d.using.take().unwrap_or_default();
        rewrite_part(self, &mut using, uses)?;
        rewrite_part(self, &mut d.selection, uses)?;
        uses.tables.insert(table.clone());
        let mut items = vec![format!("{} AS {}", Self::joinable(c), q(&alias))];
        items.extend(using.iter().map(ToString::to_string));
        let mut condition = Self::same_row(&alias);
        if let Some(sel) = &d.selection {
            condition.push_str(&format!(" AND ({sel})"));
        }
        let dml = format!(
            "DELETE FROM {} AS {} USING {} WHERE {condition}",
            c.qualified,
            q(TARGET),
            items.join(", ")
        );
        self.with_returning(dml, d.returning.take(), c, &alias, uses)
    }

    pub(crate) fn rewrite_insert(
        &self,
        i: &mut Insert,
        uses: &mut Uses,
    ) -> Result<String, Refusal> {
        let TableObject::TableName(name) = &i.table else {
            return Err(self.refuse("INSERT INTO a table function"));
        };
        let foreign = i.or.is_some()
            || i.ignore
            || !i.into
            || i.overwrite
            || !i.assignments.is_empty()
            || i.partitioned.is_some()
            || !i.after_columns.is_empty()
            || i.has_table_keyword
            || i.output.is_some()
            || i.replace_into
            || i.priority.is_some()
            || i.insert_alias.is_some()
            || i.settings.is_some()
            || i.format_clause.is_some()
            || i.multi_table_insert_type.is_some()
            || !i.optimizer_hints.is_empty();
        if foreign {
            return Err(self.refuse("this INSERT syntax"));
        }
        let (c, table) = self.target(name)?;
        let alias = i
            .table_alias
            .as_ref()
            .map_or_else(|| table.table.clone(), |a| fold(&a.alias));
        let columns: Vec<String> = if i.columns.is_empty() {
            if !c.denied.is_empty() {
                return Err(self.refuse_with(
                    &format!("INSERT into {table} without a column list"),
                    "the table has columns denied to the role; name the columns to insert",
                ));
            }
            c.columns.clone()
        } else {
            let mut out = Vec::new();
            for col in &i.columns {
                let [sqlparser::ast::ObjectNamePart::Identifier(col)] = col.0.as_slice() else {
                    return Err(self.refuse("qualified INSERT columns"));
                };
                out.push(fold(col));
            }
            out
        };
        for col in &columns {
            self.writable(c, &table.to_string(), col)?;
        }
        match &i.on {
            None => {}
            Some(OnInsert::OnConflict(oc)) if matches!(oc.action, OnConflictAction::DoNothing) => {}
            Some(_) => {
                return Err(self.refuse_with(
                    "INSERT … ON CONFLICT DO UPDATE",
                    "it can change rows outside the role's row filter",
                ))
            }
        }
        let mut source = i
            .source
            .take()
            .ok_or_else(|| self.refuse("INSERT … DEFAULT VALUES"))?;
        rewrite_query(self, &mut source, &[], uses)?;
        uses.tables.insert(table.clone());
        let quoted: Vec<String> = columns.iter().map(|col| q(col)).collect();
        let cols = quoted.join(", ");
        let rows = match &c.filter {
            // Only rows inside the filter are inserted, judged on the values
            // as the columns will store them (9.6 into an integer is 10).
            Some(filter) => {
                let mut casts = Vec::with_capacity(columns.len());
                for (col, quoted) in columns.iter().zip(&quoted) {
                    let at = c.columns.iter().position(|x| x == col);
                    let ty = at
                        .and_then(|i| c.types.get(i))
                        .ok_or_else(|| self.refuse(&format!("writing column {table}.{col}")))?;
                    casts.push(format!("CAST({quoted} AS {ty}) AS {quoted}"));
                }
                // Under the table's own name: a filter may name it.
                format!(
                    "SELECT * FROM (SELECT {} FROM ({source}) AS \"pgward_s\" ({cols})) AS {} WHERE ({filter})",
                    casts.join(", "),
                    q(&table.table)
                )
            }
            None => source.to_string(),
        };
        let on = i.on.as_ref().map(|o| format!(" {o}")).unwrap_or_default();
        let dml = format!(
            "INSERT INTO {} AS {} ({cols}) {rows}{on}",
            c.qualified,
            q(TARGET)
        );
        if let Some(ret) = &mut i.returning {
            // RETURNING names the target's columns; here they come from
            // the masked projection under the table's own name.
            qualify_to(ret, c, &alias);
        }
        self.with_returning(dml, i.returning.take(), c, &alias, uses)
    }
}
