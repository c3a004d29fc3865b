//! Back into MQTT: the output is published like a device's message (retained, routed to
//! subscribers, seen by the other rules) and carries its rule's name, so that rule never
//! matches it again.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mqttbytes::QoS;

use super::{Output, Pending, Sink, SinkError};
use crate::broker::Message;
use crate::state::StateError;

/// Publishes a message in the cluster (standalone: the broker; cluster: NATS).
pub trait Republisher: Send + Sync {
    fn republish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>>;
}

pub struct MqttSink {
    target: Arc<dyn Republisher>,
}

impl MqttSink {
    pub fn new(target: Arc<dyn Republisher>) -> Self {
        Self { target }
    }
}

impl Sink for MqttSink {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn submit<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<Pending, SinkError>> {
        if let Err(e) = cmq_topic::validate_name(&out.topic, &cmq_topic::TopicLimits::default()) {
            let reason = format!("mqtt: cannot publish to {:?}: {e}", out.topic);
            return Box::pin(futures_util::future::ready(Err(SinkError::fatal(reason))));
        }
        let qos = match out.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let message = Arc::new(Message {
            topic: Arc::from(out.topic.as_str()),
            payload: out.value.clone(),
            qos,
            retain: out.retain,
            properties: None,
            expires_at: None,
            origin: None,
            stored: None,
            rule: Some(out.rule.clone()),
        });
        let target = self.target.clone();
        let pending: Pending = Box::pin(async move {
            target
                .republish(message)
                .await
                .map_err(|e| SinkError::retriable(format!("mqtt: {e}")))
        });
        Box::pin(futures_util::future::ready(Ok(pending)))
    }
}
