//! `xlb agent --kubernetes` end to end: the agent in the lab's node namespace watches an
//! in-test API server (`xlb_tests::apiserver`: the real list/watch protocol with resource
//! versions, watch events, bookmarks, `410 Gone`, dropped connections and outages) and
//! real traffic flows through its datapath. No kube-apiserver binary can be obtained on
//! these machines, hence the in-test server. Needs root (run by `cargo xtask test`).

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use xlb_tests::{
    apiserver::{ApiServer, Resource},
    client::{self, TcpSession},
    lab::{self, DNS_V4, Lab, WEB_V4, WEB_V6},
    netns,
};

/// The lab's default Services and EndpointSlices as API objects, and this node.
fn default_objects() -> Vec<Value> {
    let mut loaded = xlb::sources::manifests::Loaded::default();
    for (name, text) in lab::DEFAULT_MANIFESTS {
        xlb::sources::manifests::load_text(std::path::Path::new(name), text, &mut loaded);
    }
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let strip = |mut v: Value| {
        // The manifests source's own bookkeeping, not part of the objects.
        if let Some(a) = v["metadata"]["annotations"].as_object_mut() {
            a.remove(xlb::store::ORIGIN_ANNOTATION);
        }
        v
    };
    let mut objects: Vec<Value> = loaded
        .services
        .iter()
        .map(|s| strip(serde_json::to_value(&s.object).unwrap()))
        .collect();
    objects.extend(
        loaded
            .slices
            .iter()
            .map(|s| strip(serde_json::to_value(&s.object).unwrap())),
    );
    objects.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.200.0.1"}]},
    }));
    objects
}

/// A default EndpointSlice (by name) without the endpoints of backend `i`.
fn slice_without(name: &str, i: usize) -> Value {
    let mut slice = default_objects()
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .expect("a default slice");
    let gone = [
        lab::backend_v4(i).to_string(),
        lab::backend_v6(i).to_string(),
    ];
    slice["endpoints"].as_array_mut().unwrap().retain(|e| {
        !gone
            .iter()
            .any(|g| e["addresses"][0].as_str() == Some(g.as_str()))
    });
    slice
}

fn default_slice(name: &str) -> Value {
    default_objects()
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .expect("a default slice")
}

struct KubeLab {
    lab: Lab,
    api: ApiServer,
}

/// The lab, an API server in the node namespace holding the default objects, and (with
/// `start`) the agent watching it, after its first sync.
fn kube_lab(start: bool) -> KubeLab {
    let mut lab = Lab::build(3).expect("lab topology");
    lab.start_servers(&common::server_bin())
        .expect("backend servers");
    let ns = lab.node.path();
    let api = ApiServer::start(
        move |addr: SocketAddr| {
            netns::run_in(&ns, move || std::net::TcpListener::bind(addr))
                .map_err(std::io::Error::other)?
        },
        Duration::from_millis(200),
    )
    .expect("API server");
    for obj in default_objects() {
        api.apply(obj);
    }
    let kubeconfig = lab.dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let mut k = KubeLab { lab, api };
    if start {
        k.start_agent();
    }
    k
}

impl KubeLab {
    fn source(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--kubernetes".into(),
            "--kubeconfig".into(),
            self.lab.dir.0.join("kubeconfig").into_os_string(),
        ]
    }

    fn start_agent(&mut self) {
        let source = self.source();
        self.lab
            .start_agent_with(&common::xlb_bin(), &source, &[])
            .expect("agent");
    }
}

#[test]
fn endpoint_changes_reach_new_connections_within_a_second() {
    let k = kube_lab(true);
    for (vip, slice) in [(WEB_V4, "web-ipv4"), (WEB_V6, "web-ipv6")] {
        assert_eq!(
            common::tcp_spread(&k.lab, vip, 60).len(),
            3,
            "{vip}: every backend serves"
        );
        k.api.apply(slice_without(slice, 3));
        let took = common::until_avoided(&k.lab, vip, "b3", Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(1),
            "{vip}: b3 kept taking new connections for {took:?}"
        );
        k.api.apply(default_slice(slice));
        let took = common::until_reached(&k.lab, vip, "b3", Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(1),
            "{vip}: b3 took new connections only after {took:?}"
        );
    }
    // A deleted slice takes its endpoints with it.
    assert!(
        k.api
            .delete(Resource::EndpointSlices, "default", "web-ipv4")
    );
    common::time_until(
        "the IPv4 web frontend to lose its backends",
        Duration::from_secs(5),
        || common::metric(&k.lab, "xlb_backends").is_some_and(|b| b < 12.0),
    );
    let latency = common::metric(&k.lab, "xlb_programming_latency_seconds_count").unwrap();
    assert!(
        latency >= 5.0,
        "programming latency observed for each change: {latency}"
    );
}

