//! Baseline (a): a plain UDP fan-out relay, the kernel's own cost for the media bench's
//! fan-out. It runs as its own process (the bench binary re-executed with
//! `--relay-child`), so its CPU can be read alone from /proc/<pid>/stat, inside the same
//! namespace and pinned to the same CPU as roomgate. It receives batches with recvmmsg on
//! one socket, finds the room by the publisher's source address, and sends every datagram
//! to every subscriber address of that room: one sendmmsg per receive batch, or one sendto
//! per copy. No crypto, no RTP logic.
//!
//! Parent/child protocol (stdin/stdout, one line each): the parent writes
//! `room <publisher> <subscriber>...` per room and then `go`; the child binds, answers
//! `relay-ready <addr>`, relays until its stdin closes, and answers
//! `relay-done received=R copies=C send_errors=E`.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// Flag that turns the bench binary into the relay process.
pub const CHILD_FLAG: &str = "--relay-child";
const BATCH: usize = 64;
const BUF: usize = 2048;
/// UIO_MAXIOV: the most messages one sendmmsg takes.
const MAX_MMSG: usize = 1024;
/// Receive/send buffer the relay asks for (SO_*BUFFORCE as root), so that its loss is not
/// a matter of default buffer sizes.
const SOCKET_BUFFER: i32 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    Sendmmsg,
    Sendto,
}

impl SendMode {
    pub fn parse(s: &str) -> Option<SendMode> {
        match s {
            "sendmmsg" => Some(SendMode::Sendmmsg),
            "sendto" => Some(SendMode::Sendto),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SendMode::Sendmmsg => "sendmmsg",
            SendMode::Sendto => "sendto",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("relay protocol: {0}")]
    Protocol(String),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RelayStats {
    pub received: u64,
    pub copies: u64,
    pub send_errors: u64,
}

/// The running relay process; killed on drop if not finished.
pub struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
}

impl Relay {
    /// Start the relay under `wrapper` (e.g. `ip netns exec NS taskset -c 1`), bound to
    /// `bind_ip`, relaying each room's publisher to its subscribers.
    pub fn start(
        wrapper: &[String],
        bind_ip: &str,
        send: SendMode,
        rooms: &[(SocketAddr, Vec<SocketAddr>)],
    ) -> Result<Relay, RelayError> {
        // Resolved here: inside the wrapper /proc/self/exe would be the wrapper itself.
        let exe = std::env::current_exe()?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = cmd
            .args([
                CHILD_FLAG,
                "--relay-send",
                send.name(),
                "--relay-bind",
                bind_ip,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| RelayError::Protocol("no stdin".into()))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| RelayError::Protocol("no stdout".into()))?,
        );
        let mut config = String::new();
        for (publisher, subs) in rooms {
            config.push_str(&format!("room {publisher}"));
            for s in subs {
                config.push_str(&format!(" {s}"));
            }
            config.push('\n');
        }
        config.push_str("go\n");
        stdin.write_all(config.as_bytes())?;
        let mut relay = Relay {
            child,
            stdin: Some(stdin),
            stdout,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = relay.read_line()?;
        relay.addr = line
            .strip_prefix("relay-ready ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| RelayError::Protocol(format!("expected relay-ready, got {line:?}")))?;
        Ok(relay)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read_line(&mut self) -> Result<String, RelayError> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(RelayError::Protocol("relay exited".into()));
        }
        Ok(line)
    }

