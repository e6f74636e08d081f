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
/// a hung server turns into a prompt 503 rather than a hung WHIP request. Never more than
/// a third of the TTL: one slow answer must not let the claims lapse.
const MAX_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cluster directory unreachable (Redis: not connected)")]
    NotConnected,
    /// Any failed command: the connection is dropped and replaced, because a server that
    /// answers READONLY (after a failover), NOPERM or OOM cannot keep claims alive either.
    #[error("cluster directory unreachable (Redis: {0})")]
    Unreachable(#[source] redis::RedisError),
    #[error("cluster directory unreachable (Redis answered something unreadable: {0})")]
    Unreadable(String),
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

/// What a heartbeat found.
#[derive(Debug)]
pub enum Beat {
    /// Published: the rooms another node holds, and every live node's record.
    Published {
        lost: Vec<String>,
        view: Vec<NodeRecord>,
    },
    /// Another live process has this node id (its record); nothing was written.
    Duplicate(Option<NodeRecord>),
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
    /// A command or connection attempt failed since the last connection was made.
    failed_since_connect: AtomicBool,
    response_timeout: Duration,
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
            failed_since_connect: AtomicBool::new(false),
            response_timeout: (config.ttl / 3).min(MAX_RESPONSE_TIMEOUT),
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

    /// When a connection was last made after a failure (a reconnect, or the first
    /// connection of a node that started while Redis was away).
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
                if self.failed_since_connect.swap(false, Ordering::Relaxed) {
                    if let Ok(mut at) = self.reconnected_at.lock() {
                        *at = Some(Instant::now());
                    }
                }
                if self.ever_up.swap(true, Ordering::Relaxed) {
                    self.metrics.reconnected();
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
                self.failed_since_connect.store(true, Ordering::Relaxed);
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
            .set_response_timeout(Some(self.response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn conn(&self) -> Result<MultiplexedConnection, DirectoryError> {
        self.conn
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .ok_or(DirectoryError::NotConnected)
    }

    /// Count a failed command and drop the connection so the reconnect loop replaces
    /// it: whatever the failure (I/O, timeout, READONLY after a failover, NOPERM, OOM),
    /// the directory cannot be trusted with claims until a fresh connection works.
    fn failed(&self, e: redis::RedisError) -> DirectoryError {
        self.metrics.redis_error();
        self.failed_since_connect.store(true, Ordering::Relaxed);
        let was_up = self.conn.lock().ok().and_then(|mut c| c.take()).is_some();
        self.metrics.set_redis_up(false);
        if was_up {
            self.outage(&e);
        }
        DirectoryError::Unreachable(e)
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
            other => Err(DirectoryError::Unreadable(format!(
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

    /// Publish `me` (alive for `ttl`), renew the claims of `rooms` (for `claim_ttl`), and
    /// read the membership.
    pub async fn heartbeat(
        &self,
        me: &NodeRecord,
        rooms: &[String],
        ttl: Duration,
        claim_ttl: Duration,
    ) -> Result<Beat, DirectoryError> {
        let mut conn = self.conn()?;
        let record =
            serde_json::to_string(me).map_err(|e| DirectoryError::Unreadable(e.to_string()))?;
        let started = Instant::now();
        let mut invocation = self.scripts.heartbeat.key(self.key("node", &self.node_id));
        invocation
            .key(self.nodes_key())
            .arg(&self.prefix)
            .arg(&self.node_id)
            .arg(record)
            .arg(ttl.as_millis() as u64)
            .arg(&me.instance)
            .arg(claim_ttl.as_millis() as u64)
            .arg(rooms);
        let reply: Result<(String, Vec<String>, Vec<String>), _> =
            invocation.invoke_async(&mut conn).await;
        self.metrics
            .observe_op(OpKind::Heartbeat, started.elapsed().as_secs_f64());
        let (status, lost, view) = reply.map_err(|e| self.failed(e))?;
        if status == "duplicate" {
            let other = view.first().map(|r| parse_record(r)).transpose()?;
            return Ok(Beat::Duplicate(other));
        }
        Ok(Beat::Published {
            lost,
            view: parse_view(&view),
        })
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
        .map_err(|e| DirectoryError::Unreadable(format!("node record {json:?}: {e}")))
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
