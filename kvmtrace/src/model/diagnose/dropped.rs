//! Rule: dropped, with the summaries of each kind of drop and the root cause behind it.

use super::flow::{hops, tap_misplaced, Flow};
use crate::model::drop::{ip_error_reason, symbol_fn};
use crate::model::event::{DevKind, Direction, NfHook};
use crate::model::facts::{HostFacts, NfChain};
use crate::model::fix;
use crate::model::journey::{DropSite, Journey, Outcome, Rewrite};
use crate::model::stage::Stage;
use crate::model::verdict::{FlowKey, Status, Verdict};

/// The first drop, request or reply, named where the kernel dropped it — or, when its cause
/// is elsewhere on the VM's side, where the cause is ([`root_cause`]).
pub(super) fn dropped(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow {
        k,
        rep,
        facts,
        host_answered,
        ref reply_kind,
        ..
    } = f;
    if let Some((dir, mut site)) = f.first_drop.clone() {
        // No reason from the kernel (before 5.17) and freed by ip_error: with forwarding off
        // (a host fact) it is the reason 6.18 gives then, whatever the route lookup saw.
        let fwd_off = if k.remote.is_ipv6() {
            facts.ip6_forward == Some(false)
        } else {
            facts.ip_forward == Some(false)
        };
        if site.reason_inferred
            && fwd_off
            && site.location.as_deref().map(symbol_fn) == Some("ip_error")
        {
            site.reason = ip_error_reason(0).to_string();
        }
        v.status = Status::Dropped;
        v.direction = Some(dir);
        v.stage = Some(site.stage);
        v.hook = site.hook;
        v.device = Some(site.device.clone()).filter(|d| !d.is_empty());
        v.reason = Some(site.reason.clone());
        v.reason_inferred = site.reason_inferred;
        v.location = site.location.clone();
        v.route = site.route.clone();
        let what = match dir {
            Direction::Request => "the request",
            Direction::Reply => "the reply",
        };
        let mut s = match (site.stage, site.hook) {
            (Stage::Netfilter, Some(h)) if site.bridge_family => {
                let (fw, chains) = chains_on(facts, h, "bridge");
                v.firewall = fw.clone();
                v.chains = chains.clone();
                v.family = Some("bridge".into());
                let who = match (
                    fw.as_deref(),
                    chains.iter().find(|c| c.contains("policy drop")),
                    chains.first(),
                ) {
                    (Some(fw), Some(c), _) => format!(" ({fw}: chain {c})"),
                    (Some(fw), None, Some(c)) => format!(" ({fw}: a rule in {c})"),
                    _ => {
                        " (no nftables bridge chain is on that hook: ebtables-legacy?)".to_string()
                    }
                };
                format!(
                        "{what} was dropped by the bridge {h} hook{who} on {} [{}]: the bridge's own \
                         firewall, which sees frames the bridge handles → check the bridge {} rules \
                         (`nft list ruleset bridge`, or `ebtables -L`) for {} → {}",
                        site.device,
                        site.reason,
                        h.name().to_lowercase(),
                        k.guest,
                        k.remote
                    )
            }
            (Stage::Netfilter, Some(h)) => {
                let (fw, chains) =
                    chains_on(facts, h, if k.remote.is_ipv6() { "ip6" } else { "ip" });
                v.firewall = fw.clone();
                v.chains = chains.clone();
                let drop_policies: Vec<&String> = chains
                    .iter()
                    .filter(|c| c.contains("policy drop"))
                    .collect();
                let who = match (fw.as_deref(), drop_policies.first(), chains.first()) {
                    (Some(fw), Some(c), _) => format!(" ({fw}: chain {c})"),
                    (Some(fw), None, Some(c)) => format!(" ({fw}: a rule in {c})"),
                    (Some(fw), None, None) => format!(" ({fw})"),
                    _ => String::new(),
                };
                let mut s = format!(
                    "{what} was dropped by the {h} hook{who} on {} [{}] → check the {} rules \
                     for {} → {}",
                    site.device,
                    site.reason,
                    h.name().to_lowercase(),
                    k.guest,
                    k.remote
                );
                if site.bridged {
                    s.push_str(
                        ": this is bridged traffic, which br_netfilter hands to the IPv4 hooks \
                         (net.bridge.bridge-nf-call-iptables=1); allow the VM's traffic in that \
                         chain, or set bridge-nf-call-iptables=0 if the host is not meant to \
                         filter bridged frames",
                    );
                }
                if h == NfHook::Forward && !site.bridged {
                    v.fix = forward_fix(k, dir, facts);
                }
                if dir == Direction::Reply && h == NfHook::Forward {
                    s.push_str(
                        ": the requests are let out but their replies are not; accept \
                         established connections first (`ct state established,related accept`)",
                    );
                }
                s
            }
            (Stage::Routing, _) => {
                let v6 = k.remote.is_ipv6();
                let fwd_off = if v6 {
                    facts.ip6_forward == Some(false)
                } else {
                    facts.ip_forward == Some(false)
                };
                let route = site.route.as_ref().and_then(|r| {
                    r.err_name()
                        .map(|e| format!("{e} in table {}", r.table_name()))
                });
                v.fix = if site.reason == "IP_RPFILTER" {
                    Some(fix::rp_filter_loose(&site.device))
                } else if fwd_off {
                    Some(fix::forwarding_on(v6))
                } else {
                    None
                };
                match (fwd_off, route) {
                    _ if site.reason == "IP_RPFILTER" => {
                        format!(
                        "{what} was dropped by reverse-path filtering (rp_filter) on {}: the way \
                         back to {} does not leave through {} [{}] → check `ip route get {}` and \
                         net.ipv4.conf.{{all,{}}}.rp_filter (2 = loose)",
                        site.device,
                        if dir == Direction::Request { k.guest } else { k.remote },
                        site.device,
                        site.reason,
                        if dir == Direction::Request { k.guest } else { k.remote },
                        site.device
                    )
                    }
                    (true, _) if v6 => format!(
                        "{what} was dropped at routing on {}: IPv6 forwarding is off \
                         (net.ipv6.conf.all.forwarding=0) [{}] → enable it: sysctl -w \
                         net.ipv6.conf.all.forwarding=1",
                        site.device, site.reason
                    ),
                    (true, _) => format!(
                        "{what} was dropped at routing on {}: IP forwarding is off \
                         (net.ipv4.ip_forward=0) [{}] → enable it: sysctl -w net.ipv4.ip_forward=1",
                        site.device, site.reason
                    ),
                    (false, Some(r)) => format!(
                        "{what} was dropped at routing on {}: {r} for {} [{}] → check \
                         `ip route get {}` and the routes of that table",
                        site.device,
                        if dir == Direction::Request {
                            k.remote
                        } else {
                            k.guest
                        },
                        site.reason,
                        if dir == Direction::Request {
                            k.remote
                        } else {
                            k.guest
                        }
                    ),
                    (false, None) if v6 => format!(
                        "{what} was dropped at routing on {} [{}] → check `ip -6 route get \
                         {}` and net.ipv6.conf.all.forwarding",
                        site.device, site.reason, k.remote
                    ),
                    (false, None) => format!(
                        "{what} was dropped at routing on {} [{}] → check `ip route get {}`, \
                         rp_filter and ip_forward",
                        site.device, site.reason, k.remote
                    ),
                }
            }
            (stage, _) => {
                v.fix = egress_fix(f, stage, &site);
                egress_summary(f, what, stage, &site)
            }
        };
        // A packet too big whose "fragmentation needed" / "packet too big" the host's own
        // firewall dropped on its way to the guest: that drop is the root cause (the guest
        // would have lowered its MTU), so the verdict names its hook, chains and device; the
        // summary tells both.
        if let Some(d) = (site.reason == "PKT_TOO_BIG")
            .then(|| lost_mtu_error(rep))
            .flatten()
            .filter(|d| d.stage == Stage::Netfilter && d.hook.is_some())
        {
            let h = d.hook.expect("filtered");
            let family = if k.remote.is_ipv6() { "ip6" } else { "ip" };
            let (fw, chains) = chains_on(facts, h, family);
            v.direction = Some(Direction::Reply);
            v.stage = Some(Stage::Netfilter);
            v.hook = Some(h);
            v.device = Some(d.device.clone()).filter(|d| !d.is_empty());
            v.reason = Some(d.reason.clone());
            v.location = d.location.clone();
            v.route = None;
            if !chains.is_empty() {
                s.push_str(&format!(
                    " (sent by the host from {}; the chains on {h}: {})",
                    d.device,
                    chains.join(", ")
                ));
            }
            v.firewall = fw;
            v.chains = chains;
        }
        if let Some(c) = root_cause(f, dir, &site) {
            v.stage = Some(c.stage);
            v.device = Some(c.device);
            v.fix = c.fix;
            s = c.summary;
        }
        if host_answered {
            if let Some(r) = &reply_kind {
                s.push_str(&format!(
                    "; the host answered in the destination's place ({r})"
                ));
            }
        }
        if site.reason_inferred {
            s.push_str(&format!(
                " (reason {} inferred from where the kernel freed the packet, {}: this kernel's \
                 kfree_skb tracepoint gives no reason)",
                site.reason,
                site.location.as_deref().unwrap_or("unknown")
            ));
        }
        v.summary = s;
        return true;
    }
    false
}