    /// Close the relay's stdin, collect its counters and wait for it to exit.
    pub fn finish(mut self) -> Result<RelayStats, RelayError> {
        self.stdin.take();
        let line = self.read_line()?;
        let rest = line
            .strip_prefix("relay-done ")
            .ok_or_else(|| RelayError::Protocol(format!("expected relay-done, got {line:?}")))?;
        let field = |k: &str| -> Result<u64, RelayError> {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
                .ok_or_else(|| RelayError::Protocol(format!("{k} missing in {line:?}")))
        };
        let stats = RelayStats {
            received: field("received")?,
            copies: field("copies")?,
            send_errors: field("send_errors")?,
        };
        self.child.wait()?;
        Ok(stats)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn v4(addr: SocketAddr) -> Result<SocketAddrV4, RelayError> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(RelayError::Protocol(format!("IPv6 address {a}"))),
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn force_buffer(fd: i32, opt: libc::c_int) {
    let size = SOCKET_BUFFER;
    // SAFETY: setsockopt with a valid int option value; failure (not root) is harmless,
    // the default size stays.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// The relay process's main (the bench binary's `main` calls it on [`CHILD_FLAG`]).
pub fn child_main(args: &[String]) -> Result<(), RelayError> {
    let send = arg(args, "--relay-send")
        .and_then(SendMode::parse)
        .ok_or_else(|| RelayError::Protocol("--relay-send sendmmsg|sendto".into()))?;
    let bind: Ipv4Addr = arg(args, "--relay-bind")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| RelayError::Protocol("--relay-bind IPv4".into()))?;
    let mut lines = std::io::stdin().lock().lines();
    let mut by_publisher: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut rooms: Vec<Vec<libc::sockaddr_in>> = Vec::new();
    for line in lines.by_ref() {
        let line = line?;
        if line == "go" {
            break;
        }
        let mut f = line.split_whitespace();
        if f.next() != Some("room") {
            return Err(RelayError::Protocol(format!("bad config line {line:?}")));
        }
        let parse = |s: &str| -> Result<SocketAddrV4, RelayError> {
            v4(s.parse()
                .map_err(|_| RelayError::Protocol(format!("bad address {s:?}")))?)
        };
        let publisher = parse(
            f.next()
                .ok_or_else(|| RelayError::Protocol("room without publisher".into()))?,
        )?;
        let subs = f
            .map(|s| parse(s).map(sockaddr))
            .collect::<Result<Vec<_>, _>>()?;
        by_publisher.insert(publisher, rooms.len());
        rooms.push(subs);
    }
    drop(lines);
    let socket = UdpSocket::bind((bind, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let fd = socket.as_raw_fd();
    force_buffer(fd, libc::SO_RCVBUFFORCE);
    force_buffer(fd, libc::SO_SNDBUFFORCE);
    println!("relay-ready {}", socket.local_addr()?);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Stdin closing is the parent's "stop".
        std::thread::spawn(move || {
            for _ in std::io::stdin().lock().lines() {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    let stats = relay_loop(fd, send, &by_publisher, &rooms, &stop);
    println!(
        "relay-done received={} copies={} send_errors={}",
        stats.received, stats.copies, stats.send_errors
    );
    Ok(())
}

fn relay_loop(
    fd: i32,
    send: SendMode,
    by_publisher: &HashMap<SocketAddrV4, usize>,
    rooms: &[Vec<libc::sockaddr_in>],
    stop: &AtomicBool,
) -> RelayStats {
    let mut stats = RelayStats::default();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    // SAFETY (all zeroed values below): plain C structs, zero is a valid empty value.
    let mut names: Vec<libc::sockaddr_in> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut in_iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    let mut in_msgs: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for ((m, iov), name) in in_msgs
        .iter_mut()
        .zip(in_iovs.iter_mut())
        .zip(names.iter_mut())
    {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
    }
    // Outgoing: one iovec per received datagram (its real length), one mmsghdr per copy.
    let mut out_iovs: Vec<libc::iovec> = in_iovs.clone();
    let mut out_msgs: Vec<libc::mmsghdr> = Vec::new();
    let mut room_of = [usize::MAX; BATCH];
    let addr_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    while !stop.load(Ordering::Relaxed) {
        for m in in_msgs.iter_mut() {
            m.msg_hdr.msg_namelen = addr_len;
        }
        // SAFETY: in_msgs, names, in_iovs and bufs stay alive and unmoved for the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                in_msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            continue;
        }
        let got = got as usize;
        stats.received += got as u64;
        for i in 0..got {
            let n = names[i];
            let from = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(n.sin_addr.s_addr)),
                u16::from_be(n.sin_port),
            );
            room_of[i] = by_publisher.get(&from).copied().unwrap_or(usize::MAX);
            out_iovs[i].iov_len = (in_msgs[i].msg_len as usize).min(BUF);
        }
        match send {
            SendMode::Sendto => {
                for i in 0..got {
                    let Some(subs) = rooms.get(room_of[i]) else {
                        continue;
                    };
                    for sub in subs {
                        // SAFETY: the buffer holds iov_len received bytes; sub is a valid
                        // sockaddr_in.
                        let r = unsafe {
                            libc::sendto(
                                fd,
                                out_iovs[i].iov_base,
                                out_iovs[i].iov_len,
                                0,
                                (sub as *const libc::sockaddr_in).cast(),
                                addr_len,
                            )
                        };
                        if r < 0 {
                            stats.send_errors += 1;
                        } else {
                            stats.copies += 1;
                        }
                    }
                }
            }
            SendMode::Sendmmsg => {
                out_msgs.clear();
                for i in 0..got {
                    let Some(subs) = rooms.get(room_of[i]) else {
                        continue;
                    };
                    for sub in subs {
                        // SAFETY: plain C struct, filled in below.
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_name = (sub as *const libc::sockaddr_in).cast_mut().cast();
                        m.msg_hdr.msg_namelen = addr_len;
                        m.msg_hdr.msg_iov = &mut out_iovs[i];
                        m.msg_hdr.msg_iovlen = 1;
                        out_msgs.push(m);
                    }
                }
                let mut off = 0;
                while off < out_msgs.len() {
                    let chunk = (out_msgs.len() - off).min(MAX_MMSG);
                    // SAFETY: out_msgs[off..off + chunk] point at live addresses and iovecs.
                    let r = unsafe {
                        libc::sendmmsg(fd, out_msgs.as_mut_ptr().add(off), chunk as u32, 0)
                    };
                    if r <= 0 {
                        // The first message failed: count it and go on with the next.
                        stats.send_errors += 1;
                        off += 1;
                    } else {
                        stats.copies += r as u64;
                        off += r as usize;
                    }
                }
            }
        }
    }
    stats
}
