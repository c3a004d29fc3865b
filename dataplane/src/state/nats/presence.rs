//! Which hubs are alive, which sessions each one holds, and the reaper that acts for a
//! hub that died: it publishes the wills of that hub's connections (a crash is an abnormal
//! close) and releases their sessions so any hub can resume them.
//!
//! Stream `cmq_<c>_hubs` (one message per subject):
//! - `cmq.<c>.hb.<hub>`: heartbeat, written every `HEARTBEAT` with a `DEAD_AFTER` TTL;
//!   payload `{"connections": N}` (the operator sums them into the MqttCluster's status);
//! - `cmq.<c>.member.<hub>`: the hub joined and has not left cleanly;
//! - `cmq.<c>.reap.<hub>`: a reaper's claim on a dead hub (TTL), so one hub reaps it.
//!
//! Stream `cmq_<c>_owners` (one message per subject): `cmq.<c>.o.<hub>.<client key>` for
//! each connection a hub holds, with its will (payload and headers) if it has one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::names::Names;
use super::{NatsState, codec, unavailable};
use crate::broker::will::Will;
use crate::state::StateError;

/// How often a hub writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A hub whose heartbeat is this old is dead.
const DEAD_AFTER: Duration = Duration::from_secs(6);
/// How long a reaper's claim on a dead hub holds.
const REAP_CLAIM: Duration = Duration::from_secs(30);

const CLIENT: &str = "Cmq-Session";
const EPOCH: &str = "Cmq-Epoch";
const TOPIC: &str = "Cmq-Topic";
const WILL_DELAY: &str = "Cmq-Will-Delay";
const RELEASED: &str = "Cmq-Released";
const EXPIRY: &str = "Cmq-Expiry";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A connection (or a released session with timers) of a dead hub, as the reaper finds it.
pub struct Orphan {
    pub client_id: String,
    pub epoch: u64,
    pub will: Option<Will>,
    /// Released: seconds since the release, and the session expiry interval.
    pub released: Option<(u32, u32)>,
}

