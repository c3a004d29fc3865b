//! Cluster mode's registry source: the `cmq_<c>_credentials` and `cmq_<c>_acl` KV buckets,
//! written by the operator (or `cmq registry apply`) in the shared encoding of
//! `cmq_crds::kv`, watched by every hub. The hub starts serving only after it has read both
//! buckets, so a device is never refused for a credential that exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use cmq_crds::kv::{self as encoding, KvError, StoredAcl, StoredCredential};
use cmq_crds::seal;
use cmq_crds::v1alpha1::AuthSpec;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{NatsState, unavailable};
use crate::access::{AccessMetrics, Credential, Inputs};
use crate::state::StateError;

/// How long a starting hub retries opening the registry buckets.
const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// Opens (creating when missing) a cluster's credential and ACL buckets.
pub async fn open_buckets(
    js: &jetstream::Context,
    cluster: &str,
    replicas: usize,
) -> Result<(kv::Store, kv::Store), StateError> {
    let mut stores = Vec::new();
    for bucket in [
        encoding::credentials_bucket(cluster),
        encoding::acl_bucket(cluster),
    ] {
        let store = match js.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_or_update_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("creating a registry bucket", e))?,
        };
        stores.push(store);
    }
    let acl = stores.pop();
    let credentials = stores.pop();
    match (credentials, acl) {
        (Some(c), Some(a)) => Ok((c, a)),
        _ => Err(unavailable(
            "opening the registry buckets",
            "missing bucket",
        )),
    }
}

/// Both buckets' current entries.
#[derive(Default)]
struct Maps {
    credentials: BTreeMap<String, StoredCredential>,
    acls: BTreeMap<String, StoredAcl>,
}

/// Where the registry's state goes when the buckets change.
pub type Apply = Arc<dyn Fn(Inputs) + Send + Sync>;

impl NatsState {
    /// Reads both buckets, puts their state in force through `apply`, then keeps watching
    /// them (re-reading from scratch after a lost watch) until `shutdown`.
    pub async fn watch_registry(
        self: &Arc<Self>,
        auth: AuthSpec,
        cluster_secret: Arc<[u8]>,
        apply: Apply,
        metrics: AccessMetrics,
        shutdown: CancellationToken,
    ) -> Result<(), StateError> {
        // A NATS cluster that is still electing its JetStream leader (all servers started
        // together) times requests out for a few seconds: retry before giving up.
        let started = std::time::Instant::now();
        let (credentials, acl) = loop {
            match open_buckets(&self.js, &self.config.cluster, self.config.replicas).await {
                Ok(buckets) => break buckets,
                Err(e) if started.elapsed() < OPEN_PATIENCE => {
                    warn!(error = %e, "registry buckets not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let maps = Arc::new(Mutex::new(Maps::default()));
        let changed = Arc::new(Notify::new());
        let loaded = Arc::new(tokio::sync::Semaphore::new(0));
        for (store, is_acl) in [(credentials, false), (acl, true)] {
            let metrics = metrics.clone();
            tokio::spawn(watch_bucket(
                store,
                is_acl,
                maps.clone(),
                changed.clone(),
                loaded.clone(),
                metrics,
                shutdown.clone(),
            ));
        }
        // Both buckets read once.
        match tokio::time::timeout(Duration::from_secs(30), loaded.acquire_many(2)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable("reading the registry", e)),
            Err(_) => return Err(unavailable("reading the registry", "timed out")),
        }
        let inputs = move || {
            let m = maps.lock();
            Inputs {
                credentials: m
                    .credentials
                    .values()
                    .map(|c| compile(c, &cluster_secret))
                    .collect(),
                acls: m.acls.values().cloned().collect(),
                auth: auth.clone(),
            }
        };
        // The watchers' notifications so far are in this first state already.
        let _ = futures_util::FutureExt::now_or_never(changed.notified());
        apply(inputs());
        info!("registry loaded from NATS KV");
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = changed.notified() => {}
                }
                // Coalesce a burst of puts (an operator applying many resources).
                tokio::time::sleep(Duration::from_millis(50)).await;
                apply(inputs());
                metrics.reload("ok");
            }
        });
        Ok(())
    }
}

