//! The checks, in the order a packet from the VM meets what they check: tap, bridge port,
//! bridge, MTU, bridge netfilter, forwarding, reverse-path filter, FORWARD rules, NAT,
//! conntrack, default route, gateway neighbour, DHCP. Each is a pure function of a [`Host`]
//! snapshot and says what it read (evidence) and what to run (fix).

use super::host::{Dev, Host};
use super::rules::{self, Chain, Fate, Iface, Net, Pkt, Place, Ruleset};
use super::{Check, CheckStatus};
use crate::host::netlink::{self, nud_name};
use crate::model::event::NfHook;
use std::net::Ipv4Addr;

use CheckStatus::{Fail, Pass, Skip, Warn};

fn check(
    name: &str,
    status: CheckStatus,
    evidence: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name: name.to_string(),
        status,
        evidence: evidence.into(),
        fix,
    }
}

/// The default route the VM's packets to the internet take.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DefaultRoute {
    kind: u8,
    priority: u32,
    /// (output device index, gateway) per next hop.
    nexthops: Vec<(u32, Option<Ipv4Addr>)>,
}

/// What the checks share: the VM's devices and network, the way out.
struct Ctx<'a> {
    h: &'a Host,
    tap_name: &'a str,
    tap: Option<&'a Dev>,
    /// The tap's master, when it is a Linux bridge.
    bridge: Option<&'a Dev>,
    /// The device holding the VM's gateway address: the bridge, or a routed tap.
    l3: Option<&'a Dev>,
    /// The gateway address on `l3` and the VM's subnet.
    gw: Option<(Ipv4Addr, u8)>,
    subnet: Option<Net>,
    /// Why `subnet` is unknown.
    no_subnet: String,
    defaults: Vec<DefaultRoute>,
    uplink: Option<&'a Dev>,
    /// The default route leaves through `l3` itself: the VM is bridged onto the uplink's
    /// network and the host does not route its packets.
    bridged: bool,
    guest: Option<(Ipv4Addr, u16)>,
}

