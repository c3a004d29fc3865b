//! What an operator graphs about authentication, ACLs, the registry and TLS.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Access metrics, registered under the hub's prefix.
#[derive(Debug, Clone, Default)]
pub struct AccessMetrics {
    pub credentials: Gauge,
    pub acls: Gauge,
    reloads: Family<Labels, Counter>,
    auth: Family<Labels, Counter>,
    pub auth_cache_hits: Counter,
    pub denied_publish: Counter,
    pub denied_subscribe: Counter,
    pub revoked_subscriptions: Counter,
    pub revoked_deliveries: Counter,
    pub revoked_connections: Counter,
    tls_reloads: Family<Labels, Counter>,
    pub tls_handshake_failures: Counter,
}

impl AccessMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "registry_credentials",
            "DeviceCredentials in force",
            m.credentials.clone(),
        );
        registry.register("registry_acls", "TopicAcls in force", m.acls.clone());
        registry.register(
            "registry_reloads",
            "Registry reloads, by result (invalid: the last good state stayed in force)",
            m.reloads.clone(),
        );
        registry.register("auth", "Authentications, by result", m.auth.clone());
        registry.register(
            "auth_cache_hits",
            "Password checks answered by the verification cache",
            m.auth_cache_hits.clone(),
        );
        registry.register(
            "acl_denied",
            "Publishes and subscriptions refused by the ACL, by action",
            AclDenied(m.denied_publish.clone(), m.denied_subscribe.clone()),
        );
        registry.register(
            "acl_revoked_subscriptions",
            "Subscriptions removed because an ACL change no longer allows them",
            m.revoked_subscriptions.clone(),
        );
        registry.register(
            "acl_revoked_deliveries",
            "Queued messages dropped because the subscription they came by was revoked",
            m.revoked_deliveries.clone(),
        );
        registry.register(
            "revoked_connections",
            "Connections closed because their credential was disabled or deleted",
            m.revoked_connections.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads, by result",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (bad or missing client certificate, protocol errors)",
            m.tls_handshake_failures.clone(),
        );
        m
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn auth(&self, result: &'static str) {
        self.auth.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&vec![("result", result)])
            .inc();
    }
}

/// Two pre-resolved counters exposed as one metric with an `action` label.
#[derive(Debug, Clone)]
struct AclDenied(Counter, Counter);

impl prometheus_client::encoding::EncodeMetric for AclDenied {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        for (action, counter) in [("publish", &self.0), ("subscribe", &self.1)] {
            let labels = [("action", action)];
            counter.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}
