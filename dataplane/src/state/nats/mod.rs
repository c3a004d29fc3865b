//! Cluster state on NATS JetStream: every hub of a cluster shares sessions, retained
//! messages and routing through one NATS deployment (see docs/architecture.md, "Cluster
//! mode").
//!
//! - QoS 1/2 messages are stored once, in one of `shards` streams chosen by topic hash; the
//!   stream republishes each to the live subject with its sequence. Sessions keep a cursor
//!   per shard and replay what they missed with direct gets: no consumer per session.
//! - QoS 0 messages go to the live subjects directly.
//! - Each hub holds one core subscription per distinct filter of its own sessions (a queue
//!   subscription per shared-subscription group).
//! - Session records live in a KV bucket, written with compare-and-swap and an owner epoch:
//!   a hub whose write fails has lost the session and drops its connection.

mod bus;
pub(crate) mod codec;
pub mod names;
mod presence;
pub mod registry;
mod retained;
mod sessions;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{State, StateError};
use crate::broker::will::Will;
pub use names::Names;

/// How a hub joins a cluster.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub cluster: String,
    pub hub_id: String,
    /// Replicas of every stream and bucket the hub creates.
    pub replicas: usize,
    /// Number of message streams (fixed for the life of a cluster).
    pub shards: u16,
    /// How long stored messages are kept for offline sessions.
    pub retention: Duration,
}

/// What the bus hands to the hub: messages for its sessions and takeover requests.
pub trait Router: Send + Sync {
    /// The messages of one NATS message (one, or a stored batch's, in order) that arrived
    /// through the subscription for `filter` (full filter text).
    fn route_remote(&self, filter: Arc<str>, messages: codec::Messages) -> BoxFuture<'_, ()>;
    /// Another hub takes the session of `client_id` over: close its connection here and
    /// resolve once its state is saved. Returns whether a connection was closed.
    fn evict(&self, client_id: String) -> BoxFuture<'_, bool>;
    /// The link to NATS came back (or a subscription overflowed): live messages may have
    /// been lost, so sessions catch up from their cursors.
    fn resync(&self);
    /// A session released from a dead hub: fire its will (the crash closed its connection
    /// abnormally) and run its expiry timer here.
    /// `elapsed`: seconds since the session was released (0 for a connection of a crash).
    fn adopt_orphan(&self, client_id: String, will: Option<Will>, expiry: u32, elapsed: u32);
    /// Connections the hub holds now (reported with its heartbeat, for the operator).
    fn connections(&self) -> usize {
        0
    }
}

/// The NATS implementation of the state traits.
pub struct NatsState {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    config: NatsConfig,
    msgs: Vec<stream::Stream>,
    retained: stream::Stream,
    sessions: kv::Store,
    hubs: stream::Stream,
    owners: stream::Stream,
    /// Whether this hub has recorded itself as a member.
    member: std::sync::atomic::AtomicBool,
    router: OnceLock<Weak<dyn Router>>,
    bus: bus::Interests,
    owned: sessions::Owned,
    retained_count: std::sync::atomic::AtomicUsize,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn unavailable(action: &'static str, e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable {
        action,
        reason: e.to_string(),
    }
}

