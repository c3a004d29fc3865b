//! Retained messages in one stream that keeps the newest message per subject. Hubs hold no
//! index of retained topics: a subscribe asks the stream (subject listing for wildcard
//! filters, then a direct get of the last message per subject).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::stream::DirectGetErrorKind;
use cmq_topic::matches;
use cmq_topic::subject::{filter_to_subjects, subject_to_topic};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use super::{NatsState, codec, unavailable};
use crate::broker::message::Message;
use crate::state::{RetainedStore, StateError};

impl RetainedStore for NatsState {
    fn set(
        &self,
        topic: &str,
        message: Option<Arc<Message>>,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let subject = self.names.retained(topic);
        Box::pin(async move {
            let Some(message) = message else {
                self.retained
                    .purge()
                    .filter(subject)
                    .await
                    .map_err(|e| unavailable("clearing a retained message", e))?;
                return Ok(());
            };
            let mut publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(message.payload.clone())
                .headers(codec::encode(&message, self.names.hub()));
            if let Some(at) = message.expires_at {
                let left = at.saturating_duration_since(std::time::Instant::now());
                publish = publish.ttl(std::time::Duration::from_secs(left.as_secs().max(1)));
            }
            self.js
                .send_publish(subject, publish)
                .await
                .map_err(|e| unavailable("storing a retained message", e))?
                .await
                .map_err(|e| unavailable("storing a retained message", e))?;
            Ok(())
        })
    }

    fn matching(&self, filter: &str) -> BoxFuture<'_, Result<Vec<Arc<Message>>, StateError>> {
        let filter = filter.to_owned();
        Box::pin(async move {
            let mut subjects = Vec::new();
            for pattern in filter_to_subjects(&filter) {
                let subject = self.names.retained_pattern(&pattern);
                if pattern.contains(['*', '>']) {
                    let mut listing = self
                        .retained
                        .info_with_subjects(&subject)
                        .await
                        .map_err(|e| unavailable("listing retained messages", e))?;
                    while let Some(entry) = listing.next().await {
                        let (subject, _) =
                            entry.map_err(|e| unavailable("listing retained messages", e))?;
                        subjects.push(subject);
                    }
                } else {
                    subjects.push(subject);
                }
            }
            let mut out = Vec::with_capacity(subjects.len());
            for subject in subjects {
                let Some(topic) = self
                    .names
                    .parse_retained(&subject)
                    .and_then(|s| subject_to_topic(s).ok())
                else {
                    continue;
                };
                if !matches(&filter, &topic) {
                    continue;
                }
                let message = match self.retained.direct_get_last_for_subject(&subject).await {
                    Ok(m) => m,
                    Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => continue,
                    Err(e) => return Err(unavailable("reading a retained message", e)),
                };
                if message.payload.is_empty() {
                    continue;
                }
                if let Some(decoded) = codec::decode(
                    Arc::from(topic),
                    Some(&message.headers),
                    message.payload,
                    None,
                ) {
                    out.push(decoded.message);
                }
            }
            Ok(out)
        })
    }

    fn count(&self) -> usize {
        self.retained_count.load(Ordering::Relaxed)
    }
}
