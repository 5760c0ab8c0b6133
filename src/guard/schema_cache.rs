//! Table knowledge per (database, upstream account), fetched from the
//! database's catalog over a short-lived connection of the role's own
//! account, shared by every session, refreshed on a timer and after DDL
//! passes through pgward.
//!
//! A session never waits for a refresh once it has a schema: a stale
//! schema is still a safe one (the masked subquery lists columns
//! explicitly, so a column added since is simply not visible).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::Secret;
use crate::sql::schema::{Schema, CATALOG_SQL, TABLES_SQL};
use crate::upstream::{self, Credentials, SimpleClient, Target};

/// How to reach the database as one role's account.
#[derive(Clone)]
pub struct Source {
    pub target: Target,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
}

struct Entry {
    schema: Arc<Schema>,
    fetched: Instant,
    stale: bool,
    refreshing: bool,
}

type Key = (String, String);

pub struct SchemaCache {
    entries: Mutex<HashMap<Key, Entry>>,
    refresh_after: Duration,
    versions: AtomicU64,
}

impl SchemaCache {
    pub fn new(refresh_after: Duration) -> SchemaCache {
        SchemaCache {
            entries: Mutex::new(HashMap::new()),
            refresh_after,
            versions: AtomicU64::new(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The schema for `source`, fetched now if pgward has none yet.
    pub async fn get(self: &Arc<Self>, source: &Source) -> Result<Arc<Schema>, String> {
        if let Some(schema) = self.current(source) {
            return Ok(schema);
        }
        let schema = Arc::new(self.fetch(source).await?);
        let key = (source.database.clone(), source.user.clone());
        self.entries().insert(
            key,
            Entry {
                schema: Arc::clone(&schema),
                fetched: Instant::now(),
                stale: false,
                refreshing: false,
            },
        );
        Ok(schema)
    }

    /// The cached schema, starting a background refresh when it is due.
    pub fn current(self: &Arc<Self>, source: &Source) -> Option<Arc<Schema>> {
        let key = (source.database.clone(), source.user.clone());
        let mut entries = self.entries();
        let entry = entries.get_mut(&key)?;
        let due = entry.stale || entry.fetched.elapsed() >= self.refresh_after;
        if due && !entry.refreshing {
            entry.refreshing = true;
            let cache = Arc::clone(self);
            let source = source.clone();
            tokio::spawn(async move { cache.refresh(source, key).await });
        }
        Some(Arc::clone(&entry.schema))
    }

    async fn refresh(self: Arc<Self>, source: Source, key: Key) {
        let fetched = self.fetch(&source).await;
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        entry.refreshing = false;
        match fetched {
            Ok(schema) => {
                entry.schema = Arc::new(schema);
                entry.fetched = Instant::now();
                entry.stale = false;
            }
            Err(e) => {
                // Keep the old schema; try again at the next use.
                tracing::warn!(database = %source.database, error = %e, "schema refresh failed");
            }
        }
    }

    /// Marks every schema of `database` for refresh (DDL went through).
    pub fn invalidate(&self, database: &str) {
        for ((db, _), entry) in self.entries().iter_mut() {
            if db == database {
                entry.stale = true;
            }
        }
    }

    async fn fetch(&self, source: &Source) -> Result<Schema, String> {
        let mut client = open(source).await?;
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let schema = read_schema(&mut client, version).await;
        client.close().await;
        schema
    }
}

/// A short-lived connection as the role's own account.
pub async fn open(source: &Source) -> Result<SimpleClient, String> {
    let params = vec![
        ("database".to_string(), source.database.clone()),
        ("application_name".to_string(), "pgward:schema".to_string()),
    ];
    let creds = Credentials {
        user: &source.user,
        password: source.password.as_ref().map(|s| s.expose()),
    };
    let conn = upstream::connect(&source.target, creds, &params)
        .await
        .map_err(|e| format!("cannot read the schema of \"{}\": {e}", source.database))?;
    Ok(SimpleClient::new(conn))
}

/// Tables, columns and catalog relations, as the account sees them.
pub async fn read_schema(client: &mut SimpleClient, version: u64) -> Result<Schema, String> {
    let tables = client
        .query(TABLES_SQL)
        .await
        .map_err(|e| format!("reading the schema: {e}"))?;
    let catalog = client
        .query(CATALOG_SQL)
        .await
        .map_err(|e| format!("reading the catalog: {e}"))?;
    Schema::from_rows(&tables, &catalog, version)
}
