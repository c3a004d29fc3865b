//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (listeners are up and the hub is not draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Something with Prometheus text to show.
pub trait Render: Send + Sync {
    fn render(&self) -> String;
}

impl Render for crate::metrics::Metrics {
    fn render(&self) -> String {
        crate::metrics::Metrics::render(self)
    }
}

impl Render for crate::dispatch::metrics::DispatchMetrics {
    fn render(&self) -> String {
        crate::dispatch::metrics::DispatchMetrics::render(self)
    }
}

/// Several metric sets on one page (standalone: the hub's and the rule engine's).
pub struct Both(pub Arc<dyn Render>, pub Arc<dyn Render>);

impl Render for Both {
    fn render(&self) -> String {
        let first = self.0.render();
        // One OpenMetrics page ends with one "# EOF".
        let head = first.strip_suffix("# EOF\n").unwrap_or(&first);
        format!("{head}{}", self.1.render())
    }
}

/// What the admin endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<dyn Render>,
    pub ready: Arc<AtomicBool>,
}

/// Serves the admin endpoint until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
