//! Checks of routing: forwarding, reverse-path filtering, the default route and its
//! gateway's neighbour entry.

use super::ctx::{check, dev_is_down, net_text, route_dev, worst, Ctx, DefaultRoute};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::host::Dev;
use crate::doctor::rules::Net;
use crate::host::netlink::{self, nud_name, IpRoute, IpRule};
use crate::model::fix::{self as repair, sysctl_name};
use std::net::IpAddr;

use CheckStatus::{Fail, Pass, Skip, Warn};

pub(super) fn ip_forward_check(c: &Ctx) -> Check {
    let name = "ip_forward";
    let Some(v) = c.h.sysctl("net/ipv4/ip_forward") else {
        return check(
            name,
            Skip,
            "cannot read /proc/sys/net/ipv4/ip_forward",
            None,
        );
    };
    if c.bridged {
        return check(
            name,
            if v == "1" { Pass } else { Skip },
            format!(
                "net.ipv4.ip_forward = {v}; the default route leaves through {} itself: the VM is bridged onto the uplink's network and the host does not route its packets",
                c.l3_name()
            ),
            None,
        );
    }
    if v != "1" {
        return check(
            name,
            Fail,
            format!("net.ipv4.ip_forward = {v}: the host does not route packets between interfaces, so the VM's packets go no further than the host"),
            Some(repair::forwarding_on(false)),
        );
    }
    let mut per = Vec::new();
    let mut off = Vec::new();
    for d in [c.l3, c.uplink].into_iter().flatten() {
        let key = format!("net/ipv4/conf/{}/forwarding", d.name);
        if let Some(f) = c.h.sysctl(&key) {
            per.push(format!("{} forwarding = {f}", d.name));
            if f != "1" && !off.contains(&key) {
                off.push(key);
            }
        }
    }
    let ev = format!(
        "net.ipv4.ip_forward = 1{}",
        if per.is_empty() {
            String::new()
        } else {
            format!(" ({})", per.join(", "))
        }
    );
    if off.is_empty() {
        check(name, Pass, ev, None)
    } else {
        check(
            name,
            Fail,
            format!(
                "{ev}: packets coming in on an interface with forwarding = 0 are not routed on"
            ),
            Some(
                off.iter()
                    .map(|k| format!("sysctl -w {}=1", sysctl_name(k)))
                    .collect::<Vec<_>>()
                    .join(" && "),
            ),
        )
    }
}

pub(super) fn rp_filter_check(c: &Ctx) -> Check {
    let name = "rp_filter";
    let mut devs: Vec<&str> = vec!["all"];
    for d in [c.l3, c.uplink].into_iter().flatten() {
        if !devs.contains(&d.name.as_str()) {
            devs.push(&d.name);
        }
    }
    let mode = |v: &str| match v {
        "0" => "off",
        "1" => "strict",
        "2" => "loose",
        _ => "?",
    };
    let mut vals = Vec::new();
    let mut strict = Vec::new();
    for d in &devs {
        let key = format!("net/ipv4/conf/{d}/rp_filter");
        if let Some(v) = c.h.sysctl(&key) {
            vals.push(format!("{} = {v} ({})", sysctl_name(&key), mode(v)));
            if v == "1" {
                strict.push(key);
            }
        }
    }
    if vals.is_empty() {
        return check(name, Skip, "cannot read net.ipv4.conf.*.rp_filter", None);
    }
    let ev = vals.join(", ");
    if strict.is_empty() {
        return check(
            name,
            Pass,
            format!("{ev}: no strict reverse-path filtering on the path"),
            None,
        );
    }
    let fix = strict
        .iter()
        .map(|k| format!("sysctl -w {}=2", sysctl_name(k)))
        .collect::<Vec<_>>()
        .join(" && ");
    let all_strict = c.h.sysctl("net/ipv4/conf/all/rp_filter") == Some("1");
    // The kernel uses max(all, dev) (IN_DEV_RPFILTER, include/linux/inetdevice.h).
    let eff_strict = |d: &Dev| {
        all_strict || c.h.sysctl(&format!("net/ipv4/conf/{}/rp_filter", d.name)) == Some("1")
    };
    if let (Some((g, _)), Some(l3)) = (c.guest, c.l3) {
        if eff_strict(l3) {
            if let Some(o) = route_dev(c.h, g) {
                if o != l3.ifindex {
                    let via =
                        c.h.dev_by_index(o)
                            .map(|d| d.name.clone())
                            .unwrap_or(o.to_string());
                    return check(
                        name,
                        Fail,
                        format!(
                            "{ev}: the guest's address {g} is routed via {via}, not {}, so strict mode drops every packet the VM sends",
                            l3.name
                        ),
                        Some(fix),
                    );
                }
            }
        }
    }
    let multi = c
        .defaults
        .iter()
        .flat_map(|d| d.nexthops.iter().map(|(o, _)| *o))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let policy =
        c.h.fib_rules
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(_, t)| ![253, 254, 255].contains(t))
                    .count()
            })
            .unwrap_or(0);
    check(
        name,
        Warn,
        format!(
            "{ev}: strict mode drops a packet when the route back to its source leaves by another interface than the one it came in on (asymmetric routing: several uplinks, policy routing; here {multi} default-route device(s), {policy} policy rule(s) beyond the defaults)"
        ),
        Some(fix),
    )
}

