//! The rule engine: evaluates rules on a message, hands the outputs to the sinks in
//! message order, then waits for confirmations, retries with backoff and sends what still
//! fails to the dead letter. The same engine runs in `cmq dispatch` (messages from the
//! streams) and in `cmq standalone` (messages from the broker, in process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{BoxFuture, join_all};
use parking_lot::RwLock;
use tracing::{debug, warn};

use super::metrics::DispatchMetrics;
use super::rules::{Binding, CompiledRule, RuleSet};
use super::sinks::{Output, Pending, SinkError};
use crate::broker::Message;

/// A message as the rules see it.
#[derive(Clone)]
pub struct Envelope {
    pub message: Arc<Message>,
    /// Unique in the cluster; the same for every redelivery of a stored message.
    pub id: Arc<str>,
    pub clientid: Arc<str>,
    pub username: Option<Arc<str>>,
    pub timestamp_ms: i64,
    pub protocol: &'static str,
}

/// Which rules run on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every rule (QoS 0: never gated, at most once).
    All,
    /// `async` rules (a QoS 1/2 message went through the `sync` rules before its PUBACK).
    Async,
    /// `sync` rules, before the publisher's acknowledgement.
    Sync,
}

impl Which {
    pub fn for_qos(qos: mqttbytes::QoS) -> Self {
        if qos == mqttbytes::QoS::AtMostOnce {
            Which::All
        } else {
            Which::Async
        }
    }

    fn runs(self, rule: &CompiledRule) -> bool {
        match self {
            Which::All => true,
            Which::Async => !rule.sync,
            Which::Sync => rule.sync,
        }
    }
}

/// The rules in force and what they count.
pub struct Engine {
    rules: RwLock<Arc<RuleSet>>,
    metrics: Arc<DispatchMetrics>,
    node: Arc<str>,
}

/// One output on its way to one sink.
struct Job {
    rule: Arc<CompiledRule>,
    sink: usize,
    out: Output,
    first: Result<Pending, SinkError>,
    started: Instant,
}

impl Engine {
    pub fn new(metrics: Arc<DispatchMetrics>, node: &str) -> Self {
        Self {
            rules: RwLock::new(Arc::new(RuleSet::default())),
            metrics,
            node: Arc::from(node),
        }
    }

