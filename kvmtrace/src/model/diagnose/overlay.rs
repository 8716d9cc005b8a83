//! Rule: the followed packet dropped by a VXLAN overlay on its way out of the host. Each fault
//! is told by what the kernel does (measured on 6.18, kvmtrace/tests/vxlan.rs):
//! - no forwarding entry and no default remote for the destination MAC: `vxlan_xmit` frees
//!   the frame with `NO_TX_TARGET` (drivers/net/vxlan/vxlan_core.c);
//! - no underlay route to the remote VTEP: `vxlan_xmit_one` frees it with `IP_OUTNOROUTES`
//!   (an unbound VXLAN device; one bound to a `dev` takes a missing route for an on-link
//!   remote and ARPs for it there);
//! - a frame larger than the VXLAN port's MTU (the underlay's less 50 bytes): the bridge
//!   drops it silently when forwarding to the port (`br_dev_queue_push_xmit`, or
//!   `br_nf_dev_queue_xmit` with bridge netfilter), no ICMP error to the guest;
//! - the outer packet dropped by the host's firewall: a netfilter drop at OUTPUT or
//!   POSTROUTING with `iptunnel_xmit` / `vxlan_xmit_one` below it on the stack;
//! - a VXLAN device whose MTU is larger than its underlay carries: no drop, the kernel
//!   answers the guest with "fragmentation needed" ([`pmtu_answer`]).
//!
//! The common fields (status, direction, reason, location, hook, firewall, chains) are the
//! dropped rule's; this rule names the overlay's part of it: stage, device and what to do.

use super::dropped;
use super::flow::{hops, Flow};
use crate::model::event::{Direction, Point, TraceEvent};
use crate::model::facts::{VxlanFacts, VXLAN_OVERHEAD};
use crate::model::fix;
use crate::model::journey::{DropSite, Outcome};
use crate::model::stage::Stage;
use crate::model::verdict::{Status, Verdict};

