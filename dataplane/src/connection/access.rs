//! A connection under the registry: its credential and ACL are re-checked whenever the
//! registry changes, so a revoked device leaves at once and a narrowed ACL stops the
//! deliveries it no longer allows.

use mqttbytes::QoS;
use tracing::info;

use super::{Connection, Exit};

impl Connection {
    /// Whether the ACL allows subscribing to `filter` (a `$share/group/` prefix is not part
    /// of what the ACL judges). An invalid filter is left to the subscribe path to refuse.
    pub(super) fn may_subscribe(&self, filter: &str, qos: QoS) -> bool {
        let acl = &self.access.grant;
        if acl.is_allow_all() {
            return true;
        }
        let topic_filter = match cmq_topic::parse_shared(filter) {
            Ok(Some(shared)) => shared.filter,
            Ok(None) => filter,
            Err(_) => return true,
        };
        if cmq_topic::validate_filter(topic_filter, &self.broker.limits.topic).is_err() {
            return true;
        }
        acl.may_subscribe(topic_filter, qos)
    }

    /// Takes the registry's current state: leaves with `NotAuthorized` when the credential is
    /// gone, else refreshes the ACL and drops the subscriptions it no longer allows. `resumed`
    /// checks the subscriptions even without a change (a session resumed from storage).
    pub(super) async fn recheck_access(&mut self, resumed: bool) -> Result<(), Exit> {
        if self.broker.access.generation() != self.access.grant.verdicts.generation {
            match self.broker.access.grant(&mut self.access.principal) {
                Ok(grant) => self.access.grant = grant,
                Err(reason) => {
                    self.broker.metrics.access.revoked_connections.inc();
                    info!(
                        credential = self.access.principal.describe(),
                        ?reason,
                        "credential revoked; disconnecting"
                    );
                    return Err(Exit::NotAuthorized);
                }
            }
        } else if !resumed {
            return Ok(());
        }
        if self.access.grant.is_allow_all() || self.claim.state.subscriptions.is_empty() {
            return Ok(());
        }
        let revoked: Vec<String> = self
            .claim
            .state
            .subscriptions
            .iter()
            .filter(|(filter, options)| !self.may_subscribe(filter, options.qos))
            .map(|(filter, _)| filter.clone())
            .collect();
        if revoked.is_empty() {
            return Ok(());
        }
        for filter in &revoked {
            self.broker.unsubscribe(&self.claim.session, filter);
            self.claim.state.subscriptions.remove(filter);
            self.broker.metrics.access.revoked_subscriptions.inc();
        }
        info!(filters = ?revoked, "subscriptions removed: the ACL no longer allows them");
        // Cluster mode: a resumed session's catch-up from the streams skips them as well.
        if let Some(plan) = self.claim.replay.as_mut() {
            plan.subscriptions.retain(|(f, _)| !revoked.contains(f));
        }
        // Messages queued under a revoked subscription (while the session was offline, or
        // since the last wake-up) go too, unless another subscription still wants them.
        let remaining: Vec<&str> = self
            .claim
            .state
            .subscriptions
            .keys()
            .map(|f| match cmq_topic::parse_shared(f) {
                Ok(Some(shared)) => shared.filter,
                _ => f.as_str(),
            })
            .collect();
        let dropped = self.claim.session.retain_queued(|d| {
            remaining
                .iter()
                .any(|f| cmq_topic::matches(f, &d.message.topic))
        });
        if dropped > 0 {
            self.broker
                .metrics
                .access
                .revoked_deliveries
                .inc_by(dropped as u64);
        }
        self.subscriptions_changed().await
    }
}
