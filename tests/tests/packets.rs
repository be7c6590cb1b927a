//! Packet tables through BPF_PROG_TEST_RUN: the real program, loaded into the kernel, runs
//! against real maps programmed by the agent's own sync code. Each case has a description,
//! an input frame, the expected verdict and checks on the output frame (Katran-style
//! fixtures). Needs root (run by `cargo xtask test`).
//!
//! Every test runs in its own network namespace (`xlb_tests::fixture`), where the FIB
//! lookups have deterministic answers: backends behind `toback`, clients behind
//! `toclient`, 10.250.0.0/16 without a route and 10.201.9.0/24 without neighbour entries.
//!
//! One concern (the datapath's verdicts on crafted frames), many tables: hence its length.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use lb_common::{
    Addr, Family, Proto,
    maps::CtKey,
    stats::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
};
use xlb::{
    datapath::{Datapath, LoadOptions},
    model::BackendKey,
    sources::manifests,
    sync::{self, Applied, PlanConfig},
    translate,
};
use xlb_tests::{
    bpffs::Bpffs,
    fixture::{BACKEND_MAC, CLIENT_MAC, FibNamespace},
    lab,
    packet::*,
};

const CLIENT: [IpAddr; 2] = [IpAddr::V4(lab::CLIENT_V4), IpAddr::V6(lab::CLIENT_V6)];

/// Extra Services beside the lab's defaults: one without endpoints, one whose backend has
/// no route, one whose backend has no neighbour entry.
const EXTRA: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: far}
spec: {clusterIP: 10.96.0.13, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: far-1, labels: {kubernetes.io/service-name: far}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.250.0.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: noneigh}
spec: {clusterIP: 10.96.0.14, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: noneigh-1, labels: {kubernetes.io/service-name: noneigh}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.201.9.2]}]
"#;

struct Env {
    tx: xlb::datapath::TxPorts,
    dp: Datapath,
    applied: Applied,
    maps: xlb::datapath::RealMaps,
    pin_dir: std::path::PathBuf,
    toback_mac: [u8; 6],
    toclient_mac: [u8; 6],
}

/// Runs `f` in a fresh namespace with the datapath loaded and programmed.
fn with_env(f: impl FnOnce(&mut Env) + Send + 'static) {
    xlb_tests::require_root().unwrap();
    let prefix = xlb_tests::run_prefix();
    let fib = FibNamespace::create(&format!("{prefix}-pkt")).unwrap();
    let bpffs = Bpffs::mount(&prefix).unwrap();
    let (toback_mac, toclient_mac) = (fib.toback_mac, fib.toclient_mac);
    let pin_dir = bpffs.path().join("pkt");
    fib.ns
        .run(move || {
            let mut dp = Datapath::load(&LoadOptions {
                pin_dir: pin_dir.clone(),
                config: Default::default(),
                conntrack_entries: 65_536,
                backends: lb_common::maps::MAX_BACKENDS,
            })
            .expect("the program loads and verifies");
            let maps = dp.maps().expect("maps");
            // The fixture's veths take redirected frames (as the agent records for node
            // devices whose peers have NAPI).
            let mut tx = dp.tx_ports().expect("redirect targets");
            for interface in ["toback", "toclient"] {
                let index = xlb::datapath::ifindex(interface).expect("fixture interface");
                tx.set(
                    index,
                    lb_common::maps::TX_F_REDIRECT | lb_common::maps::TX_F_TX,
                )
                .unwrap();
            }
            let mut env = Env {
                dp,
                tx,
                applied: Applied::new(lb_common::maps::MAX_SERVICES, lb_common::maps::MAX_BACKENDS),
                maps,
                pin_dir,
                toback_mac,
                toclient_mac,
            };
            program(&mut env, &all_manifests());
            f(&mut env);
        })
        .expect("test thread");
    drop(bpffs);
    drop(fib);
}

fn all_manifests() -> String {
    let mut text: String = lab::DEFAULT_MANIFESTS
        .iter()
        .map(|(_, t)| format!("{t}\n---\n"))
        .collect();
    text.push_str(EXTRA);
    text
}

