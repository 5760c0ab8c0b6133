//! The byte pump between a logged-in client and its database connection.
//!
//! Each direction runs as its own future inside the session task, so a client
//! that pipelines while the database streams results never deadlocks either
//! side. Bytes are scanned for message boundaries and forwarded as runs of
//! whole messages in one write; nothing is decoded except the few tags pgward
//! counts (`Q`, `E`, `S`, `F`, `Z`) and errors from the database. A DataRow or
//! CopyData larger than [`STREAM_THRESHOLD`] is streamed through in pieces, so
//! memory per session stays bounded by the buffer size, not the row size.
//!
//! Only the upstream→client future writes to the client. When the session
//! must end with a FATAL (idle timeout, lifetime, shutdown, an oversized
//! message) that future writes it at a message boundary, so a client never
//! sees a FATAL spliced into the middle of a row.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{split, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::audit::{Audit, OnFailure, Slot, Unavailable};
use crate::error::{PgError, SqlState};
use crate::guard::schema_cache::SchemaCache;
use crate::guard::{errors, Guard};
use crate::metrics::Metrics;
use crate::net::backend::{error_response, ErrorFields};
use crate::net::frame::{Header, HEADER_LEN};
use crate::net::stream::Stream;
use crate::session::pipeline::Pipeline;
use crate::session::registry::Kill;
use crate::session::statements::Recorder;
use crate::sql::Refusal;

/// Frames larger than this, of a streamable type, are forwarded in pieces.
pub const STREAM_THRESHOLD: usize = 64 * 1024;
/// PostgreSQL never sends a message larger than 1 GiB.
const UPSTREAM_MAX_MESSAGE: usize = 1 << 30;
const READ_CHUNK: usize = 16 * 1024;
/// How long a stopping session waits for the database's current message to
/// reach the client before closing without a FATAL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long such a stop waits for answers still in flight before the FATAL
/// is written anyway (at a message boundary).
const STOP_WAIT: Duration = Duration::from_secs(1);
/// Upper bound for each step of closing a session (FATAL, Terminate, TLS
/// close): a peer that stopped reading must not keep a session alive.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits for one session.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_size: usize,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    ClientTerminated,
    ClientClosed,
    ClientIo(io::Error),
    UpstreamClosed,
    UpstreamIo(io::Error),
    IdleTimeout(Duration),
    LifetimeExceeded(Duration),
    Shutdown,
    /// Ended from outside: an expired or revoked grant, `KILL`, a disabled
    /// account.
    Killed(Kill),
    MessageTooLarge {
        size: usize,
        limit: usize,
    },
    ProtocolViolation(String),
    /// Statements cannot be recorded (`audit.on_failure: refuse`).
    AuditUnavailable(String),
}

impl SessionEnd {
    /// The FATAL the client is sent, for ends the client did not cause by
    /// leaving.
    pub fn fatal(&self) -> Option<PgError> {
        let err = match self {
            SessionEnd::IdleTimeout(d) => PgError::fatal(
                SqlState::IDLE_SESSION_TIMEOUT,
                format!(
                    "pgward: session ended after {} without activity (idle timeout)",
                    humantime::format_duration(*d)
                ),
            ),
            SessionEnd::LifetimeExceeded(d) => PgError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                format!(
                    "pgward: session reached its maximum lifetime of {}",
                    humantime::format_duration(*d)
                ),
            )
            .with_hint("reconnect to continue"),
            SessionEnd::Shutdown => PgError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "pgward: terminating connection because the proxy is shutting down",
            ),
            SessionEnd::Killed(why) => {
                PgError::fatal(SqlState::ADMIN_SHUTDOWN, format!("pgward: session ended: {why}"))
                    .with_hint(match why {
                        Kill::GrantExpired { .. } | Kill::GrantRevoked { .. } => {
                            "request the role again (REQUEST ROLE in the pgward console) or use another role"
                        }
                        Kill::Admin { .. } | Kill::UserDisabled => "ask an administrator",
                    })
            }
            SessionEnd::MessageTooLarge { size, limit } => PgError::fatal(
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "pgward: message of {size} bytes exceeds the limit of {limit} bytes (sessions.max_message_size)"
                ),
            ),
            SessionEnd::ProtocolViolation(what) => PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("pgward: invalid message from client: {what}"),
            ),
            SessionEnd::AuditUnavailable(why) => PgError::fatal(
                SqlState::INSUFFICIENT_RESOURCES,
                format!("pgward: statements cannot be audited ({why}); refusing to run them unrecorded"),
            )
            .with_hint("the audit store must recover; see audit.on_failure"),
            SessionEnd::UpstreamClosed | SessionEnd::UpstreamIo(_) => PgError::fatal(
                SqlState::CONNECTION_FAILURE,
                "pgward: the database closed the connection unexpectedly",
            ),
            SessionEnd::ClientTerminated | SessionEnd::ClientClosed | SessionEnd::ClientIo(_) => {
                return None
            }
        };
        Some(err)
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SessionEnd::ClientTerminated => "client_exit",
            SessionEnd::ClientClosed => "client_disconnect",
            SessionEnd::ClientIo(_) => "client_error",
            SessionEnd::UpstreamClosed => "upstream_closed",
            SessionEnd::UpstreamIo(_) => "upstream_error",
            SessionEnd::IdleTimeout(_) => "idle_timeout",
            SessionEnd::LifetimeExceeded(_) => "max_lifetime",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Killed(why) => why.label(),
            SessionEnd::MessageTooLarge { .. } => "message_too_large",
            SessionEnd::ProtocolViolation(_) => "protocol_violation",
            SessionEnd::AuditUnavailable(_) => "audit_unavailable",
        }
    }
}

