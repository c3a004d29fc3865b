//! A session's life: claimed by a connection (taking it over from another if needed),
//! released when the connection ends, ended on clean start or expiry, and its will.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Broker;
use super::cluster::ReplayPlan;
use super::message::Delivery;
use super::session::{Inflight, Session, SessionState, Stage};
use super::will::Will;
use crate::state::{OutgoingRecord, SessionRecord, StateError};

/// How long a takeover waits for the previous connection to let go of the session.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A session owned by a connection.
pub struct Claim {
    pub session: Arc<Session>,
    pub state: OwnedMutexGuard<SessionState>,
    /// MQTT "session present".
    pub present: bool,
    /// Identifies this ownership; a later claim bumps it.
    pub generation: u64,
    /// Cluster mode: stored messages to catch up on once the connection runs.
    pub replay: Option<Box<ReplayPlan>>,
}

impl Claim {
    /// Resolves once another connection takes the session over (or it is evicted).
    pub fn kicked(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.session.kicked(self.generation)
    }

    /// Whether another connection took the session over.
    pub fn is_kicked(&self) -> bool {
        self.session.is_kicked(self.generation)
    }
}

/// Why a session could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the previous connection of client {0} did not release its session in time")]
    TakeoverTimeout(String),
    #[error("a newer connection of client {0} claimed the session first")]
    Superseded(String),
    #[error("the session store refused the claim: {0}")]
    State(#[from] StateError),
}

impl Broker {
    /// Claims the session of `client_id` for a new connection: creates it, resumes it, or
    /// takes it over from the connection that holds it (which is told to leave).
    pub async fn claim_session(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
    ) -> Result<Claim, ClaimError> {
        loop {
            let (session, created) = self.lookup_or_create(client_id);
            let (generation, had_owner) = {
                let mut control = session.control.lock();
                if control.ended {
                    drop(control);
                    self.forget(&session);
                    continue;
                }
                let had_owner = std::mem::replace(&mut control.connected, true);
                control.generation += 1;
                session.set_online(true);
                (control.generation, had_owner)
            };
            if had_owner {
                debug!(
                    client_id,
                    "taking over the session from its current connection"
                );
                session.kick(generation - 1);
            }
            let lock = tokio::time::timeout(TAKEOVER_TIMEOUT, session.state.clone().lock_owned());
            let Ok(mut state) = lock.await else {
                let mut control = session.control.lock();
                if control.generation == generation {
                    // Give up the claim: the stuck connection then releases as the owner.
                    control.connected = false;
                    session.set_online(false);
                }
                return Err(ClaimError::TakeoverTimeout(client_id.to_owned()));
            };
            // Timers and a delayed will are taken only now, once the previous connection has
            // let go: it may have scheduled them on its way out.
            let pending_will = {
                let mut control = session.control.lock();
                if control.generation != generation {
                    // Yet another connection claimed it while we waited: the newest wins.
                    // Retrying here would kick it in turn, and two clients could take the
                    // session from each other forever.
                    return Err(ClaimError::Superseded(client_id.to_owned()));
                }
                if control.ended {
                    drop(control);
                    drop(state);
                    self.forget(&session);
                    continue;
                }
                if let Some(timers) = control.timers.take() {
                    timers.cancel();
                }
                control.pending_will.take()
            };
            let mut present = state.established && !clean_start;
            let record = match self.state.sessions.claim(client_id, clean_start).await {
                Ok(record) => record,
                Err(e) => {
                    let mut control = session.control.lock();
                    if control.generation == generation {
                        control.connected = false;
                        session.set_online(false);
                    }
                    drop(control);
                    if created {
                        session.control.lock().ended = true;
                        self.forget(&session);
                    }
                    return Err(ClaimError::State(e));
                }
            };
            if clean_start && state.established {
                self.reset_session(&session, &mut state);
                if let Some(will) = pending_will {
                    // The session ends here, so a will still waiting for its delay goes now.
                    self.publish_will(*will).await;
                }
            }
            let resumed = record.filter(|_| created && !clean_start);
            if let Some(record) = &resumed {
                self.restore_session(&session, &mut state, record).await;
                present = true;
            }
            let mut claim = Claim {
                session,
                state,
                present,
                generation,
                replay: None,
            };
            if self.is_cluster() {
                self.start_tracking(&mut claim, resumed.as_ref());
            }
            return Ok(claim);
        }
    }

