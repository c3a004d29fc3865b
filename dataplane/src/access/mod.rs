//! Who may connect (the device registry) and where they may publish and subscribe (topic
//! ACLs). The registry is one immutable snapshot, swapped whole when a source (the
//! manifests folder, or NATS KV in a cluster) changes; every swap bumps a generation that
//! live connections compare against to re-check their credential and ACL at once.

pub mod acl;
pub mod credentials;
mod glob;
mod limiter;
pub mod metrics;
mod password;
mod selector;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cmq_crds::kv::StoredAcl;
use cmq_crds::v1alpha1::{AuthSpec, DenyAction, Permission};
use parking_lot::RwLock;

pub use acl::{AclSet, ConnAcl, Identity, Verdicts};
pub use credentials::{Credential, CredentialIndex, PeerCert, Presented};
pub use limiter::FailureLimiter;
pub use metrics::AccessMetrics;
pub use password::{Checked, PasswordChecker, Verifier};

/// Settings given on the command line; each wins over the manifests' `spec.auth`.
#[derive(Debug, Clone, Default)]
pub struct AuthFlags {
    pub allow_anonymous: Option<bool>,
    pub default_permission: Option<Permission>,
    pub deny_action: Option<DenyAction>,
    pub failure_limit: u32,
    pub failure_window: Duration,
}

/// What a source loaded: every credential and ACL, and the cluster's auth settings.
#[derive(Debug, Default)]
pub struct Inputs {
    pub credentials: Vec<Credential>,
    pub acls: Vec<StoredAcl>,
    pub auth: AuthSpec,
}

/// One consistent state of the registry.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub credentials: CredentialIndex,
    pub acls: AclSet,
    pub allow_anonymous: bool,
    pub verdicts: Verdicts,
    /// Shared by every connection when no TopicAcl exists.
    no_rules: Arc<ConnAcl>,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown username or wrong password (MQTT 5 0x86, 3.1.1 0x04).
    BadCredentials,
    /// No credential and anonymous refused, or the credential is disabled (0x87 / 0x05).
    NotAuthorized,
    /// Too many recent failures from this address or client id (0x9F / 0x05).
    RateLimited,
}

/// Who a connection is: what it presented and the credential that vouched for it.
#[derive(Debug)]
pub struct Principal {
    pub client_id: Arc<str>,
    /// The username as presented (verified only when `credential` is set).
    presented_username: Option<String>,
    pub cert: Option<Box<PeerCert>>,
    /// `None`: an anonymous connection.
    pub credential: Option<Arc<Credential>>,
}

impl Principal {
    /// The username as presented (verified only when a credential matched).
    pub fn username(&self) -> Option<&str> {
        self.presented_username.as_deref()
    }

    fn presented(&self) -> Presented<'_> {
        Presented {
            client_id: &self.client_id,
            username: self.presented_username.as_deref(),
            cert: self.cert.as_deref(),
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            client_id: &self.client_id,
            username: self
                .credential
                .as_ref()
                .and(self.presented_username.as_deref()),
            cert_cn: self.cert.as_deref().and_then(|c| c.common_name.as_deref()),
            credential: self.credential.as_deref(),
        }
    }

    /// Label for logs.
    pub fn describe(&self) -> &str {
        self.credential.as_ref().map_or("anonymous", |c| &c.key)
    }
}

/// A connection's ACL, with the registry generation it was resolved at.
pub type Grant = Arc<ConnAcl>;

/// The registry of one hub.
pub struct Access {
    flags: AuthFlags,
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    passwords: PasswordChecker,
    limiter: FailureLimiter,
    pub metrics: AccessMetrics,
}

impl Access {
    /// An empty registry (anonymous allowed unless the flags say otherwise).
    pub fn new(flags: AuthFlags, metrics: AccessMetrics) -> Self {
        let limiter = FailureLimiter::new(flags.failure_limit, flags.failure_window);
        let snapshot = compile(&flags, Inputs::default(), 0);
        Self {
            flags,
            snapshot: RwLock::new(Arc::new(snapshot)),
            generation: AtomicU64::new(0),
            passwords: PasswordChecker::new(),
            limiter,
            metrics,
        }
    }

