//! A private network namespace that the calling test thread enters: the gateway it then
//! spawns, its client sockets and its HTTP requests all live there, so the namespace's
//! kernel counters (`nstat`) count this test's datagrams and nothing else.
use std::{os::fd::AsRawFd, process::Command};

/// Run `ip` with `args`, or panic with its error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct TestNetns {
    pub name: String,
    /// The namespace the thread came from, restored on drop.
    home: std::fs::File,
}

impl TestNetns {
    /// Create `rg<pid><tag>` with loopback up and move the current thread into it.
    pub fn enter(tag: &str) -> TestNetns {
        let name = format!("rg{}{tag}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
        // SAFETY: setns on this thread only, with a namespace fd we just opened; sockets
        // and children created by this thread from now on belong to the namespace.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        TestNetns { name, home }
    }

    /// The namespace's UDP receive-buffer drops (IPv4 + IPv6), as the kernel counts them.
    pub fn udp_rcvbuf_errors(&self) -> u64 {
        udp_rcvbuf_errors(&self.name)
    }
}

/// Namespace `ns`'s UDP receive-buffer drops (IPv4 + IPv6), as the kernel counts them.
pub fn udp_rcvbuf_errors(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nstat", "-asz"])
        .args(["UdpRcvbufErrors", "Udp6RcvbufErrors"])
        .output()
        .expect("run nstat");
    assert!(out.status.success(), "nstat failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Udp"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread started in (fd opened in `enter`).
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Run `f` on a thread that has entered namespace `ns`; sockets it creates stay there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            // SAFETY: setns on this thread only, with a namespace fd we own.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}
