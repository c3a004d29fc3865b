//! A NATS subject: through JetStream (acknowledged, de-duplicated by the message id within
//! the stream's duplicate window) or core NATS (fire and forget).

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures_util::future::BoxFuture;

use super::{Output, Pending, Sink, SinkError, done};

pub struct NatsSink {
    client: async_nats::Client,
    js: Option<jetstream::Context>,
}

impl NatsSink {
    pub fn new(client: async_nats::Client, jetstream: bool) -> Self {
        let js = jetstream.then(|| jetstream::new(client.clone()));
        Self { client, js }
    }
}

fn headers(out: &Output) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (key, value) in &out.headers {
        map.insert(key.as_str(), String::from_utf8_lossy(value).as_ref());
    }
    map
}

impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn submit<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<Pending, SinkError>> {
        Box::pin(async move {
            let headers = headers(out);
            match &self.js {
                Some(js) => {
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(out.value.clone())
                        .headers(headers)
                        .message_id(&*out.id);
                    let ack = js
                        .send_publish(out.topic.clone(), publish)
                        .await
                        .map_err(|e| SinkError::retriable(format!("nats: {e}")))?;
                    let pending: Pending = Box::pin(async move {
                        ack.await
                            .map(|_| ())
                            .map_err(|e| SinkError::retriable(format!("nats jetstream: {e}")))
                    });
                    Ok(pending)
                }
                None => {
                    let sent = self
                        .client
                        .publish_with_headers(out.topic.clone(), headers, out.value.clone())
                        .await
                        .map_err(|e| SinkError::retriable(format!("nats: {e}")));
                    Ok(done(sent))
                }
            }
        })
    }

    fn ready(&self) -> Result<(), SinkError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(SinkError::retriable(format!("nats: {state}"))),
        }
    }
}
