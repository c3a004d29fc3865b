//! What an operator graphs about the rule engine: per rule and per sink counts (the names
//! follow EMQX's rule and action metrics, so dashboards translate), write latency, the
//! `sync` gate, and librdkafka's own statistics.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;

type Labels = Vec<(&'static str, String)>;

/// Counters of one rule, resolved once when the rule is loaded.
#[derive(Debug, Clone, Default)]
pub struct RuleCounters {
    /// Messages whose topic and WHERE clause the rule selected.
    pub matched: Counter,
    /// Selected messages every sink confirmed.
    pub forwarded: Counter,
    /// Selected messages that failed (evaluation error, or a sink after its retries).
    pub failed: Counter,
    /// Failed messages that no dead letter took either.
    pub dropped: Counter,
}

/// Counters of one sink of one rule.
#[derive(Debug, Clone, Default)]
pub struct SinkCounters {
    pub success: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub latency: Option<Histogram>,
}

/// librdkafka statistics of one producer.
#[derive(Debug, Clone, Default)]
pub struct KafkaGauges {
    queued: Gauge,
    queued_bytes: Gauge,
    sent: Gauge,
    errors: Gauge,
}

impl KafkaGauges {
    pub fn record(&self, stats: &Statistics) {
        self.queued.set(stats.msg_cnt as i64);
        self.queued_bytes.set(stats.msg_size as i64);
        self.sent.set(stats.txmsgs);
        self.errors
            .set(stats.brokers.values().map(|b| b.txerrs as i64).sum());
    }
}

/// Every dispatch metric, under `cmq_dispatch_`.
pub struct DispatchMetrics {
    registry: Registry,
    rule_matched: Family<Labels, Counter>,
    rule_forwarded: Family<Labels, Counter>,
    rule_failed: Family<Labels, Counter>,
    rule_dropped: Family<Labels, Counter>,
    sink_success: Family<Labels, Counter>,
    sink_failed: Family<Labels, Counter>,
    sink_retried: Family<Labels, Counter>,
    sink_dead_lettered: Family<Labels, Counter>,
    sink_latency: Family<Labels, Histogram>,
    kafka_queued: Family<Labels, Gauge>,
    kafka_queued_bytes: Family<Labels, Gauge>,
    kafka_sent: Family<Labels, Gauge>,
    kafka_errors: Family<Labels, Gauge>,
    /// Rules in force; rules refused (invalid SQL or sinks).
    pub rules: Gauge,
    pub rules_invalid: Gauge,
    /// Messages taken from the streams and the dispatch feed.
    pub received: Counter,
    /// `sync` gate: publishes forwarded before their acknowledgement, and refused.
    pub sync_accepted: Counter,
    pub sync_refused: Counter,
    /// QoS 0 messages the standalone engine's full queue could not take.
    pub dropped_queue_full: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_25, 2.0, 16,
    ))
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DispatchMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cmq_dispatch");
        let m = Self {
            rule_matched: Family::default(),
            rule_forwarded: Family::default(),
            rule_failed: Family::default(),
            rule_dropped: Family::default(),
            sink_success: Family::default(),
            sink_failed: Family::default(),
            sink_retried: Family::default(),
            sink_dead_lettered: Family::default(),
            sink_latency: Family::new_with_constructor(latency_histogram),
            kafka_queued: Family::default(),
            kafka_queued_bytes: Family::default(),
            kafka_sent: Family::default(),
            kafka_errors: Family::default(),
            rules: Gauge::default(),
            rules_invalid: Gauge::default(),
            received: Counter::default(),
            sync_accepted: Counter::default(),
            sync_refused: Counter::default(),
            dropped_queue_full: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rule_matched",
            "Messages a rule selected",
            m.rule_matched.clone(),
        );
        r.register(
            "rule_forwarded",
            "Selected messages every sink of the rule confirmed",
            m.rule_forwarded.clone(),
        );
        r.register(
            "rule_failed",
            "Selected messages that failed (evaluation, or a sink after its retries)",
            m.rule_failed.clone(),
        );
        r.register(
            "rule_dropped",
            "Failed messages no dead letter took",
            m.rule_dropped.clone(),
        );
        r.register(
            "sink_success",
            "Writes a sink confirmed",
            m.sink_success.clone(),
        );
        r.register(
            "sink_failed",
            "Writes that failed after their retries",
            m.sink_failed.clone(),
        );
        r.register("sink_retried", "Writes tried again", m.sink_retried.clone());
        r.register(
            "sink_dead_lettered",
            "Failed writes sent to the dead letter",
            m.sink_dead_lettered.clone(),
        );
        r.register(
            "sink_latency_seconds",
            "From the hand-over to a sink to its confirmation",
            m.sink_latency.clone(),
        );
        r.register(
            "kafka_queued_messages",
            "Records in librdkafka's queue",
            m.kafka_queued.clone(),
        );
        r.register(
            "kafka_queued_bytes",
            "Bytes in librdkafka's queue",
            m.kafka_queued_bytes.clone(),
        );
        r.register(
            "kafka_sent_messages",
            "Records sent to brokers (librdkafka txmsgs)",
            m.kafka_sent.clone(),
        );
        r.register(
            "kafka_errors",
            "Send errors to brokers (librdkafka txerrs)",
            m.kafka_errors.clone(),
        );
        r.register("rules", "Rules in force", m.rules.clone());
        r.register(
            "rules_invalid",
            "Rules refused (invalid SQL or sink)",
            m.rules_invalid.clone(),
        );
        r.register(
            "messages_received",
            "Messages taken from the streams and the dispatch feed",
            m.received.clone(),
        );
        r.register(
            "sync_accepted",
            "Publishes a sync rule forwarded before their acknowledgement",
            m.sync_accepted.clone(),
        );
        r.register(
            "sync_refused",
            "Publishes refused because a sync rule's sink could not take them",
            m.sync_refused.clone(),
        );
        r.register(
            "messages_dropped_queue_full",
            "QoS 0 messages dropped because the rule engine's queue was full (standalone)",
            m.dropped_queue_full.clone(),
        );
        Self { registry, ..m }
    }

    /// The counters of rule `rule`.
    pub fn rule(&self, rule: &str) -> RuleCounters {
        let l = || vec![("rule", rule.to_owned())];
        RuleCounters {
            matched: self.rule_matched.get_or_create(&l()).clone(),
            forwarded: self.rule_forwarded.get_or_create(&l()).clone(),
            failed: self.rule_failed.get_or_create(&l()).clone(),
            dropped: self.rule_dropped.get_or_create(&l()).clone(),
        }
    }

    /// The counters of sink `sink` (of kind `kind`) of rule `rule`.
    pub fn sink(&self, rule: &str, sink: &str, kind: &'static str) -> SinkCounters {
        let l = || {
            vec![
                ("rule", rule.to_owned()),
                ("sink", sink.to_owned()),
                ("kind", kind.to_owned()),
            ]
        };
        SinkCounters {
            success: self.sink_success.get_or_create(&l()).clone(),
            failed: self.sink_failed.get_or_create(&l()).clone(),
            retried: self.sink_retried.get_or_create(&l()).clone(),
            dead_lettered: self.sink_dead_lettered.get_or_create(&l()).clone(),
            latency: Some(
                self.sink_latency
                    .get_or_create(&vec![("kind", kind.to_owned())])
                    .clone(),
            ),
        }
    }

    /// The gauges of the Kafka producer for `bootstrap`.
    pub fn kafka(&self, bootstrap: &str) -> KafkaGauges {
        let l = vec![("bootstrap", bootstrap.to_owned())];
        KafkaGauges {
            queued: self.kafka_queued.get_or_create(&l).clone(),
            queued_bytes: self.kafka_queued_bytes.get_or_create(&l).clone(),
            sent: self.kafka_sent.get_or_create(&l).clone(),
            errors: self.kafka_errors.get_or_create(&l).clone(),
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Shared handle.
pub type Shared = Arc<DispatchMetrics>;
