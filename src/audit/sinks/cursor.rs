//! Where a sink remembers the last event it delivered: one small file per
//! sink holding an event id.
//!
//! It lives outside the audit store on purpose: a sink that wrote its
//! progress into SQLite would take the store's write lock after every
//! batch and contend with the writer the proxy waits on. The file is
//! replaced atomically (written beside, synced, renamed), so after a crash
//! it holds either the old id or the new one: a batch may be delivered
//! again, never skipped.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub(super) struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(path: PathBuf) -> CursorFile {
        CursorFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved id; `None` when the sink has never saved one.
    pub fn load(&self) -> io::Result<Option<u64>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold an event id; delete it to start the sink afresh",
                        self.path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, id: u64) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            // Cursor files reveal how far a sink got, nothing more, but
            // they sit beside audit data: private like it.
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(file, "{id}")?;
        file.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable; some file systems refuse to
            // sync a directory, which only weakens this to "usually".
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_and_loads_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = CursorFile::new(dir.path().join("sinks/logs.cursor"));
        assert_eq!(cursor.load().unwrap(), None);
        cursor.save(41).unwrap();
        cursor.save(42).unwrap();
        assert_eq!(cursor.load().unwrap(), Some(42));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("sinks")), 0o700);
        assert_eq!(mode(cursor.path()), 0o600);
        std::fs::write(cursor.path(), "garbage").unwrap();
        let err = cursor.load().unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }
}
