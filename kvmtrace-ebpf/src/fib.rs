//! Route lookups: classic tracepoint `fib:fib_table_lookup` (include/trace/events/fib.h).
//! Field offsets come from the tracepoint's format file via `Config.offsets`. The lookup has
//! no skb: it belongs to the followed skb this CPU is processing (`CUR`), if any.

use crate::filter::in_dest;
use crate::{config, count, rd, CUR, CUR_WINDOW_NS, EVENTS};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use kvmtrace_common::{Event, HookKind, CNT_EVENTS, CNT_LOST, DIR_REPLY, DIR_REQUEST};

const UNSET: u32 = u32::MAX;

#[tracepoint(category = "fib", name = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: TracePointContext) -> i32 {
    let cur = match CUR.get(0) {
        Some(v) if v.skb != 0 => *v,
        _ => return 0,
    };
    let Some(c) = config() else { return 0 };
    let o = &c.offsets;
    if o.fib_dst == UNSET {
        return 0;
    }
    let rdc = |off: u32| -> u64 { ctx.as_ptr() as u64 + off as u64 };
    let src: [u8; 4] = rd(rdc(o.fib_src)).unwrap_or([0; 4]);
    let dst: [u8; 4] = rd(rdc(o.fib_dst)).unwrap_or([0; 4]);
    let dir = if in_dest(c, &dst) {
        DIR_REQUEST
    } else if in_dest(c, &src) {
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
    let tb_id: u32 = rd(rdc(o.fib_tb_id)).unwrap_or(0);
    let err: i32 = rd(rdc(o.fib_err)).unwrap_or(0);
    let oif: i32 = rd(rdc(o.fib_oif)).unwrap_or(0);
    let gw: [u8; 4] = rd(rdc(o.fib_gw4)).unwrap_or([0; 4]);
    let name: [u8; 16] = rd(rdc(o.fib_name)).unwrap_or([0; 16]);
    let proto: u8 = rd(rdc(o.fib_proto)).unwrap_or(0);
    let sport: u16 = rd(rdc(o.fib_sport)).unwrap_or(0);
    let dport: u16 = rd(rdc(o.fib_dport)).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(CNT_LOST);
        return 0;
    };
    // The route fields have a record of their own shape inside the common one: table id in
    // `reason`, the error in `stack_id`, the gateway in `gw` (see kvmtrace_common::Event).
    let ev = Event {
        ts_ns: now,
        skb: cur.skb,
        location: 0,
        hook: HookKind::Fib as u8,
        dir,
        flags: 0,
        nf_hook: 0,
        ifindex: oif as u32,
        ifname: name,
        netns: c.filter.netns,
        reason: tb_id,
        stack_id: err,
        len: 0,
        saddr: src,
        daddr: dst,
        gw,
        // Already host order: fib.h stores ntohs() of the flow's ports.
        sport,
        dport,
        proto,
        icmp_type: 0,
        icmp_code: 0,
        ttl: 0,
        ip_id: 0,
        _pad0: 0,
        smac: [0; 6],
        dmac: [0; 6],
        cpu: unsafe { bpf_get_smp_processor_id() },
        tcp_seq: 0,
        _pad1: [0; 4],
    };
    entry.write(ev);
    entry.submit(0);
    count(CNT_EVENTS);
    0
}
