//! The lab topology: a client, a node running the agent on all its interfaces, and N
//! backends running `xlb-lab-server`, each in its own namespace.
//!
//! ```text
//!  client (10.200.0.2, fd00:200::2)
//!    | eth0 <-> cli0
//!  node (10.200.0.1; be<i>: 10.201.<i>.1)      agent attached to cli0, be1..beN
//!    | be<i> <-> eth0
//!  backend i (10.201.<i>.2, fd00:201:<i>::2)    TCP :8080, UDP :5353
//! ```
//! The client's default route points at the node, so Service VIPs (which are routed
//! nowhere) reach the node's XDP program.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    bpffs::Bpffs,
    cgroup::{Cgroup, Cgroup2},
    netns::Netns,
    process::Process,
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
pub const BACKEND_TCP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;
/// Accepts and closes connections at once (new-connection benchmarks).
pub const BACKEND_CLOSE_PORT: u16 = 8081;

/// The VIPs of the embedded default manifests.
pub const WEB_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);
pub const WEB_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10)),
    80,
);
pub const DNS_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)), 53);
pub const DNS_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11)),
    53,
);

/// The default manifests (a dual-stack TCP Service and a dual-stack UDP Service over the
/// three lab backends), embedded so the demo needs no files.
pub const DEFAULT_MANIFESTS: &[(&str, &str)] = &[
    ("services.yaml", include_str!("../manifests/services.yaml")),
    (
        "endpointslices.yaml",
        include_str!("../manifests/endpointslices.yaml"),
    ),
];

pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, i as u8, 2)
}

pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x201, i as u16, 0, 0, 0, 0, 2)
}

pub struct Backend {
    /// "b1", "b2", ...: also what its server answers.
    pub name: String,
    pub server: Option<Process>,
    pub ns: Netns,
}

impl Backend {
    pub fn v4(&self) -> Ipv4Addr {
        backend_v4(self.index())
    }

    pub fn v6(&self) -> Ipv6Addr {
        backend_v6(self.index())
    }

    pub fn index(&self) -> usize {
        self.name[1..].parse().expect("named b<i>")
    }

    /// Starts (or restarts) the server.
    pub fn start_server(&mut self, server_bin: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(server_bin)
            .args([
                "--name",
                &self.name,
                "--tcp-port",
                &BACKEND_TCP_PORT.to_string(),
                "--udp-port",
                &BACKEND_UDP_PORT.to_string(),
                "--close-port",
                &BACKEND_CLOSE_PORT.to_string(),
            ]);
        let mut p = Process::spawn(&format!("server-{}", self.name), cmd)?;
        p.wait_for("ready", Duration::from_secs(10))?;
        self.server = Some(p);
        Ok(())
    }
}

