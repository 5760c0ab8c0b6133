//! Retention: removing events older than `audit.retention` so that what is
//! left still verifies, and so that nothing removed could have hidden
//! tampering.
//!
//! Pruning moves the start of the stored chain (the *chain base*: an id and
//! the hash the next event chains from) forward. Three rules make that
//! safe:
//!
//! - **The base is always an event a signed checkpoint covers**, and that
//!   checkpoint is kept: it authenticates the base hash, so the remaining
//!   chain verifies exactly as before, in the store and in exports (whose
//!   `prev` it proves). Pruning therefore never goes past the last
//!   checkpoint, and events older than the cutoff but after the last
//!   checkpoint before it wait for the next run.
//! - **Nothing is deleted before all of it has been verified**: the events
//!   about to go are walked from the base and checked like `pgward audit
//!   verify` checks them (hashes, indexed columns, checkpoint signatures
//!   and heads), and the base itself must be sound. A store that fails is
//!   not pruned at all: deleting the evidence of tampering would launder
//!   it.
//! - **Every prune is recorded in the chain**: an `admin` event
//!   (`audit.prune`: how many events, the old and new base, the cutoff) is
//!   appended in the same transaction as the first deletion. A checkpoint
//!   at the base proves only that the base is *some* point of the chain;
//!   the record is what lets verification tell a prune from someone
//!   deleting more old events and moving the base to a later checkpoint
//!   (see `check_base_recorded` in [`verify`](super::verify)).
//!
//! Deletion runs in transactions of about [`Limits::chunk`] events, each
//! ending at a checkpoint and moving the base in the same transaction, so
//! the proxy's writer (which appends with a 10 s busy timeout) waits
//! milliseconds at most, and an interrupted prune leaves a verifiable
//! store. The [`Pruner`] runs this on a thread of its own every
//! `audit.prune_interval`; `pgward audit prune` runs it by hand.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Rows;
use serde::Deserialize;
use serde_json::json;

use super::chain::{Checkpoint, Hash, SigningKey};
use super::event::{format_time, now_us, Event, Kind};
use super::store::{AuditStore, AuditStoreError, SELECT_EVENTS};
use super::verify::{
    check_base, check_base_recorded, check_event, check_signature, checkpoint_row, fail, finish,
    Failure, Report, Stop,
};

/// The `action` of the admin event a prune appends.
pub const PRUNE_ACTION: &str = "audit.prune";

/// Six years of 365.25 days: what HIPAA asks for its documentation
/// (164.316(b)(2)).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(6 * 31_557_600);

/// Shorter retentions are refused: `6m` is six *minutes* to humantime, and
/// a typo must not empty the trail.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// `audit.retention`: a humantime duration of at least a day (`6years`,
/// `18months`, `400days`), or `forever` / `0` to keep everything (`None`).
pub fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "forever" | "0" => Ok(None),
        s => parse_age(s).map(Some),
    }
}

/// A duration of at least [`MIN_RETENTION`], for `audit.retention` and
/// `pgward audit prune --older-than`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration such as 6years or 18months ({e})"))?;
    if d < MIN_RETENTION {
        return Err(format!(
            "{s:?} is shorter than a day, which would prune the audit trail almost to nothing (`m` means minutes: write `6months`)"
        ));
    }
    Ok(d)
}

/// The cutoff for keeping `retention` at `now_us`: events before it go.
pub fn cutoff(now_us: i64, retention: Duration) -> i64 {
    let age = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    now_us.saturating_sub(age)
}

/// What an `audit.prune` event's detail says (other fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PruneRecord {
    /// Events removed.
    pub removed: u64,
    /// The chain base before the prune.
    pub from_base: u64,
    /// The chain base the prune moved to.
    pub base: u64,
}

impl PruneRecord {
    /// `None` when `e` is not an `audit.prune` event that removed events
    /// (`pgward audit prune` records runs that removed nothing too);
    /// `Some(None)` when it is one but its detail does not say what it
    /// removed.
    pub fn of(e: &Event) -> Option<Option<PruneRecord>> {
        if e.kind != Kind::Admin || e.action.as_deref() != Some(PRUNE_ACTION) {
            return None;
        }
        let record = e
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<PruneRecord>(d).ok());
        match record {
            Some(r) if r.removed == 0 => None,
            r => Some(r),
        }
    }
}

/// How much one prune does at a time.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Events deleted per transaction, about: each ends at a checkpoint, so
    /// a chunk is longer only when checkpoints are further apart.
    pub chunk: u64,
    /// Events verified (and so pruned) per run at most; the walk holds a
    /// read snapshot, which keeps the WAL from being recycled.
    pub per_run: u64,
}

