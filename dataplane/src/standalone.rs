//! `cmq standalone`: the hub with in-memory state in one process, for a first run, a
//! laptop, or an edge box.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::broker::Broker;
use crate::config::HubArgs;
use crate::listener::{self, ListenerKind};
use crate::manifests;
use crate::metrics::Metrics;
use crate::state::State;

/// Flags of `cmq standalone`.
#[derive(Args, Debug, Clone)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub hub: HubArgs,
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let manifests = match &args.hub.manifests {
        Some(dir) => manifests::load(dir)?,
        None => manifests::Manifests::default(),
    };
    let (listeners, limits) = args.hub.resolve(manifests.cluster.as_ref())?;
    info!(?limits, "starting CMQ standalone");
    warn!("no device credentials are configured: anonymous clients are allowed");
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::new(limits, State::memory(), metrics.clone());
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (addr, kind) in [
        (listeners.mqtt, ListenerKind::Mqtt),
        (listeners.websocket, ListenerKind::WebSocket),
    ] {
        let Some(addr) = addr else { continue };
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({kind:?})"))?;
        servers.push(tokio::spawn(listener::run(
            socket,
            kind,
            broker.clone(),
            shutdown.clone(),
            tasks.clone(),
        )));
    }
    let admin_shutdown = CancellationToken::new();
    let admin_task = match listeners.admin {
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
    ready.store(true, Ordering::Release);
    wait_for_signal().await?;
    // Readiness fails first so a load balancer stops sending new clients.
    ready.store(false, Ordering::Release);
    info!(
        connections = broker.connection_count(),
        "shutting down: disconnecting clients (MQTT 5 reason 0x8B)"
    );
    shutdown.cancel();
    for s in servers {
        let _ = s.await;
    }
    tasks.close();
    let drain = Duration::from_millis(args.hub.drain_timeout_ms);
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        warn!(
            left = tasks.len(),
            "drain timeout passed with connections still closing"
        );
    }
    broker.shutdown().await;
    admin_shutdown.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
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
