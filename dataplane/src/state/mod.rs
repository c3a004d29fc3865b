//! The state a hub shares with the rest of the cluster, behind traits: retained messages,
//! persistent session records, and the message bus between hubs. `memory` implements them
//! for one process (standalone mode); the cluster mode implements them on NATS JetStream.
//!
//! The hub keeps its own sessions' live state (connections, queues, in-flight windows, the
//! local subscription trie) itself: that is connection-local and fast. These traits carry
//! only what another hub must be able to see or recompute.

mod memory;
pub mod nats;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::broker::message::{Message, StreamPos, SubOptions};
use crate::broker::will::Will;

pub use memory::MemoryState;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backing store cannot be reached; the operation may succeed later.
    #[error("state store unavailable while {action}: {reason}")]
    Unavailable {
        action: &'static str,
        reason: String,
    },
    /// Another hub took the session over: this hub must drop its connection.
    #[error("session of client {0} is owned by another hub now")]
    Fenced(String),
}

/// Retained messages: the newest per topic, cluster-wide.
pub trait RetainedStore: Send + Sync {
    /// Stores `message` as the retained message of its topic, or clears the topic when
    /// `message` is `None`.
    fn set(
        &self,
        topic: &str,
        message: Option<Arc<Message>>,
    ) -> BoxFuture<'_, Result<(), StateError>>;
    /// The retained messages whose topics match `filter` (expired ones left out).
    fn matching(&self, filter: &str) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StateError>>;
    /// Number of retained messages (for metrics).
    fn count(&self) -> usize;
}

/// What must survive a session's connection for another hub to resume it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionRecord {
    pub client_id: String,
    /// Subscriptions by full filter text.
    pub subscriptions: Vec<(String, SubOptions)>,
    /// Session expiry interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
    /// Per message shard: every stored message at or below it that the session's
    /// subscriptions match has been delivered (cluster mode; empty otherwise).
    pub cursors: Vec<u64>,
    /// Stored messages above the cursors that were delivered too (not to be replayed).
    pub delivered: Vec<StreamPos>,
    /// Whether a connection holds the session (else it waits for a reconnect).
    pub connected: bool,
    /// Packet ids of incoming QoS 2 messages accepted but not yet released (PUBREL).
    pub incoming_qos2: Vec<u16>,
    /// Outgoing QoS 1/2 messages in flight, in the order they were sent, so a resume on
    /// any hub sends them again with their packet ids.
    pub outgoing: Vec<OutgoingRecord>,
}

/// One outgoing message in flight, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutgoingRecord {
    /// PUBLISH of a stored message sent, not acknowledged yet.
    Published {
        pkid: u16,
        pos: StreamPos,
        qos: mqttbytes::QoS,
        retain: bool,
    },
    /// QoS 2 PUBREL sent, PUBCOMP awaited.
    Released { pkid: u16 },
}

/// Persistent session records, with one owner per session in the cluster.
pub trait SessionStore: Send + Sync {
    /// Makes this hub the session's only owner (a connection holding it on another hub is
    /// closed first) and returns its stored record; `clean_start` discards the record.
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> BoxFuture<'_, Result<Option<SessionRecord>, StateError>>;
    /// Stores the record of a session this hub owns (`Fenced` when another hub took it).
    fn save(&self, record: SessionRecord) -> BoxFuture<'_, Result<(), StateError>>;
    /// Removes the record, unless another hub claimed the session since.
    fn remove(&self, client_id: &str) -> BoxFuture<'_, Result<(), StateError>>;
    /// Removes the record of a session this hub released, if no hub claimed it since (its
    /// expiry passed). Returns whether it was removed.
    fn expire<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.remove(client_id).await.is_ok() })
    }
    /// Whether the session is still as this hub left it (no hub claimed it since), so a
    /// delayed will or an expiry timer of this hub may act on it.
    fn untouched(&self, client_id: &str) -> BoxFuture<'_, bool>;
    /// Whether other hubs can resume sessions (cluster mode): the hub then keeps no copy of
    /// a disconnected session.
    fn is_shared(&self) -> bool;
    /// The connection of a claimed session is up here, with `will`: recorded so that
    /// another hub publishes the will and releases the session if this hub dies.
    fn announce<'a>(
        &'a self,
        _client_id: &'a str,
        _will: Option<&'a Will>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(futures_util::future::ready(Ok(())))
    }
    /// The session of `client_id` was released here with timers still to run (a delayed
    /// will, its expiry): recorded so that another hub runs them if this one dies or leaves.
    fn park<'a>(
        &'a self,
        _client_id: &'a str,
        _will: Option<&'a Will>,
        _expiry: u32,
    ) -> BoxFuture<'a, ()> {
        Box::pin(futures_util::future::ready(()))
    }
    /// The connection announced for `client_id` ended here.
    fn retire<'a>(&'a self, _client_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(futures_util::future::ready(()))
    }
}

