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
// The calibration build returns before the parser, which is then unused by design.
#![cfg_attr(feature = "stats-floor", allow(dead_code))]

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
        classify, room_hash, room_part_len, stun,
        ufrag::{MAX_SERVER_UFRAG_LEN, PARTICIPANT_PART_LEN},
        Counter, FlowKey, PacketClass, UfragKey, CONFIG_LEN, CONFIG_THREADS, CONFIG_UFRAG_FILTER,
        FAMILY_V4, FAMILY_V6, FLOWS_CAPACITY, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_SOCKETS,
        MAP_UFRAGS, MAX_THREADS, PROGRAM_NAME, UFRAGS_CAPACITY, USERNAME_SCAN_LEN,
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
    const _: () = assert!(same(MAP_UFRAGS, "UFRAGS"));
    const _: () = assert!(same(PROGRAM_NAME, "roomgate_steer"));

    #[map(name = "SOCKETS")]
    static SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_THREADS, 0);

    #[map(name = "FLOWS")]
    static FLOWS: HashMap<FlowKey, u32> = HashMap::with_max_entries(FLOWS_CAPACITY, 0);

    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

    /// Per-CPU working memory of the Binding Request path (see `copy_username`, `opaque`,
    /// `ufrag_is_live`).
    #[repr(C, align(8))]
    struct Scratch {
        window: [u8; USERNAME_SCAN_LEN],
        opaque: u32,
        key: UfragKey,
    }
    const KEY_WORDS: usize = MAX_SERVER_UFRAG_LEN / 8;
    const _: () = assert!(core::mem::offset_of!(Scratch, key) % 8 == 0);
    const _: () = assert!(MAX_SERVER_UFRAG_LEN % 8 == 0 && USERNAME_SCAN_LEN >= 8 * KEY_WORDS);

    #[map(name = "UFRAGS")]
    static UFRAGS: HashMap<UfragKey, u32> = HashMap::with_max_entries(UFRAGS_CAPACITY, 0);

    #[map(name = "SCRATCH")]
    static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

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
    struct KeyWords([u64; 3]);
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);

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

    /// The UDP header and the first payload byte, through the helper. Not by direct
    /// packet access: bounding a packet pointer takes a pointer comparison, which Linux
    /// 5.10's verifier refuses without CAP_PERFMON ("pointer comparison prohibited"), and
    /// eBPF mode must run with CAP_BPF and CAP_NET_ADMIN alone.
    #[inline(always)]
    fn head(ctx: &SkReuseportContext) -> Option<[u8; 9]> {
        load::<9>(ctx, 0)
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
        let Some(scratch) = copy_username(ctx, value_off) else {
            return decide(Counter::SelectError, SK_DROP);
        };
        // SAFETY: the per-CPU value stays valid for the program run and only this run on
        // this CPU touches it; `window` is not written again below.
        let window = unsafe { &(*scratch).window };
        let Some(room_len) = room_part_len(window, value_len as usize) else {
            return decide(Counter::StunMalformed, SK_DROP);
        };
        let room_len = opaque(scratch, room_len as u32) as usize;
        let Some(hash) = room_hash(window, room_len) else {
            return decide(Counter::StunMalformed, SK_DROP);
        };
        let threads = match CONFIG.get(CONFIG_THREADS) {
            Some(t) if *t > 0 => *t,
            _ => return decide(Counter::SelectError, SK_DROP),
        };
        if CONFIG.get(CONFIG_UFRAG_FILTER) == Some(&1)
            && !ufrag_is_live(scratch, room_len + PARTICIPANT_PART_LEN)
        {
            return decide(Counter::UnknownUfrag, SK_DROP);
        }
        select(ctx, hash % threads, Counter::SteeredByRoom)
    }

    /// Whether the server ufrag (the first `len` bytes of the window, 9..=40) names a live
    /// session. The key is the window read as little-endian 64-bit words with every byte
    /// from `len` on masked to zero, which is the zero-padded ufrag userspace inserts.
    #[inline(always)]
    fn ufrag_is_live(scratch: *mut Scratch, len: usize) -> bool {
        // SAFETY: `scratch` is this CPU's map value (see `copy_username`); the window
        // starts it, so it is 8-aligned, and the key is 8-aligned (asserted above).
        let (words, key) = unsafe {
            (
                core::ptr::addr_of!((*scratch).window).cast::<u64>(),
                core::ptr::addr_of_mut!((*scratch).key).cast::<u64>(),
            )
        };
        macro_rules! word {
            ($($j:literal)*) => {$(
                let kept = len.saturating_sub($j * 8);
                let mask = if kept >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (kept * 8)) - 1
                };
                // SAFETY: word $j of the 44-byte window and of the 40-byte key.
                unsafe {
                    let w = core::ptr::read_volatile(words.add($j));
                    core::ptr::write_volatile(key.add($j), u64::from_le(w) & mask);
                }
            )*};
        }
        const _: () = assert!(KEY_WORDS == 5);
        word!(0 1 2 3 4);
        // SAFETY: the key was just written in full; the value is not used.
        unsafe { UFRAGS.get(&(*scratch).key).is_some() }
    }

    /// `v` stored to and read back from memory, which the verifier tracks as an unknown
    /// value. `room_part_len` returns a different constant from each position of the ':'
    /// (36 of them); kept as constants, each would be verified through `room_hash` again,
    /// with every one of its length checks decided in advance, and Linux 5.10 without
    /// CAP_PERFMON queues a speculative path for each decided branch, past its limit of
    /// 8192 pending branches. One unknown length is verified once (`room_hash` bounds it).
    #[inline(always)]
    fn opaque(scratch: *mut Scratch, v: u32) -> u32 {
        // SAFETY: `scratch` is this CPU's map value (see `copy_username`).
        unsafe {
            let slot = core::ptr::addr_of_mut!((*scratch).opaque);
            core::ptr::write_volatile(slot, v);
            core::ptr::read_volatile(slot)
        }
    }

    /// Copy the first `USERNAME_SCAN_LEN` bytes at `value_off` into this CPU's scratch
    /// window and return the scratch; bytes past the USERNAME value are junk (or zero past the
    /// packet end) and are ignored by `room_part_len`, which is bounded by the value length.
    ///
    /// The window lives in a per-CPU map, not on the stack: scanned byte by byte at
    /// constant offsets (see `ufrag::unrolled`), a stack array would be split by LLVM
    /// into one spilled register per byte and overflow the 512-byte BPF stack, and a
    /// map value is never shared with another program run: sk_reuseport runs in the
    /// softirq receive path with preemption off, so nothing else uses this CPU's scratch
    /// meanwhile. (PREEMPT_RT kernels only disable migration there; two runs on one CPU
    /// could then interleave. Debian's and RHEL's stock kernels are not RT.)
    ///
    /// Every chunk is loaded unconditionally, with no break on the value length: a failed
    /// `bpf_skb_load_bytes` zero-fills its buffer, so the verifier sees one buffer state
    /// instead of one per possible value length. Fast path: one load of the whole window
    /// (a USERNAME is followed by at least MESSAGE-INTEGRITY, so the window normally lies
    /// inside the packet); near the end of the packet, 4-byte chunks (values are padded
    /// to 4, so a chunk that starts inside the value never passes its padding, and one
    /// that starts past the packet fails and stays zero).
    #[inline(always)]
    fn copy_username(ctx: &SkReuseportContext, value_off: u32) -> Option<*mut Scratch> {
        let scratch = SCRATCH.get_ptr_mut(0)?;
        // SAFETY: `scratch` points at this CPU's map value; no reference to it is live.
        let window = unsafe { core::ptr::addr_of_mut!((*scratch).window) };
        // SAFETY: `window` points at this CPU's USERNAME_SCAN_LEN-byte map value.
        let whole = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                value_off,
                window.cast(),
                USERNAME_SCAN_LEN as u32,
            )
        };
        if whole != 0 {
            macro_rules! chunk {
                ($($k:literal)*) => {$(
                    // SAFETY: bytes $k*4 .. $k*4+4 lie inside the 44-byte window (a
                    // failed load zero-fills them).
                    unsafe {
                        bpf_skb_load_bytes(
                            ctx.as_ptr(),
                            value_off + $k * 4,
                            window.cast::<u8>().add($k * 4).cast(),
                            4,
                        );
                    }
                )*};
            }
            chunk!(0 1 2 3 4 5 6 7 8 9 10);
        }
        Some(scratch)
    }

    /// Walk the attributes of a Binding Request; return (value offset, value length) of
    /// USERNAME.
    ///
    /// Unrolled in the source, not a loop: Linux 5.10 without CAP_PERFMON also verifies
    /// the mispredicted direction of every branch whose outcome it knows, and a loop's
    /// counter check is such a branch; past it, the walk would be verified on and on until
    /// "the sequence of 8193 jumps is too complex". Unrolled, every branch depends on the
    /// packet and nothing is decided in advance.
    #[inline(always)]
    fn find_username(ctx: &SkReuseportContext, msg_end: u32) -> Option<(u32, u32)> {
        const _: () = assert!(stun::MAX_ATTRS_WALKED == 16);
        let mut off = UDP_HEADER + stun::HEADER_LEN as u32;
        macro_rules! attribute {
            ($($n:literal)*) => {$(
                let _ = $n;
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
            )*};
        }
        attribute!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        let _ = off;
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
        // The FlowKey is assembled in place: three aligned 64-bit words zeroed with volatile
        // stores, the address loaded into bytes 4.. by the helper, then family and port
        // stored as one aligned 32-bit word. Linux 5.10 without CAP_PERFMON refuses any
        // other order it is easy to get from LLVM: zero-filling a 2-byte-aligned struct
        // becomes a memset loop over a variable stack offset, and a helper (or a second
        // store) writing into an 8-byte stack slot that already holds a stored non-zero
        // register is "attempt to corrupt spilled pointer on stack". Layout: family (u16,
        // host order), port (network order), address; the last 4 bytes are not key.
        let mut words = KeyWords([0; 3]);
        let w = words.0.as_mut_ptr();
        // SAFETY: three in-bounds, aligned stores into `words`.
        unsafe {
            core::ptr::write_volatile(w, 0);
            core::ptr::write_volatile(w.add(1), 0);
            core::ptr::write_volatile(w.add(2), 0);
        }
        // SAFETY: the helper writes addr_len (4 or 16) bytes at byte 4 of the 24-byte words.
        let rc = unsafe {
            bpf_skb_load_bytes_relative(
                ctx.as_ptr(),
                addr_off,
                w.cast::<u8>().add(4).cast(),
                addr_len,
                BPF_HDR_START_NET,
            )
        };
        if rc != 0 {
            return decide(Counter::FlowMiss, SK_DROP);
        }
        let fam = family.to_ne_bytes();
        // SAFETY: an aligned 4-byte store at the start of `words`.
        unsafe {
            core::ptr::write_volatile(
                w.cast::<u32>(),
                u32::from_ne_bytes([fam[0], fam[1], port[0], port[1]]),
            );
        }
        // SAFETY: KeyWords is 24 bytes, 8-aligned, and FlowKey is a padding-free 20-byte
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
