//! The rules of the access lifecycle, shared by the command line and the
//! admin console: who may grant, request, approve, deny, break glass,
//! review and revoke, within which limits.
//!
//! Each action checks the rules, makes the change in the store, and
//! returns the [`Change`]s to record in the audit trail; the caller records
//! them (the CLI into the audit store, the proxy through its writer), so
//! the same rules hold whichever way a person comes.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::error::SqlState;
use crate::policy::{ConsoleRight, PolicySet, Role, RoleName};
use crate::store::access::{
    AccessFilter, Grant, GrantKind, NewGrant, NewRequest, Request, RequestStatus,
};
use crate::store::{Store, StoreError};

/// Who acts, and the roles they hold right now (assigned roles that are not
/// grant-only, and roles from active grants).
#[derive(Clone, Debug)]
pub struct Actor {
    pub user: String,
    pub roles: Vec<RoleName>,
    /// The operator at the command line: may grant and revoke directly.
    pub operator: bool,
}

impl Actor {
    /// The person `user` as they stand now.
    pub fn person(
        store: &dyn Store,
        policies: &PolicySet,
        user: &str,
        now: SystemTime,
    ) -> Result<Actor, AccessError> {
        let record = store
            .user(user)?
            .ok_or_else(|| AccessError::NotFound(format!("no user named {user:?}")))?;
        if record.disabled {
            return Err(AccessError::Forbidden(format!(
                "account {user:?} is disabled"
            )));
        }
        let mut roles: Vec<RoleName> = record
            .roles
            .into_iter()
            .filter(|r| policies.role(r).is_some_and(|p| !p.is_grant_only()))
            .collect();
        let filter = AccessFilter {
            user: Some(user.to_string()),
            current: Some(now),
        };
        for grant in store.grants(&filter)? {
            if !roles.contains(&grant.role) {
                roles.push(grant.role);
            }
        }
        Ok(Actor {
            user: user.to_string(),
            roles,
            operator: false,
        })
    }

    /// The operator (operating-system user) at the command line.
    pub fn operator(name: &str) -> Actor {
        Actor {
            user: name.to_string(),
            roles: Vec::new(),
            operator: true,
        }
    }

    pub fn has_right(&self, policies: &PolicySet, right: ConsoleRight) -> bool {
        self.operator
            || self
                .roles
                .iter()
                .filter_map(|r| policies.role(r))
                .any(|r| r.console.contains(&right))
    }

    fn holds_any(&self, roles: &[String]) -> bool {
        self.roles
            .iter()
            .any(|r| roles.iter().any(|a| a == r.as_str()))
    }

    /// May approve requests for `role` (and review its break-glass uses).
    pub fn approves(&self, role: &Role) -> bool {
        self.holds_any(&role.grant_rules().approvers)
    }
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Bad input: unknown role, duration over the cap, empty reason.
    #[error("{0}")]
    Invalid(String),
    /// The actor lacks the right.
    #[error("{0}")]
    Forbidden(String),
    /// The state does not allow it (already decided, expired, revoked).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the store cannot be used: {0}")]
    Store(StoreError),
}

impl From<StoreError> for AccessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AccessError::Conflict(m),
            StoreError::NoSuchGrant(_)
            | StoreError::NoSuchRequest(_)
            | StoreError::NoSuchUser(_) => AccessError::NotFound(e.to_string()),
            other => AccessError::Store(other),
        }
    }
}

impl AccessError {
    /// The SQLSTATE the console answers with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AccessError::Invalid(_) => SqlState::INVALID_PARAMETER_VALUE,
            AccessError::Forbidden(_) => SqlState::INSUFFICIENT_PRIVILEGE,
            AccessError::Conflict(_) => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            AccessError::NotFound(_) => SqlState::UNDEFINED_OBJECT,
            AccessError::Store(_) => SqlState::INTERNAL_ERROR,
        }
    }
}

