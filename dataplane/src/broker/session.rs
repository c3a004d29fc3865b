//! A session: what outlives a connection (subscriptions, queued and in-flight messages) and
//! the handles a connection uses to own it.
//!
//! Ownership: the live connection holds `state` (a tokio mutex) for as long as it runs, so a
//! takeover is "kick the old connection, then wait for the lock". The mailbox is separate so
//! publishers never wait for a connection: they push under a short lock and wake it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use mqttbytes::QoS;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::message::{Delivery, SessionId, StreamPos, SubOptions};

/// Result of queueing a delivery.
#[derive(Debug)]
pub enum Queued {
    /// Queued.
    Yes,
    /// Queued, but an older QoS 0 delivery was dropped to make room.
    EvictedQos0,
    /// The queue was full: this delivery was dropped.
    Dropped,
    /// The queue of a connected session is full of QoS 1/2 messages: the delivery is handed
    /// back so the publisher can wait for room (backpressure) instead of losing it.
    Full(Delivery),
}

/// A session shared between the registry, the subscription index and its connection.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: Arc<str>,
    mailbox: Mutex<VecDeque<Delivery>>,
    max_queued: usize,
    /// The owning connection's task, woken when the mailbox goes from empty to non-empty,
    /// on control changes, kicks and hub shutdown. One slot, not a `Notify`: only the owner
    /// waits, and an idle connection then carries no waiter of its own in its task.
    waker: AtomicWaker,
    /// A wake-up the owner has not seen yet (the permit a `Notify` would keep).
    woken: AtomicBool,
    /// Every connection of a generation up to this one must leave (takeover, eviction).
    kicked_upto: AtomicU64,
    /// Woken when the connection takes deliveries out of a full mailbox.
    pub space: Notify,
    /// State owned by the live connection (or parked between connections).
    pub state: Arc<tokio::sync::Mutex<SessionState>>,
    pub control: Mutex<Control>,
    /// Whether a connection is attached (lock-free copy of `Control::connected` for routing).
    online: AtomicBool,
    /// A publisher waited in vain for room: further overflow is dropped at once until the
    /// connection takes messages again, so one stuck subscriber cannot stall publishers.
    stalled: AtomicBool,
    /// Cluster mode: which stored messages the session got (boxed: standalone has none).
    pub tracking: Mutex<Option<Box<Tracking>>>,
}

/// Which stored messages a session got, for its cursors (cluster mode). Messages from
/// different filters may arrive out of stream order, so a position only settles into the
/// cursor one checkpoint tick after it was queued; until then it is listed as delivered.
#[derive(Debug, Default)]
pub struct Tracking {
    /// Per shard: every matching stored message at or below it was delivered.
    pub cursors: Vec<u64>,
    /// Positions queued since the last tick, and in the tick before.
    pub recent: Vec<StreamPos>,
    pub older: Vec<StreamPos>,
    /// A replay from the cursors runs: live stored messages wait in `buffer`.
    pub replaying: bool,
    pub buffer: Vec<Delivery>,
    /// The buffer overflowed: the replay must run again from where it got.
    pub overflowed: bool,
    /// Something changed since the last checkpoint.
    pub dirty: bool,
    /// The live feed may have lost messages (NATS reconnected): catch up from the cursors.
    pub resync: bool,
}

/// Who currently owns the session, and its pending timers.
#[derive(Debug, Default)]
pub struct Control {
    /// Bumped every time a connection claims the session.
    pub generation: u64,
    /// Whether a connection is attached.
    pub connected: bool,
    /// Cancels the pending will-delay and session-expiry timers of a disconnected session.
    pub timers: Option<CancellationToken>,
    /// Set once the session has ended; a connection that finds it so must start anew.
    pub ended: bool,
    /// The will of the last connection, waiting for its delay (or the session end).
    /// Boxed: rare, and every session carries the field.
    pub pending_will: Option<Box<super::will::Will>>,
    /// The connection was closed because another hub took the session over.
    pub remote_takeover: bool,
}

/// Everything about a session that survives a reconnect.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by their full filter text (`$share/...` included).
    pub subscriptions: HashMap<String, SubOptions>,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement, in the order they were sent.
    pub outgoing: VecDeque<Inflight>,
    /// Packet ids of incoming QoS 2 messages awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// Next packet id to use when nothing is in flight.
    pub next_pkid: u16,
    /// Session expiry interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
    /// Whether a connection has ever completed with this state (for "session present").
    pub established: bool,
}

/// One outgoing QoS 1/2 message in flight.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub pkid: u16,
    pub stage: Stage,
}

/// Where an outgoing in-flight message stands.
#[derive(Debug, Clone)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

