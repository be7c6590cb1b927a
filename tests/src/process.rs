//! Child processes of the lab (the agent, the servers): output captured line by line so
//! tests can wait for what a process says, and stopped when their guard is dropped.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use crate::wait;

pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `cmd` with stdout and stderr captured. With `XLB_LAB_VERBOSE=1` the output is
    /// also echoed, prefixed with `name`.
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let verbose = std::env::var_os("XLB_LAB_VERBOSE").is_some();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("piped"));
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("piped"));
        for stream in [out, err] {
            let lines = Arc::clone(&lines);
            let name = name.to_string();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if verbose {
                        eprintln!("[{name}] {line}");
                    }
                    lines.lock().expect("not poisoned").push(line);
                }
            });
        }
        crate::registry::process(child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().expect("not poisoned").clone()
    }

    /// How many printed lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until at least `n` printed lines contain `needle`; fails early if the process
    /// exits.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{} to print {n} line(s) with {needle:?}", self.name);
        let result = wait::until(&what, timeout, Duration::from_millis(20), || {
            if self.count(needle) >= n {
                return Some(Ok(()));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => Some(Err(anyhow::anyhow!("{} exited ({status})", self.name))),
                _ => None,
            }
        });
        match result.and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(e) => Err(e.context(format!(
                "output of {}:\n{}",
                self.name,
                self.output().join("\n")
            ))),
        }
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_count(needle, 1, timeout)
    }

    pub fn signal(&self, sig: i32) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(self.child.id() as i32, sig) } != 0 {
            anyhow::bail!("kill {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The exit status, once the process has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the process to stop (SIGTERM) and waits for it, killing it after `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        let _ = self.signal(libc::SIGTERM);
        let waited = wait::until("process exit", grace, Duration::from_millis(10), || {
            self.child.try_wait().ok().flatten()
        });
        match waited {
            Ok(status) => Ok(status),
            Err(_) => {
                let _ = self.child.kill();
                Ok(self.child.wait()?)
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(5));
        crate::registry::process_gone(self.child.id());
    }
}

/// Resident memory of process `pid`, MiB (VmRSS).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no VmRSS"))?;
    Ok(kb / 1024.0)
}
