//! What every client test shares: the `compat` database, a pgward with an
//! unrestricted person (`alice`, role `dba`) and a masked, row-filtered one
//! (`ann`, role `analyst`, clinic 1), how to reach each of them and the
//! database directly, and how to run a client program with a time limit.
//!
//! Client programs get where to connect from the standard libpq variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`,
//! `PGSSLROOTCERT`), so one program serves the direct and both proxied runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{db, psql_ok, Proxy, Setup, PASSWORD};

/// The database the suite uses.
pub const DATABASE: &str = "compat";

/// The masked, row-filtered role (the product brief's analyst).
pub const POLICY: &str = r#"
roles:
  analyst:
    upstream: { user: trust_user }
    databases: [compat, compat_bench_ann]
    statements: [read]
    tables:
      public.patients:
        columns:
          ssn:   { mask: partial, keep_last: 4 }
          name:  { mask: hash }
          email: { mask: email }
          dob:   { mask: year }
        rows: "clinic_id = {{ user.clinic_id }}"
      public.visits:
        deny_columns: [notes]
        rows: "clinic_id = {{ user.clinic_id }}"
      public.clinics: {}
      public.kinds: {}
      public.pgbench_accounts:
        columns:
          filler: { mask: redact }
        rows: "bid <= {{ user.clinic_id }}"
      public.pgbench_branches: {}
      public.pgbench_tellers: {}
      public.pgbench_history: {}
    listen: ["node_*"]
"#;

/// Objects beyond the clinic sample: types clients decode specially, a
/// view and a table to load into. Tests that need more create their own,
/// named after their client (`jdbc_batch`, `node_cursor`…).
const EXTRA: &str = "
CREATE TYPE mood AS ENUM ('calm', 'tense', 'elated');
CREATE TYPE address AS (street text, zip text);
CREATE TABLE kinds (
    id      integer PRIMARY KEY,
    m       mood,
    a       address,
    tags    text[],
    data    jsonb,
    amount  numeric(12,2),
    at      timestamptz,
    day     date,
    raw     bytea,
    uid     uuid,
    ratio   double precision,
    big     bigint,
    flag    boolean
);
INSERT INTO kinds
SELECT i,
       (ARRAY['calm','tense','elated']::mood[])[1 + i % 3],
       ROW('Main St ' || i, lpad(i::text, 5, '0'))::address,
       ARRAY['t' || i, 'u' || (i * 7 % 13)],
       jsonb_build_object('i', i, 'sq', i * i, 'name', 'k' || i),
       i * 12.34,
       timestamptz '2024-03-01 12:00:00+00' + i * interval '1 hour 7 minutes',
       date '2020-01-01' + i,
       decode(lpad(to_hex(i * 4099), 8, '0'), 'hex'),
       md5(i::text)::uuid,
       i / 7.0,
       i::bigint * 1000000007,
       i % 2 = 0
FROM generate_series(1, 200) AS i;
CREATE VIEW clinic_counts AS
    SELECT c.name AS clinic, count(*) AS patients
    FROM patients p JOIN clinics c ON c.id = p.clinic_id
    GROUP BY c.name;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO trust_user;
ANALYZE;
";

/// Creates the `compat` database once per test run.
pub fn compat_db() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| sample_db(DATABASE));
}

/// Creates database `name` with the same objects and rows as `compat`,
/// for a test that needs them to stay still while others add tables to
/// `compat` (a dump compared with a dump).
pub fn sample_db(name: &str) {
    db().sql("postgres", &format!("CREATE DATABASE {name}"));
    let clinic =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clinic.sql"))
            .expect("clinic.sql");
    psql_ok(&db().conninfo(name), &clinic);
    psql_ok(&db().conninfo(name), EXTRA);
}

/// Where a client connects, as libpq's variables say it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// `verify-full` through pgward, `disable` direct.
    pub sslmode: &'static str,
    /// pgward's CA certificate (PEM), when TLS is verified.
    pub ca: Option<PathBuf>,
}

impl Endpoint {
    /// The same, on another database.
    pub fn on(&self, database: &str) -> Endpoint {
        Endpoint {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// Sets the PG* variables on `cmd` (and clears any inherited ones).
    pub fn apply(&self, cmd: &mut Command) {
        for var in [
            "PGSERVICE",
            "PGSSLCERT",
            "PGSSLKEY",
            "PGOPTIONS",
            "PGAPPNAME",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.database)
            .env("PGSSLMODE", self.sslmode);
        match &self.ca {
            Some(ca) => cmd.env("PGSSLROOTCERT", ca),
            None => cmd.env_remove("PGSSLROOTCERT"),
        };
    }

    /// A libpq connection string.
    pub fn libpq(&self) -> String {
        let mut s = format!(
            "host={} port={} user={} password={} dbname={} sslmode={}",
            self.host, self.port, self.user, self.password, self.database, self.sslmode
        );
        if let Some(ca) = &self.ca {
            s.push_str(&format!(" sslrootcert={}", ca.display()));
        }
        s
    }
}

/// A running pgward with `alice` (unrestricted) and `ann` (masked).
pub struct Compat {
    pub proxy: Proxy,
}

impl Compat {
    pub fn start() -> Compat {
        Compat::with(Setup::default())
    }

    /// With settings of a test's own; the policy is always [`POLICY`].
    pub fn with(setup: Setup) -> Compat {
        compat_db();
        let proxy = Proxy::with(setup.policy(POLICY));
        proxy.add_user("alice", &["dba"]);
        proxy.add_user_with("ann", &["analyst"], &["clinic_id=1"]);
        Compat { proxy }
    }

    /// `alice` through pgward: every result must match [`direct`].
    pub fn unrestricted(&self) -> Endpoint {
        self.person("alice")
    }

    /// `ann` through pgward: masked columns, clinic 1's rows only.
    pub fn masked(&self) -> Endpoint {
        self.person("ann")
    }

    fn person(&self, user: &str) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port: self.proxy.port,
            user: user.into(),
            password: PASSWORD.into(),
            database: DATABASE.into(),
            sslmode: "verify-full",
            ca: Some(self.proxy.ca()),
        }
    }
}

/// The database itself, as the account behind the `dba` role.
pub fn direct() -> Endpoint {
    compat_db();
    let db = db();
    Endpoint {
        host: "127.0.0.1".into(),
        port: db.port,
        user: "postgres".into(),
        password: db.password.clone(),
        database: DATABASE.into(),
        sslmode: "disable",
        ca: None,
    }
}

/// The repository root (client programs live under `tests/clients/`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool the suite needs, or a panic saying how to install it.
pub fn tool(path: impl AsRef<Path>, what: &str) -> PathBuf {
    let path = path.as_ref();
    let path = if path.is_relative() {
        root().join(path)
    } else {
        path.to_path_buf()
    };
    assert!(
        path.exists(),
        "{what} is not installed ({} missing): run `bash tests/clients/setup.sh` once \
         (.ci/run does)",
        path.display()
    );
    path
}

/// Runs a client program against `ep`, killing it after `limit`; panics
/// with its output if it fails.
pub fn run_ok(mut cmd: Command, ep: &Endpoint, limit: Duration) -> String {
    let out = run(&mut cmd, ep, limit);
    assert!(
        out.status.success(),
        "{cmd:?} as {}@{}:{} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        ep.user,
        ep.host,
        ep.port,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a client program against `ep`, killing it after `limit`.
pub fn run(cmd: &mut Command, ep: &Endpoint, limit: Duration) -> Output {
    ep.apply(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain both pipes while waiting, so a chatty client never blocks.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n--- stderr\n{}",
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}
