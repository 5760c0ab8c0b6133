//! Opening an authenticated connection to PostgreSQL as a role's account.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{PgError, SqlState};
use crate::net::backend::{fatal_from_upstream, ErrorFields};
use crate::net::frame::{Frame, FrameError, FrameReader};
use crate::net::stream::Stream;
use crate::net::tls::server_name;

/// Where the database is and how to secure the connection.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS client settings; `None` means never use TLS.
    pub tls: Option<Arc<ClientConfig>>,
    /// Refuse to continue if the server does not offer TLS.
    pub tls_required: bool,
    /// The TLS settings verify the server's certificate and name
    /// (`verify-full`), so a password may be sent to it in the clear.
    pub tls_verified: bool,
    /// Send a cleartext password even over an unverified connection.
    pub allow_cleartext_password: bool,
    pub connect_timeout: Duration,
}

impl Target {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The account to log in as.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub user: &'a str,
    pub password: Option<&'a str>,
}

/// A connection that has completed startup.
pub struct Connected {
    pub stream: Stream,
    /// Bytes already read past the first ReadyForQuery (normally none).
    pub buffer: BytesMut,
    /// ParameterStatus and NoticeResponse messages received during startup,
    /// to be passed on to the client as they are.
    pub startup_frames: Vec<Bytes>,
    /// The backend's real cancel key.
    pub process_id: u32,
    pub secret_key: u32,
    /// Transaction status from the first ReadyForQuery.
    pub status: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("timed out connecting to {addr}")]
    Timeout { addr: String },
    #[error("the database at {addr} does not offer TLS, which the configuration requires")]
    TlsRefused { addr: String },
    #[error(
        "the database asked for a cleartext password over a connection whose certificate is not \
         verified; refusing to send it (use upstream.tls: verify-full, or set \
         upstream.allow_cleartext_password)"
    )]
    CleartextRefused,
    #[error("TLS with the database failed: {0}")]
    Tls(io::Error),
    #[error("the database refused the connection: {0}")]
    Rejected(ErrorFields),
    #[error("the database asked for unsupported authentication ({0})")]
    AuthUnsupported(String),
    #[error("the database asked for a password, but the role's account has none configured")]
    NoPassword,
    #[error("protocol error from the database: {0}")]
    Protocol(String),
    #[error("connection to the database lost: {0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for UpstreamError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => UpstreamError::Io(e),
            FrameError::Closed => {
                UpstreamError::Protocol("connection closed during startup".into())
            }
            other => UpstreamError::Protocol(other.to_string()),
        }
    }
}

impl UpstreamError {
    /// What a client is told when its session cannot be opened. Addresses,
    /// account names and the database's own authentication messages stay
    /// out of it; operators find them in pgward's log.
    pub fn to_pg_error(&self, role: &str) -> PgError {
        let reason = match self {
            UpstreamError::Unreachable { source, .. } => source.kind().to_string(),
            UpstreamError::Timeout { .. } => "timed out".to_string(),
            UpstreamError::TlsRefused { .. } => "the database does not offer TLS".to_string(),
            UpstreamError::Tls(_) => "TLS with the database failed".to_string(),
            _ => String::new(),
        };
        match self {
            UpstreamError::Rejected(fields) if fields.class() == "28" => PgError::fatal(
                SqlState::CONNECTION_REJECTED,
                format!("pgward: the database rejected the account of role \"{role}\""),
            )
            .with_hint("ask an administrator to check the role's upstream account"),
            UpstreamError::Rejected(fields) => {
                fatal_from_upstream(fields, SqlState::CONNECTION_REJECTED)
            }
            UpstreamError::Unreachable { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::TlsRefused { .. }
            | UpstreamError::Tls(_) => PgError::fatal(
                SqlState::CANNOT_CONNECT,
                format!("pgward: cannot connect to the database for role \"{role}\": {reason}"),
            ),
            UpstreamError::AuthUnsupported(_)
            | UpstreamError::NoPassword
            | UpstreamError::CleartextRefused => PgError::fatal(
                SqlState::CONNECTION_REJECTED,
                format!("pgward: cannot log in to the database for role \"{role}\": {self}"),
            ),
            UpstreamError::Protocol(_) | UpstreamError::Io(_) => PgError::fatal(
                SqlState::CONNECTION_FAILURE,
                format!("pgward: connection to the database failed for role \"{role}\""),
            ),
        }
    }
}

/// Frames during startup are small; anything bigger is not PostgreSQL.
const STARTUP_FRAME_LIMIT: usize = 1 << 20;

async fn tcp(target: &Target) -> Result<TcpStream, UpstreamError> {
    let addr = target.addr();
    let stream = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| UpstreamError::Timeout { addr: addr.clone() })?
        .map_err(|source| UpstreamError::Unreachable { addr, source })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn secure(target: &Target, mut tcp: TcpStream) -> Result<Stream, UpstreamError> {
    let Some(tls) = &target.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    // Exactly one byte: anything the server sends after 'S' belongs to TLS.
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = server_name(&target.host)
                .map_err(|e| UpstreamError::Tls(io::Error::other(e.to_string())))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(UpstreamError::Tls)?;
            Ok(Stream::ClientTls(Box::new(stream)))
        }
        b'N' if !target.tls_required => Ok(Stream::Plain(tcp)),
        b'N' => Err(UpstreamError::TlsRefused {
            addr: target.addr(),
        }),
        b'E' => Err(UpstreamError::Protocol(
            "the database answered the TLS request with an error".into(),
        )),
        other => Err(UpstreamError::Protocol(format!(
            "unexpected answer {other:#04x} to the TLS request"
        ))),
    }
}