pub(super) fn kind_name(k: u8) -> &'static str {
    match k {
        1 => "unicast",
        2 => "local",
        6 => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        9 => "throw",
        _ => "other",
    }
}

pub(super) fn default_route_check(c: &Ctx) -> Check {
    let name = "default_route";
    if let Err(e) = &c.h.routes {
        return check(name, Skip, e.clone(), None);
    }
    let policy =
        c.h.fib_rules
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(_, t)| ![253, 254, 255].contains(t))
                    .count()
            })
            .unwrap_or(0);
    let note = if policy > 0 {
        format!("; {policy} policy-routing rule(s) send some traffic to other tables (`ip rule`), which may not be the VM's")
    } else {
        String::new()
    };
    let Some(d) = c.defaults.first() else {
        return check(
            name,
            Fail,
            format!("no default route in the main table: the VM's packets to the internet have no route (the host answers them with ICMP network unreachable){note}"),
            Some("ip route add default via <gateway> dev <uplink>".into()),
        );
    };
    let dev = |o: u32| {
        c.h.dev_by_index(o)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("ifindex {o}"))
    };
    let desc = |d: &DefaultRoute| {
        let hops: Vec<String> = d
            .nexthops
            .iter()
            .map(|(o, g)| match g {
                Some(g) => format!("via {g} dev {}", dev(*o)),
                None => format!("dev {}", dev(*o)),
            })
            .collect();
        format!(
            "default {}{} metric {}",
            if d.kind == 1 {
                String::new()
            } else {
                format!("{} ", kind_name(d.kind))
            },
            hops.join(" nexthop "),
            d.priority
        )
    };
    let more = if c.defaults.len() > 1 {
        format!(" (and {} more default route(s))", c.defaults.len() - 1)
    } else {
        String::new()
    };
    if d.kind != 1 {
        return check(
            name,
            Fail,
            format!(
                "{}{more}: the VM's packets to the internet are refused{note}",
                desc(d)
            ),
            Some("ip route del default && ip route add default via <gateway> dev <uplink>".into()),
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
                "{}{more}, but {} is down (operstate {}){note}",
                desc(d),
                down.name,
                down.operstate
            ),
            Some(format!("ip link set dev {} up", down.name)),
        );
    }
    let bridged = if c.bridged {
        format!(
            " (through the VM's own bridge {}: the VM is bridged onto this network)",
            c.l3_name()
        )
    } else {
        String::new()
    };
    check(
        name,
        Pass,
        format!("{}{more}{bridged}{note}", desc(d)),
        None,
    )
}

