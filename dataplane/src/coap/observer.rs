//! Observations (RFC 7641): a CoAP client that observes becomes a broker session (clean,
//! ending with its last observation), so routing, retained messages, the cluster and the
//! ACLs are the MQTT path's. One task per observing client drains the session: QoS 0
//! deliveries go as NON notifications, QoS 1/2 as CON with at most one unacknowledged at a
//! time (NSTART 1); a CON not acknowledged after the retransmissions, or answered with
//! RST, ends its observation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};
use futures_util::future::BoxFuture;
use mqttbytes::QoS;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::Gateway;
use super::pubsub::Client;
use super::request::{self, Request};
use crate::broker::{Claim, Delivery, SubOptions};

/// RFC 7252 MAX_RETRANSMIT.
pub const MAX_RETRANSMIT: u32 = 4;
/// A CON notification after this many NON ones (RFC 7641 4.5; libcoap's COAP_OBS_MAX_NON).
const LIVENESS_EVERY: u32 = 5;
/// Deliveries taken from the session per pass.
const BATCH: usize = 64;

type Outcome = (
    ResponseType,
    Option<(Vec<u8>, Option<coap_lite::ContentFormat>)>,
    Option<Vec<u8>>,
);

enum Cmd {
    Register {
        peer: SocketAddr,
        token: Vec<u8>,
        filter: String,
        qos: QoS,
        confirmable: bool,
        mid: u16,
        /// The response bytes (sent by the task, before any notification).
        reply: oneshot::Sender<Result<Vec<u8>, ResponseType>>,
    },
    Deregister {
        filter: String,
        reply: oneshot::Sender<bool>,
    },
    /// Every observation ends.
    End,
    /// Observation `id` ends (RST).
    Cancel(u32),
}

/// The observing clients of a gateway, by client id.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<Arc<str>, mpsc::Sender<Cmd>>>,
    /// NON notifications sent recently: an RST to one cancels its observation.
    nons: Mutex<HashMap<(SocketAddr, u16), SentNon>>,
    /// The last notification larger than a block, per (peer, filter), for the client's
    /// Block2 GETs of the rest.
    large: Mutex<HashMap<(SocketAddr, String), (bytes::Bytes, std::time::Instant)>>,
    /// Ends every client task (hub shutdown).
    stop: tokio_util::sync::CancellationToken,
}

/// A NON notification sent: to which client and observation, when.
type SentNon = (Arc<str>, u32, std::time::Instant);

/// How long a NON notification's message id is remembered (RFC 7252 NON_LIFETIME).
const NON_LIFETIME: std::time::Duration = std::time::Duration::from_secs(145);
/// NON notifications remembered at most.
const MAX_NONS: usize = 100_000;

impl Registry {
    fn sent_non(&self, peer: SocketAddr, mid: u16, client: &Arc<str>, id: u32) {
        let mut nons = self.nons.lock();
        if nons.len() < MAX_NONS {
            nons.insert((peer, mid), (client.clone(), id, std::time::Instant::now()));
        }
    }

    /// An RST from `peer` for our message `mid`.
    pub async fn reset(&self, peer: SocketAddr, mid: u16) {
        let Some((client, id, _)) = self.nons.lock().remove(&(peer, mid)) else {
            return;
        };
        let sender = self.clients.lock().get(&client).cloned();
        if let Some(s) = sender {
            let _ = s.send(Cmd::Cancel(id)).await;
        }
    }

    fn keep_large(&self, peer: SocketAddr, filter: &str, payload: &[u8]) {
        let mut large = self.large.lock();
        if large.len() < MAX_NONS {
            large.insert(
                (peer, filter.to_owned()),
                (
                    bytes::Bytes::copy_from_slice(payload),
                    std::time::Instant::now(),
                ),
            );
        }
    }

    /// The last large notification `peer` got for `filter`, if any.
    pub fn large(&self, peer: SocketAddr, filter: &str) -> Option<bytes::Bytes> {
        self.large
            .lock()
            .get(&(peer, filter.to_owned()))
            .map(|(b, _)| b.clone())
    }

