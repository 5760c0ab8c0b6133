//! Who is connecting: password hashing, the name a person logs in with, and
//! the login decision (including lockout).
//!
//! Password checks are deliberately slow (argon2id), so they run on a fixed
//! set of dedicated threads: a flood of logins queues there instead of
//! starving the worker threads that relay running sessions.

pub mod cert;
pub mod identity;
pub mod login;
pub mod password;
pub mod totp;

pub use identity::LoginName;
pub use login::{Authenticator, LoginFailure, Person, SecondFactor};
pub use password::PasswordPool;
