//! How DeviceCredentials and TopicAcls are stored in a cluster's NATS KV buckets: written
//! by the operator (or `cmq registry apply`), read by every hub. One versioned encoding,
//! used by both sides.
//!
//! Layout: bucket `cmq_<cluster>_credentials` and `cmq_<cluster>_acl`, key
//! `<namespace>/<name>`, value a JSON envelope `{"v": 1, "kind": ..., "namespace": ...,
//! "name": ..., "labels": {...}, "spec": {...}}`. A credential's password is always a hash
//! there: a Secret reference is resolved and hashed (argon2id) before encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::v1alpha1::{
    DeviceCredential, DeviceCredentialSpec, PasswordSource, TopicAcl, TopicAclSpec,
};

/// The encoding version written. Readers accept this and older versions; a newer one is
/// refused (the reader is older than the writer), never misread.
pub const FORMAT_VERSION: u32 = 1;

/// The cluster name hubs and buckets use for the `MqttCluster` `namespace/name`
/// (`cmq hub --cluster`): letters, digits, `_` and `-` only, so a `.` in the name becomes `-`.
pub fn cluster_name(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}").replace('.', "-")
}

/// Name of the bucket holding a cluster's credentials.
pub fn credentials_bucket(cluster: &str) -> String {
    format!("cmq_{cluster}_credentials")
}

/// Name of the bucket holding a cluster's ACLs.
pub fn acl_bucket(cluster: &str) -> String {
    format!("cmq_{cluster}_acl")
}

/// Name of the bucket holding a cluster's ForwardRules (read by the dispatchers).
pub fn rules_bucket(cluster: &str) -> String {
    format!("cmq_{cluster}_rules")
}

/// The key of a resource in its bucket.
pub fn entry_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Why an entry could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("invalid resource: {0}")]
    Invalid(#[from] FieldError),
    #[error("{namespace}/{name}: the password is a Secret reference and no hash was given")]
    MissingHash { namespace: String, name: String },
    #[error("entry written in format version {found}, this reader knows up to {FORMAT_VERSION}")]
    NewerVersion { found: u32 },
    #[error("entry is a {found}, expected a {expected}")]
    WrongKind {
        found: String,
        expected: &'static str,
    },
    #[error("malformed entry: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{namespace}/{name}: the pre-shared key was not sealed")]
    MissingPsk { namespace: String, name: String },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// A credential as stored: its password, if any, is a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCredential {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub spec: DeviceCredentialSpec,
    /// The credential's pre-shared key, sealed (see [`crate::seal`]); set iff `spec.psk` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk_sealed: Option<String>,
}

/// An ACL as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAcl {
    pub namespace: String,
    pub name: String,
    pub spec: TopicAclSpec,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    kind: String,
    #[serde(flatten)]
    body: T,
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    #[serde(default)]
    kind: String,
}

const CREDENTIAL: &str = "DeviceCredential";
const ACL: &str = "TopicAcl";

/// Encodes a credential for the KV. `password_hash` is the hash of the Secret the
/// credential refers to (required then, ignored otherwise); `psk_sealed` its pre-shared key
/// sealed with the cluster's secret (required when it has one, ignored otherwise).
pub fn encode_credential(
    credential: &DeviceCredential,
    password_hash: Option<&str>,
    psk_sealed: Option<&str>,
) -> Result<Vec<u8>, KvError> {
    let namespace = credential
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = credential.metadata.name.clone().unwrap_or_default();
    let mut spec = credential.spec.clone();
    spec.validate()?;
    if let Some(p) = &spec.password
        && p.secret_ref.is_some()
    {
        let Some(hash) = password_hash else {
            return Err(KvError::MissingHash { namespace, name });
        };
        spec.password = Some(PasswordSource {
            secret_ref: None,
            hash: Some(hash.to_owned()),
        });
        spec.validate()?;
    }
    let psk_sealed = match (&spec.psk, psk_sealed) {
        (None, _) => None,
        (Some(_), Some(s)) => Some(s.to_owned()),
        (Some(_), None) => return Err(KvError::MissingPsk { namespace, name }),
    };
    let body = StoredCredential {
        namespace,
        name,
        labels: credential.metadata.labels.clone().unwrap_or_default(),
        spec,
        psk_sealed,
    };
    encode(CREDENTIAL, body)
}

/// Decodes and validates a credential entry.
pub fn decode_credential(bytes: &[u8]) -> Result<StoredCredential, KvError> {
    let stored: StoredCredential = decode(bytes, CREDENTIAL)?;
    stored.spec.validate()?;
    if stored
        .spec
        .password
        .as_ref()
        .is_some_and(|p| p.hash.is_none())
    {
        return Err(
            FieldError::new("spec.password", "a stored credential must carry a hash").into(),
        );
    }
    if stored.spec.psk.is_some() != stored.psk_sealed.is_some() {
        return Err(FieldError::new(
            "pskSealed",
            "a stored credential carries a sealed key iff it has spec.psk",
        )
        .into());
    }
    Ok(stored)
}

/// Encodes an ACL for the KV.
pub fn encode_acl(acl: &TopicAcl) -> Result<Vec<u8>, KvError> {
    acl.spec.validate()?;
    let body = StoredAcl {
        namespace: acl
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: acl.metadata.name.clone().unwrap_or_default(),
        spec: acl.spec.clone(),
    };
    encode(ACL, body)
}

