//! The hash chain and its signed checkpoints.
//!
//! Each stored event carries `SHA-256(previous hash ‖ SHA-256(canonical
//! encoding))` — the inner digest lets an export prove a subset of events
//! with only the digests of the others;
//! the first event of a store chains from 32 zero bytes (or, after pruning,
//! from the hash of the last pruned event, kept with the checkpoint at the
//! boundary). Changing, deleting or reordering an event breaks every hash
//! after it. Whoever can rewrite the database could recompute the hashes,
//! so pgward also signs *checkpoints* — (last id, head hash, time) — with an
//! Ed25519 key only pgward holds; a rewritten chain no longer matches the
//! signed heads, and events cut off the end that a checkpoint covered are
//! missed. SHA-256 and Ed25519 come from `ring`, which rustls already uses.

use std::path::Path;

use ring::digest::{Context, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash the first event chains from.
pub const GENESIS: Hash = [0; 32];

/// `SHA-256(prev ‖ body)`.
pub fn link(prev: &Hash, body: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A signed statement that the chain up to `last_id` ends in `head`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub last_id: u64,
    #[serde(with = "hex_bytes")]
    pub head: Vec<u8>,
    pub time_us: i64,
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The bytes that are signed.
    pub fn message(last_id: u64, head: &[u8], time_us: i64) -> Vec<u8> {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(b"pgward audit checkpoint v1\0");
        m.extend_from_slice(&last_id.to_be_bytes());
        m.extend_from_slice(head);
        m.extend_from_slice(&time_us.to_be_bytes());
        m
    }

    pub fn sign(key: &SigningKey, last_id: u64, head: &Hash, time_us: i64) -> Checkpoint {
        let signature = key
            .pair
            .sign(&Checkpoint::message(last_id, head, time_us))
            .as_ref()
            .to_vec();
        Checkpoint {
            last_id,
            head: head.to_vec(),
            time_us,
            signature,
        }
    }

    /// Whether `public_key` signed this checkpoint.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        let msg = Checkpoint::message(self.last_id, &self.head, self.time_us);
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&msg, &self.signature)
            .is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the audit signing key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the audit signing key {0} is not a valid Ed25519 key (PKCS#8, hex)")]
    Invalid(String),
    #[error("cannot create the audit signing key {path}: {message}")]
    Create { path: String, message: String },
}

/// pgward's Ed25519 key for checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", hex::encode(self.public_key()))
    }
}

impl SigningKey {
    /// Reads the key at `path` (PKCS#8 v2, hex), creating it with mode
    /// 0600 if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => SigningKey::parse(&text)
                .ok_or_else(|| KeyError::Invalid(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SigningKey::create(path),
            Err(source) => Err(KeyError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn parse(text: &str) -> Option<SigningKey> {
        let der = hex::decode(text.trim()).ok()?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).ok()?;
        Some(SigningKey { pair })
    }

    fn create(path: &Path) -> Result<SigningKey, KeyError> {
        let fail = |message: String| KeyError::Create {
            path: path.display().to_string(),
            message,
        };
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| fail("no randomness".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        crate::certs::write_new(path, &hex::encode(der.as_ref()), 0o600)
            .map_err(|e| fail(e.to_string()))?;
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| fail("bad key".into()))?;
        Ok(SigningKey { pair })
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

/// Reads a public key file: 64 hex digits (what `pgward audit public-key`
/// prints).
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    match hex::decode(text.trim()) {
        Ok(k) if k.len() == 32 => Ok(k),
        _ => Err(KeyError::Invalid(path.display().to_string())),
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_depend_on_everything_before() {
        let a = link(&GENESIS, b"one");
        let b = link(&a, b"two");
        assert_ne!(link(&GENESIS, b"two"), b);
        assert_eq!(link(&a, b"two"), b);
    }

    #[test]
    fn checkpoints_verify_only_with_their_key_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = SigningKey::load_or_create(&path).unwrap();
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let head = link(&GENESIS, b"x");
        let cp = Checkpoint::sign(&key, 1, &head, 5);
        assert!(cp.verify(key.public_key()));
        let mut moved = cp.clone();
        moved.last_id = 2;
        assert!(!moved.verify(key.public_key()));
        let other = SigningKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(!cp.verify(other.public_key()));
    }
}
