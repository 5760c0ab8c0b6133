//! After login pgward is indistinguishable from the database: every part of
//! the protocol is relayed intact.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::AsyncMessage;

use crate::harness::{db, sqlstate, Proxy, PASSWORD};
use crate::raw::{errors, message, query, Raw};

async fn proxy_with_alice() -> Proxy {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    proxy
}

#[tokio::test]
async fn simple_extended_and_pipelined_queries() {
    let proxy = proxy_with_alice().await;
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    let rows = client
        .simple_query("select 1; select 'two'")
        .await
        .expect("simple");
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        2
    );

    let stmt = client
        .prepare("select name from patients where id = $1")
        .await
        .expect("prepare");
    let row = client.query_one(&stmt, &[&7i32]).await.expect("execute");
    let direct = db().sql("clinic", "select name from patients where id = 7");
    assert_eq!(row.get::<_, String>(0), direct);

    // tokio-postgres pipelines concurrent queries on one connection; an
    // error in the middle leaves the others intact.
    let (a, b, c) = tokio::join!(
        client.query_one("select count(*) from patients", &[]),
        client.query_one("select 1/0", &[]),
        client.query_one("select count(*) from visits", &[]),
    );
    assert_eq!(a.expect("a").get::<_, i64>(0), 1000);
    assert_eq!(sqlstate(&b.unwrap_err()), "22012");
    assert_eq!(c.expect("c").get::<_, i64>(0), 3000);
    assert!(proxy.metric("pgward_statements_total") >= 5.0);
}

#[tokio::test]
async fn copy_in_and_out_round_trip() {
    let proxy = proxy_with_alice().await;
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    client
        .simple_query("create temp table t (id int, note text)")
        .await
        .expect("create");
    let mut data = Vec::new();
    for i in 0..20_000 {
        data.extend_from_slice(format!("{i}\tnote \\\\ {i}\n").as_bytes());
    }
    let sink = client.copy_in("copy t from stdin").await.expect("copy in");
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(7000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("send");
    }
    assert_eq!(sink.finish().await.expect("finish"), 20_000);
    let out: Vec<bytes::Bytes> = client
        .copy_out("copy t to stdout")
        .await
        .expect("copy out")
        .try_collect()
        .await
        .expect("collect");
    assert_eq!(out.concat(), data);

    // Binary COPY too.
    let bin: Vec<bytes::Bytes> = client
        .copy_out("copy (select id from t where id < 3) to stdout (format binary)")
        .await
        .expect("binary copy")
        .try_collect()
        .await
        .expect("collect");
    assert!(bin.concat().starts_with(b"PGCOPY\n\xff\r\n\0"));
}

#[tokio::test]
async fn listen_notify_and_notices_are_delivered() {
    let proxy = proxy_with_alice().await;
    let (listener, mut conn) = proxy.connect_raw("alice", PASSWORD).await.expect("login");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            let _ = tx.send(msg);
        }
    });
    listener.batch_execute("LISTEN ward").await.expect("listen");
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .expect("notice");
    let notifier = proxy
        .connect("alice", PASSWORD)
        .await
        .expect("second login");
    notifier
        .batch_execute("NOTIFY ward, 'payload ü'")
        .await
        .expect("notify");
    let mut notice = None;
    let mut notification = None;
    while notice.is_none() || notification.is_none() {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => notice = Some(n.message().to_string()),
            Ok(Some(AsyncMessage::Notification(n))) => {
                notification = Some((n.channel().to_string(), n.payload().to_string()))
            }
            Ok(Some(_)) => {}
            _ => panic!("missing notice {notice:?} or notification {notification:?}"),
        }
    }
    assert_eq!(notice.as_deref(), Some("hello from plpgsql"));
    assert_eq!(notification, Some(("ward".into(), "payload ü".into())));
}

#[tokio::test]
async fn parameter_status_changes_reach_the_client() {
    let proxy = proxy_with_alice().await;
    let (mut raw, startup) = Raw::login(&proxy, "alice", PASSWORD).await;
    let has_param = |frames: &[(u8, Vec<u8>)], name: &[u8]| {
        frames
            .iter()
            .any(|(t, b)| *t == b'S' && b.starts_with(name))
    };
    assert!(has_param(&startup, b"server_version\0"));
    assert!(has_param(&startup, b"client_encoding\0"));
    raw.send(&query("SET DateStyle TO 'German'")).await;
    let frames = raw.until_ready().await;
    assert!(
        frames
            .iter()
            .any(|(t, b)| *t == b'S' && b.starts_with(b"DateStyle\0German")),
        "{frames:?}"
    );
}

