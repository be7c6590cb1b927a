//! High availability under continuous load in the netns lab: the agent killed and
//! restarted, the datapath upgraded, backends failing and returning. Each test reports the
//! requests that failed. Needs root (run by `cargo xtask test`).
//! One concern (failover under load), many scenarios: hence its length.

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

/// The lab with the web Service carrying `annotations` and the agent started with `args`.
fn health_lab(annotations: &[(&str, &str)], args: &[&str]) -> Lab {
    let mut lab = Lab::build(3).expect("lab topology");
    lab.start_servers(&common::server_bin())
        .expect("backend servers");
    lab.write_default_manifests().unwrap();
    let (_, services) = xlb_tests::lab::DEFAULT_MANIFESTS[0];
    let mut block = String::from("  annotations:\n");
    for (k, v) in annotations {
        block.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    let anchor = "  name: web\n  namespace: default\n";
    assert!(services.contains(anchor));
    lab.write_manifest(
        "services.yaml",
        &services.replacen(anchor, &format!("{anchor}{block}"), 1),
    )
    .unwrap();
    lab.start_agent(&common::xlb_bin(), args).unwrap();
    lab
}

/// Kills b3's server (kill -9) under load and reports: how long after the kill new
/// connections still went to b3 (the last new connection that was slowed down by hitting
/// it: its SYN was refused, the RST absorbed, and the retransmission went elsewhere), and
/// the failed requests, which must be only the ones in flight on b3.
/// The time of an agent log line (`2026-11-22T21:07:16.465822Z ...`).
fn log_time(line: &str) -> std::time::SystemTime {
    let ts = line.split_whitespace().next().expect("timestamp");
    let num = |r: std::ops::Range<usize>| -> i64 { ts[r].parse().expect("timestamp field") };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    let frac: f64 = format!("0{}", &ts[19..ts.len() - 1]).parse().unwrap_or(0.0);
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(frac)
}

/// When the agent wrote the maps that took b3 out: the first sync after the line that
/// says it went down (`marker`).
fn b3_out_at(lab: &mut Lab, marker: &str) -> std::time::SystemTime {
    let out = lab.agent().output();
    let at = out
        .iter()
        .position(|l| l.contains(marker) && l.contains("10.201.3.2"))
        .unwrap_or_else(|| panic!("no {marker:?} for b3: {out:#?}"));
    let sync = out[at..]
        .iter()
        .find(|l| l.contains("sync complete"))
        .expect("a sync after it");
    log_time(sync)
}

fn kill_b3_under_load(
    lab: &mut Lab,
    threads: usize,
) -> (std::time::SystemTime, Duration, Vec<load::Record>, usize) {
    let spec = LoadSpec {
        long_lived: 9,
        tcp_threads: threads,
        pace: Duration::from_millis(5),
        ..LoadSpec::tcp(WEB_V4)
    };
    let load = Load::start(&lab.client.path(), spec);
    let on_b3 = load
        .long_lived_backends
        .iter()
        .filter(|b| *b == "b3")
        .count();
    load.wait_for_more(Kind::NewConnection, 100, Duration::from_secs(10));
    let server = lab.backends[2].server.as_mut().unwrap();
    server.signal(libc::SIGKILL).unwrap();
    let killed = std::time::Instant::now();
    let killed_at = std::time::SystemTime::now();
    xlb_tests::wait::until(
        "b3's server exits",
        Duration::from_secs(5),
        Duration::from_millis(1),
        || (!server.is_running()).then_some(()),
    )
    .unwrap();
    // Run on until every load thread has completed a connection that it started well
    // after the retransmission of any SYN absorbed around the kill (one second).
    xlb_tests::wait::until(
        "the load to run past the SYN retransmissions",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let late = load
                .records()
                .iter()
                .filter(|r| {
                    r.kind == Kind::NewConnection
                        && r.started >= killed + Duration::from_millis(1500)
                })
                .count();
            (late >= threads * 10).then_some(())
        },
    )
    .unwrap();
    let records = load.stop();
    let slowed: Vec<&load::Record> = records
        .iter()
        .filter(|r| {
            r.kind == Kind::NewConnection
                && r.started >= killed
                && r.at - r.started >= Duration::from_millis(900)
        })
        .collect();
    let avoided_after = slowed
        .iter()
        .map(|r| r.started - killed)
        .max()
        .unwrap_or_default();
    let after: Vec<&load::Record> = records
        .iter()
        .filter(|r| r.kind == Kind::NewConnection && r.started > killed)
        .collect();
    assert!(
        after.len() > 100,
        "the load went on: {} new connections after the kill",
        after.len()
    );
    assert!(
        after.iter().all(|r| r.result.as_deref() != Ok("b3")),
        "nothing is served by a dead server"
    );
    eprintln!(
        "killed b3: new connections still reached it for {avoided_after:?} ({} were slowed by a refused SYN, none failed for it)",
        slowed.len()
    );
    (killed_at, avoided_after, records, on_b3)
}

