//! Everything a run created that must not outlive it, for a last-resort teardown when the
//! run is interrupted (SIGINT/SIGTERM) before the guards' `Drop` can run: the benchmark
//! runner calls [`teardown_all`] from its signal handler. Guards register themselves when
//! created and unregister when dropped, so normal runs never depend on this.

use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Resource {
    Process(u32),
    Netns(String),
    Mount(std::path::PathBuf),
    Dir(std::path::PathBuf),
    Cgroup(std::path::PathBuf),
}

static LIVE: Mutex<Vec<Resource>> = Mutex::new(Vec::new());

fn add(r: Resource) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(r);
}

fn remove(r: &Resource) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != r);
}

pub(crate) fn process(pid: u32) {
    add(Resource::Process(pid));
}
pub(crate) fn process_gone(pid: u32) {
    remove(&Resource::Process(pid));
}
pub(crate) fn netns(name: &str) {
    add(Resource::Netns(name.into()));
}
pub(crate) fn netns_gone(name: &str) {
    remove(&Resource::Netns(name.into()));
}
pub(crate) fn mount(path: &std::path::Path) {
    add(Resource::Mount(path.into()));
}
pub(crate) fn mount_gone(path: &std::path::Path) {
    remove(&Resource::Mount(path.into()));
}
pub(crate) fn cgroup(path: &std::path::Path) {
    add(Resource::Cgroup(path.into()));
}
pub(crate) fn cgroup_gone(path: &std::path::Path) {
    remove(&Resource::Cgroup(path.into()));
}
pub(crate) fn dir(path: &std::path::Path) {
    add(Resource::Dir(path.into()));
}
pub(crate) fn dir_gone(path: &std::path::Path) {
    remove(&Resource::Dir(path.into()));
}

/// Kills the registered processes, then deletes the namespaces and unmounts the bpffs
/// instances (in that order: nothing holds a mount or a namespace once its processes are
/// gone). Best effort; reports what it could not remove.
pub fn teardown_all() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for r in &live {
        if let Resource::Process(pid) = r {
            // SAFETY: kill(2) on a child we started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
    for r in live.iter().rev() {
        let result = match r {
            Resource::Process(_) => Ok(String::new()),
            Resource::Netns(name) => crate::cmd::ip(&format!("netns del {name}")),
            Resource::Cgroup(path) => crate::cgroup::remove(path)
                .map(|_| String::new())
                .map_err(anyhow::Error::from),
            Resource::Dir(path) => std::fs::remove_dir_all(path)
                .map(|_| String::new())
                .map_err(anyhow::Error::from),
            Resource::Mount(path) => {
                let r = crate::cmd::run("umount", &[&path.to_string_lossy()]);
                let _ = std::fs::remove_dir(path);
                r
            }
        };
        if let Err(e) = result {
            eprintln!("teardown: {e}");
        }
    }
}
