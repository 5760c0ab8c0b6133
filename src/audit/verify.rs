//! Verification of the audit trail: the store itself, and exports of it.
//!
//! The point of a hash chain with signed checkpoints is that someone who
//! did not write the trail can check it. This module is that check, and
//! it is deliberately stricter than anything else that reads the store:
//! it re-derives every hash from the stored bytes (never re-encoding an
//! event, so old events stay verifiable), checks the indexed columns
//! against the body they were copied from (filters and exports trust
//! them) and the time marks exports start from, and checks each
//! checkpoint's signature and head. It stops at the
//! first problem and names the event, because "event 4711 was changed" is
//! what an investigator needs; later damage is usually a consequence.
//!
//! Both walks run in constant memory: events and checkpoints are read with
//! two cursors merged by id, never collected, so a years-long trail (tens
//! of millions of events, a checkpoint a second) verifies on a small host.
//! The store is read in one read transaction, a consistent snapshot while
//! the proxy keeps appending.
//!
//! What the signatures cannot prove is said out loud: events after the last
//! checkpoint could still be rewritten or cut off without trace, so the
//! report counts them.

use std::fmt;
use std::io::BufRead;

use rusqlite::types::{Value, ValueRef};
use rusqlite::Row;
use serde::Deserialize;

use super::chain::{link, Checkpoint, Hash, GENESIS};
use super::event::{format_time, Event};
use super::export::{
    CheckpointLine, Header, SkipLine, CHECKPOINT_PREFIX, HEADER_PREFIX, SKIP_PREFIX,
};
use super::retention::PruneRecord;
use super::store::{next_hash, AuditStore, AuditStoreError};

/// The first problem found, and the event it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The first event that is bad (or missing), when one can be named.
    pub event: Option<u64>,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of a verification that could read its input.
#[derive(Clone, Debug)]
pub enum Report<T> {
    Verified(T),
    Failed(Failure),
}

impl<T> Report<T> {
    pub fn is_verified(&self) -> bool {
        matches!(self, Report::Verified(_))
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Report::Failed(f) => Some(f),
            Report::Verified(_) => None,
        }
    }
}

/// What a successful store verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSummary {
    pub events: u64,
    /// The first stored id (the chain base plus one).
    pub first_id: u64,
    /// The last stored id (the chain base when there are no events).
    pub last_id: u64,
    pub checkpoints: u64,
    /// The newest checkpoint: (last id, time).
    pub last_checkpoint: Option<(u64, i64)>,
    /// Events after the newest checkpoint, not yet covered by a signature.
    pub unsigned: u64,
    /// When older events were pruned: the `audit.prune` event that
    /// accounts for the chain base.
    pub pruned_by: Option<u64>,
}

impl fmt::Display for StoreSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.events == 0 {
            write!(f, "the audit trail has no events")?;
        } else {
            write!(
                f,
                "{} event(s), ids {}..={}, chain intact",
                self.events, self.first_id, self.last_id
            )?;
        }
        if let Some(record) = self.pruned_by {
            write!(
                f,
                "; events through {} were pruned (recorded by event {record})",
                self.first_id - 1
            )?;
        }
        write!(f, "; {} signed checkpoint(s)", self.checkpoints)?;
        if let Some((id, time)) = self.last_checkpoint {
            write!(f, ", the last at event {id} ({})", format_time(time))?;
        }
        if self.unsigned > 0 {
            write!(
                f,
                "; {} event(s) after it not yet covered by a signature",
                self.unsigned
            )?;
        }
        Ok(())
    }
}

