//! The CoAP gateway of the hub (RFC 7252 over UDP), compatible with EMQX's CoAP gateway so
//! devices built for it work unchanged: `POST|PUT /ps/{topic}` publishes, `GET /ps/{filter}`
//! with Observe subscribes, without Observe reads the retained message. A CoAP client is a
//! client like any other: the same credentials, ACLs, routing and rules as MQTT.
//!
//! - `mod.rs`: the socket, the message layer (de-duplication per peer and message id with
//!   the cached response replayed, pings, ACK/RST of our confirmable messages).
//! - `request.rs`: reading a request (path, query, options) and building responses.
//! - `pubsub.rs`: the resources.
//! - `observer.rs`: observations; one broker session per observing client.
//! - `dtls.rs`: the DTLS transport (port 5684): sessions, PSK and certificate identities.

mod block;
pub mod dtls;
mod metrics;
mod observer;
mod pubsub;
mod request;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use coap_lite::{MessageClass, MessageType, Packet};
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::Broker;
pub use metrics::CoapMetrics;

/// How long a request's message id is remembered (RFC 7252 EXCHANGE_LIFETIME).
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Remembered exchanges at most; beyond, new ones are not de-duplicated (bounded memory).
const MAX_EXCHANGES: usize = 200_000;
/// A request not answered within this gets an empty ACK and a separate response.
const SEPARATE_AFTER: Duration = Duration::from_millis(1_000);
/// The largest datagram read.
const MAX_DATAGRAM: usize = 65_535;

/// The response to one request, kept for duplicates of it.
enum Cached {
    /// Still being handled: a duplicate CON gets an empty ACK.
    InProgress,
    Done(Arc<Vec<u8>>),
}

struct Exchange {
    at: Instant,
    response: Cached,
}

/// How the gateway's datagrams travel.
enum Transport {
    Udp(Arc<UdpSocket>),
    /// DTLS sessions, one per peer (their identities authenticate requests).
    Dtls(Arc<dtls::Sessions>),
}

/// The gateway on one UDP socket, plain or DTLS.
pub struct Gateway {
    pub(crate) broker: Arc<Broker>,
    transport: Transport,
    exchanges: Mutex<HashMap<(SocketAddr, u16), Exchange>>,
    /// Our confirmable messages awaiting ACK (true) or RST (false).
    awaiting: Mutex<HashMap<(SocketAddr, u16), oneshot::Sender<bool>>>,
    next_mid: AtomicU16,
    pub(crate) observers: observer::Registry,
    pub(crate) uploads: block::Uploads,
    pub(crate) tokens: token::Signer,
    pub(crate) metrics: CoapMetrics,
}

impl Gateway {
    /// Binds the socket.
    pub async fn bind(
        addr: SocketAddr,
        broker: Arc<Broker>,
        metrics: CoapMetrics,
        token_secret: &[u8],
    ) -> std::io::Result<Arc<Self>> {
        let socket = UdpSocket::bind(addr).await?;
        info!(%addr, "CoAP gateway on UDP");
        Ok(Self::new(
            Transport::Udp(Arc::new(socket)),
            broker,
            metrics,
            token_secret,
        ))
    }

    fn new(
        transport: Transport,
        broker: Arc<Broker>,
        metrics: CoapMetrics,
        token_secret: &[u8],
    ) -> Arc<Self> {
        Arc::new(Self {
            broker,
            transport,
            exchanges: Mutex::new(HashMap::new()),
            awaiting: Mutex::new(HashMap::new()),
            // A random start, so a restarted hub does not reuse recent ids.
            next_mid: AtomicU16::new(rand::random()),
            observers: observer::Registry::default(),
            uploads: block::Uploads::default(),
            tokens: token::Signer::new(token_secret),
            metrics,
        })
    }

