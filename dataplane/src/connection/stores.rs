//! Cluster mode: QoS 1/2 publishes on their way to the message streams. Stores are
//! pipelined (PUBACK/PUBREC go out in PUBLISH order as JetStream answers), and consecutive
//! QoS 1 publishes of one read to one topic are stored as one batch: one JetStream write,
//! acknowledgement and republish instead of one per message.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use mqttbytes::QoS;
use smallvec::SmallVec;

use crate::broker::Message;
use crate::state::StateError;

/// Most publishes, and payload bytes, one stored batch holds.
const BATCH_MAX_MESSAGES: usize = 256;
const BATCH_MAX_BYTES: usize = 64 * 1024;

/// Packet ids acknowledged together (one store).
pub(crate) type PacketIds = SmallVec<[u16; 4]>;

/// Publishes whose store finished: packet ids, QoS and the store's outcome.
pub(crate) type StoreDone = (PacketIds, QoS, Result<(), StateError>);

/// The stores of one connection.
#[derive(Default)]
pub(crate) struct Stores {
    /// Sent, waiting for JetStream, in PUBLISH order.
    pending: FuturesOrdered<BoxFuture<'static, StoreDone>>,
    /// Not sent yet: the batch this read is building.
    batch: Vec<Arc<Message>>,
    batch_ids: PacketIds,
    batch_bytes: usize,
}

impl Stores {
    /// Stores sent and not acknowledged yet (a batch counts once).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The next finished store, in PUBLISH order.
    pub fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<StoreDone>> {
        if self.pending.is_empty() {
            return Poll::Pending;
        }
        self.pending.poll_next_unpin(cx)
    }

    pub fn push(&mut self, store: BoxFuture<'static, StoreDone>) {
        self.pending.push_back(store);
    }

    /// Whether `message` (batchable) may join the batch being built; otherwise that batch
    /// has to be sent first.
    pub fn fits(&self, message: &Message) -> bool {
        match self.batch.first() {
            None => true,
            Some(first) => {
                first.topic == message.topic
                    && self.batch.len() < BATCH_MAX_MESSAGES
                    && self.batch_bytes + message.payload.len() <= BATCH_MAX_BYTES
            }
        }
    }

    pub fn add(&mut self, message: Arc<Message>, pkid: u16) {
        self.batch_bytes += message.payload.len();
        self.batch.push(message);
        self.batch_ids.push(pkid);
    }

    /// The batch built so far, if any.
    pub fn take_batch(&mut self) -> Option<(Vec<Arc<Message>>, PacketIds)> {
        if self.batch.is_empty() {
            return None;
        }
        self.batch_bytes = 0;
        Some((
            std::mem::take(&mut self.batch),
            std::mem::take(&mut self.batch_ids),
        ))
    }
}
