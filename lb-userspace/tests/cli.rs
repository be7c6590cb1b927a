//! The binary's own facts: `--version` names the release and the commit, and shell
//! completions cover the subcommands.

use std::process::Command;

fn xlb(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(args)
        .output()
        .expect("xlb runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn version_names_the_release_and_the_commit() {
    let v = xlb(&["--version"]);
    assert!(
        v.starts_with(&format!("xlb {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(!v.contains("commit )"), "a commit or `unknown`: {v}");
}

#[test]
fn completions_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let script = xlb(&["completions", shell]);
        for sub in ["agent", "stats", "cleanup", "mount-bpffs", "completions"] {
            assert!(script.contains(sub), "{shell}: {sub}");
        }
        assert!(
            script.contains("max-backends"),
            "{shell}: the agent's flags"
        );
    }
}