/// Requests through the VIPs in a loop on another thread, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let path = lab.client.path();
        let thread = std::thread::spawn(move || {
            netns::run_in(&path, move || {
                let mut i = 0u64;
                while !s.load(Ordering::Relaxed) {
                    i += 1;
                    for vip in [WEB_V4, WEB_V6] {
                        match TcpSession::connect(vip).and_then(|mut c| c.ask()) {
                            Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                f.lock().unwrap().push(format!("TCP {vip}: {e}"));
                                0
                            }
                        };
                    }
                    let sock = client::udp_socket(DNS_V4).unwrap();
                    match client::udp_ask(&sock, DNS_V4, i) {
                        Ok(_) => o.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            f.lock().unwrap().push(format!("UDP {DNS_V4}: {e}"));
                            0
                        }
                    };
                }
            })
            .expect("client thread");
        });
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops; returns (requests answered, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}

#[test]
fn an_api_outage_loses_no_request_and_the_resync_leaves_unchanged_services_alone() {
    let mut k = kube_lab(true);
    let traffic = Traffic::start(&k.lab);
    common::time_until("traffic to flow", Duration::from_secs(5), || {
        traffic.ok.load(Ordering::Relaxed) > 30
    });
    let writes_before = common::metric(&k.lab, "xlb_map_writes_total").unwrap();
    let syncs_before = k.lab.agent().count("sync complete");

    // The API server goes away for several seconds. Meanwhile the web Service loses b3
    // on IPv4 and the history is compacted, so the agent's watches cannot resume: they must
    // relist (410 Gone).
    k.api.go_down();
    let down_at = std::time::Instant::now();
    common::time_until(
        "the agent to notice the outage",
        Duration::from_secs(15),
        || k.lab.agent().count("Kubernetes API:") > 0,
    );
    k.api.apply(slice_without("web-ipv4", 3));
    k.api.compact();
    let elapsed = down_at.elapsed();
    if elapsed < Duration::from_secs(4) {
        // The outage itself is the condition under test: it must last.
        std::thread::sleep(Duration::from_secs(4) - elapsed);
    }
    let served_during_outage = traffic.ok.load(Ordering::Relaxed);
    k.api.come_up().expect("API server back");

    // The change made during the outage arrives through a relist (once the watchers'
    // backoff lets them retry: at most 30 s, as kube-proxy's client-go reflectors).
    k.lab
        .agent()
        .wait_for_count("sync complete", syncs_before + 1, Duration::from_secs(60))
        .unwrap();
    let spread = common::tcp_spread(&k.lab, WEB_V4, 60);
    assert!(
        !spread.contains_key("b3"),
        "the change made during the outage is programmed: {spread:?}"
    );
    let (ok, failed) = traffic.finish();
    assert!(
        failed.is_empty(),
        "requests failed around the outage: {failed:?}"
    );
    assert!(
        ok > served_during_outage && served_during_outage > 30,
        "traffic flowed throughout ({ok})"
    );

    let seen = k.api.seen();
    assert!(seen.expired >= 1, "a watch was answered 410 Gone: {seen:?}");
    // The relist dirtied only the changed Service: one incremental sync, a handful of
    // writes (its IPv4 table and frontend, the retired backend), nothing for the others.
    let out = k.lab.agent().output();
    let resyncs: Vec<&String> = out
        .iter()
        .filter(|l| l.contains("sync complete"))
        .skip(syncs_before)
        .collect();
    assert!(!resyncs.is_empty());
    for l in &resyncs {
        assert!(
            l.contains("full=false") && l.contains("translated=1"),
            "only the changed Service was re-translated: {l}"
        );
    }
    let writes = common::metric(&k.lab, "xlb_map_writes_total").unwrap() - writes_before;
    assert!(
        (1.0..=4.0).contains(&writes),
        "{writes} map writes for one changed slice"
    );
}

