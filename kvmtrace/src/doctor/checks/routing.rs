//! Checks of routing, for each IP version: forwarding, reverse-path filtering (IPv4's
//! sysctl), the default route (or the route to DEST) and its gateway's neighbour entry.

use super::ctx::{check, down_hop, main_route, net_text, worst, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::family::Family;
use crate::doctor::host::Dev;
use crate::doctor::rules::Net;
use crate::host::netlink::{self, nud_name, IpNeigh, IpRoute, IpRule};
use crate::model::fix::{self as repair, sysctl_name};
use std::net::IpAddr;

use CheckStatus::{Fail, Pass, Skip, Warn};

/// The forwarding switch of family `f` (`net.ipv4.ip_forward`,
/// `net.ipv6.conf.all.forwarding`), or the check's answer when its half of the path is off,
/// the switch cannot be read, or the VM is bridged (the host does not route its packets).
fn forwarding_switch<'a>(c: &'a Ctx, f: Family, name: &str) -> Result<&'a str, Check> {
    if let Some(s) = c.skip(f, name) {
        return Err(s);
    }
    let (key, unreadable) = match f {
        Family::V4 => (
            "net/ipv4/ip_forward",
            "cannot read /proc/sys/net/ipv4/ip_forward",
        ),
        Family::V6 => (
            "net/ipv6/conf/all/forwarding",
            "cannot read /proc/sys/net/ipv6/conf/all/forwarding (IPv6 disabled in this kernel?)",
        ),
    };
    let Some(v) = c.h.sysctl(key) else {
        return Err(check(name, Skip, unreadable, None));
    };
    if c.side(f).bridged {
        return Err(check(
            name,
            if v == "1" { Pass } else { Skip },
            format!(
                "{} = {v}; {} leaves through {} itself: the VM is bridged onto the uplink's network and the host does not route its packets",
                sysctl_name(key),
                c.default_route_words(f),
                c.l3_name()
            ),
            None,
        ));
    }
    Ok(v)
}

/// The per-device values after the evidence, ` (br0 forwarding = 1, eth0 forwarding = 0)`;
/// nothing when none was read.
fn per_device(values: &[String]) -> String {
    if values.is_empty() {
        String::new()
    } else {
        format!(" ({})", values.join(", "))
    }
}

