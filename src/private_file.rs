//! SQLite files only their owner may read.
//!
//! The user store holds password hashes and TOTP secrets; the audit store
//! holds statement texts, which name patients. SQLite creates a database
//! with the process umask (usually 0644: readable by every local account)
//! and gives its `-wal` and `-shm` files the database's mode. So before a
//! store is opened, [`prepare`] creates the file 0600 if it is new, and
//! tightens a store an older pgward created with a looser mode (and its
//! `-wal` / `-shm` files), saying so in the log.

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every store file.
pub const MODE: u32 = 0o600;

/// Makes `path` (created empty if missing) and its SQLite companions
/// readable and writable by the owner only.
pub fn prepare(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for file in [
        path.to_path_buf(),
        companion(path, "-wal"),
        companion(path, "-shm"),
    ] {
        let Ok(meta) = fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&file, Permissions::from_mode(MODE)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is readable by other accounts (mode {mode:o}) and cannot be made private: {e}",
                        file.display()
                    ),
                )
            })?;
            tracing::warn!(file = %file.display(), from = format!("{mode:o}"), to = format!("{MODE:o}"), "made a store file private");
        }
    }
    Ok(())
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_stores_and_their_wal_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.db");
        prepare(&path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        for f in [
            path.clone(),
            companion(&path, "-wal"),
            companion(&path, "-shm"),
        ] {
            assert_eq!(mode(&f), MODE, "{}", f.display());
        }
    }

    #[test]
    fn loose_stores_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        for f in [path.clone(), companion(&path, "-wal")] {
            fs::write(&f, b"").unwrap();
            fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        }
        prepare(&path).unwrap();
        assert_eq!(mode(&path), MODE);
        assert_eq!(mode(&companion(&path, "-wal")), MODE);
        assert!(!companion(&path, "-shm").exists(), "nothing created beside");
    }
}
