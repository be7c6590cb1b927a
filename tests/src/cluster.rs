//! A multi-node lab shaped like a Kubernetes cluster with a routed CNI (Calico-style):
//!
//! ```text
//!                 external client (192.168.50.100, fd00:50::100)
//!                               | eth0 <-> wext
//!   wire: bridge br0 ------------+------------------------------+
//!            | wa <-> eth0                                      | wb <-> eth0
//!   node-a (192.168.50.1, fd00:50::1)              node-b (192.168.50.2, fd00:50::2)
//!     calia1 <-> eth0 pod a1 (10.244.1.11)            calib1 <-> eth0 pod b1 (10.244.2.11)
//!     calia2 <-> eth0 pod a2 (10.244.1.12)            calib2 <-> eth0 pod b2 (10.244.2.12)
//! ```
//!
//! - Pods as a CNI leaves them: a /32 (and /128) address, `default via 169.254.1.1` (IPv6:
//!   via fe80::1) on their eth0; the host side is unnumbered with `proxy_arp` and a host
//!   route to the pod. Their veths keep the defaults: TX checksum offload on (pods send
//!   partial checksums), GRO off, no XDP program.
//! - Each node routes the other node's pod CIDR (10.244.N.0/24, fd00:244:N::/64) via the
//!   other node's underlay address; its default route goes to the external client, which
//!   also routes the load-balancer IPs (10.97.0.0/24, fd00:97::/64) to node-a and the
//!   external IPs (10.98.0.0/24, fd00:98::/64) to node-b, as an upstream router would.
//! - Each node's processes (its host processes and every pod's) run in the node's cgroup;
//!   its agent attaches its socket programs there (see [`crate::cgroup`] for why a node is
//!   a cgroup here and the root on a real node).
//!
//! Where the wire differs from a real one, and why: the underlay is a bridge of veths. A
//! NIC finalizes checksums and has NAPI; a veth passes partial checksums through and
//! drops XDP frames unless its peer has NAPI. So the underlay side of every veth runs an
//! XDP_PASS program and GRO, and the nodes' and the external client's underlay ends have
//! TX checksum offload off. Pods are left as they are.

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
    lab::TempDir,
    netns::Netns,
    process::Process,
};

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

/// The wire's XDP_PASS object (built by `cargo xtask build` with the eBPF crate).
pub fn wire_object() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/wire")
}

pub fn node_v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, node as u8 + 1)
}

pub fn node_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, node as u16 + 1)
}

pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x100);

pub fn pod_v4(node: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node as u8 + 1, 10 + pod as u8)
}

pub fn pod_v6(node: usize, pod: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x244,
        node as u16 + 1,
        0,
        0,
        0,
        0,
        0x10 + pod as u16,
    )
}

/// Node names as Kubernetes sees them: `node-a`, `node-b`, ...
pub fn node_name(node: usize) -> String {
    format!("node-{}", (b'a' + node as u8) as char)
}

/// Pod names: `a1`, `a2`, `b1`, ... (also what its server answers).
pub fn pod_name(node: usize, pod: usize) -> String {
    format!("{}{}", (b'a' + node as u8) as char, pod)
}

/// A pod: its namespace, its cgroup (under its node's) and its server.
pub struct Pod {
    pub server: Option<Process>,
    pub cgroup: Cgroup,
    pub ns: Netns,
    pub name: String,
    pub node: usize,
    pub index: usize,
}

impl Pod {
    pub fn v4(&self) -> Ipv4Addr {
        pod_v4(self.node, self.index)
    }

    pub fn v6(&self) -> Ipv6Addr {
        pod_v6(self.node, self.index)
    }

    /// The pod's host-side interface on its node.
    pub fn host_interface(&self) -> String {
        format!("cali{}", self.name)
    }
}

/// A node: its namespace and cgroup, its pods, its agent.
pub struct ClusterNode {
    pub agent: Option<Process>,
    pub pods: Vec<Pod>,
    pub cgroup: Cgroup,
    pub ns: Netns,
    pub index: usize,
}

impl ClusterNode {
    pub fn name(&self) -> String {
        node_name(self.index)
    }

    pub fn v4(&self) -> Ipv4Addr {
        node_v4(self.index)
    }

