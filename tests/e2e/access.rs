//! The access lifecycle end to end: time-boxed grants that end their
//! sessions, requests that need someone else's approval, break-glass and
//! its review, the admin console over the PostgreSQL protocol, and all of
//! it in the audit export.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use crate::harness::*;

const POLICY: &str = r#"roles:
  admin:
    unrestricted: true
    upstream: {user: md5_user, password: md5-secret}
    databases: [clinic]
    statements: [all]
    grant_only: { max: 1h, approvals: 1, approvers: [lead] }
    break_glass: { max: 30m, allowed: [oncall] }
  twokey:
    unrestricted: true
    upstream: {user: trust_user}
    databases: [clinic]
    grant_only: { max: 1h, approvals: 2, approvers: [lead], request_ttl: 3s }
  lead:
    upstream: {user: trust_user}
    databases: [clinic]
    statements: [read]
    console: [sessions, kill, review]
  oncall:
    upstream: {user: trust_user}
    databases: [clinic]
    statements: [read]
"#;

fn setup() -> Proxy {
    let proxy = Proxy::with(Setup::default().policy(POLICY));
    proxy.add_user("alice", &["oncall", "admin"]);
    proxy.add_user("bob", &["lead"]);
    proxy.add_user("carol", &["lead"]);
    proxy
}

