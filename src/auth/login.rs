//! The login decision: lockout, password, second factor, account state.
//!
//! Order matters for what an attacker can learn. Lockout is checked first and
//! is tracked per *name*, known or not, so it reveals nothing about which
//! names exist. An unknown name and a wrong password cost one argon2 check
//! each and produce the same error. Only after the password is right does
//! pgward say that an account is disabled. Which role the person may act in
//! is decided afterwards, by [`crate::access`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::identity::LoginName;
use super::password::PasswordPool;
use crate::error::{PgError, SqlState};
use crate::policy::RoleName;
use crate::store::{LoginAttempt, Store, StoreError};

/// A person who has proven who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub user: String,
    /// Roles assigned to the person, the default first.
    pub roles: Vec<RoleName>,
    pub attrs: BTreeMap<String, String>,
    /// What besides (or instead of) the password proved it.
    pub second_factor: SecondFactor,
}

/// The proof beyond a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondFactor {
    None,
    Totp,
    RecoveryCode,
    /// A client certificate from pgward's CA (issued after a login with a
    /// second factor, or to a service account).
    Certificate,
}

impl SecondFactor {
    pub fn is_some(self) -> bool {
        self != SecondFactor::None
    }

    /// As login audit events name it.
    pub fn label(self) -> &'static str {
        match self {
            SecondFactor::None => "none",
            SecondFactor::Totp => "totp",
            SecondFactor::RecoveryCode => "recovery_code",
            SecondFactor::Certificate => "certificate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoginFailure {
    #[error("password authentication failed for user {0:?}")]
    BadCredentials(String),
    #[error("account {user:?} is locked")]
    Locked { user: String, window: Duration },
    #[error("account {0:?} is disabled")]
    Disabled(String),
    #[error("login store unavailable: {0}")]
    Store(#[from] StoreError),
}

impl LoginFailure {
    /// A label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            LoginFailure::BadCredentials(_) => "bad_credentials",
            LoginFailure::Locked { .. } => "locked",
            LoginFailure::Disabled(_) => "disabled",
            LoginFailure::Store(_) => "store_error",
        }
    }

    /// What the client is told.
    pub fn to_pg_error(&self) -> PgError {
        match self {
            LoginFailure::BadCredentials(user) => PgError::fatal(
                SqlState::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
            LoginFailure::Locked { user, window } => PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!(
                    "pgward: account \"{user}\" is locked after repeated failed logins; try again in {} or ask an administrator",
                    humantime::format_duration(*window)
                ),
            ),
            LoginFailure::Disabled(user) => PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!("pgward: account \"{user}\" is disabled"),
            ),
            LoginFailure::Store(_) => PgError::fatal(
                SqlState::CONNECTION_REJECTED,
                "pgward: login is temporarily unavailable (the user store cannot be read)",
            ),
        }
    }
}

/// How long a login waits before asking again when other checks for the
/// same name are in flight.
const BUSY_RETRY: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    pool: PasswordPool,
    max_failures: u32,
    window: Duration,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        pool: PasswordPool,
        max_failures: u32,
        window: Duration,
    ) -> Self {
        Authenticator {
            store,
            pool,
            max_failures,
            window,
        }
    }

    /// The store logins read, for what follows a login (role choice).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Corrupt(format!("store task failed: {e}")))?
    }

    pub async fn login(&self, login: &LoginName, password: String) -> Result<Person, LoginFailure> {
        let name = login.user.clone();
        // A name that can never exist costs a decoy check like any unknown
        // user, and never reaches the store (or the log) as given.
        if crate::store::validate_user_name(&name).is_err() {
            self.pool.verify(None, password).await;
            return Err(LoginFailure::BadCredentials(sanitized(&name)));
        }
        let now = SystemTime::now();
        let since = now
            .checked_sub(self.window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let max = self.max_failures;

        let attempt = loop {
            let n = name.clone();
            let answer = self
                .blocking(move |s| s.begin_login_attempt(&n, now, since, max))
                .await?;
            match answer {
                LoginAttempt::Allowed { attempt } => break attempt,
                LoginAttempt::Locked => {
                    return Err(LoginFailure::Locked {
                        user: name,
                        window: self.window,
                    })
                }
                // Other checks for this name are running; the startup
                // timeout bounds the wait.
                LoginAttempt::Busy => tokio::time::sleep(BUSY_RETRY).await,
            }
        };

        let n = name.clone();
        let user = self.blocking(move |s| s.user(&n)).await?;
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let verified = self.pool.verify(hash, password).await;
        let user = match user {
            Some(user) if verified => user,
            _ => {
                let n = name.clone();
                let failures = self
                    .blocking(move |s| s.login_failed(&n, attempt, since))
                    .await?;
                if failures >= max {
                    return Err(LoginFailure::Locked {
                        user: name,
                        window: self.window,
                    });
                }
                return Err(LoginFailure::BadCredentials(name));
            }
        };
        let n = name.clone();
        self.blocking(move |s| s.login_succeeded(&n, now)).await?;
        if user.disabled {
            return Err(LoginFailure::Disabled(name));
        }
        Ok(Person {
            user: user.name,
            roles: user.roles,
            attrs: user.attrs,
            second_factor: SecondFactor::None,
        })
    }
}

