//! Where forwarded messages go: one trait over Kafka, NATS, HTTP and MQTT republish.
//!
//! A write has two steps so that a sink keeps the order of messages with one key while many
//! are in flight: `submit` hands the output over (called in message order, it returns
//! once the sink has queued it), and the future it returns resolves when the sink
//! confirmed it (Kafka delivery report, JetStream ack, HTTP 2xx, republish accepted).

pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod nats;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// One rendered write.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Kafka topic, NATS subject or MQTT topic (unused by HTTP).
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The message's id (stable across redeliveries of a stored message), for consumers
    /// and JetStream to drop duplicates.
    pub id: Arc<str>,
    /// QoS and retain of an MQTT republish.
    pub qos: u8,
    pub retain: bool,
    /// The rule that produced it (republished messages are never matched by it again).
    pub rule: Arc<str>,
}

/// Why a write failed; `retriable` says whether trying again may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct SinkError {
    pub retriable: bool,
    pub reason: String,
}

impl SinkError {
    pub fn retriable(reason: impl Into<String>) -> Self {
        Self {
            retriable: true,
            reason: reason.into(),
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Self {
        Self {
            retriable: false,
            reason: reason.into(),
        }
    }
}

/// Resolves when the sink confirmed a write.
pub type Pending = BoxFuture<'static, Result<(), SinkError>>;

/// A destination of forwarded messages.
pub trait Sink: Send + Sync {
    /// `kafka`, `nats`, `http` or `mqtt` (metrics label).
    fn kind(&self) -> &'static str;
    /// Queues `out`; calls keep their order in the sink. Resolves to the confirmation.
    fn submit<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<Pending, SinkError>>;
    /// Whether a write now would be taken without waiting long: `sync` rules refuse a
    /// publish at once (MQTT 5 0x97) when the sink is down or saturated.
    fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A confirmation that is already there.
pub fn done(result: Result<(), SinkError>) -> Pending {
    Box::pin(futures_util::future::ready(result))
}