impl<'a> Ctx<'a> {
    fn new(h: &'a Host, tap_name: &'a str, mac: Option<&str>) -> Ctx<'a> {
        let tap = h.dev(tap_name);
        let bridge = tap
            .and_then(|t| t.master.as_deref())
            .and_then(|m| h.dev(m))
            .filter(|m| m.is_bridge);
        let l3 = bridge.or(tap.filter(|t| t.master.is_none() && !t.addrs.is_empty()));
        let guest = match (l3, mac, &h.neighs) {
            (Some(l3), Some(mac), Ok(ns)) => ns
                .iter()
                .find(|n| {
                    n.ifindex == l3.ifindex
                        && n.lladdr
                            .as_deref()
                            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                })
                .map(|n| (n.dst, n.state)),
            _ => None,
        };
        let gw = l3.and_then(|d| {
            guest
                .and_then(|(g, _)| {
                    d.addrs
                        .iter()
                        .find(|(a, l)| Net::new(*a, *l).contains(g))
                        .copied()
                })
                .or_else(|| d.addrs.first().copied())
        });
        let subnet = gw.map(|(a, l)| Net::new(a, l));
        let no_subnet = match (tap, bridge, l3) {
            (None, _, _) => format!("{tap_name} is not in this network namespace"),
            (Some(t), None, None) => match &t.master {
                Some(m) => format!("{tap_name}'s master {m} is not a Linux bridge"),
                None => format!("{tap_name} is in no bridge"),
            },
            (_, _, Some(d)) if d.addrs.is_empty() => format!("{} has no IPv4 address", d.name),
            _ => String::new(),
        };
        let mut defaults: Vec<DefaultRoute> = match &h.routes {
            Ok(rs) => rs
                .iter()
                .filter(|r| r.table == 254 && r.dst_len == 0)
                .map(|r| DefaultRoute {
                    kind: r.kind,
                    priority: r.priority,
                    nexthops: r.nexthops.clone(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        defaults.sort_by_key(|d| d.priority);
        let uplink = defaults
            .first()
            .filter(|d| d.kind == 1)
            .and_then(|d| d.nexthops.first())
            .and_then(|(oif, _)| h.dev_by_index(*oif));
        let bridged = matches!((uplink, l3), (Some(u), Some(l)) if u.name == l.name);
        Ctx {
            h,
            tap_name,
            tap,
            bridge,
            l3,
            gw,
            subnet,
            no_subnet,
            defaults,
            uplink,
            bridged,
            guest,
        }
    }

    fn iface(d: Option<&Dev>) -> Iface {
        match d {
            Some(d) => Iface::Is {
                name: d.name.clone(),
                index: d.ifindex,
            },
            None => Iface::Unknown,
        }
    }

    /// A new connection from the VM to the internet, at FORWARD.
    fn pkt_out(&self, subnet: Net) -> Pkt {
        Pkt {
            src: Place::In(subnet),
            dst: Place::Internet {
                not_in: Some(subnet),
            },
            iif: Self::iface(self.l3),
            oif: Self::iface(self.uplink),
            ct: rules::CT_NEW,
        }
    }

    /// A reply from the internet to the VM (after de-NAT), at FORWARD.
    fn pkt_back(&self, subnet: Net) -> Pkt {
        Pkt {
            src: Place::Internet {
                not_in: Some(subnet),
            },
            dst: Place::In(subnet),
            iif: Self::iface(self.uplink),
            oif: Self::iface(self.l3),
            ct: rules::CT_ESTABLISHED,
        }
    }

    fn l3_name(&self) -> &str {
        self.l3.map(|d| d.name.as_str()).unwrap_or("<bridge>")
    }

    /// The uplink's name, or what stands for it when there is no default route.
    fn uplink_desc(&self) -> String {
        self.uplink
            .map(|u| u.name.clone())
            .unwrap_or_else(|| "any uplink".into())
    }
}

/// `sysctl -w` name of a /proc/sys path: dotted, unless an interface name holds a dot (then
/// the path form, which sysctl also takes).
fn sysctl_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.contains('.')) {
        path.to_string()
    } else {
        parts.join(".")
    }
}

fn dev_is_down(d: &Dev) -> bool {
    !d.admin_up || d.carrier == Some(false)
}

fn tap_check(c: &Ctx) -> Check {
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
    if !d.admin_up {
        return check(
            name,
            Fail,
            format!(
                "{t} is administratively down (flags 0x{:x}, operstate {}): no frame passes it either way",
                d.flags, d.operstate
            ),
            Some(format!("ip link set dev {t} up")),
        );
    }
    if d.carrier == Some(false) {
        return check(
            name,
            Warn,
            format!(
                "{t} is up but has no carrier (operstate {}): nothing holds the {kind} open, so the VM is not running or its NIC is not attached",
                d.operstate
            ),
            Some("start the VM (or re-attach its network interface)".into()),
        );
    }
    check(
        name,
        Pass,
        format!(
            "{t} ({kind}) is up with carrier (operstate {}), mtu {}",
            d.operstate,
            d.mtu.map(|m| m.to_string()).unwrap_or_else(|| "?".into())
        ),
        None,
    )
}

/// The lower device of a macvtap: the guest's only way out.
fn lower_device_check(c: &Ctx, lower: &str) -> Check {
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
    if !d.admin_up {
        return check(
            name,
            Fail,
            format!(
                "{lower}, the lower device of the macvtap {t}, is administratively down \
                 (operstate {}): the guest's frames leave nowhere and nothing reaches it",
                d.operstate
            ),
            Some(format!("ip link set dev {lower} up")),
        );
    }
    if d.carrier == Some(false) {
        return check(
            name,
            Fail,
            format!(
                "{lower}, the lower device of the macvtap {t}, has no carrier (operstate {}): \
                 its cable or peer is down",
                d.operstate
            ),
            Some(format!("check {lower}'s cable, switch port or peer")),
        );
    }
    check(
        name,
        Pass,
        format!(
            "{t} is a macvtap on {lower}, which is up with carrier (operstate {}); the \
             guest's frames leave through {lower} without this host's bridge, routing or \
             firewall",
            d.operstate
        ),
        None,
    )
}

/// A macvtap's guest and the host's own addresses on the lower device cannot reach each other.
fn macvtap_host_check(c: &Ctx, lower: &str) -> Check {
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

fn bridge_port_check(c: &Ctx) -> Check {
    let name = "bridge_port";
    let t = c.tap_name;
    let Some(tap) = c.tap else {
        return check(
            name,
            Skip,
            format!("{t} is not in this network namespace"),
            None,
        );
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
            Some(format!("ip link set dev {t} master {target}")),
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
            Some(format!("ip link set dev {} up", br.name)),
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
            Some(format!("ip link set dev {t} down && ip link set dev {t} up")),
        ),
    }
}

fn bridge_check(c: &Ctx) -> Check {
    let name = "bridge";
    let Some(d) = c.l3 else {
        return check(name, Skip, format!("no bridge: {}", c.no_subnet), None);
    };
    if !d.admin_up {
        return check(
            name,
            Fail,
            format!("{} is administratively down", d.name),
            Some(format!("ip link set dev {} up", d.name)),
        );
    }
    let Some((gw, len)) = c.gw else {
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
    if let Some((g, st)) = c.guest {
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

fn mtu_check(c: &Ctx) -> Check {
    let name = "mtu";
    let Some(tap) = c.tap else {
        return check(
            name,
            Skip,
            format!("{} is not in this network namespace", c.tap_name),
            None,
        );
    };
    let m = |d: &Dev| d.mtu.unwrap_or(0);
    let mut seen = vec![format!("{} {}", tap.name, m(tap))];
    if let Some(b) = c.bridge {
        seen.push(format!("{} {}", b.name, m(b)));
    }
    let uplink = c
        .uplink
        .filter(|u| !c.bridged && Some(u.name.as_str()) != c.l3.map(|d| d.name.as_str()));
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
                Some(format!("ip link set dev {} mtu {}", tap.name, m(b))),
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
                Some(format!("ip link set dev {} mtu {}", b.name, m(tap))),
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
                Some(format!(
                    "set the guest's MTU to {} (and: ip link set dev {} mtu {})",
                    m(u),
                    l3.name,
                    m(u)
                )),
            );
        }
    }
    check(name, Pass, format!("{ev}: consistent along the path"), None)
}

/// How the FORWARD chains treat each of `pkts` (what, packet): the worst status, one sentence
/// per chain, and the (packet index, chain) pairs that surely drop.
fn forward_verdicts<'a>(
    rs: &Ruleset,
    chains: &[&'a Chain],
    pkts: &[(&str, Pkt)],
) -> (CheckStatus, Vec<String>, Vec<(usize, &'a Chain)>) {
    let mut status = Pass;
    let mut lines = Vec::new();
    let mut failing = Vec::new();
    for ch in chains {
        let id = format!("{}: ", ch.id());
        // A rule of this chain is named by itself; one of a jumped-to chain keeps its chain.
        let by = |d: &rules::Decider| match d.handle {
            None => "its policy".to_string(),
            Some(_) => {
                let w = d.what.strip_prefix(id.as_str()).unwrap_or(&d.what);
                format!("rule {w}")
            }
        };
        let mut parts = Vec::new();
        for (i, (what, pkt)) in pkts.iter().enumerate() {
            let v = rules::judge(rs, ch, pkt);
            let opposite = |f: Fate| {
                v.doubts
                    .iter()
                    .filter(|d| d.fate == f)
                    .map(&by)
                    .collect::<Vec<_>>()
            };
            let (st, s) = match v.decided.fate {
                Fate::Accept => {
                    let d = opposite(Fate::Drop);
                    if d.is_empty() {
                        (Pass, format!("{what} are accepted by {}", by(&v.decided)))
                    } else {
                        (
                            Warn,
                            format!(
                                "{what} are accepted by {}, unless {} drops them first (it tests what kvmtrace cannot judge statically)",
                                by(&v.decided),
                                d.join(" or ")
                            ),
                        )
                    }
                }
                Fate::Drop => {
                    let a = opposite(Fate::Accept);
                    if a.is_empty() {
                        failing.push((i, *ch));
                        (Fail, format!("{what} are dropped by {}", by(&v.decided)))
                    } else {
                        (
                            Warn,
                            format!(
                                "{what} are dropped by {} unless {} accepts them first (it tests what kvmtrace cannot judge statically: only some traffic?)",
                                by(&v.decided),
                                a.join(" or ")
                            ),
                        )
                    }
                }
                _ => (
                    Warn,
                    format!(
                        "{what} are handed on by {} (outcome unknown)",
                        by(&v.decided)
                    ),
                ),
            };
            status = worst(status, st);
            parts.push(s);
        }
        lines.push(format!("{}: {}", ch.describe(), parts.join("; ")));
    }
    (status, lines, failing)
}

fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
    let rank = |s: CheckStatus| match s {
        Skip => 0,
        Pass => 1,
        Warn => 2,
        Fail => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn br_netfilter_check(c: &Ctx) -> Check {
    let name = "br_netfilter";
    let Some(br) = c.bridge else {
        return check(name, Skip, "the VM is not on a Linux bridge", None);
    };
    if !c.h.br_netfilter {
        return check(
            name,
            Pass,
            format!(
                "br_netfilter is not loaded (no /proc/sys/net/bridge): frames bridged on {} do not pass the IPv4 netfilter hooks",
                br.name
            ),
            None,
        );
    }
    let global = c.h.sysctl("net/bridge/bridge-nf-call-iptables");
    let per_bridge = br.nf_call_iptables.unwrap_or(false);
    let ev_vals = format!(
        "net.bridge.bridge-nf-call-iptables = {}, {} nf_call_iptables = {}",
        global.unwrap_or("?"),
        br.name,
        u8::from(per_bridge)
    );
    if global != Some("1") && !per_bridge {
        return check(
            name,
            Pass,
            format!(
                "{ev_vals}: frames bridged on {} skip the IPv4 hooks",
                br.name
            ),
            None,
        );
    }
    let fix = if per_bridge {
        format!("ip link set dev {} type bridge nf_call_iptables 0", br.name)
    } else {
        "sysctl -w net.bridge.bridge-nf-call-iptables=0".to_string()
    };
    // Bridged traffic: onto the uplink's network (a bridged VM), or between guests.
    let (what, pkt, bad) = if c.bridged {
        let p = Pkt {
            src: Place::In(c.subnet.unwrap_or(Net::new(Ipv4Addr::UNSPECIFIED, 0))),
            dst: Place::Internet { not_in: c.subnet },
            iif: Ctx::iface(Some(br)),
            oif: Ctx::iface(Some(br)),
            ct: rules::CT_NEW,
        };
        (
            "the VM's packets bridged onto the uplink's network",
            p,
            Fail,
        )
    } else {
        if br.ports.len() < 2 {
            return check(
                name,
                Pass,
                format!(
                    "{ev_vals}, but {} has no other port than {}: no frame is bridged between ports",
                    br.name, c.tap_name
                ),
                None,
            );
        }
        let any = c.subnet.unwrap_or(Net::new(Ipv4Addr::UNSPECIFIED, 0));
        let p = Pkt {
            src: Place::In(any),
            dst: Place::In(any),
            iif: Ctx::iface(Some(br)),
            oif: Ctx::iface(Some(br)),
            ct: rules::CT_NEW,
        };
        (
            "frames between ports of the bridge (guest to guest)",
            p,
            Warn,
        )
    };
    let rs = match &c.h.ruleset {
        Ok(rs) => rs,
        Err(e) => {
            return check(
                name,
                Skip,
                format!(
                    "{ev_vals}: {what} pass the IPv4 FORWARD hook, whose rules cannot be read: {e}"
                ),
                None,
            )
        }
    };
    let chains = rs.base_chains(NfHook::Forward, "filter");
    let (st, lines, _) = forward_verdicts(rs, &chains, &[(what, pkt)]);
    let ev = format!(
        "{ev_vals}: {what} also pass the IPv4 FORWARD hook{}{}",
        if lines.is_empty() {
            " (no chain there: accepted)"
        } else {
            "; "
        },
        lines.join("; ")
    );
    match st {
        Fail => check(name, bad, ev, Some(fix)),
        Warn => check(name, Warn, ev, Some(fix)),
        s => check(name, s, ev, None),
    }
}

fn ip_forward_check(c: &Ctx) -> Check {
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

/// The main table's route for `a` (longest prefix), as (dst_len, device index).
fn route_dev(h: &Host, a: Ipv4Addr) -> Option<u32> {
    let rs = h.routes.as_ref().ok()?;
    rs.iter()
        .filter(|r| r.table == 254 && Net::new(r.dst, r.dst_len).contains(a))
        .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
        .and_then(|r| r.nexthops.first().map(|(o, _)| *o))
}

fn rp_filter_check(c: &Ctx) -> Check {
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

fn ruleset_or_skip<'a>(c: &'a Ctx, name: &str) -> Result<&'a Ruleset, Check> {
    c.h.ruleset.as_ref().map_err(|e| {
        check(
            name,
            Skip,
            format!("cannot read the nftables ruleset: {e}"),
            Some("run kvmtrace as root (reading nftables needs CAP_NET_ADMIN)".into()),
        )
    })
}

fn forward_filter_check(c: &Ctx) -> Check {
    let name = "forward_filter";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the default route leaves through {} itself: the VM's packets are bridged, not routed (see br_netfilter)",
                c.l3_name()
            ),
            None,
        );
    }
    let Some(subnet) = c.subnet else {
        return check(
            name,
            Skip,
            format!("the VM's subnet is unknown: {}", c.no_subnet),
            None,
        );
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let chains = rs.base_chains(NfHook::Forward, "filter");
    let l3 = c.l3_name();
    let up = c.uplink_desc();
    let out_what = format!("new connections from {subnet} ({l3} → {up})");
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let (mut status, mut lines, failing) = forward_verdicts(
        rs,
        &chains,
        &[
            (out_what.as_str(), c.pkt_out(subnet)),
            (back_what.as_str(), c.pkt_back(subnet)),
        ],
    );
    if chains.is_empty() {
        lines.push(
            "no nftables or iptables-nft chain at the forward hook: forwarded packets are accepted"
                .into(),
        );
    }
    if c.h.legacy_tables.iter().any(|t| t == "filter") {
        status = worst(status, Warn);
        lines.push("the iptables-legacy filter table is in use: its FORWARD chain is invisible to nftables, check it with `iptables-legacy -S FORWARD`".into());
    }
    let mut fixes = Vec::new();
    for (i, ch) in &failing {
        fixes.push(match (*i, ch.is_iptables()) {
            (0, true) => format!("iptables -I {} -i {l3} -s {subnet} -j ACCEPT", ch.name),
            (0, false) => format!(
                "nft 'insert rule {} iifname \"{l3}\" ip saddr {subnet} accept'",
                ch.id()
            ),
            (_, true) => format!(
                "iptables -I {} -o {l3} -d {subnet} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                ch.name
            ),
            (_, false) => format!(
                "nft 'insert rule {} oifname \"{l3}\" ip daddr {subnet} ct state established,related accept'",
                ch.id()
            ),
        });
    }
    check(
        name,
        status,
        lines.join("; "),
        (!fixes.is_empty()).then(|| fixes.join(" && ")),
    )
}

fn nat_check(c: &Ctx) -> Check {
    let name = "nat";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the default route leaves through {} itself: the VM is on the uplink's network and needs no NAT on this host",
                c.l3_name()
            ),
            None,
        );
    }
    let Some(subnet) = c.subnet else {
        return check(
            name,
            Skip,
            format!("the VM's subnet is unknown: {}", c.no_subnet),
            None,
        );
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let pkt = Pkt {
        src: Place::In(subnet),
        dst: Place::Internet {
            not_in: Some(subnet),
        },
        // No input device at POSTROUTING: `iifname` tests never match there.
        iif: Iface::Absent,
        oif: Ctx::iface(c.uplink),
        ct: rules::CT_NEW,
    };
    let chains = rs.base_chains(NfHook::Postrouting, "nat");
    let mut definite = Vec::new();
    let mut maybe = Vec::new();
    let mut blockers = Vec::new();
    for ch in &chains {
        let v = rules::judge(rs, ch, &pkt);
        for d in &v.doubts {
            match d.fate {
                Fate::SourceNat => maybe.push(d.what.clone()),
                Fate::Accept | Fate::Drop => blockers.push(d.what.clone()),
                _ => {}
            }
        }
        match v.decided.fate {
            Fate::SourceNat => definite.push(v.decided.what.clone()),
            Fate::Drop => blockers.push(v.decided.what.clone()),
            _ => {}
        }
    }
    let what = match c.uplink {
        Some(u) => format!("new connections from {subnet} leaving via {}", u.name),
        None => format!("new connections from {subnet} leaving the host (no default route: by which device is unknown)"),
    };
    if let Some(d) = definite.first() {
        return if blockers.is_empty() {
            check(name, Pass, format!("{what} are source-NATed by {d}"), None)
        } else {
            check(
                name,
                Warn,
                format!(
                    "{what} are source-NATed by {d}, unless {} decides first (it tests what kvmtrace cannot judge statically)",
                    blockers.join(" or ")
                ),
                None,
            )
        };
    }
    if !maybe.is_empty() {
        return check(
            name,
            Warn,
            format!(
                "{what}: only {} may source-NAT them (it tests what kvmtrace cannot judge statically: some traffic only?)",
                maybe.join(" or ")
            ),
            None,
        );
    }
    let others: Vec<String> = chains
        .iter()
        .flat_map(|ch| {
            ch.rules
                .iter()
                .filter(|r| matches!(r.action, rules::Action::Masquerade | rules::Action::Snat))
                .map(|r| format!("{}: {r}", ch.id()))
        })
        .take(5)
        .collect();
    let mut ev = format!(
        "no nftables or iptables-nft rule source-NATs {what} ({} nat chain(s) at postrouting{})",
        chains.len(),
        if others.is_empty() {
            String::new()
        } else {
            format!("; source NAT for other traffic: {}", others.join(", "))
        }
    );
    let legacy = c.h.legacy_tables.iter().any(|t| t == "nat");
    if legacy {
        ev.push_str("; the iptables-legacy nat table is in use and invisible to nftables: check `iptables-legacy -t nat -S POSTROUTING`");
    }
    let oif = c.uplink.map(|u| u.name.clone());
    let nft_chain = chains.iter().find(|ch| !ch.is_iptables());
    let fix = if let Some(ch) = nft_chain {
        format!(
            "nft 'insert rule {} ip saddr {subnet} {}masquerade'",
            ch.id(),
            oif.as_ref()
                .map(|o| format!("oifname \"{o}\" "))
                .unwrap_or_else(|| format!("ip daddr != {subnet} "))
        )
    } else if rs.has_iptables_tables() {
        format!(
            "iptables -t nat -A POSTROUTING -s {subnet} {}-j MASQUERADE",
            oif.as_ref()
                .map(|o| format!("-o {o} "))
                .unwrap_or_else(|| format!("! -d {subnet} "))
        )
    } else {
        format!(
            "nft 'add table ip nat' && nft 'add chain ip nat postrouting {{ type nat hook postrouting priority srcnat; }}' && nft 'add rule ip nat postrouting ip saddr {subnet} {}masquerade'",
            oif.as_ref()
                .map(|o| format!("oifname \"{o}\" "))
                .unwrap_or_else(|| format!("ip daddr != {subnet} "))
        )
    };
    if subnet.is_private() && !legacy {
        ev.push_str(&format!(
            ": {subnet} is a private network, so replies from the internet cannot find their way back"
        ));
        check(name, Fail, ev, Some(fix))
    } else if legacy {
        check(name, Warn, ev, Some(fix))
    } else {
        ev.push_str(&format!(
            ": fine if the upstream network routes {subnet} back to this host"
        ));
        check(name, Warn, ev, Some(fix))
    }
}

