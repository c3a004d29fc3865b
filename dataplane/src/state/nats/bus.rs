//! The message bus on NATS: publishing (core for QoS 0, the shard's stream for QoS 1/2),
//! one subscription per distinct filter of the hub's sessions, and replay from the streams.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use cmq_topic::subject::{filter_to_subjects, subject_to_topic};
use cmq_topic::{matches, parse_shared};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use mqttbytes::QoS;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::names::{Names, shard_of};
use super::{NatsState, codec, unavailable};
use crate::broker::message::{Message, StreamPos};
use crate::state::{MessageBus, StateError, StoreAck};

/// The hub's live subscriptions, one per distinct filter, reference-counted by sessions.
#[derive(Default)]
pub struct Interests {
    me: OnceLock<Weak<NatsState>>,
    filters: Mutex<HashMap<Arc<str>, Interest>>,
    /// Subscriptions being set up, for `sync_interest`.
    pending: Mutex<Vec<oneshot::Receiver<()>>>,
    gaps: Gaps,
}

/// Subjects this hub gets every stored message of, lose none: the stream republishes each
/// message with the sequence of the previous one on its subject, so a message whose
/// previous one never arrived shows a gap (the live feed dropped it somewhere).
#[derive(Default)]
struct Gaps(Mutex<HashMap<Box<str>, u64>>);

/// Subjects followed at most; beyond, the table starts over (a gap is then missed, never
/// invented).
const GAP_SUBJECTS: usize = 65_536;

impl Gaps {
    /// Records message `seq` on `subject` whose predecessor there is `prev`; true when a
    /// message in between was never seen.
    fn missed(&self, subject: &str, seq: u64, prev: u64) -> bool {
        let mut seen = self.0.lock();
        match seen.get_mut(subject) {
            Some(last) if seq <= *last => false, // a copy for another filter
            Some(last) => {
                let gap = prev > *last;
                *last = seq;
                gap
            }
            None => {
                if seen.len() >= GAP_SUBJECTS {
                    seen.clear();
                }
                seen.insert(Box::from(subject), seq);
                false
            }
        }
    }
}

struct Interest {
    refs: usize,
    stop: CancellationToken,
}

impl Interests {
    pub fn bind(&self, state: Weak<NatsState>) {
        let _ = self.me.set(state);
    }
}

