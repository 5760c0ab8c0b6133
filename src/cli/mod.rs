//! The `pgward` command line. Each subcommand lives in its own file; this
//! one parses arguments, sets up logging and maps errors to exit codes.

mod access;
mod admin_event;
mod audit;
mod cert;
mod demo;
mod grant;
mod init;
mod policy;
mod serve;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use init::{init, InitOptions};

#[derive(Parser)]
#[command(
    name = "pgward",
    version,
    about = "A PostgreSQL access proxy for regulated data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the config file is, for every command that needs one.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Path to pgward.yaml.
    #[arg(
        long,
        short = 'c',
        env = "PGWARD_CONFIG",
        default_value = "pgward.yaml"
    )]
    pub config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create a config directory: pgward.yaml, certificates, policies, store.
    Init(init::InitArgs),
    /// Run the proxy.
    Serve(ConfigArg),
    /// Start a throwaway PostgreSQL with sample clinic data and serve it.
    Demo(demo::DemoArgs),
    /// Manage people: add, list, passwd, disable, enable, set-attr.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Access review: `access report` for recertification.
    #[command(subcommand)]
    Access(access::AccessCommand),
    /// Time-boxed grants: add, list, revoke.
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    /// Access requests: create, list, approve, deny; break-glass and its review.
    #[command(subcommand)]
    Request(grant::RequestCommand),
    /// Client certificates from pgward's CA: issue, list, revoke.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Check the policies, or explain what one statement becomes.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The audit trail: verify, export, tail, prune, public-key.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => {
            quiet_logging();
            init::run(args)
        }
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::User(cmd) => {
            quiet_logging();
            user::run(cmd)
        }
        Command::Access(cmd) => {
            quiet_logging();
            access::run(cmd)
        }
        Command::Grant(cmd) => {
            quiet_logging();
            grant::run_grant(cmd)
        }
        Command::Request(cmd) => {
            quiet_logging();
            grant::run_request(cmd)
        }
        Command::Cert(cmd) => {
            quiet_logging();
            cert::run(cmd)
        }
        Command::Policy(cmd) => {
            quiet_logging();
            policy::run(cmd)
        }
        Command::Audit(cmd) => {
            quiet_logging();
            audit::run(cmd)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn quiet_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for long-running commands, as the config asks; `RUST_LOG` wins.
pub(crate) fn service_logging(config: &crate::config::LogConfig) {
    use crate::config::LogFormat;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
