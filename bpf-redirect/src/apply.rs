//! Applying a desired state to the maps as a diff: against what the last apply wrote, or
//! against the maps read back from the kernel.

use std::collections::BTreeMap;

use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData};

use crate::common::{self, map_names};
use crate::state::{self, MapDiff};
use crate::{is_not_found, ApplyStats, Datapath, DesiredState, Error, Result, RESYNC_AFTER};

impl Datapath {
    pub(crate) fn lpm<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        LpmTrie::try_from(map).map_err(|source| Error::Map { name, source })
    }

    pub(crate) fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })
    }

    /// Makes the maps equal to `desired`, writing only new or changed entries and
    /// deleting stale ones. Validates everything before touching a map. All
    /// writes happen first (endpoints, ipcache, policy), then all deletes in
    /// reverse order (policy, ipcache, endpoints): an ipcache entry never names
    /// an endpoint whose config is not there yet or already gone, and within
    /// each map a replaced key is written before the stale one is deleted.
    /// Across maps the update is not atomic: between two writes a packet may see
    /// the new ipcache with the old policy (each lookup sees one consistent
    /// entry, and missing entries mean deny, never "not enforced").
    ///
    /// The diff is against what the last successful apply wrote, so a small change costs
    /// its own writes, not a read of every map; the maps are read back from the kernel on
    /// the first apply, after a failed one, and every [`RESYNC_AFTER`].
    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyStats> {
        let compiled = desired.compile()?;
        let (current, read_at) = match self.applied.take() {
            Some((c, at)) if at.elapsed() < RESYNC_AFTER => (c, at),
            _ => (self.read_maps()?, std::time::Instant::now()),
        };
        let stats = self.write_diff(&current, &compiled)?;
        self.applied = Some((compiled, read_at));
        Ok(stats)
    }

    /// Writes and deletes ipcache entries of remote addresses (no endpoint id), outside a
    /// full [`Datapath::apply`]: addresses learned from DNS answers, whose identities the
    /// policy entries already name. What the last apply wrote is kept current, so the next
    /// full apply diffs against the maps as they are.
    pub fn write_ipcache(
        &mut self,
        upserts: &[crate::IpcacheEntry],
        deletes: &[crate::IpcacheEntry],
    ) -> Result<MapDiff> {
        let mut writes = Vec::with_capacity(upserts.len());
        for e in upserts {
            if e.endpoint_id != 0 {
                return Err(Error::Invalid(format!(
                    "ipcache {e:?}: an endpoint's entry is written by a full apply"
                )));
            }
            writes.push(e.compile()?);
        }
        let mut removes = Vec::with_capacity(deletes.len());
        for e in deletes {
            removes.push(e.compile()?.0);
        }
        let name = map_names::IPCACHE;
        let mut diff = MapDiff::default();
        let result = (|| {
            let mut m = self.lpm::<common::IpcacheKey, common::IpcacheValue>(name)?;
            for (k, v) in &writes {
                m.insert(&lpm_key(*k), *v, 0)
                    .map_err(|source| Error::Map { name, source })?;
                diff.written += 1;
            }
            for k in &removes {
                tolerate_missing(m.remove(&lpm_key(*k)), name)?;
                diff.deleted += 1;
            }
            Ok(())
        })();
        match (&result, self.applied.as_mut()) {
            (Ok(()), Some((applied, _))) => {
                for (k, v) in writes {
                    applied.ipcache.insert(k, v);
                }
                for k in removes {
                    applied.ipcache.remove(&k);
                }
            }
            // Part of it may be written: the next apply reads the maps back.
            (Err(_), _) => self.applied = None,
            (Ok(()), None) => {}
        }
        result.map(|()| diff)
    }

    /// Forgets what the last apply wrote: the next one reads the maps back from the kernel.
    pub fn resync(&mut self) {
        self.applied = None;
    }

    /// The endpoint, ipcache and policy maps as the kernel has them.
    fn read_maps(&mut self) -> Result<state::Compiled> {
        let cur_endpoints: BTreeMap<u32, common::EndpointValue> = {
            let name = map_names::ENDPOINTS;
            let m = self.hash::<u32, common::EndpointValue>(name)?;
            collect(m.iter(), name)?.into_iter().collect()
        };
        let cur_ipcache: BTreeMap<(u32, common::IpcacheKey), common::IpcacheValue> = {
            let name = map_names::IPCACHE;
            let m = self.lpm::<common::IpcacheKey, common::IpcacheValue>(name)?;
            collect(m.iter(), name)?
                .into_iter()
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect()
        };
        let cur_policy: BTreeMap<(u32, common::PolicyKey), common::PolicyValue> = {
            let name = map_names::POLICY;
            let m = self.lpm::<common::PolicyKey, common::PolicyValue>(name)?;
            collect(m.iter(), name)?
                .into_iter()
                .map(|(k, v)| ((k.prefix_len(), k.data()), v))
                .collect()
        };
        Ok(state::Compiled {
            endpoints: cur_endpoints,
            ipcache: cur_ipcache,
            policy: cur_policy,
        })
    }

    /// Writes what differs between `current` (the maps) and `compiled`.
    fn write_diff(
        &mut self,
        current: &state::Compiled,
        compiled: &state::Compiled,
    ) -> Result<ApplyStats> {
        let ep_plan = Plan::new(&current.endpoints, &compiled.endpoints);
        let ip_plan = Plan::new(&current.ipcache, &compiled.ipcache);
        let pol_plan = Plan::new(&current.policy, &compiled.policy);

        // Writes: endpoints, ipcache, policy.
        {
            let name = map_names::ENDPOINTS;
            let mut m = self.hash::<u32, common::EndpointValue>(name)?;
            for (k, v) in &ep_plan.writes {
                m.insert(*k, *v, 0)
                    .map_err(|source| Error::Map { name, source })?;
            }
        }
        {
            let name = map_names::IPCACHE;
            let mut m = self.lpm::<common::IpcacheKey, common::IpcacheValue>(name)?;
            for (k, v) in &ip_plan.writes {
                m.insert(&lpm_key(**k), *v, 0)
                    .map_err(|source| Error::Map { name, source })?;
            }
        }
        {
            let name = map_names::POLICY;
            let mut m = self.lpm::<common::PolicyKey, common::PolicyValue>(name)?;
            for (k, v) in &pol_plan.writes {
                m.insert(&lpm_key(**k), *v, 0)
                    .map_err(|source| Error::Map { name, source })?;
            }
            // Deletes: policy, ipcache, endpoints.
            for k in &pol_plan.deletes {
                tolerate_missing(m.remove(&lpm_key(**k)), name)?;
            }
        }
        {
            let name = map_names::IPCACHE;
            let mut m = self.lpm::<common::IpcacheKey, common::IpcacheValue>(name)?;
            for k in &ip_plan.deletes {
                tolerate_missing(m.remove(&lpm_key(**k)), name)?;
            }
        }
        {
            let name = map_names::ENDPOINTS;
            let mut m = self.hash::<u32, common::EndpointValue>(name)?;
            for k in &ep_plan.deletes {
                tolerate_missing(m.remove(k), name)?;
            }
        }
        Ok(ApplyStats {
            endpoints: ep_plan.stats(),
            ipcache: ip_plan.stats(),
            policy: pol_plan.stats(),
        })
    }
}

