//! Cluster series for `/metrics`. Owned here and handed to each scrape's registry (the
//! collectors are shared handles), so the control plane updates them without a lookup.
use prometheus::{
    core::Collector, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts,
};

use super::placement::NodeState;

/// Outcomes of a claim attempt (`roomgate_cluster_claims_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node's script created the claim (for itself or for the node it chose).
    Won,
    /// The room already had a live owner.
    OwnedElsewhere,
    /// The chosen node was dead or draining by the time the script ran.
    Refused,
    /// Redis did not answer.
    Failed,
}

impl ClaimOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ClaimOutcome::Won => "won",
            ClaimOutcome::OwnedElsewhere => "owned_elsewhere",
            ClaimOutcome::Refused => "refused",
            ClaimOutcome::Failed => "failed",
        }
    }
}

/// Why a new room got a 503 (`roomgate_cluster_rooms_refused_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    RedisUnreachable,
    NoLiveNode,
}

impl RefusedReason {
    fn as_str(self) -> &'static str {
        match self {
            RefusedReason::RedisUnreachable => "redis_unreachable",
            RefusedReason::NoLiveNode => "no_live_node",
        }
    }
}

/// Which directory operation a latency sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Claim,
    Lookup,
    Heartbeat,
    Release,
}

impl OpKind {
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Claim => "claim",
            OpKind::Lookup => "lookup",
            OpKind::Heartbeat => "heartbeat",
            OpKind::Release => "release",
        }
    }
}

pub struct ClusterMetrics {
    node_state: IntGaugeVec,
    redis_up: IntGauge,
    redis_reconnects: IntCounter,
    redis_errors: IntCounter,
    op_seconds: HistogramVec,
    claims: IntCounterVec,
    claims_lost: IntCounter,
    redirects: IntCounter,
    rooms_refused: IntCounterVec,
    rooms_owned: IntGauge,
    nodes_live: IntGauge,
    drain_seconds_left: IntGauge,
}

/// Redis round trips on a LAN take well under a millisecond; the top buckets catch a
/// struggling server before the 1 s response timeout gives up.
const OP_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl ClusterMetrics {
    pub fn new() -> Result<ClusterMetrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help));
        let counter = |name: &str, help: &str| IntCounter::with_opts(Opts::new(name, help));
        let m = ClusterMetrics {
            node_state: IntGaugeVec::new(
                Opts::new(
                    "roomgate_cluster_node_state",
                    "This node's cluster state (1 on the current one): active takes new rooms, draining only serves its own.",
                ),
                &["state"],
            )?,
            redis_up: gauge(
                "roomgate_cluster_redis_up",
                "1 while the cluster directory (Redis) answers; at 0 new rooms are refused and owned rooms keep running.",
            )?,
            redis_reconnects: counter(
                "roomgate_cluster_redis_reconnects_total",
                "Connections to the cluster directory (Redis) re-established after it was lost.",
            )?,
            redis_errors: counter(
                "roomgate_cluster_redis_errors_total",
                "Cluster directory (Redis) commands and connection attempts that failed.",
            )?,
            op_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "roomgate_cluster_redis_op_seconds",
                    "Round-trip time of cluster directory operations, by kind.",
                )
                .buckets(OP_BUCKETS.to_vec()),
                &["kind"],
            )?,
            claims: IntCounterVec::new(
                Opts::new(
                    "roomgate_cluster_claims_total",
                    "Room claims this node attempted, by outcome.",
                ),
                &["outcome"],
            )?,
            claims_lost: counter(
                "roomgate_cluster_claims_lost_total",
                "Rooms this node gave up because another node held their claim (after a partition); their local sessions were ended.",
            )?,
            redirects: counter(
                "roomgate_cluster_redirects_total",
                "Requests answered with 307 to the node that owns their room.",
            )?,
            rooms_refused: IntCounterVec::new(
                Opts::new(
                    "roomgate_cluster_rooms_refused_total",
                    "New rooms answered 503, by reason.",
                ),
                &["reason"],
            )?,
            rooms_owned: gauge(
                "roomgate_cluster_rooms_owned",
                "Rooms this node owns in the cluster directory.",
            )?,
            nodes_live: gauge(
                "roomgate_cluster_nodes_live",
                "Live nodes in the last membership view, this one included.",
            )?,
            drain_seconds_left: gauge(
                "roomgate_cluster_drain_seconds_left",
                "Seconds until a draining node exits even with rooms left; 0 when not draining.",
            )?,
        };
        // Every label value exists from the start, so rates work from the first scrape.
        for s in NodeState::ALL {
            m.node_state.with_label_values(&[s.as_str()]).set(0);
        }
        for o in [
            ClaimOutcome::Won,
            ClaimOutcome::OwnedElsewhere,
            ClaimOutcome::Refused,
            ClaimOutcome::Failed,
        ] {
            m.claims.with_label_values(&[o.as_str()]);
        }
        for r in [RefusedReason::RedisUnreachable, RefusedReason::NoLiveNode] {
            m.rooms_refused.with_label_values(&[r.as_str()]);
        }
        for k in [
            OpKind::Claim,
            OpKind::Lookup,
            OpKind::Heartbeat,
            OpKind::Release,
        ] {
            m.op_seconds.with_label_values(&[k.as_str()]);
        }
        m.set_state(NodeState::Active);
        Ok(m)
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.node_state.clone()),
            Box::new(self.redis_up.clone()),
            Box::new(self.redis_reconnects.clone()),
            Box::new(self.redis_errors.clone()),
            Box::new(self.op_seconds.clone()),
            Box::new(self.claims.clone()),
            Box::new(self.claims_lost.clone()),
            Box::new(self.redirects.clone()),
            Box::new(self.rooms_refused.clone()),
            Box::new(self.rooms_owned.clone()),
            Box::new(self.nodes_live.clone()),
            Box::new(self.drain_seconds_left.clone()),
        ]
    }

    pub fn set_state(&self, state: NodeState) {
        for s in NodeState::ALL {
            self.node_state
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == state));
        }
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn reconnected(&self) {
        self.redis_reconnects.inc();
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    pub fn observe_op(&self, kind: OpKind, seconds: f64) {
        self.op_seconds
            .with_label_values(&[kind.as_str()])
            .observe(seconds);
    }

    pub fn claim(&self, outcome: ClaimOutcome) {
        self.claims.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn claim_lost(&self) {
        self.claims_lost.inc();
    }

    pub fn redirect(&self) {
        self.redirects.inc();
    }

    pub fn refused(&self, reason: RefusedReason) {
        self.rooms_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn set_rooms_owned(&self, n: usize) {
        self.rooms_owned.set(n as i64);
    }

    pub fn set_nodes_live(&self, n: usize) {
        self.nodes_live.set(n as i64);
    }

    pub fn set_drain_seconds_left(&self, secs: u64) {
        self.drain_seconds_left.set(secs as i64);
    }
}
