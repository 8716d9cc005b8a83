//! The one drop classifier: what a drop's own evidence — the kernel's drop reason, the function
//! that freed the skb and the kernel stack — says about where and why a packet died.
//!
//! `follow` (a journey's drop site, `Journey::outcome`) and `watch` (the labels of its drop
//! metrics) both place a drop through [`classify`], so a drop is named the same way in a verdict
//! and in `/metrics`. A journey adds what only it knows (the hook the packet entered and never
//! left, the route looked up for it, the hop before the drop); `watch`, which has no journey,
//! uses [`DropClass::place`] with the kind of device that dropped.
//!
//! Kernels before 5.17 pass no reason to the `kfree_skb` tracepoint
//! (`include/trace/events/skb.h`: the `reason` argument arrived in 5.17). There the reason is
//! inferred from the function that freed the skb ([`INFERRED_REASONS`], the one place a reason
//! name is not read from the kernel's BTF enum), and the class says so.

use crate::model::event::NfHook;
use crate::model::stage::Stage;

/// Where a drop's own evidence puts it, before any journey context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropArea {
    /// A route lookup failed (no route, blackhole, rp_filter, …).
    Routing,
    /// The bridge dropped the frame itself (STP state, VLAN, …), not a netfilter hook it ran.
    Bridge,
    /// A netfilter verdict; the stack names the hook where it can (`None`: it does not).
    Netfilter(Option<(Stage, Option<NfHook>)>),
    /// On the way out of a device: neighbour, qdisc, tc, size.
    Egress,
    /// Nothing in the evidence places it: the hop before it (or the device) does.
    Elsewhere,
}

/// What [`classify`] makes of one drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropClass {
    /// The kernel's reason name (`NETFILTER_DROP`), inferred when the kernel gave none.
    pub reason: String,
    /// The kernel gave no reason (before 5.17): `reason` was inferred from the location.
    pub reason_inferred: bool,
    pub area: DropArea,
    /// The dropping hook was run by bridge netfilter (`br_nf_forward_ip`, …) for a bridged
    /// frame, not by the IP stack for a routed packet.
    pub bridged: bool,
    /// The dropping hook is one of the bridge family's own (an nftables `bridge` table or
    /// ebtables), run by the bridge itself (`__br_forward`, `br_handle_frame`, …).
    pub bridge_family: bool,
}

impl DropClass {
    /// The stage and netfilter hook of the drop from its evidence alone; `device_stage` is the
    /// stage of the device that dropped it (tap, bridge or another device), used when nothing
    /// else places it.
    pub fn place(&self, device_stage: Stage) -> (Stage, Option<NfHook>) {
        match self.area {
            DropArea::Routing => (Stage::Routing, None),
            DropArea::Bridge => (Stage::Bridge, None),
            DropArea::Netfilter(from_stack) => from_stack.unwrap_or((Stage::Netfilter, None)),
            DropArea::Egress => (Stage::Egress, None),
            DropArea::Elsewhere => (device_stage, None),
        }
    }
}

/// Reason names for kernels whose `kfree_skb` tracepoint has no reason argument (5.10–5.16),
/// by the function that freed the skb there (Linux 5.10 sources). Only sites whose drops have
/// one cause in practice are listed; any other drop keeps `NOT_SPECIFIED` and is placed by
/// its location and stack as on any kernel.
pub const INFERRED_REASONS: &[(&str, &str)] = &[
    // A netfilter verdict: nf_hook_slow frees the skb on NF_DROP (net/netfilter/core.c).
    ("nf_hook_slow", "NETFILTER_DROP"),
    ("nft_do_chain", "NETFILTER_DROP"),
    ("ipt_do_table", "NETFILTER_DROP"),
    ("ebt_do_table", "NETFILTER_DROP"),
    // A qdisc's enqueue refused the packet; __dev_xmit_skb frees its to_free list
    // (net/core/dev.c).
    ("kfree_skb_list", "QDISC_DROP"),
    ("__dev_xmit_skb", "QDISC_DROP"),
    // The neighbour never resolved (net/core/neighbour.c).
    ("neigh_invalidate", "NEIGH_FAILED"),
    ("__neigh_event_send", "NEIGH_QUEUEFULL"),
    // VXLAN with no forwarding entry for the destination (drivers/net/vxlan.c).
    ("vxlan_xmit", "NO_TX_TARGET"),
];

/// The reason ip_error (net/ipv4/route.c) gives a packet on 5.17+, from what the route
/// lookup of the packet said: a route found yet the packet refused means forwarding is off
/// (IP_INADDRERRORS), no route at all IP_INNOROUTES, anything else (blackhole, unreachable,
/// prohibit) no specific reason. For kernels that pass none, where a journey knows its route.
pub fn ip_error_reason(route_err: i32) -> &'static str {
    match route_err {
        0 => "IP_INADDRERRORS",
        -101 => "IP_INNOROUTES",
        _ => "NOT_SPECIFIED",
    }
}

/// The reason name for a drop at `loc_fn` on a kernel that gives none.
pub fn inferred_reason(loc_fn: &str) -> Option<&'static str> {
    INFERRED_REASONS
        .iter()
        .find(|(f, _)| *f == loc_fn)
        .map(|(_, r)| *r)
}

/// `nft_do_chain+0x637` → `nft_do_chain`; `br_nf_forward_ip.part.0+0x2b2` → `br_nf_forward_ip`.
pub fn symbol_fn(frame: &str) -> &str {
    let f = frame.split('+').next().unwrap_or("");
    f.split('.').next().unwrap_or("")
}