/// What a successful export verification proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// The range the export covers (events and digests of the others).
    pub first_id: u64,
    pub last_id: u64,
    /// Event lines.
    pub events: u64,
    /// Events present only as digests (not matching the export's filters).
    pub skipped: u64,
    /// Checkpoint lines, all with valid signatures and matching heads.
    pub checkpoints: u64,
    /// The newest checkpoint in the export: (last id, time).
    pub signed_through: Option<(u64, i64)>,
    /// Event lines and digests after the newest checkpoint: present and
    /// chained, but not proven by a signature.
    pub unsigned_events: u64,
    pub unsigned_skipped: u64,
    /// The filters from the header, as JSON.
    pub filters: String,
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.last_id < self.first_id {
            write!(f, "export covering no events")?;
        } else {
            write!(f, "export of ids {}..={}", self.first_id, self.last_id)?;
        }
        write!(
            f,
            " (filters {}): {} event(s) and {} digest(s) of other events, {} signed checkpoint(s)",
            self.filters, self.events, self.skipped, self.checkpoints
        )?;
        match self.signed_through {
            Some((id, time)) if id >= self.first_id => {
                write!(
                    f,
                    "; proven through event {id} (signed {})",
                    format_time(time)
                )?;
                if self.unsigned_events + self.unsigned_skipped > 0 {
                    write!(
                        f,
                        "; {} event(s) and {} digest(s) after event {id} are NOT covered by a signature",
                        self.unsigned_events, self.unsigned_skipped
                    )?;
                }
            }
            _ if self.last_id >= self.first_id => write!(
                f,
                "; no checkpoint covers these events, so they are NOT proven"
            )?,
            _ => {}
        }
        Ok(())
    }
}

/// Why a walk stopped: the input could not be read, or it is bad.
pub(super) enum Stop<E> {
    Error(E),
    Failed(Failure),
}

impl From<rusqlite::Error> for Stop<AuditStoreError> {
    fn from(e: rusqlite::Error) -> Self {
        Stop::Error(AuditStoreError::Sqlite(e))
    }
}

impl From<AuditStoreError> for Stop<AuditStoreError> {
    fn from(e: AuditStoreError) -> Self {
        Stop::Error(e)
    }
}

impl From<std::io::Error> for Stop<std::io::Error> {
    fn from(e: std::io::Error) -> Self {
        Stop::Error(e)
    }
}

pub(super) fn fail<E>(event: Option<u64>, message: String) -> Stop<E> {
    Stop::Failed(Failure { event, message })
}

pub(super) fn finish<T, E>(result: Result<T, Stop<E>>) -> Result<Report<T>, E> {
    match result {
        Ok(t) => Ok(Report::Verified(t)),
        Err(Stop::Failed(f)) => Ok(Report::Failed(f)),
        Err(Stop::Error(e)) => Err(e),
    }
}

/// Verifies the whole store against `public_key` (32 bytes, Ed25519).
/// `Err` means the store could not be read; tampering is a
/// [`Report::Failed`] naming the first bad event.
pub fn verify_store(
    store: &AuditStore,
    public_key: &[u8],
) -> Result<Report<StoreSummary>, AuditStoreError> {
    finish(walk_store(store, public_key))
}

