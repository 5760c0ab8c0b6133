//! The embedded SQLite store: one file, WAL mode, migrations on open.
//!
//! A single connection behind a mutex is enough: every call is a short
//! transaction, and callers already run on the blocking thread pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::migrations::MIGRATIONS;
use super::{LoginAttempt, NewUser, Store, StoreError, UserRecord};
use crate::policy::RoleName;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied change:
        // every write is one SQLite transaction. Recover the guard.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn roles_of(conn: &Connection, name: &str) -> Result<Vec<RoleName>, StoreError> {
        let mut stmt =
            conn.prepare_cached("SELECT role FROM user_roles WHERE user = ?1 ORDER BY position")?;
        let roles = stmt
            .query_map([name], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        roles
            .iter()
            .map(|r| RoleName::parse(r).map_err(StoreError::Corrupt))
            .collect()
    }

    fn read_user(conn: &Connection, row: &rusqlite::Row<'_>) -> Result<UserRecord, StoreError> {
        let name: String = row.get(0)?;
        let attrs: String = row.get(3)?;
        let attrs: BTreeMap<String, String> = serde_json::from_str(&attrs)
            .map_err(|e| StoreError::Corrupt(format!("attributes of {name:?}: {e}")))?;
        Ok(UserRecord {
            roles: Self::roles_of(conn, &name)?,
            password_hash: row.get(1)?,
            disabled: row.get::<_, i64>(2)? != 0,
            attrs,
            created_at: from_micros(row.get(4)?),
            last_login: row.get::<_, Option<i64>>(5)?.map(from_micros),
            name,
        })
    }

    fn require_changed(changed: usize, name: &str) -> Result<(), StoreError> {
        if changed == 0 {
            Err(StoreError::NoSuchUser(name.to_string()))
        } else {
            Ok(())
        }
    }
}

const USER_COLUMNS: &str = "name, password_hash, disabled, attrs, created_at, last_login";