    pub fn v6(&self) -> Ipv6Addr {
        node_v6(self.index)
    }

    pub fn agent(&mut self) -> &mut Process {
        self.agent.as_mut().expect("agent started")
    }
}

/// The whole cluster. Fields drop in order: nodes (agents, pods' servers, cgroups,
/// namespaces), the external client, the wire, the cgroup2 mount, the bpffs, the files.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub external: Netns,
    pub wire: Netns,
    pub cgroups: Cgroup2,
    pub bpffs: Bpffs,
    pub dir: TempDir,
    pub prefix: String,
    server_bin: PathBuf,
}

/// One answer of `xlb-lab-client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub request: String,
    pub ok: bool,
    pub server: String,
    /// The client address the server saw.
    pub seen_client: String,
    /// Where the answer came from, as the client's socket sees it.
    pub from: String,
    pub error: String,
}

impl Cluster {
    /// Two nodes with `pods` pods each (servers running), the external client, no agents.
    pub fn build(pods: usize, server_bin: &Path) -> anyhow::Result<Self> {
        crate::require_root()?;
        anyhow::ensure!(
            wire_object().is_file(),
            "{} is missing: run `cargo xtask build`",
            wire_object().display()
        );
        let prefix = crate::run_prefix();
        let dir = TempDir::create(std::env::temp_dir().join(format!("{prefix}-cluster")))?;
        std::fs::create_dir_all(dir.0.join("manifests"))?;
        let bpffs = Bpffs::mount(&prefix)?;
        let cgroups = Cgroup2::mount(&prefix)?;
        let wire = Netns::create(&format!("{prefix}-wire"))?;
        let external = Netns::create(&format!("{prefix}-ext"))?;
        let mut cluster = Self {
            nodes: Vec::new(),
            external,
            wire,
            cgroups,
            bpffs,
            dir,
            prefix,
            server_bin: server_bin.to_path_buf(),
        };
        cluster.wire_up().context("building the wire")?;
        for n in 0..2 {
            cluster
                .add_node(n)
                .with_context(|| format!("building {}", node_name(n)))?;
        }
        cluster.route_external()?;
        for n in 0..2 {
            for _ in 0..pods {
                cluster.add_pod(n)?;
            }
        }
        Ok(cluster)
    }

    fn wire_up(&self) -> anyhow::Result<()> {
        self.wire.ip("link add br0 type bridge")?;
        self.wire.ip("link set br0 up")?;
        self.plug(&self.external, "wext")?;
        let ext = &self.external;
        ext.ip(&format!("addr add {EXTERNAL_V4}/24 dev eth0"))?;
        ext.ip(&format!("addr add {EXTERNAL_V6}/64 dev eth0 nodad"))?;
        ext.ip("link set eth0 up")?;
        ext.sysctl("net.ipv4.ip_forward", "1")?;
        ext.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }

