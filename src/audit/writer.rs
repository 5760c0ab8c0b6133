//! The audit pipeline: sessions hand events to one writer thread through a
//! bounded queue; the writer stores them in batches (one transaction per
//! batch: group commit), acknowledges each batch, and signs a checkpoint
//! every `checkpoint_interval`.
//!
//! A statement *reserves* its place in the queue before it is forwarded to
//! the database. When no place is free, or the store is failing, the
//! statement is refused (`on_failure: refuse`, the default), waits for room
//! (`block`), or runs without an event (`continue`, counted in metrics).
//! So with the default nothing runs that cannot be recorded.
//!
//! What a client saw complete must survive `kill -9`. With `durability:
//! spool` (the default) a session writes each event to the
//! [`spool`](super::spool) before releasing ReadyForQuery, and the writer
//! commits it later; with `commit` the relay holds ReadyForQuery until the
//! writer acknowledges the commit (slower: a commit and two thread
//! hand-offs per statement). A spool write that fails falls back to
//! waiting for the commit. At start, spooled events the store lacks are
//! stored first.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::oneshot;

use super::alerts::{AlertRules, Alerter};
use super::chain::SigningKey;
use super::event::{Encoded, Event};
use super::fingerprint::{fingerprint, Relations};
use super::spool::{self, Recovery, Spool};
use super::store::AuditStore;

/// What happens to statements when events cannot be stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse new statements with an error (the default).
    #[default]
    Refuse,
    /// Make them wait until the queue has room again.
    Block,
    /// Run them without an event (counted as dropped).
    Continue,
}

/// Why an event cannot be accepted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    QueueFull,
    StoreFailing,
    Closed,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unavailable::QueueFull => "the audit queue is full",
            Unavailable::StoreFailing => "the audit store is failing",
            Unavailable::Closed => "the audit writer has stopped",
        })
    }
}

/// Events on their way into the store, boxed as they came from the
/// sessions: moving an event out of its box would copy it (some 500 bytes).
#[allow(clippy::vec_box)]
type Batch = Vec<Box<Encoded>>;

enum Job {
    /// An event; its commit acknowledged to `ack`, or already spooled with
    /// this sequence number.
    Event {
        event: Box<Encoded>,
        ack: Option<oneshot::Sender<()>>,
        spooled: Option<u64>,
    },
    /// Commit everything before, sign a checkpoint, then answer.
    Flush(oneshot::Sender<()>),
    /// Store what came before, sign, and end the thread.
    Stop,
}

/// With the spool, how long the writer gathers events into one commit:
/// they are safe already, and a commit per statement would take CPU the
/// sessions need. Bounds how far the store (and sinks) lag behind.
const SPOOL_LINGER: Duration = Duration::from_millis(50);

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub path: PathBuf,
    pub key: PathBuf,
    pub queue: usize,
    pub batch: usize,
    pub on_failure: OnFailure,
    pub checkpoint_interval: Duration,
    pub instance: String,
    pub alerts: AlertRules,
    /// Acknowledge events once spooled rather than once committed.
    pub spool: bool,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct Counters {
    pub stored: AtomicU64,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    pub alerts: AtomicU64,
    /// Spool writes that failed (those events waited for their commit).
    pub spool_failures: AtomicU64,
    /// Events recovered from the spool at start.
    pub recovered: AtomicU64,
    /// Places taken in the queue: events on their way or not yet stored.
    pub waiting: Arc<AtomicUsize>,
}

/// The handle sessions use.
pub struct Audit {
    tx: SyncSender<Job>,
    reserved: Arc<AtomicUsize>,
    capacity: usize,
    failing: Arc<AtomicBool>,
    on_failure: OnFailure,
    instance: Arc<str>,
    pub counters: Arc<Counters>,
    /// Where events are acknowledged from, with `durability: spool`.
    spool: Option<Arc<Spool>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Tells the WAL merging thread to stop.
    stopped: Arc<AtomicBool>,
}

