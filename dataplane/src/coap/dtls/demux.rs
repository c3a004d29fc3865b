//! The DTLS listener's UDP socket, demultiplexed by peer address into one `Conn` per peer
//! that webrtc-dtls drives. Not webrtc-util's UDP listener: it never forgets a peer (its
//! `close` does nothing, so a peer whose session ended can never handshake again from that
//! address, and datagrams for it pile up unbounded).
//!
//! What this layer guards, before any datagram reaches the DTLS stack:
//! - a new address must open with a ClientHello; per-peer queues are bounded;
//! - state made for an unproven address (no cookie echoed yet) is cheap and evicted oldest
//!   first past `MAX_UNVERIFIED`, so spoofed ClientHellos cannot hold handshake slots; a slot
//!   is taken only when the peer echoes a cookie (it received our HelloVerifyRequest);
//! - epoch-0 handshake records a client never sends, and malformed ClientKeyExchange
//!   messages, are dropped: webrtc-dtls 0.12 indexes them without bounds checks;
//! - a new ClientHello from an address with a session (a device that restarted) runs as a
//!   pending handshake beside the session, which it replaces only once complete
//!   (RFC 6347 4.2.8: a spoofed ClientHello must not end a live session).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use webrtc_util::conn::Conn;

/// Datagrams queued per peer before the DTLS stack reads them; beyond, they are dropped
/// (UDP: the peer retransmits).
const PEER_QUEUE: usize = 32;
/// Routes of addresses that have not echoed a cookie yet, at most (oldest evicted).
const MAX_UNVERIFIED: usize = 4_096;
/// DTLS content type of a handshake record.
pub const HANDSHAKE: u8 = 22;

/// What a ClientHello record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub suites: Vec<u16>,
    pub cookie: bool,
}

/// The ClientHello in `record` (epoch 0), or `None` when it is not one.
pub fn client_hello(record: &[u8]) -> Option<Hello> {
    // Record header 13 bytes (epoch at 3..5), handshake header 12 (type 1 = ClientHello),
    // then the body: version 2, random 32, session id, cookie, cipher suites.
    if *record.first()? != HANDSHAKE || record.get(3..5)? != [0, 0] || *record.get(13)? != 1 {
        return None;
    }
    let mut at = 13 + 12 + 2 + 32;
    at += 1 + usize::from(*record.get(at)?);
    let cookie_len = usize::from(*record.get(at)?);
    at += 1 + cookie_len;
    let len = usize::from(u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]));
    let list = record.get(at + 2..at + 2 + len)?;
    Some(Hello {
        suites: list
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
        cookie: cookie_len > 0,
    })
}

/// Whether every record of `datagram` is well framed and safe for the DTLS stack.
pub fn records_ok(datagram: &[u8]) -> bool {
    let mut at = 0;
    while at < datagram.len() {
        let Some(h) = datagram.get(at..at + 13) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
        let Some(body) = datagram.get(at + 13..at + 13 + len) else {
            return false;
        };
        if !(20..=23).contains(&h[0]) {
            return false;
        }
        if h[0] == HANDSHAKE && h[3..5] == [0, 0] && !client_handshake_ok(body) {
            return false;
        }
        at += 13 + len;
    }
    true
}

