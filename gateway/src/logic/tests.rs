//! Behaviour of [`ThreadCore`] on a virtual clock: no socket, and no sleeping except
//! while the media test waits for its real webrtc-dtls client's task. The harness
//! plays the shell; the flow map it pins into is an in-memory map with the kernel map's
//! rule (one holder per address).
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

use super::{
    api::{Command, Limits, MediaCreated, ParticipantCreated},
    core::{Action, Arrival, CoreConfig, ThreadCore, Transmit},
    pinning::PinError,
};
use crate::{
    ice::{
        stun::tests::{request, Req},
        StunOutcome, CONSENT_TIMEOUT,
    },
    media::{dtls::test_client, DtlsEvent, Identity, SrtpSession},
    room::RoomId,
    sdp::{self, Role},
    stats::ThreadStats,
    steering::ActiveMode,
};

const CHROME_WHIP: &str = include_str!("../sdp/testdata/chrome_whip.sdp");
const CHROME_WHEP: &str = include_str!("../sdp/testdata/chrome_whep.sdp");

struct Harness {
    core: ThreadCore,
    stats: Arc<ThreadStats>,
    limits: Limits,
    t0: Instant,
    /// The flow map: canonical address -> holder thread.
    flows: HashMap<SocketAddr, usize>,
    sent: Vec<Transmit>,
    handoffs: Vec<usize>,
}

fn harness(mode: ActiveMode, index: usize, threads: usize) -> Harness {
    let stats = Arc::new(ThreadStats::default());
    let limits = Limits {
        max_sessions: 100,
        max_participants_per_room: 10,
        sessions_total: Arc::new(AtomicUsize::new(0)),
    };
    let core = ThreadCore::new(
        CoreConfig {
            index,
            threads,
            mode,
            local_addr: "127.0.0.1:7000".parse().unwrap(),
            identity: Arc::new(Identity::generate().unwrap()),
            candidates: vec!["127.0.0.1:7000".parse().unwrap()],
            limits: limits.clone(),
        },
        stats.clone(),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut h = Harness {
        core,
        stats,
        limits,
        t0,
        flows: HashMap::new(),
        sent: Vec::new(),
        handoffs: Vec::new(),
    };
    h.core.handle_timeout(t0);
    h.drain(t0);
    h
}

/// A room whose owner is `thread` of `threads`.
fn room_owned_by(thread: usize, threads: usize) -> RoomId {
    (0..)
        .map(|i| RoomId::parse(&format!("room{i}")).unwrap())
        .find(|r| r.owner(threads) == thread)
        .unwrap()
}

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

/// A Binding Request as a browser sends it; `pwd: None` leaves out MESSAGE-INTEGRITY.
fn check(username: &str, pwd: Option<&str>, use_candidate: bool) -> Vec<u8> {
    request(Req {
        username: Some(username),
        mi_pwd: pwd,
        fingerprint: true,
        use_candidate,
    })
}

impl Harness {
    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    /// Play the shell: carry out actions (pins against the in-memory flow map), send.
    fn drain(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Pin(req) => {
                    let result = match self.flows.get(&req.addr) {
                        Some(&holder) if holder != 0 => Err(PinError::Conflict),
                        _ => {
                            self.flows.insert(req.addr, 0);
                            Ok(None)
                        }
                    };
                    self.core.handle_pin_result(now, req, result);
                }
                Action::Unpin { addr, .. } => {
                    self.flows.remove(&addr);
                }
                Action::Handoff { owner, .. } => self.handoffs.push(owner),
                Action::PollSocketDrops => {}
            }
        }
        while let Some(t) = self.core.poll_transmit() {
            self.sent.push(t);
        }
    }

    fn command(&mut self, now: Instant, cmd: Command) {
        self.core.handle_command(now, cmd);
        self.drain(now);
    }

    fn create(&mut self, room: &RoomId) -> ParticipantCreated {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let now = self.t0;
        self.command(
            now,
            Command::CreateParticipant {
                room: room.clone(),
                reply,
            },
        );
        rx.try_recv().unwrap().unwrap()
    }

    fn datagram(&mut self, now: Instant, from: SocketAddr, mut data: Vec<u8>) {
        self.core
            .handle_datagram(now, from, None, Arrival::Group, &mut data);
        self.drain(now);
    }

    fn check(&mut self, now: Instant, from: SocketAddr, p: &ParticipantCreated, pwd: &str) {
        let msg = check(&format!("{}:cli", p.ufrag), Some(pwd), true);
        self.datagram(now, from, msg);
    }

    fn timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.drain(now);
    }

    fn room_exists(&mut self, room: &RoomId) -> bool {
        let (reply, mut rx) = tokio::sync::oneshot::channel();
        let now = self.t0;
        self.command(
            now,
            Command::GetRoom {
                room: room.clone(),
                reply,
            },
        );
        rx.try_recv().unwrap().is_some()
    }
}

