//! Interoperability with a second independent WebRTC stack: GStreamer's webrtcbin (ICE in
//! libnice, DTLS through OpenSSL, SRTP through libsrtp) publishes over WHIP and watches
//! over WHEP through the real gateway, using `tests/interop/gst_client.py`, alone and
//! mixed with the aiortc client of tests/interop.rs. Decoded frames on the subscribers
//! prove ICE-lite, DTLS-SRTP and SFU forwarding work with a GStreamer-based client; the
//! gateway's counters prove the steering invariants held meanwhile.
//!
//! Needs Debian's GStreamer and PyGObject for `/usr/bin/python3` (`apt-get install
//! gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice python3-gi
//! gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1`), and for the mixed tests `python3` with
//! aiortc; `cargo xtask test` sets both up. Without them these tests fail, unless `ROOMGATE_SKIP_INTEROP=1`. They run
//! one at a time, every wait is bounded, client processes are killed on drop, and
//! failures print the clients' output and the gateway's log. `ROOMGATE_INTEROP_DEBUG=1`
//! passes `--debug` to the clients (webrtcbin/libnice or aioice/aiortc logs and both SDPs
//! on their stderr).
//!
//! webrtcbin's offers are sent as GStreamer writes them: max-bundle gives every m-line but
//! the first port 0 and `a=bundle-only` (RFC 8843 §6), which roomgate must accept (these
//! tests failed before it did), and its answers carry a session-level fingerprint, without
//! which webrtcbin refuses an answer with a rejected m-line.
//!
//! One thing the GStreamer client does that a browser does not need: libnice never
//! gathers a loopback candidate and pins each host candidate's socket to its interface, so
//! it cannot reach the gateway's 127.0.0.1 from another address; the client gathers on
//! 127.0.0.1 when the URL's host is a loopback address (a test-environment detail: real
//! deployments advertise a routable address).
#[path = "support/client_process.rs"]
mod client_process;
mod support;

use std::{
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use client_process::ClientProcess as Client;
use serde_json::Value;
use support::{sum_threads, Gateway};

const GST_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/gst_client.py"
);
const AIORTC_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/aiortc_client.py"
);
/// Debian's interpreter, the one `python3-gi` installs into (a pyenv `python3` lacks it).
const GST_PYTHON: &str = "/usr/bin/python3";
const APT_PACKAGES: &str = "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
    gstreamer1.0-nice python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1";
const PIP: &str = "pip install aiortc==1.16.0";
/// What the GStreamer client needs, checked before any test starts a gateway.
const GST_PROBE: &str = r#"
import gi
for ns in ("Gst", "GstSdp", "GstWebRTC"):
    gi.require_version(ns, "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import Gst, GstSdp, GstWebRTC, Nice
Gst.init(None)
need = ("webrtcbin nicesrc dtlssrtpenc srtpenc videotestsrc audiotestsrc vp8enc vp8dec "
        "rtpvp8pay rtpvp8depay opusenc opusdec rtpopuspay rtpopusdepay audioconvert "
        "audioresample queue fakesink").split()
missing = [e for e in need if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + " ".join(missing))
print(Gst.version_string())
"#;
/// Extra client flags. Empty: webrtcbin's offers go to roomgate exactly as GStreamer
/// writes them (max-bundle with `a=bundle-only` m-lines); `--no-bundle-only` exists only
/// to reproduce the pre-fix behaviour by hand.
const GST_FLAGS: &[&str] = &[];
const THREADS: usize = 2;
/// Bound for the client's start-up (Python imports), ICE, DTLS and the HTTP exchange.
const CONNECT: Duration = Duration::from_secs(30);
/// How long the subscriber watches; at 15 fps that is ~120 frames once video flows.
const WATCH_SECONDS: u64 = 8;
/// Publishers stop on their own after this, should a test never get to stop them.
const PUBLISH_LIMIT_SECONDS: u64 = 60;

/// The machine has two cores; one interop scene at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The two client implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    Gst,
    Aiortc,
}

impl Stack {
    fn python(self) -> &'static str {
        match self {
            Stack::Gst => GST_PYTHON,
            Stack::Aiortc => "python3",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Stack::Gst => GST_SCRIPT,
            Stack::Aiortc => AIORTC_SCRIPT,
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Stack::Gst => GST_FLAGS,
            Stack::Aiortc => &[],
        }
    }

    /// Whether the stack is usable; a missing one fails the test unless skipping is asked for.
    fn available(self) -> bool {
        let (probe, install) = match self {
            Stack::Gst => (
                Command::new(GST_PYTHON).args(["-c", GST_PROBE]).output(),
                format!("apt-get install -y --no-install-recommends {APT_PACKAGES}"),
            ),
            Stack::Aiortc => (
                Command::new("python3")
                    .args(["-c", "import aiortc, av; print(aiortc.__version__)"])
                    .output(),
                PIP.to_owned(),
            ),
        };
        let problem = match probe {
            Ok(out) if out.status.success() => return true,
            // A traceback's last line says what is missing.
            Ok(out) => String::from_utf8_lossy(&out.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("probe failed")
                .trim()
                .to_owned(),
            Err(e) => format!("cannot run {}: {e}", self.python()),
        };
        let what = match self {
            Stack::Gst => "GStreamer webrtcbin with PyGObject for /usr/bin/python3",
            Stack::Aiortc => "python3 with aiortc",
        };
        if std::env::var("ROOMGATE_SKIP_INTEROP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no {what} (ROOMGATE_SKIP_INTEROP=1): {problem}");
            return false;
        }
        panic!(
            "this interop test needs {what} ({problem}); install it with `{install}` \
             (`cargo xtask test` does) or set ROOMGATE_SKIP_INTEROP=1"
        );
    }
}