    pub fn sweep(&self) {
        let now = std::time::Instant::now();
        self.large
            .lock()
            .retain(|_, (_, at)| now.duration_since(*at) < NON_LIFETIME);
        self.nons
            .lock()
            .retain(|_, (_, _, at)| now.duration_since(*at) < NON_LIFETIME);
    }

    /// Ends every observation (hub shutdown); the sessions are released.
    pub async fn close_all(&self) {
        self.stop.cancel();
        self.clients.lock().clear();
    }
}

struct Observation {
    id: u32,
    peer: SocketAddr,
    token: Vec<u8>,
    filter: String,
    /// The next Observe value (24 bits).
    seq: u32,
    /// NON notifications since the last CON one.
    nons: u32,
}

fn qos_of(req: &Request) -> Option<QoS> {
    match req.param("qos") {
        None => Some(if req.confirmable {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }),
        Some("0") => Some(QoS::AtMostOnce),
        Some("1") => Some(QoS::AtLeastOnce),
        Some("2") => Some(QoS::ExactlyOnce),
        Some(_) => None,
    }
}

/// `GET /ps/{filter}` with Observe 0.
pub async fn register(
    gw: &Arc<Gateway>,
    req: &Request,
    peer: SocketAddr,
    client: Client,
    filter: String,
) -> Outcome {
    let broker = &gw.broker;
    if req.token.is_empty() {
        return text(ResponseType::BadRequest, "observe without token");
    }
    if let Err(e) = cmq_topic::validate_filter(&filter, &broker.limits.topic) {
        return text(
            ResponseType::BadRequest,
            &format!("invalid topic filter: {e}"),
        );
    }
    let Some(qos) = qos_of(req) else {
        return text(ResponseType::BadRequest, "qos must be 0, 1 or 2");
    };
    if !client.grant.is_allow_all() && !client.grant.may_subscribe(&filter, qos) {
        broker.metrics.access.denied_subscribe.inc();
        return (ResponseType::Forbidden, None, None);
    }
    // Twice: a client task may be ending just as the command reaches it.
    for _ in 0..2 {
        let sender = match client_task(gw, &client).await {
            Ok(s) => s,
            Err(code) => return (code, None, None),
        };
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Register {
            peer,
            token: req.token.clone(),
            filter: filter.clone(),
            qos,
            confirmable: req.confirmable,
            mid: req.mid,
            reply,
        };
        if sender.send(cmd).await.is_err() {
            continue;
        }
        match answer.await {
            Ok(Ok(sent)) => return (ResponseType::Content, None, Some(sent)),
            Ok(Err(code)) => return (code, None, None),
            Err(_) => continue,
        }
    }
    (ResponseType::ServiceUnavailable, None, None)
}

/// `GET /ps/{filter}` with Observe 1: the observation ends; answered like a plain GET.
pub async fn deregister(
    gw: &Arc<Gateway>,
    _req: &Request,
    _peer: SocketAddr,
    client: &Client,
    filter: &str,
) -> Outcome {
    let sender = gw.observers.clients.lock().get(&client.client_id).cloned();
    if let Some(sender) = sender {
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Deregister {
            filter: filter.to_owned(),
            reply,
        };
        if sender.send(cmd).await.is_ok() {
            let _ = answer.await;
        }
    }
    (ResponseType::Content, None, None)
}

/// Ends every observation of `client_id` (connection closed).
pub async fn end_client(gw: &Arc<Gateway>, client_id: &str) {
    let sender = gw.observers.clients.lock().remove(client_id);
    if let Some(sender) = sender {
        let _ = sender.send(Cmd::End).await;
    }
}

fn text(code: ResponseType, t: &str) -> Outcome {
    (code, Some((t.as_bytes().to_vec(), None)), None)
}

