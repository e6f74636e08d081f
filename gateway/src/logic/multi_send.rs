//! Datagrams to many clients in one `sendmmsg` on the group socket.
//!
//! Fan-out sends one datagram per subscriber, each to another address, so GSO cannot
//! merge them; `sendmmsg` still pays the syscall entry, the file lookup and the socket
//! lock once per batch instead of once per datagram. The relay baseline of
//! `cargo xtask bench media` shows what that is worth on the machine at hand.
use std::{
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd,
};

use socket2::SockAddr;

/// Datagrams per `sendmmsg` (the kernel's UIO_MAXIOV is far above).
pub const MAX_BATCH: usize = 64;

/// Room for one cmsg carrying an `in6_pktinfo` (the larger of the two), 8-byte aligned.
type CmsgBuf = [u64; 6];

/// One datagram of a batch.
#[derive(Clone)]
pub struct Item<'a> {
    pub to: SocketAddr,
    /// Leave from this address (IP_PKTINFO / IPV6_PKTINFO).
    pub src_ip: Option<IpAddr>,
    pub contents: &'a [u8],
}

/// Per-datagram storage that must outlive the call, kept between calls so a warm
/// thread sends without allocating.
#[derive(Default)]
pub struct MultiSend {
    addrs: Vec<SockAddr>,
    cmsgs: Vec<CmsgBuf>,
}

impl MultiSend {
    /// Send `n` datagrams (at most [`MAX_BATCH`]), `item(i)` each, on `socket`, an IPv6
    /// (dual-stack) socket when `ipv6` is set. `result(i, errno)` is called for every
    /// datagram: `None` when sent.
    pub fn send<'a>(
        &mut self,
        socket: &impl AsRawFd,
        ipv6: bool,
        n: usize,
        item: impl Fn(usize) -> Item<'a>,
        mut result: impl FnMut(usize, Option<i32>),
    ) {
        let n = n.min(MAX_BATCH);
        self.addrs.clear();
        self.cmsgs.clear();
        for i in 0..n {
            self.addrs
                .push(SockAddr::from(socket_addr_for(item(i).to, ipv6)));
            self.cmsgs.push([0; 6]);
        }
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let item = item(i);
            iovs[i] = libc::iovec {
                iov_base: item.contents.as_ptr() as *mut libc::c_void,
                iov_len: item.contents.len(),
            };
            let controllen = write_pktinfo(&mut self.cmsgs[i], item.src_ip, ipv6);
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if controllen > 0 {
                h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                h.msg_controllen = controllen;
            }
        }
        let fd = socket.as_raw_fd();
        let mut at = 0;
        while at < n {
            // SAFETY: `hdrs[at..n]` point into `iovs`, `self.addrs`, `self.cmsgs` and the
            // items' contents, all alive and unmoved for the duration of the call.
            let sent =
                unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), (n - at) as libc::c_uint, 0) };
            if sent < 0 {
                let errno = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                if errno == libc::EINTR {
                    continue;
                }
                // The datagram at `at` failed; the kernel sent none of the rest. Go on
                // with the next one, so one bad destination costs only its datagram.
                result(at, Some(errno));
                at += 1;
                continue;
            }
            for i in at..at + sent as usize {
                result(i, None);
            }
            at += sent as usize;
        }
    }
}

/// A dual-stack socket needs IPv4 destinations v4-mapped; an IPv4 socket the reverse.
fn socket_addr_for(to: SocketAddr, ipv6: bool) -> SocketAddr {
    match (to, ipv6) {
        (SocketAddr::V4(v4), true) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V6(v6), false) => SocketAddr::new(v6.ip().to_canonical(), v6.port()),
        (addr, _) => addr,
    }
}

