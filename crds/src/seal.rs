//! Pre-shared keys on their way to the hubs. Unlike a password, a DTLS PSK cannot be
//! hashed: the hub needs the key itself. So the operator (or `cmq registry apply`) seals it
//! with AES-256-GCM under a key derived from the cluster's secret (the one hubs already
//! share for CoAP tokens) before it is written to NATS; a reader of the bucket without that
//! secret learns nothing, and a sealed key moved to another credential does not open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::Sha256;

/// The prefix of the sealed form's version.
const V1: &str = "v1.";

/// Why a key could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("no cluster secret: pre-shared keys need one (--coap-token-secret)")]
    NoSecret,
    #[error("a pre-shared key must be 1 to {max} bytes, this one has {0}", max = crate::v1alpha1::MAX_PSK_LEN)]
    BadLength(usize),
    #[error("the sealed key is malformed")]
    Malformed,
    #[error("the sealed key does not open with this cluster secret (or was moved)")]
    WrongSecret,
    #[error("no randomness available")]
    Random,
}

fn cipher(cluster_secret: &[u8]) -> Result<LessSafeKey, SealError> {
    if cluster_secret.is_empty() {
        return Err(SealError::NoSecret);
    }
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret).map_err(|_| SealError::NoSecret)?;
    mac.update(b"cmq psk seal v1");
    let key = mac.finalize().into_bytes();
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| SealError::NoSecret)?;
    Ok(LessSafeKey::new(unbound))
}

/// What the seal is bound to: the credential (`namespace/name`) and the PSK identity.
fn binding(entry: &str, identity: &str) -> Vec<u8> {
    format!("{entry}\n{identity}").into_bytes()
}

/// Seals `psk` for credential `entry` and `identity`: `v1.` + base64url(nonce ‖ ciphertext).
pub fn seal(
    cluster_secret: &[u8],
    entry: &str,
    identity: &str,
    psk: &[u8],
) -> Result<String, SealError> {
    if psk.is_empty() || psk.len() > crate::v1alpha1::MAX_PSK_LEN {
        return Err(SealError::BadLength(psk.len()));
    }
    let key = cipher(cluster_secret)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut data = psk.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(binding(entry, identity)),
        &mut data,
    )
    .map_err(|_| SealError::Malformed)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Ok(format!("{V1}{}", URL_SAFE_NO_PAD.encode(out)))
}

/// Opens what `seal` made for the same credential and identity.
pub fn open(
    cluster_secret: &[u8],
    entry: &str,
    identity: &str,
    sealed: &str,
) -> Result<Vec<u8>, SealError> {
    let key = cipher(cluster_secret)?;
    let body = sealed.strip_prefix(V1).ok_or(SealError::Malformed)?;
    let mut bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| SealError::Malformed)?;
    if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() + 1 {
        return Err(SealError::Malformed);
    }
    let mut data = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Malformed)?;
    let plain = key
        .open_in_place(nonce, Aad::from(binding(entry, identity)), &mut data)
        .map_err(|_| SealError::WrongSecret)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_secret_and_credential() {
        let sealed = seal(b"cluster-secret", "ns/dev1", "dev1", b"key-bytes").unwrap();
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("key-bytes"));
        assert_eq!(
            open(b"cluster-secret", "ns/dev1", "dev1", &sealed).unwrap(),
            b"key-bytes"
        );
        assert_eq!(
            open(b"other-secret", "ns/dev1", "dev1", &sealed),
            Err(SealError::WrongSecret)
        );
        assert_eq!(
            open(b"cluster-secret", "ns/dev2", "dev1", &sealed),
            Err(SealError::WrongSecret)
        );
        assert_eq!(
            open(b"cluster-secret", "ns/dev1", "dev2", &sealed),
            Err(SealError::WrongSecret)
        );
    }

    #[test]
    fn two_seals_of_one_key_differ() {
        let a = seal(b"s", "ns/d", "d", b"k").unwrap();
        let b = seal(b"s", "ns/d", "d", b"k").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(seal(b"", "e", "i", b"k"), Err(SealError::NoSecret));
        assert_eq!(seal(b"s", "e", "i", b""), Err(SealError::BadLength(0)));
        assert_eq!(
            seal(b"s", "e", "i", &[0; 65]),
            Err(SealError::BadLength(65))
        );
        for bad in [
            "",
            "v1.",
            "v1.!!!",
            "v2.AAAA",
            "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(open(b"s", "e", "i", bad).is_err(), "{bad}");
        }
    }
}
