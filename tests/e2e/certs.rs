//! Client certificates: `pgward cert issue` writes a certificate and key
//! that psql and rustls clients log in with, no password asked; every bad
//! certificate gets a FATAL 28000 that says what is wrong with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::harness::{message, sqlstate, Proxy, Setup, PASSWORD, PGWARD};

const OPS_POLICY: &str = "roles:\n  ops:\n    unrestricted: true\n    upstream: {user: md5_user, password: md5-secret}\n    databases: [clinic]\n";

fn cert_cmd(proxy: &Proxy, args: &[&str]) -> Output {
    Command::new(PGWARD)
        .arg("cert")
        .args(args)
        .arg("--config")
        .arg(&proxy.config)
        .output()
        .expect("pgward cert")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A certificate and key on disk, as a client holds them.
struct Held {
    cert: PathBuf,
    key: PathBuf,
}

impl Held {
    fn in_dir(dir: &Path, name: &str) -> Held {
        Held {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    fn write(dir: &Path, name: &str, cert: &str, key: &str) -> Held {
        let held = Held::in_dir(dir, name);
        std::fs::write(&held.cert, cert).expect("write certificate");
        // libpq refuses a key others can read.
        pgward::certs::write_new(&held.key, key, 0o600).expect("write key");
        held
    }

    /// `pgward cert issue USER --ttl 8h` into `dir`.
    fn issue(proxy: &Proxy, dir: &Path, user: &str) -> Held {
        let out = cert_cmd(
            proxy,
            &[
                "issue",
                user,
                "--ttl",
                "8h",
                "--out",
                dir.to_str().expect("utf8"),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        Held::in_dir(dir, user)
    }

    fn serial(&self) -> String {
        let pem = std::fs::read(&self.cert).expect("certificate");
        let der = CertificateDer::from_pem_slice(&pem).expect("pem");
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("x509");
        hex::encode(x509.raw_serial())
    }

    /// libpq parameters: verify pgward, present this certificate.
    fn conninfo(&self, proxy: &Proxy, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=clinic sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            proxy.port,
            proxy.ca().display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// psql that may not ask for a password (`-w`, no PGPASSWORD).
    fn psql(&self, proxy: &Proxy, user: &str, sql: &str) -> Output {
        Command::new("psql")
            .arg(self.conninfo(proxy, user))
            .args(["-X", "-w", "-At", "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .output()
            .expect("psql")
    }

    /// tokio-postgres over rustls with this certificate, no password.
    async fn connect(
        &self,
        proxy: &Proxy,
        user: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(proxy.ca()).expect("ca");
        roots
            .add(CertificateDer::from_pem_slice(&ca).expect("ca pem"))
            .expect("root");
        let chain = vec![
            CertificateDer::from_pem_slice(&std::fs::read(&self.cert).expect("cert"))
                .expect("cert pem"),
        ];
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&self.key).expect("key"))
            .expect("key pem");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
        let cfg = format!(
            "host=127.0.0.1 port={} user={user} dbname=clinic sslmode=require",
            proxy.port
        );
        let (client, conn) =
            tokio_postgres::connect(&cfg, tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("whole seconds")
}

/// A client certificate for `user` signed by `issuer`, made here with rcgen
/// rather than by pgward: pgward never records it.
fn craft(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "pgward");
    params.distinguished_name.push(DnType::CommonName, user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// The proxy's own CA, read from its certs directory.
fn proxy_ca(proxy: &Proxy) -> Issuer<'static, KeyPair> {
    let read = |name: &str| {
        std::fs::read_to_string(proxy.dir.path().join("certs").join(name)).expect("CA file")
    };
    let key = KeyPair::from_pem(&read("ca.key")).expect("CA key");
    Issuer::from_ca_cert_pem(&read("ca.crt"), key).expect("CA")
}

/// A CA that has nothing to do with pgward.
fn stranger_ca() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "pgward CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Issuer::new(params, key)
}

/// Every JSON line of an export of `kind` events.
fn exported(proxy: &Proxy, kind: &str) -> Vec<serde_json::Value> {
    proxy.audit_stored();
    let out = Command::new(PGWARD)
        .args(["audit", "export", "--kind", kind, "--config"])
        .arg(&proxy.config)
        .output()
        .expect("pgward audit export");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn psql_logs_in_with_an_issued_certificate_and_no_password() {
    let proxy = Proxy::with(Setup::default().policy(OPS_POLICY));
    proxy.add_user("alice", &["dba", "ops"]);
    let wallet = tempfile::tempdir().expect("tempdir");
    let out = cert_cmd(
        &proxy,
        &[
            "issue",
            "alice",
            "--ttl",
            "8h",
            "--out",
            wallet.path().to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let held = Held::in_dir(wallet.path(), "alice");
    for expected in [
        format!("sslcert={}", held.cert.display()),
        format!("sslkey={}", held.key.display()),
        format!("sslrootcert={}", proxy.ca().display()),
        "sslmode=verify-full".to_string(),
    ] {
        assert!(printed.contains(&expected), "{expected} in {printed}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&held.key)
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = held.psql(&proxy, "alice", "select current_user");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
    // Picking a role works as with a password.
    let out = held.psql(&proxy, "alice+ops", "select current_user");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "md5_user");
    // Without the certificate, the same psql would need a password.
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=clinic sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
            proxy.port,
            proxy.ca().display()
        ))
        .args(["-X", "-w", "-At", "-c", "select 1"])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no password supplied"),
        "a password was needed: {}",
        text(&out)
    );
    assert_eq!(proxy.metric("pgward_logins_total{outcome=\"ok\"}"), 2.0);

    let serial = held.serial();
    let logins = exported(&proxy, "login");
    let ok: Vec<_> = logins.iter().filter(|e| e["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 2, "{logins:?}");
    for login in &ok {
        let cert = login["client_cert"].as_str().unwrap_or_default();
        assert!(cert.contains("CN=alice"), "{login}");
        assert!(cert.contains(&serial), "{login}");
        let detail = login["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(r#""second_factor":"certificate""#),
            "{login}"
        );
    }
    let issued = exported(&proxy, "admin")
        .into_iter()
        .find(|e| e["action"] == "cert.issue")
        .expect("cert.issue recorded");
    let detail = issued["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!(r#""serial":"{serial}""#)),
        "{detail}"
    );
    assert!(detail.contains(r#""user":"alice""#), "{detail}");
    assert!(detail.contains(r#""service":false"#), "{detail}");
    assert!(!detail.contains("PRIVATE KEY"), "{detail}");
}

#[tokio::test]
async fn tokio_postgres_logs_in_with_a_rustls_client_certificate() {
    let proxy = Proxy::start();
    proxy.add_user("bea", &["dba"]);
    let wallet = tempfile::tempdir().expect("tempdir");
    let held = Held::issue(&proxy, wallet.path(), "bea");
    let client = held
        .connect(&proxy, "bea")
        .await
        .expect("certificate login");
    let row = client
        .query_one(
            "select current_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert!(row.get::<_, String>(1).starts_with("pgward:bea"));
    // Passwords keep working beside certificates.
    proxy
        .connect("bea", PASSWORD)
        .await
        .expect("password login");
}

#[tokio::test]
async fn bad_certificates_are_refused_with_a_clear_message() {
    let proxy = Proxy::with(Setup::default().set("auth.max_failures", "2"));
    proxy.add_user("alice", &["dba"]);
    proxy.add_user("bob", &["dba"]);
    proxy.add_user("carl", &["dba"]);
    let wallet = tempfile::tempdir().expect("tempdir");
    let refused = |result: Result<tokio_postgres::Client, tokio_postgres::Error>| {
        let Err(err) = result else {
            panic!("a bad certificate logged in")
        };
        assert_eq!(sqlstate(&err), "28000", "{err}");
        message(&err)
    };

    // Expired: signed by pgward's CA, out of date.
    let expired_at = now() - Duration::days(1);
    let (cert, key) = craft(
        &proxy_ca(&proxy),
        "alice",
        expired_at - Duration::days(1),
        expired_at,
    );
    let expired = Held::write(wallet.path(), "expired", &cert, &key);
    let at = humantime::format_rfc3339_seconds(expired_at.into());
    assert_eq!(
        refused(expired.connect(&proxy, "alice").await),
        format!("pgward: client certificate for \"alice\" expired at {at}; issue a new one")
    );
    // psql shows the same FATAL.
    let out = expired.psql(&proxy, "alice", "select 1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "FATAL:  pgward: client certificate for \"alice\" expired at {at}"
        )),
        "{stderr}"
    );

    // From another CA (even one with the same name).
    let (cert, key) = craft(
        &stranger_ca(),
        "alice",
        now() - Duration::hours(1),
        now() + Duration::hours(1),
    );
    let stranger = Held::write(wallet.path(), "stranger", &cert, &key);
    assert_eq!(
        refused(stranger.connect(&proxy, "alice").await),
        "pgward: client certificate was not issued by pgward's CA"
    );

    // Signed with pgward's CA key but never issued by pgward.
    let (cert, key) = craft(
        &proxy_ca(&proxy),
        "alice",
        now() - Duration::hours(1),
        now() + Duration::hours(1),
    );
    let forged = Held::write(wallet.path(), "forged", &cert, &key);
    let msg = refused(forged.connect(&proxy, "alice").await);
    assert!(msg.contains("is not on record"), "{msg}");

    // Revoked.
    let alices = Held::issue(&proxy, wallet.path(), "alice");
    alices
        .connect(&proxy, "alice")
        .await
        .expect("before revocation");
    let serial = alices.serial();
    let out = cert_cmd(&proxy, &["revoke", &serial]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        refused(alices.connect(&proxy, "alice").await),
        format!(
            "pgward: client certificate {serial} was revoked; issue a new one, or connect without it"
        )
    );

    // Bob's certificate, Alice's name.
    let bobs = Held::issue(&proxy, wallet.path(), "bob");
    assert_eq!(
        refused(bobs.connect(&proxy, "alice").await),
        "pgward: certificate is for \"bob\", not \"alice\""
    );
    bobs.connect(&proxy, "bob+dba").await.expect("bob as bob");

    // A disabled account.
    let carls = Held::issue(&proxy, wallet.path(), "carl");
    assert!(proxy.user_cmd(&["disable", "carl"]).status.success());
    assert_eq!(
        refused(carls.connect(&proxy, "carl").await),
        "pgward: account \"carl\" is disabled"
    );

    for outcome in [
        "cert_expired",
        "cert_untrusted",
        "cert_revoked",
        "cert_mismatch",
    ] {
        assert!(
            proxy.metric(&format!("pgward_logins_total{{outcome=\"{outcome}\"}}")) >= 1.0,
            "{outcome}"
        );
    }
    // Six refused certificates for alice, and max_failures is 2: none of
    // them was a password failure.
    proxy
        .connect("alice", PASSWORD)
        .await
        .expect("not locked out by refused certificates");
    let logins = exported(&proxy, "login");
    let mismatch = logins
        .iter()
        .find(|e| e["outcome"] == "cert_mismatch")
        .expect("refusal recorded");
    assert!(
        mismatch["client_cert"]
            .as_str()
            .unwrap_or_default()
            .contains("CN=bob"),
        "{mismatch}"
    );
    assert_eq!(mismatch["sqlstate"], "28000");
}

#[tokio::test]
async fn a_locked_password_does_not_stop_a_valid_certificate() {
    let proxy = Proxy::with(Setup::default().set("auth.max_failures", "2"));
    proxy.add_user("dora", &["dba"]);
    let wallet = tempfile::tempdir().expect("tempdir");
    let held = Held::issue(&proxy, wallet.path(), "dora");
    for _ in 0..2 {
        let _ = proxy.connect("dora", "guess").await;
    }
    let err = proxy.connect("dora", PASSWORD).await.unwrap_err();
    assert!(message(&err).contains("locked"), "{}", message(&err));
    held.connect(&proxy, "dora")
        .await
        .expect("the certificate proves more than a guessed password");
    let err = proxy.connect("dora", PASSWORD).await.unwrap_err();
    assert!(
        message(&err).contains("locked"),
        "a certificate login does not lift the lockout"
    );
}

#[test]
fn issue_list_and_revoke_from_the_command_line() {
    let proxy = Proxy::start();
    proxy.add_user("erin", &["dba"]);
    proxy.add_user("robot", &["dba"]);
    let wallet = tempfile::tempdir().expect("tempdir");
    let out_dir = wallet.path().to_str().expect("utf8");
    let issue = |args: &[&str]| {
        let mut all = vec!["issue"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--out", out_dir]);
        cert_cmd(&proxy, &all)
    };

    let out = issue(&["erin", "--ttl", "13h"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("a person certificate may live at most 12h"),
        "{}",
        text(&out)
    );
    let out = issue(&["erin", "--ttl", "30days", "--service"]);
    assert!(
        text(&out).contains("\"erin\" is not a service account"),
        "{}",
        text(&out)
    );
    let out = issue(&["nobody", "--ttl", "1h"]);
    assert!(text(&out).contains("no user named"), "{}", text(&out));
    assert!(issue(&["erin", "--ttl", "1h"]).status.success());
    let out = issue(&["erin", "--ttl", "1h"]);
    assert!(
        text(&out).contains("already exists"),
        "never overwrites: {}",
        text(&out)
    );

    // Service accounts are marked by `user`; here straight in the store.
    let db = rusqlite::Connection::open(proxy.dir.path().join("pgward.db")).expect("store");
    db.execute("UPDATE users SET service = 1 WHERE name = 'robot'", [])
        .expect("mark service account");
    let out = issue(&["robot", "--ttl", "365days", "--service"]);
    assert!(out.status.success(), "{}", text(&out));

    let list = |args: &[&str]| {
        let mut all = vec!["list"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&cert_cmd(&proxy, &all).stdout).to_string()
    };
    let erin = Held::in_dir(wallet.path(), "erin").serial();
    let robot = Held::in_dir(wallet.path(), "robot").serial();
    let all = list(&[]);
    assert_eq!(all.lines().count(), 3, "{all}");
    let line = all.lines().find(|l| l.starts_with(&robot)).expect("robot");
    assert!(
        line.contains("service") && line.ends_with("active"),
        "{line}"
    );
    let only = list(&["--user", "erin"]);
    assert_eq!(only.lines().count(), 2, "{only}");

    // Serials are taken as printed, or with colons and capitals.
    let typed = erin
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).expect("hex"))
        .collect::<Vec<_>>()
        .join(":");
    let out = cert_cmd(&proxy, &["revoke", &typed]);
    assert!(out.status.success(), "{}", text(&out));
    let line = list(&["--user", "erin"]);
    assert!(line.trim_end().ends_with("revoked"), "{line}");
    let out = cert_cmd(&proxy, &["revoke", &erin]);
    assert!(text(&out).contains("already revoked"), "{}", text(&out));
    let out = cert_cmd(&proxy, &["revoke", "0123abcd"]);
    assert!(
        text(&out).contains("no certificate with serial"),
        "{}",
        text(&out)
    );

    let admin = exported(&proxy, "admin");
    let actions: Vec<&str> = admin.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "cert.issue").count(),
        2,
        "{actions:?}"
    );
    let revoke = admin
        .iter()
        .find(|e| e["action"] == "cert.revoke")
        .expect("cert.revoke");
    let detail = revoke["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&erin) && detail.contains("erin"),
        "{detail}"
    );
}
