//! The broker's cluster-mode parts: routing what arrives from other hubs, the cursors of
//! stored messages each session got, replay after a resume, checkpoints, and giving a
//! session up to another hub.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cmq_topic::{matches, parse_shared};
use futures_util::future::BoxFuture;
use mqttbytes::QoS;
use tracing::{debug, info, warn};

use super::Broker;
use super::lifecycle::Claim;
use super::message::{Delivery, Message, StreamPos, SubOptions, min_qos};
use super::session::{Queued, Session, Stage, Tracking};
use super::subscriptions::Blocked;
use super::will::Will;
use crate::state::nats::Router;
use crate::state::nats::codec::Messages;
use crate::state::{OutgoingRecord, SessionRecord, StateError};

/// Stored messages fetched per replay request.
const REPLAY_PAGE: usize = 256;
/// How long an eviction waits for the connection to save its session.
const EVICT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a resumed session must catch up on.
#[derive(Debug, Default, Clone)]
pub struct ReplayPlan {
    pub subscriptions: Vec<(String, SubOptions)>,
    pub skip: HashSet<StreamPos>,
    /// Most messages to queue (an offline session's queue limit); the rest is dropped
    /// and counted, as a full queue on a single hub would.
    pub limit: usize,
}

impl Router for Broker {
    fn connections(&self) -> usize {
        self.connection_count()
    }

    fn route_remote(&self, filter: Arc<str>, messages: Messages) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every message of a batch is queued (or handed back) before any waiting for
            // room: a session never holds part of a batch while the rest waits on another
            // session's full queue, which would let its cursor pass the batch's sequence.
            let mut blocked = Blocked::new();
            let shared = parse_shared(&filter).ok().flatten();
            for message in &messages {
                match &shared {
                    Some(shared) => {
                        self.route_shared_group(message, shared.filter, shared.group, &mut blocked);
                    }
                    None => {
                        self.route_direct(message, Some(&filter), &mut blocked);
                    }
                }
            }
            for (session, delivery) in blocked {
                self.wait_for_room(&session, delivery).await;
            }
        })
    }

    fn adopt_orphan(&self, client_id: String, will: Option<Will>, expiry: u32, elapsed: u32) {
        if let Some(me) = self.me.upgrade() {
            me.adopt(client_id, will, expiry, elapsed);
        }
    }

    fn resync(&self) {
        let sessions: Vec<Arc<Session>> = self.registry.lock().values().cloned().collect();
        let mut marked = 0usize;
        for session in sessions {
            if let Some(t) = session.tracking.lock().as_mut() {
                t.resync = true;
                marked += 1;
            }
            session.wake();
        }
        self.metrics.cluster.resyncs.inc();
        info!(
            sessions = marked,
            "NATS link restored: sessions catch up from their cursors"
        );
    }

    fn evict(&self, client_id: String) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let Some(session) = self.registry.lock().get(client_id.as_str()).cloned() else {
                return false;
            };
            {
                let mut control = session.control.lock();
                if !control.connected {
                    return false;
                }
                control.remote_takeover = true;
                session.kick(control.generation);
            }
            // The connection holds the state until it has saved the session.
            let released =
                tokio::time::timeout(EVICT_TIMEOUT, session.state.clone().lock_owned()).await;
            if released.is_err() {
                warn!(client_id, "session not released in time for a takeover");
            }
            self.metrics.cluster.handed_over.inc();
            true
        })
    }
}