/// The task of `client`, started (with its broker session) when missing.
async fn client_task(
    gw: &Arc<Gateway>,
    client: &Client,
) -> Result<mpsc::Sender<Cmd>, ResponseType> {
    if let Some(s) = gw.observers.clients.lock().get(&client.client_id)
        && !s.is_closed()
    {
        return Ok(s.clone());
    }
    let claim = gw
        .broker
        .claim_session(&client.client_id, true)
        .await
        .map_err(|e| {
            debug!(client_id = %client.client_id, error = %e, "CoAP observer session not claimed");
            ResponseType::ServiceUnavailable
        })?;
    let (tx, rx) = mpsc::channel(16);
    {
        let mut clients = gw.observers.clients.lock();
        if let Some(s) = clients.get(&client.client_id)
            && !s.is_closed()
        {
            // Another request started it meanwhile: use that one, give ours back.
            let s = s.clone();
            drop(clients);
            let broker = gw.broker.clone();
            tokio::spawn(async move { broker.release_session(claim, None).await });
            return Ok(s);
        }
        clients.insert(client.client_id.clone(), tx.clone());
    }
    tokio::spawn(run_client(gw.clone(), claim, rx, tx.clone()));
    Ok(tx)
}

/// A CoAP notification (2.05 with Observe) of `payload`.
fn notification(
    gw: &Gateway,
    obs: &mut Observation,
    payload: &[u8],
    confirmable: bool,
) -> (Vec<u8>, u16) {
    let mut p = Packet::new();
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Response(ResponseType::Content);
    let mid = gw.next_mid();
    p.header.message_id = mid;
    p.set_token(obs.token.clone());
    p.set_observe_value(obs.seq);
    obs.seq = (obs.seq + 1) & 0x00FF_FFFF;
    if payload.len() > super::block::BLOCK {
        // RFC 7959 2.6: the first block; the client GETs the rest (served from `large`).
        if let Some((part, b)) = super::block::slice(payload, 0, super::block::SZX) {
            p.add_option(CoapOption::Block2, b.encode());
            p.add_option(
                CoapOption::Size2,
                super::block::uint(u32::try_from(payload.len()).unwrap_or(u32::MAX)),
            );
            p.payload = part.to_vec();
        }
        gw.observers.keep_large(obs.peer, &obs.filter, payload);
    } else {
        p.payload = payload.to_vec();
    }
    (request::encode(&p), mid)
}

