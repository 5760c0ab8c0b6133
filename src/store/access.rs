//! Access requests, their approvals, and time-boxed grants in the store.

use super::SqliteStore;

pub trait AccessStore {}

impl AccessStore for SqliteStore {}