impl Store for SqliteStore {
    fn add_user(&self, user: &NewUser) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let attrs =
            serde_json::to_string(&user.attrs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = tx.execute(
            "INSERT INTO users (name, password_hash, attrs, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO NOTHING",
            params![
                user.name,
                user.password_hash,
                attrs,
                micros(SystemTime::now())
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::UserExists(user.name.clone()));
        }
        for (i, role) in user.roles.iter().enumerate() {
            tx.execute(
                "INSERT INTO user_roles (user, role, position) VALUES (?1, ?2, ?3)",
                params![user.name, role.as_str(), i as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?1"))?;
        let mut rows = stmt.query([name])?;
        match rows.next()? {
            Some(row) => Ok(Some(Self::read_user(&conn, row)?)),
            None => Ok(None),
        }
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))?;
        let mut rows = stmt.query([])?;
        let mut users = Vec::new();
        while let Some(row) = rows.next()? {
            users.push(Self::read_user(&conn, row)?);
        }
        Ok(users)
    }

    fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            params![name, password_hash],
        )?;
        Self::require_changed(changed, name)
    }

    fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            "UPDATE users SET disabled = ?2 WHERE name = ?1",
            params![name, disabled as i64],
        )?;
        Self::require_changed(changed, name)
    }

    fn set_roles(&self, name: &str, roles: &[RoleName]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::NoSuchUser(name.to_string()));
        }
        tx.execute("DELETE FROM user_roles WHERE user = ?1", [name])?;
        for (i, role) in roles.iter().enumerate() {
            tx.execute(
                "INSERT INTO user_roles (user, role, position) VALUES (?1, ?2, ?3)",
                params![name, role.as_str(), i as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_attr(&self, name: &str, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let attrs: Option<String> = tx
            .query_row("SELECT attrs FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let attrs = attrs.ok_or_else(|| StoreError::NoSuchUser(name.to_string()))?;
        let mut attrs: BTreeMap<String, String> =
            serde_json::from_str(&attrs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match value {
            Some(v) => attrs.insert(key.to_string(), v.to_string()),
            None => attrs.remove(key),
        };
        let attrs =
            serde_json::to_string(&attrs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE users SET attrs = ?2 WHERE name = ?1",
            params![name, attrs],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn begin_login_attempt(
        &self,
        name: &str,
        at: SystemTime,
        since: SystemTime,
        max_failures: u32,
    ) -> Result<LoginAttempt, StoreError> {
        let mut conn = self.conn();
        // IMMEDIATE: take the write lock before counting, so two pgward
        // instances sharing the file cannot both see "one below the limit".
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Failures outside the window no longer count, for any name; dropping
        // them keeps the table small even when someone sprays made-up names.
        tx.execute(
            "DELETE FROM login_failures WHERE at < ?1",
            params![micros(since)],
        )?;
        let count: i64 = tx.query_row(
            "SELECT count(*) FROM login_failures WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        if count >= i64::from(max_failures) {
            tx.commit()?;
            return Ok(LoginAttempt::Locked);
        }
        tx.execute(
            "INSERT INTO login_failures (name, at) VALUES (?1, ?2)",
            params![name, micros(at)],
        )?;
        tx.commit()?;
        Ok(LoginAttempt::Allowed {
            failures: count as u32 + 1,
        })
    }

    fn login_succeeded(&self, name: &str, at: SystemTime) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM login_failures WHERE name = ?1", [name])?;
        tx.execute(
            "UPDATE users SET last_login = ?2 WHERE name = ?1",
            params![name, micros(at)],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> RoleName {
        RoleName::parse(s).unwrap()
    }

    fn alice() -> NewUser {
        NewUser {
            name: "alice".into(),
            password_hash: "$argon2id$fake".into(),
            roles: vec![role("analyst"), role("dba")],
            attrs: [("clinic_id".to_string(), "1".to_string())].into(),
        }
    }

    #[test]
    fn users_round_trip() {
        let store = SqliteStore::in_memory().unwrap();
        store.add_user(&alice()).unwrap();
        assert!(matches!(
            store.add_user(&alice()),
            Err(StoreError::UserExists(_))
        ));
        let got = store.user("alice").unwrap().unwrap();
        assert_eq!(got.roles, vec![role("analyst"), role("dba")]);
        assert_eq!(got.attrs["clinic_id"], "1");
        assert!(!got.disabled);
        store.set_disabled("alice", true).unwrap();
        store.set_attr("alice", "clinic_id", Some("2")).unwrap();
        store.set_attr("alice", "team", Some("ops")).unwrap();
        store.set_attr("alice", "team", None).unwrap();
        store.set_roles("alice", &[role("dba")]).unwrap();
        store.set_password("alice", "$argon2id$new").unwrap();
        let got = store.user("alice").unwrap().unwrap();
        assert!(got.disabled);
        assert_eq!(got.attrs.len(), 1);
        assert_eq!(got.attrs["clinic_id"], "2");
        assert_eq!(got.roles, vec![role("dba")]);
        assert_eq!(got.password_hash, "$argon2id$new");
        assert!(store.user("bob").unwrap().is_none());
        assert!(matches!(
            store.set_disabled("bob", true),
            Err(StoreError::NoSuchUser(_))
        ));
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[test]
    fn attempts_count_within_window_and_clear_on_success() {
        let store = SqliteStore::in_memory().unwrap();
        store.add_user(&alice()).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(900);
        let attempt = |at: SystemTime| store.begin_login_attempt("alice", at, at - window, 3);
        for i in 0..3 {
            let at = t0 + Duration::from_secs(i);
            assert_eq!(
                attempt(at).unwrap(),
                LoginAttempt::Allowed {
                    failures: i as u32 + 1
                }
            );
        }
        // Three attempts in flight or failed: the fourth is refused before
        // any password is checked.
        assert_eq!(
            attempt(t0 + Duration::from_secs(5)).unwrap(),
            LoginAttempt::Locked
        );
        // After the window, the name may try again.
        let later = t0 + Duration::from_secs(2000);
        assert!(matches!(
            attempt(later).unwrap(),
            LoginAttempt::Allowed { failures: 1 }
        ));
        store.login_succeeded("alice", later).unwrap();
        assert!(matches!(
            attempt(later).unwrap(),
            LoginAttempt::Allowed { failures: 1 }
        ));
        assert_eq!(
            store.user("alice").unwrap().unwrap().last_login,
            Some(later)
        );
        // Old failures of other names are pruned too.
        store
            .begin_login_attempt("ghost", t0, t0 - window, 3)
            .unwrap();
        attempt(later).unwrap();
        let count: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM login_failures WHERE name = 'ghost'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 0, "pruned by the later attempt of another name");
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgward.db");
        SqliteStore::open(&path)
            .unwrap()
            .add_user(&alice())
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.user("alice").unwrap().is_some());
    }
}