#[test]
fn an_address_is_pinned_only_after_valid_message_integrity() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    let from = client(40000);

    h.check(h.t0, from, &p, "not-the-password-at-all!");
    assert!(
        h.flows.is_empty(),
        "a check with a wrong password pins nothing"
    );
    assert_eq!(h.stats.stun(StunOutcome::Unauthorized).get(), 1);
    assert_eq!(h.sent.len(), 1, "answered with an error response");

    let unsigned = check(&format!("{}:cli", p.ufrag), None, true);
    h.datagram(h.t0, from, unsigned);
    assert!(
        h.flows.is_empty(),
        "a check without MESSAGE-INTEGRITY pins nothing"
    );

    h.check(h.t0, from, &p, &p.pwd);
    assert_eq!(h.flows.keys().copied().collect::<Vec<_>>(), [from]);
    assert_eq!(h.stats.pins.get(), 1);
    assert_eq!(h.stats.stun(StunOutcome::Success).get(), 1);
    assert_eq!(h.sent.last().map(|t| t.to), Some(from));
}

#[test]
fn a_check_never_moves_an_address_pinned_to_another_session() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let victim = h.create(&room);
    let attacker = h.create(&room);
    let from = client(40000);
    h.check(h.t0, from, &victim, &victim.pwd);
    let sent = h.sent.len();

    // Valid credentials of another session, from the victim's (spoofed) address.
    h.check(h.at(1.0), from, &attacker, &attacker.pwd);
    // A forged check for the victim's session from elsewhere.
    h.check(
        h.at(1.0),
        client(40001),
        &victim,
        "forged-password-forged-pw",
    );

    assert_eq!(h.flows.keys().copied().collect::<Vec<_>>(), [from]);
    assert_eq!(h.stats.pin_conflicts.get(), 1);
    assert_eq!(h.stats.pins.get(), 1);
    assert_eq!(
        h.sent.len(),
        sent + 1,
        "only the forged check got an error response"
    );
    // The victim's traffic still reaches the victim.
    h.datagram(h.at(2.0), from, vec![0x16, 0xfe, 0xfd]);
    assert_eq!(h.stats.session_datagrams.get(), 1);
}

#[test]
fn connected_mode_hands_a_foreign_room_to_its_owner_and_ebpf_mode_counts_it() {
    let foreign = room_owned_by(1, 2);
    let msg = check(
        &format!("{}abcdefgh:cli", foreign.ufrag_part()),
        Some("x"),
        true,
    );

    let mut connected = harness(ActiveMode::Connected, 0, 2);
    connected.datagram(connected.t0, client(40000), msg.clone());
    assert_eq!(connected.handoffs, [1]);
    assert!(connected.flows.is_empty() && connected.sent.is_empty());

    let mut ebpf = harness(ActiveMode::Ebpf, 0, 2);
    ebpf.datagram(ebpf.t0, client(40000), msg.clone());
    assert!(ebpf.handoffs.is_empty());
    assert_eq!(ebpf.stats.misdelivered.get(), 1);

    // A handed-off datagram is never handed on again.
    let mut datagram = msg;
    connected.core.handle_datagram(
        connected.t0,
        client(40000),
        None,
        Arrival::Handoff,
        &mut datagram,
    );
    connected.drain(connected.t0);
    assert_eq!(connected.handoffs, [1]);
    assert_eq!(connected.stats.misdelivered.get(), 1);
}

#[test]
fn consent_expiry_unpins_after_thirty_seconds_of_virtual_time() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    h.check(h.at(1.0), client(40000), &p, &p.pwd);
    let deadline = h.at(1.0) + CONSENT_TIMEOUT;
    assert!(
        h.core.poll_timeout().is_some_and(|t| t <= deadline),
        "the core asks to wake by the consent deadline"
    );

    h.timeout(deadline - Duration::from_millis(1));
    assert_eq!(h.flows.len(), 1, "consent still fresh");
    assert_eq!(h.stats.consent_expired.get(), 0);

    h.timeout(deadline);
    assert!(h.flows.is_empty(), "unpinned");
    assert_eq!(h.stats.consent_expired.get(), 1);
    assert_eq!(h.stats.unpins.get(), 1);
    assert!(h.room_exists(&room), "a REST participant stays listed");
}

