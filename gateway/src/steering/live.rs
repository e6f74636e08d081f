//! The kernel's copy of the live server ufrags, so the program drops a Binding Request
//! that names no session without waking a logic thread (no wake-up per forged packet).
//!
//! Each logic thread mirrors its own session table's names (where `ThreadCore` inserts,
//! restarts and removes sessions: `logic/core/sessions.rs`, `logic/core/restart.rs`) through [`insert`] / [`replace`] / [`remove`], called where
//! the table changes. The map handle is process-wide, set once when eBPF steering is
//! attached; map updates are single syscalls, safe from any thread, so no thread needs a
//! handle of its own. Without eBPF steering (connected mode, unit tests of the logic
//! core) these calls do nothing.
//!
//! Names are unique across threads (a ufrag carries its room, a room has one thread), so
//! no two threads ever write one key. If the map refuses an entry (full), the filter is
//! switched off for good: a session whose name is missing would be unreachable, while
//! without the filter unknown names just reach the room's thread as before.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        OnceLock,
    },
};

use roomgate_common::{UfragKey, CONFIG_UFRAG_FILTER};

struct LiveUfrags {
    ufrags: OwnedFd,
    config: OwnedFd,
}

static LIVE: OnceLock<LiveUfrags> = OnceLock::new();
static FILTER_OFF: AtomicBool = AtomicBool::new(false);
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Start mirroring into `ufrags` and switch the program's filter on (through `config`).
/// Once per process: a second program would otherwise keep its filter off and its map
/// empty while the names went to the first one's map.
pub(super) fn install(ufrags: OwnedFd, config: OwnedFd) -> std::io::Result<()> {
    if LIVE.set(LiveUfrags { ufrags, config }).is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the live-ufrag map is already installed in this process",
        ));
    }
    let Some(live) = LIVE.get() else {
        return Ok(());
    };
    update(
        &live.config,
        &CONFIG_UFRAG_FILTER.to_ne_bytes(),
        &1u32.to_ne_bytes(),
    )
}

/// A new name of a live session.
pub fn insert(ufrag: &str) {
    let Some(live) = LIVE.get() else { return };
    if FILTER_OFF.load(Ordering::Acquire) {
        return;
    }
    let refused = match UfragKey::new(ufrag.as_bytes()) {
        Some(key) => update(&live.ufrags, &key.bytes, &1u32.to_ne_bytes()).err(),
        None => Some(std::io::Error::from_raw_os_error(libc::E2BIG)),
    };
    if let Some(e) = refused {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        // The kernel's filter goes off before the names stop being mirrored: while it is on,
        // a missing name makes its session unreachable. If switching it off fails, keep
        // inserting (and try again on the next refusal) rather than strand new sessions.
        let off = update(
            &live.config,
            &CONFIG_UFRAG_FILTER.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        );
        let was_off = off.is_ok() && FILTER_OFF.swap(true, Ordering::AcqRel);
        if !was_off {
            tracing::warn!(error = %e, switched_off = off.is_ok(), "the live-ufrag map refused a name: the kernel no longer drops Binding Requests for unknown sessions");
        }
    }
}

/// A session's names changed (ICE restart): add the new ones, drop the ones it lost.
pub fn replace<'a>(before: &[String], after: impl Iterator<Item = &'a str>) {
    let after: Vec<&str> = after.collect();
    for name in &after {
        if !before.iter().any(|b| b == name) {
            insert(name);
        }
    }
    for name in before {
        if !after.contains(&name.as_str()) {
            remove(name);
        }
    }
}

/// A name that no longer belongs to a live session.
pub fn remove(ufrag: &str) {
    let Some(live) = LIVE.get() else { return };
    let Some(key) = UfragKey::new(ufrag.as_bytes()) else {
        return;
    };
    // ENOENT: never inserted (the filter was off, or the name too long); nothing to undo.
    let _ = delete(&live.ufrags, &key.bytes);
}

/// Names the map refused since start.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` and the key/value buffers it points at outlive the call; the kernel
    // only reads them (update, delete).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn update(map: &OwnedFd, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        },
    )
}

fn delete(map: &OwnedFd, key: &[u8]) -> std::io::Result<()> {
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    bpf(
        BPF_MAP_DELETE_ELEM,
        &ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: 0,
            flags: 0,
        },
    )
}
