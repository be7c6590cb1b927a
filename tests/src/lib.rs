//! The lab: network namespaces with veth links, a per-run bpffs, real TCP/UDP servers and
//! clients, and the agent as a child process. Used by the privileged tests and by
//! `cargo xtask run`.
//!
//! Every namespace, mount and process belongs to a guard that removes it when dropped, so a
//! failing test or an interrupted demo leaves nothing behind. Names carry a per-run prefix
//! (see [`run_prefix`]); interfaces are created directly inside the lab's namespaces, so
//! they never clash with other tenants' interfaces.

pub mod apiserver;
pub mod bpffs;
pub mod cgroup;
pub mod client;
pub mod cluster;
pub mod cmd;
pub mod fixture;
pub mod http;
pub mod lab;
pub mod load;
pub mod netns;
pub mod packet;
pub mod process;
pub mod registry;
pub mod services;
pub mod wait;

/// A short prefix unique to this call, e.g. `xlb3fa2c1`: the process id, the time and a
/// per-process counter, so that concurrent tests and concurrent runs never share names.
pub fn run_prefix() -> String {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::{SystemTime, UNIX_EPOCH},
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mix = (std::process::id() as u64).wrapping_mul(0x9e37_79b9)
        ^ nanos as u64
        ^ (n as u64).wrapping_mul(0x85eb_ca6b);
    format!("xlb{:06x}", mix & 0xff_ffff)
}

/// Fails with a clear message unless running as root (the lab needs CAP_NET_ADMIN,
/// CAP_SYS_ADMIN for mounts and CAP_BPF).
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "this needs root: it creates network namespaces, mounts a bpffs and loads BPF \
             programs (run `cargo xtask test` / `cargo xtask run` as root, or through sudo)"
        );
    }
    Ok(())
}
