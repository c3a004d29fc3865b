//! `cmq-operator`: reconciles CMQ's custom resources. Thin: flags, the API client, the
//! controllers, an admin endpoint, and a graceful stop on SIGTERM.

mod cluster;
mod context;
mod error;
mod metrics;
mod nats;
mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use cmq_crds::v1alpha1::{DeviceCredential, ForwardRule, TopicAcl};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Field manager of every server-side apply, and the Event reporter.
pub const FIELD_MANAGER: &str = "cmq-operator";

#[derive(Parser, Debug)]
#[command(name = "cmq-operator", version, about = "CMQ's Kubernetes operator")]
struct Args {
    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "CMQ_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    admin_listen: SocketAddr,
    /// Reconcile only while holding the `cmq-operator` Lease (several replicas: one leads).
    #[arg(long, env = "CMQ_OPERATOR_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Namespace of the Lease (the chart sets the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
}

#[derive(Clone)]
struct Admin {
    ctx: Arc<context::Context>,
    ready: Arc<AtomicBool>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // Few blocking threads: argon2 (19 MiB per hash) runs on them, and every thread that
    // ever ran one keeps its malloc arena's memory; one per core bounds that.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores.max(2))
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API")?;
    let ctx = Arc::new(context::Context::new(client, metrics::Metrics::new()));
    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Router::new()
        .route(
            "/metrics",
            get(|State(a): State<Admin>| async move { a.ctx.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(a): State<Admin>| async move {
                if a.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(Admin {
            ctx: ctx.clone(),
            ready: ready.clone(),
        });
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let admin_stop = shutdown.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(listener, admin)
            .with_graceful_shutdown(async move { admin_stop.cancelled().await })
            .await
    });
    info!(admin = %args.admin_listen, "cmq-operator starting");
    // Leader election: wait for the Lease (or SIGTERM) before reconciling anything.
    let mut leadership = None;
    if args.leader_election {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("cmq-operator-{}", std::process::id()));
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), FIELD_MANAGER)
                .with_namespace(&args.lease_namespace)
                .with_identity(&identity)
                .with_duration(15)
                .with_grace(5)
                .with_field_manager(FIELD_MANAGER)
                .build()
                .await
                .context("cannot set up leader election")?;
        let (mut leader, _task) = manager.watch().await;
        info!(identity, lease_namespace = %args.lease_namespace, "waiting for the leader Lease");
        let signal = wait_for_signal();
        tokio::pin!(signal);
        while !*leader.borrow_and_update() {
            tokio::select! {
                r = &mut signal => {
                    r?;
                    shutdown.cancel();
                    let _ = admin_task.await;
                    return Ok(());
                }
                changed = leader.changed() => changed.context("leader election stopped")?,
            }
        }
        info!(identity, "leading");
        leadership = Some(leader);
    }
    let controllers = [
        tokio::spawn(cluster::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(registry::run::<DeviceCredential>(
            ctx.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(registry::run::<TopicAcl>(ctx.clone(), shutdown.clone())),
        tokio::spawn(registry::run::<ForwardRule>(ctx.clone(), shutdown.clone())),
    ];
    ready.store(true, Ordering::Release);
    let lost = async {
        match leadership.as_mut() {
            Some(l) => loop {
                if l.changed().await.is_err() || !*l.borrow_and_update() {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    let mut lost_leadership = false;
    tokio::select! {
        r = wait_for_signal() => r?,
        _ = lost => {
            // Another replica may lead now: stop at once, the pod restarts and rejoins.
            warn!("lost the leader Lease; stopping");
            lost_leadership = true;
        }
    }
    info!("shutting down: finishing reconciles in progress");
    ready.store(false, Ordering::Release);
    shutdown.cancel();
    // Bounded: a reconcile stuck on an unreachable NATS must not hold the pod past its
    // grace period (the next leader redoes whatever was left).
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        for c in controllers {
            let _ = c.await;
        }
    })
    .await;
    if drained.is_err() {
        warn!("reconciles still running after 10 s; stopping anyway");
    }
    let _ = admin_task.await;
    drop(leadership);
    info!("stopped");
    if lost_leadership {
        anyhow::bail!("lost the leader Lease");
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
    }
    Ok(())
}