fn collect<K, V, I>(iter: I, name: &'static str) -> Result<Vec<(K, V)>>
where
    I: Iterator<Item = std::result::Result<(K, V), aya::maps::MapError>>,
{
    iter.map(|r| r.map_err(|source| Error::Map { name, source }))
        .collect()
}

fn lpm_key<K: aya::Pod>(k: (u32, K)) -> aya::maps::lpm_trie::Key<K> {
    aya::maps::lpm_trie::Key::new(k.0, k.1)
}

/// What a diff of one map does: keys to write (new or changed), stale keys to delete.
struct Plan<'a, K, V> {
    writes: Vec<(&'a K, &'a V)>,
    deletes: Vec<&'a K>,
    unchanged: usize,
}

impl<'a, K: Ord, V: PartialEq> Plan<'a, K, V> {
    fn new(current: &'a BTreeMap<K, V>, desired: &'a BTreeMap<K, V>) -> Self {
        let mut p = Plan {
            writes: Vec::new(),
            deletes: Vec::new(),
            unchanged: 0,
        };
        for (k, v) in desired {
            if current.get(k) == Some(v) {
                p.unchanged += 1;
            } else {
                p.writes.push((k, v));
            }
        }
        p.deletes = current
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .collect();
        p
    }

    fn stats(&self) -> MapDiff {
        MapDiff {
            written: self.writes.len(),
            deleted: self.deletes.len(),
            unchanged: self.unchanged,
        }
    }
}

fn tolerate_missing(
    r: std::result::Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(source) => Err(Error::Map { name, source }),
    }
}
