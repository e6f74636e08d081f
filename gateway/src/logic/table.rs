//! The thread's sessions and rooms: slabs addressed by integer handles, and ONE index
//! for every key a session is found by (ufrag, client address, media member, room id).
//! Only [`Table`]'s methods insert into or remove from the slabs, and each keeps the
//! index consistent, as quinn's `ConnectionIndex` does for its connections.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    time::Instant,
};

use crate::{
    ice::Credentials,
    room::RoomId,
    sfu::{ForwardConfig, MemberId, RoomCore},
};

use super::session::{Pin, Session};

/// A session of this thread. Stale handles (of a removed session) find nothing: the
/// generation changes when a slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    index: u32,
    generation: u32,
}

impl SessionId {
    /// As one integer, for handles that leave the thread's table (DTLS tasks).
    pub fn to_u64(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.index)
    }

    pub fn from_u64(v: u64) -> Self {
        SessionId {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// A room of this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    index: u32,
    generation: u32,
}

/// A connected socket of this thread (connected mode), assigned by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

pub struct Room {
    pub id: RoomId,
    /// The room's sessions, in join order.
    pub sessions: Vec<SessionId>,
    /// Forwarding state of the room's WHIP/WHEP sessions.
    pub core: RoomCore,
    /// Deadline the thread's timer queue holds for this room.
    pub armed: Option<Instant>,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Vec-backed slab with generation-checked handles.
struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> (u32, u32) {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            return (index, slot.generation);
        }
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        ((self.slots.len() - 1) as u32, 0)
    }

    fn get(&self, index: u32, generation: u32) -> Option<&T> {
        self.slots
            .get(index as usize)
            .filter(|s| s.generation == generation)?
            .value
            .as_ref()
    }

    fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        self.slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation)?
            .value
            .as_mut()
    }

    fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let slot = self
            .slots
            .get_mut(index as usize)
            .filter(|s| s.generation == generation)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    fn iter(&self) -> impl Iterator<Item = (u32, u32, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.generation, s.value.as_ref()?)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u32, u32, &mut T)> + '_ {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.generation, s.value.as_mut()?)))
    }
}

/// FxHash-style hasher for the integer and address keys of the hot path: the keys are
/// not attacker-chosen in bulk (a client address must first pass MESSAGE-INTEGRITY to
/// be inserted), and SipHash would cost more than the lookup.
#[derive(Default)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Every key a session or room is found by.
#[derive(Default)]
struct Index {
    /// Server ufrag (STUN USERNAME) -> session; control path and STUN checks only. Every
    /// name of a session is here (see `IceSession::names`): after an ICE restart its
    /// current ufrag, the ufrag it was created with (the participant id in URLs is that
    /// one's participant part) and the one before the restart.
    ufrag: HashMap<String, SessionId>,
    /// Canonical client address -> the session it is pinned to.
    addr: FastMap<SocketAddr, SessionId>,
    /// SFU member -> its media session.
    member: FastMap<MemberId, SessionId>,
    room: HashMap<RoomId, RoomKey>,
}

#[derive(Default)]
pub struct Table {
    sessions: Slab<Session>,
    rooms: Slab<Room>,
    index: Index,
}

/// Mutable sessions and rooms with a read-only index, for the forwarding path, which
/// needs a room and its members' sessions at once and changes no key.
pub struct Parts<'a> {
    pub sessions: Sessions<'a>,
    pub rooms: Rooms<'a>,
}

pub struct Sessions<'a> {
    slab: &'a mut Slab<Session>,
    index: &'a Index,
}

pub struct Rooms<'a> {
    slab: &'a mut Slab<Room>,
}

impl Sessions<'_> {
    pub fn by_member_mut(&mut self, member: MemberId) -> Option<(SessionId, &mut Session)> {
        let id = *self.index.member.get(&member)?;
        Some((id, self.slab.get_mut(id.index, id.generation)?))
    }
}

impl Rooms<'_> {
    pub fn get_mut(&mut self, key: RoomKey) -> Option<&mut Room> {
        self.slab.get_mut(key.index, key.generation)
    }
}

