//! Command line and config file, validated completely before any port is bound.
//!
//! Precedence: command line > `--config` TOML file > built-in defaults. Every value is
//! checked here so that `main` can exit 2 with one clear line on anything wrong, the
//! way linkerd2-proxy refuses to start on a bad config instead of failing half-way.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::net::BufferSizes;

/// How packets reach the logic thread that owns their room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SteeringMode {
    /// Try eBPF; if loading or attaching fails, log why and run connected.
    Auto,
    /// eBPF `sk_reuseport` steering; refuse to start without it.
    Ebpf,
    /// Connected-UDP fallback: one connected socket per client on its owning thread.
    Connected,
}

impl SteeringMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SteeringMode::Auto => "auto",
            SteeringMode::Ebpf => "ebpf",
            SteeringMode::Connected => "connected",
        }
    }
}

/// roomgate: a WebRTC media gateway that shares one UDP port across all cores and
/// lets the kernel steer every packet to the thread that owns its room.
#[derive(Debug, Parser)]
#[command(name = "roomgate", version, about, long_about = None)]
pub struct Cli {
    /// TOML file with any of the options below (snake_case keys, e.g. `udp_bind`).
    /// Command-line flags override it.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// UDP address all media uses (one port for every thread). Port 0 picks a free port.
    /// [default: 0.0.0.0:7000]
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp_bind: Option<String>,

    /// Address of the HTTP API (REST, health). [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR:PORT")]
    pub http_bind: Option<String>,

    /// Number of logic threads, 1..=256. [default: available cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<String>,

    /// Packet steering: auto, ebpf or connected. [default: auto]
    #[arg(long, value_name = "MODE")]
    pub steering: Option<String>,

    /// IP address advertised in ICE candidates. [default: the --udp-bind address if it is
    /// not a wildcard, else the first non-loopback IPv4 address of the host]
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,

    /// Log filter: error, warn, info, debug, trace, or tracing directives such as
    /// `info,gateway::logic=trace` (trace shows every steering decision). [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Also serve /metrics on this address (it is always on the HTTP API address too).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<String>,

    /// Load the eBPF object from this file instead of the one embedded at build time.
    #[arg(long, value_name = "PATH")]
    pub ebpf_object: Option<PathBuf>,

    /// Require `Authorization: Bearer TOKEN` on WHIP, WHEP and the room/participant API.
    /// Also read from ROOMGATE_AUTH_TOKEN, which keeps it out of `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ROOMGATE_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// Most sessions (WHIP, WHEP and REST participants) over all threads; more answer 503.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<String>,

    /// Most sessions in one room; more answer 503. [default: 64]
    #[arg(long, value_name = "N")]
    pub max_participants_per_room: Option<String>,

    /// Kernel receive buffer of every media socket (bytes, or with a K/M/G suffix). In eBPF
    /// mode one socket per thread absorbs the bursts of all its clients. Set past
    /// net.core.rmem_max with CAP_NET_ADMIN, else capped there with a warning. [default: 8M]
    #[arg(long, value_name = "BYTES")]
    pub recv_buffer: Option<String>,

    /// Kernel send buffer of every media socket (bytes, or with a K/M/G suffix); capped at
    /// net.core.wmem_max without CAP_NET_ADMIN. [default: 4M]
    #[arg(long, value_name = "BYTES")]
    pub send_buffer: Option<String>,

