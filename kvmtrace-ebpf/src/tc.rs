//! TC programs, attached with TCX links to single devices: the VM's tap (`tap_*`) and the
//! other devices of its path (`dev_*`: its bridge, the devices of the route to the
//! destination, bridged-mode uplink ports). A packet that crosses none of these devices never
//! runs them. The ctx pointer is the kernel sk_buff, so the skb address links these events
//! with the tracepoints'. Every program returns TC_ACT_UNSPEC (TCX_NEXT): observe only.

use crate::emit::{emit, set_cur, At, NO_EXTRA};
use crate::fib::{route_lookup, route_recheck};
use crate::filter::{
    a4, admit, classify, ident6, in_dest, is_guest, learn, learn_guest, learn_nat, note_origin,
    parse, parse6, scratch, track_get, track_put, Addr, Addrs, Pkt, Scratch, ICMPV6, LIST_DNAT,
};
use crate::{config, count, follows};
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC, helpers::generated::bpf_skb_load_bytes, macros::classifier,
    programs::TcContext,
};
use kvmtrace_common::{
    Config, HookKind, CNT_SAMPLED_OUT, DIR_REPLY, DIR_REQUEST, EV_FLAG_ARP, EV_FLAG_DHCP,
    EV_FLAG_HAS_ETH, EV_FLAG_HAS_IP, EV_FLAG_NEW, EV_FLAG_VXLAN, FAMILY_V4, FAMILY_V6, FOLLOW_V4,
    FOLLOW_V6, TRACK_SUPPRESSED,
};

/// Copies `len` bytes of the packet at `off` into `dst` (bpf_skb_load_bytes; fails past the
/// packet's end).
#[inline(always)]
fn load_to(ctx: &TcContext, off: usize, dst: *mut u8, len: u32) -> bool {
    // SAFETY: `dst` points to at least `len` writable bytes (callers pass constants).
    unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off as u32, dst as *mut _, len) == 0 }
}

/// The transport header's start into `s.l4`: 48 bytes, or as many of the first 28, 20 or 8
/// as the packet has (8 cover UDP and ICMP echo, 20 a TCP header, 28 an ICMP error's quote,
/// 48 an ICMPv6 error's); the rest stays zero.
#[inline(always)]
fn load_l4(ctx: &TcContext, s: &mut Scratch, off: usize, max: u32) {
    s.clear_l4();
    let d = s.l4.as_mut_ptr();
    let _ = (max == 48 && load_to(ctx, off, d, 48))
        || load_to(ctx, off, d, 28)
        || load_to(ctx, off, d, 20)
        || load_to(ctx, off, d, 8);
}

/// The parsed IPv4 or IPv6 packet of a frame (Ethernet header `eth`, at `base`: 0, or the
/// inner frame of a VXLAN packet), read with bpf_skb_load_bytes into this CPU's scratch. IPv6
/// only when an IPv6 destination is followed.
#[inline(always)]
fn tc_ip(ctx: &TcContext, eth: &[u8; 14], base: usize) -> Option<&'static mut Pkt> {
    let v6 = eth[12] == 0x86 && eth[13] == 0xdd;
    if v6 && !follows(FOLLOW_V6) {
        return None;
    }
    if !v6 && (eth[12] != 0x08 || eth[13] != 0x00 || !follows(FOLLOW_V4)) {
        return None;
    }
    let s = scratch()?;
    let ip = base + 14;
    if v6 {
        if !load_to(ctx, ip, s.ip.as_mut_ptr(), 40) {
            return None;
        }
        load_l4(ctx, s, ip + 40, 48);
        return parse6(s).then_some(&mut s.pkt);
    }
    if !load_to(ctx, ip, s.ip.as_mut_ptr(), 20) {
        return None;
    }
    let ihl = ((s.ip[0] & 0x0f) as usize) * 4;
    if !(20..=60).contains(&ihl) {
        return None;
    }
    load_l4(ctx, s, ip + ihl, 28);
    parse(s).then_some(&mut s.pkt)
}

/// A new packet: classified, admitted within its flow's budget and tracked. `None` when it is
/// not ours or only counted.
#[inline(always)]
fn start(c: &Config, skb: u64, p: &Pkt, on_tap: bool) -> Option<u8> {
    let d = classify(c, p, on_tap);
    if d == 0 {
        return None;
    }
    if on_tap {
        learn_guest(p.family, &p.saddr);
    }
    if !admit(c, p, d) {
        track_put(skb, d | TRACK_SUPPRESSED, p.ip_id);
        count(CNT_SAMPLED_OUT);
        return None;
    }
    track_put(skb, d, p.ip_id);
    if on_tap {
        note_origin(skb, p, d);
    }
    Some(d)
}

