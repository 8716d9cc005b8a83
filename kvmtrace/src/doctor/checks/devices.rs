//! Checks of the VM's own devices: the tap (or macvtap and its lower device), its bridge
//! port, the bridge, the MTU along the path.

use super::ctx::{check, dev_is_down, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::host::Dev;
use crate::doctor::rules::Net;
use crate::host::netlink::nud_name;
use crate::model::fix::{self as repair};

use CheckStatus::{Fail, Pass, Skip, Warn};

pub(super) fn tap_check(c: &Ctx) -> Check {
    let name = "tap";
    let t = c.tap_name;
    let Some(d) = c.tap else {
        return check(
            name,
            Fail,
            format!("{t} is not a network device in this namespace (/sys/class/net/{t} is missing)"),
            Some(format!(
                "run kvmtrace in the network namespace that holds {t} (`ip netns exec NS kvmtrace doctor {t}`)"
            )),
        );
    };
    let kind = if d.is_tap {
        "tap"
    } else if d.macvtap_lower.is_some() {
        "macvtap"
    } else {
        "device"
    };
    link_check(
        name,
        d,
        format!(
            "{t} is administratively down (flags 0x{:x}, operstate {}): no frame passes it either way",
            d.flags, d.operstate
        ),
        (
            Warn,
            format!(
                "{t} is up but has no carrier (operstate {}): nothing holds the {kind} open, so the VM is not running or its NIC is not attached",
                d.operstate
            ),
            "start the VM (or re-attach its network interface)".into(),
        ),
        format!(
            "{t} ({kind}) is up with carrier (operstate {}), mtu {}",
            d.operstate,
            d.mtu.map(|m| m.to_string()).unwrap_or_else(|| "?".into())
        ),
    )
}

/// A device the guest's frames pass, in its words for each state: administratively down
/// (`down`: the check fails, and setting it up is the fix), up without carrier (`no_carrier`:
/// status, evidence, fix), up with carrier (`up`: it passes).
fn link_check(
    name: &str,
    d: &Dev,
    down: String,
    no_carrier: (CheckStatus, String, String),
    up: String,
) -> Check {
    if !d.admin_up {
        return check(name, Fail, down, Some(repair::link_up(&d.name)));
    }
    if d.carrier == Some(false) {
        let (status, evidence, fix) = no_carrier;
        return check(name, status, evidence, Some(fix));
    }
    check(name, Pass, up, None)
}

/// The lower device of a macvtap: the guest's only way out.
pub(super) fn lower_device_check(c: &Ctx, lower: &str) -> Check {
    let name = "lower_device";
    let t = c.tap_name;
    let Some(d) = c.h.dev(lower) else {
        return check(
            name,
            Fail,
            format!("{t} is a macvtap on {lower}, which is not in this namespace"),
            None,
        );
    };
    link_check(
        name,
        d,
        format!(
            "{lower}, the lower device of the macvtap {t}, is administratively down \
             (operstate {}): the guest's frames leave nowhere and nothing reaches it",
            d.operstate
        ),
        (
            Fail,
            format!(
                "{lower}, the lower device of the macvtap {t}, has no carrier (operstate {}): \
                 its cable or peer is down",
                d.operstate
            ),
            format!("check {lower}'s cable, switch port or peer"),
        ),
        format!(
            "{t} is a macvtap on {lower}, which is up with carrier (operstate {}); the \
             guest's frames leave through {lower} without this host's bridge, routing or \
             firewall",
            d.operstate
        ),
    )
}

/// The macvtap's mode against the other macvtaps of its lower device: guests reach each other
/// directly only when both macvtaps are in bridge mode.
pub(super) fn macvtap_mode_check(c: &Ctx, lower: &str) -> Check {
    let name = "macvtap_mode";
    let t = c.tap_name;
    let Some(mode) = c.tap.and_then(|d| d.macvtap_mode.clone()) else {
        return check(
            name,
            Skip,
            format!("the mode of the macvtap {t} could not be read"),
            None,
        );
    };
    let sibs: Vec<&crate::doctor::host::Dev> =
        c.h.devs
            .iter()
            .filter(|d| d.name != t && d.macvtap_lower.as_deref() == Some(lower))
            .collect();
    let mode_of = |d: &crate::doctor::host::Dev| d.macvtap_mode.clone().unwrap_or("?".into());
    let others = sibs
        .iter()
        .map(|d| format!("{} ({})", d.name, mode_of(d)))
        .collect::<Vec<_>>()
        .join(", ");
    if sibs.is_empty() {
        return check(
            name,
            Pass,
            format!("{t} is in {mode} mode and is the only macvtap on {lower}: it keeps no guests of this host apart"),
            None,
        );
    }
    if mode == "bridge" && sibs.iter().all(|d| mode_of(d) == "bridge") {
        return check(
            name,
            Pass,
            format!(
                "{t} and the other macvtaps on {lower} ({others}) are in bridge mode: their \
                 guests reach each other directly"
            ),
            None,
        );
    }
    let how = match mode.as_str() {
        "private" => "never reaches the other guests on it, whatever the switch does".to_string(),
        "bridge" => "reaches a guest whose macvtap is not in bridge mode only through the switch \
                     on the wire reflecting frames (VEPA hairpin)"
            .to_string(),
        m => format!(
            "sends even frames for the other guests on it out on the wire ({m}): they come \
             back only if the switch reflects them (VEPA hairpin), never to a private macvtap"
        ),
    };
    check(
        name,
        Warn,
        format!("{t} is in {mode} mode and {lower} also carries {others}: its guest {how}"),
        Some(format!(
            "if the guests must talk to each other: `ip link set {t} type macvtap mode bridge` \
             and the same for the others (libvirt: `<source dev='{lower}' mode='bridge'/>`)"
        )),
    )
}

/// A macvtap's guest and the host's own addresses on the lower device cannot reach each other.
pub(super) fn macvtap_host_check(c: &Ctx, lower: &str) -> Check {
    let name = "macvtap_host";
    let t = c.tap_name;
    let addrs: Vec<String> =
        c.h.dev(lower)
            .map(|d| d.addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect())
            .unwrap_or_default();
    if addrs.is_empty() {
        return check(
            name,
            Pass,
            format!("the host has no address on {lower}: nothing it serves is expected there"),
            None,
        );
    }
    check(
        name,
        Warn,
        format!(
            "the host's {} on {lower} cannot reach the guest of the macvtap {t}, nor the guest \
             it: a macvtap passes frames between its guest and the wire (and, in bridge mode, \
             other macvtaps on {lower}), never to the lower device's own stack",
            addrs.join(", ")
        ),
        Some(format!(
            "if the guest needs the host, give the host a macvlan on {lower} (`ip link add link \
             {lower} name mvhost type macvlan mode bridge`) and move the address there, or use \
             a bridge instead of macvtap"
        )),
    )
}

pub(super) fn bridge_port_check(c: &Ctx) -> Check {
    let name = "bridge_port";
    let t = c.tap_name;
    let tap = match c.tap_or_skip(name) {
        Ok(d) => d,
        Err(skip) => return skip,
    };
    let Some(master) = tap.master.as_deref() else {
        if !tap.addrs.is_empty() {
            let a: Vec<String> = tap.addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect();
            return check(
                name,
                Pass,
                format!("{t} is in no bridge: a routed tap with {}", a.join(", ")),
                None,
            );
        }
        let bridges: Vec<&str> =
            c.h.devs
                .iter()
                .filter(|d| d.is_bridge)
                .map(|d| d.name.as_str())
                .collect();
        let target = if bridges.len() == 1 {
            bridges[0]
        } else {
            "<bridge>"
        };
        return check(
            name,
            Fail,
            format!(
                "{t} has no master: it is in no bridge and has no address, so the VM's frames reach nothing (bridges here: {})",
                if bridges.is_empty() { "none".to_string() } else { bridges.join(", ") }
            ),
            Some(repair::set_master(t, target)),
        );
    };
    let Some(br) = c.bridge else {
        return check(
            name,
            Warn,
            format!("{t}'s master is {master}, not a Linux bridge: bridge checks are skipped"),
            None,
        );
    };
    let ports = br.ports.join(", ");
    let state = tap.brport_state;
    let sname = match state {
        Some(0) => "disabled",
        Some(1) => "listening",
        Some(2) => "learning",
        Some(3) => "forwarding",
        Some(4) => "blocking",
        _ => "unknown",
    };
    let head = format!(
        "{t} is a port of {} (ports: {ports}), state {sname}",
        br.name
    );
    match state {
        Some(3) => check(name, Pass, head, None),
        Some(0) if !br.admin_up => check(
            name,
            Fail,
            format!("{head}: {} is down, which disables its ports", br.name),
            Some(repair::link_up(&br.name)),
        ),
        Some(0) if dev_is_down(tap) => check(
            name,
            Warn,
            format!("{head}: the bridge disables a port whose link is down (see the tap check)"),
            None,
        ),
        Some(1) | Some(2) => check(
            name,
            Warn,
            format!(
                "{head}: STP holds the port for the forward delay ({} s) before it forwards",
                br.forward_delay.unwrap_or(0) / 100
            ),
            Some(format!(
                "wait, or shorten the delay: ip link set dev {} type bridge forward_delay 0",
                br.name
            )),
        ),
        Some(4) => check(
            name,
            Fail,
            format!("{head}: spanning tree blocks it (a loop in the bridged topology?)"),
            Some(format!(
                "look at the topology (`bridge link show dev {t}`); if STP is not wanted: ip link set dev {} type bridge stp_state 0",
                br.name
            )),
        ),
        _ => check(
            name,
            Fail,
            format!("{head}: the bridge does not forward through it"),
            // The state set by hand (`bridge link set … state 0`): set it back. With the
            // kernel's STP on the bridge refuses a state from userspace (EBUSY,
            // br_set_port_state in net/bridge/br_netlink.c), so it cannot fight the spanning tree.
            Some(repair::port_forwarding(t)),
        ),
    }
}

pub(super) fn bridge_check(c: &Ctx) -> Check {
    let name = "bridge";
    let Some(d) = c.l3 else {
        return check(name, Skip, format!("no bridge: {}", c.v4.no_subnet), None);
    };
    if !d.admin_up {
        return check(
            name,
            Fail,
            format!("{} is administratively down", d.name),
            Some(repair::link_up(&d.name)),
        );
    }
    let Some((gw, len)) = c.v4.gw else {
        let others: Vec<&String> = d.ports.iter().filter(|p| *p != c.tap_name).collect();
        return check(
            name,
            Warn,
            format!(
                "{} has no IPv4 address: the host is not the VM's gateway, so the VM reaches only {}",
                d.name,
                if others.is_empty() {
                    "nothing beyond the bridge (it has no other port)".to_string()
                } else {
                    format!("what is behind the bridge's other ports ({})", others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                }
            ),
            Some(format!(
                "if the host should route for the VM: ip addr add <gateway address>/<prefix> dev {}",
                d.name
            )),
        );
    };
    let subnet = Net::new(gw, len);
    let mut ev = format!(
        "{} is up with {gw}/{len}: the VM's gateway, subnet {subnet}",
        d.name
    );
    if d.addrs.len() > 1 {
        let a: Vec<String> = d.addrs.iter().map(|(a, l)| format!("{a}/{l}")).collect();
        ev.push_str(&format!(" (all addresses: {})", a.join(", ")));
    }
    if let Some((g, st)) = c.v4.guest {
        ev.push_str(&format!("; the guest's MAC is at {g} ({})", nud_name(st)));
        if !subnet.contains(g) {
            return check(
                name,
                Warn,
                format!("{ev}, outside {}'s subnets", d.name),
                Some(format!(
                    "give the guest an address in {subnet} (gateway {gw}), or add its network: ip addr add <gateway>/<prefix> dev {}",
                    d.name
                )),
            );
        }
    }
    check(name, Pass, ev, None)
}

pub(super) fn mtu_check(c: &Ctx) -> Check {
    let name = "mtu";
    let tap = match c.tap_or_skip(name) {
        Ok(d) => d,
        Err(skip) => return skip,
    };
    let m = |d: &Dev| d.mtu.unwrap_or(0);
    let mut seen = vec![format!("{} {}", tap.name, m(tap))];
    if let Some(b) = c.bridge {
        seen.push(format!("{} {}", b.name, m(b)));
    }
    let uplink =
        c.v4.uplink
            .filter(|u| !c.v4.bridged && Some(u.name.as_str()) != c.l3.map(|d| d.name.as_str()));
    if let Some(u) = uplink {
        seen.push(format!("{} {} (uplink)", u.name, m(u)));
    }
    let ev = seen.join(", ");
    if let Some(b) = c.bridge {
        if m(tap) < m(b) {
            return check(
                name,
                Fail,
                format!(
                    "{ev}: {} forwards frames of up to {} bytes to {}, which drops any bigger than {} (the bridge checks the port's MTU)",
                    b.name,
                    m(b),
                    tap.name,
                    m(tap)
                ),
                Some(repair::link_mtu(&tap.name, m(b))),
            );
        }
        if m(tap) > m(b) {
            return check(
                name,
                Warn,
                format!(
                    "{ev}: packets routed to the VM through {} are limited to {} bytes (fragmented, or refused with ICMP fragmentation-needed when DF is set)",
                    b.name,
                    m(b)
                ),
                Some(repair::link_mtu(&b.name, m(tap))),
            );
        }
    }
    if let (Some(u), Some(l3)) = (uplink, c.l3) {
        if m(u) < m(l3) {
            return check(
                name,
                Warn,
                format!(
                    "{ev}: the VM's packets bigger than {} bytes leave {} fragmented or, with DF set, are answered with ICMP fragmentation-needed (a path-MTU black hole where that ICMP is filtered)",
                    m(u),
                    u.name
                ),
                // The same two ways as follow's verdict on a packet too big for the uplink.
                Some(format!(
                    "lower the guest's MTU to {} (and: {}), or raise {}'s where its network \
                     carries {}-byte packets: {}",
                    m(u),
                    repair::link_mtu(&l3.name, m(u)),
                    u.name,
                    m(l3),
                    repair::link_mtu(&u.name, m(l3))
                )),
            );
        }
    }
    check(name, Pass, format!("{ev}: consistent along the path"), None)
}