/// Finds message boundaries in a buffer, remembering a frame that is being
/// streamed through in pieces.
#[derive(Default)]
struct Scanner {
    /// Bytes of a streamed frame that have not arrived yet.
    remaining: usize,
    /// A frame over the limit was found; reported once the frames before it
    /// have been forwarded.
    too_large: Option<usize>,
}

enum ScanError {
    InvalidLength(u32),
    TooLarge(usize),
}

struct Scan {
    /// Bytes at the front of the buffer that may be forwarded now.
    forward: usize,
    /// Scanning stopped at a frame the visitor asked to hold back.
    stopped: bool,
    /// Size of the incomplete frame at the end of `forward`, if one must be
    /// read whole before it can be forwarded.
    needs: Option<usize>,
}

impl Scanner {
    fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// `visit` sees each frame (header included) and returns false to stop
    /// before it. A frame that will be streamed is visited with the part that
    /// has arrived.
    fn scan(
        &mut self,
        buf: &[u8],
        limit: usize,
        streamable: impl Fn(u8) -> bool,
        mut visit: impl FnMut(u8, &[u8]) -> bool,
    ) -> Result<Scan, ScanError> {
        if let Some(size) = self.too_large {
            return Err(ScanError::TooLarge(size));
        }
        let mut pos = self.remaining.min(buf.len());
        self.remaining -= pos;
        let mut scan = Scan {
            forward: 0,
            stopped: false,
            needs: None,
        };
        if self.remaining > 0 {
            scan.forward = pos;
            return Ok(scan);
        }
        while let Some(header) = Header::parse(&buf[pos..]) {
            if !header.is_valid() {
                if pos > 0 {
                    break;
                }
                return Err(ScanError::InvalidLength(header.len));
            }
            let total = header.total_len();
            if total > limit {
                if pos > 0 {
                    // Forward what precedes it first (a pipelined COMMIT,
                    // say); the error comes with the next scan.
                    self.too_large = Some(total);
                    break;
                }
                return Err(ScanError::TooLarge(total));
            }
            let available = buf.len() - pos;
            if available >= total {
                if !visit(header.tag, &buf[pos..pos + total]) {
                    scan.stopped = true;
                    break;
                }
                pos += total;
            } else if total > STREAM_THRESHOLD && streamable(header.tag) {
                if !visit(header.tag, &buf[pos..]) {
                    scan.stopped = true;
                    break;
                }
                self.remaining = total - available;
                pos = buf.len();
                break;
            } else {
                scan.needs = Some(total);
                break;
            }
        }
        scan.forward = pos;
        Ok(scan)
    }
}

/// State both directions share.
struct Shared {
    pipeline: Mutex<Pipeline>,
    /// Signalled when the pipeline becomes idle, so the client side can start
    /// its idle timer (or finish a half-closed session).
    went_idle: Notify,
    stop: Notify,
    stop_reason: Mutex<Option<SessionEnd>>,
    /// The client→database direction is between messages, so a Terminate
    /// may be appended.
    upstream_at_boundary: AtomicBool,
    /// Refused statements whose marker error has not come back yet.
    refusals: Mutex<VecDeque<(u64, Refusal)>>,
}

