//! The login decision: lockout, password, second factor, account state.
//!
//! Order matters for what an attacker can learn. Lockout is checked first and
//! is tracked per *name*, known or not, so it reveals nothing about which
//! names exist. An unknown name and a wrong password cost one argon2 check
//! each and produce the same error. Only after the password is right does
//! pgward say that a second-factor code is missing or wrong, or that an
//! account is disabled. Which role the person may act in is decided
//! afterwards, by [`crate::access`].
//!
//! People with TOTP enrolled send `password:code` in the password field (see
//! [`super::totp`]). A wrong code is a failed login like a wrong password, so
//! codes cannot be guessed faster than passwords; a missing code is not, but
//! it does not clear earlier failures either.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::identity::LoginName;
use super::password::PasswordPool;
use super::totp::{self, Code, TotpSecret};
use crate::error::{PgError, SqlState};
use crate::policy::RoleName;
use crate::store::{LoginAttempt, Store, StoreError, UserRecord};

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
    #[error("invalid or already used second-factor code for user {0:?}")]
    MfaFailed(String),
    #[error("user {0:?} sent no second-factor code")]
    MfaMissing(String),
    #[error("user {0:?} must use a second factor but has none enrolled")]
    MfaNotEnrolled(String),
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
            LoginFailure::MfaFailed(_) => "mfa_failed",
            LoginFailure::MfaMissing(_) => "mfa_missing",
            LoginFailure::MfaNotEnrolled(_) => "mfa_not_enrolled",
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
            LoginFailure::MfaFailed(user) => PgError::fatal(
                SqlState::INVALID_PASSWORD,
                format!("pgward: invalid or already used second-factor code for user \"{user}\""),
            )
            .with_hint(
                "use the code the authenticator app shows now (each code works once), or an unused recovery code",
            ),
            LoginFailure::MfaMissing(user) => PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!(
                    "pgward: user \"{user}\" must add a second-factor code: append ':' and the 6-digit code from the authenticator app to the password"
                ),
            ),
            LoginFailure::MfaNotEnrolled(user) => PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                format!(
                    "pgward: user \"{user}\" must log in with a second factor but has none enrolled; ask an administrator to enroll you (pgward user mfa enroll {user})"
                ),
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
    /// `auth.mfa_required`: everyone but service accounts needs a second
    /// factor.
    mfa_required: bool,
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
            mfa_required: false,
        }
    }

    /// Refuses people without a second factor enrolled (service accounts
    /// excepted), as `auth.mfa_required` asks.
    pub fn mfa_required(mut self, required: bool) -> Self {
        self.mfa_required = required;
        self
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
        // With a second factor enrolled the field is `password:code`.
        // Splitting it is string work only: the one argon2 check below costs
        // the same for everyone and tells nothing about who has a factor.
        let (password, code) = match &user {
            Some(u) if u.mfa_enrolled => {
                let (password, code) = totp::split_code(&password);
                (password.to_string(), code)
            }
            _ => (password, None),
        };
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let verified = self.pool.verify(hash, password).await;
        let user = match user {
            Some(user) if verified => user,
            _ => {
                let failure = LoginFailure::BadCredentials(name.clone());
                return Err(self.failed(&name, attempt, since, failure).await);
            }
        };

        let second_factor = if user.mfa_enrolled {
            let Some(code) = code else {
                self.release(&name, attempt).await?;
                return Err(LoginFailure::MfaMissing(name));
            };
            match self.check_code(&name, code).await? {
                Some(factor) => factor,
                None => {
                    let failure = LoginFailure::MfaFailed(name.clone());
                    return Err(self.failed(&name, attempt, since, failure).await);
                }
            }
        } else {
            SecondFactor::None
        };
        if !user.disabled && !second_factor.is_some() && self.needs_second_factor(&user) {
            self.release(&name, attempt).await?;
            return Err(LoginFailure::MfaNotEnrolled(name));
        }

        let n = name.clone();
        self.blocking(move |s| s.login_succeeded(&n, now)).await?;
        if user.disabled {
            return Err(LoginFailure::Disabled(name));
        }
        Ok(Person {
            user: user.name,
            roles: user.roles,
            attrs: user.attrs,
            second_factor,
        })
    }

    fn needs_second_factor(&self, user: &UserRecord) -> bool {
        user.mfa_required || (self.mfa_required && !user.service)
    }

    /// Checks a code against the person's enrolled factor and uses it up:
    /// a TOTP step (and every step before it) or one recovery code. `None`
    /// when it is wrong, expired or already used.
    async fn check_code(
        &self,
        name: &str,
        code: Code,
    ) -> Result<Option<SecondFactor>, LoginFailure> {
        // The time now, not when the login began: the password check may
        // have queued for a while.
        let now = SystemTime::now();
        let n = name.to_string();
        match code {
            Code::Totp(digits) => {
                let stored = self.blocking(move |s| s.totp_secret(&n)).await?;
                // Reset between reading the user and now: no factor to check.
                let Some(stored) = stored else {
                    return Ok(None);
                };
                let secret = TotpSecret::from_base32(&stored)
                    .map_err(|e| StoreError::Corrupt(format!("TOTP secret of {name:?}: {e}")))?;
                let Some(step) = secret.verify(&digits, now) else {
                    return Ok(None);
                };
                let n = name.to_string();
                let fresh = self
                    .blocking(move |s| s.claim_totp_step(&n, &stored, step))
                    .await?;
                Ok(fresh.then_some(SecondFactor::Totp))
            }
            Code::Recovery(code) => {
                let hash = code.hash();
                let unused = self
                    .blocking(move |s| s.use_recovery_code(&n, &hash, now))
                    .await?;
                Ok(unused.then_some(SecondFactor::RecoveryCode))
            }
        }
    }

    /// Records a failed attempt; the failure becomes `Locked` when it used
    /// up the name's budget.
    async fn failed(
        &self,
        name: &str,
        attempt: i64,
        since: SystemTime,
        failure: LoginFailure,
    ) -> LoginFailure {
        let n = name.to_string();
        match self
            .blocking(move |s| s.login_failed(&n, attempt, since))
            .await
        {
            Ok(failures) if failures >= self.max_failures => LoginFailure::Locked {
                user: name.to_string(),
                window: self.window,
            },
            Ok(_) => failure,
            Err(e) => e.into(),
        }
    }

    /// Ends an attempt that was neither a failure nor a login.
    async fn release(&self, name: &str, attempt: i64) -> Result<(), LoginFailure> {
        let n = name.to_string();
        self.blocking(move |s| s.release_login_attempt(&n, attempt))
            .await?;
        Ok(())
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
    use crate::auth::totp::{step_at, RecoveryCode};
    use crate::store::mfa::MfaStore;
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

    /// Enrolls alice; returns her secret and recovery codes.
    fn enroll(store: &SqliteStore) -> (TotpSecret, Vec<RecoveryCode>) {
        let secret = TotpSecret::generate();
        let codes = RecoveryCode::generate_set();
        let hashes: Vec<String> = codes.iter().map(RecoveryCode::hash).collect();
        assert!(store
            .enroll_totp("alice", secret.base32(), &hashes, false)
            .unwrap());
        (secret, codes)
    }

    /// Waits, if need be, until the current time step has a few seconds
    /// left, so a test's codes are not read on one side of a step boundary
    /// and checked on the other.
    async fn fresh_step() {
        let into = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % totp::STEP_SECONDS;
        if into >= totp::STEP_SECONDS - 3 {
            tokio::time::sleep(Duration::from_secs(totp::STEP_SECONDS - into)).await;
        }
    }

    fn code_now(secret: &TotpSecret, offset: i64) -> String {
        secret.code_at(step_at(SystemTime::now()).saturating_add_signed(offset))
    }

    /// The failures counting towards alice's lockout, as the store sees
    /// them: one less than the smallest budget they leave room in.
    fn failures(store: &SqliteStore) -> u32 {
        let now = SystemTime::now();
        let since = now - Duration::from_secs(900);
        (1..100)
            .find(
                |&max| match store.begin_login_attempt("alice", now, since, max) {
                    Ok(LoginAttempt::Locked) => false,
                    Ok(LoginAttempt::Allowed { attempt }) => {
                        store.release_login_attempt("alice", attempt).unwrap();
                        true
                    }
                    other => panic!("{other:?}"),
                },
            )
            .unwrap()
            - 1
    }

    #[tokio::test]
    async fn a_totp_code_logs_in_once() {
        let (auth, store) = setup(5);
        let (secret, _) = enroll(&store);
        let code = code_now(&secret, 0);
        let person = auth
            .login(&name("alice"), format!("right:{code}"))
            .await
            .unwrap();
        assert_eq!(person.second_factor, SecondFactor::Totp);
        let err = auth
            .login(&name("alice"), format!("right:{code}"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaFailed(_)), "{err:?}");
        assert_eq!(err.outcome(), "mfa_failed");
        let pg = err.to_pg_error();
        assert_eq!(pg.code, SqlState::INVALID_PASSWORD);
        assert_eq!(
            pg.message,
            "pgward: invalid or already used second-factor code for user \"alice\""
        );
    }

    #[tokio::test]
    async fn skew_of_one_step_is_accepted_and_older_steps_are_not_after_it() {
        let (auth, store) = setup(5);
        let (secret, _) = enroll(&store);
        // The next step's code (a phone clock slightly ahead) works...
        let ahead = code_now(&secret, 1);
        let person = auth
            .login(&name("alice"), format!("right:{ahead}"))
            .await
            .unwrap();
        assert_eq!(person.second_factor, SecondFactor::Totp);
        // ...and then the current one is older than a code already used.
        let current = code_now(&secret, 0);
        if current != ahead {
            let err = auth
                .login(&name("alice"), format!("right:{current}"))
                .await
                .unwrap_err();
            assert!(matches!(err, LoginFailure::MfaFailed(_)));
        }
    }

    #[tokio::test]
    async fn the_previous_steps_code_works_and_one_three_steps_old_does_not() {
        let (auth, store) = setup(5);
        let (secret, _) = enroll(&store);
        let old = code_now(&secret, -3);
        if (-1..=1).all(|d| code_now(&secret, d) != old) {
            let err = auth
                .login(&name("alice"), format!("right:{old}"))
                .await
                .unwrap_err();
            assert!(matches!(err, LoginFailure::MfaFailed(_)));
        }
        fresh_step().await;
        let previous = code_now(&secret, -1);
        let person = auth
            .login(&name("alice"), format!("right:{previous}"))
            .await
            .unwrap();
        assert_eq!(person.second_factor, SecondFactor::Totp);
    }

    #[tokio::test]
    async fn a_missing_code_is_refused_without_counting_or_forgiving_failures() {
        let (auth, store) = setup(5);
        let (secret, _) = enroll(&store);
        let wrong_code = format!(
            "{:06}",
            (code_now(&secret, 0).parse::<u32>().unwrap() + 1) % 1_000_000
        );
        for d in -1..=1 {
            assert_ne!(code_now(&secret, d), wrong_code, "test setup: pick another");
        }
        let err = auth
            .login(&name("alice"), format!("right:{wrong_code}"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaFailed(_)));
        assert_eq!(failures(&store), 1);
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaMissing(_)), "{err:?}");
        assert_eq!(err.outcome(), "mfa_missing");
        let pg = err.to_pg_error();
        assert_eq!(pg.code, SqlState::INVALID_AUTHORIZATION);
        assert_eq!(
            pg.message,
            "pgward: user \"alice\" must add a second-factor code: append ':' and the 6-digit code from the authenticator app to the password"
        );
        assert_eq!(failures(&store), 1, "neither counted nor forgiven");
        // A wrong password with a code is a wrong password.
        let code = code_now(&secret, 0);
        let err = auth
            .login(&name("alice"), format!("wrong:{code}"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::BadCredentials(_)));
        assert_eq!(failures(&store), 2);
    }

    #[tokio::test]
    async fn wrong_codes_count_towards_the_lockout() {
        let (auth, store) = setup(3);
        let (secret, _) = enroll(&store);
        let valid: Vec<String> = (-1..=1).map(|d| code_now(&secret, d)).collect();
        let mut guesses = (0..1_000_000u32)
            .map(|n| format!("{n:06}"))
            .filter(|g| !valid.contains(g));
        for _ in 0..2 {
            let err = auth
                .login(&name("alice"), format!("right:{}", guesses.next().unwrap()))
                .await
                .unwrap_err();
            assert!(matches!(err, LoginFailure::MfaFailed(_)));
        }
        let err = auth
            .login(&name("alice"), format!("right:{}", guesses.next().unwrap()))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::Locked { .. }), "{err:?}");
        let code = code_now(&secret, 0);
        let err = auth
            .login(&name("alice"), format!("right:{code}"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::Locked { .. }));
    }

    #[tokio::test]
    async fn a_recovery_code_works_once() {
        let (auth, store) = setup(5);
        let (_, codes) = enroll(&store);
        let typed = codes[3].display().to_uppercase();
        let person = auth
            .login(&name("alice"), format!("right:{typed}"))
            .await
            .unwrap();
        assert_eq!(person.second_factor, SecondFactor::RecoveryCode);
        let err = auth
            .login(&name("alice"), format!("right:{typed}"))
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaFailed(_)));
        assert_eq!(store.recovery_codes_left("alice").unwrap(), 9);
    }

    #[tokio::test]
    async fn passwords_with_colons_still_work() {
        let (auth, store) = setup(5);
        store
            .set_password("alice", &hash_password("a:b:c").unwrap())
            .unwrap();
        let person = auth.login(&name("alice"), "a:b:c".into()).await.unwrap();
        assert_eq!(person.second_factor, SecondFactor::None);
        let (secret, _) = enroll(&store);
        let err = auth
            .login(&name("alice"), "a:b:c".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaMissing(_)));
        let code = code_now(&secret, 0);
        let person = auth
            .login(&name("alice"), format!("a:b:c:{code}"))
            .await
            .unwrap();
        assert_eq!(person.second_factor, SecondFactor::Totp);
    }

    #[tokio::test]
    async fn a_required_second_factor_without_enrollment_is_refused_after_the_password() {
        let (auth, store) = setup(5);
        store.set_mfa_required("alice", true).unwrap();
        let err = auth
            .login(&name("alice"), "wrong".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::BadCredentials(_)));
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaNotEnrolled(_)));
        assert_eq!(err.outcome(), "mfa_not_enrolled");
        let pg = err.to_pg_error();
        assert_eq!(pg.code, SqlState::INVALID_AUTHORIZATION);
        assert!(
            pg.message.contains("pgward user mfa enroll alice"),
            "{}",
            pg.message
        );
        // Enrolled, the code lets her in.
        let (secret, _) = enroll(&store);
        let code = code_now(&secret, 0);
        auth.login(&name("alice"), format!("right:{code}"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_global_requirement_spares_service_accounts() {
        let (auth, store) = setup(5);
        let auth = auth.mfa_required(true);
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaNotEnrolled(_)));
        store.set_service("alice", true).unwrap();
        let person = auth.login(&name("alice"), "right".into()).await.unwrap();
        assert_eq!(person.second_factor, SecondFactor::None);
        // A per-person requirement applies to service accounts too.
        store.set_mfa_required("alice", true).unwrap();
        let err = auth
            .login(&name("alice"), "right".into())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginFailure::MfaNotEnrolled(_)));
    }

    #[tokio::test]
    async fn unknown_users_look_the_same_with_or_without_a_code() {
        let (auth, store) = setup(5);
        let (secret, _) = enroll(&store);
        let code = code_now(&secret, 0);
        for password in ["wrong".to_string(), format!("wrong:{code}")] {
            let wrong = auth
                .login(&name("alice"), password.clone())
                .await
                .unwrap_err();
            let unknown = auth.login(&name("mallory"), password).await.unwrap_err();
            assert!(matches!(wrong, LoginFailure::BadCredentials(_)));
            assert_eq!(
                wrong.to_pg_error().message.replace("alice", "X"),
                unknown.to_pg_error().message.replace("mallory", "X")
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_logins_with_one_code_have_exactly_one_winner() {
        let (auth, store) = setup(20);
        let (secret, _) = enroll(&store);
        let code = code_now(&secret, 0);
        let logins: Vec<_> = (0..8)
            .map(|_| {
                let auth = auth.clone();
                let password = format!("right:{code}");
                tokio::spawn(async move { auth.login(&name("alice"), password).await })
            })
            .collect();
        let mut won = 0;
        for login in logins {
            match login.await.unwrap() {
                Ok(person) => {
                    assert_eq!(person.second_factor, SecondFactor::Totp);
                    won += 1;
                }
                Err(LoginFailure::MfaFailed(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1);
    }
}
