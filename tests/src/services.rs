//! Services of the multi-node lab, described once and rendered two ways: as Kubernetes
//! manifests (Services, EndpointSlices, Nodes) for xlb's agents, and as the
//! iptables/ip6tables rules kube-proxy (iptables mode) would install on each node for
//! the same objects, the baseline a kube-proxy user has.
//!
//! Every Service is dual-stack, `type: LoadBalancer` with a load-balancer IP and an
//! external IP, `externalTrafficPolicy: Cluster`, with a TCP port 80 -> 8080 and a UDP
//! port 53 -> 5353, each with a node port.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::cluster::{self, TCP_PORT, UDP_PORT, node_name, pod_name, pod_v4, pod_v6};

/// A Service of the lab: its endpoints are pods (node, pod index).
#[derive(Clone, Debug)]
pub struct LabService {
    pub name: String,
    /// Picks its addresses: 10.96.0.(10+i), 10.97.0.(10+i), 10.98.0.(10+i) and the IPv6
    /// equivalents; node ports 30000+10i (TCP) and 30001+10i (UDP).
    pub index: u8,
    pub endpoints: Vec<(usize, usize)>,
}

/// How a frontend of a Service is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ClusterIp,
    /// On the address of the node the client is on (or reaches).
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::ClusterIp,
        Kind::NodePort,
        Kind::LoadBalancer,
        Kind::ExternalIp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "externalIP",
        }
    }
}

impl LabService {
    pub fn new(name: &str, index: u8, endpoints: &[(usize, usize)]) -> Self {
        Self {
            name: name.into(),
            index,
            endpoints: endpoints.to_vec(),
        }
    }

    fn v4(&self, net: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, net, 0, 10 + self.index)
    }

    fn v6(&self, net: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, net, 0, 0, 0, 0, 0, 0x10 + self.index as u16)
    }

    pub fn node_port(&self, tcp: bool) -> u16 {
        30_000 + 10 * self.index as u16 + u16::from(!tcp)
    }

    /// The address and port of a frontend, for a client on (or reaching) node `node`.
    pub fn frontend(&self, kind: Kind, v6: bool, tcp: bool, node: usize) -> (IpAddr, u16) {
        let port = if tcp { 80 } else { 53 };
        let pick = |net4: u8, net6: u16| -> IpAddr {
            if v6 {
                self.v6(net6).into()
            } else {
                self.v4(net4).into()
            }
        };
        match kind {
            Kind::ClusterIp => (pick(96, 0x96), port),
            Kind::LoadBalancer => (pick(97, 0x97), port),
            Kind::ExternalIp => (pick(98, 0x98), port),
            Kind::NodePort => {
                let ip: IpAddr = if v6 {
                    cluster::node_v6(node).into()
                } else {
                    cluster::node_v4(node).into()
                };
                (ip, self.node_port(tcp))
            }
        }
    }

    /// The pod names that may answer.
    pub fn servers(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|(n, p)| pod_name(*n, *p))
            .collect()
    }
}

/// The manifests for `services` and the lab's `nodes` nodes.
pub fn manifests(services: &[LabService], nodes: usize) -> String {
    let mut out = String::new();
    for n in 0..nodes {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: \"{}\"}}\n  - {{type: InternalIP, address: \"{}\"}}\n---\n",
            node_name(n),
            cluster::node_v4(n),
            cluster::node_v6(n)
        );
    }
    for s in services {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [\"{c4}\", \"{c6}\"]\n  externalIPs: [\"{e4}\", \"{e6}\"]\n  ports:\n  - {{name: tcp, protocol: TCP, port: 80, targetPort: {TCP_PORT}, nodePort: {nt}}}\n  - {{name: udp, protocol: UDP, port: 53, targetPort: {UDP_PORT}, nodePort: {nu}}}\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: \"{l4}\"\n    - ip: \"{l6}\"\n---\n",
            name = s.name,
            c4 = s.v4(96),
            c6 = s.v6(0x96),
            e4 = s.v4(98),
            e6 = s.v6(0x98),
            l4 = s.v4(97),
            l6 = s.v6(0x97),
            nt = s.node_port(true),
            nu = s.node_port(false),
        );
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let _ = write!(
                out,
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-{}\n  labels: {{kubernetes.io/service-name: {}}}\naddressType: {family}\nports:\n- {{name: tcp, protocol: TCP, port: {TCP_PORT}}}\n- {{name: udp, protocol: UDP, port: {UDP_PORT}}}\nendpoints:\n",
                s.name,
                family.to_lowercase(),
                s.name
            );
            for (n, p) in &s.endpoints {
                let ip: IpAddr = if v6 {
                    pod_v6(*n, *p).into()
                } else {
                    pod_v4(*n, *p).into()
                };
                let _ = writeln!(
                    out,
                    "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  nodeName: {}\n  targetRef: {{kind: Pod, name: {}}}",
                    node_name(*n),
                    pod_name(*n, *p)
                );
            }
            out.push_str("---\n");
        }
    }
    out
}

