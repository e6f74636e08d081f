//! Socket construction: the SO_REUSEPORT group and connected per-client sockets.
pub mod buffers;
mod errno;

use std::{
    collections::HashSet,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

pub use buffers::{BufferSizes, DropTracker, EffectiveBuffers};
pub use errno::SendErrno;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot create UDP socket {index} for {addr}: {source}")]
    Create {
        index: usize,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot bind UDP socket {index} to {addr}: {source}")]
    Bind {
        index: usize,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(
        "UDP port {port} is already used by {count} socket(s) of another process (inodes {inodes:?}); \
         roomgate would silently join their SO_REUSEPORT group. Stop the other process or pick another --udp-bind"
    )]
    PortShared {
        port: u16,
        count: usize,
        inodes: Vec<u64>,
    },
}

fn new_udp_socket(addr: SocketAddr, buffers: BufferSizes) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Before bind: a socket joins the group (and can receive) as soon as it is bound.
    buffers::size_buffers(&socket, buffers);
    // SO_REUSEADDR too, so the connected fallback's per-client sockets can bind the
    // same address:port next to the group.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Bind `threads` sockets to one address as a SO_REUSEPORT group, each with `buffers`.
/// Port 0 picks a free port for the first socket and the others follow it.
pub fn bind_group(
    addr: SocketAddr,
    threads: usize,
    buffers: BufferSizes,
) -> Result<Vec<UdpSocket>, NetError> {
    let mut sockets = Vec::with_capacity(threads);
    let mut bind_addr = addr;
    for index in 0..threads {
        let socket = new_udp_socket(bind_addr, buffers).map_err(|source| NetError::Create {
            index,
            addr: bind_addr,
            source,
        })?;
        socket
            .bind(&bind_addr.into())
            .map_err(|source| NetError::Bind {
                index,
                addr: bind_addr,
                source,
            })?;
        if index == 0 {
            if let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                bind_addr = local;
            }
        }
        sockets.push(UdpSocket::from(socket));
    }
    check_port_not_shared(bind_addr, &sockets)?;
    Ok(sockets)
}

/// A restarted or second roomgate with the same uid would silently join an existing
/// group on the same port and steal a share of its traffic. /proc/net/udp{,6} lists
/// every UDP socket of this network namespace; any socket that is not ours, on our port
/// and on an overlapping address (the same one, or a wildcard on either side) is a
/// conflict. Sockets on other addresses with the same port number are not.
fn check_port_not_shared(ours: SocketAddr, sockets: &[UdpSocket]) -> Result<(), NetError> {
    let our_inodes: HashSet<u64> = sockets
        .iter()
        .filter_map(|s| socket_inode(s.as_raw_fd()))
        .collect();
    let our_ip = ours.ip().to_canonical();
    let mut foreign = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            let Some((ip, port)) = parse_proc_addr(local) else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else {
                continue;
            };
            let overlaps = ip.is_unspecified() || our_ip.is_unspecified() || ip == our_ip;
            if port == ours.port() && overlaps && inode != 0 && !our_inodes.contains(&inode) {
                foreign.push(inode);
            }
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(NetError::PortShared {
            port: ours.port(),
            count: foreign.len(),
            inodes: foreign,
        })
    }
}

/// "0100007F:1B58" (IPv4) or 32 hex digits + ":PORT" (IPv6), as /proc/net/udp{,6} print
/// them: each 32-bit word of the address in host byte order.
fn parse_proc_addr(field: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
    };
    let ip = match addr.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(b).to_canonical()
        }
        _ => return None,
    };
    Some((ip, port))
}

fn socket_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Open a socket on the group's port, connected to one client, for the connected
/// fallback. `local` is the group's address, or for a wildcard group the address the
/// client's request arrived on. The kernel's UDP lookup scores a connected socket above the group, so
/// every later datagram of that client lands here, on the owning thread.
///
/// Between `bind` and `connect` the new socket is an unconnected member of the group
/// and the kernel's hash could hand it another client's datagram; a drop-everything
/// socket filter during that window keeps such datagrams from being misdelivered (their
/// senders retransmit), and is removed once the socket only matches its client.
pub fn open_connected(
    local: SocketAddr,
    peer: SocketAddr,
    buffers: BufferSizes,
) -> io::Result<UdpSocket> {
    const DROP_ALL: [SockFilter; 1] = [SockFilter::new(0x06 /* BPF_RET|BPF_K */, 0, 0, 0)];
    let socket = new_udp_socket(local, buffers)?;
    socket.attach_filter(&DROP_ALL)?;
    socket.bind(&local.into())?;
    socket.connect(&peer.into())?;
    socket.detach_filter()?;
    Ok(UdpSocket::from(socket))
}

/// quinn-udp turns UDP GRO on; the eBPF program would then see one packet per
/// coalesced train (DESIGN.md pitfall). Turn it off on every socket so counters count
/// datagrams and the group's settings stay uniform.
pub fn disable_gro(socket: &impl AsRawFd) {
    let off: libc::c_int = 0;
    // SAFETY: plain setsockopt with a c_int option value that outlives the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_udp_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1B58"),
            Some(("127.0.0.1".parse().unwrap(), 7000))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1B58"),
            Some(("::1".parse().unwrap(), 7000))
        );
        // v4-mapped (::ffff:127.0.0.2) compares as IPv4.
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000200007F:0050"),
            Some(("127.0.0.2".parse().unwrap(), 80))
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn a_socket_on_another_address_with_the_same_port_is_not_a_conflict() {
        let other = UdpSocket::bind("127.0.0.2:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let group = bind_group(
            SocketAddr::from(([127, 0, 0, 1], port)),
            2,
            BufferSizes::default(),
        )
        .expect("no conflict with 127.0.0.2");
        assert_eq!(group.len(), 2);
        // A wildcard bind on that port does overlap.
        drop(group);
        let err = bind_group(
            SocketAddr::from(([0, 0, 0, 0], port)),
            1,
            BufferSizes::default(),
        )
        .expect_err("overlaps 127.0.0.2");
        assert!(
            matches!(err, NetError::Bind { .. } | NetError::PortShared { .. }),
            "{err}"
        );
    }
}
