//! The room directory in Redis: one connection, five Lua scripts, and the reconnect loop.
//!
//! Every write is a script, so each decision (claim, renew, release) is atomic on the
//! server and costs one round trip. The connection is multiplexed: concurrent HTTP
//! requests share it without a pool. When Redis stops answering the connection is
//! dropped, every operation fails fast with [`DirectoryError::Unreachable`], and
//! [`Directory::reconnect_loop`] tries again every [`RECONNECT_INTERVAL`].
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Script};
use tracing::{debug, error, info, warn};

use super::{
    metrics::{ClusterMetrics, OpKind},
    placement::NodeRecord,
};

/// How often a lost connection is retried.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// A command Redis has not answered in this long counts as Redis being unreachable, so
/// a hung server turns into a prompt 503 rather than a hung WHIP request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cluster directory unreachable (Redis: {0})")]
    Unreachable(String),
    #[error("cluster directory (Redis) failed: {0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read --cluster-redis-ca {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("--cluster-redis: {0}")]
    Client(redis::RedisError),
}

/// What the claim script decided.
#[derive(Debug)]
pub enum Claim {
    /// The room has a live owner, or now has one: its record (with its URL).
    Owned { record: NodeRecord, won: bool },
    /// The node the claim named is dead or draining.
    Refused,
}

struct Scripts {
    claim: Script,
    lookup: Script,
    heartbeat: Script,
    release: Script,
    nodes: Script,
}

pub struct Directory {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Set once a connection has worked, so the first connection is not a "reconnect".
    ever_up: AtomicBool,
    /// The current outage has been logged.
    outage_logged: AtomicBool,
    prefix: String,
    node_id: String,
    scripts: Scripts,
    metrics: Arc<ClusterMetrics>,
    /// Woken when the connection comes back, so the heartbeat re-asserts claims at once.
    pub reconnected: tokio::sync::Notify,
    /// When the connection last came back (for the grace before new claims).
    reconnected_at: Mutex<Option<Instant>>,
}

impl Directory {
    pub fn open(
        config: &super::config::ClusterConfig,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Directory, OpenError> {
        let client = match &config.redis_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| OpenError::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
                redis::Client::build_with_tls(
                    config.redis_url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(config.redis_url.as_str()),
        }
        .map_err(OpenError::Client)?;
        Ok(Directory {
            client,
            conn: Mutex::new(None),
            ever_up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            prefix: config.prefix.clone(),
            node_id: config.node_id.clone(),
            scripts: Scripts {
                claim: Script::new(include_str!("lua/claim.lua")),
                lookup: Script::new(include_str!("lua/lookup.lua")),
                heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
                release: Script::new(include_str!("lua/release.lua")),
                nodes: Script::new(include_str!("lua/nodes.lua")),
            },
            metrics,
            reconnected: tokio::sync::Notify::new(),
            reconnected_at: Mutex::new(None),
        })
    }

    pub fn is_up(&self) -> bool {
        self.conn.lock().is_ok_and(|c| c.is_some())
    }

    /// When the connection last came back after a loss.
    pub fn reconnected_at(&self) -> Option<Instant> {
        self.reconnected_at.lock().ok().and_then(|t| *t)
    }

    /// Keep a connection: again whenever an operation dropped it.
    pub async fn reconnect_loop(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if !self.is_up() {
                self.try_connect().await;
            }
            tokio::time::sleep(RECONNECT_INTERVAL).await;
        }
    }

    /// One connection attempt. Returns whether a connection is up now.
    pub async fn try_connect(&self) -> bool {
        match self.connect().await {
            Ok(conn) => {
                if let Ok(mut slot) = self.conn.lock() {
                    *slot = Some(conn);
                }
                self.metrics.set_redis_up(true);
                self.outage_logged.store(false, Ordering::Relaxed);
                if self.ever_up.swap(true, Ordering::Relaxed) {
                    self.metrics.reconnected();
                    if let Ok(mut at) = self.reconnected_at.lock() {
                        *at = Some(Instant::now());
                    }
                    info!("cluster directory (Redis) reconnected");
                } else {
                    info!("cluster directory (Redis) connected");
                }
                self.reconnected.notify_one();
                true
            }
            Err(e) => {
                self.metrics.redis_error();
                self.metrics.set_redis_up(false);
                self.outage(&e);
                false
            }
        }
    }

