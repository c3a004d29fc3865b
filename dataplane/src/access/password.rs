//! Password verification: argon2id and bcrypt hashes (constant-time inside their crates),
//! Secret plaintext in standalone mode (compared in constant time), and a cache of recent
//! successes so that a reconnect storm costs one SHA-256 per CONNECT instead of one argon2
//! run (tens of milliseconds of CPU each).

use std::collections::HashMap;
use std::sync::Arc;

use cmq_crds::v1alpha1::{HashKind, hash_kind};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// How a credential's password is checked.
#[derive(Clone)]
pub enum Verifier {
    Argon2(Arc<str>),
    Bcrypt(Arc<str>),
    /// The Secret's value itself (standalone mode reads it from a file next to the
    /// credential, so it is no more exposed here than there).
    Plain(Vec<u8>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret or a hash into logs.
        f.write_str(match self {
            Self::Argon2(_) => "Argon2(..)",
            Self::Bcrypt(_) => "Bcrypt(..)",
            Self::Plain(_) => "Plain(..)",
        })
    }
}

impl Verifier {
    /// The verifier of a validated hash string.
    pub fn from_hash(hash: &str) -> Option<Self> {
        match hash_kind(hash).ok()? {
            HashKind::Argon2id => Some(Self::Argon2(hash.into())),
            HashKind::Bcrypt => Some(Self::Bcrypt(hash.into())),
        }
    }

    fn hash_text(&self) -> &str {
        match self {
            Self::Argon2(h) | Self::Bcrypt(h) => h,
            Self::Plain(_) => "",
        }
    }

    /// The expensive check; run off the async threads.
    fn verify_slow(&self, password: &[u8]) -> bool {
        match self {
            Self::Argon2(phc) => cmq_crds::argon::verify(password, phc),
            Self::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Self::Plain(secret) => secret.ct_eq(password).into(),
        }
    }
}

/// Entries kept at most; beyond it the cache starts over (it only saves CPU).
const CACHE_LIMIT: usize = 1 << 20;

/// Verifies passwords, with the success cache and a bound on concurrent hash runs.
pub struct PasswordChecker {
    /// A per-process random key: cached digests are useless outside this process.
    key: [u8; 32],
    /// Credential key → digest of (key, hash, password) of its last successful check.
    cache: Mutex<HashMap<Arc<str>, [u8; 32]>>,
    /// Hash runs in flight at most (one per core): a storm queues instead of starving the
    /// connections already served.
    permits: Semaphore,
}

/// The outcome of a check, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Valid { cached: bool },
    Invalid,
}

impl PasswordChecker {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            key: rand::random(),
            cache: Mutex::new(HashMap::new()),
            permits: Semaphore::new(cores),
        }
    }

    fn digest(&self, verifier: &Verifier, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(verifier.hash_text().as_bytes());
        h.update([0]);
        h.update(password);
        h.finalize().into()
    }

    /// Checks `password` against the credential `key`'s verifier.
    pub async fn check(&self, key: &Arc<str>, verifier: &Verifier, password: &[u8]) -> Checked {
        if let Verifier::Plain(_) = verifier {
            return if verifier.verify_slow(password) {
                Checked::Valid { cached: false }
            } else {
                Checked::Invalid
            };
        }
        let digest = self.digest(verifier, password);
        let hit = self
            .cache
            .lock()
            .get(key)
            .is_some_and(|d| bool::from(d.ct_eq(&digest)));
        if hit {
            return Checked::Valid { cached: true };
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return Checked::Invalid;
        };
        let v = verifier.clone();
        let password = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || v.verify_slow(&password))
            .await
            .unwrap_or(false);
        if !ok {
            return Checked::Invalid;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key.clone(), digest);
        Checked::Valid { cached: false }
    }
}

impl Default for PasswordChecker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_bcrypt_plain_and_cache() {
        let checker = PasswordChecker::new();
        let argon = Verifier::from_hash(&cmq_crds::kv::hash_password(b"s3cret").unwrap()).unwrap();
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
        let bc = Verifier::from_hash(&bcrypt_hash).unwrap();
        let plain = Verifier::Plain(b"s3cret".to_vec());
        let key: Arc<str> = "ns/a".into();
        for v in [&argon, &bc, &plain] {
            assert_eq!(checker.check(&key, v, b"wrong").await, Checked::Invalid);
        }
        assert_eq!(
            checker.check(&key, &argon, b"s3cret").await,
            Checked::Valid { cached: false }
        );
        assert_eq!(
            checker.check(&key, &argon, b"s3cret").await,
            Checked::Valid { cached: true }
        );
        // A cached success never vouches for another password or another hash.
        assert_eq!(
            checker.check(&key, &argon, b"s3cret!").await,
            Checked::Invalid
        );
        assert_eq!(
            checker.check(&key, &bc, b"s3cret").await,
            Checked::Valid { cached: false }
        );
        assert_eq!(
            checker.check(&key, &plain, b"s3cret").await,
            Checked::Valid { cached: false }
        );
    }
}
