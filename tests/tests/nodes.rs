//! Real nodes: on the multi-node lab (`xlb_tests::cluster`: two nodes on a wire, routed
//! pods left as a CNI leaves them, no kube-proxy), every local origin reaches every
//! Service it may reach, and every cell that works with kube-proxy's iptables rules on
//! the same lab works with xlb. Needs root (run by `cargo xtask test`).
//!
//! Origins (on node-a): a pod, a host process, a pod created after the agent started.
//! Services: one whose backend is a pod on the same node, one whose backend is on the
//! other node, and one whose backend is the client pod itself (hairpin). Frontends:
//! ClusterIP, NodePort on the node's address, load-balancer IP, external IP; TCP,
//! connected UDP and unconnected UDP; IPv4 and IPv6. A cell works when the request is
//! answered by one of the Service's backends and the answer comes from the address the
//! client sent to.

mod common;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use xlb_tests::{
    cluster::{self, Answer, Cluster},
    services::{self, Kind, LabService},
};

fn client_bin() -> PathBuf {
    common::xlb_bin().with_file_name("xlb-lab-client")
}

fn lab_services() -> Vec<LabService> {
    vec![
        LabService::new("same-node", 1, &[(0, 2)]),
        LabService::new("other-node", 2, &[(1, 1)]),
        LabService::new("hairpin", 3, &[(0, 1)]),
    ]
}

/// Where a request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Pod,
    Host,
    NewPod,
}

type Cell = (Origin, String, Kind, &'static str, bool);

/// A request of the matrix: its cell, what the lab client is asked, where it goes and
/// who may answer.
struct Probe {
    cell: Cell,
    request: String,
    to: std::net::SocketAddr,
    servers: Vec<String>,
}

/// The requests of one origin.
fn requests(origin: Origin, services: &[LabService]) -> Vec<Probe> {
    let mut out = Vec::new();
    for s in services {
        if s.name == "hairpin" && origin != Origin::Pod {
            continue;
        }
        for kind in Kind::ALL {
            for proto in ["tcp", "udpc", "udp"] {
                for v6 in [false, true] {
                    let (ip, port) = s.frontend(kind, v6, proto == "tcp", 0);
                    out.push(Probe {
                        cell: (origin, s.name.clone(), kind, proto, v6),
                        request: cluster::request(proto, ip, port),
                        to: std::net::SocketAddr::new(ip, port),
                        servers: s.servers(),
                    });
                }
            }
        }
    }
    out
}

/// Runs every cell; returns each cell's outcome (Err: what went wrong).
fn matrix(c: &Cluster, new_pod: usize) -> BTreeMap<Cell, Result<Answer, String>> {
    let services = lab_services();
    let mut results = BTreeMap::new();
    for origin in [Origin::Pod, Origin::Host, Origin::NewPod] {
        let reqs = requests(origin, &services);
        let list: Vec<String> = reqs.iter().map(|r| r.request.clone()).collect();
        let answers = match origin {
            Origin::Pod => c.from_pod(&client_bin(), 0, 1, &list),
            Origin::Host => c.from_node(&client_bin(), 0, &list),
            Origin::NewPod => c.from_pod(&client_bin(), 0, new_pod, &list),
        }
        .expect("the lab client runs");
        for (probe, a) in reqs.into_iter().zip(answers) {
            results.insert(probe.cell, judge(&probe.to, &probe.servers, a));
        }
    }
    results
}

/// A cell works when one of the Service's backends answered and the answer came from
/// the address the client sent to.
fn judge(to: &std::net::SocketAddr, servers: &[String], a: Answer) -> Result<Answer, String> {
    if !a.ok {
        Err(format!("failed: {}", a.error))
    } else if !servers.contains(&a.server) {
        Err(format!("answered by {} (want {servers:?})", a.server))
    } else if a.from != to.to_string() {
        Err(format!("answer from {} (sent to {to})", a.from))
    } else {
        Ok(a)
    }
}

/// Asserts that no pod counted a bad TCP or UDP checksum.
fn assert_no_checksum_errors(c: &Cluster) {
    for pod in c.nodes.iter().flat_map(|n| &n.pods) {
        let nstat = pod
            .ns
            .exec(
                "nstat",
                &[
                    "-az",
                    "TcpInCsumErrors",
                    "UdpInCsumErrors",
                    "Udp6InCsumErrors",
                ],
            )
            .unwrap();
        for line in nstat.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (name, value) = (f.next().unwrap_or(""), f.next().unwrap_or("0"));
            assert_eq!(value, "0", "pod {}: {name}", pod.name);
        }
    }
}