/// Decodes and validates an ACL entry.
pub fn decode_acl(bytes: &[u8]) -> Result<StoredAcl, KvError> {
    let stored: StoredAcl = decode(bytes, ACL)?;
    stored.spec.validate()?;
    Ok(stored)
}

/// A ForwardRule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub namespace: String,
    pub name: String,
    pub spec: crate::v1alpha1::ForwardRuleSpec,
}

const RULE: &str = "ForwardRule";

/// Encodes a ForwardRule for the KV (the SQL is checked by the dispatchers, which report
/// it in the rule's `Valid` condition).
pub fn encode_rule(rule: &crate::v1alpha1::ForwardRule) -> Result<Vec<u8>, KvError> {
    if rule.spec.cluster_ref.is_empty() {
        return Err(FieldError::new("spec.clusterRef", "must not be empty").into());
    }
    let body = StoredRule {
        namespace: rule
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: rule.metadata.name.clone().unwrap_or_default(),
        spec: rule.spec.clone(),
    };
    encode(RULE, body)
}

/// Decodes a ForwardRule entry.
pub fn decode_rule(bytes: &[u8]) -> Result<StoredRule, KvError> {
    decode(bytes, RULE)
}

/// Hashes a plaintext password with argon2id (default parameters, random salt), as the
/// operator does with a credential's Secret.
pub fn hash_password(plain: &[u8]) -> Result<String, KvError> {
    crate::argon::hash(plain).map_err(KvError::Hash)
}

fn encode<T: Serialize>(kind: &str, body: T) -> Result<Vec<u8>, KvError> {
    Ok(serde_json::to_vec(&Envelope {
        v: FORMAT_VERSION,
        kind: kind.to_owned(),
        body,
    })?)
}

fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    expected: &'static str,
) -> Result<T, KvError> {
    let header: Header = serde_json::from_slice(bytes)?;
    if header.v > FORMAT_VERSION {
        return Err(KvError::NewerVersion { found: header.v });
    }
    if header.kind != expected {
        return Err(KvError::WrongKind {
            found: header.kind,
            expected,
        });
    }
    let envelope: Envelope<T> = serde_json::from_slice(bytes)?;
    Ok(envelope.body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn credential(yaml: &str) -> DeviceCredential {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn secret_refs_become_hashes_and_round_trip() {
        let c = credential(
            "apiVersion: cmq.io/v1alpha1\nkind: DeviceCredential\nmetadata: {name: d1, namespace: iot, labels: {fleet: a}}\nspec:\n  clusterRef: demo\n  username: d1\n  password: {secretRef: {name: s}}\n",
        );
        assert!(matches!(
            encode_credential(&c, None, None),
            Err(KvError::MissingHash { .. })
        ));
        let hash = hash_password(b"pw").unwrap();
        let bytes = encode_credential(&c, Some(&hash), None).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains("\"v\":1") && !text.contains("secretRef"),
            "{text}"
        );
        let back = decode_credential(&bytes).unwrap();
        assert_eq!(back.namespace, "iot");
        assert_eq!(back.labels.get("fleet").map(String::as_str), Some("a"));
        assert_eq!(
            back.spec.password.unwrap().hash.as_deref(),
            Some(hash.as_str())
        );
    }

    #[test]
    fn refuses_newer_versions_other_kinds_and_plaintext() {
        assert!(matches!(
            decode_credential(br#"{"v":2,"kind":"DeviceCredential"}"#),
            Err(KvError::NewerVersion { found: 2 })
        ));
        assert!(matches!(
            decode_acl(
                br#"{"v":1,"kind":"DeviceCredential","namespace":"a","name":"b","spec":{}}"#
            ),
            Err(KvError::WrongKind { .. })
        ));
        let plain = br#"{"v":1,"kind":"DeviceCredential","namespace":"a","name":"b","spec":{"clusterRef":"c","password":{"hash":"secret"}}}"#;
        assert!(matches!(decode_credential(plain), Err(KvError::Invalid(_))));
    }

    #[test]
    fn a_psk_is_stored_sealed_and_never_in_plain() {
        let c = credential(
            "apiVersion: cmq.io/v1alpha1\nkind: DeviceCredential\nmetadata: {name: d1, namespace: iot}\nspec:\n  clusterRef: demo\n  psk: {identity: dev1, secretRef: {name: s}}\n",
        );
        assert!(matches!(
            encode_credential(&c, None, None),
            Err(KvError::MissingPsk { .. })
        ));
        let sealed = crate::seal::seal(b"cluster", "iot/d1", "dev1", b"the-key").unwrap();
        let bytes = encode_credential(&c, None, Some(&sealed)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("the-key"), "{text}");
        let back = decode_credential(&bytes).unwrap();
        let opened = crate::seal::open(
            b"cluster",
            "iot/d1",
            "dev1",
            back.psk_sealed.as_deref().unwrap(),
        )
        .unwrap();
        assert_eq!(opened, b"the-key");
        let unsealed = br#"{"v":1,"kind":"DeviceCredential","namespace":"a","name":"b","spec":{"clusterRef":"c","psk":{"identity":"x","secretRef":{"name":"s"}}}}"#;
        assert!(matches!(
            decode_credential(unsealed),
            Err(KvError::Invalid(_))
        ));
    }
}
