//! Cancel keys: pgward hands every client its own BackendKeyData and keeps
//! the mapping to the real upstream backend here.
//!
//! A client never learns the database's real process id or secret; a
//! CancelRequest with an unknown key, or a known process id with the wrong
//! secret, is ignored exactly as PostgreSQL ignores it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

use crate::upstream::Target;

/// Where a cancel for one session must go.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub upstream: Target,
    pub process_id: u32,
    pub secret_key: u32,
}

struct Entry {
    secret: u32,
    target: CancelTarget,
}

#[derive(Clone, Default)]
pub struct CancelRegistry {
    entries: Arc<Mutex<HashMap<u32, Entry>>>,
}

/// Removes its key from the registry when the session ends.
pub struct CancelGuard {
    registry: CancelRegistry,
    pub process_id: u32,
    pub secret_key: u32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.process_id);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a fresh key for a session. Process ids are positive `i32`s
    /// because clients print and store them as such.
    pub fn register(&self, target: CancelTarget) -> CancelGuard {
        let mut entries = self.lock();
        let process_id = loop {
            let candidate = rand::random::<u32>() & 0x7fff_ffff;
            if candidate != 0 && !entries.contains_key(&candidate) {
                break candidate;
            }
        };
        let secret = rand::random::<u32>();
        entries.insert(process_id, Entry { secret, target });
        CancelGuard {
            registry: self.clone(),
            process_id,
            secret_key: secret,
        }
    }

    /// The upstream backend for a key, if the key is valid.
    pub fn lookup(&self, process_id: u32, secret_key: u32) -> Option<CancelTarget> {
        let entries = self.lock();
        let entry = entries.get(&process_id)?;
        let matches: bool = entry
            .secret
            .to_be_bytes()
            .ct_eq(&secret_key.to_be_bytes())
            .into();
        matches.then(|| entry.target.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn target() -> CancelTarget {
        CancelTarget {
            upstream: Target {
                host: "127.0.0.1".into(),
                port: 5432,
                tls: None,
                tls_required: false,
                tls_verified: false,
                allow_cleartext_password: false,
                connect_timeout: Duration::from_secs(1),
            },
            process_id: 4242,
            secret_key: 99,
        }
    }

    #[test]
    fn keys_map_to_real_backends_until_dropped() {
        let registry = CancelRegistry::default();
        let guard = registry.register(target());
        assert!(guard.process_id > 0 && guard.process_id <= i32::MAX as u32);
        let found = registry.lookup(guard.process_id, guard.secret_key).unwrap();
        assert_eq!((found.process_id, found.secret_key), (4242, 99));
        assert!(registry
            .lookup(guard.process_id, guard.secret_key.wrapping_add(1))
            .is_none());
        let (pid, secret) = (guard.process_id, guard.secret_key);
        drop(guard);
        assert!(registry.lookup(pid, secret).is_none());
        assert!(registry.is_empty());
    }
}