impl SessionState {
    /// Allocates the packet id for the next outgoing message, or `None` when all 65 535 are
    /// in flight. Ids are handed out in increasing (cyclic) order and acknowledgements only
    /// remove entries, so the ids in flight stay a cyclic increasing run from the front to
    /// the back; the successor of the back is free unless it is the front.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        let candidate = match self.outgoing.back() {
            Some(back) => next_id(back.pkid),
            None => next_id(self.next_pkid),
        };
        if self.outgoing.front().is_some_and(|f| f.pkid == candidate) {
            return None;
        }
        self.next_pkid = candidate;
        Some(candidate)
    }

    /// Removes and returns the in-flight entry with `pkid`.
    pub fn take_inflight(&mut self, pkid: u16) -> Option<Inflight> {
        // Acknowledgements mostly arrive in order, so the front is the usual hit.
        let pos = self.outgoing.iter().position(|i| i.pkid == pkid)?;
        self.outgoing.remove(pos)
    }

    /// Marks an outgoing QoS 2 message as released (PUBREC received).
    pub fn release(&mut self, pkid: u16) -> bool {
        match self.outgoing.iter_mut().find(|i| i.pkid == pkid) {
            Some(entry) => {
                entry.stage = Stage::Released;
                true
            }
            None => false,
        }
    }

    /// Number of outgoing messages counted against the client's receive maximum.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }
}

fn next_id(id: u16) -> u16 {
    if id == u16::MAX { 1 } else { id + 1 }
}

impl Session {
    /// A new, empty session.
    pub fn new(id: SessionId, client_id: Arc<str>, max_queued: usize) -> Self {
        Self {
            id,
            client_id,
            mailbox: Mutex::new(VecDeque::new()),
            max_queued,
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            kicked_upto: AtomicU64::new(0),
            space: Notify::new(),
            state: Arc::new(tokio::sync::Mutex::new(SessionState::default())),
            control: Mutex::new(Control::default()),
            online: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            tracking: Mutex::new(None),
        }
    }

    /// Queues a delivery, applying the queue limit: when full, QoS 0 is dropped first (an
    /// incoming QoS 0, or else the oldest queued QoS 0); a QoS 1/2 delivery that still finds
    /// no room is handed back (`Full`) when the session is connected, so its publisher can
    /// wait, and dropped when it is not.
    pub fn push(&self, delivery: Delivery) -> Queued {
        let Some(pos) = delivery.message.stored else {
            return self.enqueue(delivery);
        };
        {
            let mut tracking = self.tracking.lock();
            if let Some(t) = tracking.as_mut().filter(|t| t.replaying) {
                if t.buffer.len() >= self.max_queued.saturating_mul(4) {
                    t.overflowed = true;
                    t.buffer.clear();
                } else {
                    t.buffer.push(delivery);
                }
                return Queued::Yes;
            }
        }
        self.push_tracked(delivery, pos)
    }

    /// Queues a stored message and records its position (bypassing the replay buffer).
    pub fn push_tracked(&self, delivery: Delivery, pos: StreamPos) -> Queued {
        let outcome = self.enqueue(delivery);
        if matches!(outcome, Queued::Yes | Queued::EvictedQos0)
            && let Some(t) = self.tracking.lock().as_mut()
        {
            t.recent.push(pos);
            t.dirty = true;
        }
        outcome
    }

    /// Positions of the stored messages still queued.
    pub fn queued_positions(&self, out: &mut Vec<StreamPos>) {
        out.extend(self.mailbox.lock().iter().filter_map(|d| d.message.stored));
    }

    fn enqueue(&self, delivery: Delivery) -> Queued {
        let mut queue = self.mailbox.lock();
        let mut outcome = Queued::Yes;
        if queue.len() >= self.max_queued {
            if delivery.qos == QoS::AtMostOnce {
                return Queued::Dropped;
            }
            match queue.iter().position(|d| d.qos == QoS::AtMostOnce) {
                Some(pos) => {
                    queue.remove(pos);
                    outcome = Queued::EvictedQos0;
                }
                None if self.is_online() && !self.stalled.load(Ordering::Relaxed) => {
                    return Queued::Full(delivery);
                }
                None => return Queued::Dropped,
            }
        }
        let was_empty = queue.is_empty();
        queue.push_back(delivery);
        drop(queue);
        if was_empty {
            self.wake();
        }
        outcome
    }

    /// Wakes the owning connection (it drains the mailbox and re-checks its state).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once `wake` was called since the last time this returned ready. Registers the
    /// calling task as the session's owner.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Makes every connection of `generation` or older leave.
    pub fn kick(&self, generation: u64) {
        self.kicked_upto.fetch_max(generation, Ordering::AcqRel);
        self.wake();
    }