/// The direction of a packet at a TC hook: its tracked state `seen`, or a new packet's from
/// [`start`] (then flagged `EV_FLAG_NEW` in `flags`). `None`: not ours, or past its flow's
/// budget (counted).
#[inline(always)]
fn direction(
    c: &Config,
    skb: u64,
    p: &Pkt,
    seen: Option<u8>,
    on_tap: bool,
    flags: &mut u8,
) -> Option<u8> {
    match seen {
        Some(t) if t & TRACK_SUPPRESSED != 0 => {
            count(CNT_SAMPLED_OUT);
            None
        }
        Some(d) => Some(d),
        None => {
            let d = start(c, skb, p, on_tap)?;
            *flags |= EV_FLAG_NEW;
            Some(d)
        }
    }
}

/// Emits the event of a frame (Ethernet header `eth`) seen by a TC program: the device and
/// length from its `__sk_buff`, the frame's MACs, no extras.
#[inline(always)]
fn tc_emit(
    ctx: &TcContext,
    c: &Config,
    hook: HookKind,
    dir: u8,
    flags: u8,
    p: &Pkt,
    eth: &[u8; 14],
) {
    let skb = ctx.skb.skb as u64;
    emit(
        hook,
        skb,
        dir,
        flags,
        p,
        &at(ctx, c),
        &macs_of(eth),
        &NO_EXTRA,
    );
}

#[inline(always)]
fn at(ctx: &TcContext, c: &Config) -> At {
    // SAFETY: ctx.skb.skb is the program's __sk_buff; these fields are readable in TC.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    At {
        ifindex,
        ifname: [0; 2],
        netns: c.filter.netns,
        len,
    }
}

#[inline(always)]
fn macs_of(eth: &[u8; 14]) -> [u8; 12] {
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&eth[0..12]);
    macs
}

// ---------------------------------------------------------------------------------------------
// The VM's tap: every frame of the guest, its ARP and DHCP too.

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
    let Some(p) = tc_ip(ctx, &eth, 0) else {
        return TC_ACT_UNSPEC;
    };
    let p: &mut Pkt = p;
    let from_vm = matches!(hook, HookKind::TapIngress);
    if from_vm {
        let gm = &c.filter.guest_mac;
        let any = gm[0] | gm[1] | gm[2] | gm[3] | gm[4] | gm[5] == 0;
        // Byte by byte: a slice comparison becomes a call to a byte-looping `memcmp` on BPF.
        let differs = (eth[6] ^ gm[0])
            | (eth[7] ^ gm[1])
            | (eth[8] ^ gm[2])
            | (eth[9] ^ gm[3])
            | (eth[10] ^ gm[4])
            | (eth[11] ^ gm[5])
            != 0;
        if !any && differs {
            return TC_ACT_UNSPEC;
        }
    }
    // Neighbour and router discovery (ICMPv6 133–137): IPv6's ARP, reported like it.
    if follows(FOLLOW_V6) && p.proto == ICMPV6 && p.icmp_type >= 133 && p.icmp_type <= 137 {
        tap_ndp(ctx, c, hook, p, &eth);
        return TC_ACT_UNSPEC;
    }
    // DHCP between the guest and whatever serves its network (not towards DEST, so not a
    // flow): reported so that a guest without an address is seen asking. DHCPv6 likewise.
    let (client, server) = if follows(FOLLOW_V6) && p.family == FAMILY_V6 {
        (546, 547)
    } else {
        (68, 67)
    };
    if p.proto == 17
        && ((from_vm && p.sport == client && p.dport == server)
            || (!from_vm && p.sport == server && p.dport == client))
    {
        tap_l2_event(
            ctx,
            c,
            hook,
            p,
            &eth,
            EV_FLAG_DHCP | EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH,
        );
        return TC_ACT_UNSPEC;
    }
    let mut flags = EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH;
    // With the path set, the tap's ingress is the first hook a frame out of the guest meets,
    // so it is a new packet whatever TRACKED holds for this skb address: an entry there is a
    // packet that ended where no hook saw it (freed in another namespace, say), and identical
    // frames (a flood with one IP id) would otherwise match it. (The full set's
    // netif_receive_skb sees the frame first, and its consume_skb forgets every end.)
    let path_set = c.filter.route_helper != 0;
    let seen = if from_vm && path_set {
        None
    } else {
        track_get(skb, p.ip_id)
    };
    let Some(dir) = direction(c, skb, p, seen, from_vm, &mut flags) else {
        return TC_ACT_UNSPEC;
    };
    set_cur(None);
    tc_emit(ctx, c, hook, dir, flags, p, &eth);
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
    p.family = FAMILY_V4;
    p.icmp_type = a[7];
    p.saddr = a4([a[14], a[15], a[16], a[17]]);
    p.daddr = a4([a[24], a[25], a[26], a[27]]);
    tap_l2_event(ctx, c, hook, &p, eth, EV_FLAG_ARP | EV_FLAG_HAS_ETH);
}

