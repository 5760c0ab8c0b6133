//! The spool: an append-only file that each event is written to before
//! the client sees its statement complete (`audit.durability: spool`).
//!
//! Storing an event in the chain costs a SQLite commit (tens of
//! microseconds) and two thread hand-offs; holding every ReadyForQuery for
//! that made audited sessions much slower than unaudited ones. Copying the
//! event into a shared memory map of a file costs well under a
//! microsecond, with no system call, and survives the same thing a commit
//! with `synchronous=NORMAL` survives: the death of the process (the pages
//! belong to the kernel's page cache the moment they are written) but not
//! a power cut — neither is fsynced. So the session copies the event here,
//! under a short lock that also queues it for the writer in the same order,
//! and releases ReadyForQuery at once; the writer chains and commits it
//! later and records, in the same transaction, the highest spool sequence
//! number it has stored ([`AuditStore::spool_mark`](super::store::AuditStore)).
//! After a crash, [`Recovery`] hands back every spooled event above that
//! mark, to be stored before pgward accepts a connection.
//!
//! The spool is a directory of segments named by their first sequence
//! number. Each segment is allocated whole ([`SEGMENT_BYTES`], with
//! `posix_fallocate`, so that a full disk is an error when a segment is
//! opened rather than a fault while writing into the map) and starts zeroed.
//! A record is `length (u32) ‖ sequence (u64) ‖ CRC-32 of sequence and
//! body ‖ body` (little-endian; the body is the event's JSON); a zero
//! length is where the written part ends. A segment is sealed when the next
//! record does not fit and, once the store holds everything in it, kept as
//! the *spare*: the next seal renames the spare and writes over it rather
//! than allocating a new file. Fresh pages of a shared file map cost a page
//! fault each on first write (allocation, zeroing, block reservation) and
//! unmapping costs TLB shootdowns; together these were most of the spool's
//! cost per event, on the session's thread. A recycled segment's pages are
//! in the page cache and mapped already. Old records beyond the written
//! part are never read: every append leaves a zero length after its record
//! (and a spare starts with one), so a zero length still marks the end.
//! The spool's memory is thus up to three segments of page cache: the open
//! one, one sealed and not yet stored, the spare.
//! A torn or damaged record ends what is read of its segment: a record not
//! copied whole was never acknowledged. One pgward at a time: the directory
//! is locked (`flock`) while in use.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::{Mutex, MutexGuard};

use memmap2::MmapMut;
use nix::fcntl::{posix_fallocate, Flock, FlockArg};

use super::event::Encoded;

/// The size of a segment (larger only for an event that needs more).
pub const SEGMENT_BYTES: usize = 8 << 20;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"PGWSPL1\n";
const RECORD_HEADER: usize = 4 + 8 + 4;
/// Where the stored segment kept for reuse waits (read as empty).
const SPARE: &str = "spare.seg";
/// No event is this large; a length above it is damage.
const MAX_BODY: usize = 64 << 20;

/// The spool directory of the store at `store`: `audit.db` → `audit.db.spool`.
pub fn dir_for(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".spool");
    store.with_file_name(name)
}

/// What an earlier run left in the spool, read when pgward starts.
pub struct Recovery {
    dir: PathBuf,
    lock: Flock<File>,
    /// Spooled events the store does not hold yet, in spool order.
    pub events: Vec<Encoded>,
    /// The highest sequence number seen (or the store's mark).
    pub last_seq: u64,
    /// What was wrong with segments that were not read to their end.
    pub damaged: Vec<String>,
    segments: Vec<PathBuf>,
}

