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
};

use client_process::{ClientProcess as Client, Scene, CONNECT, WATCH_SECONDS};
use serde_json::Value;
use support::{sum_threads, Gateway};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/interop/aiortc_client.py"
);
const PIP: &str = "pip install aiortc==1.16.0";
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
    s.stop_and_check_empty(&[publisher]);
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
    s.stop_and_check_empty(&[publisher]);
}