impl MessageBus for NatsState {
    fn publish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let shard = shard_of(&message.topic, self.config.shards);
            let headers = codec::encode(&message, self.names.hub());
            if message.qos == QoS::AtMostOnce {
                let subject = self.names.live(shard, &message.topic);
                return self
                    .client
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await
                    .map_err(|e| unavailable("publishing a message", e));
            }
            self.store(message).await?.await
        })
    }

    fn store(&self, message: Arc<Message>) -> BoxFuture<'_, Result<StoreAck, StateError>> {
        Box::pin(async move {
            let shard = shard_of(&message.topic, self.config.shards);
            let headers = codec::encode(&message, self.names.hub());
            let subject = self.names.stored(shard, &message.topic);
            let mut publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers);
            if let Some(at) = message.expires_at {
                let left = at.saturating_duration_since(std::time::Instant::now());
                // Stream TTLs are whole seconds, at least one.
                publish = publish.ttl(std::time::Duration::from_secs(left.as_secs().max(1)));
            }
            self.send_stored(subject, publish).await
        })
    }

    fn store_batch(
        &self,
        messages: Vec<Arc<Message>>,
    ) -> BoxFuture<'_, Result<StoreAck, StateError>> {
        Box::pin(async move {
            let first = match messages.as_slice() {
                [] => {
                    let done: StoreAck = Box::pin(futures_util::future::ready(Ok(())));
                    return Ok(done);
                }
                [one] => return self.store(one.clone()).await,
                [first, ..] => first,
            };
            let shard = shard_of(&first.topic, self.config.shards);
            let subject = self.names.stored(shard, &first.topic);
            let (headers, payload) = codec::encode_batch(&messages, self.names.hub());
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload)
                .headers(headers);
            self.send_stored(subject, publish).await
        })
    }

    fn interest(&self, filter: &str, subscribed: bool) {
        let mut filters = self.bus.filters.lock();
        if subscribed {
            if let Some(interest) = filters.get_mut(filter) {
                interest.refs += 1;
                return;
            }
            let Some(me) = self.bus.me.get().and_then(Weak::upgrade) else {
                return;
            };
            let filter: Arc<str> = Arc::from(filter);
            let stop = self.shutdown.child_token();
            let (ready, wait) = oneshot::channel();
            self.bus.pending.lock().push(wait);
            filters.insert(
                filter.clone(),
                Interest {
                    refs: 1,
                    stop: stop.clone(),
                },
            );
            tokio::spawn(follow(me, filter, stop, ready));
        } else if let Some(interest) = filters.get_mut(filter) {
            interest.refs -= 1;
            if interest.refs == 0 {
                interest.stop.cancel();
                filters.remove(filter);
            }
        }
    }

    fn sync_interest(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let pending = std::mem::take(&mut *self.bus.pending.lock());
            for wait in pending {
                let _ = wait.await;
            }
            // The server has our SUBs once it answered the PING that follows them.
            self.client
                .flush()
                .await
                .map_err(|e| unavailable("registering subscriptions", e))
        })
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn stores_messages(&self) -> bool {
        true
    }

    fn heads(&self) -> BoxFuture<'_, Result<Vec<u64>, StateError>> {
        Box::pin(async move {
            let infos = futures_util::future::join_all(self.msgs.iter().map(|s| s.get_info()));
            let mut heads = Vec::with_capacity(self.msgs.len());
            for info in infos.await {
                let info = info.map_err(|e| unavailable("reading a message stream", e))?;
                heads.push(info.state.last_sequence);
            }
            Ok(heads)
        })
    }

    fn fetch(&self, pos: StreamPos) -> BoxFuture<'_, Result<Option<Arc<Message>>, StateError>> {
        Box::pin(async move {
            let Some(stream) = self.msgs.get(usize::from(pos.shard)) else {
                return Ok(None);
            };
            let stored = StreamPos { idx: 0, ..pos };
            let message = match stream.direct_get(pos.seq).await {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
                Err(e) => return Err(unavailable("fetching a stored message", e)),
            };
            let Some(topic) = self.topic_of_stored(pos.shard, message.subject.as_str()) else {
                return Ok(None);
            };
            let all = codec::decode_all(
                Arc::from(topic),
                Some(&message.headers),
                message.payload,
                Some(stored),
            );
            Ok(all.and_then(|(messages, _)| messages.into_iter().find(|m| m.stored == Some(pos))))
        })
    }

    fn replay<'a>(
        &'a self,
        shard: u16,
        after: u64,
        filters: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Message>>, StateError>> {
        Box::pin(async move {
            let Some(stream) = self.msgs.get(usize::from(shard)) else {
                return Ok(Vec::new());
            };
            // One cursor per subject pattern; merge them by sequence.
            let mut heads: Vec<(
                String,
                Option<async_nats::jetstream::message::StreamMessage>,
            )> = Vec::new();
            for filter in filters {
                for pattern in filter_to_subjects(filter) {
                    let subject = self.names.stored_pattern(shard, &pattern);
                    let first = next_stored(stream, &subject, after + 1).await?;
                    heads.push((subject, first));
                }
            }
            let mut out: Vec<Arc<Message>> = Vec::new();
            let mut last = after;
            while out.len() < limit {
                let Some(seq) = heads
                    .iter()
                    .filter_map(|(_, m)| m.as_ref().map(|m| m.sequence))
                    .min()
                else {
                    break;
                };
                // Advance every cursor standing on this message (overlapping filters).
                let mut taken = None;
                for (subject, head) in heads.iter_mut() {
                    if head.as_ref().is_some_and(|m| m.sequence == seq) {
                        let m = head.take();
                        if taken.is_none() {
                            taken = m;
                        }
                        *head = next_stored(stream, subject, seq + 1).await?;
                    }
                }
                let Some(message) = taken else { break };
                if seq <= last {
                    continue;
                }
                last = seq;
                let Some(topic) = self.topic_of_stored(shard, message.subject.as_str()) else {
                    continue;
                };
                if !filters.iter().any(|f| matches(f, &topic)) {
                    continue; // a '$' topic under a leading wildcard
                }
                let stored = Some(StreamPos { shard, seq, idx: 0 });
                if let Some((messages, _)) = codec::decode_all(
                    Arc::from(topic),
                    Some(&message.headers),
                    message.payload,
                    stored,
                ) {
                    // A batch is taken whole: `limit` may be passed by its size.
                    out.extend(messages);
                }
            }
            Ok(out)
        })
    }
}

