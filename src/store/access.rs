//! Access requests, their approvals, and time-boxed grants in the store.
//!
//! Every decision that depends on the current state (is this request still
//! pending, has this approver voted, has the grant been revoked) is made
//! inside one `IMMEDIATE` transaction, so two approvers acting at once — or
//! two pgward instances sharing the file — cannot both decide a request.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::sqlite::{from_micros, micros};
use super::{SqliteStore, StoreError};
use crate::policy::RoleName;

/// How a grant came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantKind {
    /// Given directly by an operator or a console user with the grant right.
    Grant,
    /// An approved request.
    Request,
    /// Break-glass: self-activated, reviewed afterwards.
    BreakGlass,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Grant => "grant",
            GrantKind::Request => "request",
            GrantKind::BreakGlass => "break_glass",
        }
    }

    fn parse(s: &str) -> Result<GrantKind, StoreError> {
        match s {
            "grant" => Ok(GrantKind::Grant),
            "request" => Ok(GrantKind::Request),
            "break_glass" => Ok(GrantKind::BreakGlass),
            other => Err(StoreError::Corrupt(format!("grant kind {other:?}"))),
        }
    }
}

/// A time-boxed permission to act in a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub user: String,
    pub role: RoleName,
    /// `None`: every database the role allows.
    pub database: Option<String>,
    pub starts_at: SystemTime,
    pub expires_at: SystemTime,
    pub reason: String,
    pub granted_by: String,
    pub kind: GrantKind,
    pub request: Option<i64>,
    pub revoked: Option<Revocation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub at: SystemTime,
    pub by: String,
    pub reason: Option<String>,
}

impl Grant {
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.revoked.is_none() && self.starts_at <= now && now < self.expires_at
    }

    pub fn covers(&self, database: &str) -> bool {
        self.database.as_deref().map_or(true, |d| d == database)
    }
}

/// What a new grant needs.
#[derive(Clone, Debug)]
pub struct NewGrant {
    pub user: String,
    pub role: RoleName,
    pub database: Option<String>,
    pub duration: Duration,
    pub reason: String,
    pub granted_by: String,
    pub kind: GrantKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<RequestStatus, StoreError> {
        match s {
            "pending" => Ok(RequestStatus::Pending),
            "approved" => Ok(RequestStatus::Approved),
            "denied" => Ok(RequestStatus::Denied),
            "expired" => Ok(RequestStatus::Expired),
            other => Err(StoreError::Corrupt(format!("request status {other:?}"))),
        }
    }
}

/// One approver's vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub approver: String,
    pub approved: bool,
    pub at: SystemTime,
    pub note: Option<String>,
}

/// A request for a role (or a break-glass activation, which is approved as
/// it is made and waits for a review instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub user: String,
    pub role: RoleName,
    pub database: Option<String>,
    pub duration: Duration,
    pub reason: String,
    pub break_glass: bool,
    pub status: RequestStatus,
    pub created_at: SystemTime,
    /// When a pending request stops waiting for approvals.
    pub expires_at: SystemTime,
    pub decided_at: Option<SystemTime>,
    pub approvals: Vec<Approval>,
    pub review: Option<Review>,
    /// The grant an approval produced.
    pub grant: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    pub by: String,
    pub at: SystemTime,
    pub note: Option<String>,
}

/// What a new request needs.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub user: String,
    pub role: RoleName,
    pub database: Option<String>,
    pub duration: Duration,
    pub reason: String,
    /// How long it waits for approvals.
    pub ttl: Duration,
}

/// The outcome of a vote.
#[derive(Clone, Debug)]
pub struct Decided {
    pub request: Request,
    /// Set when this vote completed the approvals.
    pub grant: Option<Grant>,
}

/// Why a grant in use ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantEnded {
    Expired,
    Revoked { by: String },
}

/// Which grants and requests to list.
#[derive(Clone, Debug, Default)]
pub struct AccessFilter {
    pub user: Option<String>,
    /// Only grants active (requests pending or under review) at this time.
    pub current: Option<SystemTime>,
}

