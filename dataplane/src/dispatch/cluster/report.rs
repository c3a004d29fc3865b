//! Per-rule reports of one dispatcher, for the operator to put in each ForwardRule's
//! status: KV bucket `cmq_<c>_rule_status`, key `<namespace>/<name>/<dispatcher>`, value
//! JSON `{valid, error, matched, forwarded, failed, dropped}` (this process's counts since
//! it started). Entries of a dispatcher that stopped expire with the bucket's max age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::dispatch::RuleReport;
use crate::dispatch::engine::Engine;

const EVERY: Duration = Duration::from_secs(5);
/// An unchanged report is written again after this (the bucket's max age is 60 s).
const REFRESH: Duration = Duration::from_secs(20);

/// One dispatcher's report on one rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub matched: u64,
    pub forwarded: u64,
    pub failed: u64,
    pub dropped: u64,
}

pub fn bucket(cluster: &str) -> String {
    format!("cmq_{cluster}_rule_status")
}

pub async fn publish(
    js: jetstream::Context,
    cluster: String,
    replicas: usize,
    id: String,
    engine: Arc<Engine>,
    reports: watch::Receiver<Vec<RuleReport>>,
    stop: CancellationToken,
) {
    let name = bucket(&cluster);
    let store = loop {
        let store = match js.get_key_value(&name).await {
            Ok(s) => Ok(s),
            Err(_) => {
                js.create_or_update_key_value(kv::Config {
                    bucket: name.clone(),
                    history: 1,
                    max_age: Duration::from_secs(60),
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
            }
        };
        match store {
            Ok(s) => break s,
            Err(e) => debug!(bucket = name, error = %e, "cannot open the rule status bucket"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    };
    let mut last: std::collections::HashMap<String, (RuleStatus, Instant)> = Default::default();
    loop {
        let rules = engine.rules();
        let list = reports.borrow().clone();
        for (key, error) in list {
            let mut status = RuleStatus {
                valid: error.is_none(),
                error,
                ..Default::default()
            };
            if let Some(rule) = rules.rules.iter().find(|r| *r.key == *key) {
                status.matched = rule.counters.matched.get();
                status.forwarded = rule.counters.forwarded.get();
                status.failed = rule.counters.failed.get();
                status.dropped = rule.counters.dropped.get();
            }
            // Rewritten now and then even when unchanged, so it does not expire.
            let fresh = last
                .get(&key)
                .is_some_and(|(s, at)| *s == status && at.elapsed() < REFRESH);
            if fresh {
                continue;
            }
            let Ok(value) = serde_json::to_vec(&status) else {
                continue;
            };
            match store.put(format!("{key}/{id}"), value.into()).await {
                Ok(_) => {
                    last.insert(key, (status, Instant::now()));
                }
                Err(e) => debug!(error = %e, "cannot write a rule status"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
