//! Which node serves a signaling request: this one, another one (307), or none (503).
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{
    directory::{Claim, DirectoryError},
    metrics::{ClaimOutcome, RefusedReason},
    placement::{self, NodeRecord},
    Cluster,
};

/// How long a join waits for its room's release to finish before claiming afresh.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
use crate::room::RoomId;

#[derive(Debug, PartialEq)]
pub enum Route {
    /// This node owns the room: handle the request here.
    Local,
    /// Another node owns the room: redirect to its advertised URL.
    Redirect { owner: String, url: String },
    /// No node can take the room now.
    Refuse {
        reason: RefusedReason,
        message: String,
    },
}

impl Cluster {
    /// A request that may create the room (WHIP, WHEP and REST participant POSTs).
    ///
    /// Joins to a room this node owns cost no Redis round trip and keep working while
    /// Redis is away; anything else is decided by one claim script.
    pub async fn route_create(&self, room: &RoomId) -> Route {
        if self.join_owned(room) {
            return Route::Local;
        }
        self.wait_for_release(room).await;
        if !self.directory.is_up() {
            return self.refuse(
                RefusedReason::RedisUnreachable,
                format!("cluster directory unreachable: cannot place new room {room} (Redis is not answering); rooms already on this node keep working"),
            );
        }
        // For one TTL after Redis came back this node places no new room: by then every
        // live node has reconnected and re-asserted its claims (a node that has not is
        // dead by definition), so a Redis that returned empty cannot hand a served room
        // to a second node.
        if self
            .directory
            .reconnected_at()
            .is_some_and(|at| at.elapsed() < self.config.ttl)
        {
            return self.refuse(
                RefusedReason::RedisUnreachable,
                format!("cluster directory unreachable a moment ago: new room {room} waits until every node has re-asserted its rooms"),
            );
        }
        let mut excluded: Option<String> = None;
        // A second attempt only when the chosen node died or began draining between
        // our view and the claim.
        for _ in 0..2 {
            let target = {
                let local = self.lock();
                let me = self.my_record(&local);
                let view: Vec<NodeRecord> = local
                    .view
                    .iter()
                    .filter(|n| Some(&n.id) != excluded.as_ref())
                    .cloned()
                    .collect();
                let me_allowed = excluded.as_deref() != Some(me.id.as_str());
                let chosen = if me_allowed {
                    placement::choose(&me, &view, self.config.load_threshold)
                } else {
                    placement::least_loaded(view.iter())
                };
                chosen.map(|n| n.id.clone())
            };
            let Some(target) = target else {
                return self.refuse(
                    RefusedReason::NoLiveNode,
                    format!("no live node takes new rooms: cannot place room {room}"),
                );
            };
            match self
                .directory
                .claim(room.as_str(), &target, self.claim_ttl())
                .await
            {
                Ok(Claim::Owned { record, won }) => {
                    self.metrics.claim(if won {
                        ClaimOutcome::Won
                    } else {
                        ClaimOutcome::OwnedElsewhere
                    });
                    debug!(%room, owner = %record.id, won, "room placed");
                    return self.route_to(room, record);
                }
                Ok(Claim::Refused) => {
                    self.metrics.claim(ClaimOutcome::Refused);
                    excluded = Some(target);
                }
                Err(e) => {
                    self.metrics.claim(ClaimOutcome::Failed);
                    return self.directory_failed(room, e);
                }
            }
        }
        self.refuse(
            RefusedReason::NoLiveNode,
            format!("no live node takes new rooms: cannot place room {room}"),
        )
    }

    /// A request about an existing room (GET, DELETE, PATCH, layer PUT): redirect when
    /// another node owns it; otherwise handle it here (404 if nobody has it). Without
    /// Redis, this node answers for what it has.
    pub async fn route_existing(&self, room: &RoomId) -> Route {
        if self.join_owned(room) {
            return Route::Local;
        }
        self.wait_for_release(room).await;
        match self.directory.lookup(room.as_str()).await {
            Ok(Some(record)) => self.route_to(room, record),
            Ok(None) => Route::Local,
            Err(e) => {
                debug!(%room, error = %e, "owner lookup failed; answering locally");
                Route::Local
            }
        }
    }

    /// Whether this node owns `room`; a request for it restarts the room's idle time, so
    /// a join that arrives just as the room emptied keeps its claim.
    fn join_owned(&self, room: &RoomId) -> bool {
        match self.lock().owned.get_mut(room) {
            Some(idle_since) => {
                *idle_since = None;
                true
            }
            None => false,
        }
    }

    /// If the room's claim is being deleted, wait until it is gone: the request then
    /// claims afresh instead of joining a claim that is about to vanish.
    async fn wait_for_release(&self, room: &RoomId) {
        let deadline = Instant::now() + RELEASE_WAIT;
        while self.lock().releasing.contains(room) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn route_to(&self, room: &RoomId, owner: NodeRecord) -> Route {
        if owner.id == self.config.node_id {
            let mut local = self.lock();
            local
                .owned
                .entry(room.clone())
                .or_insert(Some(Instant::now()));
            self.metrics.set_rooms_owned(local.owned.len());
            Route::Local
        } else {
            Route::Redirect {
                owner: owner.id,
                url: owner.url,
            }
        }
    }

    fn directory_failed(&self, room: &RoomId, e: DirectoryError) -> Route {
        warn!(%room, error = %e, "cannot place a new room");
        self.refuse(
            RefusedReason::RedisUnreachable,
            format!("{e}: cannot place new room {room}; rooms already on this node keep working"),
        )
    }

    fn refuse(&self, reason: RefusedReason, message: String) -> Route {
        self.metrics.refused(reason);
        Route::Refuse { reason, message }
    }
}
