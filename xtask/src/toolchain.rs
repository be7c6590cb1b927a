//! Toolchain check and installation.
//!
//! The eBPF object is built one of two ways:
//! - Debian route (the project's machines, verified end to end): Debian's `rustc-web`
//!   (/usr/bin/rustc, LLVM 22) with its prebuilt `core` for bpfel-unknown-none from
//!   `libstd-rust-web-dev-bpf`, and bpf-linker built against Debian's LLVM 22.
//! - build-std route (a usual developer box): rustup nightly with `rust-src`, building
//!   `core` with `-Z build-std`.
//!
//! Whatever is missing is installed (apt packages, bpf-linker), with visible progress.
//! When everything is present the check takes well under a second.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::ui;

/// Debian packages the Debian route builds with.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// Packages the lab and the tests use.
/// iptables: the kube-proxy baseline of the multi-node lab's path matrix.
pub const LAB_PACKAGES: &[&str] = &["iproute2", "ethtool", "iputils-ping", "curl", "iptables"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_SYSROOT: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

#[derive(Clone, Debug)]
pub enum Route {
    Debian,
    /// rustup toolchain name (e.g. "nightly").
    BuildStd {
        toolchain: String,
    },
}

#[derive(Clone, Debug)]
pub struct Toolchain {
    pub route: Route,
    pub bpf_linker: PathBuf,
    /// The rustc that compiles the eBPF crate.
    pub ebpf_rustc: PathBuf,
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Prefixes a command with sudo when not root; fails clearly when that is impossible.
pub fn privileged(program: &str, why: &str) -> anyhow::Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if which("sudo").is_none() {
        bail!("{why} needs root, and sudo is not available: run this command as root");
    }
    ui::info(&format!("{why} needs root: using sudo"));
    let mut c = Command::new("sudo");
    c.arg("--preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,XLB_BIN,XLB_LAB_VERBOSE,RUST_BACKTRACE");
    c.arg(program);
    Ok(c)
}

/// Which of `packages` dpkg does not list as installed.
fn missing_packages(packages: &[&str]) -> anyhow::Result<Vec<String>> {
    if which("dpkg-query").is_none() {
        bail!(
            "this is not a Debian-like machine (no dpkg-query): install {} yourself, \
             or use rustup nightly with rust-src",
            packages.join(" ")
        );
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(packages)
        .output()
        .context("running dpkg-query")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    Ok(packages
        .iter()
        .filter(|p| !listed.lines().any(|l| l.starts_with(&format!("{p} ii"))))
        .map(|p| p.to_string())
        .collect())
}

/// Installs missing Debian packages (apt-get update once, then install), showing apt's
/// own progress.
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    let step = ui::step(format!("installing {} with apt-get", missing.join(" ")));
    let mut update = privileged("apt-get", "installing packages")?;
    update.args(["update", "-q"]);
    run_visible(update.env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut install = privileged("apt-get", "installing packages")?;
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    run_visible(install.env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing_packages(packages)?;
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    step.done();
    Ok(())
}

pub fn run_visible(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The rustup toolchain with rust-src, if any (the build-std route).
fn build_std_toolchain() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
        .then(|| "nightly".to_string())
}

fn debian_route_present() -> bool {
    Path::new(DEBIAN_RUSTC).is_file()
        && std::fs::read_dir(DEBIAN_BPF_SYSROOT)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
            .unwrap_or(false)
}

/// Ensures bpf-linker is installed (for the Debian route: 0.13.0 against LLVM 22).
fn ensure_bpf_linker(route: &Route) -> anyhow::Result<PathBuf> {
    let path = which("bpf-linker").unwrap_or_else(|| cargo_home().join("bin/bpf-linker"));
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let ok = match (&version, route) {
        (Some(v), Route::Debian) => v.ends_with(BPF_LINKER_VERSION),
        (Some(_), Route::BuildStd { .. }) => true,
        (None, _) => false,
    };
    if ok {
        return Ok(path);
    }
    let step = ui::step(format!(
        "building bpf-linker {BPF_LINKER_VERSION} (about a minute; found: {})",
        version.as_deref().unwrap_or("none")
    ));
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]);
    if let Route::Debian = route {
        // LLVM_PREFIX (not LLVM_SYS_*_PREFIX): without it the build finds Debian's LLVM 14
        // llvm-config and fails with "unable to find library -lLLVM".
        c.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
    }
    // The workspace's toolchain is the usual rustup one; make sure Debian's rustc on PATH
    // does not get picked for this host build.
    c.env_remove("RUSTC");
    run_visible(&mut c)?;
    step.done();
    let path = cargo_home().join("bin/bpf-linker");
    if !path.is_file() {
        bail!("bpf-linker was installed but is not at {}", path.display());
    }
    Ok(path)
}

/// Checks the toolchain for building, installing what is missing.
pub fn ensure_build() -> anyhow::Result<Toolchain> {
    let step = ui::step("checking the toolchain");
    let forced = std::env::var("XLB_EBPF_ROUTE").ok();
    let route = match forced.as_deref() {
        Some("debian") => Route::Debian,
        Some("build-std") => Route::BuildStd {
            toolchain: "nightly".into(),
        },
        Some(other) => bail!("XLB_EBPF_ROUTE={other}: expected debian or build-std"),
        None if debian_route_present() => Route::Debian,
        None => match build_std_toolchain() {
            Some(toolchain) => Route::BuildStd { toolchain },
            None => Route::Debian,
        },
    };
    let ebpf_rustc = match &route {
        Route::Debian => {
            ensure_packages(BUILD_PACKAGES)?;
            if !debian_route_present() {
                bail!(
                    "{DEBIAN_RUSTC} or its bpfel-unknown-none core ({DEBIAN_BPF_SYSROOT}) is missing after installing {}",
                    BUILD_PACKAGES.join(" ")
                );
            }
            PathBuf::from(DEBIAN_RUSTC)
        }
        Route::BuildStd { toolchain } => {
            let out = Command::new("rustup")
                .args(["which", "rustc", "--toolchain", toolchain])
                .output()?;
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    let bpf_linker = ensure_bpf_linker(&route)?;
    ui::info(&format!(
        "eBPF route: {route:?}, rustc {}, {}",
        ebpf_rustc.display(),
        bpf_linker.display()
    ));
    step.done();
    Ok(Toolchain {
        route,
        bpf_linker,
        ebpf_rustc,
    })
}
