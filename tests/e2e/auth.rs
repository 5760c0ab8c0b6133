//! People log in as themselves: argon2id passwords, lockout, disabled
//! accounts, role choice.

use std::time::{Duration, Instant};

use crate::harness::{message, sqlstate, Proxy, Setup, PASSWORD};

#[tokio::test]
async fn right_password_logs_in_and_the_database_sees_the_person() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    let row = client
        .query_one(
            "select current_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(
        row.get::<_, String>(0),
        "postgres",
        "the role's upstream account"
    );
    assert!(
        row.get::<_, String>(1).starts_with("pgward:alice"),
        "application_name is tagged with the person"
    );
    assert_eq!(proxy.metric("pgward_logins_total{outcome=\"ok\"}"), 1.0);
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_identical() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let t = Instant::now();
    let wrong = proxy
        .connect("alice", "not-the-password")
        .await
        .unwrap_err();
    let wrong_time = t.elapsed();
    let t = Instant::now();
    let unknown = proxy
        .connect("mallory", "not-the-password")
        .await
        .unwrap_err();
    let unknown_time = t.elapsed();
    assert_eq!(sqlstate(&wrong), "28P01");
    assert_eq!(sqlstate(&unknown), "28P01");
    assert_eq!(
        message(&wrong).replace("alice", "?"),
        message(&unknown).replace("mallory", "?")
    );
    // Both pay for one argon2id verification: same timing class.
    let (fast, slow) = if wrong_time < unknown_time {
        (wrong_time, unknown_time)
    } else {
        (unknown_time, wrong_time)
    };
    assert!(
        fast.as_millis() >= 5,
        "a password check was made ({fast:?})"
    );
    assert!(
        slow < fast * 5 + Duration::from_millis(50),
        "{wrong_time:?} vs {unknown_time:?}"
    );
}

#[tokio::test]
async fn disabled_user_is_refused_after_the_password() {
    let proxy = Proxy::start();
    proxy.add_user("bob", &["dba"]);
    let out = proxy.user_cmd(&["disable", "bob"]);
    assert!(out.status.success());
    let err = proxy.connect("bob", "wrong-password").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "28P01",
        "no account state leaks without the password"
    );
    let err = proxy.connect("bob", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(message(&err).contains("disabled"), "{}", message(&err));
    assert!(proxy.user_cmd(&["enable", "bob"]).status.success());
    proxy.connect("bob", PASSWORD).await.expect("enabled again");
}

