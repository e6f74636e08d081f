//! Send failures by cause: a bounded set of metric labels for the errnos a UDP send can
//! return, so that "the send buffer was full" is told apart from "no route".
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendErrno {
    /// EAGAIN/EWOULDBLOCK: the socket's send buffer is full.
    WouldBlock,
    /// ENOBUFS: the device or qdisc queue is full.
    NoBufs,
    /// EPERM/EACCES: a firewall rule refused the packet.
    Denied,
    /// ECONNREFUSED: an earlier datagram drew an ICMP port unreachable.
    ConnRefused,
    /// EHOSTUNREACH/ENETUNREACH: no route to the client.
    Unreachable,
    /// EMSGSIZE: larger than the path MTU allows.
    MsgSize,
    Other,
}

impl SendErrno {
    pub const ALL: [SendErrno; 7] = [
        SendErrno::WouldBlock,
        SendErrno::NoBufs,
        SendErrno::Denied,
        SendErrno::ConnRefused,
        SendErrno::Unreachable,
        SendErrno::MsgSize,
        SendErrno::Other,
    ];

    pub fn of(e: &io::Error) -> SendErrno {
        match e.raw_os_error() {
            Some(libc::EAGAIN) => SendErrno::WouldBlock,
            Some(libc::ENOBUFS) => SendErrno::NoBufs,
            Some(libc::EPERM | libc::EACCES) => SendErrno::Denied,
            Some(libc::ECONNREFUSED) => SendErrno::ConnRefused,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => SendErrno::Unreachable,
            Some(libc::EMSGSIZE) => SendErrno::MsgSize,
            _ if e.kind() == io::ErrorKind::WouldBlock => SendErrno::WouldBlock,
            _ => SendErrno::Other,
        }
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            SendErrno::WouldBlock => "eagain",
            SendErrno::NoBufs => "enobufs",
            SendErrno::Denied => "eperm",
            SendErrno::ConnRefused => "econnrefused",
            SendErrno::Unreachable => "ehostunreach",
            SendErrno::MsgSize => "emsgsize",
            SendErrno::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_bounded_labels() {
        let of = |n| SendErrno::of(&io::Error::from_raw_os_error(n)).name();
        assert_eq!(of(libc::EAGAIN), "eagain");
        assert_eq!(of(libc::ENOBUFS), "enobufs");
        assert_eq!(of(libc::EACCES), "eperm");
        assert_eq!(of(libc::ENETUNREACH), "ehostunreach");
        assert_eq!(of(libc::EIO), "other");
        assert_eq!(
            SendErrno::of(&io::Error::from(io::ErrorKind::NotConnected)).name(),
            "other"
        );
    }
}
