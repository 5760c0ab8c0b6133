//! pgward: a PostgreSQL access proxy for regulated data.
//!
//! The modules follow the data flow of one client connection:
//!
//! ```text
//! net (listener, TLS, framing) → session (startup, auth, relay) → upstream (PostgreSQL)
//!                                   │           │
//!                                 auth        policy (what a role may do)
//!                                   │
//!                                 store (users, login failures; SQLite)
//! ```
//!
//! `server` wires those together into a running proxy (signals, reload, metrics);
//! `cli` is the command line on top of it. Arrows point one way: `net` knows
//! nothing of sessions, `policy` and `store` know nothing of tokio, and the
//! session is the only place where the pieces meet.

pub mod access;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod error;
pub mod guard;
pub mod metrics;
pub mod net;
pub mod pgcluster;
pub mod policy;
pub mod private_file;
pub mod server;
pub mod session;
pub mod sql;
pub mod store;
pub mod upstream;
