//! Reloads the registry when the manifests folder changes. Polling rather than inotify:
//! Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, which a poll of
//! modification times sees as plainly as an edit in place, on any file system.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use cmq_crds::kv::StoredRule;

use crate::access::Inputs;
use crate::broker::Broker;

type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamp(dir: &Path) -> Stamp {
    super::yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p, meta)
        })
        .collect()
}

/// Loads the folder's credentials and ACLs, and its ForwardRules.
pub fn load_inputs(dir: &Path) -> Result<(Inputs, Vec<StoredRule>), super::ManifestError> {
    let manifests = super::load(dir)?;
    Ok((super::access_inputs(&manifests)?, manifests.stored_rules()))
}

/// Polls `dir` every `every` until `shutdown`, putting each valid new state in force (the
/// rules through `rules`). An invalid state is logged with its file and field; the last
/// good state stays.
pub async fn watch(
    dir: PathBuf,
    every: Duration,
    broker: Arc<Broker>,
    rules: tokio::sync::watch::Sender<Option<Vec<StoredRule>>>,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let mut last = stamp(&dir);
    let metrics = broker.metrics.access.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        match load_inputs(&dir) {
            Ok((inputs, stored)) => {
                info!(dir = %dir.display(), "manifests changed; registry and rules reloaded");
                broker.update_access(inputs);
                rules.send_replace(Some(stored));
                metrics.reload("ok");
            }
            Err(e) => {
                warn!(error = %e, "invalid manifests; the last good state stays in force");
                metrics.reload("invalid");
            }
        }
    }
}
