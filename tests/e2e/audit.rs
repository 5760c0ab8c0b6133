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

use crate::harness::{db, eventually, Proxy, Setup, PASSWORD};
use crate::restricted::{conninfo, redteam_db, run, ANALYST};

/// Every event in the proxy's audit store, after checking the chain.
fn events(proxy: &Proxy) -> Vec<Event> {
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

    // Statement events are stored before the client sees ReadyForQuery.
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
        .any(|e| e.outcome.as_deref() == Some("refused") && e.user() == Some("ann")));
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
    db().sql("postgres", "CREATE DATABASE auditload");
    let conn = proxy
        .conninfo("loader", PASSWORD)
        .replace("dbname=clinic", "dbname=auditload");
    let init = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q"])
        .arg(&conn)
        .output()
        .expect("pgbench -i");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
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
