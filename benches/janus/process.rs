//! The Janus process inside the bench namespace: started with the private configuration,
//! waited for until its HTTP API answers, stopped on drop (also while unwinding).
use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{api::Api, config::ConfigDir, JanusError};

pub struct Janus {
    child: Child,
    pub log: PathBuf,
}

impl Janus {
    /// Start `janus` under `wrapper` (e.g. `ip netns exec rgb-gw`, which execs in place,
    /// so the child's pid is Janus's own and its /proc entries are what the bench reads).
    pub fn start(wrapper: &[String], cfg: &ConfigDir, api: &Api) -> Result<Janus, JanusError> {
        let log = cfg.dir.join("janus.log");
        let out = File::create(&log).map_err(|e| JanusError::Setup(format!("janus log: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| JanusError::Setup(format!("janus log: {e}")))?;
        let (program, args) = wrapper
            .split_first()
            .ok_or_else(|| JanusError::Setup("empty namespace wrapper".into()))?;
        let child = Command::new(program)
            .args(args)
            .args(["janus", "-F"])
            .arg(&cfg.dir)
            .arg("-C")
            .arg(cfg.dir.join("janus.jcfg"))
            .args(["-o"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| JanusError::Setup(format!("start janus: {e}")))?;
        let mut janus = Janus { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = janus.child.try_wait() {
                return Err(JanusError::Setup(format!(
                    "janus exited with {status} during startup:\n{}",
                    janus.log_tail()
                )));
            }
            if api.info().is_ok() {
                return Ok(janus);
            }
            if Instant::now() >= deadline {
                return Err(JanusError::Setup(format!(
                    "janus HTTP API did not answer within 15 s:\n{}",
                    janus.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// On-CPU ns of the whole process, measured as the roomgate runs of the media bench
    /// measure the gateway.
    pub fn cpu_ns(&self) -> u64 {
        crate::util::cpu::process_cpu_ns(&self.pid().to_string())
    }

    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid())).map_or(0, |d| d.count())
    }

    /// The last lines Janus logged, for error reports.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        // SIGTERM first so Janus tears its handles down; SIGKILL if it does not exit.
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
