//! Datapath cost per packet, through BPF_PROG_TEST_RUN (the kernel's own timing of the
//! program runs, syscall overhead excluded).
//!
//! The kernel reuses the frame across the repeats of one call, as the previous run left
//! it. So xlb is measured behind `bench_prep`, which restores the frame from a template
//! (and, for new flows, writes a new source port, so that every run is a real miss of the
//! connection table) and tail-calls xlb. The same prep tail-calling `bench_pass` is
//! measured in the same round and subtracted, and the cost of a bare `bench_pass` run is
//! added back: "cost" is what one xlb run costs, comparable with the two floors measured
//! directly (a program that only returns XDP_PASS, and one that runs xlb's parser and
//! returns XDP_TX). New-flow runs also get a fresh client address on every call, so no
//! key repeats; once the LRU connection table is full every insert evicts, as on a busy
//! node.
//!
//! Every measured program is attached to an interface of the bench namespace first:
//! BPF_PROG_TEST_RUN otherwise registers an XDP program in the kernel's XDP dispatcher and
//! unregisters it again on every call, each time waiting for an RCU grace period (~8 ms
//! of wall time per call on these machines; the measured run time is unaffected).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    Proto,
    bench::{self, BenchConfig, TEMPLATE_LEN},
    maps as names,
};
use serde::Serialize;
use xlb::{
    datapath::{Datapath, LoadOptions},
    model::{Backend, Desired, Frontend, Scope, ServiceName, ServiceSpec},
    sync::{self, Applied, PlanConfig},
};
use xlb_tests::{bpffs::Bpffs, fixture::FibNamespace, packet};

use crate::stats::Summary;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub family: &'static str,
    pub backends: usize,
    pub cost_ns: Summary,
    /// cost / parse+XDP_TX floor (medians).
    pub vs_parse_tx: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Floors {
    pub family: &'static str,
    pub pass_ns: Summary,
    pub parse_tx_ns: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub repeat_per_call: u32,
    pub calls_per_sample: u32,
    pub floors: Vec<Floors>,
    pub rows: Vec<Row>,
}

pub struct Config {
    pub backend_counts: Vec<usize>,
    pub rounds: usize,
    pub calls: u32,
    pub repeat: u32,
    /// Measure only this scenario (e.g. to profile it with perf).
    pub only: Option<String>,
}

const PAYLOAD: [u8; 32] = [0x42; 32];
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const SCENARIOS: [&str; 4] = ["established", "new_flow", "reply", "non_vip_pass"];

fn client(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(xlb_tests::lab::CLIENT_V6)
    } else {
        IpAddr::V4(xlb_tests::lab::CLIENT_V4)
    }
}

fn vip(v6: bool, k: usize) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 1, 0, 0, 0, 0, k as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 96, 1, k as u8))
    }
}

fn backend(v6: bool, i: usize) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x202,
            0,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 202, (i >> 8) as u8, i as u8))
    }
}

/// A TCP frame with the given flags, long enough for the template.
fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = packet::frame(true, src, dst, sport, dport, &PAYLOAD);
    let l4 = if src.is_ipv4() { 34 } else { 54 };
    f[l4 + 13] = flags;
    f
}

/// The bench object: its programs, and its maps taken out so that they can be written
/// while a program is borrowed.
struct Bench {
    ebpf: Ebpf,
    next: ProgramArray<MapData>,
    template: Array<MapData, [u8; TEMPLATE_LEN]>,
    config: Array<MapData, BenchConfig>,
}