fn walk_store(
    store: &AuditStore,
    public_key: &[u8],
) -> Result<StoreSummary, Stop<AuditStoreError>> {
    let conn = store.connection();
    // Declared first so it ends last, after the cursors.
    let _snapshot = conn.unchecked_transaction()?;
    let (base_id, base_hash) = store.base()?;

    let mut cp_stmt =
        conn.prepare("SELECT last_id, head, time_us, signature FROM checkpoints ORDER BY last_id")?;
    let mut cp_rows = cp_stmt.query([])?;
    let mut next_cp = match cp_rows.next()? {
        Some(r) => Some(checkpoint_row(r)?),
        None => None,
    };
    let mut checkpoints = 0u64;
    let mut last_cp: Option<(u64, i64)> = None;

    // Checkpoints from before the chain base (pruned events): only their
    // signatures can be checked, and the one at the base must sign it.
    let mut base_cp = None;
    while let Some(cp) = next_cp.take_if_at_most(base_id) {
        check_signature(&cp, public_key)?;
        checkpoints += 1;
        last_cp = Some((cp.last_id, cp.time_us));
        if cp.last_id == base_id {
            base_cp = Some(cp);
        }
        next_cp = match cp_rows.next()? {
            Some(r) => Some(checkpoint_row(r)?),
            None => None,
        };
    }
    check_base(base_id, &base_hash, base_cp.as_ref())?;
    // The newest `audit.prune` event, which must account for the base.
    let mut last_prune: Option<(u64, Option<PruneRecord>)> = None;

    let mut ev_stmt = conn.prepare(
        "SELECT id, time_us, kind, user, database, class, relations, body, hash
         FROM events WHERE id > ?1 ORDER BY id",
    )?;
    let mut ev_rows = ev_stmt.query([base_id as i64])?;
    let mut mark_stmt = conn
        .prepare("SELECT last_id, max_time FROM time_marks WHERE last_id > ?1 ORDER BY last_id")?;
    let mut marks = TimeMarks::new(mark_stmt.query([base_id as i64])?)?;
    let mut prev_id = base_id;
    let mut hash = base_hash;
    let mut events = 0u64;
    while let Some(r) = ev_rows.next()? {
        let id = r.get::<_, i64>(0)? as u64;
        let expected = prev_id + 1;
        if id != expected {
            let range = match id - 1 > expected {
                true => format!(" (events {expected}..={} are all missing)", id - 1),
                false => String::new(),
            };
            return Err(fail(
                Some(expected),
                format!("event {expected} is missing: deleted from the store{range}"),
            ));
        }
        let (next, event) = check_event(r, id, &hash)?;
        hash = next;
        marks.check_through(id, event.time_us)?;
        if let Some(record) = PruneRecord::of(&event) {
            last_prune = Some((id, record));
        }
        prev_id = id;
        events += 1;
        while let Some(cp) = next_cp.take_if_at_most(id) {
            check_signature(&cp, public_key)?;
            if cp.last_id != id || cp.head.as_slice() != hash.as_slice() {
                let from = last_cp.map_or(base_id, |(c, _)| c.max(base_id)) + 1;
                return Err(fail(
                    Some(from),
                    format!(
                        "the chain was rewritten: the checkpoint at event {} (signed {}) does not match the stored chain; events {from}..={} were changed and their hashes recomputed",
                        cp.last_id,
                        format_time(cp.time_us),
                        cp.last_id
                    ),
                ));
            }
            checkpoints += 1;
            last_cp = Some((cp.last_id, cp.time_us));
            next_cp = match cp_rows.next()? {
                Some(r) => Some(checkpoint_row(r)?),
                None => None,
            };
        }
    }

    // Checkpoints beyond the last stored event: events were cut off.
    if let Some(cp) = next_cp {
        check_signature(&cp, public_key)?;
        return Err(fail(
            Some(prev_id + 1),
            format!(
                "events {}..={} were deleted from the end: the checkpoint at event {} (signed {}) covers them, but the store ends at event {prev_id}",
                prev_id + 1,
                cp.last_id,
                cp.last_id,
                format_time(cp.time_us)
            ),
        ));
    }

    marks.check_end(prev_id)?;
    check_base_recorded(base_id, last_prune.as_ref())?;
    let signed_to = last_cp.map_or(base_id, |(c, _)| c.max(base_id));
    Ok(StoreSummary {
        events,
        first_id: base_id + 1,
        last_id: prev_id,
        checkpoints,
        last_checkpoint: last_cp,
        unsigned: prev_id.saturating_sub(signed_to),
        pruned_by: last_prune.filter(|_| base_id > 0).map(|(id, _)| id),
    })
}

/// The store's time marks, read alongside the events: each must be at a
/// stored event and no earlier than every event time up to it, or a
/// reader starting from a time (`export --since`) could pass over events.
struct TimeMarks<'a> {
    rows: rusqlite::Rows<'a>,
    next: Option<(u64, i64)>,
    /// The latest event time so far, and its event.
    latest: Option<(i64, u64)>,
}

impl<'a> TimeMarks<'a> {
    fn new(mut rows: rusqlite::Rows<'a>) -> Result<Self, Stop<AuditStoreError>> {
        let next = Self::read(&mut rows)?;
        Ok(TimeMarks {
            rows,
            next,
            latest: None,
        })
    }

    fn read(rows: &mut rusqlite::Rows<'a>) -> Result<Option<(u64, i64)>, Stop<AuditStoreError>> {
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let id = r.get::<_, i64>(0)?.max(0) as u64;
        match r.get_ref(1)? {
            ValueRef::Integer(t) => Ok(Some((id, t))),
            other => Err(fail(
                Some(id),
                format!(
                    "the time mark at event {id} was changed: its time is {}, not a number",
                    show(&Value::from(other))
                ),
            )),
        }
    }

