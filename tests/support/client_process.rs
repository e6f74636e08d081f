//! The child-process harness of the interop tests (tests/interop.rs, tests/interop_gst.rs):
//! one client script run by an interpreter, its JSON stdout lines and its stderr collected
//! by reader threads, every wait bounded, killed on drop; and the [`Scene`] of one test (a
//! gateway plus its clients) with the checks both stacks share.
//!
//! Included with `#[path = "support/client_process.rs"] mod client_process;` by the test
//! files that need it, so tests without client processes do not compile it.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{eventually, sum_threads, Gateway};

/// One client process: its JSON stdout lines (a line that is not JSON is kept as a string)
/// and its stderr, collected by reader threads. Killed on drop.
pub struct ClientProcess {
    /// How failure output names the client.
    pub name: String,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    exit: Option<i32>,
}

impl ClientProcess {
    /// Run `program script args…` with unbuffered Python output, adding `--debug` when
    /// `ROOMGATE_INTEROP_DEBUG=1`.
    pub fn spawn(name: String, program: &str, script: &str, args: &[&str]) -> ClientProcess {
        let mut cmd = Command::new(program);
        cmd.arg(script)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var("ROOMGATE_INTEROP_DEBUG").as_deref() == Ok("1") {
            cmd.arg("--debug");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} {script}: {e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout piped");
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().expect("events").push(v);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ClientProcess {
            name,
            child,
            events,
            stderr,
            exit: None,
        }
    }

    /// Every stdout line so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// The first event whose `event` field is `kind`.
    pub fn event(&self, kind: &str) -> Option<Value> {
        self.events().into_iter().find(|e| e["event"] == kind)
    }

    /// The `stats` events, in order.
    pub fn stats(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "stats")
            .collect()
    }

    /// The exit code once the process has ended (`-1` for a signal).
    pub fn exited(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status.code().unwrap_or(-1));
            }
        }
        self.exit
    }

    /// Wait for the process to end on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(code) = self.exited() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM (the client DELETEs its resource and exits 0), then wait.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        if self.exited().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
        }
        self.wait_exit(timeout)
    }

    /// Exit state, every stdout line and the last 60 lines of stderr, for failure output.
    pub fn describe(&mut self) -> String {
        let exit = match self.exited() {
            Some(code) => format!("exited with {code}"),
            None => "running".to_owned(),
        };
        let events: Vec<String> = self.events().iter().map(Value::to_string).collect();
        let stderr = self.stderr.lock().expect("stderr").clone();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "==== client {} ({exit}), stdout:\n{}\n==== client {} stderr (last 60 lines):\n{tail}",
            self.name,
            events.join("\n"),
            self.name
        )
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logic threads of every interop gateway.
pub const THREADS: usize = 2;
/// Bound for the client's start-up (Python imports), ICE, DTLS and the HTTP exchange.
pub const CONNECT: Duration = Duration::from_secs(30);
/// How long a subscriber watches; at 15 fps that is ~120 frames once video flows.
pub const WATCH_SECONDS: u64 = 8;

/// A gateway and the client processes of one interop test; failures print everything.
/// The test files add their stack-specific checks in their own `impl Scene` blocks.
pub struct Scene {
    pub gw: Gateway,
    pub clients: Vec<ClientProcess>,
}

impl Scene {
    pub fn new(steering: &str, extra: &[(&str, &str)]) -> Scene {
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
    pub fn add(&mut self, client: ClientProcess) -> usize {
        self.clients.push(client);
        self.clients.len() - 1
    }

    pub fn fail(&mut self, msg: &str) -> ! {
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

    pub fn check(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let msg = msg();
            self.fail(&msg);
        }
    }

    /// Client `i` reports `connected` (ICE and DTLS up); fails at once if it exits first.
    pub fn wait_connected(&mut self, i: usize) -> String {
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
    pub fn expect_exit(&mut self, i: usize, timeout: Duration, code: i32) {
        let got = self.clients[i].wait_exit(timeout);
        let name = self.clients[i].name.clone();
        self.check(got == Some(code), || {
            format!("{name}: expected exit code {code} within {timeout:?}, got {got:?}")
        });
    }

    /// Subscriber `i` has run to completion: its video kept flowing and it got audio.
    pub fn assert_watched(&mut self, i: usize) {
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
    pub fn media(&mut self, key: &str) -> u64 {
        let status = self.gw.status();
        status["threads"]
            .as_array()
            .expect("threads in /api/status")
            .iter()
            .map(|t| t["media"][key].as_u64().unwrap_or(0))
            .sum()
    }

    /// The publishers stop on SIGTERM, DELETE their resources, and nothing is left behind.
    pub fn stop_and_check_empty(&mut self, publishers: &[usize]) {
        for &p in publishers {
            let got = self.clients[p].terminate(Duration::from_secs(10));
            let name = self.clients[p].name.clone();
            self.check(got == Some(0), || {
                format!("{name} did not exit cleanly on SIGTERM: {got:?}")
            });
        }
        let mut sessions = u64::MAX;
        let gone = eventually(Duration::from_secs(5), || {
            sessions = sum_threads(&self.gw.status(), "sessions");
            sessions == 0
        });
        self.check(gone, || {
            format!("{sessions} sessions left after every client DELETEd its resource")
        });
    }
}
