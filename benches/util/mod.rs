//! Helpers shared by the benchmarks: load generation and per-thread CPU accounting.
#![allow(dead_code)]

pub mod baseline;
pub mod counting;
pub mod cpu;
pub mod netns;
pub mod relay;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

pub const ROOMS: usize = 32;
pub const PER_ROOM: usize = 4;
pub const RUN_FOR: Duration = Duration::from_secs(4);
pub const SOURCE_IPS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// An RTP-looking datagram (version 2), 200 bytes.
pub fn rtp_payload() -> Vec<u8> {
    let mut d = vec![0x80u8, 96, 0, 1];
    d.resize(200, 0x5a);
    d
}

/// On-CPU nanoseconds of the given threads.
pub fn cpu_ns(pid: u32, tids: &[u32]) -> u64 {
    tids.iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/task/{t}/schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

pub fn threads_named(pid: u32, prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// Blast `datagrams` round-robin from `clients` to `to` for RUN_FOR. Returns datagrams sent.
pub fn blast(clients: &[UdpSocket], to: SocketAddr) -> u64 {
    let payload = rtp_payload();
    let deadline = Instant::now() + RUN_FOR;
    let mut sent = 0u64;
    'outer: loop {
        for c in clients {
            let _ = c.send_to(&payload, to);
            sent += 1;
        }
        if sent % 4096 < clients.len() as u64 && Instant::now() >= deadline {
            break 'outer;
        }
    }
    sent
}

pub fn client_sockets() -> Vec<UdpSocket> {
    (0..ROOMS * PER_ROOM)
        .map(|i| UdpSocket::bind((SOURCE_IPS[i % SOURCE_IPS.len()], 0)).expect("bind client"))
        .collect()
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Online CPUs, not available_parallelism: the media bench pins itself to one.
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
