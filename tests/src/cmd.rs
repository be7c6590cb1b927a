//! Running the system tools the lab is built with (ip, ethtool, sysctl, mount).

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its stderr if it does not succeed.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with arguments given as one string (split on whitespace).
pub fn ip(args: &str) -> anyhow::Result<String> {
    let v: Vec<&str> = args.split_whitespace().collect();
    run("ip", &v)
}
