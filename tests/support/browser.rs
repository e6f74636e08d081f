//! Helpers for the real-browser tests: headless Chromium processes (one browser per
//! user-data-dir, killed with their whole process group on drop) and a tiny std-only
//! HTTP server that collects the demo page's JSON reports and can serve the page itself
//! from a second origin.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::Value;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether the browser tests can run. A missing Chromium is a failure unless
/// `ROOMGATE_SKIP_BROWSER=1` says to skip (then this prints SKIPPED and returns false).
pub fn chromium_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("ROOMGATE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {CHROMIUM} is missing and ROOMGATE_SKIP_BROWSER=1");
        return false;
    }
    panic!(
        "{CHROMIUM} is missing: `apt-get install -y chromium` (cargo xtask test installs it), \
         or set ROOMGATE_SKIP_BROWSER=1 to skip the browser tests"
    );
}

/// The demo page as it is on disk (the gateway compiles in the same file).
/// What a page's latest report says about its WHIP session: `None` while it has not
/// published yet, `Err` with the page's error once publishing failed (final for the
/// page), `Ok` with the participant ID once it publishes.
pub fn publish_outcome(report: &Value) -> Option<Result<String, String>> {
    let failed = report["errors"].as_array().and_then(|errs| {
        errs.iter()
            .filter_map(Value::as_str)
            .find(|e| e.starts_with("publish:"))
            .map(str::to_owned)
    });
    if let Some(err) = failed {
        return Some(Err(err));
    }
    if report["publishing"] != Value::Bool(true) {
        return None;
    }
    report["participant"].as_str().map(|p| Ok(p.to_owned()))
}

pub fn demo_page_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("static/index.html");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Reports from the page, by the page's `name`, oldest first (bounded).
type Reports = Arc<Mutex<HashMap<String, Vec<Value>>>>;
/// A command waiting for a page's next report (answered as the response body).
type Commands = Arc<Mutex<HashMap<String, String>>>;

const KEEP_REPORTS: usize = 200;

