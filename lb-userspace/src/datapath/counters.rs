//! The datapath's per-CPU counters, read from the pins and summed over CPUs.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::{
    maps as names,
    stats::{BackendStats, GlobalStats, ServiceStats},
};

use super::{DatapathError, map_err};

/// Counters read from the pinned per-CPU maps, summed over CPUs.
pub struct Counters {
    pub global: GlobalStats,
    pub services: Vec<(u32, ServiceStats)>,
    pub backends: Vec<(u32, BackendStats)>,
}

/// Reads the counters of an instance from its pins. `services`/`backends` select the ids.
pub fn read_counters(
    dir: &Path,
    services: &[u32],
    backends: &[u32],
) -> Result<Counters, DatapathError> {
    let open = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(map_err(name));
    let global_map: PerCpuArray<MapData, GlobalStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(names::STATS)?))
            .map_err(map_err(names::STATS))?;
    let mut global: GlobalStats = bytemuck::Zeroable::zeroed();
    for cpu in global_map.get(&0, 0).map_err(map_err(names::STATS))?.iter() {
        global.add(cpu);
    }
    let svc_map: PerCpuArray<MapData, ServiceStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(names::SERVICE_STATS)?))
            .map_err(map_err(names::SERVICE_STATS))?;
    let mut out_services = Vec::new();
    for id in services {
        let mut s = ServiceStats::default();
        for cpu in svc_map
            .get(id, 0)
            .map_err(map_err(names::SERVICE_STATS))?
            .iter()
        {
            s.add(cpu);
        }
        out_services.push((*id, s));
    }
    let be_map: PerCpuArray<MapData, BackendStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(names::BACKEND_STATS)?))
            .map_err(map_err(names::BACKEND_STATS))?;
    let mut out_backends = Vec::new();
    for id in backends {
        let mut s = BackendStats::default();
        for cpu in be_map
            .get(id, 0)
            .map_err(map_err(names::BACKEND_STATS))?
            .iter()
        {
            s.add(cpu);
        }
        out_backends.push((*id, s));
    }
    Ok(Counters {
        global,
        services: out_services,
        backends: out_backends,
    })
}
