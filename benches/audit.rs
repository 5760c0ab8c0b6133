//! The audit trail's costs: encoding and hashing one statement event (the
//! writer does this per event), and the sustained rate of the whole
//! pipeline — reserve, queue, batch, SQLite commit, acknowledgement — on
//! this machine (target ≥ 50,000 events/s), and the latency of one
//! acknowledged event — what a statement waits for before its
//! ReadyForQuery with `audit.durability: commit` — and of one spooled
//! event, what it waits for with `spool` (the default). Last, the CPU time
//! the default pipeline costs per event (every thread: the session's
//! encoding and spool copy, the writer, the WAL merging) with events
//! arriving steadily, as from busy sessions — the cost pgbench sees.
//!
//! `cargo bench --bench audit`

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion};
use pgward::audit::chain::GENESIS;
use pgward::audit::store::next_hash;
use pgward::audit::{Audit, Decision, Encoded, Event, Kind, OnFailure, SessionInfo, WriterConfig};

fn statement(who: &Arc<SessionInfo>) -> Event {
    let mut e = Event::new(Kind::Statement, "bench");
    e.who = Some(Arc::clone(who));
    e.text = Some("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;".into());
    e.fingerprint = Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;".into());
    e.relations = vec!["pgbench_accounts".into()];
    e.decision = Some(Decision::Allowed);
    e.sqlstate = Some("00000".into());
    e.rows = Some(1);
    e.bytes = Some(24);
    e.duration_us = Some(95);
    e
}

fn who() -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        session: Some(12),
        user: Some("alice".into()),
        role: Some("dba".into()),
        client_addr: Some("10.1.2.3".into()),
        tls_version: Some("TLSv1.3".into()),
        application_name: Some("pgbench".into()),
        database: Some("clinic".into()),
        upstream_user: Some("postgres".into()),
        ..SessionInfo::default()
    })
}

/// What one event costs to encode (the session, with its facts cached)
/// and to number and hash (the writer).
fn encode_and_hash(c: &mut Criterion) {
    let who = who();
    let event = statement(&who);
    c.bench_function("audit/encode+hash", |b| {
        b.iter_batched(
            || event.clone(),
            |e| {
                let encoded = Encoded::new(e);
                next_hash(&GENESIS, &encoded.numbered(1))
            },
            BatchSize::SmallInput,
        )
    });
}

/// This process's CPU time so far, all threads, in seconds.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// CPU time per event of the default pipeline (spooled, stored in 50 ms
/// batches) with `rate` events per second arriving for `secs`, in µs: the
/// events are a prepared statement's executions (text, fingerprint and
/// session facts shared, as sessions share them), and the runtime's own
/// ticking, measured alone first, is subtracted.
fn spooled_cpu_per_event(rate: usize, secs: u64) -> f64 {
    let run = |events: bool| -> (f64, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = writer(dir.path(), true);
        let rt = runtime();
        let who = who();
        let text: Arc<str> = Arc::from("SELECT abalance FROM pgbench_accounts WHERE aid = $1;");
        let instance: Arc<str> = Arc::from("bench");
        let per_ms = rate / 1000;
        let before = cpu_seconds();
        let started = Instant::now();
        let sent = rt.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut sent = 0;
            while started.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                for _ in 0..if events { per_ms } else { 0 } {
                    let mut e = Event::of(Kind::Statement, Arc::clone(&instance));
                    e.who = Some(Arc::clone(&who));
                    e.text = Some(Arc::clone(&text));
                    e.fingerprint = Some(Arc::clone(&text));
                    e.decision = Some(Decision::Allowed);
                    e.sqlstate = Some(Cow::Borrowed("00000"));
                    e.rows = Some(1);
                    e.bytes = Some(12);
                    e.duration_us = Some(950);
                    let slot = audit.reserve().await.expect("slot");
                    assert!(audit.send(slot, e).is_none(), "spooled");
                    sent += 1;
                }
            }
            audit.close().await;
            sent
        });
        (cpu_seconds() - before, sent)
    };
    let (idle, _) = run(false);
    let (busy, sent) = run(true);
    (busy - idle) * 1e6 / sent as f64
}

fn writer(dir: &std::path::Path, spool: bool) -> Arc<Audit> {
    Audit::start(WriterConfig {
        path: dir.join("audit.db"),
        key: dir.join("audit.key"),
        queue: 65536,
        batch: 1024,
        on_failure: OnFailure::Block,
        checkpoint_interval: std::time::Duration::from_secs(1),
        instance: "bench".into(),
        alerts: Default::default(),
        spool,
    })
    .expect("audit")
}

/// Two worker threads, as on the 2-core machine the numbers come from.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Events per second through the writer, from 4 producer tasks.
fn pipeline_rate(total: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = writer(dir.path(), false);
    let rt = runtime();
    let who = who();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let audit = Arc::clone(&audit);
            let who = Arc::clone(&who);
            tasks.push(tokio::spawn(async move {
                let mut last = None;
                for _ in 0..total / 4 {
                    let slot = audit.reserve().await.expect("slot");
                    last = audit.send(slot, statement(&who)).or(last);
                }
                if let Some(ack) = last {
                    let _ = ack.await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        audit.close().await;
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// Mean time from reserving a place for one event to its acknowledgement
/// when each waits for the last (one session): its commit, or with `spool`
/// its spool write, in µs.
fn acknowledged_latency(n: usize, spool: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = writer(dir.path(), spool);
    let rt = runtime();
    let who = who();
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            let slot = audit.reserve().await.expect("slot");
            if let Some(ack) = audit.send(slot, statement(&who)) {
                let _ = ack.await;
            }
        }
    });
    let us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    rt.block_on(audit.close());
    us
}

/// Mean time of one transaction storing one event, with no thread
/// hand-offs: the floor under `acknowledged`, in µs.
fn lone_commit(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store =
        pgward::audit::store::AuditStore::open(&dir.path().join("audit.db")).expect("store");
    store.defer_wal_merges().expect("defer merges");
    let who = who();
    let started = Instant::now();
    for _ in 0..n {
        store.append(&mut [statement(&who)]).expect("append");
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = encode_and_hash
}

fn main() {
    benches();
    let n = 400_000;
    let rate = pipeline_rate(n);
    println!("audit/pipeline: {n} events stored in batches at {rate:.0} events/s");
    let us = acknowledged_latency(20_000, false);
    println!("audit/acknowledged: one event at a time, {us:.1} µs from queueing to stored");
    let us = acknowledged_latency(20_000, true);
    println!("audit/spooled: one event at a time, {us:.1} µs from queueing to spooled");
    let us = lone_commit(20_000);
    println!("audit/commit: one event per transaction, {us:.1} µs (no thread hand-offs)");
    let us = spooled_cpu_per_event(20_000, 5);
    println!(
        "audit/cpu: {us:.1} µs of CPU per event, all threads, spooled at a steady 20,000 events/s"
    );
    Criterion::default().configure_from_args().final_summary();
}
