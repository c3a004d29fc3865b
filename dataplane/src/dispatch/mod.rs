//! Dispatch: the rule engine behind `ForwardRule`s. Rules (an SQL subset, `cmq_rules`)
//! select and reshape published messages and forward them, at least once, to Kafka, NATS,
//! HTTP or back into MQTT.
//!
//! - `cmq dispatch` (`cluster`): dispatch processes share durable JetStream pull consumers
//!   over the message streams (QoS 1/2) and a queue subscription on the dispatch feed (QoS 0 copies of the messages rules read);
//!   a stored message is acknowledged only once its sinks confirmed it or it went to the
//!   dead letter. They also answer the hubs' `sync` requests (`gate`).
//! - `cmq standalone` (`local`): the same engine in process.

pub mod cluster;
pub mod engine;
pub mod gate;
pub mod local;
pub mod metrics;
pub mod rules;
pub mod rules_watch;
pub mod sinks;

use std::sync::Arc;

use cmq_crds::kv::StoredRule;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use engine::Engine;
use rules::{RuleSet, SinkFactory};

/// What loading one rule gave: `None` when it runs, else why not.
pub type RuleReport = (String, Option<String>);

/// Compiles `stored` and puts the valid rules in force (disabled ones are left out).
pub async fn apply(
    factory: &SinkFactory,
    engine: &Engine,
    stored: &[StoredRule],
) -> Vec<RuleReport> {
    let mut set = RuleSet::default();
    let mut reports = Vec::with_capacity(stored.len());
    let mut invalid = 0;
    for s in stored {
        let key = format!("{}/{}", s.namespace, s.name);
        match factory.compile(s).await {
            Ok(rule) => {
                if s.spec.enabled {
                    set.rules.push(Arc::new(rule));
                }
                reports.push((key, None));
            }
            Err(e) => {
                warn!(rule = %key, error = %e, "invalid ForwardRule; it does not run");
                invalid += 1;
                reports.push((key, Some(e.to_string())));
            }
        }
    }
    info!(rules = set.rules.len(), invalid, "forward rules loaded");
    engine.metrics().rules_invalid.set(invalid);
    engine.replace(set);
    reports
}

/// Applies every new rule set from `updates` until `stop`; each result goes to `reports`.
pub async fn follow(
    factory: Arc<SinkFactory>,
    engine: Arc<Engine>,
    mut updates: watch::Receiver<Option<Vec<StoredRule>>>,
    reports: watch::Sender<Vec<RuleReport>>,
    stop: CancellationToken,
) {
    loop {
        let stored = updates.borrow_and_update().clone();
        if let Some(stored) = stored {
            reports.send_replace(apply(&factory, &engine, &stored).await);
        }
        tokio::select! {
            r = updates.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