impl Bench {
    fn load(object: &Path) -> anyhow::Result<Self> {
        let data =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut loader = EbpfLoader::new();
        // The bench object carries the datapath's map definitions too (exported by the
        // map macro); it never uses them, so they are created with one entry.
        for name in names::ALL_MAPS {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader.load(&data).context("loading the bench object")?;
        // See the module docs for why each is attached (to an otherwise idle veth).
        for (p, interface) in [
            (bench::PROG_PASS, "toback"),
            (bench::PROG_PARSE_TX, "toclient"),
            (bench::PROG_PREP, "toclient-peer"),
        ] {
            let prog: &mut Xdp = ebpf.program_mut(p).context(p)?.try_into()?;
            prog.load().with_context(|| format!("verifying {p}"))?;
            prog.attach(interface, aya::programs::XdpMode::Skb)
                .with_context(|| format!("attaching {p} to {interface}"))?;
        }
        let mut take = |n: &str| ebpf.take_map(n).with_context(|| format!("map {n}"));
        let next = ProgramArray::try_from(take(bench::MAP_NEXT)?)?;
        let template = Array::try_from(take(bench::MAP_TEMPLATE)?)?;
        let config = Array::try_from(take(bench::MAP_CONFIG)?)?;
        Ok(Self {
            ebpf,
            next,
            template,
            config,
        })
    }

    fn prog(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded")
    }
}

fn template(frame: &[u8]) -> anyhow::Result<[u8; TEMPLATE_LEN]> {
    Ok(<[u8; TEMPLATE_LEN]>::try_from(&frame[..TEMPLATE_LEN])?)
}

/// Mean ns per run over `calls` calls of `repeat` runs (the kernel's timing).
fn time_runs(
    prog: &Xdp,
    frame: &[u8],
    cfg: &Config,
    mut before_call: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut total = 0f64;
    for call in 0..cfg.calls {
        before_call(call)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = cfg.repeat;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        total += r.duration.as_nanos() as f64;
    }
    Ok(total / cfg.calls as f64)
}

fn program_services(dp: &mut Datapath, counts: &[usize]) -> anyhow::Result<Applied> {
    let mut desired = Desired::default();
    for (k, n) in counts.iter().enumerate() {
        for v6 in [false, true] {
            let name = ServiceName {
                namespace: "bench".into(),
                name: format!("svc-{n}"),
                port: "80".into(),
                family: if v6 {
                    lb_common::Family::V6
                } else {
                    lb_common::Family::V4
                },
                scope: Scope::All,
            };
            let spec = ServiceSpec::new(
                Proto::TCP,
                [Frontend {
                    ip: vip(v6, k + 1),
                    port: 80,
                }]
                .into(),
                (1..=*n)
                    .map(|i| Backend {
                        ip: backend(v6, i),
                        port: 8080,
                        weight: 1,
                    })
                    .collect(),
            );
            desired.services.insert(name, spec);
        }
    }
    let mut applied = Applied::new(names::MAX_SERVICES, names::MAX_BACKENDS);
    let mut maps = dp.maps()?;
    let plan = sync::plan(&desired, &applied, None, &PlanConfig::default());
    anyhow::ensure!(plan.errors.is_empty(), "{:?}", plan.errors);
    let report = sync::apply(plan, &mut applied, &mut maps);
    anyhow::ensure!(report.errors.is_empty(), "{:?}", report.errors);
    Ok(applied)
}

pub fn run(cfg: &Config, bench_object: &Path) -> anyhow::Result<Results> {
    let prefix = xlb_tests::run_prefix();
    let fib = FibNamespace::create(&format!("{prefix}-dp"))?;
    let bpffs = Bpffs::mount(&prefix)?;
    let pin_dir = bpffs.path().join("dp");
    let object = bench_object.to_path_buf();
    let cfg = Config {
        backend_counts: cfg.backend_counts.clone(),
        only: cfg.only.clone(),
        ..*cfg
    };
    let results = fib
        .ns
        .run(move || run_in_namespace(&cfg, &object, pin_dir))??;
    drop(bpffs);
    drop(fib);
    Ok(results)
}

fn run_in_namespace(
    cfg: &Config,
    object: &Path,
    pin_dir: std::path::PathBuf,
) -> anyhow::Result<Results> {
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir,
        config: Default::default(),
        conntrack_entries: names::CONNTRACK_ENTRIES,
        backends: lb_common::maps::MAX_BACKENDS,
    })?;
    program_services(&mut dp, &cfg.backend_counts)?;
    dp.attach_xdp("toback-peer", xlb::datapath::AttachMode::Generic)?;
    // toback's peer runs an XDP program: redirects into toback are delivered.
    let mut tx = dp.tx_ports()?;
    let toback = xlb::datapath::ifindex("toback").context("the fixture's toback")?;
    tx.set(
        toback,
        lb_common::maps::TX_F_REDIRECT | lb_common::maps::TX_F_TX,
    )?;
    let mut bench = Bench::load(object)?;
    let xlb_fd = dp.program_fd().try_clone()?;
    let pass_fd = bench.prog(bench::PROG_PASS).fd()?.try_clone()?;

    let mut floors = Vec::new();
    let mut rows = Vec::new();
    let mut new_flow_calls = 0u32;
    for v6 in [false, true] {
        let family = if v6 { "ipv6" } else { "ipv4" };
        let sport_offset = if v6 { 54 } else { 34 };
        let (mut pass, mut parse) = (Vec::new(), Vec::new());
        // samples[scenario][backend count]
        let mut samples = vec![vec![Vec::new(); cfg.backend_counts.len()]; SCENARIOS.len()];
        // Per-service frames: forward (established), reply, SYN (new flows), non-VIP.
        let mut frames = Vec::new();
        for (k, _) in cfg.backend_counts.iter().enumerate() {
            let fwd = tcp(client(v6), vip(v6, k + 1), 40_000, 80, TCP_ACK);
            let run = dp.run_packet(&fwd)?;
            anyhow::ensure!(
                run.action == lb_common::stats::XDP_REDIRECT,
                "priming flow not redirected"
            );
            let chosen = packet::summary(&run.output).dst;
            let reply = tcp(chosen, client(v6), 8080, 40_000, TCP_ACK);
            let syn = tcp(client(v6), vip(v6, k + 1), 1, 80, TCP_SYN);
            let other = if v6 {
                "fd00:96:9::9".parse()?
            } else {
                "10.96.9.9".parse()?
            };
            let non_vip = tcp(client(v6), other, 40_000, 80, TCP_ACK);
            frames.push([fwd, syn, reply, non_vip]);
        }
        for _ in 0..cfg.rounds {
            let est = &frames[0][0];
            pass.push(time_runs(bench.prog(bench::PROG_PASS), est, cfg, |_| {
                Ok(())
            })?);
            parse.push(time_runs(
                bench.prog(bench::PROG_PARSE_TX),
                est,
                cfg,
                |_| Ok(()),
            )?);
            let bare_pass = *pass.last().expect("just pushed");
            for (k, _) in cfg.backend_counts.iter().enumerate() {
                for (s, scenario) in SCENARIOS.iter().enumerate() {
                    if cfg.only.as_deref().is_some_and(|o| o != *scenario) {
                        samples[s][k].push(f64::NAN);
                        continue;
                    }
                    let frame = frames[k][s].clone();
                    let rotate = *scenario == "new_flow";
                    bench.config.set(
                        0,
                        BenchConfig {
                            sport_offset,
                            flows: if rotate { 65_535 } else { 0 },
                            sport_base: 1,
                            _pad: 0,
                        },
                        0,
                    )?;
                    bench.template.set(0, template(&frame)?, 0)?;
                    let prep = bench
                        .ebpf
                        .program(bench::PROG_PREP)
                        .and_then(|p| <&Xdp>::try_from(p).ok())
                        .expect("loaded");
                    let mut timed = |next: &aya::programs::ProgramFd| -> anyhow::Result<f64> {
                        bench.next.set(0, next, 0)?;
                        time_runs(prep, &frame, cfg, |_| {
                            if rotate {
                                // Every new-flow call gets a client address never used
                                // before, so no key repeats across calls either.
                                new_flow_calls += 1;
                                let c = new_flow_calls;
                                let mut f = frame.clone();
                                if v6 {
                                    f[34..38].copy_from_slice(&c.to_be_bytes());
                                } else {
                                    f[26..30].copy_from_slice(&[10, 210, (c >> 8) as u8, c as u8]);
                                }
                                bench.template.set(0, template(&f)?, 0)?;
                            }
                            Ok(())
                        })
                    };
                    let base = timed(&pass_fd)?;
                    let full = timed(&xlb_fd)?;
                    samples[s][k].push(full - base + bare_pass);
                }
            }
        }
        let parse_median = Summary::of(parse.clone()).median;
        floors.push(Floors {
            family,
            pass_ns: Summary::of(pass),
            parse_tx_ns: Summary::of(parse),
        });
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            for (k, n) in cfg.backend_counts.iter().enumerate() {
                let cost = Summary::of(samples[s][k].clone());
                let vs = cost.median / parse_median;
                rows.push(Row {
                    scenario,
                    family,
                    backends: *n,
                    cost_ns: cost,
                    vs_parse_tx: vs,
                });
            }
        }
    }
    Ok(Results {
        repeat_per_call: cfg.repeat,
        calls_per_sample: cfg.calls,
        floors,
        rows,
    })
}
