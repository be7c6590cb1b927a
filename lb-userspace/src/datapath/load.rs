//! Loading the embedded XDP object (its maps pinned, or adopted from an earlier agent's
//! pins), attaching it to interfaces through pinned bpf_links, and taking over the links
//! an earlier agent pinned.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{CgroupSockAddr, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    config::{CONFIG_GLOBAL, DatapathConfig},
    maps as names,
};

use super::{
    DatapathError, OBJECT, RealMaps, Signals, map_err,
    pins::{check_pins, prepare_pin_dir},
    take,
};

/// Settings for loading the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The per-instance directory (on a bpffs) where the maps are pinned.
    pub pin_dir: PathBuf,
    pub config: DatapathConfig,
    pub conntrack_entries: u32,
    /// Capacity of the backend table and of the per-CPU per-backend counters
    /// (`--max-backends`; at most `lb_common::maps::MAX_BACKENDS`).
    pub backends: u32,
}

/// The outcome of [`Datapath::run_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// The XDP action (`lb_common::stats::XDP_*`).
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// The loaded programs and their maps. Where the programs are attached: see `links`.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    adopted: bool,
}

/// Loads every program of the object into the kernel (the verifier checks each).
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let missing = |name| DatapathError::MissingMap(name);
    let xdp: &mut Xdp = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(missing(names::PROGRAM))?
        .try_into()
        .map_err(DatapathError::Program)?;
    xdp.load().map_err(DatapathError::program)?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(names::TC_PROGRAM)
        .ok_or(missing(names::TC_PROGRAM))?
        .try_into()
        .map_err(DatapathError::Program)?;
    tc.load().map_err(DatapathError::program)?;
    for name in names::SOCK_PROGRAMS {
        let sock: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(missing(name))?
            .try_into()
            .map_err(DatapathError::Program)?;
        sock.load().map_err(DatapathError::program)?;
    }
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
        let adopted = check_pins(&opts.pin_dir, opts.conntrack_entries, opts.backends)?;
        let pins: Vec<(&'static str, PathBuf)> = names::ALL_MAPS
            .iter()
            .map(|n| (*n, opts.pin_dir.join(n)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(names::CONNTRACK, opts.conntrack_entries);
        loader.map_max_entries(names::BACKENDS, opts.backends);
        loader.map_max_entries(names::BACKEND_STATS, opts.backends);
        loader.override_global(CONFIG_GLOBAL, &opts.config, true);
        // A load that fails leaves nothing behind that it created: the maps pinned so far
        // (and the directory) go again, unless they were an earlier agent's to adopt.
        let cleanup = |e: DatapathError| {
            if !adopted {
                let _ = super::remove_pins(&opts.pin_dir);
            }
            e
        };
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
            cleanup(if super::is_eperm(&e) {
                DatapathError::Privileges {
                    what: "loading the datapath (creating BPF maps and programs)".into(),
                    needs: "CAP_BPF and CAP_PERFMON",
                    source: Box::new(e),
                }
            } else {
                DatapathError::Load(Box::new(e))
            })
        })?;
        load_programs(&mut ebpf).map_err(cleanup)?;
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
            pin_dir: opts.pin_dir.clone(),
            adopted,
        })
    }

    /// How many backends the loaded (or adopted) backend table holds: ids are below it.
    pub fn backend_capacity(&self) -> Result<u32, DatapathError> {
        let info = aya::maps::MapInfo::from_pin(self.pin_dir.join(names::BACKENDS))
            .map_err(map_err(names::BACKENDS))?;
        Ok(info.max_entries())
    }

    /// Whether the maps were adopted from an earlier agent's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Runs one frame through the loaded program with BPF_PROG_TEST_RUN: the kernel runs
    /// the real program against the real maps (connection table included) and reports the
    /// verdict and the rewritten frame, without sending anything. FIB lookups happen in
    /// the calling thread's network namespace, with loopback as the ingress interface.
    pub fn run_packet(&self, frame: &[u8]) -> Result<PacketRun, DatapathError> {
        self.run_packet_on(frame, None)
    }

    /// [`Self::run_packet`] as if the frame arrived on interface `ingress` (an ifindex of
    /// this network namespace; default: loopback).
    pub fn run_packet_on(
        &self,
        frame: &[u8],
        ingress: Option<u32>,
    ) -> Result<PacketRun, DatapathError> {
        let program: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load");
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data 0 and data_end the frame's length.
        let ctx: Vec<u8> = ingress
            .map(|index| {
                [0, frame.len() as u32, 0, index, 0, 0]
                    .iter()
                    .flat_map(|w| w.to_ne_bytes())
                    .collect()
            })
            .unwrap_or_default();
        if ingress.is_some() {
            opts.ctx_in = Some(&ctx);
        }
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

    /// The signal ring (passive health), taken out of the object: call once, within the
    /// async runtime.
    pub fn signals(&mut self) -> Result<Signals, DatapathError> {
        let ring = aya::maps::RingBuf::try_from(take(&mut self.ebpf, names::SIGNALS)?)
            .map_err(map_err(names::SIGNALS))?;
        Ok(Signals::new(ring))
    }

    /// The interfaces XDP may hand frames to, taken out of the object: call once.
    pub fn tx_ports(&mut self) -> Result<super::TxPorts, DatapathError> {
        super::TxPorts::from_ebpf(&mut self.ebpf)
    }

    /// Typed handles on the maps the agent writes.
    pub fn maps(&mut self) -> Result<RealMaps, DatapathError> {
        RealMaps::from_ebpf(&mut self.ebpf, &self.pin_dir)
    }
}
