//! `pgward init`: a complete, working config directory in one command.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::certs;
use crate::net::tls::UpstreamTlsMode;
use crate::store::SqliteStore;
use crate::upstream::PgUrl;

#[derive(Args)]
pub struct InitArgs {
    /// Directory to create (or an empty one to fill).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The database to protect: postgres://USER:PASSWORD@HOST:PORT. USER
    /// becomes the upstream account of the `dba` role.
    #[arg(long)]
    upstream: String,
    /// Address clients connect to.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
    /// Address for /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:9187")]
    admin_listen: SocketAddr,
    /// Read the upstream password from this environment variable at run
    /// time instead of storing it in a file.
    #[arg(long)]
    upstream_password_env: Option<String>,
    /// TLS towards the database: disable, prefer, require, verify-full.
    #[arg(long, default_value = "prefer", value_parser = parse_tls_mode)]
    upstream_tls: UpstreamTlsMode,
    /// CA certificate for verify-full.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
}

fn parse_tls_mode(s: &str) -> Result<UpstreamTlsMode, String> {
    serde_yaml::from_str(s)
        .map_err(|_| format!("unknown TLS mode {s:?}: use disable, prefer, require or verify-full"))
}

/// Everything `init` needs, for callers other than the command line (the demo).
pub struct InitOptions {
    pub dir: PathBuf,
    pub upstream: PgUrl,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub upstream_password_env: Option<String>,
    pub upstream_tls: UpstreamTlsMode,
    pub upstream_ca: Option<PathBuf>,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let upstream = PgUrl::parse(&args.upstream)?;
    let opts = InitOptions {
        dir: args.dir,
        upstream,
        listen: args.listen,
        admin_listen: Some(args.admin_listen),
        upstream_password_env: args.upstream_password_env,
        upstream_tls: args.upstream_tls,
        upstream_ca: args.upstream_ca,
    };
    let config = init(&opts)?;
    println!("created {}", config.display());
    println!("next:");
    println!(
        "  pgward user add alice --role dba --password-stdin --config {}",
        config.display()
    );
    println!("  pgward serve --config {}", config.display());
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn yaml_str(s: &str) -> String {
    // serde_yaml quotes whatever needs quoting; strip its trailing newline.
    serde_yaml::to_string(s)
        .map(|y| y.trim_end().to_string())
        .unwrap_or_else(|_| format!("{s:?}"))
}

/// Creates the config directory and returns the path of `pgward.yaml`.
pub fn init(opts: &InitOptions) -> anyhow::Result<PathBuf> {
    let dir = &opts.dir;
    let config_path = dir.join("pgward.yaml");
    if config_path.exists() {
        bail!(
            "{} already exists; pick another --dir or remove it first",
            config_path.display()
        );
    }
    if opts.upstream_tls == UpstreamTlsMode::VerifyFull && opts.upstream_ca.is_none() {
        eprintln!("note: verify-full without --upstream-ca trusts the system's CA bundle");
    }
    mkdir(dir, 0o755)?;
    mkdir(&dir.join("certs"), 0o755)?;
    mkdir(&dir.join("policies"), 0o755)?;

    certs::write_ca_and_server(&dir.join("certs"), &["localhost", "127.0.0.1", "::1"])
        .context("creating certificates")?;

    let password_line = match (&opts.upstream_password_env, &opts.upstream.password) {
        (Some(var), _) => format!("password_env: {}", yaml_str(var)),
        (None, Some(password)) => {
            mkdir(&dir.join("secrets"), 0o700)?;
            fs::set_permissions(dir.join("secrets"), fs::Permissions::from_mode(0o700))?;
            let file = dir.join("secrets/dba-upstream.password");
            certs::write_new(&file, password, 0o600).context("writing the upstream password")?;
            "password_file: ../secrets/dba-upstream.password".to_string()
        }
        (None, None) => "# no password: the database trusts this account".to_string(),
    };
    let policy = format!(
        "# Roles: who may do what, and as which database account.\n\
         # Every *.yaml file in this directory is loaded; `pgward serve` reloads on SIGHUP.\n\
         roles:\n\
         \x20 dba:\n\
         \x20   # Relayed as typed (still authenticated per person and audited).\n\
         \x20   unrestricted: true\n\
         \x20   upstream:\n\
         \x20     user: {user}\n\
         \x20     {password_line}\n\
         \x20   databases: [\"*\"]\n\
         \x20   statements: [all]\n",
        user = yaml_str(&opts.upstream.user),
    );
    fs::write(dir.join("policies/dba.yaml"), policy)?;

    let ca_line = match &opts.upstream_ca {
        Some(ca) => format!("  ca_file: {}\n", yaml_str(&ca.display().to_string())),
        None => "  # ca_file: /path/to/database-ca.crt   # for verify-full\n".to_string(),
    };
    let admin_line = match opts.admin_listen {
        Some(addr) => format!("admin_listen: {addr}\n"),
        None => "# admin_listen: 127.0.0.1:9187\n".to_string(),
    };
    let tls_mode = serde_yaml::to_string(&opts.upstream_tls)?
        .trim()
        .to_string();
    let config = format!(
        "# pgward configuration. Relative paths are relative to this file.\n\
         \n\
         # Where clients (psql, BI tools, applications) connect.\n\
         listen: {listen}\n\
         # Prometheus /metrics and /healthz.\n\
         {admin_line}\
         \n\
         # The database pgward protects. Each role's policy names the account it uses.\n\
         upstream:\n\
         \x20 host: {host}\n\
         \x20 port: {port}\n\
         \x20 # disable | prefer | require | verify-full\n\
         \x20 tls: {tls_mode}\n\
         {ca_line}\
         \x20 connect_timeout: 10s\n\
         \n\
         # TLS for clients: TLS 1.2 and 1.3 only. Replace these with your own certificate if you have one.\n\
         tls:\n\
         \x20 cert: certs/server.crt\n\
         \x20 key: certs/server.key\n\
         \x20 # Accept unencrypted clients from 127.0.0.1/::1 only. Off: every client must use TLS.\n\
         \x20 allow_plaintext_loopback: false\n\
         \n\
         # Users, roles and login failures (SQLite, WAL).\n\
         store:\n\
         \x20 path: pgward.db\n\
         \n\
         policies: policies\n\
         \n\
         auth:\n\
         \x20 # Lock an account after this many failed logins within failure_window.\n\
         \x20 max_failures: 5\n\
         \x20 failure_window: 15m\n\
         \x20 # Password hashes (argon2id) computed at once.\n\
         \x20 hash_concurrency: 2\n\
         \n\
         sessions:\n\
         \x20 idle_timeout: 30m       # automatic logoff; roles may override\n\
         \x20 max_lifetime: 12h\n\
         \x20 startup_timeout: 15s\n\
         \x20 shutdown_grace: 30s     # on SIGTERM, time for running sessions to finish\n\
         \x20 max_connections: 2000\n\
         \x20 max_message_size: 256MiB\n\
         \n\
         log:\n\
         \x20 format: text            # text | json\n\
         \x20 level: info\n",
        listen = opts.listen,
        host = yaml_str(&opts.upstream.host),
        port = opts.upstream.port,
    );
    fs::write(&config_path, config)?;
    SqliteStore::open(&dir.join("pgward.db")).context("creating the store")?;
    Ok(config_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, RoleName};

    #[test]
    fn init_writes_a_loadable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf");
        let opts = InitOptions {
            dir: dir.clone(),
            upstream: PgUrl::parse("postgres://admin:s3cret@db.internal:5433").unwrap(),
            listen: "127.0.0.1:7432".parse().unwrap(),
            admin_listen: None,
            upstream_password_env: None,
            upstream_tls: UpstreamTlsMode::Require,
            upstream_ca: None,
        };
        let path = init(&opts).unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        assert_eq!(config.upstream.host, "db.internal");
        assert_eq!(config.upstream.port, 5433);
        assert_eq!(config.upstream.tls, UpstreamTlsMode::Require);
        let policies = PolicySet::load_dir(&config.policies).unwrap();
        let dba = policies.role(&RoleName::parse("dba").unwrap()).unwrap();
        assert!(dba.unrestricted);
        assert_eq!(dba.upstream.user, "admin");
        assert_eq!(
            dba.upstream.resolved_password.as_ref().unwrap().expose(),
            "s3cret"
        );
        let yaml = fs::read_to_string(&path).unwrap()
            + &fs::read_to_string(dir.join("policies/dba.yaml")).unwrap();
        assert!(
            !yaml.contains("s3cret"),
            "the password is never written into YAML"
        );
        let mode = fs::metadata(dir.join("secrets/dba-upstream.password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let store = fs::metadata(dir.join("pgward.db")).unwrap().permissions();
        assert_eq!(
            store.mode() & 0o777,
            0o600,
            "password hashes and TOTP secrets"
        );
        assert!(init(&opts).is_err(), "refuses to overwrite");
    }
}
