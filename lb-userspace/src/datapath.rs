//! The kernel side, seen from userspace: load the embedded XDP object, pin its maps in a
//! per-instance bpffs directory, attach to interfaces, and typed access to the maps.
//! The only module that uses aya.

use std::{
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData, PerCpuArray},
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    config::{CONFIG_GLOBAL, DatapathConfig},
    maps::{
        self as names, BPF_F_INNER_MAP, BackendValue, FrontendKey, FrontendValue, MAGLEV_CHUNK,
        MaglevChunk, MemberKey,
    },
    stats::{BackendStats, GlobalStats, ServiceStats},
};

use crate::sync::{Maps, MapsError, TableWrite};

/// The XDP object, embedded at build time (see build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XLB_EBPF_OBJECT"));

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    #[error("cannot prepare the pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the XDP object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the XDP program was rejected: {0}")]
    Program(#[source] ProgramError),
    #[error("the object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the maps pinned at {dir} cannot be adopted: {reason}. Stop the agent that uses them, \
         then remove them with `xlb cleanup --bpffs {dir}` (this drops the connection table: \
         established connections through this node break)"
    )]
    IncompatiblePins { dir: PathBuf, reason: String },
    #[error("cannot read the pinned maps back: {0}")]
    ReadBack(String),
    #[error("cannot keep the XDP link of {interface}: {reason}")]
    Link { interface: String, reason: String },
    #[error("cannot attach to interface {interface}: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

/// How to attach: native (driver) XDP where the driver supports it, else generic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native mode, falling back to generic mode with a warning.
    Auto,
    Native,
    Generic,
}

/// Settings for loading the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The per-instance directory (on a bpffs) where the maps are pinned.
    pub pin_dir: PathBuf,
    pub config: DatapathConfig,
    pub conntrack_entries: u32,
}

/// The outcome of [`Datapath::run_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// The XDP action (`lb_common::stats::XDP_*`).
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// Directory, inside an instance's pin directory, of the pinned XDP links (one per
/// interface, named after it).
pub const LINKS_DIR: &str = "links";

/// The loaded program, its attachments and its maps.
///
/// Attachments are bpf_links pinned in `links/<interface>`: they outlive the agent, so a
/// stopped, killed or restarting agent leaves the datapath serving, and the next agent
/// replaces the program of each link atomically (`BPF_LINK_UPDATE`) with its own, which
/// uses the same pinned maps.
pub struct Datapath {
    ebpf: Ebpf,
    links: Vec<AttachedLink>,
    pin_dir: PathBuf,
    adopted: bool,
}

struct AttachedLink {
    interface: String,
    link: FdLink,
    pin: PathBuf,
}

/// How an interface got the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new link, in this mode.
    New(XdpMode),
    /// The link an earlier agent pinned now runs this agent's program (link update:
    /// atomic, no packet sees no program).
    Replaced,
}

