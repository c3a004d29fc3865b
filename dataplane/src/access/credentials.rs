//! The device registry: DeviceCredentials compiled into an index that finds the candidates
//! for a CONNECT without scanning every credential.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cmq_crds::kv::StoredCredential;
use cmq_crds::v1alpha1::normalize_fingerprint;

use super::glob::Glob;
use super::password::Verifier;

/// What a client certificate says about the device (the leaf certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    pub common_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    /// SHA-256 of the DER bytes, 64 lowercase hex digits.
    pub sha256: String,
}

/// One compiled credential.
#[derive(Debug)]
pub struct Credential {
    /// `namespace/name`.
    pub key: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    pub disabled: bool,
    client_id: Option<Glob>,
    pub username: Option<String>,
    pub verifier: Option<Verifier>,
    cert_cn: Option<String>,
    cert_san: Option<String>,
    cert_sha256: Option<String>,
    /// The DTLS pre-shared key identity, and the key when this hub could read it (cluster
    /// mode: opened with the cluster's secret).
    pub psk_identity: Option<String>,
    pub psk_key: Option<Arc<[u8]>>,
}

/// What a CONNECT presents to identify itself.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub cert: Option<&'a PeerCert>,
}

impl Credential {
    /// Compiles a validated credential; `plain` is the password of a Secret reference that
    /// standalone mode resolved from its folder (the PSK, if any, is set by the caller).
    pub fn new(stored: StoredCredential, plain: Option<Vec<u8>>) -> Self {
        let spec = stored.spec;
        let verifier = match (plain, spec.password.and_then(|p| p.hash)) {
            (Some(p), _) => Some(Verifier::Plain(p)),
            (None, Some(h)) => Verifier::from_hash(&h),
            (None, None) => None,
        };
        let x509 = spec.x509.unwrap_or_default();
        Self {
            key: format!("{}/{}", stored.namespace, stored.name).into(),
            labels: stored.labels,
            attributes: spec.attributes,
            disabled: spec.disabled,
            client_id: spec
                .client_id
                .and_then(|c| c.exact.or(c.pattern))
                .map(|p| Glob::new(&p)),
            username: spec.username,
            verifier,
            cert_cn: x509.common_name,
            cert_san: x509.subject_alt_name,
            cert_sha256: x509
                .sha256_fingerprint
                .as_deref()
                .and_then(normalize_fingerprint),
            psk_identity: spec.psk.map(|p| p.identity),
            psk_key: None,
        }
    }

    /// Whether the credential can vouch for a client that did not prove a PSK: it has a
    /// password or a certificate identity. A PSK-only credential must not, or it would let
    /// in any MQTT client without a secret.
    pub(crate) fn proves_without_psk(&self) -> bool {
        self.verifier.is_some() || self.needs_cert()
    }

    fn needs_cert(&self) -> bool {
        self.cert_cn.is_some() || self.cert_san.is_some() || self.cert_sha256.is_some()
    }

    /// Whether every identity field the credential sets matches what was presented.
    pub fn identity_matches(&self, p: &Presented<'_>) -> bool {
        if self
            .client_id
            .as_ref()
            .is_some_and(|g| !g.matches(p.client_id))
        {
            return false;
        }
        if let Some(u) = &self.username
            && p.username != Some(u.as_str())
        {
            return false;
        }
        if !self.needs_cert() {
            return true;
        }
        let Some(cert) = p.cert else { return false };
        self.cert_cn
            .as_ref()
            .is_none_or(|cn| cert.common_name.as_ref() == Some(cn))
            && self
                .cert_san
                .as_ref()
                .is_none_or(|san| cert.subject_alt_names.contains(san))
            && self
                .cert_sha256
                .as_ref()
                .is_none_or(|fp| *fp == cert.sha256)
    }
}

/// Every credential, indexed by its most selective identity field.
#[derive(Debug, Default)]
pub struct CredentialIndex {
    all: Vec<Arc<Credential>>,
    by_key: HashMap<Arc<str>, usize>,
    by_username: HashMap<String, Vec<usize>>,
    by_client_id: HashMap<String, Vec<usize>>,
    by_fingerprint: HashMap<String, Vec<usize>>,
    by_cn: HashMap<String, Vec<usize>>,
    by_san: HashMap<String, Vec<usize>>,
    /// Credentials identified by a client id pattern only.
    patterns: Vec<usize>,
    by_psk_identity: HashMap<String, usize>,
}

impl CredentialIndex {
    /// Indexes credentials; they are tried in key order when several match.
    pub fn new(mut credentials: Vec<Credential>) -> Self {
        credentials.sort_by(|a, b| a.key.cmp(&b.key));
        let mut index = Self::default();
        for (i, c) in credentials.into_iter().enumerate() {
            index.by_key.insert(c.key.clone(), i);
            if let Some(id) = &c.psk_identity {
                // Two credentials with one identity: the first in key order wins.
                index.by_psk_identity.entry(id.clone()).or_insert(i);
            }
            let push = |map: &mut HashMap<String, Vec<usize>>, k: &str| {
                map.entry(k.to_owned()).or_default().push(i)
            };
            if let Some(u) = &c.username {
                push(&mut index.by_username, u);
            } else if let Some(id) = c.client_id.as_ref().and_then(Glob::literal) {
                push(&mut index.by_client_id, id);
            } else if let Some(fp) = &c.cert_sha256 {
                push(&mut index.by_fingerprint, fp);
            } else if let Some(cn) = &c.cert_cn {
                push(&mut index.by_cn, cn);
            } else if let Some(san) = &c.cert_san {
                push(&mut index.by_san, san);
            } else {
                index.patterns.push(i);
            }
            index.all.push(Arc::new(c));
        }
        index
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The credential stored under `key` (`namespace/name`).
    pub fn get(&self, key: &str) -> Option<&Arc<Credential>> {
        self.by_key.get(key).map(|i| &self.all[*i])
    }

    /// The credential with DTLS PSK identity `identity`.
    pub fn by_psk_identity(&self, identity: &str) -> Option<&Arc<Credential>> {
        self.by_psk_identity.get(identity).map(|i| &self.all[*i])
    }

    /// Credentials whose identity matches, in key order (those that can vouch for a
    /// client by password or certificate).
    pub fn matching(&self, p: &Presented<'_>) -> Vec<Arc<Credential>> {
        let mut hits: Vec<usize> = Vec::new();
        let mut add = |ids: Option<&Vec<usize>>| hits.extend(ids.into_iter().flatten());
        if let Some(u) = p.username {
            add(self.by_username.get(u));
        }
        add(self.by_client_id.get(p.client_id));
        if let Some(cert) = p.cert {
            add(self.by_fingerprint.get(&cert.sha256));
            if let Some(cn) = &cert.common_name {
                add(self.by_cn.get(cn));
            }
            for san in &cert.subject_alt_names {
                add(self.by_san.get(san));
            }
        }
        hits.extend(&self.patterns);
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter()
            .map(|i| &self.all[i])
            .filter(|c| c.proves_without_psk() && c.identity_matches(p))
            .cloned()
            .collect()
    }
}