/// Write the source-address cmsg into `buf`; returns its length (0: none).
fn write_pktinfo(buf: &mut CmsgBuf, src: Option<IpAddr>, ipv6: bool) -> usize {
    let Some(src) = src else { return 0 };
    let hdr = buf.as_mut_ptr().cast::<libc::cmsghdr>();
    if ipv6 {
        let addr = match src {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: addr.octets(),
            },
            ipi6_ifindex: 0,
        };
        // SAFETY: `buf` is 48 bytes, 8-byte aligned: room for CMSG_SPACE(20) = 40.
        unsafe {
            (*hdr).cmsg_level = libc::IPPROTO_IPV6;
            (*hdr).cmsg_type = libc::IPV6_PKTINFO;
            (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<libc::in6_pktinfo>(), info);
            libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
        }
    } else {
        let IpAddr::V4(v4) = src.to_canonical() else {
            return 0;
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // SAFETY: `buf` is 48 bytes, 8-byte aligned: room for CMSG_SPACE(12) = 32.
        unsafe {
            (*hdr).cmsg_level = libc::IPPROTO_IP;
            (*hdr).cmsg_type = libc::IP_PKTINFO;
            (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<libc::in_pktinfo>(), info);
            libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::UdpSocket, time::Duration};

    fn recv_all(s: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        (0..n)
            .map(|_| {
                let (len, from) = s.recv_from(&mut buf).expect("datagram");
                (buf[..len].to_vec(), from)
            })
            .collect()
    }

    #[test]
    fn one_call_reaches_many_clients_from_the_requested_source() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let payloads: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 10 + i as usize]).collect();
        let items: Vec<Item> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Item {
                to: if i % 2 == 0 {
                    a.local_addr().unwrap()
                } else {
                    b.local_addr().unwrap()
                },
                src_ip: Some("127.0.0.3".parse().unwrap()),
                contents: p,
            })
            .collect();
        let mut sent = Vec::new();
        MultiSend::default().send(
            &server,
            false,
            items.len(),
            |i| items[i].clone(),
            |i, e| sent.push((i, e)),
        );
        assert_eq!(sent, (0..6).map(|i| (i, None)).collect::<Vec<_>>());
        let from_a = recv_all(&a, 3);
        let from_b = recv_all(&b, 3);
        for (k, (data, from)) in from_a.iter().chain(&from_b).enumerate() {
            let i = if k < 3 { 2 * k } else { 2 * (k - 3) + 1 };
            assert_eq!(data, &payloads[i], "datagram {i} intact and in order");
            assert_eq!(
                *from,
                SocketAddr::from(([127, 0, 0, 3], port)),
                "left from the IP_PKTINFO source"
            );
        }
    }

    #[test]
    fn a_refused_datagram_costs_only_itself() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = vec![0u8; 70_000];
        let small = [1u8; 8];
        let items = [
            Item {
                to: a.local_addr().unwrap(),
                src_ip: None,
                contents: &small,
            },
            Item {
                to: a.local_addr().unwrap(),
                src_ip: None,
                contents: &big,
            },
            Item {
                to: a.local_addr().unwrap(),
                src_ip: None,
                contents: &small,
            },
        ];
        let mut errors = Vec::new();
        MultiSend::default().send(
            &server,
            false,
            3,
            |i| items[i].clone(),
            |i, e| errors.push((i, e)),
        );
        assert_eq!(errors[0], (0, None));
        assert_eq!(errors[1], (1, Some(libc::EMSGSIZE)));
        assert_eq!(errors[2], (2, None));
        assert_eq!(recv_all(&a, 2).len(), 2);
    }

    #[test]
    fn a_dual_stack_socket_reaches_ipv4_clients() {
        let server = std::net::UdpSocket::bind("[::]:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let items = [Item {
            to: a.local_addr().unwrap(),
            src_ip: Some("127.0.0.1".parse().unwrap()),
            contents: b"hello",
        }];
        let mut r = Vec::new();
        MultiSend::default().send(
            &server,
            true,
            1,
            |i| items[i].clone(),
            |i, e| r.push((i, e)),
        );
        assert_eq!(r, vec![(0, None)]);
        assert_eq!(recv_all(&a, 1)[0].0, b"hello");
    }
}