    /// Serves a UDP socket until `stop`; observations end with it.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Transport::Udp(socket) = &self.transport else {
            return;
        };
        let socket = socket.clone();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => self.sweep(),
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => self.datagram(&buf[..n], peer),
                    Err(e) => debug!(error = %e, "CoAP receive failed"),
                },
            }
        }
        self.observers.close_all().await;
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.exchanges
            .lock()
            .retain(|_, e| now.duration_since(e.at) < EXCHANGE_LIFETIME);
        self.uploads.sweep();
        self.observers.sweep();
    }

    pub(crate) fn next_mid(&self) -> u16 {
        self.next_mid.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        match &self.transport {
            Transport::Udp(socket) => {
                if let Err(e) = socket.send_to(bytes, peer).await {
                    debug!(%peer, error = %e, "CoAP send failed");
                }
            }
            Transport::Dtls(sessions) => sessions.send(bytes, peer).await,
        }
    }

    pub(crate) fn is_dtls(&self) -> bool {
        matches!(self.transport, Transport::Dtls(_))
    }

    /// What the peer proved in its DTLS handshake (`None` on plain UDP).
    pub(crate) fn dtls_identity(&self, peer: SocketAddr) -> Option<Arc<dtls::PeerIdentity>> {
        match &self.transport {
            Transport::Udp(_) => None,
            Transport::Dtls(sessions) => sessions.identity(peer),
        }
    }

    /// Sends a confirmable message and waits for its ACK, retransmitting with RFC 7252's
    /// backoff (2-3 s, doubling, 4 retransmissions). Returns false on RST or no answer.
    pub(crate) async fn send_confirmable(&self, bytes: &[u8], mid: u16, peer: SocketAddr) -> bool {
        let (tx, mut rx) = oneshot::channel();
        self.awaiting.lock().insert((peer, mid), tx);
        let mut timeout = Duration::from_millis(2_000 + u64::from(rand::random::<u16>() % 1_000));
        let mut outcome = false;
        for attempt in 0..=observer::MAX_RETRANSMIT {
            if attempt > 0 {
                self.metrics.retransmissions.inc();
            }
            self.send(bytes, peer).await;
            match tokio::time::timeout(timeout, &mut rx).await {
                Ok(Ok(acked)) => {
                    outcome = acked;
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => timeout *= 2,
            }
        }
        self.awaiting.lock().remove(&(peer, mid));
        outcome
    }

    fn datagram(self: &Arc<Self>, bytes: &[u8], peer: SocketAddr) {
        // Another version is silently ignored (RFC 7252 3).
        if bytes.first().is_none_or(|b| b >> 6 != 1) {
            self.metrics.malformed.inc();
            return;
        }
        let parsed = Packet::from_bytes(bytes).and_then(|p| {
            // A payload marker followed by no payload is a format error (RFC 7252 3);
            // coap-lite reads it as an empty payload. Re-encoded, such a message is one
            // byte shorter than what came.
            let marker_only = p.payload.is_empty()
                && bytes.last() == Some(&0xFF)
                && p.to_bytes_unlimited()
                    .is_ok_and(|b| b.len() + 1 == bytes.len());
            if marker_only {
                Err(coap_lite::error::MessageError::InvalidPacketLength)
            } else {
                Ok(p)
            }
        });
        let packet = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.metrics.malformed.inc();
                debug!(%peer, error = ?e, "malformed CoAP datagram");
                // A confirmable message we cannot read is rejected (RFC 7252 4.2).
                if bytes.len() >= 4 && bytes[0] >> 6 == 1 && (bytes[0] >> 4) & 0b11 == 0 {
                    let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
                    let rst = request::reset(mid);
                    let me = self.clone();
                    tokio::spawn(async move { me.send(&rst, peer).await });
                }
                return;
            }
        };
        let mid = packet.header.message_id;
        match (packet.header.get_type(), packet.header.code) {
            (MessageType::Acknowledgement | MessageType::Reset, _) => {
                let acked = packet.header.get_type() == MessageType::Acknowledgement;
                if let Some(tx) = self.awaiting.lock().remove(&(peer, mid)) {
                    let _ = tx.send(acked);
                } else if !acked {
                    // An RST to a NON notification cancels its observation (RFC 7641 3.6).
                    let me = self.clone();
                    tokio::spawn(async move { me.observers.reset(peer, mid).await });
                }
            }
            (MessageType::Confirmable, MessageClass::Empty) => {
                // CoAP ping.
                let rst = request::reset(mid);
                let me = self.clone();
                tokio::spawn(async move { me.send(&rst, peer).await });
            }
            (t, MessageClass::Request(_)) => {
                if let Some(replay) = self.duplicate(peer, mid, t) {
                    self.metrics.duplicates.inc();
                    if !replay.is_empty() {
                        let me = self.clone();
                        tokio::spawn(async move { me.send(&replay, peer).await });
                    }
                    return;
                }
                let me = self.clone();
                tokio::spawn(async move { me.handle(packet, peer).await });
            }
            (MessageType::Confirmable, _) => {
                let rst = request::reset(mid);
                let me = self.clone();
                tokio::spawn(async move { me.send(&rst, peer).await });
            }
            _ => {}
        }
    }

    /// For a request seen before: what to send again (the cached response, or an empty ACK
    /// while it is being handled). Records a new one.
    fn duplicate(&self, peer: SocketAddr, mid: u16, t: MessageType) -> Option<Arc<Vec<u8>>> {
        let mut exchanges = self.exchanges.lock();
        match exchanges.get(&(peer, mid)) {
            Some(Exchange {
                response: Cached::Done(bytes),
                ..
            }) => Some(bytes.clone()),
            Some(_) if t == MessageType::Confirmable => Some(Arc::new(request::empty_ack(mid))),
            Some(_) => Some(Arc::new(Vec::new())),
            None => {
                if exchanges.len() < MAX_EXCHANGES {
                    exchanges.insert(
                        (peer, mid),
                        Exchange {
                            at: Instant::now(),
                            response: Cached::InProgress,
                        },
                    );
                }
                None
            }
        }
    }

    async fn handle(self: Arc<Self>, packet: Packet, peer: SocketAddr) {
        let mid = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let me = self.clone();
        let work = async move { pubsub::handle(&me, packet, peer).await };
        tokio::pin!(work);
        let done = if confirmable {
            tokio::time::timeout(SEPARATE_AFTER, &mut work).await.ok()
        } else {
            Some(work.as_mut().await)
        };
        let Some((bytes, method, code)) = done else {
            // Not answered in time to piggyback (a store waiting for NATS, a sync rule):
            // an empty ACK now stops the client's retransmissions; the response follows
            // in a confirmable message of its own (RFC 7252 5.2.2).
            let ack = Arc::new(request::empty_ack(mid));
            if let Some(e) = self.exchanges.lock().get_mut(&(peer, mid)) {
                e.response = Cached::Done(ack.clone());
            }
            self.send(&ack, peer).await;
            let (bytes, method, code) = work.await;
            self.metrics.request(method, &code);
            let separate_mid = self.next_mid();
            if let Some(separate) = request::separate(&bytes, separate_mid) {
                self.send_confirmable(&separate, separate_mid, peer).await;
            }
            return;
        };
        self.metrics.request(method, &code);
        if let Some(e) = self.exchanges.lock().get_mut(&(peer, mid)) {
            e.response = Cached::Done(bytes.clone());
        }
        if !bytes.is_empty() {
            self.send(&bytes, peer).await;
        }
    }
}