fn conntrack_check(c: &Ctx) -> Check {
    let name = "conntrack";
    let (Some(n), Some(m)) = (
        c.h.sysctl("net/netfilter/nf_conntrack_count")
            .and_then(|v| v.parse::<u64>().ok()),
        c.h.sysctl("net/netfilter/nf_conntrack_max")
            .and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return check(
            name,
            Skip,
            "nf_conntrack is not loaded here (no /proc/sys/net/netfilter/nf_conntrack_count): no connection tracking, no table to fill",
            None,
        );
    };
    let pct = (n * 100).checked_div(m).unwrap_or(0);
    let ev = format!(
        "nf_conntrack_count = {n}, nf_conntrack_max = {m} ({pct}% used{})",
        if m == 0 { ", no limit" } else { "" }
    );
    let fix = Some(format!(
        "sysctl -w net.netfilter.nf_conntrack_max={} (in the host's initial network namespace: the limit is global); then find what fills the table (`conntrack -S`, `conntrack -L`)",
        (m * 2).max(65536)
    ));
    if m > 0 && pct >= 90 {
        check(
            name,
            Fail,
            format!("{ev}: when the table is full new connections are dropped (kernel log: \"nf_conntrack: table full, dropping packet\")"),
            fix,
        )
    } else if m > 0 && pct >= 75 {
        check(
            name,
            Warn,
            format!("{ev}: close to the limit, where new connections are dropped"),
            fix,
        )
    } else {
        check(name, Pass, ev, None)
    }
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

fn default_route_check(c: &Ctx) -> Check {
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

fn gateway_neighbour_check(c: &Ctx) -> Check {
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

fn dhcp_check(c: &Ctx) -> Check {
    let name = "dhcp";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the VM is bridged onto the uplink's network through {}: its DHCP server, if any, is on that network",
                c.l3_name()
            ),
            None,
        );
    }
    if c.l3.is_none() {
        return check(
            name,
            Skip,
            format!("the VM's network is unknown: {}", c.no_subnet),
            None,
        );
    }
    let socks = match &c.h.udp67 {
        Ok(s) => s,
        Err(e) => return check(name, Skip, e.clone(), None),
    };
    let gw = c.gw.map(|(a, _)| a);
    let desc = |s: &super::host::UdpSock| {
        format!(
            "UDP {}:67{}",
            s.local,
            s.owner
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default()
        )
    };
    let good: Vec<String> = socks
        .iter()
        .filter(|s| s.local.is_unspecified() || Some(s.local) == gw)
        .map(desc)
        .collect();
    if !good.is_empty() {
        return check(
            name,
            Pass,
            format!(
                "a DHCP server listens in this namespace: {}",
                good.join(", ")
            ),
            None,
        );
    }
    let l3 = c.l3_name();
    let fix = match c.subnet.filter(|s| s.size() >= 8) {
        Some(s) => {
            let base = u32::from(s.addr);
            let start = Ipv4Addr::from(base + (s.size() / 2) as u32);
            let end = Ipv4Addr::from(base + (s.size() - 2) as u32);
            format!(
                "give the guest a static address, or serve DHCP on {l3}: dnsmasq --interface={l3} --bind-interfaces --except-interface=lo --dhcp-range={start},{end},12h"
            )
        }
        None => format!("give the guest a static address, or run a DHCP server on {l3}"),
    };
    if !socks.is_empty() {
        let other: Vec<String> = socks.iter().map(desc).collect();
        return check(
            name,
            Warn,
            format!(
                "UDP port 67 is bound only to other addresses than {l3}'s: {}",
                other.join(", ")
            ),
            Some(fix),
        );
    }
    check(
        name,
        Warn,
        "nothing listens on UDP port 67 in this namespace: a guest that asks for its address by DHCP gets none (fine for a guest with a static address)",
        Some(fix),
    )
}