/// Names the firewall and the base chains registered on `hook` that could have dropped.
/// `v6`: the flow is IPv6 (the `ip6` and `inet` tables see it, `ip` ones do not).
/// The base chains of `family` (`ip`, `ip6` — with `inet` — or `bridge`) on `hook`, and which
/// firewall holds them.
fn chains_on(facts: &HostFacts, hook: NfHook, family: &str) -> (Option<String>, Vec<String>) {
    let on_hook: Vec<&NfChain> = facts
        .nft_chains
        .iter()
        .filter(|c| {
            c.hook == hook && (c.family == family || (c.family == "inet" && family != "bridge"))
        })
        .collect();
    let legacy = family != "bridge"
        && facts
            .legacy_tables
            .iter()
            .any(|t| t == "filter" || t == "raw" || t == "mangle");
    let names: Vec<String> = on_hook.iter().map(|c| c.label()).collect();
    let fw = match (on_hook.is_empty(), legacy) {
        (false, false) => Some("nftables".to_string()),
        (true, true) => Some("iptables-legacy".to_string()),
        (false, true) => Some("nftables+iptables-legacy".to_string()),
        (true, false) => None,
    };
    (fw, names)
}

/// A request whose destination (or port) a DNAT rule rewrote, and that then failed: the
/// rewrite is where the operator must look. When nothing came back, the packet was
/// misrouted or its route failed, the verdict is the rewrite's (netfilter, PREROUTING, the
/// chains there), and the summary says what it was rewritten to before what became of it; a
/// drop by a firewall after the rewrite keeps its own verdict and gains the rewrite as context.
pub(super) fn rewritten_destination(f: &Flow, v: &mut Verdict) {
    if v.status == Status::Delivered || v.direction == Some(Direction::Reply) {
        return;
    }
    let dnat: Vec<&Rewrite> = v
        .rewrites
        .iter()
        .filter(|r| matches!(r.field.as_str(), "dst" | "dport"))
        .collect();
    if dnat.is_empty() {
        return;
    }
    let what = dnat
        .iter()
        .map(|r| format!("{} {} → {}", r.field, r.from, r.to))
        .collect::<Vec<_>>()
        .join(", ");
    let at = dnat[0]
        .at
        .split(' ')
        .next()
        .unwrap_or("PREROUTING")
        .to_string();
    let family = if f.k.remote.is_ipv6() { "ip6" } else { "ip" };
    let (fw, chains) = chains_on(f.facts, NfHook::Prerouting, family);
    let to = dnat
        .iter()
        .find(|r| r.field == "dst")
        .map(|r| r.to.clone())
        .unwrap_or_else(|| f.k.remote.to_string());
    let the_cause = matches!(v.status, Status::NoReply | Status::Misrouted)
        || (v.status == Status::Dropped && v.stage == Some(Stage::Routing));
    let rule_at = if chains.is_empty() {
        String::new()
    } else {
        format!(" (the chains on {at}: {})", chains.join(", "))
    };
    if the_cause {
        v.summary = format!(
            "the request's destination was rewritten by DNAT at {at} ({what}){rule_at}, and \
             then: {} → check that {to} is the address meant and answers, or the DNAT rule \
             (`nft -a list ruleset`, `iptables -t nat -S PREROUTING`)",
            v.summary
        );
        v.stage = Some(Stage::Netfilter);
        v.hook = Some(NfHook::Prerouting);
        v.firewall = fw;
        v.chains = chains;
        // Whether the rewrite or what came after it is wrong is the operator's call: no
        // single command.
        v.fix = None;
    } else {
        v.summary.push_str(&format!(
            " (its destination had been rewritten by DNAT at {at}: {what})"
        ));
    }
}

