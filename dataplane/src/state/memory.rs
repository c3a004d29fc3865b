//! State for one process: retained messages in a topic tree, session records in a map, and
//! a bus with no other hub on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cmq_topic::TopicTree;
use futures_util::future::{BoxFuture, FutureExt, ready};
use parking_lot::{Mutex, RwLock};

use super::{MessageBus, RetainedStore, SessionRecord, SessionStore, StateError};
use crate::broker::message::Message;

/// In-memory state (standalone mode).
#[derive(Default)]
pub struct MemoryState {
    retained: RwLock<TopicTree<Arc<Message>>>,
    sessions: Mutex<HashMap<String, SessionRecord>>,
}

impl RetainedStore for MemoryState {
    fn set(
        &self,
        topic: &str,
        message: Option<Arc<Message>>,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let mut tree = self.retained.write();
        match message {
            Some(m) => {
                tree.insert(topic, m);
            }
            None => {
                tree.remove(topic);
            }
        }
        ready(Ok(())).boxed()
    }

    fn matching(&self, filter: &str) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StateError>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        self.retained.read().for_each_matching(filter, |topic, m| {
            if m.expired(now) {
                expired.push(topic.to_owned());
            } else {
                out.push(m.clone());
            }
        });
        if !expired.is_empty() {
            let mut tree = self.retained.write();
            for topic in expired {
                // Re-check: a newer message may have replaced it meanwhile.
                if tree.get(&topic).is_some_and(|m| m.expired(now)) {
                    tree.remove(&topic);
                }
            }
        }
        ready(Ok(out)).boxed()
    }

    fn count(&self) -> usize {
        self.retained.read().len()
    }
}

impl SessionStore for MemoryState {
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> BoxFuture<'_, Result<Option<SessionRecord>, StateError>> {
        let mut sessions = self.sessions.lock();
        let record = if clean_start {
            sessions.remove(client_id);
            None
        } else {
            sessions.get(client_id).cloned()
        };
        ready(Ok(record)).boxed()
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'_, Result<(), StateError>> {
        self.sessions
            .lock()
            .insert(record.client_id.clone(), record);
        ready(Ok(())).boxed()
    }

    fn remove(&self, client_id: &str) -> BoxFuture<'_, Result<(), StateError>> {
        self.sessions.lock().remove(client_id);
        ready(Ok(())).boxed()
    }

    fn untouched(&self, _client_id: &str) -> BoxFuture<'_, bool> {
        // One hub: a reconnect cancels this hub's timers itself.
        ready(true).boxed()
    }

    fn is_shared(&self) -> bool {
        false
    }
}

impl MessageBus for MemoryState {
    fn publish(&self, _message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>> {
        ready(Ok(())).boxed()
    }

    fn interest(&self, _filter: &str, _subscribed: bool) {}

    fn sync_interest(&self) -> BoxFuture<'_, Result<(), StateError>> {
        ready(Ok(())).boxed()
    }

    fn is_remote(&self) -> bool {
        false
    }
}