pub async fn create_streams(
    js: &async_nats::jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(stream::Stream, stream::Stream), StateError> {
    let hubs = super::ensure_stream(
        js,
        stream::Config {
            name: names.hubs_stream(),
            subjects: names.hubs_subjects(),
            max_messages_per_subject: 1,
            num_replicas: replicas,
            allow_direct: true,
            allow_message_ttl: true,
            ..Default::default()
        },
    )
    .await?;
    let owners = super::ensure_stream(
        js,
        stream::Config {
            name: names.owners_stream(),
            subjects: vec![names.owners_wildcard()],
            max_messages_per_subject: 1,
            num_replicas: replicas,
            allow_direct: true,
            ..Default::default()
        },
    )
    .await?;
    Ok((hubs, owners))
}

impl NatsState {
    /// Records that this hub holds the connection of `client_id` (with its will), or with
    /// `released` (its expiry interval) that it released the session and runs its timers.
    pub(super) async fn record_owner(
        &self,
        client_id: &str,
        epoch: u64,
        will: Option<&Will>,
        released: Option<u32>,
    ) -> Result<(), StateError> {
        let subject = self
            .names
            .owner(self.names.hub(), &Names::session_key(client_id));
        let (mut headers, payload) = match will {
            Some(will) => {
                let message = will.clone().into_message();
                let mut headers = codec::encode(&message, self.names.hub());
                headers.insert(
                    TOPIC,
                    cmq_topic::subject::escape_token(&will.topic).as_str(),
                );
                headers.insert(WILL_DELAY, will.delay.to_string().as_str());
                (headers, message.payload.clone())
            }
            None => (HeaderMap::new(), Bytes::new()),
        };
        headers.insert(CLIENT, cmq_topic::subject::escape_token(client_id).as_str());
        headers.insert(EPOCH, epoch.to_string().as_str());
        if let Some(expiry) = released {
            headers.insert(RELEASED, unix_ms().to_string().as_str());
            headers.insert(EXPIRY, expiry.to_string().as_str());
        }
        self.js
            .send_publish(
                subject,
                PublishMessage::build().payload(payload).headers(headers),
            )
            .await
            .map_err(|e| unavailable("recording a connection", e))?
            .await
            .map_err(|e| unavailable("recording a connection", e))?;
        Ok(())
    }

    /// The connection of `client_id` ended here (its will, if any, is this hub's business).
    pub(super) async fn retire_owner(&self, client_id: &str) {
        let subject = self
            .names
            .owner(self.names.hub(), &Names::session_key(client_id));
        if let Err(e) = self.owners.purge().filter(subject).await {
            warn!(client_id, error = %e, "could not clear a connection record");
        }
    }

    /// Whether `hub` has a live heartbeat.
    pub(super) async fn is_alive(&self, hub: &str) -> bool {
        match self
            .hubs
            .direct_get_last_for_subject(self.names.heartbeat(hub))
            .await
        {
            Ok(_) => true,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => false,
            // Unknown: assume alive, so a takeover asks it rather than skipping it.
            Err(_) => true,
        }
    }

    /// Heartbeats, and reaping of dead hubs, until shutdown.
    pub(super) fn start_presence(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            let mut beats = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(state) = weak.upgrade() else { return };
                if let Err(e) = state.heartbeat().await {
                    warn!(error = %e, "heartbeat failed");
                }
                beats += 1;
                // Reap every other beat: enough for a crash to be acted on in seconds.
                if beats.is_multiple_of(2)
                    && let Err(e) = state.reap_dead_hubs().await
                {
                    warn!(error = %e, "could not look for dead hubs");
                }
            }
        });
    }

    async fn heartbeat(&self) -> Result<(), StateError> {
        let hub = self.names.hub();
        // The load, for the operator's MqttCluster status (`connections`).
        let connections = self.router().map_or(0, |r| r.connections());
        let beat = PublishMessage::build()
            .payload(Bytes::from(format!("{{\"connections\":{connections}}}")))
            .ttl(DEAD_AFTER);
        self.js
            .send_publish(self.names.heartbeat(hub), beat)
            .await
            .map_err(|e| unavailable("writing the heartbeat", e))?
            .await
            .map_err(|e| unavailable("writing the heartbeat", e))?;
        if !self.member.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.js
                .publish(self.names.member(hub), Bytes::new())
                .await
                .map_err(|e| unavailable("joining the cluster", e))?
                .await
                .map_err(|e| unavailable("joining the cluster", e))?;
        }
        Ok(())
    }

    /// Leaves the cluster: the heartbeat goes at once, so another hub takes over the
    /// timers of the sessions this hub released (and then removes the membership).
    pub(super) async fn leave(&self) {
        let subject = self.names.heartbeat(self.names.hub());
        if let Err(e) = self.hubs.purge().filter(subject).await {
            warn!(error = %e, "could not leave the cluster cleanly");
        }
    }

    /// At start: what a previous run of this hub id left behind (released sessions'
    /// timers, connections of a crash) is acted on as for a dead hub.
    pub(super) fn reap_previous_run(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            if let Some(state) = weak.upgrade() {
                let hub = state.names.hub().to_owned();
                if let Err(e) = state.reap(&hub, true).await {
                    warn!(error = %e, "could not act on what a previous run left");
                }
            }
        });
    }

    async fn reap_dead_hubs(&self) -> Result<(), StateError> {
        let mut members = Vec::new();
        let mut listing = self
            .hubs
            .info_with_subjects(self.names.member("*"))
            .await
            .map_err(|e| unavailable("listing hubs", e))?;
        while let Some(entry) = listing.next().await {
            let (subject, _) = entry.map_err(|e| unavailable("listing hubs", e))?;
            if let Some(hub) = subject.rsplit('.').next() {
                members.push(hub.to_owned());
            }
        }
        for hub in members {
            if hub == self.names.hub() || self.is_alive(&hub).await {
                continue;
            }
            // One reaper per dead hub: only the first claim (no message yet) succeeds.
            let claim = PublishMessage::build()
                .payload(Bytes::from(self.names.hub().to_owned()))
                .ttl(REAP_CLAIM)
                .expected_last_subject_sequence(0);
            let claimed = match self.js.send_publish(self.names.reap(&hub), claim).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if claimed {
                self.reap(&hub, false).await?;
            }
        }
        Ok(())
    }

    /// Acts for the connections and released sessions of dead hub `hub` (or of this hub's
    /// previous run, `own`: then entries written by this run are left alone).
    async fn reap(&self, hub: &str, own: bool) -> Result<(), StateError> {
        let mut subjects = Vec::new();
        let mut listing = self
            .owners
            .info_with_subjects(self.names.owner(hub, ">"))
            .await
            .map_err(|e| unavailable("listing a dead hub's connections", e))?;
        while let Some(entry) = listing.next().await {
            let (subject, _) = entry.map_err(|e| unavailable("listing connections", e))?;
            subjects.push(subject);
        }
        info!(
            hub,
            connections = subjects.len(),
            "hub is dead: releasing its sessions"
        );
        let router = self.router();
        for subject in subjects {
            let message = match self.owners.direct_get_last_for_subject(&subject).await {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => continue,
                Err(e) => return Err(unavailable("reading a dead hub's connection", e)),
            };
            let Some(orphan) = orphan_of(&message) else {
                continue;
            };
            if own && self.owned.knows(&orphan.client_id) {
                continue; // written by this run
            }
            let adopted = match orphan.released {
                None => self
                    .release_orphan(hub, &orphan.client_id, orphan.epoch)
                    .await?
                    .map(|expiry| (expiry, 0)),
                Some((elapsed, expiry)) => self
                    .adopt_released(&orphan.client_id, orphan.epoch)
                    .await?
                    .then_some((expiry, elapsed)),
            };
            if let (Some((expiry, elapsed)), Some(router)) = (adopted, router.as_ref()) {
                router.adopt_orphan(orphan.client_id, orphan.will, expiry, elapsed);
            }
            if let Err(e) = self.owners.purge().filter(&subject).await {
                warn!(error = %e, "could not clear a dead hub's connection record");
            }
        }
        if !own {
            let _ = self.hubs.purge().filter(self.names.member(hub)).await;
        }
        Ok(())
    }
}