    /// Connects `ns` to the wire: its `eth0`, the bridge's `port`.
    fn plug(&self, ns: &Netns, port: &str) -> anyhow::Result<()> {
        self.wire.ip(&format!(
            "link add {port} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        self.wire.ip(&format!("link set {port} master br0 up"))?;
        // The wire's side behaves like a NIC: NAPI (GRO and an XDP program).
        self.wire.exec("ethtool", &["-K", port, "gro", "on"])?;
        self.wire.ip(&format!(
            "link set dev {port} xdp obj {} sec xdp",
            wire_object().display()
        ))?;
        // A NIC finalizes checksums on transmit; a veth would pass partial ones on.
        ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        Ok(())
    }

    fn add_node(&mut self, n: usize) -> anyhow::Result<()> {
        let ns = Netns::create(&format!("{}-n{}", self.prefix, (b'a' + n as u8) as char))?;
        let cgroup = self
            .cgroups
            .create(&format!("{}-{}", self.prefix, node_name(n)))?;
        self.plug(&ns, &format!("w{}", (b'a' + n as u8) as char))?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        ns.ip(&format!("addr add {}/24 dev eth0", node_v4(n)))?;
        ns.ip(&format!("addr add {}/64 dev eth0 nodad", node_v6(n)))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("route add default via {EXTERNAL_V4}"))?;
        ns.ip(&format!("-6 route add default via {EXTERNAL_V6}"))?;
        for other in (0..2).filter(|o| *o != n) {
            ns.ip(&format!(
                "route add 10.244.{}.0/24 via {}",
                other + 1,
                node_v4(other)
            ))?;
            ns.ip(&format!(
                "-6 route add fd00:244:{}::/64 via {}",
                other + 1,
                node_v6(other)
            ))?;
        }
        self.nodes.push(ClusterNode {
            agent: None,
            pods: Vec::new(),
            cgroup,
            ns,
            index: n,
        });
        Ok(())
    }

    fn route_external(&self) -> anyhow::Result<()> {
        let ext = &self.external;
        ext.ip(&format!("route add 10.97.0.0/24 via {}", node_v4(0)))?;
        ext.ip(&format!("-6 route add fd00:97::/64 via {}", node_v6(0)))?;
        ext.ip(&format!("route add 10.98.0.0/24 via {}", node_v4(1)))?;
        ext.ip(&format!("-6 route add fd00:98::/64 via {}", node_v6(1)))?;
        Ok(())
    }

    /// Adds a pod to node `n` as a routed CNI would (its server started); returns its
    /// index on the node.
    pub fn add_pod(&mut self, n: usize) -> anyhow::Result<usize> {
        let index = self.nodes[n].pods.len() + 1;
        let name = pod_name(n, index);
        let node = &self.nodes[n];
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let cgroup = node.cgroup.child(&format!("pod-{name}"))?;
        let host = format!("cali{name}");
        let (v4, v6) = (pod_v4(n, index), pod_v6(n, index));
        node.ns.ip(&format!(
            "link add {host} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        node.ns
            .sysctl(&format!("net.ipv4.conf.{host}.proxy_arp"), "1")?;
        node.ns
            .ip(&format!("addr add fe80::1/64 dev {host} nodad"))?;
        node.ns.ip(&format!("link set {host} up"))?;
        node.ns.ip(&format!("route add {v4}/32 dev {host}"))?;
        node.ns.ip(&format!("-6 route add {v6}/128 dev {host}"))?;
        ns.ip(&format!("addr add {v4}/32 dev eth0"))?;
        ns.ip(&format!("addr add {v6}/128 dev eth0 nodad"))?;
        ns.ip("link set eth0 up")?;
        ns.ip("route add 169.254.1.1 dev eth0 scope link")?;
        ns.ip("route add default via 169.254.1.1 dev eth0")?;
        ns.ip("-6 route add default via fe80::1 dev eth0")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(&self.server_bin)
            .args(["--name", &name, "--tcp-port", &TCP_PORT.to_string()])
            .args(["--udp-port", &UDP_PORT.to_string()]);
        cgroup.enter(&mut cmd);
        let mut server = Process::spawn(&format!("server-{name}"), cmd)?;
        server.wait_for("ready", Duration::from_secs(10))?;
        self.nodes[n].pods.push(Pod {
            server: Some(server),
            cgroup,
            ns,
            name,
            node: n,
            index,
        });
        Ok(index)
    }

    /// Deletes pod `index` of node `n` (its server, cgroup and namespace: the veth goes
    /// with it), as the CNI does when a pod goes.
    pub fn remove_pod(&mut self, n: usize, index: usize) {
        self.nodes[n].pods.retain(|p| p.index != index);
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.dir.0.join("manifests")
    }

    /// Writes a manifest file atomically (write, then rename).
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.dir.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests_dir().join(name))?;
        Ok(())
    }

    /// Starts `xlb agent` on every node (manifests source, devices found by the agent,
    /// socket programs on the node's cgroup) and waits for each first sync.
    pub fn start_agents(&mut self, xlb: &Path, extra: &[&str]) -> anyhow::Result<()> {
        for n in 0..self.nodes.len() {
            self.start_agent(n, xlb, extra)?;
        }
        Ok(())
    }

    pub fn start_agent(&mut self, n: usize, xlb: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let pins = self.bpffs.path().join(node_name(n));
        let node = &self.nodes[n];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.ns.name()])
            .arg(xlb)
            .arg("agent")
            .arg("--manifests")
            .arg(self.manifests_dir())
            .args(["--node-name", &node.name()])
            .arg("--bpffs")
            .arg(&pins)
            .arg("--cgroup")
            .arg(node.cgroup.path())
            .args(extra);
        node.cgroup.enter(&mut cmd);
        let mut agent = Process::spawn(&format!("agent-{}", node.name()), cmd)?;
        agent.wait_for("sync complete", Duration::from_secs(30))?;
        self.nodes[n].agent = Some(agent);
        Ok(())
    }

    /// Installs kube-proxy-style rules for `services` on every node (the baseline; no
    /// agent runs then).
    pub fn install_iptables(&self, services: &[crate::services::LabService]) -> anyhow::Result<()> {
        use std::io::Write as _;
        for node in &self.nodes {
            for (tool, v6) in [("iptables-restore", false), ("ip6tables-restore", true)] {
                let rules = crate::services::iptables(services, node.index, v6);
                let mut child = Command::new("ip")
                    .args(["netns", "exec", node.ns.name(), tool])
                    .stdin(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("running {tool}"))?;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(rules.as_bytes())?;
                let out = child.wait_with_output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "{tool} on {}: {}\n{rules}",
                    node.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Runs `xlb-lab-client` with `requests` in pod `pod` of node `n`.
    pub fn from_pod(
        &self,
        client: &Path,
        n: usize,
        pod: usize,
        requests: &[String],
    ) -> anyhow::Result<Vec<Answer>> {
        let p = &self.nodes[n].pods[pod - 1];
        run_client(client, &p.ns, Some(&p.cgroup), requests)
    }

    /// Runs `xlb-lab-client` on node `n` itself (a host process).
    pub fn from_node(
        &self,
        client: &Path,
        n: usize,
        requests: &[String],
    ) -> anyhow::Result<Vec<Answer>> {
        let node = &self.nodes[n];
        run_client(client, &node.ns, Some(&node.cgroup), requests)
    }

    /// Runs `xlb-lab-client` on the external client.
    pub fn from_external(&self, client: &Path, requests: &[String]) -> anyhow::Result<Vec<Answer>> {
        run_client(client, &self.external, None, requests)
    }

    /// Repeats `request` from pod `pod` of node `n` with `threads` threads for `seconds`
    /// (`xlb-lab-client --load`).
    pub fn load_from_pod(
        &self,
        client: &Path,
        (n, pod): (usize, usize),
        request: &str,
        seconds: f64,
        threads: usize,
    ) -> anyhow::Result<Load> {
        let p = &self.nodes[n].pods[pod - 1];
        let mut cmd = client_command(client, &p.ns, Some(&p.cgroup));
        cmd.args(["--load", &seconds.to_string(), "--threads"])
            .arg(threads.to_string())
            .arg(request);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", client.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "load of {request} from {}: {}",
            p.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the load client printed {:?}", out.stdout))?;
        let count = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Load {
            ok: count("ok"),
            failed: count("failed"),
            seconds: v["seconds"].as_f64().unwrap_or(seconds),
        })
    }
}

/// What a load run did.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// `xlb-lab-client` in `ns` (and `cgroup`).
fn client_command(client: &Path, ns: &Netns, cgroup: Option<&Cgroup>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).arg(client);
    if let Some(cg) = cgroup {
        cg.enter(&mut cmd);
    }
    cmd
}

/// Runs the lab client in `ns` (and `cgroup`) and parses its answers.
fn run_client(
    client: &Path,
    ns: &Netns,
    cgroup: Option<&Cgroup>,
    requests: &[String],
) -> anyhow::Result<Vec<Answer>> {
    let out = client_command(client, ns, cgroup)
        .args(requests)
        .output()
        .with_context(|| format!("running {}", client.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<Answer> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("client printed {l:?}"))?;
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            Ok(Answer {
                request: s("request"),
                ok: v["ok"].as_bool().unwrap_or(false),
                server: s("server"),
                seen_client: s("seen_client"),
                from: s("from"),
                error: s("error"),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        answers.len() == requests.len(),
        "the client answered {} of {} requests: {}",
        answers.len(),
        requests.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(answers)
}

/// A request string for `xlb-lab-client`: `kind` is `tcp`, `udpc` or `udp`.
pub fn request(kind: &str, ip: IpAddr, port: u16) -> String {
    format!("{kind}:{}", SocketAddr::new(ip, port))
}