/// One change to record in the audit trail.
#[derive(Clone, Debug)]
pub struct Change {
    /// `grant.add`, `request.approve`, …
    pub action: &'static str,
    pub detail: Value,
    /// Also an alert (break-glass).
    pub alert: bool,
}

impl Change {
    /// The audit events for this change made by `actor`: an admin event,
    /// and an alert beside it when the change calls for one.
    pub fn events(&self, instance: &str, actor: &str) -> Vec<crate::audit::Event> {
        use crate::audit::event::{Event, Kind};
        let admin = Event::admin(instance, actor, self.action, self.detail.to_string());
        let mut events = vec![admin];
        if self.alert {
            let mut alert = Event::new(Kind::Alert, instance);
            alert.who.clone_from(&events[0].who);
            alert.action = Some(self.action.replace('.', "_"));
            alert.detail = Some(self.detail.to_string());
            events.push(alert);
        }
        events
    }

    fn new(action: &'static str, detail: Value) -> Change {
        Change {
            action,
            detail,
            alert: false,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn grant_json(g: &Grant) -> Value {
    json!({
        "grant": g.id,
        "user": g.user,
        "role": g.role.as_str(),
        "database": g.database,
        "kind": g.kind.as_str(),
        "expires_at": rfc3339(g.expires_at),
        "reason": g.reason,
        "request": g.request,
    })
}

pub fn request_json(r: &Request) -> Value {
    json!({
        "request": r.id,
        "user": r.user,
        "role": r.role.as_str(),
        "database": r.database,
        "duration": human(r.duration),
        "reason": r.reason,
        "status": r.status.as_str(),
        "break_glass": r.break_glass,
    })
}

fn role<'p>(policies: &'p PolicySet, name: &str) -> Result<&'p Role, AccessError> {
    let parsed = RoleName::parse(name).map_err(AccessError::Invalid)?;
    policies.role(&parsed).ok_or_else(|| {
        AccessError::Invalid(format!("role {name:?} is not defined in the policies"))
    })
}

fn reason(text: &str) -> Result<String, AccessError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AccessError::Invalid("a reason is required".into()));
    }
    if text.len() > 500 {
        return Err(AccessError::Invalid(
            "the reason is longer than 500 characters".into(),
        ));
    }
    Ok(text.to_string())
}

fn database(role: &Role, database: Option<&str>) -> Result<Option<String>, AccessError> {
    match database {
        Some(db) if !role.allows_database(db) => Err(AccessError::Invalid(format!(
            "role \"{}\" may not connect to database \"{db}\"",
            role.name
        ))),
        other => Ok(other.map(str::to_string)),
    }
}

fn capped(
    what: &str,
    role: &Role,
    duration: Duration,
    max: Duration,
) -> Result<Duration, AccessError> {
    if duration.is_zero() {
        return Err(AccessError::Invalid(format!(
            "a {what} must last longer than zero"
        )));
    }
    if duration > max {
        return Err(AccessError::Invalid(format!(
            "a {what} of {} is longer than role \"{}\" allows ({} at most)",
            human(duration),
            role.name,
            human(max)
        )));
    }
    Ok(duration)
}

fn existing_user(store: &dyn Store, user: &str) -> Result<(), AccessError> {
    match store.user(user)? {
        Some(u) if u.disabled => Err(AccessError::Invalid(format!(
            "account {user:?} is disabled"
        ))),
        Some(_) => Ok(()),
        None => Err(AccessError::NotFound(format!("no user named {user:?}"))),
    }
}

/// What a grant, request or break-glass asks for.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    pub user: &'a str,
    pub role: &'a str,
    pub database: Option<&'a str>,
    /// `None` for break-glass means the role's maximum.
    pub duration: Option<Duration>,
    pub reason: &'a str,
}

