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
