//! Running a hub: listeners, admin endpoint, signal handling and drain, the same for
//! `cmq standalone` (in-memory state) and `cmq hub` (cluster state on NATS).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access::Access;
use crate::admin::{self, AdminState};
use crate::broker::Broker;
use crate::config::HubArgs;
use crate::dispatch::local::{BrokerRepublisher, LocalForwarder};
use crate::dispatch::rules::SinkFactory;
use crate::dispatch::{self, engine::Engine, gate::RemoteGate, metrics::DispatchMetrics};
use crate::listener::{self, ListenerKind};
use crate::manifests;
use crate::metrics::Metrics;
use crate::state::State;
use crate::state::nats::{NatsConfig, NatsState, Router};
use crate::tls::TlsSource;

/// Flags of `cmq standalone`.
#[derive(Args, Debug, Clone)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Flags of `cmq hub`.
#[derive(Args, Debug, Clone)]
pub struct ClusterHubArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "CMQ_NATS_URL")]
    pub nats: String,
    /// Cluster name (`<namespace>_<name>` of the MqttCluster): names the streams and
    /// buckets the hubs share. Letters, digits, '_' and '-'.
    #[arg(long, env = "CMQ_CLUSTER")]
    pub cluster: String,
    /// This hub's id, unique in the cluster (default: the host name, else random).
    #[arg(long, env = "CMQ_HUB_ID")]
    pub hub_id: Option<String>,
    /// Replicas of the streams and buckets this hub creates.
    #[arg(long, env = "CMQ_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Number of message streams; fixed for the life of a cluster.
    #[arg(long, env = "CMQ_MESSAGE_SHARDS", default_value_t = 4)]
    pub shards: u16,
    /// How long stored QoS 1/2 messages are kept for offline sessions, in seconds.
    #[arg(long, env = "CMQ_OFFLINE_RETENTION_SECS", default_value_t = 86_400)]
    pub offline_retention_secs: u64,
}

/// `cmq standalone`: runs until SIGTERM or Ctrl-C, then drains.
pub async fn run_standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    run(args.hub, State::memory(), None, "standalone").await
}

/// `cmq hub`: joins the cluster on NATS, then serves like standalone.
pub async fn run_cluster_hub(args: ClusterHubArgs) -> anyhow::Result<()> {
    let hub_id = args.hub_id.clone().unwrap_or_else(default_hub_id);
    let config = NatsConfig {
        url: args.nats.clone(),
        cluster: args.cluster.clone(),
        hub_id,
        replicas: args.stream_replicas.max(1),
        shards: args.shards.max(1),
        retention: Duration::from_secs(args.offline_retention_secs.max(1)),
    };
    let nats = NatsState::connect(config)
        .await
        .context("cannot join the cluster on NATS")?;
    run(args.hub, nats.state(), Some(nats), "hub").await
}

/// The host name when it is a valid id, else a random one.
pub fn default_hub_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        host
    } else {
        format!("hub-{:08x}", rand::random::<u32>())
    }
}

