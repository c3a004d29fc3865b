//! One MQTT connection: handshake, then one `select!` over shutdown, takeover, inbound
//! bytes, the session's mailbox and the keep-alive timer. Outgoing packets of one wake-up
//! are batched into one buffer and written with one syscall.

mod access;
mod handshake;
mod inbound;
mod outbound;
mod stores;
mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mqttbytes::v5::{Disconnect, DisconnectProperties, DisconnectReasonCode, Packet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::{Broker, Claim, Delivery, Will};
use crate::codec::{self, DecodeError, ProtocolVersion};

pub use handshake::{Refused, handshake};
pub use transport::Transport;

/// Flush the write buffer once it holds this much, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;

/// Cluster mode: how often a session's cursors advance, and how many ticks between
/// checkpoints of a persistent session's record.
const TRACKING_TICK: Duration = Duration::from_secs(1);
const CHECKPOINT_TICKS: u32 = 2;

/// How long a write may block when the client has no keep-alive.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection ended.
#[derive(Debug)]
pub enum Exit {
    /// DISCONNECT from the client; `will` for reason 0x04.
    ClientDisconnect { will: bool },
    /// The socket closed or failed without DISCONNECT.
    Closed,
    /// Another connection took the session over.
    TakenOver,
    /// The hub is shutting down.
    Shutdown,
    /// The hub is draining and sends its clients to another server (MQTT 5 0x9C).
    Moved,
    /// Nothing arrived within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The credential was disabled or deleted, or a denied publish closes the connection.
    NotAuthorized,
    /// The client broke the protocol; the reason code says how.
    Violation {
        code: DisconnectReasonCode,
        why: String,
    },
}

impl Exit {
    fn label(&self) -> &'static str {
        match self {
            Self::ClientDisconnect { .. } => "client_disconnect",
            Self::Closed => "closed",
            Self::TakenOver => "taken_over",
            Self::Shutdown | Self::Moved => "shutdown",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::NotAuthorized => "not_authorized",
            Self::Violation { .. } => "protocol_violation",
        }
    }

    /// The DISCONNECT reason the server sends (MQTT 5 only), if any.
    fn server_reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            Self::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            Self::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            Self::Moved => Some(DisconnectReasonCode::UseAnotherServer),
            Self::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            Self::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
            Self::Violation { code, .. } => Some(*code),
            Self::ClientDisconnect { .. } | Self::Closed => None,
        }
    }

    fn violation(code: DisconnectReasonCode, why: impl Into<String>) -> Self {
        Self::Violation {
            code,
            why: why.into(),
        }
    }

    fn from_decode(e: &DecodeError) -> Self {
        let code = match e {
            DecodeError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            DecodeError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => DisconnectReasonCode::ProtocolError,
        };
        Self::violation(code, e.to_string())
    }
}

/// Serves one accepted socket until it closes.
///
/// Not an `async fn`: its arguments would be kept in the task next to the connection's own
/// copies. Every connection is one task of this future's size, idle ones included.
///
/// A waiting connection notices `shutdown` only when woken: whoever cancels it must then
/// call `Broker::wake_all` (the listeners and the server do).
pub fn serve(
    broker: Arc<Broker>,
    transport: Transport,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let span = info_span!("connection", %peer, transport = transport.kind(), client_id = tracing::field::Empty, protocol = tracing::field::Empty);
    serve_traced(broker, transport, peer, shutdown).instrument(span)
}

async fn serve_traced(
    broker: Arc<Broker>,
    mut transport: Transport,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    // Boxed: the handshake's state (session claim, CONNACK) is larger than the steady state
    // of a connection, and a task is as large as its largest await point.
    let Some((mut conn, _slot)) = Box::pin(open(&broker, &mut transport, peer, &shutdown)).await
    else {
        return;
    };
    let exit = conn.run(&mut transport, &shutdown).await;
    Box::pin(conn.finish(&mut transport, exit)).await;
}