impl Shared {
    fn pipeline(&self) -> std::sync::MutexGuard<'_, Pipeline> {
        self.pipeline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_stop(&self, reason: SessionEnd) {
        *self.stop_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.stop.notify_one();
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Refusal)>> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_stop_reason(&self) -> Option<SessionEnd> {
        self.stop_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn ensure_capacity(buf: &mut BytesMut, needs: Option<usize>) {
    let missing = needs.map_or(0, |total| total.saturating_sub(buf.len()));
    if buf.capacity() - buf.len() < missing.max(READ_CHUNK / 4) {
        buf.reserve(missing.max(READ_CHUNK));
    }
}

async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut BytesMut,
    n: usize,
) -> io::Result<()> {
    let chunk = buf.split_to(n).freeze();
    w.write_all(&chunk).await?;
    w.flush().await
}

/// Writes the first `n` bytes of `buf` to the database, marking the
/// upstream stream as mid-message meanwhile (a cancel or a shutdown waits
/// for a message boundary).
async fn to_upstream(
    upstream: &mut WriteHalf<Stream>,
    buf: &mut BytesMut,
    n: usize,
    shared: &Shared,
    scanner: &Scanner,
) -> io::Result<()> {
    shared.upstream_at_boundary.store(false, Ordering::Release);
    write_chunk(upstream, buf, n).await?;
    shared
        .upstream_at_boundary
        .store(scanner.at_boundary(), Ordering::Release);
    Ok(())
}

/// What a simple query that cannot be recorded is replaced by
/// (`audit.on_failure: refuse`): a statement that makes the database raise
/// pgward's error, so it reaches the client in its place in the stream —
/// after the answers to earlier requests, before ReadyForQuery, aborting an
/// open transaction block as any error would. Extended-protocol requests
/// cannot be replaced this way; their session ends instead.
fn audit_refusal(why: Unavailable) -> bytes::Bytes {
    let message = format!(
        "pgward: {why}; the statement was refused so that nothing runs unrecorded (audit.on_failure: refuse)"
    );
    let hint = "The audit store must recover: see the pgward log and the pgward_audit_* metrics.";
    crate::guard::query_frame(&format!(
        "DO $pgward$ BEGIN RAISE EXCEPTION USING ERRCODE = '53000', MESSAGE = '{}', HINT = '{}'; END $pgward$",
        message.replace('\'', "''"),
        hint.replace('\'', "''"),
    ))
}

async fn write_fatal<W: AsyncWrite + Unpin>(w: &mut W, err: &PgError) {
    let msg = error_response(err);
    // The session is ending either way; a client that is gone or not reading
    // simply does not get the message.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        w.write_all(&msg).await?;
        w.flush().await
    })
    .await;
}

/// Statement enforcement, auditing and schema tracking for one session.
pub struct Enforcement {
    /// Present for restricted roles: every statement goes through it.
    pub guard: Option<Guard>,
    /// Statement events; absent only in tests of the bare relay.
    pub recorder: Option<Recorder>,
    /// How long a ReadyForQuery waits for its statements' events; `None`:
    /// it does not wait (`audit.durability: queue`).
    pub ack_timeout: Option<Duration>,
    /// Told when DDL completes, so restricted sessions see the new schema.
    pub schemas: Arc<SchemaCache>,
    pub database: String,
}

