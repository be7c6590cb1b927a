//! Pods to ClusterIPs on the multi-node lab (`xlb_tests::cluster`: two nodes on a wire,
//! routed pods left as a CNI leaves them): the path most Service traffic on a node takes.
//!
//! A pod of node-a sends requests to a ClusterIP whose backend is a pod of the same node,
//! and to one whose backend is a pod of the other node, in three modes, each on a lab of
//! its own: xlb (an agent per node: socket-level translation, XDP on the node devices, tc on
//! the pods' veths), kube-proxy-style iptables rules (`xlb_tests::services::iptables`,
//! the rules kube-proxy's iptables mode installs for the same Services) and no load
//! balancer at all (the backend pod's own address: the floor).
//!
//! A request is what clients of a Service do most: TCP, a new connection, one
//! request-response, close; UDP, a new connected socket, one query, one answer (as a
//! resolver does). `xlb-lab-client --load` repeats it from two threads for a fixed time.
//!
//! CPU per request: every namespace of the lab shares this machine's kernel and CPUs, so
//! a node's share of the work cannot be told apart from the client's or the servers'. The
//! figure is the whole machine's busy time (/proc/stat: user, system, irq, softirq) per
//! answered request, client and servers included; they do the same work in every mode,
//! so the difference between two modes is the difference between their datapaths, and
//! "over the floor" is what the load balancer itself costs per request.

use std::path::Path;

use serde::Serialize;
use xlb_tests::{
    cluster::{self, Cluster},
    services::{self, Kind, LabService},
};

use crate::stats::Summary;

pub struct Config {
    pub seconds: f64,
    pub repeats: usize,
    pub threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Iptables,
    Xlb,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Iptables, Mode::Xlb];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "no LB (pod address)",
            Mode::Iptables => "iptables (kube-proxy style)",
            Mode::Xlb => "xlb",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mode: Mode,
    /// `same node` or `other node`: where the Service's backend is.
    pub backend: &'static str,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    pub requests_per_s: Summary,
    /// Machine busy time per answered request, microseconds.
    pub cpu_us_per_request: Summary,
    /// Failed requests over all repeats.
    pub failed: u64,
    /// requests_per_s relative to the iptables mode's (medians).
    pub rate_vs_iptables: Option<f64>,
    /// cpu_us_per_request relative to the iptables mode's (medians).
    pub cpu_vs_iptables: Option<f64>,
    /// cpu_us_per_request minus the floor's (medians): what the load balancer costs.
    pub cpu_over_floor_us: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub seconds: f64,
    pub repeats: usize,
    pub threads: usize,
    pub rows: Vec<Row>,
}

/// The client pod: node-a's first pod.
const CLIENT: (usize, usize) = (0, 1);

fn lab_services() -> Vec<LabService> {
    vec![
        LabService::new("same-node", 1, &[(0, 2)]),
        LabService::new("other-node", 2, &[(1, 1)]),
    ]
}

/// Busy jiffies of all CPUs (/proc/stat's first line).
fn cpu_busy_jiffies() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu line"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(v.len() >= 7, "/proc/stat: short cpu line {line:?}");
    // user nice system idle iowait irq softirq [steal ...]
    let idle = v[3] + v[4];
    let total: u64 = v.iter().take(8).sum();
    Ok(total - idle)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The raw figures of one cell.
struct Samples {
    mode: Mode,
    backend: &'static str,
    proto: &'static str,
    rates: Vec<f64>,
    cpus: Vec<f64>,
    failed: u64,
}

/// A lab set up for `mode`.
fn lab(mode: Mode, services: &[LabService], bins: &Bins) -> anyhow::Result<Cluster> {
    let mut c = Cluster::build(2, bins.server)?;
    // Many short connections from one pod: ports are reused as fast as the kernel lets.
    let client_ns = &c.nodes[CLIENT.0].pods[CLIENT.1 - 1].ns;
    client_ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    client_ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    match mode {
        Mode::Direct => {}
        Mode::Iptables => c.install_iptables(services)?,
        Mode::Xlb => {
            c.write_manifest("bench.yaml", &services::manifests(services, 2))?;
            c.start_agents(bins.xlb, &[])?;
        }
    }
    Ok(c)
}

