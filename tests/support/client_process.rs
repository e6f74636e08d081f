//! The child-process harness of the interop tests (tests/interop.rs, tests/interop_gst.rs):
//! one client script run by an interpreter, its JSON stdout lines and its stderr collected
//! by reader threads, every wait bounded, killed on drop.
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
