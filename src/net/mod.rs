//! Bytes on the wire: framing, the few messages pgward itself writes, startup
//! packets, and TLS.
//!
//! Nothing here knows about users, roles or sessions. The session layer reads
//! frames with [`frame`], answers with [`backend`] messages and upgrades
//! sockets with [`tls`]; everything else is relayed as opaque `Bytes`.

pub mod backend;
pub mod frame;
pub mod startup;
pub mod stream;
pub mod tls;