fn render(results: &BTreeMap<Cell, Result<Answer, String>>) -> String {
    let mut out = String::new();
    for ((origin, svc, kind, proto, v6), r) in results {
        let family = if *v6 { "ipv6" } else { "ipv4" };
        let what = match r {
            Ok(a) => format!("ok (server {}, saw client {})", a.server, a.seen_client),
            Err(e) => e.clone(),
        };
        out.push_str(&format!(
            "{origin:?} -> {svc} {} {proto} {family}: {what}\n",
            kind.name()
        ));
    }
    out
}

#[test]
fn every_local_origin_reaches_every_service_and_everything_kube_proxy_serves_xlb_serves() {
    let services = lab_services();
    let manifests = services::manifests(&services, 2);

    // The baseline: kube-proxy-style iptables rules on the same lab.
    let baseline = {
        let mut c = Cluster::build(2, &common::server_bin()).expect("cluster");
        c.install_iptables(&services).expect("iptables rules");
        let new_pod = c.add_pod(0).expect("a new pod");
        matrix(&c, new_pod)
    };

    // xlb: an agent per node (devices found by the agent, socket programs on the node's
    // cgroup), and a pod created after the agents started.
    let mut c = Cluster::build(2, &common::server_bin()).expect("cluster");
    c.write_manifest("lab.yaml", &manifests).unwrap();
    c.start_agents(&common::xlb_bin(), &[]).expect("agents");
    let new_pod = c.add_pod(0).expect("a new pod");
    let veth = format!("cali{}", cluster::pod_name(0, new_pod));
    c.nodes[0]
        .agent()
        .wait_for(
            &format!("hook=tc ingress on {veth}"),
            Duration::from_secs(10),
        )
        .expect("the new pod's interface is followed");
    let with_xlb = matrix(&c, new_pod);

    eprintln!(
        "kube-proxy (iptables):\n{}\nxlb:\n{}",
        render(&baseline),
        render(&with_xlb)
    );
    let broken: Vec<String> = with_xlb
        .iter()
        .filter_map(|(cell, r)| r.as_ref().err().map(|e| format!("{cell:?}: {e}")))
        .collect();
    assert!(
        broken.is_empty(),
        "cells that fail with xlb:\n{}",
        broken.join("\n")
    );
    for (cell, r) in &baseline {
        if r.is_ok() {
            assert!(
                with_xlb[cell].is_ok(),
                "{cell:?} works with kube-proxy, not with xlb"
            );
        }
    }
    assert_eq!(with_xlb.len(), baseline.len());

    // Hairpin: the pod reaching itself through its Service sees the VIP answer, and the
    // connection is the pod's own (xlb does not need masquerade for it).
    for ((origin, svc, _, _, v6), r) in &with_xlb {
        if svc == "hairpin" {
            let a = r.as_ref().unwrap();
            let own: std::net::IpAddr = if *v6 {
                cluster::pod_v6(0, 1).into()
            } else {
                cluster::pod_v4(0, 1).into()
            };
            assert_eq!(*origin, Origin::Pod);
            assert!(
                a.seen_client.starts_with(&own.to_string())
                    || a.seen_client.starts_with(&format!("[{own}]")),
                "{a:?}"
            );
        }
    }
    // The socket programs did the work: no per-packet translation of pod traffic, so no
    // checksum went bad in any pod.
    let stats = xlb::stats::read(&c.bpffs.path().join("node-a")).expect("node-a's counters");
    assert!(stats.events["sock_translated"] > 0, "{:?}", stats.events);
    assert_no_checksum_errors(&c);
}

