//! Analysis results, shared by all sessions, bounded in bytes.
//!
//! The key carries everything a result depends on — policy generation,
//! schema version, role, the person's attributes — and the SQL text, so a
//! hit is always the answer the analyzer would give now. Statements longer
//! than [`MAX_CACHED_SQL`] (huge IN lists, bulk VALUES) are analyzed every
//! time rather than allowed to evict everything else.

use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::sql::{Refusal, Rewritten};

pub type Decision = Arc<Result<Rewritten, Refusal>>;

/// Longest statement text that is cached.
pub const MAX_CACHED_SQL: usize = 16 * 1024;

pub struct AnalysisCache {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    map: LruCache<String, (Decision, usize)>,
    bytes: usize,
}

fn cost(key: &str, d: &Decision) -> usize {
    let value = match d.as_ref() {
        Ok(r) => r.sql.len() + r.kinds.iter().map(String::len).sum::<usize>() + 64 * r.tables.len(),
        Err(e) => e.message.len() + e.hint.as_ref().map_or(0, String::len),
    };
    key.len() + value + 128
}

impl AnalysisCache {
    /// A cache holding at most `budget` bytes of keys and results.
    pub fn new(budget: usize) -> AnalysisCache {
        AnalysisCache {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached decision for `sql` in `scope` (everything else the
    /// decision depends on, length-prefixed), or `compute`'s, remembered.
    pub fn decide(
        &self,
        scope: &str,
        sql: &str,
        compute: impl FnOnce() -> Result<Rewritten, Refusal>,
    ) -> Decision {
        if sql.len() > MAX_CACHED_SQL {
            return Arc::new(compute());
        }
        let mut key = String::with_capacity(scope.len() + sql.len());
        key.push_str(scope);
        key.push_str(sql);
        if let Some(hit) = self.get(&key) {
            return hit;
        }
        let decision = Arc::new(compute());
        self.insert(key, Arc::clone(&decision));
        decision
    }

    pub fn get(&self, key: &str) -> Option<Decision> {
        self.inner().map.get(key).map(|(d, _)| Arc::clone(d))
    }

    pub fn insert(&self, key: String, decision: Decision) {
        let size = cost(&key, &decision);
        if size > self.budget / 8 {
            return;
        }
        let mut inner = self.inner();
        if let Some((_, old)) = inner.map.put(key, (decision, size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            match inner.map.pop_lru() {
                Some((_, (_, s))) => inner.bytes -= s,
                None => break,
            }
        }
    }

    /// Bytes held, for tests and metrics.
    pub fn bytes(&self) -> usize {
        self.inner().bytes
    }

    pub fn len(&self) -> usize {
        self.inner().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for AnalysisCache {
    fn default() -> Self {
        AnalysisCache::new(64 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn decision(sql: &str) -> Decision {
        Arc::new(Ok(Rewritten {
            sql: sql.to_string(),
            tables: BTreeSet::new(),
            kinds: vec!["SELECT".into()],
        }))
    }

    #[test]
    fn stays_within_its_budget() {
        let cache = AnalysisCache::new(64 * 1024);
        for i in 0..10_000 {
            let sql = format!("SELECT {i} FROM t WHERE x IN ({})", "1,".repeat(100));
            cache.insert(sql.clone(), decision(&sql));
            assert!(cache.bytes() <= 64 * 1024);
        }
        assert!(cache.len() > 10, "{}", cache.len());
        let big = "x".repeat(20_000);
        cache.insert(big.clone(), decision(&big));
        assert!(
            cache.get(&big).is_none(),
            "oversized entries are not cached"
        );
    }
}
