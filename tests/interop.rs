//! Interoperability with an independent WebRTC stack: aiortc (Python; its own ICE in
//! aioice, DTLS through OpenSSL, SRTP through libsrtp) publishes over WHIP and watches
//! over WHEP through the real gateway, using `tests/interop/aiortc_client.py`. Decoded
//! frames on the aiortc subscriber prove ICE-lite, DTLS-SRTP and SFU forwarding work
//! with a client that shares no code with roomgate or with Chromium; the gateway's
//! counters prove the steering invariants held meanwhile.
//!
//! Needs `python3` with aiortc (`pip install aiortc==1.16.0`; `cargo xtask test` sets it
//! up). Without it these tests fail, unless `ROOMGATE_SKIP_INTEROP=1`. They run one at a
//! time, every wait is bounded, client processes are killed on drop, and failures print
//! the clients' output and the gateway's log. `ROOMGATE_INTEROP_DEBUG=1` passes
//! `--debug` to the clients (aioice/aiortc logs and both SDPs on their stderr).
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

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/aiortc_client.py"
);
const PIP: &str = "pip install aiortc==1.16.0";
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

/// Whether aiortc can be imported; a missing stack fails the test unless skipping is asked for.
fn aiortc_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import aiortc, av; print(aiortc.__version__)"])
        .output();
    let problem = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    if std::env::var("ROOMGATE_SKIP_INTEROP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: aiortc is not available (ROOMGATE_SKIP_INTEROP=1): {problem}");
        return false;
    }
    panic!(
        "the interop tests need python3 with aiortc ({problem}); install it with `{PIP}` \
         (`cargo xtask test` does) or set ROOMGATE_SKIP_INTEROP=1"
    );
}

/// Run `aiortc_client.py <mode> --url <url> <extra…>`.
fn client(name: &str, mode: &str, url: &str, extra: &[&str]) -> Client {
    let args = [&[mode, "--url", url], extra].concat();
    Client::spawn(name.to_owned(), "python3", SCRIPT, &args)
}

fn publish(name: &str, gw: &Gateway, room: &str, token: Option<&str>) -> Client {
    let limit = PUBLISH_LIMIT_SECONDS.to_string();
    let mut extra = vec!["--seconds", &limit];
    extra.extend(token.map(|t| ["--token", t]).into_iter().flatten());
    client(name, "publish", &gw.url(&format!("/whip/{room}")), &extra)
}

fn subscribe(name: &str, gw: &Gateway, path: &str, token: Option<&str>) -> Client {
    let watch = WATCH_SECONDS.to_string();
    let mut extra = vec!["--seconds", &watch];
    extra.extend(token.map(|t| ["--token", t]).into_iter().flatten());
    client(name, "subscribe", &gw.url(path), &extra)
}

/// A gateway and the aiortc clients of one test; failures print everything.
struct Scene {
    gw: Gateway,
    clients: Vec<Client>,
}

