//! Connections from pgward to the database.
//!
//! Each role names a database account; [`connect`] opens a connection as that
//! account (TLS per the configured mode; SCRAM-SHA-256, md5, cleartext or
//! trust), forwards the client's startup parameters and returns the socket
//! positioned right after the first ReadyForQuery, ready to relay.
//! [`SimpleClient`] runs plain SQL on such a connection for pgward's own needs
//! (the demo's sample data, schema lookups).

mod connect;
mod simple;
mod url;

pub use connect::{cancel, connect, Connected, Credentials, Target, UpstreamError};
pub use simple::{SimpleClient, SimpleError};
pub use url::{PgUrl, UrlError};