/// Where the host's ICMP "fragmentation needed" (ICMPv6 "packet too big") to the guest died,
/// when it did not reach the guest.
fn lost_mtu_error(rep: &[&Journey]) -> Option<DropSite> {
    rep.iter().find_map(|j| {
        let about_mtu = j.hops.iter().any(|h| {
            h.tuple.is_some_and(|t| {
                (t.proto == 1 && h.icmp_type == 3 && h.icmp_code == 4)
                    || (t.proto == 58 && h.icmp_type == 2)
            })
        });
        match j.outcome() {
            Outcome::Dropped(d) if about_mtu => Some(d),
            _ => None,
        }
    })
}

/// The summary of a drop outside netfilter and routing: the tap, the bridge, the way out.
fn egress_summary(f: &Flow, what: &str, stage: Stage, site: &DropSite) -> String {
    let (rep, facts) = (f.rep, f.facts);
    let dev = &site.device;
    let reason = &site.reason;
    let r = reason.as_str();
    let neigh_fn = site
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with("neigh_"));
    if r.starts_with("NEIGH") || neigh_fn {
        let gw = site
            .route
            .as_ref()
            .and_then(|r| r.gateway)
            .map(|g| g.to_string())
            .unwrap_or_else(|| "the next hop".into());
        let v6 = site
            .route
            .as_ref()
            .and_then(|r| r.gateway)
            .is_some_and(|g| g.is_ipv6());
        let (how, ip) = if v6 {
            ("neighbour solicitations (NDP)", "ip -6")
        } else {
            ("ARP", "ip")
        };
        return format!(
            "{what} was dropped on {dev}: {gw} does not answer {how} there (neighbour \
             resolution failed) [{reason}] → check the upstream gateway: `{ip} neigh show dev \
             {dev}`, cabling and the gateway's address"
        );
    }
    if r == "PKT_TOO_BIG" {
        // The host's ICMP fragmentation-needed carries the next-hop MTU where the echo
        // sequence would be (RFC 1191).
        let ptb = hops(rep).find(|h| {
            h.tuple.is_some_and(|t| {
                (t.proto == 1 && h.icmp_type == 3 && h.icmp_code == 4)
                    || (t.proto == 58 && h.icmp_type == 2)
            })
        });
        let v6 = ptb.and_then(|h| h.tuple).is_some_and(|t| t.proto == 58)
            || site
                .route
                .as_ref()
                .and_then(|r| r.gateway)
                .is_some_and(|g| g.is_ipv6());
        let mtu = ptb
            .and_then(|h| h.icmp_mtu.or_else(|| h.tuple.map(|t| u32::from(t.dport))))
            .filter(|m| *m > 0)
            .or_else(|| facts.mtu_of(dev));
        let mtu = mtu
            .map(|m| format!("MTU {m}"))
            .unwrap_or_else(|| "MTU".into());
        // The host's own error never reached the guest: a path-MTU black hole.
        if let Some(d) = lost_mtu_error(rep) {
            let at = d
                .hook
                .map(|h| format!("the {h} hook"))
                .unwrap_or_else(|| format!("the {} stage", d.stage.name()));
            let (what_err, allow) = if v6 {
                (
                    "ICMPv6 packet-too-big",
                    "`icmpv6 type packet-too-big accept`",
                )
            } else {
                (
                    "ICMP fragmentation-needed",
                    "`icmp type destination-unreachable accept`",
                )
            };
            return format!(
                "{what} is larger than the {mtu} of {dev} [{reason}], and the host's \
                 {what_err} ({mtu}) to the guest was itself dropped by {at} on {} [{}]: a \
                 path-MTU black hole, the guest never learns the MTU and its large packets \
                 vanish → let the error through ({allow} in that chain), or lower the guest's \
                 MTU",
                d.device, d.reason
            );
        }
        if v6 {
            return format!(
                "{what} is larger than the {mtu} of {dev}: IPv6 routers never fragment, so the \
                 host dropped it and answered ICMPv6 packet-too-big ({mtu}) [{reason}] → lower \
                 the guest's MTU, or raise {dev}'s; if the guest never gets the packet-too-big \
                 (ICMPv6 filtered on the way), path MTU discovery is blocked"
            );
        }
        return format!(
            "{what} is larger than the {mtu} of {dev} and has DF set: the host dropped it and \
             answered ICMP fragmentation-needed ({mtu}) [{reason}] → lower the guest's MTU, or \
             raise {dev}'s; if the guest never gets the ICMP, path MTU discovery is blocked"
        );
    }
    if r == "FULL_RING" {
        return format!(
            "{what} was dropped on {dev}: the tap's queue towards the guest was full, the guest \
             is not reading it fast enough (virtio-net driver or QEMU stuck or too slow) \
             [{reason}] → check the guest and its QEMU process"
        );
    }
    if r.starts_with("QDISC") || r.starts_with("TC_") || r == "TXQUEUE_FULL" {
        // A device without carrier swaps its qdisc for one that drops everything
        // (`noop_qdisc`, QDISC_DROP): a link that is down, not a full queue. A macvtap loses
        // its carrier with its lower device.
        let link = |d: &str| -> Option<(&'static str, String)> {
            let f = facts.device(d)?;
            if f.no_carrier {
                Some((
                    "has no carrier",
                    format!("check {d}'s cable or peer (`ip link show {d}`: NO-CARRIER)"),
                ))
            } else if !f.up {
                Some((
                    "is down",
                    format!("`ip link set {d} up` (and check {d}'s cable or peer)"),
                ))
            } else {
                None
            }
        };
        if let Some((l, (state, fix))) = facts
            .device(dev)
            .and_then(|f| f.macvtap_lower.as_deref())
            .and_then(|l| Some((l, link(l)?)))
        {
            return format!(
                "{what} was dropped on {dev} [{reason}]: the lower device {l} of the macvtap \
                 {dev} {state}, so the macvtap has no carrier and its frames leave nowhere → \
                 {fix}"
            );
        }
        if let Some((state, fix)) = link(dev) {
            return format!(
                "{what} was dropped on {dev} [{reason}]: {dev} {state}, and a device without \
                 a working link drops everything it is given (its qdisc is swapped for one \
                 that drops) → {fix}"
            );
        }
        return format!(
            "{what} was dropped by the qdisc or a tc action of {dev} (queue full, rate limit \
             or policer) [{reason}] → `tc -s qdisc show dev {dev}` and `tc -s filter show dev {dev}`"
        );
    }
    if stage == Stage::Bridge {
        let br = facts.master_of(dev).unwrap_or("its bridge");
        if r.contains("VLAN") {
            return format!(
                "{what} was dropped by VLAN filtering on {br} at port {dev}: the frame's VLAN is \
                 not allowed on that port (PVID / allowed VLANs) [{reason}] → `bridge vlan show \
                 dev {dev}`"
            );
        }
        if r.contains("STP") && facts.device(dev).is_some_and(|f| f.no_carrier) {
            // A port without carrier is disabled by the bridge itself: no STP setting fixes it.
            return format!(
                "{what} was dropped by {br} at port {dev}: {dev} has no carrier, so {br} \
                 disabled the port [{reason}] → nothing holds the tap open or the VM's NIC link \
                 is down: start the VM or re-attach its network interface (`ip link show {dev}` \
                 says NO-CARRIER)"
            );
        }
        if r.contains("STP") {
            return format!(
                "{what} was dropped by {br} at port {dev}: the port is not forwarding (its STP \
                 state is disabled, blocking, listening or learning) [{reason}] → `bridge link \
                 show dev {dev}`; without STP, `bridge link set dev {dev} state 3` forwards"
            );
        }
        return format!("{what} was dropped by {br} at port {dev} [{reason}]");
    }
    format!(
        "{what} was dropped at the {} stage on {dev} [{reason}]",
        stage.name()
    )
}

