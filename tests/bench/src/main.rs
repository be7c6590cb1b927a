//! xlb-bench: the benchmark runner behind `cargo xtask bench` (which builds everything and
//! runs this as root). Prints one table and writes JSON and Markdown results.

mod baselines;
mod control;
mod datapath;
mod e2e;
mod pods;
mod report;
mod stats;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// Fewer repeats and sizes (under two minutes in all).
    #[arg(long)]
    quick: bool,
    /// The benchmark eBPF object.
    #[arg(long)]
    bench_object: PathBuf,
    /// The xlb binary (release).
    #[arg(long)]
    xlb: Option<PathBuf>,
    /// The lab's server binary.
    #[arg(long)]
    lab_server: Option<PathBuf>,
    /// The lab's client binary.
    #[arg(long)]
    lab_client: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the Markdown results.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// The command line to record in the results.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    /// Suites to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run only this datapath scenario, many times (for profiling with perf).
    #[arg(long)]
    profile: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    xlb_tests::require_root()?;
    // Interrupted (Ctrl-C, kill): the guards' destructors will not run, so remove what
    // this run created (processes, namespaces, bpffs mounts) from the handler.
    ctrlc::set_handler(|| {
        eprintln!("interrupted: tearing down what this run created");
        xlb_tests::registry::teardown_all();
        std::process::exit(130);
    })?;
    let cfg = if let Some(only) = cli.profile {
        datapath::Config {
            backend_counts: vec![16],
            rounds: 20,
            calls: 200,
            repeat: 5000,
            only: Some(only),
        }
    } else if cli.quick {
        datapath::Config {
            backend_counts: vec![1, 1024],
            rounds: 3,
            calls: 20,
            repeat: 1000,
            only: None,
        }
    } else {
        datapath::Config {
            backend_counts: vec![1, 16, 256, 1024],
            rounds: 7,
            calls: 50,
            repeat: 2000,
            only: None,
        }
    };
    let wants = |s: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == s);
    let xlb = cli
        .xlb
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/release/xlb"));
    let server = cli
        .lab_server
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/release/xlb-lab-server"));
    let mut report = report::Report {
        command: cli.command.clone(),
        date: report::now_utc(),
        machine: report::machine(),
        datapath: None,
        e2e: None,
        pods: None,
        control: None,
    };
    if wants("datapath") {
        eprintln!("datapath: BPF_PROG_TEST_RUN costs");
        report.datapath = Some(datapath::run(&cfg, &cli.bench_object)?);
    }
    if wants("e2e") {
        eprintln!("end to end: netns lab, xlb vs iptables vs nftables vs routing");
        let e = if cli.quick {
            e2e::Config {
                seconds: 1.0,
                repeats: 1,
                paced_pps: 200_000,
            }
        } else {
            e2e::Config {
                seconds: 3.0,
                repeats: 3,
                paced_pps: 200_000,
            }
        };
        report.e2e = Some(e2e::run(&e, &xlb, &server, &cli.bench_object)?);
    }
    if wants("pods") {
        eprintln!("pods to ClusterIPs: multi-node lab, xlb vs iptables vs no LB");
        let p = if cli.quick {
            pods::Config {
                seconds: 1.0,
                repeats: 1,
                threads: 2,
            }
        } else {
            pods::Config {
                seconds: 3.0,
                repeats: 5,
                threads: 2,
            }
        };
        let client = cli
            .lab_client
            .clone()
            .unwrap_or_else(|| server.with_file_name("xlb-lab-client"));
        let bins = pods::Bins {
            xlb: &xlb,
            server: &server,
            client: &client,
        };
        report.pods = Some(pods::run(&p, &bins)?);
    }
    if wants("control") {
        eprintln!("control plane");
        let c = if cli.quick {
            control::Config {
                service_counts: vec![1000],
                endpoints: 10,
                changes: 100,
                baseline_changes: 3,
                rss: false,
                health_probes: 1000,
                health_seconds: 3.0,
                sweep_entries: 65_536,
            }
        } else {
            control::Config {
                service_counts: vec![1000, 10_000],
                endpoints: 10,
                changes: 100,
                baseline_changes: 10,
                rss: true,
                health_probes: 5000,
                health_seconds: 10.0,
                sweep_entries: lb_common::maps::CONNTRACK_ENTRIES,
            }
        };
        report.control = Some(control::run(&c, &xlb)?);
    }
    let md = report::markdown(&report);
    println!("{md}");
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    if let Some(p) = &cli.markdown {
        std::fs::write(p, &md)?;
    }
    Ok(())
}