#[test]
fn a_media_session_that_never_connects_times_out() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let offer = sdp::parse_offer(CHROME_WHIP).unwrap();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.command(
        h.t0,
        Command::CreateMediaSession {
            room: room.clone(),
            role: Role::Publisher,
            offer: Box::new(offer),
            publisher: None,
            layer: crate::sfu::LayerRequest::Auto,
            reply,
        },
    );
    let created: MediaCreated = rx.try_recv().unwrap().unwrap();
    assert!(created.answer.contains("a=ice-lite"));
    assert_eq!(h.stats.media.publishers.get(), 1);

    h.timeout(h.at(29.0));
    assert!(h.room_exists(&room));
    h.timeout(h.at(30.0));
    assert!(!h.room_exists(&room), "released with its room");
    assert_eq!(h.stats.media.sessions_timed_out.get(), 1);
    assert_eq!(h.stats.media.publishers.get(), 0);
    assert_eq!(h.stats.sessions_created.get(), 1);
    assert_eq!(ended(&h), [("connect_timeout", 1)]);
    assert_eq!(
        h.limits
            .sessions_total
            .load(std::sync::atomic::Ordering::Acquire),
        0
    );
}

#[test]
fn delete_releases_the_pins_and_the_room() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    h.check(h.t0, client(40000), &p, &p.pwd);
    // Not nominating: a nomination would move the path and release the first address.
    h.consent(h.t0, client(40001), &p, &p.pwd);
    assert_eq!(h.flows.len(), 2);

    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.command(
        h.t0,
        Command::DeleteParticipant {
            room: room.clone(),
            participant: p.participant.clone(),
            resource: None,
            reply,
        },
    );
    assert!(rx.try_recv().unwrap());
    assert_eq!(ended(&h), [("deleted", 1)]);
    assert!(h.flows.is_empty(), "both flows released");
    assert!(!h.room_exists(&room));
    assert_eq!(
        h.limits
            .sessions_total
            .load(std::sync::atomic::Ordering::Acquire),
        0
    );
    // The address is free for a new session now.
    let q = h.create(&room);
    h.check(h.at(1.0), client(40000), &q, &q.pwd);
    assert_eq!(h.flows.len(), 1);
    // Every session created is live or ended under one reason.
    assert_eq!(h.stats.sessions_created.get(), 2);
    h.core.release_all(h.at(2.0));
    assert_eq!(ended(&h), [("deleted", 1), ("shutdown", 1)]);
}

/// The reasons sessions ended for so far, with their counts (zeros left out).
fn ended(h: &Harness) -> Vec<(&'static str, u64)> {
    crate::stats::SessionEnd::ALL
        .iter()
        .map(|why| (why.label(), h.stats.sessions_ended[*why as usize].get()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn a_session_whose_caller_is_gone_is_ended_as_abandoned() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let (reply, rx) = tokio::sync::oneshot::channel();
    drop(rx);
    h.command(
        h.t0,
        Command::CreateParticipant {
            room: room.clone(),
            reply,
        },
    );
    assert!(!h.room_exists(&room));
    assert_eq!(h.stats.sessions_created.get(), 1);
    assert_eq!(ended(&h), [("abandoned", 1)]);
}

#[test]
fn an_idle_thread_sleeps_until_it_publishes_its_counters() {
    let h = harness(ActiveMode::Ebpf, 0, 1);
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.t0 + super::core::PUBLISH_EVERY),
        "no session, no room: no protocol timer"
    );
}

/// The value of the first `a=<name>:` line of an SDP.
fn sdp_attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.strip_prefix(&format!("a={name}:")))
        .unwrap()
        .trim()
}

/// A WHIP/WHEP session connected through the core the way the shell would connect it:
/// offer (carrying the test client's certificate fingerprint), nominating ICE check from
/// `from`, DTLS handshake with a webrtc-dtls client. Returns the client's SRTP context.
/// DTLS runs on real time (webrtc-dtls's own timers), so this part reads the clock.
fn connect_media(
    h: &mut Harness,
    room: &RoomId,
    role: Role,
    offer: &str,
    from: SocketAddr,
) -> SrtpSession {
    connect_media_created(h, room, role, offer, from).0
}

