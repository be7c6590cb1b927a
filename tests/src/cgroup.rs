//! Cgroups (v2) for the lab: a private mount of the cgroup2 hierarchy (it survives
//! `ip netns exec`, which remounts /sys and with it /sys/fs/cgroup), and one cgroup per
//! lab node, under which that node's processes (its host processes, its pods') run.
//!
//! This is where the lab differs from a node: on a node the agent attaches its socket
//! programs to the root of the hierarchy, so every process of the node is covered. Here
//! several lab nodes (and other tests) share one kernel, so each node's agent gets the
//! node's own cgroup (`--cgroup`), and the lab starts the node's processes inside it:
//! seen from the agent, that cgroup is the node.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd;

/// A private mount of the cgroup2 hierarchy.
pub struct Cgroup2 {
    dir: PathBuf,
}

impl Cgroup2 {
    pub fn mount(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-cgroup2"));
        std::fs::create_dir_all(&dir)?;
        cmd::run(
            "mount",
            &[
                "-t",
                "cgroup2",
                "none",
                dir.to_str().expect("utf-8 temp dir"),
            ],
        )
        .context("mounting the cgroup2 hierarchy (the kernel needs cgroup v2)")?;
        crate::registry::mount(&dir);
        Ok(Self { dir })
    }

    /// A new cgroup at the top of the hierarchy.
    pub fn create(&self, name: &str) -> anyhow::Result<Cgroup> {
        Cgroup::create(self.dir.join(name))
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        crate::registry::mount_gone(&self.dir);
        let d = self.dir.to_string_lossy().into_owned();
        if let Err(e) = cmd::run("umount", &[&d]) {
            eprintln!("lab teardown: {e}");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A cgroup, removed (its processes killed first) on drop.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        crate::registry::cgroup(&path);
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A cgroup below this one (drop it before this one).
    pub fn child(&self, name: &str) -> anyhow::Result<Cgroup> {
        Cgroup::create(self.path.join(name))
    }

    /// Makes `cmd` start inside this cgroup (it joins between fork and exec).
    pub fn enter(&self, cmd: &mut Command) {
        let procs = std::ffi::CString::new(
            self.path
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .expect("a path without NUL");
        // SAFETY: between fork and exec only async-signal-safe calls are made: open,
        // write, close, on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Kills what runs in the cgroup at `path` and below, and removes them (deepest first).
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path())?;
            }
        }
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    // The killed processes leave the cgroup asynchronously: retry briefly.
    let mut last = None;
    for _ in 0..200 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(last.expect("tried"))
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        crate::registry::cgroup_gone(&self.path);
        if let Err(e) = remove(&self.path) {
            eprintln!("lab teardown: cgroup {}: {e}", self.path.display());
        }
    }
}
