//! tp_btf programs on the skb tracepoints (include/trace/events/net.h, skb.h in Linux 6.18).
//! `kfree_skb` is in every hook set (a drop anywhere, with its reason and stack); the global
//! `netif_receive_skb`, `net_dev_start_xmit` and `consume_skb` only in the full one: they run
//! for every packet of every device on the host.

use crate::emit::{emit, set_cur, At, Extra, NO_EXTRA};
use crate::filter::{
    admit, classify, learn_guest, learn_nat, note_origin, parse, parse6, scratch, skb_addrs,
    track_forget, track_get, track_put, Addrs, Pkt, EMPTY_PKT,
};
use crate::{btf_load, config, count, follows, off, rd, rd_words, STACKS};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_buf, macros::btf_tracepoint,
    programs::tracing::StackIdContext as _, programs::BtfTracePointContext,
};
use kvmtrace_common::{
    Config, HookKind, CNT_SAMPLED_OUT, EV_FLAG_HAS_ETH, EV_FLAG_HAS_IP, EV_FLAG_NEW, EV_FLAG_VXLAN,
    FOLLOW_V4, FOLLOW_V6, TRACK_SUPPRESSED,
};

const NF_INET_PRE_ROUTING: u8 = 0;

/// For a packet the host made that has no `skb->dev` yet (dropped at OUTPUT, before
/// `ip_output` sets it): the device of its route (`skb_dst(skb)->dev`), read with helper calls
/// (the pointer is not BTF-typed). 0 when unknown.
#[inline(always)]
fn route_dev_of(skb: u64) -> u64 {
    if off!(OFF_SKB_REFDST) == u32::MAX || off!(OFF_DST_DEV) == u32::MAX {
        return 0;
    }
    let refdst: u64 = btf_load(skb, off!(OFF_SKB_REFDST));
    // The low bit is SKB_DST_NOREF (include/linux/skbuff.h).
    let dst = refdst & !1u64;
    if dst == 0 {
        return 0;
    }
    rd::<u64>(dst + off!(OFF_DST_DEV) as u64).unwrap_or(0)
}

/// Facts of a device reached through an untyped pointer: (ifindex, name, netns inode).
#[inline(always)]
fn untyped_dev(dev: u64) -> (u32, [u64; 2], u32) {
    if dev == 0 {
        return (0, [0; 2], 0);
    }
    let ifindex: u32 = rd(dev + off!(OFF_DEV_IFINDEX) as u64).unwrap_or(0);
    let name: [u64; 2] = rd_words(dev + off!(OFF_DEV_NAME) as u64);
    let net: u64 = rd(dev + off!(OFF_DEV_ND_NET) as u64).unwrap_or(0);
    let inum: u32 = if net != 0 {
        rd(net + off!(OFF_NET_INUM) as u64).unwrap_or(0)
    } else {
        0
    };
    (ifindex, name, inum)
}

/// Device facts of a kernel skb: (ifindex, name, netns inode); without `skb->dev`, its
/// route's device.
#[inline(always)]
fn skb_dev(skb: u64) -> (u32, [u64; 2], u32) {
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    if dev == 0 {
        return untyped_dev(route_dev_of(skb));
    }
    let ifindex: u32 = btf_load(dev, off!(OFF_DEV_IFINDEX));
    let name: [u64; 2] = rd_words(dev + off!(OFF_DEV_NAME) as u64);
    (ifindex, name, dev_netns(dev))
}

/// Inode of the network namespace of a device (a BTF-typed `struct net_device *`, not 0): two
/// loads, `dev->nd_net` then its `ns.inum`; 0 when it has none.
#[inline(always)]
pub(crate) fn dev_netns(dev: u64) -> u32 {
    let net: u64 = btf_load(dev, off!(OFF_DEV_ND_NET));
    if net == 0 {
        return 0;
    }
    btf_load(net, off!(OFF_NET_INUM))
}

/// Inode of the skb's device's network namespace (0 when unknown: no `skb->dev`). Three loads.
#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    if dev == 0 {
        return 0;
    }
    dev_netns(dev)
}

/// The namespace of an skb's route's device, for one without `skb->dev` (0: unknown).
#[inline(always)]
fn route_netns(skb: u64) -> u32 {
    untyped_dev(route_dev_of(skb)).2
}

#[inline(always)]
fn skb_ifindex(skb: u64) -> u32 {
    let dev: u64 = btf_load(skb, off!(OFF_SKB_DEV));
    if dev == 0 {
        return 0;
    }
    btf_load(dev, off!(OFF_DEV_IFINDEX))
}

