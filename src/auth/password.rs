//! argon2id password hashes, computed off the async runtime.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use tokio::sync::Semaphore;

/// Hashes a password with argon2id and the crate's recommended parameters
/// (19 MiB, 2 passes, 1 lane: OWASP's baseline). Blocking; call from the
/// blocking pool or the CLI.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC hash. A malformed hash never verifies.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Runs password verification on the blocking pool, at most `n` at a time.
#[derive(Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so an unknown name costs
    /// the same time as a wrong password.
    decoy_hash: Arc<str>,
}

impl PasswordPool {
    pub fn new(concurrency: usize) -> Result<PasswordPool, argon2::password_hash::Error> {
        let decoy = hash_password(&format!("decoy-{}", rand::random::<u64>()))?;
        Ok(PasswordPool {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            decoy_hash: decoy.into(),
        })
    }

    /// Verifies `password` against `hash`, or against the decoy if `hash` is
    /// `None` (in which case the answer is always false).
    pub async fn verify(&self, hash: Option<String>, password: String) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy_hash.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        ok && real
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "battery staple"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let pool = PasswordPool::new(1).unwrap();
        assert!(!pool.verify(None, "anything".into()).await);
        let hash = hash_password("pw").unwrap();
        assert!(pool.verify(Some(hash), "pw".into()).await);
    }
}
