//! Ends access when it ends: once a second, sessions whose grant expired or
//! was revoked (from the console, or by `pgward grant revoke` in another
//! process), and sessions of accounts that were disabled, are told to end;
//! every few seconds, pending requests past their time are marked expired
//! and recorded.
//!
//! The store is the source of truth, so a revocation made by any process
//! sharing it reaches the sessions of this one within a second.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::access::actions;
use crate::session::registry::Kill;
use crate::session::Context;
use crate::store::access::GrantEnded;

const TICK: Duration = Duration::from_secs(1);
/// Request expiry needs no second-level precision.
const EXPIRE_EVERY: u32 = 5;

pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n = n.wrapping_add(1);
        sweep(&ctx, n % EXPIRE_EVERY == 0).await;
    }
}

async fn sweep(ctx: &Context, expire_requests: bool) {
    let running = ctx.sessions.list();
    let grants: Vec<i64> = running
        .iter()
        .filter_map(|r| r.grant)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let users: Vec<String> = running
        .iter()
        .filter_map(|r| r.who.user.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if grants.is_empty() && users.is_empty() && !expire_requests {
        return;
    }
    let store = ctx.auth.store();
    let now = SystemTime::now();
    let found = tokio::task::spawn_blocking(move || {
        let ended = store.ended_grants(&grants, now)?;
        let disabled = store.disabled_among(&users)?;
        let expired = match expire_requests {
            true => actions::expire(store.as_ref(), now).map_err(|e| {
                crate::store::StoreError::Corrupt(format!("expiring requests: {e}"))
            })?,
            false => Vec::new(),
        };
        Ok::<_, crate::store::StoreError>((ended, disabled, expired))
    })
    .await;
    let (ended, disabled, expired) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot check grants and accounts of running sessions");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "grant check failed");
            return;
        }
    };
    for (grant, how) in ended {
        let why = match how {
            GrantEnded::Expired => Kill::GrantExpired { grant },
            GrantEnded::Revoked { by } => Kill::GrantRevoked { grant, by },
        };
        let n = ctx
            .sessions
            .kill_where(|r| (r.grant == Some(grant)).then(|| why.clone()));
        if n > 0 {
            tracing::info!(grant, sessions = n, reason = %why, "ending sessions whose grant ended");
        }
    }
    for user in disabled {
        ctx.sessions.kill_where(|r| {
            (r.who.user.as_deref() == Some(user.as_str())).then_some(Kill::UserDisabled)
        });
    }
    for change in expired {
        for event in change.events(ctx.audit.instance(), "pgward") {
            if ctx.audit.record(event).await.is_err() {
                tracing::warn!("could not record an expired request");
            }
        }
    }
}