/// An external client reaches a Service whose backend is a pod of the node it sends to:
/// XDP translates on the node's device and hands the packet to the kernel (a pod's veth
/// takes no XDP frames), the pod's tc program gives its replies the VIP back, with the
/// pod's partial checksums kept right. The pod sees the client's own address.
#[test]
fn external_clients_reach_a_pod_of_the_node_through_xdp_and_the_pods_tc_program() {
    let services = lab_services();
    let mut c = Cluster::build(2, &common::server_bin()).expect("cluster");
    c.write_manifest("lab.yaml", &services::manifests(&services, 2))
        .unwrap();
    c.start_agents(&common::xlb_bin(), &[]).expect("agents");
    let same_node = &services[0];
    let mut probes = Vec::new();
    // node-a's address and the load-balancer IPs (routed to node-a) lead to node-a.
    for kind in [Kind::NodePort, Kind::LoadBalancer] {
        for proto in ["tcp", "udpc", "udp"] {
            for v6 in [false, true] {
                let (ip, port) = same_node.frontend(kind, v6, proto == "tcp", 0);
                probes.push((
                    cluster::request(proto, ip, port),
                    std::net::SocketAddr::new(ip, port),
                    v6,
                ));
            }
        }
    }
    let list: Vec<String> = probes.iter().map(|p| p.0.clone()).collect();
    let answers = c
        .from_external(&client_bin(), &list)
        .expect("the lab client runs");
    for ((request, to, v6), a) in probes.into_iter().zip(answers) {
        let a = judge(&to, &same_node.servers(), a).unwrap_or_else(|e| panic!("{request}: {e}"));
        let external = if v6 {
            cluster::EXTERNAL_V6.to_string()
        } else {
            cluster::EXTERNAL_V4.to_string()
        };
        assert!(
            a.seen_client.contains(&external),
            "{request}: the pod sees the client: {a:?}"
        );
    }
    let stats = xlb::stats::read(&c.bpffs.path().join("node-a")).expect("node-a's counters");
    assert!(
        stats.packets("pass", "stack_no_xdp_target") > 0,
        "{:?}",
        stats.packets
    );
    assert_eq!(
        stats.packets("redirect", "forward_new"),
        0,
        "never redirected into a pod's veth"
    );
    assert!(stats.events["pod_reply"] > 0, "{:?}", stats.events);
    assert_no_checksum_errors(&c);
}

/// Devices come and go: a pod's veth that goes is detached, an `--interface` that does
/// not exist yet is attached when it appears, and an agent restarted after its
/// interface went keeps serving.
#[test]
fn devices_that_come_and_go_never_stop_the_agent() {
    let services = lab_services();
    let args = ["--interface", "eth0", "--interface", "late0"];
    let mut c = Cluster::build(2, &common::server_bin()).expect("cluster");
    c.write_manifest("lab.yaml", &services::manifests(&services, 2))
        .unwrap();
    c.start_agent(0, &common::xlb_bin(), &args)
        .expect("agent on node-a");
    c.nodes[0]
        .agent()
        .wait_for("hook=tc ingress on calia2", Duration::from_secs(10))
        .expect("pods' interfaces are followed with --interface too");
    let ns = &c.nodes[0].ns;
    ns.ip("link add late0 type veth peer name late0p").unwrap();
    ns.ip("link set late0 up").unwrap();
    ns.ip("link set late0p up").unwrap();
    c.nodes[0]
        .agent()
        .wait_for("hook=xdp on late0", Duration::from_secs(10))
        .expect("the late interface is attached when it appears");
    c.remove_pod(0, 2);
    c.nodes[0]
        .agent()
        .wait_for("the device went", Duration::from_secs(10))
        .expect("the gone pod's interface is detached");
    assert!(!c.bpffs.path().join("node-a/links/tc-calia2").exists());
    // The agent is killed, late0 goes while none runs, and a new agent starts with the
    // same arguments: it serves, and drops the link of the interface that went.
    c.nodes[0].agent().signal(libc::SIGKILL).unwrap();
    c.nodes[0].agent = None;
    c.nodes[0].ns.ip("link del late0").unwrap();
    c.start_agent(0, &common::xlb_bin(), &args)
        .expect("a restarted agent serves although its interface went");
    let (vip, port) = services[1].frontend(Kind::ClusterIp, false, true, 0);
    let answers = c
        .from_pod(&client_bin(), 0, 1, &[cluster::request("tcp", vip, port)])
        .unwrap();
    assert!(answers[0].ok, "{answers:?}");
    assert!(
        !c.bpffs.path().join("node-a/links/xdp-late0").exists(),
        "the link of the interface that went is removed"
    );
}
