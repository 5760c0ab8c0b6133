//! Messages pgward writes to clients in the server's role.
//!
//! Only what pgward originates is encoded here: authentication requests,
//! errors, the cancel key it hands out and protocol negotiation. Messages from
//! the database are relayed as received. The upstream side (pgward as a
//! client) uses `postgres-protocol`'s frontend encoders instead.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{PgError, Severity, SqlState};

fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(tag);
    buf.put_u32(0);
    body(&mut buf);
    let len = (buf.len() - 1) as u32;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside a field would end it early and shift every following
    // field; no message pgward writes may be corrupted that way.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

pub fn authentication_ok() -> Bytes {
    message(b'R', |b| b.put_u32(0))
}

pub fn authentication_cleartext_password() -> Bytes {
    message(b'R', |b| b.put_u32(3))
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    message(b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    })
}

pub fn backend_key_data(process_id: u32, secret_key: u32) -> Bytes {
    message(b'K', |b| {
        b.put_u32(process_id);
        b.put_u32(secret_key);
    })
}

pub fn ready_for_query(status: u8) -> Bytes {
    message(b'Z', |b| b.put_u8(status))
}

/// A RowDescription of text columns (type `text`, OID 25), as the admin
/// console answers.
pub fn row_description(columns: &[&str]) -> Bytes {
    message(b'T', |b| {
        b.put_u16(columns.len() as u16);
        for name in columns {
            put_cstr(b, name);
            b.put_u32(0); // table OID
            b.put_u16(0); // column number
            b.put_u32(25); // text
            b.put_i16(-1); // variable length
            b.put_i32(-1); // no type modifier
            b.put_u16(0); // text format
        }
    })
}

/// A DataRow of text values (`None` is NULL).
pub fn data_row(values: &[Option<String>]) -> Bytes {
    message(b'D', |b| {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_u32(v.len() as u32);
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    })
}

pub fn command_complete(tag: &str) -> Bytes {
    message(b'C', |b| put_cstr(b, tag))
}

pub fn empty_query_response() -> Bytes {
    message(b'I', |_| {})
}

/// Tells a client that asked for protocol 3.x (x > 0) or `_pq_` options that
/// pgward speaks 3.0 and none of those options.
pub fn negotiate_protocol_version(minor: u32, unrecognized: &[String]) -> Bytes {
    message(b'v', |b| {
        b.put_u32(minor);
        b.put_u32(unrecognized.len() as u32);
        for option in unrecognized {
            put_cstr(b, option);
        }
    })
}

pub fn error_response(err: &PgError) -> Bytes {
    message(b'E', |b| {
        let severity = err.severity.as_str();
        b.put_u8(b'S');
        put_cstr(b, severity);
        b.put_u8(b'V');
        put_cstr(b, severity);
        b.put_u8(b'C');
        put_cstr(b, err.code.code());
        b.put_u8(b'M');
        put_cstr(b, &err.message);
        if let Some(detail) = &err.detail {
            b.put_u8(b'D');
            put_cstr(b, detail);
        }
        if let Some(hint) = &err.hint {
            b.put_u8(b'H');
            put_cstr(b, hint);
        }
        b.put_u8(0);
    })
}

/// The fields of an ErrorResponse or NoticeResponse body, decoded leniently
/// (bytes that are not UTF-8 are replaced, never trusted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or(&[]);
            match kind {
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                b'D' => fields.detail = Some(value),
                b'H' => fields.hint = Some(value),
                _ => {}
            }
        }
        fields
    }

    /// SQLSTATE class, the first two characters of the code.
    pub fn class(&self) -> &str {
        self.code.get(..2).unwrap_or("")
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// Re-states a database error as one of pgward's own, keeping its SQLSTATE
/// when it is one pgward knows how to name.
pub fn fatal_from_upstream(fields: &ErrorFields, fallback: SqlState) -> PgError {
    let code = known_state(&fields.code).unwrap_or(fallback);
    PgError {
        severity: Severity::Fatal,
        code,
        message: fields.message.clone(),
        detail: fields.detail.clone(),
        hint: fields.hint.clone(),
    }
}

fn known_state(code: &str) -> Option<SqlState> {
    [
        SqlState::INVALID_CATALOG_NAME,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::INSUFFICIENT_PRIVILEGE,
        SqlState::FEATURE_NOT_SUPPORTED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState("57P03"),
        SqlState("22023"),
        SqlState("42704"),
    ]
    .into_iter()
    .find(|s| s.code() == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::Frame;

    #[test]
    fn error_response_round_trips() {
        let err = PgError::fatal(SqlState::INVALID_PASSWORD, "password authentication failed")
            .with_hint("check it");
        let frame = Frame::from_bytes(error_response(&err)).expect("well-formed frame");
        assert_eq!(frame.tag(), b'E');
        let fields = ErrorFields::parse(frame.body());
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.code, "28P01");
        assert_eq!(fields.message, "password authentication failed");
        assert_eq!(fields.hint.as_deref(), Some("check it"));
        assert!(fields.is_fatal());
    }

    #[test]
    fn nul_bytes_cannot_split_fields() {
        let err = PgError::error(SqlState::INTERNAL_ERROR, "a\0Mforged");
        let frame = Frame::from_bytes(error_response(&err)).expect("well-formed frame");
        assert_eq!(ErrorFields::parse(frame.body()).message, "aMforged");
    }

    #[test]
    fn small_messages_have_their_fixed_encodings() {
        assert_eq!(&authentication_ok()[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            &authentication_cleartext_password()[..],
            b"R\0\0\0\x08\0\0\0\x03"
        );
        assert_eq!(&ready_for_query(b'I')[..], b"Z\0\0\0\x05I");
        assert_eq!(
            &backend_key_data(7, 9)[..],
            b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09"
        );
    }
}
