//! The sessions running now: what the admin console shows, and the handle
//! that ends one (`KILL`, a grant that expired or was revoked, a disabled
//! account).
//!
//! Each session registers when its login completes and is removed when the
//! returned [`Registration`] drops, however the session ends. Ending a
//! session is a message on its own `watch` channel; the relay delivers the
//! FATAL at the next message boundary and cancels the query in progress.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::audit::SessionInfo;

/// Why pgward ends a session from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kill {
    GrantExpired {
        grant: i64,
    },
    GrantRevoked {
        grant: i64,
        by: String,
    },
    /// `KILL` in the admin console.
    Admin {
        by: String,
    },
    UserDisabled,
}

impl Kill {
    /// A short label for session-end events.
    pub fn label(&self) -> &'static str {
        match self {
            Kill::GrantExpired { .. } => "grant_expired",
            Kill::GrantRevoked { .. } => "grant_revoked",
            Kill::Admin { .. } => "admin_kill",
            Kill::UserDisabled => "user_disabled",
        }
    }
}

impl fmt::Display for Kill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kill::GrantExpired { grant } => write!(f, "grant {grant} expired"),
            Kill::GrantRevoked { grant, by } => write!(f, "grant {grant} was revoked by {by}"),
            Kill::Admin { by } => write!(f, "terminated by {by}"),
            Kill::UserDisabled => f.write_str("the account was disabled"),
        }
    }
}

/// A running session as the console lists it.
#[derive(Clone, Debug)]
pub struct Running {
    pub id: u64,
    pub who: Arc<SessionInfo>,
    pub started: SystemTime,
    /// The grant the session's role comes from, if any.
    pub grant: Option<i64>,
}

struct Entry {
    running: Running,
    kill: watch::Sender<Option<Kill>>,
}

#[derive(Clone, Default)]
pub struct Registry {
    sessions: Arc<Mutex<HashMap<u64, Entry>>>,
}

/// Removes the session from the registry when dropped.
pub struct Registration {
    registry: Registry,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session; the receiver says when (and why) it must end.
    pub fn register(&self, running: Running) -> (Registration, watch::Receiver<Option<Kill>>) {
        let (kill, rx) = watch::channel(None);
        let id = running.id;
        self.lock().insert(id, Entry { running, kill });
        (
            Registration {
                registry: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Every running session, oldest first.
    pub fn list(&self) -> Vec<Running> {
        let mut all: Vec<Running> = self.lock().values().map(|e| e.running.clone()).collect();
        all.sort_by_key(|r| r.id);
        all
    }

    pub fn get(&self, id: u64) -> Option<Running> {
        self.lock().get(&id).map(|e| e.running.clone())
    }

    /// Ends session `id`; false when there is no such session. The first
    /// reason given wins.
    pub fn kill(&self, id: u64, why: Kill) -> bool {
        match self.lock().get(&id) {
            Some(entry) => {
                entry.kill.send_if_modified(|k| {
                    if k.is_none() {
                        *k = Some(why);
                        true
                    } else {
                        false
                    }
                });
                true
            }
            None => false,
        }
    }

    /// Ends every session for which `why` returns a reason; returns how
    /// many were told to end.
    pub fn kill_where(&self, mut why: impl FnMut(&Running) -> Option<Kill>) -> usize {
        let ids: Vec<(u64, Kill)> = self
            .lock()
            .values()
            .filter_map(|e| why(&e.running).map(|k| (e.running.id, k)))
            .collect();
        ids.into_iter()
            .filter(|(id, k)| self.kill(*id, k.clone()))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: u64, grant: Option<i64>) -> Running {
        Running {
            id,
            who: Arc::new(SessionInfo::default()),
            started: SystemTime::now(),
            grant,
        }
    }

    #[test]
    fn kill_reaches_the_session_once_and_drop_unregisters() {
        let registry = Registry::default();
        let (reg, mut rx) = registry.register(running(1, Some(7)));
        let (_other, other_rx) = registry.register(running(2, None));
        assert_eq!(registry.list().len(), 2);
        let n = registry
            .kill_where(|r| (r.grant == Some(7)).then_some(Kill::GrantExpired { grant: 7 }));
        assert_eq!(n, 1);
        assert!(rx.has_changed().unwrap());
        assert!(registry.kill(1, Kill::UserDisabled));
        assert_eq!(
            *rx.borrow_and_update(),
            Some(Kill::GrantExpired { grant: 7 }),
            "the first reason stays"
        );
        assert!(other_rx.borrow().is_none());
        drop(reg);
        assert!(!registry.kill(1, Kill::UserDisabled));
        assert_eq!(registry.list().len(), 1);
    }
}
