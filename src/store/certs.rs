//! Client certificates pgward's CA issued: who holds each serial, until
//! when, and whether it was revoked.
//!
//! The certificate itself proves who signed it; this table decides whether
//! pgward still honours it. A serial that is not here is refused, so a
//! certificate made with a stolen CA key but never recorded does not log in.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension, Row};

use super::sqlite::{from_micros, micros};
use super::{SqliteStore, StoreError};

/// One issued certificate, as recorded when it was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRecord {
    /// Lower-case hex, no separators.
    pub serial: String,
    pub user: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// Issued to a service account, under the longer lifetime cap.
    pub service: bool,
    /// Who asked for it (an operator's OS user, or the person themselves).
    pub issued_by: String,
    pub revoked_at: Option<SystemTime>,
}

impl CertRecord {
    /// `active`, `expired` or `revoked`, as of `now`.
    pub fn status(&self, now: SystemTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "active"
        }
    }
}

pub trait CertStore {
    /// Records a certificate just issued.
    fn add_cert(&self, cert: &CertRecord) -> Result<(), StoreError>;
    fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;
    /// Every certificate, or one person's, newest first.
    fn certs(&self, user: Option<&str>) -> Result<Vec<CertRecord>, StoreError>;
    /// Revokes an active certificate; false if it is unknown or already
    /// revoked (the first revocation time stays).
    fn revoke_cert(&self, serial: &str, at: SystemTime) -> Result<bool, StoreError>;
    /// Notes a login with a certificate as the person's last login. Unlike
    /// a password success it leaves recorded password failures alone: a
    /// certificate says nothing about who was guessing the password.
    fn cert_login(&self, user: &str, at: SystemTime) -> Result<(), StoreError>;
}

const CERT_COLUMNS: &str = "serial, user, issued_at, expires_at, service, issued_by, revoked_at";

fn read_cert(row: &Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: row.get(0)?,
        user: row.get(1)?,
        issued_at: from_micros(row.get(2)?),
        expires_at: from_micros(row.get(3)?),
        service: row.get::<_, i64>(4)? != 0,
        issued_by: row.get(5)?,
        revoked_at: row.get::<_, Option<i64>>(6)?.map(from_micros),
    })
}

impl CertStore for SqliteStore {
    fn add_cert(&self, cert: &CertRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO certificates (serial, user, issued_at, expires_at, service, issued_by, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                cert.serial,
                cert.user,
                micros(cert.issued_at),
                micros(cert.expires_at),
                cert.service as i64,
                cert.issued_by,
                cert.revoked_at.map(micros),
            ],
        )?;
        Ok(())
    }

    fn cert(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"
        ))?;
        Ok(stmt.query_row([serial], read_cert).optional()?)
    }

    fn certs(&self, user: Option<&str>) -> Result<Vec<CertRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE ?1 IS NULL OR user = ?1
             ORDER BY issued_at DESC, serial"
        ))?;
        let certs = stmt
            .query_map([user], read_cert)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(certs)
    }

    fn revoke_cert(&self, serial: &str, at: SystemTime) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE certificates SET revoked_at = ?2 WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, micros(at)],
        )?;
        Ok(changed > 0)
    }

    fn cert_login(&self, user: &str, at: SystemTime) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE users SET last_login = ?2 WHERE name = ?1",
            params![user, micros(at)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
impl SqliteStore {
    /// Marks a service account; the command for it belongs to `user`.
    pub(crate) fn set_service_for_tests(&self, name: &str, service: bool) {
        self.conn()
            .execute(
                "UPDATE users SET service = ?2 WHERE name = ?1",
                params![name, service as i64],
            )
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::{NewUser, Store};

    fn record(serial: &str, user: &str, issued: u64) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            user: user.into(),
            issued_at: UNIX_EPOCH + Duration::from_secs(issued),
            expires_at: UNIX_EPOCH + Duration::from_secs(issued + 3600),
            service: false,
            issued_by: "root".into(),
            revoked_at: None,
        }
    }

    #[test]
    fn certificates_round_trip_and_revoke_once() {
        let store = SqliteStore::in_memory().unwrap();
        store.add_cert(&record("0a", "alice", 1000)).unwrap();
        store.add_cert(&record("0b", "bob", 2000)).unwrap();
        assert!(store.add_cert(&record("0a", "alice", 3000)).is_err());
        assert_eq!(store.cert("0a").unwrap(), Some(record("0a", "alice", 1000)));
        assert_eq!(store.cert("ff").unwrap(), None);
        let all: Vec<String> = store
            .certs(None)
            .unwrap()
            .into_iter()
            .map(|c| c.serial)
            .collect();
        assert_eq!(all, ["0b", "0a"], "newest first");
        assert_eq!(store.certs(Some("alice")).unwrap().len(), 1);

        let first = UNIX_EPOCH + Duration::from_secs(1500);
        assert!(store.revoke_cert("0a", first).unwrap());
        assert!(!store
            .revoke_cert("0a", first + Duration::from_secs(9))
            .unwrap());
        assert!(!store.revoke_cert("ff", first).unwrap());
        let revoked = store.cert("0a").unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(first));
        assert_eq!(revoked.status(first), "revoked");
        let bob = store.cert("0b").unwrap().unwrap();
        assert_eq!(bob.status(UNIX_EPOCH + Duration::from_secs(2001)), "active");
        assert_eq!(
            bob.status(UNIX_EPOCH + Duration::from_secs(9999)),
            "expired"
        );
    }

    #[test]
    fn a_certificate_login_keeps_password_failures() {
        let store = SqliteStore::in_memory().unwrap();
        store
            .add_user(&NewUser {
                name: "alice".into(),
                password_hash: "$argon2id$fake".into(),
                roles: vec![],
                attrs: Default::default(),
            })
            .unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let since = t0 - Duration::from_secs(900);
        let attempt = match store.begin_login_attempt("alice", t0, since, 3).unwrap() {
            crate::store::LoginAttempt::Allowed { attempt } => attempt,
            other => panic!("{other:?}"),
        };
        assert_eq!(store.login_failed("alice", attempt, since).unwrap(), 1);
        store.cert_login("alice", t0).unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap().last_login, Some(t0));
        let count: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM login_failures WHERE name = 'alice' AND pending = 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 1);
    }
}
