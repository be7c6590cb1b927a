//! End to end through a network-namespace lab (client, node, three backends), for xlb and
//! for the same topology with kube-proxy-style iptables DNAT, kube-proxy-style nftables
//! DNAT, and plain routing to one backend (no load balancer).
//!
//! Per mode, in order:
//! - TCP throughput through the VIP (iperf3, one stream, a one-backend service, because
//!   iperf3's control and data connections must reach the same server);
//! - new TCP connections per second through the VIP (connect, then close at once);
//! - UDP frames from a generator that is not the bottleneck (BPF_PROG_TEST_RUN live
//!   frames, xdp-trafficgen's technique, injected on the client's interface, one thread on
//!   CPU 0), counted and dropped by an XDP sink on the backends. The node's receive
//!   processing runs as threaded NAPI on its ingress veth, pinned to the other CPU (veth
//!   would otherwise process frames on the sending CPU): everything the node does for a
//!   packet (GRO, netfilter, routing or XDP, transmit to the backend) happens in that one
//!   kernel thread; the backends' receive processing has threads of its own, on CPU 0;
//!   - node CPU time per forwarded packet: that thread's run time (/proc/<pid>/schedstat,
//!     ns) per packet delivered, at a fixed rate;
//!   - the highest delivered rate: the generator flat out.
//!
//! Longer than most files: one concern, the lab benchmark family (every mode through
//! the same measurements), whose parts share the lab and its teardown.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::{
    bench::{self, BenchConfig, TEMPLATE_LEN},
    maps as names,
};
use serde::Serialize;
use xlb_tests::{
    lab::{self, BACKEND_CLOSE_PORT, BACKEND_UDP_PORT, Lab},
    process::Process,
};

use crate::{baselines, stats::Summary};

pub struct Config {
    pub seconds: f64,
    pub repeats: usize,
    /// Frames per second of the paced (CPU cost) run.
    pub paced_pps: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Routing,
    Iptables,
    Nftables,
    Xlb,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Routing, Mode::Iptables, Mode::Nftables, Mode::Xlb];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Routing => "routing (no LB)",
            Mode::Iptables => "iptables (kube-proxy style)",
            Mode::Nftables => "nftables (kube-proxy style)",
            Mode::Xlb => "xlb",
        }
    }
}

impl ModeResult {
    pub fn mode_name(&self) -> &'static str {
        self.mode.name()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub tcp_gbit_s: Summary,
    pub new_connections_per_s: Summary,
    /// CPU time of the node's receive thread per delivered packet, at a fixed rate.
    pub node_ns_per_packet: Summary,
    /// node_ns_per_packet relative to the iptables mode's (medians).
    pub cpu_vs_iptables: Option<f64>,
    /// max_delivered_pps relative to the iptables mode's (medians).
    pub rate_vs_iptables: Option<f64>,
    pub max_delivered_pps: Summary,
    /// Frames the generator offered in the rate runs, per second.
    pub offered_pps: Summary,
}

const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const IPERF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const CONN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const IPERF_PORT: u16 = 5201;

/// The benchmark's services: UDP over three backends, iperf3 on one, connections over three.
fn services() -> Vec<baselines::Service> {
    let all = |port| {
        (1..=3)
            .map(|i| (lab::backend_v4(i), port))
            .collect::<Vec<_>>()
    };
    vec![
        baselines::Service {
            name: "bench/udp:53".into(),
            vip: UDP_VIP,
            port: 53,
            tcp: false,
            endpoints: all(BACKEND_UDP_PORT),
        },
        baselines::Service {
            name: "bench/iperf:5201".into(),
            vip: IPERF_VIP,
            port: IPERF_PORT,
            tcp: true,
            endpoints: vec![(lab::backend_v4(1), IPERF_PORT)],
        },
        baselines::Service {
            name: "bench/conn:81".into(),
            vip: CONN_VIP,
            port: 81,
            tcp: true,
            endpoints: all(BACKEND_CLOSE_PORT),
        },
    ]
}

