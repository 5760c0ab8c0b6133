//! Durable state: people, their roles and attributes, and login failures.
//!
//! The rest of pgward sees only the [`Store`] trait, a narrow, synchronous
//! interface. SQLite ([`SqliteStore`]) is the embedded default; a PostgreSQL
//! implementation for several pgward instances behind a load balancer fits
//! behind the same trait. Calls block, so async code runs them with
//! `tokio::task::spawn_blocking`.

pub mod access;
pub mod certs;
pub mod mfa;
mod migrations;
mod sqlite;

use std::collections::BTreeMap;
use std::time::SystemTime;

pub use sqlite::SqliteStore;

use crate::policy::RoleName;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file cannot be created or made private.
    #[error("store: {0}")]
    File(#[from] std::io::Error),
    #[error("store schema version {found} is newer than this pgward understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    #[error("no grant {0}")]
    NoSuchGrant(i64),
    #[error("no request {0}")]
    NoSuchRequest(i64),
    /// The change does not fit the current state (a request already
    /// decided, a grant already revoked); the message says why.
    #[error("{0}")]
    Conflict(String),
}

/// A person known to pgward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// PHC-format argon2id hash.
    pub password_hash: String,
    /// Roles in the order they were given; the first is the default.
    pub roles: Vec<RoleName>,
    pub attrs: BTreeMap<String, String>,
    pub disabled: bool,
    pub created_at: SystemTime,
    pub last_login: Option<SystemTime>,
    /// A TOTP secret is enrolled: password logins need a code.
    pub mfa_enrolled: bool,
    /// Logins must use a second factor even before one is enrolled.
    pub mfa_required: bool,
    /// A service account: long-lived client certificates, no second factor.
    pub service: bool,
}

/// The answer to [`Store::begin_login_attempt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Go ahead and check the password; report the outcome with
    /// [`Store::login_failed`] or [`Store::login_succeeded`].
    Allowed {
        attempt: i64,
    },
    /// The checks already running for this name could use up what is left
    /// of its failure budget: wait a moment and ask again.
    Busy,
    Locked,
}

/// What `user add` needs.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub password_hash: String,
    pub roles: Vec<RoleName>,
    pub attrs: BTreeMap<String, String>,
}

/// Everything pgward keeps: people (this trait), their second factors,
/// grants and requests, and issued client certificates.
pub trait Store:
    Send + Sync + 'static + mfa::MfaStore + access::AccessStore + certs::CertStore
{
    fn add_user(&self, user: &NewUser) -> Result<(), StoreError>;
    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError>;
    fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError>;
    fn set_roles(&self, name: &str, roles: &[RoleName]) -> Result<(), StoreError>;
    /// Sets (`Some`) or removes (`None`) an attribute.
    fn set_attr(&self, name: &str, key: &str, value: Option<&str>) -> Result<(), StoreError>;

    /// Starts a login attempt for a name (known or not), atomically: refused
    /// when the name has `max_failures` failures since `since`; `Busy` when
    /// failures plus checks in flight reach that number. So concurrent
    /// guesses can never get more than `max_failures` password checks, while
    /// a pool opening many connections with the right password only waits.
    fn begin_login_attempt(
        &self,
        name: &str,
        at: SystemTime,
        since: SystemTime,
        max_failures: u32,
    ) -> Result<LoginAttempt, StoreError>;
    /// The password was wrong: the attempt becomes a failure. Returns the
    /// name's failures since `since`.
    fn login_failed(&self, name: &str, attempt: i64, since: SystemTime) -> Result<u32, StoreError>;
    /// Clears the name's failures and attempts, and notes the login time.
    fn login_succeeded(&self, name: &str, at: SystemTime) -> Result<(), StoreError>;
}

/// Longest user name: `pgward:` plus the name must fit PostgreSQL's 63-byte
/// `application_name`, so the database's logs always show the whole name.
pub const MAX_USER_NAME: usize = 48;

/// User names are what people type into psql and BI tools; keeping them to a
/// conservative alphabet means they never need quoting and `+` can separate
/// the role.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {name:?}: use 1-{MAX_USER_NAME} letters, digits, '_', '.', '-' or '@'"
        ))
    }
}

/// Attribute keys are referenced from row filters as `{{ user.KEY }}`.
pub fn validate_attr_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 63
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid attribute name {key:?}: use letters, digits and '_', not starting with a digit"
        ))
    }
}
