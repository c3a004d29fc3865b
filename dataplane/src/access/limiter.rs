//! Failed-authentication limiter: after `limit` failures from one IP address or for one
//! client id within `window`, further CONNECTs from it are refused without checking the
//! password until the window that started with the first failure has passed.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys tracked at most per map; stale ones are swept when it fills.
const MAX_KEYS: usize = 100_000;

pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    by_ip: Mutex<HashMap<IpAddr, Window>>,
    by_client: Mutex<HashMap<Box<str>, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl FailureLimiter {
    /// `limit` 0 disables limiting.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            by_ip: Mutex::new(HashMap::new()),
            by_client: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the address or the client id has used up its failures.
    pub fn blocked(&self, ip: IpAddr, client_id: &str) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let over = |w: Option<&Window>| {
            w.is_some_and(|w| now.duration_since(w.start) < self.window && w.failures >= self.limit)
        };
        over(self.by_ip.lock().get(&ip)) || over(self.by_client.lock().get(client_id))
    }

    /// Counts one failed authentication.
    pub fn failed(&self, ip: IpAddr, client_id: &str) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        bump(&mut self.by_ip.lock(), ip, now, self.window);
        bump(
            &mut self.by_client.lock(),
            client_id.into(),
            now,
            self.window,
        );
    }

    /// A successful authentication clears the client id's count (not the address's: an
    /// attacker could otherwise interleave one good login among its guesses).
    pub fn succeeded(&self, client_id: &str) {
        if self.limit > 0 {
            self.by_client.lock().remove(client_id);
        }
    }
}

fn bump<K: Hash + Eq>(map: &mut HashMap<K, Window>, key: K, now: Instant, window: Duration) {
    if map.len() >= MAX_KEYS {
        map.retain(|_, w| now.duration_since(w.start) < window);
    }
    let w = map.entry(key).or_insert(Window {
        start: now,
        failures: 0,
    });
    if now.duration_since(w.start) >= window {
        *w = Window {
            start: now,
            failures: 0,
        };
    }
    w.failures = w.failures.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_address_and_client() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(!l.blocked(ip, "a"));
        l.failed(ip, "a");
        assert!(!l.blocked(ip, "a"));
        l.failed(ip, "a");
        assert!(l.blocked(ip, "b"), "the address is limited");
        assert!(l.blocked(other, "a"), "the client id is limited");
        assert!(!l.blocked(other, "b"));
        l.succeeded("a");
        assert!(!l.blocked(other, "a"));
        let off = FailureLimiter::new(0, Duration::from_secs(60));
        off.failed(ip, "a");
        off.failed(ip, "a");
        assert!(!off.blocked(ip, "a"));
    }
}
