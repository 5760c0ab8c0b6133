//! Errors that reach a PostgreSQL client.
//!
//! Everything pgward refuses ends up as a [`PgError`]: a severity, a SQLSTATE
//! and a message a person can act on. Keeping the SQLSTATE next to the message
//! in one type means the mapping from "what went wrong" to "what the client
//! sees" happens in exactly one place per failure, instead of being scattered
//! over the session code.

use std::fmt;

/// A five-character SQLSTATE code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const INSUFFICIENT_RESOURCES: SqlState = SqlState("53000");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const CANNOT_CONNECT: SqlState = SqlState("08001");
    pub const CONNECTION_REJECTED: SqlState = SqlState("08004");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState("57P05");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");

    pub fn code(&self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// How bad an error is, in PostgreSQL's terms. `Fatal` ends the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            ..PgError::fatal(code, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for PgError {}
