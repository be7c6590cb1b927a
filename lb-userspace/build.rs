//! Points the agent at the eBPF object it embeds (built first by `cargo xtask build`), and
//! records the commit for `xlb --version`.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=XLB_EBPF_OBJECT");
    let path = match env::var_os("XLB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../target/ebpf/bpfel-unknown-none/release/xlb"),
    };
    if !path.is_file() {
        panic!(
            "the eBPF object {} does not exist: build it first with `cargo xtask build` \
             (or point XLB_EBPF_OBJECT at a built object)",
            path.display()
        );
    }
    let path = path.canonicalize().expect("the object path resolves");
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=XLB_EBPF_OBJECT={}", path.display());

    // The commit built, for `xlb --version` ("unknown" outside a git checkout).
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    for f in [".git/HEAD", ".git/index"] {
        if root.join(f).exists() {
            println!("cargo:rerun-if-changed={}", root.join(f).display());
        }
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!(
        "cargo:rustc-env=XLB_TARGET={}",
        env::var("TARGET").expect("set by cargo")
    );
    println!(
        "cargo:rustc-env=XLB_GIT_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
}