/// The commands that set each sysctl (a path under /proc/sys) to `value`.
fn sysctl_set(paths: impl IntoIterator<Item = impl AsRef<str>>, value: u8) -> String {
    paths
        .into_iter()
        .map(|p| format!("sysctl -w {}={value}", sysctl_name(p.as_ref())))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The check's failure when the route (`route`: its evidence) leaves by a device that is down;
/// `note` ends the evidence.
fn down_hop_check(
    c: &Ctx,
    name: &str,
    hops: &[(u32, Option<IpAddr>)],
    route: &str,
    note: &str,
) -> Option<Check> {
    let down = down_hop(c.h, hops)?;
    Some(check(
        name,
        Fail,
        format!(
            "{route}, but {} is down (operstate {}){note}",
            down.name, down.operstate
        ),
        Some(repair::link_up(&down.name)),
    ))
}

pub(super) fn ip_forward_check(c: &Ctx) -> Check {
    let name = "ip_forward";
    let v = match forwarding_switch(c, Family::V4, name) {
        Ok(v) => v,
        Err(ch) => return ch,
    };
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
    for d in [c.l3, c.v4.uplink].into_iter().flatten() {
        let key = format!("net/ipv4/conf/{}/forwarding", d.name);
        if let Some(f) = c.h.sysctl(&key) {
            per.push(format!("{} forwarding = {f}", d.name));
            if f != "1" && !off.contains(&key) {
                off.push(key);
            }
        }
    }
    let ev = format!("net.ipv4.ip_forward = 1{}", per_device(&per));
    if off.is_empty() {
        check(name, Pass, ev, None)
    } else {
        check(
            name,
            Fail,
            format!(
                "{ev}: packets coming in on an interface with forwarding = 0 are not routed on"
            ),
            Some(sysctl_set(&off, 1)),
        )
    }
}

pub(super) fn ip6_forward_check(c: &Ctx) -> Check {
    let name = "ip6_forward";
    let v = match forwarding_switch(c, Family::V6, name) {
        Ok(v) => v,
        Err(ch) => return ch,
    };
    let l3 = c.l3_name();
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
    let ev = format!("net.ipv6.conf.all.forwarding = {v}{}", per_device(&per));
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
            Some(sysctl_set(
                disabled
                    .iter()
                    .map(|d| format!("net/ipv6/conf/{d}/disable_ipv6")),
                0,
            )),
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

pub(super) fn rp_filter_check(c: &Ctx) -> Check {
    let name = "rp_filter";
    let mut devs: Vec<&str> = vec!["all"];
    for d in [c.l3, c.v4.uplink].into_iter().flatten() {
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
    let fix = sysctl_set(&strict, 2);
    let all_strict = c.h.sysctl("net/ipv4/conf/all/rp_filter") == Some("1");
    // The kernel uses max(all, dev) (IN_DEV_RPFILTER, include/linux/inetdevice.h).
    let eff_strict = |d: &Dev| {
        all_strict || c.h.sysctl(&format!("net/ipv4/conf/{}/rp_filter", d.name)) == Some("1")
    };
    if let (Some((g, _)), Some(l3)) = (c.v4.guest, c.l3) {
        if eff_strict(l3) {
            if let Some(&(o, _)) = main_route(c.h, g, false).and_then(|r| r.nexthops.first()) {
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
    let multi =
        c.v4.defaults
            .iter()
            .flat_map(|d| d.nexthops.iter().map(|(o, _)| *o))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
    let policy = policy_rules(c);
    check(
        name,
        Warn,
        format!(
            "{ev}: strict mode drops a packet when the route back to its source leaves by another interface than the one it came in on (asymmetric routing: several uplinks, policy routing; here {multi} default-route device(s), {policy} policy rule(s) beyond the defaults)"
        ),
        Some(fix),
    )
}

fn kind_name(k: u8) -> &'static str {
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

/// The IPv4 policy-routing rules beyond the three defaults (local, main, default).
fn policy_rules(c: &Ctx) -> usize {
    c.h.rules_of(Family::V4)
        .iter()
        .filter(|r| ![253, 254, 255].contains(&r.table))
        .count()
}

/// The main table's default route of family `f` (without a DEST of that family): there is
/// one, it forwards, its device is up. IPv4 mentions the policy rules it does not judge; IPv6
/// says when forwarding with accept_ra = 1 explains a missing one.
pub(super) fn default_route_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("default_route");
    if let Some(s) = c.skip(f, name) {
        return s;
    }
    if let Err(e) = c.h.routes_of(f) {
        return check(name, Skip, e.clone(), None);
    }
    let side = c.side(f);
    let policy = if f.is_v6() { 0 } else { policy_rules(c) };
    let note = if policy > 0 {
        format!("; {policy} policy-routing rule(s) send some traffic to other tables (`ip rule`), which may not be the VM's")
    } else {
        String::new()
    };
    let Some(d) = side.defaults.first() else {
        return no_default_route(c, f, name, &note);
    };
    // IPv4 in `ip route`'s words without the table; IPv6 with it.
    let text = match f {
        Family::V4 => format!(
            "default {}{} metric {}",
            kind_word(d.kind),
            hops_text(c, &d.nexthops),
            d.priority
        ),
        Family::V6 => route_text(c, d),
    };
    let more = if side.defaults.len() > 1 {
        format!(" (and {} more default route(s))", side.defaults.len() - 1)
    } else {
        String::new()
    };
    let ver = if f.is_v6() { "IPv6 " } else { "" };
    if d.kind != 1 {
        return check(
            name,
            Fail,
            format!("{text}{more}: the VM's {ver}packets to the internet are refused{note}"),
            Some(match f {
                Family::V4 => {
                    "ip route del default && ip route add default via <gateway> dev <uplink>".into()
                }
                Family::V6 => format!(
                    "ip -6 route del {} default && ip -6 route add default via <gateway> dev <uplink>",
                    kind_name(d.kind)
                ),
            }),
        );
    }
    if let Some(down) = down_hop_check(c, name, &d.nexthops, &format!("{text}{more}"), &note) {
        return down;
    }
    let from_ra = if f.is_v6() && d.protocol == 9 {
        " (learnt from router advertisements)"
    } else {
        ""
    };
    let bridged = if side.bridged {
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
        format!("{text}{more}{from_ra}{bridged}{note}"),
        None,
    )
}

/// `default_route`'s fail when the main table has no default route of family `f`.
fn no_default_route(c: &Ctx, f: Family, name: &str, note: &str) -> Check {
    if !f.is_v6() {
        return check(
            name,
            Fail,
            format!("no default route in the main table: the VM's packets to the internet have no route (the host answers them with ICMP network unreachable){note}"),
            Some("ip route add default via <gateway> dev <uplink>".into()),
        );
    }
    // With forwarding on, RAs are ignored unless accept_ra = 2 (addrconf.c,
    // ipv6_accept_ra()): a host whose IPv6 default came from RAs loses it.
    let ra_hint = c
        .h
        .devs
        .iter()
        .filter(|d| !d.addrs6.is_empty() && Some(d.name.as_str()) != c.l3.map(|l| l.name.as_str()))
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
                sysctl_set(
                    ra_hint
                        .iter()
                        .map(|d| format!("net/ipv6/conf/{d}/accept_ra")),
                    2
                )
            ),
        )
    };
    check(
        name,
        Fail,
        format!("no IPv6 default route in the main table: the VM's IPv6 packets to the internet have no route (the host answers them with ICMPv6 no route){note}"),
        Some(fix),
    )
}

/// The neighbour entry of the gateway of the route out (to DEST, or the default route) of
/// family `f`.
pub(super) fn gateway_neighbour_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("gateway_neighbour");
    if let Some(s) = c.skip(f, name) {
        return s;
    }
    let side = c.side(f);
    let hops: Vec<(u32, Option<IpAddr>)> = if side.dest.is_some() {
        match c.h.dest_route.as_ref().map(|d| &d.answer) {
            Some(Ok(r)) if r.kind == 1 => r.nexthops.clone(),
            _ => {
                return check(
                    name,
                    Skip,
                    format!("no route to the destination (see {})", f.name("route")),
                    None,
                )
            }
        }
    } else {
        match side.defaults.first().filter(|d| d.kind == 1) {
            Some(d) => d.nexthops.clone(),
            None => {
                let ver = if f.is_v6() { "IPv6 " } else { "" };
                return check(name, Skip, format!("no {ver}default route"), None);
            }
        }
    };
    let asked = match f {
        Family::V4 => "ARP",
        Family::V6 => "neighbour solicitations",
    };
    neighbour_verdict(c, name, &hops, c.h.neighs_of(f), asked)
}

/// Judges the neighbour entries of a route's gateways (`hops`: output device, gateway).
/// `asked`: how the host asks for a link-layer address (`ARP`, `neighbour solicitations`).
fn neighbour_verdict(
    c: &Ctx,
    name: &str,
    hops: &[(u32, Option<IpAddr>)],
    neighs: Result<&[IpNeigh], &String>,
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
            if c.v4.dest.is_some() || c.v6.dest.is_some() {
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
        let dev = c.h.dev_name(o);
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
fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        t => t.to_string(),
    }
}

/// Where a lookup on the snapshot ends: a route (and the policy rule that chose its table,
/// when not one of the default rules), or a rule's own refusal.
enum FibHit<'a> {
    /// The route, and (priority, table) of the rule that chose its table.
    Route(&'a IpRoute, Option<(u32, u32)>),
    Rule(IpRule),
}

/// The FIB lookup on the snapshot, as the kernel does it (fib_rules_lookup, then the
/// longest prefix in the rule's table; `throw` routes go on to the next rule): used to name
/// the table and route behind the kernel's answer. Rules with selectors not modelled here
/// (fwmark, oif, uid, ports, …) are passed over and listed.
fn fib_lookup<'a>(
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
fn route_text(c: &Ctx, r: &IpRoute) -> String {
    let dst = if r.dst_len == 0 {
        "default".to_string()
    } else {
        net_text(Net::new(r.dst, r.dst_len))
    };
    let hops = match hops_text(c, &r.nexthops) {
        h if r.kind == 1 && !h.is_empty() => format!(" {h}"),
        _ => String::new(),
    };
    format!(
        "{}{dst}{hops} table {} metric {}",
        kind_word(r.kind),
        table_name(r.table),
        r.priority
    )
}

/// A route's next hops as `ip route` writes them: `via 192.0.2.1 dev up0 nexthop dev up1`.
fn hops_text(c: &Ctx, hops: &[(u32, Option<IpAddr>)]) -> String {
    hops.iter()
        .map(|(o, g)| match g {
            Some(g) => format!("via {g} dev {}", c.h.dev_name(*o)),
            None => format!("dev {}", c.h.dev_name(*o)),
        })
        .collect::<Vec<_>>()
        .join(" nexthop ")
}

/// The kind of a route that is not unicast, with a space after it (`blackhole `); nothing for
/// unicast.
fn kind_word(kind: u8) -> String {
    if kind == 1 {
        String::new()
    } else {
        format!("{} ", kind_name(kind))
    }
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
pub(super) fn route_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("route");
    let ip = f.ip();
    let Some(d) =
        c.h.dest_route
            .as_ref()
            .filter(|d| d.dst.is_ipv6() == f.is_v6())
    else {
        return check(
            name,
            Skip,
            "the route to the destination was not looked up",
            None,
        );
    };
    let dst = d.dst;
    let (routes, rules) = (c.h.routes_of(f).unwrap_or(&[]), c.h.rules_of(f));
    let from = d
        .from
        .as_ref()
        .map(|(a, i)| format!(" from {a} iif {i}"))
        .unwrap_or_default();
    let asked = format!("`{ip} route get {dst}{from}`");
    let (hit, skipped) = fib_lookup(
        routes,
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
            if let Some(down) =
                down_hop_check(c, name, &r.nexthops, &format!("{asked}: {text}"), "")
            {
                return down;
            }
            // The neighbour the packet is handed to: the gateway, or the destination itself
            // on a directly connected network.
            let neighs = c.h.neighs_of(f).unwrap_or(&[]);
            let mut notes = Vec::new();
            let mut failed = Vec::new();
            for (o, g) in &r.nexthops {
                let next = g.unwrap_or(dst);
                let what = if g.is_some() {
                    "gateway"
                } else {
                    "destination"
                };
                let dev = c.h.dev_name(*o);
                match neighs.iter().find(|n| n.ifindex == *o && n.dst == next) {
                    Some(n) => {
                        notes.push(format!(
                            "the {what} {next} on {dev} is {}",
                            nud_name(n.state)
                        ));
                        if n.state == netlink::NUD_FAILED {
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
                            if f.is_v6() { "ip6_forward" } else { "ip_forward" },
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
