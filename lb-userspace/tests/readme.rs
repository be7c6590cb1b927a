//! The README's reference of agent flags names every flag `xlb agent` takes (a flag added
//! without documentation fails here).

use clap::CommandFactory as _;
use xlb::cli::Cli;

#[test]
fn the_readme_lists_every_agent_flag() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("### Every agent flag"))
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| `--"))
        .collect();
    assert!(!table.is_empty(), "README has no flag table");
    let cli = Cli::command();
    let agent = cli
        .get_subcommands()
        .find(|c| c.get_name() == "agent")
        .expect("the agent subcommand");
    let mut missing = Vec::new();
    for arg in agent.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" {
            continue;
        }
        let cell = format!("| `--{long}");
        if !table
            .iter()
            .any(|row| row.starts_with(&cell) && row[cell.len()..].starts_with([' ', '`']))
        {
            missing.push(long.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "flags missing from the README table: {missing:?}"
    );
}