/// Places a drop from its own evidence: `reason` as the kernel named it (`None`: the kernel
/// gave none, or its value has no name), `location` (`ip_error+0x94`) and the kernel stack.
pub fn classify(reason: Option<&str>, location: Option<&str>, stack: &[String]) -> DropClass {
    let loc_fn = location.map(symbol_fn).unwrap_or("");
    let (reason, reason_inferred) = match reason {
        Some(r) => (r.to_string(), false),
        None => match inferred_reason(loc_fn) {
            Some(r) => (r.to_string(), true),
            None => ("NOT_SPECIFIED".to_string(), true),
        },
    };
    let r = reason.as_str();
    // The drop reason and the function that dropped decide first (include/net/dropreason-core.h,
    // Linux 6.18); the stack only says which hook a netfilter verdict came from. Route errors
    // are answered by ip_error() (net/ipv4/route.c) even under bridge netfilter's hooks.
    let netfilter = r.starts_with("NETFILTER")
        || ["nft_", "nf_", "ipt_", "ebt_", "nfqnl_"]
            .iter()
            .any(|p| loc_fn.starts_with(p));
    let routing = loc_fn == "ip_error"
        || loc_fn.starts_with("ip_route")
        || loc_fn.starts_with("ip6_route")
        || loc_fn == "ip6_pkt_drop"
        || matches!(
            r,
            "IP_INNOROUTES"
                | "IP_OUTNOROUTES"
                | "IP_INADDRERRORS"
                | "IP_RPFILTER"
                | "IP_INVALID_SOURCE"
                | "IP_LOCAL_SOURCE"
                | "IP_INVALID_DEST"
        );
    // IPv6 neighbour failures are freed by neigh_invalidate with no specific reason.
    let egress = r.starts_with("NEIGH")
        || loc_fn.starts_with("neigh_")
        || r.starts_with("QDISC")
        || r.starts_with("TC_")
        || r == "PKT_TOO_BIG"
        || r == "DEV_READY"
        || r == "TXQUEUE_FULL";
    let bridge = r.starts_with("BRIDGE") || r.contains("VLAN") || loc_fn.starts_with("br_");
    let area = if routing {
        DropArea::Routing
    } else if bridge && !netfilter {
        DropArea::Bridge
    } else if netfilter {
        DropArea::Netfilter(hook_from_stack(stack))
    } else if egress {
        DropArea::Egress
    } else {
        DropArea::Elsewhere
    };
    DropClass {
        reason,
        reason_inferred,
        area,
        // The hook that dropped was run by bridge netfilter (br_nf_forward_ip, …), not by
        // the IP stack (ip_forward, …): the frame was being bridged, not routed.
        bridged: netfilter && hook_caller(stack).is_some_and(|f| f.starts_with("br_nf_")),
        bridge_family: netfilter && hook_caller(stack).is_some_and(|f| bridge_hook(f).is_some()),
    }
}

/// The function that ran the netfilter hook which dropped: the caller of the innermost
/// `nf_hook_slow`.
fn hook_caller(stack: &[String]) -> Option<&str> {
    stack
        .iter()
        .map(|f| symbol_fn(f))
        .skip_while(|f| *f != "nf_hook_slow")
        .nth(1)
}

/// The bridge family's own hooks, by the bridge function that runs them
/// (net/bridge/br_input.c, br_forward.c; Linux 5.10–6.18): an nftables `bridge` table or
/// ebtables decides there, for frames the bridge handles.
fn bridge_hook(caller: &str) -> Option<NfHook> {
    Some(match caller {
        "br_handle_frame" => NfHook::Prerouting,
        "br_pass_frame_up" => NfHook::Input,
        "__br_forward" | "br_forward" => NfHook::Forward,
        "br_forward_finish" => NfHook::Postrouting,
        _ => return None,
    })
}

/// Netfilter hook named by the kernel stack of a drop (the function that called nf_hook_slow),
/// per net/ipv4/ip_input.c, ip_forward.c, ip_output.c and net/bridge (Linux 5.10–6.18).
pub fn hook_from_stack(stack: &[String]) -> Option<(Stage, Option<NfHook>)> {
    let pos = stack.iter().position(|s| symbol_fn(s) == "nf_hook_slow")?;
    for caller in stack[pos + 1..].iter().map(|s| symbol_fn(s)) {
        let hook = match caller {
            "ip_rcv" | "ip_rcv_core" | "ip_list_rcv" | "ip_sublist_rcv" => NfHook::Prerouting,
            "ip_local_deliver" => NfHook::Input,
            "ip_forward" => NfHook::Forward,
            "__ip_local_out" | "ip_local_out" => NfHook::Output,
            "ip_output" | "ip_finish_output" => NfHook::Postrouting,
            // IPv6 (net/ipv6/ip6_input.c, ip6_output.c).
            "ipv6_rcv" | "ip6_rcv_core" | "ipv6_list_rcv" | "ip6_sublist_rcv" => NfHook::Prerouting,
            "ip6_input" => NfHook::Input,
            "ip6_forward" => NfHook::Forward,
            "__ip6_local_out" | "ip6_local_out" => NfHook::Output,
            "ip6_output" | "ip6_finish_output" => NfHook::Postrouting,
            // Bridge netfilter runs the IPv4 hooks for bridged frames
            // (net/bridge/br_netfilter_hooks.c, Linux 6.18).
            "br_nf_pre_routing" | "br_nf_pre_routing_ipv6" => NfHook::Prerouting,
            "br_nf_forward_ip" | "br_nf_forward_arp" | "br_nf_forward" => NfHook::Forward,
            "br_nf_post_routing" => NfHook::Postrouting,
            c if bridge_hook(c).is_some() => bridge_hook(c)?,
            c if c.starts_with("br_") => return Some((Stage::Bridge, None)),
            _ => continue,
        };
        return Some((Stage::Netfilter, Some(hook)));
    }
    Some((Stage::Netfilter, None))
}

#[cfg(test)]
mod tests;
