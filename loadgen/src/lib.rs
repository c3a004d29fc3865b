//! `cmq bench`: an MQTT load generator that speaks plain MQTT 3.1.1 (or 5.0)
//! over TCP to any broker.
//!
//! Modes:
//! * `pubsub` — P publishers, S subscribers over T topics; throughput,
//!   end-to-end latency (send timestamp carried in the payload), loss and
//!   ordering (QoS 1/2).
//! * `idle` — open N idle connections at a given rate and hold them; with
//!   `--broker-pid`, broker RSS per connection.
//! * `connect` — connection storm: N CONNECT/CONNACK handshakes with C in
//!   flight; connections/s and handshake latency.
//!
//! The hot path is hand-written (see [`codec`]): publishers encode batches of
//! PUBLISH packets into one buffer per write, subscribers parse whole read
//! buffers in place, nothing is allocated per message.
//!
//! QoS 0 flow control: a QoS 0 publisher may have at most `--inflight`
//! messages that subscribers have not yet received (counted per publisher,
//! divided by the number of subscribers that match its topic). This keeps a
//! flood from just filling socket buffers and turning into a latency
//! measurement of the kernel queues. If the window makes no progress for
//! 200 ms (the broker dropped QoS 0 messages, or a subscriber died), the
//! missing messages are written off and the publisher continues; these events
//! are reported as `window_resets`.

pub mod codec;
mod modes;
pub mod net;
pub mod procstat;
mod pubsub;
mod report;

pub use report::BenchReport;

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Which benchmark to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Publishers → topics → subscribers: throughput and latency.
    #[default]
    Pubsub,
    /// Open and hold many idle connections (memory per connection).
    Idle,
    /// Connection storm: handshakes per second and handshake latency.
    Connect,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Pubsub => "pubsub",
            Mode::Idle => "idle",
            Mode::Connect => "connect",
        }
    }
}

