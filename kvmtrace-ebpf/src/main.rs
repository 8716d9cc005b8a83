//! kvmtrace's kernel programs.
//!
//! Every program decides in its first few instructions whether a packet belongs to the
//! followed VM and destination, and returns otherwise. A packet is "ours" when
//! - its skb is already in `TRACKED` (seen earlier at another hook), or
//! - it goes from the VM (seen on the tap, or from a learned guest address) to the destination, or
//! - it comes from the destination to a learned guest address (after de-NAT), or
//! - it matches a learned post-NAT tuple (`NAT_KEYS`: a reply before de-NAT), or
//! - it is an ICMP error to a guest address about a packet sent to the destination.
//!
//! Kernel struct fields are read through offsets that userspace takes from BTF at start-up
//! (`CONFIG`), so one object runs on any kernel with BTF. Observe only: every program lets
//! the packet through unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, classifier, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::tracing::StackIdContext,
    programs::{BtfTracePointContext, TcContext, TracePointContext},
    EbpfContext,
};
use kvmtrace_common::{
    Config, Event, FlowBudget, HookKind, NatKey, CNT_EVENTS, CNT_LOST, CNT_MAX, CNT_SAMPLED_OUT,
    DIR_REPLY, DIR_REQUEST, EV_FLAG_ARP, EV_FLAG_DHCP, EV_FLAG_HAS_ETH, EV_FLAG_HAS_IP,
    EV_FLAG_NEW, TRACK_SUPPRESSED,
};

/// Written by userspace once before attaching; read by every program.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Events for userspace. Written by every program, read by the loader.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// skb address → direction (`DIR_*`) of packets being followed. Written on first sight,
/// removed at free (kfree_skb / consume_skb).
#[map]
static TRACKED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Guest IPv4 addresses (network order) learned from frames leaving the tap; userspace may
/// seed it too. Value unused.
#[map]
static GUEST_IPS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(64, 0);

/// Post-NAT tuples of requests (learned when a followed request shows a source other than a
/// guest address): replies arrive under this tuple before conntrack restores the guest's.
#[map]
static NAT_KEYS: LruHashMap<NatKey, u8> = LruHashMap::with_max_entries(4096, 0);

/// Counters (`CNT_*`), per CPU; userspace sums them.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_MAX, 0);

/// Per-flow packet budget: flow key → packets shown and packets only counted. Written here,
/// read by userspace at the end (exact per-flow counts past the budget).
#[map]
static BUDGET: LruHashMap<NatKey, FlowBudget> = LruHashMap::with_max_entries(4096, 0);

/// Kernel stacks of drops, read by userspace when it sees a `Drop` event.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(4096, 0);

