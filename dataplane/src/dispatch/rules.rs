//! Rules as the engine runs them: the SQL compiled, the sink templates parsed, the sinks
//! built (one Kafka producer per cluster and settings, one NATS client per URL, one HTTP
//! client, shared by every rule and kept across reloads).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cmq_crds::kv::StoredRule;
use cmq_crds::v1alpha1::{DeliveryMode, SinkSpec};
use cmq_rules::{Rule, Template};
use parking_lot::Mutex;

use super::metrics::{DispatchMetrics, RuleCounters, SinkCounters};
use super::sinks::Sink;
use super::sinks::http::HttpSink;
use super::sinks::kafka::{KafkaSink, KafkaTarget};
use super::sinks::mqtt::{MqttSink, Republisher};
use super::sinks::nats::NatsSink;

/// Why a rule cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("spec.sql: {0}")]
    Sql(#[from] cmq_rules::ParseError),
    #[error("{field}: {reason}")]
    Sink { field: String, reason: String },
}

fn sink_error(field: String, reason: impl std::fmt::Display) -> RuleError {
    RuleError::Sink {
        field,
        reason: reason.to_string(),
    }
}

/// Exponential backoff between attempts of one write.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Retry {
    /// Wait before attempt `attempt` (2, 3, ...).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(2).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// One sink of a rule with its templates.
pub struct Binding {
    pub name: Arc<str>,
    pub required: bool,
    pub sink: Arc<dyn Sink>,
    /// Kafka topic, NATS subject, MQTT topic.
    pub topic: Option<Template>,
    /// Kafka key; `None`: the publishing client id (each device's order kept).
    pub key: Option<Template>,
    pub value: Template,
    pub headers: Vec<(String, Template)>,
    pub qos: u8,
    pub retain: bool,
    pub counters: SinkCounters,
}

/// A rule ready to run.
pub struct CompiledRule {
    /// `namespace/name`.
    pub key: Arc<str>,
    pub sql: Rule,
    pub sync: bool,
    pub sinks: Vec<Binding>,
    pub retry: Retry,
    pub dead_letter: Option<Binding>,
    pub counters: RuleCounters,
}

/// The rules in force.
#[derive(Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<CompiledRule>>,
}

