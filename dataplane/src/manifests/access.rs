//! The registry's inputs from a manifests folder: credentials (their Secret references
//! resolved from the Secrets in the same folder), ACLs and the cluster's auth settings.

use std::sync::Arc;

use cmq_crds::FieldError;
use cmq_crds::kv::{StoredAcl, StoredCredential};
use tracing::debug;

use super::{Located, ManifestError, Manifests};
use crate::access::{Credential, Inputs};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The resource's namespace (`default` when omitted, as `kubectl apply` would).
pub fn namespace(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The resource's name (empty when omitted; `check_named` refuses that).
pub fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn check_named(meta: &ObjectMeta) -> Result<(), FieldError> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(()),
        _ => Err(FieldError::new("metadata.name", "must be set")),
    }
}

fn field_error(
    path: &std::path::Path,
    kind: &'static str,
    meta: &ObjectMeta,
    source: FieldError,
) -> ManifestError {
    ManifestError::Field {
        path: path.to_owned(),
        kind,
        name: name(meta),
        source,
    }
}

/// Validates and compiles what the folder holds. Any invalid resource fails the whole load
/// (so a reload keeps the last good state), naming its file and field.
pub fn access_inputs(m: &Manifests) -> Result<Inputs, ManifestError> {
    let cluster = m.cluster.as_ref().and_then(|c| c.metadata.name.clone());
    // Without an MqttCluster in the folder, every resource belongs to this hub.
    let ours = |cluster_ref: &str| cluster.as_deref().is_none_or(|c| c == cluster_ref);
    let mut inputs = Inputs {
        auth: m
            .cluster
            .as_ref()
            .map(|c| c.spec.auth.clone())
            .unwrap_or_default(),
        ..Inputs::default()
    };
    for Located { path, resource } in &m.credentials {
        let field_err = |source| field_error(path, "DeviceCredential", &resource.metadata, source);
        check_named(&resource.metadata).map_err(field_err)?;
        resource.spec.validate().map_err(field_err)?;
        if !ours(&resource.spec.cluster_ref) {
            debug!(path = %path.display(), "DeviceCredential of another cluster, ignored");
            continue;
        }
        let ns = namespace(&resource.metadata);
        let plain = match resource
            .spec
            .password
            .as_ref()
            .and_then(|p| p.secret_ref.as_ref())
        {
            Some(r) => Some(
                secret_value(m, &ns, &r.name, &r.key, "spec.password.secretRef")
                    .map_err(field_err)?,
            ),
            None => None,
        };
        let psk = match &resource.spec.psk {
            Some(p) => {
                let key = secret_value(m, &ns, &p.secret_ref.name, &p.secret_ref.key, PSK_FIELD)
                    .map_err(field_err)?;
                check_psk_len(&key).map_err(field_err)?;
                Some(key)
            }
            None => None,
        };
        let stored = StoredCredential {
            namespace: ns,
            name: name(&resource.metadata),
            labels: resource.metadata.labels.clone().unwrap_or_default(),
            spec: resource.spec.clone(),
            psk_sealed: None,
        };
        let mut credential = Credential::new(stored, plain);
        credential.psk_key = psk.map(Arc::from);
        inputs.credentials.push(credential);
    }
    for Located { path, resource } in &m.acls {
        let field_err = |source| field_error(path, "TopicAcl", &resource.metadata, source);
        check_named(&resource.metadata).map_err(field_err)?;
        resource.spec.validate().map_err(field_err)?;
        if !ours(&resource.spec.cluster_ref) {
            debug!(path = %path.display(), "TopicAcl of another cluster, ignored");
            continue;
        }
        inputs.acls.push(StoredAcl {
            namespace: namespace(&resource.metadata),
            name: name(&resource.metadata),
            spec: resource.spec.clone(),
        });
    }
    Ok(inputs)
}

/// The field of a DeviceCredential naming its pre-shared key's Secret.
pub const PSK_FIELD: &str = "spec.psk.secretRef";

/// A pre-shared key must be 1 to 64 bytes long (what DTLS stacks accept).
pub fn check_psk_len(key: &[u8]) -> Result<(), FieldError> {
    if key.is_empty() || key.len() > cmq_crds::v1alpha1::MAX_PSK_LEN {
        return Err(FieldError::new(
            PSK_FIELD,
            format!("the key must be 1 to 64 bytes long, not {}", key.len()),
        ));
    }
    Ok(())
}

/// The value of `key` in the Secret `ns/name` of the folder (`stringData` or `data`);
/// `field` names the reference in errors.
pub fn secret_value(
    m: &Manifests,
    ns: &str,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<Vec<u8>, FieldError> {
    let secret = m
        .secrets
        .iter()
        .map(|l| &l.resource)
        .find(|s| namespace(&s.metadata) == ns && s.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| FieldError::new(field, format!("Secret {ns}/{name} not found")))?;
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.as_bytes().to_vec());
    }
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.0.clone());
    }
    Err(FieldError::new(
        field,
        format!("Secret {ns}/{name} has no key {key:?}"),
    ))
}
