//! DeviceCredential and TopicAcl → the cluster's NATS KV, in the shared encoding of
//! `cmq_crds::kv`. One generic controller: read (the MqttCluster, Secrets) → encode (pure,
//! `cmq_crds::kv`) → apply (KV put/delete behind a finalizer) → status (`Synced`).

mod kinds;
mod status;

pub use status::differs as condition_differs;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cmq_crds::kv;
use cmq_crds::v1alpha1::MqttCluster;
use futures_util::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::context::Context;
use crate::error::Error;

/// Removes the KV entry before the object goes.
pub const FINALIZER: &str = "cmq.io/registry";

/// What the generic controller needs of a kind.
pub trait RegistryObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn cluster_ref(&self) -> &str;
    /// The bucket of the kind for a cluster name (`cmq_crds::kv::cluster_name`).
    fn bucket(cluster: &str) -> String;
    /// The Secrets the object's value depends on.
    fn secret_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn conditions(&self) -> &[Condition];
    /// Conditions besides `Synced` (ForwardRule: `Valid`).
    fn extra_conditions(&self, _generation: Option<i64>) -> Vec<Condition> {
        Vec::new()
    }
    /// The bucket where the data plane reports on objects of this kind (ForwardRule:
    /// the dispatchers' per-rule counts), read back into the status.
    fn report_bucket(_cluster: &str) -> Option<String> {
        None
    }
    /// The status fields besides the conditions, from the data plane's reports
    /// (`reports`: every report on this object), and whether they changed.
    fn observed(&self, _reports: &[Vec<u8>]) -> Option<serde_json::Value> {
        None
    }
    /// The entry's bytes; `current` is what the bucket holds now (to keep a password hash
    /// that still verifies instead of re-hashing on every reconcile).
    fn encode(
        &self,
        ctx: &Context,
        current: Option<&[u8]>,
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send;
}