    /// Send runs of same-sized datagrams to one client (a burst fanned out) as one UDP GSO
    /// send: on or off. Off sends every datagram on its own. [default: on]
    #[arg(long, value_name = "on|off")]
    pub gso: Option<String>,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterCli,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    udp_bind: Option<String>,
    http_bind: Option<String>,
    threads: Option<toml::Value>,
    steering: Option<String>,
    public_ip: Option<String>,
    log_level: Option<String>,
    metrics_addr: Option<String>,
    ebpf_object: Option<PathBuf>,
    auth_token: Option<String>,
    max_sessions: Option<toml::Value>,
    max_participants_per_room: Option<toml::Value>,
    recv_buffer: Option<toml::Value>,
    send_buffer: Option<toml::Value>,
    gso: Option<toml::Value>,
    cluster_redis: Option<String>,
    cluster_redis_ca: Option<PathBuf>,
    node_id: Option<String>,
    advertise_http: Option<String>,
    drain_timeout: Option<toml::Value>,
    cluster_ttl: Option<toml::Value>,
    cluster_load_threshold: Option<toml::Value>,
    cluster_prefix: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub udp_bind: SocketAddr,
    pub http_bind: SocketAddr,
    pub threads: usize,
    pub steering: SteeringMode,
    pub public_ip: IpAddr,
    pub log_level: String,
    pub metrics_addr: Option<SocketAddr>,
    pub ebpf_object: Option<PathBuf>,
    pub auth_token: Option<String>,
    pub max_sessions: usize,
    pub max_participants_per_room: usize,
    pub buffers: BufferSizes,
    pub gso: bool,
    /// `--cluster-redis` and friends; `None` runs alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid {option} {value:?}: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
}

pub const DEFAULT_UDP_BIND: &str = "0.0.0.0:7000";
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
pub const DEFAULT_MAX_PARTICIPANTS_PER_ROOM: usize = 64;
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:8080";
pub const MAX_THREADS: usize = roomgate_common::MAX_THREADS as usize;

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let udp_bind = parse_socket_addr(
            "--udp-bind",
            cli.udp_bind
                .or(file.udp_bind)
                .as_deref()
                .unwrap_or(DEFAULT_UDP_BIND),
        )?;
        let http_bind = parse_socket_addr(
            "--http-bind",
            cli.http_bind
                .or(file.http_bind)
                .as_deref()
                .unwrap_or(DEFAULT_HTTP_BIND),
        )?;
        let threads = match cli.threads.or(file.threads.map(toml_scalar)) {
            Some(raw) => parse_threads(&raw)?,
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_THREADS),
        };
        let steering = match cli.steering.or(file.steering) {
            Some(raw) => SteeringMode::from_str(&raw, true).map_err(|_| ConfigError::Invalid {
                option: "--steering",
                value: raw,
                reason: "expected auto, ebpf or connected".into(),
            })?,
            None => SteeringMode::Auto,
        };
        let public_ip = match cli.public_ip.or(file.public_ip) {
            Some(raw) => {
                let ip = IpAddr::from_str(raw.trim()).map_err(|e| ConfigError::Invalid {
                    option: "--public-ip",
                    value: raw.clone(),
                    reason: e.to_string(),
                })?;
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(ConfigError::Invalid {
                        option: "--public-ip",
                        value: raw,
                        reason: "must be a unicast address clients can reach".into(),
                    });
                }
                ip
            }
            None => default_public_ip(udp_bind.ip()),
        };
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError::Invalid {
                option: "--log-level",
                value: log_level,
                reason: e.to_string(),
            });
        }
        let metrics_addr = match cli.metrics_addr.or(file.metrics_addr) {
            Some(raw) => Some(parse_socket_addr("--metrics-addr", &raw)?),
            None => None,
        };
        let ebpf_object = cli.ebpf_object.or(file.ebpf_object);
        if let Some(path) = &ebpf_object {
            if !path.is_file() {
                return Err(ConfigError::Invalid {
                    option: "--ebpf-object",
                    value: path.display().to_string(),
                    reason: "no such file".into(),
                });
            }
        }
        if steering == SteeringMode::Connected && ebpf_object.is_some() {
            return Err(ConfigError::Invalid {
                option: "--ebpf-object",
                value: ebpf_object
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: "has no effect with --steering connected".into(),
            });
        }
        let auth_token = cli.auth_token.or(file.auth_token);
        if let Some(token) = &auth_token {
            // RFC 6750 b64token: what a browser can put in an Authorization header verbatim.
            let ok = !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
            if !ok {
                return Err(ConfigError::Invalid {
                    option: "--auth-token",
                    value: "<hidden>".into(),
                    reason: "must be non-empty and use only A-Z a-z 0-9 - . _ ~ + / =".into(),
                });
            }
        }
        let max_sessions = parse_limit(
            "--max-sessions",
            cli.max_sessions.or(file.max_sessions.map(toml_scalar)),
            DEFAULT_MAX_SESSIONS,
        )?;
        let max_participants_per_room = parse_limit(
            "--max-participants-per-room",
            cli.max_participants_per_room
                .or(file.max_participants_per_room.map(toml_scalar)),
            DEFAULT_MAX_PARTICIPANTS_PER_ROOM,
        )?;
        let buffers = BufferSizes {
            recv: parse_size(
                "--recv-buffer",
                cli.recv_buffer.or(file.recv_buffer.map(toml_scalar)),
                crate::net::buffers::DEFAULT_RECV_BUFFER,
            )?,
            send: parse_size(
                "--send-buffer",
                cli.send_buffer.or(file.send_buffer.map(toml_scalar)),
                crate::net::buffers::DEFAULT_SEND_BUFFER,
            )?,
        };
        let gso = match cli.gso.or(file.gso.map(toml_scalar)) {
            None => true,
            Some(raw) => match raw.trim() {
                "on" | "true" => true,
                "off" | "false" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        option: "--gso",
                        value: raw,
                        reason: "expected on or off".into(),
                    })
                }
            },
        };
        let cluster = crate::cluster::ClusterConfig::from_cli(
            cli.cluster.or(crate::cluster::ClusterCli {
                cluster_redis: file.cluster_redis,
                cluster_redis_ca: file.cluster_redis_ca,
                node_id: file.node_id,
                advertise_http: file.advertise_http,
                drain_timeout: file.drain_timeout.map(toml_scalar),
                cluster_ttl: file.cluster_ttl.map(toml_scalar),
                cluster_load_threshold: file.cluster_load_threshold.map(toml_scalar),
                cluster_prefix: file.cluster_prefix,
            }),
            http_bind,
        )?;
        Ok(Config {
            cluster,
            gso,
            buffers,
            auth_token,
            max_sessions,
            max_participants_per_room,
            udp_bind,
            http_bind,
            threads,
            steering,
            public_ip,
            log_level,
            metrics_addr,
            ebpf_object,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        // toml's Display spans several lines; one line keeps the exit message single.
        message: e.message().to_owned(),
    })
}

