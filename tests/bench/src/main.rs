//! xlb-bench: the benchmark runner behind `cargo xtask bench` (which builds everything and
//! runs this as root). Prints one table and writes JSON and Markdown results.

mod datapath;
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
    /// Run only this datapath scenario, many times (for profiling with perf).
    #[arg(long)]
    profile: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    xlb_tests::require_root()?;
    let cfg = if let Some(only) = cli.profile {
        datapath::Config { backend_counts: vec![16], rounds: 20, calls: 200, repeat: 5000, only: Some(only) }
    } else if cli.quick {
        datapath::Config { backend_counts: vec![1, 1024], rounds: 3, calls: 20, repeat: 1000, only: None }
    } else {
        datapath::Config { backend_counts: vec![1, 16, 256, 1024], rounds: 7, calls: 50, repeat: 2000, only: None }
    };
    let r = datapath::run(&cfg, &cli.bench_object)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
