//! What flows through the hub: a published message, shared by every subscriber it reaches,
//! and a delivery, one subscriber's view of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttbytes::QoS;
use mqttbytes::v5::PublishProperties;

/// Identifies a session inside one hub (never reused while the hub runs).
pub type SessionId = u64;

/// A message as published, shared (`Arc`) by every delivery.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers (payload format, content type, response
    /// topic, correlation data, user properties). Expiry, alias and subscription ids are
    /// per delivery and not kept here.
    pub properties: Option<Box<PublishProperties>>,
    /// When the message expires (MQTT 5 message expiry interval).
    pub expires_at: Option<Instant>,
    /// The publishing session, for no-local; `None` for wills and internal messages.
    pub origin: Option<Origin>,
    /// Where the cluster stored it (QoS 1/2 in cluster mode), for session cursors.
    pub stored: Option<StreamPos>,
    /// The ForwardRule that republished it (that rule never matches it again).
    pub rule: Option<Arc<str>>,
}

/// Who published a message.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The publishing session on this hub (0 when it is on another hub).
    pub session: SessionId,
    pub client_id: Arc<str>,
    /// The username the client presented, for the rule engine.
    pub username: Option<Arc<str>>,
}

impl Origin {
    /// Whether the message came from session `sid` (here) or client `client_id` (another
    /// hub, where the session id means nothing).
    pub fn is(&self, sid: SessionId, client_id: &str) -> bool {
        if self.session == 0 {
            *self.client_id == *client_id
        } else {
            self.session == sid
        }
    }
}

/// A message's place in the cluster's message streams: shard, stream sequence, and its
/// index in the stored message when that holds a batch (0 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPos {
    pub shard: u16,
    pub seq: u64,
    pub idx: u16,
}

impl Message {
    /// Whether the message may be stored in one batch with others of its connection and
    /// topic (cluster mode): only the payload differs inside a batch, so QoS 1 without
    /// retain flag, properties, expiry or rule.
    pub fn batchable(&self) -> bool {
        self.qos == QoS::AtLeastOnce
            && !self.retain
            && self.properties.is_none()
            && self.expires_at.is_none()
            && self.rule.is_none()
    }

    /// Whether the message expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Remaining expiry interval in whole seconds, rounded up so a message that is still
    /// valid never reports 0 (MQTT 5 3.3.2.3.3).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Builds the expiry instant from an MQTT 5 interval.
    pub fn expiry_from(interval: Option<u32>, now: Instant) -> Option<Instant> {
        interval.map(|s| now + Duration::from_secs(u64::from(s)))
    }
}

/// Options of one subscription (MQTT 5 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier (0 = none).
    pub subscription_id: u32,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// Retain flag as the subscriber sees it.
    pub retain: bool,
    /// Identifiers of every subscription that matched (one copy per session).
    pub subscription_ids: Vec<u32>,
}

/// The lower of two QoS levels.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}
