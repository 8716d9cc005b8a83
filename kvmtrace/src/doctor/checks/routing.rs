//! Checks of routing: forwarding, reverse-path filtering, the default route and its
//! gateway's neighbour entry.

use super::*;

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
            Some("sysctl -w net.ipv4.ip_forward=1".into()),
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
    let Some(d) = c.defaults.first().filter(|d| d.kind == 1) else {
        return check(name, Skip, "no default route", None);
    };
    let gws: Vec<(u32, Ipv4Addr)> = d
        .nexthops
        .iter()
        .filter_map(|(o, g)| g.map(|g| (*o, g)))
        .collect();
    if gws.is_empty() {
        return check(
            name,
            Skip,
            "the default route has no gateway (a directly connected device)",
            None,
        );
    }
    let neighs = match &c.h.neighs {
        Ok(n) => n,
        Err(e) => return check(name, Skip, e.clone(), None),
    };
    let mut status = Pass;
    let mut unknown = false;
    let mut lines = Vec::new();
    let mut fixes = Vec::new();
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
                            "{g} on {dev} is {st}{ll}: the gateway did not answer ARP, so every packet routed through it is dropped"
                        ));
                        fixes.push(format!(
                            "check that {g} is the right gateway and is up (the link, VLAN and addressing of {dev}); then `ip route replace default via <the right gateway> dev {dev}`"
                        ));
                    }
                    netlink::NUD_INCOMPLETE => {
                        status = worst(status, Warn);
                        lines.push(format!(
                            "{g} on {dev} is {st}: being resolved, no ARP answer yet"
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
