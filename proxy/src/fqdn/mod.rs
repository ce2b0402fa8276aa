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
    /// Address → name → how many endpoints learned it: the mapping the maps are written from,
    /// kept alongside `names` so that a lookup or a listing of it is not a walk of the cache.
    by_ip: BTreeMap<Ipv4Addr, BTreeMap<String, u32>>,
    /// Addresses whose names changed since the maps were last written from the cache.
    changed: BTreeSet<Ipv4Addr>,
    /// Addresses kept past their TTL because connections to them are live.
    zombies: BTreeSet<Ipv4Addr>,
    /// Entries (endpoint, name, address) in `names`.
    count: usize,
    /// The earliest expiry in the cache (none when empty): before it, nothing is due.
    next_expiry: Option<Instant>,
    /// Something a listing shows changed since [`FqdnCache::rows`] was last called.
    rows_dirty: bool,
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
    /// When it expires (wall clock; a zombie's is past).
    pub expires: SystemTime,
    /// Past its TTL but kept: connections to it are live.
    pub zombie: bool,
    /// When it was last seen in an answer.
    pub seen: SystemTime,
}

impl FqdnCache {
    pub fn new(min_ttl: u32, max_ips_per_name: usize, max_entries: usize) -> FqdnCache {
        FqdnCache {
            names: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            changed: BTreeSet::new(),
            zombies: BTreeSet::new(),
            count: 0,
            next_expiry: None,
            rows_dirty: false,
            min_ttl,
            max_ips_per_name: max_ips_per_name.max(1),
            max_entries: max_entries.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether some entry's time has passed at `now` (only then is conntrack worth asking).
    pub fn due(&self, now: Instant) -> bool {
        self.next_expiry.is_some_and(|t| t <= now)
    }

    /// Whether a listing would differ from the last [`FqdnCache::rows`].
    pub fn rows_dirty(&self) -> bool {
        self.rows_dirty
    }

    /// One more endpoint learned (`ip`, `name`).
    fn index_add(&mut self, ip: Ipv4Addr, name: &str) -> bool {
        let names = self.by_ip.entry(ip).or_default();
        match names.get_mut(name) {
            Some(n) => {
                *n += 1;
                false
            }
            None => {
                names.insert(name.to_string(), 1);
                self.changed.insert(ip);
                true
            }
        }
    }

    /// One endpoint fewer has (`ip`, `name`): whether the mapping lost it.
    fn index_remove(&mut self, ip: Ipv4Addr, name: &str) -> bool {
        let Some(names) = self.by_ip.get_mut(&ip) else {
            return false;
        };
        let gone = match names.get_mut(name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                names.remove(name);
                true
            }
            None => false,
        };
        if names.is_empty() {
            self.by_ip.remove(&ip);
        }
        if gone {
            self.changed.insert(ip);
        }
        gone
    }

    /// Removes one entry; whether the address → names mapping changed.
    fn remove_entry(&mut self, key: &(u16, String), ip: Ipv4Addr) -> bool {
        let Some(ips) = self.names.get_mut(key) else {
            return false;
        };
        if ips.remove(&ip).is_none() {
            return false;
        }
        if ips.is_empty() {
            self.names.remove(key);
        }
        self.count -= 1;
        self.rows_dirty = true;
        self.index_remove(ip, &key.1)
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
        let ttl = ttl.max(self.min_ttl);
        let expires = now + Duration::from_secs(u64::from(ttl));
        let seen = SystemTime::now();
        let key = (endpoint, name.to_string());
        let mut changed = false;
        let mut added = Vec::new();
        {
            let entry = self.names.entry(key.clone()).or_default();
            for ip in ips {
                if entry.insert(*ip, Learned { expires, seen, ttl }).is_none() {
                    added.push(*ip);
                }
            }
        }
        self.count += added.len();
        for ip in added {
            changed |= self.index_add(ip, name);
        }
        if !self.zombies.is_empty() {
            for ip in ips {
                self.zombies.remove(ip);
            }
        }
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
        self.rows_dirty = true;
        // Per name: the ones that expire first go first (they were learned longest ago).
        while self
            .names
            .get(&key)
            .is_some_and(|e| e.len() > self.max_ips_per_name)
        {
            let oldest = self.names[&key]
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(ip, _)| *ip)
                .expect("non-empty");
            self.remove_entry(&key, oldest);
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
            self.remove_entry(&key, ip);
            changed = true;
        }
        changed
    }

