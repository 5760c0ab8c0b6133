//! `pgward demo`: everything needed to try pgward with psql, in one command.
//!
//! Starts a throwaway PostgreSQL, loads the sample clinic database, creates a
//! pgward config and demo users in a temporary directory, serves, prints
//! ready-to-paste psql lines, and removes it all on Ctrl+C.
//!
//! Three people show the point of pgward in the first minute: alice (a DBA,
//! unrestricted), ann (an analyst at clinic 1: masked SSNs, names, e-mail
//! addresses and birth dates) and carl (a clinician at clinic 2: names and
//! notes, SSNs masked) — the same `SELECT * FROM patients` gives each of
//! them a different, policy-shaped answer.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::oneshot;

use super::init::{init, InitOptions};
use crate::auth::password::hash_password;
use crate::config::Config;
use crate::net::tls::UpstreamTlsMode;
use crate::pgcluster::{free_port, Cluster, ClusterOptions};
use crate::policy::RoleName;
use crate::server::{self, Stop};
use crate::store::{NewUser, SqliteStore, Store};
use crate::upstream::{self, Credentials, PgUrl, SimpleClient, Target};

#[derive(Args)]
pub struct DemoArgs {
    /// Address to serve on; a free port is picked if it is taken.
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
}

const CLINIC_SQL: &str = include_str!("../../examples/clinic.sql");

/// The demo's restricted roles; `{password}` is the read-only database
/// account's (random, throwaway) password.
const DEMO_POLICY: &str = r#"# Written by `pgward demo`. See policies/clinic.example.yaml in the source.
roles:
  analyst:
    upstream: { user: app_reader, password: "{password}" }
    databases: [clinic]
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
  clinician:
    upstream: { user: app_reader, password: "{password}" }
    databases: [clinic]
    statements: [read]
    tables:
      public.patients:
        columns:
          ssn: { mask: partial, keep_last: 4 }
        rows: "clinic_id = {{ user.clinic_id }}"
      public.visits:
        rows: "clinic_id = {{ user.clinic_id }}"
      public.clinics: {}
"#;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    super::service_logging(&crate::config::LogConfig {
        level: "warn".into(),
        ..Default::default()
    });
    println!("pgward demo: starting a throwaway PostgreSQL …");
    let cluster = Cluster::start(&ClusterOptions::default())?;
    println!(
        "  PostgreSQL from {} on 127.0.0.1:{}",
        cluster.bin().dir.display(),
        cluster.port
    );
    let work = tempfile::Builder::new().prefix("pgward-demo-").tempdir()?;
    let rt = super::runtime()?;
    let result = rt.block_on(demo(&cluster, work.path(), args.listen));
    drop(cluster);
    println!(
        "pgward demo: stopped; removed the database and {}",
        work.path().display()
    );
    result
}

/// Loads the sample data and creates `app_reader`, the read-only database
/// account the restricted roles use.
async fn load_sample_data(cluster: &Cluster, reader_password: &str) -> anyhow::Result<()> {
    let target = Target {
        host: "127.0.0.1".into(),
        port: cluster.port,
        tls: None,
        tls_required: false,
        tls_verified: false,
        allow_cleartext_password: false,
        connect_timeout: Duration::from_secs(10),
    };
    let creds = Credentials {
        user: &cluster.superuser,
        password: Some(&cluster.password),
    };
    let connect = |db: &str| {
        let params = vec![("database".to_string(), db.to_string())];
        let target = target.clone();
        async move { upstream::connect(&target, creds, &params).await }
    };
    let mut admin = SimpleClient::new(connect("postgres").await?);
    admin.query("CREATE DATABASE clinic").await?;
    admin.close().await;
    let mut clinic = SimpleClient::new(connect("clinic").await?);
    clinic
        .query(CLINIC_SQL)
        .await
        .context("loading sample data")?;
    clinic
        .query(&format!(
            "CREATE ROLE app_reader LOGIN PASSWORD '{reader_password}';
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader;"
        ))
        .await
        .context("creating the read-only account")?;
    clinic.close().await;
    Ok(())
}

fn listen_addr(wanted: SocketAddr) -> anyhow::Result<SocketAddr> {
    if std::net::TcpListener::bind(wanted).is_ok() {
        return Ok(wanted);
    }
    let port = free_port()?;
    println!("  {wanted} is in use; using port {port} instead");
    Ok(SocketAddr::new(wanted.ip(), port))
}

async fn demo(cluster: &Cluster, work: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let reader_password = format!("reader-{:016x}", rand::random::<u64>());
    load_sample_data(cluster, &reader_password).await?;
    println!("  loaded the sample clinic database (3 clinics, 1000 patients, 3000 visits)");

    let listen = listen_addr(listen)?;
    let config_path = init(&InitOptions {
        dir: work.to_path_buf(),
        upstream: PgUrl::parse(&cluster.url())?,
        listen,
        admin_listen: None,
        upstream_password_env: None,
        upstream_tls: UpstreamTlsMode::Prefer,
        upstream_ca: None,
    })?;
    let config = Config::load(&config_path)?;
    let password = format!("demo-{:08x}", rand::random::<u32>());
    let store_path = config.store.path.clone();
    let pw = password.clone();
    std::fs::write(
        config.policies.join("clinic.yaml"),
        DEMO_POLICY.replace("{password}", &reader_password),
    )
    .context("writing the demo policies")?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let store = SqliteStore::open(&store_path)?;
        let password_hash = hash_password(&pw).map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, role, clinic) in [
            ("alice", "dba", "1"),
            ("ann", "analyst", "1"),
            ("carl", "clinician", "2"),
        ] {
            store.add_user(&NewUser {
                name: name.into(),
                password_hash: password_hash.clone(),
                roles: vec![RoleName::parse(role).map_err(anyhow::Error::msg)?],
                attrs: [("clinic_id".to_string(), clinic.to_string())].into(),
            })?;
        }
        Ok(())
    })
    .await??;

    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let serving = tokio::spawn(server::serve(
        config_path.clone(),
        Some(ready_tx),
        Stop::Channel(stop_rx),
    ));
    let addr = ready_rx
        .await
        .context("pgward did not start; see the messages above")?;
    let ca = config.tls.cert.with_file_name("ca.crt");
    println!();
    println!("pgward is serving the clinic database on {addr}. Connect as alice (role dba):");
    println!();
    let conninfo = |user: &str| {
        format!(
            "host={} port={} user={user} dbname=clinic sslmode=verify-full sslrootcert={}",
            addr.ip(),
            addr.port(),
            ca.display()
        )
    };
    println!("  PGPASSWORD={password} psql \"{}\"", conninfo("alice"));
    println!();
    println!("Same password, and `SELECT * FROM patients LIMIT 5` shows what pgward is for:");
    println!("  user=ann   role analyst: clinic 1 only; SSN, name, e-mail and birth date masked");
    println!("  user=carl  role clinician: clinic 2 only; SSN masked; visit notes visible");
    println!();
    println!("  PGPASSWORD={password} psql \"{}\"", conninfo("ann"));
    println!();
    println!("  config: {}", config_path.display());
    println!(
        "  explain: pgward policy explain --user ann --db clinic \"SELECT * FROM patients\" --config {}",
        config_path.display()
    );
    println!();
    println!("Press Ctrl+C to stop and clean up.");
    tokio::signal::ctrl_c().await?;
    println!();
    let _ = stop_tx.send(());
    serving.await??;
    Ok(())
}
