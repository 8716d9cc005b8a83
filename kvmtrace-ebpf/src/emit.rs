//! The one record every program writes to userspace (`kvmtrace_common::Event`).

use crate::pkt::{scratch, zero_words, Pkt};
use crate::{count, CUR, EVENTS};
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use kvmtrace_common::{Event, HookKind, CNT_EVENTS, CNT_LOST, EV_FLAG_VXLAN};

/// Writes one event field through a volatile store: plain stores of the many zero fields next
/// to each other are merged by the compiler into a `memset` call (a byte loop on BPF).
macro_rules! set {
    ($e:expr, $f:ident, $v:expr) => {
        core::ptr::write_volatile(&raw mut (*$e).$f, $v)
    };
}
pub(crate) use set;

/// Extra fields of an event that depend on the hook.
pub struct Extra {
    pub location: u64,
    pub reason: u32,
    pub stack_id: i32,
    pub nf_hook: u8,
}

pub const NO_EXTRA: Extra = Extra {
    location: 0,
    reason: 0,
    stack_id: -1,
    nf_hook: 0,
};

/// Where a packet was seen: device and namespace, and its length there.
pub struct At {
    pub ifindex: u32,
    /// Empty for TC programs: userspace names the device from its ifindex. (Words, as
    /// `filter::Addr`, so that no `memset` zeroes it.)
    pub ifname: [u64; 2],
    pub netns: u32,
    pub len: u32,
}

/// (Eight arguments: each is a separate part of the event the caller holds already; a struct
/// of them would be one more copy on the BPF stack.)
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn emit(
    hook: HookKind,
    skb: u64,
    dir: u8,
    flags: u8,
    p: &Pkt,
    at: &At,
    macs: &[u8; 12],
    x: &Extra,
) {
    // SAFETY: a helper call without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY (the stores in `fill`): `e` points to the reserved event, initialised by `write`.
    write(ts_ns, skb, hook, dir, |e| unsafe {
        set!(e, location, x.location);
        set!(e, flags, flags);
        set!(e, nf_hook, x.nf_hook);
        set!(e, ifindex, at.ifindex);
        put16(&raw mut (*e).ifname, at.ifname);
        set!(e, netns, at.netns);
        set!(e, reason, x.reason);
        set!(e, stack_id, x.stack_id);
        set!(e, len, at.len);
        put16(&raw mut (*e).saddr, p.saddr);
        put16(&raw mut (*e).daddr, p.daddr);
        put16(&raw mut (*e).inner_daddr, p.inner_daddr);
        set!(e, sport, p.sport);
        set!(e, dport, p.dport);
        set!(e, proto, p.proto);
        set!(e, icmp_type, p.icmp_type);
        set!(e, icmp_code, p.icmp_code);
        set!(e, ttl, p.ttl);
        set!(e, ip_id, p.ip_id);
        set!(e, family, p.family);
        // The frame's destination MAC comes first, then its source: `dmac` and `smac` are
        // adjacent in the event, so the 12 bytes are swapped in halves.
        let m = macs.as_ptr();
        let sm = &raw mut (*e).smac as *mut u8;
        let dm = &raw mut (*e).dmac as *mut u8;
        let mut i = 0;
        while i < 6 {
            core::ptr::write_volatile(sm.add(i), *m.add(6 + i));
            core::ptr::write_volatile(dm.add(i), *m.add(i));
            i += 1;
        }
        set!(e, tcp_seq, p.tcp_seq);
        set!(e, mtu, p.mtu);
        if flags & EV_FLAG_VXLAN != 0 {
            // Seen inside a VXLAN packet on the underlay: the VNI and outer IPv4 addresses,
            // noted in the scratch by `vxlan::*_inner` earlier in this program run (not passed
            // as an argument: the TC programs' stack has no room for them).
            if let Some(s) = scratch() {
                set!(e, vni, s.vx_vni);
                set!(e, outer_saddr, s.vx_saddr);
                set!(e, outer_daddr, s.vx_daddr);
            }
        }
    });
}

/// Writes one event to userspace, whatever the hook: reserves it in `EVENTS`, initialises it
/// ([`blank`]) with what every event has (time, skb, hook, direction, CPU), lets `fill` write
/// the hook's own fields, and submits it; counted in `CNT_EVENTS`, or in `CNT_LOST` when the
/// ring buffer is full.
#[inline(always)]
pub fn write(ts_ns: u64, skb: u64, hook: HookKind, dir: u8, fill: impl FnOnce(*mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    blank(e);
    // SAFETY: `e` points to the reserved event; every field was initialised by `blank`.
    unsafe {
        set!(e, ts_ns, ts_ns);
        set!(e, skb, skb);
        set!(e, hook, hook as u8);
        set!(e, dir, dir);
        set!(e, cpu, bpf_get_smp_processor_id());
    }
    fill(e);
    entry.submit(0);
    count(CNT_EVENTS);
}

/// Writes an address (or a device name) into a 16-byte event field with two word stores (a
/// copy of the array becomes a `memmove` call; see `filter::Addr`).
#[inline(always)]
pub fn put16(dst: *mut [u8; 16], a: [u64; 2]) {
    let w = dst as *mut u64;
    // SAFETY: 16 writable bytes at an 8-aligned offset of the event.
    unsafe {
        core::ptr::write_volatile(w, a[0]);
        core::ptr::write_volatile(w.add(1), a[1]);
    }
}

/// Initialises every field of a reserved ring-buffer event in place (its memory is not zeroed,
/// and userspace reads all of it). In place, not as a value: a 200-byte event built on the
/// stack does not fit the 512-byte BPF stack next to a parsed IPv6 packet.
#[inline(always)]
pub fn blank(e: *mut Event) {
    const _: () = assert!(core::mem::size_of::<Event>() == 25 * 8);
    zero_words::<25>(e as *mut u64);
    // SAFETY: `e` points to the reserved event.
    unsafe { (*e).stack_id = -1 };
}

/// Sets the packet whose route lookup may come next on this CPU (`None`: none).
#[inline(always)]
pub fn set_cur(cur: Option<(u64, &Pkt)>) {
    if let Some(slot) = CUR.get_ptr_mut(0) {
        // SAFETY: per-CPU slot. Field by field (a whole-struct store of zeros becomes a
        // `memset` call); readers ignore the slot while `skb` is 0.
        unsafe {
            match cur {
                Some((skb, p)) => {
                    (*slot).skb = skb;
                    (*slot).ts_ns = bpf_ktime_get_ns();
                    (*slot).src[0] = p.saddr[0];
                    (*slot).src[1] = p.saddr[1];
                    (*slot).dst[0] = p.daddr[0];
                    (*slot).dst[1] = p.daddr[1];
                }
                None => (*slot).skb = 0,
            }
        }
    }
}
