//! Malformed and hostile connections: each gets the right FATAL or is closed,
//! and pgward stays up and leaks nothing.

use std::time::Duration;

use crate::harness::{eventually, rss_kib, Proxy, Setup, PASSWORD};
use crate::raw::{query, startup_packet, Raw};

#[tokio::test]
async fn garbage_instead_of_a_startup_packet() {
    let proxy = Proxy::start();
    let mut raw = Raw::plain(&proxy).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "08P01");
    assert!(
        err.message.contains("invalid length of startup packet"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn startup_packet_claiming_two_gigabytes() {
    let proxy = Proxy::start();
    let mut raw = Raw::plain(&proxy).await;
    raw.send(&0x7fff_fff0u32.to_be_bytes()).await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "08P01");
}

#[tokio::test]
async fn unsupported_protocol_versions() {
    let proxy = Proxy::start();
    let mut raw = Raw::tls(&proxy).await;
    raw.send(&startup_packet(2 << 16, &[("user", "alice")]))
        .await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "0A000");
    assert!(
        err.message.contains("unsupported frontend protocol 2.0"),
        "{}",
        err.message
    );

    // 3.x with x > 0 and _pq_ options are negotiated down, as PostgreSQL does.
    let mut raw = Raw::tls(&proxy).await;
    raw.send(&startup_packet(
        (3 << 16) | 9,
        &[("user", "alice"), ("_pq_.future", "1")],
    ))
    .await;
    let (tag, body) = raw.read().await.expect("negotiate");
    assert_eq!(tag, b'v');
    assert_eq!(
        &body[..4],
        &[0, 0, 0, 0],
        "newest minor version pgward supports"
    );
    assert!(body.windows(11).any(|w| w == b"_pq_.future"));
    let (tag, _) = raw.read().await.expect("auth request");
    assert_eq!(tag, b'R');
}

#[tokio::test]
async fn gssapi_encryption_is_declined_and_tls_follows() {
    let proxy = Proxy::start();
    let mut raw = Raw::plain(&proxy).await;
    raw.send(&[0, 0, 0, 8, 4, 210, 22, 48]).await;
    let mut answer = [0u8; 1];
    use tokio::io::AsyncReadExt;
    raw.io.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    // libpq then falls back to TLS: psql with gssencmode=prefer works.
    proxy.add_user("alice", &["dba"]);
    let out = crate::harness::psql(
        &format!("{} gssencmode=disable", proxy.conninfo("alice", PASSWORD)),
        &["-c", "select 1"],
    );
    assert!(out.status.success());
}

