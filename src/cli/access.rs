//! `pgward access report`: what an auditor asks for at recertification —
//! each person's assigned roles, active grants, last login, second-factor
//! status, and the assigned roles they have not used in N days (candidates
//! for removal under least privilege).
//!
//! Use of a role is read from the audit trail: successful logins in that
//! role since the cutoff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::admin_event::{os_user, record_change};
use super::ConfigArg;
use crate::audit::event::{Event, Kind};
use crate::audit::export::csv_field;
use crate::audit::store::AuditStore;
use crate::config::Config;
use crate::store::access::{AccessFilter, AccessStore};
use crate::store::{SqliteStore, Store};

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, value_enum, default_value = "table")]
    format: ReportFormat,
    /// Assigned roles without a login in this many days are listed as unused.
    #[arg(long, default_value_t = 90)]
    unused_days: u64,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(clap::Subcommand)]
pub enum AccessCommand {
    /// Each person's roles, grants, last login, MFA status, unused roles.
    Report(ReportArgs),
}

struct Line {
    user: String,
    status: &'static str,
    kind: &'static str,
    roles: Vec<String>,
    grants: Vec<String>,
    last_login: String,
    mfa: &'static str,
    unused: Vec<String>,
}

/// (user, role) pairs with a successful login since `since_us`.
fn used_roles(config: &Config, since_us: i64) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut used = BTreeSet::new();
    if !config.audit.path.exists() {
        return Ok(used);
    }
    let store = AuditStore::open_read_only(&config.audit.path)?;
    let Some(from) = store.first_id_since(since_us)? else {
        return Ok(used);
    };
    let mut stmt = store
        .connection()
        .prepare("SELECT body FROM events WHERE id >= ?1 AND kind = ?2 AND time_us >= ?3")?;
    let mut rows = stmt.query(rusqlite::params![
        from as i64,
        Kind::Login.as_str(),
        since_us
    ])?;
    while let Some(row) = rows.next()? {
        let body: Vec<u8> = row.get(0)?;
        // A damaged row is `audit verify`'s business; the report skips it.
        let Ok(event) = Event::decode(&body) else {
            continue;
        };
        let who = event.who.as_deref();
        if let (Some("ok"), Some(user), Some(role)) = (
            event.outcome.as_deref(),
            who.and_then(|w| w.user.clone()),
            who.and_then(|w| w.role.clone()),
        ) {
            used.insert((user, role));
        }
    }
    Ok(used)
}

fn report(config: &Config, store: &SqliteStore, unused_days: u64) -> anyhow::Result<Vec<Line>> {
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(Duration::from_secs(unused_days.saturating_mul(86_400)))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since_us = cutoff
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let used = used_roles(config, since_us).context("reading logins from the audit trail")?;
    let mut grants: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in store.grants(&AccessFilter {
        user: None,
        current: Some(now),
    })? {
        grants.entry(g.user.clone()).or_default().push(format!(
            "{} until {} ({} {})",
            g.role,
            humantime::format_rfc3339_seconds(g.expires_at),
            g.kind.as_str(),
            g.id
        ));
    }
    Ok(store
        .users()?
        .into_iter()
        .map(|u| {
            let roles: Vec<String> = u.roles.iter().map(|r| r.to_string()).collect();
            let unused = roles
                .iter()
                .filter(|r| !used.contains(&(u.name.clone(), (*r).clone())))
                .cloned()
                .collect();
            Line {
                status: if u.disabled { "disabled" } else { "active" },
                kind: if u.service { "service" } else { "person" },
                grants: grants.remove(&u.name).unwrap_or_default(),
                last_login: u
                    .last_login
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_else(|| "never".into()),
                mfa: match (u.mfa_enrolled, u.mfa_required) {
                    (true, _) => "enrolled",
                    (false, true) => "required, not enrolled",
                    (false, false) => "none",
                },
                roles,
                unused,
                user: u.name,
            }
        })
        .collect())
}

pub fn run(cmd: AccessCommand) -> anyhow::Result<()> {
    let AccessCommand::Report(args) = cmd;
    let cfg = Config::load(&args.config.config)
        .with_context(|| format!("loading {}", args.config.config.display()))?;
    let store = SqliteStore::open(&cfg.store.path)
        .with_context(|| format!("opening the store {}", cfg.store.path.display()))?;
    let lines = report(&cfg, &store, args.unused_days)?;
    let days = args.unused_days;
    match args.format {
        ReportFormat::Json => {
            let all: Vec<_> = lines
                .iter()
                .map(|l| {
                    json!({
                        "user": l.user, "status": l.status, "kind": l.kind, "roles": l.roles,
                        "active_grants": l.grants, "last_login": l.last_login, "mfa": l.mfa,
                        format!("unused_{days}d"): l.unused,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        ReportFormat::Csv => {
            println!("user,status,kind,roles,active_grants,last_login,mfa,unused_{days}d");
            for l in &lines {
                let cells = [
                    l.user.clone(),
                    l.status.to_string(),
                    l.kind.to_string(),
                    l.roles.join(" "),
                    l.grants.join("; "),
                    l.last_login.clone(),
                    l.mfa.to_string(),
                    l.unused.join(" "),
                ];
                let cells: Vec<String> = cells.iter().map(|c| csv_field(c).into_owned()).collect();
                println!("{}", cells.join(","));
            }
        }
        ReportFormat::Table => {
            println!(
                "{:<20} {:<9} {:<8} {:<20} {:<22} {:<24} UNUSED {days}d / GRANTS",
                "USER", "STATUS", "KIND", "ROLES", "LAST LOGIN", "MFA"
            );
            for l in &lines {
                println!(
                    "{:<20} {:<9} {:<8} {:<20} {:<22} {:<24} {} / {}",
                    l.user,
                    l.status,
                    l.kind,
                    l.roles.join(","),
                    l.last_login,
                    l.mfa,
                    if l.unused.is_empty() {
                        "-".to_string()
                    } else {
                        l.unused.join(",")
                    },
                    if l.grants.is_empty() {
                        "-".to_string()
                    } else {
                        l.grants.join("; ")
                    }
                );
            }
        }
    }
    // Who pulled the access list is itself worth knowing.
    record_change(
        &cfg,
        &os_user(),
        "access.report",
        json!({ "users": lines.len(), "unused_days": days }),
    )
}
