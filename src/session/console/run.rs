//! Running console commands: rights, the store (on a blocking thread), the
//! audit events, and the text tables psql prints.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;

use super::command::{self, Command};
use crate::access::actions::{self, AccessError, Actor, Ask, Change};
use crate::audit::SessionInfo;
use crate::auth::Person;
use crate::error::{PgError, SqlState};
use crate::net::backend;
use crate::policy::ConsoleRight;
use crate::session::registry::Kill;
use crate::session::{Context, Runtime};
use crate::store::access::{AccessFilter, Grant, Request};
use crate::store::Store;

pub struct Console {
    pub ctx: Arc<Context>,
    pub rt: Arc<Runtime>,
    pub person: Person,
    pub who: Arc<SessionInfo>,
}

/// A command's result: a table (possibly empty) and its completion tag.
struct Output {
    columns: &'static [&'static str],
    rows: Vec<Vec<Option<String>>>,
    tag: String,
}

impl Output {
    fn table(columns: &'static [&'static str], rows: Vec<Vec<Option<String>>>) -> Output {
        let tag = format!("SHOW {}", rows.len());
        Output { columns, rows, tag }
    }

    fn done(tag: &str, message: String) -> Output {
        Output {
            columns: &["result"],
            rows: vec![vec![Some(message)]],
            tag: tag.to_string(),
        }
    }
}

fn time(t: SystemTime) -> Option<String> {
    Some(humantime::format_rfc3339_seconds(t).to_string())
}

fn access_error(e: AccessError) -> PgError {
    PgError::error(e.sqlstate(), format!("pgward: {e}"))
}

const HELP: &[(&str, &str)] = &[
    (
        "SHOW SESSIONS",
        "running sessions (yours; everyone's with the sessions right)",
    ),
    (
        "SHOW GRANTS",
        "active grants (yours; everyone's with the sessions or grant right)",
    ),
    (
        "SHOW REQUESTS",
        "open requests: yours and those you may decide or review",
    ),
    (
        "WHOAMI",
        "your name, the roles you hold now, your console rights",
    ),
    (
        "REQUEST ROLE r [ON DATABASE d] FOR '1h' REASON '…'",
        "ask for a role for a while",
    ),
    (
        "APPROVE id [NOTE '…'] / DENY id [NOTE '…']",
        "decide a request (approvers named by the role's policy; never your own)",
    ),
    (
        "BREAK GLASS ROLE r [ON DATABASE d] [FOR '30m'] REASON '…'",
        "emergency access at once; alerted and reviewed afterwards",
    ),
    (
        "REVIEW id [NOTE '…']",
        "close the review of someone else's break-glass",
    ),
    (
        "GRANT ROLE r TO user [ON DATABASE d] FOR '2h' REASON '…'",
        "give a grant directly (grant right)",
    ),
    (
        "REVOKE GRANT id [REASON '…']",
        "end a grant; its sessions end within seconds",
    ),
    (
        "KILL session",
        "end a session (your own; anyone's with the kill right)",
    ),
    (
        "ISSUE CERTIFICATE [FOR '8h']",
        "a short-lived client certificate for yourself",
    ),
];

impl Console {
    /// Runs every command in a Query's text; stops at the first error.
    pub async fn query(&self, text: &str) -> BytesMut {
        let mut out = BytesMut::new();
        let commands = command::split(text);
        if commands.is_empty() {
            out.extend_from_slice(&backend::empty_query_response());
            return out;
        }
        for text in commands {
            let result = self.execute(text).await;
            match result {
                Ok(output) => {
                    out.extend_from_slice(&backend::row_description(output.columns));
                    for row in &output.rows {
                        out.extend_from_slice(&backend::data_row(row));
                    }
                    out.extend_from_slice(&backend::command_complete(&output.tag));
                }
                Err(err) => {
                    out.extend_from_slice(&backend::error_response(&err));
                    break;
                }
            }
        }
        out
    }

