//! The result of a run: printed as a summary, or as one JSON line for scripts.

use std::fmt::Write as _;

use serde::Serialize;

/// Results of one run. Fields that do not apply to a mode are 0 / `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub mqtt_version: u8,
    pub qos: u8,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub payload: usize,
    /// Length of the measured window in seconds.
    pub duration_s: f64,
    /// Publishes sent during the measured window.
    pub sent: u64,
    /// Deliveries received by subscribers during the measured window.
    pub delivered: u64,
    pub publishes_per_s: f64,
    pub deliveries_per_s: f64,
    /// End-to-end latency percentiles in µs (deliveries in the measured window).
    pub latency_p50_us: Option<u64>,
    pub latency_p90_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub latency_p999_us: Option<u64>,
    pub latency_max_us: Option<u64>,
    /// Whether loss/order was checked (QoS 1/2 only).
    pub loss_checked: bool,
    /// Messages never received on a (publisher, subscriber) stream (whole run).
    pub lost: u64,
    /// Messages received with a lower sequence than already seen (reordering
    /// or QoS 1 duplicates).
    pub out_of_order: u64,
    /// QoS 0 flow-control windows written off after a 200 ms stall.
    pub window_resets: u64,
    /// Connection/protocol errors (failed connects included).
    pub errors: u64,
    /// A few error messages.
    pub error_samples: Vec<String>,
    pub connections_established: u64,
    pub connections_failed: u64,
    /// Connections that the broker closed while they were held (idle mode).
    pub connections_dropped: u64,
    /// Achieved connections per second.
    pub connect_rate: f64,
    pub connect_p50_us: Option<u64>,
    pub connect_p99_us: Option<u64>,
    pub broker_rss_before: Option<u64>,
    pub broker_rss_after: Option<u64>,
    /// (RSS after − RSS before) / connections established, in bytes.
    pub rss_per_connection: Option<f64>,
    /// Broker utime+stime over the measured window, in seconds.
    pub broker_cpu_s: Option<f64>,
    pub deliveries_per_broker_cpu_s: Option<f64>,
}

impl BenchReport {
    /// One-line JSON object with every field (null for `None`).
    pub fn to_json(&self) -> String {
        // Serializing plain numbers, strings and options cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            s,
            "cmq bench: mode={} mqtt={}",
            self.mode, self.mqtt_version
        );
        match self.mode.as_str() {
            "pubsub" => {
                let _ = writeln!(
                    s,
                    "  pubs={} subs={} topics={} qos={} payload={}B window={:.2}s",
                    self.publishers,
                    self.subscribers,
                    self.topics,
                    self.qos,
                    self.payload,
                    self.duration_s
                );
                let _ = writeln!(
                    s,
                    "  sent {} ({:.0}/s)  delivered {} ({:.0}/s)",
                    self.sent, self.publishes_per_s, self.delivered, self.deliveries_per_s
                );
                let _ = writeln!(
                    s,
                    "  latency us: p50 {} p90 {} p99 {} p99.9 {} max {}",
                    opt(self.latency_p50_us),
                    opt(self.latency_p90_us),
                    opt(self.latency_p99_us),
                    opt(self.latency_p999_us),
                    opt(self.latency_max_us)
                );
                if self.loss_checked {
                    let _ = writeln!(
                        s,
                        "  lost {}  out-of-order/dup {}",
                        self.lost, self.out_of_order
                    );
                } else {
                    let _ = writeln!(
                        s,
                        "  loss not checked (QoS 0); window resets {}",
                        self.window_resets
                    );
                }
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  connections: {} established, {} failed, {} dropped; {:.0} conn/s",
                    self.connections_established,
                    self.connections_failed,
                    self.connections_dropped,
                    self.connect_rate
                );
                let _ = writeln!(
                    s,
                    "  connect latency us: p50 {} p99 {}",
                    opt(self.connect_p50_us),
                    opt(self.connect_p99_us)
                );
                if let (Some(b), Some(a)) = (self.broker_rss_before, self.broker_rss_after) {
                    let _ = writeln!(
                        s,
                        "  broker RSS {:.1} MiB -> {:.1} MiB, {:.0} B/connection",
                        b as f64 / 1048576.0,
                        a as f64 / 1048576.0,
                        self.rss_per_connection.unwrap_or(f64::NAN)
                    );
                }
            }
        }
        if let Some(cpu) = self.broker_cpu_s {
            let _ = write!(s, "  broker CPU {cpu:.2}s");
            if let Some(d) = self.deliveries_per_broker_cpu_s {
                let _ = write!(s, ", {d:.0} deliveries per broker CPU-second");
            }
            s.push('\n');
        }
        let _ = writeln!(s, "  errors {}", self.errors);
        for e in &self.error_samples {
            let _ = writeln!(s, "    {e}");
        }
        s
    }
}