fn toml_scalar(v: toml::Value) -> String {
    match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn parse_socket_addr(option: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(raw.trim()).map_err(|e| ConfigError::Invalid {
        option,
        value: raw.to_owned(),
        reason: format!("{e} (expected ADDR:PORT, e.g. 0.0.0.0:7000 or [::]:7000)"),
    })
}

fn parse_limit(
    option: &'static str,
    raw: Option<String>,
    default: usize,
) -> Result<usize, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        Ok(_) => Err(ConfigError::Invalid {
            option,
            value: raw,
            reason: "must be between 1 and 1000000".into(),
        }),
        Err(e) => Err(ConfigError::Invalid {
            option,
            value: raw,
            reason: e.to_string(),
        }),
    }
}

/// Smallest and largest socket buffer accepted (the kernel's own floor is ~2 KiB).
const BUFFER_RANGE: std::ops::RangeInclusive<usize> = 1024..=(1 << 30);

/// Bytes, optionally with a binary K, M or G suffix ("8M" = 8 MiB).
fn parse_size(
    option: &'static str,
    raw: Option<String>,
    default: usize,
) -> Result<usize, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        option,
        value: raw.clone(),
        reason,
    };
    let text = raw.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|e| invalid(format!("{e} (expected bytes, e.g. 8388608 or 8M)")))?;
    let bytes = n
        .checked_mul(1 << shift)
        .filter(|b| BUFFER_RANGE.contains(b))
        .ok_or_else(|| invalid("must be between 1K and 1G".into()))?;
    Ok(bytes)
}