impl Limits {
    /// For `pgward audit prune`: everything in one run.
    pub const ALL: Limits = Limits {
        chunk: 5000,
        per_run: u64::MAX,
    };
    /// For the [`Pruner`]: a large backlog (retention just turned on) is
    /// taken a million events at a time.
    pub const BACKGROUND: Limits = Limits {
        chunk: 5000,
        per_run: 1_000_000,
    };
}

/// What a prune will remove, verified.
#[derive(Clone, Debug)]
pub struct Plan {
    pub cutoff_us: i64,
    /// Where the chain starts now.
    pub base: (u64, Hash),
    /// Where each deleting transaction ends: checkpointed ids and their
    /// heads, ascending. The last is the new base.
    pub chunks: Vec<(u64, Hash)>,
    /// When the checkpoint at the new base was signed.
    pub signed_us: Option<i64>,
    /// Events older than the cutoff after the new base, kept because no
    /// checkpoint before the cutoff covers them (yet).
    pub older_unsigned: u64,
    /// The walk stopped at [`Limits::per_run`] or was cancelled: more may
    /// be prunable.
    pub more: bool,
}

impl Plan {
    /// The new chain base.
    pub fn boundary(&self) -> u64 {
        self.chunks.last().map_or(self.base.0, |c| c.0)
    }

    /// Events the prune removes.
    pub fn removes(&self) -> u64 {
        self.boundary() - self.base.0
    }
}

/// Picks chunk ends among the checkpoints a walk passes: the last one at
/// most `max` events after the previous end, or the first one after it
/// when checkpoints are sparser than that.
struct Chunker {
    max: u64,
    start: u64,
    candidate: Option<(u64, Hash, i64)>,
    ends: Vec<(u64, Hash)>,
    signed_us: Option<i64>,
}

impl Chunker {
    fn new(base: u64, max: u64) -> Chunker {
        Chunker {
            max: max.max(1),
            start: base,
            candidate: None,
            ends: Vec::new(),
            signed_us: None,
        }
    }

    fn passed(&mut self, id: u64, head: Hash, time_us: i64) {
        if id - self.start > self.max {
            if let Some((c, h, _)) = self.candidate.take() {
                self.ends.push((c, h));
                self.start = c;
            }
        }
        if id - self.start > self.max {
            self.ends.push((id, head));
            self.start = id;
        } else {
            self.candidate = Some((id, head, time_us));
        }
        self.signed_us = Some(time_us);
    }

    fn finish(mut self) -> (Vec<(u64, Hash)>, Option<i64>) {
        if let Some((c, h, _)) = self.candidate.take() {
            self.ends.push((c, h));
        }
        (self.ends, self.signed_us)
    }
}

/// Verifies the events older than `cutoff_us` from the chain base (and the
/// base itself) and plans their removal; changes nothing. `cancel` is
/// polled during the walk. `Err` means the store could not be read; a
/// store that fails verification is a [`Report::Failed`].
pub fn plan(
    store: &AuditStore,
    public_key: &[u8],
    cutoff_us: i64,
    limits: Limits,
    cancel: &dyn Fn() -> bool,
) -> Result<Report<Plan>, AuditStoreError> {
    finish(walk(store, public_key, cutoff_us, limits, cancel))
}

fn next_checkpoint(rows: &mut Rows<'_>) -> Result<Option<Checkpoint>, Stop<AuditStoreError>> {
    match rows.next()? {
        Some(r) => Ok(Some(checkpoint_row(r)?)),
        None => Ok(None),
    }
}

