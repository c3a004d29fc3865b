//! The hub's broker core: the session registry, the subscription index and routing, shared
//! by every connection task of the hub.

mod cluster;
mod lifecycle;
pub mod message;
pub mod session;
mod subscriptions;
pub mod will;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::state::{State, StateError, StoreAck};

pub use cluster::ReplayPlan;
pub use lifecycle::{Claim, ClaimError};
pub use message::{Delivery, Message, Origin, SessionId, StreamPos, SubOptions};
pub use session::{Inflight, Queued, Session, SessionState, Stage};
pub use subscriptions::SubscribeError;
pub use will::Will;

use subscriptions::Subscriptions;

/// The rule engine (ForwardRules) as the hub sees it.
pub trait Forwarder: Send + Sync {
    /// Whether a `sync` rule must take a QoS 1/2 message on `topic` before the publisher
    /// is acknowledged.
    fn gates(&self, topic: &str) -> bool;
    /// Forwards `message` through the `sync` rules: resolves once their required sinks
    /// confirmed it, or with the reason they cannot take it now.
    fn gate(
        &self,
        message: Arc<Message>,
    ) -> futures_util::future::BoxFuture<'_, Result<(), String>>;
    /// Hands a published message to the `async` rules (standalone: in process; in a
    /// cluster the dispatchers read the streams instead and this does nothing). A future
    /// comes back when the publisher must wait for room (QoS 1/2 is never dropped here).
    fn forward(&self, message: &Arc<Message>) -> Option<futures_util::future::BoxFuture<'_, ()>>;
}

/// Shared core of one hub.
pub struct Broker {
    pub limits: Limits,
    /// Device registry and topic ACLs.
    pub access: Arc<crate::access::Access>,
    pub state: State,
    pub metrics: Arc<Metrics>,
    registry: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subscriptions: RwLock<Subscriptions>,
    next_session: AtomicU64,
    connections: AtomicUsize,
    /// Cancels session timers at shutdown.
    shutdown: CancellationToken,
    /// Timer tasks (will delay, session expiry).
    timers: TaskTracker,
    /// Itself, for work the cluster hands over by reference.
    me: std::sync::Weak<Broker>,
    /// The rule engine, once set up.
    forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
}

