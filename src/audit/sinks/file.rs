//! The JSON-lines file sink: one event per line, for a log shipper
//! (Vector, Fluentd, Filebeat) to tail.
//!
//! * A batch is written with one `write`, synced, and only then does the
//!   cursor move. At start the sink reads the last complete line back (of
//!   the current file, or of the newest rotated one when the current file
//!   is empty) and resumes after the larger of that id and the cursor: a
//!   crash between writing and saving the cursor writes nothing twice. A
//!   partial last line (a crash mid-write) is cut off first.
//! * Rotation happens between batches: before a batch that would take the
//!   file past `rotate_size`, or once the file is `rotate_interval` old.
//!   The file is renamed to `<path>.<UTC yyyymmddThhmmssZ>` (with `.N`
//!   added if that exists) and only the newest `keep` rotated files stay.
//!   A batch is never split across files, so a file exceeds `rotate_size`
//!   only when a single batch does.
//! * A file renamed or deleted by someone else (logrotate) is noticed
//!   before the next batch and a new one created.
//! * New files are created with mode 0600, and missing directories with
//!   0700: audit data is sensitive. The shipper reading them runs as
//!   pgward's user or as root.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Deliver, FileConfig, Record, SinkError};

pub(super) struct FileSink {
    path: PathBuf,
    rotate_size: Option<u64>,
    rotate_interval: Option<Duration>,
    keep: usize,
    current: Option<Current>,
}

/// The open file.
struct Current {
    file: File,
    size: u64,
    /// When it was created (for `rotate_interval`).
    born: SystemTime,
    ino: u64,
}

impl FileSink {
    pub fn open(cfg: &FileConfig) -> io::Result<FileSink> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut sink = FileSink {
            path: cfg.path.clone(),
            rotate_size: cfg.rotate_size,
            rotate_interval: cfg.rotate_interval,
            keep: cfg.keep.max(1),
            current: None,
        };
        sink.current = Some(sink.open_current(SystemTime::now())?);
        Ok(sink)
    }

    fn open_current(&self, now: SystemTime) -> io::Result<Current> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let meta = file.metadata()?;
        let born = if meta.len() == 0 {
            now
        } else {
            meta.created().or_else(|_| meta.modified()).unwrap_or(now)
        };
        Ok(Current {
            size: meta.len(),
            born,
            ino: meta.ino(),
            file,
        })
    }

    /// Writes `records` as one batch at time `now`.
    fn write_batch(&mut self, records: &[Record], now: SystemTime) -> io::Result<()> {
        let mut lines = Vec::with_capacity(records.iter().map(|r| r.json.len() + 1).sum());
        for r in records {
            lines.extend_from_slice(&r.json);
            lines.push(b'\n');
        }
        self.reopen_if_moved(now)?;
        if self.due(lines.len() as u64, now) {
            self.rotate(now)?;
        }
        let cur = match &mut self.current {
            Some(c) => c,
            None => self.current.insert(self.open_current(now)?),
        };
        let before = cur.size;
        let written = cur
            .file
            .write_all(&lines)
            .and_then(|()| cur.file.sync_data());
        match written {
            Ok(()) => {
                cur.size += lines.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Take back a partial batch, so the retry from the cursor
                // leaves each line once; reopen on the next attempt.
                let _ = cur.file.set_len(before);
                self.current = None;
                Err(e)
            }
        }
    }

    /// Whether to rotate before writing `next` more bytes.
    fn due(&self, next: u64, now: SystemTime) -> bool {
        let Some(cur) = &self.current else {
            return false;
        };
        if cur.size == 0 {
            return false;
        }
        let too_big = self
            .rotate_size
            .is_some_and(|max| cur.size.saturating_add(next) > max);
        let too_old = self
            .rotate_interval
            .is_some_and(|age| now.duration_since(cur.born).is_ok_and(|lived| lived >= age));
        too_big || too_old
    }

    fn reopen_if_moved(&mut self, now: SystemTime) -> io::Result<()> {
        let moved = match (&self.current, std::fs::metadata(&self.path)) {
            (Some(cur), Ok(meta)) => meta.ino() != cur.ino,
            (Some(_), Err(e)) if e.kind() == io::ErrorKind::NotFound => true,
            (Some(_), Err(e)) => return Err(e),
            (None, _) => true,
        };
        if moved {
            self.current = Some(self.open_current(now)?);
        }
        Ok(())
    }

    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        let stamp = stamp(now);
        let mut target = rotated_name(&self.path, &stamp, 0);
        let mut n = 0;
        while target.exists() {
            n += 1;
            target = rotated_name(&self.path, &stamp, n);
        }
        std::fs::rename(&self.path, &target)?;
        self.current = Some(self.open_current(now)?);
        // Failing to clean up is no reason to fail the batch.
        let rotated = self.rotated().unwrap_or_else(|e| {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot list rotated audit files");
            Vec::new()
        });
        for old in rotated.into_iter().rev().skip(self.keep) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "cannot delete an old rotated audit file");
            }
        }
        Ok(())
    }

    /// The rotated files, oldest first.
    fn rotated(&self) -> io::Result<Vec<PathBuf>> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Some(base) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(key) = name.to_str().and_then(|n| rotation_key(base, n)) {
                found.push((key, entry.path()));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }
}