    pub fn metrics(&self) -> &Arc<DispatchMetrics> {
        &self.metrics
    }

    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().clone()
    }

    pub fn replace(&self, rules: RuleSet) {
        self.metrics.rules.set(rules.rules.len() as i64);
        *self.rules.write() = Arc::new(rules);
    }

    /// Whether some `sync` rule reads `topic`.
    pub fn gates(&self, topic: &str) -> bool {
        self.rules
            .read()
            .rules
            .iter()
            .any(|r| r.sync && r.sql.matches_topic(topic))
    }

    /// Runs the rules of `which` on `env` up to the hand-over to the sinks; the future
    /// returned does the rest (confirmations, retries, dead letters). `None`: no rule
    /// selected the message.
    pub async fn submit(&self, env: &Envelope, which: Which) -> Option<BoxFuture<'static, ()>> {
        let rules = self.rules();
        let mut jobs = Vec::new();
        for rule in &rules.rules {
            if !which.runs(rule) || !self.selects(rule, env) {
                continue;
            }
            let Some(row) = self.evaluate(rule, env) else {
                continue;
            };
            for (i, b) in rule.sinks.iter().enumerate() {
                jobs.push(self.hand_over(rule, i, b, &row, env).await);
            }
        }
        if jobs.is_empty() {
            return None;
        }
        let env = env.clone();
        Some(Box::pin(async move {
            finish_all(jobs, env).await;
        }))
    }

    /// The `sync` rules of a QoS 1/2 publish: resolves once every required sink of every
    /// matching rule confirmed it, or with the reason it cannot be taken (a sink down or
    /// saturated, or `deadline` passed). Non-required sinks go on in the background.
    pub async fn gate(&self, env: &Envelope, deadline: Duration) -> Result<(), SinkError> {
        let rules = self.rules();
        let mut selected = Vec::new();
        for rule in &rules.rules {
            if !rule.sync || !self.selects(rule, env) {
                continue;
            }
            if let Some(row) = self.evaluate(rule, env) {
                selected.push((rule.clone(), row));
            }
        }
        // Refuse before writing anything when a required sink cannot take it now.
        for (rule, _) in &selected {
            for b in rule.sinks.iter().filter(|b| b.required) {
                if let Err(e) = b.sink.ready() {
                    self.metrics.sync_refused.inc();
                    return Err(e);
                }
            }
        }
        let mut required = Vec::new();
        let mut background = Vec::new();
        for (rule, row) in &selected {
            for (i, b) in rule.sinks.iter().enumerate() {
                let job = self.hand_over(rule, i, b, row, env).await;
                if b.required {
                    required.push(job);
                } else {
                    background.push(job);
                }
            }
        }
        if !background.is_empty() {
            tokio::spawn(finish_all(background, env.clone()));
        }
        let until = Instant::now() + deadline;
        let results = join_all(required.into_iter().map(|job| async move {
            let rule = job.rule.clone();
            let result = deliver(job, Some(until)).await;
            (rule, result)
        }))
        .await;
        let mut refused = None;
        for (rule, result) in results {
            match result {
                Ok(()) => {
                    rule.counters.forwarded.inc();
                }
                Err((e, _)) => {
                    rule.counters.failed.inc();
                    refused.get_or_insert(e);
                }
            }
        }
        match refused {
            None => {
                self.metrics.sync_accepted.inc();
                Ok(())
            }
            Some(e) => {
                self.metrics.sync_refused.inc();
                Err(e)
            }
        }
    }

    fn selects(&self, rule: &CompiledRule, env: &Envelope) -> bool {
        // A rule's own republished output is not matched by it again (loop guard).
        if env.message.rule.as_deref() == Some(&*rule.key) {
            return false;
        }
        rule.sql.matches_topic(&env.message.topic)
    }

    fn evaluate(&self, rule: &CompiledRule, env: &Envelope) -> Option<cmq_rules::Row> {
        let props: &[(String, String)] = env
            .message
            .properties
            .as_ref()
            .map_or(&[], |p| p.user_properties.as_slice());
        let input = cmq_rules::Message {
            id: &env.id,
            topic: &env.message.topic,
            payload: &env.message.payload,
            clientid: &env.clientid,
            username: env.username.as_deref(),
            qos: env.message.qos as u8,
            retain: env.message.retain,
            timestamp_ms: env.timestamp_ms,
            user_properties: props,
            peerhost: None,
            protocol: env.protocol,
            node: &self.node,
        };
        match rule.sql.evaluate(&input) {
            Ok(Some(row)) => {
                rule.counters.matched.inc();
                Some(row)
            }
            Ok(None) => None,
            Err(e) => {
                rule.counters.matched.inc();
                rule.counters.failed.inc();
                rule.counters.dropped.inc();
                debug!(rule = %rule.key, topic = %env.message.topic, error = %e, "rule evaluation failed");
                None
            }
        }
    }

    /// Renders the output of one sink and hands it over.
    async fn hand_over(
        &self,
        rule: &Arc<CompiledRule>,
        sink: usize,
        b: &Binding,
        row: &cmq_rules::Row,
        env: &Envelope,
    ) -> Job {
        let started = Instant::now();
        let (out, first) = match render(b, row, env, &rule.key) {
            Ok(out) => {
                let first = b.sink.submit(&out).await;
                (out, first)
            }
            Err(e) => (Output::default(), Err(e)),
        };
        Job {
            rule: rule.clone(),
            sink,
            out,
            first,
            started,
        }
    }
}

fn render(
    b: &Binding,
    row: &cmq_rules::Row,
    env: &Envelope,
    rule: &Arc<str>,
) -> Result<Output, SinkError> {
    let fail = |what: &str, e: cmq_rules::RenderError| {
        SinkError::fatal(format!("cannot render the {what} template: {e}"))
    };
    let topic = match &b.topic {
        Some(t) => t.render_string(row).map_err(|e| fail("topic", e))?,
        None => String::new(),
    };
    if b.topic.is_some() && topic.is_empty() {
        return Err(SinkError::fatal("the topic template rendered empty"));
    }
    let key = match &b.key {
        Some(t) => Some(t.render(row).map_err(|e| fail("key", e))?),
        None => (!env.clientid.is_empty()).then(|| env.clientid.as_bytes().to_vec()),
    };
    let value = Bytes::from(b.value.render(row).map_err(|e| fail("value", e))?);
    let mut headers = Vec::with_capacity(b.headers.len());
    for (name, t) in &b.headers {
        headers.push((name.clone(), t.render(row).map_err(|e| fail("header", e))?));
    }
    Ok(Output {
        topic,
        key,
        value,
        headers,
        id: env.id.clone(),
        qos: b.qos,
        retain: b.retain,
        rule: rule.clone(),
    })
}

