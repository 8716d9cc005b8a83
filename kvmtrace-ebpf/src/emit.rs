//! The one record every program writes to userspace (`kvmtrace_common::Event`).

use crate::filter::Pkt;
use crate::{count, Cur, CUR, EVENTS};
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use kvmtrace_common::{Event, HookKind, CNT_EVENTS, CNT_LOST};

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
    let ev = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb,
        location: x.location,
        hook: hook as u8,
        dir,
        flags,
        nf_hook: x.nf_hook,
        ifindex: at.ifindex,
        ifname: at.ifname,
        netns: at.netns,
        reason: x.reason,
        stack_id: x.stack_id,
        len: at.len,
        saddr: p.saddr,
        daddr: p.daddr,
        gw: [0; 4],
        inner_daddr: p.inner_daddr,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        icmp_type: p.icmp_type,
        icmp_code: p.icmp_code,
        ttl: p.ttl,
        ip_id: p.ip_id,
        _pad0: 0,
        smac: [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]],
        dmac: [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]],
        cpu: unsafe { bpf_get_smp_processor_id() },
        tcp_seq: p.tcp_seq,
        mark: 0,
        table: 0,
        route_err: 0,
        fib_ret: 0,
        iif: 0,
        _pad1: 0,
    };
    entry.write(ev);
    entry.submit(0);
    count(CNT_EVENTS);
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
                src: [0; 4],
                dst: [0; 4],
            },
        };
        // SAFETY: per-CPU slot.
        unsafe { *slot = v };
    }
}
