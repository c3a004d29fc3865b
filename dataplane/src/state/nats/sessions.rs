//! Session records in a KV bucket, one writer at a time: every write is a compare-and-swap
//! on the revision this hub last saw, and a claim bumps the owner epoch. A hub that finds
//! its write refused re-reads the record; if another hub holds the session now, it is
//! fenced and drops its connection.
//!
//! Takeover across hubs: the claiming hub asks the owner (`cmq.<c>.ctl.<hub>`) to close its
//! connection and save the final state, then writes itself in as owner. An owner that does
//! not answer (dead, partitioned) is claimed over after a timeout; its later writes fail.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use mqttbytes::QoS;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::names::Names;
use super::{NatsState, unavailable};
use crate::broker::message::{StreamPos, SubOptions};
use crate::broker::will::Will;
use crate::state::{OutgoingRecord, SessionRecord, SessionStore, StateError};

/// How long a claim waits for the owning hub to let go.
const KICK_TIMEOUT: Duration = Duration::from_secs(2);
/// Claims retried on write conflicts before giving up.
const CLAIM_ATTEMPTS: usize = 8;

/// The sessions this hub owns (or left and may still act on): revision and epoch.
#[derive(Default)]
pub struct Owned(Mutex<HashMap<String, Own>>);

impl Owned {
    /// Whether this hub (this run) has a say on the session of `client_id`.
    pub fn knows(&self, client_id: &str) -> bool {
        self.0.lock().contains_key(client_id)
    }
}

#[derive(Clone, Copy)]
struct Own {
    revision: u64,
    epoch: u64,
    /// This hub released the session (its connection ended); timers may act on it.
    released: bool,
}

/// The stored form of a session record (version 1).
#[derive(Serialize, Deserialize, Default)]
struct Stored {
    v: u8,
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    epoch: u64,
    expiry: u32,
    #[serde(default)]
    subs: Vec<StoredSub>,
    #[serde(default)]
    cursors: Vec<u64>,
    #[serde(default)]
    delivered: Vec<(u16, u64)>,
    /// Delivered messages inside stored batches: shard, sequence, index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    din: Vec<(u16, u64, u16)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    q2in: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    out: Vec<StoredOut>,
}

/// An outgoing message in flight: packet id, and for a PUBLISH its shard, sequence, QoS
/// and retain flag (none: a QoS 2 PUBREL).
#[derive(Serialize, Deserialize)]
struct StoredOut {
    p: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<(u16, u64, u8, bool)>,
    /// The message's index in a stored batch.
    #[serde(default, skip_serializing_if = "is_zero")]
    i: u16,
}

fn is_zero(i: &u16) -> bool {
    *i == 0
}

#[derive(Serialize, Deserialize)]
struct StoredSub {
    f: String,
    q: u8,
    #[serde(default)]
    nl: bool,
    #[serde(default)]
    rap: bool,
    #[serde(default)]
    rh: u8,
    #[serde(default)]
    id: u32,
}

impl Stored {
    fn from_record(record: &SessionRecord, owner: Option<String>, epoch: u64) -> Self {
        Self {
            v: 1,
            client_id: record.client_id.clone(),
            owner,
            epoch,
            expiry: record.expiry_interval,
            subs: record
                .subscriptions
                .iter()
                .map(|(f, o)| StoredSub {
                    f: f.clone(),
                    q: o.qos as u8,
                    nl: o.no_local,
                    rap: o.retain_as_published,
                    rh: o.retain_handling,
                    id: o.subscription_id,
                })
                .collect(),
            cursors: record.cursors.clone(),
            delivered: record
                .delivered
                .iter()
                .filter(|p| p.idx == 0)
                .map(|p| (p.shard, p.seq))
                .collect(),
            din: record
                .delivered
                .iter()
                .filter(|p| p.idx != 0)
                .map(|p| (p.shard, p.seq, p.idx))
                .collect(),
            q2in: record.incoming_qos2.clone(),
            out: record
                .outgoing
                .iter()
                .map(|o| match *o {
                    OutgoingRecord::Published {
                        pkid,
                        pos,
                        qos,
                        retain,
                    } => StoredOut {
                        p: pkid,
                        m: Some((pos.shard, pos.seq, qos as u8, retain)),
                        i: pos.idx,
                    },
                    OutgoingRecord::Released { pkid } => StoredOut {
                        p: pkid,
                        m: None,
                        i: 0,
                    },
                })
                .collect(),
        }
    }

