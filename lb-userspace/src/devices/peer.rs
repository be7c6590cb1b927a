//! Whether XDP frames handed to a veth are delivered: a frame redirected into a veth (or
//! sent back out of it with XDP_TX) is received by its peer, which takes it only if it
//! has NAPI (GRO on, or an XDP program); otherwise the frame is dropped there while the
//! program counted a redirect. The peer of a node device usually lives in another
//! network namespace (a bridge, a container runtime's), found among the named ones.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use lb_common::maps::{TX_F_REDIRECT, TX_F_TX};

use super::{Device, netlink};

/// Where named network namespaces live (iproute2, CNI plugins, container runtimes).
const NETNS_DIRS: &[&str] = &["/run/netns", "/var/run/netns", "/var/run/docker/netns"];

/// What a veth's peer does with frames handed to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCaps {
    /// GRO is on: the peer has NAPI, redirected frames are received.
    pub gro: bool,
    /// An XDP program is attached: frames are received, XDP_TX ones at once too.
    pub xdp: bool,
}

/// The `TX_F_*` bits of a node device that runs xlb's XDP program.
pub fn tx_flags(dev: &Device) -> u32 {
    let Some(veth) = dev.veth else {
        // A NIC with our XDP program has an XDP transmit path.
        return TX_F_REDIRECT | TX_F_TX;
    };
    match inspect(dev.index, veth) {
        Some(caps) => {
            let mut f = 0;
            if caps.gro || caps.xdp {
                f |= TX_F_REDIRECT;
            }
            if caps.xdp {
                f |= TX_F_TX;
            }
            f
        }
        None => {
            tracing::warn!(
                interface = dev.name,
                "cannot inspect the peer of this veth: XDP frames for it go through the kernel"
            );
            0
        }
    }
}

/// The peer's capabilities, looked up in its namespace (here, or a named one).
fn inspect(index: u32, veth: super::Veth) -> Option<PeerCaps> {
    let candidates: Vec<Option<PathBuf>> = match veth.peer_netns {
        None => vec![None],
        Some(_) => NETNS_DIRS
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .map(|e| Some(e.path()))
            .collect(),
    };
    candidates
        .into_iter()
        .find_map(|ns| in_netns(ns.as_deref(), move || peer_caps(veth.peer_index, index)).flatten())
}

/// Runs `f` on a thread in the namespace at `ns` (here when `None`).
fn in_netns<T: Send + 'static>(
    ns: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let file = match ns {
        Some(p) => Some(std::fs::File::open(p).ok()?),
        None => None,
    };
    std::thread::spawn(move || {
        if let Some(file) = file {
            // SAFETY: setns on a namespace fd; it affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return None;
            }
        }
        Some(f())
    })
    .join()
    .ok()
    .flatten()
}

/// In the current namespace: the capabilities of link `peer`, if it is a veth whose own
/// peer has index `of`.
fn peer_caps(peer: u32, of: u32) -> Option<PeerCaps> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let dev = rt.block_on(async {
        use futures::TryStreamExt as _;
        let handle = netlink::connect().ok()?;
        let m = handle
            .link()
            .get()
            .match_index(peer)
            .execute()
            .try_next()
            .await
            .ok()??;
        Some(netlink::device(&m))
    })?;
    if dev.veth?.peer_index != of {
        return None;
    }
    Some(PeerCaps {
        gro: gro(&dev.name).unwrap_or(false),
        xdp: dev.xdp,
    })
}

/// Whether GRO is on (`ETHTOOL_GGRO`), in the current namespace.
fn gro(name: &str) -> Option<bool> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GGRO: u32 = 0x2b;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket for the ioctl, owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GGRO,
        data: 0,
    };
    let mut req = Ifreq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at an ethtool_value, both alive
    // for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    (rc == 0).then_some(value.data != 0)
}