fn walk(
    store: &AuditStore,
    public_key: &[u8],
    cutoff_us: i64,
    limits: Limits,
    cancel: &dyn Fn() -> bool,
) -> Result<Plan, Stop<AuditStoreError>> {
    let conn = store.connection();
    // Declared first so it ends last, after the cursors.
    let _snapshot = conn.unchecked_transaction()?;
    let (base_id, base_hash) = store.base()?;

    let mut cp_stmt = conn.prepare(
        "SELECT last_id, head, time_us, signature FROM checkpoints
         WHERE last_id >= ?1 ORDER BY last_id",
    )?;
    let mut cps = cp_stmt.query([base_id as i64])?;
    let mut next_cp = next_checkpoint(&mut cps)?;
    let base_cp = match next_cp.take() {
        Some(cp) if cp.last_id == base_id => {
            check_signature(&cp, public_key)?;
            next_cp = next_checkpoint(&mut cps)?;
            Some(cp)
        }
        other => {
            next_cp = other;
            None
        }
    };
    check_base(base_id, &base_hash, base_cp.as_ref())?;

    let mut ev_stmt = conn.prepare(&format!("{SELECT_EVENTS} WHERE id > ?1 ORDER BY id"))?;
    let mut rows = ev_stmt.query([base_id as i64])?;
    let mut prev_id = base_id;
    let mut hash = base_hash;
    let mut chunker = Chunker::new(base_id, limits.chunk);
    let mut last_cp = base_id;
    let mut more = false;
    'events: while let Some(r) = rows.next()? {
        let id = r.get::<_, i64>(0)? as u64;
        let expected = prev_id + 1;
        if id != expected {
            return Err(fail(
                Some(expected),
                format!("event {expected} is missing: deleted from the store"),
            ));
        }
        // A time that is not a number was changed: verify it (and fail).
        let time_us = match r.get_ref(1)? {
            ValueRef::Integer(t) => t,
            _ => i64::MIN,
        };
        if time_us >= cutoff_us {
            break;
        }
        (hash, _) = check_event(r, id, &hash)?;
        prev_id = id;
        while next_cp.as_ref().is_some_and(|cp| cp.last_id <= id) {
            let Some(cp) = next_cp.take() else { break };
            check_signature(&cp, public_key)?;
            if cp.last_id != id || cp.head.as_slice() != hash.as_slice() {
                return Err(fail(
                    Some(last_cp + 1),
                    format!(
                        "the chain was rewritten: the checkpoint at event {} (signed {}) does not match the stored chain; events {}..={} were changed and their hashes recomputed",
                        cp.last_id,
                        format_time(cp.time_us),
                        last_cp + 1,
                        cp.last_id
                    ),
                ));
            }
            chunker.passed(id, hash, cp.time_us);
            last_cp = id;
            next_cp = next_checkpoint(&mut cps)?;
            if id - base_id >= limits.per_run {
                more = true;
                break 'events;
            }
        }
        if id % 4096 == 0 && cancel() {
            more = true;
            break;
        }
    }
    let (chunks, signed_us) = chunker.finish();
    // Only when something will go: the scan is as long as the time since
    // the last prune.
    if base_id > 0 && !chunks.is_empty() {
        check_base_recorded(base_id, latest_record(conn, base_id)?.as_ref())?;
    }
    let boundary = chunks.last().map_or(base_id, |c| c.0);
    Ok(Plan {
        cutoff_us,
        base: (base_id, base_hash),
        chunks,
        signed_us,
        older_unsigned: if more { 0 } else { prev_id - boundary },
        more,
    })
}

