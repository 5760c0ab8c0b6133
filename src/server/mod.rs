//! The running proxy: listener, signals, reload, graceful shutdown.
//!
//! * SIGHUP reloads `pgward.yaml`, the policies and the TLS certificate, and
//!   so does a change to `pgward.yaml` or a policy file (checked every 2 s).
//!   A reload that fails validation is logged and the running settings stay.
//!   New sessions use the new settings; running sessions keep theirs.
//! * SIGTERM or SIGINT stops accepting, lets running sessions finish for up
//!   to `sessions.shutdown_grace`, then ends the rest with a FATAL.

mod admin_http;
mod expiry;
mod file_watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::auth::{Authenticator, PasswordPool};
use crate::config::Config;
use crate::guard::cache::AnalysisCache;
use crate::guard::schema_cache::SchemaCache;
use crate::guard::GuardContext;
use crate::metrics::Metrics;
use crate::net::tls::{self, UpstreamTlsMode};
use crate::policy::PolicySet;
use crate::session::admission::StartupLimiter;
use crate::session::{self, Context, Runtime};
use crate::store::{SqliteStore, Store};
use crate::upstream::Target;

/// Loads config, policies and certificates into a runtime snapshot.
pub fn load_runtime(config_path: &Path) -> anyhow::Result<Runtime> {
    let config = Config::load(config_path)?;
    let policies = PolicySet::load_dir(&config.policies)?;
    if policies.is_empty() {
        tracing::warn!(dir = %config.policies.display(), "no roles defined; every login will be refused");
    }
    let client_ca = client_ca(&config)?;
    let server_tls =
        tls::server_config_with_clients(&config.tls.cert, &config.tls.key, client_ca.as_deref())
            .context("loading the server certificate")?;
    let upstream = upstream_target(&config)?;
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    Ok(Runtime {
        config,
        policies,
        tls: server_tls,
        client_ca,
        upstream,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    })
}

/// pgward's CA for client certificates; without its file, logins use
/// passwords only.
fn client_ca(config: &Config) -> anyhow::Result<Option<Arc<tls::ClientCa>>> {
    let path = &config.certs.ca_cert;
    if !path.exists() {
        tracing::warn!(ca = %path.display(), "no CA certificate: client certificates are off");
        return Ok(None);
    }
    let ca = tls::ClientCa::load(path)
        .with_context(|| format!("loading the client CA {}", path.display()))?;
    Ok(Some(Arc::new(ca)))
}

/// How to reach the database, from the config's `upstream` section.
pub fn upstream_target(config: &Config) -> anyhow::Result<Target> {
    let up = &config.upstream;
    let upstream_tls = tls::upstream_config(up.tls, up.ca_file.as_deref())
        .context("setting up TLS to the database")?;
    Ok(Target {
        host: up.host.clone(),
        port: up.port,
        tls: upstream_tls,
        tls_required: matches!(
            up.tls,
            UpstreamTlsMode::Require | UpstreamTlsMode::VerifyFull
        ),
        tls_verified: up.tls == UpstreamTlsMode::VerifyFull,
        allow_cleartext_password: up.allow_cleartext_password,
        connect_timeout: up.connect_timeout,
    })
}