/// Programs the maps from manifest text through the agent's translation, planner and
/// applier.
fn program(env: &mut Env, text: &str) {
    let mut loaded = manifests::Loaded::default();
    manifests::load_text(std::path::Path::new("test.yaml"), text, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let (desired, errors, _) = translate::translate_all(
        loaded.services.iter().map(|s| &s.object),
        loaded.slices.iter().map(|s| &s.object),
        &translate::NodeInfo::default(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    let plan = sync::plan(&desired, &env.applied, None, &PlanConfig::default());
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let report = sync::apply(plan, &mut env.applied, &mut env.maps);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

impl Env {
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let r = self.dp.run_packet(frame).expect("BPF_PROG_TEST_RUN");
        (r.action, r.output)
    }

    /// The state of a connection-table entry, read from the pinned table.
    fn ct_state(&self, key: &CtKey) -> Option<u8> {
        let map = aya::maps::MapData::from_pin(self.pin_dir.join(lb_common::maps::CONNTRACK))
            .expect("the pinned connection table");
        let table: aya::maps::HashMap<_, CtKey, lb_common::maps::CtValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("an LRU hash");
        table.get(key, 0).ok().map(|v| v.state)
    }

    /// [`Self::run`] as if the frame arrived on `interface` (`toback`, `toclient`).
    fn run_on(&self, interface: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let index = xlb::datapath::ifindex(interface).expect("fixture interface");
        let r = self
            .dp
            .run_packet_on(frame, Some(index))
            .expect("BPF_PROG_TEST_RUN");
        (r.action, r.output)
    }

    /// The service id the agent gave to a VIP's frontend.
    fn service_of(&self, vip: IpAddr, port: u16, proto: Proto) -> u32 {
        let key = lb_common::maps::FrontendKey::new(vip, port, proto);
        self.applied.frontends[&key].service_id
    }

    /// The backend the userspace model predicts for a new flow.
    fn predict(
        &self,
        client: IpAddr,
        sport: u16,
        vip: IpAddr,
        port: u16,
        proto: Proto,
    ) -> BackendKey {
        let key = CtKey {
            src: Addr::from_ip(&client),
            dst: Addr::from_ip(&vip),
            sport_be: sport.to_be(),
            dport_be: port.to_be(),
            proto,
            family: Family::of(&vip),
            _pad: [0; 2],
        };
        self.applied
            .predict(self.service_of(vip, port, proto), &key)
            .expect("a prediction")
    }

    fn stats(&self) -> xlb::stats::Report {
        xlb::stats::read(&self.pin_dir).expect("stats")
    }
}

/// Never blackhole: a translated packet whose egress interface cannot take XDP frames
/// (not recorded as a redirect target: a pod's veth whose peer has no NAPI) goes to the
/// kernel, translated and counted, instead of being redirected into a silent drop.
#[test]
fn frames_for_an_interface_that_cannot_take_them_go_to_the_kernel() {
    with_env(|env| {
        let toback = xlb::datapath::ifindex("toback").unwrap();
        env.tx.set(toback, 0).unwrap();
        for (vip, port, tcp) in VIPS {
            let vip: IpAddr = vip.parse().unwrap();
            let client = if vip.is_ipv4() { CLIENT[0] } else { CLIENT[1] };
            let proto = if tcp { Proto::TCP } else { Proto::UDP };
            let (action, out) = env.run(&frame(tcp, client, vip, 41_000, port, b"x"));
            assert_eq!(action, XDP_PASS, "{vip}: to the kernel, not redirected");
            let want = env.predict(client, 41_000, vip, port, proto);
            let s = summary(&out);
            assert_eq!((s.dst, s.dport), (want.ip, want.port), "{vip}: translated");
            assert_eq!(
                s.ttl, 64,
                "{vip}: the kernel's forwarding decrements the TTL"
            );
            assert_checksums(&out);
            // The established flow's next packet too (the decision is cached).
            let (action, _) = env.run(&frame(tcp, client, vip, 41_000, port, b"y"));
            assert_eq!(action, XDP_PASS);
        }
        let r = env.stats();
        assert_eq!(r.packets("pass", "stack_no_xdp_target"), 8);
        assert_eq!(r.packets("redirect", "forward_new"), 0);
    });
}

const VIPS: [(&str, u16, bool); 4] = [
    ("10.96.0.10", 80, true),
    ("fd00:96::10", 80, true),
    ("10.96.0.11", 53, false),
    ("fd00:96::11", 53, false),
];

#[test]
fn new_flows_reach_the_predicted_backend_and_replies_come_back_from_the_vip() {
    with_env(|env| {
        for (vip, port, tcp) in VIPS {
            let vip: IpAddr = vip.parse().unwrap();
            let client = if vip.is_ipv4() { CLIENT[0] } else { CLIENT[1] };
            let proto = if tcp { Proto::TCP } else { Proto::UDP };
            let mut used = BTreeSet::new();
            for sport in 40_000..40_060u16 {
                let input = frame(tcp, client, vip, sport, port, b"payload");
                let (action, out) = env.run(&input);
                assert_eq!(
                    action, XDP_REDIRECT,
                    "{vip}:{port} from :{sport}: redirected to the backend"
                );
                let want = env.predict(client, sport, vip, port, proto);
                let s = summary(&out);
                assert_eq!(
                    (s.dst, s.dport),
                    (want.ip, want.port),
                    "{vip} :{sport}: the predicted backend"
                );
                assert_eq!((s.src, s.sport), (client, sport), "the source is untouched");
                assert_eq!(
                    (s.src_mac, s.dst_mac),
                    (env.toback_mac, BACKEND_MAC),
                    "L2 from the FIB"
                );
                assert_eq!(s.ttl, 63, "TTL/hop limit decremented");
                assert_checksums(&out);
                used.insert(want);

                // The backend's reply is translated back: its source becomes the VIP.
                let reply = frame(tcp, want.ip, client, want.port, sport, b"answer");
                let (action, out) = env.run(&reply);
                assert_eq!(action, XDP_REDIRECT, "reply redirected to the client");
                let s = summary(&out);
                assert_eq!(
                    (s.src, s.sport, s.dst, s.dport),
                    (vip, port, client, sport),
                    "reply from the VIP"
                );
                assert_eq!((s.src_mac, s.dst_mac), (env.toclient_mac, CLIENT_MAC));
                assert_checksums(&out);
            }
            assert_eq!(used.len(), 3, "{vip}: 60 flows use every backend");
        }
        let r = env.stats();
        assert_eq!(r.packets("redirect", "forward_new"), 4 * 60);
        assert_eq!(r.packets("redirect", "forward_reply"), 4 * 60);
    });
}

#[test]
fn established_flows_keep_their_backend_when_the_backend_set_changes() {
    with_env(|env| {
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let client = CLIENT[0];
        // Open 60 flows, remember where each went.
        let mut before = Vec::new();
        for sport in 41_000..41_060u16 {
            let (action, out) = env.run(&frame(true, client, vip, sport, 80, b""));
            assert_eq!(action, XDP_REDIRECT);
            before.push((sport, summary(&out).dst));
        }
        // Remove backend 10.201.1.2: its slots move to the other two.
        let mut text = all_manifests();
        text = text.replacen(
            "- addresses: [\"10.201.1.2\"]\n  conditions: {ready: true}\n  nodeName: node-1\n",
            "",
            1,
        );
        program(env, &text);
        let removed: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 1, 2));
        let mut kept_on_removed = 0;
        for (sport, dst) in &before {
            // A mid-flow packet (ACK, no SYN) of the same flow.
            let mut f = frame(true, client, vip, *sport, 80, b"more");
            f.set_tcp_flags(tcp::ACK);
            let (action, out) = env.run(&f);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(
                summary(&out).dst,
                *dst,
                "flow from :{sport} keeps its backend"
            );
            if *dst == removed {
                kept_on_removed += 1;
            }
        }
        assert!(
            kept_on_removed > 0,
            "some flows were on the removed backend"
        );
        // New flows avoid the removed backend and follow the new table.
        for sport in 42_000..42_060u16 {
            let (_, out) = env.run(&frame(true, client, vip, sport, 80, b""));
            let dst = summary(&out).dst;
            assert_ne!(dst, removed, "new flows avoid the removed backend");
            assert_eq!(dst, env.predict(client, sport, vip, 80, Proto::TCP).ip);
        }
    });
}

/// Expected outcome of a table case.
enum Expect {
    /// Passed with the frame unchanged.
    PassUnchanged,
    /// Passed after translation (the kernel forwards it).
    PassTranslated,
    Drop,
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    expect: Expect,
    /// (verdict, reason) counter that must count this packet.
    counter: (&'static str, &'static str),
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().unwrap().octets()
}

fn cases() -> Vec<Case> {
    let c4 = lab::CLIENT_V4.octets();
    let c6 = lab::CLIENT_V6.octets();
    let vip6: [u8; 16] = "fd00:96::10"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let tcp = tcp4(c4, v4("10.96.0.10"), 40000, 80, b"");
    let udp = udp4(c4, v4("10.96.0.11"), 40000, 53, b"q");
    let t6 = tcp6(c6, vip6, 40000, 80, b"");
    let mut cases = vec![
        Case {
            what: "TCP to a non-VIP address",
            input: tcp4(c4, v4("10.96.0.99"), 40000, 80, b""),
            expect: Expect::PassUnchanged,
            counter: ("pass", "not_frontend"),
        },
        Case {
            what: "TCP to a VIP on a port it does not serve",
            input: tcp4(c4, v4("10.96.0.10"), 40000, 81, b""),
            expect: Expect::PassUnchanged,
            counter: ("pass", "not_frontend"),
        },
        Case {
            what: "UDP to the TCP service's VIP",
            input: udp4(c4, v4("10.96.0.10"), 40000, 80, b""),
            expect: Expect::PassUnchanged,
            counter: ("pass", "not_frontend"),
        },
        Case {
            what: "IPv6 to a non-VIP address",
            input: tcp6(c6, c6, 40000, 80, b""),
            expect: Expect::PassUnchanged,
            counter: ("pass", "not_frontend"),
        },
        Case {
            what: "service without endpoints",
            input: tcp4(c4, v4("10.96.0.12"), 40000, 80, b""),
            expect: Expect::Drop,
            counter: ("drop", "no_backend"),
        },
        Case {
            what: "backend without a route",
            input: tcp4(c4, v4("10.96.0.13"), 40000, 80, b""),
            expect: Expect::PassTranslated,
            counter: ("pass", "stack_no_route"),
        },
        Case {
            what: "backend without a neighbour entry",
            input: tcp4(c4, v4("10.96.0.14"), 40000, 80, b""),
            expect: Expect::PassTranslated,
            counter: ("pass", "stack_no_neigh"),
        },
        Case {
            what: "VLAN-tagged TCP to a VIP",
            input: vlan(&tcp, 100),
            expect: Expect::PassTranslated,
            counter: ("pass", "stack_vlan"),
        },
    ];
    let mut ttl1 = tcp.clone();
    ttl1.set_ttl(1);
    cases.push(Case {
        what: "TTL 1 to a VIP",
        input: ttl1,
        expect: Expect::PassUnchanged,
        counter: ("pass", "ttl_expired"),
    });
    let mut proto = tcp.clone();
    proto.set_protocol(47);
    cases.push(Case {
        what: "GRE to a VIP",
        input: proto,
        expect: Expect::PassUnchanged,
        counter: ("pass", "not_tcp_udp"),
    });
    let mut later = udp.clone();
    later.set_fragment(false, 16);
    cases.push(Case {
        what: "non-first IPv4 fragment to a VIP",
        input: later,
        expect: Expect::PassUnchanged,
        counter: ("pass", "fragment"),
    });
    let mut first = udp.clone();
    first.set_fragment(true, 0);
    cases.push(Case {
        what: "first IPv4 fragment to a VIP",
        input: first,
        expect: Expect::Drop,
        counter: ("drop", "fragmented_flow"),
    });
    let mut ihl = tcp.clone();
    ihl.raw_ihl(4);
    cases.push(Case {
        what: "IPv4 IHL 4",
        input: ihl,
        expect: Expect::Drop,
        counter: ("drop", "malformed_ipv4"),
    });
    let mut arp = tcp.clone();
    arp.set_ethertype(0x0806);
    cases.push(Case {
        what: "ARP",
        input: arp,
        expect: Expect::PassUnchanged,
        counter: ("pass", "not_ip"),
    });
    // Truncation at every header boundary (the frame cut one byte short of each header's
    // end). Below 14 bytes BPF_PROG_TEST_RUN refuses the input, so Ethernet truncation is
    // covered by the host unit tests.
    for (what, f, cut, reason) in [
        ("IPv4 header cut", &tcp, 14 + 19, "malformed_ipv4"),
        ("TCP header cut", &tcp, 14 + 20 + 19, "malformed_ipv4"),
        ("UDP header cut", &udp, 14 + 20 + 7, "malformed_ipv4"),
        ("IPv6 header cut", &t6, 14 + 39, "malformed_ipv6"),
        ("TCP/IPv6 header cut", &t6, 14 + 40 + 19, "malformed_ipv6"),
    ] {
        cases.push(Case {
            what,
            input: f[..cut].to_vec(),
            expect: Expect::Drop,
            counter: ("drop", reason),
        });
    }
    let tagged = vlan(&tcp, 5);
    cases.push(Case {
        what: "802.1Q tag cut",
        input: tagged[..16].to_vec(),
        expect: Expect::Drop,
        counter: ("drop", "malformed_vlan"),
    });
    // A consistent IPv4 packet whose TCP header is too short.
    let mut short = tcp[..14 + 20 + 10].to_vec();
    short.set_total_length(30);
    cases.push(Case {
        what: "TCP header shorter than 20 bytes",
        input: short,
        expect: Expect::Drop,
        counter: ("drop", "malformed_l4"),
    });
    cases
}

#[test]
fn every_case_of_the_table_gets_its_documented_verdict_and_counter() {
    with_env(|env| {
        let cases = cases();
        for case in &cases {
            let (action, out) = env.run(&case.input);
            match case.expect {
                Expect::PassUnchanged => {
                    assert_eq!(action, XDP_PASS, "{}: passed", case.what);
                    assert_eq!(out, case.input, "{}: unchanged", case.what);
                }
                Expect::PassTranslated => {
                    assert_eq!(action, XDP_PASS, "{}: passed", case.what);
                    assert_ne!(out, case.input, "{}: translated", case.what);
                    assert_checksums(&out);
                }
                Expect::Drop => assert_eq!(action, XDP_DROP, "{}: dropped", case.what),
            }
        }
        let r = env.stats();
        for case in &cases {
            let want = cases.iter().filter(|c| c.counter == case.counter).count() as u64;
            assert_eq!(
                r.packets(case.counter.0, case.counter.1),
                want,
                "{}: counted as {:?}",
                case.what,
                case.counter
            );
        }
    });
}

/// `sticky` (10.96.0.15:80, `sessionAffinity: ClientIP`, 1 s timeout) with the given lab
/// backends (1..=3).
fn sticky(backends: &[usize]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|i| format!("- {{addresses: [\"{}\"]}}\n", lab::backend_v4(*i)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky}}\nspec:\n  clusterIP: 10.96.0.15\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 1}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: sticky-1, labels: {{kubernetes.io/service-name: sticky}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{endpoints}"
    )
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_until_it_leaves_or_times_out() {
    with_env(|env| {
        let vip: IpAddr = "10.96.0.15".parse().unwrap();
        let clients: Vec<IpAddr> = (0..200u32)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 203, (i >> 8) as u8, i as u8 + 1)))
            .collect();
        let b1 = IpAddr::V4(lab::backend_v4(1));
        let new_flow = |env: &Env, client: IpAddr, sport: u16| {
            let (action, out) = env.run(&frame(true, client, vip, sport, 80, b""));
            assert_eq!(action, XDP_REDIRECT, "{client}:{sport}");
            summary(&out).dst
        };
        let base = all_manifests();

        // All flows of a client, whatever their source port, go to one backend: the one
        // the client hash picks (the agent's prediction).
        program(env, &format!("{base}\n---\n{}", sticky(&[1, 2, 3])));
        let mut used = BTreeSet::new();
        for client in &clients[..30] {
            let want = env.predict(*client, 1, vip, 80, Proto::TCP).ip;
            for sport in 50_000..50_004u16 {
                assert_eq!(
                    new_flow(env, *client, sport),
                    want,
                    "{client}: every flow on the predicted backend"
                );
            }
            used.insert(want);
        }
        assert_eq!(used.len(), 3, "clients spread over every backend");

        // Only b1: every client is remembered on it. Then b2 and b3 come back: the hash
        // would move most clients, but within the timeout each stays on b1.
        program(env, &format!("{base}\n---\n{}", sticky(&[1])));
        let started = std::time::Instant::now();
        for client in &clients {
            assert_eq!(new_flow(env, *client, 51_000), b1);
        }
        program(env, &format!("{base}\n---\n{}", sticky(&[1, 2, 3])));
        let moved: Vec<IpAddr> = clients
            .iter()
            .copied()
            .filter(|c| env.predict(*c, 1, vip, 80, Proto::TCP).ip != b1)
            .collect();
        assert!(
            moved.len() > 100,
            "the hash would move most clients: {}",
            moved.len()
        );
        for client in &moved[..20] {
            assert_eq!(
                new_flow(env, *client, 51_001),
                b1,
                "{client}: sticks to b1 within the timeout"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_millis(900),
            "the test itself was too slow"
        );
        assert!(env.stats().events["affinity_hit"] >= 20);

        // Once a client has been quiet for the timeout, it goes where the hash says. Each
        // probe uses a client not seen since the first round (a probe refreshes the
        // memory of the client it sticks).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut expired_after = None;
        for client in &moved[20..] {
            let want = env.predict(*client, 1, vip, 80, Proto::TCP).ip;
            if new_flow(env, *client, 51_002) == want {
                expired_after = Some(started.elapsed());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "affinity never expired"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let expired_after = expired_after.expect("a probe client went where the hash says");
        assert!(
            expired_after >= std::time::Duration::from_millis(950),
            "expired too early: {expired_after:?}"
        );

        // A backend that leaves the service takes no remembered client any more.
        let fresh: Vec<IpAddr> = (0..40u32)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 204, 0, i as u8 + 1)))
            .collect();
        for client in &fresh {
            new_flow(env, *client, 52_000);
        }
        program(env, &format!("{base}\n---\n{}", sticky(&[2, 3])));
        for client in &fresh {
            let got = new_flow(env, *client, 52_001);
            assert_ne!(got, b1, "{client}: b1 left the service");
        }
    });
}