/// Gives `ask.user` the role for a while, without approval: the operator,
/// or a console user with the `grant` right.
pub fn grant(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    ask: &Ask<'_>,
    now: SystemTime,
) -> Result<(Grant, Vec<Change>), AccessError> {
    if !actor.has_right(policies, ConsoleRight::Grant) {
        return Err(AccessError::Forbidden(format!(
            "{} may not give grants (a role with `console: [grant]`)",
            actor.user
        )));
    }
    let role = role(policies, ask.role)?;
    let duration = ask
        .duration
        .ok_or_else(|| AccessError::Invalid("a grant needs a duration (--for)".into()))?;
    let duration = capped("grant", role, duration, role.grant_rules().max)?;
    existing_user(store, ask.user)?;
    let grant = store.add_grant(
        &NewGrant {
            user: ask.user.to_string(),
            role: role.name.clone(),
            database: database(role, ask.database)?,
            duration,
            reason: reason(ask.reason)?,
            granted_by: actor.user.clone(),
            kind: GrantKind::Grant,
        },
        now,
    )?;
    let change = Change::new("grant.add", grant_json(&grant));
    Ok((grant, vec![change]))
}

/// Ends a grant early: the operator, a console user with the `grant`
/// right, or the person holding it.
pub fn revoke(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    id: i64,
    why: Option<&str>,
    now: SystemTime,
) -> Result<(Grant, Vec<Change>), AccessError> {
    let grant = store.grant(id)?.ok_or(StoreError::NoSuchGrant(id))?;
    if grant.user != actor.user && !actor.has_right(policies, ConsoleRight::Grant) {
        return Err(AccessError::Forbidden(format!(
            "{} may not revoke grant {id} of {}",
            actor.user, grant.user
        )));
    }
    let grant = store.revoke_grant(id, &actor.user, why, now)?;
    let mut detail = grant_json(&grant);
    detail["revoke_reason"] = json!(why);
    Ok((grant, vec![Change::new("grant.revoke", detail)]))
}

/// A person asks for a role; approvers named by the role's policy decide.
pub fn request(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    ask: &Ask<'_>,
    now: SystemTime,
) -> Result<(Request, Vec<Change>), AccessError> {
    if ask.user != actor.user && !actor.operator {
        return Err(AccessError::Forbidden(
            "a person requests roles for themselves".into(),
        ));
    }
    let role = role(policies, ask.role)?;
    let rules = role.grant_rules();
    if rules.approvers.is_empty() {
        return Err(AccessError::Forbidden(format!(
            "role \"{}\" names no approvers; ask an operator for a grant (pgward grant add)",
            role.name
        )));
    }
    let duration = ask
        .duration
        .ok_or_else(|| AccessError::Invalid("a request needs a duration".into()))?;
    let duration = capped("request", role, duration, rules.max)?;
    existing_user(store, ask.user)?;
    let request = store.add_request(
        &NewRequest {
            user: ask.user.to_string(),
            role: role.name.clone(),
            database: database(role, ask.database)?,
            duration,
            reason: reason(ask.reason)?,
            ttl: rules.request_ttl,
        },
        now,
    )?;
    let mut detail = request_json(&request);
    detail["approvals_needed"] = json!(rules.approvals);
    detail["expires_at"] = json!(rfc3339(request.expires_at));
    Ok((request, vec![Change::new("request.create", detail)]))
}

/// An approver approves or denies a pending request. Nobody decides their
/// own request; the approver must hold a role the policy names.
pub fn decide(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    id: i64,
    approve: bool,
    note: Option<&str>,
    now: SystemTime,
) -> Result<(Request, Option<Grant>, Vec<Change>), AccessError> {
    let request = store.request(id)?.ok_or(StoreError::NoSuchRequest(id))?;
    if request.user == actor.user {
        return Err(AccessError::Forbidden(format!(
            "nobody approves or denies their own request (request {id} is {}'s)",
            request.user
        )));
    }
    if request.break_glass {
        return Err(AccessError::Conflict(format!(
            "request {id} is a break-glass activation: it is reviewed (REVIEW {id}), not approved"
        )));
    }
    let role = role(policies, request.role.as_str())?;
    if !actor.approves(role) {
        return Err(AccessError::Forbidden(format!(
            "{} may not decide requests for role \"{}\" (approvers: holders of {})",
            actor.user,
            role.name,
            role.grant_rules().approvers.join(", ")
        )));
    }
    let needed = role.grant_rules().approvals;
    let decided = store.decide(id, &actor.user, approve, note, needed, now)?;
    let mut detail = request_json(&decided.request);
    detail["note"] = json!(note);
    detail["approvals"] = json!(decided
        .request
        .approvals
        .iter()
        .filter(|a| a.approved)
        .count());
    detail["approvals_needed"] = json!(needed);
    let action = if approve {
        "request.approve"
    } else {
        "request.deny"
    };
    let mut changes = vec![Change::new(action, detail)];
    if let Some(grant) = &decided.grant {
        changes.push(Change::new("grant.add", grant_json(grant)));
    }
    Ok((decided.request, decided.grant, changes))
}

