//! Rules: no reply.

use super::flow::{hops, tap_misplaced, Flow};
use crate::model::event::{DevKind, Direction, NfHook};
use crate::model::facts::DevFacts;
use crate::model::fix;
use crate::model::journey::Outcome;
use crate::model::stage::Stage;
use crate::model::verdict::{Status, Verdict};

/// The request left a macvtap guest's lower device addressed to the MAC of another macvtap on
/// that lower device (another guest of this host): macvtaps pass frames to each other only
/// when both are in bridge mode; otherwise they go out on the wire and come back only if the
/// switch there reflects them (VEPA hairpin), never to a private one.
pub(super) fn macvtap_sibling(f: &Flow, v: &mut Verdict) -> bool {
    let facts = f.facts;
    let Some(device) = f.req_out.iter().find_map(|(_, o)| match o {
        Outcome::LeftHost { device, .. } => Some(device.clone()),
        _ => None,
    }) else {
        return false;
    };
    let Some(hop) = hops(f.req).find(|h| h.dev_kind == DevKind::Tap && h.dmac.is_some()) else {
        return false;
    };
    let tap = &hop.device;
    let Some(mine) = facts.device(tap) else {
        return false;
    };
    if mine.macvtap_lower.as_deref() != Some(device.as_str()) {
        return false;
    }
    let dmac = hop.dmac.as_deref().unwrap_or_default();
    let Some(other) = facts.macvtap_siblings(tap).into_iter().find(|d| {
        d.mac
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(dmac))
    }) else {
        return false;
    };
    let mode = |d: &DevFacts| d.macvtap_mode.clone().unwrap_or("?".into());
    let (m1, m2) = (mode(mine), mode(other));
    if m1 == "bridge" && m2 == "bridge" {
        return false;
    }
    let o = &other.name;
    v.fix = Some(
        [(tap.as_str(), &m1), (o.as_str(), &m2)]
            .iter()
            .filter(|(_, m)| m.as_str() != "bridge")
            .map(|(d, _)| fix::macvtap_bridge_mode(d))
            .collect::<Vec<_>>()
            .join(" && "),
    );
    v.status = Status::NoReply;
    v.direction = Some(Direction::Request);
    v.stage = Some(Stage::Egress);
    v.device = Some(device.clone());
    v.summary = format!(
        "no reply: the request to {} is for the guest on {o} (MAC {dmac}), another macvtap on \
         {device}, but it left the host through {device}: macvtaps of one lower device pass \
         frames to each other only when both are in bridge mode ({tap} is {m1}, {o} is {m2}); \
         otherwise the frames go out on {device}'s wire and come back only if the switch there \
         reflects them (VEPA hairpin), never to a private macvtap → put both in bridge mode: \
         `ip link set {tap} type macvtap mode bridge` and `ip link set {o} type macvtap mode \
         bridge` (libvirt: `<source dev='{device}' mode='bridge'/>`)",
        f.k.remote
    );
    true
}

/// The request left the host and no reply reached the VM: not rewritten (no MASQUERADE),
/// nothing came back, or the replies came back to a bridge the tap is not on.
pub(super) fn left_host(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow {
        k,
        req,
        rep,
        facts,
        ref req_out,
        ..
    } = f;
    if let Some((_, Outcome::LeftHost { device, tuple })) = req_out
        .iter()
        .find(|(_, o)| matches!(o, Outcome::LeftHost { .. }))
    {
        v.status = Status::NoReply;
        v.direction = Some(Direction::Request);
        v.stage = Some(Stage::Egress);
        v.device = Some(device.clone());
        let src = tuple.map(|t| t.src);
        let private = src.is_some_and(|s| s == k.guest);
        v.summary = if private && k.guest.is_ipv6() {
            // IPv6 is routed, not translated, as a rule: the way back is a route to the VM's
            // prefix (NAT66/NPTv6 only where a host hides its guests).
            format!(
                "no reply: the request left the host on {device} with the VM's own source {} \
                 and nothing came back → the outside needs a route back to the VM's IPv6 prefix \
                 via this host (or the guest a routable address, or NAT66/NPTv6 out of \
                 {device}); past this host: upstream gateway, remote firewall, destination down",
                k.guest
            )
        } else if private {
            v.fix = fix::vm_subnet(facts, k.guest).map(|(_, subnet)| {
                fix::masquerade(fix::nat_target(facts, false), &subnet, false, Some(device))
            });
            format!(
                "no reply: the request left the host on {device} with the VM's own source {} \
                 (not rewritten: no MASQUERADE/SNAT for it), so the outside cannot answer → add \
                 a masquerade rule for the VM's network out of {device}",
                k.guest
            )
        } else if rep.is_empty() {
            format!(
                "no reply: the request left the host on {device}{} and nothing came back → the \
                 problem is past this host (upstream gateway, remote firewall, destination down)",
                src.map(|s| format!(" as {s}")).unwrap_or_default()
            )
        } else {
            let mut s = format!(
                "no reply reached the VM: the request left on {device} and {} reply packet(s) \
                 came back but did not reach the tap",
                rep.len()
            );
            // Replies routed to a bridge the tap is not a port of: the tap is on the wrong one.
            let tap = hops(req)
                .find(|h| h.dev_kind == DevKind::Tap)
                .map(|h| h.device.clone());
            let reply_dev = rep
                .iter()
                .filter_map(|j| j.route())
                .find(|r| r.err == 0 && r.dev_kind == DevKind::Bridge)
                .map(|r| r.device);
            if let (Some(tap), Some(rd)) = (tap, reply_dev) {
                if let Some(why) = tap_misplaced(facts, &tap, &rd) {
                    s.push_str(&format!(": {why}"));
                    v.fix = Some(fix::set_master(&tap, &rd));
                    v.stage = Some(Stage::Tap);
                    v.device = Some(tap);
                }
            }
            s
        };
        return true;
    }
    false
}

/// Requests seen but with no end observed (in flight at the end, or delivered locally).
pub(super) fn unfinished(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow { k, ref req_out, .. } = f;
    // Requests seen but with no end we could observe.
    let last = req_out.last().map(|(_, o)| o.clone());
    v.status = Status::NoReply;
    v.direction = Some(Direction::Request);
    if let Some(Outcome::InFlight { stage, device }) = last {
        v.stage = Some(stage);
        v.device = Some(device.clone()).filter(|d| !d.is_empty());
        v.summary = format!(
            "no reply: the request was last seen at the {} stage on {device} and its end was \
             not observed",
            stage.name()
        );
    } else if let Some(Outcome::DeliveredLocally) = last {
        v.stage = Some(Stage::Netfilter);
        v.hook = Some(NfHook::Input);
        v.summary = format!(
            "the request was delivered to the host itself (INPUT), not forwarded: {} is a local \
             address here",
            k.remote
        );
    } else {
        v.summary = "no reply was seen".into();
    }
    true
}