/// Starts the DTLS gateway on `addr` (PSK always; certificates when `cert` is given); it
/// runs until `stop`.
pub async fn start_dtls(
    addr: SocketAddr,
    broker: Arc<Broker>,
    metrics: CoapMetrics,
    token_secret: &[u8],
    cert: Option<dtls::CertSettings>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let sessions = Arc::new(dtls::Sessions::default());
    let gateway = Gateway::new(
        Transport::Dtls(sessions.clone()),
        broker,
        metrics,
        token_secret,
    );
    let serving = dtls::serve(gateway.clone(), sessions, addr, cert, stop.clone()).await?;
    let sweeper = gateway.clone();
    Ok(tokio::spawn(async move {
        let mut sweep = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => sweeper.sweep(),
            }
        }
        let _ = serving.await;
        sweeper.observers.close_all().await;
        warn!("CoAP DTLS gateway stopped");
    }))
}

/// Starts the gateway on `addr`; it runs until `stop`.
pub async fn start(
    addr: SocketAddr,
    broker: Arc<Broker>,
    metrics: CoapMetrics,
    token_secret: &[u8],
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if token_secret.is_empty() {
        info!("no --coap-token-secret: CoAP connection tokens verify on this hub only");
    }
    let gateway = Gateway::bind(addr, broker, metrics, token_secret).await?;
    Ok(tokio::spawn(async move {
        gateway.run(stop).await;
        warn!("CoAP gateway stopped");
    }))
}
