//! argon2id password hashes, verified on dedicated threads that reuse their
//! working memory.
//!
//! An argon2id check needs 19 MiB of scratch memory. Allocating it per login
//! on tokio's blocking pool looked harmless but measured badly: glibc keeps
//! each freed 19 MiB block in the arena of whichever pool thread ran the
//! check, and pgward grew by ~15 MiB per login (benches/compare.sh). Instead a
//! fixed set of `hash_concurrency` threads each allocate one buffer once and
//! verify into it, so memory for password checks is bounded by
//! `concurrency × 19 MiB` however many people log in, and a login flood queues
//! for a worker instead of starving the async runtime.

use std::sync::{Arc, Mutex};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

/// Hashes a password with argon2id and the crate's recommended parameters
/// (19 MiB, 2 passes, 1 lane: OWASP's baseline). Blocking; for the CLI.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC hash, computing into `memory` when it is
/// large enough (and into a temporary buffer when the hash asks for more).
/// A malformed hash never verifies.
pub fn verify_with_memory(hash: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
        None => Version::default(),
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let argon = Argon2::new(algorithm, version, params);
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    out.ct_eq(expected.as_bytes()).into()
}

/// Checks a password against a PHC hash. Allocates; for tests and the CLI.
pub fn verify_password(hash: &str, password: &str) -> bool {
    verify_with_memory(hash, password, &mut Vec::new())
}

struct Job {
    hash: Arc<str>,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// A fixed pool of verification threads.
#[derive(Clone)]
pub struct PasswordPool {
    jobs: mpsc::Sender<Job>,
    /// Verified against when the user does not exist, so an unknown name costs
    /// the same time as a wrong password.
    decoy_hash: Arc<str>,
}

impl PasswordPool {
    /// Starts `concurrency` threads. They exit when the last handle is dropped.
    pub fn new(concurrency: usize) -> Result<PasswordPool, argon2::password_hash::Error> {
        let decoy = hash_password(&format!("decoy-{}", rand::random::<u64>()))?;
        let (tx, rx) = mpsc::channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("pgward-argon2-{i}"))
                .spawn(move || worker(rx))
                .map_err(|_| argon2::password_hash::Error::Crypto)?;
        }
        Ok(PasswordPool {
            jobs: tx,
            decoy_hash: decoy.into(),
        })
    }

    /// Verifies `password` against `hash`, or against the decoy if `hash` is
    /// `None` (in which case the answer is always false).
    pub async fn verify(&self, hash: Option<String>, password: String) -> bool {
        let real = hash.is_some();
        let hash: Arc<str> = match hash {
            Some(h) => h.into(),
            None => Arc::clone(&self.decoy_hash),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false) && real
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        if job.reply.is_closed() {
            // The client timed out or left while queued: skip the work.
            continue;
        }
        let ok = verify_with_memory(&job.hash, &job.password, &mut memory);
        let _ = job.reply.send(ok);
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

    #[test]
    fn agrees_with_the_reference_verifier_and_other_parameters() {
        use argon2::PasswordVerifier;
        // A hash made with non-default parameters and argon2i still verifies.
        let params = Params::new(8 * 1024, 3, 2, Some(32)).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        let mut memory = Vec::new();
        assert!(verify_with_memory(&hash, "pw", &mut memory));
        assert!(!verify_with_memory(&hash, "pW", &mut memory));
        // The buffer is reused, not reallocated, for the default parameters.
        let default_hash = hash_password("x").unwrap();
        assert!(verify_with_memory(&default_hash, "x", &mut memory));
        let capacity = memory.capacity();
        assert!(verify_with_memory(&default_hash, "x", &mut memory));
        assert_eq!(memory.capacity(), capacity);
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let pool = PasswordPool::new(1).unwrap();
        assert!(!pool.verify(None, "anything".into()).await);
        let hash = hash_password("pw").unwrap();
        assert!(pool.verify(Some(hash), "pw".into()).await);
    }
}