pub(super) fn gateway_neighbour_check(c: &Ctx) -> Check {
    let name = "gateway_neighbour";
    let hops: Vec<(u32, Option<IpAddr>)> = if c.dest.is_some() {
        match c.h.dest_route.as_ref().map(|d| &d.answer) {
            Some(Ok(r)) if r.kind == 1 => r.nexthops.clone(),
            _ => return check(name, Skip, "no route to the destination (see route)", None),
        }
    } else {
        let Some(d) = c.defaults.first().filter(|d| d.kind == 1) else {
            return check(name, Skip, "no default route", None);
        };
        d.nexthops
            .iter()
            .map(|(o, g)| (*o, g.map(IpAddr::V4)))
            .collect()
    };
    let neighs = c.h.neighs.as_ref().map(|ns| {
        ns.iter()
            .map(|n| netlink::IpNeigh {
                ifindex: n.ifindex,
                dst: IpAddr::V4(n.dst),
                state: n.state,
                lladdr: n.lladdr.clone(),
                router: false,
            })
            .collect::<Vec<_>>()
    });
    neighbour_verdict(c, name, &hops, neighs.as_deref().map_err(|e| *e), "ARP")
}

/// Judges the neighbour entries of a route's gateways (`hops`: output device, gateway).
/// `asked`: how the host asks for a link-layer address (`ARP`, `neighbour solicitations`).
pub(super) fn neighbour_verdict(
    c: &Ctx,
    name: &str,
    hops: &[(u32, Option<IpAddr>)],
    neighs: Result<&[netlink::IpNeigh], &String>,
    asked: &str,
) -> Check {
    let gws: Vec<(u32, IpAddr)> = hops
        .iter()
        .filter_map(|(o, g)| g.map(|g| (*o, g)))
        .collect();
    if gws.is_empty() {
        return check(
            name,
            Skip,
            if c.dest.is_some() || c.v6.dest.is_some() {
                "the route has no gateway (a directly connected device)"
            } else {
                "the default route has no gateway (a directly connected device)"
            },
            None,
        );
    }
    let neighs = match neighs {
        Ok(n) => n,
        Err(e) => return check(name, Skip, e.clone(), None),
    };
    let mut status = Pass;
    let mut unknown = false;
    let mut lines = Vec::new();
    let mut fixes = Vec::new();
    let ip = if gws[0].1.is_ipv6() { "ip -6 " } else { "ip " };
    for (o, g) in gws {
        let dev =
            c.h.dev_by_index(o)
                .map(|d| d.name.clone())
                .unwrap_or_else(|| format!("ifindex {o}"));
        match neighs.iter().find(|n| n.ifindex == o && n.dst == g) {
            None => {
                unknown = true;
                lines.push(format!(
                    "no neighbour entry for {g} on {dev}: nothing was sent there recently, so whether it answers is not known"
                ));
                fixes.push(format!(
                    "send something through it (e.g. `ping -c1 {g}`) and run doctor again"
                ));
            }
            Some(n) => {
                let st = nud_name(n.state);
                let ll = n
                    .lladdr
                    .as_deref()
                    .map(|l| format!(", lladdr {l}"))
                    .unwrap_or_default();
                match n.state {
                    netlink::NUD_FAILED => {
                        status = worst(status, Fail);
                        lines.push(format!(
                            "{g} on {dev} is {st}{ll}: the gateway did not answer {asked}, so every packet routed through it is dropped"
                        ));
                        fixes.push(format!(
                            "check that {g} is the right gateway and is up (the link, VLAN and addressing of {dev}); then `{ip}route replace default via <the right gateway> dev {dev}`"
                        ));
                    }
                    netlink::NUD_INCOMPLETE => {
                        status = worst(status, Warn);
                        lines.push(format!(
                            "{g} on {dev} is {st}: being resolved, no {asked} answer yet"
                        ));
                        fixes.push(format!("run doctor again in a few seconds; if it turns FAILED, check that {g} is up"));
                    }
                    0 => {
                        unknown = true;
                        lines.push(format!("{g} on {dev} is {st}"));
                    }
                    _ => lines.push(format!("{g} on {dev} is {st}{ll}")),
                }
            }
        }
    }
    if status == Pass && unknown {
        status = Skip;
    }
    let fix = match status {
        Pass => None,
        _ => Some(fixes.join("; ")),
    };
    check(name, status, lines.join("; "), fix)
}