#[tokio::test]
async fn lockout_after_repeated_failures() {
    let proxy = Proxy::with(Setup::default().set("auth.max_failures", "3"));
    proxy.add_user("carol", &["dba"]);
    for _ in 0..2 {
        let err = proxy.connect("carol", "guess").await.unwrap_err();
        assert_eq!(sqlstate(&err), "28P01");
    }
    let err = proxy.connect("carol", "guess").await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    let err = proxy.connect("carol", PASSWORD).await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "28000",
        "locked even with the right password"
    );
    assert!(message(&err).contains("locked"), "{}", message(&err));
    // Unknown names lock the same way, so lockout reveals nothing.
    for _ in 0..3 {
        let _ = proxy.connect("ghost", "guess").await;
    }
    let err = proxy.connect("ghost", "guess").await.unwrap_err();
    assert!(message(&err).contains("locked"));
    assert!(proxy.metric("pgward_logins_total{outcome=\"locked\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_does_not_stall_running_sessions() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let client = proxy.connect("alice", PASSWORD).await.expect("login");
    // 60 wrong-password logins under distinct names (no lockout): each costs
    // an argon2id check, two at a time.
    let flood: Vec<_> = (0..60)
        .map(|i| {
            let tls = proxy.tls_config();
            let port = proxy.port;
            tokio::spawn(async move {
                let cfg = format!(
                    "host=127.0.0.1 port={port} user=flood{i} password=x dbname=clinic sslmode=require"
                );
                let _ = tokio_postgres::connect(&cfg, tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await;
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let flood_started = Instant::now();
    while flood.iter().any(|h| !h.is_finished()) {
        let t = Instant::now();
        client
            .simple_query("select 1")
            .await
            .expect("query during flood");
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flood_time = flood_started.elapsed();
    assert!(
        slowest < Duration::from_millis(500),
        "a running session waited {slowest:?} while {flood_time:?} of logins were hashed"
    );
    assert!(
        flood_time > slowest * 4,
        "the flood outlasted single queries ({flood_time:?})"
    );
    assert_eq!(
        proxy.metric("pgward_logins_total{outcome=\"bad_credentials\"}"),
        60.0
    );
}

#[tokio::test]
async fn psql_asking_for_a_password_is_not_a_failure() {
    // psql first connects without a password, hangs up when asked for one,
    // and reconnects. That must not count towards lockout.
    let proxy = Proxy::with(Setup::default().set("auth.max_failures", "2"));
    proxy.add_user("dave", &["dba"]);
    for _ in 0..3 {
        let out = crate::harness::psql(
            &format!(
                "host=127.0.0.1 port={} user=dave dbname=clinic sslmode=require",
                proxy.port
            ),
            &["-w", "-c", "select 1"],
        );
        assert!(!out.status.success());
    }
    proxy.connect("dave", PASSWORD).await.expect("not locked");
}

const OPS_POLICY: &str = "roles:\n  ops:\n    unrestricted: true\n    upstream: {user: md5_user, password: md5-secret}\n    databases: [clinic]\n  analyst:\n    upstream: {user: trust_user}\n    databases: [clinic]\n    statements: [read]\n";

#[tokio::test]
async fn a_person_picks_a_role_per_session() {
    let proxy = Proxy::with(Setup::default().policy(OPS_POLICY));
    proxy.add_user("erin", &["dba", "ops"]);
    let who = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one("select current_user::text", &[])
            .await
            .expect("query");
        row.get::<_, String>(0)
    };
    // Default: the first role.
    assert_eq!(
        who(proxy.connect("erin", PASSWORD).await.unwrap()).await,
        "postgres"
    );
    // In the user name, for BI tools with only user/password fields.
    assert_eq!(
        who(proxy.connect("erin+ops", PASSWORD).await.unwrap()).await,
        "md5_user"
    );
    // In libpq options, for psql.
    let out = crate::harness::psql(
        &format!(
            "{} options='-c pgward.role=ops'",
            proxy.conninfo("erin", PASSWORD)
        ),
        &["-c", "select current_user"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "md5_user");
    // A role the person does not have.
    proxy.add_user("frank", &["ops"]);
    let err = proxy.connect("frank+dba", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(
        message(&err).contains("may not use role \"dba\""),
        "{}",
        message(&err)
    );
    // A database the role may not use.
    let out = crate::harness::psql(
        &proxy
            .conninfo("frank", PASSWORD)
            .replace("dbname=clinic", "dbname=other"),
        &["-c", "select 1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("may not connect to database \"other\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn restricted_roles_log_in_and_see_only_their_policy() {
    let proxy = Proxy::with(Setup::default().policy(OPS_POLICY));
    proxy.add_user("gina", &["analyst"]);
    let client = proxy
        .connect("gina", PASSWORD)
        .await
        .expect("restricted login");
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .expect("session facts are open");
    assert_eq!(row.get::<_, String>(0), "trust_user");
    // Extended protocol: the Parse is refused, in its place in the pipeline.
    let err = client
        .query("select * from patients", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert!(
        message(&err).contains("relation \"patients\" is not in the policy of role \"analyst\""),
        "{}",
        message(&err)
    );
    // The session carries on.
    let row = client
        .query_one("select 1 + 1", &[])
        .await
        .expect("after refusal");
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[test]
fn user_management_commands() {
    let proxy = Proxy::start();
    proxy.add_user_with("hank", &["dba"], &["clinic_id=1", "team=er"]);
    let out = proxy.user_cmd(&["set-attr", "hank", "clinic_id=2", "--unset", "team"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = proxy.user_cmd(&["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("hank"))
        .expect("hank listed");
    assert!(
        line.contains("clinic_id=2") && !line.contains("team="),
        "{line}"
    );
    assert!(line.contains("active"));
    // Unknown role, duplicate user, short password: clear errors.
    let mut cmd = std::process::Command::new(crate::harness::PGWARD);
    let out = cmd
        .args([
            "user",
            "add",
            "ivy",
            "--role",
            "nope",
            "--password-stdin",
            "--config",
        ])
        .arg(&proxy.config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("role \"nope\" is not defined"));
    let out = proxy.user_cmd(&["disable", "nobody-by-that-name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named"));
}
