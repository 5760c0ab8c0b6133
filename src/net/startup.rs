//! The untagged packets a client sends before the session begins.
//!
//! A connection opens with packets that have a length but no type byte:
//! SSLRequest, GSSENCRequest, CancelRequest or the StartupMessage itself. They
//! are read with `read_exact` so that not one byte past the packet is consumed:
//! after an SSLRequest the next byte must belong to the TLS handshake, and
//! plaintext smuggled in behind it must never be mistaken for protocol data.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::read_cstr;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// The largest startup packet accepted, as in PostgreSQL (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: u32 = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { process_id: u32, secret_key: u32 },
    Startup(StartupMessage),
}

/// A StartupMessage: the protocol version and the parameters in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupMessage {
    pub version: u32,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn major(&self) -> u32 {
        self.version >> 16
    }

    pub fn minor(&self) -> u32 {
        self.version & 0xffff
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed before the startup packet")]
    Closed,
    #[error("invalid length of startup packet ({0} bytes)")]
    InvalidLength(u32),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Reads one untagged packet.
pub async fn read_packet<R: AsyncRead + Unpin>(io: &mut R) -> Result<StartupPacket, StartupError> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StartupError::Closed,
        _ => StartupError::Io(e),
    })?;
    let len = u32::from_be_bytes(len);
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::InvalidLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    io.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StartupError::Malformed("truncated packet"),
        _ => StartupError::Io(e),
    })?;
    parse_packet(&body)
}

/// Parses the body of an untagged packet (everything after the length).
pub fn parse_packet(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Malformed("packet too short"));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() != 8 {
                return Err(StartupError::Malformed("cancel request must be 16 bytes"));
            }
            Ok(StartupPacket::Cancel {
                process_id: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret_key: u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
            })
        }
        version => Ok(StartupPacket::Startup(StartupMessage {
            version,
            params: parse_params(rest)?,
        })),
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let key = read_cstr(&mut rest).ok_or(StartupError::Malformed("unterminated parameter"))?;
        if key.is_empty() {
            break;
        }
        let value =
            read_cstr(&mut rest).ok_or(StartupError::Malformed("parameter without a value"))?;
        let key = String::from_utf8(key)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        // Values are kept as given; libpq sends them in the client encoding,
        // which for startup is ASCII in practice. Invalid UTF-8 is refused
        // rather than guessed at.
        let value = String::from_utf8(value)
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((key, value));
    }
    Ok(params)
}

/// Splits a libpq `options` string into arguments: whitespace separates them
/// and a backslash escapes the next character, as in PostgreSQL's
/// `pg_split_opts`.
pub fn split_options(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    let mut in_arg = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                in_arg = true;
            }
            c if c.is_whitespace() => {
                if in_arg {
                    args.push(std::mem::take(&mut current));
                    in_arg = false;
                }
            }
            c => {
                current.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(current);
    }
    args
}

/// Joins arguments back into an `options` string, escaping as needed.
pub fn join_options(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let mut out = String::with_capacity(a.len());
            for c in a.chars() {
                if c == '\\' || c.is_whitespace() {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    #[tokio::test]
    async fn parses_startup_message() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0database\0clinic\0\0");
        let wire = packet(&body);
        let got = read_packet(&mut &wire[..]).await.unwrap();
        let StartupPacket::Startup(msg) = got else {
            panic!("expected a startup message, got {got:?}")
        };
        assert_eq!(msg.major(), 3);
        assert_eq!(msg.get("user"), Some("alice"));
        assert_eq!(msg.get("database"), Some("clinic"));
    }

    #[tokio::test]
    async fn refuses_bad_lengths_and_truncation() {
        let huge = 0x7fff_ffffu32.to_be_bytes();
        assert!(matches!(
            read_packet(&mut &huge[..]).await,
            Err(StartupError::InvalidLength(_))
        ));
        let short = packet(&[0, 3, 0]);
        assert!(matches!(
            read_packet(&mut &short[..]).await,
            Err(StartupError::InvalidLength(7))
        ));
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice");
        assert!(matches!(
            read_packet(&mut &packet(&body)[..]).await,
            Err(StartupError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn reads_cancel_and_ssl_requests() {
        let ssl = packet(&SSL_REQUEST.to_be_bytes());
        assert_eq!(
            read_packet(&mut &ssl[..]).await.unwrap(),
            StartupPacket::SslRequest
        );
        let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 6]);
        assert_eq!(
            read_packet(&mut &packet(&body)[..]).await.unwrap(),
            StartupPacket::Cancel {
                process_id: 5,
                secret_key: 6
            }
        );
    }

    #[test]
    fn options_split_and_join_like_postgres() {
        let args = split_options(r"-c pgward.role=dba  -c search_path=a\ b");
        assert_eq!(args, vec!["-c", "pgward.role=dba", "-c", "search_path=a b"]);
        assert_eq!(split_options(&join_options(&args)), args);
    }
}
