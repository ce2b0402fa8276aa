//! The `toFQDNs` cache: which addresses each endpoint learned for which names from the DNS
//! answers the proxy let through, and until when. Owned by the controller (the only writer of
//! node state); the DNS proxy sends what it learns through the controller's inbox and waits
//! for the maps before it releases the answer.
//!
//! Like Cilium's: an entry lives for the answer's TTL raised to `min_ttl`; when that passes
//! while conntrack still has a live connection to the address, the entry stays (a "zombie")
//! until the connections end. `max_ips_per_name` bounds the addresses of one (endpoint, name)
//! (the oldest go first) and `max_entries` the whole cache (the ones closest to expiry go
//! first). Only names some `toFQDNs` selector selects are sent here; a name no selector
//! selects any more (after a policy change) keeps no address in the maps and leaves the cache
//! at its TTL.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

/// One learned address.
#[derive(Clone, Debug)]
struct Learned {
    expires: Instant,
    /// When it was last seen in an answer (wall clock, for listings).
    seen: SystemTime,
    ttl: u32,
}

/// The cache (see the module docs).
#[derive(Debug)]
pub struct FqdnCache {
    /// (endpoint id, name) → address → when it expires.
    names: BTreeMap<(u16, String), BTreeMap<Ipv4Addr, Learned>>,
    /// Addresses kept past their TTL because connections to them are live.
    zombies: BTreeSet<Ipv4Addr>,
    /// Entries (endpoint, name, address) in `names`.
    count: usize,
    min_ttl: u32,
    max_ips_per_name: usize,
    max_entries: usize,
}

/// One row of `ward fqdn cache list` (formatted by the admin server, not on every change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRow {
    pub endpoint: u16,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The TTL it was learned with (after `min_ttl`).
    pub ttl: u32,
    /// Seconds until it expires; 0 for a zombie.
    pub expires_in: u64,
    /// Past its TTL but kept: connections to it are live.
    pub zombie: bool,
    /// When it was last seen in an answer.
    pub seen: SystemTime,
}

