//! The admin console: psql connected to the virtual database `pgward`
//! (after the same login as the data path) talks to pgward itself, as
//! PgBouncer's console does. People see their sessions, grants and
//! requests, ask for roles, approve or deny, break glass, review, and end
//! sessions — each allowed by their own rights (see
//! [`crate::access::actions`]) and each recorded in the audit trail.
//!
//! Only the simple query protocol is spoken; results are text columns.

mod command;
mod run;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::relay::{SessionEnd, Stops};
use super::{Context, Runtime};
use crate::audit::SessionInfo;
use crate::auth::Person;
use crate::error::{PgError, SqlState};
use crate::net::backend;
use crate::net::frame::{FrameError, FrameReader};
use crate::net::stream::Stream;

/// The database name that reaches the console instead of PostgreSQL.
pub const DATABASE: &str = "pgward";

/// Largest console message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// Completes the login: AuthenticationOk, the parameters psql expects, and
/// ReadyForQuery. False when the client went away.
pub async fn hello(client: &mut Stream) -> bool {
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&backend::authentication_ok());
    for (k, v) in [
        ("server_version", "15.0 (pgward console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgward console"),
    ] {
        hello.extend_from_slice(&backend::parameter_status(k, v));
    }
    hello.extend_from_slice(&backend::ready_for_query(b'I'));
    client.write_all(&hello).await.is_ok() && client.flush().await.is_ok()
}

/// Serves console commands until the client leaves or the session is ended.
pub async fn serve(
    ctx: &Arc<Context>,
    rt: Arc<Runtime>,
    mut client: Stream,
    client_buf: BytesMut,
    person: Person,
    who: Arc<SessionInfo>,
    mut stops: Stops,
) -> SessionEnd {
    let console = run::Console {
        ctx: Arc::clone(ctx),
        rt,
        person,
        who,
    };
    let mut reader = FrameReader::with_buffer(client_buf);
    // After an error in an extended-protocol batch, skip to its Sync.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            frame = reader.read(&mut client, MAX_MESSAGE) => frame,
            end = stops.requested() => {
                if let Some(err) = end.fatal() {
                    let _ = client.write_all(&backend::error_response(&err)).await;
                    let _ = client.flush().await;
                }
                return end;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(FrameError::Closed) => return SessionEnd::ClientClosed,
            Err(FrameError::Io(e)) => return SessionEnd::ClientIo(e),
            Err(FrameError::TooLarge { size, limit }) => {
                let end = SessionEnd::MessageTooLarge { size, limit };
                if let Some(err) = end.fatal() {
                    let _ = client.write_all(&backend::error_response(&err)).await;
                }
                return end;
            }
            Err(e) => {
                let end = SessionEnd::ProtocolViolation(e.to_string());
                if let Some(err) = end.fatal() {
                    let _ = client.write_all(&backend::error_response(&err)).await;
                }
                return end;
            }
        };
        let reply = match frame.tag() {
            b'X' => return SessionEnd::ClientTerminated,
            b'Q' => {
                let text = match frame.body().split_last() {
                    Some((0, text)) => String::from_utf8_lossy(text).into_owned(),
                    _ => {
                        return SessionEnd::ProtocolViolation("malformed Query message".into());
                    }
                };
                let mut out = console.query(&text).await;
                out.extend_from_slice(&backend::ready_for_query(b'I'));
                out
            }
            b'S' => {
                skipping = false;
                BytesMut::from(&backend::ready_for_query(b'I')[..])
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'F' if !skipping => {
                skipping = true;
                let err = PgError::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "pgward: the console takes simple queries only (psql's default); prepared statements are not supported",
                );
                BytesMut::from(&backend::error_response(&err)[..])
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' | b'F' => continue,
            other => {
                return SessionEnd::ProtocolViolation(format!(
                    "unexpected message type {:?} in the console",
                    other as char
                ))
            }
        };
        if client.write_all(&reply).await.is_err() || client.flush().await.is_err() {
            return SessionEnd::ClientClosed;
        }
    }
}
