//! Where the programs are attached, as bpf_links pinned in the instance's `links/`
//! directory, one per hook:
//! - `xdp-<interface>`: the XDP program on a node device;
//! - `tc-<interface>`: the tc program (tcx ingress) on a local pod's interface;
//! - `cgroup-<program>`: each socket program on the agent's cgroup.
//!
//! Pinned links outlive the agent: a stopped, killed or restarting agent leaves the
//! datapath serving, and the next agent points each link at its own program
//! (`BPF_LINK_UPDATE`: atomic, no packet or socket ever meets no program). A pin whose
//! target changed (an interface deleted and created again, another cgroup) is replaced.
//! Removing a pin detaches its link.

use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    XdpMode, links::FdLink, tc::TcAttachOptions,
};
use lb_common::maps as names;

use super::{BoxError, Datapath, DatapathError, sys};

/// Directory, inside an instance's pin directory, of the pinned links.
pub const LINKS_DIR: &str = "links";

/// A place a program is attached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// The XDP program on a node device.
    Xdp(String),
    /// The tc program on a pod's interface.
    Tc(String),
    /// A socket program on the agent's cgroup.
    Cgroup(&'static str),
}

impl Hook {
    fn pin_name(&self) -> String {
        match self {
            Self::Xdp(i) => format!("xdp-{i}"),
            Self::Tc(i) => format!("tc-{i}"),
            Self::Cgroup(p) => format!("cgroup-{p}"),
        }
    }

    fn from_pin_name(name: &str) -> Option<Self> {
        if let Some(i) = name.strip_prefix("xdp-") {
            return Some(Self::Xdp(i.into()));
        }
        if let Some(i) = name.strip_prefix("tc-") {
            return Some(Self::Tc(i.into()));
        }
        let p = name.strip_prefix("cgroup-")?;
        names::SOCK_PROGRAMS
            .iter()
            .find(|n| **n == p)
            .map(|n| Self::Cgroup(n))
    }

    /// The interface it is attached to, for XDP and tc.
    pub fn interface(&self) -> Option<&str> {
        match self {
            Self::Xdp(i) | Self::Tc(i) => Some(i),
            Self::Cgroup(_) => None,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Xdp(i) => write!(f, "xdp on {i}"),
            Self::Tc(i) => write!(f, "tc ingress on {i}"),
            Self::Cgroup(p) => write!(f, "{p} on the cgroup"),
        }
    }
}

/// How a hook got its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new XDP link, in this mode.
    New(XdpMode),
    /// A new link (tc, cgroup).
    Attached,
    /// The link an earlier agent pinned now runs this agent's program.
    Replaced,
}

/// How to attach XDP: native (driver) XDP where the driver supports it, else generic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native mode, falling back to generic mode with a warning.
    Auto,
    Native,
    Generic,
}

/// The interface index of `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The cgroup id of a cgroup v2 directory (its inode number).
fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(dir)?.ino())
}

