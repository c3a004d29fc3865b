//! The rule engine inside `cmq standalone`: the broker hands every published message to a
//! bounded queue; one task evaluates the rules in publish order and hands the outputs to
//! the sinks; their confirmations are awaited concurrently. At least once while the
//! process lives (no stream to replay from after a crash, as in EMQX's memory buffer).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::engine::{Engine, Envelope, Which};
use super::sinks::mqtt::Republisher;
use crate::broker::{Broker, Forwarder, Message};
use crate::state::StateError;

/// Messages waiting for the rules at most; then QoS 1/2 publishers wait, QoS 0 is dropped.
const QUEUE: usize = 65_536;
/// Messages whose sink confirmations are awaited at once.
const IN_FLIGHT: usize = 16_384;

pub struct LocalForwarder {
    engine: Arc<Engine>,
    queue: mpsc::Sender<Arc<Message>>,
    /// How long a `sync` rule may take before the publish is refused.
    deadline: Duration,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What the rules see of a message published here.
pub fn envelope(message: Arc<Message>, id: Arc<str>, protocol: &'static str) -> Envelope {
    let (clientid, username) = match &message.origin {
        Some(o) => (o.client_id.clone(), o.username.clone()),
        None => (Arc::from(""), None),
    };
    Envelope {
        message,
        id,
        clientid,
        username,
        timestamp_ms: now_ms(),
        protocol,
    }
}

impl LocalForwarder {
    /// Starts the engine's task; it ends when `stop` is cancelled and the work in flight
    /// is done (tracked by `tasks`).
    pub fn start(
        engine: Arc<Engine>,
        deadline: Duration,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let (queue, inbox) = mpsc::channel(QUEUE);
        tasks.spawn(run(engine.clone(), inbox, stop));
        Arc::new(Self {
            engine,
            queue,
            deadline,
        })
    }
}

async fn run(
    engine: Arc<Engine>,
    mut inbox: mpsc::Receiver<Arc<Message>>,
    stop: CancellationToken,
) {
    // One task hands messages over in order and polls their confirmations: no task per
    // message.
    let mut in_flight = FuturesUnordered::new();
    let mut counter = 0u64;
    let mut closing = false;
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            m = inbox.recv(), if in_flight.len() < IN_FLIGHT => {
                // After `stop`: what was queued already, then the end.
                let Some(message) = m else { break };
                engine.metrics().received.inc();
                counter += 1;
                let which = Which::for_qos(message.qos);
                let env = envelope(message, Arc::from(format!("local-{counter}")), "mqtt");
                if let Some(rest) = engine.submit(&env, which).await {
                    in_flight.push(rest);
                }
            }
            _ = stop.cancelled(), if !closing => {
                closing = true;
                inbox.close();
            }
        }
    }
    while in_flight.next().await.is_some() {}
    debug!("standalone rule engine stopped");
}

impl Forwarder for LocalForwarder {
    fn gates(&self, topic: &str) -> bool {
        self.engine.gates(topic)
    }

    fn gate(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let env = envelope(message, Arc::from("local-sync"), "mqtt");
            self.engine
                .gate(&env, self.deadline)
                .await
                .map_err(|e| e.reason)
        })
    }

    fn forward(&self, message: &Arc<Message>) -> Option<BoxFuture<'_, ()>> {
        if self.engine.rules().rules.is_empty() {
            return None;
        }
        match self.queue.try_send(message.clone()) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(m)) if m.qos != QoS::AtMostOnce => {
                Some(Box::pin(async move {
                    let _ = self.queue.send(m).await;
                }))
            }
            Err(_) => {
                self.engine.metrics().dropped_queue_full.inc();
                None
            }
        }
    }
}

/// MQTT republish in standalone mode: through the broker, like a device's publish.
pub struct BrokerRepublisher(pub Weak<Broker>);

impl Republisher for BrokerRepublisher {
    fn republish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let Some(broker) = self.0.upgrade() else {
                return Err(StateError::Unavailable {
                    action: "republishing",
                    reason: "the broker stopped".into(),
                });
            };
            broker.publish(message).await.map(|_| ())
        })
    }
}
