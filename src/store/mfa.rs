//! Second factors in the store: TOTP secrets, the last time step used (so
//! each code works once), and single-use recovery codes kept hashed.
//!
//! The store knows nothing of TOTP itself: it keeps a secret as text and a
//! step as a number, and answers the one question that must be atomic: may
//! this step (or this recovery code) be used now? Two logins racing with one
//! code both ask, and exactly one is told yes.

use std::time::SystemTime;

use rusqlite::{params, OptionalExtension};
use subtle::ConstantTimeEq;

use super::sqlite::micros;
use super::{SqliteStore, StoreError};

pub trait MfaStore {
    /// Gives `name` a TOTP secret and a fresh set of recovery codes (their
    /// SHA-256, hex), forgetting the last step used and any old codes.
    /// Returns false, changing nothing, if a secret is already enrolled and
    /// `replace` is false.
    fn enroll_totp(
        &self,
        name: &str,
        secret: &str,
        recovery_hashes: &[String],
        replace: bool,
    ) -> Result<bool, StoreError>;
    /// Removes the secret and the recovery codes. Returns whether there was
    /// a secret.
    fn reset_mfa(&self, name: &str) -> Result<bool, StoreError>;
    /// The enrolled secret (base32), if any.
    fn totp_secret(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Records that a code of time step `step`, checked against `secret`,
    /// was used, if `step` is later than every step used before and `secret`
    /// is still the one enrolled; false means the code (or a newer one) was
    /// already used, or the secret was replaced meanwhile, and the login
    /// must fail.
    fn claim_totp_step(&self, name: &str, secret: &str, step: u64) -> Result<bool, StoreError>;
    /// Marks the unused recovery code with this hash as used at `at`; false
    /// if there is no such unused code.
    fn use_recovery_code(&self, name: &str, hash: &str, at: SystemTime)
        -> Result<bool, StoreError>;
    /// Recovery codes not yet used.
    fn recovery_codes_left(&self, name: &str) -> Result<u32, StoreError>;
    /// Whether logins must use a second factor (refused until one is
    /// enrolled).
    fn set_mfa_required(&self, name: &str, required: bool) -> Result<(), StoreError>;
    /// Marks a service account (exempt from `auth.mfa_required`).
    fn set_service(&self, name: &str, service: bool) -> Result<(), StoreError>;
    /// Ends a login attempt from [`super::Store::begin_login_attempt`] that
    /// had the right password but stopped for want of a second factor: not a
    /// failure, yet earlier failures stay, or anyone holding the password
    /// could reset the budget for guessing codes.
    fn release_login_attempt(&self, name: &str, attempt: i64) -> Result<(), StoreError>;
}

impl SqliteStore {
    fn set_user_flag(&self, name: &str, column: &str, value: bool) -> Result<(), StoreError> {
        let changed = self.conn().execute(
            &format!("UPDATE users SET {column} = ?2 WHERE name = ?1"),
            params![name, value as i64],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }
}

impl MfaStore for SqliteStore {
    fn enroll_totp(
        &self,
        name: &str,
        secret: &str,
        recovery_hashes: &[String],
        replace: bool,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let enrolled: Option<bool> = tx
            .query_row(
                "SELECT totp_secret IS NOT NULL FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match enrolled {
            None => return Err(StoreError::NoSuchUser(name.to_string())),
            Some(true) if !replace => return Ok(false),
            Some(_) => {}
        }
        tx.execute(
            "UPDATE users SET totp_secret = ?2, totp_last_step = 0 WHERE name = ?1",
            params![name, secret],
        )?;
        tx.execute("DELETE FROM recovery_codes WHERE user = ?1", [name])?;
        for hash in recovery_hashes {
            tx.execute(
                "INSERT INTO recovery_codes (user, hash) VALUES (?1, ?2)",
                params![name, hash],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn reset_mfa(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let enrolled: Option<bool> = tx
            .query_row(
                "SELECT totp_secret IS NOT NULL FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let enrolled = enrolled.ok_or_else(|| StoreError::NoSuchUser(name.to_string()))?;
        tx.execute(
            "UPDATE users SET totp_secret = NULL, totp_last_step = 0 WHERE name = ?1",
            [name],
        )?;
        tx.execute("DELETE FROM recovery_codes WHERE user = ?1", [name])?;
        tx.commit()?;
        Ok(enrolled)
    }

    fn totp_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        let secret: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT totp_secret FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        Ok(secret.flatten())
    }

    fn claim_totp_step(&self, name: &str, secret: &str, step: u64) -> Result<bool, StoreError> {
        let step = i64::try_from(step).map_err(|_| StoreError::Corrupt("time step".into()))?;
        // One statement: the check and the write cannot be separated by
        // another login, in this process or another sharing the file.
        let changed = self.conn().execute(
            "UPDATE users SET totp_last_step = ?3
             WHERE name = ?1 AND totp_secret = ?2 AND totp_last_step < ?3",
            params![name, secret, step],
        )?;
        Ok(changed == 1)
    }

    fn use_recovery_code(
        &self,
        name: &str,
        hash: &str,
        at: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Compare against every unused code in constant time rather than
        // look the hash up: how long a lookup takes must not hint at how much
        // of a stored hash a guess shares.
        let unused: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT hash FROM recovery_codes WHERE user = ?1 AND used_at IS NULL",
            )?;
            let rows = stmt
                .query_map([name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            rows
        };
        let mut matched = None;
        for stored in &unused {
            if bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
                matched = Some(stored);
            }
        }
        let Some(stored) = matched else {
            return Ok(false);
        };
        let changed = tx.execute(
            "UPDATE recovery_codes SET used_at = ?3
             WHERE user = ?1 AND hash = ?2 AND used_at IS NULL",
            params![name, stored, micros(at)],
        )?;
        tx.commit()?;
        Ok(changed == 1)
    }

    fn recovery_codes_left(&self, name: &str) -> Result<u32, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM recovery_codes WHERE user = ?1 AND used_at IS NULL",
            [name],
            |r| r.get(0),
        )?;
        Ok(n as u32)
    }

