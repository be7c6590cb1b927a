//! A private bpffs instance for one run: the agent pins its maps there. A private mount
//! (rather than /sys/fs/bpf) survives `ip netns exec`, which remounts /sys, and keeps
//! concurrent runs apart.

use std::path::{Path, PathBuf};

use crate::cmd;

pub struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    pub fn mount(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-bpffs"));
        std::fs::create_dir_all(&dir)?;
        cmd::run(
            "mount",
            &["-t", "bpf", prefix, dir.to_str().expect("utf-8 temp dir")],
        )?;
        crate::registry::mount(&dir);
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        crate::registry::mount_gone(&self.dir);
        let d = self.dir.to_string_lossy().into_owned();
        if let Err(e) = cmd::run("umount", &[&d]) {
            eprintln!("lab teardown: {e}");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
