//! Helpers shared by the privileged test files.
#![allow(dead_code)]

use std::path::PathBuf;

use xlb_tests::lab::Lab;

/// The `xlb` binary under test: `XLB_BIN` (set by `cargo xtask test`), or the debug build.
pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xlb");
    assert!(
        p.is_file(),
        "no xlb binary at {}: run the tests with `cargo xtask test` (or set XLB_BIN)",
        p.display()
    );
    p
}

pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xlb-lab-server"))
}

/// A lab with three backends serving, the default manifests and a running agent.
pub fn default_lab() -> Lab {
    let mut lab = Lab::build(3).expect("lab topology");
    lab.start_servers(&server_bin()).expect("backend servers");
    lab.write_default_manifests().expect("manifests");
    lab.start_agent(&xlb_bin(), &[]).expect("agent");
    lab
}