/// `main`, `local`, `default` or the table's number.
pub(super) fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

/// Where a lookup on the snapshot ends: a route (and the policy rule that chose its table,
/// when not one of the default rules), or a rule's own refusal.
pub(super) enum FibHit<'a> {
    /// The route, and (priority, table) of the rule that chose its table.
    Route(&'a IpRoute, Option<(u32, u32)>),
    Rule(IpRule),
}

/// The FIB lookup on the snapshot, as the kernel does it (fib_rules_lookup, then the
/// longest prefix in the rule's table; `throw` routes go on to the next rule): used to name
/// the table and route behind the kernel's answer. Rules with selectors not modelled here
/// (fwmark, oif, uid, ports, …) are passed over and listed.
pub(super) fn fib_lookup<'a>(
    routes: &'a [IpRoute],
    rules: &'a [IpRule],
    dst: IpAddr,
    src: Option<IpAddr>,
    iif: Option<&str>,
) -> (Option<FibHit<'a>>, Vec<u32>) {
    let defaults = [(0u32, 255u32), (32766, 254), (32767, 253)];
    let owned: Vec<IpRule>;
    let rules: &[IpRule] = if rules.is_empty() {
        owned = defaults
            .iter()
            .map(|(p, t)| IpRule {
                priority: *p,
                table: *t,
                action: 1,
                dst: None,
                src: None,
                iif: None,
                invert: false,
                other: Vec::new(),
            })
            .collect();
        &owned
    } else {
        rules
    };
    let mut sorted: Vec<&IpRule> = rules.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    let mut skipped = Vec::new();
    for r in sorted {
        if !r.other.is_empty() || (r.src.is_some() && src.is_none()) {
            skipped.push(r.priority);
            continue;
        }
        let sel = r.dst.is_none_or(|(a, l)| Net::new(a, l).contains(dst))
            && r.src
                .is_none_or(|(a, l)| src.is_some_and(|s| Net::new(a, l).contains(s)))
            && r.iif.as_deref().is_none_or(|i| Some(i) == iif);
        if sel == r.invert {
            continue;
        }
        match r.action {
            1 => {
                let hit = routes
                    .iter()
                    .filter(|x| x.table == r.table && x.dst.is_ipv6() == dst.is_ipv6())
                    .filter(|x| Net::new(x.dst, x.dst_len).contains(dst))
                    .max_by_key(|x| (x.dst_len, std::cmp::Reverse(x.priority)));
                match hit {
                    Some(x) if x.kind == 9 => continue,
                    Some(x) => {
                        let by = (![0, 32766, 32767].contains(&r.priority))
                            .then_some((r.priority, r.table));
                        return (Some(FibHit::Route(x, by)), skipped);
                    }
                    None => continue,
                }
            }
            6..=8 => return (Some(FibHit::Rule(r.clone())), skipped),
            _ => continue,
        }
    }
    (None, skipped)
}

/// `ip route`'s words for a route: `blackhole 2001:db8:ffff::/48 table main metric 1024`.
pub(super) fn route_text(c: &Ctx, r: &IpRoute) -> String {
    let dev = |o: u32| {
        c.h.dev_by_index(o)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("ifindex {o}"))
    };
    let dst = if r.dst_len == 0 {
        "default".to_string()
    } else {
        net_text(Net::new(r.dst, r.dst_len))
    };
    let hops = if r.kind == 1 {
        let h: Vec<String> = r
            .nexthops
            .iter()
            .map(|(o, g)| match g {
                Some(g) => format!(" via {g} dev {}", dev(*o)),
                None => format!(" dev {}", dev(*o)),
            })
            .collect();
        h.join(" nexthop")
    } else {
        String::new()
    };
    format!(
        "{}{dst}{hops} table {} metric {}",
        if r.kind == 1 {
            String::new()
        } else {
            format!("{} ", kind_name(r.kind))
        },
        table_name(r.table),
        r.priority
    )
}