impl Recovery {
    /// Locks the spool at `dir` (creating it, mode 0700) and reads every
    /// event in it with a sequence number above `stored_mark`.
    pub fn open(dir: &Path, stored_mark: u64) -> io::Result<Recovery> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            io::Error::other(format!(
                "the audit spool {} is in use by another pgward ({e}); one pgward per audit store",
                dir.display()
            ))
        })?;
        let mut segments: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segments.sort();
        let mut recovery = Recovery {
            dir: dir.to_path_buf(),
            lock,
            events: Vec::new(),
            last_seq: stored_mark,
            damaged: Vec::new(),
            segments: Vec::new(),
        };
        for path in segments {
            let data = fs::read(&path)?;
            let name = path.display().to_string();
            if let Err(why) = read_segment(&data, |seq, body| {
                recovery.last_seq = recovery.last_seq.max(seq);
                if seq <= stored_mark {
                    return Ok(());
                }
                let event = Encoded::decode(body.to_vec())
                    .map_err(|e| format!("record {seq} is not an event: {e}"))?;
                recovery.events.push(event);
                Ok(())
            }) {
                recovery.damaged.push(format!("{name}: {why}"));
            }
            recovery.segments.push(path);
        }
        Ok(recovery)
    }

    /// Once the recovered events are stored: removes the old segments and
    /// opens a fresh one for this run.
    pub fn into_spool(self) -> io::Result<Spool> {
        for path in &self.segments {
            fs::remove_file(path)?;
        }
        let next_seq = self.last_seq + 1;
        let map = new_segment(&self.dir, next_seq, 0)?;
        Ok(Spool {
            dir: self.dir,
            _lock: self.lock,
            state: Mutex::new(State {
                map,
                first_seq: next_seq,
                next_seq,
                written: MAGIC.len(),
                sealed: Vec::new(),
                spare: None,
            }),
        })
    }
}

/// Calls `record` for each whole record of a segment, in order; `Err` says
/// why reading stopped early.
fn read_segment(
    data: &[u8],
    mut record: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let Some(mut rest) = data.strip_prefix(&MAGIC[..]) else {
        return if data.is_empty() {
            Ok(())
        } else {
            Err("not a spool segment".into())
        };
    };
    while !rest.is_empty() {
        // A zero length ends the written part (each append zeroes the next
        // one); so does a tail too short to hold a length.
        if rest.len() < 4 || rest[..4] == [0; 4] {
            return Ok(());
        }
        if rest.len() < RECORD_HEADER {
            return Err(format!("a torn record header ({} bytes)", rest.len()));
        }
        let (header, tail) = rest.split_at(RECORD_HEADER);
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let seq_bytes = &header[4..12];
        let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if len > MAX_BODY || len > tail.len() {
            return Err(format!("a torn record ({len} bytes announced)"));
        }
        let (body, after) = tail.split_at(len);
        if checksum(seq_bytes, body) != crc {
            return Err("a record with a bad checksum".into());
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(seq_bytes);
        record(u64::from_le_bytes(seq), body)?;
        rest = after;
    }
    Ok(())
}

fn checksum(seq: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq);
    h.update(body);
    h.finalize()
}

/// Creates the segment whose first record is `first_seq`, allocated whole
/// (room for at least `record` bytes after the magic) and mapped.
fn new_segment(dir: &Path, first_seq: u64, record: usize) -> io::Result<MmapMut> {
    let path = dir.join(segment_name(first_seq));
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    let size = SEGMENT_BYTES.max(MAGIC.len() + record);
    let mapped = allocate(&file, size).and_then(|()| {
        // SAFETY: the file is ours (created above, in a directory this
        // process holds locked, mode 0700) and allocated to `size`; nothing
        // truncates it while it is mapped.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        map[..MAGIC.len()].copy_from_slice(MAGIC);
        Ok(map)
    });
    if mapped.is_err() {
        // Leave no half-made segment behind to collide with the next try.
        let _ = fs::remove_file(&path);
    }
    mapped
}

/// Reserves `size` bytes of disk for `file`: a full disk is refused here,
/// not discovered by a write into the map (which the kernel answers with
/// SIGBUS).
fn allocate(file: &File, size: usize) -> io::Result<()> {
    let len = i64::try_from(size).map_err(|_| io::Error::other("spool segment too large"))?;
    posix_fallocate(file, 0, len).map_err(io::Error::from)
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// A spooled event's sequence number, with the spool's lock still held.
pub struct Appended<'a> {
    pub seq: u64,
    _held: MutexGuard<'a, State>,
}

