//! Cluster mode (issue 12): three real roomgate nodes and a real `redis-server`, each
//! node in its own network namespace joined by veth to a hub namespace where Redis and
//! the clients live (tests/support/cluster.rs).
//!
//! - A client at a node that does not own the room gets a 307 to the owner, follows it
//!   (the Rust WHIP/WHEP client with real DTLS-SRTP) and gets media through the owner;
//!   every participant lands on that one node; REST is redirected, not proxied; the
//!   redirect counter counts exactly the 307s sent.
//! - A node with `--cluster-load-threshold 0` places a new room on the least-loaded node.
//! - 20 concurrent first joins through all three nodes produce one owner, five times.
//! - Headless Chromium publishes at a node that does not own the room: the browser's own
//!   fetch follows the cross-origin 307, and a Rust viewer gets the media through the owner.
//!
//! Node 1 runs `connected` steering, nodes 0 and 2 `ebpf`, so both modes serve rooms.
#[path = "support/browser.rs"]
mod browser_support;
mod support;
#[path = "support/webrtc.rs"]
mod webrtc;

use std::{
    collections::BTreeSet,
    sync::{Arc, Barrier},
    time::Duration,
};

use browser_support::{
    chromium_available, demo_page_source, publish_outcome, Browser, LaunchOptions, ReportServer,
};
use serde_json::Value;
use support::{
    cluster::{base_of, path_of, request, request_following, Cluster, Node, Reply},
    eventually, require_root,
};
use webrtc::{
    connect, fingerprint_of, new_certificate, Kind, Offer, Peer, PeerConfig, Role, Stream,
};

/// Bound for state to show up (heartbeats run every ttl/3 = 500 ms) and packets to arrive.
const WAIT: Duration = Duration::from_secs(5);
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
const REDIRECTS: &str = "roomgate_cluster_redirects_total";
const CLAIMS: &str = "roomgate_cluster_claims_total";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A complete offer as a WHIP/WHEP client would POST it first.
fn offer_sdp(role: Role) -> String {
    let mut offer = Offer::new(role);
    offer.fingerprint = fingerprint_of(&new_certificate());
    offer.to_sdp()
}

/// The 307 `reply` must send the client to `owner` with the same path.
fn assert_redirect(reply: &Reply, owner: &Node, path: &str) {
    let want = owner.url(path);
    assert_eq!(
        reply.status,
        307,
        "{} must be redirected to {}: {} {}",
        reply.url,
        owner.id(),
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.location.as_deref(),
        Some(want.as_str()),
        "Location of {}",
        reply.url
    );
    let body = reply.json();
    assert_eq!(body["owner"], owner.id(), "307 body: {body}");
    assert_eq!(body["location"], want.as_str(), "307 body: {body}");
}

/// The Rust WHIP/WHEP client at `entry`; it follows a 307 itself (the same offer to the
/// Location, as RFC 9725 asks).
fn connect_at(c: &Cluster, entry: &Node, path: &str, cfg: PeerConfig) -> Peer {
    let base = entry.base_url();
    c.client(|| connect(&base, path, cfg))
        .unwrap_or_else(|e| panic!("WHIP/WHEP {path} at {}: {e}", entry.id()))
}

fn peer_config(c: &Cluster, mut cfg: PeerConfig) -> PeerConfig {
    cfg.bind_ip = c.net.hub_ip();
    cfg
}

