//! The audit trail, end to end: statements (simple and extended, allowed,
//! rewritten, refused, failing), logins and sessions become events in the
//! hash-chained store; and `kill -9` under load loses no statement a client
//! saw complete.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgward::audit::store::{next_hash, AuditStore};
use pgward::audit::{Event, Kind};

use crate::harness::{eventually, Proxy, Setup, PASSWORD};
use crate::restricted::{conninfo, redteam_db, run, ANALYST};

/// Every event in the proxy's audit store once it has stored what it
/// took, after checking the chain.
fn events(proxy: &Proxy) -> Vec<Event> {
    proxy.audit_stored();
    let store =
        AuditStore::open_read_only(&proxy.dir.path().join("audit.db")).expect("audit store");
    let (_, mut hash) = store.base().expect("base");
    let mut out = Vec::new();
    store
        .scan(
            1,
            None,
            |e| -> Result<(), pgward::audit::store::AuditStoreError> {
                hash = next_hash(&hash, &e.body);
                assert_eq!(e.hash, hash.to_vec(), "chain broken at event {}", e.id);
                out.push(Event::decode(&e.body).expect("event body"));
                Ok(())
            },
        )
        .expect("scan");
    out
}

fn statements<'a>(events: &'a [Event], text: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.kind == Kind::Statement && e.text.as_deref() == Some(text))
        .collect()
}

#[test]
fn statements_logins_and_sessions_become_chained_events() {
    redteam_db();
    let proxy = Proxy::with(
        Setup::default()
            .policy(ANALYST)
            .set("audit.parameters", "full"),
    );
    proxy.add_user_with("ann", &["analyst"], &["clinic_id=1"]);
    proxy.add_user("alice", &["dba"]);
    let ann = conninfo(&proxy, "ann");
    let alice = conninfo(&proxy, "alice");

    let (ok, out) = run(&ann, "SELECT id, ssn FROM patients WHERE id = 3");
    assert!(ok, "{out}");
    let (ok, _) = run(&ann, "DO $$ BEGIN END $$");
    assert!(!ok);
    let (ok, _) = run(&alice, "SELECT count(*) FROM no_such_table");
    assert!(!ok);
    let (ok, out) = run(&alice, "SELECT count(*) FROM visits");
    assert!(ok && out.trim() == "3000", "{out}");
    let bad = conninfo(&proxy, "ann").replace(PASSWORD, "wrong-password");
    assert!(!run(&bad, "SELECT 1").0);
    // The extended protocol, with parameters recorded (audit.parameters).
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = proxy
            .connect_db("alice", PASSWORD, "redteam")
            .await
            .expect("connect");
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT $1::int + 1 AS next", &[&41i32])
            .await
            .expect("query");
        assert_eq!(row.get::<_, i32>(0), 42);
    });

    // Statement events are spooled before the client sees ReadyForQuery.
    let all = events(&proxy);
    let read = statements(&all, "SELECT id, ssn FROM patients WHERE id = 3");
    let [read] = read.as_slice() else {
        panic!("one event for the masked read: {all:#?}")
    };
    let who = read.who.as_ref().expect("who");
    assert_eq!(who.user.as_deref(), Some("ann"));
    assert_eq!(who.role.as_deref(), Some("analyst"));
    assert_eq!(who.database.as_deref(), Some("redteam"));
    assert_eq!(who.client_addr.as_deref(), Some("127.0.0.1"));
    assert!(who.tls_version.is_some());
    assert_eq!(read.decision, Some(pgward::audit::Decision::Rewritten));
    assert_eq!(read.rows, Some(1));
    assert_eq!(read.sqlstate.as_deref(), Some("00000"));
    assert!(
        read.relations.contains(&"public.patients".to_string()),
        "{read:?}"
    );
    assert!(
        read.masks
            .iter()
            .any(|m| m.starts_with("public.patients.ssn")),
        "{read:?}"
    );
    assert!(
        read.filters.iter().any(|f| f.contains("clinic_id")),
        "{read:?}"
    );
    assert!(read
        .sent
        .as_deref()
        .is_some_and(|s| s.contains("\"public\".\"patients\"")));
    assert_eq!(
        read.fingerprint.as_deref(),
        Some("SELECT id, ssn FROM patients WHERE id = ?")
    );
    assert!(read.bytes.unwrap_or(0) > 0 && read.duration_us.is_some());

    let denied = statements(&all, "DO $$ BEGIN END $$");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].decision, Some(pgward::audit::Decision::Denied));
    assert!(denied[0]
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("DO blocks")));
    assert_eq!(denied[0].sqlstate.as_deref(), Some("42501"));

    let failed = statements(&all, "SELECT count(*) FROM no_such_table");
    assert_eq!(failed[0].sqlstate.as_deref(), Some("42P01"));
    assert_eq!(failed[0].decision, Some(pgward::audit::Decision::Allowed));
    let counted = statements(&all, "SELECT count(*) FROM visits");
    assert_eq!(counted[0].rows, Some(1));
    assert_eq!(counted[0].relations, vec!["visits".to_string()]);

    let prepared = statements(&all, "SELECT $1::int + 1 AS next");
    assert_eq!(prepared.len(), 1, "{all:#?}");
    assert_eq!(
        prepared[0].params,
        Some(vec![Some("\\x00000029".to_string())])
    );

    let logins: Vec<_> = all.iter().filter(|e| e.kind == Kind::Login).collect();
    assert!(logins
        .iter()
        .any(|e| e.outcome.as_deref() == Some("bad_credentials") && e.user() == Some("ann")));
    assert!(
        logins
            .iter()
            .filter(|e| e.outcome.as_deref() == Some("ok"))
            .count()
            >= 5
    );
    assert!(all.iter().any(|e| e.kind == Kind::SessionStart));
    eventually(Duration::from_secs(5), "session end events", || {
        events(&proxy)
            .iter()
            .filter(|e| e.kind == Kind::SessionEnd && e.outcome.as_deref() == Some("client_exit"))
            .count()
            >= 4
    });
}

