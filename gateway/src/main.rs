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
        .with_env_filter(tracing_subscriber::EnvFilter::new(quiet_dependencies(
            &config.log_level,
        )))
        .with_writer(std::io::stderr)
        // Colour only for people at a terminal, not for journald or log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !gateway::steering::ebpf::embedded() && config.ebpf_object.is_none() {
        tracing::warn!("built without the eBPF steering object: only connected mode is available (build with `cargo xtask build`)");
    }
    match gateway::app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomgate: {}", with_causes(&e));
            ExitCode::from(1)
        }
    }
}

/// "outer: cause: root cause" on one line, so the OS error (e.g. EPERM) is never hidden.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// webrtc-dtls warns about every TLS extension it does not implement (OpenSSL-based
/// clients send several per handshake) and logs handshake internals at debug; roomgate
/// reports handshake outcomes itself. Unless the filter names the crate, keep it to errors.
fn quiet_dependencies(filter: &str) -> String {
    if filter.contains("webrtc_dtls") {
        filter.to_owned()
    } else {
        format!("{filter},webrtc_dtls=error")
    }
}