/// The same services as Kubernetes manifests, for xlb.
fn manifests(services: &[baselines::Service]) -> String {
    let mut out = String::new();
    for (i, s) in services.iter().enumerate() {
        let proto = if s.tcp { "TCP" } else { "UDP" };
        let target = s.endpoints[0].1;
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\nspec: {{clusterIP: {}, ports: [{{name: p, port: {}, protocol: {proto}, targetPort: {target}}}]}}\n",
            s.vip, s.port
        ));
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: p, port: {target}, protocol: {proto}}}]\nendpoints:\n"
        ));
        for (ip, _) in &s.endpoints {
            out.push_str(&format!("- addresses: [\"{ip}\"]\n"));
        }
    }
    out
}

/// Where each test sends to in a mode.
struct Targets {
    udp: SocketAddr,
    iperf: SocketAddr,
    conn: Vec<SocketAddr>,
}

fn targets(mode: Mode) -> Targets {
    let b1 = lab::backend_v4(1);
    match mode {
        Mode::Routing => Targets {
            udp: SocketAddr::from((b1, BACKEND_UDP_PORT)),
            iperf: SocketAddr::from((b1, IPERF_PORT)),
            conn: (1..=3)
                .map(|i| SocketAddr::from((lab::backend_v4(i), BACKEND_CLOSE_PORT)))
                .collect(),
        },
        _ => Targets {
            udp: SocketAddr::from((UDP_VIP, 53)),
            iperf: SocketAddr::from((IPERF_VIP, IPERF_PORT)),
            conn: vec![SocketAddr::from((CONN_VIP, 81))],
        },
    }
}

