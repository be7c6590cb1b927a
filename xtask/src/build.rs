//! `cargo xtask build`: the eBPF object first, then the xlb binary that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use clap::Args;

use crate::{
    toolchain::{self, Route, Toolchain, run_visible},
    ui,
};

#[derive(Args, Debug)]
pub struct BuildOpts {
    /// Build the userspace binaries with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// What a build produced.
pub struct Built {
    pub ebpf_object: PathBuf,
    pub xlb: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run(opts: &BuildOpts) -> anyhow::Result<Built> {
    let tc = toolchain::ensure_build()?;
    build_all(&tc, opts.release)
}

pub fn build_all(tc: &Toolchain, release: bool) -> anyhow::Result<Built> {
    let ebpf_object = build_ebpf(tc)?;
    build_userspace(&ebpf_object, release)
}

/// `cargo` set up for the eBPF crate (own workspace, run from its directory so that its
/// .cargo/config.toml applies).
pub fn ebpf_cargo(tc: &Toolchain) -> Command {
    let root = workspace_root();
    let mut c = match &tc.route {
        Route::Debian => cargo(),
        Route::BuildStd { toolchain } => {
            let mut c = Command::new("rustup");
            c.args(["run", toolchain, "cargo"]);
            c
        }
    };
    c.current_dir(root.join("lb-ebpf"))
        .env("RUSTC", &tc.ebpf_rustc)
        // aya-ebpf enables asm_experimental_arch; Debian's rustc is a stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &tc.bpf_linker)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    c
}

pub fn build_ebpf(tc: &Toolchain) -> anyhow::Result<PathBuf> {
    let step = ui::step("building the eBPF object (lb-ebpf)");
    let mut c = ebpf_cargo(tc);
    c.args(["build", "--release"]);
    if let Route::BuildStd { .. } = tc.route {
        c.args(["-Z", "build-std=core"]);
    }
    run_visible(&mut c)?;
    let object = workspace_root().join("target/ebpf/bpfel-unknown-none/release/xlb");
    anyhow::ensure!(
        object.is_file(),
        "the eBPF build did not produce {}",
        object.display()
    );
    step.done();
    Ok(object)
}

pub fn build_userspace(object: &Path, release: bool) -> anyhow::Result<Built> {
    let profile = if release { "release" } else { "debug" };
    let step = ui::step(format!("building xlb and the lab server ({profile})"));
    let mut c = cargo();
    c.current_dir(workspace_root())
        .args(["build", "-p", "lb-userspace", "-p", "xlb-tests", "--bins"])
        .env("XLB_EBPF_OBJECT", object);
    if release {
        c.arg("--release");
    }
    run_visible(&mut c)?;
    step.done();
    let dir = workspace_root().join("target").join(profile);
    Ok(Built {
        ebpf_object: object.to_path_buf(),
        xlb: dir.join("xlb"),
    })
}