#[tokio::test]
async fn startup_without_a_user() {
    let proxy = Proxy::start();
    let mut raw = Raw::tls(&proxy).await;
    raw.send(&startup_packet(3 << 16, &[("database", "clinic")]))
        .await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "28000");
    assert!(
        err.message.contains("no PostgreSQL user name"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn plaintext_is_refused_unless_allowed_on_loopback() {
    let proxy = Proxy::start();
    let mut raw = Raw::plain(&proxy).await;
    raw.send(&startup_packet(3 << 16, &[("user", "alice")]))
        .await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "28000");
    assert!(err.message.contains("TLS is required"), "{}", err.message);
    assert!(err.hint.unwrap_or_default().contains("sslmode=require"));

    let open = Proxy::with(Setup::default().set("tls.allow_plaintext_loopback", "true"));
    open.add_user("alice", &["dba"]);
    let out = crate::harness::psql(
        &format!(
            "host=127.0.0.1 port={} user=alice password={PASSWORD} dbname=clinic sslmode=disable",
            open.port
        ),
        &["-c", "select 41 + 1"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_startup_timeout() {
    let proxy = Proxy::with(Setup::default().set("sessions.startup_timeout", "1s"));
    let mut raw = Raw::plain(&proxy).await;
    let started = std::time::Instant::now();
    assert!(
        raw.closed_within(Duration::from_secs(5)).await,
        "pgward closed the connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that stops after the TLS handshake is dropped too.
    let mut raw = Raw::tls(&proxy).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn oversized_message_gets_a_clear_fatal() {
    let proxy = Proxy::with(Setup::default().set("sessions.max_message_size", "64KiB"));
    proxy.add_user("alice", &["dba"]);
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    let big = format!("select '{}'", "x".repeat(100 * 1024));
    raw.send(&query(&big)).await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "54000");
    assert!(err.message.contains("max_message_size"), "{}", err.message);
    // Below the limit is fine.
    let client = proxy.connect("alice", PASSWORD).await.expect("connect");
    let small = format!("select '{}'", "y".repeat(32 * 1024));
    client.simple_query(&small).await.expect("32 KiB query");
}

#[tokio::test]
async fn invalid_message_length_mid_session() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    raw.send(b"Q\0\0\0\x02").await;
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "08P01");
}

#[tokio::test]
async fn client_disconnecting_mid_copy_releases_the_backend() {
    use futures_util::SinkExt;
    let proxy = Proxy::start();
    proxy.add_user("copier", &["dba"]);
    crate::harness::db().sql("clinic", "CREATE TABLE IF NOT EXISTS copy_abort (n int)");
    let (client, conn) = proxy
        .connect_raw("copier", PASSWORD)
        .await
        .expect("connect");
    let conn_task = tokio::spawn(conn);
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY copy_abort FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .expect("send rows");
    // Vanish without CopyDone or Terminate.
    conn_task.abort();
    let _ = conn_task.await;
    drop(sink);
    drop(client);
    let db = crate::harness::db();
    eventually(
        Duration::from_secs(10),
        &format!("the upstream backend to go away; log:\n{}", proxy.log()),
        || {
            db.sql(
            "postgres",
            "select count(*) from pg_stat_activity where application_name like 'pgward:copier%'",
        ) == "0"
        },
    );
    assert_eq!(
        db.sql("clinic", "select count(*) from copy_abort"),
        "0",
        "copy rolled back"
    );
    // pgward is still serving.
    let client = proxy.connect("copier", PASSWORD).await.expect("reconnect");
    client.simple_query("select 1").await.expect("query");
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_thousand_connections_dropped_without_startup_leak_nothing() {
    // All from one address: lift the per-address login cap, which would
    // otherwise (rightly) close most of them before they count.
    let proxy = Proxy::with(Setup::default().set("sessions.max_startups_per_ip", "5000"));
    // Warm up allocator and runtime threads before taking the baseline.
    for _ in 0..50 {
        drop(tokio::net::TcpStream::connect(("127.0.0.1", proxy.port)).await);
    }
    eventually(Duration::from_secs(5), "warm-up sessions to end", || {
        proxy.metric("pgward_active_sessions") == 0.0
    });
    let pid = proxy.pid();
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);
    for _ in 0..1000 {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        drop(s);
    }
    eventually(
        Duration::from_secs(10),
        "all connections to be accepted",
        || proxy.metric("pgward_connections_total") >= 1050.0,
    );
    eventually(Duration::from_secs(10), "all sessions to end", || {
        proxy.metric("pgward_active_sessions") == 0.0
    });
    eventually(Duration::from_secs(5), "file descriptors to return", || {
        fd_count(pid) <= fds_before + 2
    });
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 4096,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Still serving.
    let mut raw = Raw::tls(&proxy).await;
    raw.send(&startup_packet(3 << 16, &[("user", "nobody-here")]))
        .await;
    let (tag, _) = raw.read().await.expect("auth request");
    assert_eq!(tag, b'R');
}

#[tokio::test]
async fn postgres_17_direct_tls_needs_alpn() {
    let proxy = Proxy::start();
    let mut raw = Raw::direct_tls(&proxy, true)
        .await
        .expect("direct TLS handshake");
    raw.send(&startup_packet(3 << 16, &[("user", "alice")]))
        .await;
    let (tag, body) = raw.read().await.expect("auth request");
    assert_eq!((tag, &body[..]), (b'R', &[0, 0, 0, 3][..]));
    // Without ALPN the connection is not accepted.
    if let Some(mut raw) = Raw::direct_tls(&proxy, false).await {
        raw.send(&startup_packet(3 << 16, &[("user", "alice")]))
            .await;
        assert!(raw.read().await.is_none());
    }
}

#[tokio::test]
async fn messages_before_an_oversized_one_are_still_delivered() {
    let proxy = Proxy::with(Setup::default().set("sessions.max_message_size", "64KiB"));
    proxy.add_user("alice", &["dba"]);
    let db = crate::harness::db();
    db.sql("clinic", "CREATE TABLE IF NOT EXISTS before_big (n int)");
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    let mut wire = query("insert into before_big values (99)");
    wire.extend(query(&format!("select '{}'", "x".repeat(100 * 1024))));
    raw.send(&wire).await;
    let frames = raw.until_ready().await;
    assert!(
        frames
            .iter()
            .any(|(t, b)| *t == b'C' && b.starts_with(b"INSERT 0 1")),
        "{frames:?}"
    );
    let err = raw.expect_fatal().await;
    assert_eq!(err.code, "54000");
    assert_eq!(
        db.sql("clinic", "select count(*) from before_big where n = 99"),
        "1"
    );
}

#[tokio::test]
async fn logins_in_progress_are_capped_per_address() {
    let proxy = Proxy::with(Setup::default().set("sessions.max_startups_per_ip", "3"));
    // The harness's readiness probe (one bare TCP connect) must have been
    // accepted and be gone, or it holds one of the three. The gauge alone is
    // 0 before pgward has even accepted it, so wait for the counter too.
    eventually(Duration::from_secs(10), "the probe to finish", || {
        proxy.metric("pgward_connections_total") >= 1.0
            && proxy.metric("pgward_active_sessions") == 0.0
    });
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(Raw::plain(&proxy).await);
    }
    // Under load the silent three may still be on their way in: keep
    // trying until a fourth is turned away (each attempt stays open too).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut extra = Raw::plain(&proxy).await;
        if extra.closed_within(Duration::from_millis(1000)).await {
            break;
        }
        silent.push(extra);
        assert!(
            std::time::Instant::now() < deadline,
            "a login beyond the cap from the same address is closed at once"
        );
    }
    assert!(proxy.metric("pgward_startups_refused_total") >= 1.0);
    assert!(
        silent.len() <= 3,
        "at most three held open: {}",
        silent.len()
    );
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.add_user("alice", &["dba"]);
    proxy.connect("alice", PASSWORD).await.expect("room again");
}
