//! WHIP/WHEP PATCH (RFC 9725 §4.3, RFC 8840 `application/trickle-ice-sdpfrag`) through
//! the real gateway:
//! - the HTTP contract: `ETag` on the 201 and on PATCH answers, `If-Match` (412 on a
//!   stale tag, `*` matches), 404 for an unknown resource, 415 for another body type, 400
//!   for a malformed fragment or one naming another room's ICE ufrag, each leaving the
//!   session as it was; trickle answers 204, a restart 200 with new credentials;
//! - an ICE restart seen from the network: real STUN checks from real sockets, in both
//!   steering modes: the old credentials stop working, the new ufrag is steered to the
//!   same thread, and the old address stays pinned until the new path is nominated;
//! - headless Chromium: a viewer's demo page calls `restartIce()` and PATCHes; media keeps
//!   decoding, no DTLS handshake happens again, the old pin is gone and the same thread
//!   owns the session, in both steering modes;
//! - trickle PATCHes from aiortc and GStreamer clients get 204.
//!
//! Browser and client tests need Chromium, aiortc and GStreamer as tests/browser.rs,
//! tests/interop.rs and tests/interop_gst.rs describe (same skip variables).
#[path = "support/browser.rs"]
mod browser_support;
// Only the scene half of the interop helpers is used here.
#[allow(dead_code)]
#[path = "support/client_process.rs"]
mod client_process;
mod support;

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use browser_support::{chromium_available, demo_page_source, Browser, ReportServer};
use client_process::{ClientProcess, Scene as ClientScene, WATCH_SECONDS};
use gateway::room::RoomId;
use serde_json::Value;
use support::{ebpf_counter, eventually, sum_threads, Client, Gateway, StunReply};

const THREADS: usize = 2;
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
/// Upper bound for every wait on a browser.
const WAIT: Duration = Duration::from_secs(60);
const CHROME_WHIP: &str = include_str!("../gateway/src/sdp/testdata/chrome_whip.sdp");

/// Browsers and client processes are heavy; one scene at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn gateway(steering: &str) -> Gateway {
    let gw = Gateway::builder(steering, THREADS)
        .set("--public-ip", "127.0.0.1")
        .start();
    assert_eq!(gw.mode, steering, "gateway runs in the requested mode");
    gw
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// An HTTP answer: status, headers we look at, body.
#[derive(Debug)]
struct Answer {
    code: u16,
    etag: Option<String>,
    content_type: Option<String>,
    location: Option<String>,
    body: String,
}

fn answer(resp: ureq::http::Response<ureq::Body>) -> Answer {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (etag, content_type, location) =
        (header("etag"), header("content-type"), header("location"));
    Answer {
        code: resp.status().as_u16(),
        etag,
        content_type,
        location,
        body: resp.into_body().read_to_string().unwrap_or_default(),
    }
}

fn post_sdp(url: &str, sdp: &str) -> Answer {
    let resp = agent()
        .post(url)
        .header("Content-Type", "application/sdp")
        .send(sdp)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    answer(resp)
}

fn patch(url: &str, content_type: &str, if_match: Option<&str>, body: &str) -> Answer {
    let mut req = agent().patch(url).header("Content-Type", content_type);
    if let Some(m) = if_match {
        req = req.header("If-Match", m);
    }
    let resp = req
        .send(body)
        .unwrap_or_else(|e| panic!("PATCH {url}: {e}"));
    answer(resp)
}

/// The value of the first `a=<name>:` line.
fn sdp_value(sdp: &str, name: &str) -> String {
    let prefix = format!("a={name}:");
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {sdp}"))
        .to_owned()
}

/// A WHIP session created over HTTP (it never completes DTLS: only ICE matters here).
struct Whip {
    resource: String,
    participant: String,
    etag: String,
    ufrag: String,
    pwd: String,
}