/// Reads the key `hash` masks use, creating a random one (mode 0600) the
/// first time.
pub fn masking_key(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(key) if key.trim().len() >= 16 => Ok(key.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "the masking key {} is shorter than 16 characters",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::Rng;
            let key: String = {
                let mut rng = rand::thread_rng();
                (0..32)
                    .map(|_| format!("{:02x}", rng.gen::<u8>()))
                    .collect()
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            crate::certs::write_new(path, &key, 0o600)
                .with_context(|| format!("writing the masking key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a masking key for hash masks");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading the masking key {}", path.display())),
    }
}

/// How `serve` is asked to stop.
pub enum Stop {
    /// Listen for SIGTERM/SIGINT (the `pgward serve` case).
    Signals,
    /// Stop when this fires (the demo, which owns Ctrl+C itself).
    Channel(oneshot::Receiver<()>),
}

/// Runs the proxy until asked to stop. `ready` receives the bound address.
pub async fn serve(
    config_path: PathBuf,
    ready: Option<oneshot::Sender<SocketAddr>>,
    stop: Stop,
) -> anyhow::Result<()> {
    let runtime = load_runtime(&config_path)?;
    let config = runtime.config.clone();
    let store_path = config.store.path.clone();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&store_path))
            .await?
            .with_context(|| format!("opening the store {}", config.store.path.display()))?,
    );
    let pool = tokio::task::spawn_blocking({
        let n = config.auth.hash_concurrency;
        move || PasswordPool::new(n)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("initialising password hashing: {e}"))?;
    let auth = Authenticator::new(
        store,
        pool,
        config.auth.max_failures,
        config.auth.failure_window,
    )
    .mfa_required(config.auth.mfa_required);
    let metrics = Arc::new(Metrics::new());
    let (terminate_tx, terminate_rx) = watch::channel(false);
    let guard = Arc::new(GuardContext {
        schemas: Arc::new(SchemaCache::new(config.enforcement.schema_refresh)),
        analysis: AnalysisCache::new(config.enforcement.analysis_cache),
        hash_key: masking_key(&config.enforcement.masking_key)?,
    });
    let audit = {
        let a = &config.audit;
        let cfg = crate::audit::WriterConfig {
            path: a.path.clone(),
            key: a.signing_key.clone(),
            queue: a.queue,
            batch: a.batch,
            on_failure: a.on_failure,
            checkpoint_interval: a.checkpoint_interval,
            instance: a.instance_name(),
            alerts: a.alerts.clone(),
            spool: a.durability == crate::config::AuditDurability::Spool,
        };
        tokio::task::spawn_blocking(move || crate::audit::Audit::start(cfg)).await??
    };
    metrics.attach_audit(Arc::clone(&audit.counters));
    // Old events are pruned on a thread of their own, never the writer's.
    let pruner = match config.audit.retention {
        Some(retention) => {
            let cfg = crate::audit::retention::PrunerConfig {
                path: config.audit.path.clone(),
                key: config.audit.signing_key.clone(),
                retention,
                interval: config.audit.prune_interval,
                first_run: Duration::from_secs(10),
                instance: audit.instance().to_string(),
            };
            let start = move || crate::audit::retention::Pruner::start(cfg);
            Some(tokio::task::spawn_blocking(start).await??)
        }
        None => None,
    };
    // Sinks follow the store from threads of their own: one that is down
    // never slows a session.
    let sinks = {
        let (sinks, path) = (config.audit.sinks.clone(), config.audit.path.clone());
        let instance = audit.instance().to_string();
        let report = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || {
            crate::audit::sinks::Sinks::start(&sinks, &path, &instance, report)
        })
        .await??
    };
    let ctx = Arc::new(Context::new(
        runtime,
        auth,
        Arc::clone(&metrics),
        terminate_rx,
        guard,
        Arc::clone(&audit),
    ));
    let (sweep_stop_tx, sweep_stop) = watch::channel(false);
    tokio::spawn(expiry::run(Arc::clone(&ctx), sweep_stop));
    if !config.audit.record_statements {
        tracing::warn!("audit.record_statements is off: statements are not recorded");
        admin_event(&ctx, "audit.statements_off", STATEMENTS_OFF.into());
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    let (draining_tx, draining_rx) = watch::channel(false);
    if let Some(addr) = config.admin_listen {
        let admin = admin_http::bind(addr, Arc::clone(&metrics), draining_rx).await?;
        tracing::info!(addr = %admin, "admin HTTP listening (/metrics, /healthz)");
    }
    tracing::info!(addr = %local, upstream = %ctx.runtime.load().upstream.addr(), "pgward listening");
    if let Some(ready) = ready {
        let _ = ready.send(local);
    }

    let max = config.sessions.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let startups = StartupLimiter::default();
    let mut stop = StopSignal::new(stop)?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut watcher = file_watch::Watcher::default();
    let mut watch_tick = tokio::time::interval(Duration::from_secs(2));
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let per_ip = ctx.runtime.load().config.sessions.max_startups_per_ip;
                let Some(starting) = startups.try_start(peer.ip(), per_ip) else {
                    metrics.startups_refused.inc();
                    tracing::debug!(%peer, "too many logins in progress from this address; closed");
                    continue;
                };
                let slot = Arc::clone(&slots).try_acquire_owned().ok();
                tokio::spawn(session::run(Arc::clone(&ctx), tcp, peer, slot, starting));
            }
            _ = hangup.recv() => reload(&ctx, &config_path),
            _ = watch_tick.tick() => {
                let policies = ctx.runtime.load().config.policies.clone();
                if watcher.changed(&config_path, &policies) {
                    tracing::info!("configuration files changed");
                    reload(&ctx, &config_path);
                }
            }
            _ = stop.wait() => break,
        }
    }

    drop(listener);
    let _ = draining_tx.send(true);
    let _ = sweep_stop_tx.send(true);
    let grace = ctx.runtime.load().config.sessions.shutdown_grace;
    let running = max - slots.available_permits();
    tracing::info!(sessions = running, grace = ?grace, "shutting down: no new connections");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let left = max - slots.available_permits();
        tracing::info!(
            sessions = left,
            "grace period over: ending remaining sessions"
        );
        let _ = terminate_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
    }
    if let Some(pruner) = pruner {
        let _ = tokio::task::spawn_blocking(move || pruner.stop()).await;
    }
    // Everything the sessions recorded is stored and signed before exit.
    audit.close().await;
    // Then the sinks deliver what is stored (for up to 2 s).
    let _ = tokio::task::spawn_blocking(move || sinks.close()).await;
    tracing::info!("pgward stopped");
    Ok(())
}

