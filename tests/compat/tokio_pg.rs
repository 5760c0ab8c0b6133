//! tokio-postgres through pgward over TLS: the extended protocol with
//! binary formats, end to end.
//!
//! Binary COPY is where a proxy that inspects or re-frames messages breaks
//! first (its rows are raw bytes, not text), and tokio-postgres runs COPY
//! through Parse/Bind/Execute rather than a simple query. So: binary COPY
//! out must give the bytes a direct connection gives, binary COPY in with
//! `BinaryCopyInWriter` must store exactly what was sent, and a ~100 MB
//! result streamed with `query_raw` must arrive whole (same row count,
//! byte count and checksum as directly) without pgward holding it in
//! memory. As the masked analyst, binary COPY out is masked and
//! row-filtered, and refused statements — simple or extended, COPY in or
//! DML — are ordinary 42501 errors after which the session goes on.

use std::time::{Duration, Instant};

use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::fixture::{direct, Compat, DATABASE};
use crate::harness::{db, message, rss_kib, sqlstate, PASSWORD};

/// `user` through pgward, on `compat`, over verified TLS.
async fn via(c: &Compat, user: &str) -> Client {
    let (client, conn) = c
        .proxy
        .connect_db(user, PASSWORD, DATABASE)
        .await
        .unwrap_or_else(|e| panic!("{user} through pgward: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The database itself, as postgres.
async fn straight() -> Client {
    let (client, conn) = tokio_postgres::connect(&direct().libpq(), NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The whole output of a COPY … TO STDOUT, as bytes.
async fn copy_out(client: &Client, sql: &str) -> Vec<u8> {
    let stream = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("copy data"));
    }
    out
}

const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0";

#[tokio::test]
async fn binary_copy_out_equals_direct_and_is_masked_for_the_analyst() {
    let c = Compat::start();
    let alice = via(&c, "alice").await;
    let direct = straight().await;
    for sql in [
        "COPY kinds TO STDOUT (FORMAT binary)",
        "COPY (SELECT * FROM kinds ORDER BY id) TO STDOUT (FORMAT binary)",
        "COPY patients TO STDOUT (FORMAT binary)",
    ] {
        let got = copy_out(&alice, sql).await;
        assert!(got.starts_with(BINARY_HEADER), "{sql}");
        assert!(got == copy_out(&direct, sql).await, "{sql}: bytes differ");
    }

    let ann = via(&c, "ann").await;
    let stream = ann
        .copy_out("COPY (SELECT id, clinic_id, ssn, email FROM patients ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .expect("copy out as ann");
    let rows = BinaryCopyOutStream::new(stream, &[Type::INT4, Type::INT4, Type::TEXT, Type::TEXT]);
    let rows: Vec<_> = rows.try_collect().await.expect("binary rows");
    let real = direct
        .query(
            "SELECT id, ssn, email FROM patients WHERE clinic_id = 1 ORDER BY id",
            &[],
        )
        .await
        .expect("real rows");
    assert_eq!(rows.len(), real.len(), "clinic 1's rows only");
    for (row, real) in rows.iter().zip(&real) {
        let ssn: &str = real.get(1);
        assert_eq!(row.get::<i32>(0), real.get::<_, i32>(0));
        assert_eq!(row.get::<i32>(1), 1);
        assert_eq!(
            row.get::<&str>(2),
            format!("*******{}", &ssn[ssn.len() - 4..])
        );
        assert_eq!(row.get::<&str>(3), "***@example.org");
    }
}

/// One generated row of `tp_copy`.
type Generated = (i32, Option<String>, Vec<u8>, f64, i64, bool, Vec<String>);

fn generated(i: i32) -> Generated {
    (
        i,
        (i % 7 != 0).then(|| format!("row {i} é ß ñ ÿ \u{1F600} \t\\ \"q\" '{}'", i * 3)),
        (0..(i % 300) as usize)
            .map(|b| (b * 7 + i as usize) as u8)
            .collect(),
        i as f64 / 3.0,
        i as i64 * -1_000_000_007,
        i % 2 == 0,
        vec![format!("t{i}"), String::new(), "NULL".into()],
    )
}

const TP_TYPES: &[Type] = &[
    Type::INT4,
    Type::TEXT,
    Type::BYTEA,
    Type::FLOAT8,
    Type::INT8,
    Type::BOOL,
    Type::TEXT_ARRAY,
];

#[tokio::test]
async fn binary_copy_in_stores_exactly_what_was_sent() {
    let c = Compat::start();
    db().sql(
        DATABASE,
        "CREATE TABLE tp_copy (id int4 PRIMARY KEY, t text, b bytea, f float8, n int8, \
         flag bool, tags text[]);
         GRANT SELECT ON tp_copy TO trust_user;",
    );
    let alice = via(&c, "alice").await;
    const ROWS: i32 = 20_000;
    let sink = alice
        .copy_in("COPY tp_copy FROM STDIN (FORMAT binary)")
        .await
        .expect("copy in");
    let writer = BinaryCopyInWriter::new(sink, TP_TYPES);
    pin_mut!(writer);
    for i in 1..=ROWS {
        let (id, t, b, f, n, flag, tags) = generated(i);
        writer
            .as_mut()
            .write(&[&id, &t, &b, &f, &n, &flag, &tags])
            .await
            .expect("write row");
    }
    assert_eq!(writer.finish().await.expect("finish"), ROWS as u64);

    // Read back directly, decoded, and compare with what was generated.
    let direct = straight().await;
    let stream = direct
        .copy_out("COPY (SELECT * FROM tp_copy ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .expect("copy out");
    let rows: Vec<_> = BinaryCopyOutStream::new(stream, TP_TYPES)
        .try_collect()
        .await
        .expect("rows");
    assert_eq!(rows.len(), ROWS as usize);
    for (i, row) in (1..=ROWS).zip(&rows) {
        let got: Generated = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
            row.get(6),
        );
        assert_eq!(got, generated(i));
    }
    // Text COPY in, too, through the same session.
    let sink = alice
        .copy_in("COPY tp_copy (id, t) FROM STDIN")
        .await
        .expect("text copy in");
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"900001\tcaf\xc3\xa9\n900002\t\\N\n",
    ))
    .await
    .expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);
    assert_eq!(
        db().sql(
            DATABASE,
            "SELECT coalesce(t, 'null') FROM tp_copy WHERE id > 900000 ORDER BY id"
        ),
        "café\nnull"
    );

    // The analyst may not load data; the session goes on.
    let ann = via(&c, "ann").await;
    let err = ann
        .copy_in::<_, bytes::Bytes>("COPY patients FROM STDIN (FORMAT binary)")
        .await
        .err()
        .expect("COPY FROM refused for ann");
    assert_eq!(sqlstate(&err), "42501");
    assert!(message(&err).contains("COPY"), "{}", message(&err));
    let n: i64 = ann
        .query_one("SELECT count(*) FROM patients", &[])
        .await
        .expect("session goes on")
        .get(0);
    assert!(n > 300 && n < 400, "clinic 1's patients: {n}");
}

/// Rows, bytes and a SHA-256 of a streamed result.
async fn digest(client: &Client, sql: &str) -> (u64, u64, Vec<u8>) {
    let stream = client
        .query_raw(sql, std::iter::empty::<&str>())
        .await
        .expect("query_raw");
    pin_mut!(stream);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut rows, mut bytes) = (0u64, 0u64);
    while let Some(row) = stream.next().await {
        let row = row.expect("row");
        let id: i32 = row.get(0);
        let text: &str = row.get(1);
        ctx.update(&id.to_be_bytes());
        ctx.update(text.as_bytes());
        rows += 1;
        bytes += text.len() as u64;
    }
    (rows, bytes, ctx.finish().as_ref().to_vec())
}