    /// One error line per outage, whichever noticed it first (a failed command or a
    /// failed connection attempt); the retries log at debug.
    fn outage(&self, e: &redis::RedisError) {
        if self.outage_logged.swap(true, Ordering::Relaxed) {
            debug!(error = %e, "cluster directory (Redis) still unreachable");
        } else {
            error!(error = %e, "cluster directory (Redis) unreachable: new rooms are refused, owned rooms keep running; retrying every {} ms", RECONNECT_INTERVAL.as_millis());
        }
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn conn(&self) -> Result<MultiplexedConnection, DirectoryError> {
        self.conn
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(|| DirectoryError::Unreachable("not connected".into()))
    }

    /// Count and classify a failed command; a connection-level failure drops the
    /// connection so the reconnect loop replaces it.
    fn failed(&self, e: redis::RedisError) -> DirectoryError {
        self.metrics.redis_error();
        let connection_lost = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error();
        if connection_lost {
            let was_up = self.conn.lock().ok().and_then(|mut c| c.take()).is_some();
            self.metrics.set_redis_up(false);
            if was_up {
                self.outage(&e);
            }
            DirectoryError::Unreachable(e.to_string())
        } else {
            warn!(error = %e, "cluster directory (Redis) command failed");
            DirectoryError::Failed(e.to_string())
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Claim `room` for `target`, or learn its live owner.
    pub async fn claim(
        &self,
        room: &str,
        target: &str,
        ttl: Duration,
    ) -> Result<Claim, DirectoryError> {
        let mut conn = self.conn()?;
        let started = Instant::now();
        let reply: Result<(String, String, String), _> = self
            .scripts
            .claim
            .key(self.key("room", room))
            .arg(&self.prefix)
            .arg(target)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        self.metrics
            .observe_op(OpKind::Claim, started.elapsed().as_secs_f64());
        let (_, outcome, record) = reply.map_err(|e| self.failed(e))?;
        match outcome.as_str() {
            "refused" => Ok(Claim::Refused),
            "won" | "existing" => Ok(Claim::Owned {
                record: parse_record(&record)?,
                won: outcome == "won",
            }),
            other => Err(DirectoryError::Failed(format!(
                "claim script answered {other:?}"
            ))),
        }
    }

    /// The live owner of `room`, if any.
    pub async fn lookup(&self, room: &str) -> Result<Option<NodeRecord>, DirectoryError> {
        let mut conn = self.conn()?;
        let started = Instant::now();
        let reply: Result<(String, String), _> = self
            .scripts
            .lookup
            .key(self.key("room", room))
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await;
        self.metrics
            .observe_op(OpKind::Lookup, started.elapsed().as_secs_f64());
        let (owner, record) = reply.map_err(|e| self.failed(e))?;
        if owner.is_empty() {
            return Ok(None);
        }
        parse_record(&record).map(Some)
    }

    /// Publish `me`, renew the claims of `rooms`, and read the membership. Returns the
    /// rooms another node holds and every live node's record.
    pub async fn heartbeat(
        &self,
        me: &NodeRecord,
        rooms: &[String],
        ttl: Duration,
    ) -> Result<(Vec<String>, Vec<NodeRecord>), DirectoryError> {
        let mut conn = self.conn()?;
        let record =
            serde_json::to_string(me).map_err(|e| DirectoryError::Failed(e.to_string()))?;
        let started = Instant::now();
        let mut invocation = self.scripts.heartbeat.key(self.key("node", &self.node_id));
        invocation
            .key(self.nodes_key())
            .arg(&self.prefix)
            .arg(&self.node_id)
            .arg(record)
            .arg(ttl.as_millis() as u64)
            .arg(rooms);
        let reply: Result<(Vec<String>, Vec<String>), _> = invocation.invoke_async(&mut conn).await;
        self.metrics
            .observe_op(OpKind::Heartbeat, started.elapsed().as_secs_f64());
        let (lost, view) = reply.map_err(|e| self.failed(e))?;
        Ok((lost, parse_view(&view)))
    }

    /// Delete the claims of `rooms` that still name this node; with `leave`, this
    /// node's record too.
    pub async fn release(&self, rooms: &[String], leave: bool) -> Result<u64, DirectoryError> {
        let mut conn = self.conn()?;
        let started = Instant::now();
        let mut invocation = self.scripts.release.key(self.key("node", &self.node_id));
        invocation
            .key(self.nodes_key())
            .arg(&self.prefix)
            .arg(&self.node_id)
            .arg(if leave { "leave" } else { "stay" })
            .arg(rooms);
        let reply: Result<u64, _> = invocation.invoke_async(&mut conn).await;
        self.metrics
            .observe_op(OpKind::Release, started.elapsed().as_secs_f64());
        reply.map_err(|e| self.failed(e))
    }

    /// Every live node's record.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, DirectoryError> {
        let mut conn = self.conn()?;
        let reply: Result<Vec<String>, _> = self
            .scripts
            .nodes
            .key(self.nodes_key())
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await;
        let view = reply.map_err(|e| self.failed(e))?;
        Ok(parse_view(&view))
    }
}

fn parse_record(json: &str) -> Result<NodeRecord, DirectoryError> {
    serde_json::from_str(json)
        .map_err(|e| DirectoryError::Failed(format!("node record {json:?}: {e}")))
}

/// Records another version wrote in a shape this one cannot read are skipped (and
/// logged) rather than failing the whole view.
fn parse_view(records: &[String]) -> Vec<NodeRecord> {
    records
        .iter()
        .filter_map(|r| match parse_record(r) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %e, "skipping an unreadable node record");
                None
            }
        })
        .collect()
}