/// Failures must be only requests in flight on b3: its long-lived connections, and at
/// most one new connection per load thread (the one in progress at the kill).
fn assert_only_in_flight_failed(records: &[load::Record], on_b3: usize, threads: usize) {
    let failed_long: usize = records
        .iter()
        .filter(|r| matches!(r.kind, Kind::LongLived(_)) && r.result.is_err())
        .count();
    let failed_new: Vec<String> = records
        .iter()
        .filter(|r| r.kind == Kind::NewConnection && r.result.is_err())
        .map(|r| r.result.clone().unwrap_err())
        .collect();
    eprintln!(
        "failed: {failed_long} of the long-lived connections ({on_b3} were on b3), {} new connections (in flight at the kill: at most {threads})",
        failed_new.len()
    );
    assert!(
        failed_long <= on_b3,
        "only long-lived connections on b3 break"
    );
    assert!(
        failed_new.len() <= threads,
        "only new connections in flight on b3 fail: {failed_new:?}"
    );
}

#[test]
fn a_killed_backend_is_avoided_within_a_second_by_the_active_check_and_returns_after_its_threshold()
{
    let mut lab = health_lab(
        &[
            ("xlb.dev/health-check", "tcp"),
            ("xlb.dev/health-check-interval", "200ms"),
            ("xlb.dev/health-check-timeout", "200ms"),
            ("xlb.dev/health-check-unhealthy-threshold", "2"),
            ("xlb.dev/health-check-healthy-threshold", "3"),
        ],
        // Active checks only.
        &["--outlier-failures", "0"],
    );
    let threads = 4;
    let (killed_at, slowed, records, on_b3) = kill_b3_under_load(&mut lab, threads);
    let out_after = b3_out_at(&mut lab, "backend unhealthy")
        .duration_since(killed_at)
        .unwrap_or_default();
    eprintln!("active check: b3 out of the maps {out_after:?} after the kill");
    assert!(
        out_after < Duration::from_secs(1),
        "b3 left the maps only {out_after:?} after the kill"
    );
    assert!(slowed < Duration::from_secs(1));
    assert_only_in_flight_failed(&records, on_b3, threads);
    assert_eq!(
        common::metric(&lab, "xlb_health_probe_up{probe=\"tcp 10.201.3.2:8080\"}"),
        Some(0.0)
    );
    let out = lab.agent().output().join("\n");
    assert!(out.contains("backend unhealthy"), "{out}");
    assert!(
        !out.contains("passive detection"),
        "the active check found it: {out}"
    );

    // The backend returns: it takes new connections again once 3 checks in a row (200 ms
    // apart) passed, not before.
    lab.backends[2].start_server(&common::server_bin()).unwrap();
    let back = common::until_reached(&lab, WEB_V4, "b3", Duration::from_secs(5));
    eprintln!("b3 restarted: new connections reach it again after {back:?}");
    assert!(
        back >= Duration::from_millis(350),
        "it came back before its healthy threshold: {back:?}"
    );
    assert!(back < Duration::from_secs(2), "{back:?}");
    assert_eq!(
        common::metric(&lab, "xlb_health_probe_up{probe=\"tcp 10.201.3.2:8080\"}"),
        Some(1.0)
    );
}