impl Deliver for FileSink {
    fn recover(&mut self) -> Option<u64> {
        let from_current = match &mut self.current {
            Some(cur) => match last_line_id(&mut cur.file, true) {
                Ok(found) => {
                    cur.size = cur.file.metadata().map(|m| m.len()).unwrap_or(cur.size);
                    found
                }
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot read the audit file's last line");
                    None
                }
            },
            None => None,
        };
        from_current.or_else(|| {
            let newest = self.rotated().ok()?.pop()?;
            let mut file = File::open(newest).ok()?;
            last_line_id(&mut file, false).ok().flatten()
        })
    }

    fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError> {
        Ok(self.write_batch(records, SystemTime::now())?)
    }
}

/// `20261123T184000Z`.
fn stamp(now: SystemTime) -> String {
    let t = time::OffsetDateTime::from(now);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn rotated_name(path: &Path, stamp: &str, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(stamp);
    if n > 0 {
        name.push(format!(".{n}"));
    }
    PathBuf::from(name)
}

/// For `<base>.<stamp>[.N]`, what orders it among rotated files.
fn rotation_key(base: &str, name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(base)?.strip_prefix('.')?;
    let (stamp, n) = match rest.split_once('.') {
        Some((stamp, n)) => (stamp, n.parse().ok()?),
        None => (rest, 0),
    };
    let b = stamp.as_bytes();
    let shaped = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    shaped.then(|| (stamp.to_string(), n))
}

/// The id in the last complete line of `file`. With `cut`, a partial line
/// after it is removed.
fn last_line_id(file: &mut File, cut: bool) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let Some(end) = rfind_newline(file, len)? else {
        if cut && len > 0 {
            file.set_len(0)?;
        }
        return Ok(None);
    };
    if cut && end + 1 < len {
        tracing::warn!(
            bytes = len - end - 1,
            "removing a partial last line from the audit file"
        );
        file.set_len(end + 1)?;
    }
    let start = rfind_newline(file, end)?.map_or(0, |p| p + 1);
    let mut line = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    match serde_json::from_slice::<Id>(&line) {
        Ok(Id { id }) => Ok(Some(id)),
        Err(_) => {
            tracing::warn!("the audit file's last line holds no event id; relying on the cursor");
            Ok(None)
        }
    }
}