pub trait AccessStore {
    fn add_grant(&self, grant: &NewGrant, now: SystemTime) -> Result<Grant, StoreError>;
    fn grant(&self, id: i64) -> Result<Option<Grant>, StoreError>;
    fn grants(&self, filter: &AccessFilter) -> Result<Vec<Grant>, StoreError>;
    /// The active grant of `role` to `user` covering `database` that lasts
    /// longest.
    fn active_grant(
        &self,
        user: &str,
        role: &RoleName,
        database: &str,
        now: SystemTime,
    ) -> Result<Option<Grant>, StoreError>;
    /// Revokes a grant that is still active; `Conflict` otherwise.
    fn revoke_grant(
        &self,
        id: i64,
        by: &str,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Grant, StoreError>;
    /// Of `ids`, the grants that have ended, and how.
    fn ended_grants(
        &self,
        ids: &[i64],
        now: SystemTime,
    ) -> Result<Vec<(i64, GrantEnded)>, StoreError>;
    /// Of `names`, the users that are disabled or gone.
    fn disabled_among(&self, names: &[String]) -> Result<Vec<String>, StoreError>;

    fn add_request(&self, request: &NewRequest, now: SystemTime) -> Result<Request, StoreError>;
    fn request(&self, id: i64) -> Result<Option<Request>, StoreError>;
    fn requests(&self, filter: &AccessFilter) -> Result<Vec<Request>, StoreError>;
    /// Records `approver`'s vote on a pending request. A denial decides it;
    /// the `needed`-th approval approves it and creates its grant (from now,
    /// for the requested duration). `Conflict` when the request is no
    /// longer pending (decided, or expired — which this marks) or the
    /// approver already voted.
    fn decide(
        &self,
        id: i64,
        approver: &str,
        approve: bool,
        note: Option<&str>,
        needed: u32,
        now: SystemTime,
    ) -> Result<Decided, StoreError>;
    /// A break-glass activation: an approved request and its grant, at once.
    fn break_glass(
        &self,
        request: &NewRequest,
        now: SystemTime,
    ) -> Result<(Request, Grant), StoreError>;
    /// Closes the review of a break-glass activation.
    fn review(
        &self,
        id: i64,
        by: &str,
        note: Option<&str>,
        now: SystemTime,
    ) -> Result<Request, StoreError>;
    /// Marks pending requests past their expiry as expired; returns them.
    fn expire_requests(&self, now: SystemTime) -> Result<Vec<Request>, StoreError>;
}

const GRANT_COLUMNS: &str = "id, user, role, database, starts_at, expires_at, reason, granted_by,
    kind, request, revoked_at, revoked_by, revoke_reason";

fn read_grant(r: &Row<'_>) -> Result<Grant, StoreError> {
    let role: String = r.get(2)?;
    let kind: String = r.get(8)?;
    let revoked = match r.get::<_, Option<i64>>(10)? {
        Some(at) => Some(Revocation {
            at: from_micros(at),
            by: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
            reason: r.get(12)?,
        }),
        None => None,
    };
    Ok(Grant {
        id: r.get(0)?,
        user: r.get(1)?,
        role: RoleName::parse(&role).map_err(StoreError::Corrupt)?,
        database: r.get(3)?,
        starts_at: from_micros(r.get(4)?),
        expires_at: from_micros(r.get(5)?),
        reason: r.get(6)?,
        granted_by: r.get(7)?,
        kind: GrantKind::parse(&kind)?,
        request: r.get(9)?,
        revoked,
    })
}

const REQUEST_COLUMNS: &str = "id, user, role, database, duration_us, reason, kind, status,
    created_at, expires_at, decided_at, reviewed_by, reviewed_at, review_note,
    (SELECT max(g.id) FROM grants g WHERE g.request = requests.id)";

fn read_request(conn: &Connection, r: &Row<'_>) -> Result<Request, StoreError> {
    let id: i64 = r.get(0)?;
    let role: String = r.get(2)?;
    let kind: String = r.get(6)?;
    let status: String = r.get(7)?;
    let review = match (
        r.get::<_, Option<String>>(11)?,
        r.get::<_, Option<i64>>(12)?,
    ) {
        (Some(by), Some(at)) => Some(Review {
            by,
            at: from_micros(at),
            note: r.get(13)?,
        }),
        _ => None,
    };
    let mut stmt = conn.prepare_cached(
        "SELECT approver, decision, at, note FROM approvals WHERE request = ?1 ORDER BY at, approver",
    )?;
    let approvals = stmt
        .query_map([id], |a| {
            Ok(Approval {
                approver: a.get(0)?,
                approved: a.get::<_, String>(1)? == "approve",
                at: from_micros(a.get(2)?),
                note: a.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Request {
        id,
        user: r.get(1)?,
        role: RoleName::parse(&role).map_err(StoreError::Corrupt)?,
        database: r.get(3)?,
        duration: Duration::from_micros(r.get::<_, i64>(4)?.max(0) as u64),
        reason: r.get(5)?,
        break_glass: kind == "break_glass",
        status: RequestStatus::parse(&status)?,
        created_at: from_micros(r.get(8)?),
        expires_at: from_micros(r.get(9)?),
        decided_at: r.get::<_, Option<i64>>(10)?.map(from_micros),
        approvals,
        review,
        grant: r.get(14)?,
    })
}

fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn get_grant(conn: &Connection, id: i64) -> Result<Option<Grant>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"))?;
    let mut rows = stmt.query([id])?;
    rows.next()?.map(read_grant).transpose()
}

fn get_request(conn: &Connection, id: i64) -> Result<Option<Request>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(r) => Ok(Some(read_request(conn, r)?)),
        None => Ok(None),
    }
}

fn insert_grant(
    conn: &Connection,
    grant: &NewGrant,
    request: Option<i64>,
    now: SystemTime,
) -> Result<Grant, StoreError> {
    let expires = micros(now).saturating_add(duration_us(grant.duration));
    conn.execute(
        "INSERT INTO grants (user, role, database, starts_at, expires_at, reason, granted_by, kind, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            grant.user,
            grant.role.as_str(),
            grant.database,
            micros(now),
            expires,
            grant.reason,
            grant.granted_by,
            grant.kind.as_str(),
            request,
        ],
    )?;
    get_grant(conn, conn.last_insert_rowid())?
        .ok_or_else(|| StoreError::Corrupt("a grant vanished as it was made".into()))
}

