//! Typed access to the maps: [`RealMaps`] implements the applier's [`Maps`] on the real
//! maps, and reads what they hold back (adoption, the CLI, metrics).

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData},
};
use lb_common::maps::{
    self as names, BPF_F_INNER_MAP, BackendValue, FrontendKey, FrontendValue, MAGLEV_CHUNK,
    MaglevChunk, MemberKey,
};

use super::{
    DatapathError, map_err,
    sys::{batch, single},
    take,
};
use crate::sync::{Maps, MapsError, TableWrite};

type Inner = Array<MapData, MaglevChunk>;

/// A service's live Maglev table, open.
struct Table {
    /// The kernel's id of the array, as the map of maps reports it.
    id: u32,
    map: Inner,
}

/// The maps the agent writes, implementing [`Maps`].
///
/// Maglev tables are arrays held in a map of maps. Looking one up there yields only its
/// id, and opening a map by id needs CAP_SYS_ADMIN, which the agent does not have (the
/// DaemonSet grants BPF, NET_ADMIN, PERFMON and SYS_RESOURCE). So every table is pinned
/// as `tables/svc-<service>-<id>` before it is swapped in, its pin is removed after it
/// is swapped out, and the tables are reopened through their pins.
pub struct RealMaps {
    frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    /// The map of maps (`HashOfMaps<u32, Inner>`), kept whole: typed views are made per
    /// use, and batch syscalls need its fd.
    maglev: Map,
    backends: Array<MapData, BackendValue>,
    members: HashMap<MapData, MemberKey, u32>,
    /// The connection table (LRU hash of `CtKey` -> `CtValue`), for sweeps.
    conntrack: MapData,
    tables_dir: PathBuf,
    /// The live table of each service (by service id), open.
    tables: std::collections::BTreeMap<u32, Table>,
}

impl RealMaps {
    pub(super) fn from_ebpf(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, DatapathError> {
        let maglev = take(ebpf, names::MAGLEV)?;
        Self::check_maglev(&maglev)?;
        let mut maps = Self {
            frontends: HashMap::try_from(take(ebpf, names::FRONTENDS)?)
                .map_err(map_err(names::FRONTENDS))?,
            maglev,
            backends: Array::try_from(take(ebpf, names::BACKENDS)?)
                .map_err(map_err(names::BACKENDS))?,
            members: HashMap::try_from(take(ebpf, names::AFFINITY_MEMBERS)?)
                .map_err(map_err(names::AFFINITY_MEMBERS))?,
            conntrack: match take(ebpf, names::CONNTRACK)? {
                Map::LruHashMap(data) => data,
                _ => return Err(DatapathError::MissingMap(names::CONNTRACK)),
            },
            tables_dir: pin_dir.join(names::TABLES_DIR),
            tables: Default::default(),
        };
        maps.open_tables(true)?;
        Ok(maps)
    }

    /// Opens the pinned maps of an instance read-only (for the CLI and the metrics).
    pub fn from_pins(dir: &Path) -> Result<Self, DatapathError> {
        let open = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(map_err(name));
        let maglev = Map::HashOfMaps(open(names::MAGLEV)?);
        Self::check_maglev(&maglev)?;
        let mut maps = Self {
            frontends: HashMap::try_from(Map::HashMap(open(names::FRONTENDS)?))
                .map_err(map_err(names::FRONTENDS))?,
            maglev,
            backends: Array::try_from(Map::Array(open(names::BACKENDS)?))
                .map_err(map_err(names::BACKENDS))?,
            members: HashMap::try_from(Map::HashMap(open(names::AFFINITY_MEMBERS)?))
                .map_err(map_err(names::AFFINITY_MEMBERS))?,
            conntrack: open(names::CONNTRACK)?,
            tables_dir: dir.join(names::TABLES_DIR),
            tables: Default::default(),
        };
        maps.open_tables(false)?;
        Ok(maps)
    }

    fn check_maglev(map: &Map) -> Result<(), DatapathError> {
        HashOfMaps::<&MapData, u32, Inner>::try_from(map)
            .map(|_| ())
            .map_err(map_err(names::MAGLEV))
    }

    fn outer_fd(&self) -> BorrowedFd<'_> {
        match &self.maglev {
            Map::HashOfMaps(data) => data.fd().as_fd(),
            _ => unreachable!("checked when opened"),
        }
    }

    /// Every service that has a table in the map of maps, with the table's id.
    fn outer_entries(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        let outer = HashOfMaps::<&MapData, u32, Inner>::try_from(&self.maglev)
            .map_err(map_err(names::MAGLEV))?;
        let mut out = Vec::new();
        for key in outer.keys() {
            let service = key.map_err(map_err(names::MAGLEV))?;
            // A map of maps answers a userspace lookup with the inner map's id.
            if let Some(id) = single::lookup::<u32, u32>(self.outer_fd(), &service)
                .map_err(|e| read_back(format!("{}: service {service}", names::MAGLEV), e))?
            {
                out.push((service, id));
            }
        }
        Ok(out)
    }