/// [`connect_media`], also returning what the core created (answer with ICE credentials).
fn connect_media_created(
    h: &mut Harness,
    room: &RoomId,
    role: Role,
    offer: &str,
    from: SocketAddr,
) -> (SrtpSession, MediaCreated) {
    let (client, fingerprint) = test_client::with_new_certificate();
    let offer: String = offer
        .lines()
        .map(|l| match l.strip_prefix("a=fingerprint:sha-256 ") {
            Some(_) => format!("a=fingerprint:sha-256 {fingerprint}\r\n"),
            None => format!("{l}\r\n"),
        })
        .collect();
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    h.command(
        Instant::now(),
        Command::CreateMediaSession {
            room: room.clone(),
            role,
            offer: Box::new(sdp::parse_offer(&offer).unwrap()),
            publisher: None,
            layer: crate::sfu::LayerRequest::Auto,
            reply,
        },
    );
    let created: MediaCreated = rx.try_recv().unwrap().unwrap();
    let ufrag = sdp_attr(&created.answer, "ice-ufrag");
    let pwd = sdp_attr(&created.answer, "ice-pwd");
    h.datagram(
        Instant::now(),
        from,
        check(&format!("{ufrag}:cli"), Some(pwd), true),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.done.is_finished() {
        assert!(Instant::now() < deadline, "no DTLS handshake within 10 s");
        let now = Instant::now();
        while let Ok(DtlsEvent::Transmit { mut datagram, .. }) = client.out.try_recv() {
            // The client closes right after exporting its keys; its close_notify
            // (an alert) would end the session this test wants to use.
            if datagram.first() != Some(&21) {
                h.core
                    .handle_datagram(now, from, None, Arrival::Group, &mut datagram);
            }
        }
        h.timeout(now);
        for t in h.sent.drain(..).filter(|t| t.to == from) {
            let _ = client.inbound.try_send(t.contents);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let material = client.done.join().unwrap().unwrap();
    (
        SrtpSession::new(&test_client::client_side_keys(&material)).unwrap(),
        created,
    )
}

/// A plaintext Opus RTP packet as the CHROME_WHIP publisher sends it.
fn opus_rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&3_735_928_559u32.to_be_bytes());
    p.extend_from_slice(&[0x5a; 160]);
    p
}

/// Feed one SRTP packet from `from` through the core as the shell does (receive buffer,
/// send, hand the buffer back); returns the datagrams sent to `to`.
fn forward(
    h: &mut Harness,
    buf: &mut [u8],
    packet: &[u8],
    from: SocketAddr,
    to: SocketAddr,
) -> usize {
    let data = &mut buf[..packet.len()];
    data.copy_from_slice(packet);
    h.core
        .handle_datagram(h.t0, from, None, Arrival::Group, data);
    let mut sent = 0;
    while let Some(t) = h.core.poll_transmit() {
        sent += usize::from(t.to == to);
        h.core.handle_sent(t, Ok(()));
    }
    sent
}

/// A publisher without transport-cc feedback, so its room has no fast tick of its own:
/// a gap in its video makes the room NACK at once and arm the retry, and the thread has
/// to wake for that retry rather than at the room's next receiver report.
#[test]
fn a_gap_in_a_publishers_stream_wakes_the_thread_for_the_nack_retry() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let publisher = client(41100);
    let offer: String = CHROME_WHIP
        .lines()
        .filter(|l| !l.contains("transport-cc") && !l.contains("transport-wide-cc"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let mut srtp = connect_media(&mut h, &room, Role::Publisher, &offer, publisher);
    let now = Instant::now();
    h.timeout(now);
    h.sent.clear();
    for seq in [1u16, 2, 4] {
        let mut plain = vec![0x80, 96];
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
        plain.extend_from_slice(&2_847_312_221u32.to_be_bytes());
        plain.extend_from_slice(&[0x10, 0x00, 0x9d, 0x01, 0x2a]);
        let mut out = vec![0; plain.len() + 16];
        let n = srtp.protect_rtp_into(&plain, &mut out).unwrap();
        out.truncate(n);
        h.datagram(now, publisher, out);
    }
    let nacks = h.sent.iter().filter(|t| t.to == publisher).count();
    assert_eq!(nacks, 1, "the gap is NACKed at once");
    let wake = h.core.poll_timeout().expect("a timer");
    assert!(
        wake <= now + Duration::from_millis(20),
        "the thread must wake within the room's fast tick (20 ms) for the NACK retry, not {:?} later",
        wake - now
    );
}

#[test]
fn forwarding_allocates_nothing_once_the_room_is_warm() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let (publisher, subscriber) = (client(41000), client(41001));
    let mut publisher_srtp = connect_media(&mut h, &room, Role::Publisher, CHROME_WHIP, publisher);
    let mut subscriber_srtp =
        connect_media(&mut h, &room, Role::Subscriber, CHROME_WHEP, subscriber);
    let packets: Vec<Vec<u8>> = (0..2300)
        .map(|seq| {
            let plain = opus_rtp(seq);
            let mut out = vec![0; plain.len() + 16];
            let n = publisher_srtp.protect_rtp_into(&plain, &mut out).unwrap();
            out.truncate(n);
            out
        })
        .collect();
    let mut buf = vec![0u8; 2048];

    // The subscriber gets the publisher's packet, decryptable with its own keys.
    h.core.handle_datagram(
        h.t0,
        publisher,
        None,
        Arrival::Group,
        &mut packets[0].clone(),
    );
    let copy = std::iter::from_fn(|| h.core.poll_transmit())
        .find(|t| t.to == subscriber)
        .expect("forwarded to the subscriber");
    let mut received = copy.contents.clone();
    let n = subscriber_srtp
        .unprotect_rtp_in_place(&mut received)
        .unwrap();
    assert_eq!(received[1] & 0x7f, 111);
    assert_eq!(&received[n - 160..n], &[0x5a; 160]);
    h.core.handle_sent(copy, Ok(()));

    // Warm: past the retransmission buffer's cap (2,048 packets), which the ring grows
    // to here since every packet arrives at the same instant, so all are young.
    let warm: usize = packets[1..2100]
        .iter()
        .map(|p| forward(&mut h, &mut buf, p, publisher, subscriber))
        .sum();
    assert_eq!(warm, 2099);

    let before = crate::sfu::alloc_count::allocations();
    let mut sent = 0;
    for p in &packets[2100..] {
        sent += forward(&mut h, &mut buf, p, publisher, subscriber);
    }
    let allocations = crate::sfu::alloc_count::allocations() - before;
    assert_eq!(sent, 200);
    assert_eq!(allocations, 0, "heap allocations for 200 forwarded packets");
}

// ---- Address changes without an ICE restart (mobility) ----

use super::api::ParticipantView;

/// A participant's view as `GET /api/rooms/{room}` lists it.
fn participant_view(h: &mut Harness, room: &RoomId, participant: &str) -> ParticipantView {
    let (reply, mut rx) = tokio::sync::oneshot::channel();
    let now = h.t0;
    h.command(
        now,
        Command::GetRoom {
            room: room.clone(),
            reply,
        },
    );
    let view = rx.try_recv().unwrap().unwrap();
    view.participants
        .into_iter()
        .find(|p| p.participant == participant)
        .unwrap()
}

fn selected(h: &mut Harness, room: &RoomId, participant: &str) -> Option<SocketAddr> {
    participant_view(h, room, participant)
        .selected
        .map(|a| a.parse().unwrap())
}

fn pinned(h: &Harness) -> Vec<SocketAddr> {
    let mut flows: Vec<SocketAddr> = h.flows.keys().copied().collect();
    flows.sort();
    flows
}

impl Harness {
    /// A consent check (no USE-CANDIDATE) as a nominate-once client sends it.
    fn consent(&mut self, now: Instant, from: SocketAddr, p: &ParticipantCreated, pwd: &str) {
        let msg = check(&format!("{}:cli", p.ufrag), Some(pwd), false);
        self.datagram(now, from, msg);
    }
}

#[test]
fn a_nominate_once_client_moves_to_its_new_address_once_the_old_one_is_silent() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    let (old, new) = (client(40000), client(40002));
    h.check(h.t0, old, &p, &p.pwd);
    h.consent(h.at(5.0), old, &p, &p.pwd);

    // A spoofed move: wrong MESSAGE-INTEGRITY from the new address.
    h.consent(h.at(7.0), new, &p, "forged-password-forged-pw");
    assert_eq!(h.stats.stun(StunOutcome::Unauthorized).get(), 1);
    assert_eq!(pinned(&h), [old]);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(old));

    // The rebinding: consent checks now come from the new address; the old one has been
    // silent for 2 s.
    let sent = h.sent.len();
    h.consent(h.at(7.0), new, &p, &p.pwd);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(new));
    assert_eq!(pinned(&h), [new], "the old address's pin is released");
    assert_eq!(h.stats.unpins.get(), 1);
    assert_eq!(h.sent.len(), sent + 1);
    assert_eq!(
        h.sent.last().map(|t| t.to),
        Some(new),
        "answered at the new address"
    );
    assert_eq!(
        participant_view(&mut h, &room, &p.participant).addresses,
        [new.to_string()]
    );
}

