//! `pgward cert …`: client certificates from pgward's CA.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;

use super::admin_event::{os_user, record_change};
use super::ConfigArg;
use crate::certs::client::{issue_client_cert, parse_serial};
use crate::certs::write_new;
use crate::config::Config;
use crate::store::certs::CertStore;
use crate::store::SqliteStore;

#[derive(Subcommand)]
pub enum CertCommand {
    /// Issue a certificate: writes USER.crt and USER.key (0600).
    Issue {
        user: String,
        /// How long it is valid, e.g. 8h; at most certs.person_max_ttl
        /// (certs.service_max_ttl with --service).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Directory to write the files into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// A service account's certificate (the user must be one).
        #[arg(long)]
        service: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List issued certificates, newest first.
    List {
        /// Only this person's.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Refuse a certificate from now on (sessions already open go on).
    Revoke {
        serial: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn open(config: &ConfigArg) -> anyhow::Result<(Config, SqliteStore)> {
    let cfg = Config::load(&config.config)
        .with_context(|| format!("loading {}", config.config.display()))?;
    let store = SqliteStore::open(&cfg.store.path)
        .with_context(|| format!("opening the store {}", cfg.store.path.display()))?;
    Ok((cfg, store))
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An absolute path, for a connection string that works from anywhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub fn run(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Issue {
            user,
            ttl,
            out,
            service,
            config,
        } => {
            let (cfg, store) = open(&config)?;
            let crt = absolute(&out.join(format!("{user}.crt")));
            let key = absolute(&out.join(format!("{user}.key")));
            for path in [&crt, &key] {
                if path.exists() {
                    bail!(
                        "{} already exists; remove it or pick another --out",
                        path.display()
                    );
                }
            }
            let issued = issue_client_cert(&cfg.certs, &store, &user, ttl, &os_user(), service)?;
            write_new(&crt, &issued.pem.cert, 0o644)?;
            write_new(&key, &issued.pem.key, 0o600)?;
            println!(
                "issued certificate {} for {user}, valid until {}",
                issued.serial,
                when(issued.expires_at)
            );
            println!(
                "wrote {} and {} (keep the key private)",
                crt.display(),
                key.display()
            );
            println!("connect with these libpq parameters (no password is asked):");
            println!(
                "  user={user} sslcert={} sslkey={} sslrootcert={} sslmode=verify-full",
                crt.display(),
                key.display(),
                absolute(&cfg.certs.ca_cert).display()
            );
            record_change(
                &cfg,
                &os_user(),
                "cert.issue",
                json!({
                    "user": user,
                    "serial": issued.serial,
                    "expires_at": when(issued.expires_at),
                    "service": service,
                }),
            )?;
        }
        CertCommand::List { user, config } => {
            let (_, store) = open(&config)?;
            let now = SystemTime::now();
            println!(
                "{:<32} {:<24} {:<20} {:<20} {:<8} STATUS",
                "SERIAL", "USER", "ISSUED", "EXPIRES", "KIND"
            );
            for c in store.certs(user.as_deref())? {
                println!(
                    "{:<32} {:<24} {:<20} {:<20} {:<8} {}",
                    c.serial,
                    c.user,
                    when(c.issued_at),
                    when(c.expires_at),
                    if c.service { "service" } else { "person" },
                    c.status(now)
                );
            }
        }
        CertCommand::Revoke { serial, config } => {
            let serial = parse_serial(&serial).map_err(anyhow::Error::msg)?;
            let (cfg, store) = open(&config)?;
            let Some(cert) = store.cert(&serial)? else {
                bail!("no certificate with serial {serial} (see `pgward cert list`)");
            };
            if !store.revoke_cert(&serial, SystemTime::now())? {
                let at = cert.revoked_at.map(when).unwrap_or_default();
                bail!("certificate {serial} was already revoked at {at}");
            }
            println!(
                "revoked certificate {serial} of {}; sessions already open go on until they end",
                cert.user
            );
            record_change(
                &cfg,
                &os_user(),
                "cert.revoke",
                json!({ "user": cert.user, "serial": serial }),
            )?;
        }
    }
    Ok(())
}