    /// Event `id`, at `time_us`, was read (ids in order, none missing).
    fn check_through(&mut self, id: u64, time_us: i64) -> Result<(), Stop<AuditStoreError>> {
        if self.latest.map_or(true, |(t, _)| time_us > t) {
            self.latest = Some((time_us, id));
        }
        while let Some((at, max_time)) = self.next.filter(|(at, _)| *at <= id) {
            if let Some((t, by)) = self.latest.filter(|(t, _)| max_time < *t) {
                return Err(fail(
                    Some(at),
                    format!(
                        "the time mark at event {at} was changed: it says no event through {at} is later than {}, but event {by} is at {}; an export from a time could leave out events",
                        format_time(max_time),
                        format_time(t)
                    ),
                ));
            }
            self.next = Self::read(&mut self.rows)?;
        }
        Ok(())
    }

    /// The store ends at `last_id`: no mark may lie beyond it.
    fn check_end(&mut self, last_id: u64) -> Result<(), Stop<AuditStoreError>> {
        match self.next {
            Some((at, _)) => Err(fail(
                Some(last_id + 1),
                format!(
                    "events {}..={at} were deleted from the end: a time mark was written at event {at}, but the store ends at event {last_id}",
                    last_id + 1
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Checks where the stored chain starts: at 0 it chains from [`GENESIS`];
/// after pruning, a checkpoint signed for exactly the base (`base_cp`)
/// must hold its hash, or nothing authenticates the rest of the chain.
pub(super) fn check_base<E>(
    base_id: u64,
    base_hash: &Hash,
    base_cp: Option<&Checkpoint>,
) -> Result<(), Stop<E>> {
    if base_id == 0 {
        if *base_hash != GENESIS {
            return Err(fail(
                Some(1),
                "the chain base was changed: the first event must chain from the zero hash".into(),
            ));
        }
        return Ok(());
    }
    match base_cp {
        None => Err(fail(
            Some(base_id),
            format!(
                "the trail starts after event {base_id}, but no checkpoint is signed for event {base_id}: the start of the chain cannot be authenticated (events or the checkpoint at the prune boundary were deleted)"
            ),
        )),
        Some(cp) if cp.head.as_slice() != base_hash.as_slice() => Err(fail(
            Some(base_id),
            format!(
                "the chain base (event {base_id}) does not match the checkpoint signed for it: the base hash was changed"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Checks that the newest `audit.prune` event (`last`: its id and record)
/// accounts for a base above 0. A signed checkpoint at the base only
/// proves the base is *a* point of the chain; deleting more old events and
/// moving the base to an earlier checkpoint would leave that intact, but
/// not the record pruning writes, in the chain, in the same transaction
/// as the first events it deletes.
pub(super) fn check_base_recorded<E>(
    base_id: u64,
    last: Option<&(u64, Option<PruneRecord>)>,
) -> Result<(), Stop<E>> {
    if base_id == 0 {
        return Ok(());
    }
    match last {
        None => Err(fail(
            Some(base_id),
            format!(
                "the trail starts after event {base_id}, but no audit.prune event records a prune: events through {base_id} were deleted outside pgward"
            ),
        )),
        Some((id, None)) => Err(fail(
            Some(*id),
            format!("event {id} is an audit.prune event whose detail does not say what it removed"),
        )),
        Some((id, Some(r))) if base_id > r.base => Err(fail(
            Some(r.base + 1),
            format!(
                "events {}..={base_id} were deleted from the start of the trail: the last recorded prune (event {id}) removed events only through {}",
                r.base + 1,
                r.base
            ),
        )),
        Some((id, Some(r))) if base_id < r.from_base => Err(fail(
            Some(base_id + 1),
            format!(
                "the trail starts after event {base_id}, but the last recorded prune (event {id}) started after event {}: the chain base was changed",
                r.from_base
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// `Option::take_if` for the merge: the next checkpoint when it is at or
/// before `id`.
trait TakeAtMost {
    fn take_if_at_most(&mut self, id: u64) -> Option<Checkpoint>;
}

impl TakeAtMost for Option<Checkpoint> {
    fn take_if_at_most(&mut self, id: u64) -> Option<Checkpoint> {
        match self {
            Some(cp) if cp.last_id <= id => self.take(),
            _ => None,
        }
    }
}

pub(super) fn check_signature<E>(cp: &Checkpoint, public_key: &[u8]) -> Result<(), Stop<E>> {
    if cp.verify(public_key) {
        return Ok(());
    }
    Err(fail(
        Some(cp.last_id),
        format!(
            "the checkpoint at event {} (dated {}) has a signature that does not verify with this public key: forged, altered, or the wrong key",
            cp.last_id,
            format_time(cp.time_us)
        ),
    ))
}

/// A checkpoint row, read without trusting its column types.
pub(super) fn checkpoint_row(r: &Row<'_>) -> Result<Checkpoint, Stop<AuditStoreError>> {
    let last_id = match r.get_ref(0)? {
        ValueRef::Integer(i) if i >= 0 => i as u64,
        _ => return Err(fail(None, "a checkpoint row has a malformed id".into())),
    };
    let malformed = || {
        fail(
            Some(last_id),
            format!("the checkpoint at event {last_id} is malformed (changed in the store)"),
        )
    };
    let (ValueRef::Blob(head), ValueRef::Integer(time_us), ValueRef::Blob(signature)) =
        (r.get_ref(1)?, r.get_ref(2)?, r.get_ref(3)?)
    else {
        return Err(malformed());
    };
    Ok(Checkpoint {
        last_id,
        head: head.to_vec(),
        time_us,
        signature: signature.to_vec(),
    })
}

/// Checks one stored event (a row of [`SELECT_EVENTS`](super::store::SELECT_EVENTS))
/// against the chain so far; returns its hash and the event.
pub(super) fn check_event(
    r: &Row<'_>,
    id: u64,
    prev: &Hash,
) -> Result<(Hash, Event), Stop<AuditStoreError>> {
    let body = match r.get_ref(7)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b,
        _ => {
            return Err(fail(
                Some(id),
                format!("event {id} was changed: its body is missing"),
            ))
        }
    };
    let event = Event::decode(body).map_err(|e| {
        fail(
            Some(id),
            format!("event {id} was changed: its body is not a valid event ({e})"),
        )
    })?;
    if event.id != id {
        return Err(fail(
            Some(id),
            format!(
                "event {id} holds the body of event {}: events were reordered or swapped",
                event.id
            ),
        ));
    }
    let hash = next_hash(prev, body);
    let stored_ok = matches!(r.get_ref(8)?, ValueRef::Blob(h) if h == hash.as_slice());
    if !stored_ok {
        return Err(fail(
            Some(id),
            format!("event {id} was changed: its body does not match its hash"),
        ));
    }
    let relations = (!event.relations.is_empty()).then(|| event.relations.join(" "));
    let columns: [(&str, Value); 6] = [
        ("time_us", Value::Integer(event.time_us)),
        ("kind", Value::Text(event.kind.as_str().to_string())),
        ("user", text(event.user())),
        ("database", text(event.database())),
        ("class", text(event.class.as_deref())),
        ("relations", text(relations.as_deref())),
    ];
    for (i, (name, want)) in columns.iter().enumerate() {
        let have = Value::from(r.get_ref(i + 1)?);
        if have != *want {
            return Err(fail(
                Some(id),
                format!(
                    "event {id}: its indexed column `{name}` was changed (stored {}, the event says {})",
                    show(&have),
                    show(want)
                ),
            ));
        }
    }
    Ok((hash, event))
}

fn text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => format!("{t:?}"),
        Value::Blob(_) => "a blob".into(),
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

/// Verifies an export in the `jsonl` format against `public_key`: the
/// chain from the header's `prev` through every event line and digest,
/// and every checkpoint line's signature and position. `Err` means the
/// file could not be read.
pub fn verify_export(
    reader: impl BufRead,
    public_key: &[u8],
) -> Result<Report<ExportSummary>, std::io::Error> {
    finish(walk_export(reader, public_key))
}

fn walk_export(
    mut reader: impl BufRead,
    public_key: &[u8],
) -> Result<ExportSummary, Stop<std::io::Error>> {
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut header: Option<Header> = None;
    // The last id chained so far and its hash.
    let mut id = 0u64;
    let mut hash: Hash = GENESIS;
    let mut summary = ExportSummary {
        first_id: 0,
        last_id: 0,
        events: 0,
        skipped: 0,
        checkpoints: 0,
        signed_through: None,
        unsigned_events: 0,
        unsigned_skipped: 0,
        filters: String::new(),
    };
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        line_no += 1;
        let mut bytes = line.as_slice();
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        // An event's canonical JSON ends in `}`, so a CR can only come from
        // a line-ending conversion.
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.is_empty() {
            continue;
        }
        if header.is_none() {
            let h = read_header(bytes)?;
            id = h.first_id - 1;
            hash = parse_hash(&h.prev).ok_or_else(|| {
                fail(
                    None,
                    "line 1: the header's prev is not a SHA-256 hash".into(),
                )
            })?;
            summary.first_id = h.first_id;
            summary.last_id = id;
            summary.filters = serde_json::to_string(&h.filters).unwrap_or_default();
            header = Some(h);
            continue;
        }
        if bytes.starts_with(SKIP_PREFIX.as_bytes()) {
            let skip: SkipLine = serde_json::from_slice(bytes).map_err(|e| {
                fail(
                    Some(id + 1),
                    format!("line {line_no}: a malformed skip line ({e})"),
                )
            })?;
            let digests = hex::decode(&skip.pgward_skip)
                .ok()
                .filter(|d| !d.is_empty() && d.len() % 32 == 0);
            let Some(digests) = digests else {
                return Err(fail(
                    Some(id + 1),
                    format!(
                        "line {line_no}: a skip line whose digests are not whole SHA-256 hashes"
                    ),
                ));
            };
            for d in digests.chunks_exact(32) {
                hash = link(&hash, d);
                id += 1;
                summary.skipped += 1;
                summary.unsigned_skipped += 1;
            }
        } else if bytes.starts_with(CHECKPOINT_PREFIX.as_bytes()) {
            let cp = serde_json::from_slice::<CheckpointLine>(bytes)
                .map_err(|e| {
                    fail(
                        None,
                        format!("line {line_no}: a malformed checkpoint line ({e})"),
                    )
                })?
                .pgward_checkpoint;
            if !cp.verify(public_key) {
                return Err(fail(
                    Some(cp.last_id),
                    format!(
                        "line {line_no}: the checkpoint at event {} has a signature that does not verify with this public key: forged, altered, or the wrong key",
                        cp.last_id
                    ),
                ));
            }
            if cp.last_id != id {
                return Err(fail(
                    Some(cp.last_id.min(id) + 1),
                    format!(
                        "line {line_no}: the checkpoint at event {} comes after event {id}: event lines or digests were removed, added or reordered",
                        cp.last_id
                    ),
                ));
            }
            if cp.head.as_slice() != hash.as_slice() {
                let from = summary
                    .signed_through
                    .map_or(summary.first_id, |(c, _)| c + 1);
                return Err(fail(
                    Some(from),
                    format!(
                        "line {line_no}: events {from}..={} do not match the checkpoint signed for event {}: an event line or digest was changed",
                        cp.last_id, cp.last_id
                    ),
                ));
            }
            summary.checkpoints += 1;
            summary.signed_through = Some((cp.last_id, cp.time_us));
            summary.unsigned_events = 0;
            summary.unsigned_skipped = 0;
        } else if bytes.starts_with(HEADER_PREFIX.as_bytes()) {
            return Err(fail(
                None,
                format!("line {line_no}: a second export header (files concatenated?)"),
            ));
        } else {
            let expected = id + 1;
            let event: IdOnly = serde_json::from_slice(bytes).map_err(|e| {
                fail(
                    Some(expected),
                    format!(
                        "line {line_no}: event {expected} was changed: not a valid event ({e})"
                    ),
                )
            })?;
            if event.id != expected {
                return Err(fail(
                    Some(expected),
                    format!(
                        "line {line_no}: event {} where the chain continues with event {expected}: events or digests were removed, added or reordered",
                        event.id
                    ),
                ));
            }
            hash = next_hash(&hash, bytes);
            id = expected;
            summary.events += 1;
            summary.unsigned_events += 1;
        }
        summary.last_id = id;
    }
    if header.is_none() {
        return Err(fail(None, "not a pgward export: no header line".into()));
    }
    Ok(summary)
}

fn read_header<E>(bytes: &[u8]) -> Result<Header, Stop<E>> {
    if !bytes.starts_with(HEADER_PREFIX.as_bytes()) {
        return Err(fail(
            None,
            "line 1: not a pgward export (no {\"pgward_export\":…} header)".into(),
        ));
    }
    let h: Header = serde_json::from_slice(bytes)
        .map_err(|e| fail(None, format!("line 1: a malformed export header ({e})")))?;
    if h.pgward_export != 1 {
        return Err(fail(
            None,
            format!(
                "line 1: export format version {} is not one this pgward understands",
                h.pgward_export
            ),
        ));
    }
    if h.first_id == 0 {
        return Err(fail(None, "line 1: the header's first_id is 0".into()));
    }
    Ok(h)
}

fn parse_hash(s: &str) -> Option<Hash> {
    hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::audit::chain::SigningKey;
    use crate::audit::event::{Decision, Kind, SessionInfo};

    const USERS: [&str; 3] = ["ann", "bob", "cy"];

    /// A statement event with a little of everything.
    pub(crate) fn statement(i: usize) -> Event {
        let mut e = Event::new(Kind::Statement, "pgward-test");
        e.time_us = 1_700_000_000_000_000 + i as i64 * 1_000_000;
        e.who = Some(Arc::new(SessionInfo {
            session: Some(1 + (i / 10) as u64),
            user: Some(USERS[i % 3].to_string()),
            role: Some("analyst".into()),
            client_addr: Some("10.0.0.7:51234".into()),
            database: Some("clinic".into()),
            application_name: Some("psql".into()),
            ..SessionInfo::default()
        }));
        e.class = Some("read".into());
        e.text = Some(format!("SELECT name, \"ssn\" FROM patients WHERE id = {i}").into());
        e.relations = vec!["public.patients".into()];
        e.masks = vec!["public.patients.ssn: redact".into()];
        e.decision = Some(Decision::Rewritten);
        e.rows = Some(1);
        e.duration_us = Some(1500);
        e
    }

    /// 50 events, checkpoints after 10, 20, 30 and 40 (the last 10 unsigned).
    pub(crate) fn fifty(dir: &Path) -> (AuditStore, SigningKey) {
        let mut store = AuditStore::open(&dir.join("audit.db")).unwrap();
        let key = SigningKey::load_or_create(&dir.join("audit.key")).unwrap();
        for batch in 0..5 {
            let mut events: Vec<Event> = (batch * 10..batch * 10 + 10).map(statement).collect();
            store.append(&mut events).unwrap();
            if batch < 4 {
                store.checkpoint(&key).unwrap().unwrap();
            }
        }
        (store, key)
    }

    fn failure(store: &AuditStore, key: &SigningKey) -> Failure {
        match verify_store(store, key.public_key()).unwrap() {
            Report::Failed(f) => f,
            Report::Verified(s) => panic!("verified a tampered store: {s}"),
        }
    }

    fn exec(store: &AuditStore, sql: &str) {
        let changed = store.connection().execute(sql, []).unwrap();
        assert!(changed > 0, "{sql} changed nothing");
    }

    #[test]
    fn an_untampered_store_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        let Report::Verified(s) = verify_store(&store, key.public_key()).unwrap() else {
            panic!("failed")
        };
        assert_eq!(s.events, 50);
        assert_eq!((s.first_id, s.last_id), (1, 50));
        assert_eq!(s.checkpoints, 4);
        assert_eq!(s.last_checkpoint.map(|c| c.0), Some(40));
        assert_eq!(s.unsigned, 10);
        let text = s.to_string();
        assert!(text.contains("50 event(s), ids 1..=50"), "{text}");
        assert!(
            text.contains("10 event(s) after it not yet covered"),
            "{text}"
        );

        let empty = AuditStore::open(&dir.path().join("empty.db")).unwrap();
        let Report::Verified(s) = verify_store(&empty, key.public_key()).unwrap() else {
            panic!("empty store failed")
        };
        assert_eq!((s.events, s.checkpoints, s.unsigned), (0, 0, 0));
    }

    #[test]
    fn a_changed_body_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        exec(
            &store,
            "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), '\"rows\":1', '\"rows\":0') AS BLOB) WHERE id = 17",
        );
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(17));
        assert!(f.message.contains("event 17 was changed"), "{f}");
        assert!(f.message.contains("does not match its hash"), "{f}");
    }

    #[test]
    fn a_changed_indexed_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        exec(&store, "UPDATE events SET user = 'mallory' WHERE id = 23");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(23));
        assert!(f.message.contains("indexed column `user`"), "{f}");
        assert!(f.message.contains("\"mallory\""), "{f}");

        let (store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(
            &store,
            "UPDATE events SET time_us = time_us + 1 WHERE id = 5",
        );
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(5));
        assert!(f.message.contains("`time_us`"), "{f}");
    }

    #[test]
    fn a_deleted_event_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        exec(&store, "DELETE FROM events WHERE id = 31");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(31));
        assert!(f.message.contains("event 31 is missing"), "{f}");

        let (store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(&store, "DELETE FROM events WHERE id IN (1, 2)");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(1));
        assert!(f.message.contains("events 1..=2 are all missing"), "{f}");
    }

    #[test]
    fn swapped_events_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        exec(
            &store,
            "UPDATE events SET body = CASE id WHEN 12 THEN (SELECT body FROM events WHERE id = 14)
                                              ELSE (SELECT body FROM events WHERE id = 12) END
             WHERE id IN (12, 14)",
        );
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(12));
        assert!(f.message.contains("holds the body of event 14"), "{f}");
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        // The checkpoint at 40 covers events 36..=40.
        exec(&store, "DELETE FROM events WHERE id > 35");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(36));
        assert!(
            f.message
                .contains("events 36..=40 were deleted from the end"),
            "{f}"
        );
        assert!(f.message.contains("store ends at event 35"), "{f}");
    }

    #[test]
    fn an_understated_time_mark_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        // Events 21..=30 were one append, marked at 30 with event 30's time.
        exec(
            &store,
            "UPDATE time_marks SET max_time = max_time - 5000000 WHERE last_id = 30",
        );
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(30));
        assert!(
            f.message.contains("time mark at event 30 was changed"),
            "{f}"
        );
        assert!(f.message.contains("event 30 is at"), "{f}");
    }

    #[test]
    fn a_damaged_time_mark_is_named_and_does_not_stop_recording() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        exec(
            &store,
            "UPDATE time_marks SET max_time = 'soon' WHERE last_id = 50",
        );
        store.append(&mut [statement(50)]).unwrap();
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(50));
        assert!(
            f.message.contains("its time is \"soon\", not a number"),
            "{f}"
        );
    }