/// Relays until either side ends the session. `client_buf` and
/// `upstream_buf` hold bytes read during setup but not yet processed.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: Stream,
    client_buf: BytesMut,
    upstream: Stream,
    upstream_buf: BytesMut,
    limits: Limits,
    metrics: Arc<Metrics>,
    stops: Stops,
    enforcement: Enforcement,
) -> SessionEnd {
    let Enforcement {
        guard,
        recorder,
        ack_timeout,
        schemas,
        database,
    } = enforcement;
    let audit = recorder.as_ref().map(|r| Arc::clone(&r.audit));
    let marker_prefix = guard.as_ref().map(Guard::marker_prefix);
    let (mut client_r, mut client_w) = split(client);
    let (mut upstream_r, mut upstream_w) = split(upstream);
    let shared = Shared {
        pipeline: Mutex::new(Pipeline::default()),
        went_idle: Notify::new(),
        stop: Notify::new(),
        stop_reason: Mutex::new(None),
        upstream_at_boundary: AtomicBool::new(true),
        refusals: Mutex::new(VecDeque::new()),
    };
    let on_ddl = || schemas.invalidate(&database);
    let end = {
        let c2u = client_to_upstream(
            &mut client_r,
            &mut upstream_w,
            client_buf,
            &shared,
            &limits,
            &metrics,
            guard,
            recorder,
        );
        let u2c = upstream_to_client(
            &mut upstream_r,
            &mut client_w,
            upstream_buf,
            &shared,
            &limits,
            &metrics,
            stops,
            marker_prefix.as_deref(),
            &on_ddl,
            audit.as_deref(),
            ack_timeout,
        );
        tokio::pin!(c2u, u2c);
        tokio::select! {
            end = &mut c2u => {
                if end.fatal().is_some() {
                    // Let the other direction deliver the FATAL at a boundary.
                    shared.request_stop(end);
                    match tokio::time::timeout(STOP_GRACE, &mut u2c).await {
                        Ok(end) => end,
                        Err(_) => shared.take_stop_reason().unwrap_or(SessionEnd::ClientClosed),
                    }
                } else {
                    end
                }
            }
            end = &mut u2c => end,
        }
    };
    if let Some(audit) = &audit {
        // Requests forwarded but not answered (the session ended first)
        // still leave their event.
        for record in shared.pipeline().take_unfinished() {
            record.abandon(audit, "unfinished: the session ended first");
        }
    }
    let upstream_gone = matches!(end, SessionEnd::UpstreamClosed | SessionEnd::UpstreamIo(_));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if !upstream_gone && shared.upstream_at_boundary.load(Ordering::Acquire) {
            // Terminate, so the database logs an orderly disconnection.
            let _ = upstream_w.write_all(b"X\0\0\0\x04").await;
            let _ = upstream_w.flush().await;
        }
        let _ = upstream_w.shutdown().await;
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client_w.shutdown()).await;
    if matches!(
        end,
        SessionEnd::MessageTooLarge { .. } | SessionEnd::ProtocolViolation(_)
    ) {
        linger(&mut client_r).await;
    }
    end
}

