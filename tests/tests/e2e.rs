//! End to end in a network-namespace lab: real agent, real XDP on veths, real servers and
//! clients. Needs root (run by `cargo xtask test`).

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb_tests::lab::{DNS_V4, DNS_V6, WEB_V4, WEB_V6};

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
    common::slices_without("web", 3)
}

#[test]
fn established_connections_survive_the_removal_of_a_backend() {
    let mut lab = common::default_lab();
    for vip in [WEB_V4, WEB_V6] {
        // Long-lived connections spread over all three backends.
        let sessions = common::open_sessions(&lab, &[vip], 30);
        let names: std::collections::BTreeSet<&str> =
            sessions.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names.len(), 3, "{vip}: connections on every backend");

        lab.update_manifest("endpointslices.yaml", &web_without_b3())
            .unwrap();

        // Every established connection keeps working with the same backend, including the
        // ones on b3 (still running, just no longer taking new flows).
        common::assert_sessions_kept(&lab, sessions, &format!("{vip}: b3 removed"));
        // New connections go to b1 and b2 only.
        let seen = tcp_spread(&lab, vip);
        assert!(
            !seen.contains_key("b3"),
            "{vip}: new connections avoid the removed backend: {seen:?}"
        );
        assert_eq!(seen.len(), 2, "{vip}: {seen:?}");

        // Restore for the next family.
        lab.restore_default_manifests().unwrap();
    }
}

#[test]
fn attaches_in_generic_mode_where_native_xdp_is_missing() {
    // Loopback has no native XDP: the agent must fall back to generic mode, say so, and
    // still serve.
    let bed = common::LoopbackBed::new("gen");
    let mut agent = bed.agent(&[]);
    agent
        .wait_for("sync complete", std::time::Duration::from_secs(20))
        .unwrap();
    let out = agent.output().join("\n");
    assert!(out.contains("attached in generic mode"), "{out}");
    assert!(out.contains("mode=Skb"), "{out}");
}

#[test]
fn a_restarted_agent_adopts_the_pinned_maps_and_established_connections_survive() {
    let mut lab = common::default_lab();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let sessions = common::open_web_sessions(&lab, 12);

        lab.stop_agent(signal).unwrap();
        lab.start_agent(&common::xlb_bin(), &[]).unwrap();
        let out = lab.agent().output();
        assert!(
            out.iter().any(|l| l.contains("adopted the maps")),
            "signal {signal}: adopted: {out:#?}"
        );
        let first_sync = out.iter().find(|l| l.contains("sync complete")).unwrap();
        assert!(
            first_sync.contains("writes=0"),
            "signal {signal}: the first sync rewrote nothing: {first_sync}"
        );

        // Every connection opened before the restart still works, on the same backend
        // (the connection table was pinned, so it carried over).
        common::assert_sessions_kept(&lab, sessions, &format!("restart after signal {signal}"));
        let seen = tcp_spread(&lab, WEB_V4);
        assert_eq!(seen.len(), 3, "new connections use every backend: {seen:?}");
    }
}

