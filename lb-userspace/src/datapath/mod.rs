//! The kernel side, seen from userspace, and the only module that uses aya:
//! - [`pins`]: the per-instance pin directory on a bpffs and the compatibility of pins an
//!   earlier agent left (layout version, key and value sizes);
//! - [`load`]: loading the embedded object (every program, checked by the verifier);
//! - [`links`]: attaching the programs (XDP on node devices, tc on pods' interfaces, the
//!   socket programs on a cgroup) through pinned links, and taking over an earlier
//!   agent's;
//! - [`sys`]: the raw bpf(2) calls aya 0.14 lacks (batch operations, map-of-maps lookups);
//! - [`maps`]: typed access to the maps ([`RealMaps`], the real [`crate::sync::Maps`]);
//! - [`counters`]: the per-CPU counters, summed;
//! - [`signals`]: the datapath's signal ring, as an async stream for the agent.

mod counters;
mod links;
mod load;
mod maps;
mod pins;
mod signals;
mod sys;

use std::path::PathBuf;

use aya::programs::ProgramError;

pub use counters::{Counters, read_counters};
pub use links::{AttachMode, Attachment, Hook, LINKS_DIR, ifindex};
pub use load::{Datapath, LoadOptions, PacketRun};
pub use maps::{RealMaps, TxPorts};
pub use pins::{check_pins, mount_bpffs, prepare_pin_dir, remove_pins, require_instance};
pub use signals::Signals;

/// A lower layer's error, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why pins an earlier agent left cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum Incompatible {
    #[error("maps {0:?} are missing (another version's pins?)")]
    Missing(Vec<&'static str>),
    #[error("{name} cannot be opened: {source}")]
    Unreadable {
        name: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("their layout version is {found}, this agent's is {want}")]
    Version { found: u32, want: u32 },
    #[error(
        "{name} has {key}-byte keys and {value}-byte values, this agent expects {want_key} and {want_value}"
    )]
    Sizes {
        name: &'static str,
        key: u32,
        value: u32,
        want_key: usize,
        want_value: usize,
    },
}

/// The XDP object, embedded at build time (see build.rs).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("XLB_EBPF_OBJECT"));

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
    #[error(
        "{what} was refused for lack of privileges: it needs {needs} (run as root, or grant \
         them: deploy/daemonset.yaml adds CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and \
         CAP_SYS_RESOURCE)"
    )]
    Privileges {
        what: String,
        needs: &'static str,
        #[source]
        source: BoxError,
    },
    #[error(
        "no xlb instance is pinned at {dir}: is an agent running with `--bpffs {dir}`? (In a \
         cluster, ask the agent's own pod: `kubectl -n xlb-system exec ds/xlb-agent -- xlb \
         stats`.)"
    )]
    NoInstance { dir: PathBuf },
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
    IncompatiblePins {
        dir: PathBuf,
        #[source]
        reason: Incompatible,
    },
    #[error("cannot read the pinned maps back: {what}: {source}")]
    ReadBack {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot keep the XDP link of {interface}: {what}: {source}")]
    Link {
        interface: String,
        what: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("cannot poll map {name}: {source}")]
    Poll {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface} does not exist")]
    NoInterface { interface: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach to {interface}: {source}")]
    Attach {
        interface: String,
        #[source]
        source: ProgramError,
    },
}

impl DatapathError {
    /// A failed attach: for lack of CAP_NET_ADMIN, said so.
    pub(crate) fn attach(interface: String, source: ProgramError) -> Self {
        if is_eperm(&source) {
            Self::Privileges {
                what: format!("attaching to {interface}"),
                needs: "CAP_NET_ADMIN",
                source: Box::new(source),
            }
        } else {
            Self::Attach { interface, source }
        }
    }

    /// A program the kernel would not load: for lack of CAP_BPF/CAP_PERFMON, said so.
    pub(crate) fn program(source: ProgramError) -> Self {
        if is_eperm(&source) {
            Self::Privileges {
                what: "loading the datapath's programs".into(),
                needs: "CAP_BPF and CAP_PERFMON",
                source: Box::new(source),
            }
        } else {
            Self::Program(source)
        }
    }
}

/// Whether an error chain bottoms out in EPERM (a capability the kernel wanted). EACCES is
/// not one: the verifier rejects programs with it.
pub(crate) fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}