/// Connects and logs in. `params` are the startup parameters to send
/// (`database`, `application_name`, `options`, …); `user` is added here.
pub async fn connect(
    target: &Target,
    creds: Credentials<'_>,
    params: &[(String, String)],
) -> Result<Connected, UpstreamError> {
    let deadline = target.connect_timeout;
    tokio::time::timeout(deadline, connect_inner(target, creds, params))
        .await
        .map_err(|_| UpstreamError::Timeout {
            addr: target.addr(),
        })?
}

async fn connect_inner(
    target: &Target,
    creds: Credentials<'_>,
    params: &[(String, String)],
) -> Result<Connected, UpstreamError> {
    let mut stream = match secure(target, tcp(target).await?).await {
        // `prefer`, like libpq: a failed handshake is retried without TLS.
        Err(UpstreamError::Tls(e)) if !target.tls_required => {
            tracing::debug!(error = %e, "TLS to the database failed; retrying without (prefer)");
            Stream::Plain(tcp(target).await?)
        }
        other => other?,
    };

    let mut buf = BytesMut::new();
    let startup = std::iter::once(("user", creds.user))
        .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup, &mut buf)?;
    stream.write_all(&buf).await?;

    let mut reader = FrameReader::new();
    let cleartext_ok = target.allow_cleartext_password || (stream.is_tls() && target.tls_verified);
    authenticate(&mut stream, &mut reader, creds, cleartext_ok).await?;

    let mut startup_frames = Vec::new();
    let mut key = (0, 0);
    loop {
        let frame = reader.read(&mut stream, STARTUP_FRAME_LIMIT).await?;
        match frame.tag() {
            b'S' | b'N' => startup_frames.push(frame.into_bytes()),
            b'K' => {
                let b = frame.body();
                if b.len() != 8 {
                    return Err(UpstreamError::Protocol("malformed BackendKeyData".into()));
                }
                key = (
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                );
            }
            b'Z' => {
                let status = frame.body().first().copied().unwrap_or(b'I');
                return Ok(Connected {
                    stream,
                    buffer: reader.into_buffer(),
                    startup_frames,
                    process_id: key.0,
                    secret_key: key.1,
                    status,
                });
            }
            b'E' => return Err(UpstreamError::Rejected(ErrorFields::parse(frame.body()))),
            // NegotiateProtocolVersion: pgward asks for 3.0 and nothing else,
            // so there is nothing to adjust.
            b'v' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    other as char
                )))
            }
        }
    }
}

