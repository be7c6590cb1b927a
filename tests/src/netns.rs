//! Network namespaces: created by name, deleted on drop, entered per thread.

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::Context as _;

use crate::cmd;

/// A named network namespace that is deleted (with its interfaces) when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        cmd::ip(&format!("netns add {name}"))?;
        crate::registry::netns(name);
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip("link set lo up")?;
        // No duplicate address detection in the lab: a fresh link-local address stays
        // tentative for a second, and the kernel will not send neighbour solicitations from
        // a tentative address, so the first IPv6 packets would wait for DAD. Set before
        // any interface exists, so every interface inherits it.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        cmd::ip(&format!("-n {} {args}", self.name))
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["netns", "exec", self.name.as_str(), program];
        v.extend_from_slice(args);
        cmd::run("ip", &v)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace: sockets it creates live
    /// in the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        run_in(&self.path(), f)
    }

    /// The namespace's bind mount (what `setns` opens).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// Runs `f` on a new thread that has entered the namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(path).with_context(|| format!("open {path}"))?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        crate::registry::netns_gone(&self.name);
        if let Err(e) = cmd::ip(&format!("netns del {}", self.name)) {
            eprintln!("lab teardown: {e}");
        }
    }
}
