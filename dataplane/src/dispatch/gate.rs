//! The rule engine as a hub in a cluster sees it (the hub knows the rules' source filters
//! from the rules bucket):
//! - `sync` gate: a QoS 1/2 publish on a topic that a `sync` rule reads is sent to the
//!   dispatchers as a NATS request first (queue group: one dispatcher takes it); the
//!   publisher is acknowledged only when the reply says every required sink confirmed it.
//! - QoS 0 messages that some rule reads are copied to the dispatch feed (dispatchers
//!   read QoS 1/2 from the streams), so dispatchers see nothing that no rule wants.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Forwarder, Message};
use crate::state::nats::Names;
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
    names: Names,
    /// Source filters of the `sync` rules, and of every rule.
    filters: RwLock<Arc<Filters>>,
    timeout: Duration,
}

#[derive(Default)]
struct Filters {
    sync: Vec<String>,
    all: Vec<String>,
}

impl RemoteGate {
    /// Follows the rules bucket (through `rules`) for the `sync` rules' filters.
    pub fn start(
        client: async_nats::Client,
        names: Names,
        timeout: Duration,
        mut rules: watch::Receiver<Option<Vec<cmq_crds::kv::StoredRule>>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let gate = Arc::new(Self {
            client,
            subject: subject(names.cluster()),
            names,
            filters: RwLock::new(Arc::new(Filters::default())),
            timeout,
        });
        let me = Arc::downgrade(&gate);
        tokio::spawn(async move {
            loop {
                let stored = rules.borrow_and_update().clone();
                let Some(gate) = me.upgrade() else { return };
                if let Some(stored) = stored {
                    let sync = source_filters(&stored, true);
                    if !sync.is_empty() {
                        info!(filters = ?sync, "publishes on these filters wait for sync rules");
                    }
                    let all = source_filters(&stored, false);
                    *gate.filters.write() = Arc::new(Filters { sync, all });
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

/// Source filters of the enabled rules (only the `sync` ones with `sync`) whose SQL parses.
fn source_filters(stored: &[cmq_crds::kv::StoredRule], sync: bool) -> Vec<String> {
    let mut out: Vec<String> = stored
        .iter()
        .filter(|r| {
            r.spec.enabled && (!sync || r.spec.delivery == cmq_crds::v1alpha1::DeliveryMode::Sync)
        })
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
        filters.sync.iter().any(|f| cmq_topic::matches(f, topic))
    }

    fn gate(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut headers: HeaderMap = codec::encode(&message, self.names.hub());
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

    fn forward(&self, message: &Arc<Message>) -> Option<BoxFuture<'_, ()>> {
        // QoS 1/2 is read from the streams.
        if message.qos != mqttbytes::QoS::AtMostOnce {
            return None;
        }
        let wanted = {
            let filters = self.filters.read();
            filters
                .all
                .iter()
                .any(|f| cmq_topic::matches(f, &message.topic))
        };
        if !wanted {
            return None;
        }
        let message = message.clone();
        Some(Box::pin(async move {
            let headers = codec::encode(&message, self.names.hub());
            let subject = self.names.dispatch_feed(&message.topic);
            if let Err(e) = self
                .client
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
            {
                debug!(error = %e, "QoS 0 message not handed to the dispatchers");
            }
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cmq_crds::kv::StoredRule;
    use cmq_crds::v1alpha1::{DeliveryMode, ForwardRuleSpec};

    fn rule(name: &str, sql: &str, delivery: DeliveryMode, enabled: bool) -> StoredRule {
        StoredRule {
            namespace: "ns".into(),
            name: name.into(),
            spec: ForwardRuleSpec {
                sql: sql.into(),
                delivery,
                enabled,
                ..ForwardRuleSpec::default()
            },
        }
    }

    #[test]
    fn hubs_gate_on_enabled_sync_rules_that_parse() {
        let rules = [
            rule(
                "a",
                r#"SELECT * FROM "s/+", "t/#""#,
                DeliveryMode::Sync,
                true,
            ),
            rule("b", r#"SELECT * FROM "x/#""#, DeliveryMode::Async, true),
            rule("c", r#"SELECT * FROM "off/#""#, DeliveryMode::Sync, false),
            rule("d", "SELECT FROM", DeliveryMode::Sync, true),
        ];
        assert_eq!(source_filters(&rules, true), ["s/+", "t/#"]);
        assert_eq!(source_filters(&rules, false), ["s/+", "t/#", "x/#"]);
    }
}