impl Broker {
    /// A broker with no sessions.
    pub fn new(
        limits: Limits,
        state: State,
        metrics: Arc<Metrics>,
        access: Arc<crate::access::Access>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            limits,
            access,
            state,
            metrics,
            registry: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(Subscriptions::default()),
            next_session: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            timers: TaskTracker::new(),
            me: me.clone(),
            forwarder: std::sync::OnceLock::new(),
        })
    }

    /// Puts the rule engine in place (once; it needs the broker to republish into).
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// The rule engine, if any.
    pub fn forwarder(&self) -> Option<&Arc<dyn Forwarder>> {
        self.forwarder.get()
    }

    /// Takes a connection slot, or `None` when the hub is at its connection limit.
    pub fn acquire_connection(&self) -> Option<ConnectionSlot<'_>> {
        let max = self.limits.max_connections;
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        Some(ConnectionSlot { broker: self })
    }

    /// Connections currently counted against the limit.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Publishes a message from a client or a will: stores it when retained, delivers it to
    /// this hub's subscribers and hands it to the other hubs. Returns how many sessions it
    /// was delivered to here.
    pub async fn publish(&self, message: Arc<Message>) -> Result<usize, StateError> {
        if message.retain {
            let stored = (!message.payload.is_empty()).then(|| message.clone());
            self.state.retained.set(&message.topic, stored).await?;
            self.metrics
                .retained
                .set(self.state.retained.count() as i64);
        }
        let mut blocked = subscriptions::Blocked::new();
        let delivered = if !self.state.bus.stores_messages() {
            self.route(&message, &mut blocked)
        } else if message.qos == mqttbytes::QoS::AtMostOnce {
            // Cluster mode: QoS 0 goes to local subscribers now and to other hubs by NATS;
            // shared groups are served by NATS queue groups (the chosen member may be here).
            self.route_direct(&message, None, &mut blocked)
        } else {
            // Cluster mode, QoS 1/2: stored first; every hub, this one included, delivers
            // the stored copy, so each delivery has a stream position for the cursors.
            0
        };
        for (session, delivery) in blocked {
            if message
                .origin
                .as_ref()
                .is_some_and(|o| o.session == session.id)
            {
                // The publisher's own queue: its connection drains it only after this
                // publish, so waiting would only stall it. Count the overflow instead.
                self.metrics.dropped_queue_full.inc();
                continue;
            }
            self.wait_for_room(&session, delivery).await;
        }
        if let Some(wait) = self.forwarder.get().and_then(|f| f.forward(&message)) {
            wait.await;
        }
        if self.state.bus.is_remote() {
            self.state.bus.publish(message).await?;
        }
        Ok(delivered)
    }

    /// Cluster mode, QoS 1/2: stores the message (and sets it as retained); resolves once
    /// it is on its way, to the store's acknowledgement. Every hub, this one included,
    /// delivers it from the stream.
    pub async fn publish_stored(&self, message: Arc<Message>) -> Result<StoreAck, StateError> {
        if message.retain {
            let stored = (!message.payload.is_empty()).then(|| message.clone());
            self.state.retained.set(&message.topic, stored).await?;
        }
        self.state.bus.store(message).await
    }

    /// Cluster mode: stores several QoS 1 messages of one connection and topic as one
    /// (`Message::batchable`); resolves like `publish_stored`.
    pub async fn publish_stored_batch(
        &self,
        messages: Vec<Arc<Message>>,
    ) -> Result<StoreAck, StateError> {
        if messages.len() > 1 {
            self.metrics.cluster.store_batches.inc();
            self.metrics
                .cluster
                .batched_messages
                .inc_by(messages.len() as u64);
        }
        self.state.bus.store_batch(messages).await
    }

    /// Backpressure: a connected subscriber's queue is full of QoS 1/2 messages, so the
    /// publisher (whose connection awaits this, and so stops reading its socket) waits for
    /// room, up to `max_publish_wait`; only then is the delivery dropped and counted.
    async fn wait_for_room(&self, session: &Session, mut delivery: Delivery) {
        let deadline = tokio::time::Instant::now() + self.limits.max_publish_wait;
        loop {
            let room = session.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match session.push(delivery) {
                session::Queued::Full(d) => delivery = d,
                session::Queued::Dropped => {
                    self.metrics.dropped_queue_full.inc();
                    return;
                }
                session::Queued::Yes | session::Queued::EvictedQos0 => return,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() || !session.is_online() {
                session.mark_stalled();
                if let session::Queued::Full(_) | session::Queued::Dropped = session.push(delivery)
                {
                    self.metrics.dropped_queue_full.inc();
                }
                return;
            }
        }
    }

    /// Puts a new registry state in force and wakes every session's connection, which
    /// re-checks its credential and subscriptions against it.
    pub fn update_access(&self, inputs: crate::access::Inputs) {
        self.access.replace(inputs);
        let sessions: Vec<Arc<Session>> = self.registry.lock().values().cloned().collect();
        for session in sessions {
            session.wake();
        }
    }

    /// Stops session timers; called once every connection has ended.
    /// Wakes every session's connection; called once the hub's shutdown token is cancelled,
    /// which connections check when woken instead of each waiting on the token.
    pub fn wake_all(&self) {
        let sessions: Vec<Arc<Session>> = self.registry.lock().values().cloned().collect();
        for session in sessions {
            session.wake();
        }
    }

    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.timers.close();
        self.timers.wait().await;
    }

    fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// A connection counted against the hub's limit; released on drop.
pub struct ConnectionSlot<'a> {
    broker: &'a Broker,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.broker.connections.fetch_sub(1, Ordering::AcqRel);
        self.broker.metrics.connections.dec();
    }
}