    fn to_record(&self) -> SessionRecord {
        SessionRecord {
            client_id: self.client_id.clone(),
            subscriptions: self
                .subs
                .iter()
                .map(|s| {
                    let qos = match s.q {
                        2 => QoS::ExactlyOnce,
                        1 => QoS::AtLeastOnce,
                        _ => QoS::AtMostOnce,
                    };
                    (
                        s.f.clone(),
                        SubOptions {
                            qos,
                            no_local: s.nl,
                            retain_as_published: s.rap,
                            retain_handling: s.rh,
                            subscription_id: s.id,
                        },
                    )
                })
                .collect(),
            expiry_interval: self.expiry,
            cursors: self.cursors.clone(),
            delivered: self
                .delivered
                .iter()
                .map(|&(shard, seq)| StreamPos { shard, seq, idx: 0 })
                .chain(
                    self.din
                        .iter()
                        .map(|&(shard, seq, idx)| StreamPos { shard, seq, idx }),
                )
                .collect(),
            connected: self.owner.is_some(),
            incoming_qos2: self.q2in.clone(),
            outgoing: self
                .out
                .iter()
                .map(|o| match o.m {
                    Some((shard, seq, qos, retain)) => OutgoingRecord::Published {
                        pkid: o.p,
                        pos: StreamPos {
                            shard,
                            seq,
                            idx: o.i,
                        },
                        qos: if qos == 2 {
                            QoS::ExactlyOnce
                        } else {
                            QoS::AtLeastOnce
                        },
                        retain,
                    },
                    None => OutgoingRecord::Released { pkid: o.p },
                })
                .collect(),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The current record under `key` and its revision (0: never written).
async fn read(state: &NatsState, key: &str) -> Result<(Option<Stored>, u64), StateError> {
    let entry = state
        .sessions
        .entry(key)
        .await
        .map_err(|e| unavailable("reading a session", e))?;
    Ok(match entry {
        Some(e) if e.operation == Operation::Put => {
            let stored = serde_json::from_slice::<Stored>(&e.value).ok();
            if stored.is_none() {
                warn!(key, "unreadable session record: starting the session anew");
            }
            (stored, e.revision)
        }
        Some(e) => (None, e.revision),
        None => (None, 0),
    })
}

impl NatsState {
    /// Asks `hub` to give the session of `client_id` up.
    async fn kick(&self, hub: &str, client_id: &str) {
        let subject = self.names.control(hub);
        let request = self
            .client
            .request(subject, Bytes::copy_from_slice(client_id.as_bytes()));
        match tokio::time::timeout(KICK_TIMEOUT, request).await {
            Ok(Ok(reply)) => debug!(client_id, hub, reply = ?reply.payload, "session handed over"),
            Ok(Err(e)) => {
                info!(client_id, hub, error = %e, "owner hub did not answer; claiming anyway")
            }
            Err(_) => info!(
                client_id,
                hub, "owner hub did not answer in time; claiming anyway"
            ),
        }
    }

    /// Releases the session of `client_id` held by dead hub `hub` at `epoch`, unless a hub
    /// claimed it since. Returns its expiry interval when released (this hub then acts as
    /// the session's last owner: `untouched` and `remove` work here).
    pub(super) async fn release_orphan(
        &self,
        hub: &str,
        client_id: &str,
        epoch: u64,
    ) -> Result<Option<u32>, StateError> {
        let key = Names::session_key(client_id);
        let (current, revision) = read(self, &key).await?;
        let Some(mut stored) = current.filter(|c| {
            c.client_id == client_id && c.epoch == epoch && c.owner.as_deref() == Some(hub)
        }) else {
            return Ok(None);
        };
        let expiry = stored.expiry;
        if expiry == 0 {
            // The session ended with its connection.
            let _ = self
                .sessions
                .delete_expect_revision(&key, Some(revision))
                .await;
            return Ok(Some(0));
        }
        stored.owner = None;
        match self.sessions.update(&key, stored.encode(), revision).await {
            Ok(revision) => {
                self.owned.0.lock().insert(
                    client_id.to_owned(),
                    Own {
                        revision,
                        epoch,
                        released: true,
                    },
                );
                Ok(Some(expiry))
            }
            Err(e) if matches!(e.kind(), UpdateErrorKind::WrongLastRevision) => Ok(None),
            Err(e) => Err(unavailable("releasing a dead hub's session", e)),
        }
    }

    /// Takes over the timers of a session a dead hub released at `epoch`, unless a hub
    /// claimed it since. This hub then acts as its last owner.
    pub(super) async fn adopt_released(
        &self,
        client_id: &str,
        epoch: u64,
    ) -> Result<bool, StateError> {
        let key = Names::session_key(client_id);
        let (current, revision) = read(self, &key).await?;
        let unclaimed = current
            .is_some_and(|c| c.client_id == client_id && c.epoch == epoch && c.owner.is_none());
        if unclaimed {
            self.owned.0.lock().insert(
                client_id.to_owned(),
                Own {
                    revision,
                    epoch,
                    released: true,
                },
            );
        }
        Ok(unclaimed)
    }

    /// Serves takeover requests addressed to this hub.
    pub(super) async fn start_control(self: &Arc<Self>) -> Result<(), StateError> {
        self.bus.bind(Arc::downgrade(self));
        let mut requests = self
            .client
            .subscribe(self.names.control(self.names.hub()))
            .await
            .map_err(|e| unavailable("subscribing to hub control", e))?;
        let weak = Arc::downgrade(self);
        self.spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(state) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    let client_id = String::from_utf8_lossy(&request.payload).into_owned();
                    let closed = match state.router() {
                        Some(router) => router.evict(client_id).await,
                        None => false,
                    };
                    if let Some(reply) = request.reply {
                        let answer = if closed { "closed" } else { "none" };
                        if let Err(e) = state.client.publish(reply, answer.into()).await {
                            warn!(error = %e, "could not answer a takeover request");
                        }
                    }
                });
            }
        });
        Ok(())
    }
}

