//! The one record every program writes to userspace (`kvmtrace_common::Event`).

use crate::filter::{scratch, Pkt};
use crate::{count, Cur, CUR, EVENTS};
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use kvmtrace_common::{Event, HookKind, CNT_EVENTS, CNT_LOST, EV_FLAG_VXLAN};

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
    /// Empty for TC programs: userspace names the device from its ifindex.
    pub ifname: [u8; 16],
    pub netns: u32,
    pub len: u32,
}

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
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    blank(e);
    // SAFETY: `e` points to the reserved event; every field was initialised by `blank`.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).skb = skb;
        (*e).location = x.location;
        (*e).hook = hook as u8;
        (*e).dir = dir;
        (*e).flags = flags;
        (*e).nf_hook = x.nf_hook;
        (*e).ifindex = at.ifindex;
        (*e).ifname = at.ifname;
        (*e).netns = at.netns;
        (*e).reason = x.reason;
        (*e).stack_id = x.stack_id;
        (*e).len = at.len;
        (*e).saddr = p.saddr;
        (*e).daddr = p.daddr;
        (*e).inner_daddr = p.inner_daddr;
        (*e).sport = p.sport;
        (*e).dport = p.dport;
        (*e).proto = p.proto;
        (*e).icmp_type = p.icmp_type;
        (*e).icmp_code = p.icmp_code;
        (*e).ttl = p.ttl;
        (*e).ip_id = p.ip_id;
        (*e).family = p.family;
        (*e).smac = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]];
        (*e).dmac = [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
        (*e).cpu = bpf_get_smp_processor_id();
        (*e).tcp_seq = p.tcp_seq;
        (*e).mtu = p.mtu;
    }
    if flags & EV_FLAG_VXLAN != 0 {
        // Seen inside a VXLAN packet on the underlay: the VNI and outer IPv4 addresses, noted
        // in the scratch by `vxlan::*_inner` earlier in this program run (not passed as an
        // argument: the TC programs' stack has no room for them).
        if let Some(s) = scratch() {
            // SAFETY: as above.
            unsafe {
                (*e).vni = s.vx_vni;
                (*e).outer_saddr = s.vx_saddr;
                (*e).outer_daddr = s.vx_daddr;
            }
        }
    }
    entry.submit(0);
    count(CNT_EVENTS);
}

/// Initialises every field of a reserved ring-buffer event in place (its memory is not zeroed,
/// and userspace reads all of it). In place, not as a value: a 200-byte event built on the
/// stack does not fit the 512-byte BPF stack next to a parsed IPv6 packet.
#[inline(always)]
pub fn blank(e: *mut Event) {
    // SAFETY: `e` points to a reserved, writable event.
    unsafe {
        (*e).ts_ns = 0;
        (*e).skb = 0;
        (*e).location = 0;
        (*e).hook = 0;
        (*e).dir = 0;
        (*e).flags = 0;
        (*e).nf_hook = 0;
        (*e).ifindex = 0;
        (*e).ifname = [0; 16];
        (*e).netns = 0;
        (*e).reason = 0;
        (*e).stack_id = -1;
        (*e).len = 0;
        (*e).saddr = [0; 16];
        (*e).daddr = [0; 16];
        (*e).gw = [0; 16];
        (*e).inner_daddr = [0; 16];
        (*e).sport = 0;
        (*e).dport = 0;
        (*e).proto = 0;
        (*e).icmp_type = 0;
        (*e).icmp_code = 0;
        (*e).ttl = 0;
        (*e).ip_id = 0;
        (*e).family = 0;
        (*e)._pad0 = 0;
        (*e).smac = [0; 6];
        (*e).dmac = [0; 6];
        (*e).cpu = 0;
        (*e).tcp_seq = 0;
        (*e).mark = 0;
        (*e).table = 0;
        (*e).route_err = 0;
        (*e).fib_ret = 0;
        (*e).iif = 0;
        (*e).vni = 0;
        (*e).outer_saddr = [0; 4];
        (*e).outer_daddr = [0; 4];
        (*e).mtu = 0;
        (*e)._pad1 = 0;
    }
}

/// Sets the packet whose route lookup may come next on this CPU (`None`: none).
#[inline(always)]
pub fn set_cur(cur: Option<(u64, &Pkt)>) {
    if let Some(slot) = CUR.get_ptr_mut(0) {
        let v = match cur {
            Some((skb, p)) => Cur {
                skb,
                ts_ns: unsafe { bpf_ktime_get_ns() },
                src: p.saddr,
                dst: p.daddr,
            },
            None => Cur {
                skb: 0,
                ts_ns: 0,
                src: [0; 16],
                dst: [0; 16],
            },
        };
        // SAFETY: per-CPU slot.
        unsafe { *slot = v };
    }
}
