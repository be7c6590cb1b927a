//! Helpers shared by the privileged test files.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use xlb_tests::{
    client::{self, TcpSession},
    lab::Lab,
};

/// The `xlb` binary under test: `XLB_BIN` (set by `cargo xtask test`), or the debug build.
pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xlb");
    assert!(
        p.is_file(),
        "no xlb binary at {}: run the tests with `cargo xtask test` (or set XLB_BIN)",
        p.display()
    );
    p
}

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab-server"))
}

/// A lab with three backends serving, the default manifests and a running agent.
pub fn default_lab() -> Lab {
    lab_with_agent_args(&[])
}

/// [`default_lab`] with extra arguments for the agent.
pub fn lab_with_agent_args(args: &[&str]) -> Lab {
    let mut lab = Lab::build(3).expect("lab topology");
    lab.start_servers(&server_bin()).expect("backend servers");
    lab.write_default_manifests().expect("manifests");
    lab.start_agent(&xlb_bin(), args).expect("agent");
    lab
}

/// A namespace with only loopback, a bpffs and an (empty) manifests directory, for
/// agents attached to `lo` (generic XDP): tests of the agent's own life cycle.
pub struct LoopbackBed {
    pub ns: xlb_tests::netns::Netns,
    pub pins: PathBuf,
    pub dir: xlb_tests::lab::TempDir,
    _bpffs: xlb_tests::bpffs::Bpffs,
}

impl LoopbackBed {
    pub fn new(name: &str) -> Self {
        xlb_tests::require_root().unwrap();
        let prefix = xlb_tests::run_prefix();
        let ns = xlb_tests::netns::Netns::create(&format!("{prefix}-{name}")).unwrap();
        let bpffs = xlb_tests::bpffs::Bpffs::mount(&prefix).unwrap();
        let dir = xlb_tests::lab::TempDir(std::env::temp_dir().join(format!("{prefix}-m")));
        std::fs::create_dir_all(&dir.0).unwrap();
        Self {
            ns,
            pins: bpffs.path().join("x"),
            dir,
            _bpffs: bpffs,
        }
    }

    /// Starts `xlb agent` on `lo` (not waiting for anything).
    pub fn agent(&self, extra: &[&str]) -> xlb_tests::process::Process {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(xlb_bin())
            .arg("agent");
        cmd.arg("--manifests")
            .arg(&self.dir.0)
            .arg("--bpffs")
            .arg(&self.pins);
        cmd.args(["--interface", "lo", "--no-socket-lb"])
            .args(extra);
        xlb_tests::process::Process::spawn("agent", cmd).unwrap()
    }

    /// Whether an XDP program is attached to `lo`.
    pub fn attached(&self) -> bool {
        self.ns
            .ip("-d link show dev lo")
            .unwrap()
            .contains("prog/xdp")
    }
}

/// `n` TCP connections (each from its own ephemeral source port) through a VIP; returns
/// how many each backend served. Every connection must be established with the VIP itself.
pub fn tcp_spread(lab: &Lab, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    lab.client
        .run(move || {
            let mut seen = BTreeMap::new();
            for i in 0..n {
                let mut s = TcpSession::connect(vip)
                    .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                assert_eq!(s.peer().unwrap(), vip, "the connection is with the VIP");
                let name = s
                    .ask()
                    .unwrap_or_else(|e| panic!("request {i} to {vip}: {e}"));
                *seen.entry(name).or_insert(0) += 1;
            }
            seen
        })
        .expect("client thread")
}

