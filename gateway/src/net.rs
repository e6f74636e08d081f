//! Socket construction: the SO_REUSEPORT group and connected per-client sockets.
use std::{
    collections::HashSet,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

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

fn new_udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
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

/// Bind `threads` sockets to one address as a SO_REUSEPORT group. Port 0 picks a free
/// port for the first socket and the others follow it.
pub fn bind_group(addr: SocketAddr, threads: usize) -> Result<Vec<UdpSocket>, NetError> {
    let mut sockets = Vec::with_capacity(threads);
    let mut bind_addr = addr;
    for index in 0..threads {
        let socket = new_udp_socket(bind_addr).map_err(|source| NetError::Create {
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
    check_port_not_shared(bind_addr.port(), &sockets)?;
    Ok(sockets)
}

/// A restarted or second roomgate with the same uid would silently join an existing
/// group on the same port and steal a share of its traffic. /proc/net/udp{,6} lists
/// every UDP socket of this network namespace; any on our port that is not ours is a
/// conflict.
fn check_port_not_shared(port: u16, ours: &[UdpSocket]) -> Result<(), NetError> {
    let our_inodes: HashSet<u64> = ours
        .iter()
        .filter_map(|s| socket_inode(s.as_raw_fd()))
        .collect();
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
            let Some(p) = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else {
                continue;
            };
            if p == port && inode != 0 && !our_inodes.contains(&inode) {
                foreign.push(inode);
            }
        }
    }
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(NetError::PortShared {
            port,
            count: foreign.len(),
            inodes: foreign,
        })
    }
}

fn socket_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Open a socket on the group's address, connected to one client, for the connected
/// fallback. The kernel's UDP lookup scores a connected socket above the group, so
/// every later datagram of that client lands here, on the owning thread.
///
/// Between `bind` and `connect` the new socket is an unconnected member of the group
/// and the kernel's hash could hand it another client's datagram; a drop-everything
/// socket filter during that window keeps such datagrams from being misdelivered (their
/// senders retransmit), and is removed once the socket only matches its client.
pub fn open_connected(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    const DROP_ALL: [SockFilter; 1] = [SockFilter::new(0x06 /* BPF_RET|BPF_K */, 0, 0, 0)];
    let socket = new_udp_socket(local)?;
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
