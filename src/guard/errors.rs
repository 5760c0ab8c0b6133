//! Errors from the database, as a restricted role may see them.
//!
//! Data-value errors (SQLSTATE classes 22 and 23) quote the offending value
//! in their message and DETAIL — `invalid input syntax for type integer:
//! "123-45-6789"`, `Key (ssn)=(…) already exists` — so for a restricted
//! role they keep their SQLSTATE and get a generic message. Every error
//! loses DETAIL, CONTEXT, the internal query and the cursor position: the
//! position points into the rewritten statement, not the one the client
//! sent, and the internal query could show masking internals.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{PgError, SqlState};
use crate::net::backend::error_response;
use crate::sql::Refusal;

/// Fields kept from a database error for a restricted role.
const KEPT: &[u8] = b"SVCMHstcdnFLR";

/// What a refused statement's marker error becomes.
pub fn refusal_response(r: &Refusal) -> Bytes {
    let mut err = PgError::error(SqlState::INSUFFICIENT_PRIVILEGE, r.message.clone());
    if let Some(h) = &r.hint {
        err = err.with_hint(h.clone());
    }
    error_response(&err)
}

/// The fields of an ErrorResponse body, in order.
fn fields(body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&tag, tail)) = rest.split_first() {
        if tag == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((tag, &tail[..end]));
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    out
}

/// The message text of an ErrorResponse body.
pub fn message(body: &[u8]) -> Option<&[u8]> {
    fields(body)
        .into_iter()
        .find(|(t, _)| *t == b'M')
        .map(|(_, v)| v)
}

/// Rewrites a database error body (after the 5-byte header) for a
/// restricted role.
pub fn sanitize(body: &[u8]) -> Bytes {
    let fields = fields(body);
    let code = fields
        .iter()
        .find(|(t, _)| *t == b'C')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let hide_values = code.starts_with("22") || code.starts_with("23");
    let mut out = BytesMut::with_capacity(body.len() + 8);
    out.put_u8(b'E');
    out.put_u32(0);
    for (tag, value) in fields {
        if !KEPT.contains(&tag) {
            continue;
        }
        out.put_u8(tag);
        if tag == b'M' && hide_values {
            out.put_slice(
                format!(
                    "pgward: the database rejected a value (SQLSTATE {code}); the message is hidden because it may quote protected data"
                )
                .as_bytes(),
            );
        } else if hide_values && matches!(tag, b'H') {
            out.put_slice(b"check the values and types in the statement");
        } else {
            out.put_slice(value);
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in fields {
            b.push(*t);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn value_errors_lose_their_values() {
        let b = body(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "22P02"),
            (
                b'M',
                "invalid input syntax for type integer: \"123-45-6789\"",
            ),
            (b'D', "Key (ssn)=(123-45-6789)"),
            (b'P', "17"),
            (b'W', "SQL function"),
        ]);
        let out = sanitize(&b);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("6789"), "{text}");
        assert!(text.contains("22P02") && text.contains("pgward: the database rejected"));
        assert!(!text.contains("SQL function"));
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
    }

    #[test]
    fn other_errors_keep_their_message() {
        let b = body(&[
            (b'S', "ERROR"),
            (b'C', "42703"),
            (b'M', "column \"x\" does not exist"),
            (b'P', "8"),
        ]);
        let out = sanitize(&b);
        let f = fields(&out[5..]);
        assert_eq!(
            message(&out[5..]),
            Some(&b"column \"x\" does not exist"[..])
        );
        assert!(!f.iter().any(|(t, _)| *t == b'P'));
    }
}