impl SessionStore for NatsState {
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
    ) -> BoxFuture<'_, Result<Option<SessionRecord>, StateError>> {
        let client_id = client_id.to_owned();
        Box::pin(async move {
            let key = Names::session_key(&client_id);
            let me = self.names.hub().to_owned();
            let mut kicked = false;
            for _ in 0..CLAIM_ATTEMPTS {
                let (current, revision) = read(self, &key).await?;
                let current = current.filter(|s| s.client_id == client_id);
                if let Some(owner) = current.as_ref().and_then(|c| c.owner.as_deref())
                    && owner != me
                    && !kicked
                {
                    kicked = true;
                    if self.is_alive(owner).await {
                        self.kick(owner, &client_id).await;
                        continue; // re-read what the old owner saved on its way out
                    }
                }
                let epoch = current.as_ref().map_or(0, |c| c.epoch) + 1;
                let record = if clean_start {
                    None
                } else {
                    current.as_ref().map(Stored::to_record)
                };
                let mut claimed = match &record {
                    Some(r) => Stored::from_record(r, Some(me.clone()), epoch),
                    None => Stored {
                        v: 1,
                        client_id: client_id.clone(),
                        owner: Some(me.clone()),
                        epoch,
                        ..Stored::default()
                    },
                };
                claimed.owner = Some(me.clone());
                let written = if revision == 0 {
                    self.sessions
                        .create(&key, claimed.encode())
                        .await
                        .map_err(|e| {
                            matches!(e.kind(), CreateErrorKind::AlreadyExists)
                                .then_some(())
                                .ok_or(e.to_string())
                        })
                } else {
                    self.sessions
                        .update(&key, claimed.encode(), revision)
                        .await
                        .map_err(|e| {
                            matches!(e.kind(), UpdateErrorKind::WrongLastRevision)
                                .then_some(())
                                .ok_or(e.to_string())
                        })
                };
                match written {
                    Ok(revision) => {
                        self.owned.0.lock().insert(
                            client_id.clone(),
                            Own {
                                revision,
                                epoch,
                                released: false,
                            },
                        );
                        return Ok(record);
                    }
                    Err(Ok(())) => continue, // someone else wrote in between
                    Err(Err(e)) => return Err(unavailable("claiming a session", e)),
                }
            }
            Err(unavailable(
                "claiming a session",
                "other hubs kept writing the record",
            ))
        })
    }

    fn save(&self, record: SessionRecord) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let key = Names::session_key(&record.client_id);
            let Some(mut own) = self.owned.0.lock().get(&record.client_id).copied() else {
                return Err(StateError::Fenced(record.client_id));
            };
            let owner = record.connected.then(|| self.names.hub().to_owned());
            let value = Stored::from_record(&record, owner, own.epoch).encode();
            for _ in 0..3 {
                match self
                    .sessions
                    .update(&key, value.clone(), own.revision)
                    .await
                {
                    Ok(revision) => {
                        own.revision = revision;
                        own.released = !record.connected;
                        self.owned.0.lock().insert(record.client_id.clone(), own);
                        return Ok(());
                    }
                    Err(e) if matches!(e.kind(), UpdateErrorKind::WrongLastRevision) => {
                        let (current, revision) = read(self, &key).await?;
                        let ours = current.is_some_and(|c| {
                            c.epoch == own.epoch
                                && c.owner.as_deref().is_none_or(|o| o == self.names.hub())
                        });
                        if !ours {
                            self.owned.0.lock().remove(&record.client_id);
                            return Err(StateError::Fenced(record.client_id));
                        }
                        own.revision = revision;
                    }
                    Err(e) => return Err(unavailable("saving a session", e)),
                }
            }
            Err(unavailable("saving a session", "the record kept changing"))
        })
    }

    fn remove(&self, client_id: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let client_id = client_id.to_owned();
        Box::pin(async move {
            let Some(own) = self.owned.0.lock().remove(&client_id) else {
                return Ok(());
            };
            let key = Names::session_key(&client_id);
            if let Err(e) = self
                .sessions
                .delete_expect_revision(&key, Some(own.revision))
                .await
            {
                // Most likely another hub claimed it meanwhile: then it is not ours to remove.
                debug!(client_id, error = %e, "session record not removed");
            }
            Ok(())
        })
    }

    fn expire<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let own = {
                let mut owned = self.owned.0.lock();
                match owned.get(client_id) {
                    Some(own) if own.released => owned.remove(client_id),
                    _ => None,
                }
            };
            let Some(own) = own else { return false };
            // The compare-and-swap fails if any hub claimed the session since.
            self.sessions
                .delete_expect_revision(Names::session_key(client_id), Some(own.revision))
                .await
                .is_ok()
        })
    }

    fn untouched(&self, client_id: &str) -> BoxFuture<'_, bool> {
        let client_id = client_id.to_owned();
        Box::pin(async move {
            let Some(own) = self.owned.0.lock().get(&client_id).copied() else {
                return false;
            };
            if !own.released {
                return false; // claimed again on this hub
            }
            let key = Names::session_key(&client_id);
            match read(self, &key).await {
                Ok((_, revision)) if revision == own.revision => true,
                Ok(_) => {
                    self.owned.0.lock().remove(&client_id);
                    false
                }
                Err(_) => false,
            }
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn announce<'a>(
        &'a self,
        client_id: &'a str,
        will: Option<&'a Will>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let Some(own) = self.owned.0.lock().get(client_id).copied() else {
                return Err(StateError::Fenced(client_id.to_owned()));
            };
            self.record_owner(client_id, own.epoch, will, None).await
        })
    }

    fn park<'a>(
        &'a self,
        client_id: &'a str,
        will: Option<&'a Will>,
        expiry: u32,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(own) = self.owned.0.lock().get(client_id).copied() else {
                return;
            };
            if let Err(e) = self
                .record_owner(client_id, own.epoch, will, Some(expiry))
                .await
            {
                warn!(client_id, error = %e, "could not record a released session's timers");
            }
        })
    }

    fn retire<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.retire_owner(client_id))
    }
}
