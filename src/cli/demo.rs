//! `pgward demo`: everything needed to try pgward with psql, in one command.
//!
//! Starts a throwaway PostgreSQL, loads the sample clinic database, creates a
//! pgward config and demo users in a temporary directory, serves, prints
//! ready-to-paste psql lines, and removes it all on Ctrl+C.

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

async fn load_sample_data(cluster: &Cluster) -> anyhow::Result<()> {
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
    load_sample_data(cluster).await?;
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
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let store = SqliteStore::open(&store_path)?;
        store.add_user(&NewUser {
            name: "alice".into(),
            password_hash: hash_password(&pw).map_err(|e| anyhow::anyhow!("{e}"))?,
            roles: vec![RoleName::parse("dba").map_err(anyhow::Error::msg)?],
            attrs: [("clinic_id".to_string(), "1".to_string())].into(),
        })?;
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
    println!(
        "  PGPASSWORD={password} psql \"host={} port={} user=alice dbname=clinic sslmode=verify-full sslrootcert={}\"",
        addr.ip(),
        addr.port(),
        ca.display()
    );
    println!();
    println!("  config: {}", config_path.display());
    println!(
        "  more users: pgward user add NAME --role dba --config {}",
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