impl Broker {
    /// Runs the timers of a session a dead hub held: its will (a crash is an abnormal
    /// close; a released session's will may still be waiting for its delay) and expiry.
    fn adopt(self: &Arc<Self>, client_id: String, will: Option<Will>, expiry: u32, elapsed: u32) {
        self.metrics.cluster.orphans_adopted.inc();
        let client_id: Arc<str> = Arc::from(client_id);
        let expiry_left = if expiry == u32::MAX {
            expiry
        } else {
            expiry.saturating_sub(elapsed)
        };
        let will_left = will
            .as_ref()
            .map(|w| w.delay.min(expiry).saturating_sub(elapsed));
        // A will capped by the session's expiry (and not yet due) goes with the session's
        // end rather than on a timer racing it.
        let with_end = expiry != 0
            && expiry != u32::MAX
            && will.as_ref().is_some_and(|w| w.delay >= expiry)
            && will_left != Some(0);
        let (end_will, will) = if with_end { (will, None) } else { (None, will) };
        if expiry != 0 {
            self.schedule_shared_expiry(client_id.clone(), expiry_left, end_will);
        }
        let (Some(will), Some(left)) = (will, will_left) else {
            return;
        };
        let broker = self.clone();
        let delay = Duration::from_secs(u64::from(left));
        self.spawn_timer(
            tokio_util::sync::CancellationToken::new(),
            delay,
            async move {
                // A will due now was due when the hub died; a later one only if the
                // session is still not resumed.
                if delay.is_zero() || broker.state.sessions.untouched(&client_id).await {
                    info!(client_id = %client_id, "publishing the will of a dead hub's client");
                    broker.publish_will(will).await;
                }
            },
        );
    }

    /// Whether other hubs share this hub's sessions (cluster mode).
    pub fn is_cluster(&self) -> bool {
        self.state.sessions.is_shared()
    }

    /// Starts tracking a claimed session's stored messages; `record` is what it resumes.
    pub(super) fn start_tracking(&self, claim: &mut Claim, record: Option<&SessionRecord>) {
        let mut tracking = Tracking::default();
        let mut plan = ReplayPlan {
            limit: self.limits.max_queued_messages,
            ..ReplayPlan::default()
        };
        if let Some(record) = record {
            tracking.cursors = record.cursors.clone();
            plan.subscriptions = record
                .subscriptions
                .iter()
                .filter(|(f, _)| !f.starts_with("$share/"))
                .cloned()
                .collect();
            plan.skip = record.delivered.iter().copied().collect();
            // In flight again already (restored with their packet ids): skipped by the
            // replay, and tracked as queued so they settle into the cursors.
            let inflight = record.outgoing.iter().filter_map(|o| match o {
                OutgoingRecord::Published { pos, .. } => Some(*pos),
                OutgoingRecord::Released { .. } => None,
            });
            for pos in inflight {
                plan.skip.insert(pos);
                tracking.recent.push(pos);
            }
            tracking.replaying = !plan.subscriptions.is_empty() && !tracking.cursors.is_empty();
        }
        let replay = tracking.replaying;
        *claim.session.tracking.lock() = Some(Box::new(tracking));
        claim.replay = replay.then(|| Box::new(plan));
    }

    /// Called by the connection on each wake-up: starts a catch-up from the cursors when
    /// the live feed may have lost messages. What was queued since the cursors is skipped.
    pub fn resync_if_needed(self: &Arc<Self>, claim: &mut Claim) {
        let skip = {
            let mut guard = claim.session.tracking.lock();
            let Some(t) = guard.as_mut().filter(|t| t.resync) else {
                return;
            };
            t.resync = false;
            if t.replaying || t.cursors.is_empty() {
                return;
            }
            t.replaying = true;
            t.older.iter().chain(&t.recent).copied().collect()
        };
        let subscriptions = claim
            .state
            .subscriptions
            .iter()
            .filter(|(f, o)| !f.starts_with("$share/") && o.qos != QoS::AtMostOnce)
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        claim.replay = Some(Box::new(ReplayPlan {
            subscriptions,
            skip,
            limit: usize::MAX,
        }));
        self.start_replay(claim);
    }

    /// Starts catching a resumed session up from its cursors (after CONNACK is queued).
    pub fn start_replay(self: &Arc<Self>, claim: &mut Claim) {
        let Some(plan) = claim.replay.take() else {
            return;
        };
        let broker = self.clone();
        let session = claim.session.clone();
        tokio::spawn(async move {
            let mut plan = *plan;
            let mut backoff = Duration::from_millis(200);
            loop {
                match broker.replay(&session, plan.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        // NATS may be electing a stream leader or reconnecting: try again,
                        // live messages stay buffered meanwhile.
                        warn!(client_id = %session.client_id, error = %e, "replay of stored messages failed; retrying");
                    }
                }
                if !session.is_online() {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // What the failed attempt queued is not replayed again.
                if let Some(t) = session.tracking.lock().as_ref() {
                    plan.skip.extend(t.recent.iter().chain(&t.older).copied());
                }
            }
            // The connection is gone: leave no session stuck in replay.
            if let Some(t) = session.tracking.lock().as_mut() {
                t.replaying = false;
                t.buffer.clear();
            }
        });
    }

