//! The common case, cheaper for the database: a SELECT over one listed
//! table that reads only its plain (unmasked, allowed) columns gets the
//! table itself with the row filter ANDed into WHERE, instead of the masked
//! subquery.
//!
//! PostgreSQL would flatten the subquery into exactly this anyway, but it
//! parses and plans the longer text on every simple-protocol execution;
//! for a point select that is a fifth of the database's work. The shortcut
//! is taken only when nothing in the query could reach anything but plain
//! columns: no nested query, no wildcard, and every identifier is a plain
//! column, bare or as `alias.column` (so no whole-row reference, no
//! `alias.f` attribute-notation call, no system column), in ASCII.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, Select,
    SelectItem, SetExpr, TableFactor, Visit, Visitor,
};

use super::enforcer::{Compiled, Enforcer};
use super::walk::{fold, resolve, Resolved};
use crate::policy::TableName;

/// The table `q`'s top-level SELECT may read directly, if any.
pub(crate) fn candidate(enf: &Enforcer, q: &Query, ctes: &[String]) -> Option<TableName> {
    if q.with.is_some() {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let [from] = s.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = &from.relation
    else {
        return None;
    };
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return None;
    }
    if let [single] = name.0.as_slice() {
        let is_cte = single.as_ident().is_some_and(|i| ctes.contains(&fold(i)));
        if is_cte {
            return None;
        }
    }
    let Ok(Resolved::Protected(table)) = resolve(enf, name) else {
        return None;
    };
    let compiled = enf.tables.get(&table)?.template.as_ref().ok()?;
    let alias = alias
        .as_ref()
        .map_or_else(|| table.table.clone(), |a| fold(&a.name));
    let mut scan = Scan {
        compiled,
        alias: &alias,
        queries: 0,
    };
    match q.visit(&mut scan) {
        ControlFlow::Continue(()) => Some(table),
        ControlFlow::Break(()) => None,
    }
}

struct Scan<'a> {
    compiled: &'a Compiled,
    alias: &'a str,
    queries: usize,
}

impl Scan<'_> {
    /// Only the table's plain columns, by ASCII names (a single-byte
    /// database folds other letters too, so only ASCII is certain).
    fn plain(&self, i: &sqlparser::ast::Ident) -> bool {
        i.value.is_ascii() && self.compiled.plain.contains(&fold(i))
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        // The query itself, and no nested one: a correlated subquery could
        // name the raw table in ways this scan does not follow.
        self.queries += 1;
        if self.queries > 1 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let wildcard = s.projection.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(_, _)
            )
        });
        if wildcard {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        let ok = match e {
            Expr::Identifier(i) => self.plain(i),
            // `alias.column` only: `alias.f` can mean `f(alias)`, a
            // function over the whole raw row.
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [table, column] => {
                    table.value.is_ascii() && fold(table) == self.alias && self.plain(column)
                }
                _ => false,
            },
            Expr::Wildcard(_) | Expr::QualifiedWildcard(_, _) => false,
            // `row_to_json(p.*)`; a bare `count(*)` is fine.
            Expr::Function(f) => match &f.args {
                FunctionArguments::List(list) => list.args.iter().all(|a| {
                    let arg = match a {
                        FunctionArg::Unnamed(arg) => arg,
                        FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
                    };
                    matches!(arg, FunctionArgExpr::Expr(_) | FunctionArgExpr::Wildcard)
                }),
                _ => true,
            },
            _ => true,
        };
        if ok {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }
}

/// After the walk: the substituted subquery becomes the table again, its
/// row filter ANDed in front of the query's own WHERE.
pub(crate) fn apply(q: &mut Query, compiled: &Compiled) {
    let SetExpr::Select(s) = q.body.as_mut() else {
        return;
    };
    let Some(from) = s.from.first_mut() else {
        return;
    };
    let TableFactor::Derived { alias, .. } = &mut from.relation else {
        return;
    };
    let alias = alias.take();
    let SetExpr::Select(template) = compiled.query.body.as_ref() else {
        return;
    };
    let Some(table) = template.from.first() else {
        return;
    };
    let mut relation = table.relation.clone();
    if let TableFactor::Table { alias: a, .. } = &mut relation {
        *a = alias;
    }
    from.relation = relation;
    if let Some(filter) = &template.selection {
        let filter = match filter {
            Expr::Nested(_) => filter.clone(),
            other => Expr::Nested(Box::new(other.clone())),
        };
        s.selection = Some(match s.selection.take() {
            Some(own) => Expr::BinaryOp {
                left: Box::new(filter),
                op: BinaryOperator::And,
                right: Box::new(Expr::Nested(Box::new(own))),
            },
            None => filter,
        });
    }
}