/// Reads the IP packet of a kernel skb through `head + network_header` into this CPU's
/// scratch: the parsed packet, its length, MACs and `EV_FLAG_*`. `vx_off` (from
/// [`skb_addrs`]): the packet is the inner one of a VXLAN packet, that far after the network
/// header (its Ethernet header just before it).
#[inline(always)]
fn skb_pkt(skb: u64, vx_off: u16) -> Option<(&'static mut Pkt, u32, [u8; 12], u8)> {
    let head: u64 = btf_load(skb, off!(OFF_SKB_HEAD));
    let nh: u16 = btf_load(skb, off!(OFF_SKB_NH));
    let len: u32 = btf_load(skb, off!(OFF_SKB_LEN));
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let at = head + nh as u64 + vx_off as u64;
    let s = scratch()?;
    s.clear_l4();
    // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
    let ok = unsafe {
        bpf_probe_read_kernel_buf(at as *const u8, &mut s.ip[..20]).is_ok()
            && if s.ip[0] >> 4 == 6 && follows(FOLLOW_V6) {
                bpf_probe_read_kernel_buf((at + 20) as *const u8, &mut s.ip[20..40]).is_ok() && {
                    // The skb's head buffer holds at least the transport header's first
                    // bytes; a short read past the packet only reads its tailroom.
                    let _ = bpf_probe_read_kernel_buf((at + 40) as *const u8, &mut s.l4);
                    parse6(s)
                }
            } else {
                let ihl = ((s.ip[0] & 0x0f) as u64) * 4;
                follows(FOLLOW_V4) && ihl >= 20 && {
                    let _ = bpf_probe_read_kernel_buf((at + ihl) as *const u8, &mut s.l4[..28]);
                    parse(s)
                }
            }
    };
    if !ok {
        return None;
    }
    let mut flags = EV_FLAG_HAS_IP;
    let mut macs = [0u8; 12];
    let mh: u16 = btf_load(skb, off!(OFF_SKB_MH));
    if vx_off != 0 {
        // The inner Ethernet header, right before the inner IP header.
        if let Some(m) = rd::<[u8; 12]>(at - 14) {
            macs = m;
            flags |= EV_FLAG_HAS_ETH;
        }
        flags |= EV_FLAG_VXLAN;
    } else if mh != u16::MAX && mh < nh {
        if let Some(m) = rd::<[u8; 12]>(head + mh as u64) {
            macs = m;
            flags |= EV_FLAG_HAS_ETH;
        }
    }
    Some((&mut s.pkt, len, macs, flags))
}

/// Whether an skb whose device's namespace is `ns` (0: no device yet) may be in the followed
/// one: the device found later (its route's) decides for one without.
#[inline(always)]
fn ns_may_be(ns: u32, c: &Config) -> bool {
    ns == 0 || ns == c.filter.netns
}

/// The common path of every hook that has a BTF-typed kernel `sk_buff *`.
#[inline(always)]
pub fn observe_skb(hook: HookKind, skb: u64, x: &Extra, pre: Option<(Addrs, Option<u8>)>) {
    let Some(c) = config() else { return };
    let freeing = matches!(hook, HookKind::Drop | HookKind::Consume);
    // `pre`: the caller made the first tests already (kfree_skb: its addresses and tracked
    // state); the verifier then walks them once.
    let (addrs, tracked) = match pre {
        Some(p) => p,
        None => {
            if freeing {
                // A free in another namespace (a container's, the lab's outside) is never
                // reported: three loads turn it away before the packet is read or a map is
                // asked. A followed skb freed there keeps its TRACKED entry until the LRU
                // bound ages it out (its IP id tells it from the next packet in the same
                // memory).
                let ns = skb_netns(skb);
                if ns != 0 && ns != c.filter.netns {
                    return;
                }
            }
            // A few reads decide for most packets that they are not ours, before any map
            // lookup. Every followed packet passes this test at every hook (its addresses are
            // to or from the destination, before and after NAT), so it comes first; an skb
            // freed without passing it leaves a TRACKED entry that the LRU map ages out (and
            // its IP id tells it from the next packet in the same memory).
            let Some(addrs) = skb_addrs(c, skb) else {
                return;
            };
            let tracked = track_get(skb, addrs.ip_id)
                .filter(|&t| !(matches!(hook, HookKind::NetifReceive) && addrs.contradicts(c, t)));
            if tracked.is_none()
                && (!addrs.could_start(c, || {
                    matches!(hook, HookKind::NetifReceive)
                        && skb_ifindex(skb) == c.filter.tap_ifindex
                }) || !ns_may_be(skb_netns(skb), c))
            {
                return;
            }
            (addrs, tracked)
        }
    };
    if freeing {
        if tracked.is_some() {
            track_forget(skb);
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
    let (ifindex, ifname, netns) = skb_dev(skb);
    if netns != c.filter.netns {
        if !freeing && tracked.is_some() {
            // The skb crossed into another namespace (a veth peer): it left this host's view.
            track_forget(skb);
        }
        return;
    }
    let Some((p, len, macs, mut flags)) = skb_pkt(skb, addrs.vx_off) else {
        if let Some(dir) = tracked {
            // Followed but no readable IPv4 header here (should be rare): still report the hop.
            if !freeing {
                set_cur(None);
            }
            let len: u32 = btf_load(skb, off!(OFF_SKB_LEN));
            let at = At {
                ifindex,
                ifname,
                netns,
                len,
            };
            emit(hook, skb, dir, 0, &EMPTY_PKT, &at, &[0; 12], x);
        }
        return;
    };
    let dir = match tracked {
        Some(d) => d,
        None => {
            let on_tap = ifindex == c.filter.tap_ifindex && matches!(hook, HookKind::NetifReceive);
            let d = classify(c, p, on_tap);
            if d == 0 {
                return;
            }
            if on_tap {
                learn_guest(p.family, &p.saddr);
            }
            if !admit(c, p, d) {
                if !freeing {
                    track_put(skb, d | TRACK_SUPPRESSED, p.ip_id);
                }
                count(CNT_SAMPLED_OUT);
                return;
            }
            if !freeing {
                track_put(skb, d, p.ip_id);
                if on_tap {
                    note_origin(skb, p, d);
                }
            }
            flags |= EV_FLAG_NEW;
            d
        }
    };
    learn_nat(skb, p, dir);
    let keep_cur = matches!(hook, HookKind::NetifReceive)
        || (matches!(hook, HookKind::NfExit) && x.nf_hook == NF_INET_PRE_ROUTING);
    set_cur(keep_cur.then_some((skb, p)));
    let at = At {
        ifindex,
        ifname,
        netns,
        len,
    };
    emit(hook, skb, dir, flags, p, &at, &macs, x);
}

/// `netif_receive_skb(struct sk_buff *skb)`: a device received the skb. Full hook set only.
#[btf_tracepoint(function = "netif_receive_skb")]
#[inline(always)]
pub fn netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::NetifReceive, skb, &NO_EXTRA, None);
    0
}

