//! Cluster mode: many roomgate hosts, one room directory in Redis.
//!
//! Inside a host a room lives on the thread `room_hash % threads`; across hosts it lives
//! on the node whose claim `P:room:{room}` names. Any node answers signaling for any
//! room: the owner handles it, every other node redirects (307) to the owner. A node
//! whose heartbeat expired is dead and its rooms can be claimed again.
//!
//! Everything here runs on the control plane's runtime; the media path never sees it.
//! Ownership state is a plain mutex-guarded map because only HTTP handlers and the
//! heartbeat touch it, never a logic thread.
pub mod config;
mod directory;
#[cfg(test)]
mod directory_tests;
mod drain;
mod heartbeat;
pub mod metrics;
pub mod placement;
mod routing;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use tracing::{info, warn};

pub use config::{ClusterCli, ClusterConfig};
use directory::Directory;
pub use directory::OpenError;
use metrics::ClusterMetrics;
use placement::{NodeRecord, NodeState};
pub use routing::Route;

use crate::{logic::ThreadHandle, room::RoomId};

/// A claim lives this many TTLs (its owner's record lives one): a claim is void as soon
/// as its owner's record has expired, so its own lifetime only bounds how long a stale
/// claim lingers, and it lets most heartbeats renew no claim at all.
const CLAIM_TTLS: u32 = 3;
/// Every this many beats (and after every reconnect) a heartbeat renews and checks all
/// claims: 4 beats are 4/3 TTL, well inside a claim's 3 TTLs.
const FULL_BEAT_EVERY: u32 = 4;

pub struct Cluster {
    pub config: ClusterConfig,
    pub metrics: Arc<ClusterMetrics>,
    directory: Arc<Directory>,
    threads: Vec<ThreadHandle>,
    capacity: u64,
    local: Mutex<Local>,
    /// Random per process, published in the record: a second process started with the
    /// same `--node-id` is detected instead of silently sharing one identity.
    instance: String,
    /// Fired when a draining node is done (empty, or out of time).
    pub drained: tokio::sync::Notify,
    /// The heartbeat task, awaited on leave so no beat re-creates what leave deleted.
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Runs the heartbeat at once (state changed).
    wake: tokio::sync::Notify,
    stop: tokio::sync::watch::Sender<bool>,
}

/// What this node knows about the cluster and its share of it.
struct Local {
    /// Rooms this node owns, with when each was last seen without participants.
    owned: HashMap<RoomId, Option<Instant>>,
    /// Rooms whose claims are being deleted right now: a join for one waits until the
    /// release is done and then claims afresh, so it never lands on a deleted claim.
    releasing: HashSet<RoomId>,
    /// A heartbeat found another process under this node id (logged once).
    duplicate_logged: bool,
    /// Beats since the last one that renewed every claim.
    beats_since_full: u32,
    /// The last membership read (may include this node's previous record).
    view: Vec<NodeRecord>,
    /// When the view was read.
    view_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    /// Logic threads' busy nanoseconds at the last heartbeat, for the busy ratio.
    busy_mark: (Instant, u64),
    busy: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("--node-id {id} is already used by a live node ({url}); every node needs its own id")]
    DuplicateNodeId { id: String, url: String },
}

impl Cluster {
    pub fn new(
        config: ClusterConfig,
        threads: Vec<ThreadHandle>,
        capacity: usize,
    ) -> Result<Arc<Cluster>, ClusterError> {
        // rustls needs a process-wide crypto provider for rediss://; ring is the one
        // the build already carries. Another caller having installed one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(ClusterMetrics::new()?);
        let directory = Arc::new(Directory::open(&config, metrics.clone())?);
        let busy_ns = total_busy_ns(&threads);
        Ok(Arc::new(Cluster {
            config,
            metrics,
            directory,
            threads,
            capacity: capacity as u64,
            instance: random_instance(),
            heartbeat: Mutex::new(None),
            local: Mutex::new(Local {
                owned: HashMap::new(),
                releasing: HashSet::new(),
                duplicate_logged: false,
                beats_since_full: 0,
                view: Vec::new(),
                view_at: None,
                drain_deadline: None,
                busy_mark: (Instant::now(), busy_ns),
                busy: 0.0,
            }),
            drained: tokio::sync::Notify::new(),
            wake: tokio::sync::Notify::new(),
            stop: tokio::sync::watch::channel(false).0,
        }))
    }