    async fn replay(&self, session: &Arc<Session>, plan: ReplayPlan) -> Result<(), StateError> {
        // Live subscriptions first, so nothing stored after the replay's end is missed.
        self.state.bus.sync_interest().await?;
        let filters: Vec<String> = plan.subscriptions.iter().map(|(f, _)| f.clone()).collect();
        let mut replayed = 0usize;
        loop {
            let cursors = match session.tracking.lock().as_mut() {
                Some(t) => {
                    t.overflowed = false;
                    t.cursors.clone()
                }
                None => return Ok(()),
            };
            let mut high: Vec<u64> = cursors.clone();
            for (shard, &cursor) in cursors.iter().enumerate() {
                let shard = u16::try_from(shard).unwrap_or(u16::MAX);
                let mut after = cursor;
                loop {
                    if !session.is_online() {
                        return Ok(());
                    }
                    let page = self
                        .state
                        .bus
                        .replay(shard, after, &filters, REPLAY_PAGE)
                        .await?;
                    let Some(last) = page.last().and_then(|m| m.stored) else {
                        break;
                    };
                    after = last.seq;
                    for message in page {
                        let Some(pos) = message.stored else { continue };
                        if plan.skip.contains(&pos) {
                            continue;
                        }
                        if let Some(delivery) = delivery_for(session, &plan.subscriptions, &message)
                        {
                            replayed += 1;
                            if replayed > plan.limit {
                                // Dropped like an overflow; settled so it is not replayed.
                                self.metrics.dropped_queue_full.inc();
                                if let Some(t) = session.tracking.lock().as_mut() {
                                    t.recent.push(pos);
                                }
                                continue;
                            }
                            self.push_waiting(session, delivery, pos).await;
                        }
                    }
                }
                if let Some(h) = high.get_mut(usize::from(shard)) {
                    *h = after;
                }
            }
            // Hand over to live delivery: what the live feed brought meanwhile, past the
            // replay's end, goes out in order; then live messages are queued directly.
            loop {
                let batch = {
                    let mut guard = session.tracking.lock();
                    let Some(t) = guard.as_mut() else {
                        return Ok(());
                    };
                    if t.overflowed {
                        break;
                    }
                    if t.buffer.is_empty() {
                        t.replaying = false;
                        self.metrics.cluster.replayed.inc_by(replayed as u64);
                        debug!(client_id = %session.client_id, replayed, "replay done");
                        return Ok(());
                    }
                    std::mem::take(&mut t.buffer)
                };
                for delivery in batch {
                    let Some(pos) = delivery.message.stored else {
                        continue;
                    };
                    let done = high
                        .get(usize::from(pos.shard))
                        .is_some_and(|&h| pos.seq <= h);
                    if !done && !plan.skip.contains(&pos) {
                        self.push_waiting(session, delivery, pos).await;
                    }
                }
            }
            info!(client_id = %session.client_id, "live buffer overflowed during replay; replaying again");
            if let Some(t) = session.tracking.lock().as_mut() {
                // Everything up to `high` was queued: continue from there.
                for (c, h) in t.cursors.iter_mut().zip(&high) {
                    *c = (*c).max(*h);
                }
            }
        }
    }