fn whip(gw: &Gateway, room: &str) -> Whip {
    let a = post_sdp(&gw.url(&format!("/whip/{room}")), CHROME_WHIP);
    assert_eq!(a.code, 201, "POST /whip/{room}: {a:?}");
    let location = a.location.clone().expect("Location");
    let ufrag = sdp_value(&a.body, "ice-ufrag");
    let etag = a.etag.clone().expect("the 201 carries an ETag");
    assert_eq!(etag, format!("\"{ufrag}\""), "{a:?}");
    Whip {
        resource: gw.url(&location),
        participant: location.rsplit('/').next().unwrap_or_default().to_owned(),
        etag,
        ufrag,
        pwd: sdp_value(&a.body, "ice-pwd"),
    }
}

/// A participant of `room` as `GET /api/rooms/{room}` lists it, with the room's thread.
fn listed(gw: &Gateway, room: &str, participant: &str) -> Option<(Value, u64)> {
    let (code, v) = gw.get(&format!("/api/rooms/{room}"));
    if code != 200 {
        return None;
    }
    let p = v["participants"]
        .as_array()?
        .iter()
        .find(|p| p["participant"] == participant)?
        .clone();
    Some((p, v["thread"].as_u64()?))
}

fn addresses(p: &Value) -> BTreeSet<String> {
    p["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The first room `prefix-N` whose owner thread is `thread`.
fn room_on_thread(prefix: &str, thread: usize) -> String {
    (0..1000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| RoomId::parse(r).expect("room id").owner(THREADS) == thread)
        .expect("some room hashes to each thread")
}

const RESTART_FRAGMENT: &str = "a=ice-ufrag:ysXw\r\n\
    a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
    a=mid:0\r\n\
    a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host generation 0 ufrag ysXw\r\n\
    a=end-of-candidates\r\n";

/// The HTTP contract of PATCH: every refusal leaves the session as it was (same ufrag in
/// the listing, same ETag still accepted), trickle is 204, a restart is 200 with new
/// credentials of the same room, and the participant id keeps naming the session.
#[test]
fn patch_answers_and_refusals() {
    let _serial = serial();
    let gw = gateway("connected");
    let room = room_on_thread("patch", 0);
    let other_room = room_on_thread("other", 0);
    let s = whip(&gw, &room);
    let other = whip(&gw, &other_room);
    let unchanged = |what: &str| {
        let (p, _) = listed(&gw, &room, &s.participant).expect("listed");
        assert_eq!(
            p["ufrag"],
            s.ufrag.as_str(),
            "{what} changed the session: {p}"
        );
    };
    let trickle =
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";

    // Unknown resources: wrong key, unknown participant, another room, a WHEP URL for
    // a WHIP session.
    let key = s.resource.rsplit('/').nth(1).expect("key").to_owned();
    for path in [
        format!("/whip/{room}/wrongkey/{}", s.participant),
        format!("/whip/{room}/{key}/AAAAAAAA"),
        format!("/whip/{other_room}/{key}/{}", s.participant),
        format!("/whep/{room}/{key}/{}", s.participant),
    ] {
        let a = patch(&gw.url(&path), SDPFRAG, Some(s.etag.as_str()), trickle);
        assert_eq!(a.code, 404, "PATCH {path}: {a:?}");
    }
    let a = patch(
        &s.resource,
        "application/sdp",
        Some(s.etag.as_str()),
        trickle,
    );
    assert_eq!(a.code, 415, "{a:?}");

    for (bad, why) in [
        ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", "do not belong"),
        ("a=ice-ufrag:ysXw\r\n", "a=ice-pwd"),
        (
            "a=candidate:1 1 udp high 127.0.0.1 5000 typ host\r\n",
            "priority",
        ),
        ("", "empty"),
    ] {
        let a = patch(&s.resource, SDPFRAG, Some("*"), bad);
        assert_eq!(a.code, 400, "{bad:?}: {a:?}");
        assert!(
            a.body.contains(why),
            "{bad:?}: the error says why: {}",
            a.body
        );
        unchanged("a malformed fragment");
    }

    let a = patch(&s.resource, SDPFRAG, Some("\"stale\""), RESTART_FRAGMENT);
    assert_eq!(a.code, 412, "{a:?}");
    unchanged("a PATCH with a wrong If-Match");

    // A restart that names another room through roomgate's own ufrag (the other room's
    // session), and one that names this very session's ufrag.
    for named in [&other.ufrag, &s.ufrag] {
        let fragment = format!("a=ice-ufrag:{named}\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n");
        let a = patch(&s.resource, SDPFRAG, Some("*"), &fragment);
        assert_eq!(a.code, 400, "fragment naming {named}: {a:?}");
        assert!(a.body.contains("roomgate ICE ufrag"), "{}", a.body);
        unchanged("a fragment naming a server ufrag");
    }

    // Trickle: 204, the ETag stays. The offer's own credentials are trickle too.
    let a = patch(&s.resource, SDPFRAG, Some(s.etag.as_str()), trickle);
    assert_eq!(
        (a.code, a.etag.as_deref()),
        (204, Some(s.etag.as_str())),
        "{a:?}"
    );
    let own = "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=end-of-candidates\r\n";
    let a = patch(&s.resource, SDPFRAG, None, own);
    assert_eq!(a.code, 204, "the offer's credentials are no restart: {a:?}");
    unchanged("trickle");

    // Restart: 200, new credentials of the same room, a new ETag.
    let a = patch(&s.resource, SDPFRAG, Some("*"), RESTART_FRAGMENT);
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.content_type.as_deref(), Some(SDPFRAG), "{a:?}");
    let ufrag = sdp_value(&a.body, "ice-ufrag");
    let pwd = sdp_value(&a.body, "ice-pwd");
    let room_part = RoomId::parse(&room).expect("room").ufrag_part();
    assert!(
        ufrag.len() == room_part.len() + 8 && ufrag.starts_with(&room_part) && ufrag != s.ufrag,
        "new ufrag {ufrag:?} keeps the room part {room_part:?}"
    );
    assert!(pwd.len() >= 22 && pwd != s.pwd, "{a:?}");
    assert!(a.body.contains("a=candidate:") && a.body.contains("a=end-of-candidates"));
    assert!(a.body.starts_with("a=ice-lite\r\n"), "{}", a.body);
    let etag = a.etag.clone().expect("ETag");
    assert_eq!(etag, format!("\"{ufrag}\""));
    let (p, _) = listed(&gw, &room, &s.participant).expect("still listed by its id");
    assert_eq!(p["ufrag"], ufrag.as_str(), "{p}");

    // The old ETag is stale now; the new one matches; the restart's client credentials
    // again are trickle.
    let a = patch(&s.resource, SDPFRAG, Some(s.etag.as_str()), trickle);
    assert_eq!(a.code, 412, "the ETag before the restart: {a:?}");
    let again = "a=ice-ufrag:ysXw\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n";
    let a = patch(&s.resource, SDPFRAG, Some(etag.as_str()), again);
    assert_eq!(
        (a.code, a.etag.as_deref()),
        (204, Some(etag.as_str())),
        "{a:?}"
    );

    // Applied PATCHes are counted; refused ones are not.
    assert_eq!(gw.metric_sum("roomgate_ice_restarts_total"), Some(1.0));
    assert_eq!(gw.metric_sum("roomgate_ice_trickles_total"), Some(3.0));

    // The participant id in the URL still deletes it.
    let (code, v) = gw.delete(
        s.resource
            .strip_prefix(&format!("http://{}", gw.http))
            .expect("resource on the gateway"),
    );
    assert!(
        code == 200 || code == 204,
        "DELETE after a restart: {code} {v}"
    );
    assert!(listed(&gw, &room, &s.participant).is_none());
}

/// An ICE restart seen from the network, with real STUN checks: the session keeps its
/// first address pinned until a check under the new credentials nominates a new one;
/// the old credentials are refused; the new ufrag reaches the same thread.
fn restart_over_stun(steering: &str) {
    let gw = gateway(steering);
    let room = "restart-stun";
    let s = whip(&gw, room);
    let old = Client::bind("127.0.0.1");
    let new = Client::bind("127.0.0.1");
    let reply = old.ice_check_with(gw.udp, &s.ufrag, &s.pwd, &s.pwd);
    assert!(matches!(reply, StunReply::Success { .. }), "{reply:?}");
    let (p, thread) = listed(&gw, room, &s.participant).expect("listed");
    assert_eq!(
        addresses(&p),
        BTreeSet::from([old.addr().to_string()]),
        "{p}"
    );
    assert_eq!(thread as usize, RoomId::parse(room).unwrap().owner(THREADS));
    let before = gw.status();

    let a = patch(&s.resource, SDPFRAG, Some("*"), RESTART_FRAGMENT);
    assert_eq!(a.code, 200, "{a:?}");
    let (ufrag, pwd) = (
        sdp_value(&a.body, "ice-ufrag"),
        sdp_value(&a.body, "ice-pwd"),
    );

    // The old credentials no longer authenticate; the old address stays pinned.
    let reply = old.ice_check_with(gw.udp, &s.ufrag, &s.pwd, &s.pwd);
    assert_eq!(reply, StunReply::Error { code: 401 }, "old credentials");
    let (p, _) = listed(&gw, room, &s.participant).expect("listed");
    assert_eq!(
        addresses(&p),
        BTreeSet::from([old.addr().to_string()]),
        "no nomination yet, so the old pin stays: {p}"
    );
    // The new credentials, from a new address, nominate: the old pin goes.
    let reply = new.ice_check_with(gw.udp, &ufrag, &pwd, &pwd);
    assert!(matches!(reply, StunReply::Success { .. }), "{reply:?}");
    let (p, after_thread) = listed(&gw, room, &s.participant).expect("listed");
    assert_eq!(
        addresses(&p),
        BTreeSet::from([new.addr().to_string()]),
        "{p}"
    );
    assert_eq!(p["selected"], new.addr().to_string().as_str(), "{p}");
    assert_eq!(after_thread, thread, "same thread");
    let after = gw.status();
    let delta = |k: &str| sum_threads(&after, k) - sum_threads(&before, k);
    assert_eq!(delta("unpins"), 1, "the old address was unpinned: {after}");
    assert_eq!(delta("misdelivered"), 0, "{after}");
    if steering == "ebpf" {
        assert_eq!(
            delta("handoffs"),
            0,
            "the kernel steered the new ufrag: {after}"
        );
        assert!(ebpf_counter(&after, "steered_by_room") > ebpf_counter(&before, "steered_by_room"));
    } else {
        assert!(
            delta("handoffs") <= 1,
            "at most the new address's first check: {after}"
        );
    }
}

#[test]
fn restart_over_stun_ebpf() {
    if !support::require_root() {
        return;
    }
    let _serial = serial();
    restart_over_stun("ebpf");
}

#[test]
fn restart_over_stun_connected() {
    let _serial = serial();
    restart_over_stun("connected");
}

// ---- Chromium ------------------------------------------------------------------------

/// A gateway, the report server and the pages of one browser test.
struct Pages<'a> {
    gw: &'a Gateway,
    reports: ReportServer,
    browsers: Vec<Browser>,
}