    fn set_mfa_required(&self, name: &str, required: bool) -> Result<(), StoreError> {
        self.set_user_flag(name, "mfa_required", required)
    }

    fn set_service(&self, name: &str, service: bool) -> Result<(), StoreError> {
        self.set_user_flag(name, "service", service)
    }

    fn release_login_attempt(&self, name: &str, attempt: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM login_failures WHERE rowid = ?1 AND name = ?2 AND pending = 1",
            params![attempt, name],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::{LoginAttempt, NewUser, Store};

    fn store_with_alice() -> SqliteStore {
        let store = SqliteStore::in_memory().unwrap();
        store
            .add_user(&NewUser {
                name: "alice".into(),
                password_hash: "$argon2id$fake".into(),
                roles: vec![],
                attrs: Default::default(),
            })
            .unwrap();
        store
    }

    fn hashes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    #[test]
    fn enrolling_replaces_only_when_asked() {
        let store = store_with_alice();
        assert!(!store.user("alice").unwrap().unwrap().mfa_enrolled);
        assert!(store
            .enroll_totp("alice", "SECRET1", &hashes(3), false)
            .unwrap());
        assert!(store.user("alice").unwrap().unwrap().mfa_enrolled);
        assert!(store.claim_totp_step("alice", "SECRET1", 100).unwrap());
        assert!(!store
            .enroll_totp("alice", "SECRET2", &hashes(2), false)
            .unwrap());
        assert_eq!(
            store.totp_secret("alice").unwrap().as_deref(),
            Some("SECRET1")
        );
        assert_eq!(store.recovery_codes_left("alice").unwrap(), 3);
        assert!(store
            .enroll_totp("alice", "SECRET2", &hashes(2), true)
            .unwrap());
        assert_eq!(
            store.totp_secret("alice").unwrap().as_deref(),
            Some("SECRET2")
        );
        assert_eq!(store.recovery_codes_left("alice").unwrap(), 2);
        assert!(
            !store.claim_totp_step("alice", "SECRET1", 101).unwrap(),
            "a code of the replaced secret"
        );
        assert!(
            store.claim_totp_step("alice", "SECRET2", 50).unwrap(),
            "a new secret starts over"
        );
        assert!(matches!(
            store.enroll_totp("bob", "S", &[], false),
            Err(StoreError::NoSuchUser(_))
        ));
    }

    #[test]
    fn a_step_is_claimed_once_and_older_steps_never() {
        let store = store_with_alice();
        assert!(
            !store.claim_totp_step("alice", "S", 10).unwrap(),
            "not enrolled"
        );
        store.enroll_totp("alice", "S", &[], false).unwrap();
        assert!(store.claim_totp_step("alice", "S", 10).unwrap());
        assert!(!store.claim_totp_step("alice", "S", 10).unwrap(), "replay");
        assert!(!store.claim_totp_step("alice", "S", 9).unwrap(), "older");
        assert!(store.claim_totp_step("alice", "S", 11).unwrap());
        assert!(!store.claim_totp_step("bob", "S", 12).unwrap());
    }

    #[test]
    fn concurrent_claims_of_one_step_have_one_winner() {
        let store = Arc::new(store_with_alice());
        store.enroll_totp("alice", "S", &[], false).unwrap();
        let wins: usize = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.claim_totp_step("alice", "S", 77).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap() as usize)
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn a_recovery_code_works_once_and_reset_removes_everything() {
        let store = store_with_alice();
        let codes = hashes(2);
        store.enroll_totp("alice", "S", &codes, false).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!store
            .use_recovery_code("alice", &"f".repeat(64), at)
            .unwrap());
        assert!(store.use_recovery_code("alice", &codes[1], at).unwrap());
        assert!(!store.use_recovery_code("alice", &codes[1], at).unwrap());
        assert_eq!(store.recovery_codes_left("alice").unwrap(), 1);
        assert!(!store.use_recovery_code("bob", &codes[0], at).unwrap());
        assert!(store.reset_mfa("alice").unwrap());
        assert!(!store.reset_mfa("alice").unwrap());
        assert!(!store.user("alice").unwrap().unwrap().mfa_enrolled);
        assert!(!store.use_recovery_code("alice", &codes[0], at).unwrap());
        assert_eq!(store.totp_secret("alice").unwrap(), None);
        assert!(matches!(
            store.reset_mfa("bob"),
            Err(StoreError::NoSuchUser(_))
        ));
    }

