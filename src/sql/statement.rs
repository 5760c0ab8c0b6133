//! Top-level statements: which kinds a restricted role may run, and how
//! each is rewritten.
//!
//! The list is closed. Queries, EXPLAIN, COPY … TO STDOUT, cursors,
//! prepared statements, transaction control and a few safe settings are
//! understood; every other statement is refused with a reason.

use std::collections::BTreeSet;

use sqlparser::ast::{
    CopySource, CopyTarget, DeclareType, DescribeAlias, Expr, Ident, Reset, Set, Statement, Value,
};

use super::enforcer::Enforcer;
use super::parse::parse;
use super::settings;
use super::walk::{fold, rewrite_part, rewrite_query, Uses};
use super::Refusal;
use crate::policy::TableName;

/// A statement as the database will receive it.
#[derive(Clone, Debug)]
pub struct Rewritten {
    pub sql: String,
    /// Protected tables the statement reads.
    pub tables: BTreeSet<TableName>,
    /// First keyword(s) of each statement (`SELECT`, `COPY`, …).
    pub kinds: Vec<String>,
}

impl Enforcer {
    /// Analyzes and rewrites `sql`, or says why it is refused. A string with
    /// several statements is refused whole if any one of them is.
    pub fn rewrite(&self, sql: &str) -> Result<Rewritten, Refusal> {
        let (statements, is_move) = match parse(sql) {
            Ok(s) => (s, false),
            Err(e) => match cursor_statement(sql) {
                Some(parsed) => parsed,
                None => return Err(self.unparsable(sql, &e)),
            },
        };
        let mut uses = Uses::default();
        let mut out = Vec::with_capacity(statements.len());
        let mut kinds = Vec::with_capacity(statements.len());
        for mut s in statements {
            kinds.push(kind(&s));
            self.statement(&mut s, &mut uses)?;
            let text = s.to_string();
            out.push(match (is_move, text.strip_prefix("FETCH")) {
                (true, Some(rest)) => format!("MOVE{rest}"),
                _ => text,
            });
        }
        let sql = out.join(";\n");
        // sqlparser prints what it parsed; printing what it parses from its
        // own output must give the same text, or the database might read
        // the statement differently from how pgward analyzed it.
        if !is_move {
            let again = parse(&sql).map(|s| {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(";\n")
            });
            if again.as_deref() != Ok(sql.as_str()) {
                return Err(self.refuse("a statement pgward cannot re-serialize faithfully"));
            }
        }
        Ok(Rewritten {
            sql,
            tables: uses.tables,
            kinds,
        })
    }

    fn need_read(&self) -> Result<(), Refusal> {
        if self.may_read {
            Ok(())
        } else {
            Err(self.refuse_with("reading", "the role's statements do not include read"))
        }
    }

    fn need_write(&self) -> Result<(), Refusal> {
        if self.may_write {
            Ok(())
        } else {
            Err(self.refuse_with(
                "writing (INSERT, UPDATE, DELETE, MERGE, COPY FROM)",
                "the role's statements do not include write",
            ))
        }
    }

