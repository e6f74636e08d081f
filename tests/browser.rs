//! Real-browser end-to-end tests: headless Chromium loads the demo page, publishes its
//! fake camera and microphone through WHIP, watches the other publishers of its room
//! through WHEP, and reports its `getStats()` numbers once a second to a tiny HTTP server
//! in the test. Decoded frames prove the whole media plane (ICE-lite, DTLS-SRTP, SFU
//! forwarding) end to end; the gateway's counters prove the steering invariants held
//! while real browsers used it.
//!
//! Needs `/usr/bin/chromium` (`cargo xtask test` installs it); without it these tests
//! fail unless `ROOMGATE_SKIP_BROWSER=1`. Browser tests run one at a time (2-4 Chromium
//! instances each), every wait is bounded, and failures print the latest page reports,
//! the browsers' console and the gateway's log.
#[path = "support/browser.rs"]
mod browser_support;
mod support;

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use browser_support::{
    chromium_available, demo_page_source, publish_outcome, Browser, ReportServer,
};
use gateway::room::RoomId;
use serde_json::Value;
use support::{ebpf_counter, eventually, sum_threads, thread_counter, Gateway, GatewayBuilder};

/// Upper bound for every wait on a browser (start-up, negotiation, first frames).
const WAIT: Duration = Duration::from_secs(60);
const THREADS: usize = 2;

/// Chromium instances are heavy; one browser test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Loopback everything, so the gateway's candidate is 127.0.0.1.
fn gateway(steering: &str) -> GatewayBuilder {
    Gateway::builder(steering, THREADS).set("--public-ip", "127.0.0.1")
}

/// A gateway, a report server and the browsers of one test. Dropped before the gateway.
struct Scene<'a> {
    gw: &'a Gateway,
    reports: ReportServer,
    browsers: Vec<Browser>,
    /// Where the next pages load from: the gateway itself, or the report server (a
    /// second origin; they then reach the gateway through `?gateway=`).
    cross_origin: bool,
    /// Bearer token for the test's own API calls (`--auth-token`).
    token: Option<String>,
}

impl<'a> Scene<'a> {
    /// Pages load from the gateway's own origin (set `cross_origin` to change that).
    fn new(gw: &'a Gateway) -> Self {
        Scene {
            gw,
            reports: ReportServer::start(Some(demo_page_source())),
            browsers: Vec::new(),
            cross_origin: false,
            token: None,
        }
    }

    /// Open the demo page as `name` in `room`, joining at once; `extra` is appended to
    /// the query (e.g. `&publish=0`, `&token=...`).
    fn open(&mut self, name: &str, room: &str, extra: &str) {
        let mut query = format!(
            "room={room}&autostart=1&name={name}&report={}{extra}",
            self.reports.report_url()
        );
        let url = if self.cross_origin {
            query.push_str(&format!("&gateway=http://{}", self.gw.http));
            self.reports.page_url(&query)
        } else {
            self.gw.url(&format!("/?{query}"))
        };
        self.browsers.push(Browser::launch(name, &url));
    }

    /// `GET /api/rooms/{room}` (with the bearer token, if any): status and JSON.
    fn listing(&self, room: &str) -> (u16, Value) {
        api_get(
            self.gw,
            &format!("/api/rooms/{room}"),
            self.token.as_deref(),
        )
    }

