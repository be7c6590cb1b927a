//! `cargo xtask bench`: builds everything (release), runs the benchmark suite as root,
//! prints one table and writes the results (JSON and Markdown).
//!
//! The full run writes BENCHMARKS.md and BENCHMARKS.json at the top of the repository;
//! `--quick` (under two minutes) writes them under target/bench/ instead, so that a quick
//! run never replaces the recorded results.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::{
    build::{self, cargo, workspace_root},
    toolchain::{self, run_visible},
    ui,
};

/// Packages the baselines and the TCP benchmark need.
const BENCH_PACKAGES: &[&str] = &["iptables", "nftables", "iperf3"];

#[derive(Args, Debug)]
pub struct BenchOpts {
    /// Fewer repeats and sizes; results go to target/bench/ (under two minutes).
    #[arg(long)]
    pub quick: bool,
    /// Run only these suites: datapath, e2e, pods, control (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn run(opts: &BenchOpts) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let tc = toolchain::ensure_build()?;
    toolchain::ensure_packages(toolchain::LAB_PACKAGES)?;
    toolchain::ensure_packages(BENCH_PACKAGES)?;
    let built = build::build_all(&tc, true)?;
    let step = ui::step("building the benchmark runner (release)");
    run_visible(
        cargo()
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "xlb-bench"])
            .env("XLB_EBPF_OBJECT", &built.ebpf_object),
    )?;
    step.done();

    let root = workspace_root();
    let out_dir: PathBuf = if opts.quick {
        root.join("target/bench")
    } else {
        root.clone()
    };
    std::fs::create_dir_all(&out_dir)?;
    let mut command = String::from("cargo xtask bench");
    if opts.quick {
        command.push_str(" --quick");
    }
    if !opts.only.is_empty() {
        command.push_str(&format!(" --only {}", opts.only.join(",")));
    }
    let step = ui::step(format!(
        "running the benchmarks ({})",
        if opts.quick {
            "quick"
        } else {
            "full: several minutes"
        }
    ));
    let runner = root.join("target/release/xlb-bench");
    let mut c = toolchain::privileged(
        runner.to_str().context("utf-8 path")?,
        "the benchmarks (BPF, network namespaces)",
    )?;
    c.current_dir(&root)
        .arg("--bench-object")
        .arg(built.ebpf_object.with_file_name("bench"))
        .arg("--xlb")
        .arg(&built.xlb)
        .arg("--lab-server")
        .arg(built.xlb.with_file_name("xlb-lab-server"))
        .arg("--lab-client")
        .arg(built.xlb.with_file_name("xlb-lab-client"))
        .arg("--json")
        .arg(out_dir.join("BENCHMARKS.json"))
        .arg("--markdown")
        .arg(out_dir.join("BENCHMARKS.md"))
        .args(["--command", &command]);
    if opts.quick {
        c.arg("--quick");
    }
    if !opts.only.is_empty() {
        c.arg("--only").arg(opts.only.join(","));
    }
    run_visible(&mut c)?;
    step.done();
    ui::info(&format!(
        "results: {} and BENCHMARKS.json ({:.0}s)",
        out_dir.join("BENCHMARKS.md").display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
