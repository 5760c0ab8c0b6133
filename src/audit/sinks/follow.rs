//! One sink's thread: read the events after the cursor from the store,
//! deliver them, move the cursor; when a delivery fails, keep the cursor
//! and try again, waiting longer each time (up to 5 s).
//!
//! The thread logs once when a sink starts failing and once when it
//! recovers, never per attempt: a SIEM that is down for an hour must not
//! flood pgward's own log. Events of kinds the sink does not want are
//! passed over (the cursor moves past them) without being delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::cursor::CursorFile;
use super::{Deliver, Record, Report, SinkConfig, SinkError};
use crate::audit::store::{AuditStore, AuditStoreError};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Shared by every sink thread and the [`super::Sinks`] handle.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Deliver what is stored, then stop.
    pub draining: AtomicBool,
    /// Stop at once.
    pub abort: AtomicBool,
}

pub(super) struct Follower {
    cfg: SinkConfig,
    store: AuditStore,
    cursor_file: CursorFile,
    cursor: u64,
    sink: Box<dyn Deliver>,
    report: Arc<dyn Report>,
    control: Arc<Control>,
    /// Events per delivery now: the configured batch, halved for each
    /// batch a receiver rejected as a request (HTTP 4xx), so one event it
    /// cannot take does not hold back a whole batch of others.
    batch: usize,
}

enum Step {
    /// Nothing stored after the cursor.
    Idle,
    /// The cursor moved.
    Moved,
}

impl Follower {
    pub fn new(
        cfg: &SinkConfig,
        store: AuditStore,
        cursor_file: CursorFile,
        cursor: u64,
        sink: Box<dyn Deliver>,
        report: Arc<dyn Report>,
        control: Arc<Control>,
    ) -> Follower {
        Follower {
            cfg: cfg.clone(),
            store,
            cursor_file,
            cursor,
            sink,
            report,
            control,
            batch: cfg.batch.max(1),
        }
    }

