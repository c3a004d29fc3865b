//! The subscription index of this hub's sessions and the routing of a message to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cmq_topic::{SubscriptionTrie, parse_shared};
use smallvec::SmallVec;

use super::Broker;
use super::message::{Delivery, Message, SessionId, SubOptions, min_qos};
use super::session::{Queued, Session};

/// Deliveries that found a connected session's queue full, for the publisher to wait on.
pub(super) type Blocked = SmallVec<[(Arc<Session>, Delivery); 2]>;

/// A subscription held by one session.
#[derive(Debug, Clone)]
pub(super) struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubOptions,
}

/// Members of one shared subscription (`$share/{group}/{filter}`); each message goes to one.
#[derive(Debug, Default)]
pub(super) struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Picks the next member round-robin, preferring a connected one.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_online())
            .or_else(|| self.members.get(start % n))
    }
}

/// Direct and shared subscriptions of every session of the hub.
#[derive(Default)]
pub(super) struct Subscriptions {
    direct: SubscriptionTrie<SessionId, Subscriber>,
    shared: SubscriptionTrie<Arc<str>, SharedGroup>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid topic filter: {0}")]
    InvalidFilter(#[from] cmq_topic::TopicError),
    #[error("no-local is not allowed on a shared subscription")]
    NoLocalOnShared,
}

impl Broker {
    /// Adds or replaces a subscription. Returns whether the session already had it.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubOptions,
    ) -> Result<bool, SubscribeError> {
        let subscriber = Subscriber {
            session: session.clone(),
            options,
        };
        let mut subs = self.subscriptions.write();
        let existed = match parse_shared(filter)? {
            Some(shared) => {
                if options.no_local {
                    return Err(SubscribeError::NoLocalOnShared);
                }
                cmq_topic::validate_filter(shared.filter, &self.limits.topic)?;
                let group: Arc<str> = Arc::from(shared.group);
                if subs.shared.get(shared.filter, &group).is_none() {
                    subs.shared
                        .insert(shared.filter, group.clone(), SharedGroup::default());
                }
                match subs.shared.get_mut(shared.filter, &group) {
                    Some(g) => match g.members.iter_mut().find(|m| m.session.id == session.id) {
                        Some(m) => {
                            m.options = options;
                            true
                        }
                        None => {
                            g.members.push(subscriber);
                            false
                        }
                    },
                    None => false,
                }
            }
            None => {
                cmq_topic::validate_filter(filter, &self.limits.topic)?;
                subs.direct.insert(filter, session.id, subscriber).is_some()
            }
        };
        drop(subs);
        if !existed {
            self.metrics.subscriptions.inc();
            self.state.bus.interest(filter, true);
        }
        Ok(existed)
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        let mut subs = self.subscriptions.write();
        let removed = match parse_shared(filter) {
            Ok(Some(shared)) => {
                let group: Arc<str> = Arc::from(shared.group);
                let (removed, empty) = match subs.shared.get_mut(shared.filter, &group) {
                    Some(g) => {
                        let before = g.members.len();
                        g.members.retain(|m| m.session.id != session.id);
                        (g.members.len() < before, g.members.is_empty())
                    }
                    None => (false, false),
                };
                if empty {
                    subs.shared.remove(shared.filter, &group);
                }
                removed
            }
            Ok(None) => subs.direct.remove(filter, &session.id).is_some(),
            Err(_) => false,
        };
        drop(subs);
        if removed {
            self.metrics.subscriptions.dec();
            self.state.bus.interest(filter, false);
        }
        removed
    }

    /// Delivers `message` to every matching session of this hub: one copy per session with
    /// the highest QoS and every subscription id of its matching subscriptions (MQTT 5
    /// 3.3.4), and one copy per shared group. Returns the number of sessions reached.
    pub(super) fn route(&self, message: &Arc<Message>, blocked: &mut Blocked) -> usize {
        self.route_direct(message, None, blocked) + self.route_shared(message, blocked)
    }

