//! `cargo xtask run`: the demo. A lab of network namespaces (a client, a node running the
//! agent on all its interfaces, three backends with real TCP and UDP servers), the embedded
//! default manifests, real traffic to every VIP, then the per-backend distribution and the
//! datapath counters. Then the two-node lab as a real node is: pods behind untuned veths, host
//! processes and an external client, each reaching same-node, other-node and hairpin Services
//! with no kube-proxy rules, shown as a path table.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use xlb_tests::{
    client::{self, TcpSession},
    cluster::{self, Answer, Cluster},
    lab::{self, Lab},
    services::{self, Kind, LabService},
};

use crate::{build, toolchain, ui};

#[derive(Args, Debug)]
pub struct RunOpts {
    /// Leave the lab up after the demo traffic, print how to use it, and tear it down on
    /// Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// TCP connections and UDP requests sent to each VIP.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Use the binaries already built (set when re-running through sudo).
    #[arg(long, hide = true)]
    pub no_build: bool,
}

pub fn run(opts: &RunOpts) -> anyhow::Result<()> {
    let root = build::workspace_root();
    if !opts.no_build {
        let tc = toolchain::ensure_build()?;
        toolchain::ensure_packages(toolchain::LAB_PACKAGES)?;
        build::build_all(&tc, true)?;
    }
    if !toolchain::is_root() {
        // The lab needs root; the build above ran as the invoking user.
        let mut c = toolchain::privileged(
            std::env::current_exe()?.to_str().context("utf-8 path")?,
            "the lab (network namespaces, bpffs, XDP)",
        )?;
        c.args([
            "run",
            "--no-build",
            "--requests",
            &opts.requests.to_string(),
        ]);
        if opts.keep {
            c.arg("--keep");
        }
        let status = c.status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let bins = root.join("target/release");
    let xlb = bins.join("xlb");
    let server = bins.join("xlb-lab-server");
    for b in [&xlb, &server] {
        anyhow::ensure!(
            b.is_file(),
            "{} is missing: run `cargo xtask build --release`",
            b.display()
        );
    }

    let step = ui::step("creating the lab: client, node, 3 backends");
    let mut lab = Lab::build(3)?;
    lab.start_servers(&server)?;
    lab.write_default_manifests()?;
    ui::info(&format!(
        "namespaces {p}-client, {p}-node, {p}-b1..b3",
        p = lab.prefix
    ));
    step.done();
    check(&stop)?;

    let step = ui::step("starting the agent on the node (cli0, be1, be2, be3)");
    lab.start_agent(&xlb, &[])?;
    step.done();
    check(&stop)?;

    let step = ui::step(format!(
        "sending {} TCP connections / UDP requests to each VIP",
        opts.requests
    ));
    let mut rows = Vec::new();
    for (vip, udp) in [
        (lab::WEB_V4, false),
        (lab::WEB_V6, false),
        (lab::DNS_V4, true),
        (lab::DNS_V6, true),
    ] {
        let n = opts.requests as usize;
        let tally = lab.client.run(move || traffic(vip, udp, n))?;
        rows.push((vip, udp, tally));
        check(&stop)?;
    }
    step.done();
    print_distribution(&rows);

    println!("\nDatapath counters (xlb stats):");
    let out = std::process::Command::new(&xlb)
        .args(["stats", "--bpffs"])
        .arg(lab.pin_dir())
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "xlb stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cluster_step = ui::step(
        "the two-node lab: node-a and node-b on a wire, two pods each as a routed CNI leaves them, an agent per node",
    );
    let (cluster, cluster_failed) = cluster_demo(&bins, &xlb, &server, &stop)?;
    cluster_step.done();

    let failed: usize = rows
        .iter()
        .map(|(_, _, t)| t.get("failed").copied().unwrap_or(0))
        .sum::<usize>()
        + cluster_failed;
    let unbalanced = rows
        .iter()
        .any(|(_, _, t)| t.keys().filter(|k| k.starts_with('b')).count() < 3);

    if opts.keep {
        let pid = lab.agent().pid();
        let p = &lab.prefix;
        println!(
            "\nThe lab is up. As root, try:\n\
             \x20 ip netns exec {p}-client curl -s http://10.96.0.10/\n\
             \x20 ip netns exec {p}-client curl -s 'http://[fd00:96::10]/'\n\
             \x20 {xlb} stats --bpffs {pins}\n\
             \x20 edit {m}/endpointslices.yaml, then: kill -HUP {pid}   (the agent re-reads its manifests)\n\
             Press Ctrl-C to tear the lab down.",
            xlb = xlb.display(),
            pins = lab.pin_dir().display(),
            m = lab.manifests_dir().display(),
        );
        while !stop.load(Ordering::SeqCst) && lab.agent().is_running() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let step = ui::step("tearing the labs down");
    drop(cluster);
    drop(lab);
    step.done();
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    anyhow::ensure!(!unbalanced, "some VIP did not reach all three backends");
    Ok(())
}

/// The two-node lab: from a pod of node-a, every Service (backend on the same node, on the
/// other node, the pod itself) through every frontend, TCP and both kinds of UDP, both
/// families; and from the external client to node-a's pods. Prints a table; returns the
/// lab (for --keep) and how many requests failed.
fn cluster_demo(
    bins: &std::path::Path,
    xlb: &std::path::Path,
    server: &std::path::Path,
    stop: &AtomicBool,
) -> anyhow::Result<(Cluster, usize)> {
    let client = bins.join("xlb-lab-client");
    let services = vec![
        LabService::new("same-node", 1, &[(0, 2)]),
        LabService::new("other-node", 2, &[(1, 1)]),
        LabService::new("hairpin", 3, &[(0, 1)]),
    ];
    let mut c = Cluster::build(2, server)?;
    c.write_manifest("lab.yaml", &services::manifests(&services, 2))?;
    c.start_agents(xlb, &[])?;
    check(stop)?;
    println!("\nFrom pod a1 on node-a (answered by a Service backend, from the address sent to):");
    println!(
        "  {:<11} {:<13} {:>9} {:>9} {:>9}",
        "SERVICE", "FRONTEND", "tcp", "udp conn", "udp"
    );
    let mut failed = 0;
    let mut row = |from: &dyn Fn(&[String]) -> anyhow::Result<Vec<Answer>>,
                   s: &LabService,
                   kind: Kind,
                   node: usize|
     -> anyhow::Result<()> {
        let mut cells = Vec::new();
        for proto in ["tcp", "udpc", "udp"] {
            let mut ok = 0;
            for v6 in [false, true] {
                let (ip, port) = s.frontend(kind, v6, proto == "tcp", node);
                let want = std::net::SocketAddr::new(ip, port).to_string();
                let a = &from(&[cluster::request(proto, ip, port)])?[0];
                if a.ok && s.servers().contains(&a.server) && a.from == want {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            cells.push(format!("{ok}/2"));
        }
        println!(
            "  {:<11} {:<13} {:>9} {:>9} {:>9}",
            s.name,
            kind.name(),
            cells[0],
            cells[1],
            cells[2]
        );
        Ok(())
    };
    for s in &services {
        for kind in Kind::ALL {
            row(&|r| c.from_pod(&client, 0, 1, r), s, kind, 0)?;
        }
    }
    println!("\nFrom the external client to node-a (v4 and v6):");
    for kind in [Kind::NodePort, Kind::LoadBalancer] {
        row(&|r| c.from_external(&client, r), &services[0], kind, 0)?;
    }
    Ok((c, failed))
}

fn check(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Sends `n` TCP connections or UDP requests to `vip`; counts answers per backend (and
/// failures, and replies that did not come from the VIP).
fn traffic(vip: SocketAddr, udp: bool, n: usize) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for i in 0..n {
        let answer = if udp {
            client::udp_socket(vip)
                .and_then(|s| client::udp_ask(&s, vip, i as u64))
                .map(|(name, from)| {
                    if from == vip {
                        name
                    } else {
                        format!("wrong source {from}")
                    }
                })
        } else {
            TcpSession::connect(vip).and_then(|mut s| s.ask())
        };
        let key = answer.unwrap_or_else(|_| "failed".to_string());
        *tally.entry(key).or_insert(0) += 1;
    }
    tally
}

fn print_distribution(rows: &[(SocketAddr, bool, BTreeMap<String, usize>)]) {
    println!("\nPer-backend distribution (answers by backend):");
    println!(
        "  {:<20} {:<5} {:>7} {:>7} {:>7} {:>7}",
        "VIP", "PROTO", "b1", "b2", "b3", "failed"
    );
    for (vip, udp, t) in rows {
        let get = |k: &str| t.get(k).copied().unwrap_or(0);
        println!(
            "  {:<20} {:<5} {:>7} {:>7} {:>7} {:>7}",
            vip.to_string(),
            if *udp { "udp" } else { "tcp" },
            get("b1"),
            get("b2"),
            get("b3"),
            t.iter()
                .filter(|(k, _)| !k.starts_with('b'))
                .map(|(_, v)| v)
                .sum::<usize>()
        );
    }
}
