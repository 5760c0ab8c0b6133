//! Enforcement for one restricted session: decides what each statement
//! becomes, in the relay's hot path.
//!
//! The relay hands over Query, Parse and FunctionCall frames; the guard
//! answers with the frame to send instead. A refused statement is not
//! answered by pgward directly — that would reorder replies in a pipeline
//! — but replaced by a *marker*: a statement that fails on the server with
//! a syntax error naming a per-session nonce. When that error comes back
//! in its natural place, the relay swaps in pgward's 42501 refusal. The
//! transaction semantics are therefore exactly those of a server-side
//! error.

pub mod cache;
pub mod errors;
pub mod literals;
pub mod schema_cache;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;

use crate::audit::{Analysis, Decision as AuditDecision};
use crate::policy::{ColumnRule, Role, TableName};
use crate::sql::{Enforcer, Refusal, Rewritten};
use cache::{AnalysisCache, Decision};
use schema_cache::{SchemaCache, Source};

/// What every restricted session shares.
pub struct GuardContext {
    pub schemas: Arc<SchemaCache>,
    pub analysis: AnalysisCache,
    pub hash_key: String,
}

/// What to send upstream for one client frame.
pub struct Outcome {
    pub frame: Bytes,
    /// Set when the statement was refused: the marker id and the refusal.
    pub refused: Option<(u64, Refusal)>,
    /// What the audit event says about the decision.
    pub analysis: Analysis,
}

pub struct Guard {
    ctx: Arc<GuardContext>,
    role: Arc<Role>,
    attrs: BTreeMap<String, String>,
    source: Source,
    policy_generation: u64,
    enforcer: Arc<Enforcer>,
    scope_key: String,
    /// [`Guard::scope_key`] for statement shapes (see [`literals`]).
    shape_key: String,
    nonce: String,
    next_marker: u64,
}

impl Guard {
    /// Prepares enforcement for a session: fetches (or reuses) the schema
    /// and compiles the role's tables against it.
    pub async fn start(
        ctx: Arc<GuardContext>,
        role: Arc<Role>,
        attrs: BTreeMap<String, String>,
        source: Source,
        policy_generation: u64,
    ) -> Result<Guard, String> {
        let schema = ctx.schemas.get(&source).await?;
        let enforcer = Arc::new(Enforcer::new(
            &role,
            &source.database,
            &attrs,
            &schema,
            &ctx.hash_key,
        ));
        let nonce: String = {
            let mut rng = rand::thread_rng();
            (0..12)
                .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
                .collect()
        };
        let mut guard = Guard {
            ctx,
            role,
            attrs,
            source,
            policy_generation,
            enforcer,
            scope_key: String::new(),
            shape_key: String::new(),
            nonce,
            next_marker: 0,
        };
        guard.set_keys();
        Ok(guard)
    }

    fn set_keys(&mut self) {
        self.scope_key = self.make_scope_key();
        self.shape_key = format!("shape|{}", self.scope_key);
    }

    fn make_scope_key(&self) -> String {
        let attrs = serde_json::to_string(&self.attrs).unwrap_or_default();
        let scope = format!(
            "{}|{}|{}|{}|{}|",
            self.policy_generation,
            self.role.name,
            self.source.database,
            self.enforcer.schema_version,
            attrs
        );
        // The length prefix makes scope+sql unambiguous.
        format!("{}:{scope}", scope.len())
    }

    /// Picks up a refreshed schema, if there is one.
    fn refresh(&mut self) {
        let Some(schema) = self.ctx.schemas.current(&self.source) else {
            return;
        };
        if schema.version != self.enforcer.schema_version {
            self.enforcer = Arc::new(Enforcer::new(
                &self.role,
                &self.source.database,
                &self.attrs,
                &schema,
                &self.ctx.hash_key,
            ));
            self.set_keys();
        }
    }

    /// The decision for one statement text, cached.
    pub fn decide(&mut self, sql: &str) -> Decision {
        self.refresh();
        let enforcer = &self.enforcer;
        if let Some((shape, literals)) = literals::normalize(sql) {
            let decision = self
                .ctx
                .analysis
                .decide(&self.shape_key, &shape, || enforcer.rewrite(&shape));
            // A refused shape falls through: the text itself decides.
            if let Ok(r) = decision.as_ref() {
                if let Some(sql) = literals::fill(&r.sql, &literals) {
                    return Arc::new(Ok(Rewritten {
                        sql,
                        tables: r.tables.clone(),
                        kinds: r.kinds.clone(),
                    }));
                }
            }
        }
        self.ctx
            .analysis
            .decide(&self.scope_key, sql, || enforcer.rewrite(sql))
    }

    /// The text marker errors carry; see the module docs.
    pub fn marker_prefix(&self) -> String {
        format!("pgward_refused_{}_", self.nonce)
    }

    fn marker(&mut self, refusal: Refusal) -> (String, (u64, Refusal)) {
        self.next_marker += 1;
        let id = self.next_marker;
        (format!("{}{id}", self.marker_prefix()), (id, refusal))
    }