/// Runs `program` with `input` on its stdin; fails with its stderr if it fails.
pub(crate) fn pipe_into(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Programs the node for `mode`.
fn configure(mode: Mode, lab: &mut Lab, xlb: &Path) -> anyhow::Result<()> {
    let node = lab.node.name().to_string();
    let services = services();
    match mode {
        Mode::Routing => {}
        Mode::Iptables => pipe_into(
            "ip",
            &["netns", "exec", &node, "iptables-legacy-restore"],
            &baselines::iptables_full(&services),
        )?,
        Mode::Nftables => pipe_into(
            "ip",
            &["netns", "exec", &node, "nft", "-f", "-"],
            &baselines::nft_full(&services),
        )?,
        Mode::Xlb => {
            lab.write_manifest("bench.yaml", &manifests(&services))?;
            lab.start_agent(xlb, &[])?;
        }
    }
    Ok(())
}

fn iperf(lab: &Lab, target: SocketAddr, seconds: f64) -> anyhow::Result<f64> {
    let out = lab.client.exec(
        "iperf3",
        &[
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &format!("{seconds}"),
            "-J",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no sum_received")?;
    Ok(bps / 1e9)
}

/// Connections per second to `targets` (one VIP, or, without a load balancer, the
/// backends themselves, round robin).
fn connections_per_second(
    lab: &Lab,
    targets: Vec<SocketAddr>,
    seconds: f64,
) -> anyhow::Result<f64> {
    lab.client
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let done = lab.client.run(move || {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let target = targets[i % targets.len()];
                        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                            Ok(c) => {
                                drop(c);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        });
        (count.into_inner(), failed.into_inner())
    })?;
    // Threads entered the namespace inside `run`'s thread: sockets live in the client ns.
    anyhow::ensure!(
        done.1 * 100 <= done.0.max(1),
        "{} of {} connections failed",
        done.1,
        done.0 + done.1
    );
    Ok(done.0 as f64 / seconds)
}

/// The generator and sink programs (the bench object), attached where they work.
struct Traffic {
    ebpf: Ebpf,
    count: PerCpuArray<MapData, u64>,
}

fn mac_of(ns: &xlb_tests::netns::Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&format!("-br link show {dev}"))?;
    let v: Vec<u8> = out
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    v.try_into()
        .map_err(|_| anyhow::anyhow!("no MAC for {dev}"))
}

fn ifindex_in(ns: &xlb_tests::netns::Netns, dev: &str) -> anyhow::Result<u32> {
    let out = ns.ip(&format!("-o link show {dev}"))?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .context("ifindex")
}

impl Traffic {
    /// `on_cli0`: the bench program to attach to the node's ingress (none when xlb runs
    /// there).
    fn setup(
        lab: &Lab,
        object: &Path,
        frame: &[u8],
        on_cli0: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        let data = std::fs::read(object)?;
        let mut loader = EbpfLoader::new();
        for name in names::ALL_MAPS {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader.load(&data)?;
        for p in [bench::PROG_GEN, bench::PROG_SINK, bench::PROG_PASS] {
            let prog: &mut Xdp = ebpf.program_mut(p).context(p)?.try_into()?;
            prog.load()?;
        }
        // The sink on every backend; the generator on the client's loopback, only to keep
        // it in the kernel's XDP dispatcher (see datapath.rs).
        for b in &lab.backends {
            ebpf = b.ns.run(move || -> anyhow::Result<Ebpf> {
                let prog: &mut Xdp = ebpf
                    .program_mut(bench::PROG_SINK)
                    .expect("loaded")
                    .try_into()?;
                prog.attach("eth0", XdpMode::Driver)?;
                Ok(ebpf)
            })??;
        }
        ebpf = lab.client.run(move || -> anyhow::Result<Ebpf> {
            let prog: &mut Xdp = ebpf
                .program_mut(bench::PROG_GEN)
                .expect("loaded")
                .try_into()?;
            prog.attach("lo", XdpMode::Skb)?;
            Ok(ebpf)
        })??;
        // The generator's frames reach cli0 by XDP transmit, which a veth accepts only if
        // it runs an XDP program (or has GRO on, which would aggregate the UDP frames into
        // superpackets). Without xlb, a program that only passes stands in.
        if let Some(p) = on_cli0 {
            ebpf = lab.node.run(move || -> anyhow::Result<Ebpf> {
                let prog: &mut Xdp = ebpf.program_mut(p).expect("loaded").try_into()?;
                prog.attach("cli0", XdpMode::Driver)?;
                Ok(ebpf)
            })??;
        }
        let mut cfg: Array<MapData, BenchConfig> =
            Array::try_from(ebpf.take_map(bench::MAP_CONFIG).context("config map")?)?;
        cfg.set(
            0,
            BenchConfig {
                sport_offset: 34,
                flows: 256,
                sport_base: 20_000,
                _pad: 0,
            },
            0,
        )?;
        let mut tpl: Array<MapData, [u8; TEMPLATE_LEN]> =
            Array::try_from(ebpf.take_map(bench::MAP_TEMPLATE).context("template map")?)?;
        tpl.set(
            0,
            <[u8; TEMPLATE_LEN]>::try_from(&frame[..TEMPLATE_LEN])?,
            0,
        )?;
        let count = PerCpuArray::try_from(ebpf.take_map(bench::MAP_COUNT).context("count map")?)?;
        Ok(Self { ebpf, count })
    }

    fn delivered(&self) -> anyhow::Result<u64> {
        Ok(self.count.get(&1, 0)?.iter().sum())
    }

    /// Runs the generator on `threads` CPUs for `seconds`; with `pps`, paced to that rate
    /// in total. Returns the frames offered.
    fn generate(
        &self,
        lab: &Lab,
        frame: &[u8],
        seconds: f64,
        pps: Option<u64>,
    ) -> anyhow::Result<u64> {
        let prog: &Xdp = self
            .ebpf
            .program(bench::PROG_GEN)
            .and_then(|p| p.try_into().ok())
            .expect("loaded");
        let eth0 = ifindex_in(&lab.client, "eth0")?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each).
        // The kernel requires data_end == the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&eth0.to_ne_bytes());
        let ns_path = format!("/run/netns/{}", lab.client.name());
        // One generator thread, on CPU 0 (the node's NAPI thread has the last CPU).
        let threads = 1;
        let sent = AtomicU64::new(0);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        std::thread::scope(|s| -> anyhow::Result<()> {
            let mut handles = Vec::new();
            for cpu in 0..threads {
                let (ctx, ns_path, sent) = (&ctx, &ns_path, &sent);
                handles.push(s.spawn(move || -> anyhow::Result<()> {
                    pin_to_cpu(cpu);
                    let ns = File::open(ns_path)?;
                    // SAFETY: setns on a namespace fd; affects only this thread.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        anyhow::bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    let started = Instant::now();
                    let batch: u32 = match pps {
                        Some(p) => (p / 100).max(1) as u32,
                        None => 65_536,
                    };
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        let mut opts = TestRunOptions::new();
                        opts.data_in = Some(frame);
                        opts.ctx_in = Some(ctx);
                        opts.repeat = batch;
                        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
                        prog.test_run(opts)
                            .context("live-frames BPF_PROG_TEST_RUN")?;
                        n += batch as u64;
                        if let Some(p) = pps {
                            // Pace: 100 batches a second.
                            let due = started + Duration::from_secs_f64(n as f64 / p as f64);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                    sent.fetch_add(n, Ordering::Relaxed);
                    Ok(())
                }));
            }
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(sent.into_inner())
    }
}

fn pin_to_cpu(cpu: usize) {
    pin_task(0, cpu);
}

/// Pins a task (0: the calling thread) to one CPU.
fn pin_task(pid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Threaded NAPI on the node's ingress veth, its kernel thread pinned to the last CPU, for
/// as long as this lives.
struct NodeNapi<'a> {
    lab: &'a Lab,
    threads: Vec<i32>,
}

/// Kernel threads whose name starts with `prefix` (e.g. "napi/cli0-").
fn napi_threads(prefix: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

/// Turns threaded NAPI on for `dev` in `ns` and pins the thread(s) that appear to `cpu`.
fn thread_napi(ns: &xlb_tests::netns::Netns, dev: &str, cpu: usize) -> anyhow::Result<Vec<i32>> {
    let prefix = format!("napi/{dev}-");
    let before = napi_threads(&prefix);
    ns.exec(
        "sh",
        &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")],
    )?;
    let threads: Vec<i32> = napi_threads(&prefix)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    anyhow::ensure!(
        !threads.is_empty(),
        "no NAPI thread appeared for {dev} in {}",
        ns.name()
    );
    for pid in &threads {
        pin_task(*pid, cpu);
    }
    Ok(threads)
}

impl<'a> NodeNapi<'a> {
    /// The node's receive thread gets the last CPU. The backends' receive threads (their
    /// veth and XDP sink) go to CPU 0 with the generator: their work is not the node's.
    fn dedicate(lab: &'a Lab) -> anyhow::Result<Self> {
        for b in &lab.backends {
            thread_napi(&b.ns, "eth0", 0)?;
        }
        let threads = thread_napi(&lab.node, "cli0", cpus().saturating_sub(1))?;
        Ok(Self { lab, threads })
    }

    /// CPU time the node's receive threads have run, in ns.
    fn runtime_ns(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in &self.threads {
            let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .context("schedstat")?;
        }
        Ok(total)
    }
}

impl Drop for NodeNapi<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .node
            .exec("sh", &["-c", "echo 0 > /sys/class/net/cli0/threaded"]);
        for b in &self.lab.backends {
            let _ =
                b.ns.exec("sh", &["-c", "echo 0 > /sys/class/net/eth0/threaded"]);
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A UDP/IPv4 frame from the client to `target` through the node, without UDP checksum
/// (so the generator can rotate the source port without fixing it), as long as the
/// generator's template.
fn udp_frame(lab: &Lab, target: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let src = mac_of(&lab.client, "eth0")?;
    let dst = mac_of(&lab.node, "cli0")?;
    let std::net::IpAddr::V4(ip) = target.ip() else {
        anyhow::bail!("IPv4 target")
    };
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(src, dst)
        .ipv4(lab::CLIENT_V4.octets(), ip.octets(), 64)
        .udp(20_000, target.port())
        .write(&mut f, &[0u8; TEMPLATE_LEN - 42])?;
    f[40] = 0;
    f[41] = 0;
    Ok(f)
}

fn run_mode(
    mode: Mode,
    cfg: &Config,
    xlb: &Path,
    server: &Path,
    object: &Path,
) -> anyhow::Result<ModeResult> {
    let mut lab = Lab::build(3)?;
    lab.start_servers(server)?;
    configure(mode, &mut lab, xlb)?;
    let t = targets(mode);

    let iperf_server = {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            lab.backends[0].ns.name(),
            "iperf3",
            "-s",
            "--forceflush",
            "-p",
            &IPERF_PORT.to_string(),
        ]);
        let mut p = Process::spawn("iperf3", c)?;
        p.wait_for("Server listening", Duration::from_secs(10))?;
        p
    };
    let mut tcp = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..cfg.repeats {
        tcp.push(iperf(&lab, t.iperf, cfg.seconds.max(1.0))?);
        conns.push(connections_per_second(&lab, t.conn.clone(), cfg.seconds)?);
    }
    drop(iperf_server);

    let frame = udp_frame(&lab, t.udp)?;
    let traffic = Traffic::setup(
        &lab,
        object,
        &frame,
        (mode != Mode::Xlb).then_some(bench::PROG_PASS),
    )?;
    let napi = NodeNapi::dedicate(&lab)?;
    // Warm up: conntrack entries, neighbour entries, caches.
    traffic.generate(&lab, &frame, 0.2, Some(cfg.paced_pps))?;
    let (mut cpu, mut rate, mut offered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.repeats {
        let (d0, r0) = (traffic.delivered()?, napi.runtime_ns()?);
        traffic.generate(&lab, &frame, cfg.seconds, Some(cfg.paced_pps))?;
        let (d1, r1) = (traffic.delivered()?, napi.runtime_ns()?);
        cpu.push((r1 - r0) as f64 / (d1 - d0).max(1) as f64);

        let d0 = traffic.delivered()?;
        let started = Instant::now();
        let sent = traffic.generate(&lab, &frame, cfg.seconds, None)?;
        let elapsed = started.elapsed().as_secs_f64();
        let d1 = traffic.delivered()?;
        rate.push((d1 - d0) as f64 / elapsed);
        offered.push(sent as f64 / elapsed);
    }
    drop(napi);
    drop(traffic);
    Ok(ModeResult {
        mode,
        tcp_gbit_s: Summary::of(tcp),
        new_connections_per_s: Summary::of(conns),
        node_ns_per_packet: Summary::of(cpu),
        cpu_vs_iptables: None,
        rate_vs_iptables: None,
        max_delivered_pps: Summary::of(rate),
        offered_pps: Summary::of(offered),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub modes: Vec<ModeResult>,
}

pub fn run(cfg: &Config, xlb: &Path, server: &Path, object: &Path) -> anyhow::Result<Results> {
    let mut modes = Vec::new();
    for mode in Mode::ALL {
        eprintln!("  end to end: {}", mode.name());
        modes.push(
            run_mode(mode, cfg, xlb, server, object)
                .with_context(|| format!("mode {}", mode.name()))?,
        );
    }
    if let Some(ipt) = modes.iter().find(|r| r.mode == Mode::Iptables).cloned() {
        for r in &mut modes {
            r.cpu_vs_iptables = Some(r.node_ns_per_packet.median / ipt.node_ns_per_packet.median);
            r.rate_vs_iptables = Some(r.max_delivered_pps.median / ipt.max_delivered_pps.median);
        }
    }
    Ok(Results { modes })
}