async fn run_client(
    gw: Arc<Gateway>,
    mut claim: Claim,
    mut rx: mpsc::Receiver<Cmd>,
    me: mpsc::Sender<Cmd>,
) {
    let session = claim.session.clone();
    let generation = claim.generation;
    let broker = gw.broker.clone();
    let mut observations: Vec<Observation> = Vec::new();
    let mut next_id = 1u32;
    let mut batch: Vec<Delivery> = Vec::new();
    // The CON notification awaiting its ACK: (observation id, acknowledged?).
    let mut in_flight: Option<BoxFuture<'static, (u32, bool)>> = None;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::Register { peer, token, filter, qos, confirmable, mid, reply }) => {
                    // One observation per filter: a new registration replaces the old one.
                    if let Some(pos) = observations.iter().position(|o| o.filter == filter) {
                        observations.swap_remove(pos);
                        gw.metrics.observers.dec();
                    }
                    let id = next_id;
                    next_id = next_id.wrapping_add(1).max(1);
                    let options = SubOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                        subscription_id: id,
                    };
                    if broker.subscribe(&session, &filter, options).is_err() {
                        let _ = reply.send(Err(ResponseType::BadRequest));
                        continue;
                    }
                    claim.state.subscriptions.insert(filter.clone(), options);
                    let mut obs = Observation { id, peer, token, filter: filter.clone(), seq: observe_start(), nons: 0 };
                    // The registration's response first, then the retained messages.
                    let mut p = request::response(confirmable, mid, gw.next_mid(), &obs.token, ResponseType::Content);
                    p.set_observe_value(obs.seq);
                    obs.seq = (obs.seq + 1) & 0x00FF_FFFF;
                    let bytes = request::encode(&p);
                    gw.send(&bytes, peer).await;
                    let _ = reply.send(Ok(bytes));
                    gw.metrics.observers.inc();
                    if let Ok(retained) = broker.retained_for(&filter, options).await {
                        for d in retained {
                            let _ = session.push(d);
                        }
                    }
                    observations.push(obs);
                }
                Some(Cmd::End) => break,
                Some(Cmd::Cancel(id)) => {
                    if let Some(pos) = observations.iter().position(|o| o.id == id) {
                        let o = observations.swap_remove(pos);
                        debug!(filter = %o.filter, "CoAP observation cancelled by RST");
                        gw.metrics.observers.dec();
                        broker.unsubscribe(&session, &o.filter);
                        claim.state.subscriptions.remove(&o.filter);
                    }
                }
                Some(Cmd::Deregister { filter, reply }) => {
                    if let Some(pos) = observations.iter().position(|o| o.filter == filter) {
                        observations.swap_remove(pos);
                        gw.metrics.observers.dec();
                        broker.unsubscribe(&session, &filter);
                        claim.state.subscriptions.remove(&filter);
                    }
                    let _ = reply.send(true);
                }
            },
            _ = std::future::poll_fn(|cx| session.poll_woken(cx)) => {}
            done = async { match in_flight.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                in_flight = None;
                let (id, acked) = done;
                if !acked && let Some(pos) = observations.iter().position(|o| o.id == id) {
                    let o = observations.swap_remove(pos);
                    debug!(filter = %o.filter, "CoAP observer gone (RST or no ACK): observation ended");
                    gw.metrics.observers.dec();
                    broker.unsubscribe(&session, &o.filter);
                    claim.state.subscriptions.remove(&o.filter);
                }
            }
            _ = session.kicked(generation) => break,
            _ = gw.observers.stop.cancelled() => break,
        }
        // Deliveries: QoS 0 at once as NON; QoS 1/2 one CON at a time.
        loop {
            let slots = usize::from(in_flight.is_none());
            let more = session.take_batch(&mut batch, BATCH, slots);
            for d in batch.drain(..) {
                let confirmable = d.qos != QoS::AtMostOnce;
                for obs in observations.iter_mut().filter(|o| {
                    d.subscription_ids.contains(&o.id)
                        || (d.subscription_ids.is_empty()
                            && cmq_topic::matches(&o.filter, &d.message.topic))
                }) {
                    // Every few NON notifications one goes as CON: an observer that is gone
                    // is then noticed (no ACK) even when it gets only QoS 0 (libcoap: 5).
                    let as_con =
                        (confirmable || obs.nons + 1 >= LIVENESS_EVERY) && in_flight.is_none();
                    obs.nons = if as_con { 0 } else { obs.nons + 1 };
                    let (bytes, mid) = notification(&gw, obs, &d.message.payload, as_con);
                    gw.metrics.notifications.inc();
                    broker.metrics.delivered[d.qos as usize].inc();
                    if as_con {
                        let gw2 = gw.clone();
                        let (id, peer) = (obs.id, obs.peer);
                        in_flight = Some(Box::pin(async move {
                            (id, gw2.send_confirmable(&bytes, mid, peer).await)
                        }));
                    } else {
                        // Sent as NON (QoS 0, or a second observer of a QoS 1 message).
                        gw.observers
                            .sent_non(obs.peer, mid, &session.client_id, obs.id);
                        gw.send(&bytes, obs.peer).await;
                    }
                }
            }
            if !more || in_flight.is_some() {
                break;
            }
        }
        if observations.is_empty() {
            break;
        }
    }
    // Leaving: commands that raced with the end get no answer (the sender retries).
    {
        let mut clients = gw.observers.clients.lock();
        if clients
            .get(&session.client_id)
            .is_some_and(|s| s.same_channel(&me))
        {
            clients.remove(&session.client_id);
        }
    }
    rx.close();
    gw.metrics
        .observers
        .dec_by(i64::try_from(observations.len()).unwrap_or(0));
    broker.release_session(claim, None).await;
}

/// Observe values start from the clock, so a restarted hub does not go back in sequence
/// (RFC 7641 4.4; EMQX does the same).
fn observe_start() -> u32 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    u32::try_from((micros / 31) & 0x00FF_FFFF).unwrap_or(0)
}