    /// Queues a replayed message, waiting while the connection drains a full queue.
    async fn push_waiting(&self, session: &Session, mut delivery: Delivery, pos: StreamPos) {
        loop {
            let room = session.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match session.push_tracked(delivery, pos) {
                Queued::Full(d) => delivery = d,
                Queued::Dropped => {
                    self.metrics.dropped_queue_full.inc();
                    return;
                }
                Queued::Yes | Queued::EvictedQos0 => return,
            }
            if !session.is_online() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), room).await;
        }
    }

    /// Moves positions that are one tick old into the cursors (called every tick by the
    /// session's connection). Returns whether the session has something to checkpoint.
    pub fn tick(&self, claim: &Claim) -> bool {
        // Pending is read under the tracking lock: a message queued meanwhile is then
        // either pending here or recorded only after this tick.
        let mut guard = claim.session.tracking.lock();
        let pending = pending_positions(claim);
        let Some(t) = guard.as_mut() else {
            return false;
        };
        if t.replaying {
            return t.dirty;
        }
        let older = std::mem::take(&mut t.older);
        for pos in &older {
            let shard = usize::from(pos.shard);
            let cap = pending
                .iter()
                .filter(|p| p.shard == pos.shard)
                .map(|p| p.seq - 1)
                .min()
                .unwrap_or(u64::MAX);
            if let Some(c) = t.cursors.get_mut(shard) {
                *c = (*c).max(pos.seq.min(cap));
            }
        }
        let cursors = t.cursors.clone();
        let above = |p: &StreamPos| {
            cursors
                .get(usize::from(p.shard))
                .is_some_and(|&c| p.seq > c)
        };
        let mut carried: Vec<StreamPos> = older.into_iter().filter(above).collect();
        carried.append(&mut t.recent);
        t.older = carried;
        t.dirty
    }

    /// The session's record as it stands.
    pub async fn record_of(&self, claim: &Claim, connected: bool) -> SessionRecord {
        let missing = claim
            .session
            .tracking
            .lock()
            .as_ref()
            .is_some_and(|t| t.cursors.is_empty());
        let heads = if missing {
            match self.state.bus.heads().await {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(error = %e, "could not read the message stream heads");
                    None
                }
            }
        } else {
            None
        };
        // Pending is read under the tracking lock (see `tick`): a message queued in between
        // must not be listed as delivered.
        let mut guard = claim.session.tracking.lock();
        let pending = pending_positions(claim);
        let (cursors, delivered) = match guard.as_mut() {
            Some(t) => {
                if let Some(heads) = heads
                    && t.cursors.is_empty()
                {
                    t.cursors = heads;
                }
                t.dirty = false;
                let cursors = t.cursors.clone();
                let delivered = t
                    .older
                    .iter()
                    .chain(&t.recent)
                    .filter(|p| {
                        cursors
                            .get(usize::from(p.shard))
                            .is_some_and(|&c| p.seq > c)
                            && !pending.contains(p)
                    })
                    .copied()
                    .collect();
                (cursors, delivered)
            }
            None => (Vec::new(), Vec::new()),
        };
        SessionRecord {
            client_id: claim.session.client_id.to_string(),
            subscriptions: claim
                .state
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
            expiry_interval: claim.state.expiry_interval,
            cursors,
            delivered,
            connected,
            incoming_qos2: claim.state.incoming_qos2.clone(),
            outgoing: claim
                .state
                .outgoing
                .iter()
                .filter_map(|i| match &i.stage {
                    Stage::Published(d) => d.message.stored.map(|pos| OutgoingRecord::Published {
                        pkid: i.pkid,
                        pos,
                        qos: d.qos,
                        retain: d.retain,
                    }),
                    Stage::Released => Some(OutgoingRecord::Released { pkid: i.pkid }),
                })
                .collect(),
        }
    }

    /// Saves a persistent session's record (cluster mode): after SUBSCRIBE/UNSUBSCRIBE and
    /// at checkpoints, so another hub can resume it if this one dies.
    pub async fn checkpoint(&self, claim: &Claim) -> Result<(), StateError> {
        if !self.is_cluster() || claim.state.expiry_interval == 0 {
            return Ok(());
        }
        let record = self.record_of(claim, true).await;
        self.state.sessions.save(record).await
    }

    /// Cluster mode: a connection of a persistent session ended. Saves the record for any
    /// hub to resume, lets go of the local copy and keeps only the timers.
    pub(super) async fn release_shared(
        self: &Arc<Self>,
        mut claim: Claim,
        will: Option<Will>,
        remote_takeover: bool,
    ) {
        let session = claim.session.clone();
        let expiry = claim.state.expiry_interval;
        let record = self.record_of(&claim, false).await;
        let saved = self.state.sessions.save(record).await;
        if let Err(e) = &saved {
            warn!(client_id = %session.client_id, error = %e, "could not save the session record");
        }
        // Stored messages still queued are replayed from the cursors on resume.
        self.end_session(&session, &mut claim.state);
        drop(claim);
        let client_id = session.client_id.clone();
        let delayed_will = will.as_ref().filter(|w| w.delay > 0 && !remote_takeover);
        let timers =
            saved.is_ok() && !remote_takeover && (expiry != u32::MAX || delayed_will.is_some());
        if timers {
            // If this hub dies before the timers run, another hub runs them.
            self.state
                .sessions
                .park(&client_id, delayed_will, expiry)
                .await;
        } else {
            self.state.sessions.retire(&client_id).await;
        }
        let Some(will) = will else {
            if timers {
                self.schedule_shared_expiry(client_id, expiry, None);
            }
            return;
        };
        if remote_takeover || saved.is_err() {
            // The client is connected again elsewhere: a will waiting for its delay is void.
            if will.delay == 0 {
                self.publish_will(will).await;
            }
            return;
        }
        if will.delay == 0 {
            self.schedule_shared_expiry(client_id, expiry, None);
            self.publish_will(will).await;
            return;
        }
        if expiry != u32::MAX && will.delay >= expiry {
            // The session ends first (or at the same moment): the will goes with its end.
            // Two timers of the same length would race, and the will's check would find
            // the record already gone.
            self.schedule_shared_expiry(client_id, expiry, Some(will));
            return;
        }
        self.schedule_shared_expiry(client_id.clone(), expiry, None);
        let delay = Duration::from_secs(u64::from(will.delay.min(expiry)));
        let broker = self.clone();
        self.spawn_timer(
            tokio_util::sync::CancellationToken::new(),
            delay,
            async move {
                if broker.state.sessions.untouched(&client_id).await {
                    broker.publish_will(will).await;
                }
            },
        );
    }

    /// Removes a session record this hub left, once its expiry passes without a resume.
    /// `will`, if any, is published when the session ends.
    fn schedule_shared_expiry(
        self: &Arc<Self>,
        client_id: Arc<str>,
        expiry: u32,
        will: Option<Will>,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let broker = self.clone();
        let delay = Duration::from_secs(u64::from(expiry));
        self.spawn_timer(
            tokio_util::sync::CancellationToken::new(),
            delay,
            async move {
                if broker.state.sessions.expire(&client_id).await {
                    info!(client_id = %client_id, "session expired");
                    broker.state.sessions.retire(&client_id).await;
                    if let Some(will) = will {
                        broker.publish_will(will).await;
                    }
                }
            },
        );
    }
}