fn auth_code(frame: &Frame) -> Result<u32, UpstreamError> {
    let b = frame.body();
    if b.len() < 4 {
        return Err(UpstreamError::Protocol(
            "short authentication message".into(),
        ));
    }
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

async fn expect_auth(
    stream: &mut Stream,
    reader: &mut FrameReader,
) -> Result<Frame, UpstreamError> {
    let frame = reader.read(stream, STARTUP_FRAME_LIMIT).await?;
    match frame.tag() {
        b'R' => Ok(frame),
        b'E' => Err(UpstreamError::Rejected(ErrorFields::parse(frame.body()))),
        other => Err(UpstreamError::Protocol(format!(
            "expected an authentication message, got {:?}",
            other as char
        ))),
    }
}

async fn authenticate(
    stream: &mut Stream,
    reader: &mut FrameReader,
    creds: Credentials<'_>,
    cleartext_ok: bool,
) -> Result<(), UpstreamError> {
    let frame = expect_auth(stream, reader).await?;
    let mut out = BytesMut::new();
    match auth_code(&frame)? {
        0 => return Ok(()),
        3 => {
            // Anyone between pgward and an unverified server can ask for the
            // password in the clear and keep it.
            if !cleartext_ok {
                return Err(UpstreamError::CleartextRefused);
            }
            let password = creds.password.ok_or(UpstreamError::NoPassword)?;
            frontend::password_message(password.as_bytes(), &mut out)?;
        }
        5 => {
            let password = creds.password.ok_or(UpstreamError::NoPassword)?;
            let b = frame.body();
            if b.len() < 8 {
                return Err(UpstreamError::Protocol("short md5 salt".into()));
            }
            let salt = [b[4], b[5], b[6], b[7]];
            let hashed = postgres_protocol::authentication::md5_hash(
                creds.user.as_bytes(),
                password.as_bytes(),
                salt,
            );
            frontend::password_message(hashed.as_bytes(), &mut out)?;
        }
        10 => {
            let password = creds.password.ok_or(UpstreamError::NoPassword)?;
            return scram(stream, reader, &frame, password).await;
        }
        other => {
            let name = match other {
                2 => "Kerberos V5",
                6 => "SCM credentials",
                7 | 8 => "GSSAPI",
                9 => "SSPI",
                _ => "unknown method",
            };
            return Err(UpstreamError::AuthUnsupported(format!(
                "{name}, code {other}"
            )));
        }
    }
    stream.write_all(&out).await?;
    let frame = expect_auth(stream, reader).await?;
    match auth_code(&frame)? {
        0 => Ok(()),
        other => Err(UpstreamError::Protocol(format!(
            "expected AuthenticationOk, got authentication code {other}"
        ))),
    }
}

async fn scram(
    stream: &mut Stream,
    reader: &mut FrameReader,
    offer: &Frame,
    password: &str,
) -> Result<(), UpstreamError> {
    let mechanisms: Vec<&[u8]> = offer.body()[4..]
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    if !mechanisms.contains(&SCRAM_SHA_256.as_bytes()) {
        return Err(UpstreamError::AuthUnsupported(format!(
            "SASL mechanisms {:?}",
            mechanisms
                .iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect::<Vec<_>>()
        )));
    }
    // Channel binding is not negotiated ('n'): pgward's own TLS settings
    // decide how the database is authenticated.
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)?;
    stream.write_all(&out).await?;

    let frame = expect_auth(stream, reader).await?;
    if auth_code(&frame)? != 11 {
        return Err(UpstreamError::Protocol("expected SASLContinue".into()));
    }
    scram
        .update(&frame.body()[4..])
        .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
    out.clear();
    frontend::sasl_response(scram.message(), &mut out)?;
    stream.write_all(&out).await?;

    let frame = expect_auth(stream, reader).await?;
    if auth_code(&frame)? != 12 {
        return Err(UpstreamError::Protocol("expected SASLFinal".into()));
    }
    scram
        .finish(&frame.body()[4..])
        .map_err(|e| UpstreamError::Protocol(format!("SCRAM server signature: {e}")))?;
    let frame = expect_auth(stream, reader).await?;
    match auth_code(&frame)? {
        0 => Ok(()),
        other => Err(UpstreamError::Protocol(format!(
            "expected AuthenticationOk after SCRAM, got code {other}"
        ))),
    }
}

/// Sends a CancelRequest for a backend. Cancel requests carry no credentials
/// and PostgreSQL accepts them without TLS, as libpq sends them.
pub async fn cancel(
    target: &Target,
    process_id: u32,
    secret_key: u32,
) -> Result<(), UpstreamError> {
    let mut tcp = tcp(target).await?;
    let mut buf = BytesMut::new();
    frontend::cancel_request(process_id as i32, secret_key as i32, &mut buf);
    tcp.write_all(&buf).await?;
    // The server closes the connection when done; wait for that so the
    // cancel has been read before we return.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    Ok(())
}