#[test]
fn a_check_from_a_second_live_address_does_not_move_the_path() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    let (a, b) = (client(40000), client(40001));
    h.check(h.t0, a, &p, &p.pwd);
    h.consent(h.at(1.0), a, &p, &p.pwd);
    // `a` was checked 0.5 s ago: `b` is pinned (it proved the password) but media stays.
    h.consent(h.at(1.5), b, &p, &p.pwd);
    assert_eq!(pinned(&h), [a, b]);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(a));
    // A client that nominates on every check (Chrome against a lite agent) is followed by
    // its nominations only, however long its path's checks are apart.
    let q = h.create(&room);
    let (c, d) = (client(40010), client(40011));
    h.check(h.at(2.0), c, &q, &q.pwd);
    h.consent(h.at(20.0), d, &q, &q.pwd);
    assert_eq!(selected(&mut h, &room, &q.participant), Some(c));
    h.check(h.at(21.0), d, &q, &q.pwd);
    assert_eq!(selected(&mut h, &room, &q.participant), Some(d));
    assert_eq!(pinned(&h), [a, b, d], "c released when d was nominated");
}

#[test]
fn a_move_onto_an_address_pinned_to_another_session_is_refused() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let victim = h.create(&room);
    let mover = h.create(&room);
    let (taken, mine) = (client(40000), client(40001));
    h.check(h.t0, taken, &victim, &victim.pwd);
    h.check(h.t0, mine, &mover, &mover.pwd);
    // Valid credentials, nominating, from the other session's address.
    h.check(h.at(5.0), taken, &mover, &mover.pwd);
    h.consent(h.at(9.0), taken, &mover, &mover.pwd);
    assert_eq!(h.stats.pin_conflicts.get(), 2);
    assert_eq!(pinned(&h), [taken, mine]);
    assert_eq!(selected(&mut h, &room, &mover.participant), Some(mine));
    assert_eq!(selected(&mut h, &room, &victim.participant), Some(taken));
}