#[test]
fn watches_resume_after_dropped_connections_and_relist_after_410() {
    let k = kube_lab(true);
    common::time_until("bookmarks", Duration::from_secs(5), || {
        k.api.seen().bookmarks_sent >= 6
    });
    let lists_before = k.api.seen().lists;

    // Dropped watch connections: the watches resume from the last resource version
    // (bookmarks keep it recent), without a relist.
    k.api.drop_watches();
    k.api.apply(slice_without("web-ipv4", 2));
    let took = common::until_avoided(&k.lab, WEB_V4, "b2", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "{took:?}");
    let seen = k.api.seen();
    assert_eq!(
        seen.lists, lists_before,
        "resumed without relisting: {seen:?}"
    );
    assert!(
        seen.watch_from.iter().any(|rv| *rv > 0),
        "watches resumed from a resource version"
    );

    // After compaction the resumed watches get 410 Gone and relist.
    k.api.compact();
    k.api.drop_watches();
    k.api.apply(default_slice("web-ipv4"));
    let took = common::until_reached(&k.lab, WEB_V4, "b2", Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Watches that had seen nothing newer than the compaction point got 410 and relist
    // (after the watcher's backoff).
    let seen = k.api.seen();
    assert!(seen.expired >= 1, "resumed watches got 410: {seen:?}");
    common::time_until(
        "a relist for every expired watch",
        Duration::from_secs(10),
        || {
            let seen = k.api.seen();
            seen.lists >= lists_before + seen.expired
        },
    );
}

#[test]
fn established_connections_of_one_service_survive_updates_to_another() {
    let k = kube_lab(true);
    let sessions = common::open_web_sessions(&k.lab, 15);
    // Churn on the DNS Service, and a Service coming and going.
    for round in 0..20 {
        let i = round % 3 + 1;
        k.api.apply(slice_without("dns-ipv4", i));
        k.api.apply(slice_without("dns-ipv6", i));
        if round % 2 == 0 {
            k.api.apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "extra", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}]},
            }));
        } else {
            k.api.delete(Resource::Services, "default", "extra");
        }
    }
    k.api.apply(default_slice("dns-ipv4"));
    let lab = &k.lab;
    common::time_until("the churn to settle", Duration::from_secs(5), || {
        common::udp_spread(lab, DNS_V4, 12).len() == 3
    });
    common::assert_sessions_kept(&k.lab, sessions, "churn on another service");
}

