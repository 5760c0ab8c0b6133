//! The audit trail's costs: encoding and hashing one statement event (the
//! writer does this per event), and the sustained rate of the whole
//! pipeline — reserve, queue, batch, SQLite commit, acknowledgement — on
//! this machine (target ≥ 50,000 events/s), and the latency of one
//! acknowledged event — what a statement waits for before its
//! ReadyForQuery with `audit.durability: commit` — and of one spooled
//! event, what it waits for with `spool` (the default).
//!
//! `cargo bench --bench audit`

use std::sync::Arc;
use std::time::Instant;

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
    Criterion::default().configure_from_args().final_summary();
}