#[test]
fn a_refused_pin_keeps_the_path_and_its_pin() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    let (old, new) = (client(40000), client(40001));
    h.check(h.t0, old, &p, &p.pwd);
    // The kernel map has `new` held by another thread (a race the table cannot see).
    h.flows.insert(new, 1);
    h.check(h.at(1.0), new, &p, &p.pwd);
    assert_eq!(h.stats.pin_conflicts.get(), 1);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(old));
    assert_eq!(
        h.flows.get(&old),
        Some(&0),
        "the old address is still pinned"
    );
    let view = participant_view(&mut h, &room, &p.participant);
    assert_eq!(view.ice_state, "nominated");
    assert_eq!(view.addresses, [old.to_string()]);
}

/// [`connect_media`], also returning the session's ICE credentials.
fn connect_media_ice(
    h: &mut Harness,
    room: &RoomId,
    role: Role,
    offer: &str,
    from: SocketAddr,
) -> (SrtpSession, ParticipantCreated) {
    let (srtp, created) = connect_media_created(h, room, role, offer, from);
    let p = ParticipantCreated {
        ufrag: sdp_attr(&created.answer, "ice-ufrag").to_owned(),
        pwd: sdp_attr(&created.answer, "ice-pwd").to_owned(),
        participant: created.participant,
        thread: created.thread,
    };
    (srtp, p)
}

/// Feed one datagram at `now` and return where the core sent datagrams.
fn destinations(h: &mut Harness, now: Instant, from: SocketAddr, packet: &[u8]) -> Vec<SocketAddr> {
    let mut data = packet.to_vec();
    h.core
        .handle_datagram(now, from, None, Arrival::Group, &mut data);
    let mut to = Vec::new();
    while let Some(t) = h.core.poll_transmit() {
        to.push(t.to);
        h.core.handle_sent(t, Ok(()));
    }
    to
}