/// The first thing that went wrong when it is not where the packet died: a verdict names the
/// cause (its stage and device), the drop it saw stays as evidence (reason, route, location).
struct RootCause {
    stage: Stage,
    device: String,
    summary: String,
    /// The one command that removes the cause, when the facts name everything in it.
    fix: Option<String>,
}

/// The VM's tap: where its requests entered the host.
fn vm_tap(req: &[&Journey]) -> Option<String> {
    hops(req)
        .find(|h| h.dev_kind == DevKind::Tap && !h.device.is_empty())
        .map(|h| h.device.clone())
}

/// Drops whose cause is on the VM's own side rather than where they happened: frames of a tap
/// outside any bridge dying on the tap, and replies the host could not hand to the guest on
/// its bridge or tap (neighbour resolution failed there). Such a failure is never upstream.
fn root_cause(f: &Flow, dir: Direction, site: &DropSite) -> Option<RootCause> {
    let (k, req, facts) = (f.k, f.req, f.facts);
    let (dev, reason) = (&site.device, &site.reason);
    let what = match dir {
        Direction::Request => "the request",
        Direction::Reply => "the reply",
    };
    // The guest's frames reached the host's own stack on the tap: no bridge took them.
    if dir == Direction::Request
        && site.stage == Stage::Tap
        && matches!(reason.as_str(), "OTHERHOST" | "IP_INADDRERRORS")
        && facts.master_of(dev).is_none()
    {
        let br = facts.bridge_for(k.guest);
        let fix = match br {
            Some(br) => format!("`ip link set {dev} master {br}`"),
            None => format!("`ip link set {dev} master BRIDGE`, BRIDGE being the VM's bridge"),
        };
        return Some(RootCause {
            stage: Stage::Tap,
            device: dev.clone(),
            fix: br.map(|br| fix::set_master(dev, br)),
            summary: format!(
                "{what} was dropped on {dev}: the tap is not a port of any bridge, so the \
                 guest's frames reach the host's own stack on {dev} and are not for it \
                 [{reason}] → add it to the VM's bridge: {fix}"
            ),
        });
    }
    // A reply the host could not hand over on the VM's own side (its bridge or its tap).
    // (A neighbour entry flushed while the reply waited in its queue frees it from
    // neigh_destroy as QUEUE_PURGE: the same failure to hand it over.)
    let neigh = reason.starts_with("NEIGH")
        || site
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("neigh_"));
    if dir != Direction::Reply || !neigh {
        return None;
    }
    let tap = vm_tap(req)?;
    let to_bridge = site
        .route
        .as_ref()
        .is_some_and(|r| r.device == *dev && r.dev_kind == DevKind::Bridge)
        || facts.device(dev).is_some_and(|d| d.bridge);
    if !to_bridge && *dev != tap {
        return None;
    }
    if to_bridge {
        if let Some(why) = tap_misplaced(facts, &tap, dev) {
            return Some(RootCause {
                stage: Stage::Tap,
                fix: Some(fix::set_master(&tap, dev)),
                device: tap,
                summary: format!("{what} was dropped on {dev} [{reason}]: {why}"),
            });
        }
    }
    Some(RootCause {
        stage: Stage::Tap,
        device: tap.clone(),
        fix: None,
        summary: format!(
            "{what} was dropped on {dev}: the guest does not answer the host's ARP for {} \
             there (neighbour resolution failed) [{reason}]; the request went out and its reply \
             came back, so the fault is on the VM's own side → is the guest's interface up with \
             address {}, and does its tap {tap} pass frames (`bridge link show dev {tap}`, \
             `ip neigh show dev {dev}`)?",
            k.guest, k.guest
        ),
    })
}

