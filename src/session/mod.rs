//! One client connection, from the first byte to the last.
//!
//! [`run`] walks the connection through its life: negotiate TLS, read the
//! StartupMessage, authenticate the person, pick their role, open the
//! database connection as that role's account, hand the client its own
//! cancel key, then relay until one side ends it.

pub mod admission;
pub mod cancel;
pub mod console;
pub mod pipeline;
pub mod registry;
pub mod relay;
pub mod startup;
pub mod statements;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::access::Identity;
use crate::audit::{Audit, Event, Kind, SessionInfo, Slot};
use crate::auth::{Authenticator, LoginName};
use crate::config::Config;
use crate::error::{PgError, SqlState};
use crate::guard::schema_cache::Source;
use crate::guard::{Guard, GuardContext};
use crate::metrics::Metrics;
use crate::net::backend;
use crate::net::frame::FrameReader;
use crate::net::startup::StartupMessage;
use crate::net::stream::Stream;
use crate::policy::PolicySet;
use crate::upstream::{self, Credentials, Target};
use cancel::{CancelRegistry, CancelTarget};
use relay::Limits;
use startup::{Opening, PasswordReply};

/// Settings that can change on reload. A session takes one snapshot when it
/// starts and keeps it.
pub struct Runtime {
    pub config: Config,
    pub policies: PolicySet,
    pub tls: Arc<rustls::ServerConfig>,
    /// pgward's CA, when client certificates are on (`tls` asks for them).
    pub client_ca: Option<Arc<crate::net::tls::ClientCa>>,
    pub upstream: Target,
    /// Distinguishes policy sets across reloads (part of analysis cache keys).
    pub generation: u64,
}

/// What every session shares.
pub struct Context {
    pub runtime: ArcSwap<Runtime>,
    pub auth: Authenticator,
    pub cancels: CancelRegistry,
    pub metrics: Arc<Metrics>,
    /// Becomes true when running sessions must end (after the shutdown grace).
    pub terminate: watch::Receiver<bool>,
    /// Schema and analysis caches and the masking key, for restricted roles.
    pub guard: Arc<GuardContext>,
    pub audit: Arc<Audit>,
    /// The sessions running now, for the console and for ending them.
    pub sessions: registry::Registry,
    next_id: AtomicU64,
}