/// The newest `audit.prune` event after `base_id`: its id and record.
/// Read backward, and only before a prune deletes, when the newest record
/// is usually the previous run's, so the scan is short. Bodies are not
/// verified here: one that was changed is caught when a prune's walk (or
/// `audit verify`) reaches it, and never deleted unverified.
fn latest_record(
    conn: &rusqlite::Connection,
    base_id: u64,
) -> Result<Option<(u64, Option<PruneRecord>)>, Stop<AuditStoreError>> {
    let mut stmt = conn
        .prepare("SELECT id, body FROM events WHERE id > ?1 AND kind = 'admin' ORDER BY id DESC")?;
    let mut rows = stmt.query([base_id as i64])?;
    while let Some(r) = rows.next()? {
        let id = r.get::<_, i64>(0)? as u64;
        let (ValueRef::Blob(body) | ValueRef::Text(body)) = r.get_ref(1)? else {
            continue;
        };
        let Ok(event) = Event::decode(body) else {
            continue;
        };
        if let Some(record) = PruneRecord::of(&event) {
            return Ok(Some((id, record)));
        }
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Store(#[from] AuditStoreError),
    #[error("the audit trail fails verification: {0}; nothing was pruned, so the evidence is kept: run `pgward audit verify`")]
    Tampered(Failure),
    #[error("another prune moved the start of the audit trail while this one was verifying it; this one removed nothing")]
    Concurrent,
}

/// Who prunes, for the `audit.prune` event.
#[derive(Clone, Copy, Debug)]
pub struct Actor<'a> {
    pub instance: &'a str,
    pub user: &'a str,
}

/// What a prune did.
#[derive(Clone, Debug)]
pub struct Pruned {
    pub plan: Plan,
    /// Events deleted: the plan's, or fewer when cancelled midway.
    pub removed: u64,
    /// Where the chain starts now.
    pub base: u64,
    /// The `audit.prune` event, when anything was removed.
    pub record: Option<u64>,
}

/// Removes the events older than `cutoff_us` through the last checkpoint
/// before them, after verifying them (see the module documentation), and
/// signs the new head. `cancel` is polled between transactions.
pub fn prune(
    store: &mut AuditStore,
    key: &SigningKey,
    cutoff_us: i64,
    by: Actor<'_>,
    limits: Limits,
    cancel: &dyn Fn() -> bool,
) -> Result<Pruned, PruneError> {
    let plan = match plan(store, key.public_key(), cutoff_us, limits, cancel)? {
        Report::Verified(p) => p,
        Report::Failed(f) => return Err(PruneError::Tampered(f)),
    };
    let mut done = Pruned {
        removed: 0,
        base: plan.base.0,
        record: None,
        plan,
    };
    if done.plan.chunks.is_empty() {
        return Ok(done);
    }
    let detail = json!({
        "removed": done.plan.removes(),
        "from_base": done.plan.base.0,
        "base": done.plan.boundary(),
        "cutoff": format_time(cutoff_us),
    });
    let mut record = Event::admin(by.instance, by.user, PRUNE_ACTION, detail.to_string());
    let mut at = done.plan.base;
    for (i, end) in done.plan.chunks.iter().enumerate() {
        if i > 0 && cancel() {
            break;
        }
        let first = (i == 0).then_some(&mut record);
        if !store.advance_base((at.0, &at.1), (end.0, &end.1), first)? {
            if i == 0 {
                return Err(PruneError::Concurrent);
            }
            // Someone else carries on from here.
            break;
        }
        done.removed += end.0 - at.0;
        at = *end;
        if i == 0 {
            done.record = Some(record.id);
        }
    }
    done.base = at.0;
    store.checkpoint(key)?;
    Ok(done)
}

/// Settings of the background [`Pruner`].
#[derive(Clone, Debug)]
pub struct PrunerConfig {
    pub path: PathBuf,
    pub key: PathBuf,
    pub retention: Duration,
    pub interval: Duration,
    /// Wait before the first run.
    pub first_run: Duration,
    pub instance: String,
}

#[derive(Default)]
struct StopFlag {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopFlag {
    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` or until stopped; whether stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }
}

/// Prunes the audit store every `interval` on a thread of its own (never
/// the writer's), with its own connection. Stopped and joined on drop.
pub struct Pruner {
    stop: Arc<StopFlag>,
    thread: Option<JoinHandle<()>>,
}

impl Pruner {
    pub fn start(cfg: PrunerConfig) -> anyhow::Result<Pruner> {
        use anyhow::Context as _;
        let key = SigningKey::load_or_create(&cfg.key)
            .context("loading the audit signing key for pruning")?;
        let stop = Arc::new(StopFlag::default());
        let thread = std::thread::Builder::new()
            .name("pgward-audit-prune".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || prune_loop(&cfg, &key, &stop)
            })?;
        Ok(Pruner {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (between transactions of a running prune) and
    /// waits for it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn prune_loop(cfg: &PrunerConfig, key: &SigningKey, stop: &StopFlag) {
    tracing::info!(
        retention = %humantime::format_duration(cfg.retention),
        interval = %humantime::format_duration(cfg.interval),
        "audit retention: pruning enabled"
    );
    let mut wait = cfg.first_run;
    loop {
        if stop.sleep(wait) {
            return;
        }
        wait = cfg.interval;
        if std::panic::catch_unwind(AssertUnwindSafe(|| prune_once(cfg, key, stop))).is_err() {
            tracing::error!("audit retention: a prune run failed unexpectedly; retrying later");
        }
    }
}

/// One scheduled run: prunes until nothing older than the cutoff is left
/// that a checkpoint covers, and logs what it did.
fn prune_once(cfg: &PrunerConfig, key: &SigningKey, stop: &StopFlag) {
    let mut store = match AuditStore::open(&cfg.path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "audit retention: cannot open the audit store; retrying later");
            return;
        }
    };
    let cutoff_us = cutoff(now_us(), cfg.retention);
    let by = Actor {
        instance: &cfg.instance,
        user: "pgward",
    };
    let cancel = || stop.is_set();
    let mut removed = 0u64;
    let mut last: Option<Pruned> = None;
    loop {
        match prune(&mut store, key, cutoff_us, by, Limits::BACKGROUND, &cancel) {
            Ok(p) => {
                removed += p.removed;
                let again = p.plan.more && p.removed > 0 && !stop.is_set();
                last = Some(p);
                if !again {
                    break;
                }
            }
            Err(PruneError::Tampered(f)) => {
                tracing::error!(
                    event = f.event,
                    problem = %f,
                    "audit retention: not pruning: the audit trail fails verification, and pruning would destroy the evidence; run `pgward audit verify`"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit retention: prune failed; retrying later");
                break;
            }
        }
    }
    let cutoff = format_time(cutoff_us);
    match last {
        Some(p) if removed > 0 => tracing::info!(
            removed,
            base = p.base,
            record = p.record,
            %cutoff,
            "audit retention: pruned events older than the cutoff; the trail now starts after event {}",
            p.base
        ),
        Some(p) => tracing::debug!(
            base = p.base,
            older_unsigned = p.plan.older_unsigned,
            %cutoff,
            "audit retention: nothing to prune"
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::export::{export, Format};
    use crate::audit::store::Filter;
    use crate::audit::verify::tests::{fifty, statement};
    use crate::audit::verify::{verify_export, verify_store, StoreSummary};

    const BY: Actor<'static> = Actor {
        instance: "test",
        user: "ops",
    };

    /// The time of event `id` in [`fifty`] (one a second).
    fn time_of(id: u64) -> i64 {
        statement(id as usize - 1).time_us
    }

    fn verified(store: &AuditStore, key: &SigningKey) -> StoreSummary {
        match verify_store(store, key.public_key()).unwrap() {
            Report::Verified(s) => s,
            Report::Failed(f) => panic!("verification failed: {f}"),
        }
    }

    fn failure(store: &AuditStore, key: &SigningKey) -> Failure {
        match verify_store(store, key.public_key()).unwrap() {
            Report::Failed(f) => f,
            Report::Verified(s) => panic!("verified a tampered store: {s}"),
        }
    }

    fn prune_before(store: &mut AuditStore, key: &SigningKey, cutoff_us: i64) -> Pruned {
        prune(store, key, cutoff_us, BY, Limits::ALL, &|| false).unwrap()
    }

    fn exec(store: &AuditStore, sql: &str) {
        let changed = store.connection().execute(sql, []).unwrap();
        assert!(changed > 0, "{sql} changed nothing");
    }

    fn last_event(store: &AuditStore) -> Event {
        let (id, _) = store.head().unwrap();
        let body: Vec<u8> = store
            .connection()
            .query_row("SELECT body FROM events WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
            .unwrap();
        Event::decode(&body).unwrap()
    }

    #[test]
    fn pruning_removes_old_events_through_a_checkpoint_and_the_rest_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        // Events 1..=25 are older; the last checkpoint among them is at 20.
        let p = prune_before(&mut store, &key, time_of(26));
        assert_eq!((p.removed, p.base, p.plan.boundary()), (20, 20, 20));
        assert_eq!(p.plan.older_unsigned, 5, "21..=25 wait for a checkpoint");
        assert_eq!(p.record, Some(51));
        assert_eq!(store.base().unwrap().0, 20);
        // 30 left, and the record.
        assert_eq!(store.count().unwrap(), 31);
        let first: i64 = store
            .connection()
            .query_row("SELECT min(id) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(first, 21);
        let cps: Vec<u64> = store
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.last_id)
            .collect();
        assert_eq!(cps, [20, 30, 40, 51], "the one at the base stays");

        let record = last_event(&store);
        assert_eq!(record.kind, Kind::Admin);
        assert_eq!(record.action.as_deref(), Some(PRUNE_ACTION));
        assert_eq!(record.user(), Some("ops"));
        let detail = record.detail.clone().unwrap();
        assert!(detail.contains(r#""removed":20"#), "{detail}");
        assert!(detail.contains(r#""base":20"#), "{detail}");
        assert!(detail.contains(r#""from_base":0"#), "{detail}");
        assert!(
            detail.contains(&format!(r#""cutoff":"{}""#, format_time(time_of(26)))),
            "{detail}"
        );

        let s = verified(&store, &key);
        assert_eq!((s.events, s.first_id, s.last_id), (31, 21, 51));
        assert_eq!(s.pruned_by, Some(51));
        assert_eq!(s.unsigned, 0, "the prune signed its record");
        let text = s.to_string();
        assert!(
            text.contains("events through 20 were pruned (recorded by event 51)"),
            "{text}"
        );

        // Again, later: from the new base, and the newest record counts.
        let p = prune_before(&mut store, &key, time_of(36));
        assert_eq!((p.removed, p.base), (10, 30));
        assert_eq!(verified(&store, &key).pruned_by, Some(52));
    }

    #[test]
    fn pruning_never_passes_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        let p = prune_before(&mut store, &key, i64::MAX);
        assert_eq!((p.removed, p.base), (40, 40));
        assert_eq!(p.plan.older_unsigned, 10);
        assert_eq!(store.count().unwrap(), 11, "41..=50 and the record");
        verified(&store, &key);

        // Nothing older than the cutoff: nothing removed, nothing recorded.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        let p = prune_before(&mut store, &key, time_of(1));
        assert_eq!((p.removed, p.base, p.record), (0, 0, None));
        assert_eq!(store.count().unwrap(), 50);

        // No checkpoint at all: nothing can be pruned.
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("a.db")).unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k")).unwrap();
        store
            .append(&mut (0..5).map(statement).collect::<Vec<_>>())
            .unwrap();
        let p = prune_before(&mut store, &key, i64::MAX);
        assert_eq!((p.removed, p.plan.older_unsigned), (0, 5));
        assert_eq!(store.count().unwrap(), 5);
    }

    #[test]
    fn a_dry_run_plan_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        let Report::Verified(p) = plan(&store, key.public_key(), time_of(26), Limits::ALL, &|| {
            false
        })
        .unwrap() else {
            panic!("plan failed")
        };
        assert_eq!((p.removes(), p.boundary()), (20, 20));
        assert_eq!(store.count().unwrap(), 50);
        assert_eq!(store.base().unwrap().0, 0);
    }

    #[test]
    fn pruning_refuses_when_an_event_to_remove_was_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        exec(
            &store,
            "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), '\"rows\":1', '\"rows\":0') AS BLOB) WHERE id = 5",
        );
        let err = prune(&mut store, &key, time_of(26), BY, Limits::ALL, &|| false).unwrap_err();
        let PruneError::Tampered(f) = &err else {
            panic!("{err}")
        };
        assert_eq!(f.event, Some(5));
        let text = err.to_string();
        assert!(text.contains("event 5 was changed"), "{text}");
        assert!(text.contains("nothing was pruned"), "{text}");
        assert_eq!(store.count().unwrap(), 50, "the evidence is kept");
        assert_eq!(store.base().unwrap().0, 0);
        assert_eq!(failure(&store, &key).event, Some(5));

        // A changed indexed column among the old events.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(&store, "UPDATE events SET user = 'mallory' WHERE id = 12");
        let err = prune(&mut store, &key, time_of(26), BY, Limits::ALL, &|| false).unwrap_err();
        assert!(
            matches!(&err, PruneError::Tampered(f) if f.event == Some(12)),
            "{err}"
        );
        assert_eq!(store.count().unwrap(), 50);

        // A deleted event, and a forged checkpoint.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(&store, "DELETE FROM events WHERE id = 3");
        let err = prune(&mut store, &key, time_of(26), BY, Limits::ALL, &|| false).unwrap_err();
        assert!(err.to_string().contains("event 3 is missing"), "{err}");
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(
            &store,
            "UPDATE checkpoints SET signature = zeroblob(64) WHERE last_id = 10",
        );
        let err = prune(&mut store, &key, time_of(26), BY, Limits::ALL, &|| false).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert_eq!(store.count().unwrap(), 50);
    }

    /// Rewrites event `id`'s body and recomputes every hash after it, as
    /// someone with write access but not the key could.
    fn rewrite_from(store: &AuditStore, id: i64) {
        let conn = store.connection();
        let (base, base_hash) = store.base().unwrap();
        let mut prev: Hash = if id as u64 == base + 1 {
            base_hash
        } else {
            conn.query_row("SELECT hash FROM events WHERE id = ?1", [id - 1], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .unwrap()
            .try_into()
            .unwrap()
        };
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM events WHERE id >= ?1 ORDER BY id")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for i in ids {
            let mut body: Vec<u8> = conn
                .query_row("SELECT body FROM events WHERE id = ?1", [i], |r| r.get(0))
                .unwrap();
            if i == id {
                let mut e = Event::decode(&body).unwrap();
                e.rows = Some(0);
                body = e.encode();
            }
            prev = crate::audit::store::next_hash(&prev, &body);
            conn.execute(
                "UPDATE events SET body = ?1, hash = ?2 WHERE id = ?3",
                rusqlite::params![body, &prev[..], i],
            )
            .unwrap();
        }
    }

    #[test]
    fn pruning_refuses_a_rewritten_chain_instead_of_laundering_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        rewrite_from(&store, 15);
        let err = prune(&mut store, &key, time_of(26), BY, Limits::ALL, &|| false).unwrap_err();
        assert!(
            matches!(&err, PruneError::Tampered(f) if f.event == Some(11)),
            "{err}"
        );
        assert!(err.to_string().contains("chain was rewritten"), "{err}");
        assert_eq!(store.count().unwrap(), 50);
    }

    /// The base moved forward by hand to `to` (a checkpointed id), as
    /// someone deleting more old events without the key could.
    fn move_base_by_hand(store: &AuditStore, to: i64) {
        let conn = store.connection();
        let head: Vec<u8> = conn
            .query_row(
                "SELECT head FROM checkpoints WHERE last_id = ?1",
                [to],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute("DELETE FROM events WHERE id <= ?1", [to])
            .unwrap();
        conn.execute("DELETE FROM checkpoints WHERE last_id < ?1", [to])
            .unwrap();
        conn.execute(
            "UPDATE chain_base SET base_id = ?1, base_hash = ?2",
            rusqlite::params![to, head],
        )
        .unwrap();
    }

    #[test]
    fn a_base_moved_or_changed_after_pruning_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        prune_before(&mut store, &key, time_of(26));
        verified(&store, &key);

        // More old events deleted, the base moved to the next checkpoint.
        move_base_by_hand(&store, 30);
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(21));
        assert!(
            f.message
                .contains("events 21..=30 were deleted from the start of the trail"),
            "{f}"
        );
        assert!(f.message.contains("only through 20"), "{f}");
        // And pruning will not build on it.
        let err = prune(&mut store, &key, i64::MAX, BY, Limits::ALL, &|| false).unwrap_err();
        assert!(matches!(err, PruneError::Tampered(_)), "{err}");
        assert_eq!(store.base().unwrap().0, 30);

        // The base hash edited.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        prune_before(&mut store, &key, time_of(26));
        exec(&store, "UPDATE chain_base SET base_hash = zeroblob(32)");
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(20));
        assert!(
            f.message
                .contains("does not match the checkpoint signed for it"),
            "{f}"
        );

        // The checkpoint at the base deleted.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        prune_before(&mut store, &key, time_of(26));
        exec(&store, "DELETE FROM checkpoints WHERE last_id = 20");
        let f = failure(&store, &key);
        assert!(
            f.message.contains("no checkpoint is signed for event 20"),
            "{f}"
        );

        // The base moved to an id no checkpoint covers.
        let (mut store, key) = fifty(tempfile::tempdir().unwrap().path());
        prune_before(&mut store, &key, time_of(26));
        let h: Vec<u8> = store
            .connection()
            .query_row("SELECT hash FROM events WHERE id = 25", [], |r| r.get(0))
            .unwrap();
        exec(&store, "DELETE FROM events WHERE id <= 25");
        store
            .connection()
            .execute("UPDATE chain_base SET base_id = 25, base_hash = ?1", [h])
            .unwrap();
        let f = failure(&store, &key);
        assert!(
            f.message.contains("no checkpoint is signed for event 25"),
            "{f}"
        );
    }

    #[test]
    fn old_events_deleted_by_hand_fail_verification_without_a_prune_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        move_base_by_hand(&store, 10);
        let f = failure(&store, &key);
        assert_eq!(f.event, Some(10));
        assert!(
            f.message.contains("no audit.prune event records a prune"),
            "{f}"
        );
        let err = prune(&mut store, &key, i64::MAX, BY, Limits::ALL, &|| false).unwrap_err();
        assert!(matches!(err, PruneError::Tampered(_)), "{err}");

        // The base hash changed with no pruning at all.
        let (store, key) = fifty(tempfile::tempdir().unwrap().path());
        exec(&store, "UPDATE chain_base SET base_hash = randomblob(32)");
        let f = failure(&store, &key);
        assert!(f.message.contains("chain base was changed"), "{f}");
    }

    /// `n` events, a checkpoint after every `every`.
    fn trail(dir: &std::path::Path, n: usize, every: usize) -> (AuditStore, SigningKey) {
        let mut store = AuditStore::open(&dir.join("audit.db")).unwrap();
        let key = SigningKey::load_or_create(&dir.join("audit.key")).unwrap();
        for start in (0..n).step_by(every) {
            let mut events: Vec<Event> = (start..(start + every).min(n)).map(statement).collect();
            store.append(&mut events).unwrap();
            store.checkpoint(&key).unwrap();
        }
        (store, key)
    }

    #[test]
    fn large_prunes_run_in_chunks_that_end_at_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = trail(dir.path(), 2600, 50);
        let limits = Limits {
            chunk: 300,
            per_run: u64::MAX,
        };
        // Events 1..=2345 are older; checkpoints every 50, the last at 2300.
        let p = prune(&mut store, &key, time_of(2346), BY, limits, &|| false).unwrap();
        let ends: Vec<u64> = p.plan.chunks.iter().map(|c| c.0).collect();
        assert_eq!(ends.len(), 8, "{ends:?}");
        assert!(ends.iter().all(|e| e % 50 == 0), "{ends:?}");
        let mut prev = 0;
        for e in &ends {
            assert!(e - prev <= 300, "{ends:?}");
            prev = *e;
        }
        assert_eq!((p.removed, p.base), (2300, 2300));
        assert_eq!(store.count().unwrap(), 301);
        verified(&store, &key);

        // Checkpoints sparser than a chunk: each chunk is one interval.
        let (mut store, key) = trail(tempfile::tempdir().unwrap().path(), 1000, 200);
        let p = prune(&mut store, &key, i64::MAX, BY, limits, &|| false).unwrap();
        let ends: Vec<u64> = p.plan.chunks.iter().map(|c| c.0).collect();
        assert_eq!(ends, [200, 400, 600, 800, 1000]);
        assert_eq!(store.count().unwrap(), 1, "the record");
        verified(&store, &key);
    }

    #[test]
    fn a_run_limit_or_a_cancel_leaves_a_verifiable_store_that_the_next_run_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = trail(dir.path(), 1000, 50);
        let limits = Limits {
            chunk: 100,
            per_run: 250,
        };
        let p = prune(&mut store, &key, i64::MAX, BY, limits, &|| false).unwrap();
        assert!(p.plan.more);
        assert_eq!(p.base, 250);
        verified(&store, &key);

        // Cancelled after the first transaction (the walk polls only every
        // 4096 ids): the record says 1001 (the first run's record, signed,
        // is old enough too), the base is at 350; that still verifies.
        let cancel = || true;
        let limits = Limits {
            chunk: 100,
            per_run: u64::MAX,
        };
        let p = prune(&mut store, &key, i64::MAX, BY, limits, &cancel).unwrap();
        assert_eq!((p.removed, p.base, p.plan.boundary()), (100, 350, 1001));
        let s = verified(&store, &key);
        assert_eq!(s.first_id, 351);

        let p = prune(&mut store, &key, i64::MAX, BY, Limits::ALL, &|| false).unwrap();
        assert_eq!(p.base, 1002);
        assert_eq!(verified(&store, &key).pruned_by, Some(1003));
    }

    #[test]
    fn a_concurrent_prune_is_detected_before_anything_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        let Report::Verified(p) =
            plan(&store, key.public_key(), i64::MAX, Limits::ALL, &|| false).unwrap()
        else {
            panic!()
        };
        // Another process prunes first.
        let mut other = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        prune_before(&mut other, &key, time_of(26));
        let end = p.chunks[0];
        let moved = store
            .advance_base((p.base.0, &p.base.1), (end.0, &end.1), None)
            .unwrap();
        assert!(!moved);
        assert_eq!(store.base().unwrap().0, 20);
        verified(&store, &key);
    }

    #[test]
    fn an_export_after_pruning_verifies_offline() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        prune_before(&mut store, &key, time_of(26));
        for filter in [
            Filter::default(),
            Filter {
                user: Some("ann".into()),
                ..Filter::default()
            },
        ] {
            let mut out = Vec::new();
            let stats = export(&store, &filter, Format::Jsonl, &mut out, &mut |_| {}).unwrap();
            assert_eq!(stats.first_id, 21);
            let text = String::from_utf8(out.clone()).unwrap();
            assert!(
                text.lines()
                    .nth(1)
                    .is_some_and(|l| l.contains(r#""last_id":20"#)),
                "the checkpoint at the base proves prev:\n{text}"
            );
            let Report::Verified(s) = verify_export(&out[..], key.public_key()).unwrap() else {
                panic!("export failed verification:\n{text}")
            };
            assert_eq!((s.first_id, s.last_id), (21, 51));
            assert_eq!(s.signed_through.map(|c| c.0), Some(51));
        }
    }

    #[test]
    fn retention_parses_durations_of_a_day_or_more_or_forever() {
        assert_eq!(parse_retention("6years"), Ok(Some(DEFAULT_RETENTION)));
        assert_eq!(parse_retention("6y"), Ok(Some(DEFAULT_RETENTION)));
        assert_eq!(
            parse_retention("400days"),
            Ok(Some(Duration::from_secs(400 * 86_400)))
        );
        assert_eq!(parse_retention("forever"), Ok(None));
        assert_eq!(parse_retention("0"), Ok(None));
        let err = parse_retention("6m").unwrap_err();
        assert!(err.contains("minutes"), "{err}");
        assert!(parse_retention("six years").is_err());
        assert_eq!(cutoff(1_000_000, Duration::from_secs(1)), 0);
        assert_eq!(cutoff(0, Duration::MAX), -i64::MAX);
    }

    #[test]
    fn the_pruner_prunes_on_its_own_thread_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        drop(store);
        let pruner = Pruner::start(PrunerConfig {
            path: dir.path().join("audit.db"),
            key: dir.path().join("audit.key"),
            // The events are from 2023.
            retention: Duration::from_secs(86_400),
            interval: Duration::from_secs(3600),
            first_run: Duration::from_millis(10),
            instance: "test".into(),
        })
        .unwrap();
        let store = AuditStore::open_read_only(&dir.path().join("audit.db")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.base().unwrap().0 != 40 {
            assert!(std::time::Instant::now() < deadline, "no prune");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = std::time::Instant::now();
        pruner.stop();
        assert!(started.elapsed() < Duration::from_secs(1), "stops promptly");
        let s = verified(&store, &key);
        assert_eq!(s.first_id, 41);
        assert_eq!(last_event(&store).user(), Some("pgward"));
    }
}
