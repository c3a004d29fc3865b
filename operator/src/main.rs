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
use cmq_crds::v1alpha1::{DeviceCredential, TopicAcl};
use tokio_util::sync::CancellationToken;
use tracing::info;
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
    let controllers = [
        tokio::spawn(cluster::run(ctx.clone(), shutdown.clone())),
        tokio::spawn(registry::run::<DeviceCredential>(
            ctx.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(registry::run::<TopicAcl>(ctx.clone(), shutdown.clone())),
    ];
    ready.store(true, Ordering::Release);
    wait_for_signal().await?;
    info!("shutting down: finishing reconciles in progress");
    ready.store(false, Ordering::Release);
    shutdown.cancel();
    for c in controllers {
        let _ = c.await;
    }
    let _ = admin_task.await;
    info!("stopped");
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
