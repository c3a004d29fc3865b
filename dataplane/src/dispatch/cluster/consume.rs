//! Where a dispatcher's messages come from: the message streams (QoS 1/2, through the
//! shared durable consumer of each shard, acknowledged after their sinks) and the live
//! feed (QoS 0, through a queue subscription: at most once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use cmq_topic::subject::subject_to_topic;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tracing::{debug, info, warn};

use super::Ctx;
use crate::broker::message::StreamPos;
use crate::dispatch::engine::{Envelope, Which};
use crate::state::nats::codec;

/// The consumer every dispatcher of a cluster shares on each message stream.
pub const DURABLE: &str = "cmq-dispatch";
/// Queue group of the dispatch feed and the `sync` requests.
pub const QUEUE_GROUP: &str = "cmq-dispatch";
/// A message not acknowledged within this is given to another dispatcher; slow sinks
/// keep theirs with progress acknowledgements.
const ACK_WAIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn envelope(decoded: codec::Decoded, id: String, timestamp_ms: i64) -> Envelope {
    let message = decoded.message;
    let (clientid, username) = match &message.origin {
        Some(o) => (o.client_id.clone(), o.username.clone()),
        None => (Arc::from(""), None),
    };
    Envelope {
        message,
        id: Arc::from(id),
        clientid,
        username,
        timestamp_ms,
        protocol: "mqtt",
    }
}

/// The stream of `shard`, waiting for the hubs to create it.
async fn stream(
    ctx: &Ctx,
    js: &jetstream::Context,
    shard: u16,
) -> Option<jetstream::stream::Stream> {
    let name = ctx.names.msgs_stream(shard);
    let mut wait = Duration::from_millis(200);
    loop {
        match js.get_stream(&name).await {
            Ok(s) => return Some(s),
            Err(e) => debug!(stream = name, error = %e, "message stream not there yet"),
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Takes the stored messages of `shard` until `ctx.stop`.
pub async fn stored(ctx: Arc<Ctx>, js: jetstream::Context, shard: u16) {
    let Some(stream) = stream(&ctx, &js, shard).await else {
        return;
    };
    let config = consumer::pull::Config {
        durable_name: Some(DURABLE.into()),
        description: Some("CMQ dispatchers: ForwardRules".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // A new cluster's rules apply from now on, not to the stream's history.
        deliver_policy: consumer::DeliverPolicy::New,
        max_ack_pending: 20_000,
        ..Default::default()
    };
    let prefix = ctx.names.stored_pattern(shard, "");
    let mut backoff = Duration::from_millis(200);
    // This task hands messages over in order and polls their confirmations and acks.
    let mut in_flight = FuturesUnordered::new();
    let limit = ctx.in_flight_per_source;
    'consumers: while !ctx.stop.is_cancelled() {
        let consumer = match stream.get_or_create_consumer(DURABLE, config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(shard, error = %e, "cannot create the dispatch consumer; retrying");
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(500)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                warn!(shard, error = %e, "cannot pull from the message stream; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        info!(shard, "consuming the message stream");
        loop {
            let next = tokio::select! {
                _ = ctx.stop.cancelled() => break 'consumers,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                n = messages.next(), if in_flight.len() < limit => n,
            };
            match next {
                Some(Ok(m)) => {
                    if let Some(rest) = take_stored(&ctx, shard, &prefix, m).await {
                        in_flight.push(rest);
                    }
                }
                Some(Err(e)) => {
                    debug!(shard, error = %e, "pull failed; going on");
                }
                None => break,
            }
        }
    }
    // Stopping: no new messages; the writes in flight finish (bounded by the drain timeout).
    while in_flight.next().await.is_some() {}
}

/// Hands one stored message to the rules; the future returned acknowledges it once its
/// sinks are done.
async fn take_stored(
    ctx: &Arc<Ctx>,
    shard: u16,
    prefix: &str,
    m: jetstream::Message,
) -> Option<BoxFuture<'static, ()>> {
    let Ok(info) = m.info() else {
        warn!(subject = %m.subject, "stream message without metadata");
        return None;
    };
    let seq = info.stream_sequence;
    let timestamp_ms =
        i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let topic = m
        .subject
        .as_str()
        .strip_prefix(prefix)
        .and_then(|s| subject_to_topic(s).ok());
    let decoded = topic.and_then(|topic| {
        codec::decode_all(
            Arc::from(topic),
            m.headers.as_ref(),
            m.payload.clone(),
            Some(StreamPos { shard, seq, idx: 0 }),
        )
    });
    let Some((messages, _)) = decoded else {
        // Expired, not a message subject or a malformed batch: nothing to forward.
        ctx.engine.metrics().received.inc();
        let _ = m.ack().await;
        return None;
    };
    // A batch (several MQTT messages in one stored message) is acknowledged once every
    // message of it went through the rules.
    let mut rests = Vec::new();
    for message in messages {
        ctx.engine.metrics().received.inc();
        let id = match message.stored.map(|p| p.idx) {
            Some(idx) if idx > 0 => format!("{}-{shard}-{seq}.{idx}", ctx.cluster),
            _ => format!("{}-{shard}-{seq}", ctx.cluster),
        };
        let env = envelope(codec::Decoded { message, hub: None }, id, timestamp_ms);
        if let Some(rest) = ctx.engine.submit(&env, Which::Async).await {
            rests.push(rest);
        }
    }
    let rest: Option<BoxFuture<'static, ()>> = match rests.len() {
        0 => None,
        1 => rests.pop(),
        _ => Some(Box::pin(async move {
            futures_util::future::join_all(rests).await;
        })),
    };
    Some(Box::pin(async move {
        if let Some(rest) = rest {
            finish_with_progress(rest, &m).await;
        }
        if let Err(e) = m.ack().await {
            debug!(error = %e, "ack failed: the message comes again");
        }
    }))
}

/// Waits for `rest`, telling JetStream now and then that the message is still in work.
async fn finish_with_progress(rest: BoxFuture<'static, ()>, m: &jetstream::Message) {
    tokio::pin!(rest);
    loop {
        tokio::select! {
            _ = &mut rest => return,
            _ = tokio::time::sleep(PROGRESS_EVERY) => {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Takes the QoS 0 messages the hubs copy to the dispatch feed (those some rule's filter
/// matches) until `ctx.stop`.
pub async fn live(ctx: Arc<Ctx>, client: async_nats::Client) {
    let subject = ctx.names.dispatch_feed_wildcard();
    let mut sub = match client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(subject, error = %e, "cannot subscribe to the dispatch feed: QoS 0 is not forwarded");
            return;
        }
    };
    let counter = AtomicU64::new(0);
    let mut in_flight = FuturesUnordered::new();
    let limit = ctx.in_flight_per_source;
    loop {
        let next = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            n = sub.next(), if in_flight.len() < limit => n,
        };
        let Some(m) = next else { break };
        let Some(suffix) = ctx.names.parse_dispatch_feed(m.subject.as_str()) else {
            continue;
        };
        let Ok(topic) = subject_to_topic(suffix) else {
            continue;
        };
        let Some(decoded) = codec::decode(Arc::from(topic), m.headers.as_ref(), m.payload, None)
        else {
            continue;
        };
        ctx.engine.metrics().received.inc();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let env = envelope(
            decoded,
            format!("{}-q0-{n}", ctx.id),
            crate::dispatch::local::now_ms(),
        );
        if let Some(rest) = ctx.engine.submit(&env, Which::All).await {
            in_flight.push(rest);
        }
    }
    let _ = sub.unsubscribe().await;
    while in_flight.next().await.is_some() {}
}