/// The position of the last `\n` before `before`.
fn rfind_newline(file: &mut File, before: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut end = before;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(id: u64) -> Record {
        let json = format!(r#"{{"id":{id},"kind":"login","hash":"00"}}"#);
        Record {
            id,
            time_us: 0,
            kind: "login".into(),
            hash: "00".into(),
            json: json.into_bytes(),
        }
    }

    fn sink(dir: &Path, yaml: &str) -> FileSink {
        let mut cfg: FileConfig = serde_yaml::from_str(yaml).unwrap();
        cfg.path = dir.join("audit.jsonl");
        FileSink::open(&cfg).unwrap()
    }

    /// Every id in the current and rotated files, oldest file first.
    fn ids(s: &FileSink) -> Vec<u64> {
        let mut files = s.rotated().unwrap();
        files.push(s.path.clone());
        let mut out = Vec::new();
        for f in files {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                out.push(v["id"].as_u64().unwrap());
            }
        }
        out
    }

    const T0: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn rotates_by_size_between_batches_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        // A batch of two lines is 72 to 74 bytes: one batch per file.
        let mut s = sink(dir.path(), "{path: x, rotate_size: 100, keep: 2}");
        let t = SystemTime::UNIX_EPOCH + T0;
        for (i, batch) in [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]
            .iter()
            .enumerate()
        {
            let records: Vec<_> = batch.iter().map(|&id| record(id)).collect();
            s.write_batch(&records, t + Duration::from_secs(i as u64))
                .unwrap();
        }
        let rotated = s.rotated().unwrap();
        assert_eq!(rotated.len(), 2, "keep: 2 deleted the oldest: {rotated:?}");
        // Rotated before the fifth batch, at T0 + 4 s.
        assert!(
            rotated[0].to_str().unwrap().ends_with(".20270115T080004Z"),
            "{rotated:?}"
        );
        assert_eq!(ids(&s), (7..=12).collect::<Vec<_>>());
        for f in rotated {
            assert!(std::fs::metadata(&f).unwrap().len() <= 100);
        }
        let mode = std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn rotates_by_age_with_a_counter_for_the_same_second() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), "{path: x, rotate_interval: 1h}");
        let now = SystemTime::now();
        s.write_batch(&[record(1)], now).unwrap();
        s.write_batch(&[record(2)], now + Duration::from_secs(60))
            .unwrap();
        assert!(s.rotated().unwrap().is_empty(), "not an hour old yet");
        let later = now + Duration::from_secs(3600);
        s.write_batch(&[record(3)], later).unwrap();
        let rotated = s.rotated().unwrap();
        assert_eq!(rotated.len(), 1);
        // The new file is born `later`: an hour after that it rotates
        // again, and a file already named for that second gets `.1`.
        let stamp_at = later + Duration::from_secs(3600);
        std::fs::write(rotated_name(&s.path, &stamp(stamp_at), 0), "").unwrap();
        s.write_batch(&[record(4)], stamp_at).unwrap();
        let names: Vec<String> = s
            .rotated()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[2].ends_with("Z.1"), "{names:?}");
        assert_eq!(ids(&s), vec![1, 2, 3, 4]);
    }

    #[test]
    fn recovers_the_last_delivered_id_and_cuts_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), "{path: x}");
        s.write_batch(&[record(7), record(8)], SystemTime::now())
            .unwrap();
        drop(s);
        let path = dir.path().join("audit.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":9,"kind":"lo"#).unwrap();
        drop(f);
        let mut s = sink(dir.path(), "{path: x}");
        assert_eq!(s.recover(), Some(8));
        s.write_batch(&[record(9)], SystemTime::now()).unwrap();
        assert_eq!(ids(&s), vec![7, 8, 9]);
    }

    #[test]
    fn recovers_from_the_newest_rotated_file_when_the_current_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), "{path: x, rotate_size: 10}");
        let t = SystemTime::now();
        s.write_batch(&[record(1)], t).unwrap();
        s.write_batch(&[record(2)], t).unwrap();
        // Rotated before a batch that never got written.
        s.rotate(t + Duration::from_secs(1)).unwrap();
        drop(s);
        let mut s = sink(dir.path(), "{path: x, rotate_size: 10}");
        assert_eq!(s.recover(), Some(2));
        let other = tempfile::tempdir().unwrap();
        let mut empty = sink(other.path(), "{path: x}");
        assert_eq!(empty.recover(), None);
    }

    #[test]
    fn a_file_moved_away_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), "{path: x}");
        s.write_batch(&[record(1)], SystemTime::now()).unwrap();
        std::fs::rename(&s.path, dir.path().join("by-logrotate")).unwrap();
        s.write_batch(&[record(2)], SystemTime::now()).unwrap();
        assert_eq!(ids(&s), vec![2]);
    }

    #[test]
    fn rotated_names_are_recognised() {
        assert_eq!(
            rotation_key("a.jsonl", "a.jsonl.20260101T000000Z"),
            Some(("20260101T000000Z".into(), 0))
        );
        assert_eq!(
            rotation_key("a.jsonl", "a.jsonl.20260101T000000Z.12"),
            Some(("20260101T000000Z".into(), 12))
        );
        assert_eq!(rotation_key("a.jsonl", "a.jsonl.tmp"), None);
        assert_eq!(rotation_key("a.jsonl", "a.jsonl"), None);
        assert_eq!(rotation_key("a.jsonl", "b.jsonl.20260101T000000Z"), None);
    }
}
