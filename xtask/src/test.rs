//! `cargo xtask test`: every test, in pyramid order.
//!
//! 1. host unit and golden tests of the workspace (lb-common, lb-userspace, xtask);
//! 2. host unit tests of the eBPF crate (parsing, translation) built for the host;
//!    The deploy/ manifests are parsed and checked by a host test, and validated against
//!    the Kubernetes OpenAPI schemas by kubernetes-validate (from PyPI, in a venv);
//! 3. privileged tests (tests/): BPF_PROG_TEST_RUN packet tables and network-namespace
//!    end-to-end tests. They need root; they are run, never skipped.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    build::{self, cargo, workspace_root},
    toolchain::{self, run_visible},
    ui,
};

#[derive(Args, Debug)]
pub struct TestOpts {
    /// Run only the tests whose name contains this string (in every stage).
    pub filter: Option<String>,
    /// Parallel test threads for the privileged tests (each builds its own lab).
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
}

pub fn run(opts: &TestOpts) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let tc = toolchain::ensure_build()?;
    toolchain::ensure_packages(toolchain::LAB_PACKAGES)?;
    let built = build::build_all(&tc, false)?;
    let root = workspace_root();
    let filter: Vec<String> = opts.filter.iter().cloned().collect();

    let step = ui::step("style: rustfmt and clippy (warnings are errors) on both workspaces");
    lint(&root, &built.ebpf_object)?;
    step.done();

    let step = ui::step(
        "host tests: lb-common, lb-userspace (unit, golden, adoption), xtask, test support",
    );
    let mut c = cargo();
    c.current_dir(&root)
        .args(["test", "--workspace", "--exclude", "xlb-tests", "--"])
        .args(&filter)
        .env("XLB_EBPF_OBJECT", &built.ebpf_object);
    run_visible(&mut c)?;
    // The test crate's own unit tests (the in-test API server's selectors) need no root.
    let mut c = cargo();
    c.current_dir(&root)
        .args(["test", "-p", "xlb-tests", "--lib", "--"])
        .args(&filter)
        .env("XLB_EBPF_OBJECT", &built.ebpf_object);
    run_visible(&mut c)?;
    step.done();

    let step =
        ui::step("deploy/: schema validation of the manifests (kubernetes-validate, strict)");
    validate_deploy(&root)?;
    step.done();

    let step = ui::step("host tests of the eBPF crate (parsing, translation)");
    let host = host_triple(&tc.ebpf_rustc)?;
    let mut c = build::ebpf_cargo(&tc);
    c.args(["test", "--lib", "--target", &host])
        .env("CARGO_TARGET_DIR", root.join("target/ebpf-host"))
        .arg("--")
        .args(&filter);
    run_visible(&mut c)?;
    step.done();

    let step = ui::step("building the privileged tests");
    let executables = privileged_test_binaries(&built.ebpf_object)?;
    step.done();
    for exe in &executables {
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let step = ui::step(format!(
            "privileged tests: {name} (root: BPF and network namespaces)"
        ));
        let mut c =
            toolchain::privileged(exe.to_str().context("utf-8 path")?, "the privileged tests")?;
        c.current_dir(root.join("tests"))
            .env("XLB_BIN", &built.xlb)
            .arg(format!("--test-threads={}", opts.threads))
            .args(&filter);
        run_visible(&mut c)?;
        step.done();
    }
    ui::info(&format!(
        "all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// rustfmt (`rustfmt.toml` covers both workspaces) and clippy with warnings as errors on
/// the root workspace and on the eBPF crate. Clippy sees the eBPF crate built for the
/// host (as its unit tests are): clippy-driver is the rustup toolchain's, so that
/// toolchain's rustc builds it, in a target directory of its own.
fn lint(root: &std::path::Path, object: &std::path::Path) -> anyhow::Result<()> {
    run_visible(cargo().current_dir(root).args(["fmt", "--all", "--check"]))
        .context("the workspace is not formatted: run `cargo fmt --all`")?;
    run_visible(
        cargo()
            .current_dir(root.join("lb-ebpf"))
            .args(["fmt", "--all", "--check"]),
    )
    .context("lb-ebpf is not formatted: run `cargo fmt --all` in lb-ebpf/")?;
    run_visible(
        cargo()
            .current_dir(root)
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("XLB_EBPF_OBJECT", object),
    )
    .context("clippy found problems in the workspace")?;
    let rustc = rustup_rustc()?;
    let host = host_triple(&rustc)?;
    run_visible(
        cargo()
            .current_dir(root.join("lb-ebpf"))
            .args([
                "clippy", "--lib", "--tests", "--target", &host, "--", "-D", "warnings",
            ])
            .env("RUSTC", &rustc)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", root.join("target/ebpf-clippy")),
    )
    .context("clippy found problems in lb-ebpf")
}

/// The rustc that goes with `cargo clippy`'s driver: the rustup toolchain's, next to the
/// cargo that runs xtask.
fn rustup_rustc() -> anyhow::Result<PathBuf> {
    let cargo = PathBuf::from(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let rustc = cargo.with_file_name("rustc");
    anyhow::ensure!(
        rustc.is_file(),
        "no rustc next to {} (clippy needs the toolchain cargo belongs to)",
        cargo.display()
    );
    Ok(rustc)
}

/// The schema validator, pinned, and the Kubernetes version whose schemas the manifests
/// must satisfy (the oldest release the DaemonSet's fields are meant for).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const SCHEMA_VERSION: &str = "1.33.0";

/// Validates deploy/*.yaml and deploy/uninstall/*.yaml (the kustomization has no published schema and is checked by
/// the host test) with kubernetes-validate in strict mode: unknown fields are errors.
fn validate_deploy(root: &std::path::Path) -> anyhow::Result<()> {
    let venv = root.join("target/tools/venv");
    let validator = venv.join("bin/kubernetes-validate");
    let marker = venv.join(".xlb-installed");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(KUBERNETES_VALIDATE) {
        toolchain::ensure_packages(&["python3-venv"])?;
        ui::info(&format!(
            "installing {KUBERNETES_VALIDATE} into {}",
            venv.display()
        ));
        let _ = std::fs::remove_dir_all(&venv);
        run_visible(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "creating a Python venv for the schema validator (python3 with venv is needed)",
        )?;
        run_visible(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            KUBERNETES_VALIDATE,
        ]))
        .with_context(|| format!("installing {KUBERNETES_VALIDATE} from PyPI"))?;
        std::fs::write(&marker, KUBERNETES_VALIDATE)?;
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["deploy", "deploy/uninstall"] {
        files.extend(
            std::fs::read_dir(root.join(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
                }),
        );
    }
    files.sort();
    run_visible(
        Command::new(&validator)
            .args(["--strict", "--quiet", "-k", SCHEMA_VERSION])
            .args(&files),
    )
    .context("deploy/ manifests do not validate against the Kubernetes schemas")
}

fn host_triple(rustc: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host triple")
}

/// Builds the integration tests of the privileged crate and returns their executables.
fn privileged_test_binaries(object: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = cargo()
        .current_dir(workspace_root())
        .args([
            "test",
            "-p",
            "xlb-tests",
            "--tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("XLB_EBPF_OBJECT", object)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the privileged tests")?;
    if !out.status.success() {
        bail!("building the privileged tests failed");
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        let is_integration = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, true, Some(exe)) = (is_test, is_integration, msg["executable"].as_str()) {
            exes.push(PathBuf::from(exe));
        }
    }
    if exes.is_empty() {
        bail!("no privileged test executables were built");
    }
    exes.sort();
    Ok(exes)
}