impl FqdnCache {
    pub fn new(min_ttl: u32, max_ips_per_name: usize, max_entries: usize) -> FqdnCache {
        FqdnCache {
            names: BTreeMap::new(),
            zombies: BTreeSet::new(),
            count: 0,
            min_ttl,
            max_ips_per_name: max_ips_per_name.max(1),
            max_entries: max_entries.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn recount(&mut self) {
        self.count = self.names.values().map(BTreeMap::len).sum();
    }

    /// Learns `ips` for `name` (normalised) at `endpoint` with `ttl` seconds. Whether the
    /// address → names mapping changed (the maps then need writing).
    pub fn learn(
        &mut self,
        endpoint: u16,
        name: &str,
        ips: &[Ipv4Addr],
        ttl: u32,
        now: Instant,
    ) -> bool {
        if ips.is_empty() {
            return false;
        }
        // The common case (the same answer again, for the same endpoint) is a refresh: no
        // allocation, no map write.
        let key = (endpoint, name.to_string());
        let known = |c: &FqdnCache, ip: &Ipv4Addr| {
            c.names.get(&key).is_some_and(|l| l.contains_key(ip))
                || c.names
                    .iter()
                    .any(|((_, n), learned)| n == name && learned.contains_key(ip))
        };
        let mut changed = ips.iter().any(|ip| !known(self, ip));
        let ttl = ttl.max(self.min_ttl);
        let expires = now + Duration::from_secs(u64::from(ttl));
        let entry = self.names.entry(key).or_default();
        let seen = SystemTime::now();
        for ip in ips {
            let new = entry.insert(*ip, Learned { expires, seen, ttl }).is_none();
            self.count += usize::from(new);
            if !self.zombies.is_empty() {
                self.zombies.remove(ip);
            }
        }
        // Per name: the ones that expire first go first (they were learned longest ago).
        while entry.len() > self.max_ips_per_name {
            let oldest = entry
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(ip, _)| *ip)
                .expect("non-empty");
            entry.remove(&oldest);
            self.count -= 1;
            changed = true;
        }
        // Node-wide: the entries closest to expiry go first.
        while self.count > self.max_entries {
            let victim = self
                .names
                .iter()
                .flat_map(|(k, ips)| ips.iter().map(move |(ip, l)| (l.expires, k.clone(), *ip)))
                .min();
            let Some((_, key, ip)) = victim else { break };
            if let Some(ips) = self.names.get_mut(&key) {
                self.count -= usize::from(ips.remove(&ip).is_some());
                if ips.is_empty() {
                    self.names.remove(&key);
                }
            }
            changed = true;
        }
        changed
    }

    /// Drops what expired at `now`, except addresses in `live` (conntrack has connections to
    /// them), which stay as zombies until they are not. Whether the mapping changed.
    pub fn expire(&mut self, now: Instant, live: &HashSet<Ipv4Addr>) -> bool {
        let before = self.ip_names();
        let mut zombies = BTreeSet::new();
        self.names.retain(|_, ips| {
            ips.retain(|ip, l| {
                if l.expires > now {
                    return true;
                }
                if live.contains(ip) {
                    zombies.insert(*ip);
                    return true;
                }
                false
            });
            !ips.is_empty()
        });
        self.zombies = zombies;
        self.recount();
        before != self.ip_names()
    }

    /// Forgets an endpoint's entries. Whether the mapping changed.
    pub fn remove_endpoint(&mut self, endpoint: u16) -> bool {
        let before = self.names.len();
        self.names.retain(|(ep, _), _| *ep != endpoint);
        self.recount();
        before != self.names.len()
    }

    /// Every learned address with the names it answered, sorted.
    pub fn ip_names(&self) -> BTreeMap<Ipv4Addr, Vec<String>> {
        let mut out: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for ((_, name), ips) in &self.names {
            for ip in ips.keys() {
                let names = out.entry(*ip).or_default();
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        for names in out.values_mut() {
            names.sort();
        }
        out
    }

    /// The rows `ward fqdn cache list` shows.
    pub fn rows(&self, now: Instant) -> Vec<CacheRow> {
        let mut out = Vec::new();
        for ((endpoint, name), ips) in &self.names {
            for (ip, l) in ips {
                out.push(CacheRow {
                    endpoint: *endpoint,
                    name: name.clone(),
                    ip: *ip,
                    ttl: l.ttl,
                    expires_in: l.expires.saturating_duration_since(now).as_secs(),
                    zombie: l.expires <= now && self.zombies.contains(ip),
                    seen: l.seen,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, n)
    }

    #[test]
    fn learns_expires_and_keeps_zombies() {
        let now = Instant::now();
        let mut c = FqdnCache::new(5, 10, 100);
        assert!(c.learn(1, "a.test.", &[ip(1), ip(2)], 1, now));
        // The same answer again changes no mapping.
        assert!(!c.learn(1, "a.test.", &[ip(1)], 1, now));
        // A second endpoint's answer for the same address adds no mapping either.
        assert!(!c.learn(2, "a.test.", &[ip(1)], 1, now));
        assert_eq!(c.ip_names()[&ip(1)], vec!["a.test.".to_string()]);
        // The TTL of 1 s was raised to min_ttl 5 s.
        assert!(!c.expire(now + Duration::from_secs(4), &HashSet::new()));
        // Past it: gone, except the address with a live connection (a zombie).
        let live: HashSet<_> = [ip(2)].into();
        assert!(c.expire(now + Duration::from_secs(6), &live));
        assert_eq!(
            c.ip_names().keys().copied().collect::<Vec<_>>(),
            vec![ip(2)]
        );
        assert!(c.rows(now + Duration::from_secs(6))[0].zombie);
        // Its connection ends: gone too.
        assert!(c.expire(now + Duration::from_secs(7), &HashSet::new()));
        assert!(c.is_empty());
    }

    #[test]
    fn caps_per_name_and_overall() {
        let now = Instant::now();
        let mut c = FqdnCache::new(0, 2, 3);
        c.learn(1, "a.test.", &[ip(1)], 10, now);
        c.learn(1, "a.test.", &[ip(2)], 20, now);
        c.learn(1, "a.test.", &[ip(3)], 30, now);
        // Per name: the one expiring first went.
        assert_eq!(
            c.ip_names().keys().copied().collect::<Vec<_>>(),
            vec![ip(2), ip(3)]
        );
        c.learn(1, "b.test.", &[ip(4), ip(5)], 40, now);
        // Overall 3: the entry closest to expiry went.
        assert_eq!(
            c.ip_names().keys().copied().collect::<Vec<_>>(),
            vec![ip(3), ip(4), ip(5)]
        );
        assert!(c.remove_endpoint(1));
        assert!(c.is_empty());
    }
}
