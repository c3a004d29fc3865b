//! NATS connections of the operator, one per server URL, opened on first use, and the
//! registry buckets of each cluster.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::Mutex;

use crate::error::Error;

/// Connections by URL.
#[derive(Default)]
pub struct NatsPool {
    clients: Mutex<HashMap<String, async_nats::Client>>,
}

fn nats_err(action: &str, e: impl std::fmt::Display) -> Error {
    Error::Nats(format!("{action}: {e}"))
}

impl NatsPool {
    /// MQTT connections over the cluster's live hubs: the sum of their heartbeats
    /// (`cmq_<c>_hubs`, subjects `cmq.<c>.hb.<hub>`, payload `{"connections": N}`).
    /// `None` when the hubs have not created the stream yet.
    pub async fn hub_connections(&self, url: &str, cluster: &str) -> Result<Option<i64>, Error> {
        use futures_util::StreamExt;
        let js = jetstream::new(self.client(url).await?);
        let Ok(stream) = js.get_stream(format!("cmq_{cluster}_hubs")).await else {
            return Ok(None);
        };
        let filter = format!("cmq.{cluster}.hb.*");
        let mut subjects = Vec::new();
        {
            let mut listing = stream
                .info_with_subjects(&filter)
                .await
                .map_err(|e| nats_err("listing heartbeats", e))?;
            while let Some(entry) = listing.next().await {
                let (subject, _) = entry.map_err(|e| nats_err("listing heartbeats", e))?;
                subjects.push(subject);
            }
        }
        let mut total = 0i64;
        for subject in subjects {
            let Ok(m) = stream.direct_get_last_for_subject(&subject).await else {
                continue; // expired meanwhile: a hub that died
            };
            #[derive(serde::Deserialize)]
            struct Beat {
                #[serde(default)]
                connections: i64,
            }
            if let Ok(beat) = serde_json::from_slice::<Beat>(&m.payload) {
                total += beat.connections;
            }
        }
        Ok(Some(total))
    }

    async fn client(&self, url: &str) -> Result<async_nats::Client, Error> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Invalid(format!("spec.nats.url {url:?}: {e}")))?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(|e| nats_err("connecting", e))?;
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The KV bucket `bucket` on `url`, created (history 1) when missing.
    pub async fn bucket(
        &self,
        url: &str,
        bucket: &str,
        replicas: usize,
    ) -> Result<kv::Store, Error> {
        let js = jetstream::new(self.client(url).await?);
        match js.get_key_value(bucket).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_or_update_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("creating the bucket", e)),
        }
    }
}