/// Key and value sizes of every map, as this agent lays them out.
fn expected_layout() -> [(&'static str, usize, usize); 11] {
    use lb_common::{
        maps::{AffinityKey, AffinityValue, CtKey, CtValue, Meta},
        stats::{BackendStats, GlobalStats, ServiceStats},
    };
    [
        (names::META, 4, size_of::<Meta>()),
        (
            names::FRONTENDS,
            size_of::<FrontendKey>(),
            size_of::<FrontendValue>(),
        ),
        (names::MAGLEV, 4, 4),
        (names::BACKENDS, 4, size_of::<BackendValue>()),
        (names::CONNTRACK, size_of::<CtKey>(), size_of::<CtValue>()),
        (names::STATS, 4, size_of::<GlobalStats>()),
        (names::SERVICE_STATS, 4, size_of::<ServiceStats>()),
        (names::BACKEND_STATS, 4, size_of::<BackendStats>()),
        (
            names::AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        (names::AFFINITY_MEMBERS, size_of::<MemberKey>(), 4),
        // A ring buffer has neither keys nor values.
        (names::SIGNALS, 0, 0),
    ]
}

/// Whether `dir` holds pins of an earlier agent, and whether this agent can adopt them:
/// all of them present, of this layout version, with the expected key and value sizes.
/// Returns whether there is anything to adopt.
pub fn check_pins(dir: &Path, conntrack_entries: u32) -> Result<bool, DatapathError> {
    let present: Vec<&str> = names::ALL_MAPS
        .iter()
        .copied()
        .filter(|n| dir.join(n).exists())
        .collect();
    if present.is_empty() {
        return Ok(false);
    }
    let incompatible = |reason: String| DatapathError::IncompatiblePins {
        dir: dir.into(),
        reason,
    };
    if present.len() != names::ALL_MAPS.len() {
        let missing: Vec<&str> = names::ALL_MAPS
            .iter()
            .copied()
            .filter(|n| !present.contains(n))
            .collect();
        return Err(incompatible(format!(
            "maps {missing:?} are missing (another version's pins?)"
        )));
    }
    let meta: Array<MapData, lb_common::maps::Meta> = MapData::from_pin(dir.join(names::META))
        .map_err(|e| e.to_string())
        .and_then(|m| Array::try_from(Map::Array(m)).map_err(|e| e.to_string()))
        .map_err(|e| incompatible(format!("{}: {e}", names::META)))?;
    let version = meta
        .get(&0, 0)
        .map_err(|e| incompatible(format!("{}: {e}", names::META)))?
        .layout_version;
    if version != names::LAYOUT_VERSION {
        return Err(incompatible(format!(
            "their layout version is {version}, this agent's is {}",
            names::LAYOUT_VERSION
        )));
    }
    for (name, key, value) in expected_layout() {
        let info = aya::maps::MapInfo::from_pin(dir.join(name))
            .map_err(|e| incompatible(format!("{name}: {e}")))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(incompatible(format!(
                "{name} has {}-byte keys and {}-byte values, this agent expects {key} and {value}",
                info.key_size(),
                info.value_size()
            )));
        }
        if name == names::CONNTRACK && info.max_entries() != conntrack_entries {
            tracing::warn!(
                pinned = info.max_entries(),
                requested = conntrack_entries,
                "the pinned connection table keeps its size; --conntrack-entries applies once the pins are removed"
            );
        }
    }
    Ok(true)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Creates the pin directory on a bpffs.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DatapathError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) && !is_bpffs(dir) {
        return Err(DatapathError::NotBpffs {
            path: parent.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
        path: dir.into(),
        source,
    })
}

/// Removes every pin of this instance (and the directory when it is left empty): the
/// program is detached from every interface it was left attached to, and the maps, the
/// connection table included, are freed.
pub fn remove_pins(dir: &Path) -> Result<(), DatapathError> {
    // Links first: removing a link's pin detaches the program from its interface.
    for sub in [LINKS_DIR, names::TABLES_DIR] {
        let sub = dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&sub) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path()).map_err(|source| DatapathError::PinDir {
                    path: entry.path(),
                    source,
                })?;
            }
            let _ = std::fs::remove_dir(&sub);
        }
    }
    for name in names::ALL_MAPS {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DatapathError::PinDir {
                    path: dir.join(name),
                    source,
                });
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it. Since 5.11 BPF
/// memory is charged to the memory cgroup, so a refusal is only a warning.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on kernels that account BPF memory by cgroup",
            std::io::Error::last_os_error()
        );
    }
}