/// After refusing a message mid-transfer, keep reading (and discarding) for a
/// moment: closing a socket with unread data makes the kernel send a reset,
/// which can destroy the FATAL before the client reads it.
async fn linger(client: &mut ReadHalf<Stream>) {
    const LINGER_BYTES: usize = 8 << 20;
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while drained < LINGER_BYTES {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Frames a guard rewrote are gathered up to this size before one write.
const REWRITE_BATCH: usize = 256 * 1024;

#[allow(clippy::too_many_arguments)]
async fn client_to_upstream(
    client: &mut ReadHalf<Stream>,
    upstream: &mut WriteHalf<Stream>,
    mut buf: BytesMut,
    shared: &Shared,
    limits: &Limits,
    metrics: &Metrics,
    mut guard: Option<Guard>,
    mut recorder: Option<Recorder>,
) -> SessionEnd {
    let mut scanner = Scanner::default();
    let guarded = guard.is_some();
    // A place in the audit queue obtained by waiting (`on_failure: block`)
    // for the frame the last scan stopped at.
    let mut waited_slot: Option<Slot> = None;
    // For guarded sessions: bytes to send, passed-through and rewritten.
    let mut out = BytesMut::new();
    loop {
        let mut statements = 0u64;
        let mut intercept = false;
        let mut unavailable: Option<Unavailable> = None;
        let now = Instant::now().into_std();
        let scan = scanner.scan(
            &buf,
            limits.max_message_size,
            |tag| tag == b'd',
            |tag, frame| {
                if tag == b'X' {
                    return false;
                }
                if guarded && matches!(tag, b'Q' | b'P' | b'F') {
                    intercept = true;
                    return false;
                }
                let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
                let mut record = None;
                if let Some(rec) = recorder.as_mut() {
                    match tag {
                        b'P' => rec.parse(body, None),
                        b'B' => rec.bind(body),
                        b'C' => rec.close(body),
                        b'Q' | b'E' | b'F' => {
                            let slot = match waited_slot.take() {
                                Some(slot) => slot,
                                None => match rec.audit.reserve_now() {
                                    Ok(slot) => slot,
                                    Err(why) => {
                                        unavailable = Some(why);
                                        return false;
                                    }
                                },
                            };
                            record = Some(match tag {
                                b'Q' => rec.query(body, None, slot),
                                b'E' => rec.execute(body, slot),
                                _ => rec.call(body, None, slot),
                            });
                        }
                        _ => {}
                    }
                }
                if matches!(tag, b'Q' | b'E') {
                    statements += 1;
                }
                if matches!(tag, b'Q' | b'F' | b'E' | b'S' | b'c' | b'f') {
                    shared.pipeline().client_sent_with(tag, now, record);
                }
                true
            },
        );
        let scan = match scan {
            Ok(scan) => scan,
            Err(ScanError::TooLarge(size)) => {
                return SessionEnd::MessageTooLarge {
                    size,
                    limit: limits.max_message_size,
                }
            }
            Err(ScanError::InvalidLength(len)) => {
                return SessionEnd::ProtocolViolation(format!("invalid message length {len}"))
            }
        };
        if scan.forward > 0 {
            metrics.bytes_from_clients.inc_by(scan.forward as u64);
        }
        if let Some(guard) = guard.as_mut() {
            out.extend_from_slice(&buf.split_to(scan.forward));
            if intercept {
                let total = Header::parse(&buf).map_or(0, |h| h.total_len());
                let frame = buf.split_to(total);
                metrics.bytes_from_clients.inc_by(total as u64);
                let outcome = guard.client_frame(&frame);
                let sent = outcome.frame.first().copied().unwrap_or(0);
                let tag = frame.first().copied().unwrap_or(0);
                let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
                let mut record = None;
                if let Some(rec) = recorder.as_mut() {
                    if tag == b'P' {
                        rec.parse(body, Some(outcome.analysis.clone()));
                    } else {
                        let slot = match waited_slot.take() {
                            Some(slot) => Ok(slot),
                            None => rec.audit.reserve_now(),
                        };
                        match slot {
                            Ok(slot) if tag == b'Q' => {
                                record = Some(rec.query(body, Some(&outcome.analysis), slot))
                            }
                            Ok(slot) => {
                                record = Some(rec.call(body, Some(&outcome.analysis), slot))
                            }
                            Err(why) => {
                                // Nothing of this frame has been sent.
                                unavailable = Some(why);
                            }
                        }
                    }
                }
                let mut frame_out = outcome.frame;
                let mut audit_refused = false;
                if let Some(why) = unavailable.take() {
                    match recorder.as_ref().map(|r| r.audit.on_failure()) {
                        Some(OnFailure::Block) => {
                            // Put the frame back and wait for room.
                            let mut back = BytesMut::with_capacity(frame.len() + buf.len());
                            back.extend_from_slice(&frame);
                            back.extend_from_slice(&buf);
                            buf = back;
                            if let Some(rec) = recorder.as_ref() {
                                match rec.audit.reserve().await {
                                    Ok(slot) => waited_slot = Some(slot),
                                    Err(why) => {
                                        return SessionEnd::AuditUnavailable(why.to_string())
                                    }
                                }
                            }
                            continue;
                        }
                        _ if tag == b'Q' => {
                            metrics.statements_refused.inc();
                            frame_out = audit_refusal(why);
                            audit_refused = true;
                        }
                        _ => return SessionEnd::AuditUnavailable(why.to_string()),
                    }
                }
                if matches!(sent, b'Q' | b'F') {
                    shared.pipeline().client_sent_with(sent, now, record);
                }
                if frame.first() == Some(&b'Q') {
                    statements += 1;
                }
                if let (Some(refused), false) = (outcome.refused, audit_refused) {
                    metrics.statements_refused.inc();
                    let mut pending = shared.refusals();
                    if pending.len() >= 1024 {
                        pending.pop_front();
                    }
                    pending.push_back(refused);
                }
                out.extend_from_slice(&frame_out);
            }
            if statements > 0 {
                metrics.statements.inc_by(statements);
            }
            if intercept && out.len() < REWRITE_BATCH {
                continue;
            }
            if !out.is_empty() {
                let n = out.len();
                if let Err(e) = to_upstream(upstream, &mut out, n, shared, &scanner).await {
                    return SessionEnd::UpstreamIo(e);
                }
            }
            if intercept {
                continue;
            }
        } else {
            if statements > 0 {
                metrics.statements.inc_by(statements);
            }
            if scan.forward > 0 {
                if let Err(e) =
                    to_upstream(upstream, &mut buf, scan.forward, shared, &scanner).await
                {
                    return SessionEnd::UpstreamIo(e);
                }
            }
        }
        if let Some(why) = unavailable.take() {
            // The frame the scan stopped at cannot be recorded: wait for
            // room (`block`) or end the session (`refuse`).
            let audit = recorder.as_ref().map(|r| Arc::clone(&r.audit));
            match audit {
                Some(audit) if audit.on_failure() == OnFailure::Block => {
                    match audit.reserve().await {
                        Ok(slot) => waited_slot = Some(slot),
                        Err(why) => return SessionEnd::AuditUnavailable(why.to_string()),
                    }
                    continue;
                }
                _ if buf.first() == Some(&b'Q') => {
                    // A simple query: refused in place, the session goes on.
                    let total = Header::parse(&buf).map_or(0, |h| h.total_len());
                    let _ = buf.split_to(total);
                    metrics.statements_refused.inc();
                    shared.pipeline().client_sent(b'Q', now);
                    let mut refusal = BytesMut::from(&audit_refusal(why)[..]);
                    let n = refusal.len();
                    if let Err(e) = to_upstream(upstream, &mut refusal, n, shared, &scanner).await {
                        return SessionEnd::UpstreamIo(e);
                    }
                    continue;
                }
                _ => return SessionEnd::AuditUnavailable(why.to_string()),
            }
        }
        if scan.stopped {
            return SessionEnd::ClientTerminated;
        }
        ensure_capacity(&mut buf, scan.needs);
        let idle = scanner.at_boundary() && shared.pipeline().is_idle();
        let read = match limits.idle_timeout {
            Some(timeout) if idle => {
                match tokio::time::timeout(timeout, client.read_buf(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => return SessionEnd::IdleTimeout(timeout),
                }
            }
            // Busy: wait for data, or for the session to become idle and
            // start the idle timer. read_buf is cancel-safe.
            Some(_) => tokio::select! {
                read = client.read_buf(&mut buf) => read,
                _ = shared.went_idle.notified() => continue,
            },
            None => client.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) => {
                // A client may send its last requests and close its side:
                // PostgreSQL answers them before it notices, and so do we.
                while !shared.pipeline().is_idle() {
                    shared.went_idle.notified().await;
                }
                return SessionEnd::ClientClosed;
            }
            Ok(_) => {}
            Err(e) => return SessionEnd::ClientIo(e),
        }
    }
}

/// Whether a CommandComplete body reports DDL that may change tables.
fn is_ddl(body: &[u8]) -> bool {
    [&b"CREATE"[..], b"ALTER", b"DROP", b"SELECT INTO"]
        .iter()
        .any(|p| body.starts_with(p))
}

/// The replacement for a database error in a guarded session: pgward's
/// refusal for a marker, a sanitized error otherwise.
fn guarded_error(body: &[u8], marker: &str, shared: &Shared) -> bytes::Bytes {
    let marked = errors::message(body).and_then(|m| {
        let at = m
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())?;
        let digits: Vec<u8> = m[at + marker.len()..]
            .iter()
            .copied()
            .take_while(u8::is_ascii_digit)
            .collect();
        std::str::from_utf8(&digits).ok()?.parse::<u64>().ok()
    });
    if let Some(id) = marked {
        let mut pending = shared.refusals();
        while let Some((n, refusal)) = pending.pop_front() {
            if n == id {
                return errors::refusal_response(&refusal);
            }
        }
    }
    errors::sanitize(body)
}

#[allow(clippy::too_many_arguments)]
async fn upstream_to_client(
    upstream: &mut ReadHalf<Stream>,
    client: &mut WriteHalf<Stream>,
    mut buf: BytesMut,
    shared: &Shared,
    limits: &Limits,
    metrics: &Metrics,
    mut stops: Stops,
    marker: Option<&str>,
    on_ddl: &(dyn Fn() + Sync),
    audit: Option<&Audit>,
    ack_timeout: Option<Duration>,
) -> SessionEnd {
    let mut scanner = Scanner::default();
    let mut saw_fatal = false;
    // The ReadyForQuery at the front of `buf` was already accounted for
    // and is being held until its statements' events are stored.
    let mut held_z = false;
    // The event of the last statement that completed; FIFO storage means
    // that when it is stored, so are all before it.
    let mut pending_ack: Option<oneshot::Receiver<()>> = None;
    let lifetime = async {
        match limits.max_lifetime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lifetime);
    let mut stopping_since: Option<Instant> = None;
    let lifetime_end = || SessionEnd::LifetimeExceeded(limits.max_lifetime.unwrap_or_default());
    let guarded = marker.is_some();
    loop {
        let mut error_next = false;
        let mut ddl = false;
        let mut hold = false;
        let scan = scanner.scan(
            &buf,
            UPSTREAM_MAX_MESSAGE,
            // Only the tiny messages pgward tracks are read whole (and
            // errors, whose SQLSTATE is recorded and which guarded
            // sessions rewrite).
            |tag| !matches!(tag, b'Z' | b'G' | b'E' | b'C'),
            |tag, frame| {
                if tag == b'Z' && held_z {
                    held_z = false;
                    return true;
                }
                let body = frame.get(HEADER_LEN..).unwrap_or(&[]);
                let mut sqlstate = None;
                if tag == b'E' {
                    let fields = ErrorFields::parse(body);
                    saw_fatal |= fields.is_fatal();
                    sqlstate = Some(fields.code);
                }
                if tag == b'C' && is_ddl(body) {
                    ddl = true;
                }
                if audit.is_some() {
                    match tag {
                        b'D' | b'd' => {
                            let len = Header::parse(frame).map_or(frame.len(), |h| h.total_len());
                            shared.pipeline().server_data(len, tag == b'D');
                        }
                        b'C' | b'I' | b's' | b'E' => {
                            shared
                                .pipeline()
                                .server_reply(tag, body, sqlstate.as_deref());
                        }
                        _ => {}
                    }
                }
                if matches!(tag, b'Z' | b'G' | b'E') {
                    let mut pipeline = shared.pipeline();
                    if let Some(rtt) = pipeline.server_sent(tag) {
                        metrics.upstream_latency.observe(rtt.as_secs_f64());
                    }
                    if pipeline.is_idle() {
                        shared.went_idle.notify_one();
                    }
                }
                // Only these replies complete a request (DataRows do not:
                // no lock or drain per row).
                let completes = matches!(tag, b'C' | b'I' | b's' | b'E' | b'Z');
                if let (Some(audit), true) = (audit, completes) {
                    let done = std::mem::take(&mut shared.pipeline().done);
                    for record in done {
                        if let Some(rx) = record.finish(audit) {
                            if ack_timeout.is_some() {
                                pending_ack = Some(rx);
                            }
                        }
                    }
                    // Hold ReadyForQuery until what completed is stored.
                    if tag == b'Z' && pending_ack.is_some() {
                        held_z = true;
                        hold = true;
                        return false;
                    }
                }
                // Forward what precedes a guarded error; the error itself
                // is rewritten below (and not visited again).
                if guarded && tag == b'E' {
                    error_next = true;
                    return false;
                }
                true
            },
        );
        if ddl {
            on_ddl();
        }
        let scan = match scan {
            Ok(scan) => scan,
            Err(_) => {
                let end =
                    SessionEnd::UpstreamIo(io::Error::other("malformed message from the database"));
                if scanner.at_boundary() {
                    if let Some(err) = end.fatal() {
                        write_fatal(client, &err).await;
                    }
                }
                return end;
            }
        };
        if scan.forward > 0 {
            metrics.bytes_to_clients.inc_by(scan.forward as u64);
            // A client that stops reading must not outlive its lifetime or
            // a shutdown: race the write against both (no FATAL then, as we
            // may be mid-message).
            tokio::select! {
                written = write_chunk(client, &mut buf, scan.forward) => {
                    if let Err(e) = written {
                        return SessionEnd::ClientIo(e);
                    }
                }
                _ = &mut lifetime => return lifetime_end(),
                end = stops.requested() => return end,
            }
        }
        if hold {
            if let Some(ack) = pending_ack.take() {
                let stored = tokio::select! {
                    stored = tokio::time::timeout(ack_timeout.unwrap_or_default(), ack) => matches!(stored, Ok(Ok(()))),
                    _ = &mut lifetime => return lifetime_end(),
                };
                if !stored {
                    let end = SessionEnd::AuditUnavailable(
                        "the events of its last statements were not stored in time".into(),
                    );
                    if let Some(err) = end.fatal() {
                        write_fatal(client, &err).await;
                    }
                    return end;
                }
            }
            continue;
        }
        if let (true, Some(marker)) = (error_next, marker) {
            let total = Header::parse(&buf).map_or(0, |h| h.total_len());
            let frame = buf.split_to(total);
            let replaced = guarded_error(&frame[HEADER_LEN..], marker, shared);
            metrics.bytes_to_clients.inc_by(replaced.len() as u64);
            let written = async {
                client.write_all(&replaced).await?;
                client.flush().await
            };
            tokio::select! {
                written = written => {
                    if let Err(e) = written {
                        return SessionEnd::ClientIo(e);
                    }
                }
                _ = &mut lifetime => return lifetime_end(),
                end = stops.requested() => return end,
            }
            continue;
        }
        ensure_capacity(&mut buf, scan.needs);
        let at_boundary = scanner.at_boundary();
        // A stop the client caused (oversized message, idle timeout) lets
        // the answers to what was forwarded before it arrive first.
        let stop_now = stopping_since.is_some_and(|t: Instant| t.elapsed() >= STOP_WAIT);
        if stopping_since.is_some() && at_boundary && (stop_now || shared.pipeline().is_idle()) {
            let stop = shared.take_stop_reason().unwrap_or(SessionEnd::Shutdown);
            if let Some(err) = stop.fatal() {
                write_fatal(client, &err).await;
            }
            return stop;
        }
        let stop = tokio::select! {
            biased;
            _ = shared.stop.notified(), if stopping_since.is_none() => {
                stopping_since = Some(Instant::now());
                continue;
            }
            _ = tokio::time::sleep(STOP_WAIT), if stopping_since.is_some() => continue,
            end = stops.requested(), if at_boundary => end,
            _ = &mut lifetime, if at_boundary => lifetime_end(),
            read = upstream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) if saw_fatal => return SessionEnd::UpstreamClosed,
                Ok(0) => SessionEnd::UpstreamClosed,
                Ok(_) => continue,
                Err(e) => SessionEnd::UpstreamIo(e),
            },
        };
        if scanner.at_boundary() {
            if let Some(err) = stop.fatal() {
                write_fatal(client, &err).await;
            }
        }
        return stop;
    }
}

