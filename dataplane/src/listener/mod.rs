//! Accept loops: take a socket, spawn its connection task at once. TLS-free for now; the
//! WebSocket upgrade runs inside the connection task, under the connect timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::connection::{self, Transport};

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Mqtt,
    WebSocket,
}

/// Accepts sockets until `shutdown`, spawning one connection task each into `tasks`.
pub async fn run(
    listener: TcpListener,
    kind: ListenerKind,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, ?kind, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        broker.metrics.connections_accepted.inc();
        // Batching is done per wake-up by the connection; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        // Two spawns rather than one `match` inside a task: a task is as large as its largest
        // branch, and the WebSocket handshake would make every TCP connection pay for it.
        match kind {
            ListenerKind::Mqtt => {
                tasks.spawn(connection::serve(
                    broker,
                    Transport::Tcp(stream),
                    peer,
                    shutdown,
                ));
            }
            ListenerKind::WebSocket => {
                tasks.spawn(serve_websocket(broker, stream, peer, shutdown));
            }
        }
    }
    info!(?addr, "listener stopped");
}

async fn serve_websocket(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let timeout = broker.limits.connect_timeout;
    // Bound what tungstenite buffers to the MQTT packet limit (its defaults are 64 MiB).
    let limit = broker.limits.max_packet_size.saturating_add(16);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(config));
    let ws = match tokio::time::timeout(timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            broker.metrics.disconnect("websocket_upgrade_failed");
            return;
        }
        Err(_) => {
            broker.metrics.disconnect("no_connect");
            return;
        }
    };
    connection::serve(broker, Transport::WebSocket(Box::new(ws)), peer, shutdown).await;
}

/// Accepts upgrades on `/mqtt` and selects the `mqtt` subprotocol when offered.
#[allow(clippy::result_large_err)] // The signature is tungstenite's callback type.
fn check_upgrade(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != "/mqtt" {
        let mut err = ErrorResponse::new(Some("MQTT is served on /mqtt".into()));
        *err.status_mut() = StatusCode::NOT_FOUND;
        return Err(err);
    }
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"));
    if let Some(p) = offered
        && let Ok(value) = HeaderValue::from_str(p)
    {
        resp.headers_mut().insert("Sec-WebSocket-Protocol", value);
    }
    Ok(resp)
}