    /// Runs `f` with the store and policies on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store, &Runtime, SystemTime) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, PgError> {
        let store = self.ctx.auth.store();
        let rt = Arc::clone(&self.rt);
        tokio::task::spawn_blocking(move || f(store.as_ref(), &rt, SystemTime::now()))
            .await
            .map_err(|e| PgError::error(SqlState::INTERNAL_ERROR, format!("pgward: {e}")))?
            .map_err(access_error)
    }

    async fn actor(&self) -> Result<Actor, PgError> {
        let user = self.person.user.clone();
        self.blocking(move |store, rt, now| Actor::person(store, &rt.policies, &user, now))
            .await
    }

    /// Records changes (and the console command itself) as this session.
    async fn record(&self, changes: &[Change]) {
        for change in changes {
            for mut event in change.events(self.ctx.audit.instance(), &self.person.user) {
                event.who = Some(Arc::clone(&self.who));
                if self.ctx.audit.record(event).await.is_err() {
                    tracing::warn!(action = change.action, "could not record a console change");
                }
            }
        }
    }

    /// Runs one command; refusals are recorded too (who tried what).
    async fn execute(&self, text: &str) -> Result<Output, PgError> {
        let result = match command::parse(text) {
            Ok(cmd) => self.run(cmd).await,
            Err(why) => Err(PgError::error(
                SqlState::SYNTAX_ERROR,
                format!("pgward console: {why}"),
            )
            .with_hint("HELP lists the commands")),
        };
        if let Err(err) = &result {
            let change = Change {
                action: "console.refused",
                detail: serde_json::json!({ "command": text, "sqlstate": err.code.0, "message": err.message }),
                alert: false,
            };
            self.record(&[change]).await;
        }
        result
    }

    async fn run(&self, cmd: Command) -> Result<Output, PgError> {
        let actor = self.actor().await?;
        let rights = |r: ConsoleRight| actor.has_right(&self.rt.policies, r);
        match cmd {
            Command::Help => Ok(Output::table(
                &["command", "what it does"],
                HELP.iter()
                    .map(|(c, w)| vec![Some(c.to_string()), Some(w.to_string())])
                    .collect(),
            )),
            Command::Whoami => {
                let mut all = vec![
                    ConsoleRight::Sessions,
                    ConsoleRight::Kill,
                    ConsoleRight::Grant,
                    ConsoleRight::Review,
                ];
                all.retain(|r| rights(*r));
                let roles: Vec<&str> = actor.roles.iter().map(|r| r.as_str()).collect();
                Ok(Output::table(
                    &["user", "roles", "second_factor", "console_rights"],
                    vec![vec![
                        Some(actor.user.clone()),
                        Some(roles.join(",")),
                        Some(self.person.second_factor.label().to_string()),
                        Some(
                            all.iter()
                                .map(|r| format!("{r:?}").to_lowercase())
                                .collect::<Vec<_>>()
                                .join(","),
                        ),
                    ]],
                ))
            }
            Command::ShowSessions => {
                let everyone = rights(ConsoleRight::Sessions) || rights(ConsoleRight::Kill);
                let rows = self
                    .ctx
                    .sessions
                    .list()
                    .into_iter()
                    .filter(|r| everyone || r.who.user.as_deref() == Some(&actor.user))
                    .map(|r| {
                        vec![
                            Some(r.id.to_string()),
                            r.who.user.clone(),
                            r.who.role.clone(),
                            r.who.via.clone(),
                            r.who.database.clone(),
                            r.who.client_addr.clone(),
                            time(r.started),
                        ]
                    })
                    .collect();
                Ok(Output::table(
                    &["id", "user", "role", "via", "database", "client", "started"],
                    rows,
                ))
            }
            Command::ShowGrants => {
                let everyone = rights(ConsoleRight::Sessions) || rights(ConsoleRight::Grant);
                let user = (!everyone).then(|| actor.user.clone());
                let grants = self
                    .blocking(move |store, _, now| {
                        Ok(store.grants(&AccessFilter {
                            user,
                            current: Some(now),
                        })?)
                    })
                    .await?;
                Ok(Output::table(
                    &[
                        "id",
                        "user",
                        "role",
                        "database",
                        "kind",
                        "expires",
                        "granted_by",
                        "reason",
                    ],
                    grants.iter().map(grant_row).collect(),
                ))
            }
            Command::ShowRequests => {
                let policies = &self.rt.policies;
                let everyone = rights(ConsoleRight::Sessions) || rights(ConsoleRight::Review);
                let requests = self
                    .blocking(move |store, _, now| {
                        Ok(store.requests(&AccessFilter {
                            user: None,
                            current: Some(now),
                        })?)
                    })
                    .await?;
                let rows = requests
                    .iter()
                    .filter(|r| {
                        everyone
                            || r.user == actor.user
                            || policies
                                .role(&r.role)
                                .is_some_and(|role| actor.approves(role))
                    })
                    .map(request_row)
                    .collect();
                Ok(Output::table(
                    &[
                        "id", "user", "role", "database", "for", "status", "votes", "review",
                        "reason", "expires",
                    ],
                    rows,
                ))
            }
            Command::Request {
                role,
                database,
                duration,
                reason,
            } => {
                let a = actor.clone();
                let (request, changes) = self
                    .blocking(move |store, rt, now| {
                        let ask = Ask {
                            user: &a.user,
                            role: &role,
                            database: database.as_deref(),
                            duration: Some(duration),
                            reason: &reason,
                        };
                        actions::request(store, &rt.policies, &a, &ask, now)
                    })
                    .await?;
                self.record(&changes).await;
                Ok(Output::done(
                    "REQUEST",
                    format!(
                        "request {} for role {} is pending; it needs approval by a holder of {}",
                        request.id,
                        request.role,
                        self.rt
                            .policies
                            .role(&request.role)
                            .map(|r| r.grant_rules().approvers.join(", "))
                            .unwrap_or_default()
                    ),
                ))
            }
            Command::Decide { id, approve, note } => {
                let a = actor.clone();
                let (decided, expired) = self
                    .blocking(move |store, rt, now| {
                        let result = actions::decide(
                            store,
                            &rt.policies,
                            &a,
                            id,
                            approve,
                            note.as_deref(),
                            now,
                        );
                        // Deciding an expired request is when it is
                        // noticed: mark (and record) it.
                        let expired = match &result {
                            Err(AccessError::Conflict(_)) => actions::expire(store, now)?,
                            _ => Vec::new(),
                        };
                        Ok((result, expired))
                    })
                    .await?;
                self.record(&expired).await;
                let (request, grant, changes) = decided.map_err(access_error)?;
                self.record(&changes).await;
                let message = match (&grant, approve) {
                    (Some(g), _) => format!(
                        "request {} approved: grant {} lets {} use role {} until {}",
                        request.id,
                        g.id,
                        g.user,
                        g.role,
                        time(g.expires_at).unwrap_or_default()
                    ),
                    (None, true) => format!(
                        "approval recorded; request {} needs more approvals",
                        request.id
                    ),
                    (None, false) => format!("request {} denied", request.id),
                };
                Ok(Output::done(
                    if approve { "APPROVE" } else { "DENY" },
                    message,
                ))
            }
            Command::BreakGlass {
                role,
                database,
                duration,
                reason,
            } => {
                let a = actor.clone();
                let (request, grant, changes) = self
                    .blocking(move |store, rt, now| {
                        let ask = Ask {
                            user: &a.user,
                            role: &role,
                            database: database.as_deref(),
                            duration,
                            reason: &reason,
                        };
                        actions::break_glass(store, &rt.policies, &a, &ask, now)
                    })
                    .await?;
                self.record(&changes).await;
                Ok(Output::done(
                    "BREAK GLASS",
                    format!(
                        "break-glass grant {} lets you use role {} until {} (connect as {}+{}); request {} awaits review",
                        grant.id,
                        grant.role,
                        time(grant.expires_at).unwrap_or_default(),
                        grant.user,
                        grant.role,
                        request.id
                    ),
                ))
            }
            Command::Review { id, note } => {
                let a = actor.clone();
                let (request, changes) = self
                    .blocking(move |store, rt, now| {
                        actions::review(store, &rt.policies, &a, id, note.as_deref(), now)
                    })
                    .await?;
                self.record(&changes).await;
                Ok(Output::done(
                    "REVIEW",
                    format!("break-glass request {} reviewed", request.id),
                ))
            }
            Command::Grant {
                role,
                user,
                database,
                duration,
                reason,
            } => {
                let a = actor.clone();
                let (grant, changes) = self
                    .blocking(move |store, rt, now| {
                        let ask = Ask {
                            user: &user,
                            role: &role,
                            database: database.as_deref(),
                            duration: Some(duration),
                            reason: &reason,
                        };
                        actions::grant(store, &rt.policies, &a, &ask, now)
                    })
                    .await?;
                self.record(&changes).await;
                Ok(Output::done(
                    "GRANT",
                    format!(
                        "grant {} lets {} use role {} until {}",
                        grant.id,
                        grant.user,
                        grant.role,
                        time(grant.expires_at).unwrap_or_default()
                    ),
                ))
            }
            Command::Revoke { id, reason } => {
                let a = actor.clone();
                let (grant, changes) = self
                    .blocking(move |store, rt, now| {
                        actions::revoke(store, &rt.policies, &a, id, reason.as_deref(), now)
                    })
                    .await?;
                self.record(&changes).await;
                let ended = self.ctx.sessions.kill_where(|r| {
                    (r.grant == Some(grant.id)).then(|| Kill::GrantRevoked {
                        grant: grant.id,
                        by: actor.user.clone(),
                    })
                });
                Ok(Output::done(
                    "REVOKE",
                    format!("grant {} revoked; {ended} session(s) ended", grant.id),
                ))
            }
            Command::Kill { session } => {
                let target = self.ctx.sessions.get(session).ok_or_else(|| {
                    PgError::error(
                        SqlState::UNDEFINED_OBJECT,
                        format!("pgward: no session {session}"),
                    )
                })?;
                let own = target.who.user.as_deref() == Some(actor.user.as_str());
                if !own && !rights(ConsoleRight::Kill) {
                    return Err(PgError::error(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        format!(
                            "pgward: {} may end only their own sessions (a role with `console: [kill]` ends others')",
                            actor.user
                        ),
                    ));
                }
                self.ctx.sessions.kill(
                    session,
                    Kill::Admin {
                        by: actor.user.clone(),
                    },
                );
                let change = Change {
                    action: "session.kill",
                    detail: serde_json::json!({
                        "session": session,
                        "user": target.who.user,
                        "role": target.who.role,
                    }),
                    alert: false,
                };
                self.record(&[change]).await;
                Ok(Output::done("KILL", format!("session {session} is ending")))
            }
            Command::IssueCertificate { ttl } => {
                use crate::auth::SecondFactor;
                // The certificate replaces password and second factor
                // until it expires: only a login that had both may mint one.
                if !matches!(
                    self.person.second_factor,
                    SecondFactor::Totp | SecondFactor::RecoveryCode
                ) {
                    return Err(PgError::error(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        "pgward: a certificate is issued only in a console session opened with password and TOTP code",
                    )
                    .with_hint("reconnect with the password followed by ':' and your 6-digit code"));
                }
                let certs = self.rt.config.certs.clone();
                let ttl = ttl.unwrap_or(
                    certs
                        .person_max_ttl
                        .min(std::time::Duration::from_secs(8 * 3600)),
                );
                let user = actor.user.clone();
                let store = self.ctx.auth.store();
                let issued = tokio::task::spawn_blocking(move || {
                    crate::certs::client::issue_client_cert(
                        &certs,
                        store.as_ref(),
                        &user,
                        ttl,
                        &user,
                        false,
                    )
                })
                .await
                .map_err(|e| PgError::error(SqlState::INTERNAL_ERROR, format!("pgward: {e}")))?
                .map_err(|e| {
                    PgError::error(SqlState::INVALID_PARAMETER_VALUE, format!("pgward: {e}"))
                })?;
                let change = Change {
                    action: "cert.issue",
                    detail: serde_json::json!({
                        "user": issued.user,
                        "serial": issued.serial,
                        "expires_at": time(issued.expires_at),
                        "service": false,
                        "self_service": true,
                    }),
                    alert: false,
                };
                self.record(&[change]).await;
                Ok(Output::table(
                    &["serial", "expires", "certificate", "private_key"],
                    vec![vec![
                        Some(issued.serial.clone()),
                        time(issued.expires_at),
                        Some(issued.pem.cert.clone()),
                        Some(issued.pem.key.clone()),
                    ]],
                ))
            }
        }
    }
}

