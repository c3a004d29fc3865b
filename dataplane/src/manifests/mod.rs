//! Resource YAML for standalone mode: the same files `kubectl apply` takes. `MqttCluster`
//! (listeners, limits, auth defaults), `DeviceCredential`, `TopicAcl`, `ForwardRule`, and
//! the `Secret`s credentials refer to.

mod access;
mod watch;

use std::path::{Path, PathBuf};

use cmq_crds::FieldError;
use cmq_crds::kv::StoredRule;
use cmq_crds::v1alpha1::{DeviceCredential, ForwardRule, MqttCluster, TopicAcl};
use k8s_openapi::api::core::v1::Secret;

pub use access::{PSK_FIELD, access_inputs, check_psk_len, name, namespace, secret_value};
use serde::Deserialize;
use tracing::{debug, warn};
pub use watch::{load_inputs, watch};

/// Why the manifests could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifests folder {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {kind} in {path}: {source}")]
    Invalid {
        path: PathBuf,
        kind: String,
        source: serde_yaml::Error,
    },
    #[error("invalid {kind} in {path}: {field}: {source}")]
    Schema {
        path: PathBuf,
        kind: String,
        /// Where in the resource, e.g. `spec.rules[0].permission`.
        field: String,
        source: serde_yaml::Error,
    },
    #[error("invalid {kind} {name:?} in {path}: {source}")]
    Field {
        path: PathBuf,
        kind: &'static str,
        name: String,
        source: FieldError,
    },
}

/// What standalone mode found in the manifests folder.
#[derive(Debug, Default)]
pub struct Manifests {
    pub cluster: Option<MqttCluster>,
    pub credentials: Vec<Located<DeviceCredential>>,
    pub acls: Vec<Located<TopicAcl>>,
    pub rules: Vec<Located<ForwardRule>>,
    pub secrets: Vec<Located<Secret>>,
}

impl Manifests {
    /// The ForwardRules as the rule engine takes them.
    pub fn stored_rules(&self) -> Vec<StoredRule> {
        self.rules
            .iter()
            .map(|r| StoredRule {
                namespace: namespace(&r.resource.metadata),
                name: name(&r.resource.metadata),
                spec: r.resource.spec.clone(),
            })
            .collect()
    }
}

/// A resource and the file it came from (for error messages).
#[derive(Debug)]
pub struct Located<T> {
    pub path: PathBuf,
    pub resource: T,
}

fn parse<T: for<'de> Deserialize<'de>>(
    path: &Path,
    kind: &str,
    value: serde_yaml::Value,
) -> Result<Located<T>, ManifestError> {
    let resource = serde_path_to_error::deserialize(value).map_err(|e| ManifestError::Schema {
        path: path.to_owned(),
        kind: kind.to_owned(),
        field: e.path().to_string(),
        source: e.into_inner(),
    })?;
    Ok(Located {
        path: path.to_owned(),
        resource,
    })
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: String,
}

/// The `*.yaml`/`*.yml` files of `dir`, in name order; `path` itself when it is a file.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let read_dir = |source| ManifestError::ReadDir {
        path: path.to_owned(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Loads every `*.yaml`/`*.yml` file in `dir` (multi-document files included), in name
/// order; `dir` may also be a single file.
pub fn load(dir: &Path) -> Result<Manifests, ManifestError> {
    let paths = yaml_files(dir)?;
    let mut manifests = Manifests::default();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::ReadFile {
            path: path.clone(),
            source,
        })?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_yaml::Value::deserialize(doc).map_err(|source| ManifestError::Invalid {
                    path: path.clone(),
                    kind: "YAML".into(),
                    source,
                })?;
            if value.is_null() {
                continue;
            }
            let meta: TypeMeta =
                serde_yaml::from_value(value.clone()).map_err(|source| ManifestError::Invalid {
                    path: path.clone(),
                    kind: "resource".into(),
                    source,
                })?;
            match meta.kind.as_str() {
                "MqttCluster" => {
                    let cluster: MqttCluster = parse(&path, &meta.kind, value)?.resource;
                    if manifests.cluster.is_some() {
                        warn!(path = %path.display(), "more than one MqttCluster; using the first");
                    } else {
                        manifests.cluster = Some(cluster);
                    }
                }
                "DeviceCredential" => manifests.credentials.push(parse(&path, &meta.kind, value)?),
                "TopicAcl" => manifests.acls.push(parse(&path, &meta.kind, value)?),
                "ForwardRule" => manifests.rules.push(parse(&path, &meta.kind, value)?),
                "Secret" => manifests.secrets.push(parse(&path, &meta.kind, value)?),
                other => {
                    debug!(path = %path.display(), kind = other, "resource kind not used by standalone mode yet")
                }
            }
        }
    }
    Ok(manifests)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_cluster_and_reports_bad_files_with_their_path() {
        let dir = std::env::temp_dir().join(format!("cmq-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: cmq.io/v1alpha1\nkind: MqttCluster\nmetadata: {name: x}\nspec:\n  hub:\n    limits: {maxConnections: 7}\n---\nkind: Deployment\n",
        )
        .unwrap();
        let m = load(&dir).unwrap();
        assert_eq!(m.cluster.unwrap().spec.hub.limits.max_connections, Some(7));
        std::fs::write(
            dir.join("b.yml"),
            "kind: MqttCluster\nspec: {hub: {limits: {maxConnections: many}}}\n",
        )
        .unwrap();
        let err = load(&dir).unwrap_err();
        match &err {
            ManifestError::Schema { path, field, .. } => {
                assert!(path.ends_with("b.yml"));
                assert_eq!(field, "spec.hub.limits.maxConnections");
            }
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