/// Every stack in `stacks` is there (or skipping was asked for and one is missing).
fn available(stacks: &[Stack]) -> bool {
    stacks.iter().all(|s| s.available())
}

/// Run `stack`'s client: `<script> <mode> --url <url> <stack flags…> <extra…>`.
fn client(stack: Stack, name: &str, mode: &str, url: &str, extra: &[&str]) -> Client {
    let args = [&[mode, "--url", url], stack.flags(), extra].concat();
    let name = format!("{name} ({stack:?})");
    Client::spawn(name, stack.python(), stack.script(), &args)
}

fn publish(stack: Stack, name: &str, gw: &Gateway, room: &str) -> Client {
    let limit = PUBLISH_LIMIT_SECONDS.to_string();
    let url = gw.url(&format!("/whip/{room}"));
    client(stack, name, "publish", &url, &["--seconds", &limit])
}

fn subscribe(stack: Stack, name: &str, gw: &Gateway, path: &str) -> Client {
    let watch = WATCH_SECONDS.to_string();
    client(
        stack,
        name,
        "subscribe",
        &gw.url(path),
        &["--seconds", &watch],
    )
}

/// A gateway and the clients of one test; failures print everything.
struct Scene {
    gw: Gateway,
    clients: Vec<Client>,
}

impl Scene {
    fn new(steering: &str) -> Scene {
        let gw = Gateway::builder(steering, THREADS)
            .set("--public-ip", "127.0.0.1")
            .start();
        assert_eq!(gw.mode, steering, "gateway runs in the requested mode");
        Scene {
            gw,
            clients: Vec::new(),
        }
    }

    /// Add a client; returns its index.
    fn add(&mut self, client: Client) -> usize {
        self.clients.push(client);
        self.clients.len() - 1
    }

    fn fail(&mut self, msg: &str) -> ! {
        eprintln!("==== FAILED: {msg}");
        for c in &mut self.clients {
            eprintln!("{}", c.describe());
        }
        let log = self.gw.stderr();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(150);
        eprintln!(
            "==== gateway stderr (last {} of {} lines):\n{}",
            lines.len() - start,
            lines.len(),
            lines[start..].join("\n")
        );
        panic!("{msg}");
    }