/// Runs the controller of `K` until `shutdown`.
pub async fn run<K: RegistryObject>(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    let by_secret = store.clone();
    let by_cluster = store;
    controller
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            move |secret: Secret| {
                let (ns, name) = (secret.namespace(), secret.name_any());
                by_secret
                    .state()
                    .iter()
                    .filter(|o| o.namespace() == ns && o.secret_names().contains(&name))
                    .map(|o| ObjectRef::from_obj(&**o))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<MqttCluster>::all(client),
            watcher::Config::default(),
            move |cluster: MqttCluster| {
                let (ns, name) = (cluster.namespace(), cluster.name_any());
                by_cluster
                    .state()
                    .iter()
                    .filter(|o| o.namespace() == ns && o.cluster_ref() == name)
                    .map(|o| ObjectRef::from_obj(&**o))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile<K: RegistryObject>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let span =
        info_span!("reconcile", kind = K::KIND, object = %format!("{ns}/{}", obj.name_any()));
    async move {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let result = finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Event::Apply(o) => apply(&api, o, &ctx).await,
                Event::Cleanup(o) => cleanup(o, &ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        });
        ctx.metrics.reconciled(K::KIND, result.as_ref().err());
        result
    }
    .instrument(span)
    .await
}

/// Exponential backoff per object (1 s doubling to 5 min), reset by a success.
fn error_policy<K: RegistryObject>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&ObjectRef::from_obj(&*obj).erase());
    warn!(kind = K::KIND, object = %obj.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Puts the entry, then reports the outcome in the `Synced` condition.
async fn apply<K: RegistryObject>(
    api: &Api<K>,
    obj: Arc<K>,
    ctx: &Context,
) -> Result<Action, Error> {
    let outcome = sync(&*obj, ctx).await;
    let generation = obj.meta().generation;
    let mut conditions = vec![status::synced(&outcome, generation)];
    conditions.extend(obj.extra_conditions(generation));
    let observed = match &outcome {
        Ok(_) => observe(&*obj, ctx).await,
        Err(_) => None,
    };
    let changed =
        status::patch_if_changed(api, &*obj, obj.conditions(), conditions, observed.clone())
            .await?;
    if changed {
        let (type_, reason, note) = match &outcome {
            Ok(bucket) => (
                EventType::Normal,
                "Synced",
                format!("stored in NATS KV bucket {bucket}"),
            ),
            Err(e) => (EventType::Warning, e.category(), e.to_string()),
        };
        ctx.publish(
            &*obj,
            KubeEvent {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: "Sync".into(),
                secondary: None,
            },
        )
        .await;
    }
    match outcome {
        Ok(_) => {
            ctx.backoff.succeeded(&ObjectRef::from_obj(&*obj).erase());
            if K::report_bucket("").is_some() {
                // The reports change without the object: look again.
                return Ok(Action::requeue(REPORT_EVERY));
            }
            Ok(Action::await_change())
        }
        // Nothing to retry until the spec changes; the condition says why.
        Err(e) if !e.is_transient() => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// The cluster's bucket for `K`, or why there is none.
async fn bucket_of<K: RegistryObject>(
    obj: &K,
    ctx: &Context,
) -> Result<Option<(async_nats::jetstream::kv::Store, String)>, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let cluster = Api::<MqttCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(obj.cluster_ref())
        .await?;
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let nats = cluster.spec.nats.as_ref().ok_or_else(|| {
        Error::ClusterNotFound(format!("{ns}/{} (it has no spec.nats)", obj.cluster_ref()))
    })?;
    let bucket = K::bucket(&kv::cluster_name(&ns, obj.cluster_ref()));
    let replicas = usize::from(nats.stream_replicas.unwrap_or(1));
    Ok(Some((
        ctx.nats.bucket(&nats.url, &bucket, replicas).await?,
        bucket,
    )))
}

/// Writes the entry when it differs; returns the bucket.
async fn sync<K: RegistryObject>(obj: &K, ctx: &Context) -> Result<String, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let (store, bucket) = bucket_of(obj, ctx)
        .await?
        .ok_or_else(|| Error::ClusterNotFound(format!("{ns}/{}", obj.cluster_ref())))?;
    let key = kv::entry_key(&ns, &obj.name_any());
    let current = store
        .get(&key)
        .await
        .map_err(|e| Error::Nats(format!("reading {key}: {e}")))?;
    let bytes = obj.encode(ctx, current.as_deref()).await?;
    if current.as_deref() != Some(bytes.as_slice()) {
        store
            .put(&key, bytes.into())
            .await
            .map_err(|e| Error::Nats(format!("writing {key}: {e}")))?;
        info!(bucket, key, "entry written");
    }
    Ok(bucket)
}

/// How often the data plane's reports are read into the status.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The data plane's reports on `obj` (keys `<namespace>/<name>/<reporter>`), turned into
/// status fields; `None` when there is nothing to report or the reports cannot be read.
async fn observe<K: RegistryObject>(obj: &K, ctx: &Context) -> Option<serde_json::Value> {
    let ns = obj.namespace().unwrap_or_default();
    let name = K::report_bucket(&kv::cluster_name(&ns, obj.cluster_ref()))?;
    let cluster = Api::<MqttCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(obj.cluster_ref())
        .await
        .ok()??;
    let nats = cluster.spec.nats.as_ref()?;
    let replicas = usize::from(nats.stream_replicas.unwrap_or(1));
    let store = ctx.nats.bucket(&nats.url, &name, replicas).await.ok()?;
    let prefix = format!("{}/", kv::entry_key(&ns, &obj.name_any()));
    let mut keys = store.keys().await.ok()?;
    let mut reports = Vec::new();
    while let Some(key) = keys.next().await {
        let Ok(key) = key else { break };
        if key.starts_with(&prefix)
            && let Ok(Some(value)) = store.get(&key).await
        {
            reports.push(value.to_vec());
        }
    }
    obj.observed(&reports)
}

/// Removes the entry; a cluster that is gone has nothing left to clean.
async fn cleanup<K: RegistryObject>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    if let Some((store, bucket)) = bucket_of(&*obj, ctx).await? {
        let key = kv::entry_key(&ns, &obj.name_any());
        store
            .delete(&key)
            .await
            .map_err(|e| Error::Nats(format!("deleting {key}: {e}")))?;
        info!(bucket, key, "entry deleted");
    }
    Ok(Action::await_change())
}

/// Status patches use server-side apply with this manager.
pub fn status_params() -> PatchParams {
    PatchParams::apply(crate::FIELD_MANAGER).force()
}

/// The patch body of a status.
pub fn status_patch<K: RegistryObject>(status: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Apply(serde_json::json!({
        "apiVersion": format!("{}/{}", cmq_crds::GROUP, "v1alpha1"),
        "kind": K::KIND,
        "status": status,
    }))
}

/// How long to wait before retrying an object that failed `n` times in a row.
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(9).saturating_sub(1);
    Duration::from_secs(secs.min(300))
}
