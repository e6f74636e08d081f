//! Logic threads: one event loop per core, each owning its sockets, rooms and sessions.
//!
//! Nothing here is shared with another thread except the command channel (control
//! plane -> thread) and the thread's own counters (thread -> control plane, read-only).
//! In eBPF mode a datagram is only ever touched by the thread the kernel chose.
//!
//! The thread is split as quinn splits an endpoint:
//! - [`shell`]: mio, the sockets ([`sockets`]), the queues and the clock; it feeds the core
//!   and carries out its actions ([`pinning`]: flow map entries or connected sockets).
//! - [`core`]: [`ThreadCore`], sans-IO: `handle_datagram`/`handle_command`/`handle_timeout`
//!   in, `poll_transmit`/`poll_action`/`poll_timeout` out.
//! - [`table`]: sessions and rooms in slabs behind integer handles, with one index.
//! - [`stun`]: where a Binding Request goes; [`admission`]: limits and negotiation;
//!   [`stats`]: the fold of the cores' counters into the exported ones.
mod admission;
mod api;
mod core;
mod multi_send;
mod pinning;
mod reply_limit;
mod session;
mod shell;
mod sockets;
mod stats;
mod stun;
mod table;
#[cfg(test)]
mod tests;
mod transmit;

pub use api::{
    Command, CreateRefused, Limits, MediaCreated, ParticipantCreated, ParticipantView, RoomView,
    SendError, ThreadHandle,
};
pub use core::ThreadCore;
pub use shell::{spawn_all, ThreadSetup};
pub use stats::STATE_NAMES;
