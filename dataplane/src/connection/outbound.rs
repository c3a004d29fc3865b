//! Messages to the client: deliveries from the session's mailbox, within the client's
//! receive maximum and maximum packet size, with outgoing topic aliases; and the resend of
//! unacknowledged messages when a session resumes.

use std::sync::Arc;
use std::time::Instant;

use mqttbytes::QoS;
use mqttbytes::v5::{Packet, PubRel};

use super::{Connection, FLUSH_AT};
use crate::broker::{Delivery, Inflight, Stage};
use crate::codec::{OutgoingPublish, encode_publish, publish_size};

/// Deliveries taken from the mailbox per lock.
const BATCH: usize = 256;

impl Connection {
    /// Moves deliveries from the mailbox into the write buffer until it is empty, the
    /// in-flight window is full, or the buffer should be flushed.
    pub(super) fn drain_mailbox(&mut self) {
        self.broker.resync_if_needed(&mut self.claim);
        let session = self.claim.session.clone();
        let mut batch = std::mem::take(&mut self.batch);
        let window = self.outbound_window();
        loop {
            let slots = window.saturating_sub(self.claim.state.inflight());
            let more = session.take_batch(&mut batch, BATCH, slots);
            let now = Instant::now();
            let mut rest = batch.drain(..);
            let mut stopped = false;
            while let Some(delivery) = rest.next() {
                if let Err(delivery) = self.write_delivery(delivery, now) {
                    // No packet id free (one stays unacknowledged for a whole id cycle):
                    // behave as a full window, keeping the order of what is left.
                    session.requeue_front(std::iter::once(delivery).chain(rest).collect());
                    stopped = true;
                    break;
                }
                if self.write_buf.len() >= FLUSH_AT {
                    // Flush first, then come back for the rest (in order).
                    session.requeue_front(rest.collect());
                    session.wake();
                    stopped = true;
                    break;
                }
            }
            if stopped || !more || self.claim.state.inflight() >= window {
                break;
            }
        }
        self.batch = batch;
    }

    /// QoS 1/2 messages in flight towards the client at most: its receive maximum, capped
    /// by the hub's own so a client cannot make the hub hold 65 535 unacknowledged messages.
    fn outbound_window(&self) -> usize {
        usize::from(
            self.client_receive_maximum
                .min(self.broker.limits.receive_maximum),
        )
    }

    /// Encodes one delivery; hands it back when no packet id is free.
    fn write_delivery(&mut self, d: Delivery, now: Instant) -> Result<(), Delivery> {
        let metrics = &self.broker.metrics;
        if d.message.expired(now) {
            metrics.dropped_expired.inc();
            return Ok(());
        }
        let topic: &Arc<str> = &d.message.topic;
        let (alias, new_alias) = self.outgoing_alias(topic);
        let mut out = OutgoingPublish {
            topic: if alias.is_some() && !new_alias {
                ""
            } else {
                topic
            },
            qos: d.qos as u8,
            retain: d.retain,
            dup: false,
            pkid: 0,
            payload: &d.message.payload,
            v5: self.version.is_v5(),
            props: d.message.properties.as_deref(),
            expiry: d.message.remaining_expiry(now),
            topic_alias: alias,
            sub_ids: &d.subscription_ids,
        };
        if publish_size(&out) > self.client_max_packet_size {
            // MQTT 5 3.1.2.11.4: too large for the client: discard as if delivered.
            metrics.dropped_too_large.inc();
            return Ok(());
        }
        if d.qos != QoS::AtMostOnce {
            let Some(pkid) = self.claim.state.next_packet_id() else {
                return Err(d);
            };
            out.pkid = pkid;
        }
        encode_publish(&out, &mut self.write_buf);
        let pkid = out.pkid;
        if new_alias && let Some(a) = alias {
            self.aliases
                .get_or_insert_with(Default::default)
                .outbound
                .insert(topic.clone(), a);
        }
        self.delivered[d.qos as usize] += 1;
        if d.qos == QoS::ExactlyOnce && d.message.stored.is_some() {
            // Cluster mode: the packet id must be on record before the PUBLISH leaves, so
            // a resume after a crash of this hub resends it with that id, not as new.
            self.qos2_unsaved = true;
        }
        if d.qos != QoS::AtMostOnce {
            self.claim.state.outgoing.push_back(Inflight {
                pkid,
                stage: Stage::Published(d),
            });
        }
        Ok(())
    }

    /// The alias to use for `topic`, and whether it is new (sent with the topic).
    fn outgoing_alias(&self, topic: &Arc<str>) -> (Option<u16>, bool) {
        if self.client_topic_alias_maximum == 0 || !self.version.is_v5() {
            return (None, false);
        }
        let outbound = self.aliases.as_ref().map(|a| &a.outbound);
        if let Some(a) = outbound.and_then(|o| o.get(topic)) {
            return (Some(*a), false);
        }
        let used = outbound.map_or(0, |o| o.len());
        if used < usize::from(self.client_topic_alias_maximum) {
            // Aliases are never reassigned, so the next free one is len + 1.
            return (Some(used as u16 + 1), true);
        }
        (None, false)
    }

    /// Resends unacknowledged PUBLISH (with DUP) and PUBREL packets of a resumed session,
    /// with their original packet ids (MQTT 5 4.4).
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let inflight: Vec<Inflight> = self.claim.state.outgoing.iter().cloned().collect();
        for entry in inflight {
            match entry.stage {
                Stage::Published(d) => {
                    let out = OutgoingPublish {
                        topic: &d.message.topic,
                        qos: d.qos as u8,
                        retain: d.retain,
                        dup: true,
                        pkid: entry.pkid,
                        payload: &d.message.payload,
                        v5: self.version.is_v5(),
                        props: d.message.properties.as_deref(),
                        expiry: d.message.remaining_expiry(now),
                        topic_alias: None,
                        sub_ids: &d.subscription_ids,
                    };
                    encode_publish(&out, &mut self.write_buf);
                }
                Stage::Released => self.send(Packet::PubRel(PubRel::new(entry.pkid))),
            }
        }
    }
}
