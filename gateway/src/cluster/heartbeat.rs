//! The heartbeat: every TTL/3 this node publishes its load, renews the claims of the
//! rooms it serves, reads the membership, gives up rooms that emptied, and (draining)
//! decides when to exit.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, warn};

use super::{directory::Beat, placement::NodeRecord, total_busy_ns, Cluster, FULL_BEAT_EVERY};
use crate::{logic::Command, room::RoomId};

/// How long a logic thread may take to list its rooms before this beat goes without;
/// at most a sixth of the TTL, so listing and Redis together stay well inside it.
const MAX_LIST_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a draining node checks whether it is empty.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// What one beat achieved.
pub(super) enum BeatOutcome {
    Published,
    /// Another live process holds this node id (its record, if readable).
    Duplicate(Option<NodeRecord>),
    /// Redis was not reachable; nothing was published.
    Skipped,
}

impl Cluster {
    pub(super) async fn heartbeat_loop(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // Beats start on a fixed schedule, not a fixed pause after the previous beat, so
        // a slow beat does not stretch the renewal period past what the TTL allows.
        let mut beats = tokio::time::interval(self.config.ttl / 3);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_poll = tokio::time::interval(DRAIN_POLL);
        loop {
            tokio::select! {
                _ = beats.tick() => {
                    let full = {
                        let mut local = self.lock();
                        local.beats_since_full += 1;
                        local.beats_since_full >= FULL_BEAT_EVERY
                    };
                    self.beat(full).await;
                }
                // Re-assert claims the moment Redis is back (it may have come back empty).
                _ = self.directory.reconnected.notified() => {
                    self.beat(true).await;
                }
                _ = self.wake.notified() => {
                    self.beat(false).await;
                }
                // A draining node looks more often, so it exits soon after its last leave.
                _ = drain_poll.tick(), if self.is_draining() => self.check_drain(),
                _ = stop.changed() => return,
            }
        }
    }

    /// One heartbeat. A `full` one renews and checks every claim of this node; the
    /// others only publish the record and read the membership, which keeps Redis's work
    /// per beat independent of the number of rooms.
    pub(super) async fn beat(&self, full: bool) -> BeatOutcome {
        let ttl = self.config.ttl;
        // Taken before the listing: a room is released only if it was idle a whole TTL
        // before this instant, so a join that raced the listing always survives.
        let listed_at = Instant::now();
        let live = self.live_rooms().await;
        let (record, renew, idle) = {
            let mut local = self.lock();
            let mut full = full;
            if let Some(live) = &live {
                for room in live {
                    // A room can outlive its claim's bookkeeping (a join raced with its
                    // release): serving it means owning it, so it is re-asserted at once.
                    if local.owned.insert(room.clone(), None).is_none() {
                        full = true;
                    }
                }
                for (room, idle_since) in local.owned.iter_mut() {
                    if !live.contains(room) {
                        idle_since.get_or_insert(listed_at);
                    }
                }
            }
            let idle: Vec<RoomId> = local
                .owned
                .iter()
                .filter(|(_, since)| {
                    since.is_some_and(|s| listed_at.saturating_duration_since(s) > ttl)
                })
                .map(|(r, _)| r.clone())
                .collect();
            for room in &idle {
                local.owned.remove(room);
                local.releasing.insert(room.clone());
            }
            let now = Instant::now();
            let busy_ns = total_busy_ns(&self.threads);
            let (mark_at, mark_ns) = local.busy_mark;
            let elapsed = now.duration_since(mark_at).as_nanos() as f64;
            if elapsed > 0.0 {
                let threads = self.threads.len().max(1) as f64;
                local.busy =
                    (busy_ns.saturating_sub(mark_ns) as f64 / (elapsed * threads)).min(1.0);
            }
            local.busy_mark = (now, busy_ns);
            self.metrics.set_rooms_owned(local.owned.len());
            let renew: Vec<String> = if full {
                local.beats_since_full = 0;
                local.owned.keys().map(|r| r.as_str().to_owned()).collect()
            } else {
                Vec::new()
            };
            (self.my_record(&local), renew, idle)
        };
        if !idle.is_empty() {
            let names: Vec<String> = idle.iter().map(|r| r.as_str().to_owned()).collect();
            if let Err(e) = self.directory.release(&names, false).await {
                warn!(error = %e, rooms = names.len(), "could not release emptied rooms; their claims expire after the TTL");
            }
            let mut local = self.lock();
            for room in &idle {
                local.releasing.remove(room);
            }
        }
        let outcome = if self.directory.is_up() {
            match self
                .directory
                .heartbeat(&record, &renew, ttl, self.claim_ttl())
                .await
            {
                Ok(Beat::Published { lost, view }) => {
                    self.metrics.set_nodes_live(view.len());
                    {
                        let mut local = self.lock();
                        local.view = view;
                        local.view_at = Some(Instant::now());
                        local.duplicate_logged = false;
                    }
                    for room in lost {
                        self.give_up(&room).await;
                    }
                    BeatOutcome::Published
                }
                Ok(Beat::Duplicate(other)) => {
                    let first = !std::mem::replace(&mut self.lock().duplicate_logged, true);
                    if first {
                        error!(
                            node_id = %self.config.node_id,
                            other = other.as_ref().map_or("unknown", |o| o.url.as_str()),
                            "another live process uses this --node-id: not publishing, claims are not renewed"
                        );
                    }
                    BeatOutcome::Duplicate(other)
                }
                Err(e) => {
                    warn!(error = %e, "heartbeat failed");
                    BeatOutcome::Skipped
                }
            }
        } else {
            BeatOutcome::Skipped
        };
        self.check_drain();
        outcome
    }

    /// Every room that has participants on this node, or `None` if a thread did not
    /// answer (then nothing is released on this beat).
    async fn live_rooms(&self) -> Option<HashSet<RoomId>> {
        let timeout = (self.config.ttl / 6).min(MAX_LIST_TIMEOUT);
        let mut rooms = HashSet::new();
        for handle in &self.threads {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.send(Command::ListRooms { reply: tx }).ok()?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(list)) => rooms.extend(list),
                _ => return None,
            }
        }
        Some(rooms)
    }

    /// Another node holds the claim of a room served here (possible only after this
    /// node was cut off from Redis): two nodes must never serve one room, so this one
    /// ends its sessions there; the participants reconnect and are sent to the owner.
    async fn give_up(&self, room: &str) {
        let Ok(room) = RoomId::parse(room) else {
            return;
        };
        {
            let mut local = self.lock();
            local.owned.remove(&room);
            self.metrics.set_rooms_owned(local.owned.len());
        }
        self.metrics.claim_lost();
        let owner = room.owner(self.threads.len());
        let mut ended = 0;
        if let Some(handle) = self.threads.get(owner) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if handle
                .send(Command::CloseRoom {
                    room: room.clone(),
                    reply: tx,
                })
                .is_ok()
            {
                ended = tokio::time::timeout(MAX_LIST_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
            }
        }
        error!(%room, sessions_ended = ended, "another node owns this room (claim lost while Redis was unreachable): gave it up");
    }
}