fn reload(ctx: &Context, config_path: &Path) {
    match load_runtime(config_path) {
        Ok(new) => {
            let old = ctx.runtime.load();
            if new.config.audit.sinks != old.config.audit.sinks {
                tracing::warn!("audit sink changes need a restart; keeping the running sinks");
            }
            if new.config.audit.alerts != old.config.audit.alerts {
                tracing::warn!("alert rule changes need a restart; keeping the running rules");
            }
            if new.config.audit.record_statements != old.config.audit.record_statements {
                let (action, detail) = if new.config.audit.record_statements {
                    ("audit.statements_on", "statement events are recorded again")
                } else {
                    ("audit.statements_off", STATEMENTS_OFF)
                };
                tracing::warn!("{detail}");
                admin_event(ctx, action, detail.into());
            }
            if new.config.listen != old.config.listen {
                tracing::warn!(
                    "listen address changes need a restart; keeping {}",
                    old.config.listen
                );
            }
            tracing::info!(roles = new.policies.len(), "configuration reloaded");
            ctx.runtime.store(Arc::new(new));
            admin_event(
                ctx,
                "policy.reload",
                "configuration and policies reloaded".into(),
            );
        }
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!(error = %message, "reload failed; keeping the running configuration");
            admin_event(ctx, "policy.reload_failed", message);
        }
    }
}

const STATEMENTS_OFF: &str =
    "audit.record_statements is off: sessions starting now record logins and session ends only";

/// An administrative event by pgward itself.
fn admin_event(ctx: &Context, action: &str, detail: String) {
    let event = crate::audit::Event::admin(ctx.audit.instance(), "pgward", action, detail);
    match ctx.audit.reserve_now() {
        Ok(slot) => {
            let _ = ctx.audit.send(slot, event);
        }
        Err(why) => tracing::warn!(%why, action, "could not record an administrative event"),
    }
}

struct StopSignal {
    kind: Stop,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    fn new(kind: Stop) -> std::io::Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        let (term, int) = match kind {
            Stop::Signals => (
                Some(signal(SignalKind::terminate())?),
                Some(signal(SignalKind::interrupt())?),
            ),
            Stop::Channel(_) => (None, None),
        };
        Ok(StopSignal { kind, term, int })
    }

    async fn wait(&mut self) {
        match (&mut self.kind, &mut self.term, &mut self.int) {
            (Stop::Channel(rx), _, _) => {
                let _ = rx.await;
                // Fire once; afterwards never again.
                self.kind = Stop::Signals;
            }
            (Stop::Signals, Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => std::future::pending().await,
        }
    }
}
