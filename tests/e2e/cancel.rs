//! Cancel requests reach the right backend with the real key; made-up keys
//! are ignored; the client never sees the database's real key.

use std::time::{Duration, Instant};

use crate::harness::{psql, sqlstate, Proxy, PASSWORD};
use crate::raw::{query, Raw};

#[tokio::test]
async fn tokio_postgres_cancel_stops_a_long_query() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(proxy.tls_config());
    token.cancel_query(tls).await.expect("cancel sent");
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.metric("pgward_cancel_requests_total"), 1.0);
}

#[test]
fn psql_ctrl_c_cancels_pg_sleep() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let child = std::process::Command::new("psql")
        .arg(proxy.conninfo("alice", PASSWORD))
        .args(["-X", "-c", "select pg_sleep(60)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(2), "cancel took {elapsed:?}");
}

#[tokio::test]
async fn unknown_keys_are_ignored_and_real_keys_stay_hidden() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let (mut raw, startup) = Raw::login(&proxy, "alice", PASSWORD).await;
    let (_, key) = startup
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    let handed_pid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let handed_secret = u32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    raw.send(&query("select pg_backend_pid()")).await;
    let frames = raw.until_ready().await;
    let (_, row) = frames.iter().find(|(t, _)| *t == b'D').expect("row");
    let real_pid: u32 = std::str::from_utf8(&row[6..]).unwrap().parse().unwrap();
    assert_ne!(
        handed_pid, real_pid,
        "the client gets pgward's key, not the backend's"
    );

    // A wrong secret for the right pid, and a made-up pid: both ignored.
    raw.send(&query("select pg_sleep(1.5), 'finished'")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (pid, secret) in [(handed_pid, handed_secret.wrapping_add(1)), (12345, 678)] {
        let mut cancel = Raw::plain(&proxy).await;
        let mut packet = vec![0, 0, 0, 16, 4, 210, 22, 46];
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&secret.to_be_bytes());
        cancel.send(&packet).await;
        assert!(cancel.closed_within(Duration::from_secs(5)).await);
    }
    let frames = raw.until_ready().await;
    assert!(
        crate::raw::errors(&frames).is_empty(),
        "query was not cancelled: {frames:?}"
    );
    assert!(frames
        .iter()
        .any(|(t, b)| *t == b'D' && b.ends_with(b"finished")));
}

#[test]
fn cancel_with_psql_over_plain_tcp_while_tls_is_required() {
    // libpq sends CancelRequest over a fresh, unencrypted connection even
    // when the session is TLS; pgward must accept it.
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let out = psql(&proxy.conninfo("alice", PASSWORD), &["-c", "select 1"]);
    assert!(out.status.success());
}
