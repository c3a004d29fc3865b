//! Names of a cluster's streams, buckets and subjects. `<c>` is the cluster name.
//!
//! | name | what |
//! |---|---|
//! | stream `cmq_<c>_msgs_<k>`, subjects `cmq.<c>.m.<k>.<topic>` | stored QoS 1/2 messages of shard k |
//! | core `cmq.<c>.l.<k>.<topic>` | live feed: QoS 0 from hubs, QoS 1/2 republished by the streams |
//! | stream `cmq_<c>_retained`, subjects `cmq.<c>.r.<topic>` | newest retained message per topic |
//! | KV `cmq_<c>_sessions`, key = escaped client id | session records |
//! | core `cmq.<c>.ctl.<hub>` | requests to one hub (takeover) |
//! | core `cmq.<c>.d.<topic>` | QoS 0 messages some ForwardRule reads, for the dispatchers |
//! | core `cmq.<c>.dispatch.sync` | `sync` rule requests from hubs to dispatchers |

use cmq_topic::subject::{escape_token, topic_to_subject};

/// Why a cluster or hub name cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {value:?} must be 1-64 characters of A-Z a-z 0-9 _ -")]
pub struct NameError {
    what: &'static str,
    value: String,
}

fn check(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            value: value.to_owned(),
        })
    }
}

/// The names of one cluster, as seen by one hub.
#[derive(Debug, Clone)]
pub struct Names {
    cluster: String,
    hub: String,
    live_prefix: String,
}

/// Stable FNV-1a, so every hub picks the same shard for a topic.
pub fn shard_of(topic: &str, shards: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in topic.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

impl Names {
    pub fn new(cluster: &str, hub: &str) -> Result<Self, NameError> {
        check("cluster name", cluster)?;
        check("hub id", hub)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            hub: hub.to_owned(),
            live_prefix: format!("cmq.{cluster}.l."),
        })
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn msgs_stream(&self, shard: u16) -> String {
        format!("cmq_{}_msgs_{shard}", self.cluster)
    }

    pub fn retained_stream(&self) -> String {
        format!("cmq_{}_retained", self.cluster)
    }

    pub fn sessions_bucket(&self) -> String {
        format!("cmq_{}_sessions", self.cluster)
    }

    pub fn stored_wildcard(&self, shard: u16) -> String {
        format!("cmq.{}.m.{shard}.>", self.cluster)
    }

    pub fn live_wildcard(&self, shard: u16) -> String {
        format!("cmq.{}.l.{shard}.>", self.cluster)
    }

    pub fn retained_wildcard(&self) -> String {
        format!("cmq.{}.r.>", self.cluster)
    }

    pub fn stored(&self, shard: u16, topic: &str) -> String {
        format!("cmq.{}.m.{shard}.{}", self.cluster, topic_to_subject(topic))
    }

    pub fn live(&self, shard: u16, topic: &str) -> String {
        format!("{}{shard}.{}", self.live_prefix, topic_to_subject(topic))
    }

    /// Stored-message subjects of `shard` for one subject pattern of a filter.
    pub fn stored_pattern(&self, shard: u16, pattern: &str) -> String {
        format!("cmq.{}.m.{shard}.{pattern}", self.cluster)
    }

    /// Live subjects (any shard) for one subject pattern of a filter.
    pub fn live_pattern(&self, pattern: &str) -> String {
        format!("{}*.{pattern}", self.live_prefix)
    }

    /// Shard and topic of a live subject.
    pub fn parse_live<'a>(&self, subject: &'a str) -> Option<(u16, &'a str)> {
        let rest = subject.strip_prefix(self.live_prefix.as_str())?;
        let (shard, topic) = rest.split_once('.')?;
        Some((shard.parse().ok()?, topic))
    }

    /// The dispatchers' feed of QoS 0 messages (stored ones they read from the streams).
    pub fn dispatch_feed(&self, topic: &str) -> String {
        format!("cmq.{}.d.{}", self.cluster, topic_to_subject(topic))
    }

    pub fn dispatch_feed_wildcard(&self) -> String {
        format!("cmq.{}.d.>", self.cluster)
    }

    /// The topic part of a dispatch feed subject.
    pub fn parse_dispatch_feed<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix("cmq.")?
            .strip_prefix(self.cluster.as_str())?
            .strip_prefix(".d.")
    }

    pub fn retained(&self, topic: &str) -> String {
        format!("cmq.{}.r.{}", self.cluster, topic_to_subject(topic))
    }

    pub fn retained_pattern(&self, pattern: &str) -> String {
        format!("cmq.{}.r.{pattern}", self.cluster)
    }

    /// The topic part of a retained subject.
    pub fn parse_retained<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix("cmq.")?
            .strip_prefix(self.cluster.as_str())?
            .strip_prefix(".r.")
    }

    pub fn hubs_stream(&self) -> String {
        format!("cmq_{}_hubs", self.cluster)
    }

    pub fn hubs_subjects(&self) -> Vec<String> {
        ["hb", "member", "reap"]
            .iter()
            .map(|kind| format!("cmq.{}.{kind}.*", self.cluster))
            .collect()
    }

    pub fn heartbeat(&self, hub: &str) -> String {
        format!("cmq.{}.hb.{hub}", self.cluster)
    }

    pub fn member(&self, hub: &str) -> String {
        format!("cmq.{}.member.{hub}", self.cluster)
    }

    pub fn reap(&self, hub: &str) -> String {
        format!("cmq.{}.reap.{hub}", self.cluster)
    }

    pub fn owners_stream(&self) -> String {
        format!("cmq_{}_owners", self.cluster)
    }

    pub fn owners_wildcard(&self) -> String {
        format!("cmq.{}.o.>", self.cluster)
    }

    /// The connection record of session `key` on `hub` (`key` may be a wildcard).
    pub fn owner(&self, hub: &str, key: &str) -> String {
        format!("cmq.{}.o.{hub}.{key}", self.cluster)
    }

    pub fn control(&self, hub: &str) -> String {
        format!("cmq.{}.ctl.{hub}", self.cluster)
    }

    /// The KV key of a client id. Long ids are hashed (the record keeps the full id).
    pub fn session_key(client_id: &str) -> String {
        let escaped = escape_token(client_id);
        if escaped.len() <= 200 && !client_id.is_empty() {
            return escaped;
        }
        let a = shard_hash(client_id.as_bytes(), 0xcbf2_9ce4_8422_2325);
        let b = shard_hash(client_id.as_bytes(), 0x8422_2325_cbf2_9ce4);
        format!("h-{a:016x}{b:016x}")
    }

    /// Queue group of a shared subscription: the same on every hub.
    pub fn queue_group(group: &str, filter: &str) -> String {
        escape_token(&format!("{group}/{filter}"))
    }
}

fn shard_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = seed;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn live_subjects_round_trip() {
        let names = Names::new("c1", "h1").unwrap();
        let subject = names.live(3, "a/b.c");
        assert_eq!(subject, "cmq.c1.l.3.a.b=2Ec");
        assert_eq!(names.parse_live(&subject), Some((3, "a.b=2Ec")));
        assert_eq!(names.parse_retained(&names.retained("x/y")), Some("x.y"));
    }

    #[test]
    fn rejects_bad_names() {
        assert!(Names::new("a.b", "h").is_err());
        assert!(Names::new("ok", "").is_err());
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("a/b", 4), shard_of("a/b", 4));
        assert!((0..1000).all(|i| shard_of(&format!("t/{i}"), 4) < 4));
    }
}
