//! `DeviceCredential`: how one device (or a family of devices) proves who it is.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// A device's identity: which client ids and username it may use, the secret or certificate
/// it proves that with, and attributes its ACLs can refer to.
///
/// A credential matches a CONNECT when every identity field it sets matches (client id,
/// username, certificate); it then authenticates the connection when its password (if any)
/// verifies. A credential must set a password, an x509 identity or a pre-shared key (any
/// combination).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.password) || has(self.x509) || has(self.psk)").message("a credential needs a password, an x509 identity or a pre-shared key"))]
#[kube(
    group = "cmq.io",
    version = "v1alpha1",
    kind = "DeviceCredential",
    doc = "A device (or family of devices) of an MqttCluster: the identity it connects with and how it proves it.",
    namespaced,
    shortname = "dcred",
    status = "DeviceCredentialStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef"}"#,
    printcolumn = r#"{"name":"Username","type":"string","jsonPath":".spec.username"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentialSpec {
    /// Name of the `MqttCluster` (same namespace) this credential belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_ref: String,
    /// Client identifiers this credential may connect as. Omitted: any client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientIdMatch>,
    /// MQTT username the device presents. Omitted: the device is identified by client id
    /// or certificate, and any username (or none) is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535))]
    pub username: Option<String>,
    /// The device's password. Never plaintext here: a Secret key (the operator hashes it
    /// with argon2id before it leaves the API server) or a PHC hash string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordSource>,
    /// Identity of the device's client certificate, checked on TLS listeners that ask for
    /// one. Every field set must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Identity>,
    /// A pre-shared key for CoAP over DTLS (port 5684): the PSK identity the device sends in
    /// the handshake and the key, in a Secret. The operator encrypts the key with the
    /// cluster's secret before it leaves the API server; only hubs can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<PskSource>,
    /// Key/value attributes of the device, usable in ACL topic templates as
    /// `${attr.NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// A disabled credential authenticates nobody; live connections that used it are
    /// disconnected (MQTT 5 reason 0x87).
    #[serde(default)]
    pub disabled: bool,
}

/// Which client ids a credential admits: exactly one, or those matching a pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.exact) != has(self.pattern)").message("set exactly one of exact and pattern"))]
#[serde(rename_all = "camelCase")]
pub struct ClientIdMatch {
    /// This client id only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535))]
    pub exact: Option<String>,
    /// A glob: `*` stands for any run of characters (possibly empty), `?` for one
    /// character; everything else is literal. Example: `sensor-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65535))]
    pub pattern: Option<String>,
}

/// Where a credential's password comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.hash)").message("set exactly one of secretRef and hash"))]
#[serde(rename_all = "camelCase")]
pub struct PasswordSource {
    /// A key of a Secret in the credential's namespace holding the plaintext password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A password hash in PHC / modular crypt form: argon2id (`$argon2id$v=19$...`) or
    /// bcrypt (`$2b$...`, `$2a$...`, `$2y$...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('$argon2id$') || self.matches('^[$]2[aby][$]')").message("expected an argon2id ($argon2id$...) or bcrypt ($2b$...) hash; plaintext passwords are not accepted"))]
    pub hash: Option<String>,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

/// A DTLS pre-shared key: the identity it goes by and where the key is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PskSource {
    /// The PSK identity the device presents (RFC 4279), e.g. `coap-client -u`.
    #[schemars(length(min = 1, max = 128))]
    pub identity: String,
    /// The Secret key holding the key's bytes (as stored, not hex-decoded; 1-64 bytes).
    pub secret_ref: PskKeyRef,
}

/// A key of a Secret holding a pre-shared key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PskKeyRef {
    /// Name of the Secret (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[serde(default = "default_psk_key")]
    pub key: String,
}

fn default_psk_key() -> String {
    "psk".into()
}

/// The longest pre-shared key accepted (bytes): what DTLS implementations allow.
pub const MAX_PSK_LEN: usize = 64;

