//! The load generator's cheap receive path for capacity runs: one thread waits on every
//! subscriber socket with epoll and drains each ready socket with recvmmsg, counting RTP
//! datagrams per socket. Only one datagram in `sample_every` is handed to a sampler
//! (decryption, latency, integrity), so receiving costs little more than the kernel's own
//! work and the generator does not saturate before the server does.
use std::{
    os::fd::RawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const BATCH: usize = 64;
const BUF: usize = 2048;
const EVENTS: usize = 1024;
/// When sampling (`sample_every` > 1), the loop wakes at most this often, so that one
/// wake-up drains many sockets (each subscriber gets only ~120 datagrams/s); latency
/// samples may then be late by as much.
const MIN_WAKE_INTERVAL: Duration = Duration::from_micros(500);

/// Called with (socket index, datagram) for every `sample_every`-th RTP datagram.
pub type Sampler = Box<dyn FnMut(usize, &[u8]) + Send>;

pub struct Counter {
    stop: Arc<AtomicBool>,
    counts: Arc<Vec<AtomicU64>>,
    thread: Option<JoinHandle<()>>,
}

/// RTP, not RTCP (RFC 5761: RTCP packet types 192..=223 in the second byte), not STUN.
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..=191).contains(&d[0]) && !(192..=223).contains(&d[1])
}

impl Counter {
    /// Start counting on `fds` (sockets the caller keeps open until [`Counter::stop`]).
    pub fn spawn(fds: Vec<RawFd>, sample_every: u64, sampler: Sampler) -> std::io::Result<Counter> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (i, fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: ep is our epoll fd; ev is a valid event for the call's duration.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, *fd, &mut ev) } != 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: closing the epoll fd we created.
                unsafe { libc::close(ep) };
                return Err(e);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<AtomicU64>> = Arc::new(fds.iter().map(|_| AtomicU64::new(0)).collect());
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::Builder::new()
                .name("bench-count".into())
                .spawn(move || {
                    receive_loop(ep, &fds, &stop, &counts, sample_every.max(1), sampler);
                    // SAFETY: closing the epoll fd this thread owns.
                    unsafe { libc::close(ep) };
                })?
        };
        Ok(Counter {
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// RTP datagrams counted so far, all sockets.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// RTP datagrams counted so far, per socket.
    pub fn per_socket(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn stop(mut self) -> Vec<u64> {
        self.halt();
        self.per_socket()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.halt();
    }
}

fn receive_loop(
    ep: RawFd,
    fds: &[RawFd],
    stop: &AtomicBool,
    counts: &[AtomicU64],
    sample_every: u64,
    mut sampler: Sampler,
) {
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed means no name, no control, no iov yet.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut seen = 0u64;
    let interval = if sample_every > 1 {
        MIN_WAKE_INTERVAL
    } else {
        Duration::ZERO
    };
    while !stop.load(Ordering::Relaxed) {
        let woke = Instant::now();
        // SAFETY: events has EVENTS entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let idx = ev.u64 as usize;
            let Some(&fd) = fds.get(idx) else { continue };
            loop {
                // SAFETY: msgs/iovs/bufs stay alive and unmoved for the call; BATCH entries.
                let got = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if got <= 0 {
                    break;
                }
                let mut rtp = 0u64;
                for (m, b) in msgs.iter().zip(bufs.iter()).take(got as usize) {
                    let d = &b[..(m.msg_len as usize).min(BUF)];
                    if !is_rtp(d) {
                        continue;
                    }
                    rtp += 1;
                    if seen.is_multiple_of(sample_every) {
                        sampler(idx, d);
                    }
                    seen += 1;
                }
                counts[idx].fetch_add(rtp, Ordering::Relaxed);
                if (got as usize) < BATCH {
                    break;
                }
            }
        }
        let rest = interval.saturating_sub(woke.elapsed());
        if (n.max(0) as usize) < EVENTS && !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
}

/// Remove `fds` from every epoll instance of this process. The client runtime (tokio)
/// keeps a detached peer's socket registered edge-triggered, so every datagram would wake
/// one of its threads for nothing, costing the load generator as much as counting. Call
/// it while no [`Counter`] runs (its epoll would lose them too). Tokio's own sends keep
/// working: the socket's write readiness is already known, and UDP sends do not block.
pub fn unregister_everywhere(fds: &[RawFd]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let epolls: Vec<RawFd> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[eventpoll]")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for ep in epolls {
        for &fd in fds {
            // SAFETY: EPOLL_CTL_DEL ignores the event argument; an fd not in this epoll
            // fails with ENOENT, which is fine.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        }
    }
}
