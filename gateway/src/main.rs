//! Thin entry point: validate everything, then run. Exit codes: 0 clean stop,
//! 1 start-up/runtime failure, 2 bad command line or config (nothing bound yet).
use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Cli, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomgate: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_writer(std::io::stderr)
        .init();
    if !gateway::steering::ebpf::embedded() && config.ebpf_object.is_none() {
        tracing::warn!("built without the eBPF steering object: only connected mode is available (build with `cargo xtask build`)");
    }
    match gateway::app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomgate: {e}");
            ExitCode::from(1)
        }
    }
}