/// Serves until SIGTERM or Ctrl-C, then drains.
async fn run(
    args: HubArgs,
    state: State,
    nats: Option<Arc<NatsState>>,
    mode: &str,
) -> anyhow::Result<()> {
    let manifests = match &args.manifests {
        Some(dir) => manifests::load(dir)?,
        None => manifests::Manifests::default(),
    };
    let (listeners, limits) = args.resolve(manifests.cluster.as_ref())?;
    let tls_files = args.tls.files()?;
    let tls = match tls_files.clone() {
        Some(files) => Some(TlsSource::load(files).context("cannot set up TLS")?),
        None => None,
    };
    info!(?limits, mode, "starting CMQ");
    let metrics = Arc::new(Metrics::new());
    let access = Arc::new(Access::new(args.auth.flags(), metrics.access.clone()));
    let broker = Broker::new(limits, state, metrics.clone(), access.clone());
    // Watchers of the registry sources and TLS files; stopped last.
    let background = CancellationToken::new();
    let dispatch_metrics = Arc::new(DispatchMetrics::new());
    // The standalone rule engine: stopped once the connections are gone.
    let engine_stop = CancellationToken::new();
    let engine_tasks = TaskTracker::new();
    let mut factory = None;
    let sync_timeout = Duration::from_millis(args.sync_timeout_ms.max(1));
    match &nats {
        None => {
            let engine = Arc::new(Engine::new(dispatch_metrics.clone(), mode));
            let republisher = Arc::new(BrokerRepublisher(Arc::downgrade(&broker)));
            let sinks = Arc::new(SinkFactory::new(
                dispatch_metrics.clone(),
                None,
                republisher,
            ));
            let forwarder = LocalForwarder::start(
                engine.clone(),
                sync_timeout,
                engine_stop.clone(),
                &engine_tasks,
            );
            broker.set_forwarder(forwarder);
            let (rules_tx, rules_rx) = tokio::sync::watch::channel(Some(manifests.stored_rules()));
            let (reports_tx, _) = tokio::sync::watch::channel(Vec::new());
            tokio::spawn(dispatch::follow(
                sinks.clone(),
                engine,
                rules_rx,
                reports_tx,
                background.clone(),
            ));
            factory = Some(sinks);
            if let Some(dir) = &args.manifests {
                broker.update_access(manifests::access_inputs(&manifests)?);
                let every = Duration::from_millis(args.manifests_reload_ms);
                tokio::spawn(manifests::watch(
                    dir.clone(),
                    every,
                    broker.clone(),
                    rules_tx,
                    background.clone(),
                ));
            }
        }
        Some(nats) => {
            let router: Arc<dyn Router> = broker.clone();
            nats.attach(Arc::downgrade(&router));
            let auth = manifests
                .cluster
                .as_ref()
                .map(|c| c.spec.auth.clone())
                .unwrap_or_default();
            let weak = Arc::downgrade(&broker);
            let apply: crate::state::nats::registry::Apply = Arc::new(move |inputs| {
                if let Some(b) = weak.upgrade() {
                    b.update_access(inputs);
                }
            });
            let cluster_secret: Arc<[u8]> =
                Arc::from(args.coap_token_secret.as_deref().unwrap_or("").as_bytes());
            nats.watch_registry(
                auth,
                cluster_secret,
                apply,
                metrics.access.clone(),
                background.clone(),
            )
            .await
            .context("cannot read the registry from NATS KV")?;
            // `sync` ForwardRules: which publishes wait for the dispatchers.
            let config = nats.config();
            let store =
                dispatch::rules_watch::open(nats.jetstream(), &config.cluster, config.replicas)
                    .await
                    .map_err(anyhow::Error::msg)?;
            let (rules_tx, mut rules_rx) = tokio::sync::watch::channel(None);
            tokio::spawn(dispatch::rules_watch::follow(
                store,
                rules_tx,
                background.clone(),
            ));
            tokio::time::timeout(Duration::from_secs(30), rules_rx.wait_for(Option::is_some))
                .await
                .context("timed out reading the rules bucket")?
                .context("rules watch ended")?;
            let names = crate::state::nats::Names::new(&config.cluster, &config.hub_id)?;
            let gate = RemoteGate::start(
                nats.client().clone(),
                names,
                sync_timeout + Duration::from_secs(1),
                rules_rx,
                background.clone(),
            );
            broker.set_forwarder(gate);
        }
    }
    if access.snapshot().allow_anonymous {
        warn!("anonymous clients are allowed (no DeviceCredential, or allowAnonymous set)");
    }
    if let Some(tls) = &tls {
        tokio::spawn(
            tls.clone()
                .watch(metrics.access.clone(), background.clone()),
        );
    }
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (addr, kind) in [
        (listeners.mqtt, ListenerKind::Mqtt),
        (listeners.websocket, ListenerKind::WebSocket),
        (listeners.mqtts, ListenerKind::Mqtts),
        (listeners.wss, ListenerKind::Wss),
    ] {
        let Some(addr) = addr else { continue };
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({kind:?})"))?;
        servers.push(tokio::spawn(listener::run(
            socket,
            kind,
            broker.clone(),
            tls.clone(),
            shutdown.clone(),
            tasks.clone(),
        )));
    }
    let coap = match listeners.coap {
        Some(addr) => Some(
            crate::coap::start(
                addr,
                broker.clone(),
                metrics.coap.clone(),
                args.coap_token_secret.as_deref().unwrap_or("").as_bytes(),
                shutdown.clone(),
            )
            .await
            .with_context(|| format!("cannot listen on {addr} (CoAP, UDP)"))?,
        ),
        None => None,
    };
    let coaps = match listeners.coaps {
        Some(addr) => {
            let cert = match &tls_files {
                Some(files) => match crate::coap::dtls::CertSettings::load(files) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warn!(error = %e, "CoAP over DTLS serves pre-shared keys only");
                        None
                    }
                },
                None => None,
            };
            Some(
                crate::coap::start_dtls(
                    addr,
                    broker.clone(),
                    metrics.coap.clone(),
                    args.coap_token_secret.as_deref().unwrap_or("").as_bytes(),
                    cert,
                    shutdown.clone(),
                )
                .await
                .with_context(|| format!("cannot listen on {addr} (CoAP, DTLS)"))?,
            )
        }
        None => None,
    };
    let admin_shutdown = CancellationToken::new();
    let admin_task = match listeners.admin {
        Some(addr) => {
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            info!(%addr, "admin endpoint on /metrics, /healthz, /readyz");
            let page: Arc<dyn admin::Render> = match &nats {
                None => Arc::new(admin::Both(metrics.clone(), dispatch_metrics.clone())),
                Some(_) => metrics.clone(),
            };
            let state = AdminState {
                metrics: page,
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
    ready.store(true, Ordering::Release);
    wait_for_signal().await?;
    // Readiness fails first so a load balancer stops sending new clients.
    ready.store(false, Ordering::Release);
    info!(
        connections = broker.connection_count(),
        "shutting down: disconnecting clients (MQTT 5 reason 0x8B)"
    );
    shutdown.cancel();
    broker.wake_all();
    for s in servers {
        let _ = s.await;
    }
    for c in [coap, coaps].into_iter().flatten() {
        let _ = c.await;
    }
    tasks.close();
    // A spread drain needs its whole period, whatever the timeout says.
    let drain = Duration::from_millis(args.drain_timeout_ms)
        .max(Duration::from_millis(args.drain_period_ms) + Duration::from_secs(1));
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(
            left = tasks.len(),
            "drain timeout passed with connections still closing"
        );
    }
    broker.shutdown().await;
    // Messages already handed to the rule engine get their writes finished (bounded).
    engine_stop.cancel();
    engine_tasks.close();
    if tokio::time::timeout(drain, engine_tasks.wait())
        .await
        .is_err()
    {
        warn!("drain timeout passed with forward rule writes in flight");
    }
    if let Some(factory) = &factory {
        for producer in factory.kafka_producers() {
            producer.flush(Duration::from_secs(5));
        }
    }
    background.cancel();
    if let Some(nats) = &nats {
        nats.close().await;
    }
    admin_shutdown.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => {
            r.context("cannot listen for Ctrl-C")?;
            info!("interrupt received");
        }
    }
    Ok(())
}