    /// Opens the pinned table of every service in the map of maps. Pins no service uses
    /// (left by an agent stopped between a swap and the removal of the old table's pin)
    /// are removed when `prune`.
    fn open_tables(&mut self, prune: bool) -> Result<(), DatapathError> {
        let pin_err = |path: &Path, source: std::io::Error| DatapathError::PinDir {
            path: path.into(),
            source,
        };
        std::fs::create_dir_all(&self.tables_dir).or_else(|e| {
            if prune {
                Err(pin_err(&self.tables_dir, e))
            } else {
                Ok(())
            }
        })?;
        let live: std::collections::BTreeMap<u32, u32> =
            self.outer_entries()?.into_iter().collect();
        let Ok(entries) = std::fs::read_dir(&self.tables_dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry.map_err(|e| pin_err(&self.tables_dir, e))?.path();
            let parsed = table_pin_name(&path);
            let used = parsed.is_some_and(|(service, id)| live.get(&service) == Some(&id));
            if !used {
                if prune {
                    tracing::debug!(pin = %path.display(), "removing the pin of a table no service uses");
                    std::fs::remove_file(&path).map_err(|e| pin_err(&path, e))?;
                }
                continue;
            }
            let (service, id) = parsed.expect("used");
            let what = || path.display().to_string();
            let map = MapData::from_pin(&path).map_err(|e| read_back(what(), e))?;
            let map = Inner::try_from(Map::Array(map)).map_err(|e| read_back(what(), e))?;
            self.tables.insert(service, Table { id, map });
        }
        for service in live.keys().filter(|s| !self.tables.contains_key(s)) {
            tracing::warn!(
                service,
                "a Maglev table has no pin: it is rebuilt by the first sync"
            );
        }
        Ok(())
    }

    fn table_pin(&self, service: u32, id: u32) -> PathBuf {
        self.tables_dir.join(format!("svc-{service}-{id}"))
    }

    /// Everything programmed, read back (to adopt it). A table that cannot be read (no
    /// pin) is reported empty, which the adoption treats as broken and rebuilds.
    pub fn programmed(&self) -> Result<crate::sync::Programmed, DatapathError> {
        let mut p = crate::sync::Programmed::default();
        for entry in self.frontends.iter() {
            p.frontends
                .push(entry.map_err(|e| read_back(names::FRONTENDS.to_string(), e))?);
        }
        let backends: Vec<(u32, BackendValue)> =
            batch::lookup_all(self.backends.map().fd().as_fd(), 65_536)
                .map_err(|e| read_back(names::BACKENDS.to_string(), e))?;
        p.backends = backends
            .into_iter()
            .filter(|(_, v)| v.flags & lb_common::maps::BACKEND_F_ACTIVE != 0)
            .collect();
        for (service, _) in self.outer_entries()? {
            let mut flat = Vec::new();
            if let Some(table) = self.tables.get(&service) {
                let chunks: Vec<(u32, MaglevChunk)> =
                    batch::lookup_all(table.map.map().fd().as_fd(), 4096)
                        .map_err(|e| read_back(names::MAGLEV.to_string(), e))?;
                flat = vec![0u32; chunks.len() * MAGLEV_CHUNK];
                for (i, chunk) in chunks {
                    let start = i as usize * MAGLEV_CHUNK;
                    if let Some(dst) = flat.get_mut(start..start + MAGLEV_CHUNK) {
                        dst.copy_from_slice(&chunk);
                    }
                }
            }
            p.tables.insert(service, flat);
        }
        for key in self.members.keys() {
            p.members
                .push(key.map_err(|e| read_back(names::AFFINITY_MEMBERS.to_string(), e))?);
        }
        Ok(p)
    }

    /// Every programmed frontend.
    pub fn frontends(&self) -> Vec<(FrontendKey, FrontendValue)> {
        self.frontends.iter().filter_map(Result::ok).collect()
    }

    pub fn backend(&self, id: u32) -> Option<BackendValue> {
        self.backends.get(&id, 0).ok().filter(|b| b.flags != 0)
    }

    /// The live table a frontend names: its slots (backend ids).
    pub fn table(&self, frontend: &FrontendValue) -> Option<Vec<u32>> {
        if frontend.table_size == 0 {
            return None;
        }
        let inner = &self.tables.get(&frontend.service_id)?.map;
        let chunks = lb_common::maps::maglev_chunks(frontend.table_size);
        let mut flat = Vec::with_capacity(chunks as usize * MAGLEV_CHUNK);
        for i in 0..chunks {
            flat.extend_from_slice(&inner.get(&(frontend.table_base + i), 0).ok()?);
        }
        flat.truncate(frontend.table_size as usize);
        Some(flat)
    }
}

