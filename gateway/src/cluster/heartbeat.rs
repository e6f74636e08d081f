//! The heartbeat: every TTL/3 this node publishes its load, renews the claims of the
//! rooms it serves, reads the membership, gives up rooms that emptied, and (draining)
//! decides when to exit.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::{total_busy_ns, Cluster};
use crate::{logic::Command, room::RoomId};

/// How long a logic thread may take to list its rooms before this beat goes without.
const LIST_TIMEOUT: Duration = Duration::from_millis(500);
const DRAIN_POLL: Duration = Duration::from_millis(250);

impl Cluster {
    pub(super) async fn heartbeat_loop(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let beat = self.config.ttl / 3;
        loop {
            self.beat().await;
            // A draining node looks more often, so it exits soon after its last leave.
            let period = if self.is_draining() {
                beat.min(DRAIN_POLL)
            } else {
                beat
            };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                // Re-assert claims the moment Redis is back (it may have come back empty).
                _ = self.directory.reconnected.notified() => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    pub(super) async fn beat(&self) {
        let live = self.live_rooms().await;
        let now = Instant::now();
        // Rooms whose last participant left more than a TTL ago are given up; the TTL
        // covers a client that was placed here and is still on its way.
        let (record, renew, idle) = {
            let mut local = self.lock();
            if let Some(live) = &live {
                for room in live {
                    // A room can outlive its claim's bookkeeping (a join raced with its
                    // release): serving it means owning it, so it is renewed too.
                    local.owned.insert(room.clone(), None);
                }
                for (room, idle_since) in local.owned.iter_mut() {
                    if !live.contains(room) {
                        idle_since.get_or_insert(now);
                    }
                }
            }
            let ttl = self.config.ttl;
            let idle: Vec<RoomId> = local
                .owned
                .iter()
                .filter(|(_, since)| since.is_some_and(|s| now.duration_since(s) > ttl))
                .map(|(r, _)| r.clone())
                .collect();
            for room in &idle {
                local.owned.remove(room);
            }
            let busy_ns = total_busy_ns(&self.threads);
            let (mark_at, mark_ns) = local.busy_mark;
            let elapsed = now.duration_since(mark_at).as_nanos() as f64;
            if elapsed > 0.0 {
                let threads = self.threads.len().max(1) as f64;
                local.busy =
                    (busy_ns.saturating_sub(mark_ns) as f64 / (elapsed * threads)).min(1.0);
            }
            local.busy_mark = (now, busy_ns);
            let renew: Vec<String> = local.owned.keys().map(|r| r.as_str().to_owned()).collect();
            (self.my_record(&local), renew, idle)
        };
        self.metrics.set_rooms_owned(renew.len());
        if !idle.is_empty() {
            let names: Vec<String> = idle.iter().map(|r| r.as_str().to_owned()).collect();
            if let Err(e) = self.directory.release(&names, false).await {
                warn!(error = %e, rooms = names.len(), "could not release emptied rooms; their claims expire after the TTL");
            }
        }
        if self.directory.is_up() {
            match self
                .directory
                .heartbeat(&record, &renew, self.config.ttl)
                .await
            {
                Ok((lost, view)) => {
                    self.metrics.set_nodes_live(view.len());
                    {
                        let mut local = self.lock();
                        local.view = view;
                        local.view_at = Some(Instant::now());
                    }
                    for room in lost {
                        self.give_up(&room).await;
                    }
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
        self.check_drain().await;
    }

    /// Every room that has participants on this node, or `None` if a thread did not
    /// answer (then nothing is released on this beat).
    async fn live_rooms(&self) -> Option<HashSet<RoomId>> {
        let mut rooms = HashSet::new();
        for handle in &self.threads {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.send(Command::ListRooms { reply: tx }).ok()?;
            match tokio::time::timeout(LIST_TIMEOUT, rx).await {
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
        self.lock().owned.remove(&room);
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
                ended = tokio::time::timeout(LIST_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
            }
        }
        error!(%room, sessions_ended = ended, "another node owns this room (claim lost while Redis was unreachable): gave it up");
    }

    async fn check_drain(&self) {
        let Some(deadline) = self.lock().drain_deadline else {
            return;
        };
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        self.metrics.set_drain_seconds_left(left.as_secs());
        let sessions: u64 = self.threads.iter().map(|h| h.stats.sessions.get()).sum();
        if sessions == 0 {
            info!("drained: no sessions left, exiting");
            self.drained.notify_one();
        } else if left.is_zero() {
            info!(
                sessions,
                "drained: drain timeout reached, exiting with sessions left"
            );
            self.drained.notify_one();
        }
    }
}
