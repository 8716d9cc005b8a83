//! Route lookups, two ways:
//! - path hook set: [`route_lookup`] asks the kernel's FIB (`bpf_fib_lookup`, policy rules
//!   included) from a path device's TC ingress, for a followed packet only: other traffic
//!   pays nothing for it;
//! - full hook set: the classic tracepoint `fib:fib_table_lookup`
//!   (include/trace/events/fib.h), which runs for every lookup on the host. Field offsets come
//!   from the tracepoint's format file (the `OFF_FIB_*` constants). The lookup has no skb: it belongs
//!   to the followed skb this CPU is processing (`CUR`), if any.

use crate::emit::{set, write};
use crate::filter::{a4, in_dest, is_guest, nat_origin, origin_of, Addr, Pkt};
use crate::{config, off, rd, CUR, CUR_WINDOW_NS, ROUTED};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_UNREACHABLE, BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::{TcContext, TracePointContext},
    EbpfContext as _,
};
use kvmtrace_common::{
    Config, HookKind, DIR_REPLY, DIR_REQUEST, EV_FLAG_ROUTE_HELPER, FAMILY_V4, FAMILY_V6,
};

/// An address as `bpf_fib_lookup`'s four 32-bit words (the same bytes).
#[inline(always)]
fn words(a: &Addr) -> [u32; 4] {
    [
        a[0] as u32,
        (a[0] >> 32) as u32,
        a[1] as u32,
        (a[1] >> 32) as u32,
    ]
}

/// The address in `bpf_fib_lookup`'s four 32-bit words.
#[inline(always)]
fn unwords(w: [u32; 4]) -> Addr {
    [
        w[0] as u64 | ((w[1] as u64) << 32),
        w[2] as u64 | ((w[3] as u64) << 32),
    ]
}

/// `BPF_FIB_LOOKUP_MARK` (Linux 6.10): the lookup uses `mark` (the skb's, for fwmark rules).
const BPF_FIB_LOOKUP_MARK: u32 = 1 << 5;
/// `PACKET_HOST`: the frame is addressed to this device; anything else is not routed.
const PACKET_HOST: u32 = 0;

/// The route the kernel will choose for a followed packet just received on a path device
/// (before PREROUTING: a reply not yet de-NATed is looked up with its guest-side address, as
/// the kernel will after conntrack). Emitted as a `Fib` event with `EV_FLAG_ROUTE_HELPER`:
/// the error as the FIB would report it (`-EINVAL` blackhole, `-EHOSTUNREACH` unreachable,
/// `-EACCES` prohibit; "not forwarded" — local or no route — and "forwarding disabled" are
/// told apart by userspace), the output device and the gateway.
#[inline(always)]
pub fn route_lookup(ctx: &TcContext, c: &Config, skb: u64, p: &Pkt, dir: u8) {
    // SAFETY: ctx.skb.skb is the program's __sk_buff; these fields are readable in TC.
    let (pkt_type, mark, ifindex) = unsafe {
        let s = ctx.skb.skb;
        ((*s).pkt_type, (*s).mark, (*s).ifindex)
    };
    if pkt_type != PACKET_HOST {
        return; // bridged past this device, or not for this host: no route lookup follows
    }
    let (mut dst, mut sport, mut dport) = (p.daddr, p.sport, p.dport);
    if dir == DIR_REPLY && !is_guest(p.family, &p.daddr) {
        let Some(o) = nat_origin(p) else {
            return;
        };
        dst = o.guest;
        if p.is_icmp() {
            sport = o.guest_port;
        } else {
            dport = o.guest_port;
        }
    }
    let _ = ROUTED.insert(&skb, &((ifindex as u64) | ((mark as u64) << 32)), 0);
    let q = Lookup {
        src: p.saddr,
        dst,
        sport,
        dport,
        iif: ifindex,
        mark,
    };
    lookup_and_emit(ctx, c, skb, p, dir, &q);
}

