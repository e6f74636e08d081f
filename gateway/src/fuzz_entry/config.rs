//! The TOML config file: parsed and validated through `Config::from_cli`, the path the
//! binary takes, with the input as the file's contents.

use std::path::PathBuf;

use crate::config::{Cli, Config};

pub fn config(data: &[u8]) {
    // One file per process: libFuzzer runs inputs one after another, and parallel test
    // threads each get their own name.
    let path = scratch_path();
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let cli = Cli {
        config: Some(path.clone()),
        udp_bind: None,
        http_bind: None,
        threads: None,
        steering: None,
        public_ip: None,
        log_level: None,
        metrics_addr: None,
        ebpf_object: None,
        auth_token: None,
        max_sessions: None,
        max_participants_per_room: None,
        recv_buffer: None,
        send_buffer: None,
        gso: None,
        cluster: Default::default(),
    };
    if let Ok(config) = Config::from_cli(cli) {
        assert!((1..=crate::config::MAX_THREADS).contains(&config.threads));
        assert!(config.max_sessions >= 1 && config.max_participants_per_room >= 1);
        assert!(!config.public_ip.is_unspecified() && !config.public_ip.is_multicast());
    }
    let _ = std::fs::remove_file(&path);
}

fn scratch_path() -> PathBuf {
    let dir = std::env::temp_dir();
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    dir.join(format!(
        "roomgate-fuzz-config-{}-{thread}.toml",
        std::process::id()
    ))
}
