//! The common case, cheaper for the database: a SELECT over one listed
//! table that reads only its plain (unmasked, allowed) columns gets the
//! table itself with the row filter ANDed into WHERE, instead of the masked
//! subquery.
//!
//! PostgreSQL would flatten the subquery into exactly this anyway, but it
//! parses and plans the longer text on every simple-protocol execution;
//! for a point select that is a fifth of the database's work. The shortcut
//! is taken only when nothing in the whole query — nested queries
//! included — could reach a masked or denied column: no wildcard, no
//! whole-row reference (the table's name or alias used as a value), and
//! every identifier that names a column of the table names a plain one.

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
        table: &table.table,
    };
    match q.visit(&mut scan) {
        ControlFlow::Continue(()) => Some(table),
        ControlFlow::Break(()) => None,
    }
}

struct Scan<'a> {
    compiled: &'a Compiled,
    alias: &'a str,
    table: &'a str,
}

impl Scan<'_> {
    fn name_ok(&self, name: &str) -> bool {
        if name == self.alias || name == self.table {
            return false;
        }
        !self.compiled.columns.iter().any(|c| c == name) || self.compiled.plain.contains(name)
    }
}

impl Visitor for Scan<'_> {
    type Break = ();

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
            Expr::Identifier(i) => self.name_ok(&fold(i)),
            Expr::CompoundIdentifier(parts) => {
                parts.iter().all(|p| self.name_ok(&fold(p)))
                    || (parts.len() == 2
                        && fold(&parts[0]) == self.alias
                        && self.name_ok(&fold(&parts[1])))
            }
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