#[test]
fn editing_the_manifests_changes_new_connections_within_a_second() {
    let mut lab = common::default_lab();
    // No signal: the agent watches the directory.
    lab.write_manifest("endpointslices.yaml", &web_without_b3())
        .unwrap();
    let took = common::until_avoided(&lab, WEB_V4, "b3", Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(1),
        "b3 still took new connections {took:?} after the edit"
    );
    lab.write_default_manifests().unwrap();
    let took = common::until_reached(&lab, WEB_V4, "b3", Duration::from_secs(5));
    assert!(
        took < Duration::from_secs(1),
        "b3 took new connections only {took:?} after the edit"
    );

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

#[test]
fn pins_of_an_incompatible_layout_are_refused_with_a_clear_error_and_cleanup_clears_them() {
    use aya::maps::{Array, Map, MapData};
    use lb_common::maps::{META, Meta};

    let bed = common::LoopbackBed::new("pin");
    let (ns, pins) = (&bed.ns, &bed.pins);
    let agent = || bed.agent(&[]);

    // A first agent creates the maps and leaves them pinned.
    let mut first = agent();
    first
        .wait_for("sync complete", Duration::from_secs(20))
        .unwrap();
    assert!(first.stop(Duration::from_secs(10)).unwrap().success());
    assert!(
        pins.join(META).exists(),
        "the maps stay pinned after a plain exit"
    );

    // Pretend another layout version created them.
    let data = MapData::from_pin(pins.join(META)).unwrap();
    let mut meta: Array<MapData, Meta> = Array::try_from(Map::Array(data)).unwrap();
    meta.set(
        0,
        Meta {
            layout_version: 999,
            _pad: 0,
        },
        0,
    )
    .unwrap();
    drop(meta);

    // The next agent refuses them, says why and what to do, and exits non-zero.
    let mut second = agent();
    let status = xlb_tests::wait::until(
        "the agent exits",
        Duration::from_secs(20),
        Duration::from_millis(10),
        || second.try_status(),
    )
    .unwrap();
    assert!(!status.success());
    let out = second.output().join("\n");
    assert!(out.contains("layout version is 999"), "{out}");
    assert!(
        out.contains(&format!("xlb cleanup --bpffs {}", pins.display())),
        "{out}"
    );
    assert!(pins.join(META).exists(), "refused pins are left alone");

    // `xlb cleanup` removes them; then an agent starts fresh.
    let cleanup = std::process::Command::new(common::xlb_bin())
        .args(["cleanup", "--bpffs"])
        .arg(pins)
        .output()
        .unwrap();
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(
        !ns.ip("-d link show dev lo").unwrap().contains("prog/xdp"),
        "xlb cleanup detaches the datapath"
    );
    assert!(!pins.exists(), "xlb cleanup removes every pin");
    let mut third = agent();
    third
        .wait_for("sync complete", Duration::from_secs(20))
        .unwrap();
    let out = third.output().join("\n");
    assert!(!out.contains("adopted the maps"), "{out}");
}

/// The capabilities deploy/daemonset.yaml grants the agent (securityContext.capabilities.add).
fn daemonset_capabilities() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let ds: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_lowercase())
        .collect()
}

#[test]
fn the_agent_serves_with_only_the_capabilities_the_daemonset_grants() {
    let caps = daemonset_capabilities();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut lab = xlb_tests::lab::Lab::build(3).unwrap();
    lab.start_servers(&common::server_bin()).unwrap();
    lab.write_default_manifests().unwrap();
    lab.agent_wrapper = vec!["setpriv".into(), "--bounding-set".into(), bounding];
    lab.start_agent(&common::xlb_bin(), &[]).unwrap();

    // The agent really runs with those capabilities and no others.
    let pid = lab.agent().pid();
    let child = xlb_tests::wait::until(
        "the agent process",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            // `ip netns exec` execs setpriv, which execs xlb: the pid stays the same.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status.lines().find_map(|l| {
                l.strip_prefix("CapEff:")
                    .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            })
        },
    )
    .unwrap();
    let expected = caps.iter().fold(0u64, |bits, c| {
        bits | 1
            << match c.as_str() {
                "net_admin" => 12,
                "sys_resource" => 24,
                "perfmon" => 38,
                "bpf" => 39,
                other => panic!("unexpected capability {other}"),
            }
    });
    // The test's own bounding set may lack one of them (a sandbox without
    // CAP_SYS_RESOURCE, say): then the agent runs with even fewer, which proves as much.
    let own = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("CapBnd:")
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .unwrap();
    if expected & !own != 0 {
        eprintln!(
            "note: this environment cannot grant capability bits {:#x}; the agent runs without them",
            expected & !own
        );
    }
    assert_eq!(child, expected & own, "effective capabilities {child:#x}");

    for vip in [WEB_V4, WEB_V6] {
        assert_eq!(tcp_spread(&lab, vip).len(), 3, "{vip}");
    }
    for vip in [DNS_V4, DNS_V6] {
        assert_eq!(udp_spread(&lab, vip).len(), 3, "{vip}");
    }
    // Hot reload (inotify) works under the same bounds.
    lab.write_manifest("endpointslices.yaml", &web_without_b3())
        .unwrap();
    common::until_avoided(&lab, WEB_V4, "b3", Duration::from_secs(5));

    // A restart under the same bounds adopts the pinned maps and tables: opening a
    // table by id would need CAP_SYS_ADMIN, so this shows the tables' own pins work.
    lab.stop_agent(libc::SIGKILL).unwrap();
    lab.start_agent(&common::xlb_bin(), &[]).unwrap();
    let out = lab.agent().output();
    let first_sync = out.iter().find(|l| l.contains("sync complete")).unwrap();
    assert!(
        out.iter().any(|l| l.contains("adopted the maps")),
        "{out:#?}"
    );
    assert!(
        first_sync.contains("writes=0"),
        "the adopted state was complete: {first_sync}"
    );
    lab.write_default_manifests().unwrap();
    common::until_reached(&lab, WEB_V4, "b3", Duration::from_secs(5));
    let out = lab.agent().output().join("\n");
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn by_default_the_datapath_outlives_the_agent_and_cleanup_on_exit_removes_it() {
    let bed = common::LoopbackBed::new("exit");
    let pins = &bed.pins;
    let attached = || bed.attached();
    for cleanup in [false, true] {
        let mut agent = bed.agent(if cleanup { &["--cleanup-on-exit"] } else { &[] });
        agent
            .wait_for("sync complete", Duration::from_secs(20))
            .unwrap();
        assert!(attached());
        assert!(agent.stop(Duration::from_secs(10)).unwrap().success());
        if cleanup {
            assert!(!attached(), "--cleanup-on-exit detaches");
            assert!(!pins.exists(), "--cleanup-on-exit removes the pins");
        } else {
            assert!(attached(), "a stopped agent leaves the datapath serving");
            assert!(pins.join("links/xdp-lo").exists());
        }
    }
}