#[test]
fn passive_detection_ejects_a_killed_backend_within_200ms_and_the_active_check_restores_it() {
    let mut lab = health_lab(
        &[
            // An active check too slow to matter here (it restores the backend later).
            ("xlb.dev/health-check", "tcp"),
            ("xlb.dev/health-check-interval", "5s"),
            ("xlb.dev/health-check-healthy-threshold", "1"),
        ],
        &["--outlier-failures", "3", "--outlier-window", "1s"],
    );
    let threads = 4;
    let (killed_at, slowed, records, on_b3) = kill_b3_under_load(&mut lab, threads);
    let out_after = b3_out_at(&mut lab, "backend ejected")
        .duration_since(killed_at)
        .unwrap_or_default();
    eprintln!("passive detection: b3 out of the maps {out_after:?} after the kill");
    assert!(
        out_after < Duration::from_millis(200),
        "b3 left the maps only {out_after:?} after the kill"
    );
    assert!(slowed < Duration::from_millis(200));
    assert_only_in_flight_failed(&records, on_b3, threads);
    let out = lab.agent().output().join("\n");
    assert!(out.contains("passive detection"), "{out}");
    assert!(common::metric(&lab, "xlb_backend_ejections_total").unwrap_or(0.0) >= 1.0);
    assert!(
        common::metric(&lab, "xlb_datapath_events_total{event=\"conn_refused\"}").unwrap_or(0.0)
            >= 3.0,
        "the datapath counted the refused connections"
    );

    // Restored through the active check (next check within 5 s, healthy after one).
    lab.backends[2].start_server(&common::server_bin()).unwrap();
    let back = common::until_reached(&lab, WEB_V4, "b3", Duration::from_secs(12));
    eprintln!("b3 restarted: back after {back:?}");
}

#[test]
fn every_backend_down_fails_open_and_says_so() {
    let mut lab = health_lab(
        &[
            ("xlb.dev/health-check", "tcp"),
            ("xlb.dev/health-check-interval", "100ms"),
            ("xlb.dev/health-check-timeout", "100ms"),
        ],
        &[],
    );
    for b in &mut lab.backends {
        b.server.as_mut().unwrap().signal(libc::SIGKILL).unwrap();
    }
    common::time_until("fail open", Duration::from_secs(5), || {
        common::metric(&lab, "xlb_services_fail_open") == Some(2.0)
    });
    let out = lab.agent().output().join("\n");
    assert!(
        out.contains("every backend is down: serving all of them (fail open)"),
        "{out}"
    );
    // The clients get the refusal at once (the RST is not absorbed in fail open).
    let refused = lab
        .client
        .run(|| {
            let started = std::time::Instant::now();
            let r = xlb_tests::client::tcp_ask(WEB_V4);
            (r.is_err(), started.elapsed())
        })
        .unwrap();
    assert!(
        refused.0 && refused.1 < Duration::from_millis(500),
        "{refused:?}"
    );
    // One comes back: fail open ends, and only it takes new connections.
    lab.backends[0].start_server(&common::server_bin()).unwrap();
    common::time_until("fail open to end", Duration::from_secs(5), || {
        common::metric(&lab, "xlb_services_fail_open") == Some(0.0)
    });
    let seen = common::tcp_spread(&lab, WEB_V4, 12);
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["b1"], "{seen:?}");
}

