//! Control-plane costs, and the same programming work done by kube-proxy's backends:
//! - programming N services x 10 endpoints from empty (translation, plan, apply into the
//!   real BPF maps);
//! - a one-endpoint change at N services, from the changed EndpointSlice to the maps
//!   written (the incremental path: re-translate that Service, plan it, apply);
//! - Maglev table builds;
//! - the agent's resident memory after programming 10k services / 100k endpoints from a
//!   manifests directory (the real binary);
//! - `iptables-restore` (a full restore, and kube-proxy's partial `--noflush` sync of one
//!   changed service) and `nft -f` (full, and a one-service transaction), in a namespace
//!   of their own.
//!
//! Longer than most files: one concern, the control-plane benchmark family, each
//! measurement next to its kube-proxy counterpart.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_common::maps as names;
use serde::Serialize;
use xlb::{
    datapath::{Datapath, LoadOptions, RealMaps},
    maglev,
    model::Desired,
    sync::{self, Applied, PlanConfig},
    translate::{self, NodeInfo},
};
use xlb_tests::{bpffs::Bpffs, netns::Netns, process::Process};

use crate::{baselines, stats::Summary};

pub struct Config {
    pub service_counts: Vec<usize>,
    pub endpoints: usize,
    pub changes: usize,
    /// Repeats of the kube-proxy baselines' partial syncs (each takes about a second).
    pub baseline_changes: usize,
    pub rss: bool,
    pub health_probes: usize,
    pub health_seconds: f64,
    pub sweep_entries: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleResult {
    pub services: usize,
    pub endpoints: usize,
    pub program_from_empty_ms: f64,
    pub map_writes: usize,
    pub one_change_ms: Summary,
    pub one_change_p99_ms: f64,
    pub iptables_restore_full_ms: f64,
    pub iptables_restore_partial_ms: Summary,
    pub iptables_restore_partial_p99_ms: f64,
    pub nft_full_ms: f64,
    pub nft_partial_ms: Summary,
    pub nft_partial_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MaglevResult {
    pub table_size: u32,
    pub backends: usize,
    pub build_ms: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub scales: Vec<ScaleResult>,
    pub maglev: Vec<MaglevResult>,
    /// Agent resident memory (MiB) with 10k services / 100k endpoints programmed.
    pub agent_rss_mib: Option<f64>,
    /// How long that agent took from start to its first complete sync.
    pub agent_first_sync_ms: Option<f64>,
    pub health: Option<HealthResult>,
    pub sweep: Option<SweepResult>,
}

/// Removing the UDP flows of one backend from a full connection table (what a UDP
/// backend's removal costs the agent).
#[derive(Clone, Debug, Serialize)]
pub struct SweepResult {
    pub table_entries: usize,
    pub matching_entries: usize,
    pub sweep_ms: Summary,
}

/// Fills a connection table of `entries` (flows of 100 backends, forward and reply
/// entries) and times the removal of one backend's flows, `repeats` times.
pub fn sweep(entries: u32, repeats: usize) -> anyhow::Result<SweepResult> {
    use lb_common::{
        Addr, Family, Proto,
        maps::{CT_F_REPLY, CtKey, CtValue},
    };
    let prefix = xlb_tests::run_prefix();
    let bpffs = Bpffs::mount(&prefix)?;
    let pin_dir = bpffs.path().join("sw");
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir: pin_dir.clone(),
        config: Default::default(),
        conntrack_entries: entries,
        backends: lb_common::maps::MAX_BACKENDS,
    })?;
    let mut maps = dp.maps()?;
    let mut ct: aya::maps::HashMap<aya::maps::MapData, CtKey, CtValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(
            pin_dir.join(names::CONNTRACK),
        )?))?;
    let backend = |b: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + b);
    let vip = Addr::from_ip(&Ipv4Addr::new(10, 96, 0, 11).into());
    let mut times = Vec::new();
    let mut matching = 0;
    for _ in 0..repeats {
        // Refill: flows[i] from client i to backend i % 100 (the LRU keeps the newest).
        let flows = entries as usize / 2;
        for i in 0..flows {
            let client = Addr::from_ip(
                &Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32).into(),
            );
            let b = Addr::from_ip(&backend((i % 100) as u32).into());
            let sport = (10_000 + i % 50_000) as u16;
            let fwd = CtKey {
                src: client,
                dst: vip,
                sport_be: sport.to_be(),
                dport_be: 53u16.to_be(),
                proto: Proto::UDP,
                family: Family::V4,
                _pad: [0; 2],
            };
            let rev = CtKey {
                src: b,
                dst: client,
                sport_be: 5353u16.to_be(),
                dport_be: sport.to_be(),
                proto: Proto::UDP,
                family: Family::V4,
                _pad: [0; 2],
            };
            let mut v = CtValue {
                nat_addr: b,
                nat_port_be: 5353u16.to_be(),
                state: 1,
                flags: 0,
                backend_id: 1 + (i % 100) as u32,
                service_id: 1,
                nh_ifindex: 0,
                last_seen_ns: 0,
                nh_macs: [0; 6],
                syn_seq_be: 0,
            };
            ct.insert(fwd, v, 0)?;
            v.nat_addr = vip;
            v.nat_port_be = 53u16.to_be();
            v.flags = CT_F_REPLY;
            ct.insert(rev, v, 0)?;
        }
        let target = xlb::sync::FlowTarget {
            service: 1,
            backend: xlb::model::BackendKey {
                ip: backend(7).into(),
                port: 5353,
                proto: Proto::UDP,
            },
        };
        let started = Instant::now();
        matching = xlb::sync::Maps::sweep_flows(&mut maps, &[target])?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(SweepResult {
        table_entries: entries as usize,
        matching_entries: matching,
        sweep_ms: Summary::of(times),
    })
}