fn grant_row(g: &Grant) -> Vec<Option<String>> {
    vec![
        Some(g.id.to_string()),
        Some(g.user.clone()),
        Some(g.role.to_string()),
        g.database.clone(),
        Some(g.kind.as_str().to_string()),
        time(g.expires_at),
        Some(g.granted_by.clone()),
        Some(g.reason.clone()),
    ]
}

fn request_row(r: &Request) -> Vec<Option<String>> {
    let votes: Vec<String> = r
        .approvals
        .iter()
        .map(|a| {
            format!(
                "{}:{}",
                a.approver,
                if a.approved { "approve" } else { "deny" }
            )
        })
        .collect();
    let review = match (&r.review, r.break_glass) {
        (Some(rv), _) => Some(format!("reviewed by {}", rv.by)),
        (None, true) => Some("pending".to_string()),
        (None, false) => None,
    };
    vec![
        Some(r.id.to_string()),
        Some(r.user.clone()),
        Some(r.role.to_string()),
        r.database.clone(),
        Some(humantime::format_duration(r.duration).to_string()),
        Some(if r.break_glass {
            format!("break-glass {}", r.status.as_str())
        } else {
            r.status.as_str().to_string()
        }),
        Some(votes.join(", ")),
        review,
        Some(r.reason.clone()),
        time(r.expires_at),
    ]
}
