//! Kernel socket buffers: sizing them for bursts, and reading what the kernel dropped.
//!
//! In eBPF mode every client of a thread shares that thread's one group socket, so its
//! receive buffer must hold a burst from all of them (a keyframe from several publishers
//! at once). The kernel default (`net.core.rmem_default`, ~208 KiB) holds about 270 small
//! datagrams. Unprivileged `SO_RCVBUF` is capped at `net.core.rmem_max`; `SO_RCVBUFFORCE`
//! (CAP_NET_ADMIN, which eBPF mode has anyway) is not.
use std::{io, os::fd::AsRawFd};

use serde::Serialize;

/// Default receive buffer request per media socket: a 2,000-datagram burst of ~1,200-byte
/// packets charges ~2.3 KiB of truesize each, ~4.6 MiB; the kernel doubles the request.
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;
/// Default send buffer request: fan-out bursts (one keyframe to every subscriber) queue
/// in the send buffer until the device takes them.
pub const DEFAULT_SEND_BUFFER: usize = 4 << 20;

/// Entries of the SO_MEMINFO array (linux/sock_diag.h); older kernels fill fewer.
const SK_MEMINFO_VARS: usize = 9;

/// Buffer sizes requested for every media socket (the group and connected sockets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    pub recv: usize,
    pub send: usize,
}

impl Default for BufferSizes {
    fn default() -> Self {
        BufferSizes {
            recv: DEFAULT_RECV_BUFFER,
            send: DEFAULT_SEND_BUFFER,
        }
    }
}

/// What one direction's buffer ended up as.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct EffectiveBuffer {
    pub requested: usize,
    /// As `getsockopt` reports it: the kernel doubles a request to cover its bookkeeping.
    pub effective: usize,
    /// Set with the `*FORCE` option, past `net.core.{r,w}mem_max`.
    pub forced: bool,
    /// Smaller than requested because the sysctl capped it and forcing was not allowed.
    pub capped: bool,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct EffectiveBuffers {
    pub recv: EffectiveBuffer,
    pub send: EffectiveBuffer,
}

impl EffectiveBuffers {
    /// The sysctls an operator must raise so that the requested sizes take effect.
    pub fn capped_sysctls(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.recv.capped {
            v.push("net.core.rmem_max");
        }
        if self.send.capped {
            v.push("net.core.wmem_max");
        }
        v
    }
}

/// Size both buffers of `socket`. Never fails: a socket with the default buffers still
/// works, and the result says what the kernel granted.
pub fn size_buffers(socket: &impl AsRawFd, want: BufferSizes) -> EffectiveBuffers {
    let fd = socket.as_raw_fd();
    EffectiveBuffers {
        recv: size_one(fd, want.recv, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        send: size_one(fd, want.send, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    }
}

fn size_one(fd: i32, want: usize, force: libc::c_int, plain: libc::c_int) -> EffectiveBuffer {
    let value = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    let forced = set_int(fd, force, value).is_ok();
    if !forced {
        // EPERM without CAP_NET_ADMIN: the plain option silently caps at the sysctl.
        let _ = set_int(fd, plain, value);
    }
    let effective = get_int(fd, plain).map_or(0, |v| usize::try_from(v).unwrap_or(0));
    EffectiveBuffer {
        requested: want,
        effective,
        forced,
        // The kernel stores twice the (possibly capped) request.
        capped: effective < want.saturating_mul(2),
    }
}

/// Datagrams the kernel dropped on this socket since it was created (`SK_MEMINFO_DROPS`:
/// receive buffer full, memory pressure, or a socket filter). A 32-bit counter that
/// wraps; callers add wrapping deltas.
pub fn receive_drops(socket: &impl AsRawFd) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call, and the
    // kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    info.get(libc::SK_MEMINFO_DROPS as usize)
        .copied()
        .ok_or_else(|| io::Error::other("SO_MEMINFO too short"))
}

/// Follows one socket's wrapping kernel drop counter and yields what is new.
#[derive(Debug, Default)]
pub struct DropTracker {
    seen: u32,
}

impl DropTracker {
    /// Datagrams dropped since the last call (0 if the socket cannot be read).
    pub fn poll(&mut self, socket: &impl AsRawFd) -> u64 {
        match receive_drops(socket) {
            Ok(now) => {
                let delta = now.wrapping_sub(self.seen);
                self.seen = now;
                u64::from(delta)
            }
            Err(_) => 0,
        }
    }
}

fn set_int(fd: i32, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: plain setsockopt with a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: i32, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int that outlives the call; `len` says its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_tiny_buffer_overflows_and_the_drops_are_read_back() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let got = size_buffers(
            &rx,
            BufferSizes {
                recv: 4096,
                send: 65536,
            },
        );
        assert!(got.recv.effective >= 4096, "{got:?}");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tracker = DropTracker::default();
        assert_eq!(tracker.poll(&rx), 0);
        let payload = [0u8; 1000];
        for _ in 0..200 {
            tx.send_to(&payload, rx.local_addr().unwrap()).unwrap();
        }
        // Nothing reads `rx`: all but the few datagrams that fit were dropped.
        let dropped = tracker.poll(&rx);
        assert!(dropped >= 150, "dropped {dropped}");
        assert_eq!(tracker.poll(&rx), 0, "deltas, not totals");
    }

    #[test]
    fn capped_names_the_sysctl() {
        let e = EffectiveBuffers {
            recv: EffectiveBuffer {
                requested: 8 << 20,
                effective: 425_984,
                forced: false,
                capped: true,
            },
            send: EffectiveBuffer {
                requested: 4 << 20,
                effective: 8 << 20,
                forced: true,
                capped: false,
            },
        };
        assert_eq!(e.capped_sysctls(), vec!["net.core.rmem_max"]);
    }
}