/// A followed packet leaving a path device with a mark it did not have when it was received
/// (set in PREROUTING, e.g. by a mangle rule for policy routing): its route is looked up again
/// with the mark, from the device it came in on, and the later lookup is the one that counts.
/// (A packet that never leaves — queued for a neighbour, dropped — keeps the first lookup;
/// bridged traffic's PREROUTING runs before the bridge device's ingress, so its mark is
/// already seen there.)
#[inline(always)]
pub fn route_recheck(ctx: &TcContext, c: &Config, skb: u64, p: &Pkt, dir: u8) {
    // SAFETY: ctx.skb.skb is the program's __sk_buff; `mark` is readable in TC.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark == 0 {
        return;
    }
    // SAFETY: read-only lookup.
    let Some(r) = (unsafe { ROUTED.get(&skb) }).copied() else {
        return; // not routed by this host after a path device (bridged, or seen nowhere)
    };
    let (iif, mark_then) = (r as u32, (r >> 32) as u32);
    if mark == mark_then {
        return; // the lookup at the receive had this mark already
    }
    let (mut src, mut sport) = (p.saddr, p.sport);
    if dir == DIR_REQUEST {
        // After SNAT: the route was chosen for the guest's own source.
        if let Some(o) = origin_of(skb, p.ip_id, p.family) {
            src = o.guest;
            sport = o.guest_port;
        }
    }
    let q = Lookup {
        src,
        dst: p.daddr,
        sport,
        dport: p.dport,
        iif,
        mark,
    };
    lookup_and_emit(ctx, c, skb, p, dir, &q);
}

/// `struct bpf_fib_lookup`, 8-aligned so that it can be zeroed by words.
#[repr(C, align(8))]
struct Aligned(FibParams);

const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

/// What one route lookup asks.
struct Lookup {
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    iif: u32,
    mark: u32,
}