    /// Connect and publish this node before it reports ready (so its first requests
    /// can place rooms), then keep the connection and the heartbeat going. An
    /// unreachable Redis does not stop the start: the node serves and retries. Another
    /// live process under this node id does: a predecessor that just died is waited
    /// out (its record expires within a TTL), a live one makes the start fail.
    pub async fn start(self: &Arc<Self>) -> Result<(), ClusterError> {
        if self.directory.try_connect().await {
            let deadline = Instant::now() + self.config.ttl + self.config.ttl / 3;
            while let heartbeat::BeatOutcome::Duplicate(other) = self.beat(true).await {
                if Instant::now() >= deadline {
                    return Err(ClusterError::DuplicateNodeId {
                        id: self.config.node_id.clone(),
                        url: other.map_or_else(|| "unknown URL".into(), |o| o.url),
                    });
                }
                tokio::time::sleep(self.config.ttl / 3).await;
            }
        }
        tokio::spawn(self.directory.clone().reconnect_loop(self.stop.subscribe()));
        let beat = tokio::spawn(self.clone().heartbeat_loop(self.stop.subscribe()));
        if let Ok(mut slot) = self.heartbeat.lock() {
            *slot = Some(beat);
        }
        Ok(())
    }

    /// How long a claim lives in Redis.
    fn claim_ttl(&self) -> std::time::Duration {
        self.config.ttl * CLAIM_TTLS
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn is_draining(&self) -> bool {
        self.lock().drain_deadline.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave the cluster (clean stop): release every claim and the node record, so
    /// the rooms can be placed again at once instead of after the TTL.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let beat = self.heartbeat.lock().ok().and_then(|mut h| h.take());
        if let Some(beat) = beat {
            // A beat under way finishes first; otherwise its script could re-create the
            // record and claims deleted below.
            let _ = tokio::time::timeout(self.config.ttl, beat).await;
        }
        let rooms: Vec<String> = self
            .lock()
            .owned
            .drain()
            .map(|(r, _)| r.as_str().to_owned())
            .collect();
        self.metrics.set_rooms_owned(0);
        match self.directory.release(&rooms, true).await {
            Ok(n) => info!(released = n, "left the cluster"),
            Err(e) => {
                warn!(error = %e, "could not release claims on exit; they expire after the TTL")
            }
        }
    }

    /// This node's record as it would be published now.
    fn my_record(&self, local: &Local) -> NodeRecord {
        let (sessions, rooms) = self.threads.iter().fold((0, 0), |(s, r), h| {
            (s + h.stats.sessions.get(), r + h.stats.rooms.get())
        });
        NodeRecord {
            id: self.config.node_id.clone(),
            url: self.config.advertise_http.clone(),
            state: if local.drain_deadline.is_some() {
                NodeState::Draining
            } else {
                NodeState::Active
            },
            sessions,
            rooms,
            claims: local.owned.len() as u64,
            capacity: self.capacity,
            busy: local.busy,
            ts_ms: unix_ms(),
            instance: self.instance.clone(),
        }
    }

    /// `GET /api/cluster`: the membership as Redis has it now (the last view when
    /// Redis is unreachable), and this node's own state.
    pub async fn view_json(&self) -> serde_json::Value {
        let fresh = self.directory.nodes().await;
        let (nodes, owned, me) = {
            let mut local = self.lock();
            if let Ok(view) = &fresh {
                local.view = view.clone();
                local.view_at = Some(Instant::now());
            }
            let mut owned: Vec<String> =
                local.owned.keys().map(|r| r.as_str().to_owned()).collect();
            owned.sort();
            (local.view.clone(), owned, self.my_record(&local))
        };
        let now = unix_ms();
        let mut nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id,
                    "url": n.url,
                    "state": n.state.as_str(),
                    "sessions": n.sessions,
                    "rooms": n.rooms,
                    "claims": n.claims,
                    "capacity": n.capacity,
                    "busy": n.busy,
                    "load": n.load(),
                    "heartbeat_age_ms": now.saturating_sub(n.ts_ms),
                })
            })
            .collect();
        nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        serde_json::json!({
            "node": me.id,
            "state": me.state.as_str(),
            "redis": if self.directory.is_up() { "up" } else { "down" },
            "view_stale": fresh.is_err(),
            "nodes": nodes,
            "owned_rooms": owned,
        })
    }
}

/// 64 random bits in hex; a clock-based fallback keeps the start going if the kernel's
/// random source is unavailable (it only needs to differ between processes).
fn random_instance() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn total_busy_ns(threads: &[ThreadHandle]) -> u64 {
    threads.iter().map(|h| h.stats.busy_ns.get()).sum()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
