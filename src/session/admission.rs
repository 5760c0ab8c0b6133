//! How many connections one address may have in the login phase at once.
//!
//! Logins are the expensive part (a TLS handshake and an argon2id check) and
//! the part an anonymous peer can hold open until the startup timeout. A cap
//! per client address keeps one host from occupying every connection slot
//! or the password workers; over the cap, new connections are closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct StartupLimiter {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held while a connection is logging in.
pub struct StartupGuard {
    limiter: StartupLimiter,
    ip: IpAddr,
}

impl StartupLimiter {
    pub fn try_start(&self, ip: IpAddr, limit: usize) -> Option<StartupGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(StartupGuard {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn in_progress(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for StartupGuard {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_releases_on_drop() {
        let limiter = StartupLimiter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limiter.try_start(a, 2).unwrap();
        let _g2 = limiter.try_start(a, 2).unwrap();
        assert!(limiter.try_start(a, 2).is_none());
        assert!(
            limiter.try_start(b, 2).is_some(),
            "other addresses unaffected"
        );
        drop(g1);
        assert!(limiter.try_start(a, 2).is_some());
        assert_eq!(limiter.in_progress(b), 0);
    }
}
