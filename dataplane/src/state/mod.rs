//! The state a hub shares with the rest of the cluster, behind traits: retained messages,
//! persistent session records, and the message bus between hubs. `memory` implements them
//! for one process (standalone mode); the cluster mode implements them on NATS JetStream.
//!
//! The hub keeps its own sessions' live state (connections, queues, in-flight windows, the
//! local subscription trie) itself: that is connection-local and fast. These traits carry
//! only what another hub must be able to see or recompute.

mod memory;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::broker::message::{Message, SubOptions};

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
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub client_id: String,
    /// Subscriptions by full filter text.
    pub subscriptions: Vec<(String, SubOptions)>,
    /// Session expiry interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
}

/// Persistent session records.
pub trait SessionStore: Send + Sync {
    fn load(&self, client_id: &str) -> BoxFuture<'_, Result<Option<SessionRecord>, StateError>>;
    fn save(&self, record: SessionRecord) -> BoxFuture<'_, Result<(), StateError>>;
    fn remove(&self, client_id: &str) -> BoxFuture<'_, Result<(), StateError>>;
}

/// Delivery of published messages to the other hubs of the cluster. The hub delivers to its
/// own sessions itself; the bus only carries what others need.
pub trait MessageBus: Send + Sync {
    /// Hands a message to the other hubs. Resolves when the cluster has stored it durably
    /// (QoS 1/2), so the publisher's acknowledgement can wait for it.
    fn publish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>>;
    /// The hub's sessions now do (or no longer do) subscribe to `filter`.
    fn interest(&self, filter: &str, subscribed: bool);
    /// Whether a publish must be awaited (false when there is no other hub).
    fn is_remote(&self) -> bool;
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