/// The handshake: a connection with its session, or `None` once a refused client is told.
async fn open<'a>(
    broker: &'a Arc<Broker>,
    transport: &mut Transport,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<(Connection, crate::broker::ConnectionSlot<'a>)> {
    let accepted = tokio::select! {
        r = handshake(broker, transport, peer.ip()) => r,
        _ = shutdown.cancelled() => return None,
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(refused) => {
            refuse(broker, transport, refused).await;
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record("client_id", &*accepted.client_id);
    span.record("protocol", accepted.version.as_str());
    broker.metrics.connack("success");
    debug!(
        session_present = accepted.claim.present,
        credential = accepted.access.principal.describe(),
        "client connected"
    );
    let handshake::Accepted {
        slot,
        version,
        claim,
        will,
        access,
        keep_alive,
        connect_expiry_zero,
        client_receive_maximum,
        client_max_packet_size,
        client_topic_alias_maximum,
        leftover,
        out,
        ..
    } = accepted;
    let conn = Connection {
        broker: broker.clone(),
        version,
        claim,
        // Boxed: most clients set no will, and every connection's task pays for the field.
        will: will.map(Box::new),
        access,
        keep_alive,
        connect_expiry_zero,
        client_receive_maximum,
        client_max_packet_size,
        client_topic_alias_maximum,
        aliases: None,
        // The CONNECT was read into a larger buffer: an idle connection keeps none.
        read_buf: if leftover.is_empty() {
            BytesMut::new()
        } else {
            leftover
        },
        write_buf: out,
        batch: Vec::new(),
        last_packet: Instant::now(),
        delivered: [0; 3],
        input_pending: false,
        stores: None,
        qos2_unsaved: false,
        qos2_completed: false,
        output_abandoned: false,
    };
    Some((conn, slot))
}

async fn refuse(broker: &Broker, transport: &mut Transport, refused: Refused) {
    match refused {
        Refused::NoConnect(why) => {
            debug!(why, "socket closed before a session started");
            broker.metrics.disconnect("no_connect");
        }
        Refused::Invalid(e) => {
            info!(error = %e, "invalid CONNECT, closing");
            broker.metrics.malformed("invalid_connect");
            broker.metrics.disconnect("protocol_violation");
        }
        Refused::Rejected { code, out } => {
            info!(code = ?code, "connection refused");
            broker.metrics.connack(connack_label(code));
            let _ = tokio::time::timeout(handshake::CLOSE_FLUSH_TIMEOUT, transport.write_all(&out))
                .await;
        }
    }
    let _ = tokio::time::timeout(handshake::CLOSE_FLUSH_TIMEOUT, transport.close()).await;
}

fn connack_label(code: mqttbytes::v5::ConnectReturnCode) -> &'static str {
    use mqttbytes::v5::ConnectReturnCode as C;
    match code {
        C::Success => "success",
        C::UnsupportedProtocolVersion => "unsupported_protocol_version",
        C::ClientIdentifierNotValid => "client_identifier_not_valid",
        C::QuotaExceeded => "quota_exceeded",
        C::ServerBusy => "server_busy",
        C::TopicNameInvalid => "topic_name_invalid",
        C::BadAuthenticationMethod => "bad_authentication_method",
        C::BadUserNamePassword => "bad_user_name_or_password",
        C::NotAuthorized => "not_authorized",
        C::ConnectionRateExceeded => "connection_rate_exceeded",
        _ => "other",
    }
}

/// Who a connection's client is, and the ACL it is held to.
pub struct ConnAccess {
    pub principal: crate::access::Principal,
    /// As of `grant.verdicts.generation` of the registry.
    pub grant: crate::access::Grant,
    /// The presented username, shared by the connection's messages (rule engine).
    pub username: Option<std::sync::Arc<str>>,
}

/// A connection with a session.
pub(crate) struct Connection {
    broker: Arc<Broker>,
    version: ProtocolVersion,
    claim: Claim,
    will: Option<Box<Will>>,
    /// Who the client is, and its ACL (boxed: one pointer in every connection's task).
    access: Box<ConnAccess>,
    keep_alive: u16,
    connect_expiry_zero: bool,
    client_receive_maximum: u16,
    client_max_packet_size: usize,
    client_topic_alias_maximum: u16,
    /// MQTT 5 topic aliases, once either side uses one (boxed: most connections never do).
    aliases: Option<Box<TopicAliases>>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    batch: Vec<Delivery>,
    last_packet: Instant,
    /// Deliveries written since the last metrics update, by QoS.
    delivered: [u64; 3],
    /// Complete packets may still be in `read_buf` (processing paused to flush).
    input_pending: bool,
    /// Cluster mode: QoS 1/2 publishes whose store is not acknowledged yet, in order
    /// (PUBACK/PUBREC go out in the order the PUBLISHes came). Boxed: standalone has none.
    stores: Option<Box<Stores>>,
    /// A QoS 2 PUBLISH is in the write buffer whose packet id is not on record yet.
    qos2_unsaved: bool,
    /// PUBCOMPs of this read ended QoS 2 flows that are still on record.
    qos2_completed: bool,
    /// A write stopped part-way: the stream may end inside a packet (see `abandon_output`).
    output_abandoned: bool,
}

/// MQTT 5 topic aliases of one connection.
#[derive(Default)]
pub(crate) struct TopicAliases {
    /// Set up by the client (alias → topic).
    inbound: HashMap<u16, Arc<str>>,
    /// Set up by the hub towards the client (topic → alias).
    outbound: HashMap<Arc<str>, u16>,
}

/// Writes `buf` out, consuming it as the socket takes it (on plain TCP; elsewhere at once
/// when done). A failed write is `Exit::Closed`.
async fn write_rest(transport: &mut Transport, buf: &mut BytesMut) -> Result<(), Exit> {
    let failed = |e: std::io::Error| {
        debug!(error = %e, "write failed");
        Exit::Closed
    };
    if !transport.is_tcp() {
        transport.write_all(buf).await.map_err(failed)?;
        buf.clear();
        return Ok(());
    }
    while !buf.is_empty() {
        let n = transport.write_some(buf).await.map_err(failed)?;
        if n == 0 {
            return Err(failed(std::io::ErrorKind::WriteZero.into()));
        }
        bytes::Buf::advance(buf, n);
    }
    Ok(())
}

/// What woke a waiting connection.
enum Event {
    Kicked,
    Shutdown,
    Drain,
    Read(std::io::Result<usize>),
    Woken,
    Stored(StoreDone),
    Tick,
    KeepAlive,
}

use stores::{StoreDone, Stores};

/// The next finished store, or never when there is none.
async fn next_store(stores: &mut Option<Box<Stores>>) -> Option<StoreDone> {
    match stores {
        Some(s) => std::future::poll_fn(|cx| s.poll_done(cx)).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn run(&mut self, transport: &mut Transport, shutdown: &CancellationToken) -> Exit {
        // A resumed session's subscriptions are checked against the ACL of today.
        if let Err(exit) = Box::pin(self.recheck_access(true)).await {
            return exit;
        }
        self.resend_inflight();
        self.broker.start_replay(&mut self.claim);
        // Cluster mode only: boxed so standalone connections carry no timer.
        let mut tracking_timer = self
            .broker
            .is_cluster()
            .then(|| Box::pin(tokio::time::sleep(TRACKING_TICK)));
        let mut ticks = 0u32;
        // Set when a drain picked this connection's moment to leave.
        let mut drain_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // Data that arrived together with CONNECT. `process_input` is boxed at every call:
        // its future (publish, backpressure wait) would otherwise double the size of every
        // connection's task, idle ones included (one allocation per read wake-up instead).
        if let Err(exit) = Box::pin(self.process_input()).await {
            return exit;
        }
        self.drain_mailbox();
        let keep_alive = Duration::from_millis(u64::from(self.keep_alive) * 1500);
        let keep_alive_timer = tokio::time::sleep(keep_alive.max(Duration::from_secs(1)));
        tokio::pin!(keep_alive_timer);
        loop {
            if !self.write_buf.is_empty() {
                if std::mem::take(&mut self.qos2_unsaved)
                    && let Err(exit) = Box::pin(self.save_qos2_state()).await
                {
                    return exit;
                }
                if let Err(exit) = self.flush(transport, shutdown).await {
                    return exit;
                }
                if self.input_pending {
                    // A read burst stopped at the flush threshold: finish it first.
                    if let Err(exit) = Box::pin(self.process_input()).await {
                        return exit;
                    }
                    self.drain_mailbox();
                    continue;
                }
            }
            // A hand-written poll rather than `select!`: every branch of a `select!` keeps
            // its future (a cancellation waiter, a `Notified`) in every connection's task,
            // idle ones included. Here the session's one waker slot stands for the mailbox,
            // kicks and shutdown, and the socket's readiness needs no buffer.
            let event = std::future::poll_fn(|cx| {
                self.poll_event(
                    cx,
                    transport,
                    shutdown,
                    &mut drain_at,
                    &mut tracking_timer,
                    keep_alive_timer.as_mut(),
                )
            })
            .await;
            match event {
                Event::Kicked => return Exit::TakenOver,
                Event::Shutdown => {
                    let period = self.broker.limits.drain_period;
                    if period.is_zero() {
                        return self.drain_exit();
                    }
                    let wait = period.mul_f64(rand::random::<f64>());
                    drain_at = Some(Box::pin(tokio::time::sleep(wait)));
                }
                Event::Drain => return self.drain_exit(),
                Event::Read(Ok(0)) => return Exit::Closed,
                Event::Read(Ok(n)) => {
                    self.broker.metrics.bytes_received.inc_by(n as u64);
                    self.last_packet = Instant::now();
                    if let Err(exit) = Box::pin(self.process_input()).await {
                        return exit;
                    }
                    if self.read_buf.is_empty() {
                        // Idle connections keep no read buffer.
                        self.read_buf = BytesMut::new();
                    }
                }
                Event::Read(Err(e)) => {
                    debug!(error = %e, "read failed");
                    return Exit::Closed;
                }
                Event::Woken => {}
                Event::Stored(done) => {
                    if let Err(exit) = Box::pin(self.on_stored(done)).await {
                        return exit;
                    }
                }
                Event::Tick => {
                    if let Some(timer) = tracking_timer.as_mut() {
                        timer.as_mut().reset(Instant::now() + TRACKING_TICK);
                    }
                    ticks = ticks.wrapping_add(1);
                    // Boxed: a checkpoint's future is large and rare.
                    if let Err(exit) = Box::pin(self.on_tracking_tick(ticks)).await {
                        return exit;
                    }
                }
                Event::KeepAlive => {
                    let deadline = self.last_packet + keep_alive;
                    if Instant::now() >= deadline {
                        return Exit::KeepAliveTimeout;
                    }
                    keep_alive_timer.as_mut().reset(deadline);
                }
            }
            // One atomic load: the registry changed (the change also woke this task).
            if self.broker.access.generation() != self.access.grant.verdicts.generation
                && let Err(exit) = Box::pin(self.recheck_access(false)).await
            {
                return exit;
            }
            self.drain_mailbox();
        }
    }

    /// What the connection waits for, in priority order (as a biased `select!` would).
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        transport: &mut Transport,
        shutdown: &CancellationToken,
        drain_at: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        tracking_timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
        keep_alive_timer: Pin<&mut tokio::time::Sleep>,
    ) -> Poll<Event> {
        // Registers this task as the session's owner: mailbox, kicks and shutdown wake it.
        if self
            .claim
            .session
            .poll_kicked(self.claim.generation, cx)
            .is_ready()
        {
            return Poll::Ready(Event::Kicked);
        }
        let drain_due = match drain_at.as_mut() {
            // The hub wakes every session once it cancels `shutdown` (`Broker::wake_all`).
            None if shutdown.is_cancelled() => return Poll::Ready(Event::Shutdown),
            None => false,
            Some(at) => at.as_mut().poll(cx).is_ready(),
        };
        if drain_due {
            return Poll::Ready(Event::Drain);
        }
        if let Poll::Ready(read) = transport.poll_read(cx, &mut self.read_buf) {
            return Poll::Ready(Event::Read(read));
        }
        if self.claim.session.poll_woken(cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        if let Some(stores) = self.stores.as_mut()
            && let Poll::Ready(Some(done)) = stores.poll_done(cx)
        {
            return Poll::Ready(Event::Stored(done));
        }
        if let Some(timer) = tracking_timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::Tick);
        }
        if self.keep_alive > 0 && keep_alive_timer.poll(cx).is_ready() {
            return Poll::Ready(Event::KeepAlive);
        }
        Poll::Pending
    }

    fn drain_exit(&self) -> Exit {
        match (&self.broker.limits.server_reference, self.version.is_v5()) {
            (Some(_), true) => Exit::Moved,
            _ => Exit::Shutdown,
        }
    }

    /// Cluster mode: advances the cursors and checkpoints a persistent session now and then.
    async fn on_tracking_tick(&mut self, ticks: u32) -> Result<(), Exit> {
        let dirty = self.broker.tick(&self.claim);
        if dirty && ticks.is_multiple_of(CHECKPOINT_TICKS) {
            match self.broker.checkpoint(&self.claim).await {
                Ok(()) => {}
                Err(crate::state::StateError::Fenced(_)) => {
                    self.broker.metrics.cluster.fenced.inc();
                    return Err(Exit::TakenOver);
                }
                Err(e) => debug!(error = %e, "checkpoint failed"),
            }
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        transport: &mut Transport,
        shutdown: &CancellationToken,
    ) -> Result<(), Exit> {
        let total = self.write_buf.len();
        // What the socket takes at once needs no future (and no timer) in the task.
        let written = match transport.write_now(&self.write_buf) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "write failed");
                self.abandon_output();
                return Err(Exit::Closed);
            }
        };
        if written < total {
            bytes::Buf::advance(&mut self.write_buf, written);
            // Boxed: the waiting write, its timeout and the kick are large and, on a reading
            // client, rare.
            Box::pin(self.flush_wait(transport, shutdown)).await?;
        }
        self.broker.metrics.bytes_sent.inc_by(total as u64);
        self.flush_delivery_metrics();
        if self.write_buf.capacity() > 4 * FLUSH_AT {
            self.write_buf = BytesMut::new();
        } else {
            self.write_buf.clear();
        }
        Ok(())
    }

    /// A write ended part-way (failed, or given up for a kick, shutdown or a stalled peer):
    /// the stream may stop inside a packet, so nothing more is written to it.
    fn abandon_output(&mut self) {
        self.write_buf.clear();
        self.output_abandoned = true;
    }

    /// Writes the rest of the write buffer, waiting for the socket.
    async fn flush_wait(
        &mut self,
        transport: &mut Transport,
        shutdown: &CancellationToken,
    ) -> Result<(), Exit> {
        // A peer that stops reading is dropped after 1.5 × keep-alive (or a minute without
        // keep-alive), as a peer that stops sending is.
        let patience = match self.keep_alive {
            0 => WRITE_TIMEOUT,
            k => Duration::from_millis(u64::from(k) * 1500),
        };
        let immediate_shutdown = self.broker.limits.drain_period.is_zero();
        // Plain TCP writes advance the buffer as they go, so a write given up below leaves
        // exactly the unsent rest, which `finish` sends before its DISCONNECT. Elsewhere a
        // cancelled `write_all` may have sent part of it: nothing more may follow then.
        let precise = transport.is_tcp();
        let result = tokio::select! {
            r = write_rest(transport, &mut self.write_buf) => r,
            _ = self.claim.kicked() => Err(Exit::TakenOver),
            // A drain spread over a period lets writes finish; the run loop decides when.
            _ = shutdown.cancelled(), if immediate_shutdown => Err(Exit::Shutdown),
            _ = tokio::time::sleep(patience) => {
                Err(Exit::violation(DisconnectReasonCode::KeepAliveTimeout, "client stopped reading"))
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(Exit::Closed) => {
                self.abandon_output();
                Err(Exit::Closed)
            }
            Err(exit) => {
                if !precise {
                    self.abandon_output();
                }
                Err(exit)
            }
        }
    }

    fn flush_delivery_metrics(&mut self) {
        for (qos, n) in self.delivered.iter_mut().enumerate() {
            if *n > 0 {
                self.broker.metrics.delivered[qos].inc_by(*n);
                *n = 0;
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    async fn process_input(&mut self) -> Result<(), Exit> {
        let result = self.process_packets().await;
        // The publishes batched during this read go now, whatever ended it.
        let sent = self.send_batch().await;
        result.and(sent)
    }

    async fn process_packets(&mut self) -> Result<(), Exit> {
        self.input_pending = false;
        loop {
            let max = self.broker.limits.max_packet_size;
            let packet = match codec::decode_packet(&mut self.read_buf, self.version, max) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    if std::mem::take(&mut self.qos2_completed) {
                        self.save_qos2_state().await?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.broker.metrics.malformed(e.kind());
                    return Err(Exit::from_decode(&e));
                }
            };
            self.handle(packet).await?;
            if self.write_buf.len() >= FLUSH_AT {
                // Bound the output of one read burst; the loop continues after a flush.
                self.input_pending = true;
                return Ok(());
            }
        }
    }

    /// Sends the server's DISCONNECT where MQTT 5 has one, closes, and releases the session.
    async fn finish(mut self, transport: &mut Transport, exit: Exit) {
        // Stores still pending complete anyway; their acknowledgements (and QoS 2 packet
        // ids, saved with the session) go out before the connection closes.
        Box::pin(self.settle_stores()).await;
        self.flush_delivery_metrics();
        self.broker.metrics.disconnect(exit.label());
        match &exit {
            Exit::Violation { why, .. } => {
                warn!(reason = %why, "closing connection: protocol violation")
            }
            Exit::ClientDisconnect { .. } => debug!("client disconnected"),
            other => debug!(exit = ?other, "connection closed"),
        }
        if let (true, Some(code), false) = (
            self.version.is_v5(),
            exit.server_reason(),
            self.output_abandoned,
        ) {
            let mut d = Disconnect::new();
            d.reason_code = code;
            if let Exit::Moved = &exit {
                d.properties = Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    server_reference: self.broker.limits.server_reference.clone(),
                });
            }
            if let Exit::Violation { why, .. } = &exit {
                // A reason string is allowed on DISCONNECT whatever the client's request
                // problem information says (MQTT 5 3.1.2.11.7).
                d.properties = Some(DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(why.clone()),
                    user_properties: Vec::new(),
                    server_reference: None,
                });
            }
            let _ = codec::encode_packet(&Packet::Disconnect(d), self.version, &mut self.write_buf);
        }
        if !self.write_buf.is_empty() && !self.output_abandoned {
            let _ = tokio::time::timeout(
                handshake::CLOSE_FLUSH_TIMEOUT,
                transport.write_all(&self.write_buf),
            )
            .await;
        }
        let _ = tokio::time::timeout(handshake::CLOSE_FLUSH_TIMEOUT, transport.close()).await;
        let will = match exit {
            Exit::ClientDisconnect { will } => will.then_some(()).and(self.will.take()),
            _ => self.will.take(),
        }
        .map(|w| *w);
        let Connection { broker, claim, .. } = self;
        broker.release_session(claim, will).await;
    }
}
