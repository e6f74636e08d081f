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
//!
//! webrtcbin 1.22 also publishes simulcast (`gst_client.py --simulcast`, see the last
//! section): three layers with RIDs, watched by subscribers pinned to different layers.
#[path = "support/client_process.rs"]
mod client_process;
mod support;

use std::{
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use client_process::{ClientProcess as Client, Scene, WATCH_SECONDS};
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
for ns in ("Gst", "GstRtp", "GstSdp", "GstWebRTC"):
    gi.require_version(ns, "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import Gst, GstRtp, GstSdp, GstWebRTC, Nice
Gst.init(None)
need = ("webrtcbin nicesrc dtlssrtpenc srtpenc videotestsrc audiotestsrc vp8enc vp8dec "
        "rtpvp8pay rtpvp8depay opusenc opusdec rtpopuspay rtpopusdepay audioconvert "
        "audioresample queue fakesink tee videoscale videoconvert capsfilter rtpfunnel "
        "rtphdrextstreamid").split()
missing = [e for e in need if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + " ".join(missing))
print(Gst.version_string())
"#;
/// Extra client flags. Empty: webrtcbin's offers go to roomgate exactly as GStreamer
/// writes them (max-bundle with `a=bundle-only` m-lines); `--no-bundle-only` exists only
/// to reproduce the pre-fix behaviour by hand.
const GST_FLAGS: &[&str] = &[];
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

/// What only these tests check, on the shared [`Scene`].
impl Scene {
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
}

/// A GStreamer publisher and two GStreamer subscribers in one room through the gateway:
/// one binds to the room's publisher implicitly, one names it.
fn gst_publisher_to_gst_subscribers(steering: &str) {
    let mut s = Scene::new(steering, &[]);
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
    let mut s = Scene::new("connected", &[]);
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

// ---------------------------------------------------------------------------------------
// Simulcast from webrtcbin: GStreamer 1.22 has no sendEncodings, so gst_client.py
// `--simulcast` gives each of three layers its own encoder and payloader (own SSRC) with
// an rtphdrextstreamid extension naming its RID, merges them with rtpfunnel onto
// webrtcbin's video pad, and puts `rid-*` and `a-simulcast` fields in that pad's caps,
// from which webrtcbin writes `a=rid` and `a=simulcast:send` into the offer.
// ---------------------------------------------------------------------------------------

const SIMULCAST_ROOM: &str = "gst-simulcast";
/// The layers `gst_client.py --simulcast` encodes (its SIMULCAST_LAYERS), by the name a
/// viewer asks for: what each pinned subscriber must decode.
const LOW_SIZE: (u64, u64) = (160, 120);
const HIGH_SIZE: (u64, u64) = (640, 480);
/// From both subscribers connecting to the room listing showing them on their layers.
const LAYER_SETTLE: Duration = Duration::from_secs(10);

/// Sum over every sample of `name` in `/metrics`.
fn metric(gw: &Gateway, name: &str) -> Option<u64> {
    gw.metric_sum(name).map(|v| v as u64)
}

impl Scene {
    /// Subscriber `i` ran to completion decoding `size` all along its last seconds, with
    /// video still flowing at the end and audio.
    fn assert_watched_size(&mut self, i: usize, size: (u64, u64)) {
        let timeout = Duration::from_secs(WATCH_SECONDS) + client_process::CONNECT;
        self.expect_exit(i, timeout, 0);
        let name = self.clients[i].name.clone();
        let stats = self.clients[i].stats();
        let count = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
        let video: Vec<u64> = stats.iter().map(|s| count(s, "video_frames")).collect();
        let sizes: Vec<(u64, u64)> = stats
            .iter()
            .map(|s| (count(s, "width"), count(s, "height")))
            .collect();
        let last = stats.last().cloned().unwrap_or(serde_json::Value::Null);
        self.check(count(&last, "video_frames") >= 30, || {
            format!("{name} decoded too few video frames: {video:?}")
        });
        let tail = &video[video.len().saturating_sub(4)..];
        self.check(
            tail.len() == 4 && tail.windows(2).all(|w| w[1] > w[0]),
            || format!("{name}'s video stalled; frames per report: {video:?}"),
        );
        self.check(count(&last, "audio_frames") > 0, || {
            format!("{name} received no audio: {last}")
        });
        // A pinned layer never changes: the last reports all show its size.
        let tail_sizes = &sizes[sizes.len().saturating_sub(4)..];
        self.check(tail_sizes.iter().all(|&s| s == size), || {
            format!("{name} should decode {size:?} (its pinned layer); sizes per report: {sizes:?}")
        });
    }

    /// Within [`LAYER_SETTLE`] the listing shows subscriber `participant` on `layer`,
    /// which it asked for.
    fn wait_listed_layer(&mut self, room: &str, who: &str, participant: &str, layer: &str) {
        let deadline = Instant::now() + LAYER_SETTLE;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.gw.listed_layer(room, participant);
            if last.as_ref().is_some_and(|(l, r)| l == layer && r == layer) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.fail(&format!(
            "GET /api/rooms/{room}: {who} ({participant}) should be on video[0].layer {layer:?}, \
             requested {layer:?}; last seen (layer, requested) {last:?}"
        ));
    }
}

/// A GStreamer simulcast publisher and two subscribers pinned to different layers, one
/// webrtcbin (`?layer=low`) and one aiortc (`?layer=high`): each decodes its layer's
/// size, the listing and the metrics agree, and no packet named an unknown RID.
fn gst_simulcast_to_pinned_subscribers(steering: &str) {
    let mut s = Scene::new(steering, &[]);
    let limit = PUBLISH_LIMIT_SECONDS.to_string();
    let url = s.gw.url(&format!("/whip/{SIMULCAST_ROOM}"));
    let publisher = s.add(client(
        Stack::Gst,
        "publisher",
        "publish",
        &url,
        &["--seconds", &limit, "--simulcast"],
    ));
    s.wait_published(publisher, SIMULCAST_ROOM);
    let low = s.add(subscribe(
        Stack::Gst,
        "subscriber-low",
        &s.gw,
        &format!("/whep/{SIMULCAST_ROOM}?layer=low"),
    ));
    let high = s.add(subscribe(
        Stack::Aiortc,
        "subscriber-high",
        &s.gw,
        &format!("/whep/{SIMULCAST_ROOM}?layer=high"),
    ));
    let participant = |location: String| location.rsplit('/').next().unwrap_or_default().to_owned();
    let low_id = participant(s.wait_connected(low));
    let high_id = participant(s.wait_connected(high));
    s.wait_listed_layer(SIMULCAST_ROOM, "subscriber-low", &low_id, "low");
    s.wait_listed_layer(SIMULCAST_ROOM, "subscriber-high", &high_id, "high");
    s.assert_watched_size(low, LOW_SIZE);
    s.assert_watched_size(high, HIGH_SIZE);
    s.check_counters(steering);
    // Every layer bound by its RID: no RID or SSRC the gateway could not place, no
    // extension block it refused.
    for name in [
        "roomgate_rtp_unknown_rid_total",
        "roomgate_rtp_unknown_ssrc_total",
        "roomgate_rtp_bad_extension_total",
    ] {
        let n = metric(&s.gw, name);
        s.check(n == Some(0), || format!("{name} is {n:?}, expected 0"));
    }
    let forwarded = metric(&s.gw, "roomgate_rtp_packets_forwarded_total");
    s.check(forwarded.is_some_and(|n| n > 0), || {
        format!("roomgate_rtp_packets_forwarded_total is {forwarded:?}")
    });
    s.stop_and_check_empty(&[publisher]);
}

#[test]
fn gstreamer_simulcast_to_pinned_subscribers_ebpf() {
    if !support::require_root() {
        return;
    }
    let _serial = serial();
    if !available(&[Stack::Gst, Stack::Aiortc]) {
        return;
    }
    gst_simulcast_to_pinned_subscribers("ebpf");
}

#[test]
fn gstreamer_simulcast_to_pinned_subscribers_connected() {
    let _serial = serial();
    if !available(&[Stack::Gst, Stack::Aiortc]) {
        return;
    }
    gst_simulcast_to_pinned_subscribers("connected");
}
