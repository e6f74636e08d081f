//! Cluster flags, validated with the rest of the configuration before any port is bound.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::config::ConfigError;

/// The cluster options as given (command line or config file), not yet validated.
#[derive(Debug, Default, clap::Args)]
pub struct ClusterCli {
    /// Join a cluster whose room directory is this Redis: redis://[USER:PASS@]HOST:PORT[/DB],
    /// or rediss:// for TLS. Also read from ROOMGATE_CLUSTER_REDIS, which keeps a password
    /// out of `ps`. Without it roomgate runs alone.
    #[arg(
        long,
        value_name = "URL",
        env = "ROOMGATE_CLUSTER_REDIS",
        hide_env_values = true
    )]
    pub cluster_redis: Option<String>,

    /// PEM file with the root certificate(s) that sign the Redis server's certificate
    /// (rediss:// only). [default: the system's roots]
    #[arg(long, value_name = "PATH")]
    pub cluster_redis_ca: Option<PathBuf>,

    /// This node's name in the cluster: 1 to 64 characters from A-Z a-z 0-9 _ . -
    /// [default: the host name]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// The URL other nodes redirect clients to: http(s)://HOST:PORT, no path.
    /// [default: http://<--http-bind> unless that is a wildcard address]
    #[arg(long, value_name = "URL")]
    pub advertise_http: Option<String>,

    /// How long a draining node (POST /api/drain or SIGTERM) waits for its rooms to empty
    /// before it exits anyway: 500ms, 30s, 5m, 1h or plain seconds. [default: 30m]
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,

    /// Lifetime of the node's heartbeat and of its room claims in Redis; both are renewed
    /// every third of it. A node silent this long is dead and its rooms can be claimed
    /// again. 1s to 60s. [default: 3s]
    #[arg(long, value_name = "DURATION")]
    pub cluster_ttl: Option<String>,

    /// The receiving node takes a new room itself while its load (the larger of
    /// sessions/--max-sessions and its threads' busy ratio) is below this, 0.0 to 1.0;
    /// otherwise the least-loaded live node gets it. [default: 0.7]
    #[arg(long, value_name = "F")]
    pub cluster_load_threshold: Option<String>,

    /// Prefix of every Redis key, so that several clusters can share one Redis.
    /// [default: roomgate]
    #[arg(long, value_name = "NAME")]
    pub cluster_prefix: Option<String>,
}

impl ClusterCli {
    /// Fill what the command line left out from the config file.
    pub fn or(self, file: ClusterCli) -> ClusterCli {
        ClusterCli {
            cluster_redis: self.cluster_redis.or(file.cluster_redis),
            cluster_redis_ca: self.cluster_redis_ca.or(file.cluster_redis_ca),
            node_id: self.node_id.or(file.node_id),
            advertise_http: self.advertise_http.or(file.advertise_http),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            cluster_ttl: self.cluster_ttl.or(file.cluster_ttl),
            cluster_load_threshold: self.cluster_load_threshold.or(file.cluster_load_threshold),
            cluster_prefix: self.cluster_prefix.or(file.cluster_prefix),
        }
    }
}

/// Validated cluster settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub redis_ca: Option<PathBuf>,
    pub node_id: String,
    pub advertise_http: String,
    /// `--advertise-http` was not given: the URL follows the HTTP address actually bound
    /// (which differs from `--http-bind` for port 0).
    pub advertise_derived: bool,
    pub drain_timeout: Duration,
    pub ttl: Duration,
    pub load_threshold: f64,
    pub prefix: String,
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
pub const DEFAULT_LOAD_THRESHOLD: f64 = 0.7;
/// Below a second, one slow Redis answer or busy logic thread would let claims lapse.
const TTL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(60);

impl ClusterConfig {
    /// `None` without `--cluster-redis`; then every other cluster flag is an error, so a
    /// typo'd deployment does not silently run alone.
    pub fn from_cli(
        cli: ClusterCli,
        http_bind: SocketAddr,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(redis_url) = cli.cluster_redis else {
            let stray = [
                ("--cluster-redis-ca", cli.cluster_redis_ca.is_some()),
                ("--node-id", cli.node_id.is_some()),
                ("--advertise-http", cli.advertise_http.is_some()),
                ("--drain-timeout", cli.drain_timeout.is_some()),
                ("--cluster-ttl", cli.cluster_ttl.is_some()),
                (
                    "--cluster-load-threshold",
                    cli.cluster_load_threshold.is_some(),
                ),
                ("--cluster-prefix", cli.cluster_prefix.is_some()),
            ];
            if let Some((option, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(invalid(option, "", "needs --cluster-redis"));
            }
            return Ok(None);
        };
        let redis_url = redis_url.trim().to_owned();
        check_redis_url(&redis_url)?;
        if let Some(ca) = &cli.cluster_redis_ca {
            if !redis_url.starts_with("rediss://") {
                return Err(invalid(
                    "--cluster-redis-ca",
                    &ca.display().to_string(),
                    "only applies to a rediss:// (TLS) --cluster-redis",
                ));
            }
            if !ca.is_file() {
                return Err(invalid(
                    "--cluster-redis-ca",
                    &ca.display().to_string(),
                    "no such file",
                ));
            }
        }
        let node_id = match cli.node_id {
            Some(id) => id,
            None => hostname().ok_or_else(|| {
                invalid("--node-id", "", "the host name is unusable; set --node-id")
            })?,
        };
        check_name("--node-id", &node_id, 64)?;
        let advertise_derived = cli.advertise_http.is_none();
        let advertise_http = match cli.advertise_http {
            Some(url) => check_advertise(&url)?,
            None if http_bind.ip().is_unspecified() => {
                return Err(invalid(
                    "--advertise-http",
                    "",
                    "required when --http-bind is a wildcard address: other nodes redirect clients to it",
                ))
            }
            None => format!("http://{http_bind}"),
        };
        let drain_timeout = match cli.drain_timeout {
            Some(raw) => parse_duration("--drain-timeout", &raw)?,
            None => DEFAULT_DRAIN_TIMEOUT,
        };
        let ttl = match cli.cluster_ttl {
            Some(raw) => {
                let ttl = parse_duration("--cluster-ttl", &raw)?;
                if !TTL_RANGE.contains(&ttl) {
                    return Err(invalid("--cluster-ttl", &raw, "must be 1s to 60s"));
                }
                ttl
            }
            None => DEFAULT_TTL,
        };
        let load_threshold = match cli.cluster_load_threshold {
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => f,
                _ => {
                    return Err(invalid(
                        "--cluster-load-threshold",
                        &raw,
                        "expected a number from 0.0 to 1.0",
                    ))
                }
            },
            None => DEFAULT_LOAD_THRESHOLD,
        };
        let prefix = cli.cluster_prefix.unwrap_or_else(|| "roomgate".into());
        check_name("--cluster-prefix", &prefix, 64)?;
        Ok(Some(ClusterConfig {
            redis_url,
            redis_ca: cli.cluster_redis_ca,
            node_id,
            advertise_http,
            advertise_derived,
            drain_timeout,
            ttl,
            load_threshold,
            prefix,
        }))
    }
}