#[inline(always)]
fn lookup_and_emit(ctx: &TcContext, c: &Config, skb: u64, p: &Pkt, dir: u8, q: &Lookup) {
    let (dst, sport, dport, ifindex, mark) = (q.dst, q.sport, q.dport, q.iif, q.mark);
    let ports = p.proto == 6 || p.proto == 17;
    let v6 = crate::follows(kvmtrace_common::FOLLOW_V6) && p.family == FAMILY_V6;
    // SAFETY: a plain C struct of integers and unions of integers; all-zero is valid.
    let mut fa = core::mem::MaybeUninit::<Aligned>::uninit();
    // SAFETY: 64 bytes of an 8-aligned buffer zeroed word by word (`mem::zeroed` would be a
    // `memset` call), then used as the plain C struct of integers it is.
    let f: &mut FibParams = unsafe {
        crate::filter::zero_words::<8>(fa.as_mut_ptr() as *mut u64);
        &mut (*fa.as_mut_ptr()).0
    };
    let set = |f: &mut FibParams| {
        f.family = if v6 { 10 } else { 2 }; // AF_INET6 / AF_INET
        f.l4_protocol = p.proto;
        if ports {
            f.sport = sport.to_be();
            f.dport = dport.to_be();
        }
        f.ifindex = ifindex;
        if v6 {
            f.__bindgen_anon_3.ipv6_src = words(&q.src);
            f.__bindgen_anon_4.ipv6_dst = words(&dst);
        } else {
            // The first 4 bytes of the address: the low half of its first word.
            f.__bindgen_anon_3.ipv4_src = q.src[0] as u32;
            f.__bindgen_anon_4.ipv4_dst = dst[0] as u32;
        }
    };
    set(f);
    // `mark` shares its bytes with the output MACs (struct bpf_fib_lookup, Linux 6.10).
    f.smac[..4].copy_from_slice(&mark.to_ne_bytes());
    let plen = core::mem::size_of::<FibParams>() as i32;
    let params = f as *mut FibParams;
    // SAFETY: helper call with a valid context and a stack buffer of `plen` bytes.
    let mut rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            plen,
            BPF_FIB_LOOKUP_SKIP_NEIGH | BPF_FIB_LOOKUP_MARK,
        )
    };
    if rc < 0 {
        // An older kernel without BPF_FIB_LOOKUP_MARK: without the mark.
        for b in f.smac.iter_mut() {
            // SAFETY: a byte of the stack struct (no `memset` for the compiler to make).
            unsafe { core::ptr::write_volatile(b, 0) };
        }
        set(f);
        // SAFETY: as above.
        rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), params, plen, BPF_FIB_LOOKUP_SKIP_NEIGH) };
        if rc < 0 {
            // Before 6.3 there is no BPF_FIB_LOOKUP_SKIP_NEIGH either: a plain lookup, which
            // also asks the neighbour table (NO_NEIGH still names the device and gateway).
            set(f);
            // SAFETY: as above.
            rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), params, plen, 0) };
            if rc < 0 {
                return;
            }
        }
    }
    let err: i32 = match rc as u32 {
        BPF_FIB_LKUP_RET_BLACKHOLE => -22,
        BPF_FIB_LKUP_RET_UNREACHABLE => -113,
        BPF_FIB_LKUP_RET_PROHIBIT => -13,
        _ => 0,
    };
    // SAFETY: unions of plain integers written by the helper.
    let out_dst = if v6 {
        unwords(unsafe { f.__bindgen_anon_4.ipv6_dst })
    } else {
        a4(unsafe { f.__bindgen_anon_4.ipv4_dst }.to_ne_bytes())
    };
    // A route was found (success, or too big for its device: the kernel's own check says so
    // later, with a drop reason); for the other codes `ifindex` is still the input device.
    let found = rc == 0 || rc as u32 == BPF_FIB_LKUP_RET_FRAG_NEEDED;
    let gw = if found && out_dst != dst {
        out_dst
    } else {
        [0; 2]
    };
    // SAFETY: a helper call without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY (the stores in `fill`): `e` points to the reserved event, initialised by `write`.
    write(ts_ns, skb, HookKind::Fib, dir, |e| unsafe {
        set!(e, flags, EV_FLAG_ROUTE_HELPER);
        set!(e, ifindex, if found { f.ifindex } else { 0 });
        set!(e, netns, c.filter.netns);
        crate::emit::put16(&raw mut (*e).saddr, q.src);
        crate::emit::put16(&raw mut (*e).daddr, dst);
        crate::emit::put16(&raw mut (*e).gw, gw);
        set!(e, sport, if p.is_icmp() { 0 } else { sport });
        set!(e, dport, if p.is_icmp() { 0 } else { dport });
        set!(e, proto, p.proto);
        set!(e, family, p.family);
        set!(e, mark, mark);
        set!(e, route_err, err);
        set!(e, fib_ret, rc as u32);
        set!(e, iif, ifindex);
    });
}

const UNSET: u32 = u32::MAX;
/// `RT_TABLE_LOCAL` (include/uapi/linux/rtnetlink.h).
const RT_TABLE_LOCAL: u32 = 255;

/// Where the fields of one lookup tracepoint's record are (`OFF_FIB_*` / `OFF_FIB6_*`).
struct Rec {
    tb_id: u32,
    err: u32,
    oif: u32,
    src: u32,
    dst: u32,
    gw: u32,
    name: u32,
    proto: u32,
    sport: u32,
    dport: u32,
}

#[tracepoint(category = "fib", name = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: TracePointContext) -> i32 {
    let r = Rec {
        tb_id: off!(OFF_FIB_TB_ID),
        err: off!(OFF_FIB_ERR),
        oif: off!(OFF_FIB_OIF),
        src: off!(OFF_FIB_SRC),
        dst: off!(OFF_FIB_DST),
        gw: off!(OFF_FIB_GW4),
        name: off!(OFF_FIB_NAME),
        proto: off!(OFF_FIB_PROTO),
        sport: off!(OFF_FIB_SPORT),
        dport: off!(OFF_FIB_DPORT),
    };
    traced_lookup(&ctx, FAMILY_V4, &r)
}

