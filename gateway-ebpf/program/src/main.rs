//! roomgate's `sk_reuseport` steering program.
//!
//! Runs in the kernel's UDP lookup for every datagram to the shared port and picks the
//! socket (= logic thread) of the SO_REUSEPORT group that receives it:
//!
//! - STUN Binding Request: walk at most `MAX_ATTRS_WALKED` attributes to USERNAME, take
//!   the room part of the server ufrag, `room_hash % threads` -> that thread's socket.
//! - DTLS, RTP/RTCP and STUN that is not a Binding Request: look the source address and
//!   UDP source port up in FLOWS (pinned by the owning thread after MESSAGE-INTEGRITY
//!   verified; this program never writes FLOWS) -> that thread's socket.
//! - A Binding Request that cannot be walked (bad cookie or length, truncated, attribute
//!   past the end, more than `MAX_ATTRS_WALKED` attributes, no USERNAME, bad room part),
//!   or a STUN-range payload too short to hold a message type: `StunMalformed`, dropped.
//!   Empty payload: `Empty`; first byte outside RFC 7983's ranges: `UnknownType`.
//!
//! Miss policy: a non-request datagram from an unpinned address has no owner. Passing it
//! on to the kernel's default hash would hand it to an arbitrary thread that does not
//! own it, so it is dropped here and counted (`FlowMiss`). Likewise every selection
//! failure drops: a wrong thread is worse than a retransmission.
//!
//! Every packet bumps `Packets` and exactly one decision counter.
//!
//! On the host target this crate compiles to an empty `main` so that workspace tools
//! never need the BPF toolchain; xtask builds it for `bpfel-unknown-none`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action::SK_DROP, sk_action::SK_PASS},
        helpers::{bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
        macros::{map, sk_reuseport},
        maps::{Array, HashMap, PerCpuArray, ReusePortSockArray},
        programs::SkReuseportContext,
        EbpfContext,
    };
    use roomgate_common::{
        classify, room_hash, room_part_len, stun, Counter, FlowKey, PacketClass, CONFIG_LEN,
        CONFIG_THREADS, FAMILY_V4, FAMILY_V6, FLOWS_CAPACITY, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS,
        MAP_SOCKETS, MAX_THREADS, PROGRAM_NAME, USERNAME_SCAN_LEN,
    };

    /// `#[map(name = ...)]` takes a literal; these checks keep the literals (and the
    /// program's function name) equal to the constants userspace looks up.
    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    const _: () = assert!(same(MAP_SOCKETS, "SOCKETS"));
    const _: () = assert!(same(MAP_FLOWS, "FLOWS"));
    const _: () = assert!(same(MAP_COUNTERS, "COUNTERS"));
    const _: () = assert!(same(MAP_CONFIG, "CONFIG"));
    const _: () = assert!(same(PROGRAM_NAME, "roomgate_steer"));

    #[map(name = "SOCKETS")]
    static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_THREADS, 0);

    #[map(name = "FLOWS")]
    static FLOWS: HashMap<FlowKey, u32> = HashMap::with_max_entries(FLOWS_CAPACITY, 0);

    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

    #[map(name = "CONFIG")]
    static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_LEN, 0);

    const UDP_HEADER: u32 = 8;
    /// Ethertypes as `sk_reuseport_md.eth_protocol` holds them: network byte order.
    const ETH_P_IP: u32 = (0x0800u16).to_be() as u32;
    const ETH_P_IPV6: u32 = (0x86DDu16).to_be() as u32;

    #[inline(always)]
    fn bump(c: Counter) {
        if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
            // SAFETY: per-CPU slot, this program is the only writer on this CPU.
            unsafe { *v += 1 };
        }
    }

    #[repr(C, align(8))]
    struct KeyWords([u32; 5]);
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 5 * 4);

    #[inline(always)]
    fn load<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Option<[u8; N]> {
        // Not zero-filled first: LLVM turns that into a memset loop over a variable stack
        // offset, which the verifier only accepts with CAP_PERFMON.
        let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: the helper writes all N bytes on success (and zero-fills them on error).
        let rc =
            unsafe { bpf_skb_load_bytes(ctx.as_ptr(), offset, buf.as_mut_ptr().cast(), N as u32) };
        if rc == 0 {
            // SAFETY: written in full by the helper above.
            Some(unsafe { buf.assume_init() })
        } else {
            None
        }
    }

    #[inline(always)]
    fn decide(c: Counter, action: u32) -> u32 {
        bump(c);
        action
    }

    #[sk_reuseport]
    pub fn roomgate_steer(ctx: SkReuseportContext) -> u32 {
        bump(Counter::Packets);
        #[cfg(feature = "stats-floor")]
        return select(&ctx, 0, Counter::SteeredByFlow);
        #[cfg(not(feature = "stats-floor"))]
        steer(&ctx)
    }

    #[inline(always)]
    fn steer(ctx: &SkReuseportContext) -> u32 {
        let len = ctx.len() as u32;
        if len <= UDP_HEADER {
            return decide(Counter::Empty, SK_DROP);
        }
        #[cfg(feature = "verifier-reject")]
        {
            // Deliberately unverifiable: reads past ctx.data() with no bounds check.
            // SAFETY: never loaded successfully; the verifier refuses this program.
            let byte = unsafe { core::ptr::read_volatile((ctx.data() + 8) as *const u8) };
            if byte == 0xff {
                return decide(Counter::UnknownType, SK_DROP);
            }
        }
        let Some(head) = head(ctx) else {
            return decide(Counter::Empty, SK_DROP);
        };
        let port = [head[0], head[1]];
        match classify(head[8]) {
            PacketClass::Unknown => decide(Counter::UnknownType, SK_DROP),
            PacketClass::Stun => match stun_header(ctx, len) {
                StunKind::BindingRequest(msg_end) => by_room(ctx, msg_end),
                StunKind::Other => by_flow(ctx, port),
                StunKind::Malformed => decide(Counter::StunMalformed, SK_DROP),
            },
            PacketClass::Dtls | PacketClass::Rtp => by_flow(ctx, port),
        }
    }

    /// The UDP header and the first payload byte. Media datagrams are linear in practice,
    /// so read them by direct packet access (no helper call on the hot path); fall back
    /// to the helper when the linear area is shorter.
    #[inline(always)]
    fn head(ctx: &SkReuseportContext) -> Option<[u8; 9]> {
        let data = ctx.data();
        if data + 9 <= ctx.data_end() {
            // SAFETY: the verifier-checked bound above covers these 9 bytes.
            Some(unsafe { core::ptr::read_unaligned(data as *const [u8; 9]) })
        } else {
            load::<9>(ctx, 0)
        }
    }

    enum StunKind {
        /// Offset (from the UDP header) where the STUN message ends.
        BindingRequest(u32),
        Other,
        Malformed,
    }

    /// Classify a datagram whose first byte is in the STUN range. Only a Binding Request
    /// is walked; any other message type is owned by whoever owns the flow.
    #[inline(always)]
    fn stun_header(ctx: &SkReuseportContext, len: u32) -> StunKind {
        let Some(t) = load::<2>(ctx, UDP_HEADER) else {
            // Fewer than 2 payload bytes: the type itself is truncated.
            return StunKind::Malformed;
        };
        if u16::from_be_bytes(t) != stun::BINDING_REQUEST {
            return StunKind::Other;
        }
        if len < UDP_HEADER + stun::HEADER_LEN as u32 {
            return StunKind::Malformed;
        }
        let Some(h) = load::<8>(ctx, UDP_HEADER) else {
            return StunKind::Malformed;
        };
        let msg_len = u16::from_be_bytes([h[2], h[3]]) as u32;
        let cookie = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if cookie != stun::MAGIC_COOKIE || !msg_len.is_multiple_of(4) {
            return StunKind::Malformed;
        }
        let end = UDP_HEADER + stun::HEADER_LEN as u32 + msg_len;
        if end > len {
            return StunKind::Malformed;
        }
        StunKind::BindingRequest(end)
    }

    #[inline(always)]
    fn by_room(ctx: &SkReuseportContext, msg_end: u32) -> u32 {
        let Some((value_off, value_len)) = find_username(ctx, msg_end) else {
            return decide(Counter::StunMalformed, SK_DROP);
        };
        let prefix = copy_username(ctx, value_off);
        let Some(room_len) = room_part_len(&prefix, value_len as usize) else {
            return decide(Counter::StunMalformed, SK_DROP);
        };
        let Some(hash) = room_hash(&prefix, room_len) else {
            return decide(Counter::StunMalformed, SK_DROP);
        };
        let threads = match CONFIG.get(CONFIG_THREADS) {
            Some(t) if *t > 0 => *t,
            _ => return decide(Counter::SelectError, SK_DROP),
        };
        select(ctx, hash % threads, Counter::SteeredByRoom)
    }

    /// Copy the first `USERNAME_SCAN_LEN` bytes at `value_off` into a buffer; bytes past
    /// the USERNAME value are junk (or zero past the packet end) and are ignored by
    /// `room_part_len`, which is bounded by the value length.
    ///
    /// Every chunk is loaded unconditionally, with no break on the value length: a failed
    /// `bpf_skb_load_bytes` zero-fills its buffer, so the verifier sees one buffer state
    /// (all bytes written by a helper) instead of one per possible value length, which
    /// would multiply the cost of verifying `room_part_len` and `room_hash` by 12. Fast
    /// path: one load of the whole window (a USERNAME is followed by at least
    /// MESSAGE-INTEGRITY, so the window normally lies inside the packet); near the end of
    /// the packet, 4-byte chunks (values are padded to 4, so a chunk that starts inside
    /// the value never passes its padding, and one that starts past the packet fails and
    /// stays zero).
    #[inline(always)]
    fn copy_username(ctx: &SkReuseportContext, value_off: u32) -> [u8; USERNAME_SCAN_LEN] {
        let mut window = core::mem::MaybeUninit::<[u8; USERNAME_SCAN_LEN]>::uninit();
        // SAFETY: the helper writes all USERNAME_SCAN_LEN bytes on success and zero-fills
        // them on failure, so the buffer is initialized either way.
        let whole = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                value_off,
                window.as_mut_ptr().cast(),
                USERNAME_SCAN_LEN as u32,
            )
        };
        // SAFETY: see above.
        let mut prefix = unsafe { window.assume_init() };
        if whole != 0 {
            // Constant offsets only: a variable stack offset needs CAP_PERFMON.
            macro_rules! chunk {
                ($($k:literal)*) => {$(
                    if let Some(c) = load::<4>(ctx, value_off + $k * 4) {
                        prefix[$k * 4] = c[0];
                        prefix[$k * 4 + 1] = c[1];
                        prefix[$k * 4 + 2] = c[2];
                        prefix[$k * 4 + 3] = c[3];
                    }
                )*};
            }
            chunk!(0 1 2 3 4 5 6 7 8 9 10);
        }
        prefix
    }

    /// Walk the attributes of a Binding Request; return (value offset, value length) of USERNAME.
    #[inline(always)]
    fn find_username(ctx: &SkReuseportContext, msg_end: u32) -> Option<(u32, u32)> {
        let mut off = UDP_HEADER + stun::HEADER_LEN as u32;
        let mut n = 0u32;
        while n < stun::MAX_ATTRS_WALKED {
            if off + 4 > msg_end {
                return None;
            }
            let a = load::<4>(ctx, off)?;
            let attr_type = u16::from_be_bytes([a[0], a[1]]);
            let attr_len = u16::from_be_bytes([a[2], a[3]]) as u32;
            let value = off + 4;
            if value + attr_len > msg_end {
                return None;
            }
            if attr_type == stun::ATTR_USERNAME {
                return Some((value, attr_len));
            }
            off = value + ((attr_len + 3) & !3);
            n += 1;
        }
        None
    }

    #[inline(always)]
    fn by_flow(ctx: &SkReuseportContext, port: [u8; 2]) -> u32 {
        // eth_protocol holds the big-endian ethertype in its low 16 bits.
        let proto = ctx.eth_protocol();
        let (family, addr_len, addr_off) = if proto == ETH_P_IP {
            (FAMILY_V4, 4u32, 12u32)
        } else if proto == ETH_P_IPV6 {
            (FAMILY_V6, 16, 8)
        } else {
            return decide(Counter::FlowMiss, SK_DROP);
        };
        // The FlowKey is assembled in place as five aligned 32-bit words written with
        // volatile stores: zero-filling a 2-byte-aligned struct makes LLVM emit a memset
        // loop over a variable stack offset, which the verifier only accepts with
        // CAP_PERFMON. Layout: family (u16, host order), port (network order), address.
        let mut words = KeyWords([0; 5]);
        let w = words.0.as_mut_ptr();
        // SAFETY: five in-bounds, aligned stores into `words`.
        unsafe {
            let fam = family.to_ne_bytes();
            core::ptr::write_volatile(w, u32::from_ne_bytes([fam[0], fam[1], port[0], port[1]]));
            core::ptr::write_volatile(w.add(1), 0);
            core::ptr::write_volatile(w.add(2), 0);
            core::ptr::write_volatile(w.add(3), 0);
            core::ptr::write_volatile(w.add(4), 0);
        }
        // SAFETY: the helper writes addr_len (4 or 16) bytes at byte 4 of the 20-byte key.
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                addr_off,
                w.add(1).cast(),
                addr_len,
                BPF_HDR_START_NET,
            )
        };
        if rc != 0 {
            return decide(Counter::FlowMiss, SK_DROP);
        }
        // SAFETY: KeyWords is 20 bytes, 8-aligned, and FlowKey is a padding-free 20-byte
        // repr(C) struct with alignment 2 for which every bit pattern is valid.
        let key: &FlowKey = unsafe { &*(words.0.as_ptr() as *const FlowKey) };
        // SAFETY: the value is copied out immediately; userspace only replaces whole entries.
        match unsafe { FLOWS.get(key) } {
            Some(thread) => {
                let t = *thread;
                select(ctx, t, Counter::SteeredByFlow)
            }
            None => decide(Counter::FlowMiss, SK_DROP),
        }
    }

    #[inline(always)]
    fn select(ctx: &SkReuseportContext, thread: u32, ok: Counter) -> u32 {
        match SOCKETS.select_reuseport(ctx, thread) {
            Ok(()) => decide(ok, SK_PASS),
            Err(_) => decide(Counter::SelectError, SK_DROP),
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}
