//! A role: which database account it uses and what it may touch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::access::{BreakGlass, ConsoleRight, GrantOnly, GrantRules};
use super::secret::{Secret, SecretSource};
use super::table::{TableName, TablePolicy};

/// A role name as written in policy files and chosen at login.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    /// Role names are short identifiers so they can ride inside a user name
    /// (`alice+dba`) and a libpq options string unescaped.
    pub fn parse(s: &str) -> Result<RoleName, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(RoleName(s.to_string()))
        } else {
            Err(format!(
                "invalid role name {s:?}: use 1-63 letters, digits, '_' or '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Kinds of statement a role may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementClass {
    Read,
    Write,
    Ddl,
    Admin,
    All,
}

/// The database account a role connects as.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAccount {
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    #[serde(skip)]
    pub resolved_password: Option<Secret>,
}

impl fmt::Debug for UpstreamAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print an inline password, even in debug logs.
        f.debug_struct("UpstreamAccount")
            .field("user", &self.user)
            .field("source", &self.source())
            .finish()
    }
}

impl UpstreamAccount {
    fn source(&self) -> SecretSource {
        SecretSource {
            password: self.password.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    #[serde(skip, default = "placeholder_name")]
    pub name: RoleName,
    pub upstream: UpstreamAccount,
    /// Databases this role may connect to; `"*"` for any.
    #[serde(default = "any_database")]
    pub databases: Vec<String>,
    #[serde(default)]
    pub statements: Vec<StatementClass>,
    /// Relayed as typed (still authenticated and audited). Roles that are not
    /// unrestricted are subject to SQL analysis and rewriting.
    #[serde(default)]
    pub unrestricted: bool,
    /// Per-table rules for restricted roles; tables not listed are denied.
    #[serde(default)]
    pub tables: BTreeMap<String, TablePolicy>,
    /// Functions a restricted role may call beyond the built-in safe set
    /// (`schema.function`).
    #[serde(default)]
    pub functions: Vec<String>,
    /// Notification channels a restricted role may LISTEN on: names as
    /// PostgreSQL spells them (lowercase unless quoted), or a prefix ending
    /// in `*`. None by default: NOTIFY payloads come from other sessions
    /// and are not masked.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Schemas unqualified table names resolve in, for restricted roles.
    /// pgward pins the session's `search_path` to this list.
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    /// Only usable through a time-boxed grant (see [`super::access`]).
    #[serde(default)]
    grant_only: Option<GrantOnly>,
    /// Caps and approvals for grants of a role that is not grant-only.
    #[serde(default)]
    grants: Option<GrantRules>,
    /// Who may activate this role in an emergency, and for how long.
    #[serde(default)]
    pub break_glass: Option<BreakGlass>,
    /// Logins in this role need a second factor (TOTP, or a client
    /// certificate issued after one).
    #[serde(default)]
    pub mfa: bool,
    /// What holders of this role may do in the admin console.
    #[serde(default)]
    pub console: Vec<ConsoleRight>,
    /// Overrides `sessions.idle_timeout` for this role.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Overrides `sessions.max_lifetime` for this role.
    #[serde(default, with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
}

fn placeholder_name() -> RoleName {
    RoleName(String::new())
}

fn default_search_path() -> Vec<String> {
    vec!["public".into()]
}

fn any_database() -> Vec<String> {
    vec!["*".into()]
}

impl Role {
    pub(super) fn validate(&mut self, base: &Path) -> Result<(), String> {
        if self.upstream.user.is_empty() {
            return Err("upstream.user must not be empty".into());
        }
        if self.databases.is_empty() {
            return Err("databases must list at least one database (or \"*\")".into());
        }
        self.upstream.resolved_password = self.upstream.source().resolve(base)?;
        if self.unrestricted && !self.tables.is_empty() {
            return Err(
                "an unrestricted role is relayed as typed; remove `tables` or `unrestricted`"
                    .into(),
            );
        }
        if !self.unrestricted {
            let broad = [StatementClass::Ddl, StatementClass::Admin];
            if let Some(c) = self.statements.iter().find(|c| broad.contains(c)) {
                return Err(format!(
                    "statement class {c:?} needs an unrestricted role: pgward cannot confine DDL or admin commands to a table policy (restricted roles may have read and write)"
                ).to_lowercase());
            }
        }
        if matches!(self.grant_only, Some(GrantOnly::Rules(_))) && self.grants.is_some() {
            return Err(
                "give grant rules once: either `grant_only: {…}` or `grant_only: true` with `grants: {…}`"
                    .into(),
            );
        }
        let rules = self.grant_rules();
        if rules.max.is_zero() || rules.request_ttl.is_zero() {
            return Err("grant max and request_ttl must be longer than zero".into());
        }
        if rules.approvals == 0 {
            return Err("approvals must be at least 1 (use `pgward grant add` to give a role without approval)".into());
        }
        if let Some(bg) = &self.break_glass {
            if bg.max.is_zero() {
                return Err("break_glass.max must be longer than zero".into());
            }
            if bg.allowed.is_empty() {
                return Err(
                    "break_glass.allowed must name the roles whose holders may use it".into(),
                );
            }
        }
        for r in self.referenced_roles() {
            RoleName::parse(r)?;
        }
        for s in &self.search_path {
            TableName::parse(&format!("{s}.x"))
                .map_err(|_| format!("invalid schema {s:?} in search_path"))?;
        }
        for f in &self.functions {
            TableName::parse(f).map_err(|_| {
                format!("invalid function name {f:?} in functions: use schema.function")
            })?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, table) in &self.tables {
            let parsed = TableName::parse(name)?;
            if !seen.insert(parsed.clone()) {
                return Err(format!("table {parsed} is listed twice"));
            }
            table.validate().map_err(|e| format!("table {name}: {e}"))?;
        }
        Ok(())
    }

    /// Usable only through a grant, never by assignment alone.
    pub fn is_grant_only(&self) -> bool {
        matches!(
            self.grant_only,
            Some(GrantOnly::Flag(true)) | Some(GrantOnly::Rules(_))
        )
    }

    /// The caps and approvals for grants of this role.
    pub fn grant_rules(&self) -> GrantRules {
        match (&self.grant_only, &self.grants) {
            (Some(GrantOnly::Rules(rules)), _) | (_, Some(rules)) => rules.clone(),
            _ => GrantRules::default(),
        }
    }

    /// Role names this role refers to (approvers, break-glass holders), for
    /// checking that they exist.
    pub fn referenced_roles(&self) -> Vec<&str> {
        let rules = match (&self.grant_only, &self.grants) {
            (Some(GrantOnly::Rules(rules)), _) | (_, Some(rules)) => rules.approvers.as_slice(),
            _ => &[],
        };
        let allowed = self
            .break_glass
            .as_ref()
            .map_or(&[][..], |b| b.allowed.as_slice());
        rules.iter().chain(allowed).map(String::as_str).collect()
    }

    /// Attribute names the role's row filters need from each user.
    pub fn required_attributes(&self) -> std::collections::BTreeSet<String> {
        self.tables
            .values()
            .filter_map(|t| t.rows.as_ref())
            .flat_map(|f| f.attributes())
            .map(str::to_string)
            .collect()
    }

    pub fn allows_database(&self, database: &str) -> bool {
        self.databases.iter().any(|d| d == "*" || d == database)
    }
}