/// Waits for a write, trying again with backoff while the error is retriable, attempts
/// are left and `until` (if any) has not passed. Returns the last error and the attempts.
async fn deliver(job: Job, until: Option<Instant>) -> Result<(), (SinkError, u32)> {
    let Job {
        rule,
        sink,
        out,
        first,
        started,
    } = job;
    let b = &rule.sinks[sink];
    let mut attempt = 1u32;
    let mut pending = first;
    loop {
        let result = match pending {
            Ok(p) => match until {
                Some(at) => match tokio::time::timeout_at(at.into(), p).await {
                    Ok(r) => r,
                    Err(_) => Err(SinkError::retriable(
                        "no confirmation before the sync deadline",
                    )),
                },
                None => p.await,
            },
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(()) => {
                b.counters.success.inc();
                if let Some(h) = &b.counters.latency {
                    h.observe(started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let wait = rule.retry.backoff(attempt + 1);
        let out_of_time = until.is_some_and(|at| Instant::now() + wait >= at);
        if !e.retriable || attempt >= rule.retry.max_attempts || out_of_time {
            b.counters.failed.inc();
            return Err((e, attempt));
        }
        b.counters.retried.inc();
        debug!(rule = %rule.key, sink = %b.name, attempt, error = %e, "retrying a write");
        tokio::time::sleep(wait).await;
        attempt += 1;
        pending = b.sink.submit(&out).await;
    }
}

/// Waits for every job of one message; failed writes go to the rule's dead letter.
async fn finish_all(jobs: Vec<Job>, env: Envelope) {
    let results = join_all(jobs.into_iter().map(|job| {
        let rule = job.rule.clone();
        let sink = job.sink;
        async move { (rule, sink, deliver(job, None).await) }
    }))
    .await;
    // Per rule: forwarded when all its sinks confirmed.
    let mut outcome: Vec<(Arc<CompiledRule>, bool)> = Vec::new();
    for (rule, sink, result) in results {
        let ok = match result {
            Ok(()) => true,
            Err((e, attempts)) => {
                dead_letter(&rule, sink, &env, &e, attempts).await;
                false
            }
        };
        match outcome.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &rule)) {
            Some((_, all)) => *all &= ok,
            None => outcome.push((rule, ok)),
        }
    }
    for (rule, ok) in outcome {
        if ok {
            rule.counters.forwarded.inc();
        } else {
            rule.counters.failed.inc();
        }
    }
}

/// Sends a failed write to the rule's dead letter (once), or counts it dropped.
async fn dead_letter(
    rule: &CompiledRule,
    sink: usize,
    env: &Envelope,
    e: &SinkError,
    attempts: u32,
) {
    let b = &rule.sinks[sink];
    warn!(rule = %rule.key, sink = %b.name, attempts, error = %e, topic = %env.message.topic, "write failed");
    let Some(dl) = &rule.dead_letter else {
        rule.counters.dropped.inc();
        return;
    };
    let payload = &env.message.payload;
    let (encoding, text) = match std::str::from_utf8(payload) {
        Ok(s) => ("utf8", s.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(payload),
        ),
    };
    let record = serde_json::json!({
        "rule": &*rule.key,
        "sink": &*b.name,
        "error": e.reason,
        "retriable": e.retriable,
        "attempts": attempts,
        "message": {
            "id": &*env.id,
            "topic": &*env.message.topic,
            "clientid": &*env.clientid,
            "username": env.username.as_deref(),
            "qos": env.message.qos as u8,
            "retain": env.message.retain,
            "timestamp": env.timestamp_ms,
            "payload": text,
            "payload_encoding": encoding,
        },
    });
    let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
    // The dead letter's topic template sees these columns of the failed write.
    let columns: cmq_rules::Row = [
        ("rule", rule.key.to_string()),
        ("sink", b.name.to_string()),
        ("topic", env.message.topic.to_string()),
        ("clientid", env.clientid.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), cmq_rules::Value::Str(v)))
    .collect();
    let topic = dl
        .topic
        .as_ref()
        .map(|t| t.render_string(&columns).unwrap_or_default())
        .unwrap_or_default();
    let out = Output {
        topic,
        key: Some(env.clientid.as_bytes().to_vec()),
        value,
        headers: vec![("cmq-rule".into(), rule.key.as_bytes().to_vec())],
        id: env.id.clone(),
        qos: dl.qos,
        retain: false,
        rule: rule.key.clone(),
    };
    let result = match dl.sink.submit(&out).await {
        Ok(p) => p.await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            b.counters.dead_lettered.inc();
            dl.counters.success.inc();
        }
        Err(dle) => {
            dl.counters.failed.inc();
            rule.counters.dropped.inc();
            warn!(rule = %rule.key, error = %dle, "dead letter failed too: message dropped");
        }
    }
}