    /// Called when a connection ends. `will` is the will to publish (None after a clean
    /// DISCONNECT); `expiry` the session expiry interval in force at the end.
    pub async fn release_session(self: &Arc<Self>, mut claim: Claim, will: Option<Will>) {
        let session = claim.session.clone();
        // This connection waits for nothing more; the next owner registers its own task.
        session.forget_owner();
        let expiry = claim.state.expiry_interval;
        claim.state.established = true;
        let (still_owner, remote_takeover) = {
            let mut control = session.control.lock();
            let remote = std::mem::take(&mut control.remote_takeover);
            // Nobody connected means a takeover gave up waiting for us: we are the owner.
            let owner = control.generation == claim.generation || !control.connected;
            if owner {
                control.connected = false;
                session.set_online(false);
            }
            (owner, remote)
        };
        if still_owner {
            // Publishers waiting for room in this queue stop waiting: nobody drains it now.
            session.space.notify_waiters();
            if !(self.is_cluster() && expiry != 0) {
                // A released cluster session keeps its entry while timers run (`release_shared`).
                self.state.sessions.retire(&session.client_id).await;
            }
        }
        // Everything below runs before the state lock is released, so a reconnect sees the
        // will and timers this connection leaves behind (and cancels them).
        if !still_owner {
            // Taken over: the new connection owns the session; only the will is ours. With
            // expiry 0 the session still ended with this connection (MQTT 5 3.1.2.11.2).
            if expiry == 0 {
                self.reset_session(&session, &mut claim.state);
            }
            self.schedule_will(&session, will, expiry).await;
            return;
        }
        if expiry != 0 && self.is_cluster() {
            self.release_shared(claim, will, remote_takeover).await;
            return;
        }
        if expiry == 0 {
            self.end_session(&session, &mut claim.state);
            self.forget_record(&session.client_id).await;
            drop(claim);
            if let Some(will) = will {
                self.publish_will(will).await;
            }
            return;
        }
        let record = self.record_of(&claim, false).await;
        if let Err(e) = self.state.sessions.save(record).await {
            warn!(client_id = %session.client_id, error = %e, "could not save the session record");
        }
        self.schedule_will(&session, will, expiry).await;
        self.schedule_expiry(&session, expiry);
        drop(claim);
    }

    /// Publishes a will at once or keeps it for its delay.
    async fn schedule_will(
        self: &Arc<Self>,
        session: &Arc<Session>,
        will: Option<Will>,
        expiry: u32,
    ) {
        let Some(will) = will else { return };
        if will.delay == 0 || expiry == 0 {
            self.publish_will(will).await;
            return;
        }
        // Delayed: a reconnect before the delay cancels it (`claim_session` takes it).
        let delay = Duration::from_secs(u64::from(will.delay.min(expiry)));
        let token = {
            let mut control = session.control.lock();
            control.pending_will = Some(Box::new(will));
            control
                .timers
                .get_or_insert_with(CancellationToken::new)
                .clone()
        };
        let broker = self.clone();
        let session = session.clone();
        self.spawn_timer(token, delay, async move {
            let will = session.control.lock().pending_will.take();
            if let Some(will) = will {
                broker.publish_will(*will).await;
            }
        });
    }

