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

pub(super) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub(super) fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        crate::private_file::prepare(path)?;
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

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
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
            mfa_enrolled: row.get(6)?,
            mfa_required: row.get::<_, i64>(7)? != 0,
            service: row.get::<_, i64>(8)? != 0,
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

/// A password check takes well under a second; one recorded as in flight
/// for longer was abandoned by a process that died.
const PENDING_EXPIRY: Duration = Duration::from_secs(60);

const USER_COLUMNS: &str = "name, password_hash, disabled, attrs, created_at, last_login,
    totp_secret IS NOT NULL, mfa_required, service";

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
        // Failures outside the window no longer count, for any name, and a
        // check in flight for longer than a minute belongs to a crashed
        // process; dropping both keeps the table small even when someone
        // sprays made-up names.
        let stale = micros(at) - PENDING_EXPIRY.as_micros() as i64;
        tx.execute(
            "DELETE FROM login_failures WHERE at < ?1 OR (pending = 1 AND at < ?2)",
            params![micros(since), stale],
        )?;
        let (failures, pending): (i64, i64) = tx.query_row(
            "SELECT count(*) FILTER (WHERE pending = 0), count(*) FILTER (WHERE pending = 1)
             FROM login_failures WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let max = i64::from(max_failures);
        let answer = if failures >= max {
            LoginAttempt::Locked
        } else if failures + pending >= max {
            LoginAttempt::Busy
        } else {
            tx.execute(
                "INSERT INTO login_failures (name, at, pending) VALUES (?1, ?2, 1)",
                params![name, micros(at)],
            )?;
            LoginAttempt::Allowed {
                attempt: tx.last_insert_rowid(),
            }
        };
        tx.commit()?;
        Ok(answer)
    }

    fn login_failed(&self, name: &str, attempt: i64, since: SystemTime) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE login_failures SET pending = 0 WHERE rowid = ?1 AND name = ?2",
            params![attempt, name],
        )?;
        let count: i64 = tx.query_row(
            "SELECT count(*) FROM login_failures WHERE name = ?1 AND pending = 0 AND at >= ?2",
            params![name, micros(since)],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(count as u32)
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
    fn attempts_in_flight_and_failures_share_the_budget() {
        let store = SqliteStore::in_memory().unwrap();
        store.add_user(&alice()).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(900);
        let since = t0 - window;
        let begin = |at: SystemTime| store.begin_login_attempt("alice", at, since, 3).unwrap();
        let id = |a: LoginAttempt| match a {
            LoginAttempt::Allowed { attempt } => attempt,
            other => panic!("expected Allowed, got {other:?}"),
        };
        // Three checks in flight use the whole budget: a fourth waits.
        let a = id(begin(t0));
        let b = id(begin(t0));
        let c = id(begin(t0));
        assert_eq!(begin(t0), LoginAttempt::Busy);
        // Two of them fail, one succeeds: success clears everything.
        assert_eq!(store.login_failed("alice", a, since).unwrap(), 1);
        assert_eq!(store.login_failed("alice", b, since).unwrap(), 2);
        store.login_succeeded("alice", t0).unwrap();
        let _ = c;
        assert_eq!(store.user("alice").unwrap().unwrap().last_login, Some(t0));
        // Three real failures lock the name.
        for _ in 0..3 {
            let attempt = id(begin(t0));
            store.login_failed("alice", attempt, since).unwrap();
        }
        assert_eq!(begin(t0), LoginAttempt::Locked);
        // After the window, the name may try again.
        let later = t0 + Duration::from_secs(2000);
        let later_since = later - window;
        assert!(matches!(
            store
                .begin_login_attempt("alice", later, later_since, 3)
                .unwrap(),
            LoginAttempt::Allowed { .. }
        ));
        // Old rows of other names are pruned too, and so are abandoned
        // in-flight checks.
        store.begin_login_attempt("ghost", t0, since, 3).unwrap();
        store
            .begin_login_attempt("alice", later, later_since, 3)
            .unwrap();
        let count: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM login_failures WHERE name = 'ghost'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 0);
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