/// The first stored message at or after `from` on `subject` (a pattern).
async fn next_stored(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, StateError> {
    match stream
        .direct_get_next_for_subject(subject, Some(from))
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(unavailable("replaying stored messages", e)),
    }
}

impl NatsState {
    /// Sends one message to its stream; resolves, once it is on its way, to the stream's
    /// acknowledgement still to come.
    async fn send_stored(
        &self,
        subject: String,
        publish: async_nats::jetstream::message::PublishMessage,
    ) -> Result<StoreAck, StateError> {
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| unavailable("storing a message", e))?;
        Ok(Box::pin(async move {
            ack.await.map(|_| ()).map_err(|e| match e.kind() {
                PublishErrorKind::TimedOut => unavailable("storing a message", "timed out"),
                _ => unavailable("storing a message", e),
            })
        }))
    }

    fn topic_of_stored(&self, shard: u16, subject: &str) -> Option<String> {
        let prefix = self.names.stored_pattern(shard, "");
        subject_to_topic(subject.strip_prefix(prefix.as_str())?).ok()
    }

    /// Hands one live message to the hub.
    async fn deliver(&self, filter: &Arc<str>, shared: bool, message: async_nats::Message) {
        let Some((shard, suffix)) = self.names.parse_live(message.subject.as_str()) else {
            return;
        };
        let Ok(topic) = subject_to_topic(suffix) else {
            debug!(subject = %message.subject, "not a topic subject");
            return;
        };
        let stored = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
            .and_then(|v| v.as_str().parse().ok())
            .map(|seq| StreamPos { shard, seq, idx: 0 });
        let Some((messages, hub)) = codec::decode_all(
            Arc::from(topic),
            message.headers.as_ref(),
            message.payload,
            stored,
        ) else {
            return;
        };
        // A queue subscription gets only some messages of a subject: no gap check there.
        if let (Some(pos), false) = (stored, shared) {
            let prev = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_LAST_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            if let Some(prev) = prev
                && self
                    .bus
                    .gaps
                    .missed(message.subject.as_str(), pos.seq, prev)
            {
                warn!(subject = %message.subject, seq = pos.seq, prev, "gap in the live feed: sessions catch up from their cursors");
                if let Some(router) = self.router() {
                    router.resync();
                }
            }
        }
        // A hub delivers its own QoS 0 publishes itself (direct subscriptions only: a
        // shared group's member is chosen by NATS, possibly here).
        if stored.is_none() && !shared && hub.as_deref() == Some(self.names.hub()) {
            return;
        }
        if let Some(router) = self.router() {
            router.route_remote(filter.clone(), messages).await;
        }
    }
}

/// Runs the subscription(s) of one filter until the hub loses interest in it.
async fn follow(
    state: Arc<NatsState>,
    filter: Arc<str>,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
) {
    let (inner, queue) = match parse_shared(&filter) {
        Ok(Some(shared)) => (
            shared.filter.to_owned(),
            Some(Names::queue_group(shared.group, shared.filter)),
        ),
        _ => (filter.to_string(), None),
    };
    let mut subscribers = Vec::new();
    for pattern in filter_to_subjects(&inner) {
        let subject = state.names.live_pattern(&pattern);
        let result = match &queue {
            Some(group) => state.client.queue_subscribe(subject, group.clone()).await,
            None => state.client.subscribe(subject).await,
        };
        match result {
            Ok(s) => subscribers.push(s),
            Err(e) => warn!(filter = %filter, error = %e, "could not subscribe on NATS"),
        }
    }
    let _ = ready.send(());
    let shared = queue.is_some();
    let mut merged = futures_util::stream::select_all(subscribers);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = merged.next() => match next {
                Some(message) => state.deliver(&filter, shared, message).await,
                None => break,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_seen_per_subject_and_copies_ignored() {
        let gaps = Gaps::default();
        assert!(
            !gaps.missed("a", 5, 0),
            "first message of a subject: nothing to compare"
        );
        assert!(!gaps.missed("a", 5, 0), "a second copy (another filter)");
        assert!(!gaps.missed("b", 6, 0));
        assert!(!gaps.missed("a", 7, 5), "predecessor 5 was seen");
        assert!(gaps.missed("a", 9, 8), "message 8 on 'a' never arrived");
        assert!(!gaps.missed("a", 10, 9));
    }
}