/// The request of a cell in `mode`: to the ClusterIP, or without a load balancer to the
/// backend pod itself.
fn request(mode: Mode, svc: &LabService, proto: &str) -> String {
    let tcp = proto == "tcp";
    let (ip, port) = match mode {
        Mode::Direct => {
            let (n, p) = svc.endpoints[0];
            let port = if tcp {
                cluster::TCP_PORT
            } else {
                cluster::UDP_PORT
            };
            (cluster::pod_v4(n, p).into(), port)
        }
        _ => svc.frontend(Kind::ClusterIp, false, tcp, CLIENT.0),
    };
    cluster::request(if tcp { "tcp" } else { "udpc" }, ip, port)
}

/// One load run: (answered requests per second, machine CPU us per answered request,
/// failed requests).
fn measure(
    c: &Cluster,
    client: &Path,
    request: &str,
    cfg: &Config,
) -> anyhow::Result<(f64, f64, u64)> {
    let busy0 = cpu_busy_jiffies()?;
    let load = c.load_from_pod(client, CLIENT, request, cfg.seconds, cfg.threads)?;
    let busy1 = cpu_busy_jiffies()?;
    anyhow::ensure!(
        load.failed * 100 <= load.ok,
        "{request}: {} of {} requests failed",
        load.failed,
        load.ok + load.failed
    );
    let busy_us = (busy1 - busy0) as f64 / clock_ticks() * 1e6;
    Ok((
        load.ok as f64 / load.seconds,
        busy_us / load.ok as f64,
        load.failed,
    ))
}

pub struct Bins<'a> {
    pub xlb: &'a Path,
    pub server: &'a Path,
    pub client: &'a Path,
}

pub fn run(cfg: &Config, bins: &Bins) -> anyhow::Result<Results> {
    let services = lab_services();
    // The three labs exist side by side and the modes take turns, in a rotating order,
    // cell by cell and repeat by repeat: drift on a shared machine (other tenants, caches,
    // frequency) spreads over every mode instead of favouring one.
    let mut labs = Vec::new();
    for mode in Mode::ALL {
        eprintln!("  setting up: {}", mode.name());
        labs.push((mode, lab(mode, &services, bins)?));
    }
    let mut raw: Vec<Samples> = Vec::new();
    let cells: Vec<(&LabService, &'static str, &'static str)> = services
        .iter()
        .zip(["same node", "other node"])
        .flat_map(|(svc, backend)| [(svc, backend, "tcp"), (svc, backend, "udp")])
        .collect();
    for rep in 0..cfg.repeats {
        for (ci, (svc, backend, proto)) in cells.iter().enumerate() {
            for k in 0..labs.len() {
                let (mode, c) = &labs[(k + rep + ci) % labs.len()];
                let (rate, cpu, failed) =
                    measure(c, bins.client, &request(*mode, svc, proto), cfg)?;
                let i = match raw
                    .iter()
                    .position(|r| r.mode == *mode && r.backend == *backend && r.proto == *proto)
                {
                    Some(i) => i,
                    None => {
                        raw.push(Samples {
                            mode: *mode,
                            backend,
                            proto,
                            rates: Vec::new(),
                            cpus: Vec::new(),
                            failed: 0,
                        });
                        raw.len() - 1
                    }
                };
                raw[i].rates.push(rate);
                raw[i].cpus.push(cpu);
                raw[i].failed += failed;
            }
        }
        eprintln!("  repeat {} of {} done", rep + 1, cfg.repeats);
    }
    raw.sort_by_key(|r| (r.mode as u8, r.backend, r.proto));
    let find = |mode: Mode, s: &Samples| {
        raw.iter()
            .find(|r| r.mode == mode && r.backend == s.backend && r.proto == s.proto)
    };
    let rows = raw
        .iter()
        .map(|s| {
            let rate = Summary::of(s.rates.clone());
            let cpu = Summary::of(s.cpus.clone());
            let base = find(Mode::Iptables, s);
            let floor = find(Mode::Direct, s);
            Row {
                mode: s.mode,
                backend: s.backend,
                proto: s.proto,
                rate_vs_iptables: base.map(|b| rate.median / Summary::of(b.rates.clone()).median),
                cpu_vs_iptables: base.map(|b| cpu.median / Summary::of(b.cpus.clone()).median),
                cpu_over_floor_us: floor.map(|f| cpu.median - Summary::of(f.cpus.clone()).median),
                requests_per_s: rate,
                cpu_us_per_request: cpu,
                failed: s.failed,
            }
        })
        .collect();
    Ok(Results {
        seconds: cfg.seconds,
        repeats: cfg.repeats,
        threads: cfg.threads,
        rows,
    })
}