    fn statement(&self, s: &mut Statement, uses: &mut Uses) -> Result<(), Refusal> {
        match s {
            Statement::Query(q) => {
                self.need_read()?;
                rewrite_query(self, q, &[], uses)
            }
            Statement::Explain {
                describe_alias,
                analyze,
                statement,
                options,
                ..
            } => {
                if !matches!(describe_alias, DescribeAlias::Explain) {
                    return Err(self.refuse("DESCRIBE"));
                }
                let analyze = *analyze
                    || options.iter().flatten().any(|o| {
                        fold(&o.name) == "analyze"
                            && !matches!(
                                &o.arg,
                                Some(Expr::Value(v)) if matches!(v.value, Value::Boolean(false))
                                    || v.value.to_string().eq_ignore_ascii_case("off")
                                    || v.value.to_string() == "0"
                            )
                    });
                let Statement::Query(q) = statement.as_mut() else {
                    return Err(self.refuse("EXPLAIN of anything but a query"));
                };
                self.need_read()?;
                let mut inner = Uses::default();
                rewrite_query(self, q, &[], &mut inner)?;
                if analyze && !inner.tables.is_empty() {
                    return Err(self.refuse_with(
                        "EXPLAIN ANALYZE over protected tables",
                        "its row counts reveal rows the policy filters out",
                    ));
                }
                if inner.carries_key {
                    return Err(self.refuse_with(
                        "EXPLAIN over hash-masked columns",
                        "the plan would show the masking key",
                    ));
                }
                uses.tables.extend(inner.tables);
                Ok(())
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                if !*to {
                    self.need_write()?;
                    return Err(self.refuse_with("COPY … FROM", "use INSERT"));
                }
                if !matches!(target, CopyTarget::Stdout) {
                    return Err(self.refuse_with(
                        "COPY to a file or program",
                        "only COPY … TO STDOUT is allowed",
                    ));
                }
                self.need_read()?;
                if let CopySource::Table {
                    table_name,
                    columns,
                } = source
                {
                    let list = if columns.is_empty() {
                        "*".to_string()
                    } else {
                        columns
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let select = format!("SELECT {list} FROM {table_name}");
                    match parse(&select).ok().and_then(|mut s| s.pop()) {
                        Some(Statement::Query(q)) => *source = CopySource::Query(q),
                        _ => return Err(self.refuse("this COPY source")),
                    }
                }
                match source {
                    CopySource::Query(q) => rewrite_query(self, q, &[], uses),
                    CopySource::Table { .. } => Err(self.refuse("this COPY source")),
                }
            }
            Statement::Set(set) => {
                if keep_application_name(set) {
                    Ok(())
                } else {
                    self.check_set(set)
                }
            }
            Statement::Reset(r) => match &r.reset {
                // Startup values, which pgward chose, are what RESET restores.
                Reset::ALL => Ok(()),
                Reset::ConfigurationParameter(name) => {
                    let name = name.to_string().to_ascii_lowercase();
                    if settings::is_safe(&name) || name == "application_name" {
                        Ok(())
                    } else {
                        Err(self.refuse(&format!("RESET {name}")))
                    }
                }
                Reset::SessionAuthorization => Err(self.refuse("RESET SESSION AUTHORIZATION")),
            },
            Statement::ShowVariable { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Deallocate { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. }
            | Statement::UNLISTEN { .. } => Ok(()),
            Statement::LISTEN { channel } => {
                // The channel as PostgreSQL names it: an unquoted name has
                // its ASCII letters lowercased (not `É`, not the Kelvin sign,
                // which Unicode lowercasing would turn into `k`), and every
                // name is cut to 63 bytes.
                let name = fold(channel);
                if self.may_listen(&name) {
                    Ok(())
                } else {
                    Err(self.refuse_with(
                        &format!("LISTEN {name}"),
                        "notification payloads come from other sessions and are not masked; \
                         list the channel under `listen:` in the role's policy to allow it",
                    ))
                }
            }
            Statement::Fetch { into, .. } => {
                if into.is_some() {
                    Err(self.refuse("FETCH … INTO"))
                } else {
                    Ok(())
                }
            }
            Statement::Prepare { statement, .. } => {
                if matches!(statement.as_ref(), Statement::Prepare { .. }) {
                    return Err(self.refuse("nested PREPARE"));
                }
                self.statement(statement, uses)
            }
            Statement::Execute {
                parameters,
                immediate,
                into,
                using,
                ..
            } => {
                if *immediate || !into.is_empty() || !using.is_empty() {
                    return Err(self.refuse("this EXECUTE syntax"));
                }
                rewrite_part(self, parameters, uses)
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    let cursor = matches!(d.declare_type, Some(DeclareType::Cursor))
                        && d.data_type.is_none()
                        && d.assignment.is_none();
                    match (&mut d.for_query, cursor) {
                        (Some(q), true) => {
                            self.need_read()?;
                            rewrite_query(self, q, &[], uses)?;
                        }
                        _ => return Err(self.refuse("DECLARE of anything but a cursor")),
                    }
                }
                Ok(())
            }
            Statement::NOTIFY { .. } => {
                Err(self.refuse_with("NOTIFY", "it sends data to other sessions"))
            }
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => {
                self.need_write()?;
                if s.to_string().to_lowercase().contains("pgward_") {
                    return Err(self.refuse_with(
                        "this statement",
                        "names starting with pgward_ are reserved for pgward's rewriting",
                    ));
                }
                let text = match s {
                    Statement::Insert(i) => self.rewrite_insert(i, uses)?,
                    Statement::Update(u) => self.rewrite_update(u, uses)?,
                    Statement::Delete(d) => self.rewrite_delete(d, uses)?,
                    Statement::Merge(m) => self.rewrite_merge(m, uses)?,
                    _ => return Err(self.refuse(&kind(s))),
                };
                match parse(&text).map(|mut v| (v.len(), v.pop())) {
                    Ok((1, Some(rewritten))) => {
                        *s = rewritten;
                        Ok(())
                    }
                    _ => Err(self.refuse("a statement pgward cannot re-serialize faithfully")),
                }
            }
            other => Err(self.refuse(&kind(other))),
        }
    }

    fn check_set(&self, set: &Set) -> Result<(), Refusal> {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = variable.to_string().to_ascii_lowercase();
                let utf8 = matches!(values.as_slice(), [v] if settings::is_utf8(&v.to_string()));
                if name == "client_encoding" && utf8 {
                    return Ok(());
                }
                if settings::is_safe(&name) {
                    Ok(())
                } else {
                    Err(self.refuse_with(
                        &format!("SET {name}"),
                        "restricted roles may change only formatting and timeout settings",
                    ))
                }
            }
            Set::SetNames {
                charset_name,
                collation_name: None,
            } if settings::is_utf8(&charset_name.value) => Ok(()),
            Set::SetNames { .. } => Err(self.refuse_with(
                "SET NAMES to an encoding other than UTF8",
                "restricted sessions use UTF8 so the database reads statements as pgward analyzed them",
            )),
            Set::SetTimeZone { .. } | Set::SetNamesDefault {} | Set::SetTransaction { .. } => {
                Ok(())
            }
            Set::SetRole { .. } => Err(self.refuse("SET ROLE")),
            Set::SetSessionAuthorization(_) => Err(self.refuse("SET SESSION AUTHORIZATION")),
            _ => Err(self.refuse("this SET syntax")),
        }
    }

    /// A refusal for text that does not parse, naming the statement when
    /// its first words say what it is.
    fn unparsable(&self, sql: &str, error: &str) -> Refusal {
        let words: Vec<String> = sql
            .split_whitespace()
            .take(3)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let first = words.first().map(String::as_str).unwrap_or("");
        let named = match first {
            "DO" => return self.refuse_plural("DO blocks"),
            "CREATE" | "ALTER" | "DROP" | "GRANT" | "REVOKE" | "CALL" | "VACUUM" | "CLUSTER"
            | "REINDEX" | "LOAD" | "IMPORT" | "SECURITY" | "REFRESH" => {
                Some(words.iter().take(2).cloned().collect::<Vec<_>>().join(" "))
            }
            _ => None,
        };
        match named {
            Some(what) => self.refuse(&what),
            None => Refusal {
                message: format!(
                    "pgward: statement refused for role \"{}\": pgward could not analyze it ({error})",
                    self.role
                ),
                hint: Some(
                    "restricted roles may run only statements pgward fully understands".into(),
                ),
            },
        }
    }
}