/// The kube-proxy-style rules of node `node` for `services` (`ip6tables-restore` input
/// with `v6`): nat PREROUTING and OUTPUT to KUBE-SERVICES, DNAT to endpoints picked at
/// random, masquerade for external traffic (externalTrafficPolicy: Cluster), for hairpin
/// (an endpoint reaching itself) and for off-cluster sources of cluster IPs.
pub fn iptables(services: &[LabService], node: usize, v6: bool) -> String {
    let pod_cidr = if v6 { "fd00:244::/32" } else { "10.244.0.0/16" };
    let host = if v6 { 128 } else { 32 };
    let mut rules = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut body = String::new();
    for s in services {
        for tcp in [true, false] {
            let (proto, target) = if tcp {
                ("tcp", TCP_PORT)
            } else {
                ("udp", UDP_PORT)
            };
            let chain = format!("KUBE-SVC-{}-{}", s.index, proto.to_uppercase());
            let ext = format!("KUBE-EXT-{}-{}", s.index, proto.to_uppercase());
            let _ = writeln!(rules, ":{chain} - [0:0]\n:{ext} - [0:0]");
            let (cip, port) = s.frontend(Kind::ClusterIp, v6, tcp, node);
            let _ = writeln!(
                body,
                "-A KUBE-SERVICES -d {cip}/{host} -p {proto} --dport {port} -j {chain}"
            );
            for kind in [Kind::LoadBalancer, Kind::ExternalIp] {
                let (ip, port) = s.frontend(kind, v6, tcp, node);
                let _ = writeln!(
                    body,
                    "-A KUBE-SERVICES -d {ip}/{host} -p {proto} --dport {port} -j {ext}"
                );
            }
            let _ = writeln!(
                body,
                "-A KUBE-NODEPORTS -p {proto} --dport {} -j {ext}",
                s.node_port(tcp)
            );
            let _ = writeln!(body, "-A {ext} -j KUBE-MARK-MASQ\n-A {ext} -j {chain}");
            let _ = writeln!(
                body,
                "-A {chain} -d {cip}/{host} ! -s {pod_cidr} -j KUBE-MARK-MASQ"
            );
            let count = s.endpoints.len();
            for (i, (n, p)) in s.endpoints.iter().enumerate() {
                let sep = format!("KUBE-SEP-{}-{}-{i}", s.index, proto.to_uppercase());
                let _ = writeln!(rules, ":{sep} - [0:0]");
                let ip: IpAddr = if v6 {
                    pod_v6(*n, *p).into()
                } else {
                    pod_v4(*n, *p).into()
                };
                let pick = if i + 1 < count {
                    format!(
                        "-m statistic --mode random --probability {:.5} ",
                        1.0 / (count - i) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(body, "-A {chain} {pick}-j {sep}");
                let dest = if v6 {
                    format!("[{ip}]:{target}")
                } else {
                    format!("{ip}:{target}")
                };
                let _ = writeln!(
                    body,
                    "-A {sep} -s {ip}/{host} -j KUBE-MARK-MASQ\n-A {sep} -p {proto} -j DNAT --to-destination {dest}"
                );
            }
        }
    }
    rules.push_str(&body);
    rules.push_str(
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n",
    );
    rules
}
