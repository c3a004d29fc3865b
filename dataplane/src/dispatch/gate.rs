//! The `sync` gate of a hub in a cluster: a QoS 1/2 publish on a topic that a `sync`
//! rule reads is sent to the dispatchers as a NATS request first (queue group: one
//! dispatcher takes it); the publisher is acknowledged only when the reply says every
//! required sink confirmed it. The hub knows which topics to gate from the rules bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Forwarder, Message};
use crate::state::nats::codec;

/// Header of the request: the message's topic (escaped like client ids).
pub const TOPIC: &str = "Cmq-Topic";
/// Header of a refusal: why.
pub const ERROR: &str = "Cmq-Error";

/// Subject the dispatchers answer `sync` requests on.
pub fn subject(cluster: &str) -> String {
    format!("cmq.{cluster}.dispatch.sync")
}

pub struct RemoteGate {
    client: async_nats::Client,
    subject: String,
    hub: String,
    filters: RwLock<Arc<Vec<String>>>,
    timeout: Duration,
}

impl RemoteGate {
    /// Follows the rules bucket (through `rules`) for the `sync` rules' filters.
    pub fn start(
        client: async_nats::Client,
        cluster: &str,
        hub: &str,
        timeout: Duration,
        mut rules: watch::Receiver<Option<Vec<cmq_crds::kv::StoredRule>>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let gate = Arc::new(Self {
            client,
            subject: subject(cluster),
            hub: hub.to_owned(),
            filters: RwLock::new(Arc::new(Vec::new())),
            timeout,
        });
        let me = Arc::downgrade(&gate);
        tokio::spawn(async move {
            loop {
                let stored = rules.borrow_and_update().clone();
                let Some(gate) = me.upgrade() else { return };
                if let Some(stored) = stored {
                    let filters = sync_filters(&stored);
                    if !filters.is_empty() {
                        info!(filters = ?filters, "publishes on these filters wait for sync rules");
                    }
                    *gate.filters.write() = Arc::new(filters);
                }
                drop(gate);
                tokio::select! {
                    r = rules.changed() => if r.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
        gate
    }
}

/// Source filters of the enabled `sync` rules whose SQL parses.
fn sync_filters(stored: &[cmq_crds::kv::StoredRule]) -> Vec<String> {
    let mut out: Vec<String> = stored
        .iter()
        .filter(|r| r.spec.enabled && r.spec.delivery == cmq_crds::v1alpha1::DeliveryMode::Sync)
        .filter_map(|r| cmq_rules::Rule::parse(&r.spec.sql).ok())
        .flat_map(|r| r.sources().to_vec())
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Forwarder for RemoteGate {
    fn gates(&self, topic: &str) -> bool {
        let filters = self.filters.read();
        filters.iter().any(|f| cmq_topic::matches(f, topic))
    }

    fn gate(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut headers: HeaderMap = codec::encode(&message, &self.hub);
            headers.insert(TOPIC, codec::escape_ascii(&message.topic).as_str());
            let request = async_nats::Request::new()
                .payload(message.payload.clone())
                .headers(headers)
                .timeout(Some(self.timeout));
            match self
                .client
                .send_request(self.subject.clone(), request)
                .await
            {
                Ok(reply) => match reply.headers.as_ref().and_then(|h| h.get(ERROR)) {
                    None => Ok(()),
                    Some(reason) => Err(reason.as_str().to_owned()),
                },
                Err(e) => {
                    warn!(error = %e, "sync rule request failed");
                    Err(format!("dispatchers did not answer: {e}"))
                }
            }
        })
    }

    fn forward(&self, _message: &Arc<Message>) -> Option<BoxFuture<'_, ()>> {
        // The dispatchers read every message from the streams and the live feed.
        None
    }
}
