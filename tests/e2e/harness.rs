//! The shared test harness: one throwaway PostgreSQL per test binary (started
//! with the same code as `pgward demo`), and a real `pgward serve` process per
//! test, configured by `pgward init` exactly as a user would.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgward::pgcluster::{free_port, Cluster, ClusterOptions};

pub const PGWARD: &str = env!("CARGO_BIN_EXE_pgward");
pub const PASSWORD: &str = "correct-horse-battery";

pub struct Db {
    pub cluster: Mutex<Option<Cluster>>,
    pub port: u16,
    pub password: String,
    /// CA that signed the database's own server certificate.
    pub ca: PathBuf,
    _certs: tempfile::TempDir,
}

static DB: OnceLock<Db> = OnceLock::new();

extern "C" fn stop_db() {
    if let Some(db) = DB.get() {
        if let Ok(mut guard) = db.cluster.lock() {
            guard.take();
        }
    }
}

/// The shared database: TLS on, a few accounts for the upstream
/// authentication methods, and the sample clinic data.
pub fn db() -> &'static Db {
    DB.get_or_init(|| {
        let certs = tempfile::tempdir().expect("tempdir");
        pgward::certs::write_ca_and_server(certs.path(), &["localhost", "127.0.0.1"])
            .expect("database certificates");
        let opts = ClusterOptions {
            max_connections: 300,
            ssl: Some((
                certs.path().join("server.crt"),
                certs.path().join("server.key"),
            )),
            hba: vec![
                "host all trust_user 127.0.0.1/32 trust".into(),
                "host all md5_user 127.0.0.1/32 md5".into(),
                "host all clear_user 127.0.0.1/32 password".into(),
            ],
            settings: vec![],
        };
        let cluster = Cluster::start(&opts).expect("start PostgreSQL");
        let setup = "SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
             RESET password_encryption;
             CREATE ROLE trust_user LOGIN;
             CREATE ROLE clear_user LOGIN PASSWORD 'clear-secret';
             CREATE DATABASE clinic;
             CREATE DATABASE other;";
        psql_ok(&cluster.conninfo("postgres"), setup);
        let clinic = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clinic.sql"),
        )
        .expect("clinic.sql");
        psql_ok(&cluster.conninfo("clinic"), &clinic);
        psql_ok(
            &cluster.conninfo("clinic"),
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO md5_user, trust_user;",
        );
        // SAFETY: registering a plain extern "C" function with no arguments.
        unsafe {
            nix::libc::atexit(stop_db);
        }
        Db {
            port: cluster.port,
            password: cluster.password.clone(),
            cluster: Mutex::new(Some(cluster)),
            ca: certs.path().join("ca.crt"),
            _certs: certs,
        }
    })
}

impl Db {
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}",
            self.password, self.port
        )
    }

    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={database} sslmode=disable",
            self.port, self.password
        )
    }

    /// Runs SQL directly against the database as the superuser; returns
    /// unaligned, tuples-only output.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        psql_ok(&self.conninfo(database), sql)
    }
}

pub fn psql(conninfo: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"])
        .args(args)
        .output()
        .expect("run psql")
}

pub fn psql_ok(conninfo: &str, sql: &str) -> String {
    // Through stdin, so several statements run one by one (with -c they
    // would share one transaction and CREATE DATABASE would refuse).
    let mut child = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write sql");
    let out = child.wait_with_output().expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sql
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

type ClientTls =
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream;

/// A running `pgward serve`, killed on drop.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    child: Option<Child>,
}

/// Settings to change in pgward.yaml before starting, as (dotted key, YAML value).
#[derive(Default)]
pub struct Setup {
    pub settings: Vec<(&'static str, String)>,
    pub upstream_url: Option<String>,
    pub extra_policy: Option<String>,
}

impl Setup {
    pub fn set(mut self, key: &'static str, value: impl Into<String>) -> Setup {
        self.settings.push((key, value.into()));
        self
    }

    pub fn policy(mut self, yaml: impl Into<String>) -> Setup {
        self.extra_policy = Some(yaml.into());
        self
    }

    pub fn upstream(mut self, url: impl Into<String>) -> Setup {
        self.upstream_url = Some(url.into());
        self
    }
}

pub fn pgward(args: &[&str]) -> Output {
    Command::new(PGWARD)
        .args(args)
        .output()
        .expect("run pgward")
}

fn set_yaml(root: &mut serde_yaml::Value, key: &str, value: &str) {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = &mut node[*part];
    }
    let parsed: serde_yaml::Value = serde_yaml::from_str(value).expect("yaml value");
    node[parts[parts.len() - 1]] = parsed;
}

