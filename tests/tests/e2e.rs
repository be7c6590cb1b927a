//! End to end in a network-namespace lab: real agent, real XDP on veths, real servers and
//! clients. Needs root (run by `cargo xtask test`).

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb_tests::{
    client::TcpSession,
    lab::{DNS_V4, DNS_V6, WEB_V4, WEB_V6},
};

const CONNECTIONS: usize = 90;
const DATAGRAMS: usize = 90;

fn tcp_spread(lab: &xlb_tests::lab::Lab, vip: SocketAddr) -> BTreeMap<String, usize> {
    common::tcp_spread(lab, vip, CONNECTIONS)
}

fn udp_spread(lab: &xlb_tests::lab::Lab, vip: SocketAddr) -> BTreeMap<String, usize> {
    common::udp_spread(lab, vip, DATAGRAMS)
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

/// The default EndpointSlices without backend `b3` in the web Service.
fn web_without_b3() -> String {
    let (_, slices) = xlb_tests::lab::DEFAULT_MANIFESTS[1];
    let mut out = String::new();
    for doc in slices.split("\n---\n") {
        if doc.contains("name: web-") {
            let mut kept = Vec::new();
            let mut skip = 0;
            for line in doc.lines() {
                if line.contains("10.201.3.2") || line.contains("fd00:201:3::2") {
                    skip = 3; // the address line, its conditions and its nodeName
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                kept.push(line);
            }
            out.push_str(&kept.join("\n"));
        } else {
            out.push_str(doc);
        }
        out.push_str("\n---\n");
    }
    out
}

#[test]
fn established_connections_survive_the_removal_of_a_backend() {
    let mut lab = common::default_lab();
    for vip in [WEB_V4, WEB_V6] {
        // Long-lived connections spread over all three backends.
        let sessions = lab
            .client
            .run(move || {
                (0..30)
                    .map(|_| {
                        let mut s = TcpSession::connect(vip).unwrap();
                        let name = s.ask().unwrap();
                        (s, name)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
        let names: std::collections::BTreeSet<&str> = sessions.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names.len(), 3, "{vip}: connections on every backend");

        lab.update_manifest("endpointslices.yaml", &web_without_b3()).unwrap();

        // Every established connection keeps working with the same backend, including the
        // ones on b3 (still running, just no longer taking new flows).
        let after = lab
            .client
            .run(move || {
                sessions
                    .into_iter()
                    .map(|(mut s, before)| (before, s.ask().expect("established connection keeps working")))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        for (before, now) in &after {
            assert_eq!(before, now, "{vip}: a connection changed backend");
        }
        // New connections go to b1 and b2 only.
        let seen = tcp_spread(&lab, vip);
        assert!(!seen.contains_key("b3"), "{vip}: new connections avoid the removed backend: {seen:?}");
        assert_eq!(seen.len(), 2, "{vip}: {seen:?}");

        // Restore for the next family.
        lab.restore_default_manifests().unwrap();
    }
}

#[test]
fn attaches_in_generic_mode_where_native_xdp_is_missing() {
    // Loopback has no native XDP: the agent must fall back to generic mode, say so, and
    // still serve.
    xlb_tests::require_root().unwrap();
    let prefix = xlb_tests::run_prefix();
    let ns = xlb_tests::netns::Netns::create(&format!("{prefix}-gen")).unwrap();
    let bpffs = xlb_tests::bpffs::Bpffs::mount(&prefix).unwrap();
    let dir = xlb_tests::lab::TempDir(std::env::temp_dir().join(format!("{prefix}-m")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).arg(common::xlb_bin()).arg("agent");
    cmd.arg("--manifests").arg(&dir.0).arg("--bpffs").arg(bpffs.path().join("x")).args(["--interface", "lo"]);
    let mut agent = xlb_tests::process::Process::spawn("agent", cmd).unwrap();
    agent.wait_for("sync complete", std::time::Duration::from_secs(20)).unwrap();
    let out = agent.output().join("\n");
    assert!(out.contains("attached in generic mode"), "{out}");
    assert!(out.contains("mode=Skb"), "{out}");
}

#[test]
fn a_restarted_agent_adopts_the_pinned_maps_and_established_connections_survive() {
    let mut lab = common::default_lab();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let sessions = lab
            .client
            .run(|| {
                [WEB_V4, WEB_V6]
                    .into_iter()
                    .flat_map(|vip| (0..12).map(move |_| vip))
                    .map(|vip| {
                        let mut s = TcpSession::connect(vip).unwrap();
                        let name = s.ask().unwrap();
                        (s, name)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();

        lab.stop_agent(signal).unwrap();
        lab.start_agent(&common::xlb_bin(), &[]).unwrap();
        let out = lab.agent().output();
        assert!(out.iter().any(|l| l.contains("adopted the maps")), "signal {signal}: adopted: {out:#?}");
        let first_sync = out.iter().find(|l| l.contains("sync complete")).unwrap();
        assert!(first_sync.contains("writes=0"), "signal {signal}: the first sync rewrote nothing: {first_sync}");

        // Every connection opened before the restart still works, on the same backend
        // (the connection table was pinned, so it carried over).
        let after = lab
            .client
            .run(move || sessions.into_iter().map(|(mut s, before)| (before, s.ask().unwrap())).collect::<Vec<_>>())
            .unwrap();
        for (before, now) in &after {
            assert_eq!(before, now, "signal {signal}: a connection changed backend across the restart");
        }
        let seen = tcp_spread(&lab, WEB_V4);
        assert_eq!(seen.len(), 3, "new connections use every backend: {seen:?}");
    }
}

#[test]
fn editing_the_manifests_changes_new_connections_within_a_second() {
    let mut lab = common::default_lab();
    // No signal: the agent watches the directory.
    lab.write_manifest("endpointslices.yaml", &web_without_b3()).unwrap();
    let took = common::until_avoided(&lab, WEB_V4, "b3", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "b3 still took new connections {took:?} after the edit");
    lab.write_default_manifests().unwrap();
    let took = common::until_reached(&lab, WEB_V4, "b3", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "b3 took new connections only {took:?} after the edit");

    // Removing a file removes its objects: the Services go, and their frontends with them.
    assert_eq!(common::metric(&lab, "xlb_frontends"), Some(4.0));
    std::fs::remove_file(lab.manifests_dir().join("services.yaml")).unwrap();
    let took = common::time_until("the frontends to go", Duration::from_secs(5), || {
        common::metric(&lab, "xlb_frontends") == Some(0.0)
    });
    assert!(took < Duration::from_secs(1), "{took:?}");
    let out = lab.agent().output().join("\n");
    assert!(!out.contains("SIGHUP"), "no signal was needed");
}
