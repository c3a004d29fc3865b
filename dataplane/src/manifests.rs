//! Resource YAML for standalone mode: the same files `kubectl apply` takes. This issue reads
//! the `MqttCluster` listener and limits settings; other kinds are left for their issues.

use std::path::{Path, PathBuf};

use cmq_crds::v1alpha1::MqttCluster;
use serde::Deserialize;
use tracing::{debug, warn};

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
}

/// What standalone mode found in the manifests folder.
#[derive(Debug, Default)]
pub struct Manifests {
    pub cluster: Option<MqttCluster>,
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: String,
}

/// Loads every `*.yaml`/`*.yml` file in `dir` (multi-document files included), in name order.
pub fn load(dir: &Path) -> Result<Manifests, ManifestError> {
    let read_dir = |source| ManifestError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
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
                    let cluster: MqttCluster =
                        serde_yaml::from_value(value).map_err(|source| ManifestError::Invalid {
                            path: path.clone(),
                            kind: meta.kind.clone(),
                            source,
                        })?;
                    if manifests.cluster.is_some() {
                        warn!(path = %path.display(), "more than one MqttCluster; using the first");
                    } else {
                        manifests.cluster = Some(cluster);
                    }
                }
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
            "apiVersion: cmq.io/v1alpha1\nkind: MqttCluster\nmetadata: {name: x}\nspec:\n  hub:\n    limits: {maxConnections: 7}\n---\nkind: TopicAcl\n",
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
            ManifestError::Invalid { path, .. } => assert!(path.ends_with("b.yml")),
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
