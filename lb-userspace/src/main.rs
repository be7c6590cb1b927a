//! The `xlb` binary: parses the command line and calls into the library.

use std::io::IsTerminal as _;

use clap::Parser as _;
use xlb::cli::{Cli, Command, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(cli.log_filter())?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Agent(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(xlb::agent::run(args)),
        Command::Stats(args) => {
            let report = xlb::stats::read(&args.bpffs)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", xlb::stats::render(&report));
            }
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut xlb::cli::Cli::command(),
                "xlb",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::MountBpffs(args) => {
            if xlb::datapath::mount_bpffs(&args.path)? {
                eprintln!("mounted a bpf filesystem at {}", args.path.display());
            } else {
                eprintln!("{} is a bpf filesystem already", args.path.display());
            }
            Ok(())
        }
        Command::Cleanup(args) => {
            match xlb::datapath::remove_pins(&args.bpffs)? {
                0 => eprintln!(
                    "no xlb pins in {}: nothing to clean up (was the agent started with a \
                     different --bpffs?)",
                    args.bpffs.display()
                ),
                n => eprintln!("removed {n} pins in {}", args.bpffs.display()),
            }
            Ok(())
        }
    }
}