#[tokio::test]
async fn a_100_mb_result_streams_whole() {
    let c = Compat::start();
    // 100 000 rows of 1 KiB each.
    let sql = "SELECT i, repeat(md5(i::text), 32) || i FROM generate_series(1, 100000) AS i";
    let alice = via(&c, "alice").await;
    let pid = c.proxy.pid();
    let base = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let got = digest(&alice, sql).await;
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let want = digest(&straight().await, sql).await;
    assert_eq!(got.0, 100_000);
    assert!(got.1 > 100_000_000, "{} bytes", got.1);
    assert_eq!(got, want);
    let grew = peak.load(std::sync::atomic::Ordering::Relaxed) - base;
    eprintln!(
        "100 MB through pgward in {took:?}; pgward RSS {base} KiB, grew by {grew} KiB at most"
    );
    assert!(
        grew < 64 * 1024,
        "pgward grew by {grew} KiB while relaying 100 MB: it buffers results"
    );
}

/// The first error of a simple query, or the rows' first column.
async fn simple(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let msgs = client.simple_query(sql).await?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect())
}

#[tokio::test]
async fn refused_statements_are_42501_and_the_session_goes_on() {
    let c = Compat::start();
    let ann = via(&c, "ann").await;
    let mine = db().sql(
        DATABASE,
        "SELECT count(*) FROM patients WHERE clinic_id = 1",
    );

    // Simple protocol.
    for sql in ["DELETE FROM patients", "CREATE TABLE tp_evil (x int)"] {
        let err = simple(&ann, sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), "42501", "{sql}: {err}");
        assert!(
            message(&err).contains("is not allowed for role \"analyst\""),
            "{sql}: {}",
            message(&err)
        );
        assert_eq!(
            simple(&ann, "SELECT count(*) FROM patients")
                .await
                .expect("goes on"),
            vec![mine.clone()]
        );
    }

    // Extended protocol: refused at Parse, and with parameters.
    let err = ann
        .prepare("DELETE FROM visits WHERE id = $1")
        .await
        .expect_err("prepare DELETE");
    assert_eq!(sqlstate(&err), "42501", "{err}");
    let err = ann
        .execute(
            "UPDATE patients SET ssn = $1 WHERE id = $2",
            &[&"000-00-0000", &3i32],
        )
        .await
        .expect_err("UPDATE");
    assert_eq!(sqlstate(&err), "42501", "{err}");
    let row = ann
        .query_one("SELECT ssn, email FROM patients WHERE id = $1", &[&3i32])
        .await
        .expect("session goes on");
    let real = db().sql(DATABASE, "SELECT ssn FROM patients WHERE id = 3");
    assert_eq!(
        row.get::<_, &str>(0),
        format!("*******{}", &real[real.len() - 4..])
    );
    assert_eq!(row.get::<_, &str>(1), "***@example.org");

    // Inside a transaction the refusal is an error like any other: the
    // transaction is aborted, and after ROLLBACK the session goes on.
    ann.batch_execute("BEGIN").await.expect("begin");
    let err = ann
        .execute("DELETE FROM patients WHERE id = $1", &[&3i32])
        .await
        .expect_err("DELETE in a transaction");
    assert_eq!(sqlstate(&err), "42501");
    // As with any error, the database now refuses the rest of the
    // transaction: nothing before the refusal can be committed.
    let err = ann
        .query_one("SELECT 1", &[])
        .await
        .expect_err("transaction is aborted");
    assert_eq!(sqlstate(&err), "25P02", "{err}");
    ann.batch_execute("ROLLBACK").await.expect("rollback");
    let n: i64 = ann
        .query_one("SELECT count(*) FROM patients", &[])
        .await
        .expect("after rollback")
        .get(0);
    assert_eq!(n.to_string(), mine);
    assert_eq!(db().sql(DATABASE, "SELECT count(*) FROM patients"), "1000");
}