    /// A registry with nothing in it: every client is anonymous and allowed everything
    /// (tests, fuzzing, and a standalone hub without manifests).
    pub fn empty(metrics: AccessMetrics) -> Arc<Self> {
        Arc::new(Self::new(AuthFlags::default(), metrics))
    }

    /// The generation of the snapshot in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    /// Puts a new state in force; returns its generation.
    pub fn replace(&self, inputs: Inputs) -> u64 {
        let mut slot = self.snapshot.write();
        let generation = slot.generation + 1;
        let snapshot = compile(&self.flags, inputs, generation);
        self.metrics
            .credentials
            .set(snapshot.credentials.len() as i64);
        self.metrics.acls.set(snapshot.acls.len() as i64);
        if snapshot.allow_anonymous {
            tracing::info!(
                credentials = snapshot.credentials.len(),
                acls = snapshot.acls.len(),
                "registry updated; anonymous clients are allowed"
            );
        } else {
            tracing::info!(
                credentials = snapshot.credentials.len(),
                acls = snapshot.acls.len(),
                "registry updated"
            );
        }
        *slot = Arc::new(snapshot);
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Authenticates a CONNECT.
    pub async fn authenticate(
        &self,
        ip: IpAddr,
        client_id: Arc<str>,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert: Option<PeerCert>,
    ) -> Result<Principal, AuthError> {
        let result = self
            .authenticate_inner(ip, client_id, username, password, cert)
            .await;
        self.metrics.auth(match &result {
            Ok(p) if p.credential.is_none() => "anonymous",
            Ok(_) => "success",
            Err(AuthError::BadCredentials) => "bad_credentials",
            Err(AuthError::NotAuthorized) => "not_authorized",
            Err(AuthError::RateLimited) => "rate_limited",
        });
        result
    }

    async fn authenticate_inner(
        &self,
        ip: IpAddr,
        client_id: Arc<str>,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert: Option<PeerCert>,
    ) -> Result<Principal, AuthError> {
        if self.limiter.blocked(ip, &client_id) {
            return Err(AuthError::RateLimited);
        }
        let snapshot = self.snapshot();
        let mut principal = Principal {
            client_id,
            presented_username: username.map(str::to_owned),
            cert: cert.map(Box::new),
            credential: None,
        };
        let candidates = snapshot.credentials.matching(&principal.presented());
        let mut disabled = false;
        let mut tried = false;
        for cred in candidates {
            if cred.disabled {
                disabled = true;
                continue;
            }
            tried = true;
            let ok = match (&cred.verifier, password) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(v), Some(pw)) => match self.passwords.check(&cred.key, v, pw).await {
                    Checked::Valid { cached } => {
                        if cached {
                            self.metrics.auth_cache_hits.inc();
                        }
                        true
                    }
                    Checked::Invalid => false,
                },
            };
            if ok {
                self.limiter.succeeded(&principal.client_id);
                principal.credential = Some(cred);
                return Ok(principal);
            }
        }
        if disabled && !tried {
            return Err(AuthError::NotAuthorized);
        }
        if tried {
            // A known device with a wrong or missing password: never anonymous instead.
            self.limiter.failed(ip, &principal.client_id);
            return Err(AuthError::BadCredentials);
        }
        let presented_secret = username.is_some() || password.is_some();
        // As Mosquitto with a password file: once devices are registered, an unknown
        // username is refused even where anonymous clients (who present none) are allowed.
        if presented_secret && !snapshot.credentials.is_empty() {
            self.limiter.failed(ip, &principal.client_id);
            return Err(AuthError::BadCredentials);
        }
        if snapshot.allow_anonymous {
            // An unverified username must not count as one in ACLs (see `identity`).
            return Ok(principal);
        }
        if presented_secret {
            self.limiter.failed(ip, &principal.client_id);
            return Err(AuthError::BadCredentials);
        }
        Err(AuthError::NotAuthorized)
    }

    /// The principal of a client that authenticated earlier as credential `key` (empty:
    /// anonymously), e.g. with a CoAP connection token: no password again, but the
    /// credential must still exist, be enabled and match the identity.
    pub fn resume(
        &self,
        client_id: Arc<str>,
        username: Option<&str>,
        key: &str,
    ) -> Result<Principal, AuthError> {
        let snapshot = self.snapshot();
        let mut principal = Principal {
            client_id,
            presented_username: username.map(str::to_owned),
            cert: None,
            credential: None,
        };
        if key.is_empty() {
            return if snapshot.allow_anonymous {
                Ok(principal)
            } else {
                Err(AuthError::NotAuthorized)
            };
        }
        // A PSK-only credential vouches for DTLS sessions alone, not for a token that
        // could be used on plain UDP.
        let cred = snapshot
            .credentials
            .get(key)
            .filter(|c| {
                !c.disabled && c.proves_without_psk() && c.identity_matches(&principal.presented())
            })
            .ok_or(AuthError::NotAuthorized)?;
        principal.credential = Some(cred.clone());
        Ok(principal)
    }

    /// The key of DTLS PSK identity `identity`, when an enabled credential has it and this
    /// hub can read it (the handshake's lookup).
    pub fn psk_key(&self, identity: &[u8]) -> Option<Arc<[u8]>> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.snapshot()
            .credentials
            .by_psk_identity(identity)
            .filter(|c| !c.disabled)
            .and_then(|c| c.psk_key.clone())
    }

    /// The principal of a DTLS client that proved PSK `identity` in its handshake. The
    /// client id defaults to the identity; the username is the credential's (none when it
    /// sets none: a username the client merely claims must not count in ACLs).
    pub fn authenticate_psk(
        &self,
        identity: &str,
        client_id: Option<Arc<str>>,
    ) -> Result<Principal, AuthError> {
        let snapshot = self.snapshot();
        let result = snapshot
            .credentials
            .by_psk_identity(identity)
            .filter(|c| !c.disabled)
            .ok_or(AuthError::NotAuthorized)
            .and_then(|cred| {
                let principal = Principal {
                    client_id: client_id.unwrap_or_else(|| Arc::from(identity)),
                    presented_username: cred.username.clone(),
                    cert: None,
                    credential: Some(cred.clone()),
                };
                if cred.identity_matches(&principal.presented()) {
                    Ok(principal)
                } else {
                    Err(AuthError::NotAuthorized)
                }
            });
        self.metrics.auth(match &result {
            Ok(_) => "success",
            Err(_) => "not_authorized",
        });
        result
    }

    /// The ACL of a connection under the snapshot in force; `Err` when its credential was
    /// deleted, disabled or no longer matches (or anonymous connections are refused now).
    pub fn grant(&self, principal: &mut Principal) -> Result<Grant, AuthError> {
        let snapshot = self.snapshot();
        match &principal.credential {
            Some(old) => {
                let current = snapshot
                    .credentials
                    .get(&old.key)
                    .filter(|c| !c.disabled && c.identity_matches(&principal.presented()))
                    .ok_or(AuthError::NotAuthorized)?;
                if !Arc::ptr_eq(current, old) {
                    // Labels or attributes may have changed; the password is not re-checked
                    // (it applies from the next CONNECT).
                    principal.credential = Some(current.clone());
                }
            }
            None if !snapshot.allow_anonymous => return Err(AuthError::NotAuthorized),
            None => {}
        }
        if snapshot.acls.is_empty() {
            return Ok(snapshot.no_rules.clone());
        }
        Ok(Arc::new(
            snapshot
                .acls
                .resolve(&principal.identity(), snapshot.verdicts),
        ))
    }
}

fn compile(flags: &AuthFlags, inputs: Inputs, generation: u64) -> Snapshot {
    let credentials = CredentialIndex::new(inputs.credentials);
    let acls = AclSet::compile(&inputs.acls);
    let allow_anonymous = flags
        .allow_anonymous
        .or(inputs.auth.allow_anonymous)
        .unwrap_or(credentials.is_empty());
    let default_allow = flags
        .default_permission
        .or(inputs.auth.default_permission)
        .unwrap_or(Permission::Allow)
        == Permission::Allow;
    let deny_disconnect = flags
        .deny_action
        .or(inputs.auth.deny_action)
        .unwrap_or(DenyAction::Ignore)
        == DenyAction::Disconnect;
    let verdicts = Verdicts {
        generation,
        default_allow,
        deny_disconnect,
    };
    Snapshot {
        generation,
        credentials,
        acls,
        allow_anonymous,
        verdicts,
        no_rules: Arc::new(ConnAcl::empty(verdicts)),
    }
}

#[cfg(test)]
mod acl_tests;