/// Stored messages the session has queued or in flight (not yet acknowledged).
fn pending_positions(claim: &Claim) -> Vec<StreamPos> {
    let mut out = Vec::new();
    claim.session.queued_positions(&mut out);
    out.extend(claim.state.outgoing.iter().filter_map(|i| match &i.stage {
        Stage::Published(d) => d.message.stored,
        Stage::Released => None,
    }));
    out
}

/// The delivery of a replayed message to a session with `subscriptions`, if any matches.
fn delivery_for(
    session: &Session,
    subscriptions: &[(String, SubOptions)],
    message: &Arc<Message>,
) -> Option<Delivery> {
    let mut best: Option<SubOptions> = None;
    let mut ids = Vec::new();
    for (filter, options) in subscriptions {
        if !matches(filter, &message.topic) {
            continue;
        }
        let own = message
            .origin
            .as_ref()
            .is_some_and(|o| *o.client_id == *session.client_id);
        if options.no_local && own {
            continue;
        }
        if options.subscription_id != 0 {
            ids.push(options.subscription_id);
        }
        best = Some(match best {
            Some(mut b) => {
                if (options.qos as u8) > (b.qos as u8) {
                    b.qos = options.qos;
                }
                b.retain_as_published |= options.retain_as_published;
                b
            }
            None => *options,
        });
    }
    let options = best?;
    let qos = min_qos(message.qos, options.qos);
    if qos == QoS::AtMostOnce {
        // Only QoS 1/2 deliveries are owed to an offline session.
        return None;
    }
    Some(Delivery {
        message: message.clone(),
        qos,
        retain: options.retain_as_published && message.retain,
        subscription_ids: ids,
    })
}