impl Context {
    pub fn new(
        runtime: Runtime,
        auth: Authenticator,
        metrics: Arc<Metrics>,
        terminate: watch::Receiver<bool>,
        guard: Arc<GuardContext>,
        audit: Arc<Audit>,
    ) -> Context {
        Context {
            runtime: ArcSwap::from_pointee(runtime),
            auth,
            cancels: CancelRegistry::default(),
            metrics,
            terminate,
            guard,
            audit,
            sessions: registry::Registry::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// Keeps the active-session gauge honest however the session ends.
struct ActiveGuard(Arc<Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_sessions.dec();
    }
}

async fn refuse(mut stream: Stream, err: &PgError) {
    let _ = stream.write_all(&backend::error_response(err)).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Runs one connection. `slot` is `None` when the connection limit is
/// reached; the client is then told so after its StartupMessage.
pub async fn run(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    starting: admission::StartupGuard,
) {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id, %peer);
    async move {
        ctx.metrics.connections.inc();
        ctx.metrics.active_sessions.inc();
        let _active = ActiveGuard(Arc::clone(&ctx.metrics));
        let _ = tcp.set_nodelay(true);
        let rt = ctx.runtime.load_full();
        let startup_timeout = rt.config.sessions.startup_timeout;
        let opened = tokio::time::timeout(
            startup_timeout,
            open(&ctx, &rt, tcp, peer, slot.is_some(), id),
        )
        .await;
        drop(starting);
        let opened = match opened {
            Ok(Some(Session::Data(opened))) => *opened,
            Ok(Some(Session::Console(console))) => {
                run_console(&ctx, rt, id, console).await;
                drop(slot);
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::info!(timeout = ?startup_timeout, "startup timed out");
                return;
            }
        };
        let Opened {
            client,
            client_buf,
            upstream,
            identity,
            limits,
            guard,
            database,
            who,
            _cancel,
        } = opened;
        tracing::info!(user = %identity.user, role = %identity.role, "session started");
        let (_registered, kill) = ctx.sessions.register(registry::Running {
            id,
            who: Arc::clone(&who),
            started: std::time::SystemTime::now(),
            grant: identity.via.as_ref().map(|v| v.grant),
        });
        let cancel_target = CancelTarget {
            upstream: rt.upstream.clone(),
            process_id: upstream.process_id,
            secret_key: upstream.secret_key,
        };
        let recorder = rt.config.audit.record_statements.then(|| {
            statements::Recorder::new(
                Arc::clone(&ctx.audit),
                Arc::clone(&who),
                rt.config.audit.parameters,
            )
        });
        let started = Instant::now();
        let end = relay::relay(
            client,
            client_buf,
            upstream.stream,
            upstream.buffer,
            limits,
            Arc::clone(&ctx.metrics),
            relay::Stops {
                shutdown: ctx.terminate.clone(),
                kill,
            },
            relay::Enforcement {
                guard,
                recorder,
                // With the spool, only events whose spool write failed
                // come with a commit to wait for.
                ack_timeout: (rt.config.audit.durability != crate::config::AuditDurability::Queue)
                    .then_some(rt.config.audit.ack_timeout),
                schemas: Arc::clone(&ctx.guard.schemas),
                database,
            },
        )
        .await;
        let mut ended = Event::new(Kind::SessionEnd, ctx.audit.instance());
        ended.who = Some(who);
        ended.outcome = Some(end.label().to_string());
        ended.duration_us = Some(started.elapsed().as_micros() as u64);
        let record = async {
            if ctx.audit.record(ended).await.is_err() {
                tracing::warn!(user = %identity.user, "the audit trail could not record the end of a session");
            }
        };
        let cancel = async {
            if let relay::SessionEnd::Killed(why) = &end {
                // A statement may still be running: the database would only
                // notice the closed connection when it next writes.
                if let Err(e) = upstream::cancel(
                    &cancel_target.upstream,
                    cancel_target.process_id,
                    cancel_target.secret_key,
                )
                .await
                {
                    tracing::warn!(error = %e, "could not cancel the statement of an ended session");
                }
                tracing::info!(user = %identity.user, reason = %why, "session ended from outside");
            }
        };
        // The client has its FATAL already: the end is recorded at once, not
        // after the cancel's round trip to the database.
        tokio::join!(record, cancel);
        tracing::info!(
            user = %identity.user,
            reason = end.label(),
            duration_ms = started.elapsed().as_millis() as u64,
            "session ended"
        );
        drop(slot);
    }
    .instrument(span)
    .await
}

struct Opened {
    client: Stream,
    client_buf: BytesMut,
    upstream: upstream::Connected,
    identity: Identity,
    limits: Limits,
    guard: Option<Guard>,
    database: String,
    who: Arc<SessionInfo>,
    _cancel: cancel::CancelGuard,
}

/// A logged-in console session (database `pgward`).
struct ConsoleOpened {
    client: Stream,
    client_buf: BytesMut,
    person: crate::auth::Person,
    who: Arc<SessionInfo>,
}

enum Session {
    Data(Box<Opened>),
    Console(ConsoleOpened),
}

async fn run_console(ctx: &Arc<Context>, rt: Arc<Runtime>, id: u64, console: ConsoleOpened) {
    let ConsoleOpened {
        client,
        client_buf,
        person,
        who,
    } = console;
    tracing::info!(user = %person.user, "console session started");
    let (_registered, kill) = ctx.sessions.register(registry::Running {
        id,
        who: Arc::clone(&who),
        started: std::time::SystemTime::now(),
        grant: None,
    });
    let started = Instant::now();
    let stops = relay::Stops {
        shutdown: ctx.terminate.clone(),
        kill,
    };
    let end = console::serve(ctx, rt, client, client_buf, person, Arc::clone(&who), stops).await;
    let mut ended = Event::new(Kind::SessionEnd, ctx.audit.instance());
    ended.who = Some(who);
    ended.outcome = Some(end.label().to_string());
    ended.duration_us = Some(started.elapsed().as_micros() as u64);
    if ctx.audit.record(ended).await.is_err() {
        tracing::warn!("the audit trail could not record the end of a console session");
    }
}

/// Everything up to the first ReadyForQuery. `None` means the connection is
/// finished (refused, cancelled, or gone).
async fn open(
    ctx: &Context,
    rt: &Arc<Runtime>,
    tcp: TcpStream,
    peer: SocketAddr,
    has_slot: bool,
    session: u64,
) -> Option<Session> {
    let allow_plain = rt.config.tls.allow_plaintext_loopback;
    let (mut client, msg) =
        match startup::negotiate(tcp, peer, Arc::clone(&rt.tls), allow_plain).await {
            Opening::Startup(stream, msg) => (stream, msg),
            Opening::Cancel {
                process_id,
                secret_key,
            } => {
                forward_cancel(ctx, process_id, secret_key).await;
                return None;
            }
            Opening::Gone => return None,
            Opening::Refuse(stream, err) => {
                tracing::info!(%err, "connection refused");
                refuse(stream, &err).await;
                return None;
            }
        };
    // Places for the login and session-start events, taken before the
    // person is let in: without them the login is refused.
    let (login_slot, start_slot) = match reserve_two(&ctx.audit).await {
        Ok(slots) => slots,
        Err(why) => {
            let err = PgError::fatal(
                SqlState::INSUFFICIENT_RESOURCES,
                format!("pgward: logins cannot be audited ({why}); refusing them until the audit store recovers"),
            );
            tracing::warn!(%err, "login refused");
            refuse(client, &err).await;
            return None;
        }
    };
    let mut who = SessionInfo {
        session: Some(session),
        user: msg.get("user").map(str::to_string),
        client_addr: Some(peer.ip().to_string()),
        tls_version: client.tls_version().map(str::to_string),
        client_cert: client
            .peer_certificates()
            .and_then(crate::auth::cert::describe),
        application_name: msg.get("application_name").map(str::to_string),
        database: msg.get("database").map(str::to_string),
        ..SessionInfo::default()
    };
    let mut event = Event::new(Kind::Login, ctx.audit.instance());
    match login(ctx, rt, &mut client, &msg, has_slot, &mut event).await {
        Ok(Some(Entered::Console(ready))) => {
            who.user = Some(ready.person.user.clone());
            who.database = Some(console::DATABASE.to_string());
            let who = Arc::new(who);
            event.who = Some(Arc::clone(&who));
            event.outcome = Some("ok".into());
            let _ = ctx.audit.send(login_slot, event);
            let mut start = Event::new(Kind::SessionStart, ctx.audit.instance());
            start.who = Some(Arc::clone(&who));
            let _ = ctx.audit.send(start_slot, start);
            Some(Session::Console(ConsoleOpened {
                client,
                client_buf: ready.client_buf,
                person: ready.person,
                who,
            }))
        }
        Ok(Some(Entered::Data(ready))) => {
            who.user = Some(ready.identity.user.to_string());
            who.role = Some(ready.identity.role.to_string());
            who.via = ready.identity.via.as_ref().map(ToString::to_string);
            who.database = Some(ready.database.clone());
            who.upstream_user = Some(ready.upstream_user.clone());
            let who = Arc::new(who);
            event.who = Some(Arc::clone(&who));
            event.outcome = Some("ok".into());
            let _ = ctx.audit.send(login_slot, event);
            let mut start = Event::new(Kind::SessionStart, ctx.audit.instance());
            start.who = Some(Arc::clone(&who));
            let _ = ctx.audit.send(start_slot, start);
            Some(Session::Data(Box::new(Opened {
                client,
                client_buf: ready.client_buf,
                upstream: ready.upstream,
                identity: ready.identity,
                limits: ready.limits,
                guard: ready.guard,
                database: ready.database,
                who,
                _cancel: ready.cancel,
            })))
        }
        Ok(None) => {
            event.who = Some(Arc::new(who));
            event.outcome = Some("client_left".into());
            let _ = ctx.audit.send(login_slot, event);
            None
        }
        Err(err) => {
            tracing::info!(%err, "login refused");
            event.who = Some(Arc::new(who));
            if event.outcome.is_none() {
                event.outcome = Some("refused".into());
            }
            event.sqlstate = Some(err.code.0.to_string().into());
            event.reason = Some(err.message.clone());
            let _ = ctx.audit.send(login_slot, event);
            refuse(client, &err).await;
            None
        }
    }
}

async fn reserve_two(audit: &Audit) -> Result<(Slot, Slot), crate::audit::Unavailable> {
    Ok((audit.reserve().await?, audit.reserve().await?))
}

async fn forward_cancel(ctx: &Context, process_id: u32, secret_key: u32) {
    ctx.metrics.cancel_requests.inc();
    match ctx.cancels.lookup(process_id, secret_key) {
        Some(target) => {
            if let Err(e) =
                upstream::cancel(&target.upstream, target.process_id, target.secret_key).await
            {
                tracing::warn!(error = %e, "could not deliver cancel request");
            } else {
                tracing::info!(process_id, "cancel request delivered");
            }
        }
        None => tracing::info!(process_id, "cancel request with unknown key ignored"),
    }
}

/// Startup parameters passed on to the database: everything the client sent
/// except what pgward decides itself. For a restricted role (`pinned` holds
/// its search path) only formatting settings pass, and pgward pins the
/// settings its analysis relies on.
fn upstream_params(
    msg: &StartupMessage,
    login: &LoginName,
    database: &str,
    pinned: Option<&[String]>,
) -> Vec<(String, String)> {
    let mut params = vec![("database".to_string(), database.to_string())];
    let app = msg.get("application_name").filter(|a| !a.is_empty());
    // pgward's tag comes first so PostgreSQL's 63-byte limit cuts the
    // client's name, never the person's.
    let tagged = match app {
        Some(app) => format!("pgward:{}/{}", login.user, app),
        None => format!("pgward:{}", login.user),
    };
    params.push(("application_name".to_string(), tagged));
    if let Some(path) = pinned {
        let path: Vec<String> = path.iter().map(|s| format!("\"{s}\"")).collect();
        params.push(("search_path".to_string(), path.join(", ")));
        params.push(("standard_conforming_strings".to_string(), "on".to_string()));
        // See sql::settings: the client's own encoding is not forwarded.
        params.push(("client_encoding".to_string(), "UTF8".to_string()));
    } else if let Some(options) = &login.forwarded_options {
        params.push(("options".to_string(), options.clone()));
    }
    for (k, v) in &msg.params {
        // PostgreSQL matches setting names case-insensitively:
        // `Application_Name` must not override the tag.
        let key = k.to_ascii_lowercase();
        let skip = matches!(
            key.as_str(),
            "user" | "database" | "application_name" | "options" | "replication"
        ) || key.starts_with("_pq_.")
            || (pinned.is_some() && !crate::sql::settings::is_safe_startup(&key));
        if !skip {
            params.push((k.clone(), v.clone()));
        }
    }
    params
}

/// How a login ends well: a data session, or the admin console.
enum Entered {
    Data(Box<Ready>),
    Console(ConsoleReady),
}

struct ConsoleReady {
    client_buf: BytesMut,
    person: crate::auth::Person,
}

/// A logged-in session, minus the client stream the caller still owns.
struct Ready {
    client_buf: BytesMut,
    upstream: upstream::Connected,
    identity: Identity,
    limits: Limits,
    guard: Option<Guard>,
    database: String,
    upstream_user: String,
    cancel: cancel::CancelGuard,
}

async fn login(
    ctx: &Context,
    rt: &Arc<Runtime>,
    client: &mut Stream,
    msg: &StartupMessage,
    has_slot: bool,
    event: &mut Event,
) -> Result<Option<Entered>, PgError> {
    startup::check_version(client, msg).await?;
    if msg
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "pgward: replication connections are not supported through pgward",
        ));
    }
    let user_param = msg.get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    if !has_slot {
        return Err(PgError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "pgward: too many connections (sessions.max_connections is {})",
                rt.config.sessions.max_connections
            ),
        ));
    }
    let login = LoginName::parse(user_param, msg.get("options"))
        .map_err(|e| PgError::fatal(SqlState::INVALID_AUTHORIZATION, format!("pgward: {e}")))?;

    let mut reader = FrameReader::new();
    // A client certificate replaces the password: no prompt.
    let authenticated = match client.peer_certificates() {
        Some(chain) => {
            crate::auth::cert::login(ctx.auth.store(), rt.client_ca.clone(), chain, &login)
                .await
                .map_err(|f| (f.outcome(), f.to_pg_error()))
        }
        None => {
            let password = match startup::ask_password(client, &mut reader).await {
                PasswordReply::Password(pw) => pw,
                PasswordReply::Gone => return Ok(None),
                PasswordReply::Invalid(err) => return Err(err),
            };
            ctx.auth
                .login(&login, password)
                .await
                .map_err(|f| (f.outcome(), f.to_pg_error()))
        }
    };
    let person = match authenticated {
        Ok(person) => person,
        Err((outcome, err)) => {
            ctx.metrics.login(outcome);
            tracing::info!(user = %login.user, outcome, "login failed");
            event.outcome = Some(outcome.to_string());
            return Err(err);
        }
    };
    // As in PostgreSQL the database defaults to the user name; libpq fills
    // it in with the name typed, which may carry a `+role` suffix.
    let database = match msg.get("database").filter(|d| !d.is_empty()) {
        Some(db) if db != user_param => db.to_string(),
        _ => login.user.clone(),
    };
    if database == console::DATABASE {
        event.detail =
            Some(serde_json::json!({ "second_factor": person.second_factor.label() }).to_string());
        if !console::hello(client).await {
            return Ok(None);
        }
        ctx.metrics.login("ok");
        return Ok(Some(Entered::Console(ConsoleReady {
            client_buf: reader.into_buffer(),
            person,
        })));
    }
    let second_factor = person.second_factor;
    let identity = {
        let store = ctx.auth.store();
        let rt = Arc::clone(rt);
        let requested = login.role.clone();
        let db = database.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            crate::access::resolve(
                store.as_ref(),
                &rt.policies,
                &person,
                requested.as_ref(),
                &db,
            )
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::access::Denied::Store(
                crate::store::StoreError::Corrupt(format!("role check failed: {e}")),
            ))
        });
        match resolved {
            Ok(identity) => {
                event.detail =
                    Some(serde_json::json!({ "second_factor": second_factor.label() }).to_string());
                identity
            }
            Err(denied) => {
                ctx.metrics.login("role_denied");
                tracing::info!(user = %login.user, %denied, "login refused");
                event.outcome = Some("role_denied".into());
                return Err(denied.to_pg_error());
            }
        }
    };
    let database = database.as_str();
    let role = rt.policies.role(&identity.role).ok_or_else(|| {
        ctx.metrics.login("role_denied");
        PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!(
                "pgward: role \"{}\" is not defined in the policies",
                identity.role
            ),
        )
    })?;
    if !role.unrestricted {
        let missing: Vec<String> = role
            .required_attributes()
            .into_iter()
            .filter(|a| !identity.attrs.contains_key(a))
            .collect();
        if !missing.is_empty() {
            ctx.metrics.login("role_denied");
            return Err(PgError::fatal(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!(
                    "pgward: user \"{}\" lacks attribute(s) {} that role \"{}\" needs for its row filters",
                    identity.user,
                    missing.join(", "),
                    role.name
                ),
            )
            .with_hint("set them with `pgward user set-attr`"));
        }
    }
    if !role.allows_database(database) {
        ctx.metrics.login("role_denied");
        return Err(PgError::fatal(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!(
                "pgward: role \"{}\" may not connect to database \"{database}\"",
                role.name
            ),
        ));
    }

    let pinned = (!role.unrestricted).then_some(role.search_path.as_slice());
    let params = upstream_params(msg, &login, database, pinned);
    let creds = Credentials {
        user: &role.upstream.user,
        password: role.upstream.resolved_password.as_ref().map(|s| s.expose()),
    };
    let began = Instant::now();
    let upstream = match upstream::connect(&rt.upstream, creds, &params).await {
        Ok(conn) => conn,
        Err(e) => {
            ctx.metrics.login("upstream_error");
            tracing::warn!(role = %role.name, upstream = %rt.upstream.addr(), error = %e, "database connection failed");
            return Err(e.to_pg_error(role.name.as_str()));
        }
    };
    ctx.metrics
        .upstream_connect
        .observe(began.elapsed().as_secs_f64());

    let guard = if role.unrestricted {
        None
    } else {
        let source = Source {
            target: rt.upstream.clone(),
            user: role.upstream.user.clone(),
            password: role.upstream.resolved_password.clone(),
            database: database.to_string(),
        };
        let started = Guard::start(
            Arc::clone(&ctx.guard),
            Arc::new(role.clone()),
            identity.attrs.clone(),
            source,
            rt.generation,
        )
        .await;
        match started {
            Ok(guard) => Some(guard),
            Err(e) => {
                ctx.metrics.login("upstream_error");
                tracing::warn!(role = %role.name, error = %e, "cannot prepare policy enforcement");
                return Err(PgError::fatal(
                    SqlState::CONNECTION_FAILURE,
                    format!(
                        "pgward: cannot prepare policy enforcement for role \"{}\": {e}",
                        role.name
                    ),
                ));
            }
        }
    };
    let cancel = ctx.cancels.register(CancelTarget {
        upstream: rt.upstream.clone(),
        process_id: upstream.process_id,
        secret_key: upstream.secret_key,
    });
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&backend::authentication_ok());
    for frame in &upstream.startup_frames {
        hello.extend_from_slice(frame);
    }
    hello.extend_from_slice(&backend::backend_key_data(
        cancel.process_id,
        cancel.secret_key,
    ));
    hello.extend_from_slice(&backend::ready_for_query(upstream.status));
    if client.write_all(&hello).await.is_err() || client.flush().await.is_err() {
        return Ok(None);
    }
    ctx.metrics.login("ok");

    let sessions = &rt.config.sessions;
    let limits = Limits {
        max_message_size: sessions.max_message_size,
        idle_timeout: role.idle_timeout.or(sessions.idle_timeout),
        max_lifetime: role.max_lifetime.or(sessions.max_lifetime),
    };
    Ok(Some(Entered::Data(Box::new(Ready {
        client_buf: reader.into_buffer(),
        upstream,
        identity,
        limits,
        guard,
        database: database.to_string(),
        upstream_user: role.upstream.user.clone(),
        cancel,
    }))))
}