/// Arguments of `cmq bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Benchmark mode.
    #[arg(long, value_enum, default_value_t = Mode::Pubsub, env = "CMQ_BENCH_MODE")]
    pub mode: Mode,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", env = "CMQ_BENCH_HOST")]
    pub host: String,
    /// Broker MQTT port.
    #[arg(long, default_value_t = 1883, env = "CMQ_BENCH_PORT")]
    pub port: u16,
    /// Several brokers (or hubs of one cluster) as `host:port,host:port,...`, instead of
    /// --host/--port: connection i goes to target i mod n, so in pubsub mode publishers and
    /// subscribers land on different hubs.
    #[arg(long, env = "CMQ_BENCH_TARGETS", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Session expiry interval (MQTT 5) or clean session off (3.1.1) when not 0: idle
    /// connections then hold persistent sessions.
    #[arg(long, default_value_t = 0, env = "CMQ_BENCH_SESSION_EXPIRY")]
    pub session_expiry: u32,
    /// Idle mode: subscribe each connection to `<topic-prefix>/idle/<i>` with this QoS.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2), env = "CMQ_BENCH_IDLE_SUBSCRIBE_QOS")]
    pub idle_subscribe_qos: Option<u8>,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5), env = "CMQ_BENCH_MQTT_VERSION")]
    pub mqtt_version: u8,
    /// Username for CONNECT (optional).
    #[arg(long, env = "CMQ_BENCH_USERNAME")]
    pub username: Option<String>,
    /// Password for CONNECT (used only with --username).
    #[arg(long, env = "CMQ_BENCH_PASSWORD")]
    pub password: Option<String>,
    /// Tokio worker threads (1 = current-thread runtime; used by `run_blocking`).
    #[arg(long, default_value_t = 1, env = "CMQ_BENCH_THREADS")]
    pub threads: usize,
    /// MQTT keep-alive in seconds sent in CONNECT (PINGREQ every half of it).
    #[arg(long, default_value_t = 60, env = "CMQ_BENCH_KEEP_ALIVE")]
    pub keep_alive: u16,
    /// Timeout in seconds for TCP connect + CONNACK (and SUBACK).
    #[arg(long, default_value_t = 10, env = "CMQ_BENCH_CONNECT_TIMEOUT")]
    pub connect_timeout: u64,
    /// Loopback source addresses to spread connections over (127.0.0.1..N);
    /// 0 = automatic (one per 2000 connections, max 32, when more than 4000
    /// connections go to a loopback IPv4 broker; otherwise 1).
    #[arg(long, default_value_t = 0, env = "CMQ_BENCH_SOURCE_ADDRS")]
    pub source_addrs: u8,
    /// PIDs of the broker's processes (comma-separated; e.g. a hub and its nats-server):
    /// their CPU time (and RSS in idle mode) from /proc, summed.
    #[arg(long, env = "CMQ_BENCH_BROKER_PID", value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    /// Print only the one-line JSON report.
    #[arg(long, env = "CMQ_BENCH_JSON")]
    pub json: bool,

    // ---- pubsub ----
    /// [pubsub] Publisher connections.
    #[arg(long, default_value_t = 1, env = "CMQ_BENCH_PUBLISHERS")]
    pub publishers: usize,
    /// [pubsub] Subscriber connections.
    #[arg(long, default_value_t = 1, env = "CMQ_BENCH_SUBSCRIBERS")]
    pub subscribers: usize,
    /// [pubsub] Topics: publisher i → {prefix}/{i % T}, subscriber j ← {prefix}/{j % T}.
    #[arg(long, default_value_t = 1, env = "CMQ_BENCH_TOPICS")]
    pub topics: usize,
    /// [pubsub] QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2), env = "CMQ_BENCH_QOS")]
    pub qos: u8,
    /// [pubsub] Payload size in bytes (>= 16: timestamp, publisher id, sequence).
    #[arg(long, default_value_t = 64, env = "CMQ_BENCH_PAYLOAD")]
    pub payload: usize,
    /// [pubsub] Total publish rate across all publishers in msgs/s (0 = flood).
    #[arg(long, default_value_t = 0, env = "CMQ_BENCH_RATE")]
    pub rate: u64,
    /// [pubsub] Measured duration in seconds (after warmup).
    #[arg(long, default_value_t = 10.0, env = "CMQ_BENCH_DURATION")]
    pub duration: f64,
    /// [pubsub] Warmup in seconds (not measured).
    #[arg(long, default_value_t = 1.0, env = "CMQ_BENCH_WARMUP")]
    pub warmup: f64,
    /// [pubsub] Per publisher: max unacknowledged QoS 1/2 publishes; for QoS 0,
    /// max messages not yet received by the subscribers (crude flow control).
    #[arg(long, default_value_t = 1000, env = "CMQ_BENCH_INFLIGHT")]
    pub inflight: usize,
    /// [pubsub] Topic prefix.
    #[arg(long, default_value = "bench", env = "CMQ_BENCH_TOPIC_PREFIX")]
    pub topic_prefix: String,
    /// [pubsub] Every subscriber subscribes to this filter instead of its own
    /// topic (e.g. "bench/+" for fan-in).
    #[arg(long, env = "CMQ_BENCH_SUB_FILTER")]
    pub sub_filter: Option<String>,

    // ---- idle / connect ----
    /// [idle, connect] Number of connections.
    #[arg(long, default_value_t = 1000, env = "CMQ_BENCH_CONNECTIONS")]
    pub connections: usize,
    /// [idle] New connections per second (0 = as fast as possible).
    #[arg(long, default_value_t = 2000, env = "CMQ_BENCH_CONNECT_RATE")]
    pub connect_rate: u64,
    /// [idle] Seconds to hold the connections once all are up.
    #[arg(long, default_value_t = 5.0, env = "CMQ_BENCH_HOLD")]
    pub hold: f64,
    /// [connect] Handshakes in flight at once.
    #[arg(long, default_value_t = 100, env = "CMQ_BENCH_CONCURRENCY")]
    pub concurrency: usize,
}

impl Default for BenchArgs {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: BenchArgs,
        }
        // Defaults only; ignores the environment's CMQ_BENCH_* unless set.
        match <Wrapper as clap::Parser>::try_parse_from(["bench"]) {
            Ok(w) => w.args,
            Err(e) => panic!("BenchArgs defaults do not parse: {e}"),
        }
    }
}

/// Collects errors: a count plus the first few messages.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub count: u64,
    pub samples: Vec<String>,
}

impl Errors {
    pub fn add(&mut self, e: impl std::fmt::Display) {
        self.count += 1;
        if self.samples.len() < 5 {
            self.samples.push(e.to_string());
        }
    }
}