    fn check(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let msg = msg();
            self.fail(&msg);
        }
    }

    /// Client `i` reports `connected` (ICE and DTLS up); fails at once if it exits first.
    fn wait_connected(&mut self, i: usize) -> String {
        let deadline = Instant::now() + CONNECT;
        loop {
            if let Some(e) = self.clients[i].event("connected") {
                return e["location"].as_str().unwrap_or_default().to_owned();
            }
            if self.clients[i].exited().is_some() {
                let name = self.clients[i].name.clone();
                self.fail(&format!("{name} exited before it connected"));
            }
            if Instant::now() > deadline {
                let name = self.clients[i].name.clone();
                self.fail(&format!("{name} did not connect within {CONNECT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publisher `i` has connected with a WHIP Location in `room`; returns its participant.
    fn wait_published(&mut self, i: usize, room: &str) -> String {
        let location = self.wait_connected(i);
        let prefix = self.gw.url(&format!("/whip/{room}/"));
        self.check(location.starts_with(&prefix), || {
            format!("WHIP Location {location:?} is not under {prefix}")
        });
        // `/whip/{room}/{key}/{participant}`: the participant id is the last segment.
        location.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// Subscriber `i` has run to completion: its video kept flowing and it got audio.
    fn assert_watched(&mut self, i: usize) {
        let timeout = Duration::from_secs(WATCH_SECONDS) + CONNECT;
        let got = self.clients[i].wait_exit(timeout);
        let name = self.clients[i].name.clone();
        self.check(got == Some(0), || {
            format!("{name}: expected exit code 0 within {timeout:?}, got {got:?}")
        });
        let stats = self.clients[i].stats();
        let count = |s: &Value, k: &str| s[k].as_u64().unwrap_or(0);
        let video: Vec<u64> = stats.iter().map(|s| count(s, "video_frames")).collect();
        let last = stats.last().cloned().unwrap_or(Value::Null);
        self.check(count(&last, "video_frames") >= 30, || {
            format!("{name} decoded too few video frames: {video:?}")
        });
        // Still flowing at the end, not a burst that stalled: each of the last three
        // one-second reports has more frames than the one before.
        let tail = &video[video.len().saturating_sub(4)..];
        self.check(
            tail.len() == 4 && tail.windows(2).all(|w| w[1] > w[0]),
            || format!("{name}'s video stalled; frames per report: {video:?}"),
        );
        self.check(count(&last, "audio_frames") > 0, || {
            format!("{name} received no audio: {last}")
        });
        self.check(last["width"] == 320 && last["height"] == 240, || {
            format!("{name} decoded the wrong picture size: {last}")
        });
    }

    /// Sum of `threads[].media.<key>` in `/api/status`.
    fn media(&mut self, key: &str) -> u64 {
        let status = self.gw.status();
        status["threads"]
            .as_array()
            .expect("threads in /api/status")
            .iter()
            .map(|t| t["media"][key].as_u64().unwrap_or(0))
            .sum()
    }

    /// Media was forwarded and every client completed its DTLS handshake; in eBPF mode the
    /// kernel steered every datagram to its owner.
    fn check_counters(&mut self, steering: &str) {
        let forwarded = self.media("rtp_forwarded");
        self.check(forwarded > 0, || "media.rtp_forwarded is 0".to_owned());
        let completed = self.media("dtls_completed");
        let clients = self.clients.len() as u64;
        self.check(completed == clients, || {
            format!("media.dtls_completed is {completed}, expected {clients} (one per client)")
        });
        if steering == "ebpf" {
            let status = self.gw.status();
            for key in ["handoffs", "misdelivered"] {
                let n = sum_threads(&status, key);
                self.check(n == 0, || {
                    format!("{key} = {n}: the kernel did not steer every datagram to its owner")
                });
            }
        }
    }

    /// The publishers stop on SIGTERM, DELETE their resources, and nothing is left behind.
    fn stop_and_check_empty(&mut self, publishers: &[usize]) {
        for &p in publishers {
            let got = self.clients[p].terminate(Duration::from_secs(10));
            let name = self.clients[p].name.clone();
            self.check(got == Some(0), || {
                format!("{name} did not exit cleanly on SIGTERM: {got:?}")
            });
        }
        let mut sessions = u64::MAX;
        let gone = support::eventually(Duration::from_secs(5), || {
            sessions = sum_threads(&self.gw.status(), "sessions");
            sessions == 0
        });
        self.check(gone, || {
            format!("{sessions} sessions left after every client DELETEd its resource")
        });
    }
}

/// A GStreamer publisher and two GStreamer subscribers in one room through the gateway:
/// one binds to the room's publisher implicitly, one names it.
fn gst_publisher_to_gst_subscribers(steering: &str) {
    let mut s = Scene::new(steering);
    let publisher = s.add(publish(Stack::Gst, "publisher", &s.gw, "gst"));
    let participant = s.wait_published(publisher, "gst");
    let implicit = s.add(subscribe(Stack::Gst, "subscriber", &s.gw, "/whep/gst"));
    let named = s.add(subscribe(
        Stack::Gst,
        "subscriber-named",
        &s.gw,
        &format!("/whep/gst?publisher={participant}"),
    ));
    s.wait_connected(implicit);
    s.wait_connected(named);
    s.assert_watched(implicit);
    s.assert_watched(named);
    s.check_counters(steering);
    s.stop_and_check_empty(&[publisher]);
}

#[test]
fn gstreamer_publisher_to_gstreamer_subscriber_ebpf() {
    if !support::require_root() {
        return;
    }
    let _serial = serial();
    if !available(&[Stack::Gst]) {
        return;
    }
    gst_publisher_to_gst_subscribers("ebpf");
}

#[test]
fn gstreamer_publisher_to_gstreamer_subscriber_connected() {
    let _serial = serial();
    if !available(&[Stack::Gst]) {
        return;
    }
    gst_publisher_to_gst_subscribers("connected");
}

/// A `pub_stack` publisher and a `sub_stack` subscriber, one GStreamer and one aiortc, in
/// one room.
fn mixed(pub_stack: Stack, sub_stack: Stack) {
    let _serial = serial();
    if !available(&[Stack::Gst, Stack::Aiortc]) {
        return;
    }
    let mut s = Scene::new("connected");
    let publisher = s.add(publish(pub_stack, "publisher", &s.gw, "mixed"));
    s.wait_published(publisher, "mixed");
    let subscriber = s.add(subscribe(sub_stack, "subscriber", &s.gw, "/whep/mixed"));
    s.wait_connected(subscriber);
    s.assert_watched(subscriber);
    s.check_counters("connected");
    s.stop_and_check_empty(&[publisher]);
}

/// Stacks mixed: webrtcbin's VP8/Opus decoded by aiortc.
#[test]
fn gstreamer_publisher_to_aiortc_subscriber() {
    mixed(Stack::Gst, Stack::Aiortc);
}

/// Stacks mixed the other way: aiortc's VP8/Opus (its own payload types and SSRCs,
/// rewritten by the gateway to what the subscriber negotiated) decoded by webrtcbin.
#[test]
fn aiortc_publisher_to_gstreamer_subscriber() {
    mixed(Stack::Aiortc, Stack::Gst);
}
