//! Connection-mode tokens (EMQX's `POST /mqtt/connection`): a device authenticates once and
//! then presents `clientid` + `token`. The token is signed (HMAC-SHA256 with a key every hub
//! of the cluster shares, `--coap-token-secret`), so any hub verifies it without shared
//! state: a device's next datagram may reach another pod.
//!
//! Token: base64url(`v1|<expiry unix s>|<credential key>|<username>`) `.` base64url(MAC);
//! the client id is not in it but in the MAC, so a token is only good with its client id.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a token is good for without a heartbeat renewing it... kept simple: a token
/// lives this long, and a heartbeat (`PUT /mqtt/connection`) returns a fresh one.
pub const LIFETIME_SECS: u64 = 24 * 3600;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `namespace/name` of the DeviceCredential that authenticated, empty for anonymous.
    pub credential: String,
    pub username: Option<String>,
    pub expires: u64,
}

pub struct Signer {
    key: Vec<u8>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    /// `secret` empty: a random key (tokens then verify only on this hub).
    pub fn new(secret: &[u8]) -> Self {
        let key = if secret.is_empty() {
            (0..32).map(|_| rand::random::<u8>()).collect()
        } else {
            secret.to_vec()
        };
        Self { key }
    }

    fn mac(&self, client_id: &str, body: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(client_id.as_bytes());
        mac.update(&[0]);
        mac.update(body.as_bytes());
        Some(mac)
    }

    pub fn issue(&self, client_id: &str, credential: &str, username: Option<&str>) -> String {
        let body = format!(
            "v1|{}|{credential}|{}",
            now() + LIFETIME_SECS,
            username.unwrap_or("")
        );
        let tag = self
            .mac(client_id, &body)
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default();
        format!("{}.{}", B64.encode(body), B64.encode(tag))
    }

    /// The claims of a token issued to `client_id`, if it is genuine and not expired.
    pub fn verify(&self, client_id: &str, token: &str) -> Option<Claims> {
        let (body, tag) = token.split_once('.')?;
        let body = String::from_utf8(B64.decode(body).ok()?).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(client_id, &body)?.verify_slice(&tag).ok()?;
        let mut parts = body.splitn(4, '|');
        if parts.next()? != "v1" {
            return None;
        }
        let expires: u64 = parts.next()?.parse().ok()?;
        if expires <= now() {
            return None;
        }
        let credential = parts.next()?.to_owned();
        let username = Some(parts.next()?.to_owned()).filter(|u| !u.is_empty());
        Some(Claims {
            credential,
            username,
            expires,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_client_and_key() {
        let s = Signer::new(b"shared");
        let t = s.issue("dev1", "iot/dev1", Some("alice"));
        let c = s.verify("dev1", &t).unwrap();
        assert_eq!(
            (c.credential.as_str(), c.username.as_deref()),
            ("iot/dev1", Some("alice"))
        );
        assert!(s.verify("dev2", &t).is_none(), "another client id");
        assert!(
            Signer::new(b"other").verify("dev1", &t).is_none(),
            "another key"
        );
        assert!(
            Signer::new(b"shared").verify("dev1", &t).is_some(),
            "any hub with the key"
        );
        let mut forged = t.clone();
        forged.insert(3, 'A');
        assert!(s.verify("dev1", &forged).is_none());
        assert!(s.verify("dev1", "garbage").is_none());
    }
}