/// The overlay's faults, as the drop shows them.
enum Fault<'a> {
    NoRemote(&'a VxlanFacts),
    NoRoute(&'a VxlanFacts),
    Mtu(&'a VxlanFacts, u32),
    Firewall(&'a VxlanFacts),
}

pub(super) fn overlay_drop(f: &Flow, v: &mut Verdict) -> bool {
    let Some((dir, site)) = f.first_drop.clone() else {
        return false;
    };
    let Some((hop, ip_len)) = drop_hop(f, dir) else {
        return false;
    };
    let Some(fault) = fault(f, &site, hop, ip_len) else {
        return false;
    };
    // Status, direction, reason, location, hook and firewall as for any drop.
    dropped::dropped(f, v);
    // The overlay's fix, not the generic drop's.
    v.fix = None;
    let what = match dir {
        Direction::Request => "the request",
        Direction::Reply => "the reply",
    };
    let (outer_src, outer_dst) = match (&hop.vxlan, fault_vx(&fault)) {
        (Some(x), _) => (Some(x.src), Some(x.dst)),
        (None, vx) => (vx.local, vx.remote),
    };
    let addr = |a: Option<std::net::Ipv4Addr>| a.map_or("?".to_string(), |a| a.to_string());
    let underlay = |vx: &VxlanFacts| vx.dev.clone().or_else(|| vx.route_dev.clone());
    let mut s = match fault {
        Fault::NoRemote(vx) => {
            v.stage = Some(Stage::Egress);
            v.device = Some(vx.name.clone());
            let mac = hop.dmac.clone().unwrap_or_else(|| "?".into());
            let dst = vx
                .remote
                .map_or("REMOTE_VTEP".to_string(), |r| r.to_string());
            v.fix = vx
                .remote
                .map(|r| fix::vxlan_default_remote(&vx.name, &r.to_string()));
            format!(
                "{what} was dropped by the VXLAN device {} (vni {}): its forwarding database \
                 has no entry for the destination MAC {mac} and no default remote to send it \
                 to [{}] → give {} the remote VTEP: `bridge fdb append 00:00:00:00:00:00 dev {} \
                 dst {dst}` (or an entry for {mac}); `bridge fdb show dev {}` lists what it knows",
                vx.name, vx.vni, site.reason, vx.name, vx.name, vx.name
            )
        }
        Fault::NoRoute(vx) => {
            v.stage = Some(Stage::Routing);
            v.device = Some(vx.name.clone());
            let ul = match underlay(vx) {
                Some(d) => format!("underlay device {d}"),
                None => format!(
                    "no underlay device: {} is bound to none and no route covers {}",
                    vx.name,
                    addr(vx.remote)
                ),
            };
            format!(
                "{what} was encapsulated by the VXLAN device {} (vni {}), but its outer packet \
                 {} > {} udp/{} has no route on the underlay ({ul}) [{}] → check `ip route get \
                 {}` and add a route to the remote VTEP",
                vx.name,
                vx.vni,
                addr(outer_src),
                addr(outer_dst),
                vx.port,
                site.reason,
                addr(vx.remote)
            )
        }
        Fault::Mtu(vx, len) => {
            v.stage = Some(Stage::Bridge);
            v.device = Some(vx.name.clone());
            let bridge = f
                .facts
                .master_of(&vx.name)
                .map_or("the bridge".to_string(), str::to_string);
            let ul = underlay(vx)
                .and_then(|d| f.facts.mtu_of(&d).map(|m| (d, m)))
                .map(|(d, m)| {
                    format!(
                        ": its underlay {d} has MTU {m}, less {VXLAN_OVERHEAD} bytes of VXLAN \
                         encapsulation"
                    )
                })
                .unwrap_or_default();
            format!(
                "{what} ({len} bytes of IP) is larger than the MTU {} of the VXLAN port {} \
                 (vni {}){ul}; {bridge} dropped it when forwarding to {} without telling the \
                 guest (no ICMP error) [{}] → set the guest's MTU to {} (or raise the \
                 underlay's MTU by {VXLAN_OVERHEAD} and then {}'s)",
                vx.mtu, vx.name, vx.vni, vx.name, site.reason, vx.mtu, vx.name
            )
        }
        Fault::Firewall(vx) => {
            let hook = site.hook.map_or("a netfilter", |h| h.name());
            let who = match (v.firewall.as_deref(), v.chains.first()) {
                (Some(fw), Some(c)) => format!(" ({fw}: {c})"),
                (Some(fw), None) => format!(" ({fw})"),
                _ => String::new(),
            };
            let (how, peer) = match dir {
                Direction::Request => ("left through", format!("to {}", addr(outer_dst))),
                Direction::Reply => ("came back for", format!("from {}", addr(outer_src))),
            };
            // The remote VTEP, named: the accept rule at the head of the one chain on the hook.
            let remote = match dir {
                Direction::Request => outer_dst,
                Direction::Reply => outer_src,
            };
            v.fix = site
                .hook
                .and_then(|h| fix::only_chain(f.facts, h, false))
                .zip(remote)
                .map(|(ch, r)| {
                    fix::overlay_accept(ch, vx.port, &r.to_string(), dir == Direction::Request)
                });
            format!(
                "{what} {how} the VXLAN device {} (vni {}), and its encapsulated (outer) \
                 packet {} > {} udp/{} was dropped by the {hook} hook{who} on {} [{}] → let \
                 the overlay's outer packets through: accept udp dport {} {peer} in the {} rules",
                vx.name,
                vx.vni,
                addr(outer_src),
                addr(outer_dst),
                vx.port,
                site.device,
                site.reason,
                vx.port,
                hook.to_lowercase()
            )
        }
    };
    if f.host_answered {
        if let Some(r) = &f.reply_kind {
            s.push_str(&format!(
                "; the host answered in the destination's place ({r})"
            ));
        }
    }
    v.summary = s;
    true
}

fn fault_vx<'a>(f: &Fault<'a>) -> &'a VxlanFacts {
    match f {
        Fault::NoRemote(vx) | Fault::NoRoute(vx) | Fault::Mtu(vx, _) | Fault::Firewall(vx) => vx,
    }
}

/// The drop event of the first dropped journey in `dir`, and the packet's IP length as it left
/// the guest (its first hop's length less the Ethernet header).
fn drop_hop<'a>(f: &'a Flow, dir: Direction) -> Option<(&'a TraceEvent, u32)> {
    let outs = match dir {
        Direction::Request => &f.req_out,
        Direction::Reply => &f.rep_out,
    };
    let (j, _) = outs
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Dropped(_)))?;
    let hop = j.hops.iter().find(|h| h.point == Point::Drop)?;
    let first = j
        .hops
        .iter()
        .find(|h| matches!(h.point, Point::TapIngress | Point::TapEgress));
    let ip_len = first.map_or(hop.len, |h| h.len.saturating_sub(14));
    Some((hop, ip_len))
}

fn fault<'a>(f: &'a Flow, site: &DropSite, hop: &TraceEvent, ip_len: u32) -> Option<Fault<'a>> {
    let facts = f.facts;
    let fname = |s: &str| s.split('+').next().unwrap_or("").to_string();
    let loc = site.location.as_deref().map(fname).unwrap_or_default();
    let in_stack = |name: &str| hop.stack.iter().any(|s| fname(s) == name);
    // The VXLAN device: the one the skb was on, else the one whose outer packet this is.
    let vx = facts.vxlan(&site.device).or_else(|| {
        let x = hop.vxlan?;
        facts.vxlans.iter().find(|v| {
            // Ours leaving (local source) or coming back (local destination).
            v.vni == x.vni
                && (v.local.is_none() || v.local == Some(x.src) || v.local == Some(x.dst))
        })
    });
    let vx = vx.or_else(|| match facts.vxlans.as_slice() {
        [only] if in_stack("vxlan_xmit") => Some(only),
        _ => None,
    })?;
    if site.reason == "NO_TX_TARGET" || loc == "vxlan_xmit" {
        return Some(Fault::NoRemote(vx));
    }
    if loc == "vxlan_xmit_one" {
        return Some(Fault::NoRoute(vx));
    }
    if site.stage == Stage::Netfilter
        && (hop.vxlan.is_some() || in_stack("iptunnel_xmit") || in_stack("vxlan_xmit_one"))
    {
        return Some(Fault::Firewall(vx));
    }
    let bridge_xmit = loc == "br_dev_queue_push_xmit" || loc == "br_nf_dev_queue_xmit";
    if bridge_xmit && site.device == vx.name && vx.mtu != 0 && ip_len > vx.mtu {
        return Some(Fault::Mtu(vx, ip_len));
    }
    None
}