/// `MOVE` and `FETCH` that sqlparser cannot parse as they are, parsed as
/// a `FETCH`, and whether it was a `MOVE`. `MOVE` is `FETCH` without rows;
/// sqlparser knows only the latter. Both may leave out the `FROM`/`IN`
/// before the cursor name, which sqlparser requires (asyncpg's
/// `Cursor.forward()` sends `MOVE FORWARD n portal`): it is put back. The
/// database gets the statement printed from what was parsed, so it reads
/// what pgward analyzed.
fn cursor_statement(sql: &str) -> Option<(Vec<Statement>, bool)> {
    let trimmed = sql.trim_start();
    let (is_move, rest) = if trimmed.get(..4)?.eq_ignore_ascii_case("move") {
        (true, &trimmed[4..])
    } else if trimmed.get(..5)?.eq_ignore_ascii_case("fetch") {
        (false, &trimmed[5..])
    } else {
        return None;
    };
    let fetch = |text: &str| {
        let statements = parse(&format!("FETCH{text}")).ok()?;
        match statements.as_slice() {
            [Statement::Fetch { into: None, .. }] => Some(statements),
            _ => None,
        }
    };
    if is_move {
        if let Some(statements) = fetch(rest) {
            return Some((statements, true));
        }
    }
    // Without FROM or IN the cursor name is the last word; without a
    // direction it is NEXT.
    let (before, name) = rest.trim_end().rsplit_once(char::is_whitespace)?;
    let before = if before.trim().is_empty() {
        " NEXT"
    } else {
        before
    };
    fetch(&format!("{before} FROM {name}")).map(|s| (s, is_move))
}

/// The first keywords of a statement, for messages and the audit trail.
fn kind(s: &Statement) -> String {
    let text = s.to_string();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "ALTER" | "DROP" => {
            let mut out = first;
            for w in words.take(3) {
                let w = w.to_ascii_uppercase();
                out.push(' ');
                out.push_str(&w);
                if !matches!(
                    w.as_str(),
                    "OR" | "REPLACE"
                        | "TEMP"
                        | "TEMPORARY"
                        | "UNIQUE"
                        | "MATERIALIZED"
                        | "UNLOGGED"
                ) {
                    break;
                }
            }
            out
        }
        _ => first,
    }
}

/// `SET application_name = …` becomes `SET application_name = DEFAULT`;
/// returns whether it was one.
///
/// pgward tags the session's `application_name` with the person at startup
/// (`pgward:ann/psql`) so the database's logs and `pg_stat_activity` say who
/// it was; a restricted role must not replace the tag. Refusing the SET is
/// no answer either: pgjdbc runs `SET application_name = 'PostgreSQL JDBC
/// Driver'` while connecting (unless `assumeMinServerVersion` is 9.0 or
/// later), so every JDBC login would fail. DEFAULT restores the tag.
fn keep_application_name(set: &mut Set) -> bool {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } if variable
            .to_string()
            .eq_ignore_ascii_case("application_name") =>
        {
            *values = vec![Expr::Identifier(Ident::new("DEFAULT"))];
            true
        }
        _ => false,
    }
}