    #[test]
    fn a_time_mark_past_the_end_names_the_cut_events() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        // Events 46..=50 are after the last checkpoint; the mark at 50 remains.
        exec(&store, "DELETE FROM events WHERE id > 45");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(46));
        assert!(
            f.message
                .contains("events 46..=50 were deleted from the end"),
            "{f}"
        );
    }

    #[test]
    fn a_forged_checkpoint_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        exec(
            &store,
            "UPDATE checkpoints SET signature = zeroblob(64) WHERE last_id = 20",
        );
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(20));
        assert!(f.message.contains("checkpoint at event 20"), "{f}");
        assert!(f.message.contains("does not verify"), "{f}");

        // Signed with another key altogether.
        let (store, _) = fifty(tempfile::tempdir().unwrap().path());
        let other = SigningKey::load_or_create(&dir.path().join("other.key")).unwrap();
        let f = failure(&store, &other);
        assert_eq!(f.event, Some(10));
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        // Edit event 25 and recompute every hash from it on, as someone with
        // write access to the database (but not the key) could.
        let mut prev: Hash = store
            .connection()
            .query_row("SELECT hash FROM events WHERE id = 24", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .unwrap()
            .try_into()
            .unwrap();
        for id in 25..=50i64 {
            let mut body: Vec<u8> = store
                .connection()
                .query_row("SELECT body FROM events WHERE id = ?1", [id], |r| r.get(0))
                .unwrap();
            if id == 25 {
                let mut e = Event::decode(&body).unwrap();
                e.rows = Some(0);
                body = e.encode();
            }
            prev = next_hash(&prev, &body);
            store
                .connection()
                .execute(
                    "UPDATE events SET body = ?1, hash = ?2 WHERE id = ?3",
                    rusqlite::params![body, &prev[..], id],
                )
                .unwrap();
        }
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(21));
        assert!(f.message.contains("chain was rewritten"), "{f}");
        assert!(f.message.contains("events 21..=30"), "{f}");
    }
}