/// Missing privileges are named, and a refused agent leaves no pins behind.
#[test]
fn an_agent_without_cap_bpf_says_so_and_leaves_no_pins() {
    xlb_tests::require_root().unwrap();
    let prefix = xlb_tests::run_prefix();
    let bpffs = xlb_tests::bpffs::Bpffs::mount(&prefix).unwrap();
    let ns = xlb_tests::netns::Netns::create(&format!("{prefix}-nocap")).unwrap();
    let dir =
        xlb_tests::lab::TempDir::create(std::env::temp_dir().join(format!("{prefix}-m"))).unwrap();
    let pins = bpffs.path().join("nocap");
    // Everything the DaemonSet grants except CAP_BPF (and no CAP_SYS_ADMIN, which would
    // stand in for it).
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "setpriv", "--bounding-set"])
        .arg("-all,+net_admin,+perfmon,+sys_resource")
        .arg(common::xlb_bin())
        .args(["agent", "--manifests"])
        .arg(&dir.0)
        .args(["--node-name", "n1", "--interface", "lo", "--no-socket-lb"])
        .args([
            "--no-pod-interfaces",
            "--metrics-addr",
            "127.0.0.1:0",
            "--bpffs",
        ])
        .arg(&pins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lack of privileges") && stderr.contains("CAP_BPF"),
        "names the capability: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no pins left behind: {left:?}");
}