#[test]
fn kill_9_under_load_loses_no_statement_a_client_saw_complete() {
    let mut proxy = Proxy::start();
    proxy.add_user("loader", &["dba"]);
    let conn = proxy.pgbench_database("loader", "auditload");
    let bench = Command::new("pgbench")
        .args(["-n", "-S", "-c", "4", "-j", "2", "-T", "30"])
        .arg(&conn)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");

    // A client that counts what it saw complete.
    let completed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = std::thread::spawn({
        let completed = Arc::clone(&completed);
        let stop = Arc::clone(&stop);
        let tls = proxy.tls_config();
        let port = proxy.port;
        move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let cfg = format!(
                    "host=127.0.0.1 port={port} user=loader password={PASSWORD} dbname=auditload sslmode=require"
                );
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                let (client, conn) = tokio_postgres::connect(&cfg, tls).await.expect("connect");
                tokio::spawn(conn);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if client
                        .simple_query(&format!("SELECT {n} AS probe"))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    completed.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    proxy.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = proxy.wait_exit(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    probe.join().expect("probe");
    let mut bench = bench;
    let _ = bench.kill();
    let _ = bench.wait();
    let seen = completed.load(Ordering::SeqCst);
    assert!(seen > 50, "the probe ran ({seen} statements)");

    // Restarted, the chain is intact and holds every completed statement.
    proxy.spawn();
    let all = events(&proxy);
    let stored = all
        .iter()
        .filter(|e| {
            e.kind == Kind::Statement
                && e.text.as_deref().is_some_and(|t| t.ends_with(" AS probe"))
                && e.sqlstate.as_deref() == Some("00000")
        })
        .count() as u64;
    assert!(
        stored >= seen,
        "stored {stored} probe events, client saw {seen}"
    );
    let pgbench = all
        .iter()
        .filter(|e| {
            e.text
                .as_deref()
                .is_some_and(|t| t.contains("pgbench_accounts"))
        })
        .count();
    assert!(pgbench > 100, "pgbench statements recorded: {pgbench}");
}

#[test]
fn alert_rules_raise_chained_alerts_right_after_their_cause() {
    redteam_db();
    let proxy = Proxy::with(
        Setup::default()
            .policy(ANALYST)
            .set("auth.max_failures", "2")
            .set(
                "audit.alerts",
                "{rows_per_statement: 100, denied: {count: 2, within: 1m}}",
            ),
    );
    proxy.add_user_with("ann", &["analyst"], &["clinic_id=1"]);
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba"]);

    let (ok, out) = run(
        &conninfo(&proxy, "alice"),
        "SELECT count(*) FROM (SELECT * FROM visits LIMIT 150) v",
    );
    assert!(ok && out.trim() == "150", "{out}");
    let (ok, _) = run(&conninfo(&proxy, "alice"), "SELECT * FROM visits LIMIT 150");
    assert!(ok);
    let ann = conninfo(&proxy, "ann");
    assert!(!run(&ann, "DO $$ BEGIN END $$").0);
    assert!(!run(&ann, "DO $$ BEGIN PERFORM 1; END $$").0);
    let bad = conninfo(&proxy, "bob").replace(PASSWORD, "wrong-password");
    for _ in 0..3 {
        assert!(!run(&bad, "SELECT 1").0);
    }

    let mut all = Vec::new();
    // Events are stored a few milliseconds after they are spooled.
    eventually(
        Duration::from_secs(5),
        "three alerts and every login",
        || {
            all = events(&proxy);
            all.iter().filter(|e| e.kind == Kind::Alert).count() >= 3
                && all
                    .iter()
                    .filter(|e| e.kind == Kind::Login && e.user() == Some("bob"))
                    .count()
                    >= 3
        },
    );
    let alerts: Vec<&Event> = all.iter().filter(|e| e.kind == Kind::Alert).collect();
    let rules: Vec<&str> = alerts.iter().filter_map(|a| a.action.as_deref()).collect();
    assert_eq!(
        rules,
        ["mass_rows", "denied_burst", "lockout"],
        "{alerts:#?}"
    );
    // The count(*) over 150 rows returned one row: only the second
    // statement is a mass view. Each alert follows its cause directly.
    for alert in &alerts {
        let cause = all
            .iter()
            .find(|e| e.id + 1 == alert.id)
            .expect("the event before the alert");
        assert_eq!(cause.user(), alert.user());
        assert_eq!(cause.time_us, alert.time_us);
    }
    let mass = alerts[0];
    assert_eq!(mass.user(), Some("alice"));
    assert_eq!(mass.rows, Some(150));
    assert!(mass.detail.as_deref().unwrap_or("").contains("150 rows"));
    assert_eq!(alerts[1].user(), Some("ann"));
    assert_eq!(alerts[2].user(), Some("bob"));
    let locked = all
        .iter()
        .filter(|e| e.kind == Kind::Login && e.outcome.as_deref() == Some("locked"))
        .count();
    assert_eq!(
        locked, 2,
        "the second failure locks, the third finds it locked"
    );
    assert_eq!(proxy.metric("pgward_audit_alerts_total"), 3.0);
    // Admin events of CLI commands (`user add`) are appended by the CLI,
    // not counted by the proxy's writer.
    let by_proxy = all.iter().filter(|e| e.kind != Kind::Admin).count();
    assert!(proxy.metric("pgward_audit_events_stored_total") >= by_proxy as f64);
}

#[test]
fn a_stuck_audit_store_refuses_statements_and_loses_none_it_ran() {
    // Statements wait for their commits here (with the spool they would
    // complete once spooled: see the next test).
    let proxy = Proxy::with(
        Setup::default()
            .set("audit.queue", "3")
            .set("audit.durability", "commit")
            .set("audit.ack_timeout", "60s"),
    );
    proxy.add_user("alice", &["dba"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Sessions open while the store works (a login must be recorded).
        let mut clients = Vec::new();
        // A login needs two free places (login and session start) in a
        // queue of three: wait for the writer between logins.
        for _ in 0..4 {
            let mut tries = 0;
            let (client, conn) = loop {
                match proxy.connect_db("alice", PASSWORD, "clinic").await {
                    Ok(pair) => break pair,
                    Err(e) if tries < 50 && crate::harness::sqlstate(&e) == "53000" => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("connect: {e:?}"),
                }
            };
            tokio::spawn(conn);
            clients.push(Arc::new(client));
        }
        // Stored in order: once this is acknowledged the queue is empty
        // (a queue of three fills under the load of the other tests: retry).
        let mut tries = 0;
        while let Err(e) = clients[0].simple_query("SELECT 'ready'").await {
            tries += 1;
            assert!(
                tries < 50 && crate::harness::sqlstate(&e) == "53000",
                "{e:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Another process holds the store's write lock: the writer waits.
        let lock = rusqlite::Connection::open(proxy.dir.path().join("audit.db")).expect("open");
        lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        // An event keeps its place until stored: three statements take the
        // three places and wait for their events to be stored.
        let mut waiting = Vec::new();
        for (i, client) in clients.iter().take(3).enumerate() {
            let client = Arc::clone(client);
            waiting.push(tokio::spawn(async move {
                client.simple_query(&format!("SELECT {i} AS stuck")).await
            }));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for w in waiting.iter_mut() {
            if w.is_finished() {
                panic!("a statement completed unrecorded: {:?}", w.await);
            }
        }
        // The fourth cannot be recorded: refused, not run.
        let err = clients[3]
            .simple_query("SELECT 3 AS refused")
            .await
            .expect_err("refused while the store is stuck");
        assert_eq!(crate::harness::sqlstate(&err), "53000", "{err:?}");
        let msg = crate::harness::message(&err);
        assert!(msg.contains("audit") && msg.contains("refused"), "{msg}");

        // The lock goes: every waiting statement completes, and the
        // refused session goes on.
        lock.execute_batch("ROLLBACK").expect("unlock");
        for w in waiting {
            let rows = tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("completes")
                .expect("task");
            assert!(rows.is_ok(), "{rows:?}");
        }
        clients[3]
            .simple_query("SELECT 4 AS after")
            .await
            .expect("the session still works");
    });
    let all = events(&proxy);
    let texts: Vec<&str> = all
        .iter()
        .filter(|e| e.kind == Kind::Statement)
        .filter_map(|e| e.text.as_deref())
        .collect();
    for i in 0..3 {
        assert!(
            texts.contains(&format!("SELECT {i} AS stuck").as_str()),
            "{texts:?}"
        );
    }
    assert!(texts.contains(&"SELECT 4 AS after"));
    assert!(!texts.iter().any(|t| t.contains("AS refused")));
}

#[test]
fn spooled_statements_survive_kill_9_while_the_store_is_stuck() {
    let mut proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let (client, conn) = proxy
            .connect_db("alice", PASSWORD, "clinic")
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    });
    // Another process holds the store's write lock: nothing is committed.
    let lock = rusqlite::Connection::open(proxy.dir.path().join("audit.db")).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    rt.block_on(async {
        for i in 0..5 {
            let done = tokio::time::timeout(
                Duration::from_secs(10),
                client.simple_query(&format!("SELECT {i} AS spooled")),
            )
            .await;
            assert!(
                matches!(done, Ok(Ok(_))),
                "completes once spooled: {done:?}"
            );
        }
    });
    proxy.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = proxy.wait_exit(Duration::from_secs(5));
    drop(client);
    lock.execute_batch("ROLLBACK").expect("unlock");
    drop(lock);

    // Restarted, pgward stores what it spooled, once, and says so.
    proxy.spawn();
    let all = events(&proxy);
    for i in 0..5 {
        let text = format!("SELECT {i} AS spooled");
        let found = statements(&all, &text);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert_eq!(found[0].sqlstate.as_deref(), Some("00000"));
        assert_eq!(found[0].user(), Some("alice"));
    }
    let recover: Vec<&Event> = all
        .iter()
        .filter(|e| e.action.as_deref() == Some("audit.recover"))
        .collect();
    assert_eq!(recover.len(), 1, "{recover:?}");
    let last_statement = all
        .iter()
        .rposition(|e| e.text.as_deref() == Some("SELECT 4 AS spooled"))
        .expect("stored");
    let recover_at = all
        .iter()
        .position(|e| e.action.as_deref() == Some("audit.recover"))
        .expect("stored");
    assert!(recover_at > last_statement, "after what it recovered");
    assert!(proxy.metric("pgward_audit_events_recovered_total") >= 5.0);
}