/// A TCP frame with other flags (checksums kept right).
fn with_tcp_flags(mut f: Vec<u8>, flags: u8) -> Vec<u8> {
    f.set_tcp_flags(flags);
    f
}

#[test]
fn refused_syns_and_unreachable_backends_are_signalled_and_their_flows_rebalanced() {
    with_env(|env| {
        let mut signals = env.dp.signals().expect("signal ring");
        for (i, client) in CLIENT.into_iter().enumerate() {
            let vip: IpAddr = if client.is_ipv4() {
                "10.96.0.10"
            } else {
                "fd00:96::10"
            }
            .parse()
            .unwrap();
            let dns: IpAddr = if client.is_ipv4() {
                "10.96.0.11"
            } else {
                "fd00:96::11"
            }
            .parse()
            .unwrap();
            let before = env.stats();
            let count = |r: &xlb::stats::Report, e: &str| r.events[e];

            // A SYN, answered by the backend with RST+ACK: dropped, flow forgotten.
            let sport = 43_000 + i as u16 * 10;
            let syn = |sport| with_tcp_flags(frame(true, client, vip, sport, 80, b""), 0x02);
            let (action, out) = env.run(&syn(sport));
            assert_eq!(action, XDP_REDIRECT);
            let backend = summary(&out).dst;
            // The backend's RST+ACK acknowledges the SYN (its sequence number + 1).
            let rst_for = |backend: IpAddr, sport: u16| {
                let mut rst = with_tcp_flags(frame(true, backend, client, 8080, sport, b""), 0x14);
                rst.set_tcp_ack(TCP_SEQ + 1);
                rst
            };
            let rst = rst_for(backend, sport);
            // Not believed (each on a SYN of its own): from the client's side (a spoofed
            // backend address), with another acknowledgement number, or with a broken
            // checksum. Each goes on towards the client as any RST would, and counts
            // nothing.
            for (k, what, iface) in [
                (1u16, "from the client side", "toclient"),
                (2, "acknowledging something else", "toback"),
                (3, "with a bad checksum", "toback"),
            ] {
                let sport = sport + 100 + k;
                let (_, out) = env.run(&syn(sport));
                let mut f = rst_for(summary(&out).dst, sport);
                match k {
                    2 => {
                        f.set_tcp_ack(TCP_SEQ + 2);
                    }
                    3 => {
                        f.raw_tcp_checksum(0x1234);
                    }
                    _ => {}
                }
                let (action, _) = env.run_on(iface, &f);
                assert_ne!(action, XDP_DROP, "{client}: a RST {what} is not absorbed");
                assert_eq!(
                    env.stats().events["conn_refused"] - count(&before, "conn_refused"),
                    0,
                    "{client}: a RST {what} is no signal"
                );
            }
            assert!(signals.try_next().is_none());
            let (action, _) = env.run_on("toback", &rst);
            assert_eq!(
                action, XDP_DROP,
                "{client}: a RST answering the SYN is absorbed"
            );
            let after = env.stats();
            assert_eq!(
                after.packets("drop", "conn_refused") - before.packets("drop", "conn_refused"),
                1
            );
            assert_eq!(
                count(&after, "conn_refused") - count(&before, "conn_refused"),
                1
            );
            let id = env
                .applied
                .backend_id(&BackendKey {
                    ip: backend,
                    port: 8080,
                    proto: Proto::TCP,
                })
                .unwrap();
            let signal = signals
                .try_next()
                .expect("a signal for the refused connection");
            assert_eq!(
                (signal.kind, signal.backend_id),
                (lb_common::maps::SIGNAL_CONN_REFUSED, id)
            );
            assert_eq!(
                after
                    .backends
                    .iter()
                    .find(|b| b.id == id)
                    .unwrap()
                    .conn_refused,
                1
            );
            // The client's SYN retransmission is a new flow (balanced afresh).
            env.run(&syn(sport));
            assert_eq!(
                count(&env.stats(), "new_flow") - count(&after, "new_flow"),
                1
            );

            // A RST on an established connection is the client's business: forwarded.
            let sport = sport + 1;
            let (_, out) = env.run(&syn(sport));
            let backend = summary(&out).dst;
            env.run(&with_tcp_flags(
                frame(true, client, vip, sport, 80, b"x"),
                tcp::ACK,
            ));
            let backend_rst = with_tcp_flags(
                frame(true, backend, client, 8080, sport, b""),
                tcp::ACK | tcp::RST,
            );
            let reply_key = CtKey {
                src: Addr::from_ip(&backend),
                dst: Addr::from_ip(&client),
                sport_be: 8080u16.to_be(),
                dport_be: sport.to_be(),
                proto: Proto::TCP,
                family: Family::of(&client),
                _pad: [0; 2],
            };
            // Spoofed from the client's side: forwarded like any packet, but the flow's
            // state does not change (closing, it would expire after the short timeout).
            let state = env.ct_state(&reply_key);
            assert!(state.is_some_and(|s| s != lb_common::maps::CT_STATE_CLOSING));
            let (action, _) = env.run_on("toclient", &backend_rst);
            assert_ne!(action, XDP_DROP);
            assert_eq!(
                env.ct_state(&reply_key),
                state,
                "{client}: a RST from the client's side changes no state"
            );
            let (action, out) = env.run_on("toback", &backend_rst);
            assert_eq!(
                action, XDP_REDIRECT,
                "{client}: a RST of an established connection goes to the client"
            );
            assert_eq!(summary(&out).src, vip);
            assert_eq!(
                env.ct_state(&reply_key),
                Some(lb_common::maps::CT_STATE_CLOSING),
                "{client}: the backend's RST closes the flow"
            );

            // UDP: an ICMP port unreachable from the backend: counted, passed, flow forgotten.
            let sport = 5_000 + i as u16;
            let (_, out) = env.run(&frame(false, client, dns, sport, 53, b"q"));
            let backend = summary(&out).dst;
            let before = env.stats();
            // Not believed: from the client's side, or with a broken checksum.
            let mut bad_sum = unreachable_from(backend, client, &out);
            let icmp_sum = bad_sum.l4() + 2;
            bad_sum[icmp_sum] ^= 0x55;
            for (what, iface, f) in [
                (
                    "from the client side",
                    "toclient",
                    unreachable_from(backend, client, &out),
                ),
                ("with a bad checksum", "toback", bad_sum),
            ] {
                let (action, _) = env.run_on(iface, &f);
                assert_eq!(action, XDP_PASS);
                assert_eq!(
                    env.stats().packets("pass", "backend_unreachable")
                        - before.packets("pass", "backend_unreachable"),
                    0,
                    "{client}: an ICMP error {what} is no signal"
                );
            }
            assert!(signals.try_next().is_none());
            let (action, unchanged) =
                env.run_on("toback", &unreachable_from(backend, client, &out));
            assert_eq!(action, XDP_PASS);
            assert_eq!(
                unchanged,
                unreachable_from(backend, client, &out),
                "the ICMP message passes untouched"
            );
            let after = env.stats();
            assert_eq!(
                after.packets("pass", "backend_unreachable")
                    - before.packets("pass", "backend_unreachable"),
                1
            );
            let id = env
                .applied
                .backend_id(&BackendKey {
                    ip: backend,
                    port: 5353,
                    proto: Proto::UDP,
                })
                .unwrap();
            assert_eq!(
                after
                    .backends
                    .iter()
                    .find(|b| b.id == id)
                    .unwrap()
                    .unreachable,
                1
            );
            let signal = signals
                .try_next()
                .expect("a signal for the unreachable backend");
            assert_eq!(
                (signal.kind, signal.backend_id),
                (lb_common::maps::SIGNAL_UNREACHABLE, id)
            );
            env.run(&frame(false, client, dns, sport, 53, b"q"));
            assert_eq!(
                count(&env.stats(), "new_flow") - count(&after, "new_flow"),
                1,
                "the next datagram is a new flow"
            );

            // TCP: an ICMP error about the SYN counts only when it quotes the SYN's
            // sequence number; about the SYN as sent (DNATed), it does.
            let sport = 44_000 + i as u16;
            let (_, syn_out) = env.run(&syn(sport));
            let backend = summary(&syn_out).dst;
            let mut other_seq = syn_out.clone();
            let seq_at = other_seq.l4() + 4;
            other_seq[seq_at] ^= 0x80;
            let before = env.stats();
            env.run_on("toback", &unreachable_from(backend, client, &other_seq));
            assert_eq!(
                env.stats().packets("pass", "backend_unreachable")
                    - before.packets("pass", "backend_unreachable"),
                0,
                "{client}: an ICMP error quoting another sequence number is no signal"
            );
            assert!(signals.try_next().is_none());
            env.run_on("toback", &unreachable_from(backend, client, &syn_out));
            assert_eq!(
                env.stats().packets("pass", "backend_unreachable")
                    - before.packets("pass", "backend_unreachable"),
                1,
                "{client}: an ICMP error about the SYN counts"
            );
            assert!(signals.try_next().is_some());

            // An ICMP unreachable from someone else, or about an unknown flow: passed as before.
            let (action, _) = env.run(&unreachable_from(
                client,
                backend,
                &frame(false, backend, client, 1, 2, b""),
            ));
            assert_eq!(action, XDP_PASS);
            assert!(signals.try_next().is_none());
        }
    });
}
