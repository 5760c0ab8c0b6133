//! SQL analysis and rewriting for restricted roles.
//!
//! The database must never see a restricted person's SQL as typed. It sees
//! the statement after pgward parsed it, resolved every relation, replaced
//! each protected table by a masked, row-filtered subquery, checked every
//! function against an allowlist and re-serialized the result. Whatever the
//! analyzer does not understand is refused ([`Refusal`], SQLSTATE 42501).
//!
//! This module is pure (text in, text out): the session layer supplies the
//! schema and caches the results.

pub mod catalog;
mod enforcer;
pub mod functions;
mod inline;
mod merge;
pub mod parse;
pub mod schema;
pub mod settings;
mod statement;
mod walk;
mod write;

pub use enforcer::Enforcer;
pub use statement::Rewritten;
pub use walk::Uses;

/// Why a statement was refused; becomes an ErrorResponse with SQLSTATE
/// 42501 (insufficient_privilege).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Enforcer {
    pub(crate) fn refuse(&self, what: &str) -> Refusal {
        Refusal {
            message: format!("pgward: {what} is not allowed for role \"{}\"", self.role),
            hint: None,
        }
    }

    /// [`Enforcer::refuse`] for a plural subject ("DO blocks are …").
    pub(crate) fn refuse_plural(&self, what: &str) -> Refusal {
        Refusal {
            message: format!("pgward: {what} are not allowed for role \"{}\"", self.role),
            hint: None,
        }
    }

    pub(crate) fn refuse_with(&self, what: &str, why: &str) -> Refusal {
        Refusal {
            message: format!(
                "pgward: {what} is not allowed for role \"{}\": {why}",
                self.role
            ),
            hint: None,
        }
    }

    pub(crate) fn not_listed(&self, relation: &str) -> Refusal {
        Refusal {
            message: format!(
                "pgward: relation \"{relation}\" is not in the policy of role \"{}\"",
                self.role
            ),
            hint: Some("restricted roles may read only the tables their policy lists".into()),
        }
    }

    pub(crate) fn function_refused(&self, name: &str) -> Refusal {
        Refusal {
            message: format!(
                "pgward: function {name}() is not allowed for role \"{}\"",
                self.role
            ),
            hint: Some(
                "restricted roles may call built-in value functions; list others under the role's `functions:` if they are safe"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