impl RuleSet {
    /// Source filters of the `sync` rules (what the hubs gate on).
    pub fn sync_filters(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.sync)
            .flat_map(|r| r.sql.sources().iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Builds sinks, reusing clients across rules and reloads.
pub struct SinkFactory {
    metrics: Arc<DispatchMetrics>,
    /// The cluster's own NATS (cluster mode), for NATS sinks without a URL.
    own_nats: Option<async_nats::Client>,
    republisher: Arc<dyn Republisher>,
    http: reqwest::Client,
    kafka: Mutex<HashMap<KafkaTarget, Arc<KafkaSink>>>,
    nats: tokio::sync::Mutex<HashMap<String, async_nats::Client>>,
    /// How long librdkafka keeps trying one record.
    pub kafka_message_timeout: Duration,
}

impl SinkFactory {
    pub fn new(
        metrics: Arc<DispatchMetrics>,
        own_nats: Option<async_nats::Client>,
        republisher: Arc<dyn Republisher>,
    ) -> Self {
        Self {
            metrics,
            own_nats,
            republisher,
            http: reqwest::Client::new(),
            kafka: Mutex::new(HashMap::new()),
            nats: tokio::sync::Mutex::new(HashMap::new()),
            kafka_message_timeout: Duration::from_secs(60),
        }
    }

    /// Every Kafka producer, to flush at shutdown.
    pub fn kafka_producers(&self) -> Vec<Arc<KafkaSink>> {
        self.kafka.lock().values().cloned().collect()
    }

    /// Compiles a stored rule.
    pub async fn compile(&self, stored: &StoredRule) -> Result<CompiledRule, RuleError> {
        let key: Arc<str> = Arc::from(format!("{}/{}", stored.namespace, stored.name));
        let spec = &stored.spec;
        let sql = Rule::parse(&spec.sql)?;
        let mut sinks = Vec::with_capacity(spec.sinks.len());
        for (i, s) in spec.sinks.iter().enumerate() {
            sinks.push(self.bind(&key, s, &format!("spec.sinks[{i}]")).await?);
        }
        let dead_letter = match &spec.dead_letter {
            Some(s) => Some(self.bind(&key, s, "spec.deadLetter").await?),
            None => None,
        };
        let retry = Retry {
            max_attempts: spec.retry.max_attempts.unwrap_or(5).clamp(1, 100),
            initial: Duration::from_millis(spec.retry.initial_backoff_ms.unwrap_or(100).max(1)),
            max: Duration::from_millis(spec.retry.max_backoff_ms.unwrap_or(30_000).max(1)),
        };
        Ok(CompiledRule {
            counters: self.metrics.rule(&key),
            key,
            sql,
            sync: spec.delivery == DeliveryMode::Sync,
            sinks,
            retry,
            dead_letter,
        })
    }

    async fn bind(&self, rule: &str, spec: &SinkSpec, field: &str) -> Result<Binding, RuleError> {
        let template = |f: &str, text: &str| {
            Template::parse(text).map_err(|e| sink_error(format!("{field}.{f}"), e))
        };
        let value = |f: &str, text: &Option<String>| template(f, text.as_deref().unwrap_or("${.}"));
        let binding = |sink: Arc<dyn Sink>, topic: Option<Template>, value: Template| Binding {
            name: Arc::from(spec.name.as_str()),
            required: spec.required.unwrap_or(true),
            counters: self.metrics.sink(rule, &spec.name, sink.kind()),
            sink,
            topic,
            key: None,
            value,
            headers: Vec::new(),
            qos: 0,
            retain: false,
        };
        if let Some(k) = &spec.kafka {
            if k.properties_secret.is_some() {
                return Err(sink_error(
                    format!("{field}.kafka.propertiesSecret"),
                    "not supported yet: the dispatchers have no access to Secrets",
                ));
            }
            let compression = k.compression.clone().unwrap_or_else(|| "none".into());
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression.as_str()) {
                return Err(sink_error(
                    format!("{field}.kafka.compression"),
                    format!("{compression:?} is not one of none, gzip, snappy, lz4, zstd"),
                ));
            }
            let sink = self.kafka_sink(KafkaTarget {
                bootstrap: k.bootstrap_servers.clone(),
                compression,
            })?;
            let mut b = binding(
                sink,
                Some(template("kafka.topic", &k.topic)?),
                value("kafka.value", &k.value)?,
            );
            b.key = k
                .key
                .as_deref()
                .map(|t| template("kafka.key", t))
                .transpose()?;
            for (name, text) in &k.headers {
                b.headers
                    .push((name.clone(), template("kafka.headers", text)?));
            }
            return Ok(b);
        }
        if let Some(n) = &spec.nats {
            let client = self.nats_client(n.url.as_deref(), field).await?;
            let sink = Arc::new(NatsSink::new(client, n.jetstream.unwrap_or(true)));
            return Ok(binding(
                sink,
                Some(template("nats.subject", &n.subject)?),
                value("nats.payload", &n.payload)?,
            ));
        }
        if let Some(h) = &spec.http {
            let headers = h
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let timeout = Duration::from_millis(h.timeout_ms.unwrap_or(5_000).clamp(1, 600_000));
            let sink = HttpSink::new(
                self.http.clone(),
                &h.url,
                h.method.as_deref(),
                headers,
                timeout,
            )
            .map_err(|e| sink_error(format!("{field}.http"), e))?;
            return Ok(binding(Arc::new(sink), None, value("http.body", &h.body)?));
        }
        if let Some(m) = &spec.mqtt {
            let sink = Arc::new(MqttSink::new(self.republisher.clone()));
            let mut b = binding(
                sink,
                Some(template("mqtt.topic", &m.topic)?),
                value("mqtt.payload", &m.payload)?,
            );
            b.qos = m.qos.unwrap_or(0).min(2);
            b.retain = m.retain;
            return Ok(b);
        }
        Err(sink_error(
            field.to_owned(),
            "set exactly one of kafka, nats, http and mqtt",
        ))
    }

    fn kafka_sink(&self, target: KafkaTarget) -> Result<Arc<dyn Sink>, RuleError> {
        let mut producers = self.kafka.lock();
        if let Some(p) = producers.get(&target) {
            return Ok(p.clone());
        }
        let gauges = self.metrics.kafka(&target.bootstrap);
        let sink = KafkaSink::new(target.clone(), self.kafka_message_timeout, gauges)
            .map_err(|e| sink_error("kafka".into(), e))?;
        let sink = Arc::new(sink);
        producers.insert(target, sink.clone());
        Ok(sink)
    }

    async fn nats_client(
        &self,
        url: Option<&str>,
        field: &str,
    ) -> Result<async_nats::Client, RuleError> {
        let Some(url) = url else {
            return self.own_nats.clone().ok_or_else(|| {
                sink_error(
                    format!("{field}.nats.url"),
                    "required in standalone mode (there is no cluster NATS)",
                )
            });
        };
        let mut clients = self.nats.lock().await;
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name("cmq-dispatch sink")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| sink_error(format!("{field}.nats.url"), e))?;
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let r = Retry {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        let waits: Vec<u128> = (2..=7).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(r.backoff(u32::MAX), Duration::from_millis(1_000));
    }
}
