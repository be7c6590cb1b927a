//! Points the agent at the eBPF object it embeds (built first by `cargo xtask build`).

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
}