    /// Print everything that helps to understand a failure, then panic with `msg`.
    fn fail(&self, msg: &str) -> ! {
        eprintln!("==== FAILED: {msg}");
        eprintln!("==== page reports:\n{}", self.reports.dump());
        for b in &self.browsers {
            let alive = b.running();
            eprintln!(
                "==== browser {} ({}), console/errors:\n{}",
                b.name,
                if alive { "running" } else { "EXITED" },
                b.log_tail(40)
            );
        }
        let log = strip_ansi(&self.gw.stderr());
        let lines: Vec<&str> = log.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("panicked at") {
                let message = lines.get(i + 1).copied().unwrap_or("");
                eprintln!("==== GATEWAY PANICKED: {l} {message}");
            }
        }
        // Without backtrace frames, which would crowd out the log.
        let log: Vec<&str> = lines
            .into_iter()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("at ")
                    || t.split_once(": ")
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
            })
            .collect();
        let start = log.len().saturating_sub(150);
        eprintln!(
            "==== gateway stderr (last {} of {} lines, without backtraces):\n{}",
            log.len() - start,
            log.len(),
            log[start..].join("\n")
        );
        panic!("{msg}");
    }

    /// Poll `f` until it gives a value, for at most [`WAIT`]; fail with `what` otherwise,
    /// or as soon as a browser died.
    fn wait<T>(&self, what: &str, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let mut found = None;
        let mut dead = None;
        eventually(WAIT, || {
            found = f(self);
            dead = self
                .browsers
                .iter()
                .find(|b| !b.running())
                .map(|b| b.name.clone());
            found.is_some() || dead.is_some()
        });
        match (found, dead) {
            (Some(v), _) => v,
            (None, Some(name)) => {
                self.fail(&format!("browser {name} exited while waiting until {what}"))
            }
            (None, None) => self.fail(&format!("timed out after {WAIT:?} waiting until {what}")),
        }
    }

    fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let msg = msg();
            self.fail(&msg);
        }
    }

    /// The participant ID of `name`'s WHIP session, once it has one.
    /// A failed publish is final for the page, so that fails at once.
    fn publisher_id(&self, name: &str) -> String {
        let found = self.wait(&format!("page {name} publishes (WHIP 201)"), |s| {
            publish_outcome(&s.reports.latest(name)?)
        });
        found.unwrap_or_else(|err| self.fail(&format!("page {name} could not publish: {err}")))
    }

    /// `watcher` decodes `publisher`'s video (frame count rising across two reports)
    /// and receives its audio.
    fn assert_receiving(&self, watcher: &str, publisher: &str) {
        let stats = |s: &Self| -> Option<(u64, u64, u64, u64)> {
            let r = s.reports.latest(watcher)?;
            let sub = subscription(&r, publisher)?;
            Some((
                sub["video"]["framesDecoded"].as_u64()?,
                sub["video"]["frameWidth"].as_u64()?,
                sub["audio"]["packetsReceived"].as_u64()?,
                r["time"].as_u64()?,
            ))
        };
        let (frames, width, _, at) = self.wait(
            &format!("{watcher} decodes video and receives audio from publisher {publisher}"),
            |s| stats(s).filter(|&(f, w, a, _)| f > 0 && w > 0 && a > 0),
        );
        let (later, _, audio, _) = self.wait(
            &format!(
                "{watcher} keeps decoding {publisher}'s video (framesDecoded was {frames} at report {at})"
            ),
            |s| stats(s).filter(|&(f, _, _, t)| t > at && f > frames),
        );
        eprintln!(
            "{watcher} <- {publisher}: framesDecoded {frames} -> {later}, frameWidth {width}, audio packets {audio}"
        );
    }

    /// Page `leaver` (publisher `leaver_id`) clicks "Leave": it DELETEs its WHIP session
    /// and its WHEP subscription. `stayer`'s page sees the publisher gone from the room
    /// within a poll or two, drops the tile and DELETEs its subscription, which leaves
    /// `stayer_id` alone in the room.
    fn leave(&self, leaver: &str, leaver_id: &str, stayer: &str, stayer_id: &str, room: &str) {
        self.reports.command(leaver, "leave");
        self.wait(
            &format!("page {leaver} has left (not joined, not publishing, no subscriptions)"),
            |s| {
                let r = s.reports.latest(leaver)?;
                (r["joined"] == false
                    && r["publishing"] == false
                    && r["subscriptions"].as_array()?.is_empty())
                .then_some(())
            },
        );
        self.wait(
            &format!("{stayer} drops its subscription to the departed publisher {leaver_id}"),
            |s| {
                let r = s.reports.latest(stayer)?;
                subscription(&r, leaver_id).is_none().then_some(())
            },
        );
        self.assert_room(room, &[stayer_id], 0);
    }

    /// The pages' latest reports list no errors (failed requests, DELETEs, exceptions).
    fn assert_no_page_errors(&self, names: &[&str]) {
        for name in names {
            let errors = self.reports.latest(name).map(|r| r["errors"].clone());
            let clean = errors
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            self.check(clean, || format!("page {name} reports errors: {errors:?}"));
        }
    }

    /// The publishers `name` currently watches, from its latest report.
    fn watched(&self, name: &str) -> BTreeSet<String> {
        self.reports
            .latest(name)
            .map(|r| watched_in(&r))
            .unwrap_or_default()
    }

    /// `name` watches exactly `expected` now, and no report of it ever named another publisher.
    fn assert_watches_exactly(&self, name: &str, expected: &[&str]) {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        let now = self.watched(name);
        self.check(now == expected, || {
            format!("{name} watches {now:?}, expected exactly {expected:?}")
        });
        let ever: BTreeSet<String> = self.reports.all(name).iter().flat_map(watched_in).collect();
        self.check(ever.is_subset(&expected), || {
            format!("{name} at some point watched {ever:?}; only {expected:?} are in its room")
        });
    }

    /// The room lists `publishers` (by ID) as publishers plus `subscribers` subscriber
    /// sessions, all DTLS-connected, on the room's owner thread.
    fn assert_room(&self, room: &str, publishers: &[&str], subscribers: usize) -> Value {
        let owner = RoomId::parse(room).expect("room id").owner(THREADS);
        let want: BTreeSet<String> = publishers.iter().map(|s| s.to_string()).collect();
        let listing = self.wait(
            &format!(
                "GET /api/rooms/{room} lists publishers {want:?} and {subscribers} subscribers, all DTLS-connected"
            ),
            |s| {
                let (code, v) = s.listing(room);
                if code != 200 {
                    return None;
                }
                let parts = v["participants"].as_array()?;
                let by_role = |role: &str| -> Vec<&Value> {
                    parts.iter().filter(|p| p["role"] == role).collect()
                };
                let pubs: BTreeSet<String> = by_role("publisher")
                    .iter()
                    .filter_map(|p| p["participant"].as_str().map(str::to_owned))
                    .collect();
                let all_connected = parts.iter().all(|p| p["dtls_state"] == "connected");
                (pubs == want
                    && by_role("subscriber").len() == subscribers
                    && parts.len() == publishers.len() + subscribers
                    && all_connected)
                    .then_some(v)
            },
        );
        self.check(listing["thread"].as_u64() == Some(owner as u64), || {
            format!("room {room} must live on thread {owner}: {listing}")
        });
        listing
    }
}