/// Emergency access: the person activates the role at once, with a reason,
/// for at most the role's break-glass maximum. An alert goes out and the
/// activation waits for someone else's review.
pub fn break_glass(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    ask: &Ask<'_>,
    now: SystemTime,
) -> Result<(Request, Grant, Vec<Change>), AccessError> {
    let role = role(policies, ask.role)?;
    let Some(rules) = &role.break_glass else {
        return Err(AccessError::Forbidden(format!(
            "role \"{}\" has no break-glass access",
            role.name
        )));
    };
    if ask.user != actor.user && !actor.operator {
        return Err(AccessError::Forbidden(
            "break-glass is activated by the person who needs it".into(),
        ));
    }
    let person = if actor.operator {
        Actor::person(store, policies, ask.user, now)?
    } else {
        actor.clone()
    };
    if !person.holds_any(&rules.allowed) {
        return Err(AccessError::Forbidden(format!(
            "{} may not break glass into role \"{}\" (allowed: holders of {})",
            person.user,
            role.name,
            rules.allowed.join(", ")
        )));
    }
    let duration = capped(
        "break-glass",
        role,
        ask.duration.unwrap_or(rules.max),
        rules.max,
    )?;
    let (request, grant) = store.break_glass(
        &NewRequest {
            user: person.user.clone(),
            role: role.name.clone(),
            database: database(role, ask.database)?,
            duration,
            reason: reason(ask.reason)?,
            ttl: duration,
        },
        now,
    )?;
    let mut detail = grant_json(&grant);
    detail["review"] = json!("pending");
    let change = Change {
        action: "breakglass.activate",
        detail,
        alert: true,
    };
    Ok((request, grant, vec![change]))
}

/// Someone other than the person who broke glass closes its review: a
/// console user with the `review` right or an approver of the role.
pub fn review(
    store: &dyn Store,
    policies: &PolicySet,
    actor: &Actor,
    id: i64,
    note: Option<&str>,
    now: SystemTime,
) -> Result<(Request, Vec<Change>), AccessError> {
    let request = store.request(id)?.ok_or(StoreError::NoSuchRequest(id))?;
    if request.user == actor.user {
        return Err(AccessError::Forbidden(format!(
            "nobody reviews their own break-glass activation (request {id} is {}'s)",
            request.user
        )));
    }
    let may = actor.has_right(policies, ConsoleRight::Review)
        || policies
            .role(&request.role)
            .is_some_and(|r| actor.approves(r));
    if !may {
        return Err(AccessError::Forbidden(format!(
            "{} may not review break-glass activations (a role with `console: [review]`, or an approver of \"{}\")",
            actor.user, request.role
        )));
    }
    let request = store.review(id, &actor.user, note, now)?;
    let mut detail = request_json(&request);
    detail["note"] = json!(note);
    Ok((request, vec![Change::new("breakglass.review", detail)]))
}

/// Pending requests whose time ran out, marked expired.
pub fn expire(store: &dyn Store, now: SystemTime) -> Result<Vec<Change>, AccessError> {
    Ok(store
        .expire_requests(now)?
        .iter()
        .filter(|r| r.status == RequestStatus::Expired)
        .map(|r| Change::new("request.expire", request_json(r)))
        .collect())
}
