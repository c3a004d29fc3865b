//! What an operator graphs about the CoAP gateway (under the hub's `cmq_hub_` prefix).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Default)]
pub struct CoapMetrics {
    requests: Family<Labels, Counter>,
    pub duplicates: Counter,
    pub retransmissions: Counter,
    pub observers: Gauge,
    pub notifications: Counter,
    pub malformed: Counter,
    pub blocks: Counter,
    dtls_handshakes: Family<Labels, Counter>,
    pub dtls_sessions: Gauge,
}

impl CoapMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "coap_requests",
            "CoAP requests answered, by method and response code",
            m.requests.clone(),
        );
        registry.register(
            "coap_duplicates",
            "CoAP requests received again (same peer and message id), answered from the cache",
            m.duplicates.clone(),
        );
        registry.register(
            "coap_retransmissions",
            "Confirmable CoAP messages sent again for want of an ACK",
            m.retransmissions.clone(),
        );
        registry.register(
            "coap_observers",
            "CoAP observations (subscriptions) in force",
            m.observers.clone(),
        );
        registry.register(
            "coap_notifications",
            "CoAP notifications sent",
            m.notifications.clone(),
        );
        registry.register(
            "coap_malformed",
            "CoAP datagrams that could not be read",
            m.malformed.clone(),
        );
        registry.register(
            "coap_blocks",
            "CoAP blocks of block-wise transfers (RFC 7959) taken or served",
            m.blocks.clone(),
        );
        registry.register(
            "coap_dtls_handshakes",
            "DTLS handshakes on the CoAP listener, by result (ok, failed, timeout, busy)",
            m.dtls_handshakes.clone(),
        );
        registry.register(
            "coap_dtls_sessions",
            "DTLS sessions open on the CoAP listener",
            m.dtls_sessions.clone(),
        );
        m
    }

    pub fn dtls_handshake(&self, result: &'static str) {
        self.dtls_handshakes
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    pub fn request(&self, method: &'static str, code: &str) {
        self.requests
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("code", code.to_owned()),
            ])
            .inc();
    }
}
