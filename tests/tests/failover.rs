//! High availability under continuous load in the netns lab: the agent killed and
//! restarted, the datapath upgraded, backends failing and returning. Each test reports the
//! requests that failed. Needs root (run by `cargo xtask test`).

mod common;

use std::time::Duration;

use xlb_tests::{
    lab::{DNS_V4, Lab, WEB_V4},
    load::{self, Kind, Load, LoadSpec},
};

/// The id of the XDP program attached to `interface` in the node namespace.
fn xdp_prog_id(lab: &Lab, interface: &str) -> Option<u32> {
    let out = lab.node.ip(&format!("-d link show dev {interface}")).ok()?;
    let rest = out.split("prog/xdp id ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn full_load(lab: &Lab) -> Load {
    let spec = LoadSpec {
        long_lived: 6,
        udp: Some(DNS_V4),
        ..LoadSpec::tcp(WEB_V4)
    };
    Load::start(&lab.client.path(), spec)
}

fn assert_no_failures(what: &str, records: &[load::Record]) {
    let failed = load::failures(records);
    let count = |k: fn(&Kind) -> bool| records.iter().filter(|r| k(&r.kind)).count();
    eprintln!(
        "{what}: {} new connections, {} long-lived requests, {} UDP requests, {} failed",
        count(|k| *k == Kind::NewConnection),
        count(|k| matches!(k, Kind::LongLived(_))),
        count(|k| *k == Kind::Udp),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed requests: {failed:#?}",
        failed.len()
    );
}

#[test]
fn kill_9_of_the_agent_and_a_restart_lose_no_request_and_reset_no_connection() {
    let mut lab = common::default_lab();
    let program = xdp_prog_id(&lab, "cli0").expect("attached");
    let load = full_load(&lab);
    load.wait_for_more(Kind::NewConnection, 50, Duration::from_secs(10));

    lab.stop_agent(libc::SIGKILL).unwrap();
    // With no agent at all, the datapath keeps serving from its pinned link and maps.
    load.wait_for_more(Kind::NewConnection, 200, Duration::from_secs(20));
    load.wait_for_more(Kind::Udp, 200, Duration::from_secs(20));
    assert_eq!(
        xdp_prog_id(&lab, "cli0"),
        Some(program),
        "the program stayed attached"
    );

    lab.start_agent(&common::xlb_bin(), &[]).unwrap();
    let out = lab.agent().output().join("\n");
    assert!(out.contains("took over the pinned link"), "{out}");
    assert!(out.contains("writes=0"), "{out}");
    load.wait_for_more(Kind::NewConnection, 200, Duration::from_secs(20));
    let new_program = xdp_prog_id(&lab, "cli0").expect("attached");
    assert_ne!(new_program, program, "the new agent's program runs");
    let records = load.stop();
    assert_no_failures("kill -9 and restart", &records);
}

#[test]
fn an_upgrade_to_a_rebuilt_program_loses_nothing() {
    let mut lab = common::default_lab();
    let before: Vec<Option<u32>> = lab
        .node_interfaces()
        .iter()
        .map(|i| xdp_prog_id(&lab, i))
        .collect();
    let load = full_load(&lab);
    load.wait_for_more(Kind::NewConnection, 50, Duration::from_secs(10));

    // The "new build": the same source with different constants compiled in (its
    // configuration is part of the program's read-only data), so the kernel verifies and
    // loads a different program. A graceful stop leaves the datapath serving; the new
    // agent swaps its program into every link (BPF_LINK_UPDATE), keeping the maps.
    lab.stop_agent(libc::SIGTERM).unwrap();
    load.wait_for_more(Kind::NewConnection, 50, Duration::from_secs(20));
    lab.start_agent(&common::xlb_bin(), &["--ct-udp-timeout", "61"])
        .unwrap();
    load.wait_for_more(Kind::NewConnection, 200, Duration::from_secs(20));
    load.wait_for_more(Kind::Udp, 100, Duration::from_secs(20));

    let after: Vec<Option<u32>> = lab
        .node_interfaces()
        .iter()
        .map(|i| xdp_prog_id(&lab, i))
        .collect();
    for ((i, b), a) in lab.node_interfaces().iter().zip(&before).zip(&after) {
        assert!(a.is_some() && a != b, "{i}: program {b:?} -> {a:?}");
    }
    let long_lived = load.long_lived_backends.clone();
    let records = load.stop();
    assert_no_failures("upgrade", &records);
    // Every long-lived connection stayed on its backend.
    for r in &records {
        if let (Kind::LongLived(i), Ok(name)) = (r.kind, &r.result) {
            assert_eq!(name, &long_lived[i], "long-lived connection {i} moved");
        }
    }
}
