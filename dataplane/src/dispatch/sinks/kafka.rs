//! Apache Kafka through librdkafka (rdkafka): an idempotent producer (acks=all, retries
//! inside librdkafka until `message.timeout.ms`), so a broker restart neither loses nor
//! duplicates what it was given and keeps each key's order in its partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use tracing::{info, warn};

use super::{Output, Pending, Sink, SinkError};
use crate::dispatch::metrics::KafkaGauges;

/// Producer settings a rule chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaTarget {
    pub bootstrap: String,
    pub compression: String,
}

/// Records queued in librdkafka at most before a `sync` rule refuses new publishes.
const SATURATED: i32 = 50_000;

/// Observes librdkafka: whether every broker is down, and its statistics.
struct Observer {
    down: Arc<AtomicBool>,
    gauges: KafkaGauges,
}

impl ClientContext for Observer {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.down.store(true, Ordering::Release);
        }
        warn!(%error, reason, "kafka client error");
    }

    fn stats(&self, stats: Statistics) {
        // librdkafka reports "all brokers down" but never "up again": the statistics say.
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.down.store(false, Ordering::Release);
        }
        self.gauges.record(&stats);
    }
}

/// One producer, shared by every rule that writes to the same cluster with the same
/// settings.
pub struct KafkaSink {
    producer: FutureProducer<Observer>,
    down: Arc<AtomicBool>,
    target: KafkaTarget,
}

impl KafkaSink {
    /// Creates the producer (it connects lazily, in librdkafka's threads).
    pub fn new(
        target: KafkaTarget,
        message_timeout: Duration,
        gauges: KafkaGauges,
    ) -> Result<Self, SinkError> {
        let down = Arc::new(AtomicBool::new(false));
        let observer = Observer {
            down: down.clone(),
            gauges,
        };
        let timeout_ms = message_timeout
            .as_millis()
            .clamp(1_000, 900_000)
            .to_string();
        let producer: FutureProducer<Observer> = ClientConfig::new()
            .set("bootstrap.servers", &target.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", &target.compression)
            .set("message.timeout.ms", &timeout_ms)
            // Java clients' key → partition mapping, so both place a key alike.
            .set("partitioner", "murmur2_random")
            .set("statistics.interval.ms", "1000")
            .set("socket.keepalive.enable", "true")
            .set("client.id", "cmq-dispatch")
            .create_with_context(observer)
            .map_err(|e| SinkError::fatal(format!("cannot create a Kafka producer: {e}")))?;
        info!(bootstrap = %target.bootstrap, compression = %target.compression, "kafka producer created");
        Ok(Self {
            producer,
            down,
            target,
        })
    }

    /// Waits (bounded) for queued records to be delivered, at shutdown.
    pub fn flush(&self, within: Duration) {
        if let Err(e) = self.producer.flush(within) {
            warn!(bootstrap = %self.target.bootstrap, error = %e, left = self.producer.in_flight_count(), "kafka flush incomplete");
        }
    }
}

fn classify(e: &KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let fatal = matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidRecord
                | C::InvalidMessageSize
        )
    );
    let reason = format!("kafka: {e}");
    if fatal {
        SinkError::fatal(reason)
    } else {
        SinkError::retriable(reason)
    }
}

impl Sink for KafkaSink {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn submit<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<Pending, SinkError>> {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (key, value) in &out.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut record = FutureRecord::to(&out.topic)
            .payload(out.value.as_ref())
            .headers(headers);
        if let Some(key) = &out.key {
            record = record.key(key.as_slice());
        }
        let result = match self.producer.send_result(record) {
            Ok(delivery) => {
                let down = self.down.clone();
                let pending: Pending = Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            down.store(false, Ordering::Release);
                            Ok(())
                        }
                        Ok(Err((e, _))) => Err(classify(&e)),
                        Err(_) => Err(SinkError::retriable("kafka producer went away")),
                    }
                });
                Ok(pending)
            }
            Err((e, _)) => Err(classify(&e)),
        };
        Box::pin(futures_util::future::ready(result))
    }

    fn ready(&self) -> Result<(), SinkError> {
        if self.down.load(Ordering::Acquire) {
            return Err(SinkError::retriable(format!(
                "kafka: all brokers of {} are down",
                self.target.bootstrap
            )));
        }
        if self.producer.in_flight_count() >= SATURATED {
            return Err(SinkError::retriable("kafka: producer queue saturated"));
        }
        Ok(())
    }
}