/// Drop terminal colour sequences (`ESC [ ... m`) from the gateway's log.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn subscription<'r>(report: &'r Value, publisher: &str) -> Option<&'r Value> {
    report["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s["publisher"] == publisher)
}

fn watched_in(report: &Value) -> BTreeSet<String> {
    report["subscriptions"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .filter_map(|s| s["publisher"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A successful DELETE of a WHIP/WHEP session: 200 (RFC 9725's examples) or 204.
fn deleted(code: u16) -> bool {
    code == 200 || code == 204
}

/// GET with an optional bearer token; status and JSON (or the body as a string).
fn api_get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let url = gw.url(path);
    let mut req = agent().get(&url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// Client flows the gateway pinned: every address of every participant of `rooms`.
fn pinned_flows(s: &Scene, rooms: &[&str]) -> u64 {
    rooms
        .iter()
        .map(|room| {
            let (_, v) = s.listing(room);
            v["participants"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| p["addresses"].as_array().map_or(0, Vec::len) as u64)
                        .sum::<u64>()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Two browsers in one room publish and watch each other; the gateway's counters show
/// the steering invariant of `steering` held for real WebRTC traffic. Then A clicks
/// "Leave" and B's page drops its tile and WHEP session: nothing is left but B.
fn two_browsers_see_each_other(steering: &str) {
    let gw = gateway(steering).start();
    assert_eq!(gw.mode, steering, "gateway runs in the requested mode");
    let mut s = Scene::new(&gw);
    let room = "duo";
    s.open("A", room, "");
    s.open("B", room, "");
    let a = s.publisher_id("A");
    let b = s.publisher_id("B");
    s.assert_receiving("B", &a);
    s.assert_receiving("A", &b);
    s.assert_watches_exactly("A", &[&b]);
    s.assert_watches_exactly("B", &[&a]);
    s.assert_room(room, &[&a, &b], 2);

    let status = gw.status();
    let (handoffs, misdelivered) = (
        sum_threads(&status, "handoffs"),
        sum_threads(&status, "misdelivered"),
    );
    match steering {
        "ebpf" => {
            s.check(handoffs == 0 && misdelivered == 0, || {
                format!("eBPF mode: handoffs {handoffs} and misdelivered {misdelivered} must be 0: {status}")
            });
            let (by_room, by_flow) = (
                ebpf_counter(&status, "steered_by_room"),
                ebpf_counter(&status, "steered_by_flow"),
            );
            s.check(by_room > 0 && by_flow > 0, || {
                format!("the program steered the browsers' STUN ({by_room}) and media ({by_flow}): {status}")
            });
        }
        _ => {
            let flows = pinned_flows(&s, &[room]);
            s.check(flows >= 4 && handoffs <= flows, || {
                format!("connected mode: at most one handoff per client flow: {handoffs} handoffs, {flows} flows: {status}")
            });
            s.check(misdelivered == 0, || {
                format!("misdelivered {misdelivered} must be 0: {status}")
            });
        }
    }

    s.leave("A", &a, "B", &b, room);
    s.assert_no_page_errors(&["A", "B"]);
}

#[test]
fn two_browsers_see_each_other_ebpf() {
    if !support::require_root() || !chromium_available() {
        return;
    }
    let _serial = serial();
    two_browsers_see_each_other("ebpf");
}

#[test]
fn two_browsers_see_each_other_connected() {
    if !chromium_available() {
        return;
    }
    let _serial = serial();
    two_browsers_see_each_other("connected");
}

/// The first room name `prefix-N` owned by `thread`.
fn room_on_thread(prefix: &str, thread: usize) -> String {
    (0..1000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| RoomId::parse(r).expect("room id").owner(THREADS) == thread)
        .expect("some room hashes to each thread")
}

/// A Chromium recvonly offer (audio opus, video VP8 + RTX), for WHEP requests made
/// without a browser. It never connects; the gateway only has to accept or refuse it.
const WHEP_OFFER: &str = "v=0\r\n\
o=- 8929251528140397598 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:cgdP\r\n\
a=ice-pwd:n6jWtRLgfVmjqmPlxugwCAxn\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 2D:D9:0D:48:E8:39:BF:6E:23:EF:2B:65:61:F7:C6:87:73:7E:50:E7:C7:49:6E:B4:C1:07:3B:5F:A1:E4:31:E1\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:cgdP\r\n\
a=ice-pwd:n6jWtRLgfVmjqmPlxugwCAxn\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 2D:D9:0D:48:E8:39:BF:6E:23:EF:2B:65:61:F7:C6:87:73:7E:50:E7:C7:49:6E:B4:C1:07:3B:5F:A1:E4:31:E1\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// POST an SDP offer; returns status, Location and body.
fn post_sdp(url: &str, token: Option<&str>, sdp: &str) -> (u16, Option<String>, String) {
    let mut req = agent().post(url).header("Content-Type", "application/sdp");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.send(sdp).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let code = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().read_to_string().unwrap_or_default();
    (code, location, body)
}

/// Two rooms owned by different threads, a publisher and a watch-only page in each:
/// every watcher sees exactly its own room's publisher, each room lives on its owner
/// thread, both threads carried media, and nothing was handed off or misdelivered.
#[test]
fn two_rooms_on_different_threads_do_not_leak() {
    if !support::require_root() || !chromium_available() {
        return;
    }
    let _serial = serial();
    let gw = gateway("ebpf").start();
    assert_eq!(gw.mode, "ebpf");
    let rooms = [room_on_thread("left", 0), room_on_thread("right", 1)];
    let before = gw.status();
    let mut s = Scene::new(&gw);
    for (i, room) in rooms.iter().enumerate() {
        s.open(&format!("pub{i}"), room, "");
        s.open(&format!("watch{i}"), room, "&publish=0");
    }
    let pubs = [s.publisher_id("pub0"), s.publisher_id("pub1")];
    for (i, publisher) in pubs.iter().enumerate() {
        s.assert_receiving(&format!("watch{i}"), publisher);
    }
    for i in 0..2 {
        s.assert_watches_exactly(&format!("watch{i}"), &[&pubs[i]]);
        // A publisher alone in its room has nobody to watch.
        s.assert_watches_exactly(&format!("pub{i}"), &[]);
        let listing = s.assert_room(&rooms[i], &[&pubs[i]], 1);
        let other = &pubs[1 - i];
        s.check(!listing.to_string().contains(other.as_str()), || {
            format!(
                "room {} must not list {other} of room {}: {listing}",
                rooms[i],
                rooms[1 - i]
            )
        });
    }

    s.assert_no_page_errors(&["pub0", "watch0", "pub1", "watch1"]);

    let after = gw.status();
    for t in 0..THREADS {
        let (rx0, rx1) = (
            thread_counter(&before, t, "rx_datagrams"),
            thread_counter(&after, t, "rx_datagrams"),
        );
        s.check(rx1 > rx0 + 100, || {
            format!("thread {t} owns a room with live media; rx_datagrams only went {rx0} -> {rx1}: {after}")
        });
    }
    let (handoffs, misdelivered) = (
        sum_threads(&after, "handoffs"),
        sum_threads(&after, "misdelivered"),
    );
    s.check(handoffs == 0 && misdelivered == 0, || {
        format!("eBPF mode: handoffs {handoffs}, misdelivered {misdelivered} must be 0: {after}")
    });

    // Signaling does not leak either: room 0 cannot watch room 1's publisher by ID,
    // while the same offer for its own publisher is accepted.
    let cross = gw.url(&format!("/whep/{}?publisher={}", rooms[0], pubs[1]));
    let (code, _, body) = post_sdp(&cross, None, WHEP_OFFER);
    s.check((400..500).contains(&code), || {
        format!("POST {cross} (a publisher of another room) must be refused with a 4xx, got {code}: {body}")
    });
    let own = gw.url(&format!("/whep/{}?publisher={}", rooms[0], pubs[0]));
    let (code, location, body) = post_sdp(&own, None, WHEP_OFFER);
    s.check(code == 201, || {
        format!("POST {own} with a Chromium offer -> {code}: {body}")
    });
    // Location is a path; tolerate an absolute URL too.
    let location = location.unwrap_or_default();
    let path = location
        .strip_prefix(&format!("http://{}", gw.http))
        .unwrap_or(&location)
        .to_owned();
    let (code, v) = gw.delete(&path);
    s.check(deleted(code), || {
        format!("DELETE {location} -> {code}: {v}")
    });
}

/// The page served from another origin (the test's HTTP server) publishes and watches
/// through `?gateway=`: WHIP/WHEP POSTs with `Content-Type: application/sdp` need the
/// OPTIONS preflight, reading `Location` needs `Access-Control-Expose-Headers`, and the
/// room polls and DELETEs need `Access-Control-Allow-Origin`.
#[test]
fn cross_origin_page_uses_cors() {
    if !chromium_available() {
        return;
    }
    let _serial = serial();
    let gw = gateway("connected").start();
    let mut s = Scene::new(&gw);
    s.cross_origin = true;
    let room = "cors";
    s.open("A", room, "");
    s.open("B", room, "");
    let a = s.publisher_id("A");
    let b = s.publisher_id("B");
    let expected_gateway = format!("http://{}", gw.http);
    for name in ["A", "B"] {
        let r = s.reports.latest(name).expect("report");
        s.check(r["gateway"] == expected_gateway.as_str(), || {
            format!("page {name} must talk to {expected_gateway}: {r}")
        });
    }
    s.assert_receiving("B", &a);
    s.assert_receiving("A", &b);
    s.assert_room(room, &[&a, &b], 2);
    // DELETE is not a simple method: this needs the preflight too.
    s.leave("A", &a, "B", &b, room);
    s.assert_no_page_errors(&["A", "B"]);
}

/// With `--auth-token`, WHIP/WHEP need `Authorization: Bearer <token>`: refused without
/// it or with a wrong one (plain HTTP), and the page with `?token=` publishes and watches,
/// also from another origin. The preflight allows the Authorization header explicitly
/// (a `*` would not cover it).
#[test]
fn bearer_token_required() {
    let _serial = serial();
    let token = "s3cret";
    let gw = gateway("connected").set("--auth-token", token).start();
    let room = "locked";

    for (path, sent) in [
        (format!("/whip/{room}"), None),
        (format!("/whip/{room}"), Some("wrong")),
        (format!("/whep/{room}"), None),
        (format!("/whep/{room}"), Some("wrong")),
    ] {
        let url = gw.url(&path);
        let mut req = agent()
            .post(&url)
            .header("Content-Type", "application/sdp")
            .header("Origin", "http://elsewhere.test");
        if let Some(t) = sent {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req
            .send(WHEP_OFFER)
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let code = resp.status().as_u16();
        let acao = header(&resp, "access-control-allow-origin");
        let body = resp.into_body().read_to_string().unwrap_or_default();
        assert_eq!(
            code, 401,
            "POST {path} with token {sent:?} must be 401: {body}"
        );
        let err: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            err["error"].is_string(),
            "a 401 carries a JSON error: {body}"
        );
        assert_eq!(
            acao.as_deref(),
            Some("*"),
            "a cross-origin page must be able to read the 401 of POST {path}"
        );
    }
    // The right token gets past authentication: a malformed offer is then a 400.
    let (code, _, body) = post_sdp(&gw.url(&format!("/whip/{room}")), Some(token), "v=0\r\n");
    assert_eq!(code, 400, "right token, malformed SDP: {body}");

    // CORS preflight: what a cross-origin page with a token sends before its POST.
    let url = gw.url(&format!("/whip/{room}"));
    let resp = agent()
        .options(&url)
        .header("Origin", "http://elsewhere.test")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .call()
        .unwrap_or_else(|e| panic!("OPTIONS {url}: {e}"));
    let code = resp.status().as_u16();
    let headers = format!("{:?}", resp.headers());
    assert_eq!(code, 204, "OPTIONS preflight: {headers}");
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("*"),
        "preflight allows any origin: {headers}"
    );
    let methods = header(&resp, "access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for m in ["post", "delete"] {
        assert!(
            methods.contains(m) || methods.trim() == "*",
            "preflight allows {m}: {headers}"
        );
    }
    let allowed = header(&resp, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in ["authorization", "content-type"] {
        assert!(
            allowed.contains(h),
            "preflight must list {h} explicitly (a wildcard does not cover Authorization): {headers}"
        );
    }

    if !chromium_available() {
        return;
    }
    // A publishes from the gateway's origin; B watches from another origin, so its
    // WHEP POST, room polls and DELETE carry Authorization through CORS preflights.
    let mut s = Scene::new(&gw);
    s.token = Some(token.to_owned());
    s.open("A", room, &format!("&token={token}"));
    s.cross_origin = true;
    s.open("B", room, &format!("&token={token}&publish=0"));
    let a = s.publisher_id("A");
    s.assert_receiving("B", &a);
    s.assert_watches_exactly("B", &[&a]);
    s.assert_room(room, &[&a], 1);
    s.assert_no_page_errors(&["A", "B"]);
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