    /// Runs `action` after `delay` unless `token` (a reconnect) or shutdown comes first.
    pub(super) fn spawn_timer(
        &self,
        token: CancellationToken,
        delay: Duration,
        action: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        self.timers.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => action.await,
            }
        });
    }

    /// Ends the session when its expiry interval passes without a reconnect.
    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, expiry: u32) {
        if expiry == u32::MAX {
            return;
        }
        let (token, generation) = {
            let mut control = session.control.lock();
            (
                control
                    .timers
                    .get_or_insert_with(CancellationToken::new)
                    .clone(),
                control.generation,
            )
        };
        let broker = self.clone();
        let session = session.clone();
        let delay = Duration::from_secs(u64::from(expiry));
        self.spawn_timer(token, delay, async move {
            broker.expire(&session, generation).await;
        });
    }

    async fn expire(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        let will = {
            let mut control = session.control.lock();
            if control.generation != generation || control.connected || control.ended {
                return;
            }
            control.ended = true;
            control.pending_will.take()
        };
        let Ok(mut state) = session.state.clone().try_lock_owned() else {
            // A connection holds it after all; it will find `ended` and start anew.
            return;
        };
        info!(client_id = %session.client_id, "session expired");
        self.end_session(session, &mut state);
        drop(state);
        self.forget_record(&session.client_id).await;
        if let Some(will) = will {
            self.publish_will(*will).await;
        }
    }

    /// Removes the stored record of an ended session.
    async fn forget_record(&self, client_id: &str) {
        if let Err(e) = self.state.sessions.remove(client_id).await {
            warn!(client_id, error = %e, "could not remove the session record");
        }
    }

    /// Publishes a will message.
    pub async fn publish_will(&self, will: Will) {
        self.metrics.wills_published.inc();
        let topic = will.topic.clone();
        if let Err(e) = self.publish(will.into_message()).await {
            warn!(topic = %topic, error = %e, "could not publish a will message");
        }
    }

    fn lookup_or_create(&self, client_id: &str) -> (Arc<Session>, bool) {
        let mut registry = self.registry.lock();
        if let Some(s) = registry.get(client_id) {
            return (s.clone(), false);
        }
        let id: Arc<str> = Arc::from(client_id);
        let session = Arc::new(Session::new(
            self.new_session_id(),
            id.clone(),
            self.limits.max_queued_messages,
        ));
        registry.insert(id, session.clone());
        self.metrics.sessions.inc();
        (session, true)
    }

    /// Removes an ended session from the registry (if it is still the registered one).
    pub(super) fn forget(&self, session: &Arc<Session>) {
        let mut registry = self.registry.lock();
        if registry
            .get(&*session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            registry.remove(&*session.client_id);
            self.metrics.sessions.dec();
        }
    }

    /// Drops a session's subscriptions, queue and in-flight state (clean start).
    fn reset_session(&self, session: &Arc<Session>, state: &mut SessionState) {
        for filter in state.subscriptions.keys() {
            self.unsubscribe(session, filter);
        }
        session.clear_queue();
        *state = SessionState::default();
    }

    /// Ends a session for good.
    pub(super) fn end_session(&self, session: &Arc<Session>, state: &mut SessionState) {
        self.reset_session(session, state);
        session.control.lock().ended = true;
        self.forget(session);
    }

    /// Restores the subscriptions of a stored session this hub did not hold.
    async fn restore_session(
        &self,
        session: &Arc<Session>,
        state: &mut SessionState,
        record: &SessionRecord,
    ) {
        for (filter, options) in &record.subscriptions {
            if self.subscribe(session, filter, *options).is_ok() {
                state.subscriptions.insert(filter.clone(), *options);
            }
        }
        state.expiry_interval = record.expiry_interval;
        state.established = true;
        // QoS 1/2 flows survive a move between hubs: a resent PUBLISH from the client is
        // recognised, and what was in flight to it is sent again with its packet id.
        state.incoming_qos2 = record.incoming_qos2.clone();
        for out in &record.outgoing {
            let (pkid, stage) = match *out {
                OutgoingRecord::Released { pkid } => (pkid, Stage::Released),
                OutgoingRecord::Published {
                    pkid,
                    pos,
                    qos,
                    retain,
                } => match self.state.bus.fetch(pos).await {
                    Ok(Some(message)) => (
                        pkid,
                        Stage::Published(Delivery {
                            message,
                            qos,
                            retain,
                            subscription_ids: Vec::new(),
                        }),
                    ),
                    Ok(None) => continue, // expired or aged out of the stream
                    Err(e) => {
                        warn!(error = %e, "could not fetch a message in flight");
                        continue;
                    }
                },
            };
            state.next_pkid = pkid;
            state.outgoing.push_back(Inflight { pkid, stage });
        }
    }
}
