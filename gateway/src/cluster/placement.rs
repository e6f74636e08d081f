//! Where a new room goes: a pure function of this node's state and the last membership
//! view, so the rule is tested with plain values and no Redis.
use serde::{Deserialize, Serialize};

/// A node's entry in the directory, written by its heartbeat (JSON in Redis).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Where clients are redirected to: `http(s)://host:port`.
    pub url: String,
    pub state: NodeState,
    pub sessions: u64,
    pub rooms: u64,
    /// Rooms this node owns in the directory.
    pub claims: u64,
    /// `--max-sessions`.
    pub capacity: u64,
    /// Share of the last heartbeat interval the logic threads spent working, 0..=1.
    pub busy: f64,
    /// Unix time of the heartbeat, milliseconds.
    pub ts_ms: u64,
    /// Random per process: tells two processes started with one `--node-id` apart.
    #[serde(default)]
    pub instance: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Active,
    Draining,
}

impl NodeState {
    pub const ALL: [NodeState; 2] = [NodeState::Active, NodeState::Draining];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
        }
    }
}

impl NodeRecord {
    /// How full the node is, 0..=1 (more when over capacity): sessions against capacity,
    /// or CPU, whichever is the tighter.
    pub fn load(&self) -> f64 {
        let sessions = self.sessions as f64 / self.capacity.max(1) as f64;
        sessions.max(self.busy)
    }
}

/// Which node a new room should be claimed for. `me` is this node's current record
/// (fresher than its entry in `view`); `view` is the last membership read, which may
/// include `me` too. `None` when no live node takes new rooms.
pub fn choose<'a>(
    me: &'a NodeRecord,
    view: &'a [NodeRecord],
    threshold: f64,
) -> Option<&'a NodeRecord> {
    if me.state == NodeState::Active && me.load() < threshold {
        return Some(me);
    }
    least_loaded(std::iter::once(me).chain(view.iter().filter(|n| n.id != me.id)))
}

/// The active node with the lowest load among `nodes`, ties broken by id.
pub fn least_loaded<'a>(nodes: impl Iterator<Item = &'a NodeRecord>) -> Option<&'a NodeRecord> {
    nodes
        .filter(|n| n.state == NodeState::Active)
        .min_by(|a, b| a.load().total_cmp(&b.load()).then_with(|| a.id.cmp(&b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, sessions: u64, busy: f64, state: NodeState) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}:8080"),
            state,
            sessions,
            rooms: 0,
            claims: 0,
            capacity: 100,
            busy,
            ts_ms: 0,
            instance: String::new(),
        }
    }

    #[test]
    fn the_receiving_node_keeps_rooms_while_under_its_threshold() {
        let me = node("b", 50, 0.1, NodeState::Active);
        let view = [node("a", 0, 0.0, NodeState::Active), me.clone()];
        assert_eq!(choose(&me, &view, 0.7).map(|n| n.id.as_str()), Some("b"));
    }

    #[test]
    fn over_the_threshold_the_least_loaded_live_node_gets_it() {
        let me = node("b", 80, 0.1, NodeState::Active);
        let view = [
            node("a", 30, 0.0, NodeState::Active),
            node("c", 10, 0.5, NodeState::Active),
            node("d", 5, 0.0, NodeState::Draining),
        ];
        // c has fewer sessions but is busier: load is the larger share.
        assert_eq!(choose(&me, &view, 0.7).map(|n| n.id.as_str()), Some("a"));
        // Threshold 0: never itself unless it is the least loaded.
        let idle = node("b", 0, 0.0, NodeState::Active);
        assert_eq!(choose(&idle, &view, 0.0).map(|n| n.id.as_str()), Some("b"));
    }

    #[test]
    fn ties_go_to_the_lowest_id_and_a_stale_self_entry_is_ignored() {
        let me = node("b", 90, 0.0, NodeState::Active);
        let view = [
            node("c", 10, 0.0, NodeState::Active),
            node("a", 10, 0.0, NodeState::Active),
            node("b", 0, 0.0, NodeState::Active),
        ];
        assert_eq!(choose(&me, &view, 0.7).map(|n| n.id.as_str()), Some("a"));
    }

    #[test]
    fn a_draining_node_places_elsewhere_and_nobody_places_on_it() {
        let me = node("b", 0, 0.0, NodeState::Draining);
        let view = [node("a", 60, 0.0, NodeState::Active)];
        assert_eq!(choose(&me, &view, 0.7).map(|n| n.id.as_str()), Some("a"));
        let alone = node("b", 0, 0.0, NodeState::Draining);
        assert_eq!(choose(&alone, &[], 0.7), None);
    }
}