/// `xlb stats` and `xlb cleanup` where no agent pinned anything say so.
#[test]
fn stats_and_cleanup_of_an_empty_path_say_that_nothing_is_pinned_there() {
    xlb_tests::require_root().unwrap();
    let prefix = xlb_tests::run_prefix();
    let bpffs = xlb_tests::bpffs::Bpffs::mount(&prefix).unwrap();
    let empty = bpffs.path().join("nothing-here");
    let run = |args: &[&str], path: &std::path::Path| {
        let out = std::process::Command::new(common::xlb_bin())
            .args(args)
            .arg("--bpffs")
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = run(&["stats"], &empty);
    assert!(!ok);
    assert!(err.contains("no xlb instance is pinned at"), "{err}");
    assert!(err.contains("--bpffs"), "{err}");
    let (ok, err) = run(&["stats"], std::path::Path::new("/proc/xlb-nothing"));
    assert!(!ok);
    assert!(err.contains("not on a bpf filesystem"), "{err}");
    let (ok, err) = run(&["cleanup"], &empty);
    assert!(ok, "{err}");
    assert!(err.contains("nothing to clean up"), "{err}");
}

/// A huge manifest file read and then removed: the agent's memory comes back down
/// (freed memory is handed back to the system, not kept at the peak).
#[test]
fn memory_returns_to_its_baseline_after_a_huge_manifest_file_is_gone() {
    let mut lab = common::default_lab();
    let pid = lab.agent().pid();
    let baseline = xlb_tests::process::rss_mib(pid).unwrap();
    // 4000 Services with 10 endpoints each.
    let mut text = String::new();
    for i in 0..4000u32 {
        let (a, b) = (i / 250, i % 250);
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big-{i}}}\nspec: {{clusterIP: 10.99.{a}.{b}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-{i}-1, labels: {{kubernetes.io/service-name: big-{i}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n"
        ));
        for j in 0..10 {
            text.push_str(&format!("- addresses: [\"10.{}.{a}.{}\"]\n", 100 + j, b));
        }
        text.push_str("---\n");
    }
    let syncs = lab.agent().count("sync complete");
    lab.write_manifest("big.yaml", &text).unwrap();
    lab.agent()
        .wait_for_count("sync complete", syncs + 1, Duration::from_secs(60))
        .unwrap();
    let peak = xlb_tests::process::rss_mib(pid).unwrap();
    let syncs = lab.agent().count("sync complete");
    std::fs::remove_file(lab.manifests_dir().join("big.yaml")).unwrap();
    lab.agent()
        .wait_for_count("sync complete", syncs + 1, Duration::from_secs(60))
        .unwrap();
    assert!(
        peak - baseline > 20.0,
        "the file costs memory: {baseline} -> {peak}"
    );
    // Released after the sync and again once the deferred work (retired backends, after
    // their grace period) is done: polled, within seconds.
    let limit = baseline + (peak - baseline) * 0.25;
    let mut after = xlb_tests::process::rss_mib(pid).unwrap();
    let started = std::time::Instant::now();
    while after > limit && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        after = xlb_tests::process::rss_mib(pid).unwrap();
    }
    eprintln!("agent RSS: baseline {baseline:.1} MiB, with the file {peak:.1}, after {after:.1}");
    assert!(
        after <= limit,
        "memory comes back down: baseline {baseline:.1}, peak {peak:.1}, after {after:.1} MiB"
    );
}

/// `xlb mount-bpffs` (the DaemonSet's init container) mounts a bpf filesystem where
/// there is none, leaves one that is there alone, and pin paths may lie deeper below it.
#[test]
fn mount_bpffs_mounts_once_and_pins_may_lie_deeper() {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    xlb_tests::require_root().unwrap();
    let dir = std::env::temp_dir().join(format!("{}-mnt", xlb_tests::run_prefix()));
    let _guard = Unmount(dir.clone());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::xlb_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let path = dir.to_str().unwrap();
    let (ok, err) = run(&["mount-bpffs", "--path", path]);
    assert!(ok && err.contains("mounted a bpf filesystem"), "{err}");
    let (ok, err) = run(&["mount-bpffs", "--path", path]);
    assert!(ok && err.contains("already"), "{err}");
    // Two levels below the mount, not created yet: a bpffs path all the same.
    let deep = dir.join("cluster/node-1");
    let (ok, err) = run(&["stats", "--bpffs", deep.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no xlb instance is pinned"), "{err}");
}

/// `--health-addr` serves the health endpoints apart from the metrics (kube-proxy's split:
/// health reachable from outside the node, metrics on localhost).
#[test]
fn health_endpoints_are_served_on_their_own_address_too() {
    let lab = common::lab_with_agent_args(&["--health-addr", "127.0.0.1:9465"]);
    let get = |path: &'static str| {
        lab.node
            .run(move || xlb_tests::http::get("127.0.0.1:9465".parse().unwrap(), path))
            .unwrap()
            .unwrap()
    };
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200, "ready after the first sync");
    assert_eq!(
        get("/metrics").0,
        404,
        "metrics stay on --metrics-addr only"
    );
    assert_eq!(common::agent_get(&lab, "/metrics").unwrap().0, 200);
}

