//! What every reconcile shares: the API client, NATS connections, metrics, per-object
//! backoff and the Event recorder.

use std::collections::HashMap;
use std::time::Duration;

use kube::Client;
use kube::Resource;
use kube::api::DynamicObject;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use tracing::debug;

use crate::metrics::Metrics;
use crate::nats::NatsPool;

pub struct Context {
    pub client: Client,
    pub nats: NatsPool,
    pub metrics: Metrics,
    pub backoff: Backoff,
    /// argon2id runs at once at most (one per core): each takes ~19 MiB and tens of
    /// milliseconds of CPU, and 1 000 new credentials must not mean 1 000 at once.
    pub hashing: tokio::sync::Semaphore,
    recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            nats: NatsPool::default(),
            metrics,
            backoff: Backoff::default(),
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        }
    }

    /// Publishes a Kubernetes Event about `obj` (best effort: an Event that cannot be
    /// written is not worth failing a reconcile for).
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, event: Event) {
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            debug!(error = %e, "could not publish an Event");
        }
    }
}

/// Consecutive failures per object, for exponential backoff.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
}

impl Backoff {
    /// Counts a failure; returns how long to wait before the next attempt.
    pub fn failed(&self, obj: &ObjectRef<DynamicObject>) -> Duration {
        let mut failures = self.failures.lock();
        let n = failures.entry(obj.clone()).or_default();
        *n = n.saturating_add(1);
        crate::registry::backoff_delay(*n)
    }

    pub fn succeeded(&self, obj: &ObjectRef<DynamicObject>) {
        self.failures.lock().remove(obj);
    }
}