/// What ends a session from outside: the proxy shutting down, or this one
/// session being ended ([`Kill`]).
pub struct Stops {
    pub shutdown: watch::Receiver<bool>,
    pub kill: watch::Receiver<Option<Kill>>,
}

impl Stops {
    /// Resolves once either asks the session to end; never, if both
    /// senders are gone.
    pub async fn requested(&mut self) -> SessionEnd {
        let Stops { shutdown, kill } = self;
        let shutdown = async {
            loop {
                if *shutdown.borrow_and_update() {
                    return SessionEnd::Shutdown;
                }
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let kill = async {
            loop {
                if let Some(why) = kill.borrow_and_update().clone() {
                    return SessionEnd::Killed(why);
                }
                if kill.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            end = shutdown => end,
            end = kill => end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn forwards_whole_frames_and_waits_for_partial_ones() {
        let mut wire = frame(b'Q', b"select 1\0");
        let partial = frame(b'Q', b"select 2\0");
        wire.extend_from_slice(&partial[..7]);
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        let scan = scanner
            .scan(
                &wire,
                1 << 20,
                |_| false,
                |tag, _| {
                    seen.push(tag);
                    true
                },
            )
            .ok()
            .unwrap();
        assert_eq!(seen, vec![b'Q']);
        assert_eq!(scan.forward, 14);
        assert_eq!(scan.needs, Some(14));
    }

    #[test]
    fn streams_large_rows_in_pieces() {
        let row = frame(b'D', &vec![7u8; STREAM_THRESHOLD * 2]);
        let mut scanner = Scanner::default();
        let first = scanner
            .scan(&row[..1000], 1 << 30, |t| t == b'D', |_, _| true)
            .ok()
            .unwrap();
        assert_eq!(first.forward, 1000);
        assert!(!scanner.at_boundary());
        let rest = &row[1000..];
        let second = scanner
            .scan(rest, 1 << 30, |t| t == b'D', |_, _| true)
            .ok()
            .unwrap();
        assert_eq!(second.forward, rest.len());
        assert!(scanner.at_boundary());
    }

    #[test]
    fn stops_before_terminate_and_rejects_bad_lengths() {
        let mut wire = frame(b'S', b"");
        wire.extend(frame(b'X', b""));
        let mut scanner = Scanner::default();
        let scan = scanner
            .scan(&wire, 1 << 20, |_| false, |tag, _| tag != b'X')
            .ok()
            .unwrap();
        assert!(scan.stopped);
        assert_eq!(scan.forward, 5);
        let bad = b"Q\0\0\0\x01".to_vec();
        assert!(matches!(
            Scanner::default().scan(&bad, 1 << 20, |_| false, |_, _| true),
            Err(ScanError::InvalidLength(1))
        ));
        let big = b"Q\x10\0\0\0".to_vec();
        assert!(matches!(
            Scanner::default().scan(&big, 1 << 20, |_| false, |_, _| true),
            Err(ScanError::TooLarge(_))
        ));
    }
}
