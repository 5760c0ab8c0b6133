//! Picking the session's role at login.
//!
//! A role is usable when it is assigned to the person (and not grant-only),
//! or when an active grant gives it to them for the database they connect
//! to. The role's own conditions follow: a second factor where the policy
//! asks for one.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use crate::auth::Person;
use crate::error::{PgError, SqlState};
use crate::policy::{PolicySet, RoleName};
use crate::store::{Store, StoreError};

/// A person who has proven who they are, and the role they act in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: RoleName,
    pub attrs: BTreeMap<String, String>,
    /// The grant the role comes from, when it is not assigned.
    pub via: Option<Via>,
}

/// A grant behind a session's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub grant: i64,
    /// `grant`, `request` or `break_glass`.
    pub kind: String,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.replace('_', "-"), self.grant)
    }
}

/// Why a person may not act in the role they asked for.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("user {user:?} may not use role {role:?}")]
    NotGranted { user: String, role: RoleName },
    #[error("role {role:?} is used only through a time-boxed grant")]
    GrantOnly { user: String, role: RoleName },
    #[error("user {0:?} has no roles")]
    NoRoles(String),
    #[error("role {0:?} needs a second factor")]
    NeedsSecondFactor(RoleName),
    #[error("role {0:?} is not defined in the policies")]
    Undefined(RoleName),
    #[error("login store unavailable: {0}")]
    Store(#[from] StoreError),
}

impl Denied {
    pub fn to_pg_error(&self) -> PgError {
        let fatal = |msg: String| PgError::fatal(SqlState::INVALID_AUTHORIZATION, msg);
        match self {
            Denied::NotGranted { user, role } => {
                fatal(format!("pgward: user \"{user}\" may not use role \"{role}\""))
                    .with_hint("request it in the pgward console: REQUEST ROLE … FOR '1h' REASON '…'")
            }
            Denied::GrantOnly { user, role } => fatal(format!(
                "pgward: role \"{role}\" is used only through a time-boxed grant, and user \"{user}\" has none active"
            ))
            .with_hint("request it in the pgward console: REQUEST ROLE … FOR '1h' REASON '…'"),
            Denied::NoRoles(user) => fatal(format!("pgward: user \"{user}\" has no roles")),
            Denied::NeedsSecondFactor(role) => fatal(format!(
                "pgward: role \"{role}\" requires a second factor"
            ))
            .with_hint("append ':' and your 6-digit TOTP code to the password, or log in with a pgward client certificate"),
            Denied::Undefined(role) => fatal(format!(
                "pgward: role \"{role}\" is not defined in the policies"
            )),
            Denied::Store(_) => PgError::fatal(
                SqlState::CONNECTION_REJECTED,
                "pgward: login is temporarily unavailable (the user store cannot be read)",
            ),
        }
    }
}

/// The role `person` acts in when asking for `requested` (or their default)
/// in `database`. Blocking: call from a blocking thread.
pub fn resolve(
    store: &dyn Store,
    policies: &PolicySet,
    person: &Person,
    requested: Option<&RoleName>,
    database: &str,
) -> Result<Identity, Denied> {
    let grant_only = |r: &RoleName| policies.role(r).is_some_and(|p| p.is_grant_only());
    let assigned = |r: &RoleName| person.roles.contains(r) && !grant_only(r);
    let (role, via) = match requested {
        Some(r) if assigned(r) => (r.clone(), None),
        Some(r) => match store.active_grant(&person.user, r, database, SystemTime::now())? {
            Some(grant) => (
                r.clone(),
                Some(Via {
                    grant: grant.id,
                    kind: grant.kind.as_str().to_string(),
                }),
            ),
            None => {
                return Err(if person.roles.contains(r) {
                    Denied::GrantOnly {
                        user: person.user.clone(),
                        role: r.clone(),
                    }
                } else {
                    Denied::NotGranted {
                        user: person.user.clone(),
                        role: r.clone(),
                    }
                })
            }
        },
        None => match person.roles.iter().find(|r| assigned(r)) {
            Some(r) => (r.clone(), None),
            // Nothing assigned: the active grant that lasts longest.
            None => {
                let filter = crate::store::access::AccessFilter {
                    user: Some(person.user.clone()),
                    current: Some(SystemTime::now()),
                };
                let granted = store
                    .grants(&filter)?
                    .into_iter()
                    .filter(|g| g.covers(database))
                    .max_by_key(|g| g.expires_at);
                match granted {
                    Some(g) => (
                        g.role.clone(),
                        Some(Via {
                            grant: g.id,
                            kind: g.kind.as_str().to_string(),
                        }),
                    ),
                    None => return Err(Denied::NoRoles(person.user.clone())),
                }
            }
        },
    };
    let policy = policies
        .role(&role)
        .ok_or_else(|| Denied::Undefined(role.clone()))?;
    if policy.mfa && !person.second_factor.is_some() {
        return Err(Denied::NeedsSecondFactor(role));
    }
    Ok(Identity {
        user: person.user.clone(),
        role,
        attrs: person.attrs.clone(),
        via,
    })
}