impl Proxy {
    pub fn start() -> Proxy {
        Proxy::with(Setup::default())
    }

    pub fn with(setup: Setup) -> Proxy {
        let db = db();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let admin_port = free_port().expect("port");
        let url = setup.upstream_url.clone().unwrap_or_else(|| db.url());
        let out = pgward(&[
            "init",
            "--dir",
            dir.path().to_str().expect("utf8 path"),
            "--upstream",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("pgward.yaml");
        if !setup.settings.is_empty() {
            let text = std::fs::read_to_string(&config).expect("read config");
            let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("parse config");
            for (key, value) in &setup.settings {
                set_yaml(&mut yaml, key, value);
            }
            std::fs::write(&config, serde_yaml::to_string(&yaml).expect("yaml")).expect("write");
        }
        if let Some(policy) = &setup.extra_policy {
            std::fs::write(dir.path().join("policies/extra.yaml"), policy).expect("policy");
        }
        let mut proxy = Proxy {
            dir,
            config,
            port,
            admin_port,
            child: None,
        };
        proxy.spawn();
        proxy
    }

    /// Starts `pgward serve` (again, after a kill) on the same config.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(PGWARD)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "pgward=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgward serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while StdTcp::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("pgward exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgward did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgward.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Waits for the process to exit; returns whether it exited cleanly.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Some(status.success());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// A new database `dbname` filled by `pgbench -i -s 1` through pgward
    /// as `user`; returns the conninfo that reaches it.
    pub fn pgbench_database(&self, user: &str, dbname: &str) -> String {
        db().sql("postgres", &format!("CREATE DATABASE {dbname}"));
        let conn = self
            .conninfo(user, PASSWORD)
            .replace("dbname=clinic", &format!("dbname={dbname}"));
        let init = Command::new("pgbench")
            .args(["-i", "-s", "1", "-q"])
            .arg(&conn)
            .output()
            .expect("pgbench -i");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        conn
    }

    pub fn add_user(&self, name: &str, roles: &[&str]) {
        self.add_user_with(name, roles, &[]);
    }

    pub fn add_user_with(&self, name: &str, roles: &[&str], attrs: &[&str]) {
        let mut cmd = Command::new(PGWARD);
        cmd.args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&self.config);
        for r in roles {
            cmd.args(["--role", r]);
        }
        for a in attrs {
            cmd.args(["--attr", a]);
        }
        let mut child = cmd
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
            .expect("write password");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn user_cmd(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(PGWARD);
        cmd.arg("user").args(args).arg("--config").arg(&self.config);
        cmd.output().expect("pgward user")
    }

    /// libpq connection string for a person through pgward, TLS verified.
    pub fn conninfo(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=clinic sslmode=verify-full sslrootcert={}",
            self.port,
            self.ca().display()
        )
    }

    pub fn tls_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(self.ca()).expect("ca");
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).expect("add root");
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// A tokio-postgres client over TLS; the connection task is spawned.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.connect_raw(user, password).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub async fn connect_raw(
        &self,
        user: &str,
        password: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, ClientTls>,
        ),
        tokio_postgres::Error,
    > {
        self.connect_db(user, password, "clinic").await
    }

    /// [`Proxy::connect_raw`] to another database.
    pub async fn connect_db(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, ClientTls>,
        ),
        tokio_postgres::Error,
    > {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config());
        let cfg = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={dbname} sslmode=require",
            self.port
        );
        tokio_postgres::connect(&cfg, tls).await
    }

    /// GET a path from the admin listener.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = StdTcp::connect(("127.0.0.1", self.admin_port)).expect("admin port");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Waits until every audit event pgward has taken is stored: events
    /// are spooled before a client sees its statement complete and
    /// stored in the chain a few milliseconds later.
    pub fn audit_stored(&self) {
        eventually(Duration::from_secs(10), "audit events stored", || {
            let (_, body) = self.http_get("/metrics");
            body.lines().any(|l| l == "pgward_audit_events_waiting 0")
        });
    }

    /// Waits until exactly `n` client connections are open: a session
    /// leaves the count only after its end event is in the audit queue.
    pub fn sessions_open(&self, n: usize) {
        eventually(Duration::from_secs(10), "sessions to end", || {
            self.metric("pgward_active_sessions") == n as f64
        });
    }

    /// The value of a metric line such as `pgward_active_sessions`.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

/// Waits until `f` is true, or panics with `what` after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> String {
    err.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no code: {err}"))
}

/// Message of a tokio-postgres database error.
pub fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string())
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