fn insert_request(
    conn: &Connection,
    request: &NewRequest,
    kind: &str,
    status: RequestStatus,
    now: SystemTime,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO requests (user, role, database, duration_us, reason, kind, status, created_at, expires_at, decided_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            request.user,
            request.role.as_str(),
            request.database,
            duration_us(request.duration),
            request.reason,
            kind,
            status.as_str(),
            micros(now),
            micros(now).saturating_add(duration_us(request.ttl)),
            (status != RequestStatus::Pending).then(|| micros(now)),
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn conflict(msg: impl Into<String>) -> StoreError {
    StoreError::Conflict(msg.into())
}

impl AccessStore for SqliteStore {
    fn add_grant(&self, grant: &NewGrant, now: SystemTime) -> Result<Grant, StoreError> {
        insert_grant(&self.conn(), grant, None, now)
    }

    fn grant(&self, id: i64) -> Result<Option<Grant>, StoreError> {
        get_grant(&self.conn(), id)
    }

    fn grants(&self, filter: &AccessFilter) -> Result<Vec<Grant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE (?1 IS NULL OR user = ?1)
               AND (?2 IS NULL OR (revoked_at IS NULL AND starts_at <= ?2 AND expires_at > ?2))
             ORDER BY id"
        ))?;
        let mut rows = stmt.query(params![filter.user, filter.current.map(micros)])?;
        let mut all = Vec::new();
        while let Some(r) = rows.next()? {
            all.push(read_grant(r)?);
        }
        Ok(all)
    }

    fn active_grant(
        &self,
        user: &str,
        role: &RoleName,
        database: &str,
        now: SystemTime,
    ) -> Result<Option<Grant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants
             WHERE user = ?1 AND role = ?2 AND (database IS NULL OR database = ?3)
               AND revoked_at IS NULL AND starts_at <= ?4 AND expires_at > ?4
             ORDER BY expires_at DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query(params![user, role.as_str(), database, micros(now)])?;
        rows.next()?.map(read_grant).transpose()
    }

    fn revoke_grant(
        &self,
        id: i64,
        by: &str,
        reason: Option<&str>,
        now: SystemTime,
    ) -> Result<Grant, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let grant = get_grant(&tx, id)?.ok_or(StoreError::NoSuchGrant(id))?;
        if let Some(r) = &grant.revoked {
            return Err(conflict(format!(
                "grant {id} was already revoked by {}",
                r.by
            )));
        }
        if grant.expires_at <= now {
            return Err(conflict(format!("grant {id} has already expired")));
        }
        tx.execute(
            "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1",
            params![id, micros(now), by, reason],
        )?;
        let grant = get_grant(&tx, id)?.ok_or(StoreError::NoSuchGrant(id))?;
        tx.commit()?;
        Ok(grant)
    }

    fn ended_grants(
        &self,
        ids: &[i64],
        now: SystemTime,
    ) -> Result<Vec<(i64, GrantEnded)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT revoked_at, revoked_by, expires_at FROM grants WHERE id = ?1",
        )?;
        let mut ended = Vec::new();
        for &id in ids {
            let row: Option<(Option<i64>, Option<String>, i64)> = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            match row {
                Some((Some(_), by, _)) => ended.push((
                    id,
                    GrantEnded::Revoked {
                        by: by.unwrap_or_default(),
                    },
                )),
                Some((None, _, expires)) if expires <= micros(now) => {
                    ended.push((id, GrantEnded::Expired))
                }
                Some(_) => {}
                // A grant that vanished from the store no longer grants.
                None => ended.push((id, GrantEnded::Expired)),
            }
        }
        Ok(ended)
    }

    fn disabled_among(&self, names: &[String]) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT disabled FROM users WHERE name = ?1")?;
        let mut out = Vec::new();
        for name in names {
            let disabled: Option<i64> = stmt.query_row([name], |r| r.get(0)).optional()?;
            if disabled != Some(0) {
                out.push(name.clone());
            }
        }
        Ok(out)
    }

    fn add_request(&self, request: &NewRequest, now: SystemTime) -> Result<Request, StoreError> {
        let conn = self.conn();
        let id = insert_request(&conn, request, "request", RequestStatus::Pending, now)?;
        get_request(&conn, id)?.ok_or(StoreError::NoSuchRequest(id))
    }

    fn request(&self, id: i64) -> Result<Option<Request>, StoreError> {
        get_request(&self.conn(), id)
    }

    fn requests(&self, filter: &AccessFilter) -> Result<Vec<Request>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests
             WHERE (?1 IS NULL OR user = ?1)
               AND (?2 IS NULL OR (status = 'pending' AND expires_at > ?2)
                    OR (kind = 'break_glass' AND reviewed_at IS NULL))
             ORDER BY id"
        ))?;
        let mut rows = stmt.query(params![filter.user, filter.current.map(micros)])?;
        let mut all = Vec::new();
        while let Some(r) = rows.next()? {
            all.push(read_request(&conn, r)?);
        }
        Ok(all)
    }

    fn decide(
        &self,
        id: i64,
        approver: &str,
        approve: bool,
        note: Option<&str>,
        needed: u32,
        now: SystemTime,
    ) -> Result<Decided, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let request = get_request(&tx, id)?.ok_or(StoreError::NoSuchRequest(id))?;
        // Left pending: the expiry sweep marks it (and records that).
        if request.status == RequestStatus::Pending && request.expires_at <= now {
            return Err(conflict(format!(
                "request {id} expired at {} without enough approvals",
                humantime::format_rfc3339_seconds(request.expires_at)
            )));
        }
        if request.status != RequestStatus::Pending {
            return Err(conflict(format!(
                "request {id} is already {}",
                request.status.as_str()
            )));
        }
        if request.approvals.iter().any(|a| a.approver == approver) {
            return Err(conflict(format!(
                "{approver} has already voted on request {id}"
            )));
        }
        tx.execute(
            "INSERT INTO approvals (request, approver, decision, at, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, approver, if approve { "approve" } else { "deny" }, micros(now), note],
        )?;
        let approvals =
            request.approvals.iter().filter(|a| a.approved).count() as u32 + u32::from(approve);
        let mut grant = None;
        if !approve {
            tx.execute(
                "UPDATE requests SET status = 'denied', decided_at = ?2 WHERE id = ?1",
                params![id, micros(now)],
            )?;
        } else if approvals >= needed {
            tx.execute(
                "UPDATE requests SET status = 'approved', decided_at = ?2 WHERE id = ?1",
                params![id, micros(now)],
            )?;
            let new = NewGrant {
                user: request.user.clone(),
                role: request.role.clone(),
                database: request.database.clone(),
                duration: request.duration,
                reason: request.reason.clone(),
                granted_by: approver.to_string(),
                kind: GrantKind::Request,
            };
            grant = Some(insert_grant(&tx, &new, Some(id), now)?);
        }
        let request = get_request(&tx, id)?.ok_or(StoreError::NoSuchRequest(id))?;
        tx.commit()?;
        Ok(Decided { request, grant })
    }

    fn break_glass(
        &self,
        request: &NewRequest,
        now: SystemTime,
    ) -> Result<(Request, Grant), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = insert_request(&tx, request, "break_glass", RequestStatus::Approved, now)?;
        let new = NewGrant {
            user: request.user.clone(),
            role: request.role.clone(),
            database: request.database.clone(),
            duration: request.duration,
            reason: request.reason.clone(),
            granted_by: request.user.clone(),
            kind: GrantKind::BreakGlass,
        };
        let grant = insert_grant(&tx, &new, Some(id), now)?;
        let request = get_request(&tx, id)?.ok_or(StoreError::NoSuchRequest(id))?;
        tx.commit()?;
        Ok((request, grant))
    }

    fn review(
        &self,
        id: i64,
        by: &str,
        note: Option<&str>,
        now: SystemTime,
    ) -> Result<Request, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let request = get_request(&tx, id)?.ok_or(StoreError::NoSuchRequest(id))?;
        if !request.break_glass {
            return Err(conflict(format!(
                "request {id} is not a break-glass activation; only those are reviewed"
            )));
        }
        if let Some(r) = &request.review {
            return Err(conflict(format!(
                "request {id} was already reviewed by {}",
                r.by
            )));
        }
        tx.execute(
            "UPDATE requests SET reviewed_by = ?2, reviewed_at = ?3, review_note = ?4 WHERE id = ?1",
            params![id, by, micros(now), note],
        )?;
        let request = get_request(&tx, id)?.ok_or(StoreError::NoSuchRequest(id))?;
        tx.commit()?;
        Ok(request)
    }

    fn expire_requests(&self, now: SystemTime) -> Result<Vec<Request>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = tx
            .prepare_cached(
                "SELECT id FROM requests WHERE status = 'pending' AND expires_at <= ?1",
            )?
            .query_map([micros(now)], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut expired = Vec::with_capacity(ids.len());
        for id in ids {
            tx.execute(
                "UPDATE requests SET status = 'expired', decided_at = ?2 WHERE id = ?1",
                params![id, micros(now)],
            )?;
            if let Some(r) = get_request(&tx, id)? {
                expired.push(r);
            }
        }
        tx.commit()?;
        Ok(expired)
    }
}
