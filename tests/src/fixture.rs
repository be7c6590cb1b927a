//! A network namespace in which FIB lookups have deterministic answers, for running the
//! datapath through BPF_PROG_TEST_RUN (packet tables and benchmarks).
//!
//! - `toback` (a veth): 10.201.0.0/16 and fd00:201::/32 are on-link, with permanent
//!   neighbour entries for the lab's backends; 10.202.0.0/16 and fd00:202::/32 are routed
//!   through a gateway with a permanent neighbour entry (for large backend sets);
//! - `toclient` (a veth): 10.200.0.0/24 and fd00:200::/64, with permanent entries for the
//!   lab's client;
//! - 10.250.0.0/16 has no route, and 10.201.9.0/24 no neighbour entries;
//! - forwarding is on (BPF_PROG_TEST_RUN's ingress is the loopback device).

use crate::{lab, netns::Netns};

pub const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
pub const GATEWAY_V4: &str = "10.201.255.254";
pub const GATEWAY_V6: &str = "fd00:201:ffff::fe";

pub struct FibNamespace {
    pub ns: Netns,
    pub toback_mac: [u8; 6],
    pub toclient_mac: [u8; 6],
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mac_of(ns: &Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&format!("-br link show {dev}"))?;
    let text = out.split_whitespace().nth(2).unwrap_or_default();
    let v: Vec<u8> = text
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    v.try_into()
        .map_err(|_| anyhow::anyhow!("no MAC address for {dev} in {out:?}"))
}

impl FibNamespace {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let ns = Netns::create(name)?;
        for cmd in [
            "link add toback type veth peer name toback-peer",
            "link add toclient type veth peer name toclient-peer",
            "link set toback up",
            "link set toclient up",
            "link set toback-peer up",
            "link set toclient-peer up",
            "addr add 10.201.0.1/16 dev toback",
            "addr add fd00:201::1/32 dev toback nodad",
            "addr add 10.200.0.1/24 dev toclient",
            "addr add fd00:200::1/64 dev toclient nodad",
        ] {
            ns.ip(cmd)?;
        }
        let backend = mac(BACKEND_MAC);
        for i in 1..=3 {
            for addr in [
                lab::backend_v4(i).to_string(),
                lab::backend_v6(i).to_string(),
            ] {
                ns.ip(&format!(
                    "neigh add {addr} lladdr {backend} dev toback nud permanent"
                ))?;
            }
        }
        for gw in [GATEWAY_V4, GATEWAY_V6] {
            ns.ip(&format!(
                "neigh add {gw} lladdr {backend} dev toback nud permanent"
            ))?;
        }
        ns.ip(&format!(
            "route add 10.202.0.0/16 via {GATEWAY_V4} dev toback"
        ))?;
        ns.ip(&format!(
            "-6 route add fd00:202::/32 via {GATEWAY_V6} dev toback"
        ))?;
        let client = mac(CLIENT_MAC);
        for addr in [lab::CLIENT_V4.to_string(), lab::CLIENT_V6.to_string()] {
            ns.ip(&format!(
                "neigh add {addr} lladdr {client} dev toclient nud permanent"
            ))?;
        }
        ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let toback_mac = mac_of(&ns, "toback")?;
        let toclient_mac = mac_of(&ns, "toclient")?;
        Ok(Self {
            ns,
            toback_mac,
            toclient_mac,
        })
    }
}