impl RealMaps {
    /// Writes each table: a new array for a new capacity (created, filled and pinned, not
    /// yet swapped in: pushed to `created`), else into the free half of the live array.
    fn fill_tables(
        &mut self,
        writes: &[TableWrite<'_>],
        created: &mut Vec<(u32, Table, PathBuf)>,
    ) -> Result<(), MapsError> {
        for w in writes {
            let what = || format!("table of service {}", w.service);
            let chunks: Vec<MaglevChunk> = w
                .slots
                .chunks(MAGLEV_CHUNK)
                .map(|slots| {
                    let mut chunk = [0u32; MAGLEV_CHUNK];
                    chunk[..slots.len()].copy_from_slice(slots);
                    chunk
                })
                .collect();
            let keys: Vec<u32> = (w.base..w.base + chunks.len() as u32).collect();
            match w.new_capacity {
                Some(capacity) => {
                    let map = Inner::create(2 * capacity, BPF_F_INNER_MAP).map_err(write_err(
                        names::MAGLEV,
                        "create",
                        what(),
                    ))?;
                    batch::update(map.map().fd().as_fd(), &keys, &chunks).map_err(io_err(
                        names::MAGLEV,
                        "fill",
                        what(),
                    ))?;
                    let id = map
                        .map()
                        .info()
                        .map_err(write_err(names::MAGLEV, "info", what()))?
                        .id();
                    let pin = self.table_pin(w.service, id);
                    map.map().pin(&pin).map_err(|e| MapsError {
                        map: names::MAGLEV,
                        op: "pin",
                        what: what(),
                        source: Box::new(e),
                    })?;
                    created.push((w.service, Table { id, map }, pin));
                }
                None => {
                    let table = self.tables.get(&w.service).ok_or_else(|| MapsError {
                        map: names::MAGLEV,
                        op: "open",
                        what: what(),
                        source: "the live table is not open (it has no pin)".into(),
                    })?;
                    batch::update(table.map.map().fd().as_fd(), &keys, &chunks).map_err(io_err(
                        names::MAGLEV,
                        "fill",
                        what(),
                    ))?;
                }
            }
        }
        Ok(())
    }
}

fn read_back(what: String, e: impl std::error::Error + Send + Sync + 'static) -> DatapathError {
    DatapathError::ReadBack {
        what,
        source: Box::new(e),
    }
}

/// `(service, map id)` of a table pin named `svc-<service>-<id>`.
fn table_pin_name(path: &Path) -> Option<(u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let (service, id) = name.strip_prefix("svc-")?.split_once('-')?;
    Some((service.parse().ok()?, id.parse().ok()?))
}

fn write_err(
    map: &'static str,
    op: &'static str,
    what: String,
) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |e| MapsError {
        map,
        op,
        what,
        source: Box::new(e),
    }
}

fn io_err(
    map: &'static str,
    op: &'static str,
    what: String,
) -> impl FnOnce(std::io::Error) -> MapsError {
    move |e| MapsError {
        map,
        op,
        what,
        source: Box::new(e),
    }
}