    /// The last event delivered or passed over.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn run(mut self) {
        let mut failing = false;
        let mut backoff = FIRST_BACKOFF;
        while !self.control.abort.load(Ordering::Acquire) {
            // Read before the step: a step that began after draining was
            // asked for has seen every event stored before it.
            let draining = self.control.draining.load(Ordering::Acquire);
            match self.step() {
                Ok(step) => {
                    if failing {
                        tracing::info!(sink = %self.cfg.name, next = self.cursor + 1, "audit sink delivering again");
                        failing = false;
                    }
                    backoff = FIRST_BACKOFF;
                    if let Step::Idle = step {
                        if draining {
                            return;
                        }
                        self.nap(self.cfg.poll);
                    }
                }
                Err(e) => {
                    self.report.failed(&self.cfg.name);
                    if !failing {
                        tracing::warn!(
                            sink = %self.cfg.name,
                            error = %e,
                            next = self.cursor + 1,
                            "audit sink cannot deliver; retrying from the store"
                        );
                        failing = true;
                    } else {
                        tracing::debug!(sink = %self.cfg.name, error = %e, "audit sink still failing");
                    }
                    if draining {
                        tracing::warn!(
                            sink = %self.cfg.name,
                            next = self.cursor + 1,
                            "audit sink stopping with events undelivered; they follow after the next start"
                        );
                        return;
                    }
                    self.nap(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Sleeps until `d` has passed or [`super::Sinks::close`] wakes the
    /// thread.
    fn nap(&self, d: Duration) {
        if !self.control.draining.load(Ordering::Acquire) {
            std::thread::park_timeout(d);
        }
    }

    fn step(&mut self) -> Result<Step, SinkError> {
        // The base is read first: a prune between the two reads can only
        // move it up to a head this sink then sees.
        let (base, _) = self.store.base()?;
        let (head, _) = self.store.head()?;
        if self.cursor > head {
            tracing::warn!(
                sink = %self.cfg.name,
                cursor = self.cursor,
                head,
                "audit sink cursor is past the end of the store (a new store?); starting from its oldest event"
            );
            self.move_to(base)?;
        } else if self.cursor < base {
            tracing::warn!(
                sink = %self.cfg.name,
                from = self.cursor + 1,
                to = base,
                "audit events were removed from the store before this sink delivered them"
            );
            self.move_to(base)?;
        }
        self.report
            .lag(&self.cfg.name, head.saturating_sub(self.cursor));
        if head <= self.cursor {
            return Ok(Step::Idle);
        }
        // Ids are consecutive, so this window holds at most `batch` events.
        let upto = head.min(self.cursor.saturating_add(self.batch as u64));
        let mut records = Vec::new();
        self.store.scan(
            self.cursor + 1,
            Some(upto),
            |s| -> Result<(), AuditStoreError> {
                if self.cfg.wants(&s.kind) {
                    records.push(Record::from_stored(s));
                }
                Ok(())
            },
        )?;
        if !records.is_empty() {
            match self.sink.deliver(&records) {
                Ok(()) => {}
                Err(SinkError::Status(code)) if rejects_request(code) => {
                    if records.len() == 1 {
                        // Never skipped: the operator must see and fix it.
                        tracing::error!(
                            sink = %self.cfg.name,
                            id = records[0].id,
                            status = code,
                            "the receiver rejects this audit event; the sink waits until it is accepted"
                        );
                    }
                    self.batch = (records.len() / 2).max(1);
                    return Err(SinkError::Status(code));
                }
                Err(e) => return Err(e),
            }
            self.report.delivered(&self.cfg.name, records.len() as u64);
        }
        self.batch = self.batch.saturating_mul(2).min(self.cfg.batch.max(1));
        self.move_to(upto)?;
        self.report.lag(&self.cfg.name, head.saturating_sub(upto));
        Ok(Step::Moved)
    }

    /// Moves the cursor; it stays moved in memory even if saving fails
    /// (the error is reported and saving is retried with the next batch).
    fn move_to(&mut self, id: u64) -> Result<(), SinkError> {
        self.cursor = id;
        self.cursor_file.save(id)?;
        Ok(())
    }
}

/// A 4xx other than timeout and rate limit: the receiver will not take this
/// request as it is (too large, or one event it cannot parse).
fn rejects_request(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Event, Kind};
    use std::sync::Mutex;

    /// A destination that is down while `down` is set and records what
    /// it accepted.
    struct Fake {
        down: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u64>>>,
        /// A request holding this event is rejected (HTTP 413).
        reject: Arc<Mutex<Option<u64>>>,
    }

    impl Deliver for Fake {
        fn deliver(&mut self, records: &[Record]) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError::Setup("down".into()));
            }
            let reject = *self.reject.lock().unwrap();
            if records.iter().any(|r| Some(r.id) == reject) {
                return Err(SinkError::Status(413));
            }
            let mut got = self.got.lock().unwrap();
            got.extend(records.iter().map(|r| r.id));
            Ok(())
        }
    }

    fn append(store: &mut AuditStore, kind: Kind, n: usize) {
        let mut events: Vec<Event> = (0..n).map(|_| Event::new(kind, "t")).collect();
        store.append(&mut events).unwrap();
    }

    fn config(yaml: &str) -> SinkConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    struct Rig {
        dir: tempfile::TempDir,
        store: AuditStore,
        down: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u64>>>,
        /// A request holding this event is rejected (HTTP 413).
        reject: Arc<Mutex<Option<u64>>>,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
            Rig {
                dir,
                store,
                down: Arc::new(AtomicBool::new(false)),
                got: Arc::new(Mutex::new(Vec::new())),
                reject: Arc::new(Mutex::new(None)),
            }
        }

        /// A follower as [`super::super::prepare`] would set it up, with
        /// the fake destination.
        fn follower(&self, cfg: &SinkConfig) -> Follower {
            let db = self.dir.path().join("audit.db");
            let store = AuditStore::open_read_only(&db).unwrap();
            let cursor = CursorFile::new(cfg.cursor_path(&db));
            let start = match (cursor.load().unwrap(), cfg.start) {
                (Some(id), _) => id,
                (None, super::super::Start::Head) => store.head().unwrap().0,
                (None, super::super::Start::Oldest) => store.base().unwrap().0,
            };
            cursor.save(start).unwrap();
            let sink = Fake {
                down: Arc::clone(&self.down),
                got: Arc::clone(&self.got),
                reject: Arc::clone(&self.reject),
            };
            Follower::new(
                cfg,
                store,
                cursor,
                start,
                Box::new(sink),
                Arc::new(super::super::NoReport),
                Arc::new(Control::default()),
            )
        }