/// The unencrypted handshake messages of a client's record (several may share one):
/// ClientHello, Certificate, CertificateVerify or ClientKeyExchange, each framed within the
/// record; a ClientKeyExchange whole and of a valid shape.
fn client_handshake_ok(mut body: &[u8]) -> bool {
    let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    if body.is_empty() {
        return false;
    }
    while !body.is_empty() {
        let Some(h) = body.get(..12) else {
            return false;
        };
        let (length, offset, fragment) = (u24(&h[1..4]), u24(&h[6..9]), u24(&h[9..12]));
        let Some(msg) = body.get(12..12 + fragment) else {
            return false;
        };
        let ok = match h[0] {
            1 | 11 | 15 => true,
            // PSK: identity length (2 bytes) + identity; ECDHE: point length (1) + point.
            16 => {
                offset == 0
                    && fragment == length
                    && msg.len() >= 2
                    && (usize::from(u16::from_be_bytes([msg[0], msg[1]])) + 2 == msg.len()
                        || usize::from(msg[0]) + 1 == msg.len())
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        body = &body[12 + fragment..];
    }
    true
}

/// The record's epoch and sequence number.
fn epoch_and_sequence(record: &[u8]) -> Option<(u16, u64)> {
    let h = record.get(..11)?;
    let seq = h[5..11]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Some((u16::from_be_bytes([h[3], h[4]]), seq))
}

/// Records of a later epoch a route takes before its handshake is done (the client's
/// Finished, a few early requests); more would only queue inside the DTLS stack.
const EARLY_ENCRYPTED: u32 = 8;

/// One handshake or session of a peer: where its datagrams go.
pub struct Route {
    pub id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    /// Set once the handshake is done.
    pub established: Arc<AtomicBool>,
    /// Signalled when a newer session of the same peer replaces this one.
    pub replaced: Arc<Notify>,
    /// ClientHellos seen; a later one with a cookie (and a later record sequence number
    /// than the first) proves the address.
    hellos: u32,
    first_sequence: u64,
    /// Later-epoch records taken before the handshake was done.
    early: u32,
    /// The handshake slot, taken once the address is proven; the handshake task drops it.
    pub slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

/// A peer's session (or handshake) and, while one runs, the handshake of its successor.
struct Entry {
    current: Route,
    pending: Option<Route>,
}

/// What to do with a datagram.
pub enum Action {
    Deliver,
    /// A new route is needed: for a new peer, or pending beside an established session.
    Open {
        hello: Hello,
        pending: bool,
    },
    /// Dropped: a new peer that did not open with a ClientHello, or no handshake slot.
    Drop {
        busy: bool,
    },
}

/// The socket and the routes.
pub struct Demux {
    pub socket: Arc<UdpSocket>,
    entries: Mutex<HashMap<SocketAddr, Entry>>,
    unverified: Mutex<VecDeque<(SocketAddr, u64)>>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
}

impl Demux {
    pub fn new(socket: UdpSocket, max_handshakes: usize) -> Arc<Self> {
        Arc::new(Self {
            socket: Arc::new(socket),
            entries: Mutex::new(HashMap::new()),
            unverified: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(max_handshakes)),
        })
    }

    /// Routes a datagram of `peer` to its session or handshake (queued there), or says
    /// what else to do with it.
    pub fn route(&self, peer: SocketAddr, datagram: &[u8]) -> Action {
        let hello = client_hello(datagram);
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&peer) else {
            return match hello {
                Some(hello) => Action::Open {
                    hello,
                    pending: false,
                },
                None => Action::Drop { busy: false },
            };
        };
        let target = if !entry.current.established.load(Ordering::Relaxed) {
            &mut entry.current
        } else if let Some(hello) = &hello {
            match &mut entry.pending {
                Some(p) => p,
                None => {
                    return Action::Open {
                        hello: hello.clone(),
                        pending: true,
                    };
                }
            }
        } else {
            // A session takes no plaintext (epoch 0) record but a ClientHello, which went
            // to a pending handshake above: a forged alert must not end it. Epoch 0 belongs
            // to a pending handshake; later epochs may be the session's or the new one's
            // Finished: each side drops what it cannot decrypt.
            let epoch0 = datagram.get(3..5) == Some(&[0, 0]);
            match (&mut entry.pending, epoch0) {
                (Some(p), true) => {
                    let _ = p.tx.try_send(datagram.to_vec());
                }
                (Some(p), false) => {
                    if p.early < EARLY_ENCRYPTED {
                        p.early += 1;
                        let _ = p.tx.try_send(datagram.to_vec());
                    }
                    let _ = entry.current.tx.try_send(datagram.to_vec());
                }
                (None, true) => return Action::Drop { busy: false },
                (None, false) => {
                    let _ = entry.current.tx.try_send(datagram.to_vec());
                }
            }
            return Action::Deliver;
        };
        let (epoch, sequence) = epoch_and_sequence(datagram).unwrap_or((0, 0));
        if epoch > 0 {
            if target.early >= EARLY_ENCRYPTED {
                return Action::Drop { busy: false };
            }
            target.early += 1;
        }
        if let Some(h) = &hello {
            target.hellos += 1;
            let mut slot = target.slot.lock();
            // A replayed sequence number would be dropped by the DTLS stack after the slot
            // was taken; a fresh one with a wrong cookie fails there at once.
            if h.cookie && sequence > target.first_sequence && slot.is_none() {
                match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => *slot = Some(permit),
                    Err(_) => {
                        drop(slot);
                        let id = target.id;
                        drop(entries);
                        self.remove(peer, id);
                        return Action::Drop { busy: true };
                    }
                }
            }
        }
        let _ = target.tx.try_send(datagram.to_vec());
        Action::Deliver
    }

    /// Opens a route for `peer` (pending beside its session, or its only one), with
    /// `first` queued; returns the route's connection.
    pub fn open(
        self: &Arc<Self>,
        peer: SocketAddr,
        first: &[u8],
        pending: bool,
    ) -> (Arc<PeerConn>, Arc<AtomicBool>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let _ = tx.try_send(first.to_vec());
        let route = Route {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            established: Arc::new(AtomicBool::new(false)),
            replaced: Arc::new(Notify::new()),
            hellos: 1,
            first_sequence: epoch_and_sequence(first).map_or(0, |(_, s)| s),
            early: 0,
            slot: Arc::new(Mutex::new(None)),
        };
        let handles = (route.established.clone(), route.replaced.clone());
        let conn = Arc::new(PeerConn {
            demux: self.clone(),
            peer,
            id: route.id,
            slot: route.slot.clone(),
            rx: tokio::sync::Mutex::new(rx),
        });
        let id = route.id;
        {
            let mut entries = self.entries.lock();
            match entries.get_mut(&peer) {
                Some(e) if pending => e.pending = Some(route),
                _ => {
                    entries.insert(
                        peer,
                        Entry {
                            current: route,
                            pending: None,
                        },
                    );
                }
            }
        }
        let evict = {
            let mut fifo = self.unverified.lock();
            fifo.push_back((peer, id));
            let mut out = Vec::new();
            while fifo.len() > MAX_UNVERIFIED {
                out.extend(fifo.pop_front());
            }
            out
        };
        for (peer, id) in evict {
            // Only an address that never echoed a cookie loses its route.
            let proven = self.entries.lock().get(&peer).and_then(|e| {
                [Some(&e.current), e.pending.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|r| r.id == id)
                    .map(|r| r.slot.lock().is_some() || r.established.load(Ordering::Relaxed))
            });
            if proven == Some(false) {
                self.remove(peer, id);
            }
        }
        (conn, handles.0, handles.1)
    }

    /// A pending handshake completed: it becomes the peer's session; the one it replaces
    /// is told.
    pub fn promote(&self, peer: SocketAddr, id: u64) {
        let mut entries = self.entries.lock();
        let Some(e) = entries.get_mut(&peer) else {
            return;
        };
        if e.pending.as_ref().is_some_and(|p| p.id == id)
            && let Some(p) = e.pending.take()
        {
            let old = std::mem::replace(&mut e.current, p);
            old.replaced.notify_one();
        }
    }

    /// Forgets route `id` of `peer` (its connection reads its end); a pending handshake
    /// of a removed session takes the session's place.
    pub fn remove(&self, peer: SocketAddr, id: u64) {
        let mut entries = self.entries.lock();
        let Some(e) = entries.get_mut(&peer) else {
            return;
        };
        if e.pending.as_ref().is_some_and(|p| p.id == id) {
            e.pending = None;
        } else if e.current.id == id {
            match e.pending.take() {
                Some(p) => e.current = p,
                None => {
                    entries.remove(&peer);
                }
            }
        }
    }
}