impl Maps for RealMaps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError> {
        self.backends.set(id, value, 0).map_err(write_err(
            names::BACKENDS,
            "set",
            format!("backend {id}"),
        ))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.backends
            .set(id, BackendValue::default(), 0)
            .map_err(write_err(names::BACKENDS, "clear", format!("backend {id}")))
    }

    fn put_tables(&mut self, writes: &[TableWrite<'_>]) -> Result<(), MapsError> {
        let mut created: Vec<(u32, Table, PathBuf)> = Vec::new();
        let result = self.fill_tables(writes, &mut created);
        let result = result.and_then(|()| {
            if created.is_empty() {
                return Ok(());
            }
            // The new arrays take their services' places in one batch (one grace period).
            let keys: Vec<u32> = created.iter().map(|(s, _, _)| *s).collect();
            let fds: Vec<u32> = created
                .iter()
                .map(|(_, t, _)| t.map.map().fd().as_fd().as_raw_fd() as u32)
                .collect();
            batch::update(self.outer_fd(), &keys, &fds).map_err(io_err(
                names::MAGLEV,
                "swap",
                format!("tables of {} services", keys.len()),
            ))
        });
        if result.is_err() {
            // Nothing refers to the new arrays: drop their pins (and so the arrays).
            for (_, _, pin) in &created {
                let _ = std::fs::remove_file(pin);
            }
            return result;
        }
        for (service, table, _) in created {
            if let Some(old) = self.tables.insert(service, table) {
                let _ = std::fs::remove_file(self.table_pin(service, old.id));
            }
        }
        Ok(())
    }

    fn delete_tables(&mut self, services: &[u32]) -> Result<(), MapsError> {
        let present: Vec<u32> = services
            .iter()
            .copied()
            .filter(|s| {
                self.tables.contains_key(s)
                    || matches!(single::lookup::<u32, u32>(self.outer_fd(), s), Ok(Some(_)))
            })
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        batch::delete(self.outer_fd(), &present).map_err(io_err(
            names::MAGLEV,
            "remove",
            format!("tables of {} services", present.len()),
        ))?;
        for service in present {
            if let Some(old) = self.tables.remove(&service) {
                let _ = std::fs::remove_file(self.table_pin(service, old.id));
            }
        }
        Ok(())
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError> {
        self.frontends.insert(key, value, 0).map_err(write_err(
            names::FRONTENDS,
            "insert",
            format!("{}:{}", key.ip(), key.port()),
        ))
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        match self.frontends.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(write_err(
                names::FRONTENDS,
                "remove",
                format!("{}:{}", key.ip(), key.port()),
            )(e)),
        }
    }

    fn put_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError> {
        let keys: Vec<MemberKey> = backends
            .iter()
            .map(|b| MemberKey {
                service_id: service,
                backend_id: *b,
            })
            .collect();
        let values = vec![1u32; keys.len()];
        batch::update(self.members.map().fd().as_fd(), &keys, &values).map_err(io_err(
            names::AFFINITY_MEMBERS,
            "insert",
            format!("{} members of service {service}", keys.len()),
        ))
    }

    fn sweep_flows(&mut self, targets: &[crate::sync::FlowTarget]) -> Result<usize, MapsError> {
        if targets.is_empty() {
            return Ok(0);
        }
        let wanted: std::collections::BTreeSet<(u32, [u8; 16], u16, u8)> = targets
            .iter()
            .map(|t| {
                (
                    t.service,
                    lb_common::Addr::from_ip(&t.backend.ip).octets(),
                    t.backend.port.to_be(),
                    t.backend.proto.0,
                )
            })
            .collect();
        let what = || format!("flows of {} service backends", targets.len());
        // One pass over the whole table (batched reads), then one delete per entry found.
        let entries: Vec<(lb_common::maps::CtKey, lb_common::maps::CtValue)> = batch::lookup_all(
            self.conntrack.fd().as_fd(),
            8192,
        )
        .map_err(io_err(names::CONNTRACK, "read", what()))?;
        let mut deleted = 0;
        for (key, value) in entries {
            // Forward entries hold the backend in nat_*; reply entries are keyed by it.
            let (addr, port) = if value.flags & lb_common::maps::CT_F_REPLY != 0 {
                (key.src, key.sport_be)
            } else {
                (value.nat_addr, value.nat_port_be)
            };
            if wanted.contains(&(value.service_id, addr.octets(), port, key.proto.0)) {
                match single::delete(self.conntrack.fd().as_fd(), &key) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(io_err(names::CONNTRACK, "delete", what())(e)),
                }
            }
        }
        Ok(deleted)
    }

    fn delete_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError> {
        // One by one: a batch delete stops at the first key already gone.
        for b in backends {
            let key = MemberKey {
                service_id: service,
                backend_id: *b,
            };
            match self.members.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(write_err(
                        names::AFFINITY_MEMBERS,
                        "remove",
                        format!("member {b} of service {service}"),
                    )(e));
                }
            }
        }
        Ok(())
    }
}

/// The interfaces XDP may hand frames to ([`names::TX_PORTS`]): written by the agent as
/// it attaches to and detaches from node devices.
pub struct TxPorts {
    map: HashMap<MapData, u32, u32>,
}

impl TxPorts {
    pub(super) fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            map: HashMap::try_from(take(ebpf, names::TX_PORTS)?)
                .map_err(map_err(names::TX_PORTS))?,
        })
    }

    /// Records how interface `ifindex` takes XDP frames (`TX_F_*`; 0: not at all).
    pub fn set(&mut self, ifindex: u32, flags: u32) -> Result<(), MapsError> {
        self.map.insert(ifindex, flags, 0).map_err(write_err(
            names::TX_PORTS,
            "insert",
            format!("ifindex {ifindex}"),
        ))
    }

    /// Forgets every interface but `keep`.
    pub fn retain(&mut self, keep: &[u32]) -> Result<(), MapsError> {
        let gone: Vec<u32> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !keep.contains(i))
            .collect();
        for i in gone {
            match self.map.remove(&i) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(write_err(names::TX_PORTS, "remove", format!("ifindex {i}"))(e));
                }
            }
        }
        Ok(())
    }
}
