//! Loading the embedded XDP object (its maps pinned, or adopted from an earlier agent's
//! pins), attaching it to interfaces through pinned bpf_links, and taking over the links
//! an earlier agent pinned.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    config::{CONFIG_GLOBAL, DatapathConfig},
    maps as names,
};

use super::{
    BoxError, DatapathError, OBJECT, RealMaps, Signals, map_err,
    pins::{LINKS_DIR, check_pins, prepare_pin_dir},
    take,
};

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
                        what: "not a bpf_link (kernel without XDP links?)",
                        source: Box::new(e),
                    })?;
                    let pinned = link.pin(&pin).map_err(|e| DatapathError::Link {
                        interface: interface.into(),
                        what: "cannot pin it",
                        source: Box::new(e),
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
    fn take_over(&mut self, pin: &Path) -> Result<FdLink, BoxError> {
        let link: FdLink = PinnedLink::from_pin(pin)?.into();
        let link = XdpLink::try_from(link)?;
        let id = self.program().attach_to_link(link)?;
        let link = self.program().take_link(id)?;
        Ok(FdLink::try_from(link)?)
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

    /// The signal ring (passive health), taken out of the object: call once, within the
    /// async runtime.
    pub fn signals(&mut self) -> Result<Signals, DatapathError> {
        let ring = aya::maps::RingBuf::try_from(take(&mut self.ebpf, names::SIGNALS)?)
            .map_err(map_err(names::SIGNALS))?;
        Ok(Signals::new(ring))
    }

    /// Typed handles on the maps the agent writes.
    pub fn maps(&mut self) -> Result<RealMaps, DatapathError> {
        RealMaps::from_ebpf(&mut self.ebpf, &self.pin_dir)
    }
}