    /// Delivers to the direct (not shared) subscribers. With `via`, the message came from
    /// the cluster through the subscription of that filter, and NATS sends one copy per
    /// matching filter of this hub: only the copy of the smallest matching filter is
    /// routed, so each session gets one.
    pub(super) fn route_direct(
        &self,
        message: &Arc<Message>,
        via: Option<&str>,
        blocked: &mut Blocked,
    ) -> usize {
        let subs = self.subscriptions.read();
        let mut hits: SmallVec<[(SessionId, &Subscriber); 16]> = SmallVec::new();
        let mut last_filter: *const u8 = std::ptr::null();
        let mut filters = 0usize;
        let mut smallest: Option<&str> = None;
        subs.direct
            .for_each_match(&message.topic, |filter, sid, sub| {
                if via.is_some() && smallest.is_none_or(|s| filter < s) {
                    smallest = Some(filter);
                }
                if sub.options.no_local
                    && message
                        .origin
                        .as_ref()
                        .is_some_and(|o| o.is(*sid, &sub.session.client_id))
                {
                    return;
                }
                if !std::ptr::eq(filter.as_ptr(), last_filter) {
                    filters += 1;
                    last_filter = filter.as_ptr();
                }
                hits.push((*sid, sub));
            });
        if via.is_some() && smallest != via {
            return 0;
        }
        let mut reached = 0;
        if filters <= 1 {
            // One filter: its keys are unique, nothing to merge (the common case).
            for (_, sub) in &hits {
                let ids = sub_ids(sub.options.subscription_id);
                reached += self.deliver(sub, message, sub.options, ids, blocked);
            }
        } else {
            hits.sort_unstable_by_key(|(sid, _)| *sid);
            for run in hits.chunk_by(|a, b| a.0 == b.0) {
                let mut options = run[0].1.options;
                let mut ids = Vec::new();
                for (_, sub) in run {
                    let o = sub.options;
                    if (o.qos as u8) > (options.qos as u8) {
                        options.qos = o.qos;
                    }
                    options.retain_as_published |= o.retain_as_published;
                    if o.subscription_id != 0 {
                        ids.push(o.subscription_id);
                    }
                }
                reached += self.deliver(run[0].1, message, options, ids, blocked);
            }
        }
        reached
    }

    /// Delivers to one member of each matching shared group.
    fn route_shared(&self, message: &Arc<Message>, blocked: &mut Blocked) -> usize {
        let subs = self.subscriptions.read();
        let mut reached = 0;
        subs.shared.for_each_match(&message.topic, |_, _, group| {
            if let Some(sub) = group.pick() {
                let ids = sub_ids(sub.options.subscription_id);
                reached += self.deliver(sub, message, sub.options, ids, blocked);
            }
        });
        reached
    }

    /// Delivers to one member of the shared group `group` of `filter` (chosen for this hub by
    /// the cluster).
    pub(super) fn route_shared_group(
        &self,
        message: &Arc<Message>,
        filter: &str,
        group: &str,
        blocked: &mut Blocked,
    ) -> usize {
        let subs = self.subscriptions.read();
        let group: Arc<str> = Arc::from(group);
        let Some(member) = subs.shared.get(filter, &group).and_then(SharedGroup::pick) else {
            return 0;
        };
        let ids = sub_ids(member.options.subscription_id);
        self.deliver(member, message, member.options, ids, blocked)
    }

    fn deliver(
        &self,
        sub: &Subscriber,
        message: &Arc<Message>,
        options: SubOptions,
        subscription_ids: Vec<u32>,
        blocked: &mut Blocked,
    ) -> usize {
        let delivery = Delivery {
            message: message.clone(),
            qos: min_qos(message.qos, options.qos),
            retain: options.retain_as_published && message.retain,
            subscription_ids,
        };
        if blocked.iter().any(|(s, _)| Arc::ptr_eq(s, &sub.session)) {
            // An earlier message waits for room in this session's queue: keep the order.
            blocked.push((sub.session.clone(), delivery));
            return 1;
        }
        match sub.session.push(delivery) {
            Queued::Yes => 1,
            Queued::EvictedQos0 => {
                self.metrics.dropped_queue_full.inc();
                1
            }
            Queued::Dropped => {
                self.metrics.dropped_queue_full.inc();
                0
            }
            Queued::Full(delivery) => {
                blocked.push((sub.session.clone(), delivery));
                1
            }
        }
    }

    /// Retained messages for a new subscription, as deliveries for `options`.
    pub async fn retained_for(
        &self,
        filter: &str,
        options: SubOptions,
    ) -> Result<Vec<Delivery>, crate::state::StateError> {
        let messages = self.state.retained.matching(filter).await?;
        Ok(messages
            .into_iter()
            .map(|m| Delivery {
                qos: min_qos(m.qos, options.qos),
                retain: true,
                subscription_ids: sub_ids(options.subscription_id),
                message: m,
            })
            .collect())
    }
}

fn sub_ids(id: u32) -> Vec<u32> {
    if id == 0 { Vec::new() } else { vec![id] }
}