/// A FORWARD drop's repair: accept the VM's new connections (for a dropped request) and their
/// replies at the head of the one chain on that hook, with doctor's `forward_filter` rules.
/// None when several chains (or iptables-legacy) could have dropped, or the VM's subnet is
/// not known.
fn forward_fix(k: FlowKey, dir: Direction, facts: &HostFacts) -> Option<String> {
    let v6 = k.remote.is_ipv6();
    let chain = fix::only_chain(facts, NfHook::Forward, v6)?;
    let (l3, subnet) = fix::vm_subnet(facts, k.guest)?;
    let back = fix::forward_accept_back(chain, l3, &subnet, v6);
    Some(match dir {
        Direction::Request => format!(
            "{} && {back}",
            fix::forward_accept_out(chain, l3, &subnet, v6)
        ),
        Direction::Reply => back,
    })
}

/// The repair of a drop [`egress_summary`] names, when it is one command on this host: a
/// device that is down (a macvtap's lower device, or the device itself), a bridge port that
/// does not forward, an uplink whose MTU is below the VM side's.
fn egress_fix(f: &Flow, stage: Stage, site: &DropSite) -> Option<String> {
    let (k, rep, facts) = (f.k, f.rep, f.facts);
    let dev = site.device.as_str();
    let r = site.reason.as_str();
    if r.starts_with("QDISC") || r.starts_with("TC_") || r == "TXQUEUE_FULL" {
        // Down by its administrator (not merely without carrier: a cable or a peer).
        let down = |d: &str| facts.device(d).filter(|f| !f.no_carrier && !f.up);
        let lower = facts.device(dev).and_then(|f| f.macvtap_lower.as_deref());
        return match lower {
            Some(l) if down(l).is_some() => Some(fix::link_up(l)),
            Some(_) => None,
            None => down(dev).map(|_| fix::link_up(dev)),
        };
    }
    if stage == Stage::Bridge
        && r.contains("STP")
        && !r.contains("VLAN")
        && facts.device(dev).is_some_and(|f| !f.no_carrier)
    {
        return Some(fix::port_forwarding(dev));
    }
    if r == "PKT_TOO_BIG" {
        // The host's own error dropped on its way to the guest: the black hole is the cause.
        let lost = rep.iter().any(|j| {
            matches!(j.outcome(), Outcome::Dropped(_))
                && j.hops.iter().any(|h| {
                    h.tuple.is_some_and(|t| {
                        (t.proto == 1 && h.icmp_type == 3 && h.icmp_code == 4)
                            || (t.proto == 58 && h.icmp_type == 2)
                    })
                })
        });
        let (br, _) = fix::vm_subnet(facts, k.guest)?;
        let (vm_mtu, mtu) = (facts.mtu_of(br)?, facts.mtu_of(dev)?);
        return (!lost && vm_mtu > mtu).then(|| fix::link_mtu(dev, vm_mtu));
    }
    None
}