/// The whole lab. Fields drop in declaration order: processes first, then namespaces,
/// then the bpffs, then the working directory.
pub struct Lab {
    pub agent: Option<Process>,
    pub backends: Vec<Backend>,
    pub client: Netns,
    pub node: Netns,
    /// The node's cgroup: the agent's socket programs cover what runs in it (the lab's
    /// clients run as threads of the test process, outside it: their traffic takes the
    /// XDP path).
    pub cgroup: Cgroup,
    pub cgroups: Cgroup2,
    pub bpffs: Bpffs,
    pub prefix: String,
    /// A command the agent runs under (e.g. `setpriv ...` to bound its capabilities).
    pub agent_wrapper: Vec<String>,
    /// Working directory: manifests live in `dir/manifests`.
    pub dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A directory (created) removed on drop, and by the interrupt teardown.
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        crate::registry::dir(&path);
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        crate::registry::dir_gone(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    /// Builds the topology with `backends` backends (servers not started yet).
    pub fn build(backends: usize) -> anyhow::Result<Self> {
        crate::require_root()?;
        let prefix = crate::run_prefix();
        let dir = TempDir::create(std::env::temp_dir().join(format!("{prefix}-lab")))?;
        std::fs::create_dir_all(dir.0.join("manifests"))?;
        let bpffs = Bpffs::mount(&prefix)?;
        let cgroups = Cgroup2::mount(&prefix)?;
        let cgroup = cgroups.create(&format!("{prefix}-node"))?;
        let node = Netns::create(&format!("{prefix}-node"))?;
        let client = Netns::create(&format!("{prefix}-client"))?;
        let mut lab = Self {
            agent: None,
            backends: Vec::new(),
            client,
            node,
            cgroup,
            cgroups,
            bpffs,
            prefix,
            agent_wrapper: Vec::new(),
            dir,
        };
        lab.wire().context("building the lab topology")?;
        for i in 1..=backends {
            lab.add_backend(i)
                .with_context(|| format!("adding backend b{i}"))?;
        }
        Ok(lab)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (node, client) = (&self.node, &self.client);
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.ip(&format!(
            "link add cli0 type veth peer name eth0 netns {}",
            client.name()
        ))?;
        node.ip("addr add 10.200.0.1/24 dev cli0")?;
        node.ip("addr add fd00:200::1/64 dev cli0 nodad")?;
        node.ip("link set cli0 up")?;
        client.ip(&format!("addr add {CLIENT_V4}/24 dev eth0"))?;
        client.ip(&format!("addr add {CLIENT_V6}/64 dev eth0 nodad"))?;
        client.ip("link set eth0 up")?;
        client.ip("route add default via 10.200.0.1")?;
        client.ip("-6 route add default via fd00:200::1")?;
        tune_endpoint(client)?;
        Ok(())
    }

    fn add_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let ns = Netns::create(&format!("{}-b{i}", self.prefix))?;
        let node = &self.node;
        node.ip(&format!(
            "link add be{i} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        node.ip(&format!("addr add 10.201.{i}.1/24 dev be{i}"))?;
        node.ip(&format!("addr add fd00:201:{i}::1/64 dev be{i} nodad"))?;
        node.ip(&format!("link set be{i} up"))?;
        ns.ip(&format!("addr add {}/24 dev eth0", backend_v4(i)))?;
        ns.ip(&format!("addr add {}/64 dev eth0 nodad", backend_v6(i)))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("route add default via 10.201.{i}.1"))?;
        ns.ip(&format!("-6 route add default via fd00:201:{i}::1"))?;
        tune_endpoint(&ns)?;
        self.backends.push(Backend {
            name: format!("b{i}"),
            server: None,
            ns,
        });
        Ok(())
    }

    /// The node's interfaces the agent attaches to.
    pub fn node_interfaces(&self) -> Vec<String> {
        let mut v = vec!["cli0".to_string()];
        v.extend(self.backends.iter().map(|b| format!("be{}", b.index())));
        v
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.0.join("manifests")
    }

    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        // Write then rename, so the agent never reads a half-written file.
        let tmp = self.dir.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests_dir().join(name))?;
        Ok(())
    }

    pub fn write_default_manifests(&self) -> anyhow::Result<()> {
        for (name, text) in DEFAULT_MANIFESTS {
            self.write_manifest(name, text)?;
        }
        Ok(())
    }

    pub fn start_servers(&mut self, server_bin: &Path) -> anyhow::Result<()> {
        for b in &mut self.backends {
            b.start_server(server_bin)?;
        }
        Ok(())
    }

    /// The agent's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.path().join("node")
    }

    /// Starts `xlb agent` on the manifests directory in the node namespace and waits for
    /// its first complete sync.
    pub fn start_agent(&mut self, xlb_bin: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let source = vec!["--manifests".into(), self.manifests_dir().into_os_string()];
        self.start_agent_with(xlb_bin, &source, extra)
    }

    /// Starts `xlb agent` with the given source arguments (e.g. `--kubernetes ...`) and
    /// waits for its first complete sync.
    pub fn start_agent_with(
        &mut self,
        xlb_bin: &Path,
        source: &[std::ffi::OsString],
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.node.name()])
            .args(&self.agent_wrapper)
            .arg(xlb_bin)
            .arg("agent");
        cmd.args(source);
        cmd.arg("--node-name").arg("node-1");
        cmd.arg("--bpffs").arg(self.pin_dir());
        cmd.arg("--cgroup").arg(self.cgroup.path());
        for i in self.node_interfaces() {
            cmd.args(["--interface", &i]);
        }
        cmd.args(extra);
        let mut agent = Process::spawn("agent", cmd)?;
        agent.wait_for("sync complete", Duration::from_secs(30))?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Stops the agent with `signal` and waits for it to exit.
    pub fn stop_agent(&mut self, signal: i32) -> anyhow::Result<()> {
        let mut agent = self.agent.take().context("no agent running")?;
        agent.signal(signal)?;
        crate::wait::until(
            "the agent exits",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || (!agent.is_running()).then_some(()),
        )?;
        Ok(())
    }

    pub fn agent(&mut self) -> &mut Process {
        self.agent.as_mut().expect("agent started")
    }

    /// Writes a manifest file and waits until the agent, which watches the directory,
    /// has programmed the change (the change must lead to map writes).
    pub fn update_manifest(&mut self, name: &str, text: &str) -> anyhow::Result<()> {
        let done = self.agent().count("sync complete");
        self.write_manifest(name, text)?;
        self.agent()
            .wait_for_count("sync complete", done + 1, Duration::from_secs(10))
    }

    /// [`Self::update_manifest`] for every default manifest.
    pub fn restore_default_manifests(&mut self) -> anyhow::Result<()> {
        let done = self.agent().count("sync complete");
        self.write_default_manifests()?;
        self.agent()
            .wait_for_count("sync complete", done + 1, Duration::from_secs(10))
    }
}

/// Settings for the lab's endpoints (client and backends):
/// - no TX checksum offload: locally generated TCP/UDP would otherwise leave with a partial
///   checksum, which is dropped as bad once XDP redirects it into another veth;
/// - GRO on: a veth accepts XDP-redirected frames only if its peer has an XDP program or
///   GRO enabled.
fn tune_endpoint(ns: &Netns) -> anyhow::Result<()> {
    ns.exec("ethtool", &["-K", "eth0", "tx", "off", "gro", "on"])
        .map(|_| ())
}
