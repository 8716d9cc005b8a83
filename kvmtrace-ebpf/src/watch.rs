//! `kvmtrace watch`: always-on counters for every VM of the host, with maps of their own.
//!
//! - `watch_tap_in` / `watch_tap_out` (TC, TCX links on each watched tap): one per-CPU hash
//!   lookup and a few adds per frame (packets, bytes, ARP, DHCP, NDP, DHCPv6), no ring-buffer
//!   event, no map update; a guest's IPv4 source is learned into `WATCH_VM_IPS` (its IPv6
//!   source, not link-local, into `WATCH_VM_IPS6`) only when it differs from the last one this
//!   CPU saw on that tap.
//! - `watch_kfree_skb` (tp_btf `kfree_skb`): runs only when the kernel drops a packet; decides
//!   with a namespace test and one or two hash lookups whether the packet is a watched VM's
//!   (its IPv4 or IPv6 source or destination is a learned guest address, or it was dropped on
//!   a watched tap) and then counts it by (VM, reason, device, direction, location, innermost
//!   kernel frames) in the bounded `WATCH_DROPS`. Userspace names the hook from the frames and
//!   the reason from the kernel's BTF.
//!
//! Observe only: the TC programs return TC_ACT_UNSPEC (TCX_NEXT).

use crate::pkt::{b16, bytes, Addr};
use crate::skb::dev_netns;
use crate::{btf_load, off, rd, rd_words};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_UNSPEC},
    helpers::bpf_get_stack,
    macros::{btf_tracepoint, classifier, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TcContext},
    EbpfContext as _,
};
use kvmtrace_common::watch::{
    watch_class, watch_class6, WatchConfig, WatchDropKey, WatchRemote, WatchTapKey, WatchTapStats,
    WATCH_CLASSES, WATCH_CONV, WATCH_DIR_UNKNOWN, WATCH_FROM_VM, WATCH_KIND_DNS,
    WATCH_KIND_ICMP_ECHO, WATCH_KIND_TCP_SYN, WATCH_MAX_ADDRS, WATCH_MAX_VMS, WATCH_STACK_DEPTH,
    WATCH_TO_VM, WCNT_DROPS, WCNT_DROPS_UNKEYED, WCNT_IPS_FULL, WCNT_MAX,
};

/// Written by userspace once every program is attached; read by every watch program.
#[map]
static WATCH_CONFIG: Array<WatchConfig> = Array::with_max_entries(1, 0);

/// (tap ifindex, direction) → per-CPU counters. Entries are created and removed by userspace
/// as VMs come and go; the TC programs only bump existing entries. Not preallocated
/// (`BPF_F_NO_PREALLOC`): room for `WATCH_MAX_VMS` taps, but the kernel memory (176 bytes per
/// entry and CPU) only for the taps watched; only userspace inserts, so no program allocates.
#[map]
static WATCH_TAP_STATS: PerCpuHashMap<WatchTapKey, WatchTapStats> =
    PerCpuHashMap::with_max_entries(2 * WATCH_MAX_VMS, BPF_F_NO_PREALLOC);

/// Guest IPv4 address (network order) → VM index. Written by the TC programs when a new
/// source address leaves a tap; pruned by userspace when a VM goes away. Read at drops.
#[map]
static WATCH_VM_IPS: HashMap<[u8; 4], u32> = HashMap::with_max_entries(WATCH_MAX_ADDRS, 0);

/// Guest IPv6 address (network order) → VM index, as `WATCH_VM_IPS` for IPv6 sources (not
/// link-local, not unspecified).
#[map]
static WATCH_VM_IPS6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(WATCH_MAX_ADDRS, 0);

/// Drop site → drops, per CPU (no atomics on the BPF target; userspace sums). Written at drops
/// only; read by userspace. Bounded: when full, further sites are counted in
/// `WCNT_DROPS_UNKEYED` only.
#[map]
static WATCH_DROPS: PerCpuHashMap<WatchDropKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// VM index → the remote address (IPv4 or IPv6) of its last dropped packet: the flight
/// recorder follows the VM towards it.
#[map]
static WATCH_LAST_REMOTE: Array<WatchRemote> = Array::with_max_entries(WATCH_MAX_VMS, 0);

/// `WCNT_*` counters, per CPU; userspace sums them.
#[map]
static WATCH_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(WCNT_MAX, 0);

#[inline(always)]
fn wcount(idx: u32) {
    if let Some(p) = WATCH_COUNTERS.get_ptr_mut(idx) {
        crate::bump(p);
    }
}