/// `n` UDP requests from distinct sockets through a VIP; every reply must come from the VIP.
pub fn udp_spread(lab: &Lab, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    lab.client
        .run(move || {
            let mut seen = BTreeMap::new();
            for i in 0..n {
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

/// How long until `cond` holds (polled), failing after `timeout`.
pub fn time_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if cond() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until new TCP connections to `vip` avoid backend `name`; returns how long it
/// took. A check is 12 connections, confirmed by 36 more when none reached `name` (with
/// three backends, 48 connections all missing one by chance is a 4e-9 event).
pub fn until_avoided(lab: &Lab, vip: SocketAddr, name: &str, timeout: Duration) -> Duration {
    time_until(
        &format!("new connections to {vip} to avoid {name}"),
        timeout,
        || {
            !tcp_spread(lab, vip, 12).contains_key(name)
                && !tcp_spread(lab, vip, 36).contains_key(name)
        },
    )
}

/// Waits until new TCP connections to `vip` reach backend `name`; returns how long it took.
pub fn until_reached(lab: &Lab, vip: SocketAddr, name: &str, timeout: Duration) -> Duration {
    time_until(
        &format!("new connections to {vip} to reach {name}"),
        timeout,
        || tcp_spread(lab, vip, 12).contains_key(name),
    )
}

/// The agent's HTTP endpoint, in the node namespace.
pub const AGENT_HTTP: &str = "127.0.0.1:9464";

/// GETs `path` from the agent's HTTP endpoint (from inside the node namespace).
pub fn agent_get(lab: &Lab, path: &'static str) -> std::io::Result<(u16, String)> {
    lab.node
        .run(move || xlb_tests::http::get(AGENT_HTTP.parse().unwrap(), path))
        .expect("node thread")
}

/// A sample of the agent's /metrics (None if absent).
pub fn metric(lab: &Lab, series: &str) -> Option<f64> {
    let (code, body) = agent_get(lab, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    xlb_tests::http::sample(&body, series)
}

/// The default EndpointSlices without backend `b<i>` in the Service `service` (both
/// families).
pub fn slices_without(service: &str, i: usize) -> String {
    let (_, slices) = xlb_tests::lab::DEFAULT_MANIFESTS[1];
    let (v4, v6) = (
        xlb_tests::lab::backend_v4(i).to_string(),
        xlb_tests::lab::backend_v6(i).to_string(),
    );
    let mut out = String::new();
    for doc in slices.split("\n---\n") {
        if doc.contains(&format!("name: {service}-")) {
            let mut kept = Vec::new();
            let mut skip = 0;
            for line in doc.lines() {
                if line.contains(&format!("\"{v4}\"")) || line.contains(&format!("\"{v6}\"")) {
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

/// `per_vip` TCP connections to each of the web VIPs (both families), each asked once:
/// the sessions and the backend each is on.
pub fn open_web_sessions(lab: &Lab, per_vip: usize) -> Vec<(TcpSession, String)> {
    open_sessions(
        lab,
        &[xlb_tests::lab::WEB_V4, xlb_tests::lab::WEB_V6],
        per_vip,
    )
}

/// `per_vip` long-lived connections to each of `vips` from the client, each with the
/// backend that answered its first request.
pub fn open_sessions(
    lab: &Lab,
    vips: &[std::net::SocketAddr],
    per_vip: usize,
) -> Vec<(TcpSession, String)> {
    let vips = vips.to_vec();
    lab.client
        .run(move || {
            vips.into_iter()
                .flat_map(|vip| (0..per_vip).map(move |_| vip))
                .map(|vip| {
                    let mut s = TcpSession::connect(vip).unwrap();
                    let name = s.ask().unwrap();
                    (s, name)
                })
                .collect()
        })
        .unwrap()
}

/// Asks each session again and asserts that it still works and is still answered by the
/// backend that answered it first; `what` says when (for the failure message).
pub fn assert_sessions_kept(lab: &Lab, sessions: Vec<(TcpSession, String)>, what: &str) {
    let after = lab
        .client
        .run(move || {
            sessions
                .into_iter()
                .map(|(mut s, before)| (before, s.ask()))
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (before, now) in after {
        match now {
            Ok(now) => assert_eq!(before, now, "{what}: a connection changed backend"),
            Err(e) => panic!("{what}: an established connection (on {before}) broke: {e:#}"),
        }
    }
}