#[tokio::test]
async fn fast_path_function_call_is_relayed_intact() {
    let proxy = proxy_with_alice().await;
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    raw.send(&query("select 'int4pl'::regproc::oid")).await;
    let frames = raw.until_ready().await;
    let (_, row) = frames.iter().find(|(t, _)| *t == b'D').expect("oid row");
    let oid: u32 = std::str::from_utf8(&row[6..]).unwrap().parse().unwrap();
    // FunctionCall int4pl(40, 2) with binary arguments and result.
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0, 1]); // one format code: binary
    body.extend_from_slice(&[0, 2]); // two arguments
    for v in [40i32, 2] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&[0, 1]); // binary result
    raw.send(&message(b'F', &body)).await;
    let frames = raw.until_ready().await;
    let (tag, value) = &frames[0];
    assert_eq!(*tag, b'V', "FunctionCallResponse");
    assert_eq!(&value[..], &[0, 0, 0, 4, 0, 0, 0, 42]);
    assert!(errors(&frames).is_empty());
}

#[tokio::test]
async fn large_values_and_results_stream_through() {
    let proxy = proxy_with_alice().await;
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    // One 20 MB value: larger than any relay buffer.
    let row = client
        .query_one("select repeat('x', 20000000) || 'end'", &[])
        .await
        .expect("big row");
    let value: String = row.get(0);
    assert_eq!(value.len(), 20_000_003);
    assert!(value.ends_with("xend"));
    // Many rows.
    let rows = client
        .query(
            "select g, md5(g::text) from generate_series(1, 200000) g",
            &[],
        )
        .await
        .expect("many rows");
    assert_eq!(rows.len(), 200_000);
    // A big parameter, client to server.
    let param = "p".repeat(5_000_000);
    let row = client
        .query_one("select length($1::text)", &[&param])
        .await
        .expect("big bind");
    assert_eq!(row.get::<_, i32>(0), 5_000_000);
}

#[test]
fn latin1_bytes_round_trip_unchanged() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let mut child = std::process::Command::new("psql")
        .arg(proxy.conninfo("alice", PASSWORD))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .env("PGCLIENTENCODING", "LATIN1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    use std::io::Write;
    // "café Zürich" in LATIN1: é = 0xE9, ü = 0xFC.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"select 'caf\xe9 Z\xfcrich', length('caf\xe9'), octet_length(convert_to('\xe9', 'UTF8'));\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"caf\xe9 Z\xfcrich|4|2\n");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_not_buffered_for() {
    let proxy = proxy_with_alice().await;
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    let before = crate::harness::rss_kib(proxy.pid());
    // About 2 GB of rows, and the client never reads them.
    raw.send(&query(
        "select repeat('x', 1000) from generate_series(1, 2000000)",
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = crate::harness::rss_kib(proxy.pid());
    assert!(
        during < before + 16 * 1024,
        "pgward buffered for a stalled client: {before} KiB -> {during} KiB"
    );
    drop(raw);
    crate::harness::eventually(Duration::from_secs(10), "the session to end", || {
        proxy.metric("pgward_active_sessions") == 0.0
    });
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_answers() {
    let proxy = proxy_with_alice().await;
    let (mut raw, _) = Raw::login(&proxy, "alice", PASSWORD).await;
    raw.send(&query("select pg_sleep(0.3), 'answer'")).await;
    use tokio::io::AsyncWriteExt;
    raw.io.shutdown().await.expect("close our side");
    let frames = raw.until_ready().await;
    assert!(
        frames
            .iter()
            .any(|(t, b)| *t == b'D' && b.ends_with(b"answer")),
        "{frames:?}"
    );
}

#[tokio::test]
async fn application_name_cannot_be_overridden_by_case() {
    let proxy = proxy_with_alice().await;
    let (mut raw, _) = Raw::login_with(
        &proxy,
        &[
            ("user", "alice"),
            ("database", "clinic"),
            ("Application_Name", "pgward:bob"),
        ],
        PASSWORD,
    )
    .await;
    raw.send(&query("select current_setting('application_name')"))
        .await;
    let frames = raw.until_ready().await;
    let (_, row) = frames.iter().find(|(t, _)| *t == b'D').expect("row");
    let value = String::from_utf8_lossy(&row[6..]).to_string();
    assert_eq!(value, "pgward:alice");
}