/// `net_dev_start_xmit(const struct sk_buff *skb, const struct net_device *dev)`. Full hook
/// set only.
#[btf_tracepoint(function = "net_dev_start_xmit")]
#[inline(always)]
pub fn net_dev_start_xmit(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::DevXmit, skb, &NO_EXTRA, None);
    0
}

/// Is a packet not tracked (yet) one of ours? For a drop seen before any other hook.
#[inline(always)]
fn might_be_ours(c: &Config, skb: u64, vx_off: u16) -> bool {
    let Some((p, _, _, _)) = skb_pkt(skb, vx_off) else {
        return false;
    };
    classify(c, p, false) != 0
}

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)`
/// (`reason` since 5.17, `rx_sk` since 6.11: only the first two are read on every kernel).
#[btf_tracepoint(function = "kfree_skb")]
#[inline(always)]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason = crate::kfree_reason(&ctx);
    // Everything cheap before the stack walk (microseconds): only a packet of ours, not past
    // its budget, in the tap's namespace, gets a stack.
    let Some(c) = config() else { return 0 };
    // A drop in another namespace (a container's, past a veth) is never this host path's:
    // three loads turn it away before the packet is read or a map is asked. A followed skb
    // dropped there keeps its TRACKED entry until the LRU bound ages it out (its IP id tells
    // it from the next packet in the same memory).
    let ns = skb_netns(skb);
    if ns != 0 && ns != c.filter.netns {
        return 0;
    }
    let Some(addrs) = skb_addrs(c, skb) else {
        return 0;
    };
    let tracked = track_get(skb, addrs.ip_id);
    match tracked {
        Some(t) if t & TRACK_SUPPRESSED != 0 => {
            track_forget(skb);
            count(CNT_SAMPLED_OUT);
            return 0;
        }
        Some(_) => {}
        None => {
            if !addrs.could_start(c, || false) || !might_be_ours(c, skb, addrs.vx_off) {
                return 0;
            }
        }
    }
    // A packet the host made has no device before it is output (a drop at OUTPUT): its
    // route's device tells the namespace.
    let ns = if ns == 0 { route_netns(skb) } else { ns };
    if ns != c.filter.netns {
        // No device to tell the namespace by: not a drop this host path can place.
        track_forget(skb);
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
    observe_skb(HookKind::Drop, skb, &x, Some((addrs, tracked)));
    0
}

/// `consume_skb(struct sk_buff *skb, void *location)`: normal end of an skb's life. Full hook
/// set only (the path set lets TRACKED age instead).
#[btf_tracepoint(function = "consume_skb")]
#[inline(always)]
pub fn consume_skb(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    observe_skb(HookKind::Consume, skb, &NO_EXTRA, None);
    0
}
