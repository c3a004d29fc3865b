//! Follows a cluster's `cmq_<c>_rules` bucket (written by the operator): the decoded
//! rules, whole, after the first full read and after every change. Dispatchers run them;
//! hubs take the source filters of the `sync` ones.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use cmq_crds::kv::{self as encoding, StoredRule};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Opens the rules bucket, creating it when missing.
pub async fn open(
    js: &jetstream::Context,
    cluster: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let bucket = encoding::rules_bucket(cluster);
    match js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create bucket {bucket}: {e}")),
    }
}

/// Publishes the bucket's rules into `out` until `stop` (`None` until the first full read).
/// An entry that does not decode keeps its key's last good value.
pub async fn follow(
    store: kv::Store,
    out: watch::Sender<Option<Vec<StoredRule>>>,
    stop: CancellationToken,
) {
    let mut rules: BTreeMap<String, StoredRule> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let empty = store.status().await.map(|s| s.values() == 0);
        let watch = store.watch_with_history(">").await;
        let (Ok(empty), Ok(mut watch)) = (empty, watch) else {
            warn!(
                bucket = store.name,
                "cannot watch the rules bucket; retrying"
            );
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        // A new watch replays every entry; keys it does not replay were deleted meanwhile.
        let mut seen: Option<HashSet<String>> = Some(HashSet::new());
        let mut current = empty;
        loop {
            if current {
                if let Some(seen) = seen.take() {
                    rules.retain(|k, _| seen.contains(k));
                }
                out.send_replace(Some(rules.values().cloned().collect()));
            }
            let entry = tokio::select! {
                _ = stop.cancelled() => return,
                e = watch.next() => e,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    debug!(bucket = store.name, error = %e, "rules watch failed; re-reading");
                    break;
                }
                None => break,
            };
            if let Some(seen) = seen.as_mut() {
                seen.insert(entry.key.clone());
            }
            match entry.operation {
                kv::Operation::Put => match encoding::decode_rule(&entry.value) {
                    Ok(rule) => {
                        rules.insert(entry.key.clone(), rule);
                    }
                    Err(e) => {
                        warn!(key = entry.key, error = %e, "invalid rule entry; keeping its last good value")
                    }
                },
                _ => {
                    rules.remove(&entry.key);
                }
            }
            current = current || entry.delta == 0;
        }
    }
}