/// Identity of a client certificate (the leaf the device presents).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.commonName) || has(self.subjectAltName) || has(self.sha256Fingerprint)").message("set commonName, subjectAltName or sha256Fingerprint"))]
#[serde(rename_all = "camelCase")]
pub struct X509Identity {
    /// The subject's common name (CN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// A subject alternative name the certificate must carry (DNS name, e-mail, URI or IP,
    /// compared as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_alt_name: Option<String>,
    /// SHA-256 fingerprint of the certificate's DER bytes, hex (colons and case ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2}$"))]
    pub sha256_fingerprint: Option<String>,
}

/// Observed state of a credential, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentialStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Synced`: whether the credential is in the cluster's shared state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// The kinds of password hash the hub verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Argon2id,
    Bcrypt,
}

/// Which kind of hash `phc` is, or why it is not one the hub accepts.
pub fn hash_kind(phc: &str) -> Result<HashKind, &'static str> {
    if phc.starts_with("$argon2id$") {
        let parsed =
            argon2::password_hash::PasswordHash::new(phc).map_err(|_| "malformed argon2id hash")?;
        let params =
            argon2::Params::try_from(&parsed).map_err(|_| "invalid argon2id parameters")?;
        crate::argon::check_params(&params)
            .map_err(|_| "argon2id costs too high (at most m=65536 KiB, t=16, p=8)")?;
        Ok(HashKind::Argon2id)
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| phc.starts_with(p)) && phc.len() == 60 {
        Ok(HashKind::Bcrypt)
    } else if phc.starts_with('$') {
        Err("unsupported hash: expected argon2id ($argon2id$...) or bcrypt ($2b$...)")
    } else {
        Err(
            "not a hash (plaintext passwords are not accepted): use secretRef or an argon2id/bcrypt hash",
        )
    }
}

impl DeviceCredentialSpec {
    /// Checks what the schema cannot: the cross-field rules.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.cluster_ref.is_empty() {
            return Err(FieldError::new("spec.clusterRef", "must not be empty"));
        }
        if let Some(c) = &self.client_id {
            match (&c.exact, &c.pattern) {
                (Some(_), Some(_)) => {
                    return Err(FieldError::new(
                        "spec.clientId",
                        "set either exact or pattern, not both",
                    ));
                }
                (None, None) => {
                    return Err(FieldError::new("spec.clientId", "set exact or pattern"));
                }
                (Some(e), None) if e.is_empty() => {
                    return Err(FieldError::new("spec.clientId.exact", "must not be empty"));
                }
                (None, Some(p)) if p.is_empty() => {
                    return Err(FieldError::new(
                        "spec.clientId.pattern",
                        "must not be empty",
                    ));
                }
                _ => {}
            }
        }
        if let Some(p) = &self.password {
            match (&p.secret_ref, &p.hash) {
                (Some(_), Some(_)) => {
                    return Err(FieldError::new(
                        "spec.password",
                        "set either secretRef or hash, not both",
                    ));
                }
                (None, None) => {
                    return Err(FieldError::new("spec.password", "set secretRef or hash"));
                }
                (None, Some(h)) => {
                    hash_kind(h).map_err(|r| FieldError::new("spec.password.hash", r))?;
                }
                (Some(_), None) => {}
            }
        }
        if let Some(x) = &self.x509 {
            if x.common_name.is_none()
                && x.subject_alt_name.is_none()
                && x.sha256_fingerprint.is_none()
            {
                return Err(FieldError::new(
                    "spec.x509",
                    "set commonName, subjectAltName or sha256Fingerprint",
                ));
            }
            if let Some(f) = &x.sha256_fingerprint
                && normalize_fingerprint(f).is_none()
            {
                return Err(FieldError::new(
                    "spec.x509.sha256Fingerprint",
                    "must be 64 hex digits (colons allowed)",
                ));
            }
        }
        if let Some(p) = &self.psk
            && (p.identity.is_empty() || p.identity.len() > 128)
        {
            return Err(FieldError::new(
                "spec.psk.identity",
                "must be 1 to 128 bytes long",
            ));
        }
        if self.password.is_none() && self.x509.is_none() && self.psk.is_none() {
            return Err(FieldError::new(
                "spec",
                "a credential needs a password, an x509 identity or a pre-shared key",
            ));
        }
        Ok(())
    }
}

/// A SHA-256 fingerprint as 64 lowercase hex digits, or `None` when `text` is not one.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}