fn orphan_of(message: &async_nats::jetstream::message::StreamMessage) -> Option<Orphan> {
    let headers = &message.headers;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let client_id = cmq_topic::subject::unescape_token(&get(CLIENT)?).ok()?;
    let epoch = get(EPOCH)?.parse().ok()?;
    let will = match get(TOPIC) {
        Some(topic) => {
            let topic = cmq_topic::subject::unescape_token(&topic).ok()?;
            let delay = get(WILL_DELAY).and_then(|d| d.parse().ok()).unwrap_or(0);
            let decoded = codec::decode(
                Arc::from(topic.as_str()),
                Some(headers),
                message.payload.clone(),
                None,
            )?;
            let m = decoded.message;
            Some(Will {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                qos: m.qos,
                retain: m.retain,
                delay,
                expiry_interval: m.remaining_expiry(std::time::Instant::now()),
                properties: m.properties.clone(),
            })
        }
        None => None,
    };
    let released = match (get(RELEASED), get(EXPIRY)) {
        (Some(at), Some(expiry)) => {
            let at: u64 = at.parse().ok()?;
            let elapsed = unix_ms().saturating_sub(at) / 1000;
            Some((
                u32::try_from(elapsed).unwrap_or(u32::MAX),
                expiry.parse().ok()?,
            ))
        }
        _ => None,
    };
    Some(Orphan {
        client_id,
        epoch,
        will,
        released,
    })
}
