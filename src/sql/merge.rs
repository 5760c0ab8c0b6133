//! MERGE for restricted roles with the `write` class, built like UPDATE
//! and DELETE (see `write.rs`): the target is renamed `pgward_t`, and the
//! person's source is LEFT JOINed to the target's masked, filtered
//! subquery under the target's name, on the person's own ON condition.
//! MERGE then matches by `(tableoid, ctid)`, so only rows inside the filter
//! can be MATCHED, and every condition and SET value reads masked values.
//!
//! * WHEN MATCHED: UPDATE (of writable columns the filter does not read),
//!   DELETE, DO NOTHING. Names of target columns read the masked row; every
//!   other bare name is qualified with the source's alias, so none can
//!   reach the raw target (a column added since the schema was read, a
//!   system column).
//! * WHEN NOT MATCHED: INSERT (cols) VALUES (…) or DO NOTHING; bare names
//!   are the source's. The values are computed once per row in a LATERAL
//!   subquery, cast to the columns' types, and the row filter is evaluated
//!   there over them under the table's own name; the clause fires only for
//!   rows it accepts, and inserts exactly the values it judged.
//! * No subqueries in conditions or values; no other MERGE forms.

use sqlparser::ast::{
    Expr, Ident, Merge, MergeAction, MergeClauseKind, MergeInsertKind, MergeUpdateKind,
    ObjectNamePart, TableFactor, TableWithJoins, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

use super::enforcer::{Compiled, Enforcer};
use super::walk::{fold, rewrite_part, Uses};
use super::write::{q, qualify_to, TARGET};
use super::Refusal;
use crate::policy::TableName;

impl Enforcer {
    pub(crate) fn rewrite_merge(&self, m: &mut Merge, uses: &mut Uses) -> Result<String, Refusal> {
        if !m.into || m.output.is_some() || !m.optimizer_hints.is_empty() {
            return Err(self.refuse("this MERGE syntax"));
        }
        let (name, alias) = match &m.table {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } if alias.as_ref().map_or(true, |a| a.columns.is_empty()) => {
                (name.clone(), alias.clone())
            }
            _ => return Err(self.refuse("this MERGE target")),
        };
        let (c, table) = self.target(&name)?;
        let target = alias.map_or_else(|| table.table.clone(), |a| fold(&a.name));
        let source_alias = match &m.source {
            TableFactor::Table { alias: Some(a), .. }
            | TableFactor::Derived { alias: Some(a), .. } => fold(&a.name),
            TableFactor::Table {
                name, alias: None, ..
            } => match name.0.last() {
                Some(ObjectNamePart::Identifier(i)) => fold(i),
                _ => return Err(self.refuse("this MERGE source")),
            },
            _ => return Err(self.refuse_with("this MERGE source", "give it an alias")),
        };
        if source_alias == target {
            return Err(self.refuse("a MERGE source named like its target"));
        }
        self.check_scope(m.on.as_ref(), c, false)?;
        qualify_to(m.on.as_mut(), c, &target);
        let mut clauses = Vec::with_capacity(m.clauses.len());
        let mut laterals: Vec<String> = Vec::new();
        for clause in &mut m.clauses {
            self.check_scope(&clause.predicate, c, false)?;
            let text = match clause.clause_kind {
                MergeClauseKind::Matched => {
                    if let Some(p) = &mut clause.predicate {
                        qualify_to(p, c, &target);
                        source_names(p, &source_alias);
                    }
                    rewrite_part(self, &mut clause.predicate, uses)?;
                    let names = (source_alias.as_str(), target.as_str());
                    self.matched(&mut clause.action, c, &table.to_string(), names, uses)?;
                    let when = match &clause.predicate {
                        Some(p) => format!("WHEN MATCHED AND ({p})"),
                        None => "WHEN MATCHED".to_string(),
                    };
                    format!("{when} THEN {}", clause.action)
                }
                MergeClauseKind::NotMatched => {
                    if let Some(p) = &mut clause.predicate {
                        source_names(p, &source_alias);
                    }
                    rewrite_part(self, &mut clause.predicate, uses)?;
                    let mut conditions: Vec<String> =
                        clause.predicate.iter().map(|p| format!("({p})")).collect();
                    let lateral = format!("pgward_v{}", laterals.len());
                    let names = (source_alias.as_str(), target.as_str(), lateral.as_str());
                    if let Some((subquery, filter)) =
                        self.not_matched(&mut clause.action, c, &table, names, uses)?
                    {
                        laterals.push(subquery);
                        conditions.extend(filter.map(|f| format!("({f})")));
                    }
                    let when = match conditions.is_empty() {
                        true => "WHEN NOT MATCHED".to_string(),
                        false => format!("WHEN NOT MATCHED AND {}", conditions.join(" AND ")),
                    };
                    format!("{when} THEN {}", clause.action)
                }
                _ => return Err(self.refuse("this WHEN clause of MERGE")),
            };
            clauses.push(text);
        }
        let mut source = vec![TableWithJoins {
            relation: m.source.clone(),
            joins: Vec::new(),
        }];
        rewrite_part(self, &mut source, uses)?;
        rewrite_part(self, m.on.as_mut(), uses)?;
        uses.tables.insert(table.clone());
        let source = source
            .first()
            .map(ToString::to_string)
            .ok_or_else(|| self.refuse("this MERGE source"))?;
        Ok(format!(
            "MERGE INTO {} AS {} USING ({source} LEFT JOIN {} AS {} ON ({}){}) ON {} {}",
            c.qualified,
            q(TARGET),
            Self::joinable(c),
            q(&target),
            m.on,
            laterals.concat(),
            Self::same_row(&target),
            clauses.join(" ")
        ))
    }

    fn matched(
        &self,
        action: &mut MergeAction,
        c: &Compiled,
        table: &str,
        (source, target): (&str, &str),
        uses: &mut Uses,
    ) -> Result<(), Refusal> {
        match action {
            MergeAction::Update(u) => {
                if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                    return Err(self.refuse("this MERGE UPDATE syntax"));
                }
                let MergeUpdateKind::Set(assignments) = &mut u.kind else {
                    return Err(self.refuse("UPDATE SET * in MERGE"));
                };
                for a in assignments.iter() {
                    self.assignable(a, c, table)?;
                    self.check_scope(&a.value, c, false)?;
                }
                for a in assignments.iter_mut() {
                    qualify_to(&mut a.value, c, target);
                    source_names(&mut a.value, source);
                }
                rewrite_part(self, assignments, uses)
            }
            MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => Ok(()),
            MergeAction::Insert(_) => Err(self.refuse("INSERT in WHEN MATCHED")),
        }
    }

    /// Checks an INSERT action and moves its values into a LATERAL
    /// subquery named `lateral`, computed once per source row (so a
    /// volatile value cannot pass the filter and then be stored as
    /// something else). Returns that subquery and the row filter over it.
    fn not_matched(
        &self,
        action: &mut MergeAction,
        c: &Compiled,
        table: &TableName,
        names: (&str, &str, &str),
        uses: &mut Uses,
    ) -> Result<Option<(String, Option<String>)>, Refusal> {
        let (source, target, lateral) = names;
        let table_name = &table.table;
        let table = table.to_string();
        let insert = match action {
            MergeAction::DoNothing { .. } => return Ok(None),
            MergeAction::Insert(i) => i,
            _ => return Err(self.refuse("UPDATE or DELETE in WHEN NOT MATCHED")),
        };
        if insert.insert_predicate.is_some() || insert.columns.is_empty() {
            return Err(self.refuse_with(
                "this MERGE INSERT",
                "name the columns: INSERT (a, b) VALUES (…)",
            ));
        }
        let MergeInsertKind::Values(values) = &mut insert.kind else {
            return Err(self.refuse("INSERT ROW in MERGE"));
        };
        let [row] = values.rows.as_mut_slice() else {
            return Err(self.refuse("this MERGE INSERT"));
        };
        let mut columns = Vec::new();
        for col in &insert.columns {
            let [ObjectNamePart::Identifier(col)] = col.0.as_slice() else {
                return Err(self.refuse("qualified INSERT columns"));
            };
            let col = fold(col);
            self.writable(c, &table, &col)?;
            if columns.contains(&col) {
                return Err(self.refuse(&format!("setting {table}.{col} twice")));
            }
            columns.push(col);
        }
        if columns.len() != row.content.len() {
            return Err(self.refuse("this MERGE INSERT"));
        }
        for value in row.content.iter_mut() {
            self.check_scope(value, c, false)?;
            source_names(value, source);
        }
        rewrite_part(self, &mut row.content, uses)?;
        let mut items = Vec::with_capacity(columns.len());
        for (col, value) in columns.iter().zip(row.content.iter_mut()) {
            let ty = c
                .columns
                .iter()
                .position(|x| x == col)
                .and_then(|k| c.types.get(k))
                .ok_or_else(|| self.refuse(&format!("writing column {table}.{col}")))?;
            // Only rows that will be inserted compute their values.
            items.push(format!(
                "CASE WHEN {}.\"pgward_ctid\" IS NULL THEN CAST(({value}) AS {ty}) END AS {}",
                q(target),
                q(col)
            ));
            *value = Expr::CompoundIdentifier(vec![
                Ident::with_quote('"', lateral),
                Ident::with_quote('"', col.as_str()),
            ]);
        }
        let values = format!("SELECT {}", items.join(", "));
        let Some(filter) = &c.filter else {
            let subquery = format!(" CROSS JOIN LATERAL ({values}) AS {}", q(lateral));
            return Ok(Some((subquery, None)));
        };
        if let Some(col) = c.filter_columns.iter().find(|f| !columns.contains(f)) {
            return Err(self.refuse_with(
                &format!("a MERGE INSERT into {table} that does not set {col}"),
                "the role's row filter reads that column",
            ));
        }
        // The filter reads the new values under the table's own name, as
        // it reads the table (it may name it), and nothing else.
        let subquery = format!(
            " CROSS JOIN LATERAL (SELECT *, ({filter}) AS {ok} FROM ({values}) AS {name}) AS {lateral}",
            ok = q(ACCEPTED),
            name = q(table_name),
            lateral = q(lateral),
        );
        let accepted = format!("{}.{}", q(lateral), q(ACCEPTED));
        Ok(Some((subquery, Some(accepted))))
    }
}

/// The LATERAL column that says whether a new row satisfies the filter.
const ACCEPTED: &str = "pgward_ok";

/// In WHEN NOT MATCHED only the source is in scope: every bare name is
/// the source's.
fn source_names<T: VisitMut>(node: &mut T, source: &str) {
    struct Source<'a>(&'a str);
    impl VisitorMut for Source<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::Identifier(i) = e {
                *e = Expr::CompoundIdentifier(vec![Ident::with_quote('"', self.0), i.clone()]);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Source(source));
}
