//! Reload on file change: `pgward.yaml` and every file in the policy
//! directory are checked every couple of seconds (name, size, mtime), so an
//! edited policy takes effect without a SIGHUP. A change that fails to
//! load is reported once and the running configuration stays, exactly as
//! with SIGHUP.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the watched files looked like at the last check.
#[derive(Default)]
pub struct Watcher {
    last: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl Watcher {
    /// Whether anything changed since the previous call (never on the first).
    pub fn changed(&mut self, config: &Path, policies: &Path) -> bool {
        let now = snapshot(config, policies);
        let changed = self.last.as_ref().is_some_and(|last| *last != now);
        self.last = Some(now);
        changed
    }
}

fn snapshot(config: &Path, policies: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut paths = vec![config.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(policies) {
        paths.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_edits_new_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pgward.yaml");
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(&config, "a").unwrap();
        let mut w = Watcher::default();
        assert!(!w.changed(&config, &policies), "first look is a baseline");
        assert!(!w.changed(&config, &policies));
        std::fs::write(policies.join("x.yaml"), "roles: {}").unwrap();
        assert!(w.changed(&config, &policies));
        std::fs::write(policies.join("x.yaml"), "roles: {} ").unwrap();
        assert!(w.changed(&config, &policies));
        std::fs::remove_file(policies.join("x.yaml")).unwrap();
        assert!(w.changed(&config, &policies));
        assert!(!w.changed(&config, &policies));
    }
}