/// The active health checker's cost: `probes` TCP probes, each every `interval_ms`,
/// against a local listener.
#[derive(Clone, Debug, Serialize)]
pub struct HealthResult {
    pub probes: usize,
    pub interval_ms: u64,
    pub seconds: f64,
    pub checks_per_s: f64,
    /// CPU time of the checker's threads (user + system) per second of wall time, in %
    /// of one core.
    pub checker_cpu_percent: f64,
    pub cpu_us_per_check: f64,
}

/// CPU time (user + system, seconds) of this process's threads named `name`.
fn threads_cpu_s(name: &str) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ...: fields after the comm's closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if !head.ends_with(name) && !head.contains(&format!("({name}")) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
        total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    total as f64 / ticks
}

/// Runs the agent's health checker on `probes` probes for `seconds` and measures its CPU.
/// The probes go to distinct loopback addresses (127.0.x.y) on one listening port, so
/// each is its own probe; the listener's accept loop runs on another thread, not counted.
pub fn health_checks(
    probes: usize,
    interval: std::time::Duration,
    seconds: f64,
) -> anyhow::Result<HealthResult> {
    use xlb::health::{Checker, HealthMetrics, Method, Probe, Reporter, Schedule};
    let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    let port = listener.local_addr()?.port();
    std::thread::Builder::new()
        .name("bench-accept".into())
        .spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("xlb-health")
        .enable_all()
        .build()?;
    let metrics = std::sync::Arc::new(HealthMetrics::default());
    let down = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = down.clone();
    let reporter: Reporter = std::sync::Arc::new(move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    });
    let schedule = Schedule {
        interval,
        timeout: interval.min(std::time::Duration::from_secs(1)),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    };
    let targets: std::collections::BTreeMap<Probe, Schedule> = (0..probes)
        .map(|i| {
            let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            (
                Probe {
                    addr: std::net::SocketAddr::new(ip.into(), port),
                    method: Method::Tcp,
                },
                schedule,
            )
        })
        .collect();
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Default::default());
    let (_commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    // One label at a time: a family's guard must be dropped before the next lookup
    // (creating a missing label takes the write lock).
    let checks = |m: &HealthMetrics| {
        let ok = m
            .checks
            .get_or_create(&xlb::health::ResultLabel { result: "ok" })
            .get();
        let fail = m
            .checks
            .get_or_create(&xlb::health::ResultLabel { result: "fail" })
            .get();
        ok + fail
    };
    rt.spawn(Checker::new(reporter, metrics.clone()).run(targets_rx, commands_rx));
    targets_tx.send(targets)?;
    // Let every probe start (first checks are spread over one interval).
    std::thread::sleep(interval * 2);
    let (c0, cpu0, t0) = (
        checks(&metrics),
        threads_cpu_s("xlb-health"),
        std::time::Instant::now(),
    );
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    let (c1, cpu1, wall) = (
        checks(&metrics),
        threads_cpu_s("xlb-health"),
        t0.elapsed().as_secs_f64(),
    );
    drop(targets_tx);
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    let n = (c1 - c0) as f64;
    anyhow::ensure!(
        down.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "probes went down against a live listener"
    );
    Ok(HealthResult {
        probes,
        interval_ms: interval.as_millis() as u64,
        seconds: wall,
        checks_per_s: n / wall,
        checker_cpu_percent: 100.0 * (cpu1 - cpu0) / wall,
        cpu_us_per_check: 1e6 * (cpu1 - cpu0) / n.max(1.0),
    })
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32)
}

