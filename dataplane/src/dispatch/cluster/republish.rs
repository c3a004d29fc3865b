//! MQTT republish from a dispatcher: the message goes into the cluster as a hub would put
//! it there (QoS 0 on the live and dispatch feeds, QoS 1/2 into its stream, retained into
//! the retained stream), with the rule's name so that rule does not match it again.

use std::sync::Arc;

use async_nats::jetstream;
use futures_util::future::BoxFuture;
use mqttbytes::QoS;

use crate::broker::Message;
use crate::dispatch::sinks::mqtt::Republisher;
use crate::state::StateError;
use crate::state::nats::codec;
use crate::state::nats::names::{Names, shard_of};

pub struct NatsRepublisher {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    shards: u16,
}

impl NatsRepublisher {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        names: Names,
        shards: u16,
    ) -> Self {
        Self {
            client,
            js,
            names,
            shards,
        }
    }
}

fn unavailable(action: &'static str, e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable {
        action,
        reason: e.to_string(),
    }
}

impl Republisher for NatsRepublisher {
    fn republish(&self, message: Arc<Message>) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let headers = codec::encode(&message, self.names.hub());
            if message.retain {
                let subject = self.names.retained(&message.topic);
                let publish = jetstream::message::PublishMessage::build()
                    .payload(message.payload.clone())
                    .headers(headers.clone());
                self.js
                    .send_publish(subject, publish)
                    .await
                    .map_err(|e| unavailable("storing a retained message", e))?
                    .await
                    .map_err(|e| unavailable("storing a retained message", e))?;
            }
            let shard = shard_of(&message.topic, self.shards);
            if message.qos == QoS::AtMostOnce {
                // Other rules may read it too: the dispatch feed as well as the live one.
                self.client
                    .publish_with_headers(
                        self.names.dispatch_feed(&message.topic),
                        headers.clone(),
                        message.payload.clone(),
                    )
                    .await
                    .map_err(|e| unavailable("publishing a message", e))?;
                return self
                    .client
                    .publish_with_headers(
                        self.names.live(shard, &message.topic),
                        headers,
                        message.payload.clone(),
                    )
                    .await
                    .map_err(|e| unavailable("publishing a message", e));
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(message.payload.clone())
                .headers(headers);
            self.js
                .send_publish(self.names.stored(shard, &message.topic), publish)
                .await
                .map_err(|e| unavailable("storing a message", e))?
                .await
                .map_err(|e| unavailable("storing a message", e))?;
            Ok(())
        })
    }
}