/// Per CPU: the followed skb whose route lookup may come next (set when a followed packet is
/// received or leaves PREROUTING; cleared by its next event). Links `fib_table_lookup`, which
/// has no skb, to the packet, and keeps lookups of other namespaces out.
#[map]
static CUR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sk_buff.head` and `sk_buff.network_header` offsets, set by the loader in the frozen
/// .rodata before verification: the verifier then knows them as constants, so the hot path
/// reads them with plain (fault-safe) BTF loads instead of helper calls.
#[unsafe(no_mangle)]
static OFF_SKB_HEAD: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKB_NH: u32 = 0;
/// `sk_buff.dev` and `net_device.ifindex`, the same way.
#[unsafe(no_mangle)]
static OFF_SKB_DEV: u32 = 0;
#[unsafe(no_mangle)]
static OFF_DEV_IFINDEX: u32 = 0;
/// The other fields the programs read, the same way.
#[unsafe(no_mangle)]
static OFF_SKB_LEN: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKB_MH: u32 = 0;
#[unsafe(no_mangle)]
static OFF_DEV_NAME: u32 = 0;
#[unsafe(no_mangle)]
static OFF_DEV_ND_NET: u32 = 0;
#[unsafe(no_mangle)]
static OFF_NET_INUM: u32 = 0;

/// Reads one of the `OFF_*` constants (a frozen .rodata value the verifier knows).
macro_rules! off {
    ($name:ident) => {
        unsafe { core::ptr::read_volatile(&$name) }
    };
}

/// Loads a field of a kernel struct through its BTF-typed pointer (tp_btf arguments,
/// netfilter ctx->skb) at an offset the verifier knows.
#[inline(always)]
fn btf_load<T: Copy>(ptr: u64, off: u32) -> T {
    // SAFETY: `ptr` is a BTF-typed kernel pointer and `off` a constant from .rodata; the
    // verifier turns this into a fault-safe PROBE_MEM load checked against BTF.
    unsafe { core::ptr::read_volatile((ptr as *const u8).add(off as usize) as *const T) }
}

const UNSET: u32 = u32::MAX;
const NF_INET_PRE_ROUTING: u8 = 0;

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.filter.enabled != 0)
}

#[inline(always)]
fn rd<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Headers of one packet, as parsed at a hook.
#[derive(Clone, Copy)]
struct Pkt {
    saddr: [u8; 4],
    daddr: [u8; 4],
    proto: u8,
    ttl: u8,
    ip_id: u16,
    sport: u16,
    dport: u16,
    icmp_type: u8,
    icmp_code: u8,
    tcp_seq: u32,
    /// ICMP error: destination of the quoted (inner) packet.
    inner_daddr: [u8; 4],
    inner_saddr: [u8; 4],
}

impl Pkt {
    const fn empty() -> Self {
        Pkt {
            saddr: [0; 4],
            daddr: [0; 4],
            proto: 0,
            ttl: 0,
            ip_id: 0,
            sport: 0,
            dport: 0,
            icmp_type: 0,
            icmp_code: 0,
            tcp_seq: 0,
            inner_daddr: [0; 4],
            inner_saddr: [0; 4],
        }
    }
}

/// Parses an IPv4 header (20 bytes at `ip`) and the start of its payload (`l4`, 28 bytes:
/// enough for TCP flags and the quoted header of an ICMP error).
#[inline(always)]
fn parse(ip: &[u8; 20], l4: &[u8; 28]) -> Option<Pkt> {
    if ip[0] >> 4 != 4 {
        return None;
    }
    let mut p = Pkt::empty();
    p.proto = ip[9];
    p.ttl = ip[8];
    p.ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    p.saddr = [ip[12], ip[13], ip[14], ip[15]];
    p.daddr = [ip[16], ip[17], ip[18], ip[19]];
    match p.proto {
        1 => {
            p.icmp_type = l4[0];
            p.icmp_code = l4[1];
            // Echo: identifier and sequence stand where ports would.
            p.sport = u16::from_be_bytes([l4[4], l4[5]]);
            p.dport = u16::from_be_bytes([l4[6], l4[7]]);
            // Errors quote the offending IPv4 header right after the 8-byte ICMP header.
            p.inner_saddr = [l4[20], l4[21], l4[22], l4[23]];
            p.inner_daddr = [l4[24], l4[25], l4[26], l4[27]];
        }
        6 => {
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
            p.tcp_seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            p.icmp_type = l4[13];
        }
        17 => {
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        _ => {}
    }
    Some(p)
}

#[inline(always)]
fn in_dest(c: &Config, a: &[u8; 4]) -> bool {
    let f = &c.filter;
    (a[0] & f.dst_mask[0]) == f.dst_net[0]
        && (a[1] & f.dst_mask[1]) == f.dst_net[1]
        && (a[2] & f.dst_mask[2]) == f.dst_net[2]
        && (a[3] & f.dst_mask[3]) == f.dst_net[3]
}

#[inline(always)]
fn proto_ok(c: &Config, proto: u8) -> bool {
    let want = c.filter.proto;
    if want == 0 {
        proto == 1 || proto == 6 || proto == 17
    } else {
        proto == want
    }
}

#[inline(always)]
fn is_guest(a: &[u8; 4]) -> bool {
    // SAFETY: read-only lookup.
    unsafe { GUEST_IPS.get(a).is_some() }
}

/// Classifies a packet not yet tracked. `on_tap`: seen on the VM's tap, going out of the VM.
#[inline(always)]
fn classify(c: &Config, p: &Pkt, on_tap: bool) -> u8 {
    if !proto_ok(c, p.proto) {
        return 0;
    }
    let port = c.filter.port;
    let echo_or_port = |remote_port: u16| p.proto == 1 || port == 0 || remote_port == port;
    if in_dest(c, &p.daddr) && (on_tap || is_guest(&p.saddr)) {
        if p.proto == 1 && p.icmp_type != 8 && !on_tap {
            return 0;
        }
        if echo_or_port(p.dport) {
            return DIR_REQUEST;
        }
        return 0;
    }
    if on_tap {
        return 0;
    }
    if in_dest(c, &p.saddr) && is_guest(&p.daddr) && echo_or_port(p.sport) {
        return DIR_REPLY;
    }
    if !in_dest(c, &p.saddr) {
        // Neither to nor from the destination: only an ICMP error about our packet remains.
        return if p.proto == 1
            && (p.icmp_type == 3 || p.icmp_type == 11 || p.icmp_type == 12)
            && in_dest(c, &p.inner_daddr)
            && (is_guest(&p.daddr) || is_guest(&p.inner_saddr))
        {
            DIR_REPLY
        } else {
            0
        };
    }
    // Before de-NAT: the reply carries the post-NAT local address and port.
    let local_port = if p.proto == 1 { p.sport } else { p.dport };
    let key = NatKey {
        remote: p.saddr,
        local: p.daddr,
        local_port,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: read-only lookup.
    if unsafe { NAT_KEYS.get(&key).is_some() } {
        return DIR_REPLY;
    }
    // ICMP errors (unreachable, time exceeded, parameter problem) about our requests.
    if p.proto == 1
        && (p.icmp_type == 3 || p.icmp_type == 11 || p.icmp_type == 12)
        && in_dest(c, &p.inner_daddr)
        && (is_guest(&p.daddr) || is_guest(&p.inner_saddr))
    {
        return DIR_REPLY;
    }
    0
}

/// Guest-side flow key used for the per-flow budget.
#[inline(always)]
fn flow_key(p: &Pkt, dir: u8) -> NatKey {
    let (remote, local, local_port) = if dir == DIR_REQUEST {
        (p.daddr, p.saddr, p.sport)
    } else {
        (
            p.saddr,
            p.daddr,
            if p.proto == 1 { p.sport } else { p.dport },
        )
    };
    NatKey {
        remote,
        local,
        local_port,
        proto: p.proto,
        _pad: 0,
    }
}

/// Admits a new packet within its flow's budget. Returns false when it must only be counted
/// (then all its hooks return after the TRACKED lookup).
#[inline(always)]
fn admit(c: &Config, p: &Pkt, dir: u8) -> bool {
    let budget = c.filter.budget;
    if budget == 0 {
        return true;
    }
    let key = flow_key(p, dir);
    match BUDGET.get_ptr_mut(&key) {
        Some(b) => {
            // SAFETY: value pointer from the map. Two CPUs racing may let one packet more in;
            // the counts stay exact per packet.
            unsafe {
                if (*b).shown >= budget {
                    (*b).suppressed += 1;
                    return false;
                }
                (*b).shown += 1;
            }
            true
        }
        None => {
            let _ = BUDGET.insert(
                &key,
                &FlowBudget {
                    shown: 1,
                    suppressed: 0,
                },
                0,
            );
            true
        }
    }
}

/// Extra fields of an event that depend on the hook.
struct Extra {
    location: u64,
    reason: u32,
    stack_id: i32,
    nf_hook: u8,
}

const NO_EXTRA: Extra = Extra {
    location: 0,
    reason: 0,
    stack_id: -1,
    nf_hook: 0,
};

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    hook: HookKind,
    skb: u64,
    dir: u8,
    flags: u8,
    p: &Pkt,
    ifindex: u32,
    ifname: &[u8; 16],
    netns: u32,
    len: u32,
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
        ifindex,
        ifname: *ifname,
        netns,
        reason: x.reason,
        stack_id: x.stack_id,
        len,
        saddr: p.saddr,
        daddr: p.daddr,
        // ICMP errors: the quoted packet's destination (the user side reads it as such).
        gw: p.inner_daddr,
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
        _pad1: [0; 4],
    };
    entry.write(ev);
    entry.submit(0);
    count(CNT_EVENTS);
}

/// Learns the post-NAT tuple of a followed request whose source is no longer a guest address.
#[inline(always)]
fn learn_nat(p: &Pkt, dir: u8) {
    if dir != DIR_REQUEST || is_guest(&p.saddr) {
        return;
    }
    let key = NatKey {
        remote: p.daddr,
        local: p.saddr,
        local_port: p.sport,
        proto: p.proto,
        _pad: 0,
    };
    let _ = NAT_KEYS.insert(&key, &1, 0);
}

#[inline(always)]
fn set_cur(skb: u64) {
    if let Some(p) = CUR.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *p = skb };
    }
}

/// Device facts of a kernel skb: (ifindex, name, netns inode).
#[inline(always)]
fn skb_dev(c: &Config, skb: u64) -> (u32, [u8; 16], u32) {
    let _ = c;
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    if dev == 0 {
        return (0, [0; 16], 0);
    }
    let ifindex: u32 = btf_load(dev, off!(OFF_DEV_IFINDEX));
    let name: [u8; 16] = rd(dev + off!(OFF_DEV_NAME) as u64).unwrap_or([0; 16]);
    let net: u64 = btf_load(dev, off!(OFF_DEV_ND_NET));
    let inum: u32 = if net != 0 {
        btf_load(net, off!(OFF_NET_INUM))
    } else {
        0
    };
    (ifindex, name, inum)
}

/// Inode of the skb's device's network namespace (0 when unknown).
#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    if dev == 0 {
        return 0;
    }
    let net: u64 = btf_load(dev, off!(OFF_DEV_ND_NET));
    if net == 0 {
        return 0;
    }
    btf_load(net, off!(OFF_NET_INUM))
}

/// Reads the IPv4 packet of a kernel skb through `head + network_header`.
#[inline(always)]
fn skb_pkt(c: &Config, skb: u64) -> Option<(Pkt, u32, [u8; 12], u8)> {
    let _ = c;
    let head: u64 = btf_load(skb, off!(OFF_SKB_HEAD));
    let nh: u16 = btf_load(skb, off!(OFF_SKB_NH));
    let len: u32 = btf_load(skb, off!(OFF_SKB_LEN));
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let ip: [u8; 20] = rd(head + nh as u64)?;
    let ihl = ((ip[0] & 0x0f) as u64) * 4;
    if ihl < 20 {
        return None;
    }
    let l4: [u8; 28] = rd(head + nh as u64 + ihl).unwrap_or([0; 28]);
    let p = parse(&ip, &l4)?;
    let mut flags = EV_FLAG_HAS_IP;
    let mut macs = [0u8; 12];
    let mh: u16 = btf_load(skb, off!(OFF_SKB_MH));
    if mh != u16::MAX && mh < nh {
        if let Some(m) = rd::<[u8; 12]>(head + mh as u64) {
            macs = m;
            flags |= EV_FLAG_HAS_ETH;
        }
    }
    Some((p, len, macs, flags))
}

/// The common path of every hook that has a kernel `sk_buff *`.
#[inline(always)]
fn observe_skb(hook: HookKind, skb: u64, x: &Extra) {
    let Some(c) = config() else { return };
    // Three reads decide for most packets that they are not ours, before any map lookup.
    // Every followed packet passes this test at every hook (its addresses are to or from the
    // destination, before and after NAT), so it comes first; an skb freed without passing it
    // leaves a TRACKED entry that only this same test could ever match again, and the LRU
    // map ages it out.
    let Some(addrs) = might_match(c, skb) else {
        return;
    };
    let tracked = unsafe { TRACKED.get(&skb).copied() };
    if tracked.is_none() && (!could_start(c, &addrs, skb, hook) || skb_netns(skb) != c.filter.netns)
    {
        return;
    }
    let freeing = matches!(hook, HookKind::Drop | HookKind::Consume);
    if freeing {
        if tracked.is_some() {
            let _ = TRACKED.remove(&skb);
        } else if matches!(hook, HookKind::Consume) {
            // Normal frees are frequent: only followed skbs are worth a look.
            return;
        }
    }
    if tracked.is_some_and(|t| t & TRACK_SUPPRESSED != 0) {
        // Past its flow's budget: counted, nothing else.
        count(CNT_SAMPLED_OUT);
        return;
    }
    let (ifindex, ifname, netns) = skb_dev(c, skb);
    if netns != c.filter.netns {
        if !freeing {
            // The skb crossed into another namespace (a veth peer): it left this host's view.
            if tracked.is_some() {
                let _ = TRACKED.remove(&skb);
            }
        }
        return;
    }
    let Some((p, len, macs, mut flags)) = skb_pkt(c, skb) else {
        if let Some(dir) = tracked {
            // Followed but no readable IPv4 header here (should be rare): still report the hop.
            let p = Pkt::empty();
            if !freeing {
                set_cur(0);
            }
            emit(
                hook,
                skb,
                dir,
                0,
                &p,
                ifindex,
                &ifname,
                netns,
                len_of(c, skb),
                &[0; 12],
                x,
            );
        }
        return;
    };
    let dir = match tracked {
        Some(d) => d,
        None => {
            let on_tap = ifindex == c.filter.tap_ifindex && matches!(hook, HookKind::NetifReceive);
            let d = classify(c, &p, on_tap);
            if d == 0 {
                return;
            }
            if on_tap {
                let _ = GUEST_IPS.insert(&p.saddr, &1, 0);
            }
            if !admit(c, &p, d) {
                if !freeing {
                    let _ = TRACKED.insert(skb, d | TRACK_SUPPRESSED, 0);
                }
                count(CNT_SAMPLED_OUT);
                return;
            }
            if !freeing {
                let _ = TRACKED.insert(skb, d, 0);
            }
            flags |= EV_FLAG_NEW;
            d
        }
    };
    learn_nat(&p, dir);
    let keep_cur = matches!(hook, HookKind::NetifReceive)
        || (matches!(hook, HookKind::NfExit) && x.nf_hook == NF_INET_PRE_ROUTING);
    set_cur(if keep_cur { skb } else { 0 });
    emit(
        hook, skb, dir, flags, &p, ifindex, &ifname, netns, len, &macs, x,
    );
}

/// Protocol and addresses of an skb's IPv4 header, read cheaply.
#[derive(Clone, Copy)]
struct Addrs {
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
}

/// Cheap first test, at every hook: could this skb be one of ours (protocol followed, to or
/// from the destination, or to a guest address)? Reads `head` and `network_header` with BTF
/// loads and 12 header bytes with one helper call.
#[inline(always)]
fn might_match(c: &Config, skb: u64) -> Option<Addrs> {
    let head: u64 = btf_load(skb, unsafe { core::ptr::read_volatile(&OFF_SKB_HEAD) });
    let nh: u16 = btf_load(skb, unsafe { core::ptr::read_volatile(&OFF_SKB_NH) });
    if nh == u16::MAX || head == 0 {
        return None;
    }
    // IPv4 header bytes 8..20: ttl, protocol, checksum, source, destination.
    let a = rd::<[u8; 12]>(head + nh as u64 + 8)?;
    let h = Addrs {
        proto: a[1],
        src: [a[4], a[5], a[6], a[7]],
        dst: [a[8], a[9], a[10], a[11]],
    };
    if !proto_ok(c, h.proto) && h.proto != 1 {
        return None;
    }
    (in_dest(c, &h.dst) || in_dest(c, &h.src) || is_guest(&h.dst)).then_some(h)
}

/// Second cheap test, for a packet not followed yet, on addresses only: a request must come
/// from a guest address (or be received on the tap itself), a reply from the destination, an
/// ICMP error to a guest. Keeps another VM's traffic to the same destination from costing a
/// full parse at every hook.
#[inline(always)]
fn could_start(c: &Config, h: &Addrs, skb: u64, hook: HookKind) -> bool {
    if in_dest(c, &h.src) || (h.proto == 1 && is_guest(&h.dst)) {
        return true;
    }
    if !in_dest(c, &h.dst) {
        return false;
    }
    if is_guest(&h.src) {
        return true;
    }
    if matches!(hook, HookKind::NetifReceive) {
        let dev: u64 = btf_load(skb, unsafe { core::ptr::read_volatile(&OFF_SKB_DEV) });
        if dev != 0 {
            let ifindex: u32 = btf_load(dev, unsafe { core::ptr::read_volatile(&OFF_DEV_IFINDEX) });
            return ifindex == c.filter.tap_ifindex;
        }
    }
    false
}

#[inline(always)]
fn len_of(c: &Config, skb: u64) -> u32 {
    rd(skb + c.offsets.skb_len as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// TC on the VM's tap. The ctx pointer is the kernel sk_buff, so the skb address links these
// events with the tracepoints'. Headers are read with bpf_skb_load_bytes (ctx access rules).

#[inline(always)]
fn tap_common(ctx: &TcContext, hook: HookKind) -> i32 {
    let Some(c) = config() else {
        return TC_ACT_UNSPEC;
    };
    let skb = ctx.skb.skb as u64;
    let Ok(eth) = ctx.load::<[u8; 14]>(0) else {
        return TC_ACT_UNSPEC;
    };
    if eth[12] == 0x08 && eth[13] == 0x06 {
        tap_arp(ctx, c, hook, &eth);
        return TC_ACT_UNSPEC;
    }
    if eth[12] != 0x08 || eth[13] != 0x00 {
        return TC_ACT_UNSPEC;
    }
    let Ok(ip) = ctx.load::<[u8; 20]>(14) else {
        return TC_ACT_UNSPEC;
    };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if !(20..=60).contains(&ihl) {
        return TC_ACT_UNSPEC;
    }
    // bpf_skb_load_bytes fails past the end of the packet: take the longest prefix there is
    // (28 bytes cover an ICMP error's quote, 20 a TCP header, 8 UDP and ICMP echo).
    let l4 = match ctx.load::<[u8; 28]>(14 + ihl) {
        Ok(b) => b,
        Err(_) => {
            let mut b = [0u8; 28];
            if let Ok(t) = ctx.load::<[u8; 20]>(14 + ihl) {
                b[..20].copy_from_slice(&t);
            } else if let Ok(t) = ctx.load::<[u8; 8]>(14 + ihl) {
                b[..8].copy_from_slice(&t);
            }
            b
        }
    };
    let Some(p) = parse(&ip, &l4) else {
        return TC_ACT_UNSPEC;
    };
    let from_vm = matches!(hook, HookKind::TapIngress);
    if from_vm {
        let gm = &c.filter.guest_mac;
        let any = gm[0] | gm[1] | gm[2] | gm[3] | gm[4] | gm[5] == 0;
        if !any && (eth[6..12] != gm[..]) {
            return TC_ACT_UNSPEC;
        }
    }
    // DHCP between the guest and whatever serves its network (not towards DEST, so not a
    // flow): reported so that a guest without an address is seen asking.
    if p.proto == 17
        && ((from_vm && p.sport == 68 && p.dport == 67)
            || (!from_vm && p.sport == 67 && p.dport == 68))
    {
        tap_l2_event(
            ctx,
            c,
            hook,
            &p,
            &eth,
            EV_FLAG_DHCP | EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH,
        );
        return TC_ACT_UNSPEC;
    }
    let tracked = unsafe { TRACKED.get(&skb).copied() };
    let mut flags = EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH;
    let dir = match tracked {
        Some(t) if t & TRACK_SUPPRESSED != 0 => {
            count(CNT_SAMPLED_OUT);
            return TC_ACT_UNSPEC;
        }
        Some(d) => d,
        None => {
            let d = classify(c, &p, from_vm);
            if d == 0 {
                return TC_ACT_UNSPEC;
            }
            if from_vm {
                let _ = GUEST_IPS.insert(&p.saddr, &1, 0);
            }
            if !admit(c, &p, d) {
                let _ = TRACKED.insert(skb, d | TRACK_SUPPRESSED, 0);
                count(CNT_SAMPLED_OUT);
                return TC_ACT_UNSPEC;
            }
            let _ = TRACKED.insert(skb, d, 0);
            flags |= EV_FLAG_NEW;
            d
        }
    };
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&eth[0..12]);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = unsafe { (*ctx.skb.skb).len };
    let mut ifname = [0u8; 16];
    ifname[0] = b't';
    ifname[1] = b'a';
    ifname[2] = b'p';
    set_cur(0);
    emit(
        hook,
        skb,
        dir,
        flags,
        &p,
        ifindex,
        &ifname,
        c.filter.netns,
        len,
        &macs,
        &NO_EXTRA,
    );
    TC_ACT_UNSPEC
}

/// ARP on the tap: who the guest asks for (its gateway) and who answers it.
#[inline(always)]
fn tap_arp(ctx: &TcContext, c: &Config, hook: HookKind, eth: &[u8; 14]) {
    // Ethernet/IPv4 ARP (RFC 826): htype 1, ptype 0x0800, hlen 6, plen 4, op, sha, spa, tha, tpa.
    let Ok(a) = ctx.load::<[u8; 28]>(14) else {
        return;
    };
    if a[0] != 0 || a[1] != 1 || a[2] != 0x08 || a[3] != 0x00 || a[4] != 6 || a[5] != 4 {
        return;
    }
    let mut p = Pkt::empty();
    p.icmp_type = a[7];
    p.saddr = [a[14], a[15], a[16], a[17]];
    p.daddr = [a[24], a[25], a[26], a[27]];
    tap_l2_event(ctx, c, hook, &p, eth, EV_FLAG_ARP | EV_FLAG_HAS_ETH);
}

/// Emits an ARP or DHCP event seen on the tap, within a per-(sender, target) budget.
#[inline(always)]
fn tap_l2_event(ctx: &TcContext, c: &Config, hook: HookKind, p: &Pkt, eth: &[u8; 14], flags: u8) {
    let from_vm = matches!(hook, HookKind::TapIngress);
    let dir = if from_vm { DIR_REQUEST } else { DIR_REPLY };
    if !admit(c, p, dir) {
        count(CNT_SAMPLED_OUT);
        return;
    }
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&eth[0..12]);
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = unsafe { (*ctx.skb.skb).len };
    emit(
        hook,
        ctx.skb.skb as u64,
        dir,
        flags,
        p,
        ifindex,
        &[0; 16],
        c.filter.netns,
        len,
        &macs,
        &NO_EXTRA,
    );
}

/// TC ingress of the tap: frames coming out of the guest. Always continues (TCX_NEXT).
#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    tap_common(&ctx, HookKind::TapIngress)
}

/// TC egress of the tap: frames about to be handed to the guest. Always continues.
#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    tap_common(&ctx, HookKind::TapEgress)
}

// ---------------------------------------------------------------------------------------------
// tp_btf programs (include/trace/events/net.h, skb.h in Linux 6.18).

/// `netif_receive_skb(struct sk_buff *skb)`: a device received the skb.
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::NetifReceive, skb, &NO_EXTRA);
    0
}

/// `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device *dev)`.
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::DevXmit, skb, &NO_EXTRA);
    0
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    // Everything cheap before the stack walk (microseconds): only a packet of ours, not past
    // its budget, in the tap's namespace, gets a stack.
    let Some(c) = config() else { return 0 };
    let Some(addrs) = might_match(c, skb) else {
        return 0;
    };
    let tracked = unsafe { TRACKED.get(&skb).copied() };
    match tracked {
        Some(t) if t & TRACK_SUPPRESSED != 0 => {
            let _ = TRACKED.remove(&skb);
            count(CNT_SAMPLED_OUT);
            return 0;
        }
        Some(_) => {}
        None => {
            if !could_start(c, &addrs, skb, HookKind::Drop) || !might_be_ours(skb) {
                return 0;
            }
        }
    }
    if skb_netns(skb) != c.filter.netns {
        // Freed in another namespace (past a veth): not this host's drop.
        if tracked.is_some() {
            let _ = TRACKED.remove(&skb);
        }
        return 0;
    }
    let stack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    let x = Extra {
        location,
        reason,
        stack_id,
        nf_hook: 0,
    };
    observe_skb(HookKind::Drop, skb, &x);
    0
}

#[inline(always)]
fn might_be_ours(skb: u64) -> bool {
    let Some(c) = config() else { return false };
    if might_match(c, skb).is_none() {
        return false;
    }
    let Some((p, _, _, _)) = skb_pkt(c, skb) else {
        return false;
    };
    classify(c, &p, false) != 0
}

/// `consume_skb(struct sk_buff *skb, void *location)`: normal end of an skb's life.
#[btf_tracepoint(function = "consume_skb")]
pub fn consume_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::Consume, skb, &NO_EXTRA);
    0
}

// ---------------------------------------------------------------------------------------------
// Route lookups: classic tracepoint fib:fib_table_lookup (include/trace/events/fib.h). Field
// offsets come from the tracepoint's format file via CONFIG.

#[tracepoint(category = "fib", name = "fib_table_lookup")]
pub fn fib_table_lookup(ctx: TracePointContext) -> i32 {
    let cur = match CUR.get(0) {
        Some(v) if *v != 0 => *v,
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
    let ev = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skb: cur,
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

// ---------------------------------------------------------------------------------------------
// Netfilter hooks. aya 0.14 has no BPF_PROG_TYPE_NETFILTER: these live in `classifier/`
// sections so that aya-obj parses them, and the loader loads them itself as netfilter
// programs (never as TC). The context is `struct bpf_nf_ctx { const struct nf_hook_state
// *state; struct sk_buff *skb; }` (include/linux/filter.h, 6.18). Must return NF_ACCEPT (1).

#[inline(always)]
fn nf_common(ctx: *mut core::ffi::c_void, hook: HookKind) -> i32 {
    // Direct ctx loads (the verifier allows reading both pointers of bpf_nf_ctx): `skb` keeps
    // its BTF type, which btf_load needs.
    // SAFETY: ctx is the netfilter program context.
    let (state, skb) = unsafe {
        let p = ctx as *const u64;
        (
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
        )
    };
    if skb == 0 {
        return 1;
    }
    let Some(c) = config() else { return 1 };
    let nf_hook: u8 = if state != 0 {
        rd(state + c.offsets.nf_state_hook as u64).unwrap_or(255)
    } else {
        255
    };
    let x = Extra {
        location: 0,
        reason: 0,
        stack_id: -1,
        nf_hook,
    };
    observe_skb(hook, skb, &x);
    1
}

/// Runs at the first priority of a netfilter hook: the packet entered the hook.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_enter")]
pub extern "C" fn nf_enter(ctx: *mut core::ffi::c_void) -> i32 {
    nf_common(ctx, HookKind::NfEnter)
}

/// Runs at the last priority of a netfilter hook: the packet survived every rule and NAT.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_exit")]
pub extern "C" fn nf_exit(ctx: *mut core::ffi::c_void) -> i32 {
    nf_common(ctx, HookKind::NfExit)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