/// The spool of a running pgward.
pub struct Spool {
    dir: PathBuf,
    _lock: Flock<File>,
    state: Mutex<State>,
}

struct State {
    /// The open segment.
    map: MmapMut,
    /// The first sequence number of the open segment (its name).
    first_seq: u64,
    next_seq: u64,
    /// Bytes of the open segment in use.
    written: usize,
    /// Sealed segments, oldest first.
    sealed: Vec<Sealed>,
    /// A stored segment of the standard size, mapped, its written part
    /// ended at the start: the next segment to open.
    spare: Option<MmapMut>,
}

/// A segment that is full and waits for the store.
struct Sealed {
    first_seq: u64,
    last_seq: u64,
    map: MmapMut,
}

impl Spool {
    /// Copies one event body into the spool. The answer holds the spool's
    /// lock: queue the event for the writer before dropping it, so the
    /// writer receives spooled events in sequence order. `Err` when no
    /// segment could be opened for it (a full disk); the caller then waits
    /// for the commit instead.
    ///
    /// Runs on the session's task: a copy into mapped memory costs less
    /// than a hop to a blocking thread.
    pub fn append(&self, body: &[u8]) -> io::Result<Appended<'_>> {
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&n| n > 0 && n as usize <= MAX_BODY)
            .ok_or_else(|| io::Error::other("audit event empty or too large for the spool"))?;
        let record = RECORD_HEADER + body.len();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.map.len() - st.written < record {
            self.seal(&mut st, record)?;
        }
        let seq = st.next_seq;
        let seq_bytes = seq.to_le_bytes();
        let crc = checksum(&seq_bytes, body);
        let at = st.written;
        // The length slot after this record is zeroed first (it may hold an
        // old record of a recycled segment), then the body and header, and
        // the length last: a copy cut short by the death of the process
        // leaves a zero length (the end) rather than a torn record; the
        // checksum catches the rest. The fences keep the compiler from
        // reordering these stores into the map.
        let end = at + record;
        let next_len = end..(end + 4).min(st.map.len());
        st.map[next_len].fill(0);
        let out = &mut st.map[at..end];
        out[RECORD_HEADER..].copy_from_slice(body);
        out[4..12].copy_from_slice(&seq_bytes);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        compiler_fence(Ordering::Release);
        out[..4].copy_from_slice(&len.to_le_bytes());
        compiler_fence(Ordering::Release);
        st.next_seq += 1;
        st.written = end;
        Ok(Appended { seq, _held: st })
    }

    /// Starts a new segment with room for `record`; the current one is
    /// kept until stored.
    fn seal(&self, st: &mut State, record: usize) -> io::Result<()> {
        let map = match st.spare.take() {
            Some(spare) if MAGIC.len() + record <= spare.len() => {
                match fs::rename(
                    self.dir.join(SPARE),
                    self.dir.join(segment_name(st.next_seq)),
                ) {
                    Ok(()) => spare,
                    Err(_) => new_segment(&self.dir, st.next_seq, record)?,
                }
            }
            other => {
                st.spare = other;
                new_segment(&self.dir, st.next_seq, record)?
            }
        };
        let old = std::mem::replace(&mut st.map, map);
        if st.next_seq > st.first_seq {
            st.sealed.push(Sealed {
                first_seq: st.first_seq,
                last_seq: st.next_seq - 1,
                map: old,
            });
        } else {
            // Nothing was written to it: it holds no event to wait for.
            drop(old);
            let _ = fs::remove_file(self.dir.join(segment_name(st.first_seq)));
        }
        st.first_seq = st.next_seq;
        st.written = MAGIC.len();
        Ok(())
    }

    /// The store holds every spooled event through `mark`: sealed segments
    /// that end at or before it become the spare (one of the standard
    /// size, when there is none) or are removed.
    pub fn stored_through(&self, mark: u64) {
        let done: Vec<Sealed> = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.sealed.first().map_or(true, |s| s.last_seq > mark) {
                return;
            }
            let (done, keep) = std::mem::take(&mut st.sealed)
                .into_iter()
                .partition(|s| s.last_seq <= mark);
            st.sealed = keep;
            done
        };
        for mut segment in done {
            let path = self.dir.join(segment_name(segment.first_seq));
            if segment.map.len() == SEGMENT_BYTES && self.spare_is_free() {
                // Its events are stored: an empty written part from here on.
                segment.map[MAGIC.len()..MAGIC.len() + 4].fill(0);
                if fs::rename(&path, self.dir.join(SPARE)).is_ok() {
                    let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.spare = Some(segment.map);
                    continue;
                }
            }
            drop(segment);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stored spool segment");
            }
        }
    }

    fn spare_is_free(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spare
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Event, Kind};

    fn event(text: &str) -> Vec<u8> {
        let mut e = Event::new(Kind::Statement, "test");
        e.text = Some(text.into());
        Encoded::new(e).body
    }

    fn texts(r: &Recovery) -> Vec<String> {
        r.events
            .iter()
            .filter_map(|e| e.event.text.as_deref().map(str::to_string))
            .collect()
    }

    #[test]
    fn spooled_events_above_the_mark_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        let mut seqs = Vec::new();
        for i in 0..5 {
            seqs.push(spool.append(&event(&format!("s{i}"))).unwrap().seq);
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        drop(spool);
        // The store holds the first two.
        let r = Recovery::open(dir.path(), 2).unwrap();
        assert_eq!(texts(&r), ["s2", "s3", "s4"]);
        assert_eq!(r.last_seq, 5);
        assert!(r.damaged.is_empty());
        // Numbering goes on after everything seen; old segments go.
        let spool = r.into_spool().unwrap();
        assert_eq!(spool.append(&event("next")).unwrap().seq, 6);
        drop(spool);
        let r = Recovery::open(dir.path(), 5).unwrap();
        assert_eq!(texts(&r), ["next"]);
    }

    /// A spool holding events `a` and `b` in its first segment, closed:
    /// the directory, that segment, and where its written part ends.
    fn two_spooled(a: &str, b: &str) -> (tempfile::TempDir, PathBuf, usize) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        let mut end = MAGIC.len();
        for text in [a, b] {
            let body = event(text);
            spool.append(&body).unwrap();
            end += RECORD_HEADER + body.len();
        }
        drop(spool);
        let seg = dir.path().join(segment_name(1));
        (dir, seg, end)
    }

    #[test]
    fn a_torn_tail_ends_the_segment_and_is_reported() {
        let (dir, seg, end) = two_spooled("whole", "torn");
        // A copy cut short: the last bytes of the body never arrived.
        let mut data = fs::read(&seg).unwrap();
        data[end - 3..end].fill(0);
        fs::write(&seg, data).unwrap();
        let r = Recovery::open(dir.path(), 0).unwrap();
        assert_eq!(texts(&r), ["whole"]);
        assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
        assert!(r.damaged[0].contains("checksum"), "{:?}", r.damaged);
    }

    #[test]
    fn a_segment_cut_short_ends_where_it_ends() {
        let (dir, seg, end) = two_spooled("whole", "torn");
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len((end - 3) as u64).unwrap();
        let r = Recovery::open(dir.path(), 0).unwrap();
        assert_eq!(texts(&r), ["whole"]);
        assert!(r.damaged[0].contains("torn"), "{:?}", r.damaged);
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_checksum() {
        let (dir, seg, end) = two_spooled("first", "second");
        let mut data = fs::read(&seg).unwrap();
        let at = end - 5;
        data[at] ^= 0x20;
        fs::write(&seg, data).unwrap();
        let r = Recovery::open(dir.path(), 0).unwrap();
        assert_eq!(texts(&r), ["first"]);
        assert!(r.damaged[0].contains("checksum"), "{:?}", r.damaged);
    }

    #[test]
    fn an_event_larger_than_a_segment_gets_a_segment_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        let huge = event(&"y".repeat(SEGMENT_BYTES + 1000));
        spool.append(&event("before")).unwrap();
        assert_eq!(spool.append(&huge).unwrap().seq, 2);
        spool.append(&event("after")).unwrap();
        drop(spool);
        let r = Recovery::open(dir.path(), 0).unwrap();
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        let lens: Vec<usize> = r
            .events
            .iter()
            .map(|e| e.event.text.as_ref().unwrap().len())
            .collect();
        assert_eq!(lens, [6, SEGMENT_BYTES + 1000, 5]);
    }

    #[test]
    fn segments_are_sealed_and_removed_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        let big = event(&"x".repeat(1 << 20));
        let mut last = 0;
        for _ in 0..20 {
            last = spool.append(&big).unwrap().seq;
        }
        let count = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        let spare = dir.path().join(SPARE);
        assert_eq!(count(), 3, "20 MiB in 8 MiB segments");
        spool.stored_through(6);
        assert_eq!(count(), 3, "the first segment holds 1..=7");
        assert!(!spare.exists());
        spool.stored_through(7);
        assert_eq!(count(), 3, "the first segment is kept as the spare");
        assert!(spare.exists());
        assert!(!dir.path().join(segment_name(1)).exists());
        spool.stored_through(last);
        assert_eq!(count(), 2, "the open segment and the spare are left");
        drop(spool);
        let r = Recovery::open(dir.path(), last).unwrap();
        assert!(r.events.is_empty());
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        assert_eq!(r.last_seq, last);
    }

    #[test]
    fn a_recycled_segment_never_gives_back_its_old_events() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        // Fill the first segment with long events and store them; sealing
        // the second opens the first one again, reused.
        let long = event(&"old ".repeat(50_000));
        let mut seq = 0;
        while seq < 60 {
            seq = spool.append(&long).unwrap().seq;
        }
        spool.stored_through(seq);
        assert!(
            dir.path().join(SPARE).exists(),
            "the stored segment waits as the spare"
        );
        {
            let mut st = spool.state.lock().unwrap();
            spool.seal(&mut st, 0).unwrap();
        }
        let third_first = seq + 1;
        let seg = dir.path().join(segment_name(third_first));
        assert!(seg.exists(), "the spare became the new segment");
        assert!(!dir.path().join(SPARE).exists());
        // Two short events over the old long ones, then a third whose copy
        // is cut short before its length, and a crash.
        let mut end = MAGIC.len();
        for text in ["new 1", "new 2"] {
            let body = event(text);
            spool.append(&body).unwrap();
            end += RECORD_HEADER + body.len();
        }
        drop(spool);
        let mut data = fs::read(&seg).unwrap();
        assert_eq!(data[end..end + 4], [0; 4], "the next length is zeroed");
        assert!(
            data[end + 4..end + 400].iter().any(|&b| b != 0),
            "old bytes follow"
        );
        let torn = event("never acknowledged");
        data[end + RECORD_HEADER..end + RECORD_HEADER + torn.len()].copy_from_slice(&torn);
        fs::write(&seg, data).unwrap();
        let r = Recovery::open(dir.path(), seq).unwrap();
        assert!(r.damaged.is_empty(), "{:?}", r.damaged);
        assert_eq!(texts(&r), ["new 1", "new 2"]);
    }

    #[test]
    fn one_pgward_per_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _spool = Recovery::open(dir.path(), 0).unwrap().into_spool().unwrap();
        let err = Recovery::open(dir.path(), 0).err().expect("locked");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn the_spool_sits_next_to_the_store() {
        assert_eq!(
            dir_for(Path::new("/var/lib/pgward/audit.db")),
            Path::new("/var/lib/pgward/audit.db.spool")
        );
    }
}
