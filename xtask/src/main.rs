//! `cargo xtask`: orchestration only. One module per subcommand; each options struct's doc
//! comments are its help text.

mod bench;
mod build;
mod run;
mod test;
mod toolchain;
mod ui;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, demo and test xlb")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check (and install) the toolchain, then build the eBPF object and the xlb binary.
    Build(build::BuildOpts),
    /// Build, start a lab of network namespaces with real servers, run the agent and send
    /// real traffic through the Service VIPs.
    Run(run::RunOpts),
    /// Build and run every test: host unit tests, golden tests, BPF_PROG_TEST_RUN packet
    /// tables and network-namespace end-to-end tests (needs root).
    Test(test::TestOpts),
    /// Measure xlb against kube-proxy-style iptables and nftables and the XDP floors, and
    /// record the results in BENCHMARKS.md (needs root).
    Bench(bench::BenchOpts),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(o) => build::run(&o).map(|_| ()),
        Command::Run(o) => run::run(&o),
        Command::Test(o) => test::run(&o),
        Command::Bench(o) => bench::run(&o),
    };
    if let Err(e) = result {
        ui::fail(&format!("{e:#}"));
        std::process::exit(1);
    }
}