impl Scene {
    fn new(steering: &str, extra: &[(&str, &str)]) -> Scene {
        let mut b = Gateway::builder(steering, THREADS).set("--public-ip", "127.0.0.1");
        for (flag, value) in extra {
            b = b.set(flag, *value);
        }
        let gw = b.start();
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

    /// Client `i` ends on its own within `timeout` with `code`.
    fn expect_exit(&mut self, i: usize, timeout: Duration, code: i32) {
        let got = self.clients[i].wait_exit(timeout);
        let name = self.clients[i].name.clone();
        self.check(got == Some(code), || {
            format!("{name}: expected exit code {code} within {timeout:?}, got {got:?}")
        });
    }

    /// Subscriber `i` has run to completion: its video kept flowing and it got audio.
    fn assert_watched(&mut self, i: usize) {
        let timeout = Duration::from_secs(WATCH_SECONDS) + CONNECT;
        self.expect_exit(i, timeout, 0);
        let name = self.clients[i].name.clone();
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

    /// The publisher stops on SIGTERM, DELETEs its resource, and nothing is left behind.
    fn stop_and_check_empty(&mut self, publisher: usize) {
        let got = self.clients[publisher].terminate(Duration::from_secs(10));
        let name = self.clients[publisher].name.clone();
        self.check(got == Some(0), || {
            format!("{name} did not exit cleanly on SIGTERM: {got:?}")
        });
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

/// An aiortc publisher and an aiortc subscriber in one room through the gateway.
fn publisher_to_subscriber(steering: &str) {
    let mut s = Scene::new(steering, &[]);
    let publisher = s.add(publish("publisher", &s.gw, "interop", None));
    let location = s.wait_connected(publisher);
    let prefix = s.gw.url("/whip/interop/");
    s.check(location.starts_with(&prefix), || {
        format!("WHIP Location {location:?} is not under {prefix}")
    });
    // `/whip/{room}/{key}/{participant}`: the participant id is the last segment.
    let participant = location.rsplit('/').next().unwrap_or_default().to_owned();

    // One subscriber binds to the room's publisher implicitly, one names it.
    let implicit = s.add(subscribe("subscriber", &s.gw, "/whep/interop", None));
    let named = s.add(subscribe(
        "subscriber-named",
        &s.gw,
        &format!("/whep/interop?publisher={participant}"),
        None,
    ));
    s.wait_connected(implicit);
    s.wait_connected(named);
    s.assert_watched(implicit);
    s.assert_watched(named);

    let forwarded = s.media("rtp_forwarded");
    s.check(forwarded > 0, || "media.rtp_forwarded is 0".to_owned());
    let completed = s.media("dtls_completed");
    s.check(completed == 3, || {
        format!("media.dtls_completed is {completed}, expected 3 (one per client)")
    });
    let status = s.gw.status();
    if steering == "ebpf" {
        for key in ["handoffs", "misdelivered"] {
            let n = sum_threads(&status, key);
            s.check(n == 0, || {
                format!("{key} = {n}: the kernel did not steer every datagram to its owner")
            });
        }
    }
    s.stop_and_check_empty(publisher);
}

#[test]
fn aiortc_publisher_to_aiortc_subscriber_ebpf() {
    if !support::require_root() {
        return;
    }
    let _serial = serial();
    if !aiortc_available() {
        return;
    }
    publisher_to_subscriber("ebpf");
}

#[test]
fn aiortc_publisher_to_aiortc_subscriber_connected() {
    let _serial = serial();
    if !aiortc_available() {
        return;
    }
    publisher_to_subscriber("connected");
}

/// With `--auth-token`, WHIP and WHEP without the token answer 401 (the client reports the
/// refusal and exits non-zero); with it, media flows.
#[test]
fn aiortc_with_bearer_token() {
    let _serial = serial();
    if !aiortc_available() {
        return;
    }
    let mut s = Scene::new("connected", &[("--auth-token", "s3cret")]);
    let refused_pub = s.add(publish("publisher-no-token", &s.gw, "auth", None));
    let wrong_pub = s.add(publish(
        "publisher-wrong-token",
        &s.gw,
        "auth",
        Some("nope"),
    ));
    let refused_sub = s.add(subscribe("subscriber-no-token", &s.gw, "/whep/auth", None));
    for i in [refused_pub, wrong_pub, refused_sub] {
        s.expect_exit(i, CONNECT, 2);
        let name = s.clients[i].name.clone();
        let err = s.clients[i].event("error").unwrap_or(Value::Null);
        s.check(err["status"] == 401, || {
            format!("{name} should be refused with 401, reported {err}")
        });
    }
    let sessions = sum_threads(&s.gw.status(), "sessions");
    s.check(sessions == 0, || {
        format!("refused requests created {sessions} sessions")
    });

    let publisher = s.add(publish("publisher", &s.gw, "auth", Some("s3cret")));
    s.wait_connected(publisher);
    let subscriber = s.add(subscribe("subscriber", &s.gw, "/whep/auth", Some("s3cret")));
    s.wait_connected(subscriber);
    s.assert_watched(subscriber);
    s.stop_and_check_empty(publisher);
}