/// Resolves when the cluster acknowledged a stored message.
pub type StoreAck = BoxFuture<'static, Result<(), StateError>>;

/// Delivery of published messages to the other hubs of the cluster. The hub delivers to its
/// own sessions itself; the bus only carries what others need.
pub trait MessageBus: Send + Sync {
    /// Hands a message to the other hubs. Resolves when the cluster has stored it durably
    /// (QoS 1/2), so the publisher's acknowledgement can wait for it.
    fn publish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>>;
    /// The hub's sessions now do (or no longer do) subscribe to `filter` (full filter text,
    /// `$share/...` included).
    fn interest(&self, filter: &str, subscribed: bool);
    /// Resolves once the interest declared so far is in force cluster-wide.
    fn sync_interest(&self) -> BoxFuture<'_, Result<(), StateError>>;
    /// Whether messages travel between hubs (false when there is no other hub).
    fn is_remote(&self) -> bool;
    /// Whether QoS 1/2 messages are stored and come back through the bus with their
    /// position, to be routed to this hub's sessions from there (cluster mode).
    fn stores_messages(&self) -> bool {
        false
    }
    /// Stores a QoS 1/2 message (cluster mode): resolves once it is on its way, to the
    /// acknowledgement still to come, so a connection can pipeline its publishes.
    fn store(&self, message: Arc<Message>) -> BoxFuture<'_, Result<StoreAck, StateError>> {
        Box::pin(async move {
            self.publish(message).await?;
            let done: StoreAck = Box::pin(futures_util::future::ready(Ok(())));
            Ok(done)
        })
    }
    /// Stores several messages of one connection and topic as one (see `store`); each must
    /// be `Message::batchable`. Without a message store, they are published one by one.
    fn store_batch(
        &self,
        messages: Vec<Arc<Message>>,
    ) -> BoxFuture<'_, Result<StoreAck, StateError>> {
        Box::pin(async move {
            for message in messages {
                self.publish(message).await?;
            }
            let done: StoreAck = Box::pin(futures_util::future::ready(Ok(())));
            Ok(done)
        })
    }
    /// The newest position of each message shard (the cursors of a new session).
    fn heads(&self) -> BoxFuture<'_, Result<Vec<u64>, StateError>> {
        Box::pin(futures_util::future::ready(Ok(Vec::new())))
    }
    /// The stored message at `pos`, if it is still kept.
    fn fetch(&self, _pos: StreamPos) -> BoxFuture<'_, Result<Option<Arc<Message>>, StateError>> {
        Box::pin(futures_util::future::ready(Ok(None)))
    }
    /// Stored messages of `shard` after `after` whose topics match one of `filters`,
    /// oldest first, at most `limit`.
    fn replay<'a>(
        &'a self,
        _shard: u16,
        _after: u64,
        _filters: &'a [String],
        _limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Message>>, StateError>> {
        Box::pin(futures_util::future::ready(Ok(Vec::new())))
    }
}

/// The set of state implementations a hub runs with.
#[derive(Clone)]
pub struct State {
    pub retained: Arc<dyn RetainedStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub bus: Arc<dyn MessageBus>,
}

impl State {
    /// In-memory state for one process.
    pub fn memory() -> Self {
        let mem = Arc::new(MemoryState::default());
        Self {
            retained: mem.clone(),
            sessions: mem.clone(),
            bus: mem,
        }
    }
}
