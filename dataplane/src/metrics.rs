//! Prometheus metrics of the hub. Hot-path counters are resolved once at start (a labelled
//! family lookup takes a lock), and label values come from small fixed sets.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub sessions: Gauge,
    pub subscriptions: Gauge,
    pub retained: Gauge,
    pub connections_accepted: Counter,
    connacks: Family<Labels, Counter>,
    disconnects: Family<Labels, Counter>,
    malformed: Family<Labels, Counter>,
    /// Publishes received from clients, by QoS.
    pub received: [Counter; 3],
    /// Deliveries written to clients, by QoS.
    pub delivered: [Counter; 3],
    pub dropped_queue_full: Counter,
    pub dropped_expired: Counter,
    pub dropped_too_large: Counter,
    pub wills_published: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Cluster mode.
    pub cluster: ClusterMetrics,
    /// Authentication, ACLs, registry and TLS.
    pub access: crate::access::AccessMetrics,
    /// The CoAP gateway.
    pub coap: crate::coap::CoapMetrics,
}

/// What an operator graphs about a hub in a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// Stored messages delivered by a replay (resume or catch-up after a NATS reconnect).
    pub replayed: Counter,
    /// QoS 1/2 publishes refused because the cluster did not acknowledge the store.
    pub store_failures: Counter,
    /// Stored batches: several QoS 1 publishes of one read to one topic in one message.
    pub store_batches: Counter,
    /// QoS 1 publishes that went into a stored batch.
    pub batched_messages: Counter,
    /// Connections dropped because another hub owns their session now (fencing).
    pub fenced: Counter,
    /// Sessions handed to another hub at its request (takeover across hubs).
    pub handed_over: Counter,
    /// Sessions of dead hubs this hub released (wills fired, expiry taken over).
    pub orphans_adopted: Counter,
    /// Catch-ups from the cursors after the NATS link came back.
    pub resyncs: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cmq_hub");
        let connections = Gauge::default();
        registry.register("connections", "Open MQTT connections", connections.clone());
        let sessions = Gauge::default();
        registry.register("sessions", "Sessions, connected or not", sessions.clone());
        let subscriptions = Gauge::default();
        registry.register(
            "subscriptions",
            "Subscriptions of all sessions",
            subscriptions.clone(),
        );
        let retained = Gauge::default();
        registry.register(
            "retained_messages",
            "Retained messages stored",
            retained.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Sockets accepted by the listeners",
            connections_accepted.clone(),
        );
        let connacks = Family::<Labels, Counter>::default();
        registry.register("connacks", "CONNACKs sent, by reason", connacks.clone());
        let disconnects = Family::<Labels, Counter>::default();
        registry.register(
            "disconnects",
            "Connections closed, by cause",
            disconnects.clone(),
        );
        let malformed = Family::<Labels, Counter>::default();
        registry.register(
            "malformed_packets",
            "Packets rejected as malformed or protocol errors, by kind",
            malformed.clone(),
        );
        let received = qos_counters();
        let delivered = qos_counters();
        registry.register(
            "messages_received",
            "PUBLISH packets received from clients, by QoS",
            QosCounters(received.clone()),
        );
        registry.register(
            "messages_delivered",
            "PUBLISH packets written to clients, by QoS",
            QosCounters(delivered.clone()),
        );
        let dropped = Family::<Labels, Counter>::default();
        let dropped_queue_full = dropped
            .get_or_create(&vec![("reason", "queue_full")])
            .clone();
        let dropped_expired = dropped.get_or_create(&vec![("reason", "expired")]).clone();
        let dropped_too_large = dropped
            .get_or_create(&vec![("reason", "too_large")])
            .clone();
        registry.register("messages_dropped", "Deliveries dropped, by reason", dropped);
        let wills_published = Counter::default();
        registry.register(
            "wills_published",
            "Will messages published",
            wills_published.clone(),
        );
        let bytes_received = Counter::default();
        registry.register_with_unit(
            "received",
            "Bytes read from clients",
            prometheus_client::registry::Unit::Bytes,
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register_with_unit(
            "sent",
            "Bytes written to clients",
            prometheus_client::registry::Unit::Bytes,
            bytes_sent.clone(),
        );
        let cluster = ClusterMetrics::default();
        for (name, help, counter) in [
            (
                "cluster_replayed_messages",
                "Stored messages delivered by replay (resume on this hub, catch-up after a NATS reconnect)",
                &cluster.replayed,
            ),
            (
                "cluster_store_failures",
                "QoS 1/2 publishes refused because JetStream did not acknowledge the store",
                &cluster.store_failures,
            ),
            (
                "cluster_store_batches",
                "Stored messages that hold a batch of QoS 1 publishes (one connection, one topic, one read)",
                &cluster.store_batches,
            ),
            (
                "cluster_batched_messages",
                "QoS 1 publishes stored as part of a batch",
                &cluster.batched_messages,
            ),
            (
                "cluster_fenced",
                "Connections dropped because another hub owns their session",
                &cluster.fenced,
            ),
            (
                "cluster_sessions_handed_over",
                "Sessions handed to another hub that took them over",
                &cluster.handed_over,
            ),
            (
                "cluster_orphans_adopted",
                "Sessions of dead hubs released by this hub",
                &cluster.orphans_adopted,
            ),
            (
                "cluster_resyncs",
                "Catch-ups of every session after the NATS link came back",
                &cluster.resyncs,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let access = crate::access::AccessMetrics::register(&mut registry);
        let coap = crate::coap::CoapMetrics::register(&mut registry);
        Self {
            cluster,
            access,
            coap,
            registry,
            connections,
            sessions,
            subscriptions,
            retained,
            connections_accepted,
            connacks,
            disconnects,
            malformed,
            received,
            delivered,
            dropped_queue_full,
            dropped_expired,
            dropped_too_large,
            wills_published,
            bytes_received,
            bytes_sent,
        }
    }

    /// Counts a CONNACK by its (MQTT 5) reason.
    pub fn connack(&self, reason: &'static str) {
        self.connacks.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a closed connection by cause.
    pub fn disconnect(&self, cause: &'static str) {
        self.disconnects
            .get_or_create(&vec![("cause", cause)])
            .inc();
    }

    /// Counts a rejected packet by kind.
    pub fn malformed(&self, kind: &'static str) {
        self.malformed.get_or_create(&vec![("kind", kind)]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn qos_counters() -> [Counter; 3] {
    [Counter::default(), Counter::default(), Counter::default()]
}

/// Exposes three pre-resolved counters as one metric with a `qos` label.
#[derive(Debug, Clone)]
struct QosCounters([Counter; 3]);

impl prometheus_client::encoding::EncodeMetric for QosCounters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        for (i, qos) in ["0", "1", "2"].into_iter().enumerate() {
            let labels = [("qos", qos)];
            let enc = encoder.encode_family(&labels)?;
            self.0[i].encode(enc)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}