/// Every check for the VM whose tap is `tap` (guest MAC `mac`, when known), in path order.
pub fn run_checks(h: &Host, tap: &str, mac: Option<&str>) -> Vec<Check> {
    let c = Ctx::new(h, tap, mac);
    // A macvtap guest meets no bridge, no routing and no netfilter of this host: its frames
    // go straight out of the lower device. Its own faults are the lower device and the
    // host it cannot reach.
    if let Some(lower) = c.tap.and_then(|t| t.macvtap_lower.as_deref()) {
        return vec![
            tap_check(&c),
            lower_device_check(&c, lower),
            macvtap_host_check(&c, lower),
        ];
    }
    vec![
        tap_check(&c),
        bridge_port_check(&c),
        bridge_check(&c),
        mtu_check(&c),
        br_netfilter_check(&c),
        ip_forward_check(&c),
        rp_filter_check(&c),
        forward_filter_check(&c),
        nat_check(&c),
        conntrack_check(&c),
        default_route_check(&c),
        gateway_neighbour_check(&c),
        dhcp_check(&c),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::host::UdpSock;
    use super::super::rules::{Action, Base, Cond, Rule};
    use super::*;
    use crate::host::netlink::{Neigh, Route};
    use std::collections::BTreeMap;

    fn dev(name: &str, ifindex: u32) -> Dev {
        Dev {
            name: name.into(),
            ifindex,
            mtu: Some(1500),
            admin_up: true,
            carrier: Some(true),
            operstate: "up".into(),
            flags: 0x1003,
            ..Default::default()
        }
    }

    fn nat_chain(rules: Vec<Rule>) -> Chain {
        Chain {
            family: "ip".into(),
            table: "labnat".into(),
            name: "post".into(),
            base: Some(Base {
                hook: NfHook::Postrouting,
                priority: 100,
                policy: "accept".into(),
                kind: "nat".into(),
            }),
            rules,
        }
    }

    fn masq_rule() -> Rule {
        Rule {
            handle: 2,
            conds: vec![
                Cond::Addr {
                    dst: false,
                    neg: false,
                    net: Net::new(Ipv4Addr::new(10, 77, 0, 0), 24),
                },
                Cond::Ifname {
                    out: true,
                    neg: false,
                    name: "up0".into(),
                    wildcard: false,
                },
            ],
            action: Action::Masquerade,
        }
    }

    /// The healthy lab as a snapshot.
    fn healthy() -> Host {
        let mut tap = dev("vnet0", 3);
        tap.is_tap = true;
        tap.master = Some("br0".into());
        tap.brport_state = Some(3);
        let mut br = dev("br0", 2);
        br.is_bridge = true;
        br.ports = vec!["vnet0".into()];
        br.addrs = vec![(Ipv4Addr::new(10, 77, 0, 1), 24)];
        let mut up = dev("up0", 4);
        up.addrs = vec![(Ipv4Addr::new(192, 0, 2, 2), 24)];
        let mut sysctl = BTreeMap::new();
        for (k, v) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/br0/rp_filter", "0"),
            ("net/ipv4/conf/up0/rp_filter", "0"),
            ("net/ipv4/conf/br0/forwarding", "1"),
            ("net/ipv4/conf/up0/forwarding", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
            ("net/netfilter/nf_conntrack_count", "3"),
            ("net/netfilter/nf_conntrack_max", "262144"),
        ] {
            sysctl.insert(k.to_string(), v.to_string());
        }
        Host {
            devs: vec![dev("lo", 1), br, tap, up],
            sysctl,
            routes: Ok(vec![
                Route {
                    table: 254,
                    dst: Ipv4Addr::UNSPECIFIED,
                    dst_len: 0,
                    kind: 1,
                    priority: 0,
                    nexthops: vec![(4, Some(Ipv4Addr::new(192, 0, 2, 1)))],
                },
                Route {
                    table: 254,
                    dst: Ipv4Addr::new(10, 77, 0, 0),
                    dst_len: 24,
                    kind: 1,
                    priority: 0,
                    nexthops: vec![(2, None)],
                },
            ]),
            neighs: Ok(vec![
                Neigh {
                    ifindex: 4,
                    dst: Ipv4Addr::new(192, 0, 2, 1),
                    state: netlink::NUD_REACHABLE,
                    lladdr: Some("02:00:00:00:00:01".into()),
                },
                Neigh {
                    ifindex: 2,
                    dst: Ipv4Addr::new(10, 77, 0, 2),
                    state: netlink::NUD_STALE,
                    lladdr: Some("52:54:00:4b:54:02".into()),
                },
            ]),
            fib_rules: Ok(vec![(0, 255), (32766, 254), (32767, 253)]),
            ruleset: Ok(Ruleset {
                chains: vec![nat_chain(vec![masq_rule()])],
            }),
            legacy_tables: Vec::new(),
            br_netfilter: true,
            udp67: Ok(vec![UdpSock {
                local: Ipv4Addr::UNSPECIFIED,
                inode: 1,
                owner: Some("pid 9 (dnsmasq)".into()),
            }]),
        }
    }

    fn get<'a>(v: &'a [Check], name: &str) -> &'a Check {
        v.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {v:?}"))
    }

    fn run(h: &Host) -> Vec<Check> {
        run_checks(h, "vnet0", Some("52:54:00:4b:54:02"))
    }

    /// A macvtap guest: mvtap0 on low0, the host's 10.78.0.3/24 on low0 (or none).
    fn macvtap_host(lower_up: bool, host_addr: bool) -> Host {
        let mut low = dev("low0", 2);
        low.admin_up = lower_up;
        if !lower_up {
            low.carrier = None;
            low.operstate = "down".into();
        }
        if host_addr {
            low.addrs = vec![(Ipv4Addr::new(10, 78, 0, 3), 24)];
        }
        let mut mv = dev("mvtap0", 3);
        mv.macvtap_lower = Some("low0".into());
        Host {
            devs: vec![low, mv],
            ..healthy()
        }
    }

    #[test]
    fn a_macvtap_is_checked_on_its_lower_device_and_host_isolation_only() {
        let c = run_checks(&macvtap_host(true, false), "mvtap0", None);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tap", "lower_device", "macvtap_host"]);
        assert!(c.iter().all(|c| c.status == Pass), "{c:?}");
        assert!(get(&c, "tap")
            .evidence
            .starts_with("mvtap0 (macvtap) is up"));

        let c = run_checks(&macvtap_host(false, true), "mvtap0", None);
        let l = get(&c, "lower_device");
        assert_eq!(l.status, Fail, "{l:?}");
        assert_eq!(
            l.evidence,
            "low0, the lower device of the macvtap mvtap0, is administratively down (operstate \
             down): the guest's frames leave nowhere and nothing reaches it"
        );
        assert_eq!(l.fix.as_deref(), Some("ip link set dev low0 up"));
        let h = get(&c, "macvtap_host");
        assert_eq!(h.status, Warn, "{h:?}");
        assert!(
            h.evidence.starts_with(
                "the host's 10.78.0.3/24 on low0 cannot reach the guest of the macvtap mvtap0"
            ),
            "{h:?}"
        );
    }

    #[test]
    fn healthy_host_passes_everything() {
        let v = run(&healthy());
        for c in &v {
            assert_eq!(c.status, Pass, "{c:?}");
        }
        assert!(get(&v, "bridge")
            .evidence
            .contains("the guest's MAC is at 10.77.0.2"));
        assert!(get(&v, "nat")
            .evidence
            .contains("`ip saddr 10.77.0.0/24 oifname \"up0\" masquerade` (handle 2)"));
    }

    #[test]
    fn mtu_tap_below_bridge_fails_uplink_below_bridge_warns() {
        let mut h = healthy();
        h.devs.iter_mut().find(|d| d.name == "vnet0").unwrap().mtu = Some(1400);
        let c = run(&h);
        let m = get(&c, "mtu");
        assert_eq!(m.status, Fail, "{m:?}");
        assert!(
            m.evidence
                .starts_with("vnet0 1400, br0 1500, up0 1500 (uplink)"),
            "{m:?}"
        );
        assert_eq!(m.fix.as_deref(), Some("ip link set dev vnet0 mtu 1500"));

        let mut h = healthy();
        h.devs.iter_mut().find(|d| d.name == "up0").unwrap().mtu = Some(1400);
        let m = get(&run(&h), "mtu").clone();
        assert_eq!(m.status, Warn, "{m:?}");
        assert!(m.evidence.contains("path-MTU black hole"), "{m:?}");
    }

    #[test]
    fn conntrack_thresholds() {
        let mut h = healthy();
        h.sysctl
            .insert("net/netfilter/nf_conntrack_count".into(), "80".into());
        h.sysctl
            .insert("net/netfilter/nf_conntrack_max".into(), "100".into());
        assert_eq!(get(&run(&h), "conntrack").status, Warn);
        h.sysctl
            .insert("net/netfilter/nf_conntrack_count".into(), "95".into());
        let c = get(&run(&h), "conntrack").clone();
        assert_eq!(c.status, Fail);
        assert!(
            c.evidence
                .starts_with("nf_conntrack_count = 95, nf_conntrack_max = 100 (95% used)"),
            "{c:?}"
        );
        h.sysctl.remove("net/netfilter/nf_conntrack_count");
        assert_eq!(get(&run(&h), "conntrack").status, Skip);
    }

    #[test]
    fn no_nat_fails_for_a_private_subnet_with_an_nft_fix() {
        let mut h = healthy();
        h.ruleset = Ok(Ruleset::default());
        let c = get(&run(&h), "nat").clone();
        assert_eq!(c.status, Fail, "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some("nft 'add table ip nat' && nft 'add chain ip nat postrouting { type nat hook postrouting priority srcnat; }' && nft 'add rule ip nat postrouting ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'")
        );
        // A masquerade for another uplink does not count, and is shown.
        let mut r = masq_rule();
        r.conds[1] = Cond::Ifname {
            out: true,
            neg: false,
            name: "eth9".into(),
            wildcard: false,
        };
        h.ruleset = Ok(Ruleset {
            chains: vec![nat_chain(vec![r])],
        });
        let c = get(&run(&h), "nat").clone();
        assert_eq!(c.status, Fail, "{c:?}");
        assert!(c.evidence.contains("oifname \"eth9\" masquerade"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "nft 'insert rule ip labnat post ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'"
            )
        );
    }

    #[test]
    fn bridged_setup_skips_routing_checks_and_judges_br_netfilter() {
        let mut h = healthy();
        // The host's default route goes out of br0 itself, with eth0 as a second port.
        if let Ok(r) = &mut h.routes {
            r[0].nexthops = vec![(2, Some(Ipv4Addr::new(10, 77, 0, 254)))];
        }
        h.devs.iter_mut().find(|d| d.name == "br0").unwrap().ports =
            vec!["eth0".into(), "vnet0".into()];
        h.sysctl.insert("net/ipv4/ip_forward".into(), "0".into());
        h.ruleset = Ok(Ruleset {
            chains: vec![Chain {
                family: "ip".into(),
                table: "filter".into(),
                name: "FORWARD".into(),
                base: Some(Base {
                    hook: NfHook::Forward,
                    priority: 0,
                    policy: "drop".into(),
                    kind: "filter".into(),
                }),
                rules: vec![],
            }],
        });
        let v = run(&h);
        for n in ["ip_forward", "forward_filter", "nat", "dhcp"] {
            assert_eq!(get(&v, n).status, Skip, "{n}: {:?}", get(&v, n));
        }
        let b = get(&v, "br_netfilter");
        assert_eq!(b.status, Fail, "{b:?}");
        assert!(b.evidence.contains("ip filter FORWARD"), "{b:?}");
        assert_eq!(
            b.fix.as_deref(),
            Some("sysctl -w net.bridge.bridge-nf-call-iptables=0")
        );
    }

    #[test]
    fn strict_rp_filter_fails_when_the_guest_is_routed_elsewhere() {
        let mut h = healthy();
        h.sysctl
            .insert("net/ipv4/conf/all/rp_filter".into(), "1".into());
        let c = get(&run(&h), "rp_filter").clone();
        assert_eq!(c.status, Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.all.rp_filter=2")
        );
        // The guest uses an address the host routes out of the uplink.
        if let Ok(n) = &mut h.neighs {
            n[1].dst = Ipv4Addr::new(10, 99, 0, 5);
        }
        let v = run(&h);
        assert_eq!(
            get(&v, "rp_filter").status,
            Fail,
            "{:?}",
            get(&v, "rp_filter")
        );
        assert_eq!(get(&v, "bridge").status, Warn);
    }

    #[test]
    fn sysctl_names_keep_dotted_interfaces_as_paths() {
        assert_eq!(
            sysctl_name("net/ipv4/conf/br0/rp_filter"),
            "net.ipv4.conf.br0.rp_filter"
        );
        assert_eq!(
            sysctl_name("net/ipv4/conf/eth0.100/rp_filter"),
            "net/ipv4/conf/eth0.100/rp_filter"
        );
    }

    #[test]
    fn gateway_states() {
        let mut h = healthy();
        if let Ok(n) = &mut h.neighs {
            n[0].state = netlink::NUD_FAILED;
        }
        let c = get(&run(&h), "gateway_neighbour").clone();
        assert_eq!(c.status, Fail);
        assert!(
            c.evidence.starts_with("192.0.2.1 on up0 is FAILED"),
            "{c:?}"
        );
        if let Ok(n) = &mut h.neighs {
            n.remove(0);
        }
        assert_eq!(get(&run(&h), "gateway_neighbour").status, Skip);
    }
}
