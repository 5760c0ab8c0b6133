//! The second factor, end to end: `pgward user mfa enroll` prints what an
//! authenticator app scans, and people log in with `password:code` through
//! a real client. Codes are computed here with totp-rs from the printed
//! `otpauth://` URI, as an app would.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use totp_rs::TOTP;

use crate::harness::{message, sqlstate, Proxy, Setup, PASSWORD, PGWARD};

/// What `user mfa enroll` showed.
struct Enrolled {
    app: TOTP,
    recovery: Vec<String>,
}

impl Enrolled {
    /// The code an app shows `steps` time steps from now.
    fn code(&self, steps: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        self.app.generate((now + steps * 30) as u64)
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn enroll(proxy: &Proxy, name: &str) -> Enrolled {
    let out = proxy.user_cmd(&["mfa", "enroll", name]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let uri = stdout
        .split_whitespace()
        .find(|w| w.starts_with("otpauth://"))
        .expect("an otpauth URI");
    assert!(
        uri.starts_with(&format!("otpauth://totp/pgward:{name}?secret=")),
        "{uri}"
    );
    assert!(uri.contains("issuer=pgward"), "{uri}");
    assert!(
        stdout.contains('\u{2580}') || stdout.contains('\u{2584}'),
        "a QR code drawn with half blocks:\n{stdout}"
    );
    assert!(stdout.contains("shown once; store them safely"), "{stdout}");
    let app = TOTP::from_url(uri).expect("an app can read the URI");
    assert_eq!(app.issuer.as_deref(), Some("pgward"));
    assert_eq!(app.account_name, name);
    let recovery: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 14 && l.matches('-').count() == 2)
        .map(str::to_string)
        .collect();
    assert_eq!(recovery.len(), 10, "{stdout}");
    Enrolled { app, recovery }
}

/// The login events for `user`, from `pgward audit export` as JSON values.
fn login_events(proxy: &Proxy, user: &str) -> Vec<serde_json::Value> {
    proxy.audit_stored();
    let out = Command::new(PGWARD)
        .args(["audit", "export", "--format", "jsonl", "--kind", "login"])
        .args(["--user", user, "--config"])
        .arg(&proxy.config)
        .output()
        .expect("pgward audit export");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|v| v["kind"] == "login")
        .collect()
}

/// Every admin event's JSON, as exported.
fn admin_events(proxy: &Proxy) -> String {
    let out = Command::new(PGWARD)
        .args(["audit", "export", "--format", "jsonl", "--kind", "admin"])
        .arg("--config")
        .arg(&proxy.config)
        .output()
        .expect("pgward audit export");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn an_enrolled_person_logs_in_with_password_colon_code_and_each_code_works_once() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let alice = enroll(&proxy, "alice");

    // The password alone is right but not enough.
    let err = proxy.connect("alice", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert_eq!(
        message(&err),
        "pgward: user \"alice\" must add a second-factor code: append ':' and the 6-digit code from the authenticator app to the password"
    );

    // A wrong code is a failed login.
    let right = alice.code(0);
    let wrong = format!(
        "{:06}",
        (right.parse::<u32>().expect("digits") + 500_000) % 1_000_000
    );
    let err = proxy
        .connect("alice", &format!("{PASSWORD}:{wrong}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    assert_eq!(
        message(&err),
        "pgward: invalid or already used second-factor code for user \"alice\""
    );

    // The right code: in, and the database sees alice.
    let code = alice.code(0);
    let client = proxy
        .connect("alice", &format!("{PASSWORD}:{code}"))
        .await
        .expect("password:code logs in");
    let row = client
        .query_one("select current_setting('application_name')", &[])
        .await
        .expect("query");
    assert!(row.get::<_, String>(0).starts_with("pgward:alice"));

    // The very same code again, inside its window: refused.
    let err = proxy
        .connect("alice", &format!("{PASSWORD}:{code}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "replay: {}", message(&err));
    assert!(message(&err).contains("already used"), "{}", message(&err));

    // A code from three steps ago has expired.
    let old = alice.code(-3);
    let err = proxy
        .connect("alice", &format!("{PASSWORD}:{old}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "expired: {}", message(&err));

    // A recovery code works once, as typed from paper (any case).
    let recovery = alice.recovery[4].to_uppercase();
    proxy
        .connect("alice", &format!("{PASSWORD}:{recovery}"))
        .await
        .expect("a recovery code logs in");
    let err = proxy
        .connect("alice", &format!("{PASSWORD}:{recovery}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "{}", message(&err));

    // The trail says what happened, and which factor let her in.
    let logins = login_events(&proxy, "alice");
    let outcomes: Vec<&str> = logins
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        [
            "mfa_missing",
            "mfa_failed",
            "ok",
            "mfa_failed",
            "mfa_failed",
            "ok",
            "mfa_failed"
        ],
        "{logins:#?}"
    );
    let factors: Vec<serde_json::Value> = logins
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .map(|e| serde_json::from_str(e["detail"].as_str().expect("detail")).expect("json"))
        .collect();
    assert_eq!(factors[0]["second_factor"], "totp");
    assert_eq!(factors[1]["second_factor"], "recovery_code");
    assert_eq!(
        proxy.metric("pgward_logins_total{outcome=\"mfa_failed\"}"),
        4.0
    );
    assert_eq!(
        proxy.metric("pgward_logins_total{outcome=\"mfa_missing\"}"),
        1.0
    );

    // Enrolling again needs --force; nothing secret reaches the trail.
    let out = proxy.user_cmd(&["mfa", "enroll", "alice"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let admin = admin_events(&proxy);
    assert!(admin.contains("user.mfa_enroll"), "{admin}");
    let secret = alice.app.get_secret_base32();
    assert!(!admin.contains(&secret), "the secret is not in the trail");
    for code in &alice.recovery {
        assert!(
            !admin.contains(code.as_str()),
            "recovery codes are not in the trail"
        );
    }
    assert!(!proxy.log().contains(&secret));

    let list = proxy.user_cmd(&["list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    let line = list
        .lines()
        .find(|l| l.starts_with("alice"))
        .expect("listed");
    assert!(line.contains("enrolled"), "{line}");
}

#[tokio::test]
async fn a_required_second_factor_refuses_logins_until_one_is_enrolled() {
    let proxy = Proxy::start();
    proxy.add_user("bob", &["dba"]);
    let out = proxy.user_cmd(&["mfa", "require", "bob"]);
    assert!(out.status.success(), "{}", text(&out));

    // A wrong password still says nothing about the requirement.
    let err = proxy.connect("bob", "not-the-password").await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let err = proxy.connect("bob", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(
        message(&err).contains("ask an administrator to enroll you (pgward user mfa enroll bob)"),
        "{}",
        message(&err)
    );
    let list = proxy.user_cmd(&["list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    let line = list.lines().find(|l| l.starts_with("bob")).expect("listed");
    assert!(line.contains("required"), "{line}");

    let bob = enroll(&proxy, "bob");
    let code = bob.code(0);
    proxy
        .connect("bob", &format!("{PASSWORD}:{code}"))
        .await
        .expect("enrolled, the code lets him in");

    // A lost phone: reset, and he is refused again until re-enrolled.
    let out = proxy.user_cmd(&["mfa", "reset", "bob"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = proxy.connect("bob", PASSWORD).await.unwrap_err();
    assert!(
        message(&err).contains("pgward user mfa enroll bob"),
        "{}",
        message(&err)
    );
    let err = proxy
        .connect("bob", &format!("{PASSWORD}:{}", bob.recovery[0]))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01", "old recovery codes are gone");

    // Lifting the requirement lets the password alone in again.
    let out = proxy.user_cmd(&["mfa", "require", "bob", "--off"]);
    assert!(out.status.success(), "{}", text(&out));
    proxy.connect("bob", PASSWORD).await.expect("password only");

    let admin = admin_events(&proxy);
    for action in ["user.mfa_require", "user.mfa_enroll", "user.mfa_reset"] {
        assert!(admin.contains(action), "{action} in {admin}");
    }
    let outcomes: Vec<String> = login_events(&proxy, "bob")
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        outcomes.contains(&"mfa_not_enrolled".to_string()),
        "{outcomes:?}"
    );
}

const SECURE_POLICY: &str = "roles:\n  secure:\n    unrestricted: true\n    upstream: {user: trust_user}\n    databases: [clinic]\n    mfa: true\n";

#[tokio::test]
async fn a_role_that_needs_a_second_factor_takes_password_colon_code() {
    let proxy = Proxy::with(Setup::default().policy(SECURE_POLICY));
    proxy.add_user("carol", &["dba", "secure"]);
    // Without a factor enrolled, the password is enough for dba...
    proxy.connect("carol", PASSWORD).await.expect("dba");
    // ...but not for the role that asks for more.
    let err = proxy.connect("carol+secure", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(
        message(&err).contains("role \"secure\" requires a second factor"),
        "{}",
        message(&err)
    );

    let carol = enroll(&proxy, "carol");
    let code = carol.code(0);
    let client = proxy
        .connect("carol+secure", &format!("{PASSWORD}:{code}"))
        .await
        .expect("password:code reaches the role");
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "trust_user");
}

/// `pgward user add NAME --role dba --service`, password on stdin.
fn add_service_account(proxy: &Proxy, name: &str) {
    let mut child = Command::new(PGWARD)
        .args(["user", "add", name, "--role", "dba", "--service"])
        .args(["--password-stdin", "--config"])
        .arg(&proxy.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgward user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn the_global_requirement_spares_service_accounts() {
    let proxy = Proxy::with(Setup::default().set("auth.mfa_required", "true"));
    proxy.add_user("dave", &["dba"]);
    add_service_account(&proxy, "etl");

    let err = proxy.connect("dave", PASSWORD).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(
        message(&err).contains("pgward user mfa enroll dave"),
        "{}",
        message(&err)
    );
    proxy
        .connect("etl", PASSWORD)
        .await
        .expect("a service account needs no second factor");

    let list = proxy.user_cmd(&["list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    let dave = list.lines().find(|l| l.starts_with("dave")).expect("dave");
    let etl = list.lines().find(|l| l.starts_with("etl")).expect("etl");
    assert!(
        dave.contains("person") && dave.contains("required"),
        "{dave}"
    );
    assert!(
        etl.contains("service") && !etl.contains("required"),
        "{etl}"
    );
    let admin = admin_events(&proxy);
    assert!(admin.contains(r#"\"service\":true"#), "{admin}");
}

#[tokio::test]
async fn a_console_session_opened_with_a_code_issues_its_person_a_certificate() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let console = |password: String| {
        let proxy = &proxy;
        async move {
            let (client, conn) = proxy
                .connect_db("alice", &password, "pgward")
                .await
                .expect("console login");
            tokio::spawn(conn);
            client
        }
    };
    // A password alone does not mint a credential that outlives it.
    let plain = console(PASSWORD.to_string()).await;
    let err = plain.simple_query("ISSUE CERTIFICATE").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    assert!(
        message(&err).contains("password and TOTP code"),
        "{}",
        message(&err)
    );

    let enrolled = enroll(&proxy, "alice");
    let client = console(format!("{PASSWORD}:{}", enrolled.code(0))).await;
    let err = client
        .simple_query("ISSUE CERTIFICATE FOR '2 days'")
        .await
        .unwrap_err();
    assert!(message(&err).contains("12h"), "{}", message(&err));
    let messages = client
        .simple_query("ISSUE CERTIFICATE FOR '1h'")
        .await
        .expect("issued");
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let cert = row.get("certificate").expect("certificate");
    let key = row.get("private_key").expect("key");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let wallet = tempfile::tempdir().expect("tempdir");
    let cert_path = wallet.path().join("alice.crt");
    let key_path = wallet.path().join("alice.key");
    std::fs::write(&cert_path, cert).expect("write certificate");
    pgward::certs::write_new(&key_path, key, 0o600).expect("write key");
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=clinic sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            proxy.port,
            proxy.ca().display(),
            cert_path.display(),
            key_path.display()
        ))
        .args(["-X", "-w", "-At", "-c", "select current_user"])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
    proxy.audit_stored();
    assert!(admin_events(&proxy).contains("self_service"));
}