impl Pages<'_> {
    fn open(&mut self, name: &str, room: &str, extra: &str) {
        let url = self.gw.url(&format!(
            "/?room={room}&autostart=1&name={name}&report={}{extra}",
            self.reports.report_url()
        ));
        self.browsers.push(Browser::launch(name, &url));
    }

    fn fail(&self, msg: &str) -> ! {
        eprintln!("==== FAILED: {msg}");
        eprintln!("==== page reports:\n{}", self.reports.dump());
        for b in &self.browsers {
            eprintln!("==== browser {}:\n{}", b.name, b.log_tail(40));
        }
        let log = self.gw.stderr();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(120);
        eprintln!("==== gateway stderr:\n{}", lines[start..].join("\n"));
        panic!("{msg}");
    }

    fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let mut found = None;
        eventually(WAIT, || {
            found = f();
            found.is_some() || self.browsers.iter().any(|b| !b.running())
        });
        found.unwrap_or_else(|| {
            self.fail(&format!("timed out or a browser died waiting until {what}"))
        })
    }

    /// `name`'s only subscription in its latest report.
    fn subscription(&self, name: &str) -> Option<Value> {
        let r = self.reports.latest(name)?;
        r["subscriptions"].as_array()?.first().cloned()
    }

    /// `(framesDecoded, report time)` of `name`'s subscription.
    fn frames(&self, name: &str) -> Option<(u64, u64)> {
        let sub = self.subscription(name)?;
        let time = self.reports.latest(name)?["time"].as_u64()?;
        Some((sub["video"]["framesDecoded"].as_u64()?, time))
    }

    /// `name` decodes more frames than `floor`, in a report after `after`.
    fn decoding_past(&self, name: &str, floor: u64, after: u64) -> (u64, u64) {
        self.wait(&format!("{name} decodes past {floor} frames"), || {
            self.frames(name).filter(|&(f, t)| f > floor && t > after)
        })
    }
}