/// `fib6:fib6_table_lookup` (include/trace/events/fib6.h): IPv6's route lookups, full hook set.
#[tracepoint(category = "fib6", name = "fib6_table_lookup")]
pub fn fib6_table_lookup(ctx: TracePointContext) -> i32 {
    let r = Rec {
        tb_id: off!(OFF_FIB6_TB_ID),
        err: off!(OFF_FIB6_ERR),
        oif: off!(OFF_FIB6_OIF),
        src: off!(OFF_FIB6_SRC),
        dst: off!(OFF_FIB6_DST),
        gw: off!(OFF_FIB6_GW),
        name: off!(OFF_FIB6_NAME),
        proto: off!(OFF_FIB6_PROTO),
        sport: off!(OFF_FIB6_SPORT),
        dport: off!(OFF_FIB6_DPORT),
    };
    traced_lookup(&ctx, FAMILY_V6, &r)
}

/// An address of a lookup record: 4 bytes (IPv4) or 16.
#[inline(always)]
fn rec_addr(at: u64, family: u8) -> Addr {
    if family == FAMILY_V6 {
        crate::rd_words::<2>(at)
    } else {
        a4(rd(at).unwrap_or([0; 4]))
    }
}

/// A route lookup the tracepoint reported, attributed to the followed packet this CPU is
/// processing (`CUR`) when it is that packet's.
#[inline(always)]
fn traced_lookup(ctx: &TracePointContext, family: u8, r: &Rec) -> i32 {
    let cur = match CUR.get(0) {
        Some(v) if v.skb != 0 => *v,
        _ => return 0,
    };
    let Some(c) = config() else { return 0 };
    if r.dst == UNSET {
        return 0;
    }
    let rdc = |off: u32| -> u64 { ctx.as_ptr() as u64 + off as u64 };
    let src = rec_addr(rdc(r.src), family);
    let dst = rec_addr(rdc(r.dst), family);
    let dir = if in_dest(c, family, &dst) {
        DIR_REQUEST
    } else if in_dest(c, family, &src) {
        DIR_REPLY
    } else {
        return 0;
    };
    // The packet's own lookup (after de-NAT a reply's destination is the guest, no longer the
    // address it arrived with), or rp_filter's reverse one: it shares an address with the
    // packet. Any other lookup, or one long after the receive, is the host's own.
    let own = src == cur.src || src == cur.dst || dst == cur.dst || dst == cur.src;
    let now = unsafe { bpf_ktime_get_ns() };
    if !own || now.wrapping_sub(cur.ts_ns) > CUR_WINDOW_NS {
        return 0;
    }
    let tb_id: u32 = rd(rdc(r.tb_id)).unwrap_or(0);
    let err: i32 = rd(rdc(r.err)).unwrap_or(0);
    if family == FAMILY_V6 && tb_id == RT_TABLE_LOCAL && err != 0 {
        // IPv6 reports a table without a match as its null route (-EHOSTUNREACH on lo), and
        // every forwarded packet misses the local table first: not the packet's route.
        return 0;
    }
    let oif: i32 = rd(rdc(r.oif)).unwrap_or(0);
    let gw = if r.gw == UNSET {
        [0; 2]
    } else {
        rec_addr(rdc(r.gw), family)
    };
    let name: [u64; 2] = crate::rd_words(rdc(r.name));
    let proto: u8 = rd(rdc(r.proto)).unwrap_or(0);
    let sport: u16 = rd(rdc(r.sport)).unwrap_or(0);
    let dport: u16 = rd(rdc(r.dport)).unwrap_or(0);
    // SAFETY (the stores in `fill`): `e` points to the reserved event, initialised by `write`.
    write(now, cur.skb, HookKind::Fib, dir, |e| unsafe {
        set!(e, ifindex, oif as u32);
        crate::emit::put16(&raw mut (*e).ifname, name);
        set!(e, netns, c.filter.netns);
        crate::emit::put16(&raw mut (*e).saddr, src);
        crate::emit::put16(&raw mut (*e).daddr, dst);
        crate::emit::put16(&raw mut (*e).gw, gw);
        // Already host order: fib.h and fib6.h store ntohs() of the flow's ports.
        set!(e, sport, sport);
        set!(e, dport, dport);
        set!(e, proto, proto);
        set!(e, family, family);
        set!(e, table, tb_id);
        set!(e, route_err, err);
    });
    0
}
