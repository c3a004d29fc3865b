//! Packets from the client: PUBLISH and its QoS flows, acknowledgements of what the hub
//! sent, SUBSCRIBE/UNSUBSCRIBE, PINGREQ and DISCONNECT.

use std::sync::Arc;
use std::time::Instant;

use mqttbytes::QoS;
use mqttbytes::v5::{
    DisconnectReasonCode as Dr, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, Publish, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tracing::{debug, warn};

use super::{Connection, Exit};
use crate::broker::{Message, Origin, Queued, SubOptions, SubscribeError};
use crate::codec;
use crate::state::StateError;

/// How long a 3.1.1 publisher's acknowledgement may wait for `sync` rules' sinks before
/// its connection is closed.
const SYNC_WAIT_311: std::time::Duration = std::time::Duration::from_secs(60);

impl Connection {
    pub(super) async fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(a) => {
                self.claim.state.take_inflight(a.pkid);
                Ok(())
            }
            Packet::PubRec(a) => {
                let found = self.claim.state.release(a.pkid);
                if (a.reason as u8) >= 0x80 {
                    // The client refused the message: the flow ends here.
                    self.claim.state.take_inflight(a.pkid);
                    return Ok(());
                }
                let mut rel = PubRel::new(a.pkid);
                if found {
                    // Cluster mode: "released" is on record before PUBREL leaves, so a
                    // resume after a crash sends PUBREL again, never the PUBLISH (which a
                    // client that already completed the flow would take as a new message).
                    self.qos2_unsaved = self.broker.is_cluster();
                } else {
                    rel.reason = PubRelReason::PacketIdentifierNotFound;
                }
                self.send(Packet::PubRel(rel));
                Ok(())
            }
            Packet::PubComp(a) => {
                if self.claim.state.take_inflight(a.pkid).is_some() {
                    // The client may reuse the id now: take it off the record, once for
                    // every PUBCOMP of this read (`process_input`).
                    self.qos2_completed = true;
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let pending = &mut self.claim.state.incoming_qos2;
                let mut comp = PubComp::new(r.pkid);
                match pending.iter().position(|id| *id == r.pkid) {
                    Some(pos) => {
                        pending.swap_remove(pos);
                        // The id may be reused once PUBCOMP is out: record that first.
                        Box::pin(self.save_qos2_state()).await?;
                    }
                    None => comp.reason = PubCompReason::PacketIdentifierNotFound,
                }
                self.send(Packet::PubComp(comp));
                Ok(())
            }
            // Boxed: SUBSCRIBE is rare and its future (retained lookup) is large; inline it
            // would make every connection's task bigger.
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(s)).await,
            Packet::Unsubscribe(u) => Box::pin(self.on_unsubscribe(u)).await,
            Packet::PingReq => {
                self.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            other => Err(Exit::violation(
                Dr::ProtocolError,
                format!("unexpected packet from a client: {other:?}"),
            )),
        }
    }

    /// Appends a control packet to the write buffer.
    pub(super) fn send(&mut self, packet: Packet) {
        // Control packets are small and well-formed; encoding them cannot fail.
        let _ = codec::encode_packet(&packet, self.version, &mut self.write_buf);
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), Exit> {
        let metrics = &self.broker.metrics;
        metrics.received[p.qos as usize].inc();
        if p.qos == QoS::AtMostOnce && p.dup {
            return Err(Exit::violation(
                Dr::MalformedPacket,
                "DUP set on a QoS 0 PUBLISH",
            ));
        }
        if p.properties
            .as_ref()
            .is_some_and(|pp| !pp.subscription_identifiers.is_empty())
        {
            return Err(Exit::violation(
                Dr::ProtocolError,
                "subscription identifier in a PUBLISH from a client",
            ));
        }
        let topic = self.resolve_topic(&p)?;
        if let Err(e) = cmq_topic::validate_name(&topic, &self.broker.limits.topic) {
            let wildcard = matches!(
                e,
                cmq_topic::TopicError::WildcardInName | cmq_topic::TopicError::NulChar
            );
            if wildcard || !self.version.is_v5() || p.qos == QoS::AtMostOnce {
                return Err(Exit::violation(
                    Dr::TopicNameInvalid,
                    format!("{e}: {topic:?}"),
                ));
            }
            self.in_order().await?;
            self.nack(&p, 0x90);
            return Ok(());
        }
        let props = p.properties;
        if props.as_ref().and_then(|pp| pp.payload_format_indicator) == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            debug!("payload format indicator 1 with a payload that is not UTF-8");
            if p.qos == QoS::AtMostOnce {
                return Err(Exit::violation(
                    Dr::PayloadFormatInvalid,
                    "payload is not UTF-8",
                ));
            }
            self.in_order().await?;
            self.nack_with(p.qos, p.pkid, 0x99);
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce && self.claim.state.incoming_qos2.contains(&p.pkid) {
            // A resend of a message already accepted: acknowledge, don't publish twice.
            self.in_order().await?;
            self.send(Packet::PubRec(PubRec::new(p.pkid)));
            return Ok(());
        }
        if !self.access.grant.is_allow_all()
            && !self.access.grant.may_publish(&topic, p.qos, p.retain)
        {
            self.broker.metrics.access.denied_publish.inc();
            debug!(topic = %topic, "publish denied by the ACL");
            if self.access.grant.verdicts.deny_disconnect {
                return Err(Exit::NotAuthorized);
            }
            // MQTT 5 gets 0x87; 3.1.1 has no reason codes, so its client sees a plain
            // acknowledgement (and does not resend forever) while the message is dropped.
            self.in_order().await?;
            self.nack_with(p.qos, p.pkid, 0x87);
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce {
            // Publishes whose store is pending are in flight too (cluster mode).
            let pending = self.stores.as_ref().map_or(0, |s| s.in_flight());
            if self.claim.state.incoming_qos2.len() + pending
                >= usize::from(self.broker.limits.receive_maximum)
            {
                return Err(Exit::violation(
                    Dr::ReceiveMaximumExceeded,
                    "too many QoS 2 in flight",
                ));
            }
        }
        let pipelined = p.qos != QoS::AtMostOnce && self.broker.state.bus.stores_messages();
        let now = Instant::now();
        let expires_at = Message::expiry_from(
            props.as_ref().and_then(|pp| pp.message_expiry_interval),
            now,
        );
        let properties = props.and_then(|mut pp| {
            pp.topic_alias = None;
            pp.message_expiry_interval = None;
            pp.subscription_identifiers.clear();
            let empty = pp.payload_format_indicator.is_none()
                && pp.content_type.is_none()
                && pp.response_topic.is_none()
                && pp.correlation_data.is_none()
                && pp.user_properties.is_empty();
            (!empty).then(|| Box::new(pp))
        });
        let message = Arc::new(Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin: Some(Origin {
                session: self.claim.session.id,
                client_id: self.claim.session.client_id.clone(),
                username: self.access.username.clone(),
            }),
            stored: None,
            rule: None,
        });
        if p.qos != QoS::AtMostOnce && !self.pass_sync_rules(&message, p.qos, p.pkid).await? {
            return Ok(());
        }
        if pipelined {
            return self.publish_pipelined(message, p.qos, p.pkid).await;
        }
        // Publishing may wait for room in a subscriber's queue; a takeover must not wait
        // for that (the message is unacknowledged, so the client sends it again).
        let result = tokio::select! {
            r = self.broker.publish(message) => r,
            _ = self.claim.kicked() => return Err(Exit::TakenOver),
        };
        if let Err(e) = &result {
            debug!(error = %e, "publish not accepted");
        }
        match (p.qos, result) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, Ok(_)) => self.send(Packet::PubAck(PubAck::new(p.pkid))),
            (QoS::ExactlyOnce, Ok(_)) => {
                self.claim.state.incoming_qos2.push(p.pkid);
                // A resend after a move to another hub must be recognised: record first.
                Box::pin(self.save_qos2_state()).await?;
                self.send(Packet::PubRec(PubRec::new(p.pkid)));
            }
            (qos, Err(_)) => self.nack_with(qos, p.pkid, 0x80),
        }
        Ok(())
    }

    /// `sync` ForwardRules take a QoS 1/2 message before anyone else sees it. When their
    /// sinks cannot (down, saturated), an MQTT 5 publisher gets 0x97 (quota exceeded) and
    /// the message is not published; 3.1.1 has no refusal, so its acknowledgement waits
    /// (and the client's in-flight window stops it) until the sinks take the message.
    /// Returns whether the message may go on.
    async fn pass_sync_rules(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        pkid: u16,
    ) -> Result<bool, Exit> {
        let Some(forwarder) = self.broker.forwarder().cloned() else {
            return Ok(true);
        };
        if !forwarder.gates(&message.topic) {
            return Ok(true);
        }
        // The gate may take a while: what is batched must not wait for it.
        self.send_batch().await?;
        let mut wait = std::time::Duration::from_millis(100);
        let give_up = Instant::now() + SYNC_WAIT_311;
        loop {
            let result = tokio::select! {
                r = forwarder.gate(message.clone()) => r,
                _ = self.claim.kicked() => return Err(Exit::TakenOver),
            };
            let Err(reason) = result else {
                return Ok(true);
            };
            debug!(topic = %message.topic, reason, "a sync rule cannot take the message");
            if self.version.is_v5() {
                self.in_order().await?;
                self.nack_with(qos, pkid, 0x97);
                return Ok(false);
            }
            if Instant::now() >= give_up {
                // Unacknowledged, so the client sends it again after reconnecting.
                return Err(Exit::violation(
                    Dr::QuotaExceeded,
                    "sync rule sinks unavailable for too long",
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.claim.kicked() => return Err(Exit::TakenOver),
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Cluster mode, QoS 1/2: sends the message to its stream and goes on reading; the
    /// acknowledgement to the client follows the store's (`on_stored`). Consecutive QoS 1
    /// publishes of one read to one topic wait in a batch, sent when something else comes
    /// or the read ends (`process_input`). At most `receive_maximum` stores are pending
    /// per connection.
    async fn publish_pipelined(
        &mut self,
        message: Arc<Message>,
        qos: QoS,
        pkid: u16,
    ) -> Result<(), Exit> {
        if message.batchable() {
            if !self.stores.as_ref().is_none_or(|s| s.fits(&message)) {
                self.send_batch().await?;
            }
            self.stores
                .get_or_insert_with(Default::default)
                .add(message, pkid);
            return Ok(());
        }
        // Acknowledgements keep PUBLISH order: what is batched goes first.
        self.send_batch().await?;
        self.wait_for_store_room().await?;
        let sent = tokio::select! {
            r = self.broker.publish_stored(message) => r,
            _ = self.claim.kicked() => return Err(Exit::TakenOver),
        };
        self.track_store(sent, smallvec::smallvec![pkid], qos);
        Ok(())
    }

    /// Sends the batch of QoS 1 publishes built so far, if any.
    pub(super) async fn send_batch(&mut self) -> Result<(), Exit> {
        let Some((messages, pkids)) = self.stores.as_mut().and_then(|s| s.take_batch()) else {
            return Ok(());
        };
        self.wait_for_store_room().await?;
        let sent = tokio::select! {
            r = self.broker.publish_stored_batch(messages) => r,
            // Unacknowledged, so the client sends them again.
            _ = self.claim.kicked() => return Err(Exit::TakenOver),
        };
        self.track_store(sent, pkids, QoS::AtLeastOnce);
        Ok(())
    }

    /// Sends what is batched and waits for every pending store, so that an acknowledgement
    /// sent right away follows those of earlier publishes (MQTT 4.6: in PUBLISH order).
    /// Only the rare refusals take this path.
    async fn in_order(&mut self) -> Result<(), Exit> {
        self.send_batch().await?;
        while self.stores.as_ref().is_some_and(|s| s.in_flight() > 0) {
            let Some(done) = super::next_store(&mut self.stores).await else {
                break;
            };
            self.on_stored(done).await?;
        }
        Ok(())
    }

    /// Waits while `receive_maximum` stores are pending.
    async fn wait_for_store_room(&mut self) -> Result<(), Exit> {
        let limit = usize::from(self.broker.limits.receive_maximum).max(1);
        while self.stores.as_ref().is_some_and(|s| s.in_flight() >= limit) {
            let Some(done) = super::next_store(&mut self.stores).await else {
                break;
            };
            self.on_stored(done).await?;
        }
        Ok(())
    }

    /// Queues the acknowledgement of a sent store, or refuses its publishes at once.
    fn track_store(
        &mut self,
        sent: Result<crate::state::StoreAck, StateError>,
        pkids: super::stores::PacketIds,
        qos: QoS,
    ) {
        match sent {
            Ok(ack) => {
                let done = async move { (pkids, qos, ack.await) };
                self.stores
                    .get_or_insert_with(Default::default)
                    .push(Box::pin(done));
            }
            Err(e) => {
                debug!(error = %e, "publish not accepted");
                // Refused in turn, after the stores before it (`on_stored` counts it).
                let done = futures_util::future::ready((pkids, qos, Err(e)));
                self.stores
                    .get_or_insert_with(Default::default)
                    .push(Box::pin(done));
            }
        }
    }

    /// A pipelined store finished: acknowledge its publishes (or refuse them).
    pub(super) async fn on_stored(&mut self, done: super::StoreDone) -> Result<(), Exit> {
        let (pkids, qos, result) = done;
        if let Err(e) = &result {
            debug!(error = %e, "publish not stored");
            self.broker
                .metrics
                .cluster
                .store_failures
                .inc_by(pkids.len() as u64);
        }
        for pkid in pkids {
            match (qos, &result) {
                (QoS::AtMostOnce, _) => {}
                (QoS::AtLeastOnce, Ok(())) => self.send(Packet::PubAck(PubAck::new(pkid))),
                (QoS::ExactlyOnce, Ok(())) => {
                    self.claim.state.incoming_qos2.push(pkid);
                    Box::pin(self.save_qos2_state()).await?;
                    self.send(Packet::PubRec(PubRec::new(pkid)));
                }
                (qos, Err(_)) => self.nack_with(qos, pkid, 0x80),
            }
        }
        Ok(())
    }

    /// Waits (bounded) for the pending stores of an ending connection.
    pub(super) async fn settle_stores(&mut self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
        while self.stores.as_ref().is_some_and(|s| s.in_flight() > 0) {
            let next = tokio::time::timeout_at(deadline, super::next_store(&mut self.stores));
            match next.await {
                Ok(Some(done)) => {
                    let _ = self.on_stored(done).await;
                }
                _ => break,
            }
        }
    }

    /// The publish's topic, resolving MQTT 5 topic aliases.
    fn resolve_topic(&mut self, p: &Publish) -> Result<Arc<str>, Exit> {
        let alias = p.properties.as_ref().and_then(|pp| pp.topic_alias);
        let Some(alias) = alias else {
            if p.topic.is_empty() {
                return Err(Exit::violation(
                    Dr::ProtocolError,
                    "empty topic without an alias",
                ));
            }
            return Ok(Arc::from(p.topic.as_str()));
        };
        if alias == 0 || alias > self.broker.limits.topic_alias_maximum {
            return Err(Exit::violation(
                Dr::TopicAliasInvalid,
                format!("topic alias {alias}"),
            ));
        }
        if p.topic.is_empty() {
            let known = self.aliases.as_ref().and_then(|a| a.inbound.get(&alias));
            return known.cloned().ok_or_else(|| {
                Exit::violation(Dr::ProtocolError, format!("unknown topic alias {alias}"))
            });
        }
        let topic: Arc<str> = Arc::from(p.topic.as_str());
        self.aliases
            .get_or_insert_with(Default::default)
            .inbound
            .insert(alias, topic.clone());
        Ok(topic)
    }

    fn nack(&mut self, p: &Publish, code: u8) {
        self.nack_with(p.qos, p.pkid, code);
    }

    /// Refuses a QoS 1/2 publish with an MQTT 5 reason code (3.1.1 has none: it is
    /// acknowledged so the client does not resend it forever, and counted as dropped).
    fn nack_with(&mut self, qos: QoS, pkid: u16, code: u8) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid);
                ack.reason = puback_reason(code);
                self.send(Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                let mut rec = PubRec::new(pkid);
                rec.reason = pubrec_reason(code);
                self.send(Packet::PubRec(rec));
            }
        }
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let sub_id = s.properties.as_ref().and_then(|p| p.id).unwrap_or(0);
        if s.properties.as_ref().is_some_and(|p| p.id == Some(0)) {
            return Err(Exit::violation(
                Dr::ProtocolError,
                "subscription identifier 0",
            ));
        }
        let subscription_id = u32::try_from(sub_id).unwrap_or(0);
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in s.filters {
            let options = SubOptions {
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                retain_handling: match f.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => 0,
                    RetainForwardRule::OnNewSubscribe => 1,
                    RetainForwardRule::Never => 2,
                },
                subscription_id,
            };
            if !self.may_subscribe(&f.path, f.qos) {
                self.broker.metrics.access.denied_subscribe.inc();
                debug!(filter = %f.path, "subscription denied by the ACL");
                // Written as 0x80 (failure) to 3.1.1 clients.
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            let state = &mut self.claim.state;
            let is_new = !state.subscriptions.contains_key(&f.path);
            if is_new && state.subscriptions.len() >= self.broker.limits.max_subscriptions {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            match self.broker.subscribe(&self.claim.session, &f.path, options) {
                Ok(existed) => {
                    state.subscriptions.insert(f.path.clone(), options);
                    codes.push(granted(f.qos));
                    let shared = f.path.starts_with("$share/");
                    let send = match options.retain_handling {
                        0 => true,
                        1 => !existed,
                        _ => false,
                    };
                    if send && !shared {
                        retained.push((f.path, options));
                    }
                }
                Err(SubscribeError::InvalidFilter(e)) => {
                    debug!(filter = %f.path, error = %e, "subscription refused");
                    codes.push(SubscribeReasonCode::TopicFilterInvalid);
                }
                Err(SubscribeError::NoLocalOnShared) => {
                    return Err(Exit::violation(
                        Dr::ProtocolError,
                        "no-local on a shared subscription",
                    ));
                }
            }
        }
        self.subscriptions_changed().await?;
        self.send(Packet::SubAck(SubAck::new(s.pkid, codes)));
        for (filter, options) in retained {
            match self.broker.retained_for(&filter, options).await {
                Ok(deliveries) => {
                    for d in deliveries {
                        // This connection drains its own queue only after this packet, so
                        // retained messages may not wait for room: beyond the limit they
                        // are dropped and counted like any overflow.
                        match self.claim.session.push(d) {
                            Queued::Yes => {}
                            Queued::EvictedQos0 | Queued::Dropped | Queued::Full(_) => {
                                self.broker.metrics.dropped_queue_full.inc();
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "could not read retained messages"),
            }
        }
        Ok(())
    }

    /// Cluster mode: before SUBACK/UNSUBACK, the subscriptions are in force on NATS (so a
    /// message published right after SUBACK from another hub arrives) and a persistent
    /// session's record has them (so another hub resumes them if this one dies).
    pub(super) async fn subscriptions_changed(&mut self) -> Result<(), Exit> {
        if !self.broker.is_cluster() {
            return Ok(());
        }
        if let Err(e) = self.broker.state.bus.sync_interest().await {
            warn!(error = %e, "subscriptions not confirmed by NATS");
        }
        self.save_record("the session's subscriptions").await
    }

    /// Cluster mode: saves a persistent session's QoS 2 packet ids before the client is
    /// told, so the exactly-once flow survives this hub.
    pub(super) async fn save_qos2_state(&mut self) -> Result<(), Exit> {
        if !self.broker.is_cluster() {
            return Ok(());
        }
        self.save_record("the QoS 2 state").await
    }

    /// Writes a persistent session's record now. Only losing the session to another hub
    /// ends the connection; a store that is unavailable is logged and the record is written
    /// again at the next change or checkpoint.
    async fn save_record(&mut self, what: &'static str) -> Result<(), Exit> {
        match self.broker.checkpoint(&self.claim).await {
            Ok(()) => Ok(()),
            Err(StateError::Fenced(_)) => {
                self.broker.metrics.cluster.fenced.inc();
                Err(Exit::TakenOver)
            }
            Err(e) => {
                warn!(error = %e, "could not save {what}");
                Ok(())
            }
        }
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Exit> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let had = self.claim.state.subscriptions.remove(filter).is_some();
            if had {
                self.broker.unsubscribe(&self.claim.session, filter);
            }
            reasons.push(if had {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
        }
        self.subscriptions_changed().await?;
        let mut ack = UnsubAck::new(u.pkid);
        ack.reasons = reasons;
        self.send(Packet::UnsubAck(ack));
        Ok(())
    }

    fn on_disconnect(&mut self, d: mqttbytes::v5::Disconnect) -> Result<(), Exit> {
        let requested = d
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval);
        if let Some(expiry) = requested {
            // MQTT 5 3.14.2.2.2: judged on what CONNECT asked, not on what the hub granted.
            if self.connect_expiry_zero && expiry != 0 {
                return Err(Exit::violation(
                    Dr::ProtocolError,
                    "session expiry set on DISCONNECT after CONNECT had 0",
                ));
            }
            self.claim.state.expiry_interval = expiry.min(self.broker.limits.max_session_expiry);
        }
        let will = d.reason_code == Dr::DisconnectWithWillMessage;
        Err(Exit::ClientDisconnect { will })
    }
}

fn granted(qos: QoS) -> SubscribeReasonCode {
    match qos {
        QoS::AtMostOnce => SubscribeReasonCode::QoS0,
        QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
        QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
    }
}

fn puback_reason(code: u8) -> PubAckReason {
    match code {
        0x90 => PubAckReason::TopicNameInvalid,
        0x97 => PubAckReason::QuotaExceeded,
        0x99 => PubAckReason::PayloadFormatInvalid,
        0x87 => PubAckReason::NotAuthorized,
        _ => PubAckReason::UnspecifiedError,
    }
}

fn pubrec_reason(code: u8) -> PubRecReason {
    match code {
        0x90 => PubRecReason::TopicNameInvalid,
        0x97 => PubRecReason::QuotaExceeded,
        0x99 => PubRecReason::PayloadFormatInvalid,
        0x87 => PubRecReason::NotAuthorized,
        _ => PubRecReason::UnspecifiedError,
    }
}