/// A stored credential compiled, its pre-shared key opened with the cluster's secret.
fn compile(stored: &StoredCredential, cluster_secret: &[u8]) -> Credential {
    let mut credential = Credential::new(stored.clone(), None);
    if let (Some(sealed), Some(psk)) = (&stored.psk_sealed, &stored.spec.psk) {
        let entry = encoding::entry_key(&stored.namespace, &stored.name);
        match seal::open(cluster_secret, &entry, &psk.identity, sealed) {
            Ok(key) => credential.psk_key = Some(key.into()),
            // The device cannot use DTLS PSK on this hub; its other proofs still work.
            Err(e) => warn!(credential = %entry, error = %e, "cannot open the pre-shared key"),
        }
    }
    credential
}

/// Keeps one bucket's entries in `maps`; signals `loaded` once after the first full read.
async fn watch_bucket(
    store: kv::Store,
    is_acl: bool,
    maps: Arc<Mutex<Maps>>,
    changed: Arc<Notify>,
    loaded: Arc<tokio::sync::Semaphore>,
    metrics: AccessMetrics,
    shutdown: CancellationToken,
) {
    let mut signalled = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let empty = store.status().await.map(|s| s.values() == 0);
        let watch = store.watch_with_history(">").await;
        let (Ok(empty), Ok(mut watch)) = (empty, watch) else {
            warn!(
                bucket = store.name,
                "cannot watch the registry bucket; retrying"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        // A new watch replays every current entry; keys not replayed were deleted while the
        // watch was lost, and go once the replay is done.
        let mut seen: Option<std::collections::HashSet<String>> = Some(Default::default());
        let mut current = empty;
        loop {
            if current && let Some(seen) = seen.take() {
                maps.lock().retain(is_acl, &seen);
                changed.notify_one();
                if !std::mem::replace(&mut signalled, true) {
                    loaded.add_permits(1);
                }
            }
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    debug!(bucket = store.name, error = %e, "registry watch failed; re-reading");
                    break;
                }
                None => break,
            };
            if let Some(seen) = seen.as_mut() {
                seen.insert(entry.key.clone());
            }
            let put = matches!(entry.operation, kv::Operation::Put);
            maps.lock().update(
                is_acl,
                &entry.key,
                put.then_some(&entry.value[..]),
                &metrics,
            );
            if entry.delta == 0 {
                current = true;
            }
            if current {
                changed.notify_one();
            }
        }
    }
}

impl Maps {
    /// Applies one entry: a put that does not decode keeps the key's last good value.
    fn update(&mut self, is_acl: bool, key: &str, value: Option<&[u8]>, metrics: &AccessMetrics) {
        let report = |e: KvError| {
            metrics.reload("invalid");
            warn!(key, error = %e, "invalid registry entry; keeping its last good value");
        };
        match (is_acl, value) {
            (true, Some(bytes)) => match encoding::decode_acl(bytes) {
                Ok(acl) => {
                    self.acls.insert(key.to_owned(), acl);
                }
                Err(e) => report(e),
            },
            (false, Some(bytes)) => match encoding::decode_credential(bytes) {
                Ok(c) => {
                    self.credentials.insert(key.to_owned(), c);
                }
                Err(e) => report(e),
            },
            (true, None) => {
                self.acls.remove(key);
            }
            (false, None) => {
                self.credentials.remove(key);
            }
        }
    }

    /// Keeps only the keys in `seen`.
    fn retain(&mut self, is_acl: bool, seen: &std::collections::HashSet<String>) {
        if is_acl {
            self.acls.retain(|k, _| seen.contains(k));
        } else {
            self.credentials.retain(|k, _| seen.contains(k));
        }
    }
}
