//! How a role is reached other than by being assigned: time-boxed grants,
//! requests and their approvals, break-glass, and the second factor and
//! console rights a role carries.
//!
//! ```yaml
//! dba:
//!   grant_only: { max: 4h, approvals: 1, approvers: [security] }
//!   break_glass: { max: 1h, allowed: [oncall] }
//!   mfa: true
//!   console: [sessions, kill]
//! ```
//!
//! `grant_only: true` (or a map, which also sets the rules) means the role
//! is usable only through a grant, even by people it is assigned to. Roles
//! that are not grant-only can still be granted for a while under `grants:`.

use std::time::Duration;

use serde::Deserialize;

/// Caps and approvals for grants of a role.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantRules {
    /// The longest grant, request or break-glass activation allowed.
    #[serde(default = "default_max", with = "humantime_serde")]
    pub max: Duration,
    /// Distinct approvals a request needs.
    #[serde(default = "one")]
    pub approvals: u32,
    /// Roles whose holders may approve requests for this role. Empty: only
    /// an operator (`pgward grant add`) can give it.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// How long a request waits for approvals before it expires.
    #[serde(default = "default_request_ttl", with = "humantime_serde")]
    pub request_ttl: Duration,
}

impl Default for GrantRules {
    fn default() -> Self {
        GrantRules {
            max: default_max(),
            approvals: 1,
            approvers: Vec::new(),
            request_ttl: default_request_ttl(),
        }
    }
}

fn default_max() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_request_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn one() -> u32 {
    1
}

/// `grant_only: true` or `grant_only: { max: …, approvals: … }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum GrantOnly {
    Flag(bool),
    Rules(GrantRules),
}

/// Emergency access to a role: who may activate it and for how long.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    #[serde(default = "default_break_glass_max", with = "humantime_serde")]
    pub max: Duration,
    /// Roles whose holders may break glass into this role.
    pub allowed: Vec<String>,
}

fn default_break_glass_max() -> Duration {
    Duration::from_secs(3600)
}

/// What a role's holders may do in the admin console beyond their own
/// sessions, grants and requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleRight {
    /// See everyone's sessions, grants and requests.
    Sessions,
    /// End anyone's session.
    Kill,
    /// Give and revoke grants directly (as `pgward grant` does).
    Grant,
    /// Review break-glass activations.
    Review,
}