/// Rule: the VXLAN device answered the guest with "fragmentation needed" in the destination's
/// name. A VXLAN port of a bridge whose MTU is larger than its underlay carries (an unbound
/// one keeps 1500 whatever the underlay's) turns a too-big frame with DF into an ICMP
/// "fragmentation needed" with the MTU that fits, sent back into the bridge from the
/// destination's address (`skb_tunnel_check_pmtu` → `iptunnel_pmtud_build_icmp`,
/// net/ipv4/ip_tunnel_core.c, Linux 6.18; measured: the request's skb comes back as the error
/// on the VXLAN device's receive path, no drop). Without DF the outer packet is fragmented.
pub(super) fn pmtu_answer(f: &Flow, v: &mut Verdict) -> bool {
    let Some((vx, hop)) = f.rep.iter().find_map(|j| {
        // The error's first sight: received on a VXLAN device, not out of the underlay.
        let first = j.hops.iter().find(|h| h.point != Point::Fib)?;
        let vx = f.facts.vxlan(&first.device)?;
        let fits = first.point == Point::NetifReceive
            && first.vxlan.is_none()
            && first.tuple.is_some_and(|t| t.proto == 1)
            && first.icmp_type == 3
            && first.icmp_code == 4;
        fits.then_some((vx, first))
    }) else {
        return false;
    };
    let k = f.k;
    let mtu = hop.icmp_mtu.unwrap_or(0);
    let len = hops(f.req)
        .find(|h| h.point == Point::TapIngress)
        .map_or(0, |h| h.len.saturating_sub(14));
    v.status = Status::Dropped;
    v.direction = Some(Direction::Request);
    v.stage = Some(Stage::Egress);
    v.device = Some(vx.name.clone());
    let ul = vx.dev.clone().or_else(|| vx.route_dev.clone());
    let ul_text = match ul
        .as_deref()
        .and_then(|d| f.facts.mtu_of(d).map(|m| (d, m)))
    {
        Some((d, m)) => format!(
            " on its underlay {d} (MTU {m}: room for {} bytes inside the {VXLAN_OVERHEAD} of \
             VXLAN encapsulation)",
            m.saturating_sub(VXLAN_OVERHEAD)
        ),
        None => String::new(),
    };
    v.summary = format!(
        "the request ({len} bytes of IP, don't fragment) is larger than the VXLAN device {} \
         (vni {}, MTU {}) can carry{ul_text}: the kernel answered the guest with an ICMP \
         \"fragmentation needed, MTU {mtu}\" in {}'s name instead of sending it → set {}'s MTU \
         to {mtu} (`ip link set {} mtu {mtu}`, or bind it to its underlay with `dev`) and the \
         guest's to {mtu}, or raise the underlay's MTU by {VXLAN_OVERHEAD}",
        vx.name, vx.vni, vx.mtu, k.remote, vx.name, vx.name
    );
    true
}

/// Rule: the request left the host inside VXLAN on the underlay and no reply came back
/// through the overlay. Without it the request would count as leaving on the VXLAN device
/// with the VM's own source, and the verdict would ask for a MASQUERADE the overlay never
/// needs.
pub(super) fn left_through_overlay(f: &Flow, v: &mut Verdict) -> bool {
    if !f.delivered.is_empty() || f.first_drop.is_some() {
        return false;
    }
    let Some(out) = hops(f.req).find(|h| h.point == Point::DevXmit && h.vxlan.is_some()) else {
        return false;
    };
    let Some(x) = out.vxlan else {
        return false;
    };
    let vx = f.facts.vxlans.iter().find(|v| v.vni == x.vni);
    v.status = Status::NoReply;
    v.direction = Some(Direction::Request);
    v.stage = Some(Stage::Egress);
    v.device = Some(out.device.clone());
    let via = vx.map_or(String::new(), |vx| format!(" from {}", vx.name));
    let came_back = if f.rep.is_empty() {
        "nothing came back through the overlay".to_string()
    } else {
        format!(
            "{} reply packet(s) came back but did not reach the tap",
            f.rep.len()
        )
    };
    v.summary = format!(
        "no reply: the request left the host inside VXLAN{via} on {} ({}) and {came_back} → \
         the problem is past this host: the other VTEP {} (a VXLAN device with vni {} and \
         port {}, a remote or forwarding entry back to {}, its firewall for udp/{}) or {} itself",
        out.device,
        x.describe(),
        x.dst,
        x.vni,
        vx.map_or(4789, |v| v.port),
        x.src,
        vx.map_or(4789, |v| v.port),
        f.k.remote
    );
    true
}
