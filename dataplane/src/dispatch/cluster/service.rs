//! Answers the hubs' `sync` requests: runs the `sync` rules on the message and replies
//! once their required sinks confirmed it (empty reply), or with `Cmq-Error` when they
//! cannot take it (the hub then refuses the publish: MQTT 5 0x97).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use tracing::warn;

use super::Ctx;
use super::consume::QUEUE_GROUP;
use crate::dispatch::gate::{ERROR, TOPIC, subject};
use crate::dispatch::local::{envelope, now_ms};
use crate::state::nats::codec;

pub async fn sync_requests(ctx: Arc<Ctx>, client: async_nats::Client, deadline: Duration) {
    let subject = subject(&ctx.cluster);
    let mut sub = match client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(subject, error = %e, "cannot serve sync requests");
            return;
        }
    };
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let next = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            n = sub.next() => n,
        };
        let Some(request) = next else { break };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let ctx = ctx.clone();
        let client = client.clone();
        let counter = counter.clone();
        ctx.tasks.clone().spawn(async move {
            let topic = request
                .headers
                .as_ref()
                .and_then(|h| h.get(TOPIC))
                .map(|t| codec::unescape_ascii(t.as_str()));
            let decoded = topic.and_then(|t| {
                codec::decode(
                    Arc::from(t),
                    request.headers.as_ref(),
                    request.payload,
                    None,
                )
            });
            let result = match decoded {
                Some(d) => {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let mut env =
                        envelope(d.message, Arc::from(format!("{}-s-{n}", ctx.id)), "mqtt");
                    env.timestamp_ms = now_ms();
                    ctx.engine.gate(&env, deadline).await.map_err(|e| e.reason)
                }
                None => Err("the request carries no message".to_owned()),
            };
            let mut headers = HeaderMap::new();
            if let Err(reason) = &result {
                headers.insert(ERROR, reason.as_str());
            }
            if let Err(e) = client
                .publish_with_headers(reply, headers, bytes::Bytes::new())
                .await
            {
                warn!(error = %e, "cannot answer a sync request");
            }
        });
    }
    let _ = sub.unsubscribe().await;
}
