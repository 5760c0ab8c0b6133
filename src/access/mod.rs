//! The access lifecycle: which role a person acts in for a session, and how
//! they come to hold one for a while — time-boxed grants, requests and
//! approvals, break-glass.
//!
//! Authentication ([`crate::auth`]) answers "who is this"; this module
//! answers "what may they be right now". It reads the store and the
//! policies and knows nothing of sockets.

pub mod actions;
pub mod resolve;

pub use actions::{AccessError, Actor, Ask, Change};
pub use resolve::{resolve, Denied, Identity, Via};
