//! `ForwardRule`: which messages the dispatchers forward, reshaped how, to which sinks.
//! The engine behind it is `cmq::dispatch`; the SQL is `cmq_rules`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rule: an SQL statement (EMQX's rule SQL where they overlap) selecting and reshaping
/// messages, and the sinks its output goes to, at least once.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cmq.io",
    version = "v1alpha1",
    kind = "ForwardRule",
    doc = "A rule of an MqttCluster that selects, reshapes and forwards device messages to Kafka, NATS, HTTP or MQTT.",
    namespaced,
    shortname = "frule",
    status = "ForwardRuleStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterRef"}"#,
    printcolumn = r#"{"name":"Enabled","type":"boolean","jsonPath":".spec.enabled"}"#,
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Forwarded","type":"integer","jsonPath":".status.counters.forwarded"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ForwardRuleSpec {
    /// Name of the `MqttCluster` (same namespace) the rule runs in.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_ref: String,
    /// `SELECT ... FROM "topic/filter" [WHERE ...]`.
    #[schemars(length(min = 1, max = 65536))]
    pub sql: String,
    /// Where the selected messages go.
    #[schemars(length(min = 1, max = 16))]
    pub sinks: Vec<SinkSpec>,
    /// A disabled rule matches nothing.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// `async`: the device is acknowledged at once; `sync`: its PUBACK waits until every
    /// required sink accepted the message (and reports 0x97 while they cannot).
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Retries of a failed sink write.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Where a message goes after its last failed attempt, with the error, rule and
    /// attempt count. Omitted: it is dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SinkSpec>,
}

fn enabled() -> bool {
    true
}

/// When the device is acknowledged.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryMode {
    #[default]
    Async,
    Sync,
}

/// Exponential backoff between attempts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts at most, the first included (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<u32>,
    /// First wait, in milliseconds (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff_ms: Option<u64>,
    /// Longest wait, in milliseconds (default 30 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
}

/// One sink: exactly one of `kafka`, `nats`, `http`, `mqtt`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.kafka) ? 1 : 0) + (has(self.nats) ? 1 : 0) + (has(self.http) ? 1 : 0) + (has(self.mqtt) ? 1 : 0) == 1").message("set exactly one of kafka, nats, http and mqtt"))]
pub struct SinkSpec {
    /// Name of the sink, for metrics and status.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Whether a `sync` rule waits for this sink (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSink>,
}

/// An Apache Kafka topic (idempotent producer). Templates `${field}` take values from the
/// rule's output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// Bootstrap servers, comma-separated.
    pub bootstrap_servers: String,
    /// Topic template.
    pub topic: String,
    /// Key template (messages with one key keep their order in one partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value template (default: the rule's output as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Header templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// A Secret with librdkafka properties (`sasl.username`, ...), one key each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_secret: Option<String>,
}

/// A NATS subject, through JetStream (de-duplicated by message id) or core NATS.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSink {
    /// NATS URL; default: the cluster's own NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Subject template.
    pub subject: String,
    /// Publish through JetStream and wait for its acknowledgement (default true); the
    /// message id goes in `Nats-Msg-Id`, so the stream drops redeliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<bool>,
    /// Payload template (default `${.}`: the rule's output as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// An HTTP webhook: 5xx and timeouts are retried, 4xx go to the dead letter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSink {
    pub url: String,
    /// Default `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Default 5 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Body template (default `${.}`: the rule's output as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Back into MQTT (a rule's own output is never matched by it again).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttSink {
    /// Topic template.
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 2))]
    pub qos: Option<u8>,
    #[serde(default)]
    pub retain: bool,
    /// Payload template (default `${.}`: the rule's output as JSON; `${payload}`: the
    /// original payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// What the operator and the dispatchers report about a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForwardRuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (with the SQL parse error's position when not) and `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Totals over the dispatchers (each counts since it started).
    #[serde(default)]
    pub counters: RuleCounters,
    /// Dispatchers that reported on the rule in the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatchers: Option<u32>,
}

/// Message counts of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleCounters {
    pub matched: u64,
    pub forwarded: u64,
    pub failed: u64,
    pub dropped: u64,
}
