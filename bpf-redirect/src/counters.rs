//! The datapath's per-CPU counters, read from their pin: a reader for whoever exports them
//! (the metrics endpoint) without the loaded [`crate::Datapath`].

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};

use crate::{common::map_names, Counters, Error, Result};

/// Handle on the pinned `ward_counters` map.
pub struct CounterReader {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for CounterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterReader").finish_non_exhaustive()
    }
}

impl CounterReader {
    /// Opens `<pin_root>/ward_counters` (created by [`crate::Datapath::open`]).
    pub fn open(pin_root: impl AsRef<Path>) -> Result<Self> {
        let name = map_names::COUNTERS;
        let path = pin_root.as_ref().join(name);
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, source })?;
        let map = Map::from_map_data(data).map_err(|source| Error::Map { name, source })?;
        let map = PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        Ok(Self { map })
    }

    /// Reads and sums the per-CPU counters.
    pub fn read(&self) -> Result<Counters> {
        let name = map_names::COUNTERS;
        let mut values = Vec::with_capacity(self.map.len() as usize);
        for i in 0..self.map.len() {
            let per_cpu = self
                .map
                .get(&i, 0)
                .map_err(|source| Error::Map { name, source })?;
            values.push(per_cpu.iter().sum());
        }
        Ok(Counters { values })
    }
}