/// `--max-backends` sizes the backend table (and its per-CPU counters): a node that needs
/// more says which Services it cannot program, and serves the rest.
#[test]
fn a_backend_table_too_small_is_reported_and_the_rest_served() {
    // The default Services need 12 backends (3 addresses x 2 families x TCP and UDP).
    let mut lab = common::lab_with_agent_args(&["--max-backends", "16"]);
    let info = aya::maps::MapInfo::from_pin(lab.pin_dir().join(lb_common::maps::BACKENDS)).unwrap();
    assert_eq!(info.max_entries(), 16, "the table has the size asked for");
    assert_eq!(tcp_spread(&lab, WEB_V4).len(), 3);
    // Four more Services of three new backends each (v4 and v6, TCP): 12 more backends
    // than the table holds.
    let mut extra = String::new();
    for i in 0..4 {
        extra.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: more-{i}}}\nspec: {{clusterIP: 10.96.1.{i}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: more-{i}-1, labels: {{kubernetes.io/service-name: more-{i}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n- addresses: [\"10.77.{i}.1\"]\n- addresses: [\"10.77.{i}.2\"]\n- addresses: [\"10.77.{i}.3\"]\n---\n"
        ));
    }
    lab.write_manifest("more.yaml", &extra).unwrap();
    lab.agent()
        .wait_for(
            "no free backend id (at most 16 backends)",
            Duration::from_secs(10),
        )
        .unwrap();
    for vip in [WEB_V4, WEB_V6] {
        assert_eq!(tcp_spread(&lab, vip).len(), 3, "{vip} still served");
    }
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local`: its `healthCheckNodePort`
/// answers as kube-proxy's service health server does, 200 with this node's usable
/// endpoint count while there are any, 503 when there are none, and closes with the
/// Service.
#[test]
fn health_check_node_ports_answer_with_the_local_endpoint_count() {
    let lab = common::lab_with_agent_args(&[]);
    let service = |nodes: [&str; 3]| {
        let mut t = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: lb-local}\nspec: {type: LoadBalancer, clusterIP: 10.96.2.1, externalTrafficPolicy: Local, healthCheckNodePort: 32100, ports: [{port: 80, targetPort: 8080, nodePort: 30100}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: lb-local-1, labels: {kubernetes.io/service-name: lb-local}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n",
        );
        for (i, node) in nodes.iter().enumerate() {
            t.push_str(&format!(
                "- {{addresses: [\"10.78.0.{}\"], nodeName: {node}}}\n",
                i + 1
            ));
        }
        t
    };
    let get = |lab: &xlb_tests::lab::Lab| {
        lab.node
            .run(|| xlb_tests::http::get("127.0.0.1:32100".parse().unwrap(), "/healthz"))
            .unwrap()
    };
    lab.write_manifest("lb.yaml", &service(["node-1", "node-1", "node-2"]))
        .unwrap();
    common::time_until("the health port answers", Duration::from_secs(10), || {
        get(&lab).is_ok_and(|(code, _)| code == 200)
    });
    let (_, body) = get(&lab).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["localEndpoints"], 2, "{body}");
    assert_eq!(v["service"]["name"], "lb-local", "{body}");
    // No endpoint on this node any more: 503, so load balancers skip the node.
    lab.write_manifest("lb.yaml", &service(["node-2", "node-2", "node-3"]))
        .unwrap();
    common::time_until(
        "503 without local endpoints",
        Duration::from_secs(10),
        || get(&lab).is_ok_and(|(code, body)| code == 503 && body.contains("\"localEndpoints\":0")),
    );
    // The Service goes: so does the port.
    std::fs::remove_file(lab.manifests_dir().join("lb.yaml")).unwrap();
    common::time_until("the port to close", Duration::from_secs(10), || {
        get(&lab).is_err()
    });
}

/// `--log-format json`: one JSON object per line, for log collectors.
#[test]
fn json_logs_are_one_object_per_line() {
    let mut lab = common::lab_with_agent_args(&["--log-format", "json"]);
    let lines = lab.agent().output();
    let sync = lines
        .iter()
        .find(|l| l.contains("sync complete"))
        .expect("a sync line");
    let v: serde_json::Value = serde_json::from_str(sync).expect("a JSON object");
    assert_eq!(v["fields"]["message"], "sync complete", "{sync}");
    assert!(
        v["level"].is_string() && v["timestamp"].is_string(),
        "{sync}"
    );
    for l in lines.iter().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}