/// `roomgate_dtls_handshakes_total{outcome="completed"}` summed over threads.
fn completed_handshakes(gw: &Gateway) -> u64 {
    let (_, v) = gw.get("/metrics");
    let text = v.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|l| {
            l.starts_with("roomgate_dtls_handshakes_total{") && l.contains("outcome=\"completed\"")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A Chromium viewer restarts ICE through the demo page (restartIce(), PATCH, the 200's
/// credentials munged into the remote description): it keeps decoding, no DTLS handshake
/// runs again, its old address is unpinned once the new path is nominated, and its
/// session stays on the room's thread.
fn browser_restart(steering: &str) {
    let gw = gateway(steering);
    let mut pages = Pages {
        gw: &gw,
        reports: ReportServer::start(Some(demo_page_source())),
        browsers: Vec::new(),
    };
    let room = "restart";
    pages.open("pub", room, "");
    pages.open("viewer", room, "&publish=0");
    let (frames, at) = pages.decoding_past("viewer", 0, 0);
    let viewer = pages.wait("the viewer's WHEP participant id", || {
        pages.subscription("viewer")?["participant"]
            .as_str()
            .map(str::to_owned)
    });
    let (before, thread) = pages.wait("the viewer is listed with its address", || {
        listed(&gw, room, &viewer)
            .filter(|(p, _)| !addresses(p).is_empty() && p["dtls_state"] == "connected")
    });
    let owner = RoomId::parse(room).unwrap().owner(THREADS) as u64;
    pages.check(thread == owner, || {
        format!("room on thread {thread}, owner {owner}")
    });
    let old_addresses = addresses(&before);
    let handshakes = completed_handshakes(&gw);
    let status_before = gw.status();

    pages.reports.command("viewer", "restart-ice");
    pages.wait("the viewer's page completed an ICE restart", || {
        let sub = pages.subscription("viewer")?;
        (sub["ice_restarts"].as_u64()? >= 1).then_some(())
    });
    let (after, after_thread) = pages.wait(
        "the viewer's session has new credentials and only new addresses",
        || {
            listed(&gw, room, &viewer).filter(|(p, _)| {
                let now = addresses(p);
                p["ufrag"] != before["ufrag"]
                    && !now.is_empty()
                    && now.is_disjoint(&old_addresses)
                    && p["selected"].as_str().is_some_and(|s| now.contains(s))
            })
        },
    );
    eprintln!("viewer before: {before}\nviewer after: {after}");
    pages.check(after_thread == thread, || {
        format!("the session moved from thread {thread} to {after_thread}")
    });
    pages.check(after["dtls_state"] == "connected", || {
        format!("DTLS is still connected: {after}")
    });
    let room_part = RoomId::parse(room).unwrap().ufrag_part();
    pages.check(
        after["ufrag"]
            .as_str()
            .is_some_and(|u| u.starts_with(&room_part)),
        || format!("the new ufrag keeps the room part {room_part}: {after}"),
    );
    // Media keeps flowing over the new path: two more reports with more frames.
    let (now, t) = pages.decoding_past("viewer", frames, at);
    let (later, _) = pages.decoding_past("viewer", now, t);
    eprintln!("viewer framesDecoded {frames} -> {now} -> {later} across the restart");
    let now_handshakes = completed_handshakes(&gw);
    pages.check(now_handshakes == handshakes, || {
        format!("a DTLS handshake ran again: completed {handshakes} -> {now_handshakes}")
    });
    let r = pages.reports.latest("viewer").unwrap_or(Value::Null);
    let errors = r["errors"].as_array().cloned().unwrap_or_default();
    pages.check(errors.is_empty(), || {
        format!("viewer page errors: {errors:?}")
    });
    let status = gw.status();
    let delta = |k: &str| sum_threads(&status, k) - sum_threads(&status_before, k);
    pages.check(delta("unpins") >= old_addresses.len() as u64, || {
        format!("the old pins were released: {status}")
    });
    pages.check(sum_threads(&status, "misdelivered") == 0, || {
        format!("misdelivered: {status}")
    });
    if steering == "ebpf" {
        pages.check(sum_threads(&status, "handoffs") == 0, || {
            format!("eBPF mode hands nothing off: {status}")
        });
    }
}

#[test]
fn browser_viewer_restarts_ice_ebpf() {
    if !support::require_root() || !chromium_available() {
        return;
    }
    let _serial = serial();
    browser_restart("ebpf");
}

#[test]
fn browser_viewer_restarts_ice_connected() {
    if !chromium_available() {
        return;
    }
    let _serial = serial();
    browser_restart("connected");
}

// ---- aiortc and GStreamer trickle ----------------------------------------------------

const AIORTC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/aiortc_client.py"
);
const GST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/gst_client.py"
);
/// Debian's interpreter, the one `python3-gi` installs into.
const GST_PYTHON: &str = "/usr/bin/python3";

/// Whether `python -c probe` succeeds; a missing stack fails unless skipping is asked for.
fn stack_available(python: &str, probe: &str, what: &str) -> bool {
    let out = Command::new(python).args(["-c", probe]).output();
    if out.as_ref().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("ROOMGATE_SKIP_INTEROP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no {what} (ROOMGATE_SKIP_INTEROP=1)");
        return false;
    }
    panic!("this test needs {what} (see tests/interop.rs and tests/interop_gst.rs), or set ROOMGATE_SKIP_INTEROP=1: {out:?}");
}

