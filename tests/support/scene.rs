//! A room of real browsers on links of their own, for the tests that shape or break one
//! browser's link: every headless Chromium runs in a network namespace of its own, joined
//! by its own veth pair to the hub namespace where the gateway and the test's report server
//! live (see `shaping.rs`). Pages are the demo page, served by the report server so it is
//! the file on disk, reporting their `getStats()` once a second.
//!
//! A failure prints every page's latest report, a timeline of each page, the links'
//! counters, the room listing, the gateway's metrics the test cares about and its log.
//! Include as `#[path = "support/scene.rs"] mod scene;` next to `browser_support`,
//! `shaping` and `support`.
#![allow(dead_code)]

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    browser_support::{demo_page_source, publish_outcome, Browser, LaunchOptions, ReportServer},
    shaping::{Star, HUB_IP},
    support::{self, Gateway},
};

pub const THREADS: usize = 2;
/// Browser start-up, negotiation and first frames on a busy 2-core machine.
pub const START: Duration = Duration::from_secs(60);
/// A window over which a counter must not move to count as paused, and over which
/// counters must move to count as flowing.
pub const SPAN_MS: u64 = 2_000;
pub const POLL: Duration = Duration::from_millis(200);

/// Chromium instances are heavy; one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Field order is drop order: browsers, then the report server and the gateway, then the
/// namespaces they ran in.
pub struct Scene {
    pub browsers: Vec<Browser>,
    pub reports: ReportServer,
    pub gw: Gateway,
    pub star: Star,
    pub room: &'static str,
    labels: Vec<String>,
    /// A failure prints the gateway's metrics whose names contain one of these.
    metric_words: &'static [&'static str],
}

impl Scene {
    /// The hub plus one leaf per label; the gateway (in `steering` mode) and the report
    /// server on the hub's address.
    pub fn new(
        steering: &str,
        tag: &str,
        room: &'static str,
        labels: &[&str],
        metric_words: &'static [&'static str],
    ) -> Scene {
        let star = Star::enter(tag, labels);
        let gw = Gateway::builder(steering, THREADS)
            .set("--udp-bind", format!("{HUB_IP}:0"))
            .set("--http-bind", format!("{HUB_IP}:0"))
            .set("--public-ip", HUB_IP.to_string())
            .start();
        assert_eq!(gw.mode, steering, "gateway runs in the requested mode");
        let reports = ReportServer::start_on(HUB_IP.into(), Some(demo_page_source()));
        Scene {
            browsers: Vec::new(),
            reports,
            gw,
            star,
            room,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            metric_words,
        }
    }

    /// Open the demo page as `name` inside leaf `name`, joining the room at once. The page
    /// comes from the report server (so it is the file on disk) and talks to the gateway
    /// through `?gateway=`.
    pub fn open(&mut self, name: &str, extra: &str) {
        let query = format!(
            "room={}&autostart=1&name={name}&report={}&gateway=http://{}{extra}",
            self.room,
            self.reports.report_url(),
            self.gw.http
        );
        let url = self.reports.page_url(&query);
        let options = LaunchOptions {
            netns: Some(self.star.netns(name).to_owned()),
            // getUserMedia needs a secure context; only loopback origins are one over http.
            args: vec![format!(
                "--unsafely-treat-insecure-origin-as-secure=http://{}",
                self.reports.addr
            )],
        };
        self.browsers
            .push(Browser::launch_with(name, &url, &options));
    }

    pub fn metrics(&self) -> String {
        match self.gw.get("/metrics") {
            (200, Value::String(text)) => text,
            (code, v) => self.fail(&format!("GET /metrics -> {code}: {v}")),
        }
    }

    /// Sum of every sample of counter `name` (all threads, all labels), or None if it is
    /// not exported.
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        support::metric_sum(&self.metrics(), name)
    }

    /// Print everything that helps to understand a failure, then panic with `msg`.
    pub fn fail(&self, msg: &str) -> ! {
        eprintln!("==== FAILED: {msg}");
        eprintln!("==== page reports:\n{}", self.reports.dump());
        for name in &self.labels {
            eprintln!(
                "==== timeline of {name} (last 40 reports):\n{}",
                timeline(&self.reports.all(name), 40)
            );
        }
        for b in &self.browsers {
            eprintln!(
                "==== browser {} ({}), console/errors:\n{}",
                b.name,
                if b.running() { "running" } else { "EXITED" },
                b.log_tail(30)
            );
        }
        eprintln!("==== links:\n{}", self.star.describe());
        let room = self.room;
        let (code, listing) = self.gw.get(&format!("/api/rooms/{room}"));
        eprintln!("==== GET /api/rooms/{room} -> {code}:\n{listing:#}");
        if let (200, Value::String(text)) = self.gw.get("/metrics") {
            let interesting: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && self.metric_words.iter().any(|w| l.contains(w)))
                .collect();
            eprintln!(
                "==== gateway metrics ({}):\n{}",
                self.metric_words.join(", "),
                interesting.join("\n")
            );
        }
        let log = self.gw.stderr();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.trim_start().starts_with("at "))
            .collect();
        let start = lines.len().saturating_sub(80);
        eprintln!(
            "==== gateway stderr (last {} of {} lines):\n{}",
            lines.len() - start,
            lines.len(),
            lines[start..].join("\n")
        );
        panic!("{msg}");
    }

    /// Poll `f` until it gives a value or `deadline` passes; fail with `what` otherwise, or
    /// as soon as a browser died.
    pub fn wait_until<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if let Some(b) = self.browsers.iter().find(|b| !b.running()) {
                self.fail(&format!(
                    "browser {} exited while waiting until {what}",
                    b.name
                ));
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out waiting until {what}"));
            }
            // Pages report once a second; some conditions ask the gateway over HTTP.
            std::thread::sleep(POLL);
        }
    }

    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let msg = msg();
            self.fail(&msg);
        }
    }

    /// Sleep through `span` while watching that no browser dies.
    pub fn observe(&self, span: Duration) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            if let Some(b) = self.browsers.iter().find(|b| !b.running()) {
                self.fail(&format!("browser {} exited while observing", b.name));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The participant ID of `name`'s WHIP session; a failed publish fails at once.
    pub fn publisher_id(&self, name: &str) -> String {
        let found = self.wait_until(
            &format!("page {name} publishes (WHIP 201)"),
            Instant::now() + START,
            |s| publish_outcome(&s.reports.latest(name)?),
        );
        found.unwrap_or_else(|err| self.fail(&format!("page {name} could not publish: {err}")))
    }

    /// The participant ID of `name`'s WHEP session watching `publisher`.
    pub fn subscriber_id(&self, name: &str, publisher: &str) -> String {
        self.wait_until(
            &format!("{name} has a WHEP session watching {publisher}"),
            Instant::now() + START,
            |s| {
                let r = s.reports.latest(name)?;
                subscription(&r, publisher)?["participant"]
                    .as_str()
                    .map(str::to_owned)
            },
        )
    }

    /// `(older, newer)` of `value` in `name`'s latest report and in the latest report at
    /// least [`SPAN_MS`] older.
    pub fn across_span(
        &self,
        name: &str,
        value: impl Fn(&Value) -> Option<f64>,
    ) -> Option<(f64, f64)> {
        let all = self.reports.all(name);
        let newest = all.last()?;
        let t = newest["time"].as_u64()?;
        let older = all
            .iter()
            .rev()
            .find(|r| r["time"].as_u64().is_some_and(|o| o + SPAN_MS <= t))?;
        Some((value(older)?, value(newest)?))
    }

    /// `watcher` decodes `publisher`'s video (frames rising over a span) and gets its audio.
    pub fn assert_receiving(&self, watcher: &str, publisher: &str) {
        let frames = |r: &Value| -> Option<f64> {
            let sub = subscription(r, publisher)?;
            (sub["audio"]["packetsReceived"].as_u64()? > 0)
                .then(|| sub["video"]["framesDecoded"].as_f64())?
        };
        let (before, after) = self.wait_until(
            &format!("{watcher} (in its own namespace) decodes video and receives audio from {publisher}"),
            Instant::now() + START,
            |s| s.across_span(watcher, frames).filter(|&(a, b)| b > a && a > 0.0),
        );
        eprintln!("{watcher} <- {publisher}: framesDecoded {before} -> {after}");
    }

    /// Freeze count, freeze seconds and frames decoded of `name`'s view of `publisher`.
    pub fn freezes(&self, name: &str, publisher: &str) -> (u64, f64, u64) {
        let r = self.reports.latest(name).unwrap_or(Value::Null);
        let v = subscription(&r, publisher).map_or(Value::Null, |s| s["video"].clone());
        (
            v["freezeCount"].as_u64().unwrap_or(0),
            v["totalFreezesDuration"].as_f64().unwrap_or(0.0),
            v["framesDecoded"].as_u64().unwrap_or(0),
        )
    }
}