/// NDP on the tap: the guest soliciting routers or its gateway's address, and the answers.
/// A neighbour solicitation or advertisement is reported with its target address as `daddr`.
#[inline(always)]
fn tap_ndp(ctx: &TcContext, c: &Config, hook: HookKind, p: &mut Pkt, eth: &[u8; 14]) {
    if p.icmp_type == 135 || p.icmp_type == 136 {
        // The target follows the 4-byte flags/reserved word after the ICMPv6 header.
        if let Ok(t) = ctx.load::<Addr>(54 + 8) {
            p.daddr = t;
        }
    }
    p.sport = 0;
    p.dport = 0;
    tap_l2_event(
        ctx,
        c,
        hook,
        p,
        eth,
        EV_FLAG_ARP | EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH,
    );
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
    tc_emit(ctx, c, hook, dir, flags, p, eth);
}

/// TC ingress of the tap: frames coming out of the guest. Always continues (TCX_NEXT).
#[classifier]
#[inline(always)]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    tap_common(&ctx, HookKind::TapIngress)
}

/// TC egress of the tap: frames about to be handed to the guest. Always continues.
#[classifier]
#[inline(always)]
pub fn tap_egress(ctx: TcContext) -> i32 {
    tap_common(&ctx, HookKind::TapEgress)
}

// ---------------------------------------------------------------------------------------------
// The other devices of the path. Here most packets are other tenants': the first test reads
// the IP addresses in place (direct packet access, no helper call, no map lookup).

#[inline(always)]
fn in_place<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// The addresses of a frame on a path device: of its IP packet, or of the inner packet when
/// it is a VXLAN packet on the followed port (`vx_off` then says where the inner frame is).
/// One `Addrs` whichever it is, read in place or from the scratch: the TC programs' stack has
/// no room for a second one.
#[inline(always)]
fn dev_addrs(ctx: &TcContext) -> Option<Addrs> {
    // SAFETY: in_place checked the bounds against data_end.
    let mut ty = unsafe { *in_place::<[u8; 2]>(ctx, 12)? };
    // On the underlay, a UDP packet may be VXLAN: the inner packet is the one that may be
    // ours (its Ethernet header at `vx_base`, its type left in the scratch by tc_inner).
    let mut vx_base = 0usize;
    if ty == [0x08, 0x00]
        && crate::vxlan_port() != 0
        // UDP, and (read in place, no helper call) to the VXLAN port when the header has no
        // options: other UDP traffic costs no more than these reads.
        && in_place::<[u8; 24]>(ctx, 14).is_some_and(|h| {
            // SAFETY: as above.
            let h = unsafe { &*h };
            h[9] == 17
                && (h[0] != 0x45 || u16::from_be_bytes([h[22], h[23]]) == crate::vxlan_port())
        })
    {
        if let Some(b) = crate::vxlan::tc_inner(ctx) {
            let s = scratch()?;
            vx_base = b;
            ty = [s.l4[16 + 12], s.l4[16 + 13]];
        }
    }
    let mut a = if ty == [0x08, 0x00] && follows(FOLLOW_V4) {
        let h: *const [u8; 16] = if vx_base == 0 {
            in_place::<[u8; 16]>(ctx, 14 + 4)?
        } else {
            let s = scratch()?;
            if !load_to(ctx, vx_base + 14 + 4, s.ip.as_mut_ptr(), 16) {
                return None;
            }
            s.ip.as_ptr() as *const [u8; 16]
        };
        // SAFETY: bounds checked against data_end, or 16 of the scratch's 40 bytes.
        Addrs::from_bytes(unsafe { &*h })
    } else if ty == [0x86, 0xdd] && follows(FOLLOW_V6) {
        let (h, ident): (*const [u8; 40], u16) = if vx_base == 0 {
            let h = in_place::<[u8; 40]>(ctx, 14)?;
            let ident = match in_place::<[u8; 8]>(ctx, 14 + 40) {
                // SAFETY: bounds checked against data_end.
                Some(l4) => ident6(unsafe { &*l4 }),
                None => 0,
            };
            (h, ident)
        } else {
            let s = scratch()?;
            if !load_to(ctx, vx_base + 14, s.ip.as_mut_ptr(), 40) {
                return None;
            }
            s.clear_l4();
            let _ = load_to(ctx, vx_base + 14 + 40, s.l4.as_mut_ptr(), 8);
            (s.ip.as_ptr() as *const [u8; 40], ident6(&s.l4))
        };
        // SAFETY: bounds checked against data_end, or the scratch's 40-byte header.
        Addrs::from_v6(unsafe { &*h }, ident)
    } else {
        return None;
    };
    a.vx_off = vx_base as u16;
    Some(a)
}