impl Table {
    pub fn parts(&mut self) -> Parts<'_> {
        Parts {
            sessions: Sessions {
                slab: &mut self.sessions,
                index: &self.index,
            },
            rooms: Rooms {
                slab: &mut self.rooms,
            },
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len
    }

    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(id.index, id.generation)
    }

    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(id.index, id.generation)
    }

    /// A session and its room, both mutable.
    pub fn session_and_room(&mut self, id: SessionId) -> Option<(&mut Session, &mut Room)> {
        let session = self.sessions.get_mut(id.index, id.generation)?;
        let room = self
            .rooms
            .get_mut(session.room.index, session.room.generation)?;
        Some((session, room))
    }

    pub fn by_ufrag(&self, ufrag: &str) -> Option<SessionId> {
        self.index.ufrag.get(ufrag).copied()
    }

    pub fn by_addr(&self, addr: &SocketAddr) -> Option<SessionId> {
        self.index.addr.get(addr).copied()
    }

    pub fn room_key(&self, id: &RoomId) -> Option<RoomKey> {
        self.index.room.get(id).copied()
    }

    pub fn room(&self, key: RoomKey) -> Option<&Room> {
        self.rooms.get(key.index, key.generation)
    }

    pub fn room_mut(&mut self, key: RoomKey) -> Option<&mut Room> {
        self.rooms.get_mut(key.index, key.generation)
    }

    /// The room, created empty if this thread has none of that id yet.
    pub fn room_or_insert(&mut self, id: &RoomId) -> RoomKey {
        if let Some(key) = self.room_key(id) {
            return key;
        }
        let (index, generation) = self.rooms.insert(Room {
            id: id.clone(),
            sessions: Vec::new(),
            core: RoomCore::new(ForwardConfig::default()),
            armed: None,
        });
        let key = RoomKey { index, generation };
        self.index.room.insert(id.clone(), key);
        key
    }

    /// Remove a room that has no session left; returns it (for its last counters).
    pub fn remove_room_if_empty(&mut self, key: RoomKey) -> Option<Room> {
        if !self.room(key)?.sessions.is_empty() {
            return None;
        }
        let room = self.rooms.remove(key.index, key.generation)?;
        self.index.room.remove(&room.id);
        Some(room)
    }

    /// The ids of this thread's rooms (every room here has at least one session).
    pub fn room_ids(&self) -> impl Iterator<Item = &RoomId> + '_ {
        self.index.room.keys()
    }

    pub fn contains_ufrag(&self, ufrag: &str) -> bool {
        self.index.ufrag.contains_key(ufrag)
    }

    /// Insert a session into its room (`session.room`, which must exist) and the index.
    pub fn insert(&mut self, session: Session) -> SessionId {
        let names: Vec<String> = session.ice.names().map(str::to_owned).collect();
        let member = session.media.as_ref().map(|m| m.member);
        let room = session.room;
        debug_assert!(session.pinned.is_empty(), "pins go through Table::pin");
        let (index, generation) = self.sessions.insert(session);
        let id = SessionId { index, generation };
        for name in names {
            self.index.ufrag.insert(name, id);
        }
        if let Some(member) = member {
            self.index.member.insert(member, id);
        }
        if let Some(r) = self.room_mut(room) {
            r.sessions.push(id);
        }
        id
    }

    /// Remove a session from the slab, its room's list and every index entry (its
    /// pinned addresses included). The caller releases what the pins hold outside the
    /// table (flow map entries, connected sockets) from `session.pinned`.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let session = self.sessions.remove(id.index, id.generation)?;
        for name in session.ice.names() {
            if self.index.ufrag.get(name) == Some(&id) {
                self.index.ufrag.remove(name);
            }
        }
        if let Some(m) = &session.media {
            if self.index.member.get(&m.member) == Some(&id) {
                self.index.member.remove(&m.member);
            }
        }
        for pin in &session.pinned {
            if self.index.addr.get(&pin.addr) == Some(&id) {
                self.index.addr.remove(&pin.addr);
            }
        }
        if let Some(r) = self.room_mut(session.room) {
            r.sessions.retain(|s| *s != id);
        }
        Some(session)
    }

    /// ICE restart of session `id` with new server `credentials` (client ufrag
    /// `remote_ufrag`), keeping the index in step with the session's names. False, and
    /// nothing changed, if the session is gone or the new ufrag already names a session.
    pub fn restart_ice(
        &mut self,
        id: SessionId,
        credentials: Credentials,
        remote_ufrag: String,
    ) -> bool {
        if self.index.ufrag.contains_key(&credentials.ufrag) {
            return false;
        }
        let Some(session) = self.sessions.get_mut(id.index, id.generation) else {
            return false;
        };
        let ufrag = credentials.ufrag.clone();
        if let Some(dropped) = session.ice.restart(credentials, remote_ufrag) {
            if self.index.ufrag.get(&dropped) == Some(&id) {
                self.index.ufrag.remove(&dropped);
            }
        }
        self.index.ufrag.insert(ufrag, id);
        true
    }

    /// Record that canonical `addr` is pinned to session `id` (through `conn` in
    /// connected mode). False if the address belongs to another session.
    pub fn pin(&mut self, id: SessionId, addr: SocketAddr, conn: Option<ConnId>) -> bool {
        if self.by_addr(&addr).is_some_and(|holder| holder != id) {
            return false;
        }
        let Some(session) = self.sessions.get_mut(id.index, id.generation) else {
            return false;
        };
        self.index.addr.insert(addr, id);
        match session.pinned.iter_mut().find(|p| p.addr == addr) {
            Some(p) => p.conn = conn,
            None => session.pinned.push(Pin { addr, conn }),
        }
        // Media to a re-pinned address takes its new connected socket again, whatever
        // check pinned it (only a nominating check moves the reply path itself).
        if let Some(reply) = session.reply.as_mut() {
            if SocketAddr::new(reply.to.ip().to_canonical(), reply.to.port()) == addr {
                reply.conn = conn;
            }
        }
        true
    }

    /// Undo [`Table::pin`]; returns the pin if `addr` was pinned to `id`. The session's
    /// reply path stops naming the pin's connected socket.
    pub fn unpin(&mut self, id: SessionId, addr: SocketAddr) -> Option<Pin> {
        let session = self.sessions.get_mut(id.index, id.generation)?;
        let pos = session.pinned.iter().position(|p| p.addr == addr)?;
        let pin = session.pinned.remove(pos);
        if self.index.addr.get(&addr) == Some(&id) {
            self.index.addr.remove(&addr);
        }
        if let Some(reply) = session.reply.as_mut() {
            if pin.conn.is_some() && reply.conn == pin.conn {
                reply.conn = None;
            }
        }
        Some(pin)
    }

    pub fn ids(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .map(|(index, generation, _)| SessionId { index, generation })
            .collect()
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> + '_ {
        self.sessions.iter().map(|(_, _, s)| s)
    }

    pub fn rooms_mut(&mut self) -> impl Iterator<Item = (RoomKey, &mut Room)> + '_ {
        self.rooms
            .iter_mut()
            .map(|(index, generation, r)| (RoomKey { index, generation }, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ice::{Credentials, IceSession};
    use crate::logic::session::ReplyPath;

    fn session(table: &mut Table, room: &RoomId, ufrag: &str) -> SessionId {
        let room = table.room_or_insert(room);
        table.insert(Session {
            participant: ufrag.into(),
            room,
            ice: IceSession::new(
                Credentials {
                    ufrag: ufrag.into(),
                    pwd: "p".into(),
                },
                Instant::now(),
            ),
            pinned: Vec::new(),
            reply: None,
            valid_checks: 0,
            rx_datagrams: 0,
            rx_bytes: 0,
            tx_datagrams: 0,
            media: None,
            armed: None,
        })
    }

    #[test]
    fn the_index_follows_inserts_pins_and_removals() {
        let mut table = Table::default();
        let room = RoomId::parse("r").unwrap();
        let a = session(&mut table, &room, "ra");
        let b = session(&mut table, &room, "rb");
        let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert!(table.pin(a, addr, Some(ConnId(3))));
        assert!(!table.pin(b, addr, None), "one session per address");
        assert_eq!(table.by_addr(&addr), Some(a));

        let removed = table.remove(a).unwrap();
        assert_eq!(
            removed.pinned,
            [Pin {
                addr,
                conn: Some(ConnId(3))
            }]
        );
        assert_eq!(table.by_addr(&addr), None, "its pins leave the index");
        assert_eq!(table.by_ufrag("ra"), None);
        assert!(table.get(a).is_none());
        let key = table.room_key(&room).unwrap();
        assert_eq!(table.room(key).unwrap().sessions, [b]);
        assert!(
            table.remove_room_if_empty(key).is_none(),
            "b is still in it"
        );

        assert!(table.pin(b, addr, None), "the address is free again");
        assert_eq!(table.unpin(b, addr), Some(Pin { addr, conn: None }));
        assert_eq!(table.by_addr(&addr), None);
        table.remove(b).unwrap();
        assert!(table.remove_room_if_empty(key).is_some());
        assert_eq!(table.room_key(&room), None);
        assert_eq!((table.session_count(), table.room_count()), (0, 0));
    }

    #[test]
    fn a_re_pinned_reply_address_sends_on_its_new_connected_socket() {
        let mut table = Table::default();
        let room = RoomId::parse("r").unwrap();
        let a = session(&mut table, &room, "ra");
        let addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert!(table.pin(a, addr, Some(ConnId(3))));
        table.get_mut(a).unwrap().reply = Some(ReplyPath {
            to: addr,
            local_ip: None,
            conn: Some(ConnId(3)),
        });
        table.unpin(a, addr);
        assert_eq!(table.get(a).unwrap().reply.unwrap().conn, None);
        assert!(table.pin(a, addr, Some(ConnId(5))));
        assert_eq!(table.get(a).unwrap().reply.unwrap().conn, Some(ConnId(5)));
    }

    #[test]
    fn an_ice_restart_keeps_the_session_found_by_its_old_names() {
        let mut table = Table::default();
        let room = RoomId::parse("r").unwrap();
        let a = session(&mut table, &room, "rAAAAAAAA");
        let b = session(&mut table, &room, "rBBBBBBBB");
        let creds = |ufrag: &str| Credentials {
            ufrag: ufrag.into(),
            pwd: "p".into(),
        };
        assert!(
            !table.restart_ice(a, creds("rBBBBBBBB"), "c".into()),
            "another session's name is not free"
        );
        assert_eq!(table.get(a).unwrap().ice.credentials().ufrag, "rAAAAAAAA");
        for (i, ufrag) in ["rCCCCCCCC", "rDDDDDDDD", "rEEEEEEEE"]
            .into_iter()
            .enumerate()
        {
            assert!(table.restart_ice(a, creds(ufrag), format!("c{i}")));
            assert_eq!(table.by_ufrag(ufrag), Some(a));
        }
        assert_eq!(
            table.by_ufrag("rAAAAAAAA"),
            Some(a),
            "the name it was created with"
        );
        assert_eq!(table.by_ufrag("rDDDDDDDD"), Some(a), "the previous ufrag");
        assert_eq!(table.by_ufrag("rCCCCCCCC"), None, "older ones are dropped");
        assert!(table.contains_ufrag("rEEEEEEEE"));
        table.remove(a).unwrap();
        for gone in ["rAAAAAAAA", "rDDDDDDDD", "rEEEEEEEE"] {
            assert_eq!(table.by_ufrag(gone), None, "{gone}");
        }
        assert_eq!(table.by_ufrag("rBBBBBBBB"), Some(b));
    }

    #[test]
    fn a_stale_handle_finds_nothing_after_its_slot_is_reused() {
        let mut slab = Slab::default();
        let (i, g) = slab.insert(1);
        assert_eq!(slab.remove(i, g), Some(1));
        let (j, h) = slab.insert(2);
        assert_eq!(i, j, "slot reused");
        assert_eq!(slab.get(i, g), None);
        assert_eq!(slab.get(j, h), Some(&2));
        assert_eq!(slab.len, 1);
    }

    #[test]
    fn session_ids_round_trip_through_u64() {
        let id = SessionId {
            index: 7,
            generation: 3,
        };
        assert_eq!(SessionId::from_u64(id.to_u64()), id);
    }
}