fn parse_threads(raw: &str) -> Result<usize, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        option: "--threads",
        value: raw.to_owned(),
        reason,
    };
    let n: usize = raw.trim().parse().map_err(|e| invalid(format!("{e}")))?;
    if n == 0 || n > MAX_THREADS {
        return Err(invalid(format!("must be between 1 and {MAX_THREADS}")));
    }
    Ok(n)
}

/// The address clients are told to send to. A concrete bind address is the only one
/// that works; for a wildcard bind pick the first non-loopback IPv4 address.
fn default_public_ip(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter()
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("roomgate").chain(args.iter().copied()))
            .expect("clap parses")
    }

    #[test]
    fn defaults() {
        let c = Config::from_cli(cli(&[])).expect("defaults are valid");
        assert_eq!(c.udp_bind, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(c.http_bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.steering, SteeringMode::Auto);
        assert!(c.threads >= 1);
        assert_eq!(c.buffers, BufferSizes::default());
    }

    #[test]
    fn buffer_sizes_take_suffixes_from_flags_and_file() {
        let c = Config::from_cli(cli(&["--recv-buffer", "16M", "--send-buffer", "64k"])).unwrap();
        assert_eq!(c.buffers.recv, 16 << 20);
        assert_eq!(c.buffers.send, 64 << 10);
        let dir = std::env::temp_dir().join(format!("roomgate-buf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "recv_buffer = 4096\nsend_buffer = \"1M\"\n").unwrap();
        let c = Config::from_cli(cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.buffers.recv, 4096);
        assert_eq!(c.buffers.send, 1 << 20);
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, option) in [
            (&["--threads", "0"][..], "--threads"),
            (&["--threads", "999"][..], "--threads"),
            (&["--threads", "two"][..], "--threads"),
            (&["--udp-bind", "7000"][..], "--udp-bind"),
            (&["--http-bind", "localhost:x"][..], "--http-bind"),
            (&["--steering", "magic"][..], "--steering"),
            (&["--public-ip", "0.0.0.0"][..], "--public-ip"),
            (&["--public-ip", "nope"][..], "--public-ip"),
            (&["--log-level", "info,[="][..], "--log-level"),
            (&["--ebpf-object", "/nonexistent/obj"][..], "--ebpf-object"),
            (&["--metrics-addr", "9100"][..], "--metrics-addr"),
            (&["--max-sessions", "0"][..], "--max-sessions"),
            (
                &["--max-participants-per-room", "x"][..],
                "--max-participants-per-room",
            ),
            (&["--auth-token", "has space"][..], "--auth-token"),
            (&["--auth-token", ""][..], "--auth-token"),
            (&["--recv-buffer", "lots"][..], "--recv-buffer"),
            (&["--recv-buffer", "2G"][..], "--recv-buffer"),
            (&["--send-buffer", "100"][..], "--send-buffer"),
            (&["--gso", "maybe"][..], "--gso"),
        ] {
            let err = Config::from_cli(cli(args)).expect_err("must be rejected");
            let msg = err.to_string();
            assert!(msg.contains(option), "{args:?} -> {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn file_then_cli_precedence() {
        let dir = std::env::temp_dir().join(format!("roomgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "threads = 3\nsteering = \"connected\"\nudp_bind = \"127.0.0.1:7100\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::from_cli(cli(&["--config", p, "--threads", "2"])).unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.steering, SteeringMode::Connected);
        assert_eq!(c.public_ip, "127.0.0.1".parse::<IpAddr>().unwrap());

        std::fs::write(&path, "thread = 3\n").unwrap();
        let err = Config::from_cli(cli(&["--config", p])).expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