#[test]
fn ready_only_after_the_first_sync_and_metrics_describe_the_datapath() {
    let mut k = kube_lab(false);
    // Start with the API server down: the agent runs and is healthy, but not ready.
    k.api.go_down();
    let source = k.source();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", k.lab.node.name()])
        .arg(common::xlb_bin())
        .arg("agent")
        .args(&source);
    cmd.args(["--node-name", "node-1", "--bpffs"])
        .arg(k.lab.pin_dir())
        .arg("--cgroup")
        .arg(k.lab.cgroup.path());
    for i in k.lab.node_interfaces() {
        cmd.args(["--interface", &i]);
    }
    k.lab.agent = Some(xlb_tests::process::Process::spawn("agent", cmd).unwrap());
    let lab = &k.lab;
    common::time_until("/healthz", Duration::from_secs(10), || {
        common::agent_get(lab, "/healthz").is_ok_and(|(code, _)| code == 200)
    });
    let (code, body) = common::agent_get(&k.lab, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready before the first sync: {body}");

    k.api.come_up().unwrap();
    let lab = &k.lab;
    common::time_until("/readyz", Duration::from_secs(60), || {
        common::agent_get(lab, "/readyz").is_ok_and(|(code, _)| code == 200)
    });
    common::tcp_spread(&k.lab, WEB_V4, 30);
    // Datapath counters are labelled with service names once the agent has published
    // them (off the sync path, within a second).
    let lab = &k.lab;
    common::time_until("named service counters", Duration::from_secs(5), || {
        common::metric(
            lab,
            "xlb_service_new_flows_total{service=\"default/web:http/ipv4\"}",
        )
        .is_some_and(|n| n >= 30.0)
    });
    let (_, m) = common::agent_get(&k.lab, "/metrics").unwrap();
    let sample = |s: &str| xlb_tests::http::sample(&m, s).unwrap_or_else(|| panic!("{s} in\n{m}"));
    assert!(
        m.lines().any(|l| l.starts_with("xlb_build_info{")
            && l.contains("version=\"")
            && l.ends_with(" 1")),
        "build info in\n{m}"
    );
    assert_eq!(sample("xlb_services"), 4.0);
    assert_eq!(sample("xlb_frontends"), 4.0);
    assert_eq!(sample("xlb_backends"), 12.0);
    assert!(sample("xlb_programming_latency_seconds_count") >= 1.0);
    assert!(
        sample("xlb_sync_errors_total{kind=\"source\"}") >= 1.0,
        "the outage was counted"
    );
    assert!(sample("xlb_datapath_events_total{event=\"new_flow\"}") >= 30.0);
    // Replies of the 30 connections, and their established packets, went through XDP.
    assert!(
        sample("xlb_datapath_packets_total{verdict=\"redirect\",reason=\"forward_reply\"}") >= 30.0
    );
    assert!(
        sample("xlb_datapath_packets_total{verdict=\"redirect\",reason=\"forward_established\"}")
            >= 30.0
    );
}

/// Objects xlb cannot serve are reported where users look: a Warning Event on the
/// Service (events.k8s.io/v1, naming the reason), besides the log and the metric; the
/// rest keeps working.
#[test]
fn services_xlb_cannot_serve_get_events_and_the_rest_keeps_working() {
    let k = kube_lab(true);
    // Rejected: a malformed xlb annotation.
    k.api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad-weights", "namespace": "default",
                     "annotations": {"xlb.dev/endpoint-weights": "web-1=lots"}},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    // A VIP and port another Service has.
    k.api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "same-vip", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]},
    }));
    // An SCTP port: not supported, reported, the TCP port served.
    k.api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "with-sctp", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.31", "ports": [
            {"name": "tcp", "port": 80, "targetPort": 8080},
            {"name": "sctp", "port": 9999, "protocol": "SCTP", "targetPort": 9999},
        ]},
    }));
    let reasons = |api: &ApiServer| -> Vec<(String, String, String, String)> {
        api.events()
            .iter()
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or("").to_string();
                (
                    s(&e["regarding"]["name"]),
                    s(&e["reason"]),
                    s(&e["type"]),
                    s(&e["regarding"]["uid"]),
                )
            })
            .collect()
    };
    let want = [
        ("bad-weights", "Rejected"),
        ("same-vip", "FrontendConflict"),
        ("with-sctp", "Skipped"),
    ];
    common::time_until("an event for each", Duration::from_secs(10), || {
        let got = reasons(&k.api);
        want.iter()
            .all(|(n, r)| got.iter().any(|g| g.0 == *n && g.1 == *r))
    });
    for (name, reason, kind, uid) in reasons(&k.api) {
        assert_eq!(kind, "Warning", "{name}: {reason}");
        assert_eq!(
            uid,
            format!("uid-Service-default-{name}"),
            "{name}: the Service's uid"
        );
    }
    let events = k.api.events();
    let note = |name: &str| {
        events
            .iter()
            .find(|e| e["regarding"]["name"] == name)
            .and_then(|e| e["note"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(
        note("bad-weights").contains("xlb.dev/endpoint-weights"),
        "{}",
        note("bad-weights")
    );
    assert!(note("with-sctp").contains("SCTP"), "{}", note("with-sctp"));
    // Everything else is served: the web VIP by its first owner, DNS as before.
    let lab = &k.lab;
    let spread = common::udp_spread(lab, DNS_V4, 30);
    assert_eq!(spread.len(), 3, "{spread:?}");
    let answered = lab
        .client
        .run(|| client::tcp_ask(WEB_V4))
        .unwrap()
        .expect("the web VIP answers");
    assert!(!answered.is_empty(), "{answered}");
}