    /// Drops what expired at `now`, except addresses in `live` (conntrack has connections to
    /// them), which stay as zombies until they are not. Whether the mapping changed.
    pub fn expire(&mut self, now: Instant, live: &HashSet<Ipv4Addr>) -> bool {
        let mut gone = Vec::new();
        let mut zombies = BTreeSet::new();
        let mut next: Option<Instant> = None;
        for (key, ips) in &self.names {
            for (ip, l) in ips {
                if l.expires > now {
                    next = Some(next.map_or(l.expires, |t| t.min(l.expires)));
                } else if live.contains(ip) {
                    zombies.insert(*ip);
                } else {
                    gone.push((key.clone(), *ip));
                }
            }
        }
        // A zombie is checked again at every expiry pass.
        if !zombies.is_empty() {
            next = Some(now);
        }
        if zombies != self.zombies {
            self.rows_dirty = true;
        }
        self.zombies = zombies;
        self.next_expiry = next;
        let mut changed = false;
        for (key, ip) in gone {
            changed |= self.remove_entry(&key, ip);
        }
        changed
    }

    /// Forgets an endpoint's entries. Whether the mapping changed.
    pub fn remove_endpoint(&mut self, endpoint: u16) -> bool {
        let gone: Vec<((u16, String), Ipv4Addr)> = self
            .names
            .iter()
            .filter(|((ep, _), _)| *ep == endpoint)
            .flat_map(|(k, ips)| ips.keys().map(move |ip| (k.clone(), *ip)))
            .collect();
        let mut changed = false;
        for (key, ip) in gone {
            changed |= self.remove_entry(&key, ip);
        }
        changed
    }

    /// The addresses whose names changed since [`FqdnCache::clear_changes`], with every name
    /// each answers now (`None`: none any more).
    pub fn changes(&self) -> Vec<(Ipv4Addr, Option<Vec<String>>)> {
        self.changed
            .iter()
            .map(|ip| (*ip, self.by_ip.get(ip).map(|n| n.keys().cloned().collect())))
            .collect()
    }

    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The maps now hold what [`FqdnCache::changes`] returned.
    pub fn clear_changes(&mut self) {
        self.changed.clear();
    }

    /// Every learned address with the names it answered, sorted.
    #[cfg(test)]
    pub fn ip_names(&self) -> BTreeMap<Ipv4Addr, Vec<String>> {
        self.by_ip
            .iter()
            .map(|(ip, names)| (*ip, names.keys().cloned().collect()))
            .collect()
    }

    /// The learned addresses.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_ip.keys().copied()
    }

    /// The rows `ward fqdn cache list` shows.
    pub fn rows(&mut self, now: Instant) -> Vec<CacheRow> {
        self.rows_dirty = false;
        let wall = SystemTime::now();
        let mut out = Vec::with_capacity(self.count);
        for ((endpoint, name), ips) in &self.names {
            for (ip, l) in ips {
                let expires = if l.expires >= now {
                    wall + (l.expires - now)
                } else {
                    wall - (now - l.expires)
                };
                out.push(CacheRow {
                    endpoint: *endpoint,
                    name: name.clone(),
                    ip: *ip,
                    ttl: l.ttl,
                    expires,
                    zombie: l.expires <= now && self.zombies.contains(ip),
                    seen: l.seen,
                });
            }
        }
        out
    }
}

/// One learned address as the FQDN checkpoint keeps it across a restart: by the endpoint's
/// address (ids may change), with its wall-clock expiry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedRow {
    pub client: Ipv4Addr,
    pub name: String,
    pub ip: Ipv4Addr,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: u64,
    pub zombie: bool,
}

/// How long a zombie restored from the checkpoint lives before its connections are looked at.
const RESTORED_ZOMBIE_TTL: u32 = 1;

impl SavedRow {
    pub fn from_row(r: &CacheRow, client: Ipv4Addr) -> Option<SavedRow> {
        let expires_ms = r
            .expires
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis();
        Some(SavedRow {
            client,
            name: r.name.clone(),
            ip: r.ip,
            expires_ms: u64::try_from(expires_ms).ok()?,
            zombie: r.zombie,
        })
    }

    /// The seconds left to live at `now` (at least 1); a zombie gets
    /// [`RESTORED_ZOMBIE_TTL`]; `None` for an address whose time passed.
    pub fn ttl_left(&self, now: SystemTime) -> Option<u32> {
        let expires = std::time::UNIX_EPOCH + Duration::from_millis(self.expires_ms);
        match expires.duration_since(now) {
            Ok(left) => Some(u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX)),
            Err(_) if self.zombie => Some(RESTORED_ZOMBIE_TTL),
            Err(_) => None,
        }
    }
}

/// The FQDN checkpoint beside the admin socket (`fqdn-cache.json`).
pub fn checkpoint_path(admin_socket: &std::path::Path) -> std::path::PathBuf {
    admin_socket.with_file_name("fqdn-cache.json")
}

/// Writes `rows` to `path` whole (a temporary file renamed over it).
pub fn write_checkpoint(path: &std::path::Path, rows: &[SavedRow]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(rows).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// The checkpoint's rows; `None` when there is none.
pub fn read_checkpoint(path: &std::path::Path) -> std::io::Result<Option<Vec<SavedRow>>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
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
