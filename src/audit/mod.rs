//! The tamper-evident audit trail (HIPAA 164.312(b) and (c)).
//!
//! Every statement, login, session start and end, and administrative action
//! becomes an [`Event`]. Sessions hand events to the [`Audit`] writer, which
//! stores them in a hash chain in SQLite ([`store`]) and signs checkpoints
//! of the chain with pgward's Ed25519 key ([`chain`]). `pgward audit
//! verify`, `export` and `tail` read the store, and [`sinks`] follow it to
//! deliver copies (JSON-lines files, syslog, webhooks); nothing here knows
//! about sessions.

pub mod alerts;
pub mod chain;
mod encode;
pub mod event;
pub mod export;
pub mod fingerprint;
pub mod ocsf;
pub mod retention;
pub mod sinks;
pub mod spool;
pub mod store;
pub mod verify;
pub mod writer;

pub use event::{Analysis, Decision, Encoded, Event, Kind, SessionInfo};
pub use writer::{Audit, OnFailure, Slot, Unavailable, WriterConfig};
