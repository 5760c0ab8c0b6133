//! Client certificates pgward's CA issued: who holds each serial, until
//! when, and whether it was revoked.

use super::SqliteStore;

pub trait CertStore {}

impl CertStore for SqliteStore {}
