//! `cmq dispatch`: a dispatch process of a cluster. It reads the rules from the
//! `cmq_<c>_rules` bucket, takes QoS 1/2 messages from the message streams through one
//! durable pull consumer per shard (shared by every dispatcher, so their count is fixed
//! by the deployment, not the fleet), takes QoS 0 messages from the dispatch feed through a
//! queue subscription, answers the hubs' `sync` requests, and reports per-rule counts.

mod consume;
mod report;
mod republish;
mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use clap::Args;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::engine::Engine;
use super::metrics::DispatchMetrics;
use super::rules::SinkFactory;
use crate::admin::{self, AdminState};
use crate::state::nats::Names;

/// Flags of `cmq dispatch`.
#[derive(Args, Debug, Clone)]
pub struct DispatchArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "CMQ_NATS_URL")]
    pub nats: String,
    /// Cluster name (`<namespace>_<name>` of the MqttCluster), as given to the hubs.
    #[arg(long, env = "CMQ_CLUSTER")]
    pub cluster: String,
    /// This dispatcher's id, unique in the cluster (default: the host name, else random).
    #[arg(long, env = "CMQ_DISPATCHER_ID")]
    pub dispatcher_id: Option<String>,
    /// Number of message streams, as given to the hubs.
    #[arg(long, env = "CMQ_MESSAGE_SHARDS", default_value_t = 4)]
    pub shards: u16,
    /// Replicas of the buckets this process creates.
    #[arg(long, env = "CMQ_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Admin HTTP address: /metrics, /healthz, /readyz ("off" disables it).
    #[arg(long, env = "CMQ_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: String,
    /// Messages whose sinks are awaited at once, per process.
    #[arg(long, env = "CMQ_DISPATCH_IN_FLIGHT", default_value_t = 10_000)]
    pub in_flight: usize,
    /// How long a `sync` rule may take before the publish is refused, in milliseconds.
    #[arg(long, env = "CMQ_SYNC_TIMEOUT_MS", default_value_t = 5_000)]
    pub sync_timeout_ms: u64,
    /// How long librdkafka keeps trying one record before it counts as failed (ms).
    #[arg(long, env = "CMQ_KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 60_000)]
    pub kafka_message_timeout_ms: u64,
    /// How long a SIGTERM waits for writes in flight before leaving them to another
    /// dispatcher (their messages are not acknowledged, so they come again), in ms.
    #[arg(long, env = "CMQ_DRAIN_TIMEOUT_MS", default_value_t = 20_000)]
    pub drain_timeout_ms: u64,
}

/// Shared by the tasks of one dispatcher.
pub(crate) struct Ctx {
    pub engine: Arc<Engine>,
    pub names: Names,
    pub cluster: String,
    pub id: String,
    /// Messages awaited at once per source (each shard's consumer, the QoS 0 feed).
    pub in_flight_per_source: usize,
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: DispatchArgs) -> anyhow::Result<()> {
    let id = args
        .dispatcher_id
        .clone()
        .unwrap_or_else(crate::server::default_hub_id);
    let names = Names::new(&args.cluster, &id).context("invalid cluster name or dispatcher id")?;
    let client = async_nats::ConnectOptions::new()
        .name(format!("cmq-dispatch {id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(crate::state::nats::servers(&args.nats)?)
        .await
        .context("cannot connect to NATS")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());
    let metrics = Arc::new(DispatchMetrics::new());
    let engine = Arc::new(Engine::new(metrics.clone(), &id));
    let republisher = Arc::new(republish::NatsRepublisher::new(
        client.clone(),
        js.clone(),
        names.clone(),
        args.shards.max(1),
    ));
    let mut factory = SinkFactory::new(metrics.clone(), Some(client.clone()), republisher);
    factory.kafka_message_timeout = Duration::from_millis(args.kafka_message_timeout_ms);
    let factory = Arc::new(factory);

    let stop = CancellationToken::new();
    let background = CancellationToken::new();
    let store = super::rules_watch::open(&js, &args.cluster, args.stream_replicas)
        .await
        .map_err(anyhow::Error::msg)?;
    let (rules_tx, mut rules_rx) = watch::channel(None);
    tokio::spawn(super::rules_watch::follow(
        store,
        rules_tx,
        background.clone(),
    ));
    // Rules first, so the first messages meet them.
    tokio::time::timeout(Duration::from_secs(30), rules_rx.wait_for(Option::is_some))
        .await
        .context("timed out reading the rules bucket")?
        .context("rules watch ended")?;
    let (reports_tx, reports_rx) = watch::channel(Vec::new());
    tokio::spawn(super::follow(
        factory.clone(),
        engine.clone(),
        rules_rx,
        reports_tx,
        background.clone(),
    ));

    let ctx = Arc::new(Ctx {
        engine: engine.clone(),
        names,
        cluster: args.cluster.clone(),
        id: id.clone(),
        in_flight_per_source: (args.in_flight / (usize::from(args.shards.max(1)) + 1)).max(64),
        tasks: TaskTracker::new(),
        stop: stop.clone(),
    });
    // Each source's task stops taking messages on `stop`, then finishes its writes in
    // flight; `tasks` tracks them (and the sync requests being answered).
    for shard in 0..args.shards.max(1) {
        ctx.tasks
            .spawn(consume::stored(ctx.clone(), js.clone(), shard));
    }
    ctx.tasks.spawn(consume::live(ctx.clone(), client.clone()));
    ctx.tasks.spawn(service::sync_requests(
        ctx.clone(),
        client.clone(),
        Duration::from_millis(args.sync_timeout_ms),
    ));
    tokio::spawn(report::publish(
        js.clone(),
        args.cluster.clone(),
        args.stream_replicas,
        id.clone(),
        engine.clone(),
        reports_rx,
        background.clone(),
    ));

    let ready = Arc::new(AtomicBool::new(true));
    let admin_shutdown = CancellationToken::new();
    let admin_task = match crate::config::parse_listen("--admin-listen", &args.admin_listen)? {
        Some(addr) => {
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            info!(%addr, "admin endpoint on /metrics, /healthz, /readyz");
            let state = AdminState {
                metrics: metrics.clone(),
                ready: ready.clone(),
            };
            Some(tokio::spawn(admin::serve(
                socket,
                state,
                admin_shutdown.clone(),
            )))
        }
        None => None,
    };
    info!(cluster = %args.cluster, dispatcher = %id, shards = args.shards, "dispatching");

    crate::server::wait_for_signal().await?;
    ready.store(false, Ordering::Release);
    info!("shutting down: no new messages; waiting for the writes in flight");
    stop.cancel();
    ctx.tasks.close();
    let drain = Duration::from_millis(args.drain_timeout_ms);
    if tokio::time::timeout(drain, ctx.tasks.wait()).await.is_err() {
        warn!(
            left = ctx.tasks.len(),
            "drain timeout: unacknowledged messages go to another dispatcher"
        );
    }
    for producer in factory.kafka_producers() {
        producer.flush(Duration::from_secs(5));
    }
    if let Err(e) = client.flush().await {
        warn!(error = %e, "NATS flush failed");
    }
    background.cancel();
    admin_shutdown.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}
