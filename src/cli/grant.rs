//! `pgward grant …` and `pgward request …`: time-boxed grants, requests and
//! approvals, break-glass and its review, from the command line.
//!
//! The operator running these commands acts for people: `grant add` and
//! `grant revoke` need no approval (the operator holds the store), while
//! `request approve --as bob` applies exactly the rules the console applies
//! to bob — nobody approves their own request, approvers must hold a role
//! the policy names. Every change lands in the audit trail.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Subcommand;

use super::admin_event::{os_user, record_changes};
use super::ConfigArg;
use crate::access::actions::{self, Actor, Ask};
use crate::config::Config;
use crate::policy::PolicySet;
use crate::store::access::{AccessFilter, AccessStore, Grant, Request};
use crate::store::SqliteStore;

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Let a person use a role for a while: grant add alice --role dba --for 2h --reason "…"
    Add {
        user: String,
        #[arg(long)]
        role: String,
        /// Only this database (default: every database the role allows).
        #[arg(long = "db")]
        database: Option<String>,
        /// How long, e.g. 30m, 2h (at most the role's grant maximum).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Active grants (all grants with --all).
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// End a grant now; sessions using it end within seconds.
    Revoke {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum RequestCommand {
    /// A person asks for a role: request create alice --role dba --for 1h --reason "…"
    Create {
        user: String,
        #[arg(long)]
        role: String,
        #[arg(long = "db")]
        database: Option<String>,
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Pending requests and unreviewed break-glass uses (everything with --all).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve a request as an approver named by the role's policy.
    Approve {
        id: i64,
        /// The approving person.
        #[arg(long = "as")]
        by: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deny a request as an approver.
    Deny {
        id: i64,
        #[arg(long = "as")]
        by: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Emergency access, at once: request break-glass alice --role dba --reason "…"
    BreakGlass {
        user: String,
        #[arg(long)]
        role: String,
        #[arg(long = "db")]
        database: Option<String>,
        /// Default and maximum: the role's break_glass.max.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Close the review of a break-glass use, as someone other than its user.
    Review {
        id: i64,
        #[arg(long = "as")]
        by: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn open(config: &ConfigArg) -> anyhow::Result<(Config, SqliteStore, PolicySet)> {
    let cfg = Config::load(&config.config)
        .with_context(|| format!("loading {}", config.config.display()))?;
    let store = SqliteStore::open(&cfg.store.path)
        .with_context(|| format!("opening the store {}", cfg.store.path.display()))?;
    let policies = PolicySet::load_dir(&cfg.policies)?;
    Ok((cfg, store, policies))
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn describe_grant(g: &Grant, now: SystemTime) -> String {
    let db = g.database.as_deref().unwrap_or("any database");
    let state = match &g.revoked {
        Some(r) => format!("revoked by {} at {}", r.by, when(r.at)),
        None if g.expires_at <= now => format!("expired at {}", when(g.expires_at)),
        None => format!("until {}", when(g.expires_at)),
    };
    format!(
        "grant {}: {} may use role {} ({db}) {state} [{} by {}: {}]",
        g.id,
        g.user,
        g.role,
        g.kind.as_str(),
        g.granted_by,
        g.reason
    )
}

pub fn describe_request(r: &Request) -> String {
    let votes: Vec<String> = r
        .approvals
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                if a.approved {
                    "approved by"
                } else {
                    "denied by"
                },
                a.approver
            )
        })
        .collect();
    let review = match (&r.review, r.break_glass) {
        (Some(rv), _) => format!(", reviewed by {}", rv.by),
        (None, true) => ", review pending".to_string(),
        (None, false) => String::new(),
    };
    format!(
        "request {}: {} wants role {} ({}) for {} — {}{}{} [{}]{}",
        r.id,
        r.user,
        r.role,
        r.database.as_deref().unwrap_or("any database"),
        humantime::format_duration(r.duration),
        if r.break_glass { "break-glass " } else { "" },
        r.status.as_str(),
        if votes.is_empty() {
            String::new()
        } else {
            format!(" ({})", votes.join(", "))
        },
        r.reason,
        review
    )
}

pub fn run_grant(cmd: GrantCommand) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match cmd {
        GrantCommand::Add {
            user,
            role,
            database,
            duration,
            reason,
            config,
        } => {
            let (cfg, store, policies) = open(&config)?;
            let actor = Actor::operator(&os_user());
            let ask = Ask {
                user: &user,
                role: &role,
                database: database.as_deref(),
                duration: Some(duration),
                reason: &reason,
            };
            let (grant, changes) = actions::grant(&store, &policies, &actor, &ask, now)?;
            println!("{}", describe_grant(&grant, now));
            record_changes(&cfg, &actor.user, &changes)?;
        }
        GrantCommand::List { user, all, config } => {
            let (_, store, _) = open(&config)?;
            let filter = AccessFilter {
                user,
                current: (!all).then_some(now),
            };
            let grants = store.grants(&filter)?;
            if grants.is_empty() {
                println!("no {}grants", if all { "" } else { "active " });
            }
            for g in grants {
                println!("{}", describe_grant(&g, now));
            }
        }
        GrantCommand::Revoke { id, reason, config } => {
            let (cfg, store, policies) = open(&config)?;
            let actor = Actor::operator(&os_user());
            let (grant, changes) =
                actions::revoke(&store, &policies, &actor, id, reason.as_deref(), now)?;
            println!("{}", describe_grant(&grant, now));
            record_changes(&cfg, &actor.user, &changes)?;
        }
    }
    Ok(())
}

pub fn run_request(cmd: RequestCommand) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match cmd {
        RequestCommand::Create {
            user,
            role,
            database,
            duration,
            reason,
            config,
        } => {
            let (cfg, store, policies) = open(&config)?;
            let actor = Actor::person(&store, &policies, &user, now)?;
            let ask = Ask {
                user: &user,
                role: &role,
                database: database.as_deref(),
                duration: Some(duration),
                reason: &reason,
            };
            let (request, changes) = actions::request(&store, &policies, &actor, &ask, now)?;
            println!("{}", describe_request(&request));
            record_changes(&cfg, &actor.user, &changes)?;
        }
        RequestCommand::List { all, config } => {
            let (cfg, store, _) = open(&config)?;
            // Requests past their time are marked (and recorded) first.
            let expired = actions::expire(&store, now)?;
            if !expired.is_empty() {
                record_changes(&cfg, "pgward", &expired)?;
            }
            let filter = AccessFilter {
                user: None,
                current: (!all).then_some(now),
            };
            let requests = store.requests(&filter)?;
            if requests.is_empty() {
                println!("no {}requests", if all { "" } else { "open " });
            }
            for r in requests {
                println!("{}", describe_request(&r));
            }
        }
        RequestCommand::Approve {
            id,
            by,
            note,
            config,
        } => decide(id, &by, true, note.as_deref(), &config, now)?,
        RequestCommand::Deny {
            id,
            by,
            note,
            config,
        } => decide(id, &by, false, note.as_deref(), &config, now)?,
        RequestCommand::BreakGlass {
            user,
            role,
            database,
            duration,
            reason,
            config,
        } => {
            let (cfg, store, policies) = open(&config)?;
            let actor = Actor::person(&store, &policies, &user, now)?;
            let ask = Ask {
                user: &user,
                role: &role,
                database: database.as_deref(),
                duration,
                reason: &reason,
            };
            let (request, grant, changes) =
                actions::break_glass(&store, &policies, &actor, &ask, now)?;
            println!("{}", describe_grant(&grant, now));
            println!(
                "break-glass recorded as request {}; it stays open until someone else reviews it (pgward request review {} --as NAME)",
                request.id, request.id
            );
            record_changes(&cfg, &actor.user, &changes)?;
        }
        RequestCommand::Review {
            id,
            by,
            note,
            config,
        } => {
            let (cfg, store, policies) = open(&config)?;
            let actor = Actor::person(&store, &policies, &by, now)?;
            let (request, changes) =
                actions::review(&store, &policies, &actor, id, note.as_deref(), now)?;
            println!("{}", describe_request(&request));
            record_changes(&cfg, &actor.user, &changes)?;
        }
    }
    Ok(())
}

fn decide(
    id: i64,
    by: &str,
    approve: bool,
    note: Option<&str>,
    config: &ConfigArg,
    now: SystemTime,
) -> anyhow::Result<()> {
    let (cfg, store, policies) = open(config)?;
    let actor = Actor::person(&store, &policies, by, now)?;
    let result = actions::decide(&store, &policies, &actor, id, approve, note, now);
    let (request, grant, changes) = match result {
        Ok(done) => done,
        Err(e) => {
            // Deciding an expired request marks it expired: record that.
            let expired = actions::expire(&store, now)?;
            if !expired.is_empty() {
                record_changes(&cfg, "pgward", &expired)?;
            }
            return Err(e.into());
        }
    };
    println!("{}", describe_request(&request));
    if let Some(grant) = &grant {
        println!("{}", describe_grant(grant, now));
    }
    record_changes(&cfg, &actor.user, &changes)
}