fn errno_text(e: i32) -> &'static str {
    match e {
        libc::EINVAL => "EINVAL: a blackhole route",
        libc::EHOSTUNREACH => "EHOSTUNREACH: an unreachable route",
        libc::EACCES => "EACCES: a prohibit route",
        libc::ENETUNREACH => "ENETUNREACH: no route",
        libc::EXDEV => "EXDEV: the reverse-path filter",
        _ => "refused",
    }
}

/// The route to the destination given on the command line (`route` for IPv4, `route6` for
/// IPv6): the kernel's own lookup for a packet forwarded from the VM, with the table and
/// route behind a refusal named from the snapshot, the output device and the gateway's
/// neighbour state.
pub(super) fn route_check(c: &Ctx, v6: bool) -> Check {
    let name = if v6 { "route6" } else { "route" };
    let ip = if v6 { "ip -6" } else { "ip" };
    let Some(d) = c.h.dest_route.as_ref().filter(|d| d.dst.is_ipv6() == v6) else {
        return check(
            name,
            Skip,
            "the route to the destination was not looked up",
            None,
        );
    };
    let dst = d.dst;
    let (routes, rules): (Vec<IpRoute>, &[IpRule]) = if v6 {
        (
            c.h.routes6.clone().unwrap_or_default(),
            c.h.ip_rules6.as_deref().unwrap_or(&[]),
        )
    } else {
        (
            c.h.routes
                .as_ref()
                .map(|rs| {
                    rs.iter()
                        .map(|r| IpRoute {
                            table: r.table,
                            dst: IpAddr::V4(r.dst),
                            dst_len: r.dst_len,
                            kind: r.kind,
                            protocol: 0,
                            priority: r.priority,
                            nexthops: r
                                .nexthops
                                .iter()
                                .map(|(o, g)| (*o, g.map(IpAddr::V4)))
                                .collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            c.h.ip_rules4.as_deref().unwrap_or(&[]),
        )
    };
    let from = d
        .from
        .as_ref()
        .map(|(a, i)| format!(" from {a} iif {i}"))
        .unwrap_or_default();
    let asked = format!("`{ip} route get {dst}{from}`");
    let (hit, skipped) = fib_lookup(
        &routes,
        rules,
        dst,
        d.from.as_ref().map(|(a, _)| *a),
        d.from.as_ref().map(|(_, i)| i.as_str()),
    );
    let skipped_note = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            "; policy rule(s) {} test what kvmtrace cannot judge (fwmark, oif, uid, ports, …) and were passed over in naming the route",
            skipped
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match &d.answer {
        Ok(r) if r.kind == 1 => {
            let text = route_text(c, r);
            if let Some(down) = r
                .nexthops
                .iter()
                .filter_map(|(o, _)| c.h.dev_by_index(*o))
                .find(|x| dev_is_down(x))
            {
                return check(
                    name,
                    Fail,
                    format!(
                        "{asked}: {text}, but {} is down (operstate {})",
                        down.name, down.operstate
                    ),
                    Some(format!("ip link set dev {} up", down.name)),
                );
            }
            // The neighbour the packet is handed to: the gateway, or the destination itself
            // on a directly connected network.
            let neighs: Vec<(u32, IpAddr, u16, Option<String>)> = if v6 {
                c.h.neighs6
                    .as_ref()
                    .map(|n| {
                        n.iter()
                            .map(|n| (n.ifindex, n.dst, n.state, n.lladdr.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                c.h.neighs
                    .as_ref()
                    .map(|n| {
                        n.iter()
                            .map(|n| (n.ifindex, IpAddr::V4(n.dst), n.state, n.lladdr.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut notes = Vec::new();
            let mut failed = Vec::new();
            for (o, g) in &r.nexthops {
                let next = g.unwrap_or(dst);
                let what = if g.is_some() {
                    "gateway"
                } else {
                    "destination"
                };
                let dev =
                    c.h.dev_by_index(*o)
                        .map(|d| d.name.clone())
                        .unwrap_or_else(|| format!("ifindex {o}"));
                match neighs.iter().find(|n| n.0 == *o && n.1 == next) {
                    Some(n) => {
                        notes.push(format!("the {what} {next} on {dev} is {}", nud_name(n.2)));
                        if n.2 == netlink::NUD_FAILED {
                            failed.push((next, dev));
                        }
                    }
                    None => notes.push(format!(
                        "no neighbour entry for the {what} {next} on {dev} yet"
                    )),
                }
            }
            // The kernel answered: the snapshot's lookup (and what it passed over) is not needed.
            let ev = format!("{asked}: {text}; {}", notes.join("; "));
            if let Some((g, dev)) = failed.first() {
                check(
                    name,
                    Fail,
                    format!("{ev}: it does not answer, so every packet to {dst} is dropped"),
                    Some(format!(
                        "check that {g} is up and reachable on {dev} (link, VLAN, addressing)"
                    )),
                )
            } else {
                check(name, Pass, ev, None)
            }
        }
        Ok(r) => check(
            name,
            if r.kind == 2 { Warn } else { Fail },
            format!(
                "{asked}: {}{}",
                route_text(c, r),
                if r.kind == 2 {
                    format!(": {dst} is an address of this host, not beyond it")
                } else {
                    ": packets to it are refused".to_string()
                }
            ),
            None,
        ),
        Err(e) => {
            match (hit, &d.local) {
                (Some(FibHit::Route(r, by)), _) if r.kind != 1 => {
                    let rule = by
                        .map(|(p, t)| format!(" (chosen by policy rule {p}: lookup {})", table_name(t)))
                        .unwrap_or_default();
                    check(
                        name,
                        Fail,
                        format!(
                            "{asked} is refused ({}): {}{rule}: every packet to {dst} is dropped{}{skipped_note}",
                            errno_text(*e),
                            route_text(c, r),
                            if r.kind == 6 {
                                " silently"
                            } else {
                                " with an ICMP error to the VM"
                            }
                        ),
                        Some(format!(
                            "{ip} route del {} {} table {}",
                            kind_name(r.kind),
                            Net::new(r.dst, r.dst_len),
                            table_name(r.table)
                        )),
                    )
                }
                (Some(FibHit::Rule(x)), _) => check(
                    name,
                    Fail,
                    format!(
                        "{asked} is refused ({}): policy rule {} ({}) refuses it{skipped_note}",
                        errno_text(*e),
                        x.priority,
                        kind_name(x.action)
                    ),
                    Some(format!("{ip} rule del priority {}", x.priority)),
                ),
                // The host's own packets may be routed where forwarded ones are not.
                (_, Some(Ok(l))) => check(
                        name,
                        Fail,
                        format!(
                            "{asked} is refused ({}), but the host's own packets to {dst} are routed ({}): packets forwarded from {} are refused before routing — forwarding is off there (see {}) or a policy rule for traffic from it refuses them{skipped_note}",
                            errno_text(*e).split(':').next().unwrap_or(""),
                            route_text(c, l),
                            d.from.as_ref().map(|(_, i)| i.as_str()).unwrap_or("the VM's device"),
                            if v6 { "ip6_forward" } else { "ip_forward" },
                        ),
                        None,
                    ),
                _ if *e == libc::ENETUNREACH => check(
                    name,
                    Fail,
                    format!(
                        "{asked} is refused ({}): no table the policy rules consult has a route to {dst}, and there is no default route{skipped_note}",
                        errno_text(*e)
                    ),
                    Some(format!("{ip} route add default via <gateway> dev <uplink>")),
                ),
                _ => check(
                    name,
                    Fail,
                    format!("{asked} is refused ({}){skipped_note}", errno_text(*e)),
                    None,
                ),
            }
        }
    }
}