/// Send `n` video packets at 100/s; `viewer` must receive all of them.
fn assert_media_flows(publisher: &Peer, viewer: &Peer, n: usize) {
    let mut video = Stream::for_peer(publisher, Kind::Video);
    for _ in 0..n {
        publisher.send_rtp(&video.next(800, 2));
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = viewer.recv_rtp_n(n, WAIT);
    assert_eq!(got.len(), n, "viewer received {} of {n} packets", got.len());
    let ssrc = viewer
        .answer
        .ssrc(Kind::Video)
        .expect("a=ssrc for video in the answer");
    assert!(
        got.iter().all(|r| r.packet.ssrc == ssrc),
        "every packet on the viewer's video SSRC {ssrc}"
    );
}

/// Sessions per node, in node order.
fn sessions(c: &Cluster) -> Vec<u64> {
    c.nodes.iter().map(Node::sessions).collect()
}

/// The `claims` each node has in `viewer`'s membership view, in node order.
fn claims_seen_by(viewer: &Node, c: &Cluster) -> Vec<u64> {
    let v = viewer.cluster();
    c.nodes
        .iter()
        .map(|n| {
            v["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|x| x["id"] == n.id()))
                .and_then(|x| x["claims"].as_u64())
                .unwrap_or(u64::MAX)
        })
        .collect()
}

/// Wait until `viewer`'s membership view shows every node's session count as `want`.
fn wait_view_sessions(viewer: &Node, c: &Cluster, want: &[u64]) {
    let mut last = Value::Null;
    let ok = eventually(WAIT, || {
        last = viewer.cluster();
        c.nodes.iter().zip(want).all(|(n, w)| {
            last["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|x| x["id"] == n.id()))
                .and_then(|x| x["sessions"].as_u64())
                == Some(*w)
        })
    });
    assert!(
        ok,
        "{}'s view never showed sessions {want:?}: {last}",
        viewer.id()
    );
}

// ---------------------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------------------

#[test]
fn clients_at_other_nodes_are_redirected_and_served_by_the_owner() {
    if !require_root() {
        return;
    }
    let c = Cluster::start("rd", 3);
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    assert_eq!(
        b.mode(),
        "connected",
        "the owner here runs connected steering"
    );
    let room = "redirected";
    for n in &c.nodes {
        assert_eq!(n.metric(REDIRECTS), 0.0, "{} sent no 307 yet", n.id());
    }

    // The room starts at B (B is under its load threshold, so it takes the room).
    let seed = b.request(
        "POST",
        &format!("/api/rooms/{room}/participants"),
        None,
        None,
    );
    assert_eq!(seed.status, 201, "REST join at B: {}", seed.body);
    assert_eq!(c.redis_owner(room), b.id(), "Redis names B as the owner");

    // WHIP at A, WHEP at C: the real client follows the 307 and lands on B (its session's
    // absolute Location names B); each entry node counts one redirect.
    let whip = format!("/whip/{room}");
    let publisher = connect_at(&c, a, &whip, peer_config(&c, PeerConfig::publisher()));
    assert_eq!(
        publisher.base,
        b.base_url(),
        "the publisher's session lives on B"
    );
    assert_eq!(a.metric(REDIRECTS), 1.0, "A redirected the WHIP offer");
    let whep = format!("/whep/{room}");
    let viewer = connect_at(&c, cc, &whep, peer_config(&c, PeerConfig::subscriber()));
    assert_eq!(viewer.base, b.base_url(), "the viewer's session lives on B");
    assert_eq!(cc.metric(REDIRECTS), 1.0, "C redirected the WHEP offer");
    b.wait_connected(room, &[&publisher.participant, &viewer.participant]);
    assert_media_flows(&publisher, &viewer, 100);
    assert_eq!(sessions(&c), vec![0, 3, 0], "every participant is on B");

    // The 201 after a followed 307 carries an ABSOLUTE Location on B. DELETE at A for
    // B's resource is redirected to B; DELETE at the absolute Location ends it.
    let whip_url = a.url(&whip);
    let offer = offer_sdp(Role::Publisher);
    let replies = c.client(|| request_following("POST", &whip_url, Some(SDP), Some(&offer)));
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![307, 201], "WHIP at A, followed: {replies:?}");
    assert_redirect(&replies[0], b, &whip);
    let created = replies[1].location.clone().expect("201 with Location");
    let resource = path_of(&created).to_owned();
    assert!(
        created.starts_with(&format!("{}/whip/{room}/", b.base_url())),
        "Location must be absolute on B ({}): {created}",
        b.base_url()
    );
    assert_eq!(sessions(&c), vec![0, 4, 0]);
    // PATCH (trickle, RFC 9725 4.3) reaches B at the absolute Location; at A it is 307'd.
    let frag = "a=end-of-candidates\r\n";
    let patch_at_a = a.request("PATCH", &resource, Some(SDPFRAG), Some(frag));
    assert_redirect(&patch_at_a, b, &resource);
    let patched = c.client(|| request("PATCH", &created, Some(SDPFRAG), Some(frag)));
    assert_eq!(patched.status, 204, "PATCH {created}: {}", patched.body);
    let at_a = a.request("DELETE", &resource, None, None);
    assert_redirect(&at_a, b, &resource);
    assert_eq!(
        sessions(&c),
        vec![0, 4, 0],
        "a redirected DELETE ends nothing"
    );
    let deleted = c.client(|| request("DELETE", &created, None, None));
    assert!(
        (200..300).contains(&deleted.status),
        "DELETE {created}: {} {}",
        deleted.status,
        deleted.body
    );
    assert!(
        eventually(WAIT, || sessions(&c) == vec![0, 3, 0]),
        "the DELETE at the absolute Location ended the session on B: {:?}",
        sessions(&c)
    );

    // An offer that is not SDP is refused where it arrives and claims nothing.
    let not_sdp = a.request("POST", "/whip/neverclaimed", Some("text/plain"), Some("x"));
    assert_eq!(not_sdp.status, 415, "{}", not_sdp.body);
    assert_eq!(
        c.redis_owner("neverclaimed"),
        "",
        "no claim for a refused offer"
    );

    // REST is redirected too, never proxied: a participant POST at A and a room GET at C.
    let probe = cc.request("POST", &whep, Some(SDP), Some(&offer_sdp(Role::Subscriber)));
    assert_redirect(&probe, b, &whep);
    let participants = format!("/api/rooms/{room}/participants");
    let rest = a.request("POST", &participants, None, None);
    assert_redirect(&rest, b, &participants);
    // A percent-encoded room name is the same room (the handler decodes it): redirected
    // too, never served here.
    let encoded = format!(
        "/api/rooms/%{:02X}{}/participants",
        room.as_bytes()[0],
        &room[1..]
    );
    let rest = a.request("POST", &encoded, None, None);
    assert_redirect(&rest, b, &encoded);
    let listing = format!("/api/rooms/{room}");
    let get = cc.request("GET", &listing, None, None);
    assert_redirect(&get, b, &listing);
    let followed = c.client(|| request_following("GET", &cc.url(&listing), None, None));
    let last = followed.last().expect("a reply");
    assert_eq!(last.status, 200, "GET room after the 307: {}", last.body);
    let listed: BTreeSet<String> = last.json()["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["participant"].as_str().map(str::to_owned))
        .collect();
    assert!(
        listed.contains(&publisher.participant) && listed.contains(&viewer.participant),
        "B lists the publisher and the viewer: {listed:?}"
    );
    assert_eq!(sessions(&c), vec![0, 3, 0]);

    // Only B owns the room, in each node's own word and in the shared view.
    assert_eq!(b.owned_rooms(), vec![room.to_owned()]);
    assert!(a.owned_rooms().is_empty() && cc.owned_rooms().is_empty());
    assert!(
        eventually(WAIT, || claims_seen_by(a, &c) == vec![0, 1, 0]),
        "A's view: claims {:?}",
        claims_seen_by(a, &c)
    );
    assert_eq!(c.redis_owner(room), b.id());

    // Exactly the 307s sent: A answered WHIP (client), WHIP (followed here), PATCH, DELETE,
    // REST POST twice; C answered WHEP (client), WHEP (probe), GET, GET (followed); B none.
    assert_eq!(a.metric(REDIRECTS), 6.0, "A's redirects");
    assert_eq!(cc.metric(REDIRECTS), 4.0, "C's redirects");
    assert_eq!(b.metric(REDIRECTS), 0.0, "B's redirects");

    // The viewer leaves through its resource on B (the Location it was given).
    let status = c.client(|| viewer.delete());
    assert!((200..300).contains(&status), "viewer DELETE at B: {status}");
    assert!(eventually(WAIT, || sessions(&c) == vec![0, 2, 0]));
}

// ---------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------

/// `n` REST joins of `room` at `node`, each answered 201 there (no redirect).
fn join_locally(node: &Node, room: &str, n: usize) {
    for _ in 0..n {
        let r = node.request(
            "POST",
            &format!("/api/rooms/{room}/participants"),
            None,
            None,
        );
        assert_eq!(
            r.status,
            201,
            "join {room} at {}: {} {}",
            node.id(),
            r.status,
            r.body
        );
    }
}

#[test]
fn a_node_with_threshold_zero_places_new_rooms_on_the_least_loaded_node() {
    if !require_root() {
        return;
    }
    // A small capacity makes each session weigh 1/8 of the load, far above the idle busy
    // ratio of the logic threads, so the loads set up below decide the placement.
    let cap = ["--max-sessions", "8"];
    let zero = ["--max-sessions", "8", "--cluster-load-threshold", "0"];
    let c = Cluster::start_with("pl", &[zero.to_vec(), cap.to_vec(), cap.to_vec()]);
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    // n2 and n3 are under the default threshold: they take their new rooms themselves.
    join_locally(n2, "heavy", 5);
    join_locally(n3, "light", 2);
    wait_view_sessions(n1, &c, &[0, 5, 2]);
    // n1 (threshold 0) takes a new room only as the least-loaded node: now it is.
    join_locally(n1, "own", 3);
    assert_eq!(c.redis_owner("own"), n1.id());
    wait_view_sessions(n1, &c, &[3, 5, 2]);

    // Loads now 3/8, 5/8, 2/8: n1's next new room goes to n3, by a 307.
    let path = "/api/rooms/placed/participants";
    let placed = n1.request("POST", path, None, None);
    assert_redirect(&placed, n3, path);
    assert_eq!(
        c.redis_owner("placed"),
        n3.id(),
        "n1 claimed the room for n3"
    );
    let followed = c.client(|| request_following("POST", &n1.url(path), None, None));
    assert_eq!(
        followed.last().map(|r| r.status),
        Some(201),
        "the join lands at n3: {followed:?}"
    );
    assert_eq!(sessions(&c), vec![3, 5, 3]);
    assert_eq!(
        n3.owned_rooms(),
        vec!["light".to_owned(), "placed".to_owned()]
    );
}

// ---------------------------------------------------------------------------------------
// Concurrent first joins
// ---------------------------------------------------------------------------------------

#[test]
fn twenty_concurrent_first_joins_through_three_nodes_make_one_owner() {
    if !require_root() {
        return;
    }
    const JOINS: usize = 20;
    const ROUNDS: usize = 5;
    let c = Cluster::start("race", 3);
    let won = |c: &Cluster| -> f64 {
        c.nodes
            .iter()
            .map(|n| n.metric_with(CLAIMS, "outcome=\"won\""))
            .sum()
    };
    assert_eq!(won(&c), 0.0);
    let mut owners = Vec::new();
    for round in 0..ROUNDS {
        let room = format!("race{round}");
        let before = sessions(&c);
        let barrier = Arc::new(Barrier::new(JOINS));
        // Half WHIP offers, half REST joins, rotating over the three nodes.
        let finals: Vec<Reply> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..JOINS)
                .map(|i| {
                    let node = &c.nodes[i % c.nodes.len()];
                    let (path, body) = if i % 2 == 0 {
                        (format!("/whip/{room}"), Some(offer_sdp(Role::Publisher)))
                    } else {
                        (format!("/api/rooms/{room}/participants"), None)
                    };
                    let url = node.url(&path);
                    let barrier = barrier.clone();
                    let c = &c;
                    s.spawn(move || {
                        c.client(|| {
                            barrier.wait();
                            let ct = body.as_ref().map(|_| SDP);
                            let mut replies = request_following("POST", &url, ct, body.as_deref());
                            replies.pop().expect("a final reply")
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join thread"))
                .collect()
        });
        let mut served_by = BTreeSet::new();
        for r in &finals {
            assert_eq!(
                r.status, 201,
                "round {round}: {} {} {}",
                r.url, r.status, r.body
            );
            served_by.insert(base_of(&r.url).to_owned());
        }
        assert_eq!(
            served_by.len(),
            1,
            "round {round}: joins served by {served_by:?}"
        );
        let owner = c
            .node_of_url(served_by.first().expect("one node"))
            .expect("a node of the cluster");
        assert_eq!(
            c.redis_owner(&room),
            owner.id(),
            "round {round}: Redis owner"
        );
        let after = sessions(&c);
        for (i, n) in c.nodes.iter().enumerate() {
            let want = if n.id() == owner.id() {
                JOINS as i64
            } else {
                0
            };
            assert_eq!(
                after[i] as i64 - before[i] as i64,
                want,
                "round {round}: new sessions on {} (owner {})",
                n.id(),
                owner.id()
            );
        }
        assert_eq!(
            won(&c),
            (round + 1) as f64,
            "round {round}: one claim won per room"
        );
        owners.push(owner.id().to_owned());
    }
    eprintln!("owners per round: {owners:?}");
}

// ---------------------------------------------------------------------------------------
// A real browser
// ---------------------------------------------------------------------------------------

#[test]
fn a_browser_follows_the_cross_origin_307_and_its_media_reaches_a_viewer_at_the_owner() {
    if !require_root() || !chromium_available() {
        return;
    }
    let c = Cluster::start("br", 3);
    let (entry, owner) = (&c.nodes[0], &c.nodes[2]);
    assert_eq!(owner.mode(), "ebpf", "the owner here runs eBPF steering");
    let room = "browsed";

    // The viewer joins first, at the owner, so the room is the owner's.
    let cfg = peer_config(&c, PeerConfig::subscriber());
    let whep = format!("/whep/{room}");
    let viewer = c
        .client(|| connect(&owner.base_url(), &whep, cfg))
        .unwrap_or_else(|e| panic!("WHEP at the owner: {e}"));
    assert_eq!(c.redis_owner(room), owner.id());

    // The page loads from a third origin in the hub and talks to `entry`.
    let hub_ip = c.net.hub_ip();
    // Listening in the hub, where the browser runs.
    let reports = c.client(|| ReportServer::start_on(hub_ip, Some(demo_page_source())));
    let query = format!(
        "room={room}&autostart=1&name=P&report={}&gateway={}",
        reports.report_url(),
        entry.base_url()
    );
    let options = LaunchOptions {
        netns: Some(c.net.hub().to_owned()),
        // getUserMedia needs a secure context; only loopback origins are one over http.
        args: vec![format!(
            "--unsafely-treat-insecure-origin-as-secure=http://{}",
            reports.addr
        )],
    };
    let browser = Browser::launch_with("P", &reports.page_url(&query), &options);
    let mut outcome = None;
    eventually(Duration::from_secs(30), || {
        outcome = reports.latest("P").as_ref().and_then(publish_outcome);
        outcome.is_some() || !browser.running()
    });
    let participant = match outcome {
        Some(Ok(p)) => p,
        Some(Err(e)) => panic!(
            "the browser could not publish through the 307 from {} to {}: {e}\nconsole:\n{}",
            entry.base_url(),
            owner.base_url(),
            browser.log_tail(30)
        ),
        None => panic!(
            "the browser did not publish within 30 s; reports:\n{}\nconsole:\n{}",
            reports.dump(),
            browser.log_tail(30)
        ),
    };
    eprintln!("browser published as {participant}");

    // Its session is on the owner, and the viewer there gets its media.
    assert_eq!(
        sessions(&c),
        vec![0, 0, 2],
        "the browser's session is on the owner"
    );
    let got = viewer.recv_rtp_n(50, Duration::from_secs(15));
    assert_eq!(
        got.len(),
        50,
        "the viewer at the owner received {} of 50 packets from the browser",
        got.len()
    );
    assert!(
        entry.metric(REDIRECTS) >= 1.0,
        "the entry node sent the 307"
    );
    assert_eq!(owner.metric(REDIRECTS), 0.0);

    // The page's room polls (GET at the entry node) follow their 307 too: it lists itself.
    let listed = eventually(Duration::from_secs(10), || {
        reports.latest("P").is_some_and(|r| {
            r["listing"]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["participant"] == participant.as_str()))
        })
    });
    assert!(
        listed,
        "the page's room listing never showed it:\n{}",
        reports.dump()
    );

    // Leaving sends DELETE to the absolute Location, on the owner (cross-origin again).
    reports.command("P", "leave");
    assert!(
        eventually(Duration::from_secs(10), || sessions(&c) == vec![0, 0, 1]),
        "the page's DELETE did not end its session on the owner: {:?}\nconsole:\n{}",
        sessions(&c),
        browser.log_tail(30)
    );
    let errors = reports.latest("P").map(|r| r["errors"].clone());
    assert_eq!(
        errors,
        Some(Value::Array(Vec::new())),
        "page errors; console:\n{}",
        browser.log_tail(30)
    );
    drop(browser);
}