impl NatsState {
    /// Connects, creates (or verifies) the cluster's streams and buckets, and starts the
    /// hub's control subscription.
    pub async fn connect(config: NatsConfig) -> Result<Arc<Self>, StateError> {
        let names = Names::new(&config.cluster, &config.hub_id)
            .map_err(|e| unavailable("checking the cluster name", e))?;
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("cmq-hub {}", config.hub_id))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    match &event {
                        async_nats::Event::Connected => info!("NATS connected"),
                        async_nats::Event::Disconnected => warn!("NATS disconnected"),
                        other => info!(event = %other, "NATS event"),
                    }
                    let _ = events.send(event);
                }
            })
            .connect(servers(&config.url)?)
            .await
            .map_err(|e| unavailable("connecting to NATS", format!("{e} ({e:?})")))?;
        // A publish that NATS does not acknowledge in time is refused to the client (which
        // sends it again) rather than acknowledged and possibly lost.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .ack_timeout(Duration::from_secs(5))
            .build(client.clone());
        // A NATS cluster that is still electing leaders (a fresh or recovering deployment)
        // times requests out: keep trying for a while before giving up.
        let mut attempt = 0u32;
        let (msgs, retained, sessions, hubs, owners) = loop {
            match create_all(&js, &names, &config).await {
                Ok(all) => break all,
                Err(e) if attempt < 12 => {
                    attempt += 1;
                    warn!(error = %e, attempt, "cannot set up the cluster's streams yet; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(5)))).await;
                }
                Err(e) => return Err(e),
            }
        };
        let state = Arc::new(Self {
            client,
            js,
            names,
            config,
            msgs,
            retained,
            sessions,
            hubs,
            owners,
            member: std::sync::atomic::AtomicBool::new(false),
            router: OnceLock::new(),
            bus: bus::Interests::default(),
            owned: sessions::Owned::default(),
            retained_count: std::sync::atomic::AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        state.start_control().await?;
        state.start_retained_counter();
        state.start_presence();
        state.reap_previous_run();
        state.start_event_watch(events);
        info!(
            cluster = %state.config.cluster,
            hub = %state.config.hub_id,
            shards = state.config.shards,
            replicas = state.config.replicas,
            "joined the cluster"
        );
        Ok(state)
    }

    /// The state bundle for a hub.
    pub fn state(self: &Arc<Self>) -> State {
        State {
            retained: self.clone(),
            sessions: self.clone(),
            bus: self.clone(),
        }
    }

    /// Connects the bus to the hub it delivers to.
    pub fn attach(&self, router: Weak<dyn Router>) {
        let _ = self.router.set(router);
    }

    fn router(&self) -> Option<Arc<dyn Router>> {
        self.router.get().and_then(Weak::upgrade)
    }

    /// The NATS connection (shared with the hub's `sync` gate).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The cluster and hub names.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Stops the hub's subscriptions and flushes what is pending.
    pub async fn close(&self) {
        self.leave().await;
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            task.abort();
        }
        if let Err(e) = self.client.flush().await {
            warn!(error = %e, "could not flush NATS at shutdown");
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Turns NATS link events into catch-ups: after a reconnect or a slow-consumer drop,
    /// messages of the live feed may be missing.
    fn start_event_watch(
        self: &Arc<Self>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            let mut lost_link = false;
            while let Some(event) = events.recv().await {
                let resync = match event {
                    async_nats::Event::Disconnected => {
                        lost_link = true;
                        false
                    }
                    async_nats::Event::Connected => std::mem::take(&mut lost_link),
                    async_nats::Event::SlowConsumer(_) => true,
                    _ => false,
                };
                if resync && let Some(router) = weak.upgrade().and_then(|s| s.router()) {
                    router.resync();
                }
            }
        });
    }

    /// Keeps the retained-message count for the metric (a count needs a stream info call,
    /// too costly per publish).
    fn start_retained_counter(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(state) = weak.upgrade() else { return };
                if let Ok(info) = state.retained.get_info().await {
                    state.retained_count.store(
                        usize::try_from(info.state.messages).unwrap_or(usize::MAX),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            }
        });
    }
}

type Streams = (
    Vec<stream::Stream>,
    stream::Stream,
    kv::Store,
    stream::Stream,
    stream::Stream,
);

/// Creates or verifies every stream and bucket of the cluster.
async fn create_all(
    js: &jetstream::Context,
    names: &Names,
    config: &NatsConfig,
) -> Result<Streams, StateError> {
    let mut msgs = Vec::with_capacity(usize::from(config.shards));
    for shard in 0..config.shards {
        let cfg = stream::Config {
            name: names.msgs_stream(shard),
            subjects: vec![names.stored_wildcard(shard)],
            retention: stream::RetentionPolicy::Limits,
            max_age: config.retention,
            num_replicas: config.replicas,
            allow_direct: true,
            allow_message_ttl: true,
            discard: stream::DiscardPolicy::Old,
            republish: Some(stream::Republish {
                source: names.stored_wildcard(shard),
                destination: names.live_wildcard(shard),
                headers_only: false,
            }),
            ..Default::default()
        };
        msgs.push(ensure_stream(js, cfg).await?);
    }
    let retained = ensure_stream(
        js,
        stream::Config {
            name: names.retained_stream(),
            subjects: vec![names.retained_wildcard()],
            max_messages_per_subject: 1,
            num_replicas: config.replicas,
            allow_direct: true,
            allow_message_ttl: true,
            ..Default::default()
        },
    )
    .await?;
    let sessions = match js.get_key_value(names.sessions_bucket()).await {
        Ok(store) => store,
        Err(_) => js
            .create_or_update_key_value(kv::Config {
                bucket: names.sessions_bucket(),
                history: 1,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("creating the sessions bucket", e))?,
    };
    let (hubs, owners) = presence::create_streams(js, names, config.replicas).await?;
    Ok((msgs, retained, sessions, hubs, owners))
}

/// The servers of a comma-separated URL list.
pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, StateError> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse()
                .map_err(|e| unavailable("reading the NATS URL", format!("{u:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(unavailable("reading the NATS URL", "no server given"));
    }
    Ok(servers)
}

/// Creates a stream, or checks and updates an existing one to `config` (so a new hub
/// version or a replica change applies; creating twice is harmless).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, StateError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| unavailable("reading a stream", e))?;
            let current = &info.config;
            if current.subjects != config.subjects
                || current.num_replicas != config.num_replicas
                || current.max_age != config.max_age
                || current.republish != config.republish
            {
                info!(stream = %name, "updating the stream configuration");
                js.update_stream(&config)
                    .await
                    .map_err(|e| unavailable("updating a stream", e))?;
            }
            Ok(existing)
        }
        Err(_) => js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("creating a stream", e)),
    }
}