fn cli(proxy: &Proxy, args: &[&str]) -> Output {
    Command::new(PGWARD)
        .args(args)
        .arg("--config")
        .arg(&proxy.config)
        .output()
        .expect("run pgward")
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first number after `word ` in `text`.
fn id_after(text: &str, word: &str) -> i64 {
    let at = text
        .find(&format!("{word} "))
        .unwrap_or_else(|| panic!("{word} in {text}"));
    text[at + word.len() + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{word} id in {text}"))
}

async fn console(proxy: &Proxy, user: &str) -> tokio_postgres::Client {
    let (client, conn) = proxy
        .connect_db(user, PASSWORD, "pgward")
        .await
        .expect("console login");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Rows of a console command as text.
async fn run(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = run(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    rows.first()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_default()
}

fn export(proxy: &Proxy) -> String {
    proxy.audit_stored();
    ok(&cli(proxy, &["audit", "export", "--format", "jsonl"]))
}

#[tokio::test]
async fn a_five_second_grant_lets_alice_in_and_ends_her_session_after_it_expires() {
    let proxy = setup();
    // Assigned but grant-only: no way in without a grant.
    let err = proxy.connect("alice+admin", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(
        message(&err).contains("only through a time-boxed grant"),
        "{}",
        message(&err)
    );
    // Longer than the role allows.
    let err = refused(&cli(
        &proxy,
        &[
            "grant", "add", "alice", "--role", "admin", "--for", "2h", "--reason", "test",
        ],
    ));
    assert!(
        err.contains("longer than role \"admin\" allows (1h at most)"),
        "{err}"
    );

    let out = ok(&cli(
        &proxy,
        &[
            "grant", "add", "alice", "--role", "admin", "--for", "5s", "--reason", "test",
        ],
    ));
    let grant = id_after(&out, "grant");
    let (client, conn) = proxy
        .connect_raw("alice+admin", PASSWORD)
        .await
        .expect("granted login");
    let conn = tokio::spawn(conn);
    let who: String = client
        .query_one("select current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(who, "md5_user");
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), conn)
        .await
        .expect("the session ends within seconds of the expiry")
        .expect("join");
    let err = ended.expect_err("ended with a FATAL");
    assert_eq!(sqlstate(&err), "57P01");
    assert!(
        message(&err).contains(&format!("grant {grant} expired")),
        "{}",
        message(&err)
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // And no new session after it.
    let err = proxy.connect("alice+admin", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");

    proxy.sessions_open(0);
    let trail = export(&proxy);
    assert!(trail.contains(r#""action":"grant.add""#), "{trail}");
    assert!(
        trail.contains(&format!(r#""via":"grant {grant}""#)),
        "{trail}"
    );
    assert!(trail.contains(r#""outcome":"grant_expired""#), "{trail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_grant_ends_its_session_in_the_middle_of_a_long_query() {
    let proxy = setup();
    let out = ok(&cli(
        &proxy,
        &[
            "grant", "add", "alice", "--role", "admin", "--for", "10m", "--reason", "x",
        ],
    ));
    let grant = id_after(&out, "grant");
    let client = proxy.connect("alice+admin", PASSWORD).await.expect("login");
    let sleeping = tokio::spawn(async move {
        client
            .simple_query("select pg_sleep(60) /* revoke-me */")
            .await
    });
    let db = db();
    eventually(Duration::from_secs(10), "the query to run", || {
        db.sql("clinic", "select count(*) from pg_stat_activity where query like '%revoke-me%' and pid <> pg_backend_pid()") == "1"
    });
    let started = Instant::now();
    ok(&cli(
        &proxy,
        &[
            "grant",
            "revoke",
            &grant.to_string(),
            "--reason",
            "done early",
        ],
    ));
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the query is interrupted within seconds")
        .expect("join")
        .expect_err("the session ended");
    assert!(
        message(&err).contains(&format!("grant {grant} was revoked")),
        "{}",
        message(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The database's statement was cancelled, not left running.
    eventually(Duration::from_secs(5), "the statement to be gone", || {
        db.sql("clinic", "select count(*) from pg_stat_activity where query like '%revoke-me%' and pid <> pg_backend_pid()") == "0"
    });
    let err = refused(&cli(&proxy, &["grant", "revoke", &grant.to_string()]));
    assert!(err.contains("already revoked"), "{err}");
}

#[tokio::test]
async fn a_request_needs_someone_elses_approval_from_an_approver() {
    let proxy = setup();
    let alice = console(&proxy, "alice").await;
    let bob = console(&proxy, "bob").await;
    // Too long, unknown role, no reason: refused with the rule.
    let err = run(&alice, "REQUEST ROLE admin FOR '3h' REASON 'x'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    assert!(message(&err).contains("1h at most"), "{}", message(&err));
    let err = run(&alice, "REQUEST ROLE nosuch FOR '1h' REASON 'x'")
        .await
        .unwrap_err();
    assert!(message(&err).contains("not defined"), "{}", message(&err));
    let err = run(&alice, "REQUEST ROLE admin FOR '1h'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42601");

    let said = one(
        &alice,
        "REQUEST ROLE admin FOR '10 min' REASON 'rebuild an index'",
    )
    .await;
    let id = id_after(&said, "request");
    // Nobody approves their own request.
    let err = run(&alice, &format!("APPROVE {id}")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert!(
        message(&err).contains("their own request"),
        "{}",
        message(&err)
    );
    // Carol sees it as an approver; bob approves.
    let carol = console(&proxy, "carol").await;
    let open = run(&carol, "SHOW REQUESTS").await.expect("show");
    assert!(
        open.iter()
            .any(|r| r[0] == id.to_string() && r[5] == "pending"),
        "{open:?}"
    );
    let said = one(&bob, &format!("APPROVE {id} NOTE 'ok'")).await;
    assert!(said.contains("approved: grant"), "{said}");
    let client = proxy
        .connect("alice+admin", PASSWORD)
        .await
        .expect("approved login");
    client.simple_query("select 1").await.expect("works");
    // Already decided.
    let err = run(&carol, &format!("DENY {id}")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    assert!(
        message(&err).contains("already approved"),
        "{}",
        message(&err)
    );

    // A denied request gives nothing.
    let said = one(&alice, "REQUEST ROLE admin FOR '10m' REASON 'again'").await;
    let denied = id_after(&said, "request");
    one(&bob, &format!("DENY {denied} NOTE 'no'")).await;
    let err = run(&carol, &format!("APPROVE {denied}")).await.unwrap_err();
    assert!(
        message(&err).contains("already denied"),
        "{}",
        message(&err)
    );

    // Two approvals from two different people.
    let said = one(&alice, "REQUEST ROLE twokey FOR '10m' REASON 'both keys'").await;
    let two = id_after(&said, "request");
    assert!(one(&bob, &format!("APPROVE {two}"))
        .await
        .contains("needs more approvals"));
    let err = run(&bob, &format!("APPROVE {two}")).await.unwrap_err();
    assert!(message(&err).contains("already voted"), "{}", message(&err));
    assert!(one(&carol, &format!("APPROVE {two}"))
        .await
        .contains("approved: grant"));
    proxy
        .connect("alice+twokey", PASSWORD)
        .await
        .expect("two keys turned");

    // A pending request expires (request_ttl 3s) and cannot be approved.
    let said = one(&alice, "REQUEST ROLE twokey FOR '10m' REASON 'late'").await;
    let late = id_after(&said, "request");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let err = run(&bob, &format!("APPROVE {late}")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    assert!(message(&err).contains("expired"), "{}", message(&err));

    // A person who is not an approver cannot decide.
    let said = one(&bob, "REQUEST ROLE admin FOR '5m' REASON 'bob too'").await;
    let bobs = id_after(&said, "request");
    let err = run(&alice, &format!("APPROVE {bobs}")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert!(
        message(&err).contains("may not decide requests"),
        "{}",
        message(&err)
    );

    let trail = export(&proxy);
    for action in [
        "request.create",
        "request.approve",
        "request.deny",
        "grant.add",
        "request.expire",
        "console.refused",
    ] {
        assert!(
            trail.contains(&format!(r#""action":"{action}""#)),
            "{action}: {trail}"
        );
    }
}

#[tokio::test]
async fn break_glass_is_immediate_alerted_and_reviewed_by_someone_else() {
    let proxy = setup();
    let alice = console(&proxy, "alice").await;
    let bob = console(&proxy, "bob").await;
    // Bob holds lead, not oncall: not entitled.
    let err = run(&bob, "BREAK GLASS ROLE admin REASON 'curious'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = run(&alice, "BREAK GLASS ROLE admin FOR '2h' REASON 'outage'")
        .await
        .unwrap_err();
    assert!(message(&err).contains("30m at most"), "{}", message(&err));
    let err = run(&alice, "BREAK GLASS ROLE admin REASON ''")
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("reason is required"),
        "{}",
        message(&err)
    );
    let said = one(
        &alice,
        "BREAK GLASS ROLE admin REASON 'database down at 3am'",
    )
    .await;
    let request = id_after(&said, "request");
    let client = proxy
        .connect("alice+admin", PASSWORD)
        .await
        .expect("break-glass login");
    client.simple_query("select 1").await.expect("works");
    let open = run(&bob, "SHOW REQUESTS").await.expect("show");
    assert!(
        open.iter()
            .any(|r| r[0] == request.to_string() && r[7] == "pending"),
        "{open:?}"
    );
    let err = run(&alice, &format!("REVIEW {request}")).await.unwrap_err();
    assert!(
        message(&err).contains("their own break-glass"),
        "{}",
        message(&err)
    );
    one(&bob, &format!("REVIEW {request} NOTE 'checked the ticket'")).await;
    let open = run(&bob, "SHOW REQUESTS").await.expect("show");
    assert!(
        !open.iter().any(|r| r[0] == request.to_string()),
        "{open:?}"
    );
    let trail = export(&proxy);
    assert!(
        trail.contains(r#""kind":"alert","#) && trail.contains(r#""action":"breakglass_activate""#),
        "{trail}"
    );
    assert!(trail.contains(r#""action":"breakglass.review""#), "{trail}");
    assert!(trail.contains(r#""via":"break-glass "#), "{trail}");
}

#[tokio::test]
async fn the_console_shows_sessions_and_kills_by_right() {
    let proxy = setup();
    let (victim, conn) = proxy.connect_raw("alice", PASSWORD).await.expect("login");
    let conn = tokio::spawn(conn);
    victim.simple_query("select 1").await.expect("works");
    let alice = console(&proxy, "alice").await;
    let bob = console(&proxy, "bob").await;
    // Alice sees only her own sessions; bob (sessions right) sees all.
    let mine = run(&alice, "SHOW SESSIONS").await.expect("show");
    assert!(mine.iter().all(|r| r[1] == "alice"), "{mine:?}");
    let all = run(&bob, "SHOW SESSIONS").await.expect("show");
    let target = all
        .iter()
        .find(|r| r[1] == "alice" && r[4] == "clinic")
        .unwrap_or_else(|| panic!("{all:?}"))[0]
        .clone();
    let bobs = all.iter().find(|r| r[1] == "bob").expect("bob's own")[0].clone();
    // Alice may not end bob's session.
    let err = run(&alice, &format!("KILL {bobs}")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = run(&bob, "KILL 999999").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    one(&bob, &format!("KILL {target}")).await;
    let err = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("ended at once")
        .expect("join")
        .expect_err("FATAL");
    assert_eq!(sqlstate(&err), "57P01");
    assert!(
        message(&err).contains("terminated by bob"),
        "{}",
        message(&err)
    );
    // Bad commands get a syntax error, extended protocol a clear refusal.
    let err = run(&alice, "DROP TABLE patients").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601");
    let err = alice.query("SHOW SESSIONS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    run(&alice, "HELP").await.expect("the console still works");
    // Alice's and bob's consoles remain.
    proxy.sessions_open(2);
    let trail = export(&proxy);
    assert!(trail.contains(r#""action":"session.kill""#), "{trail}");
    assert!(trail.contains(r#""outcome":"admin_kill""#), "{trail}");
}

#[tokio::test]
async fn the_access_report_lists_roles_grants_logins_mfa_and_unused_roles() {
    let proxy = setup();
    ok(&cli(
        &proxy,
        &[
            "grant", "add", "bob", "--role", "admin", "--for", "1h", "--reason", "audit",
        ],
    ));
    let out = proxy.user_cmd(&["mfa", "enroll", "carol"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Alice logs in as oncall; admin (assigned, grant-only) stays unused.
    proxy.connect("alice", PASSWORD).await.expect("login");
    proxy.audit_stored();
    let csv = ok(&cli(
        &proxy,
        &["access", "report", "--format", "csv", "--unused-days", "30"],
    ));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("user,status,kind,roles,active_grants,last_login,mfa,unused_30d")
    );
    let row = |user: &str| -> Vec<String> {
        csv.lines()
            .find(|l| l.starts_with(&format!("{user},")))
            .unwrap_or_else(|| panic!("{user} in {csv}"))
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let alice = row("alice");
    assert_eq!(alice[3], "oncall admin");
    assert_ne!(alice[5], "never");
    assert_eq!(alice[6], "none");
    assert_eq!(alice[7], "admin", "oncall was used, admin was not: {csv}");
    let bob = row("bob");
    assert!(bob[4].starts_with("admin until "), "{csv}");
    assert_eq!(bob[5], "never");
    assert_eq!(bob[7], "lead");
    assert_eq!(row("carol")[6], "enrolled");
    let json = ok(&cli(&proxy, &["access", "report", "--format", "json"]));
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(parsed.as_array().map(Vec::len), Some(3), "{json}");
    let trail = export(&proxy);
    assert!(trail.contains(r#""action":"access.report""#), "{trail}");
}