#[test]
fn a_udp_client_keeping_its_port_moves_off_a_removed_backend_and_tcp_drains() {
    let mut lab = common::lab_with_agent_args(&["--drain-timeout", "2s"]);

    // One UDP socket (one source port) and one TCP connection, each on some backend.
    let (sock, first) = lab
        .client
        .run(|| {
            let sock = xlb_tests::client::udp_socket(DNS_V4).unwrap();
            let (name, from) = xlb_tests::client::udp_ask(&sock, DNS_V4, 1).unwrap();
            assert_eq!(from, DNS_V4);
            // The same flow stays on its backend.
            for id in 2..5 {
                assert_eq!(
                    xlb_tests::client::udp_ask(&sock, DNS_V4, id).unwrap().0,
                    name
                );
            }
            (sock, name)
        })
        .unwrap();
    let mut session = lab
        .client
        .run(|| xlb_tests::client::TcpSession::connect(WEB_V4).unwrap())
        .unwrap();
    let tcp_backend = session.ask().unwrap();

    // Remove the UDP flow's backend from dns and the TCP one's from web.
    let udp_index: usize = first[1..].parse().unwrap();
    let tcp_index: usize = tcp_backend[1..].parse().unwrap();
    let mut text = String::new();
    let dns_without = common::slices_without("dns", udp_index);
    for doc in dns_without.split("\n---\n") {
        if doc.contains("name: web-") {
            let web_only = common::slices_without("web", tcp_index);
            let name = doc
                .lines()
                .find(|l| l.contains("name: web-"))
                .unwrap()
                .to_string();
            text.push_str(
                web_only
                    .split("\n---\n")
                    .find(|d| d.contains(&name))
                    .unwrap(),
            );
        } else {
            text.push_str(doc);
        }
        text.push_str("\n---\n");
    }
    lab.update_manifest("endpointslices.yaml", &text).unwrap();
    let removed = std::time::Instant::now();

    // UDP: the next datagram of the same socket is answered by another backend, from the VIP.
    let (next, from) = lab
        .client
        .run(move || xlb_tests::client::udp_ask(&sock, DNS_V4, 100).unwrap())
        .unwrap();
    assert_eq!(from, DNS_V4);
    assert_ne!(
        next, first,
        "the UDP flow stayed on the removed backend {first}"
    );
    assert!(
        common::metric(
            &lab,
            "xlb_flows_swept_total{reason=\"udp_backend_removed\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    // TCP: the established connection keeps its (removed, still running) backend until the
    // drain timeout, then its entries go and it ends.
    assert_eq!(session.ask().unwrap(), tcp_backend, "drained, not cut");
    let ended = common::time_until(
        "the drained connection to end",
        Duration::from_secs(6),
        || session.ask().is_err(),
    );
    let lived = removed.elapsed();
    eprintln!(
        "the drained TCP connection ended {lived:?} after its backend was removed (drain timeout 2 s; checked {ended:?})"
    );
    assert!(
        lived >= Duration::from_millis(1900),
        "cut before the drain timeout: {lived:?}"
    );
    assert!(
        common::metric(&lab, "xlb_flows_swept_total{reason=\"drain_timeout\"}").unwrap_or(0.0)
            >= 2.0
    );
}

#[test]
fn a_dead_udp_backend_is_ejected_through_the_icmp_unreachable_it_sends() {
    let mut lab = Lab::build(3).expect("lab topology");
    lab.start_servers(&common::server_bin()).unwrap();
    lab.write_default_manifests().unwrap();
    // No active check on the UDP Service: only passive detection can find it.
    lab.start_agent(&common::xlb_bin(), &[]).unwrap();
    lab.backends[2]
        .server
        .as_mut()
        .unwrap()
        .signal(libc::SIGKILL)
        .unwrap();
    let killed_at = std::time::SystemTime::now();
    // Datagrams from fresh sockets (fresh flows) until b3 is ejected: those that reach
    // b3 are answered by an ICMP port unreachable from its kernel.
    let ejected = |lab: &mut Lab| {
        lab.agent()
            .output()
            .iter()
            .any(|l| l.contains("backend ejected") && l.contains("10.201.3.2:5353/udp"))
    };
    let started = std::time::Instant::now();
    while !ejected(&mut lab) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b3 was not ejected"
        );
        lab.client
            .run(|| {
                let socks: Vec<_> = (0..12)
                    .map(|_| xlb_tests::client::udp_socket(DNS_V4).unwrap())
                    .collect();
                for (i, s) in socks.iter().enumerate() {
                    s.send_to(format!("req {i}").as_bytes(), DNS_V4).unwrap();
                }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let out_after = b3_out_at(&mut lab, "backend ejected")
        .duration_since(killed_at)
        .unwrap_or_default();
    eprintln!("dead UDP backend out of the maps {out_after:?} after the kill");
    assert!(out_after < Duration::from_secs(1), "{out_after:?}");
    let seen = common::udp_spread(&lab, DNS_V4, 30);
    assert!(
        !seen.contains_key("b3") && seen.values().sum::<usize>() == 30,
        "{seen:?}"
    );
    assert!(
        common::metric(
            &lab,
            "xlb_datapath_events_total{event=\"backend_unreachable\"}"
        )
        .unwrap_or(0.0)
            >= 3.0
    );
}

#[test]
fn flows_of_a_terminating_endpoint_udp_included_keep_it_until_the_drain_timeout() {
    let mut lab = common::lab_with_agent_args(&["--drain-timeout", "2s"]);
    let (sock, first) = lab
        .client
        .run(|| {
            let sock = xlb_tests::client::udp_socket(DNS_V4).unwrap();
            let name = xlb_tests::client::udp_ask(&sock, DNS_V4, 1).unwrap().0;
            (sock, name)
        })
        .unwrap();
    // Its endpoint starts a graceful shutdown: serving, terminating, not ready.
    let i: usize = first[1..].parse().unwrap();
    let (_, slices) = xlb_tests::lab::DEFAULT_MANIFESTS[1];
    let mut text = String::new();
    for doc in slices.split("\n---\n") {
        if doc.contains("name: dns-ipv4") {
            let addr = format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: true}}",
                xlb_tests::lab::backend_v4(i)
            );
            assert!(doc.contains(&addr), "{doc}");
            let terminating = format!(
                "- addresses: [\"{}\"]\n  conditions: {{ready: false, serving: true, terminating: true}}",
                xlb_tests::lab::backend_v4(i)
            );
            text.push_str(&doc.replace(&addr, &terminating));
        } else {
            text.push_str(doc);
        }
        text.push_str("\n---\n");
    }
    lab.update_manifest("endpointslices.yaml", &text).unwrap();
    let changed = std::time::Instant::now();
    // New flows avoid it; the existing one keeps it...
    let seen = common::udp_spread(&lab, DNS_V4, 30);
    assert!(
        !seen.contains_key(&first),
        "new flows avoid the terminating endpoint: {seen:?}"
    );
    let sock = std::sync::Arc::new(sock);
    let ask = |lab: &Lab, id: u64| {
        let s = sock.clone();
        lab.client
            .run(move || xlb_tests::client::udp_ask(&s, DNS_V4, id).unwrap().0)
            .unwrap()
    };
    assert_eq!(
        ask(&lab, 2),
        first,
        "the UDP flow keeps its terminating endpoint"
    );
    // ...until the drain timeout, then it moves.
    let mut id = 3;
    common::time_until("the UDP flow to move", Duration::from_secs(6), || {
        id += 1;
        ask(&lab, id) != first
    });
    let moved = changed.elapsed();
    eprintln!(
        "the UDP flow left its terminating endpoint {moved:?} after the change (drain timeout 2 s)"
    );
    assert!(moved >= Duration::from_millis(1900), "{moved:?}");
}