/// A page's report -> its subscription to `publisher`.
pub fn subscription<'r>(report: &'r Value, publisher: &str) -> Option<&'r Value> {
    report["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s["publisher"] == publisher)
}

/// One line per report (the `last` newest): what a viewer decodes and how it repairs loss,
/// or what a publisher sends per rid.
pub fn timeline(all: &[Value], last: usize) -> String {
    let first = all.first().and_then(|r| r["time"].as_u64()).unwrap_or(0);
    all.iter()
        .skip(all.len().saturating_sub(last))
        .map(|r| {
            let t = r["time"].as_u64().unwrap_or(0).saturating_sub(first) as f64 / 1000.0;
            let mut line = format!("{t:7.1}s");
            if let Some(out) = r["outbound"].as_object() {
                line.push_str(&format!(
                    " estimate {}",
                    out.get("availableOutgoingBitrate").unwrap_or(&Value::Null)
                ));
                for l in out
                    .get("layers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    line.push_str(&format!(
                        " | {} {}x{} {}B {}f {}bps {}",
                        l["rid"],
                        l["frameWidth"],
                        l["frameHeight"],
                        l["bytesSent"],
                        l["framesEncoded"],
                        l["bitrate_bps"],
                        l["qualityLimitationReason"]
                    ));
                }
            }
            for sub in r["subscriptions"].as_array().into_iter().flatten() {
                let v = &sub["video"];
                line.push_str(&format!(
                    " | {}x{} {}f ({} key) {}bps freezes {} ({}s) lost {} nack {} pli {} gateway {}",
                    v["frameWidth"],
                    v["frameHeight"],
                    v["framesDecoded"],
                    v["keyFramesDecoded"],
                    v["bitrate_bps"],
                    v["freezeCount"],
                    v["totalFreezesDuration"],
                    v["packetsLost"],
                    v["nackCount"],
                    v["pliCount"],
                    sub["gateway_video"]
                ));
                // Only where the browser has an RTX stream to count.
                if !v["retransmittedPacketsReceived"].is_null() {
                    line.push_str(&format!(
                        " rtx {} (ssrc {})",
                        v["retransmittedPacketsReceived"], v["rtxSsrc"]
                    ));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}
