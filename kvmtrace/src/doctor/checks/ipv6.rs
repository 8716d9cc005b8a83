//! The IPv6 half of the VM's path: bridge netfilter for IPv6, forwarding, reverse-path filter
//! rules, the FORWARD rules for IPv6, NAT66 for a unique-local prefix, the default route and
//! its gateway, router advertisements for the guest.
//!
//! They apply when the VM's side has IPv6 (its bridge holds a global or ULA address) or the
//! destination given is IPv6; otherwise each is `skip` with the reason. IPv6 needs no NAT on a
//! usual KVM host (the guest's prefix is routed): only a unique-local prefix leaving by an
//! uplink without NAT66 is a warning. IPv6 has no `rp_filter` sysctl: reverse-path filtering
//! is a netfilter rule (`fib saddr . iif oif missing drop`, `-m rpfilter`).

use super::ctx::{check, dev_is_down, ruleset_or_skip, worst, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::rules::{self, Chain, Iface, Net, Pkt, Place, Tri};
use crate::model::event::NfHook;
use crate::model::fix::{self as repair, sysctl_name};
use std::net::IpAddr;

use super::netfilter::{br_netfilter_of, find_snat, forward_verdicts, snat_fix};
use super::routing::{kind_name, neighbour_verdict, route_text};
use CheckStatus::{Fail, Pass, Skip, Warn};

pub(super) fn br_netfilter6_check(c: &Ctx) -> Check {
    if let Some(s) = c.skip6("br_netfilter6") {
        return s;
    }
    br_netfilter_of(c, true)
}

pub(super) fn ip6_forward_check(c: &Ctx) -> Check {
    let name = "ip6_forward";
    if let Some(s) = c.skip6(name) {
        return s;
    }
    let Some(v) = c.h.sysctl("net/ipv6/conf/all/forwarding") else {
        return check(
            name,
            Skip,
            "cannot read /proc/sys/net/ipv6/conf/all/forwarding (IPv6 disabled in this kernel?)",
            None,
        );
    };
    let l3 = c.l3_name();
    if c.v6.bridged {
        return check(
            name,
            if v == "1" { Pass } else { Skip },
            format!("net.ipv6.conf.all.forwarding = {v}; the IPv6 default route leaves through {l3} itself: the VM is bridged onto the uplink's network and the host does not route its packets"),
            None,
        );
    }
    let mut per = Vec::new();
    let mut disabled = Vec::new();
    for d in [c.l3, c.v6.uplink].into_iter().flatten() {
        if let Some(f) = c.h.sysctl(&format!("net/ipv6/conf/{}/forwarding", d.name)) {
            if !per
                .iter()
                .any(|p: &String| p.starts_with(&format!("{} ", d.name)))
            {
                per.push(format!("{} forwarding = {f}", d.name));
            }
        }
        if c.h
            .sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", d.name))
            == Some("1")
        {
            disabled.push(d.name.clone());
        }
    }
    let ev = format!(
        "net.ipv6.conf.all.forwarding = {v}{}",
        if per.is_empty() {
            String::new()
        } else {
            format!(" ({})", per.join(", "))
        }
    );
    // Linux 6.18 ip6_forward(): forwarding is all.forwarding, or force_forwarding of the
    // input device (6.17+); the per-device `forwarding` only switches router behaviour
    // (RAs, the NA router flag).
    let forced = c.l3.and_then(|d| {
        c.h.sysctl(&format!("net/ipv6/conf/{}/force_forwarding", d.name))
    }) == Some("1");
    if !disabled.is_empty() {
        return check(
            name,
            Fail,
            format!(
                "{ev}; disable_ipv6 = 1 on {}: no IPv6 there at all",
                disabled.join(", ")
            ),
            Some(
                disabled
                    .iter()
                    .map(|d| {
                        format!(
                            "sysctl -w {}=0",
                            sysctl_name(&format!("net/ipv6/conf/{d}/disable_ipv6"))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" && "),
            ),
        );
    }
    if v != "1" && !forced {
        // With forwarding on, the kernel ignores router advertisements on an interface with
        // accept_ra = 1 (addrconf.c, ipv6_accept_ra()): an uplink that learns its default
        // route from RAs needs accept_ra = 2 once forwarding is switched on.
        let ra_uplink = c.v6.uplink.filter(|u| {
            c.h.sysctl(&format!("net/ipv6/conf/{}/accept_ra", u.name)) == Some("1")
                && c.v6.defaults.first().is_some_and(|d| d.protocol == 9)
        });
        let mut fix = repair::forwarding_on(true);
        let mut note = String::new();
        if let Some(u) = ra_uplink {
            let k = sysctl_name(&format!("net/ipv6/conf/{}/accept_ra", u.name));
            fix.push_str(&format!(" && sysctl -w {k}=2"));
            note = format!(
                "; {}'s default route comes from router advertisements, which forwarding = 1 makes it ignore unless {k} = 2",
                u.name
            );
        }
        return check(
            name,
            Fail,
            format!("{ev}: the host does not route IPv6 packets between interfaces, so the VM's IPv6 packets go no further than the host{note}"),
            Some(fix),
        );
    }
    if v != "1" {
        return check(
            name,
            Pass,
            format!("{ev}, but {l3} force_forwarding = 1: packets from it are routed"),
            None,
        );
    }
    check(name, Pass, ev, None)
}

pub(super) fn rpfilter6_check(c: &Ctx) -> Check {
    let name = "rpfilter6";
    let subnet = match c.routed6(name, "the VM's packets are bridged, not routed") {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    // Reverse-path rules sit at prerouting (raw, mangle or filter priority).
    let chains: Vec<&Chain> = rs.base_chains_of(true, NfHook::Prerouting, "filter");
    let mut found = Vec::new();
    let mut status = Pass;
    let mut lines = Vec::new();
    let l3 = c.l3_name();
    let up = c.uplink6_desc();
    let out_what = format!(
        "new connections from {subnet}{} ({l3} → {up})",
        c.to_dest6()
    );
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let pkts = [
        (out_what, c.pkt6_out(subnet)),
        (back_what, c.pkt6_back(subnet)),
    ];
    let mut visit: Vec<&Chain> = chains.clone();
    // The chains the base chains jump to hold such rules too (firewalld's filter_PREROUTING).
    for ch in &chains {
        for r in &ch.rules {
            if let rules::Action::Jump(t) | rules::Action::Goto(t) = &r.action {
                if let Some(x) = rs
                    .chains
                    .iter()
                    .find(|x| x.family == ch.family && x.table == ch.table && &x.name == t)
                {
                    visit.push(x);
                }
            }
        }
    }
    for ch in visit {
        for r in &ch.rules {
            if !r
                .conds
                .iter()
                .any(|c| matches!(c, rules::Cond::RpFilter { .. }))
            {
                continue;
            }
            let drops = matches!(r.action, rules::Action::Drop | rules::Action::Reject);
            found.push(format!("{}: {r}", ch.id()));
            if !drops {
                continue;
            }
            for (what, p) in &pkts {
                match r.matches(p) {
                    Tri::Yes => {
                        status = worst(status, Fail);
                        lines.push(format!("{what} are dropped by {}: {r}", ch.id()));
                    }
                    Tri::Maybe => {
                        status = worst(status, Warn);
                        lines.push(format!("{what} may be dropped by {}: {r}", ch.id()));
                    }
                    Tri::No => {}
                }
            }
        }
    }
    if found.is_empty() {
        return check(
            name,
            Pass,
            "no IPv6 reverse-path filter rule (`fib saddr . iif oif missing`, `-m rpfilter`) at prerouting (IPv6 has no rp_filter sysctl)",
            None,
        );
    }
    let route = c.h.routes6.as_ref().ok().and_then(|rs| {
        rs.iter()
            .filter(|r| {
                r.table == 254 && r.kind == 1 && Net::new(r.dst, r.dst_len).contains(subnet.addr)
            })
            .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
    });
    let routed = match route.and_then(|r| r.nexthops.first()) {
        Some((o, _)) => format!(
            "{subnet} is routed via {}",
            c.h.dev_by_index(*o).map(|d| d.name.as_str()).unwrap_or("?")
        ),
        None => format!("no route to {subnet}"),
    };
    if status == Pass {
        return check(
            name,
            Pass,
            format!(
                "{}: the routes back to the VM's prefix and to where its packets go leave by the devices they come in on ({routed})",
                found.join(", ")
            ),
            None,
        );
    }
    // Send the VM's prefix back out of its own device: replacing the route that took it
    // elsewhere (same prefix and metric), or adding one.
    let fix = match route {
        Some(r)
            if r.nexthops
                .first()
                .is_some_and(|(o, _)| Some(*o) != c.l3.map(|d| d.ifindex)) =>
        {
            Some(format!(
                "ip -6 route replace {} dev {l3} metric {}",
                Net::new(r.dst, r.dst_len),
                r.priority
            ))
        }
        None => Some(format!("ip -6 route add {subnet} dev {l3}")),
        _ => None,
    };
    check(
        name,
        status,
        format!("{} ({routed})", lines.join("; ")),
        fix,
    )
}

pub(super) fn forward_filter6_check(c: &Ctx) -> Check {
    let name = "forward_filter6";
    let subnet = match c.routed6(name, "the VM's packets are bridged, not routed") {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let chains = rs.base_chains_of(true, NfHook::Forward, "filter");
    let l3 = c.l3_name();
    let up = c.uplink6_desc();
    let out_what = format!(
        "new connections from {subnet}{} ({l3} → {up})",
        c.to_dest6()
    );
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let (mut status, mut lines, failing) = forward_verdicts(
        rs,
        &chains,
        &[
            (out_what.as_str(), c.pkt6_out(subnet)),
            (back_what.as_str(), c.pkt6_back(subnet)),
        ],
    );
    if chains.is_empty() {
        lines.push(
            "no nftables or ip6tables-nft chain at the IPv6 forward hook: forwarded packets are accepted"
                .into(),
        );
    }
    if c.h.legacy_tables6.iter().any(|t| t == "filter") {
        status = worst(status, Warn);
        lines.push("the ip6tables-legacy filter table is in use: its FORWARD chain is invisible to nftables, check it with `ip6tables-legacy -S FORWARD`".into());
    }
    let mut fixes = Vec::new();
    for (i, ch) in &failing {
        let chain = repair::ChainRef {
            family: &ch.family,
            table: &ch.table,
            chain: &ch.name,
        };
        let subnet = subnet.to_string();
        fixes.push(if *i == 0 {
            repair::forward_accept_out(chain, l3, &subnet, true)
        } else {
            repair::forward_accept_back(chain, l3, &subnet, true)
        });
    }
    check(
        name,
        status,
        lines.join("; "),
        (!fixes.is_empty()).then(|| fixes.join(" && ")),
    )
}

pub(super) fn nat6_check(c: &Ctx) -> Check {
    let name = "nat6";
    let subnet = match c.routed6(
        name,
        "the VM is on the uplink's network and needs no NAT on this host",
    ) {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    if !subnet.is_private() {
        return check(
            name,
            Pass,
            format!("{subnet} is a global prefix: no NAT is needed for a routed global prefix (replies come back when the upstream network routes it to this host)"),
            None,
        );
    }
    let Some(up) = c.v6.uplink else {
        return check(
            name,
            Skip,
            format!(
                "no IPv6 route out of the host (see {}): no uplink for {subnet} to be source-NATed on",
                if c.v6.dest.is_some() {
                    "route6"
                } else {
                    "default_route6"
                }
            ),
            None,
        );
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let pkt = Pkt {
        src: Place::In(subnet),
        dst: c.v6.far(),
        // No input device at POSTROUTING: `iifname` tests never match there.
        iif: Iface::Absent,
        oif: Ctx::iface(Some(up)),
        ct: rules::CT_NEW,
        v6: true,
        rp: Tri::Maybe,
    };
    let f = find_snat(rs, &pkt);
    let what = format!(
        "new connections from {subnet}{} leaving via {}",
        c.to_dest6(),
        up.name
    );
    if let Some(ch) = f.found(name, &what) {
        return ch;
    }
    let mut ev = f.none_text(&what, "IPv6 ");
    if c.h.legacy_tables6.iter().any(|t| t == "nat") {
        ev.push_str("; the ip6tables-legacy nat table is in use and invisible to nftables: check `ip6tables-legacy -t nat -S POSTROUTING`");
    }
    ev.push_str(&format!(
        ": {subnet} is a unique-local (ULA, fc00::/7) prefix: replies come back only if the upstream network routes {subnet} to this host; otherwise it needs NAT66"
    ));
    let fix = snat_fix(rs, &f.chains, subnet, Some(&up.name));
    check(name, Warn, ev, Some(fix))
}

pub(super) fn default_route6_check(c: &Ctx) -> Check {
    let name = "default_route6";
    if let Some(s) = c.skip6(name) {
        return s;
    }
    if let Err(e) = &c.h.routes6 {
        return check(name, Skip, e.clone(), None);
    }
    let more = if c.v6.defaults.len() > 1 {
        format!(" (and {} more default route(s))", c.v6.defaults.len() - 1)
    } else {
        String::new()
    };
    let Some(d) = c.v6.defaults.first() else {
        // With forwarding on, RAs are ignored unless accept_ra = 2 (addrconf.c,
        // ipv6_accept_ra()): a host whose IPv6 default came from RAs loses it.
        let ra_hint =
            c.h.devs
                .iter()
                .filter(|d| {
                    !d.addrs6.is_empty() && Some(d.name.as_str()) != c.l3.map(|l| l.name.as_str())
                })
                .filter(|d| {
                    c.h.sysctl("net/ipv6/conf/all/forwarding") == Some("1")
                        && c.h.sysctl(&format!("net/ipv6/conf/{}/accept_ra", d.name)) == Some("1")
                })
                .map(|d| d.name.clone())
                .collect::<Vec<_>>();
        let (note, fix) = if ra_hint.is_empty() {
            (
                String::new(),
                "ip -6 route add default via <gateway> dev <uplink>".to_string(),
            )
        } else {
            (
                format!("; forwarding is on and accept_ra = 1 on {}: router advertisements there are ignored, so a default route learnt from them is gone", ra_hint.join(", ")),
                format!(
                    "{} (or `ip -6 route add default via <gateway> dev <uplink>`)",
                    ra_hint
                        .iter()
                        .map(|d| format!("sysctl -w {}=2", sysctl_name(&format!("net/ipv6/conf/{d}/accept_ra"))))
                        .collect::<Vec<_>>()
                        .join(" && ")
                ),
            )
        };
        return check(
            name,
            Fail,
            format!("no IPv6 default route in the main table: the VM's IPv6 packets to the internet have no route (the host answers them with ICMPv6 no route){note}"),
            Some(fix),
        );
    };
    let text = route_text(c, d);
    if d.kind != 1 {
        return check(
            name,
            Fail,
            format!("{text}{more}: the VM's IPv6 packets to the internet are refused"),
            Some(format!(
                "ip -6 route del {} default && ip -6 route add default via <gateway> dev <uplink>",
                kind_name(d.kind)
            )),
        );
    }
    if let Some(down) = d
        .nexthops
        .iter()
        .filter_map(|(o, _)| c.h.dev_by_index(*o))
        .find(|x| dev_is_down(x))
    {
        return check(
            name,
            Fail,
            format!(
                "{text}{more}, but {} is down (operstate {})",
                down.name, down.operstate
            ),
            Some(format!("ip link set dev {} up", down.name)),
        );
    }
    let from_ra = if d.protocol == 9 {
        " (learnt from router advertisements)"
    } else {
        ""
    };
    let bridged = if c.v6.bridged {
        format!(
            " (through the VM's own bridge {}: the VM is bridged onto this network)",
            c.l3_name()
        )
    } else {
        String::new()
    };
    check(name, Pass, format!("{text}{more}{from_ra}{bridged}"), None)
}

pub(super) fn gateway_neighbour6_check(c: &Ctx) -> Check {
    let name = "gateway_neighbour6";
    if let Some(s) = c.skip6(name) {
        return s;
    }
    let hops: Vec<(u32, Option<IpAddr>)> = if c.v6.dest.is_some() {
        match c.h.dest_route.as_ref().map(|d| &d.answer) {
            Some(Ok(r)) if r.kind == 1 => r.nexthops.clone(),
            _ => return check(name, Skip, "no route to the destination (see route6)", None),
        }
    } else {
        match c.v6.defaults.first().filter(|d| d.kind == 1) {
            Some(d) => d.nexthops.clone(),
            None => return check(name, Skip, "no IPv6 default route", None),
        }
    };
    neighbour_verdict(
        c,
        name,
        &hops,
        c.h.neighs6.as_deref(),
        "neighbour solicitations",
    )
}

pub(super) fn ra_service_check(c: &Ctx) -> Check {
    let name = "ra_service";
    if let Some(s) = c.skip6(name) {
        return s;
    }
    let l3 = c.l3_name();
    if c.v6.bridged {
        return check(
            name,
            Skip,
            format!("the VM is bridged onto the uplink's network through {l3}: its router advertisements, if any, come from that network"),
            None,
        );
    }
    let Some(subnet) = c.v6.subnet else {
        return check(
            name,
            Skip,
            format!("{l3} has no global IPv6 address: there is no prefix to advertise to the VM"),
            None,
        );
    };
    let daemons = match &c.h.ra_daemons {
        Ok(d) => d,
        Err(e) => {
            return check(
                name,
                Warn,
                format!("cannot tell whether anything sends router advertisements on {l3}: {e}"),
                None,
            )
        }
    };
    let serves = |d: &crate::doctor::host::RaDaemon| {
        d.ifaces.as_ref().is_none_or(|i| {
            i.iter()
                .any(|n| n == l3 || (n.ends_with('*') && l3.starts_with(n.trim_end_matches('*'))))
        })
    };
    let good: Vec<String> = daemons
        .iter()
        .filter(|d| d.sends_ra && serves(d))
        .map(|d| format!("{} advertises on {l3} ({})", d.who, d.config))
        .collect();
    if !good.is_empty() {
        return check(name, Pass, good.join("; "), None);
    }
    let fix = Some(format!(
        "configure the guest statically, or advertise {subnet} on {l3}: radvd with `interface {l3} {{ AdvSendAdvert on; prefix {subnet} {{ }}; }};`, or dnsmasq --interface={l3} --bind-interfaces --enable-ra --dhcp-range={},ra-only",
        subnet.addr
    ));
    let near: Vec<String> = daemons
        .iter()
        .map(|d| {
            format!(
                "{} ({}) {}",
                d.who,
                d.config,
                if !serves(d) {
                    format!(
                        "serves {} only",
                        d.ifaces.as_deref().unwrap_or_default().join(", ")
                    )
                } else {
                    "sends no RAs (no enable-ra / RA mode)".to_string()
                }
            )
        })
        .collect();
    if !near.is_empty() {
        return check(
            name,
            Warn,
            format!(
                "nothing sends router advertisements on {l3}: {}; a guest using SLAAC gets no IPv6 address or default route (fine for a guest configured statically)",
                near.join("; ")
            ),
            fix,
        );
    }
    check(
        name,
        Warn,
        format!("no radvd or dnsmasq runs in this namespace: nothing sends router advertisements on {l3}, so a guest using SLAAC gets no address in {subnet} and no IPv6 default route (fine for a guest configured statically)"),
        fix,
    )
}