fn protect(srtp: &mut SrtpSession, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0; plain.len() + 16];
    let n = srtp.protect_rtp_into(plain, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn media_follows_a_moved_client_and_a_spoofed_move_moves_nothing() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let (pub_old, pub_new) = (client(41000), client(41100));
    let (sub_old, sub_new) = (client(41001), client(41101));
    let (mut publisher, p) =
        connect_media_ice(&mut h, &room, Role::Publisher, CHROME_WHIP, pub_old);
    let (_subscriber, s) = connect_media_ice(&mut h, &room, Role::Subscriber, CHROME_WHEP, sub_old);
    let t = Instant::now();
    let mut seq = 0u16;
    // Where the publisher's packets go; feedback to the publisher is not counted.
    let mut send = |h: &mut Harness, now: Instant, from: SocketAddr| {
        seq += 1;
        let to = destinations(h, now, from, &protect(&mut publisher, &opus_rtp(seq)));
        to.into_iter()
            .filter(|a| ![pub_old, pub_new].contains(a))
            .collect::<Vec<_>>()
    };
    assert_eq!(send(&mut h, t, pub_old), [sub_old]);
    h.consent(t, sub_old, &s, &s.pwd);

    // The subscriber's address changes. A spoofed check from its new address (wrong
    // MESSAGE-INTEGRITY) moves nothing; media still goes to the old address.
    h.consent(
        t + Duration::from_secs(2),
        sub_new,
        &s,
        "forged-password-forged-pw",
    );
    assert_eq!(h.stats.stun(StunOutcome::Unauthorized).get(), 1);
    assert_eq!(send(&mut h, t + Duration::from_secs(2), pub_old), [sub_old]);
    // Its consent checks from the new address, the old one silent for 2 s: media moves.
    h.consent(t + Duration::from_secs(2), sub_new, &s, &s.pwd);
    assert_eq!(send(&mut h, t + Duration::from_secs(2), pub_old), [sub_new]);
    assert!(!h.flows.contains_key(&sub_old), "old pin released");
    assert!(h.flows.contains_key(&sub_new));

    // The publisher moves too. Its media from the new address before any check is
    // dropped (nothing pinned there) and moves nothing.
    let no_session = h.stats.no_session.get();
    assert_eq!(send(&mut h, t + Duration::from_secs(3), pub_new), []);
    assert_eq!(h.stats.no_session.get(), no_session + 1);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(pub_old));
    // A nominating check (Chrome renominates the path it uses) moves it at once.
    let msg = check(&format!("{}:cli", p.ufrag), Some(&p.pwd), true);
    h.datagram(t + Duration::from_secs(3), pub_new, msg);
    assert_eq!(selected(&mut h, &room, &p.participant), Some(pub_new));
    assert_eq!(send(&mut h, t + Duration::from_secs(3), pub_new), [sub_new]);
    // The old address is released: its datagrams reach no session.
    assert_eq!(send(&mut h, t + Duration::from_secs(3), pub_old), []);
    assert_eq!(h.stats.no_session.get(), no_session + 2);
    let mut flows: Vec<SocketAddr> = h.flows.keys().copied().collect();
    flows.sort();
    assert_eq!(flows, [pub_new, sub_new]);
}

#[test]
fn nominations_in_quick_succession_release_only_addresses_gone_silent() {
    let mut h = harness(ActiveMode::Ebpf, 0, 1);
    let room = room_owned_by(0, 1);
    let p = h.create(&room);
    let addrs: Vec<SocketAddr> = (40000..40008).map(client).collect();
    for &a in &addrs {
        h.check(h.t0, a, &p, &p.pwd);
    }
    assert_eq!(pinned(&h), addrs, "every nominated address is live");
    assert_eq!(selected(&mut h, &room, &p.participant), Some(addrs[7]));
    h.check(h.at(0.5), addrs[7], &p, &p.pwd);
    assert_eq!(h.flows.len(), 8);
    // Only the last one kept checking; the others went silent 1 s ago.
    h.check(h.at(1.0), addrs[7], &p, &p.pwd);
    assert_eq!(pinned(&h), [addrs[7]]);
    assert_eq!(h.stats.unpins.get(), 7);
}
