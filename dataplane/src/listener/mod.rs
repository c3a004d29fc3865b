//! Accept loops: take a socket, spawn its connection task at once. The TLS handshake and
//! the WebSocket upgrade run inside the connection task, under the connect timeout.

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
use crate::tls::TlsSource;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Mqtt,
    WebSocket,
    Mqtts,
    Wss,
}

/// Accepts sockets until `shutdown`, spawning one connection task each into `tasks`.
pub async fn run(
    listener: TcpListener,
    kind: ListenerKind,
    broker: Arc<Broker>,
    tls: Option<Arc<TlsSource>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let addr = listener.local_addr().ok();
    info!(?addr, ?kind, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => {
                // Connections notice the shutdown when woken (see `connection::run`).
                broker.wake_all();
                break;
            }
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
        match (kind, &tls) {
            (ListenerKind::Mqtt, _) => {
                tasks.spawn(connection::serve(
                    broker,
                    Transport::Tcp(stream),
                    peer,
                    shutdown,
                ));
            }
            (ListenerKind::WebSocket, _) => {
                tasks.spawn(serve_websocket(broker, stream, peer, shutdown));
            }
            (ListenerKind::Mqtts | ListenerKind::Wss, Some(tls)) => {
                let acceptor = tls.acceptor();
                tasks.spawn(serve_tls(
                    broker,
                    acceptor,
                    stream,
                    peer,
                    kind == ListenerKind::Wss,
                    shutdown,
                ));
            }
            (ListenerKind::Mqtts | ListenerKind::Wss, None) => {
                warn!(
                    ?kind,
                    "TLS listener without a TLS configuration; closing the socket"
                );
            }
        }
    }
    info!(?addr, "listener stopped");
}

/// TLS handshake (and WebSocket upgrade for `wss`) under the connect timeout, then MQTT.
async fn serve_tls(
    broker: Arc<Broker>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    websocket: bool,
    shutdown: CancellationToken,
) {
    let timeout = broker.limits.connect_timeout;
    let started = tokio::time::Instant::now();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            broker.metrics.access.tls_handshake_failures.inc();
            broker.metrics.disconnect("tls_handshake_failed");
            return;
        }
        Err(_) => {
            broker.metrics.disconnect("no_connect");
            return;
        }
    };
    if !websocket {
        let transport = Transport::Tls(Box::new(tls));
        return connection::serve(broker, transport, peer, shutdown).await;
    }
    let left = timeout.saturating_sub(started.elapsed());
    if let Some(ws) = upgrade(&broker, tls, peer, left).await {
        let transport = Transport::WebSocketTls(Box::new(ws));
        connection::serve(broker, transport, peer, shutdown).await;
    }
}

/// The WebSocket upgrade (on `/mqtt`) within `timeout`; `None` when it failed (counted).
async fn upgrade<S>(
    broker: &Broker,
    stream: S,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_tungstenite::WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check_upgrade,
        Some(ws_config(broker)),
    );
    match tokio::time::timeout(timeout, upgrade).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            broker.metrics.disconnect("websocket_upgrade_failed");
            None
        }
        Err(_) => {
            broker.metrics.disconnect("no_connect");
            None
        }
    }
}

/// Bounds what tungstenite buffers to the MQTT packet limit (its defaults are 64 MiB).
fn ws_config(broker: &Broker) -> WebSocketConfig {
    let limit = broker.limits.max_packet_size.saturating_add(16);
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

async fn serve_websocket(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let timeout = broker.limits.connect_timeout;
    if let Some(ws) = upgrade(&broker, stream, peer, timeout).await {
        connection::serve(broker, Transport::WebSocket(Box::new(ws)), peer, shutdown).await;
    }
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