/// A login name that failed validation, made safe to echo and log: at most
/// 64 characters, control characters replaced.
fn sanitized(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::hash_password;
    use crate::store::{NewUser, SqliteStore};

    fn setup(max_failures: u32) -> (Authenticator, Arc<SqliteStore>) {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        store
            .add_user(&NewUser {
                name: "alice".into(),
                password_hash: hash_password("right").unwrap(),
                roles: vec![RoleName::parse("dba").unwrap()],
                attrs: BTreeMap::new(),
            })
            .unwrap();
        let auth = Authenticator::new(
            store.clone(),
            PasswordPool::new(2).unwrap(),
            max_failures,
            Duration::from_secs(900),
        );
        (auth, store)
    }

    fn name(s: &str) -> LoginName {
        LoginName::parse(s, None).unwrap()
    }

    #[tokio::test]
    async fn right_password_logs_in_with_default_role() {
        let (auth, _) = setup(5);
        let person = auth.login(&name("alice"), "right".into()).await.unwrap();
        assert_eq!(person.roles[0].as_str(), "dba");
        assert_eq!(person.second_factor, SecondFactor::None);
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_look_the_same() {
        let (auth, _) = setup(5);
        let wrong = auth
            .login(&name("alice"), "wrong".into())
            .await
            .unwrap_err();
        let unknown = auth
            .login(&name("mallory"), "wrong".into())
            .await
            .unwrap_err();
        assert_eq!(wrong.to_pg_error().code, SqlState::INVALID_PASSWORD);
        assert_eq!(unknown.to_pg_error().code, SqlState::INVALID_PASSWORD);
        assert_eq!(
            wrong.to_pg_error().message.replace("alice", "X"),
            unknown.to_pg_error().message.replace("mallory", "X")
        );
    }

    #[tokio::test]
    async fn lockout_after_max_failures_even_with_right_password() {
        let (auth, _) = setup(3);
        for _ in 0..2 {
            let err = auth
                .login(&name("alice"), "wrong".into())
                .await
                .unwrap_err();
            assert!(matches!(err, LoginFailure::BadCredentials(_)));
        }
        let err = auth
            .login(&name("alice"), "wrong".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::Locked { .. }));
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert_eq!(err.to_pg_error().code, SqlState::INVALID_AUTHORIZATION);
        assert!(err.to_pg_error().message.contains("locked"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_guesses_cannot_overtake_the_lockout() {
        let (auth, _) = setup(3);
        let guesses: Vec<_> = (0..20)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.login(&name("alice"), format!("guess{i}")).await })
            })
            .collect();
        let mut checked = 0;
        for g in guesses {
            if let Err(LoginFailure::BadCredentials(_)) = g.await.unwrap() {
                checked += 1;
            }
        }
        assert!(
            checked <= 2,
            "{checked} guesses were checked; the limit is 3 failures"
        );
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::Locked { .. }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_parallel_logins_with_the_right_password_all_succeed() {
        let (auth, _) = setup(3);
        let logins: Vec<_> = (0..12)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.login(&name("alice"), "right".into()).await })
            })
            .collect();
        for login in logins {
            login
                .await
                .unwrap()
                .expect("a connection pool is not a brute-force attack");
        }
    }

    #[tokio::test]
    async fn names_that_cannot_exist_are_refused_like_unknown_users() {
        let (auth, store) = setup(5);
        let err = auth
            .login(&name("evil\nname"), "x".into())
            .await
            .unwrap_err();
        assert_eq!(err.to_pg_error().code, SqlState::INVALID_PASSWORD);
        assert!(!err.to_pg_error().message.contains('\n'));
        assert_eq!(store.users().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn disabled_is_refused_after_the_password() {
        let (auth, store) = setup(5);
        store.set_disabled("alice", true).unwrap();
        let err = auth
            .login(&name("alice"), "wrong".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::BadCredentials(_)));
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::Disabled(_)));
    }
}