#[inline(always)]
fn dev_common(ctx: &TcContext, hook: HookKind) -> i32 {
    let Some(c) = config() else {
        return TC_ACT_UNSPEC;
    };
    let Some(a) = dev_addrs(ctx) else {
        return TC_ACT_UNSPEC;
    };
    let received = matches!(hook, HookKind::NetifReceive);
    // A guest's request whose destination was rewritten before this hook (DNAT in
    // PREROUTING, which bridge netfilter runs before the bridge's own ingress) no longer goes
    // to DEST: only its tracked skb says it is ours. Asked of the guest's own packets alone.
    let dnat = received && !in_dest(c, a.family, &a.dst) && is_guest(a.family, &a.src);
    if !dnat {
        if !a.might_match(c) {
            return TC_ACT_UNSPEC;
        }
        // Received on a path device, a followed packet is either a request still carrying
        // the guest's address (NAT comes later) or a reply from the destination: another
        // VM's traffic to the same destination is turned away here, before any map lookup.
        // Leaving, a request's source may already be the host's (SNAT): only the tracked skb
        // tells it apart.
        if received && !a.could_start(c, || false) {
            return TC_ACT_UNSPEC;
        }
    }
    let skb = ctx.skb.skb as u64;
    let tracked = track_get(skb, a.ip_id).filter(|&t| !(received && a.contradicts(c, t)));
    if dnat {
        if tracked.is_none() {
            return TC_ACT_UNSPEC;
        }
        // Its new destination: where it leaves a path device, it is ours by that.
        learn(LIST_DNAT, a.family, &a.dst);
    }
    match tracked {
        Some(t) if t & TRACK_SUPPRESSED != 0 => {
            count(CNT_SAMPLED_OUT);
            return TC_ACT_UNSPEC;
        }
        None if !received && !a.could_start(c, || false) => return TC_ACT_UNSPEC,
        _ => {}
    }
    // The frame to parse: the packet itself, or the inner frame of a VXLAN packet.
    let base = a.vx_off as usize;
    let Ok(eth) = ctx.load::<[u8; 14]>(base) else {
        return TC_ACT_UNSPEC;
    };
    let Some(p) = tc_ip(ctx, &eth, base) else {
        return TC_ACT_UNSPEC;
    };
    let mut flags = EV_FLAG_HAS_IP | EV_FLAG_HAS_ETH;
    if base != 0 {
        flags |= EV_FLAG_VXLAN;
    }
    // (A tracked packet past its budget returned above.)
    let Some(dir) = direction(c, skb, p, tracked, false, &mut flags) else {
        return TC_ACT_UNSPEC;
    };
    learn_nat(skb, p, dir);
    if c.filter.route_helper == 0 {
        // A packet received here is routed next, on this CPU: the tracepoint's lookup is
        // attributed to it.
        set_cur(received.then_some((skb, p)));
    }
    tc_emit(ctx, c, hook, dir, flags, p, &eth);
    // An encapsulated packet is bridged inside the overlay, not routed by its inner header:
    // its underlay route is the outer packet's.
    if c.filter.route_helper != 0 && base == 0 {
        if received {
            route_lookup(ctx, c, skb, p, dir);
        } else {
            route_recheck(ctx, c, skb, p, dir);
        }
    }
    TC_ACT_UNSPEC
}

/// TC ingress of a path device: reported as the device receiving the packet.
#[classifier]
#[inline(always)]
pub fn dev_ingress(ctx: TcContext) -> i32 {
    dev_common(&ctx, HookKind::NetifReceive)
}

/// TC egress of a path device: reported as the device transmitting the packet.
#[classifier]
#[inline(always)]
pub fn dev_egress(ctx: TcContext) -> i32 {
    dev_common(&ctx, HookKind::DevXmit)
}