    #[test]
    fn flags_are_set_and_read_back() {
        let store = store_with_alice();
        store.set_mfa_required("alice", true).unwrap();
        store.set_service("alice", true).unwrap();
        let u = store.user("alice").unwrap().unwrap();
        assert!(u.mfa_required && u.service);
        store.set_mfa_required("alice", false).unwrap();
        assert!(!store.user("alice").unwrap().unwrap().mfa_required);
        assert!(matches!(
            store.set_service("bob", true),
            Err(StoreError::NoSuchUser(_))
        ));
    }

    #[test]
    fn a_released_attempt_neither_fails_nor_forgives() {
        let store = store_with_alice();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let since = t0 - Duration::from_secs(900);
        let begin = || match store.begin_login_attempt("alice", t0, since, 2).unwrap() {
            LoginAttempt::Allowed { attempt } => attempt,
            other => panic!("{other:?}"),
        };
        let a = begin();
        assert_eq!(store.login_failed("alice", a, since).unwrap(), 1);
        // Released attempts free their place in the budget without
        // clearing the failure.
        for _ in 0..5 {
            let b = begin();
            store.release_login_attempt("alice", b).unwrap();
        }
        let c = begin();
        assert_eq!(store.login_failed("alice", c, since).unwrap(), 2);
        assert_eq!(
            store.begin_login_attempt("alice", t0, since, 2).unwrap(),
            LoginAttempt::Locked
        );
    }
}
