//! End to end in a network-namespace lab: real agent, real XDP on veths, real servers and
//! clients. Needs root (run by `cargo xtask test`).

mod common;

use std::{collections::BTreeMap, net::SocketAddr};

use xlb_tests::{
    client::{self, TcpSession},
    lab::{DNS_V4, DNS_V6, WEB_V4, WEB_V6},
};

const CONNECTIONS: usize = 90;
const DATAGRAMS: usize = 90;

/// Many TCP connections (each from its own ephemeral source port) through a VIP; returns
/// how many each backend served. Every connection must be established with the VIP itself.
fn tcp_spread(lab: &xlb_tests::lab::Lab, vip: SocketAddr) -> BTreeMap<String, usize> {
    lab.client
        .run(move || {
            let mut seen = BTreeMap::new();
            for i in 0..CONNECTIONS {
                let mut s = TcpSession::connect(vip)
                    .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                assert_eq!(s.peer().unwrap(), vip, "the connection is with the VIP");
                let name = s.ask().unwrap_or_else(|e| panic!("request {i} to {vip}: {e}"));
                *seen.entry(name).or_insert(0) += 1;
            }
            seen
        })
        .expect("client thread")
}

/// Many UDP requests from distinct sockets through a VIP; every reply must come from the VIP.
fn udp_spread(lab: &xlb_tests::lab::Lab, vip: SocketAddr) -> BTreeMap<String, usize> {
    lab.client
        .run(move || {
            let mut seen = BTreeMap::new();
            for i in 0..DATAGRAMS {
                let sock = client::udp_socket(vip).unwrap();
                let (name, from) = client::udp_ask(&sock, vip, i as u64)
                    .unwrap_or_else(|e| panic!("datagram {i} to {vip}: {e}"));
                assert_eq!(from, vip, "reply {i} must come from the VIP");
                *seen.entry(name).or_insert(0) += 1;
            }
            seen
        })
        .expect("client thread")
}

#[test]
fn every_vip_balances_over_every_backend_and_replies_come_from_the_vip() {
    let lab = common::default_lab();
    for vip in [WEB_V4, WEB_V6] {
        let seen = tcp_spread(&lab, vip);
        assert_eq!(seen.len(), 3, "{vip}: every backend serves: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), CONNECTIONS);
    }
    for vip in [DNS_V4, DNS_V6] {
        let seen = udp_spread(&lab, vip);
        assert_eq!(seen.len(), 3, "{vip}: every backend serves: {seen:?}");
    }
}