impl Datapath {
    fn links_dir(&self) -> Result<PathBuf, DatapathError> {
        let dir = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    fn link_err(
        hook: &Hook,
        what: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DatapathError {
        let interface = hook.to_string();
        move |source| DatapathError::Link {
            interface,
            what,
            source,
        }
    }

    /// Points the link pinned for `hook` at this agent's program `program`, if the pin is
    /// there and still attached to `target` (interface index or cgroup id). Returns
    /// whether it did; a pin that cannot be taken over is removed (the caller attaches
    /// anew).
    fn take_over(hook: &Hook, pin: &Path, program: BorrowedFd<'_>, target: u64) -> bool {
        if !pin.exists() {
            return false;
        }
        let result: Result<(), BoxError> = (|| {
            let link = sys::link::open(pin)?;
            let now = sys::link::target(link.as_fd())?;
            if now != target {
                return Err(format!("attached to {now}, wanted {target}").into());
            }
            sys::link::update(link.as_fd(), program)?;
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                // E.g. the interface was deleted and created again: its old link is
                // defunct. Start over.
                tracing::warn!(%hook, error = %e, "cannot take over the pinned link; attaching anew");
                let _ = std::fs::remove_file(pin);
                false
            }
        }
    }

    /// Pins a new link.
    fn pin_new(hook: &Hook, link: FdLink, pin: &Path) -> Result<(), DatapathError> {
        link.pin(pin)
            .map_err(|e| Self::link_err(hook, "cannot pin it")(Box::new(e)))?;
        Ok(())
    }

    /// Attaches the XDP program to `interface`, or takes over its pinned link.
    pub fn attach_xdp(
        &mut self,
        interface: &str,
        mode: AttachMode,
    ) -> Result<Attachment, DatapathError> {
        let hook = Hook::Xdp(interface.into());
        let pin = self.links_dir()?.join(hook.pin_name());
        let index = ifindex(interface).ok_or_else(|| DatapathError::NoInterface {
            interface: interface.into(),
        })?;
        let fd = self.xdp_mut().fd().map_err(DatapathError::Program)?.as_fd();
        if Self::take_over(&hook, &pin, fd, index as u64) {
            return Ok(Attachment::Replaced);
        }
        let attempts: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for m in attempts {
            match self.xdp_mut().attach(interface, *m) {
                Ok(id) => {
                    if *m == XdpMode::Skb && mode == AttachMode::Auto {
                        tracing::warn!(
                            interface,
                            error = %last.as_ref().map(|e: &ProgramError| e.to_string()).unwrap_or_default(),
                            "native XDP is not available, attached in generic mode (slower)"
                        );
                    }
                    let link = self
                        .xdp_mut()
                        .take_link(id)
                        .map_err(DatapathError::Program)?;
                    let link = FdLink::try_from(link).map_err(|e| {
                        Self::link_err(&hook, "not a bpf_link (kernel without XDP links?)")(
                            Box::new(e),
                        )
                    })?;
                    Self::pin_new(&hook, link, &pin)?;
                    return Ok(Attachment::New(*m));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(DatapathError::attach(
            interface.into(),
            last.expect("at least one attempt"),
        ))
    }

    /// Attaches the tc program (tcx ingress) to a pod's `interface`, or takes over its
    /// pinned link.
    pub fn attach_tc(&mut self, interface: &str) -> Result<Attachment, DatapathError> {
        let hook = Hook::Tc(interface.into());
        let pin = self.links_dir()?.join(hook.pin_name());
        let index = ifindex(interface).ok_or_else(|| DatapathError::NoInterface {
            interface: interface.into(),
        })?;
        let fd = self.tc_mut().fd().map_err(DatapathError::Program)?.as_fd();
        if Self::take_over(&hook, &pin, fd, index as u64) {
            return Ok(Attachment::Replaced);
        }
        let program = self.tc_mut();
        let id = program
            .attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| DatapathError::attach(interface.into(), source))?;
        let link = program.take_link(id).map_err(DatapathError::Program)?;
        let link = FdLink::try_from(link)
            .map_err(|e| Self::link_err(&hook, "not a tcx link")(Box::new(e)))?;
        Self::pin_new(&hook, link, &pin)?;
        Ok(Attachment::Attached)
    }

    /// Attaches every socket program to the cgroup (v2) at `dir`, or takes over their
    /// pinned links. Several programs may share a cgroup hook: other users' stay.
    pub fn attach_cgroup(&mut self, dir: &Path) -> Result<Attachment, DatapathError> {
        let cgroup_err = |source: std::io::Error| DatapathError::Cgroup {
            path: dir.into(),
            source,
        };
        let id = cgroup_id(dir).map_err(cgroup_err)?;
        let file = std::fs::File::open(dir).map_err(cgroup_err)?;
        let links = self.links_dir()?;
        let mut how = Attachment::Replaced;
        for name in names::SOCK_PROGRAMS {
            let hook = Hook::Cgroup(name);
            let pin = links.join(hook.pin_name());
            let fd = self
                .sock_mut(name)?
                .fd()
                .map_err(DatapathError::Program)?
                .as_fd();
            if Self::take_over(&hook, &pin, fd, id) {
                continue;
            }
            how = Attachment::Attached;
            let program = self.sock_mut(name)?;
            let link_id = program
                // "Single" means no flags: a cgroup bpf_link always coexists with other
                // links and programs on the hook (BPF_LINK_CREATE refuses
                // BPF_F_ALLOW_MULTI with EINVAL).
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|source| DatapathError::attach(hook.to_string(), source))?;
            let link = program.take_link(link_id).map_err(DatapathError::Program)?;
            let link = FdLink::try_from(link)
                .map_err(|e| Self::link_err(&hook, "not a cgroup link")(Box::new(e)))?;
            Self::pin_new(&hook, link, &pin)?;
        }
        Ok(how)
    }

    /// Every hook with a pinned link.
    pub fn pinned_hooks(&self) -> Vec<Hook> {
        let Ok(entries) = std::fs::read_dir(self.pin_dir.join(LINKS_DIR)) else {
            return Vec::new();
        };
        let mut hooks: Vec<Hook> = entries
            .flatten()
            .filter_map(|e| Hook::from_pin_name(&e.file_name().to_string_lossy()))
            .collect();
        hooks.sort();
        hooks
    }

    /// Detaches `hook` (removes its pin; the link goes with it).
    pub fn detach(&mut self, hook: &Hook) -> Result<(), DatapathError> {
        let pin = self.pin_dir.join(LINKS_DIR).join(hook.pin_name());
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatapathError::PinDir { path: pin, source }),
        }
    }

    /// Detaches every hook.
    pub fn detach_all(&mut self) {
        for hook in self.pinned_hooks() {
            if let Err(e) = self.detach(&hook) {
                tracing::warn!(%hook, error = %e, "cannot detach");
            }
        }
    }

    fn xdp_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load")
    }

    fn tc_mut(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(names::TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was checked at load")
    }

    fn sock_mut(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, DatapathError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingMap(name))
    }
}