/// A place in the queue, held from before a statement runs until its event
/// is sent. `None` inside means "run without an event" (`continue`).
pub struct Slot {
    reserved: Option<Arc<AtomicUsize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.reserved.take() {
            r.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Audit {
    /// Opens the store and the signing key and starts the writer thread.
    pub fn start(cfg: WriterConfig) -> anyhow::Result<Arc<Audit>> {
        use anyhow::Context as _;
        let mut store = AuditStore::open(&cfg.path)
            .with_context(|| format!("opening the audit store {}", cfg.path.display()))?;
        store.defer_wal_merges()?;
        let reserved = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(Counters {
            waiting: Arc::clone(&reserved),
            ..Counters::default()
        });
        let mut alerter = Alerter::new(cfg.alerts.clone(), &cfg.instance);
        let spool_dir = spool::dir_for(&cfg.path);
        let recovery = Recovery::open(&spool_dir, store.spool_mark()?)
            .with_context(|| format!("opening the audit spool {}", spool_dir.display()))?;
        let spool = Arc::new(
            recover(&mut store, recovery, &mut alerter, &cfg.instance, &counters)
                .with_context(|| format!("recovering the audit spool {}", spool_dir.display()))?,
        );
        let merger = AuditStore::open(&cfg.path)?;
        let stopped = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("pgward-audit-wal".into())
            .spawn({
                let stopped = Arc::clone(&stopped);
                move || merge_loop(merger, stopped)
            })?;
        let key = SigningKey::load_or_create(&cfg.key)?;
        let capacity = cfg.queue.max(1);
        let (tx, rx) = sync_channel(capacity);
        let failing = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("pgward-audit".into())
            .spawn({
                let reserved = Arc::clone(&reserved);
                let failing = Arc::clone(&failing);
                let counters = Arc::clone(&counters);
                let batch = cfg.batch.max(1);
                let interval = cfg.checkpoint_interval;
                let spool = Arc::clone(&spool);
                let linger = if cfg.spool {
                    SPOOL_LINGER
                } else {
                    Duration::ZERO
                };
                move || {
                    write_loop(
                        store, key, rx, reserved, failing, counters, batch, interval, alerter,
                        spool, linger,
                    )
                }
            })?;
        Ok(Arc::new(Audit {
            tx,
            reserved,
            capacity,
            failing,
            on_failure: cfg.on_failure,
            instance: Arc::from(cfg.instance),
            counters,
            spool: cfg.spool.then_some(spool),
            thread: Mutex::new(Some(thread)),
            stopped,
        }))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The instance name, shared (for events made at every statement).
    pub fn shared_instance(&self) -> Arc<str> {
        Arc::clone(&self.instance)
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    fn try_reserve(&self) -> Result<Slot, Unavailable> {
        if self.failing.load(Ordering::Acquire) {
            return Err(Unavailable::StoreFailing);
        }
        let mut n = self.reserved.load(Ordering::Acquire);
        loop {
            if n >= self.capacity {
                return Err(Unavailable::QueueFull);
            }
            match self
                .reserved
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Slot {
                        reserved: Some(Arc::clone(&self.reserved)),
                    })
                }
                Err(now) => n = now,
            }
        }
    }

    /// A place for one event, by `on_failure`: `Err` means refuse.
    pub async fn reserve(&self) -> Result<Slot, Unavailable> {
        match (self.try_reserve(), self.on_failure) {
            (Ok(slot), _) => Ok(slot),
            (Err(why), OnFailure::Refuse) => Err(why),
            (Err(_), OnFailure::Continue) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(Slot { reserved: None })
            }
            (Err(_), OnFailure::Block) => loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Ok(slot) = self.try_reserve() {
                    return Ok(slot);
                }
            },
        }
    }

    /// [`Audit::reserve`] without waiting (for the relay's hot path):
    /// `block` then behaves like `refuse` only when the caller chooses to
    /// wait with [`Audit::reserve`] instead.
    pub fn reserve_now(&self) -> Result<Slot, Unavailable> {
        match (self.try_reserve(), self.on_failure) {
            (Ok(slot), _) => Ok(slot),
            (Err(_), OnFailure::Continue) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(Slot { reserved: None })
            }
            (Err(why), _) => Err(why),
        }
    }

    /// Queues `event` in its reserved place. With the spool, the event is
    /// safe once this returns `None`; otherwise the receiver resolves when
    /// it is committed. `None` too when the slot was a `continue` pass.
    pub fn send(&self, mut slot: Slot, event: Event) -> Option<oneshot::Receiver<()>> {
        let reserved = slot.reserved.take()?;
        // Encoded once, here; the writer numbers and stores this text.
        let event = Box::new(Encoded::new(event));
        if let Some(spool) = &self.spool {
            match spool.append(&event.body) {
                Ok(spooled) => {
                    let job = Job::Event {
                        event,
                        ack: None,
                        spooled: Some(spooled.seq),
                    };
                    if self.tx.try_send(job).is_err() {
                        // Cannot happen while reservations are honest; the
                        // event is spooled and is stored at the next start.
                        reserved.fetch_sub(1, Ordering::AcqRel);
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    return None;
                }
                Err(e) => {
                    if self.counters.spool_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::error!(error = %e, "cannot write to the audit spool; statements wait for their commits");
                    }
                }
            }
        }
        let (ack, done) = oneshot::channel();
        let job = Job::Event {
            event,
            ack: Some(ack),
            spooled: None,
        };
        match self.tx.try_send(job) {
            Ok(()) => Some(done),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // Cannot happen while reservations are honest; never block.
                reserved.fetch_sub(1, Ordering::AcqRel);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reserves and queues an event that is not tied to a statement
    /// (logins, session start and end). `Err` means it could not be queued.
    pub async fn record(&self, event: Event) -> Result<Option<oneshot::Receiver<()>>, Unavailable> {
        let slot = self.reserve().await?;
        Ok(self.send(slot, event))
    }

    /// Waits until everything queued so far is stored and a checkpoint
    /// covers it.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Job::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Flushes and stops the writer (at shutdown), waiting until its
    /// thread has ended and let go of the spool.
    pub async fn close(&self) {
        self.flush().await;
        self.stopped.store(true, Ordering::Release);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            if self.tx.send(Job::Stop).is_ok() {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_loop(
    mut store: AuditStore,
    key: SigningKey,
    rx: Receiver<Job>,
    reserved: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    counters: Arc<Counters>,
    batch_max: usize,
    interval: Duration,
    mut alerter: Alerter,
    spool: Arc<Spool>,
    linger: Duration,
) {
    let mut events: Batch = Vec::with_capacity(batch_max);
    let mut acks: Vec<oneshot::Sender<()>> = Vec::with_capacity(batch_max);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut unsigned = false;
    let mut relations = Relations::default();
    loop {
        let polled = if linger.is_zero() {
            poll_briefly(&rx)
        } else {
            None
        };
        let first = match polled.map_or_else(|| rx.recv_timeout(interval), Ok) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if unsigned {
                    sign(&mut store, &key, &failing, &counters);
                    unsigned = false;
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Spooled events are safe already: let more arrive before paying
        // for a commit. Sleeping rather than waiting on the queue spares
        // each session a wake-up call per event.
        if !linger.is_zero() && matches!(first, Job::Event { ack: None, .. }) {
            std::thread::sleep(linger);
        }
        let mut next = Some(first);
        let mut mark = None;
        let mut stop = false;
        // Events keep their place until stored: the queue's capacity
        // bounds what is not stored yet, and 0 means all is stored.
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Event {
                    event,
                    ack,
                    spooled,
                } => {
                    taken += 1;
                    events.push(event);
                    acks.extend(ack);
                    mark = spooled.or(mark);
                }
                Job::Flush(ack) => flushes.push(ack),
                Job::Stop => stop = true,
            }
            if events.len() >= batch_max || stop {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !events.is_empty() {
            complete(&mut events, &mut relations, &mut alerter, &counters);
            store_batch(&mut store, &mut events, mark, &failing, &counters);
            reserved.fetch_sub(taken, Ordering::AcqRel);
            if let Some(mark) = mark {
                spool.stored_through(mark);
            }
            unsigned = true;
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        if !flushes.is_empty() || (unsigned && last_checkpoint.elapsed() >= interval) {
            sign(&mut store, &key, &failing, &counters);
            unsigned = false;
            last_checkpoint = Instant::now();
            for ack in flushes.drain(..) {
                let _ = ack.send(());
            }
        }
        if stop {
            break;
        }
    }
    if unsigned {
        sign(&mut store, &key, &failing, &counters);
    }
}

/// Stores what an earlier run spooled but did not store (after a crash),
/// followed by an `audit.recover` event saying so, then opens this run's
/// spool.
fn recover(
    store: &mut AuditStore,
    mut recovery: Recovery,
    alerter: &mut Alerter,
    instance: &str,
    counters: &Counters,
) -> anyhow::Result<Spool> {
    let mut events: Batch = std::mem::take(&mut recovery.events)
        .into_iter()
        .map(Box::new)
        .collect();
    if !events.is_empty() || !recovery.damaged.is_empty() {
        let n = events.len();
        complete(&mut events, &mut Relations::default(), alerter, counters);
        let mut detail = format!(
            "{n} events recovered from the spool after an unclean stop (through spool sequence {})",
            recovery.last_seq
        );
        for d in &recovery.damaged {
            detail.push_str("; damaged: ");
            detail.push_str(d);
        }
        if recovery.damaged.is_empty() {
            tracing::warn!("{detail}");
        } else {
            tracing::error!("{detail}");
        }
        events.push(Box::new(Encoded::new(Event::admin(
            instance,
            "pgward",
            "audit.recover",
            detail,
        ))));
        store.append_encoded(&mut events, Some(recovery.last_seq))?;
        counters.recovered.fetch_add(n as u64, Ordering::Relaxed);
        counters
            .stored
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }
    Ok(recovery.into_spool()?)
}

/// What the writer adds to a batch before storing it: fingerprints and
/// relations, then the alerts the rules raise, each after its cause.
fn complete(
    events: &mut Batch,
    relations: &mut Relations,
    alerter: &mut Alerter,
    counters: &Counters,
) {
    for e in events.iter_mut() {
        enrich(e, relations);
    }
    if alerter.is_active() {
        let raised = raise_alerts(alerter, events);
        counters.alerts.fetch_add(raised, Ordering::Relaxed);
    }
}

/// Fills in the fingerprint and, for statements pgward did not analyze,
/// the relations they name.
fn enrich(e: &mut Encoded, relations: &mut Relations) {
    let event = &e.event;
    let Some(text) = event.text.as_deref() else {
        return;
    };
    let fp = event.fingerprint.is_none().then(|| fingerprint(text));
    let found = (event.relations.is_empty()
        && event.decision != Some(super::event::Decision::Denied))
    .then(|| {
        let fp = fp
            .as_deref()
            .or(event.fingerprint.as_deref())
            .unwrap_or(text);
        relations.of(fp, text)
    });
    if let Some(fp) = fp {
        e.set_fingerprint(fp);
    }
    if let Some(found) = found {
        e.set_relations(found);
    }
}

/// Runs the batch through the alert rules and places each alert right
/// after the event that raised it. Returns how many were raised.
fn raise_alerts(alerter: &mut Alerter, events: &mut Batch) -> u64 {
    let mut raised = Vec::new();
    // (index of the cause, alerts it raised)
    let mut causes = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let before = raised.len();
        alerter.observe(&e.event, &mut raised);
        if raised.len() > before {
            causes.push((i, raised.len() - before));
        }
    }
    if raised.is_empty() {
        return 0;
    }
    let count = raised.len() as u64;
    let mut merged = Vec::with_capacity(events.len() + raised.len());
    let mut raised = raised.into_iter().map(|e| Box::new(Encoded::new(e)));
    let mut causes = causes.into_iter().peekable();
    for (i, e) in events.drain(..).enumerate() {
        merged.push(e);
        if let Some((_, n)) = causes.next_if(|&(at, _)| at == i) {
            merged.extend(raised.by_ref().take(n));
        }
    }
    *events = merged;
    count
}

/// A job that arrives within a few microseconds of the last batch is
/// taken without parking the thread (parking and waking cost more than the
/// commit on a busy machine).
fn poll_briefly(rx: &Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + Duration::from_micros(30);
    while Instant::now() < until {
        if let Ok(job) = rx.try_recv() {
            return Some(job);
        }
        std::thread::yield_now();
    }
    None
}

/// Merges the WAL into the database file every half second, on its own
/// connection, so the writer's commits never pay for it.
fn merge_loop(store: AuditStore, stopped: Arc<AtomicBool>) {
    while !stopped.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(500));
        if let Err(e) = store.merge_wal() {
            tracing::debug!(error = %e, "audit WAL merge skipped");
        }
    }
}

/// Stores a batch, retrying until it succeeds: events are never dropped
/// here. While it fails, `failing` makes new statements wait or refuse.
fn store_batch(
    store: &mut AuditStore,
    events: &mut Batch,
    spool_mark: Option<u64>,
    failing: &AtomicBool,
    counters: &Counters,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match store.append_encoded(events, spool_mark) {
            Ok(_) => {
                if failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("audit store recovered");
                }
                counters
                    .stored
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                events.clear();
                return;
            }
            Err(e) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                if !failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "cannot store audit events; retrying");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn sign(store: &mut AuditStore, key: &SigningKey, failing: &AtomicBool, counters: &Counters) {
    if let Err(e) = store.checkpoint(key) {
        counters.failures.fetch_add(1, Ordering::Relaxed);
        if !failing.load(Ordering::Acquire) {
            tracing::error!(error = %e, "cannot write an audit checkpoint");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::event::Kind;

    /// Settings for a writer whose files live in `dir` (also used by
    /// other modules' tests that need a running writer).
    pub(crate) fn config(dir: &std::path::Path, queue: usize) -> WriterConfig {
        WriterConfig {
            path: dir.join("audit.db"),
            key: dir.join("audit.key"),
            queue,
            batch: 512,
            on_failure: OnFailure::Refuse,
            checkpoint_interval: Duration::from_millis(50),
            instance: "test".into(),
            alerts: AlertRules::default(),
            spool: false,
        }
    }

    #[tokio::test]
    async fn acknowledged_events_are_stored_and_signed() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::start(config(dir.path(), 1024)).unwrap();
        let mut acks = Vec::new();
        for _ in 0..100 {
            let slot = audit.reserve().await.unwrap();
            acks.push(
                audit
                    .send(slot, Event::new(Kind::Statement, "test"))
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
        audit.close().await;
        let store = AuditStore::open_read_only(&dir.path().join("audit.db")).unwrap();
        assert_eq!(store.count().unwrap(), 100);
        assert_eq!(store.checkpoints().unwrap().last().unwrap().last_id, 100);
    }

    #[tokio::test]
    async fn spooled_events_left_by_a_crash_are_stored_once_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            spool: true,
            ..config(dir.path(), 1024)
        };
        let audit = Audit::start(cfg.clone()).unwrap();
        for i in 0..3 {
            let slot = audit.reserve().await.unwrap();
            let mut e = Event::new(Kind::Statement, "test");
            e.text = Some(format!("SELECT {i}").into());
            assert!(audit.send(slot, e).is_none(), "acknowledged when spooled");
        }
        audit.close().await;
        drop(audit);
        // What a run killed before its writer got to them leaves behind.
        let spool_dir = spool::dir_for(&cfg.path);
        let store = AuditStore::open(&cfg.path).unwrap();
        let mark = store.spool_mark().unwrap();
        assert_eq!(mark, 3);
        let spool = Recovery::open(&spool_dir, mark)
            .unwrap()
            .into_spool()
            .unwrap();
        for text in ["SELECT 'lost 1'", "SELECT 'lost 2'"] {
            let mut e = Event::new(Kind::Statement, "test");
            e.text = Some(text.into());
            drop(spool.append(&Encoded::new(e).body).unwrap());
        }
        drop(spool);

        for _ in 0..2 {
            let audit = Audit::start(cfg.clone()).unwrap();
            audit.close().await;
        }
        let texts: Vec<String> = store
            .connection()
            .prepare("SELECT body FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| Event::decode(&b.unwrap()).unwrap())
            .map(|e| {
                e.text
                    .map(|t| t.to_string())
                    .or(e.action)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            texts,
            [
                "SELECT 0",
                "SELECT 1",
                "SELECT 2",
                "SELECT 'lost 1'",
                "SELECT 'lost 2'",
                "audit.recover"
            ],
            "recovered once, in order, and said so"
        );
        assert_eq!(store.spool_mark().unwrap(), 5);
        let key = SigningKey::load_or_create(&cfg.key).unwrap();
        let report = crate::audit::verify::verify_store(&store, key.public_key()).unwrap();
        assert!(report.is_verified(), "{:?}", report.failure());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_slot_frees_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::start(config(dir.path(), 2)).unwrap();
        let a = audit.reserve_now().unwrap();
        let _b = audit.reserve_now().unwrap();
        assert_eq!(audit.reserve_now().err(), Some(Unavailable::QueueFull));
        drop(a);
        assert!(audit.reserve_now().is_ok());
    }
}