fn invalid(option: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        option,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The URL is parsed by the redis crate itself, so what passes here is what it will
/// connect to; the password never reaches the error line.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid(
            "--cluster-redis",
            "<hidden>",
            "expected redis://HOST:PORT or rediss://HOST:PORT",
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| invalid("--cluster-redis", "<hidden>", &e.to_string()))
}

fn check_name(option: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let ok = (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            option,
            name,
            &format!("must be 1 to {max} characters from A-Z a-z 0-9 _ . -"),
        ))
    }
}

/// `http(s)://HOST[:PORT]`, stored without a trailing slash so paths append cleanly.
fn check_advertise(raw: &str) -> Result<String, ConfigError> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let ok = rest.is_some_and(|hostport| {
        !hostport.is_empty()
            && !hostport.contains(['/', '?', '#', ' ', '@'])
            && hostport.parse::<axum::http::uri::Authority>().is_ok()
    });
    if ok {
        Ok(url.to_owned())
    } else {
        Err(invalid(
            "--advertise-http",
            raw,
            "expected http://HOST:PORT or https://HOST:PORT without a path",
        ))
    }
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// `500ms`, `3s`, `5m`, `1h`, or plain seconds.
pub fn parse_duration(option: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let text = raw.trim();
    let (digits, unit_ms) = if let Some(d) = text.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = text.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (text, 1_000)
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            invalid(
                option,
                raw,
                "expected a positive duration such as 500ms, 30s, 5m or 1h",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(redis: Option<&str>) -> ClusterCli {
        ClusterCli {
            cluster_redis: redis.map(str::to_owned),
            ..ClusterCli::default()
        }
    }

    fn bind() -> SocketAddr {
        "192.0.2.7:8080".parse().unwrap()
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration("--x", s).ok();
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("3s"), Some(Duration::from_secs(3)));
        assert_eq!(d("5m"), Some(Duration::from_secs(300)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d(" 42 "), Some(Duration::from_secs(42)));
        for bad in ["", "0", "-1s", "1.5s", "s", "3d", "99999999999999999999h"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_redis_nothing_else_is_accepted() {
        assert!(ClusterConfig::from_cli(cli(None), bind())
            .unwrap()
            .is_none());
        let stray = ClusterCli {
            node_id: Some("n1".into()),
            ..ClusterCli::default()
        };
        let e = ClusterConfig::from_cli(stray, bind()).unwrap_err();
        assert!(e.to_string().contains("--node-id"), "{e}");
        assert!(e.to_string().contains("needs --cluster-redis"), "{e}");
    }

    #[test]
    fn defaults_follow_the_http_bind() {
        let c = ClusterConfig::from_cli(cli(Some("redis://127.0.0.1:6379")), bind())
            .unwrap()
            .unwrap();
        assert_eq!(c.advertise_http, "http://192.0.2.7:8080");
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert_eq!(c.prefix, "roomgate");
        let wildcard = ClusterConfig::from_cli(
            cli(Some("redis://127.0.0.1:6379")),
            "0.0.0.0:8080".parse().unwrap(),
        );
        assert!(wildcard.is_err());
    }

    #[test]
    fn bad_values_are_refused_without_leaking_the_password() {
        let e = ClusterConfig::from_cli(cli(Some("http://user:secret@h:1")), bind()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        for (field, value) in [
            ("advertise", "ftp://x:1"),
            ("advertise", "http://x:1/path"),
            ("ttl", "900ms"),
            ("ttl", "2m"),
            ("threshold", "1.5"),
            ("threshold", "x"),
            ("node", "has space"),
            ("prefix", ""),
        ] {
            let mut c = cli(Some("redis://127.0.0.1:6379"));
            match field {
                "advertise" => c.advertise_http = Some(value.into()),
                "ttl" => c.cluster_ttl = Some(value.into()),
                "threshold" => c.cluster_load_threshold = Some(value.into()),
                "node" => c.node_id = Some(value.into()),
                _ => c.cluster_prefix = Some(value.into()),
            }
            assert!(
                ClusterConfig::from_cli(c, bind()).is_err(),
                "{field}={value:?} accepted"
            );
        }
    }
}
