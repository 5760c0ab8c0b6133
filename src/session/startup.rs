//! Everything before the relay: TLS negotiation, the StartupMessage, the
//! password exchange.
//!
//! This runs under the startup timeout. Errors are reported to the client as
//! PostgreSQL does at this stage: one FATAL ErrorResponse, then close.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::{PgError, SqlState};
use crate::net::backend;
use crate::net::frame::{FrameError, FrameReader};
use crate::net::startup::{read_packet, StartupError, StartupMessage, StartupPacket};
use crate::net::stream::Stream;

/// How a connection's opening ended.
pub enum Opening {
    /// A StartupMessage, on a stream that is TLS unless plaintext was allowed.
    Startup(Stream, StartupMessage),
    /// A CancelRequest; the connection is done after it.
    Cancel { process_id: u32, secret_key: u32 },
    /// The client went away, or sent something that gets no answer.
    Gone,
    /// Tell the client this, then close.
    Refuse(Stream, PgError),
}

/// Reads packets until a StartupMessage or CancelRequest arrives, upgrading
/// to TLS when asked.
pub async fn negotiate(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    allow_plaintext_loopback: bool,
) -> Opening {
    // PostgreSQL 17 clients may skip the SSLRequest and open with a TLS
    // ClientHello right away (`sslnegotiation=direct`); a handshake record
    // starts with 0x16, which no startup packet length can.
    let mut first = [0u8; 1];
    let direct_tls = matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == 0x16);
    let mut stream = if direct_tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls));
        match acceptor.accept(tcp).await {
            Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(b"postgresql") => {
                Stream::ServerTls(Box::new(tls))
            }
            Ok(_) => {
                tracing::info!(%peer, "direct TLS without ALPN \"postgresql\" refused");
                return Opening::Gone;
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                return Opening::Gone;
            }
        }
    } else {
        Stream::Plain(tcp)
    };
    let mut gss_answered = false;
    loop {
        let packet = match read_packet(&mut stream).await {
            Ok(p) => p,
            Err(StartupError::Closed) => return Opening::Gone,
            Err(StartupError::Io(_)) => return Opening::Gone,
            Err(e) => {
                return Opening::Refuse(
                    stream,
                    PgError::fatal(SqlState::PROTOCOL_VIOLATION, format!("pgward: {e}")),
                )
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                let Stream::Plain(mut tcp) = stream else {
                    return Opening::Refuse(
                        stream,
                        PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            "pgward: SSLRequest received on an encrypted connection",
                        ),
                    );
                };
                if tcp.write_all(b"S").await.is_err() {
                    return Opening::Gone;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls));
                match acceptor.accept(tcp).await {
                    Ok(tls) => stream = Stream::ServerTls(Box::new(tls)),
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return Opening::Gone;
                    }
                }
            }
            StartupPacket::GssEncRequest => {
                if gss_answered || stream.is_tls() {
                    return Opening::Refuse(
                        stream,
                        PgError::fatal(
                            SqlState::PROTOCOL_VIOLATION,
                            "pgward: unexpected GSSENCRequest",
                        ),
                    );
                }
                gss_answered = true;
                if stream.write_all(b"N").await.is_err() {
                    return Opening::Gone;
                }
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                return Opening::Cancel {
                    process_id,
                    secret_key,
                }
            }
            StartupPacket::Startup(msg) => {
                let plaintext_allowed = allow_plaintext_loopback && peer.ip().is_loopback();
                if !(stream.is_tls() || plaintext_allowed) {
                    return Opening::Refuse(
                        stream,
                        PgError::fatal(
                            SqlState::INVALID_AUTHORIZATION,
                            "pgward: connection refused: TLS is required",
                        )
                        .with_hint(
                            "connect with sslmode=require (or verify-full with pgward's CA)",
                        ),
                    );
                }
                return Opening::Startup(stream, msg);
            }
        }
    }
}

/// Checks the protocol version and answers a newer 3.x minor version or
/// `_pq_` options with NegotiateProtocolVersion, as PostgreSQL does.
pub async fn check_version(stream: &mut Stream, msg: &StartupMessage) -> Result<(), PgError> {
    if msg.major() != 3 {
        return Err(PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported frontend protocol {}.{}: pgward supports 3.0",
                msg.major(),
                msg.minor()
            ),
        ));
    }
    let unrecognized: Vec<String> = msg
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if msg.minor() > 0 || !unrecognized.is_empty() {
        let reply = backend::negotiate_protocol_version(0, &unrecognized);
        stream
            .write_all(&reply)
            .await
            .map_err(|_| PgError::fatal(SqlState::CONNECTION_FAILURE, "client went away"))?;
    }
    Ok(())
}

/// Outcome of asking for the password.
pub enum PasswordReply {
    Password(String),
    /// The client hung up instead of answering, as psql does before it
    /// prompts the person for a password. Not a failed login.
    Gone,
    Invalid(PgError),
}

/// Sends AuthenticationCleartextPassword and reads the PasswordMessage.
pub async fn ask_password(stream: &mut Stream, reader: &mut FrameReader) -> PasswordReply {
    if stream
        .write_all(&backend::authentication_cleartext_password())
        .await
        .is_err()
        || stream.flush().await.is_err()
    {
        return PasswordReply::Gone;
    }
    let frame = match reader.read(stream, 4096).await {
        Ok(f) => f,
        Err(FrameError::Closed) | Err(FrameError::Io(_)) => return PasswordReply::Gone,
        Err(e) => {
            return PasswordReply::Invalid(PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("pgward: invalid password message: {e}"),
            ))
        }
    };
    if frame.tag() != b'p' {
        return PasswordReply::Invalid(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "pgward: expected a password message, got message type {:?}",
                frame.tag() as char
            ),
        ));
    }
    let body = frame.body();
    let password = match body.split_last() {
        Some((0, pw)) if !pw.contains(&0) => pw,
        _ => {
            return PasswordReply::Invalid(PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "pgward: malformed password message",
            ))
        }
    };
    match String::from_utf8(password.to_vec()) {
        Ok(pw) if !pw.is_empty() => PasswordReply::Password(pw),
        // An empty or non-UTF-8 password can never match; treat it like a
        // wrong one so it counts towards lockout.
        _ => PasswordReply::Password(String::new()),
    }
}