fn endpoint(i: usize, j: usize, endpoints: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * endpoints + j) as u32)
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}")),
            namespace: Some("bench".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip(i).to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(i: usize, addrs: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-1")),
            namespace: Some("bench".into()),
            labels: Some(BTreeMap::from([(
                translate::SERVICE_NAME_LABEL.to_string(),
                format!("svc-{i}"),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                addresses: vec![a.to_string()],
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn baseline_services(n: usize, endpoints: usize) -> Vec<baselines::Service> {
    (0..n)
        .map(|i| baselines::Service {
            name: format!("bench/svc-{i}:http"),
            vip: vip(i),
            port: 80,
            tcp: true,
            endpoints: (0..endpoints)
                .map(|j| (endpoint(i, j, endpoints), 8080))
                .collect(),
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1e3)
}

/// Programs every service from empty, then makes `changes` one-endpoint changes.
fn xlb_scale(
    maps: &mut RealMaps,
    n: usize,
    endpoints: usize,
    changes: usize,
) -> anyhow::Result<(f64, usize, Vec<f64>)> {
    let services: Vec<Service> = (0..n).map(service).collect();
    let mut slices: Vec<EndpointSlice> = (0..n)
        .map(|i| {
            slice(
                i,
                &(0..endpoints)
                    .map(|j| endpoint(i, j, endpoints))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let cfg = PlanConfig::default();
    let mut applied = Applied::new(names::MAX_SERVICES, names::MAX_BACKENDS);

    let (programmed, full_ms) = timed(|| -> anyhow::Result<(Desired, usize)> {
        let (desired, errors, _) =
            translate::translate_all(services.iter(), slices.iter(), &NodeInfo::default());
        anyhow::ensure!(errors.is_empty(), "{errors:?}");
        let plan = sync::plan(&desired, &applied, None, &cfg);
        anyhow::ensure!(plan.errors.is_empty(), "{:?}", plan.errors);
        let report = sync::apply(plan, &mut applied, maps);
        anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
        Ok((desired, report.writes))
    });
    let (mut desired, writes) = programmed?;

    // One-endpoint changes: endpoint 0 of a service is replaced by a new address.
    let mut change_ms = Vec::new();
    for c in 0..changes {
        let i = (c * 7919) % n;
        let mut addrs: Vec<Ipv4Addr> = (1..endpoints).map(|j| endpoint(i, j, endpoints)).collect();
        addrs.push(Ipv4Addr::new(10, 250, (c >> 8) as u8, c as u8));
        let changed = slice(i, &addrs);
        let (result, ms) = timed(|| -> anyhow::Result<()> {
            // What the agent does when it sees one EndpointSlice change.
            let t = translate::translate_service(&services[i], &[&changed], &NodeInfo::default())?;
            desired.replace_object("bench", &format!("svc-{i}"), t.services);
            let scope = BTreeSet::from([("bench".to_string(), format!("svc-{i}"))]);
            let plan = sync::plan(&desired, &applied, Some(&scope), &cfg);
            let report = sync::apply(plan, &mut applied, maps);
            anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
            Ok(())
        });
        result?;
        change_ms.push(ms);
        slices[i] = changed;
    }
    // Back to empty, for the next size (no grace: nothing reads these maps).
    let plan = sync::plan(&Desired::default(), &applied, None, &cfg);
    let no_grace = sync::ApplyConfig {
        backend_grace: Duration::ZERO,
    };
    let report = sync::apply_with(plan, &mut applied, maps, &no_grace);
    anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
    anyhow::ensure!(
        applied.frontends.is_empty() && applied.backends.is_empty(),
        "maps not emptied"
    );
    Ok((full_ms, writes, change_ms))
}

/// Feeds `input` to `program` in `ns`; returns how long it took (ms).
fn pipe(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut argv = vec!["netns", "exec", ns.name(), program];
    argv.extend_from_slice(args);
    crate::e2e::pipe_into("ip", &argv, input)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// kube-proxy's two backends doing the same work: full, then partial syncs.
fn kube_proxy_scale(
    n: usize,
    endpoints: usize,
    changes: usize,
) -> anyhow::Result<(f64, Vec<f64>, f64, Vec<f64>)> {
    let ns = Netns::create(&format!("{}-kp", xlb_tests::run_prefix()))?;
    let mut services = baseline_services(n, endpoints);
    let ipt_full = pipe(
        &ns,
        "iptables-legacy-restore",
        &[],
        &baselines::iptables_full(&services),
    )?;
    let nft_full = pipe(&ns, "nft", &["-f", "-"], &baselines::nft_full(&services))?;
    let (mut ipt, mut nft) = (Vec::new(), Vec::new());
    for c in 0..changes {
        let i = (c * 7919) % n;
        let removed = services[i].endpoints.remove(0);
        let added = (Ipv4Addr::new(10, 250, (c >> 8) as u8, c as u8), 8080);
        services[i].endpoints.push(added);
        ipt.push(pipe(
            &ns,
            "iptables-legacy-restore",
            &["--noflush"],
            &baselines::iptables_partial(&services, &services[i], Some(&removed)),
        )?);
        nft.push(pipe(
            &ns,
            "nft",
            &["-f", "-"],
            &baselines::nft_partial(&services[i], Some(&added), Some(&removed)),
        )?);
    }
    Ok((ipt_full, ipt, nft_full, nft))
}

fn maglev_builds(sizes: &[(u32, usize)], repeats: usize) -> Vec<MaglevResult> {
    sizes
        .iter()
        .map(|&(m, n)| {
            let ids: Vec<Vec<u8>> = (0..n)
                .map(|i| format!("10.128.{}.{}:8080/tcp", i >> 8, i & 255).into_bytes())
                .collect();
            let entries: Vec<maglev::Entry<'_>> = ids
                .iter()
                .map(|i| maglev::Entry {
                    identity: i,
                    weight: 1,
                })
                .collect();
            let v = (0..repeats)
                .map(|_| {
                    let (t, ms) = timed(|| maglev::build(&entries, m));
                    assert_eq!(t.len(), m as usize);
                    ms
                })
                .collect();
            MaglevResult {
                table_size: m,
                backends: n,
                build_ms: Summary::of(v),
            }
        })
        .collect()
}

/// The real agent programming 10k services / 100k endpoints from manifests: resident
/// memory and time to the first complete sync.
fn agent_rss(xlb: &Path, services: usize, endpoints: usize) -> anyhow::Result<(f64, f64)> {
    let prefix = xlb_tests::run_prefix();
    let ns = Netns::create(&format!("{prefix}-rss"))?;
    ns.ip("link add v0 type veth peer name v1")?;
    ns.ip("link set v0 up")?;
    let bpffs = Bpffs::mount(&prefix)?;
    let dir = std::env::temp_dir().join(format!("{prefix}-manifests"));
    std::fs::create_dir_all(&dir)?;
    let mut text = String::new();
    for i in 0..services {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec: {{clusterIP: {}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
            vip(i)
        ));
        for j in 0..endpoints {
            text.push_str(&format!(
                "- addresses: [\"{}\"]\n",
                endpoint(i, j, endpoints)
            ));
        }
    }
    std::fs::write(dir.join("all.yaml"), text)?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(xlb)
        .arg("agent")
        .arg("--manifests")
        .arg(&dir);
    cmd.arg("--bpffs")
        .arg(bpffs.path().join("rss"))
        .args(["--interface", "v0", "--no-socket-lb"]);
    let started = Instant::now();
    let mut agent = Process::spawn("agent", cmd)?;
    agent.wait_for("sync complete", Duration::from_secs(300))?;
    let first_sync_ms = started.elapsed().as_secs_f64() * 1e3;
    // The agent runs under `ip netns exec`, which execs it: same pid.
    let rss_mib = xlb_tests::process::rss_mib(agent.pid())?;
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    drop(bpffs);
    Ok((rss_mib, first_sync_ms))
}

pub fn run(cfg: &Config, xlb: &Path) -> anyhow::Result<Results> {
    let prefix = xlb_tests::run_prefix();
    let bpffs = Bpffs::mount(&prefix)?;
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir: bpffs.path().join("cp"),
        config: Default::default(),
        conntrack_entries: 1024,
        backends: lb_common::maps::MAX_BACKENDS,
    })?;
    let mut maps = dp.maps()?;
    let mut scales = Vec::new();
    for &n in &cfg.service_counts {
        eprintln!(
            "  control plane: {n} services x {} endpoints",
            cfg.endpoints
        );
        let (full_ms, writes, changes) = xlb_scale(&mut maps, n, cfg.endpoints, cfg.changes)?;
        let (ipt_full, ipt, nft_full, nft) =
            kube_proxy_scale(n, cfg.endpoints, cfg.baseline_changes)?;
        scales.push(ScaleResult {
            services: n,
            endpoints: n * cfg.endpoints,
            program_from_empty_ms: full_ms,
            map_writes: writes,
            one_change_p99_ms: Summary::quantile(changes.clone(), 0.99),
            one_change_ms: Summary::of(changes),
            iptables_restore_full_ms: ipt_full,
            iptables_restore_partial_p99_ms: Summary::quantile(ipt.clone(), 0.99),
            iptables_restore_partial_ms: Summary::of(ipt),
            nft_full_ms: nft_full,
            nft_partial_p99_ms: Summary::quantile(nft.clone(), 0.99),
            nft_partial_ms: Summary::of(nft),
        });
    }
    drop(maps);
    drop(dp);
    drop(bpffs);
    let maglev = maglev_builds(&[(65_537, 100), (65_537, 1000)], 31);
    let (agent_rss_mib, agent_first_sync_ms) = if cfg.rss {
        eprintln!("  control plane: agent memory at 10k services / 100k endpoints");
        let (rss, ms) = agent_rss(xlb, 10_000, 10)?;
        (Some(rss), Some(ms))
    } else {
        (None, None)
    };
    eprintln!(
        "  control plane: health checker, {} probes",
        cfg.health_probes
    );
    let health = Some(health_checks(
        cfg.health_probes,
        std::time::Duration::from_secs(1),
        cfg.health_seconds,
    )?);
    eprintln!(
        "  control plane: connection-table sweep, {} entries",
        cfg.sweep_entries
    );
    let sweep = Some(sweep(cfg.sweep_entries, 3)?);
    Ok(Results {
        scales,
        maglev,
        agent_rss_mib,
        agent_first_sync_ms,
        health,
        sweep,
    })
}