        fn got(&self) -> Vec<u64> {
            self.got.lock().unwrap().clone()
        }
    }

    fn drain(f: &mut Follower) {
        while let Step::Moved = f.step().unwrap() {}
    }

    #[test]
    fn a_new_sink_starts_at_the_head_or_the_oldest_event() {
        let mut rig = Rig::new();
        append(&mut rig.store, Kind::Login, 3);
        let mut head = rig.follower(&config("{name: h, type: file, path: /x}"));
        append(&mut rig.store, Kind::Login, 2);
        drain(&mut head);
        assert_eq!(rig.got(), vec![4, 5]);
        rig.got.lock().unwrap().clear();
        let mut oldest = rig.follower(&config("{name: o, type: file, path: /y, start: oldest}"));
        drain(&mut oldest);
        assert_eq!(rig.got(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_sink_that_is_down_catches_up_once_in_batches() {
        let mut rig = Rig::new();
        let cfg = config("{name: s, type: file, path: /x, batch: 4}");
        let mut f = rig.follower(&cfg);
        append(&mut rig.store, Kind::Statement, 3);
        drain(&mut f);
        rig.down.store(true, Ordering::SeqCst);
        append(&mut rig.store, Kind::Statement, 7);
        for _ in 0..3 {
            assert!(f.step().is_err(), "down");
        }
        assert_eq!(f.cursor(), 3, "the cursor stays while delivery fails");
        rig.down.store(false, Ordering::SeqCst);
        assert!(matches!(f.step().unwrap(), Step::Moved));
        assert_eq!(f.cursor(), 7, "one batch of 4");
        drain(&mut f);
        assert_eq!(rig.got(), (1..=10).collect::<Vec<_>>());

        // A restart resumes from the saved cursor.
        drop(f);
        append(&mut rig.store, Kind::Statement, 2);
        let mut again = rig.follower(&cfg);
        drain(&mut again);
        assert_eq!(rig.got(), (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn a_rejected_batch_shrinks_until_only_the_rejected_event_waits() {
        let mut rig = Rig::new();
        let cfg = config("{name: s, type: webhook, url: \"http://127.0.0.1:1/\", batch: 8}");
        let mut f = rig.follower(&cfg);
        *rig.reject.lock().unwrap() = Some(6);
        append(&mut rig.store, Kind::Statement, 16);
        let mut errors = 0;
        for _ in 0..10 {
            match f.step() {
                Ok(_) => {}
                Err(SinkError::Status(413)) => errors += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            rig.got(),
            (1..=5).collect::<Vec<_>>(),
            "the events before it"
        );
        assert_eq!(f.cursor(), 5, "event 6 is never skipped");
        assert!(errors >= 4, "8 → 4 → 2 → 1, then waiting: {errors}");
        *rig.reject.lock().unwrap() = None;
        drain(&mut f);
        assert_eq!(rig.got(), (1..=16).collect::<Vec<_>>());
    }

    #[test]
    fn kinds_filter_passes_over_the_rest() {
        let mut rig = Rig::new();
        let mut f = rig.follower(&config(
            "{name: a, type: file, path: /x, kinds: [alert], batch: 2}",
        ));
        append(&mut rig.store, Kind::Statement, 3);
        append(&mut rig.store, Kind::Alert, 1);
        append(&mut rig.store, Kind::Statement, 3);
        drain(&mut f);
        assert_eq!(rig.got(), vec![4]);
        assert_eq!(f.cursor(), 7, "passed over the statements too");
    }

    #[test]
    fn close_delivers_what_is_stored_then_stops() {
        let mut rig = Rig::new();
        let f = rig.follower(&config("{name: c, type: file, path: /x, poll: 10s}"));
        let control = Arc::clone(&f.control);
        let thread = std::thread::spawn(move || f.run());
        append(&mut rig.store, Kind::Login, 5);
        control.draining.store(true, Ordering::SeqCst);
        thread.thread().unpark();
        thread.join().unwrap();
        assert_eq!(rig.got(), vec![1, 2, 3, 4, 5]);
    }
}
