//! A throwaway PostgreSQL cluster: find the server binaries, `initdb` into a
//! temporary directory, start on a free loopback port, remove it all on drop.
//!
//! `pgward demo` and the test harness share this code, so the demo is
//! exercised by every test run. initdb refuses to run as root; when pgward
//! runs as root the cluster is created and run as the unprivileged `nobody`
//! account instead.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or in \
         /usr/lib/postgresql/*/bin.\n  Debian/Ubuntu: sudo apt-get install postgresql\n  \
         Fedora/RHEL:   sudo dnf install postgresql-server\n  macOS:         brew install postgresql@16\n\
         or put the directory holding initdb on PATH."
    )]
    NotInstalled,
    #[error("{step} failed: {message}")]
    Step { step: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn step(step: &str, message: impl Into<String>) -> ClusterError {
    ClusterError::Step {
        step: step.to_string(),
        message: message.into(),
    }
}

/// A directory holding initdb, pg_ctl and postgres.
#[derive(Clone, Debug)]
pub struct PgBin {
    pub dir: PathBuf,
}

const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

impl PgBin {
    /// PATH first, then the newest `/usr/lib/postgresql/N/bin`.
    pub fn find() -> Result<PgBin, ClusterError> {
        let complete = |dir: &Path| SERVER_TOOLS.iter().all(|t| dir.join(t).is_file());
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let initdb = dir.join("initdb");
                if initdb.is_file() {
                    // /usr/local/bin/initdb may be a symlink into the real
                    // bin directory, which also holds postgres.
                    let real = std::fs::canonicalize(&initdb)?;
                    if let Some(real_dir) = real.parent().filter(|d| complete(d)) {
                        return Ok(PgBin {
                            dir: real_dir.to_path_buf(),
                        });
                    }
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, dir)| complete(dir))
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, dir)| PgBin { dir })
            .ok_or(ClusterError::NotInstalled)
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// How to set up the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub max_connections: u32,
    /// Server certificate and key to enable TLS with.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// pg_hba.conf lines placed before the default password rules.
    pub hba: Vec<String>,
    /// Extra postgresql.conf settings.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 100,
            ssl: None,
            hba: Vec::new(),
            settings: Vec::new(),
        }
    }
}

/// A running cluster. Stopped and deleted on drop.
pub struct Cluster {
    root: tempfile::TempDir,
    bin: PgBin,
    owner: Option<(u32, u32)>,
    pub port: u16,
    pub superuser: String,
    pub password: String,
    running: bool,
}

/// A free TCP port on loopback (free now; the caller binds it soon).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unprivileged_owner() -> Result<Option<(u32, u32)>, ClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("nobody")
        .map_err(|e| step("looking up user nobody", e.to_string()))?
        .ok_or_else(|| {
            step(
                "running PostgreSQL as root",
                "initdb refuses root and there is no 'nobody' account to run it as",
            )
        })?;
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

impl Cluster {
    pub fn start(opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin = PgBin::find()?;
        let owner = unprivileged_owner()?;
        let root = tempfile::Builder::new().prefix("pgward-pg-").tempdir()?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))?;
        let password = format!("pg-{:016x}", rand::random::<u64>());
        let pwfile = root.path().join("pwfile");
        std::fs::write(&pwfile, &password)?;
        let mut cluster = Cluster {
            root,
            bin,
            owner,
            port: free_port()?,
            superuser: "postgres".into(),
            password,
            running: false,
        };
        if let Some((uid, gid)) = owner {
            let chown = |p: &Path| nix::unistd::chown(p, Some(uid.into()), Some(gid.into()));
            chown(cluster.root.path()).map_err(|e| step("chown", e.to_string()))?;
            chown(&pwfile).map_err(|e| step("chown", e.to_string()))?;
        }
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            Command::new(cluster.bin.tool("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
        )?;
        std::fs::remove_file(&pwfile)?;
        cluster.configure(opts)?;
        cluster.run(
            "pg_ctl start",
            Command::new(cluster.bin.tool("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.log_path())
                .args(["-w", "-t", "60", "start"]),
        )?;
        cluster.running = true;
        Ok(cluster)
    }

    fn configure(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let mut conf = String::from("\n# added by pgward\n");
        let socket_dir = self.root.path().display().to_string();
        let mut settings: Vec<(String, String)> = vec![
            ("port".into(), self.port.to_string()),
            ("listen_addresses".into(), "'127.0.0.1'".into()),
            ("unix_socket_directories".into(), format!("'{socket_dir}'")),
            ("max_connections".into(), opts.max_connections.to_string()),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("password_encryption".into(), "'scram-sha-256'".into()),
        ];
        if let Some((cert, key)) = &opts.ssl {
            let own_cert = self.root.path().join("server.crt");
            let own_key = self.root.path().join("server.key");
            std::fs::copy(cert, &own_cert)?;
            std::fs::copy(key, &own_key)?;
            std::fs::set_permissions(&own_key, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.owner {
                for p in [&own_cert, &own_key] {
                    nix::unistd::chown(p.as_path(), Some(uid.into()), Some(gid.into()))
                        .map_err(|e| step("chown", e.to_string()))?;
                }
            }
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), format!("'{}'", own_cert.display())));
            settings.push(("ssl_key_file".into(), format!("'{}'", own_key.display())));
        }
        settings.extend(opts.settings.iter().cloned());
        for (k, v) in settings {
            let _ = writeln!(conf, "{k} = {v}");
        }
        append(&data.join("postgresql.conf"), &conf)?;
        let mut hba = String::from("local all all trust\n");
        for line in &opts.hba {
            let _ = writeln!(hba, "{line}");
        }
        hba.push_str(
            "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
        );
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.root.path());
        let out = cmd.output().map_err(|e| step(what, e.to_string()))?;
        if !out.status.success() {
            let mut message = String::from_utf8_lossy(&out.stderr).into_owned();
            message.push_str(&String::from_utf8_lossy(&out.stdout));
            if let Ok(log) = std::fs::read_to_string(self.log_path()) {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                message.push_str("\nserver log:\n");
                message.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            return Err(step(what, message.trim().to_string()));
        }
        Ok(out)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}",
            self.superuser, self.password, self.port
        )
    }

    /// A libpq connection string for the superuser over TCP.
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={database}",
            self.port, self.superuser, self.password
        )
    }

    /// Reloads the server configuration (after `ALTER SYSTEM`, pg_hba edits).
    pub fn reload(&self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl reload",
            Command::new(self.bin.tool("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("reload"),
        )
        .map(drop)
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = self.run(
                "pg_ctl stop",
                Command::new(self.bin.tool("pg_ctl"))
                    .arg("-D")
                    .arg(self.data_dir())
                    .args(["-m", "immediate", "-w", "stop"]),
            );
            self.running = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())
}