    /// Handles a whole Query ('Q'), Parse ('P') or FunctionCall ('F')
    /// frame, header included.
    pub fn client_frame(&mut self, frame: &[u8]) -> Outcome {
        let tag = frame.first().copied().unwrap_or(0);
        let body = frame.get(5..).unwrap_or(&[]);
        match tag {
            b'Q' => {
                let sql = cstr(body).map(|(s, _)| s);
                let result = match sql {
                    Some(Ok(sql)) => self.decide(sql),
                    _ => Arc::new(Err(self.not_utf8())),
                };
                match result.as_ref() {
                    Ok(r) => Outcome {
                        frame: query_frame(&r.sql),
                        refused: None,
                        analysis: self.describe(r),
                    },
                    Err(refusal) => {
                        let (text, refused) = self.marker(refusal.clone());
                        Outcome {
                            frame: query_frame(&text),
                            refused: Some(refused),
                            analysis: denied(refusal),
                        }
                    }
                }
            }
            b'P' => {
                let parsed = cstr(body).and_then(|(name, rest)| {
                    let (sql, tail) = cstr(rest)?;
                    Some((name, sql, tail))
                });
                let Some((Ok(name), sql, tail)) = parsed else {
                    let refusal = self.not_utf8();
                    let analysis = denied(&refusal);
                    let (text, refused) = self.marker(refusal);
                    return Outcome {
                        frame: parse_frame(b"", &text, &[0, 0]),
                        refused: Some(refused),
                        analysis,
                    };
                };
                let result = match sql {
                    Ok(sql) => self.decide(sql),
                    Err(_) => Arc::new(Err(self.not_utf8())),
                };
                match result.as_ref() {
                    Ok(r) => Outcome {
                        frame: parse_frame(name.as_bytes(), &r.sql, tail),
                        refused: None,
                        analysis: self.describe(r),
                    },
                    Err(refusal) => {
                        let (text, refused) = self.marker(refusal.clone());
                        Outcome {
                            frame: parse_frame(name.as_bytes(), &text, tail),
                            refused: Some(refused),
                            analysis: denied(refusal),
                        }
                    }
                }
            }
            _ => {
                let refusal = self.enforcer.refuse_with(
                    "the fast-path function call interface",
                    "it calls functions by OID, outside SQL analysis",
                );
                let analysis = denied(&refusal);
                let (text, refused) = self.marker(refusal);
                Outcome {
                    frame: query_frame(&text),
                    refused: Some(refused),
                    analysis,
                }
            }
        }
    }

    /// The tables, masks and row filters a rewritten statement used.
    fn describe(&self, r: &Rewritten) -> Analysis {
        let mut a = Analysis {
            sent: Some(r.sql.clone()),
            decision: Some(AuditDecision::Rewritten),
            ..Analysis::default()
        };
        for table in &r.tables {
            let name = table.to_string();
            if let Some(policy) = self.table_policy(table) {
                for (column, rule) in &policy.columns {
                    if let ColumnRule::Mask(mask) = rule {
                        let kind = format!("{mask:?}");
                        let kind = kind.split([' ', '{']).next().unwrap_or("custom");
                        a.masks
                            .push(format!("{name}.{column}: {}", kind.to_ascii_lowercase()));
                    }
                }
            }
            let filter = self
                .enforcer
                .tables
                .get(table)
                .and_then(|p| p.template.as_ref().ok())
                .and_then(|c| c.filter.as_ref());
            if let Some(filter) = filter {
                a.filters.push(format!("{name}: {filter}"));
            }
            a.relations.push(name);
        }
        a
    }

    fn table_policy(&self, table: &TableName) -> Option<&crate::policy::TablePolicy> {
        let full = table.to_string();
        self.role
            .tables
            .get(&full)
            .or_else(|| self.role.tables.get(&table.table))
    }

    fn not_utf8(&self) -> Refusal {
        Refusal {
            message: format!(
                "pgward: statement text is not valid UTF-8; role \"{}\" must use client_encoding UTF8",
                self.role.name
            ),
            hint: None,
        }
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }
}

fn denied(refusal: &Refusal) -> Analysis {
    Analysis {
        decision: Some(AuditDecision::Denied),
        reason: Some(refusal.message.clone()),
        ..Analysis::default()
    }
}

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(Result<&str, std::str::Utf8Error>, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&b[..end]), &b[end + 1..]))
}

/// A simple Query message carrying `sql`.
pub fn query_frame(sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    out.put_u8(b'Q');
    out.put_u32((sql.len() + 5) as u32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.freeze()
}

fn parse_frame(name: &[u8], sql: &str, tail: &[u8]) -> Bytes {
    let len = 4 + name.len() + 1 + sql.len() + 1 + tail.len();
    let mut out = BytesMut::with_capacity(len + 1);
    out.put_u8(b'P');
    out.put_u32(len as u32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.put_slice(tail);
    out.freeze()
}