/// Collects `POST /report` bodies and answers one with a queued command for that page;
/// serves `GET /` with the demo page when given one.
pub struct ReportServer {
    pub addr: SocketAddr,
    reports: Reports,
    commands: Commands,
    stop: Arc<AtomicBool>,
    /// The listening socket, kept to wake the accept loop on drop.
    listener: TcpListener,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReportServer {
    pub fn start(page: Option<String>) -> ReportServer {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), page)
    }

    /// Listen on `ip` (a free port), in the network namespace of the calling thread: browsers
    /// in other namespaces reach it through their links.
    pub fn start_on(ip: IpAddr, page: Option<String>) -> ReportServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind report server");
        let addr = listener.local_addr().expect("report server addr");
        let reports: Reports = Arc::default();
        let commands: Commands = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let page = Arc::new(page);
        let wake = listener.try_clone().expect("clone report listener");
        let thread = {
            let (reports, commands, stop) = (reports.clone(), commands.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (reports, commands, page) =
                        (reports.clone(), commands.clone(), page.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &reports, &commands, page.as_deref());
                    });
                }
            })
        };
        ReportServer {
            addr,
            reports,
            commands,
            stop,
            listener: wake,
            thread: Some(thread),
        }
    }

    pub fn report_url(&self) -> String {
        format!("http://{}/report", self.addr)
    }

    /// The page served from this server's origin (a different origin than the gateway).
    pub fn page_url(&self, query: &str) -> String {
        format!("http://{}/?{query}", self.addr)
    }

    /// Ask page `name` to "leave" or "join" (delivered as the answer to its next report).
    pub fn command(&self, name: &str, command: &str) {
        if let Ok(mut c) = self.commands.lock() {
            c.insert(name.to_owned(), command.to_owned());
        }
    }

    pub fn latest(&self, name: &str) -> Option<Value> {
        self.reports.lock().ok()?.get(name)?.last().cloned()
    }

    /// Every report of `name` kept so far, oldest first.
    pub fn all(&self, name: &str) -> Vec<Value> {
        self.reports
            .lock()
            .map(|r| r.get(name).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn count(&self, name: &str) -> usize {
        self.reports
            .lock()
            .map(|r| r.get(name).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// The latest report of every page, for failure messages.
    pub fn dump(&self) -> String {
        let Ok(reports) = self.reports.lock() else {
            return "(reports poisoned)".into();
        };
        let mut names: Vec<&String> = reports.keys().collect();
        names.sort();
        let mut out = String::new();
        for name in names {
            let all = &reports[name];
            let last = all
                .last()
                .map(|v| serde_json::to_string_pretty(v).unwrap_or_default());
            out.push_str(&format!(
                "--- report {name:?} ({} received), latest:\n{}\n",
                all.len(),
                last.unwrap_or_default()
            ));
        }
        if out.is_empty() {
            out.push_str("(no reports received)\n");
        }
        out
    }
}

impl Drop for ReportServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag. shutdown(2) on the listening socket
        // makes a blocked accept fail at once; a wake-up connection would need this
        // thread to be in the listener's network namespace (and from any other one it
        // would leave through that namespace's routes).
        // SAFETY: shutdown on a socket fd this struct owns.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.listener),
                libc::SHUT_RDWR,
            );
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection (`Connection: close`).
fn serve(
    mut conn: TcpStream,
    reports: &Reports,
    commands: &Commands,
    page: Option<&str>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, payload): (&str, &str, Vec<u8>) = match (method, path, page) {
        ("POST", "/report", _) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => {
                let name = v["name"].as_str().unwrap_or("").to_owned();
                let command = commands.lock().ok().and_then(|mut c| c.remove(&name));
                if let Ok(mut r) = reports.lock() {
                    let list = r.entry(name).or_default();
                    list.push(v);
                    if list.len() > KEEP_REPORTS {
                        list.remove(0);
                    }
                }
                match command {
                    Some(c) => ("200 OK", "text/plain", c.into_bytes()),
                    None => ("204 No Content", "text/plain", Vec::new()),
                }
            }
            Err(_) => ("400 Bad Request", "text/plain", b"bad json".to_vec()),
        },
        ("OPTIONS", _, _) => ("204 No Content", "text/plain", Vec::new()),
        ("GET", "/" | "/index.html", Some(page)) => (
            "200 OK",
            "text/html; charset=utf-8",
            page.as_bytes().to_vec(),
        ),
        _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    conn.write_all(&payload)?;
    conn.flush()
}

static BROWSER_SEQ: AtomicU64 = AtomicU64::new(0);

/// How to start a browser beyond the defaults of [`Browser::launch`].
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Run Chromium inside this network namespace (`ip netns exec`, which execs in place,
    /// so the process group and the death signal still belong to Chromium).
    pub netns: Option<String>,
    /// Extra command-line switches, after the defaults.
    pub args: Vec<String>,
}

/// One headless Chromium (its own user-data-dir, so its own browser process tree),
/// killed with its process group on drop.
pub struct Browser {
    pub name: String,
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    log: PathBuf,
}

impl Browser {
    pub fn launch(name: &str, url: &str) -> Browser {
        Self::launch_with(name, url, &LaunchOptions::default())
    }

    pub fn launch_with(name: &str, url: &str, options: &LaunchOptions) -> Browser {
        let seq = BROWSER_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "roomgate-browser-{}-{seq}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("create browser profile dir");
        let log = dir.join("chromium.log");
        let out = File::create(&log).expect("create browser log");
        let err = out.try_clone().expect("dup browser log");
        let mut cmd = match &options.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CHROMIUM]);
                c
            }
            None => Command::new(CHROMIUM),
        };
        // SAFETY: prctl(2) is async-signal-safe; it only sets this child's death signal,
        // so a test process killed outright (timeout, ^C) does not leave browsers behind.
        // (It fires when the launching thread exits; tests launch and drop browsers on
        // their own thread.)
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--mute-audio",
                // Keep 1 s report timers and media running in every (headless) window.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                // Media: fake camera+microphone, no permission prompt, autoplay.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                // Page console messages into the log, for failure messages.
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=800,600",
            ])
            // On the host the gateway advertises 127.0.0.1, and loopback candidates are off
            // by default. In a namespace it is reached through a link, and a loopback
            // candidate would only fill the log with failed checks.
            .args(
                options
                    .netns
                    .is_none()
                    .then_some("--allow-loopback-in-peer-connection"),
            )
            .args(&options.args)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}"));
        Browser {
            name: name.to_owned(),
            child: Mutex::new(Some(child)),
            dir,
            log,
        }
    }

    /// Whether the browser process is still running.
    pub fn running(&self) -> bool {
        self.child
            .lock()
            .is_ok_and(|mut c| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }

    /// The last `lines` distinct lines of Chromium's stderr that look useful (page
    /// console messages, WebRTC/media errors), shortened, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut useful: Vec<&str> = text
            .lines()
            .filter(|l| {
                // No D-Bus/UPower/Bluetooth noise: the container has no system bus.
                let noise = l.contains("dbus") || l.contains("bluez") || l.contains("vaapi");
                !noise
                    && (l.contains("CONSOLE")
                        || l.contains("ERROR")
                        || l.contains("rtc")
                        || l.contains("webrtc"))
            })
            .map(|l| {
                // Drop the "[pid:tid:date:LEVEL:file]" prefix and the long source URL.
                let l = l.split_once("] ").map_or(l, |(_, rest)| rest);
                l.split(", source:").next().unwrap_or(l)
            })
            .collect();
        // A failing poll repeats the same lines every 2 s; keep the last of each.
        let mut seen = std::collections::HashSet::new();
        useful.reverse();
        useful.retain(|l| seen.insert(*l));
        useful.truncate(lines);
        useful.reverse();
        useful
            .iter()
            .map(|l| l.chars().take(400).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let child = self.child.get_mut().ok().and_then(Option::take);
        if let Some(mut child) = child {
            let pgid = child.id() as i32;
            // SAFETY: signalling the process group we created for this child.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
