//! Sessions end cleanly: idle timeout, lifetime, SIGTERM with a grace period,
//! SIGHUP reload; and the admin HTTP listener.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::harness::{message, Proxy, Setup, PASSWORD};

#[tokio::test]
async fn idle_sessions_are_logged_off() {
    let proxy = Proxy::with(Setup::default().set("sessions.idle_timeout", "1s"));
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    // A query longer than the idle timeout is not idleness.
    client
        .simple_query("select pg_sleep(1.5)")
        .await
        .expect("long query");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let err = client.simple_query("select 1").await.unwrap_err();
    assert!(client.is_closed(), "{err}");
    let log = proxy.log();
    assert!(log.contains("idle_timeout"), "{log}");
}

#[tokio::test]
async fn idle_timeout_still_fires_after_an_extended_protocol_copy() {
    use futures_util::SinkExt;
    // tokio-postgres sends two Syncs around COPY FROM STDIN and gets one
    // ReadyForQuery; the session must still count as idle afterwards.
    let proxy = Proxy::with(Setup::default().set("sessions.idle_timeout", "1s"));
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    client
        .batch_execute("create temp table t (n int)")
        .await
        .unwrap();
    let sink = client.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(client.simple_query("select 1").await.is_err());
    assert!(client.is_closed());
}

#[tokio::test]
async fn idle_timeout_fatal_names_the_reason() {
    let proxy = Proxy::with(Setup::default().set("sessions.idle_timeout", "1s"));
    proxy.add_user("alice", &["dba"]);
    let (mut raw, _) = crate::raw::Raw::login(&proxy, "alice", PASSWORD).await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "57P05");
    assert!(err.message.contains("idle timeout"), "{}", err.message);
}

#[tokio::test]
async fn sessions_end_at_their_maximum_lifetime() {
    let proxy = Proxy::with(Setup::default().set("sessions.max_lifetime", "2s"));
    proxy.add_user("alice", &["dba"]);
    let (mut raw, _) = crate::raw::Raw::login(&proxy, "alice", PASSWORD).await;
    raw.send(&crate::raw::query("select 1")).await;
    assert!(crate::raw::errors(&raw.until_ready().await).is_empty());
    let started = std::time::Instant::now();
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "57P01");
    assert!(err.message.contains("maximum lifetime"), "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn sigterm_drains_then_stops() {
    let mut proxy = Proxy::with(Setup::default().set("sessions.shutdown_grace", "10s"));
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    let running = tokio::spawn(async move {
        let r = client.simple_query("select pg_sleep(1.5)").await;
        (r.is_ok(), client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .is_err(),
        "no new connections while draining"
    );
    let (ok, client) = running.await.unwrap();
    assert!(ok, "the running query finished");
    drop(client);
    let exited = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        exited,
        Some(true),
        "pgward exited cleanly once sessions were done"
    );
}

#[tokio::test]
async fn sigterm_ends_stragglers_after_the_grace_period() {
    let mut proxy = Proxy::with(Setup::default().set("sessions.shutdown_grace", "1s"));
    proxy.add_user("alice", &["dba"]);
    let (mut raw, _) = crate::raw::Raw::login(&proxy, "alice", PASSWORD).await;
    proxy.signal(Signal::SIGTERM);
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "57P01");
    assert!(err.message.contains("shutting down"), "{}", err.message);
    let exited = tokio::task::spawn_blocking(move || proxy.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(exited, Some(true));
}

#[tokio::test]
async fn sighup_reloads_policies_and_keeps_the_old_set_on_error() {
    let proxy = Proxy::start();
    let policies = proxy.dir.path().join("policies");
    std::fs::write(
        policies.join("ops.yaml"),
        "roles:\n  ops:\n    unrestricted: true\n    upstream: {user: trust_user}\n",
    )
    .unwrap();
    proxy.add_user("alice", &["ops"]);
    let err = proxy.connect("alice", PASSWORD).await.unwrap_err();
    assert!(message(&err).contains("not defined"), "{}", message(&err));
    proxy.signal(Signal::SIGHUP);
    crate::harness::eventually(Duration::from_secs(5), "reload", || {
        proxy.log().contains("configuration reloaded")
    });
    let client = proxy
        .connect("alice", PASSWORD)
        .await
        .expect("role known after reload");
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "trust_user");

    // A broken file never replaces a working policy set.
    std::fs::write(
        policies.join("broken.yaml"),
        "roles:\n  x: [not, a, role]\n",
    )
    .unwrap();
    proxy.signal(Signal::SIGHUP);
    crate::harness::eventually(Duration::from_secs(5), "failed reload", || {
        proxy.log().contains("reload failed")
    });
    proxy
        .connect("alice", PASSWORD)
        .await
        .expect("old policies still in force");
}

#[tokio::test]
async fn metrics_and_health() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    client.simple_query("select 1").await.unwrap();
    let _ = proxy.connect("alice", "wrong-password").await;
    let (status, body) = proxy.http_get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, text) = proxy.http_get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "pgward_connections_total",
        "pgward_active_sessions",
        "pgward_statements_total",
        "pgward_client_received_bytes_total",
        "pgward_client_sent_bytes_total",
        "pgward_upstream_latency_seconds_bucket",
        "pgward_upstream_connect_seconds_count",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    // The refused login's session ends just after its client is told.
    crate::harness::eventually(Duration::from_secs(5), "one active session", || {
        proxy.metric("pgward_active_sessions") == 1.0
    });
    assert_eq!(
        proxy.metric("pgward_logins_total{outcome=\"bad_credentials\"}"),
        1.0
    );
    assert!(proxy.metric("pgward_upstream_latency_seconds_count") >= 1.0);
}

#[tokio::test]
async fn json_logs_never_contain_passwords() {
    let proxy = Proxy::with(Setup::default().set("log.format", "json"));
    proxy.add_user("alice", &["dba"]);
    proxy.connect("alice", PASSWORD).await.expect("login");
    let _ = proxy.connect("alice", "wrong-secret-123").await;
    crate::harness::eventually(Duration::from_secs(5), "login failure logged", || {
        proxy.log().contains("login failed")
    });
    let log = proxy.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event.get("timestamp").is_some(), "{line}");
    }
    assert!(!log.contains(PASSWORD) && !log.contains("wrong-secret-123"));
    assert!(
        !log.contains(&crate::harness::db().password),
        "upstream secret not logged"
    );
}
