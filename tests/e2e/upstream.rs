//! The database side: authentication methods, TLS modes, and a database that
//! is down or goes away.

use std::time::Duration;

use crate::harness::{db, message, sqlstate, Proxy, Setup, PASSWORD};

fn roles_policy() -> String {
    "roles:\n\
     \x20 via_md5:\n    unrestricted: true\n    upstream: {user: md5_user, password: md5-secret}\n\
     \x20 via_trust:\n    unrestricted: true\n    upstream: {user: trust_user}\n\
     \x20 bad_secret:\n    unrestricted: true\n    upstream: {user: md5_user, password: wrong}\n"
        .to_string()
}

async fn current_user_and_ssl(client: &tokio_postgres::Client) -> (String, bool) {
    let row = client
        .query_one(
            "select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn scram_md5_and_trust_accounts() {
    let proxy = Proxy::with(Setup::default().policy(roles_policy()));
    proxy.add_user("alice", &["dba", "via_md5", "via_trust", "bad_secret"]);
    // dba uses the superuser, whose password is SCRAM-SHA-256.
    let scram = proxy.connect("alice", PASSWORD).await.expect("scram");
    assert_eq!(
        current_user_and_ssl(&scram).await,
        ("postgres".into(), true)
    );
    let md5 = proxy.connect("alice+via_md5", PASSWORD).await.expect("md5");
    assert_eq!(current_user_and_ssl(&md5).await.0, "md5_user");
    let trust = proxy
        .connect("alice+via_trust", PASSWORD)
        .await
        .expect("trust");
    assert_eq!(current_user_and_ssl(&trust).await.0, "trust_user");
    let err = proxy
        .connect("alice+bad_secret", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "08004");
    assert!(
        message(&err).contains("rejected the account of role \"bad_secret\""),
        "{}",
        message(&err)
    );
    assert!(!message(&err).contains("wrong"), "no secrets in errors");
}

#[tokio::test]
async fn upstream_tls_modes() {
    let ca = db().ca.display().to_string();
    for (mode, ca_file, expect_ssl) in [
        ("disable", None, false),
        ("require", None, true),
        ("verify-full", Some(ca.clone()), true),
    ] {
        let mut setup = Setup::default().set("upstream.tls", mode);
        if let Some(ca) = &ca_file {
            setup = setup.set("upstream.ca_file", format!("'{ca}'"));
        }
        let proxy = Proxy::with(setup);
        proxy.add_user("alice", &["dba"]);
        let client = proxy
            .connect("alice", PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(current_user_and_ssl(&client).await.1, expect_ssl, "{mode}");
    }
    // verify-full against a CA that did not sign the database's certificate.
    let other = Proxy::start();
    let own_ca = other.ca().display().to_string();
    let proxy = Proxy::with(
        Setup::default()
            .set("upstream.tls", "verify-full")
            .set("upstream.ca_file", format!("'{own_ca}'")),
    );
    proxy.add_user("alice", &["dba"]);
    let err = proxy.connect("alice", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08001");
    assert!(message(&err).contains("TLS"), "{}", message(&err));
}

#[tokio::test]
async fn upstream_down_at_login() {
    let closed = pgward::pgcluster::free_port().unwrap();
    let proxy =
        Proxy::with(Setup::default().upstream(format!("postgres://postgres:x@127.0.0.1:{closed}")));
    proxy.add_user("alice", &["dba"]);
    for _ in 0..2 {
        let err = proxy.connect("alice", PASSWORD).await.unwrap_err();
        assert_eq!(sqlstate(&err), "08001");
        assert!(
            message(&err).contains("cannot connect to the database"),
            "{}",
            message(&err)
        );
    }
    assert_eq!(proxy.http_get("/healthz").0, 200, "pgward stays up");
}

#[tokio::test]
async fn upstream_killed_mid_query() {
    let proxy = Proxy::start();
    proxy.add_user("victim", &["dba"]);
    let client = proxy.connect("victim", PASSWORD).await.expect("login");
    let running = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    db().sql(
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'pgward:victim%'",
    );
    let err = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the client is told promptly")
        .unwrap()
        .unwrap_err();
    assert!(
        message(&err).contains("terminating connection") || err.is_closed(),
        "{err}"
    );
    crate::harness::eventually(Duration::from_secs(5), "session cleanup", || {
        proxy.metric("pgward_active_sessions") == 0.0
    });
    proxy
        .connect("victim", PASSWORD)
        .await
        .expect("pgward still serves");
}

#[tokio::test]
async fn cleartext_upstream_passwords_need_a_verified_server() {
    let policy = "roles:\n  via_clear:\n    unrestricted: true\n    upstream: {user: clear_user, password: clear-secret}\n";
    let proxy = Proxy::with(Setup::default().policy(policy));
    proxy.add_user("alice", &["via_clear"]);
    let err = proxy.connect("alice", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08004");
    assert!(
        message(&err).contains("cleartext password"),
        "{}",
        message(&err)
    );
    assert!(!message(&err).contains("clear-secret"));

    let ca = db().ca.display().to_string();
    let verified = Proxy::with(
        Setup::default()
            .policy(policy)
            .set("upstream.tls", "verify-full")
            .set("upstream.ca_file", format!("'{ca}'")),
    );
    verified.add_user("alice", &["via_clear"]);
    let client = verified
        .connect("alice", PASSWORD)
        .await
        .expect("verified TLS");
    assert_eq!(
        current_user_and_ssl(&client).await,
        ("clear_user".into(), true)
    );
}