/// Publisher and subscriber of `python script` PATCH a trickle fragment once connected
/// (If-Match: their 201's ETag) and get 204 with the same ETag; media still flows.
fn trickle_from(python: &str, script: &str, steering: &str) {
    let mut s = ClientScene::new(steering, &[]);
    let room = "trickle";
    let (whip, whep) = (
        s.gw.url(&format!("/whip/{room}")),
        s.gw.url(&format!("/whep/{room}")),
    );
    let publisher = s.add(ClientProcess::spawn(
        "publisher".into(),
        python,
        script,
        &[
            "publish",
            "--url",
            whip.as_str(),
            "--seconds",
            "60",
            "--trickle",
        ],
    ));
    s.wait_connected(publisher);
    let watch = WATCH_SECONDS.to_string();
    let subscriber = s.add(ClientProcess::spawn(
        "subscriber".into(),
        python,
        script,
        &[
            "subscribe",
            "--url",
            whep.as_str(),
            "--seconds",
            watch.as_str(),
            "--trickle",
        ],
    ));
    s.wait_connected(subscriber);
    for i in [publisher, subscriber] {
        let mut event = None;
        eventually(Duration::from_secs(10), || {
            event = s.clients[i].event("trickle");
            event.is_some()
        });
        let name = s.clients[i].name.clone();
        let event = event.unwrap_or(Value::Null);
        s.check(event["status"] == 204, || {
            format!("{name}'s trickle PATCH must get 204: {event}")
        });
        s.check(
            event["etag"].is_string() && event["etag"] == event["sent_etag"],
            || format!("{name}: trickle keeps the ETag: {event}"),
        );
    }
    s.assert_watched(subscriber);
    s.stop_and_check_empty(&[publisher]);
}

#[test]
fn aiortc_trickle_gets_204() {
    let _serial = serial();
    if !stack_available("python3", "import aiortc, av", "python3 with aiortc") {
        return;
    }
    trickle_from("python3", AIORTC, "connected");
}

#[test]
fn gstreamer_trickle_gets_204() {
    let _serial = serial();
    let probe = "import gi; gi.require_version('GstWebRTC', '1.0'); gi.require_version('Nice', '0.1'); from gi.repository import GstWebRTC, Nice";
    if !stack_available(GST_PYTHON, probe, "GStreamer webrtcbin with PyGObject") {
        return;
    }
    trickle_from(GST_PYTHON, GST, "connected");
}