#[inline(always)]
fn watched_netns() -> u32 {
    WATCH_CONFIG.get(0).map(|c| c.netns).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The taps.

#[inline(always)]
fn at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn tap_count(ctx: &TcContext, dir: u32) {
    // SAFETY: ctx.skb.skb is the program's __sk_buff; these fields are readable in TC.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let key = WatchTapKey { ifindex, dir };
    let Some(s) = WATCH_TAP_STATS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: this CPU's copy of an existing entry; no other writer on this CPU.
    let s = unsafe { &mut *s };
    s.packets += 1;
    s.bytes += len as u64;
    let Some(ty) = at::<[u8; 2]>(ctx, 12) else {
        return;
    };
    // SAFETY: bounds checked against data_end in `at`.
    let ty = unsafe { *ty };
    if ty == [0x08, 0x06] {
        // ARP (RFC 826): the operation is at bytes 6-7 of the ARP header.
        if let Some(op) = at::<[u8; 2]>(ctx, 14 + 6) {
            // SAFETY: bounds checked.
            match unsafe { *op } {
                [0, 1] => s.arp_requests += 1,
                [0, 2] => s.arp_replies += 1,
                _ => {}
            }
        }
        return;
    }
    if ty != [0x08, 0x00] {
        // IPv6 costs an IPv4 frame nothing: it is tested only once a frame is not IPv4.
        if ty == [0x86, 0xdd] {
            tap_count6(ctx, s, dir);
        }
        return;
    }
    // IPv4 without options (IHL 5) covers DHCP; addresses at 12..20, UDP ports right after.
    let Some(ip) = at::<[u8; 24]>(ctx, 14) else {
        return;
    };
    // SAFETY: bounds checked.
    let ip = unsafe { &*ip };
    if ip[0] == 0x45 && ip[9] == 17 {
        let (sport, dport) = (
            u16::from_be_bytes([ip[20], ip[21]]),
            u16::from_be_bytes([ip[22], ip[23]]),
        );
        if (dir == WATCH_FROM_VM && sport == 68 && dport == 67)
            || (dir == WATCH_TO_VM && sport == 67 && dport == 68)
        {
            s.dhcp += 1;
        }
    }
    conversation(ctx, s, ip, dir);
    if dir != WATCH_FROM_VM {
        return;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    if src == s.last_src || src == [0; 4] {
        return;
    }
    s.last_src = src;
    // SAFETY: read-only lookup.
    let known = unsafe { WATCH_VM_IPS.get(&src) }.copied();
    if known != Some(s.vm) && WATCH_VM_IPS.insert(&src, &s.vm, 0).is_err() {
        wcount(WCNT_IPS_FULL);
    }
}

/// Counts a request leaving the VM or a reply reaching it, by kind and remote address class
/// (no pairing: a request's reply is not looked for; the counts say how many of each).
#[inline(always)]
fn conversation(ctx: &TcContext, s: &mut WatchTapStats, ip: &[u8; 24], dir: u32) {
    // IPv4 without options only: the L4 header then starts at a fixed offset.
    if ip[0] != 0x45 {
        return;
    }
    let from_vm = dir == WATCH_FROM_VM;
    let kind = match ip[9] {
        1 if (from_vm && ip[20] == 8) || (!from_vm && ip[20] == 0) => WATCH_KIND_ICMP_ECHO,
        17 if (from_vm && ip[22] == 0 && ip[23] == 53)
            || (!from_vm && ip[20] == 0 && ip[21] == 53) =>
        {
            WATCH_KIND_DNS
        }
        6 => {
            // TCP flags: byte 13 of the TCP header. FIN 1, SYN 2, RST 4, ACK 16.
            let Some(t) = at::<[u8; 14]>(ctx, 14 + 20) else {
                return;
            };
            // SAFETY: bounds checked.
            let flags = unsafe { (*t)[13] };
            let ok = if from_vm {
                flags & 0x12 == 0x02
            } else {
                flags & 0x12 == 0x12 || flags & 0x04 != 0
            };
            if !ok {
                return;
            }
            WATCH_KIND_TCP_SYN
        }
        _ => return,
    };
    let remote = if from_vm {
        [ip[16], ip[17], ip[18], ip[19]]
    } else {
        [ip[12], ip[13], ip[14], ip[15]]
    };
    let Some(class) = watch_class(remote) else {
        return;
    };
    let i = kind * WATCH_CLASSES + class;
    if i < WATCH_CONV {
        s.conv[i] += 1;
    }
}

/// The IPv6 part of [`tap_count`]: the fixed 40-byte header and the first 4 bytes after it
/// (ICMPv6 type and code, or UDP ports), read in place; no extension-header walk (a packet
/// whose next header is not the transport's is counted as a frame only).
#[inline(always)]
fn tap_count6(ctx: &TcContext, s: &mut WatchTapStats, dir: u32) {
    let Some(ip) = at::<[u8; 44]>(ctx, 14) else {
        return;
    };
    // SAFETY: bounds checked against data_end in `at`.
    let ip = unsafe { &*ip };
    let from_vm = dir == WATCH_FROM_VM;
    let kind = match ip[6] {
        58 => {
            if let Some(n) = ndp_counter(s, ip[40]) {
                *n += 1;
            }
            match ip[40] {
                128 if from_vm => Some(WATCH_KIND_ICMP_ECHO),
                129 if !from_vm => Some(WATCH_KIND_ICMP_ECHO),
                _ => None,
            }
        }
        17 => {
            let (sport, dport) = (
                u16::from_be_bytes([ip[40], ip[41]]),
                u16::from_be_bytes([ip[42], ip[43]]),
            );
            if (from_vm && sport == 546 && dport == 547)
                || (!from_vm && sport == 547 && dport == 546)
            {
                s.dhcp6 += 1;
                None
            } else if (from_vm && dport == 53) || (!from_vm && sport == 53) {
                Some(WATCH_KIND_DNS)
            } else {
                None
            }
        }
        6 => match at::<[u8; 14]>(ctx, 14 + 40) {
            Some(t) => {
                // TCP flags: byte 13 of the TCP header. SYN 2, RST 4, ACK 16.
                // SAFETY: bounds checked.
                let flags = unsafe { (*t)[13] };
                if (from_vm && flags & 0x12 == 0x02)
                    || (!from_vm && (flags & 0x12 == 0x12 || flags & 0x04 != 0))
                {
                    Some(WATCH_KIND_TCP_SYN)
                } else {
                    None
                }
            }
            None => None,
        },
        _ => None,
    };
    if let Some(kind) = kind {
        // The remote: a request's destination (bytes 24..40), a reply's source (8..24).
        let at = if from_vm { 24 } else { 8 };
        // SAFETY: 16 bytes of the 44 checked, alignment 1.
        let remote = unsafe { &*(ip.as_ptr().add(at) as *const [u8; 16]) };
        if let Some(class) = watch_class6(remote) {
            let i = kind * WATCH_CLASSES + class;
            if i < WATCH_CONV {
                s.conv[i] += 1;
            }
        }
    }
    if !from_vm {
        return;
    }
    // Learn the guest's source: not fe80::/10 (every guest has one; drops are placed by the
    // routable ones), not :: (duplicate address detection).
    if ip[8] == 0xfe && ip[9] & 0xc0 == 0x80 {
        return;
    }
    let src: Addr = b16(ip, 8);
    if src == s.last_src6 || src[0] | src[1] == 0 {
        return;
    }
    s.last_src6 = src;
    let key = bytes(src);
    // SAFETY: read-only lookup.
    let known = unsafe { WATCH_VM_IPS6.get(&key) }.copied();
    if known != Some(s.vm) && WATCH_VM_IPS6.insert(&key, &s.vm, 0).is_err() {
        wcount(WCNT_IPS_FULL);
    }
}

/// The counter of an NDP message (ICMPv6 type 133 router solicitation, 134 router
/// advertisement, 135 neighbour solicitation, 136 neighbour advertisement); `None` for another
/// type.
#[inline(always)]
fn ndp_counter(s: &mut WatchTapStats, icmp_type: u8) -> Option<&mut u64> {
    match icmp_type {
        133 => Some(&mut s.ndp_rs),
        134 => Some(&mut s.ndp_ra),
        135 => Some(&mut s.ndp_ns),
        136 => Some(&mut s.ndp_na),
        _ => None,
    }
}

/// TC ingress of a watched tap: frames leaving the VM. Always continues (TCX_NEXT).
#[classifier]
pub fn watch_tap_in(ctx: TcContext) -> i32 {
    tap_count(&ctx, WATCH_FROM_VM);
    TC_ACT_UNSPEC
}

/// TC egress of a watched tap: frames about to be handed to the VM. Always continues.
#[classifier]
pub fn watch_tap_out(ctx: TcContext) -> i32 {
    tap_count(&ctx, WATCH_TO_VM);
    TC_ACT_UNSPEC
}

// ---------------------------------------------------------------------------------------------
// Drops.

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`
/// (include/trace/events/skb.h, Linux 6.18): runs only for dropped skbs.
#[btf_tracepoint(function = "kfree_skb")]
pub fn watch_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let netns = watched_netns();
    if netns == 0 || skb == 0 {
        return 0;
    }
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    // (`netns` is not 0: a device without a namespace is not watched.)
    if dev == 0 || dev_netns(dev) != netns {
        return 0;
    }
    let ifindex: u32 = btf_load(dev, off!(OFF_DEV_IFINDEX));
    // Whose packet: a learned guest address as source (leaving the VM) or destination
    // (entering it, after de-NAT), IPv4 or IPv6, else dropped on a watched tap. The remote
    // (the other address) is kept as the VM's last (`family` 0: none).
    let mut found: Option<(u32, u32)> = None;
    let mut remote: Addr = [0; 2];
    let mut family = 0u32;
    let head: u64 = btf_load(skb, off!(OFF_SKB_HEAD));
    let nh: u16 = btf_load(skb, off!(OFF_SKB_NH));
    if head != 0 && nh != u16::MAX {
        if let Some(ip) = rd::<[u8; 20]>(head + nh as u64) {
            if ip[0] >> 4 == 4 {
                let src = [ip[12], ip[13], ip[14], ip[15]];
                let dst = [ip[16], ip[17], ip[18], ip[19]];
                // SAFETY: read-only lookups.
                if let Some(vm) = unsafe { WATCH_VM_IPS.get(&src) } {
                    found = Some((*vm, WATCH_FROM_VM));
                    remote = [u32::from_ne_bytes(dst) as u64, 0];
                } else if let Some(vm) = unsafe { WATCH_VM_IPS.get(&dst) } {
                    found = Some((*vm, WATCH_TO_VM));
                    remote = [u32::from_ne_bytes(src) as u64, 0];
                }
                family = 4;
            } else if ip[0] >> 4 == 6 {
                // Source and destination: bytes 8..40 of the fixed header, read as words.
                let a: [u64; 4] = rd_words(head + nh as u64 + 8);
                let (src, dst): (Addr, Addr) = ([a[0], a[1]], [a[2], a[3]]);
                // SAFETY: read-only lookups.
                if let Some(vm) = unsafe { WATCH_VM_IPS6.get(&bytes(src)) } {
                    found = Some((*vm, WATCH_FROM_VM));
                    remote = dst;
                } else if let Some(vm) = unsafe { WATCH_VM_IPS6.get(&bytes(dst)) } {
                    found = Some((*vm, WATCH_TO_VM));
                    remote = src;
                }
                family = 6;
            }
        }
    }
    if found.is_none() {
        family = 0;
        let key = WatchTapKey {
            ifindex,
            dir: WATCH_FROM_VM,
        };
        // SAFETY: read-only lookup.
        if let Some(s) = unsafe { WATCH_TAP_STATS.get(&key) } {
            found = Some((s.vm, WATCH_DIR_UNKNOWN));
        }
    }
    let Some((vm, dir)) = found else {
        return 0;
    };
    wcount(WCNT_DROPS);
    if family != 0 && remote[0] | remote[1] != 0 {
        if let Some(p) = WATCH_LAST_REMOTE.get_ptr_mut(vm) {
            // SAFETY: array slot; a racing writer can only store another remote address (a
            // reader may see one writer's family with the other's address: at worst the flight
            // recorder follows a wrong address once).
            unsafe {
                (*p).addr = remote;
                (*p).family = family;
            }
        }
    }
    let mut key = WatchDropKey {
        vm,
        reason: crate::kfree_reason(&ctx),
        ifindex,
        dir,
        location: ctx.arg(1),
        stack: [0; WATCH_STACK_DEPTH],
    };
    // SAFETY: the buffer is the key's own array with its exact size; the helper zero-fills
    // what the stack does not cover (and all of it on error).
    unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            key.stack.as_mut_ptr().cast(),
            (WATCH_STACK_DEPTH * 8) as u32,
            0,
        )
    };
    if let Some(p) = WATCH_DROPS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of the entry; no other writer on this CPU.
        unsafe { *p += 1 };
        return 0;
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; then add to this CPU's copy.
    if WATCH_DROPS.insert(&key, &1, 1).is_err() {
        if let Some(p) = WATCH_DROPS.get_ptr_mut(&key) {
            // SAFETY: as above.
            unsafe { *p += 1 };
        } else {
            wcount(WCNT_DROPS_UNKEYED);
        }
    }
    0
}