pub(crate) fn hist_us(sigfig: u8) -> hdrhistogram::Histogram<u64> {
    match hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, sigfig) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds are constant and valid: {e}"),
    }
}

/// Records `us` clamped into the histogram's range.
#[inline]
pub(crate) fn record_us(h: &mut hdrhistogram::Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, h.high()));
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (idle/connect modes
/// need one descriptor per connection). Returns the new soft limit.
fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// Runs the benchmark on the caller's tokio runtime, prints the summary (or
/// only the JSON line with `--json`) and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let origin = Instant::now();
    if args.mqtt_version != 4 && args.mqtt_version != 5 {
        bail!("--mqtt-version must be 4 or 5");
    }
    let mut addrs = Vec::new();
    if args.targets.is_empty() {
        addrs.push(
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .with_context(|| format!("resolving {}:{}", args.host, args.port))?
                .next()
                .with_context(|| format!("{} resolves to nothing", args.host))?,
        );
    }
    for target in &args.targets {
        addrs.push(
            target
                .to_socket_addrs()
                .with_context(|| format!("resolving target {target}"))?
                .next()
                .with_context(|| format!("target {target} resolves to nothing"))?,
        );
    }
    let addr = addrs[0];
    let nofile = raise_nofile();
    let conns_needed = match args.mode {
        Mode::Pubsub => args.publishers + args.subscribers,
        Mode::Idle | Mode::Connect => args.connections,
    };
    if nofile != 0 && (conns_needed as u64) + 64 > nofile {
        tracing::warn!(
            nofile,
            conns_needed,
            "RLIMIT_NOFILE is too low for this many connections; raise `ulimit -n`"
        );
    }
    // One loopback source address gives ~28k ports (32768-60999 by default),
    // but the kernel's ephemeral-port search gets very slow (quadratic system
    // time, SYN retries) once thousands of ports toward the same broker are
    // in use or in TIME_WAIT. So for big connection counts to a loopback
    // broker spread the sockets over 127.0.0.1..N (one per 2000 connections,
    // at most 32); measured: 19k connections at 5000/s went from 1975 conn/s
    // and 8.3 s of system time to 4999 conn/s and 1.8 s with 8 addresses.
    let source_addrs = if args.source_addrs > 0 {
        args.source_addrs
    } else if conns_needed > 4000 && addr.ip().is_loopback() && addr.is_ipv4() {
        (conns_needed / 2000 + 1).min(32) as u8
    } else {
        1
    };
    let cfg = net::ConnCfg {
        addrs,
        session_expiry: args.session_expiry,
        v5: args.mqtt_version == 5,
        keep_alive: args.keep_alive,
        source_addrs,
        timeout: Duration::from_secs(args.connect_timeout.max(1)),
        login: args
            .username
            .clone()
            .map(|u| (u, args.password.clone().unwrap_or_default())),
    };
    let report = match args.mode {
        Mode::Pubsub => pubsub::run(&args, cfg, origin).await?,
        Mode::Idle => modes::run_idle(&args, cfg).await?,
        Mode::Connect => modes::run_connect(&args, cfg).await?,
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    Ok(report)
}

/// Builds a tokio runtime (current-thread for `--threads 1`, else
/// multi-thread with that many workers) and runs [`run`] on it.
pub fn run_blocking(args: BenchArgs) -> anyhow::Result<BenchReport> {
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line_and_escaped() {
        let r = BenchReport {
            mode: "pubsub".into(),
            sent: 10,
            latency_p50_us: Some(12),
            error_samples: vec!["bad \"thing\"\nhere".into()],
            rss_per_connection: Some(1234.5),
            ..Default::default()
        };
        let j = r.to_json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"pubsub\""));
        assert!(j.contains("\"sent\":10,"));
        assert!(j.contains("\"latency_p50_us\":12,"));
        assert!(j.contains("\"latency_p90_us\":null,"));
        assert!(j.contains("\"error_samples\":[\"bad \\\"thing\\\"\\nhere\"]"));
        assert!(j.contains("\"rss_per_connection\":1234.5,"));
        assert!(j.ends_with('}'));
        let back: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(back["error_samples"][0], "bad \"thing\"\nhere");
    }

    #[test]
    fn default_args_parse() {
        let a = BenchArgs::default();
        assert_eq!(a.port, 1883);
        assert_eq!(a.inflight, 1000);
    }
}
