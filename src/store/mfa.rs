//! Second factors in the store: TOTP secrets, the last time step used (so
//! each code works once), and single-use recovery codes kept hashed.

use super::SqliteStore;

pub trait MfaStore {}

impl MfaStore for SqliteStore {}