impl Datapath {
    /// Loads the program and creates (and pins) its maps.
    ///
    /// Maps an earlier agent pinned in `opts.pin_dir` are reused (see [`check_pins`]):
    /// their contents, the connection table included, carry over; [`Self::adopted`] says
    /// so.
    pub fn load(opts: &LoadOptions) -> Result<Self, DatapathError> {
        raise_memlock();
        prepare_pin_dir(&opts.pin_dir)?;
        let adopted = check_pins(&opts.pin_dir, opts.conntrack_entries)?;
        let pins: Vec<(&'static str, PathBuf)> = names::ALL_MAPS
            .iter()
            .map(|n| (*n, opts.pin_dir.join(n)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(names::CONNTRACK, opts.conntrack_entries);
        loader.override_global(CONFIG_GLOBAL, &opts.config, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DatapathError::MissingMap(names::PROGRAM))?
            .try_into()
            .map_err(DatapathError::Program)?;
        program.load().map_err(DatapathError::Program)?;
        if !adopted {
            let mut meta: Array<&mut MapData, lb_common::maps::Meta> = Array::try_from(
                ebpf.map_mut(names::META)
                    .ok_or(DatapathError::MissingMap(names::META))?,
            )
            .map_err(map_err(names::META))?;
            let value = lb_common::maps::Meta {
                layout_version: names::LAYOUT_VERSION,
                _pad: 0,
            };
            meta.set(0, value, 0).map_err(map_err(names::META))?;
        }
        Ok(Self {
            ebpf,
            links: Vec::new(),
            pin_dir: opts.pin_dir.clone(),
            adopted,
        })
    }

    /// Whether the maps were adopted from an earlier agent's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches to `interface`, or takes over the link an earlier agent pinned for it.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<Attachment, DatapathError> {
        let dir = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        let pin = dir.join(interface);
        if pin.exists() {
            match self.take_over(&pin) {
                Ok(link) => {
                    self.links.push(AttachedLink {
                        interface: interface.into(),
                        link,
                        pin,
                    });
                    return Ok(Attachment::Replaced);
                }
                Err(e) => {
                    // E.g. the interface was deleted and re-created: its old link is
                    // defunct. Start over on this interface.
                    tracing::warn!(interface, error = %e, "cannot take over the pinned link; attaching anew");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let attempts: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for m in attempts {
            match self.program().attach(interface, *m) {
                Ok(id) => {
                    if *m == XdpMode::Skb && mode == AttachMode::Auto {
                        tracing::warn!(
                            interface,
                            error = %last.as_ref().map(|e: &ProgramError| e.to_string()).unwrap_or_default(),
                            "native XDP is not available, attached in generic mode (slower)"
                        );
                    }
                    let link = self
                        .program()
                        .take_link(id)
                        .map_err(DatapathError::Program)?;
                    let link = FdLink::try_from(link).map_err(|e| DatapathError::Link {
                        interface: interface.into(),
                        reason: format!("not a bpf_link (kernel without XDP links?): {e}"),
                    })?;
                    let pinned = link.pin(&pin).map_err(|e| DatapathError::Link {
                        interface: interface.into(),
                        reason: format!("cannot pin it at {}: {e}", pin.display()),
                    })?;
                    self.links.push(AttachedLink {
                        interface: interface.into(),
                        link: pinned.into(),
                        pin,
                    });
                    return Ok(Attachment::New(*m));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DatapathError::Attach {
            interface: interface.into(),
            source: last.expect("at least one attempt"),
        })
    }

    /// Points the pinned link at this agent's program.
    fn take_over(&mut self, pin: &Path) -> Result<FdLink, String> {
        let link: FdLink = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?.into();
        let link = XdpLink::try_from(link).map_err(|e| e.to_string())?;
        let id = self
            .program()
            .attach_to_link(link)
            .map_err(|e| e.to_string())?;
        let link = self.program().take_link(id).map_err(|e| e.to_string())?;
        FdLink::try_from(link).map_err(|e| e.to_string())
    }

    /// Detaches the pinned links of interfaces not in `keep` (an earlier agent served them;
    /// this one does not).
    pub fn detach_others(&mut self, keep: &[String]) -> Result<Vec<String>, DatapathError> {
        let dir = self.pin_dir.join(LINKS_DIR);
        let mut detached = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(detached);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|source| DatapathError::PinDir {
                    path: entry.path(),
                    source,
                })?;
                detached.push(name);
            }
        }
        Ok(detached)
    }

    /// Detaches from every interface (removes the links' pins; the links go with their
    /// last reference).
    pub fn detach_all(&mut self) {
        for l in std::mem::take(&mut self.links) {
            if let Err(e) = std::fs::remove_file(&l.pin) {
                tracing::warn!(interface = l.interface, error = %e, "cannot remove the link's pin");
            }
            drop(l.link);
        }
    }

    /// The interfaces this agent serves.
    pub fn interfaces(&self) -> Vec<String> {
        self.links.iter().map(|l| l.interface.clone()).collect()
    }

    /// Runs one frame through the loaded program with BPF_PROG_TEST_RUN: the kernel runs
    /// the real program against the real maps (connection table included) and reports the
    /// verdict and the rewritten frame, without sending anything. FIB lookups happen in
    /// the calling thread's network namespace, with loopback as the ingress interface.
    pub fn run_packet(&self, frame: &[u8]) -> Result<PacketRun, DatapathError> {
        let program: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load");
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = program.test_run(opts).map_err(DatapathError::Program)?;
        out.truncate(result.data_size_out as usize);
        Ok(PacketRun {
            action: result.return_value,
            output: out,
        })
    }

    /// The loaded program (e.g. to place it in another object's program array).
    pub fn program_fd(&self) -> &aya::programs::ProgramFd {
        let program: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load");
        program.fd().expect("the program is loaded")
    }

    /// The signal ring (passive health), taken out of the object: call once.
    pub fn signals(&mut self) -> Result<aya::maps::RingBuf<MapData>, DatapathError> {
        aya::maps::RingBuf::try_from(take(&mut self.ebpf, names::SIGNALS)?)
            .map_err(map_err(names::SIGNALS))
    }

    /// Typed handles on the maps the agent writes.
    pub fn maps(&mut self) -> Result<RealMaps, DatapathError> {
        RealMaps::from_ebpf(&mut self.ebpf, &self.pin_dir)
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` through the raw syscall: aya 0.14
/// has no batch API. One syscall for a whole table, and, for the map of maps, one RCU
/// grace period for a whole set of table swaps (the kernel waits once per syscall).
mod batch {
    use std::{io, os::fd::AsRawFd as _};

    use super::BorrowedFd;

    /// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_long, attr: &mut BatchAttr, want: usize) -> io::Result<()> {
        // SAFETY: the bpf syscall with a valid attribute block; `keys`/`values` point to
        // `count` elements of the map's key and value sizes (callers' contract).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if attr.count as usize != want {
            return Err(io::Error::other(format!(
                "batch stopped after {} of {want}",
                attr.count
            )));
        }
        Ok(())
    }

    /// Sets `keys[i]` to `values[i]`. `K` and `V` must be the map's key and value types.
    pub fn update<K: aya::Pod, V: aya::Pod>(
        map: BorrowedFd<'_>,
        keys: &[K],
        values: &[V],
    ) -> io::Result<()> {
        assert_eq!(keys.len(), values.len());
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr, keys.len())
    }

    /// Every (key, value) of a map, `chunk` at a time (arrays and hashes; not per-CPU).
    pub fn lookup_all<K: aya::Pod + bytemuck::Zeroable, V: aya::Pod + bytemuck::Zeroable>(
        map: BorrowedFd<'_>,
        chunk: usize,
    ) -> io::Result<Vec<(K, V)>> {
        const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
        let mut out = Vec::new();
        let mut keys: Vec<K> = vec![bytemuck::Zeroable::zeroed(); chunk];
        let mut values: Vec<V> = vec![bytemuck::Zeroable::zeroed(); chunk];
        // The batch position token (a u32 for arrays and hashes); 8 bytes leave room.
        let mut token_in = 0u64;
        let mut token_out = 0u64;
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &token_in as *const u64 as u64
                },
                out_batch: &mut token_out as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: map.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: as in `call`; `keys`/`values` hold `chunk` elements of the map's
            // key and value sizes (callers' contract), the tokens 8 bytes each.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let n = attr.count as usize;
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    return Ok(out);
                }
                return Err(e);
            }
            token_in = token_out;
            first = false;
        }
    }

    /// Deletes `keys` (all must exist).
    pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        call(BPF_MAP_DELETE_BATCH, &mut attr, keys.len())
    }
}

/// `BPF_MAP_LOOKUP_ELEM` through the raw syscall, for the map of maps: aya's lookup
/// there opens the inner map by id (CAP_SYS_ADMIN); the id alone is what is wanted.
mod single {
    use std::{io, os::fd::AsRawFd as _};

    use super::BorrowedFd;

    /// The `map_elem` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// The value at `key`, `None` if absent. `K` and `V` must be the map's key and value
    /// types as userspace sees them.
    pub fn lookup<K: aya::Pod, V: aya::Pod + bytemuck::Zeroable>(
        map: BorrowedFd<'_>,
        key: &K,
    ) -> io::Result<Option<V>> {
        const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
        let mut value: V = bytemuck::Zeroable::zeroed();
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            flags: 0,
        };
        // SAFETY: the bpf syscall with a valid attribute block; `key` and `value` point to
        // the map's key and value sizes (callers' contract).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(value))
    }

    /// Deletes `key`.
    pub fn delete<K: aya::Pod>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: as in `lookup`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

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
    fn from_ebpf(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, DatapathError> {
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
            if let Some(id) =
                single::lookup::<u32, u32>(self.outer_fd(), &service).map_err(|e| {
                    DatapathError::ReadBack(format!("{}: service {service}: {e}", names::MAGLEV))
                })?
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
            let map = MapData::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|m| Inner::try_from(Map::Array(m)).map_err(|e| e.to_string()))
                .map_err(|e| DatapathError::ReadBack(format!("{}: {e}", path.display())))?;
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
        let err =
            |what: &str, e: &dyn std::fmt::Display| DatapathError::ReadBack(format!("{what}: {e}"));
        let mut p = crate::sync::Programmed::default();
        for entry in self.frontends.iter() {
            p.frontends
                .push(entry.map_err(|e| err(names::FRONTENDS, &e))?);
        }
        let backends: Vec<(u32, BackendValue)> =
            batch::lookup_all(self.backends.map().fd().as_fd(), 65_536)
                .map_err(|e| err(names::BACKENDS, &e))?;
        p.backends = backends
            .into_iter()
            .filter(|(_, v)| v.flags & lb_common::maps::BACKEND_F_ACTIVE != 0)
            .collect();
        for (service, _) in self.outer_entries()? {
            let mut flat = Vec::new();
            if let Some(table) = self.tables.get(&service) {
                let chunks: Vec<(u32, MaglevChunk)> =
                    batch::lookup_all(table.map.map().fd().as_fd(), 4096)
                        .map_err(|e| err(names::MAGLEV, &e))?;
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
                .push(key.map_err(|e| err(names::AFFINITY_MEMBERS, &e))?);
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