    /// Whether the connection of `generation` was told to leave.
    pub fn is_kicked(&self, generation: u64) -> bool {
        self.kicked_upto.load(Ordering::Acquire) >= generation
    }

    /// Ready once the connection of `generation` is told to leave.
    pub fn poll_kicked(&self, generation: u64, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.is_kicked(generation) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the connection of `generation` is told to leave.
    pub fn kicked(&self, generation: u64) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_kicked(generation, cx))
    }

    /// The owner is gone: drop its waker, which would keep its finished task allocated.
    pub fn forget_owner(&self) {
        drop(self.waker.take());
    }

    /// Moves up to `max` queued deliveries into `out`, stopping early when the next one
    /// needs an in-flight slot and `slots` is exhausted. Returns whether more are queued.
    pub fn take_batch(&self, out: &mut Vec<Delivery>, max: usize, mut slots: usize) -> bool {
        let mut queue = self.mailbox.lock();
        let was_full = queue.len() >= self.max_queued;
        while out.len() < max {
            match queue.front() {
                Some(d) if d.qos != QoS::AtMostOnce && slots == 0 => break,
                Some(_) => {}
                None => break,
            }
            let Some(d) = queue.pop_front() else { break };
            if d.qos != QoS::AtMostOnce {
                slots -= 1;
            }
            out.push(d);
        }
        let more = !queue.is_empty();
        let made_room = was_full && queue.len() < self.max_queued;
        drop(queue);
        if made_room {
            self.stalled.store(false, Ordering::Relaxed);
            self.space.notify_waiters();
        }
        more
    }

    /// Returns deliveries to the front of the queue (in their order), e.g. when a
    /// connection ends before sending them.
    pub fn requeue_front(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut queue = self.mailbox.lock();
        for d in deliveries.into_iter().rev() {
            queue.push_front(d);
        }
    }

    /// Marks the session as not taking messages (see `stalled`).
    pub fn mark_stalled(&self) {
        self.stalled.store(true, Ordering::Relaxed);
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Records whether a connection is attached.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Number of queued deliveries.
    pub fn queued(&self) -> usize {
        self.mailbox.lock().len()
    }

    /// Drops every queued delivery.
    pub fn clear_queue(&self) {
        self.mailbox.lock().clear();
    }

    /// Keeps the queued deliveries `keep` accepts; returns how many were dropped.
    pub fn retain_queued(&self, mut keep: impl FnMut(&Delivery) -> bool) -> usize {
        let mut mailbox = self.mailbox.lock();
        let before = mailbox.len();
        mailbox.retain(|d| keep(d));
        before - mailbox.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut s = SessionState {
            next_pkid: u16::MAX - 1,
            ..Default::default()
        };
        let a = s.next_packet_id().unwrap();
        s.outgoing.push_back(Inflight {
            pkid: a,
            stage: Stage::Released,
        });
        let b = s.next_packet_id().unwrap();
        assert_eq!((a, b), (u16::MAX, 1));
        s.outgoing.push_back(Inflight {
            pkid: b,
            stage: Stage::Released,
        });
        // Fill every id: the last allocation must fail instead of reusing the front.
        while let Some(id) = s.next_packet_id() {
            s.outgoing.push_back(Inflight {
                pkid: id,
                stage: Stage::Released,
            });
        }
        assert_eq!(s.outgoing.len(), u16::MAX as usize);
        assert!(s.take_inflight(5).is_some());
        assert_eq!(s.next_packet_id(), None, "5 is free but not next in order");
        s.take_inflight(u16::MAX).unwrap();
        assert_eq!(s.next_packet_id(), Some(u16::MAX));
    }

    #[test]
    fn a_held_id_blocks_allocation_only_when_the_run_wraps_onto_it() {
        let mut s = SessionState::default();
        let held = s.next_packet_id().unwrap();
        s.outgoing.push_back(Inflight {
            pkid: held,
            stage: Stage::Released,
        });
        // Keep two in flight behind the held one so the run never drains to it.
        let mut tail = std::collections::VecDeque::new();
        while let Some(id) = s.next_packet_id() {
            assert_ne!(id, held);
            s.outgoing.push_back(Inflight {
                pkid: id,
                stage: Stage::Released,
            });
            tail.push_back(id);
            if tail.len() > 2 {
                let old = tail.pop_front().unwrap();
                s.take_inflight(old).unwrap();
            }
        }
        assert_eq!(s.outgoing.back().map(|i| i.pkid), Some(u16::MAX));
        // Acknowledging the held message frees the cycle again.
        s.take_inflight(held).unwrap();
        assert_eq!(s.next_packet_id(), Some(1));
    }
}