/// One route's datagrams, as the connection webrtc-dtls reads and writes.
pub struct PeerConn {
    demux: Arc<Demux>,
    pub peer: SocketAddr,
    pub id: u64,
    slot: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl PeerConn {
    /// The handshake ended (either way): its slot is free for another.
    pub fn release_slot(&self) {
        self.slot.lock().take();
    }

    pub fn demux(&self) -> &Arc<Demux> {
        &self.demux
    }
}

#[async_trait]
impl Conn for PeerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let Some(d) = self.rx.lock().await.recv().await else {
            // The route is gone. webrtc-dtls' reader retries on this error until its
            // connection is dropped: not in a busy loop.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return Err(webrtc_util::Error::ErrUseClosedNetworkConn);
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.demux.socket.send_to(buf, self.peer).await?)
    }
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.demux.socket.send_to(buf, target).await?)
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.demux.socket.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        self.demux.remove(self.peer, self.id);
        self.rx.lock().await.close();
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with the given suites and cookie.
    pub fn hello(suites: &[u16], cookie: &[u8]) -> Vec<u8> {
        let mut r = vec![HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        r.extend_from_slice(&[0xfe, 0xfd]);
        r.extend_from_slice(&[7; 32]);
        r.push(0);
        r.push(u8::try_from(cookie.len()).unwrap_or(0));
        r.extend_from_slice(cookie);
        let len = u16::try_from(suites.len() * 2).unwrap_or(0);
        r.extend_from_slice(&len.to_be_bytes());
        for s in suites {
            r.extend_from_slice(&s.to_be_bytes());
        }
        let body = u16::try_from(r.len() - 13).unwrap_or(0);
        r[11..13].copy_from_slice(&body.to_be_bytes());
        let message = u32::from(body - 12).to_be_bytes();
        r[14..17].copy_from_slice(&message[1..]);
        r[22..25].copy_from_slice(&message[1..]);
        r
    }

    fn record(content: u8, epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![content, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn key_exchange(msg: &[u8]) -> Vec<u8> {
        let len = u8::try_from(msg.len()).unwrap_or(0);
        let mut b = vec![16, 0, 0, len, 0, 1, 0, 0, 0, 0, 0, len];
        b.extend_from_slice(msg);
        record(HANDSHAKE, 0, &b)
    }

    #[test]
    fn reads_a_client_hello_and_refuses_other_records() {
        let h = client_hello(&hello(&[0xc0a8, 0x00ff], b"")).unwrap_or_else(|| panic!("hello"));
        assert_eq!(h.suites, vec![0xc0a8, 0x00ff]);
        assert!(!h.cookie);
        assert!(client_hello(&hello(&[0xc0a8], b"abc")).is_some_and(|h| h.cookie));
        let mut later = hello(&[0xc0a8], b"");
        later[4] = 1;
        assert_eq!(client_hello(&later), None, "not epoch 0");
        assert_eq!(client_hello(&hello(&[0xc0a8], b"")[..40]), None);
        assert_eq!(client_hello(&[23, 0xfe, 0xfd]), None);
        assert_eq!(client_hello(&[]), None);
    }

    #[test]
    fn refuses_what_the_dtls_stack_would_misread() {
        assert!(records_ok(&hello(&[0xc0a8], b"")));
        // A PSK ClientKeyExchange (identity "ab") and an ECDHE one (3-byte point).
        assert!(records_ok(&key_exchange(&[0, 2, b'a', b'b'])));
        assert!(records_ok(&key_exchange(&[3, 1, 2, 3])));
        // Empty and 1-byte ClientKeyExchange: webrtc-dtls 0.12 indexes past their end.
        assert!(!records_ok(&key_exchange(&[])));
        assert!(!records_ok(&key_exchange(&[5])));
        // An empty ClientKeyExchange behind a ClientHello header in the same record.
        let mut two_messages = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        two_messages.extend_from_slice(&[16, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(!records_ok(&record(HANDSHAKE, 0, &two_messages)));
        // A ServerKeyExchange (type 12) from a client.
        assert!(!records_ok(&record(
            HANDSHAKE,
            0,
            &[12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        )));
        // Truncated records, unknown content types.
        assert!(!records_ok(&hello(&[0xc0a8], b"")[..20]));
        assert!(!records_ok(&record(99, 0, b"x")));
        // Two records in one datagram; an encrypted (epoch 1) handshake record passes.
        let mut two = record(20, 0, &[1]);
        two.extend(record(HANDSHAKE, 1, &[0xde, 0xad]));
        assert!(records_ok(&two));
    }
}
